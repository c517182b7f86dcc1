"""Pruning: global magnitude pruning (torch.nn.utils.prune) and structured channel pruning (torch-pruning), each
followed by a short fine-tune with the project's own training loop."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from core.data import FERData
from core.training.config import TrainConfig
from core.training.train import BatchHook, TrainState, fit, make_optimizer, resolve_device


def check_amount(amount: Any) -> float:
    """Fraction of weights (or channels) to remove: more than 0, less than 1."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not (0.0 < float(amount) < 1.0):
        raise ValueError(f"prune amount {amount!r} is not allowed: give a fraction greater than 0 and less than 1 "
                         "(0.5 removes half the weights)")
    return float(amount)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the conv and linear weights."""
    total = zeros = 0
    for m, name in prunable(model):
        w = getattr(m, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / max(total, 1)


def magnitude_prune(model: nn.Module, amount: float) -> None:
    """Global L1 pruning over every conv and linear weight: the smallest |w| across the whole model go first, so
    layers with many redundant weights lose more. The mask stays attached (fine-tuning keeps zeros at zero)."""
    from torch.nn.utils import prune

    prune.global_unstructured(prunable(model), pruning_method=prune.L1Unstructured, amount=check_amount(amount))


def make_permanent(model: nn.Module) -> None:
    from torch.nn.utils import prune

    for m, name in prunable(model):
        if prune.is_pruned(m) and hasattr(m, name + "_orig"):
            prune.remove(m, name)


def channel_prune(model: nn.Module, amount: float) -> nn.Module:
    """Remove a fraction of the channels of every conv (by L2 norm, torch-pruning's dependency graph keeping
    depthwise groups, BatchNorms and the following layers consistent): the layers really become narrower.
    torch-pruning rather than our own surgery: tracking which channels couple across depthwise convs is exactly
    what its dependency graph does."""
    import torch_pruning as tp

    model = model.eval()
    example = torch.full((1, 1, 48, 48), 128.0)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]  # the classifier keeps its 7 outputs
    pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=check_amount(amount), ignored_layers=last)
    pruner.step()
    return model


def finetune_config(parent: dict[str, Any], epochs: int, max_steps: int | None, data_source: str) -> TrainConfig:
    """The parent's recipe, shortened: a tenth of its learning rate (the weights are nearly right already), no
    warm-up, no teacher, on the CPU unless a GPU is there."""
    base = TrainConfig.from_dict({k: v for k, v in parent.get("config", {}).items()
                                  if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    return dataclasses.replace(base, epochs=epochs, max_steps=max_steps, lr=base.lr / 10, warmup_epochs=0, teacher=None,
                               data=data_source, device="auto", threads=None)


def finetune(model: nn.Module, data: FERData, cfg: TrainConfig, on_batch: BatchHook | None = None,
             log: Callable[[str], None] | None = None) -> list[dict]:
    """A few epochs of fit() on the (pruned) model; returns the per-epoch metrics."""
    device = resolve_device(cfg.device)
    state = TrainState()
    history = []
    for m in fit(model, data, cfg, device=device, optimizer=make_optimizer(cfg, model), state=state, on_batch=on_batch):
        history.append(m)
        if log is not None:
            log(f"fine-tune epoch {m['epoch']}: train acc {m['train_acc']:.4f}, {m['val_split']} acc {m['val_acc']:.4f}")
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    return history
