"""One face through one model, row by row: forward hooks collect each layer's (or block's) output, with its shape,
parameter count, channels ranked by activity, and a caption saying what kind of convolution made it."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from core.util.classes import CLASSES, NUM_CLASSES

LEVELS = ("layers", "blocks")
# Modules folded into the row before them: they keep its shape, so a row shows a conv's output after its norm and
# activation (what the next layer reads), not three near-identical grids.
ATTACHED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU,
            nn.GELU, nn.Sigmoid)
# Identity at inference (dropout, Identity) or a reshape of the row before (Flatten): no row of their own.
SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass
class Row:
    """One layer or block on the path from input to logits."""

    name: str  # the module's qualified name in the model ('input' for the image)
    kind: str  # the module's class name
    # depthwise | pointwise | standard conv | grouped conv | block | fully connected | pooling | input | logits
    role: str
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int  # parameters of the row's modules (its norm and activation included)
    caption: str  # what this row does, computed from its numbers
    maps: np.ndarray  # float32 [C, H, W]; a vector output is [F, 1, 1]
    order: np.ndarray  # channel indices, most active (mean |activation|) first
    activity: np.ndarray  # mean |activation| per channel, in `order`
    convs: list[nn.Conv2d] = field(default_factory=list, repr=False)
    single_call: bool = True  # False when its hooked module runs twice per forward (a shared ReLU): no Grad-CAM there

    @property
    def spatial(self) -> bool:
        """A map with room to localise something (Grad-CAM needs at least 2x2)."""
        return len(self.shape) == 3 and self.shape[1] > 1


@dataclass
class _Spec:
    name: str
    modules: list[tuple[str, nn.Module]]  # the row's module first, then the modules folded into it


def as_input(crop: np.ndarray) -> torch.Tensor:
    """A 48x48 face (raw 0-255 grey, the ONNX contract) as a [1, 1, 48, 48] float tensor."""
    a = np.asarray(crop)
    if a.shape != (48, 48):
        raise ValueError(f"a face crop must be 48x48 grey pixels, got shape {a.shape}")
    if not np.isfinite(a.astype(np.float64)).all():
        raise ValueError("a face crop must hold finite pixel values 0-255")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]


def conv_kind(conv: nn.Conv2d) -> str:
    """depthwise (groups == in_channels: each channel filtered alone), pointwise (1x1: channels mixed, no space),
    grouped, or standard (space and channels at once)."""
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise"
    if conv.groups > 1:
        return "grouped conv"
    return "pointwise" if tuple(conv.kernel_size) == (1, 1) else "standard conv"


def _descend(m: nn.Module, level: str, top: bool) -> bool:
    """Whether to split a module into its children. 'blocks' opens only the model wrappers and plain Sequentials;
    'layers' also opens any module holding more than one convolution, so a depthwise-separable block shows its
    depthwise and its pointwise conv as two rows."""
    if not any(True for _ in m.children()):
        return False
    if top or type(m) is nn.Sequential:
        return True
    return level == "layers" and sum(isinstance(x, nn.Conv2d) for x in m.modules()) > 1


def row_specs(model: nn.Module, level: str = "layers") -> list[_Spec]:
    """The rows of a model, in definition order (re-sorted by execution order once hooks have run)."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of: {', '.join(LEVELS)}")
    specs: list[_Spec] = []

    def walk(m: nn.Module, prefix: str, depth: int) -> None:
        for name, child in m.named_children():
            qual = f"{prefix}.{name}" if prefix else name
            if _descend(child, level, depth == 0):
                walk(child, qual, depth + 1)
            elif isinstance(child, SKIPPED) or qual == "norm":  # FERNet's fixed pixel normalisation is the input row
                continue
            elif isinstance(child, ATTACHED) and specs:
                specs[-1].modules.append((qual, child))
            else:
                specs.append(_Spec(qual, [(qual, child)]))

    walk(model, "", 0)
    return specs


def layer_names(model: nn.Module, level: str = "layers") -> list[str]:
    return [s.name for s in row_specs(model, level)]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module a row name stands for; ValueError listing the model's rows when it has no such layer."""
    for level in LEVELS:
        for spec in row_specs(model, level):
            if spec.name == name:
                return spec.modules[-1][1]
    raise ValueError(f"the model has no layer {name!r}; its layers are: {', '.join(layer_names(model))}")


