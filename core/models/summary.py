"""Model summary: parameter counts, MACs, fp32 size and a per-layer table, built on the meta device (no real weights)."""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.models import archs

if TYPE_CHECKING:
    import pandas as pd

INPUT_SHAPE = (1, 1, 48, 48)
# nn.init is patched process-wide during a meta build; Streamlit runs sessions in threads, so builds take turns.
_summary_lock = threading.Lock()


@dataclass(frozen=True)
class ModelSummary:
    arch: str
    knobs: dict[str, float]
    params: int  # all parameters (what the study counts)
    trainable: int
    buffers: int  # BatchNorm running stats etc.: stored in the checkpoint but not learned
    macs: int  # multiply-accumulates for one 48x48 image (FLOPs / 2, from torch.utils.flop_counter)
    size_bytes: int  # fp32 parameters + buffers, i.e. the weight file's payload
    rows: tuple[dict, ...]  # one per leaf layer: layer, type, output shape, params, MACs

    @cached_property
    def layers(self) -> "pd.DataFrame":
        """The rows as a table. pandas is imported here, not at module level: a training process records its
        model's summary but never shows the table, and pandas would add ~65 MB to it."""
        import pandas as pd

        return pd.DataFrame(list(self.rows), columns=["layer", "type", "output", "params", "macs"])

    def as_dict(self) -> dict:
        return {
            "arch": self.arch, "knobs": self.knobs, "params": self.params, "trainable": self.trainable,
            "buffers": self.buffers, "macs": self.macs, "size_bytes": self.size_bytes,
            "layers": [dict(r) for r in self.rows],
        }


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def summarize_model(model: nn.Module, arch: str = "", knobs: dict[str, float] | None = None) -> ModelSummary:
    """Summarise an existing model; it may live on the meta device (shapes only)."""
    device = next(model.parameters()).device
    rows: list[dict] = []
    handles = []
    for name, module in _leaf_modules(model):
        def hook(mod: nn.Module, _inp: object, out: object, name: str = name) -> None:
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
            rows.append({
                "layer": name, "type": type(mod).__name__, "output": "x".join(map(str, shape)),
                "params": sum(p.numel() for p in mod.parameters(recurse=False)),
            })
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(INPUT_SHAPE, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    # FlopCounterMode keys per-module totals by "<RootClass>.<path>"; leaf paths give per-layer MACs.
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    for row in rows:
        row["macs"] = sum(per_module.get(f"{root}.{row['layer']}", {}).values()) // 2
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return ModelSummary(
        arch=arch, knobs=dict(knobs or {}), params=params, trainable=trainable, buffers=buffers,
        macs=counter.get_total_flops() // 2, size_bytes=4 * (params + buffers), rows=tuple(rows),
    )


# Layers whose output has their input's shape and which the flop counter does not count. On the meta device
# each of them still costs a trip through torch's Python reference kernels (BatchNorm most of all), so the
# summary pass runs them as identity: same shapes, same MACs, 4-10x faster (docs/benchmarks.md).
_SHAPE_KEEPING = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid,
                  nn.SiLU, nn.Dropout, nn.Dropout2d, nn.Identity)


def _identity(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return x


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Skip torch.nn.init during the meta build: initialising meta tensors computes nothing but still costs
    Python dispatch per tensor (a third of the summary time for torchvision's families)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


@lru_cache(maxsize=512)
def summarize_cached(arch: str, knob_items: tuple[tuple[str, float], ...]) -> ModelSummary:
    knobs = dict(knob_items)
    with _summary_lock, _no_init(), torch.device("meta"):  # shapes only: no memory, no init
        model = archs.build(arch, **knobs)
    for module in model.modules():  # a throwaway model: safe to rewire for the shape pass
        if isinstance(module, _SHAPE_KEEPING):
            module.forward = _identity
    return summarize_model(model, arch, knobs)


def summarize(arch: str, **knobs: float) -> ModelSummary:
    """Summary for a registry architecture; validated knobs, cached so slider moves back and forth are free."""
    resolved = archs.get_family(arch).resolve(**knobs)
    return summarize_cached(arch, tuple(sorted(resolved.items())))
