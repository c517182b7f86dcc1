"""Registry of facial-expression CNN families, each buildable at any width for 1x48x48 input and 7 classes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from core.util.classes import NUM_CLASSES

# Inputs arrive as raw 0-255 grayscale (the ONNX contract), so every model starts with a fixed,
# parameter-free normalisation. Mean/std of FER2013's training pixels, measured on the image-folder release.
PIXEL_MEAN = 129.4
PIXEL_STD = 65.0

WIDTH_MIN = 0.0625  # plain_cnn at 0.0625 has ~14k parameters: a small-budget point beside mobilenet-w0.25
WIDTH_MAX = 3.0


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10% (torchvision's rule)."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class PixelNorm(nn.Module):
    """Maps raw 0-255 pixels to roughly zero mean, unit variance; constants, not buffers, so the state dict stays
    pure weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - PIXEL_MEAN) * (1.0 / PIXEL_STD)


# ---------------------------------------------------------------------------------------------------------
# Knobs: every family declares its knobs once; the CLI, the UI sliders and validation all read this table.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    name: str
    default: float
    low: float
    high: float
    step: float
    help: str

    def check(self, value: float) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{self.name} must be a number in [{self.low}, {self.high}], got {value!r}")
        if not (self.low <= value <= self.high):
            raise ValueError(f"{self.name}={value!r} is out of range: allowed {self.low} to {self.high}")
        return float(value)


WIDTH_KNOB = Knob("width", 1.0, WIDTH_MIN, WIDTH_MAX, 0.125, "channel multiplier, rounded to multiples of 8")


def dropout_knob(default: float) -> Knob:
    return Knob("dropout", default, 0.0, 0.8, 0.05, "dropout probability")


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    builder: Callable[..., nn.Module]
    knobs: tuple[Knob, ...]
    description: str
    depthwise: bool  # whether the family is built from depthwise-separable convolutions (for the study's comparison)
    reference: dict[str, Any] = field(default_factory=dict)  # the study's model at width 1.0, where there is one
    # Whether precision "auto" trains the family in bf16 on a CPU with native bf16. Measured, not assumed: on a
    # 2-core EPYC with AVX512-BF16 (one thread, batch 128, FER2013, median of 3, 2026-12-07) bf16 against fp32 was
    # plain_cnn 1.15x-2.44x (widths 0.0625-0.5), mobilenet_v2 1.30x and shufflenet_v2 1.04x, but mobilenet 0.88x-0.93x
    # at widths 0.5-1 (1.02x-1.03x at 1.5-2) and mobilenet_v3_small 0.42x: their depthwise, thin 1x1 and (in v3)
    # squeeze-excitation and hard-swish layers are memory-bound, so bf16's casts cost more than its arithmetic saves.
    # resnet18 is not measured; its dense 3x3 convolutions are the kind bf16 speeds up.
    cpu_bf16: bool = True

    def defaults(self) -> dict[str, float]:
        return {k.name: k.default for k in self.knobs}

    def resolve(self, **knobs: float) -> dict[str, float]:
        """Fill defaults and validate; unknown knob names raise ValueError naming the allowed ones."""
        allowed = {k.name: k for k in self.knobs}
        unknown = sorted(set(knobs) - set(allowed))
        if unknown:
            raise ValueError(f"{self.name} has no knob {unknown}; allowed: {sorted(allowed)}")
        out = self.defaults()
        for name, value in knobs.items():
            if value is not None:
                out[name] = allowed[name].check(value)
        return out


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"architecture {family.name!r} is already registered")
    _REGISTRY[family.name] = family
    return family


def list_archs() -> list[str]:
    return list(_REGISTRY)


def get_family(name: str) -> Family:
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build(name: str, **knobs: float) -> nn.Module:
    """Build a model by registry name; knobs are validated against the family's table."""
    family = get_family(name)
    return family.builder(**family.resolve(**knobs))


class FERNet(nn.Module):
    """Wraps a body with the in-graph pixel normalisation so exported models take raw pixels."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.norm = PixelNorm()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))


# ---------------------------------------------------------------------------------------------------------
# plain_cnn: the study's VGG-style network. Stage table: (output channels, convs in stage); each stage ends
# in MaxPool2d(2), so 48 -> 24 -> 12 -> 6. Then two hidden fully connected layers.
# ---------------------------------------------------------------------------------------------------------
PLAIN_STAGES: tuple[tuple[int, int], ...] = (
    (64, 2),
    (64, 2),
    (128, 2),
)
PLAIN_HIDDEN = 512


class ConvBNAct(nn.Sequential):
    """Conv 3x3 (with bias, as in the study) -> BatchNorm -> LeakyReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01, inplace=True))


