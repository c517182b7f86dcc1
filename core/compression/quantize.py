"""int8 and fp16 ONNX variants: BatchNorm folding for the study's conv->ReLU->BN order, ONNX Runtime static and
dynamic quantisation, and fp16 weights behind the fp32 contract."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from core.compression.int8_names import CALIBRATE_METHODS, INT8_METHODS, INT8_TYPE_NAMES


class ChannelShift(nn.Module):
    """Adds a per-channel constant: what is left of a BatchNorm after its scale is folded into the convs around it."""

    def __init__(self, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


def _leaves(module: nn.Module) -> list[nn.Module] | None:
    """The leaf modules in call order when the module is a pure chain of nn.Sequentials, else None (then its forward
    may branch, as in ResNet or ShuffleNet, and folding by position would be wrong)."""
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            sub = _leaves(child)
            if sub is None:
                return None
            out += sub
        return out
    return [module] if not list(module.children()) else None


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


def _scale_in(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply the layer's input channel c by s[c], inside its weights (exact: zero padding commutes with scaling)."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        w.mul_(s.view(1, -1))
        return
    groups, cpg = layer.groups, w.shape[1]
    w.mul_(s.view(groups, cpg).repeat_interleave(w.shape[0] // groups, dim=0)[:, :, None, None])


def _shift_in(layer: nn.Module, b: torch.Tensor) -> None:
    """Add constant b[c] to input channel c, inside the layer's bias (exact only without padding)."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        extra = w @ b
    else:
        groups, cpg = layer.groups, w.shape[1]
        b_out = b.view(groups, cpg).repeat_interleave(w.shape[0] // groups, dim=0)
        extra = (w.sum((2, 3)) * b_out).sum(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype))
    layer.bias.add_(extra)


LINEAR_PASS = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.AdaptiveAvgPool2d, nn.Flatten)  # commute with a per-channel affine