def _hook_outputs(model: nn.Module, specs: list[_Spec], x: torch.Tensor) -> tuple[torch.Tensor, dict[int, tuple]]:
    """Run the model once; per spec: (call order, first output, number of calls)."""
    seen: dict[int, list] = {}
    handles = []
    for i, spec in enumerate(specs):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor, i: int = i) -> None:
            if i in seen:
                seen[i][2] += 1  # a module reused in one forward (ResNet's ReLU): keep its first output
            else:
                seen[i] = [len(seen), out.detach().float().clone(), 1]  # clone: a later in-place op must not change it
        handles.append(spec.modules[-1][1].register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, {i: tuple(v) for i, v in seen.items()}


def feature_maps(model: nn.Module, crop: np.ndarray, level: str = "layers") -> list[Row]:
    """Every row's output for one face: the input first, the logits last. Rows whose module never ran (an empty
    ShuffleNet branch) are left out."""
    x = as_input(crop)
    specs = row_specs(model, level)
    logits, seen = _hook_outputs(model, specs, x)
    probs = torch.softmax(logits[0], 0).numpy()
    rows = [_row("input", "image", "input", x[0].numpy(), 0, [], "")]
    for i in sorted(seen, key=lambda i: seen[i][0]):
        spec, (_, out, calls) = specs[i], seen[i]
        mods = [m for _, m in spec.modules]
        params = sum(p.numel() for p in {id(p): p for m in mods for p in m.parameters()}.values())
        convs = [c for m in mods for c in m.modules() if isinstance(c, nn.Conv2d)]
        rows.append(_row(spec.name, type(mods[0]).__name__, _role(mods[0], convs), out[0].numpy(), params, convs, "",
                         single_call=calls == 1))
    last = rows[-1]
    if last.role == "fully connected" and last.shape == (NUM_CLASSES,):
        last.role = "logits"
    for prev, row in zip(rows, rows[1:]):
        row.caption = _caption(row, prev, probs)
    rows[0].caption = "The 48x48 crop as the model sees it; the model normalises its 0-255 pixels inside the graph."
    return rows


def probabilities(rows: list[Row]) -> np.ndarray:
    """The class probabilities from the logits row of feature_maps' output."""
    z = rows[-1].maps.ravel().astype(np.float64)
    if rows[-1].role != "logits":
        raise ValueError(f"the last row ({rows[-1].name}) is not the model's {NUM_CLASSES} logits")
    e = np.exp(z - z.max())
    return e / e.sum()


def _row(name: str, kind: str, role: str, out: np.ndarray, params: int, convs: list[nn.Conv2d], caption: str,
         single_call: bool = True) -> Row:
    maps = out.reshape(out.shape[0], 1, 1) if out.ndim == 1 else out.reshape(out.shape[0], *out.shape[-2:])
    activity = np.abs(maps).mean(axis=(1, 2))
    order = np.argsort(-activity, kind="stable")
    return Row(name, kind, role, tuple(out.shape), int(params), caption, maps.astype(np.float32), order,
               activity[order], convs, single_call)


def _role(module: nn.Module, convs: list[nn.Conv2d]) -> str:
    if len(convs) == 1:
        return conv_kind(convs[0])
    if convs:
        return "block"
    if isinstance(module, nn.Linear):
        return "fully connected"
    return "pooling" if isinstance(module, POOLS) else module.__class__.__name__


def _k(conv: nn.Conv2d) -> str:
    return "x".join(map(str, conv.kernel_size))


def _conv_caption(conv: nn.Conv2d, prev: Row) -> str:
    cin, cout, n = conv.in_channels, conv.out_channels, conv.weight.numel()
    kind, k, kk = conv_kind(conv), _k(conv), conv.kernel_size[0] * conv.kernel_size[1]
    if kind == "depthwise":
        return (f"Depthwise {k}: each of its {cin} channels is filtered alone by its own {k} kernel "
                f"({kk} weights per channel, {n:,} in all); no channel sees another.")
    if kind == "pointwise":
        text = (f"Pointwise 1x1: each of its {cout} output channels is a weighted mix of all {cin} input channels "
                f"({cin} x {cout} = {n:,} weights); no spatial filtering.")
        dw = prev.convs[-1] if prev.role == "depthwise" and prev.convs else None
        if dw is not None and dw.out_channels == cin:
            sep, std = dw.weight.numel() + n, dw.kernel_size[0] * dw.kernel_size[1] * cin * cout
            text += (f" With the depthwise row above: {sep:,} weights, where one standard {_k(dw)} conv from {cin} "
                     f"to {cout} channels would need {std:,} ({std / sep:.1f}x more).")
        return text
    if kind == "grouped conv":
        return f"Grouped {k} conv: {conv.groups} groups of {cin // conv.groups} channels each ({n:,} weights)."
    if cin == 1:
        return (f"Standard {k} conv on the grey image: {cout} filters of {k} ({n:,} weights), each a small pattern "
                "detector for edges and light/dark blobs.")
    sep = kk * cin + cin * cout
    return (f"Standard {k} conv: filters space and mixes all {cin} input channels at once ({k} x {cin} x {cout} = "
            f"{n:,} weights); a depthwise {k} + pointwise 1x1 pair would need {sep:,} ({n / sep:.1f}x fewer).")


def _caption(row: Row, prev: Row, probs: np.ndarray) -> str:
    """What the row does, from its own numbers (the study's argument: where space is filtered, where channels mix)."""
    if row.role == "logits":
        top = int(np.argmax(probs))
        return (f"The logits: one score per class; softmax makes them probabilities. Top: {CLASSES[top]} "
                f"({probs[top]:.0%}).")
    if len(row.convs) == 1:
        return _conv_caption(row.convs[0], prev)
    if row.convs:
        kinds = [conv_kind(c) for c in row.convs]
        weights = {k: sum(c.weight.numel() for c, kk in zip(row.convs, kinds) if kk == k) for k in set(kinds)}
        total = sum(weights.values())
        parts = ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))
        return (f"Block of {len(row.convs)} convolutions ({parts}): {weights.get('pointwise', 0) / total:.0%} of its "
                f"{total:,} conv weights are in 1x1 pointwise convs, {weights.get('depthwise', 0) / total:.0%} in "
                "depthwise ones.")
    if row.role == "fully connected":
        fin = prev.maps.size
        return (f"Fully connected: each of its {row.shape[0]} outputs reads all {fin:,} inputs "
                f"({row.params:,} parameters).")
    if row.role == "pooling":
        how = "keeps the strongest response in each window" if "Max" in row.kind else "averages each map"
        return f"{row.kind}: no weights; {how}, {prev.shape[-1]}x{prev.shape[-1]} -> {row.shape[-1]}x{row.shape[-1]}."
    return f"{row.kind}: {row.params:,} parameters."