def plain_cnn(*, width: float = 1.0, dropout: float = 0.5) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 1
    for channels, convs in PLAIN_STAGES:
        cout = make_divisible(channels * width)
        for _ in range(convs):
            layers.append(ConvBNAct(cin, cout))
            cin = cout
        layers.append(nn.MaxPool2d(2))
    hidden = make_divisible(PLAIN_HIDDEN * width)
    body = nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(cin * 6 * 6, hidden), nn.LeakyReLU(0.01, inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.LeakyReLU(0.01, inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, NUM_CLASSES),
    )
    return FERNet(body)


# ---------------------------------------------------------------------------------------------------------
# mobilenet: the study's depthwise-separable network. Block table: (output channels, depthwise stride).
# Each block is depthwise 3x3 -> pointwise 1x1; each conv is followed by ReLU then BatchNorm (the study's
# order), and a Dropout follows the stem and every pointwise conv. Those dropouts are channel-wise (Dropout2d):
# neighbouring activations of a feature map are correlated, so element-wise dropout regularises little there,
# and it draws B*C*H*W random numbers per layer instead of B*C - measured 1.45x slower CPU training at p=0.1.
# ---------------------------------------------------------------------------------------------------------
MOBILENET_STEM = 16
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (32, 1),
    (32, 1),
    (64, 2),
    (64, 1),
    (128, 1),
    (128, 1),
    (128, 2),
    (128, 1),
    (256, 1),
)