def _fold_act_bn(chain: list[nn.Module], i: int, shift_into_padded: bool = False) -> list[nn.Module]:
    """chain[i:i+3] is Conv, ReLU, BN. relu(a*z) = a*relu(z) for a >= 0, so |a| goes into the conv; the sign and the
    shift go into the next conv or linear layer when nothing between them breaks linearity. Returns the replacement
    for chain[i:i+3]."""
    conv, relu, bn = chain[i:i + 3]
    a, b = _bn_affine(bn)
    sign = torch.where(a < 0, -1.0, 1.0)
    j = i + 3
    while j < len(chain) and isinstance(chain[j], LINEAR_PASS):
        j += 1
    nxt = chain[j] if j < len(chain) else None
    fits = (isinstance(nxt, nn.Linear) and nxt.in_features == len(a)) or \
        (isinstance(nxt, nn.Conv2d) and nxt.in_channels == len(a))
    if not fits and bool((sign < 0).any()):
        return [conv, relu, bn]  # a negative scale cannot pass the ReLU and has nowhere else to go
    conv.weight.mul_(a.abs().view(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.mul_(a.abs())
    if not fits:
        return [conv, relu, ChannelShift(b)]
    _scale_in(nxt, sign)
    if isinstance(nxt, nn.Linear) or all(p == 0 for p in nxt.padding) or shift_into_padded:
        _shift_in(nxt, b)  # with padding: exact inside the map, off at its border, where padding stays 0 not b
        return [conv, relu]
    return [conv, relu, ChannelShift(sign * b)]  # y = s*(r + s*b), and the sign went into nxt


@torch.no_grad()
def fold_batchnorm(model: nn.Module, shift_into_padded: bool = False) -> nn.Module:
    """An inference copy of a FERNet with every BatchNorm folded where it is exact.

    Conv->BN pairs fuse as usual. The study's conv->ReLU->BN order keeps ONNX Runtime from fusing the BN, and
    leaves per-channel activation ranges that differ widely before the BN rescales them, which one per-tensor
    int8 scale has to cover (docs/compression.md measures the `no-fold` lever on an AVX512-VNNI CPU, where it
    cost nothing; the first measurements, on an AVX2 CPU where u8s8 sums can saturate, did not keep their
    figures). Folding the BN's scale into
    the conv in front (through the ReLU) equalises the ranges. Its shift folds exactly into a following 1x1 conv or
    linear layer; before a zero-padded conv it stays a per-channel Add unless `shift_into_padded`, which folds it
    into that conv's bias too, exact except at the map's border. Models whose forward is not a plain chain are
    returned unchanged (ONNX Runtime folds their conv->BN pairs itself)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).float().eval()
    body = getattr(model, "body", None)
    chain = _leaves(body) if body is not None else None
    if chain is None:
        return model
    chain = [m for m in chain if not isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity))]
    out: list[nn.Module] = []
    i = 0
    while i < len(chain):
        m = chain[i]
        nxt = chain[i + 1] if i + 1 < len(chain) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            out.append(fuse_conv_bn_eval(m, nxt))
            i += 2
        elif isinstance(m, nn.Conv2d) and isinstance(nxt, nn.ReLU) and i + 2 < len(chain) \
                and isinstance(chain[i + 2], nn.BatchNorm2d):
            out += _fold_act_bn(chain, i, shift_into_padded)
            i += 3
        else:
            out.append(m)
            i += 1
    model.body = nn.Sequential(*out)
    return model


class Calibration:
    """ONNX Runtime CalibrationDataReader over uint8 images [N,48,48], in batches, with an optional per-batch hook
    (the progress bar)."""

    def __init__(self, images: np.ndarray, batch: int = 32, on_batch: Callable[[int], None] | None = None) -> None:
        self.images, self.batch, self.on_batch = images, batch, on_batch
        self._it: Iterator[dict] | None = None

    def _batches(self) -> Iterator[dict]:
        from core.inference.onnx_io import INPUT_NAME

        for i in range(0, len(self.images), self.batch):
            chunk = self.images[i:i + self.batch]
            if self.on_batch is not None:
                self.on_batch(len(chunk))
            yield {INPUT_NAME: chunk.astype(np.float32)[:, None]}

    def get_next(self) -> dict | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def depthwise_nodes(path: Path) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes of an ONNX graph."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def stem_nodes(path: Path) -> list[str]:
    """The first Conv node: it sees the raw image (docs/compression.md's `stem-int8` lever measures quantising it)."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"][:1]


def cpu_has_vnni() -> bool:
    """Whether this CPU has a VNNI int8 dot product (AVX512-VNNI or AVX-VNNI). ONNX Runtime's uint8 x int8 kernels
    differ with it: without VNNI (plain AVX2/AVX512) products are summed in 16-bit pairs that can saturate, the
    caveat its quantisation docs answer with 7-bit weights (reduce_range); with VNNI they are exact. So an int8
    model's accuracy can differ between the two kinds of CPU, and the measurement records which one made it."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


# ONNX Runtime's QuantType names for each of int8_names.INT8_TYPE_NAMES (activations x weights)
INT8_TYPES = dict(zip(INT8_TYPE_NAMES, (("QUInt8", "QInt8"), ("QUInt8", "QUInt8"), ("QInt8", "QInt8"),
                                        ("QUInt16", "QInt8"))))


@dataclass(frozen=True)
class Int8Recipe:
    """How a BN-folded fp32 graph becomes int8: the levers docs/compression.md measures
    (scripts/compression_levers.py), each mapped onto onnxruntime.quantization's own arguments."""

    method: str = "static-qdq"  # INT8_METHODS
    calibrate: str = "minmax"  # CALIBRATE_METHODS: how the activation ranges are set from the calibration images
    percentile: float = 99.999  # for calibrate="percentile"
    per_channel: bool = True  # one weight scale per output channel, not per tensor
    reduce_range: bool = False  # 7-bit weights: no 16-bit saturation on CPUs without VNNI
    types: str = "u8s8"  # INT8_TYPES
    keep_stem_fp32: bool = True  # the first conv sees raw pixels
    exclude_depthwise: bool = False  # keep depthwise convs in fp32

    def __post_init__(self) -> None:
        for name, value, allowed in (("int8 method", self.method, INT8_METHODS),
                                     ("calibration method", self.calibrate, CALIBRATE_METHODS),
                                     ("int8 types", self.types, tuple(INT8_TYPES))):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not known; allowed: {', '.join(allowed)}")
        if not 50 < self.percentile < 100:
            raise ValueError(f"percentile {self.percentile!r} must be between 50 and 100")

    @property
    def static(self) -> bool:
        return self.method != "dynamic"

    @property
    def saturation_free(self) -> bool:
        """Whether no 16-bit pair sum can saturate in ONNX Runtime's x86 kernels without VNNI. Not the same as
        computing alike on both kinds: the same saturation-free files still scored lower without VNNI
        (docs/compression.md, "On the other kind of CPU")."""
        return self.reduce_range or self.types in ("u8u8", "u16s8") or not self.static

    def settings(self) -> dict[str, object]:
        """The record's description (variant.settings)."""
        act, weights = INT8_TYPES[self.types]
        out: dict[str, object] = {
            "method": self.method, "weights": f"{weights.lower()[1:]} {'per-channel' if self.per_channel else 'per-tensor'}"
            + (" 7-bit (reduce_range)" if self.reduce_range else ""), "stem_fp32": self.keep_stem_fp32,
            "depthwise_fp32": self.exclude_depthwise, "saturation_free": self.saturation_free}
        if self.static:
            out.update(activations=f"{act.lower()[1:]} per-tensor", calibrate=self.calibrate)
            if self.calibrate == "percentile":
                out["percentile"] = self.percentile
        return out


def quantize_int8(src: Path, dst: Path, calibration: Calibration | None, recipe: Int8Recipe = Int8Recipe(),
                  exclude: list[str] | None = None) -> None:
    """int8 weights with ONNX Runtime; static methods also quantise activations from the calibration images. src
    should already be BN-folded (fold_batchnorm) and pre-processed (preprocess)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    exclude = list(exclude or []) + (depthwise_nodes(src) if recipe.exclude_depthwise else [])
    act, weights = (getattr(QuantType, t) for t in INT8_TYPES[recipe.types])
    if not recipe.static:
        quantize_dynamic(str(src), str(dst), weight_type=weights, per_channel=recipe.per_channel,
                         reduce_range=recipe.reduce_range, nodes_to_exclude=exclude)
        return
    if calibration is None:
        raise ValueError(f"int8 method {recipe.method!r} needs calibration images; 'dynamic' needs none")
    fmt = QuantFormat.QDQ if recipe.method == "static-qdq" else QuantFormat.QOperator
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[recipe.calibrate]
    extra = {"CalibPercentile": recipe.percentile} if recipe.calibrate == "percentile" else {}
    quantize_static(str(src), str(dst), calibration, quant_format=fmt, per_channel=recipe.per_channel,
                    reduce_range=recipe.reduce_range, nodes_to_exclude=exclude, activation_type=act,
                    weight_type=weights, calibrate_method=calib, extra_options=extra)


def preprocess(src: Path, dst: Path) -> None:
    """ONNX Runtime's recommended pre-processing: symbolic shape inference and graph optimisation (constant folding,
    Conv+BN fusion) so that the quantiser sees the graph the runtime will run."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))


def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with the fp32 input/output contract kept (onnxconverter-common inserts the casts)."""
    import onnx
    from onnxconverter_common import float16

    proto = onnx.load(str(src))
    half = float16.convert_float_to_float16(proto, keep_io_types=True)
    onnx.save(half, str(dst))


def compact_names(path: Path) -> None:
    """Rename the graph's internal tensors and nodes to short ids and drop the cached shape annotations: the
    quantiser's names ('/body/body.3/Conv_output_0_QuantizeLinear_Output', ...) took about 28 KB of mobilenet-w1's
    167 KB int8 file. The contract's input, output and metadata keep their names; the computation is unchanged."""
    import onnx

    proto = onnx.load(str(path))
    g = proto.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        return names.setdefault(name, f"t{len(names):x}")

    for init in g.initializer:
        init.name = short(init.name)
    for node in g.node:
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
        node.name = ""
    del g.value_info[:]
    onnx.save(proto, str(path))