def _tile_side(h: int) -> int:
    # big maps at their size (or 2x), small ones enlarged so a 6x6 or 1x1 map is still visible
    return int(min(64, max(16, 2 * h)))


def tile_grid(tiles: np.ndarray, tile: int, cols: int = 16, gap: int = 2) -> np.ndarray:
    """[N, h, w, 3] uint8 tiles -> one RGB image, `cols` tiles per line, each enlarged to `tile` px (nearest)."""
    import cv2

    n = len(tiles)
    cols = max(1, min(cols, n))
    lines = -(-n // cols)
    out = np.full((lines * (tile + gap) - gap, cols * (tile + gap) - gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        y, x = divmod(i, cols)
        out[y * (tile + gap):y * (tile + gap) + tile, x * (tile + gap):x * (tile + gap) + tile] = cv2.resize(
            t, (tile, tile), interpolation=cv2.INTER_NEAREST)
    return out


@lru_cache(maxsize=1)
def _viridis() -> np.ndarray:
    """OpenCV's viridis as a 256x3 RGB table: indexing it is ~100x faster than applyColorMap per small map."""
    import cv2

    return cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0, ::-1].copy()


def channel_grid(row: Row, n: int = 16, cols: int = 16) -> np.ndarray:
    """The row's `n` most active channels as one RGB image (viridis). One scale for the whole row, not per channel,
    so a weakly active channel looks dark instead of being stretched to look as busy as the strongest."""
    if n < 1:
        raise ValueError(f"number of channels to show must be at least 1, got {n}")
    maps = row.maps[row.order[:n]]
    # percentiles, not min/max: after BatchNorm a few extreme pixels would otherwise leave every map near-black
    lo, hi = min(0.0, float(np.percentile(maps, 1))), float(np.percentile(maps, 99.5))
    scaled = np.zeros_like(maps) if hi <= lo else np.clip((maps - lo) / (hi - lo), 0, 1)
    if row.role == "input":  # the face itself, in grey as the Predict page shows it
        grey = np.clip(row.maps[0], 0, 255).astype(np.uint8)  # raw 0-255 pixels, shown as they are
        return tile_grid(np.repeat(grey[None, :, :, None], 3, axis=3), 96, 1)
    return tile_grid(_viridis()[(scaled * 255).astype(np.uint8)], _tile_side(maps.shape[1]), cols)


def diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """Blue (negative) - white (0) - red (positive) RGB; OpenCV has no diverging colour map, so it is built here."""
    t = np.clip(np.asarray(values, np.float32) / (scale or 1.0), -1, 1)[..., None]
    white, red, blue = (np.array([255, 255, 255], np.float32), np.array([200, 30, 40], np.float32),
                        np.array([30, 80, 200], np.float32))
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return rgb.astype(np.uint8)


def first_filters(model: nn.Module, cols: int = 16) -> tuple[np.ndarray, str]:
    """The first convolution's kernels as one RGB grid (strongest first) and a caption saying what they are."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no convolution layer")
    w = conv.weight.detach().float().numpy()[:, 0]  # every registered family reads one grey channel
    order = np.argsort(-np.sqrt((w ** 2).sum(axis=(1, 2))), kind="stable")
    scale = float(np.abs(w).max())
    grid = tile_grid(diverging(w[order], scale), 36, cols)
    caption = (f"The first layer's {conv.out_channels} filters, {_k(conv)} each, strongest first (red adds, blue "
               f"subtracts, one scale for all): each slides over the face and lights up where the pixels match it, "
               f"mostly edges and light/dark blobs.")
    return grid, caption
