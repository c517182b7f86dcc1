"""Model summary: parameter counts, MACs, fp32 size and a per-layer table, built on the meta device (no real weights)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core import archs

INPUT_SHAPE = (1, 1, 48, 48)


@dataclass(frozen=True)
class ModelSummary:
    arch: str
    knobs: dict[str, float]
    params: int  # all parameters (what the study counts)
    trainable: int
    buffers: int  # BatchNorm running stats etc.: stored in the checkpoint but not learned
    macs: int  # multiply-accumulates for one 48x48 image (FLOPs / 2, from torch.utils.flop_counter)
    size_bytes: int  # fp32 parameters + buffers, i.e. the weight file's payload
    layers: pd.DataFrame  # layer, type, output shape, params, MACs

    def as_dict(self) -> dict:
        return {
            "arch": self.arch, "knobs": self.knobs, "params": self.params, "trainable": self.trainable,
            "buffers": self.buffers, "macs": self.macs, "size_bytes": self.size_bytes,
            "layers": self.layers.to_dict(orient="records"),
        }


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def summarize_model(model: nn.Module, arch: str = "", knobs: dict[str, float] | None = None) -> ModelSummary:
    """Summarise an existing model; it may live on the meta device (shapes only)."""
    device = next(model.parameters()).device
    rows: list[dict] = []
    handles = []
    for name, module in _leaf_modules(model):
        def hook(mod: nn.Module, _inp, out, name: str = name) -> None:
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
    table = pd.DataFrame(rows, columns=["layer", "type", "output", "params", "macs"])
    return ModelSummary(
        arch=arch, knobs=dict(knobs or {}), params=params, trainable=trainable, buffers=buffers,
        macs=counter.get_total_flops() // 2, size_bytes=4 * (params + buffers), layers=table,
    )


@lru_cache(maxsize=512)
def _summarize_cached(arch: str, knob_items: tuple[tuple[str, float], ...]) -> ModelSummary:
    knobs = dict(knob_items)
    with torch.device("meta"):  # shapes only: a 10M-parameter model costs no memory and no init time
        model = archs.build(arch, **knobs)
    return summarize_model(model, arch, knobs)


def summarize(arch: str, **knobs: float) -> ModelSummary:
    """Summary for a registry architecture; validated knobs, cached so slider moves back and forth are free."""
    resolved = archs.get_family(arch).resolve(**knobs)
    return _summarize_cached(arch, tuple(sorted(resolved.items())))


def count_params(arch: str, **knobs: float) -> int:
    return summarize(arch, **knobs).params