class ConvActBN(nn.Sequential):
    """Bias-free conv -> ReLU -> BatchNorm, the study's ordering; `groups=cin` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(cout),
        )


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (spatial filtering, 9 weights per channel) then pointwise 1x1 (all channel mixing)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__(
            ConvActBN(cin, cin, 3, stride=stride, groups=cin),
            ConvActBN(cin, cout, 1),
            nn.Dropout2d(dropout),
        )


def set_dropout_kind(model: nn.Module, kind: str) -> int:
    """Make every feature-map dropout of `model` channel-wise (`Dropout2d`, this project's default) or element-wise
    (`Dropout`, as the study), in place, keeping each rate; returns how many layers changed. Dropout has no weights
    and is off at inference, so the kind is a training setting: checkpoints load and export alike either way."""
    kinds = {"channel": nn.Dropout2d, "element": nn.Dropout}
    if kind not in kinds:
        raise ValueError(f"dropout kind must be one of {', '.join(kinds)}, got {kind!r}")
    other = nn.Dropout if kind == "channel" else nn.Dropout2d
    changed = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            # the classifier's nn.Dropout on pooled [B, C] features has no maps; only 4-D feature-map layers switch
            if type(child) is other and _feeds_feature_maps(parent, name):
                setattr(parent, name, kinds[kind](child.p))
                changed += 1
    return changed


def _feeds_feature_maps(parent: nn.Module, name: str) -> bool:
    """True when the dropout `name` in `parent` follows a convolution, not pooling or Flatten (where maps are gone)."""
    names = [n for n, _ in parent.named_children()]
    before = [parent.get_submodule(n) for n in names[:names.index(name)]]
    if not before or any(isinstance(m, (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d)) for m in before):
        return False
    return any(isinstance(m, nn.Conv2d) for m in before[-1].modules())


def mobilenet(*, width: float = 1.0, dropout: float = 0.1) -> nn.Module:
    stem = make_divisible(MOBILENET_STEM * width)
    layers: list[nn.Module] = [ConvActBN(1, stem, 3, stride=2), nn.Dropout2d(dropout)]
    cin = stem
    for channels, stride in MOBILENET_BLOCKS:
        cout = make_divisible(channels * width)
        layers.append(DepthwiseSeparable(cin, cout, stride, dropout))
        cin = cout
    # The study's listing puts a Dropout after the final Linear; dropping logits only adds noise to the
    # loss, so the dropout sits before the classifier here (same parameter count).
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                         nn.Linear(cin, NUM_CLASSES))
    return FERNet(body)


# ---------------------------------------------------------------------------------------------------------
# torchvision families, adapted to one input channel and 48 px: the stride-2 stem becomes stride 1 (the
# ImageNet stems downsample 224 px by 4 before the first block, which would leave 48 px faces 1-2 px wide).
# ---------------------------------------------------------------------------------------------------------
def _gray_stem(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(1, conv.out_channels, conv.kernel_size, stride=1, padding=conv.padding, bias=conv.bias is not None)


# torchvision is imported inside each builder: it (with PIL) adds ~170 MB to every process that imports it, and a
# training of the study's own families never needs it (a shared server's memory budget).
def mobilenet_v2(*, width: float = 1.0, dropout: float = 0.2) -> nn.Module:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    model = tv_mobilenet_v2(weights=None, num_classes=NUM_CLASSES, width_mult=width, dropout=dropout)
    model.features[0][0] = _gray_stem(model.features[0][0])
    return FERNet(model)


def mobilenet_v3_small(*, width: float = 1.0, dropout: float = 0.2) -> nn.Module:
    from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small

    model = tv_mobilenet_v3_small(weights=None, num_classes=NUM_CLASSES, width_mult=width, dropout=dropout)
    model.features[0][0] = _gray_stem(model.features[0][0])
    return FERNet(model)


# ShuffleNetV2 1.0x stage widths; channel split needs even counts, so round to multiples of 4.
SHUFFLENET_STAGES: tuple[int, ...] = (24, 116, 232, 464, 1024)
SHUFFLENET_REPEATS: tuple[int, ...] = (4, 8, 4)


def shufflenet_v2(*, width: float = 1.0) -> nn.Module:
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    channels = [make_divisible(c * width, 4) for c in SHUFFLENET_STAGES[:-1]] + [SHUFFLENET_STAGES[-1]]
    model = ShuffleNetV2(list(SHUFFLENET_REPEATS), channels, num_classes=NUM_CLASSES)
    model.conv1[0] = _gray_stem(model.conv1[0])
    model.maxpool = nn.Identity()  # keep 48 px resolution for the first stage (see note above)
    return FERNet(model)


# ResNet-18 stage table: (channels, blocks, stride). torchvision's ResNet hard-codes 64..512 channels, so the
# stages are assembled here from its BasicBlock to let width scale them.
RESNET18_STAGES: tuple[tuple[int, int, int], ...] = (
    (64, 2, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 2, 2),
)


def resnet18(*, width: float = 1.0) -> nn.Module:
    from torchvision.models.resnet import BasicBlock

    stem = make_divisible(64 * width)
    layers: list[nn.Module] = [nn.Conv2d(1, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem),
                               nn.ReLU(inplace=True)]
    cin = stem
    for channels, blocks, stride in RESNET18_STAGES:
        cout = make_divisible(channels * width)
        for i in range(blocks):
            s = stride if i == 0 else 1
            downsample = None
            if s != 1 or cin != cout:
                downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=s, bias=False), nn.BatchNorm2d(cout))
            layers.append(BasicBlock(cin, cout, stride=s, downsample=downsample))
            cin = cout
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, NUM_CLASSES))
    return FERNet(body)


register(Family(
    "plain_cnn", "Plain CNN (VGG-style)", plain_cnn, (WIDTH_KNOB, dropout_knob(0.5)),
    "Six 3x3 convolutions in three stages, then two 512-wide fully connected layers: the study's large model.",
    depthwise=False, reference={"params": 2_959_943, "public": 0.72220, "private": 0.71412},
))
register(Family(
    "mobilenet", "MobileNet-style (depthwise-separable)", mobilenet, (WIDTH_KNOB, dropout_knob(0.1)),
    "A stride-2 stem and nine depthwise-separable blocks, then global pooling: the study's small model.",
    depthwise=True, reference={"params": 109_607, "public": 0.65059, "private": 0.64558}, cpu_bf16=False,
))
register(Family(
    "mobilenet_v2", "MobileNetV2 (torchvision)", mobilenet_v2, (WIDTH_KNOB, dropout_knob(0.2)),
    "Inverted residuals with linear bottlenecks; torchvision's builder with a 1-channel stride-1 stem.",
    depthwise=True,
))
register(Family(
    "mobilenet_v3_small", "MobileNetV3-Small (torchvision)", mobilenet_v3_small, (WIDTH_KNOB, dropout_knob(0.2)),
    "Inverted residuals with squeeze-excitation and hard-swish; torchvision's builder, 1-channel stride-1 stem.",
    depthwise=True, cpu_bf16=False,
))
register(Family(
    "shufflenet_v2", "ShuffleNetV2 (torchvision)", shufflenet_v2, (WIDTH_KNOB,),
    "Channel split and shuffle around depthwise convolutions; torchvision's model with stage widths scaled.",
    depthwise=True,
))
register(Family(
    "resnet18", "ResNet-18 (torchvision blocks)", resnet18, (WIDTH_KNOB,),
    "Residual 3x3 basic blocks in four stages (CIFAR-style stem), from torchvision's BasicBlock.",
    depthwise=False,
))
