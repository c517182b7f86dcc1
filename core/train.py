"""Training engine: a generator of per-epoch metrics, plus evaluation. It knows nothing of files or reporting."""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.augment import augment_batch
from core.classes import NUM_CLASSES
from core.config import TrainConfig
from core.data import FERData, Split

BatchHook = Callable[[dict], None]


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; asking for a missing accelerator is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device 'cuda' is not available here; available: {', '.join(available_devices())}")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError(f"device 'mps' is not available here; available: {', '.join(available_devices())}")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, mps")
    return torch.device(name)


def available_devices() -> list[str]:
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions run in hardware. Elsewhere oneDNN emulates bf16, which is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision: on CUDA by default (bf16 where supported, else fp16); on CPUs with native bf16 by
    default (about 2x the fp32 throughput with channels_last, see docs/benchmarks.md); fp32 elsewhere."""
    if cfg.precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.precision == "bf16" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


@dataclass
class TrainState:
    """Everything needed to continue a run after its last finished epoch."""

    epoch: int = 0  # finished epochs
    steps: int = 0  # optimiser steps taken
    history: list[dict] = field(default_factory=list)


class StopRun(Exception):
    """Raised inside the loop when training must end early with a reason (NaN loss)."""


def stratified_subset(split: Split, n: int, seed: int) -> Split:
    """Keep n images with the class balance of the split (classroom-sized runs)."""
    if n >= len(split):
        return split
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(split))
    # interleave classes in proportion by taking the first n of a per-class round-robin-by-rank order
    ranks = np.empty(len(split))
    for c in range(NUM_CLASSES):
        members = idx[split.labels[idx] == c]
        ranks[members] = (np.arange(len(members)) + 0.5) / max(len(members), 1)
    keep = np.sort(np.argsort(ranks, kind="stable")[:n])
    return Split(split.images[keep], split.labels[keep])


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate for a step: linear warm-up, then cosine to zero or constant. A pure function of the step,
    so a resumed run continues on exactly the same curve."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss, scaled by T^2 so its gradients match the hard-label term's size."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean", log_target=True) * t * t


def _to_device_images(split: Split, device: torch.device) -> torch.Tensor:
    # uint8 on the device: 4x less memory traffic than float, converted per batch
    return torch.from_numpy(np.ascontiguousarray(split.images)).unsqueeze(1).to(device)


def prepare_input(xb: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = xb.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device, batch_size: int = 512,
                   amp: torch.dtype | None = None, channels_last: bool = False) -> torch.Tensor:
    """Logits for uint8 images [N,48,48] (or [N,1,48,48]); model in eval mode; returns float32 on CPU."""
    was_training = model.training
    model.eval()
    x_all = torch.as_tensor(images)
    if x_all.ndim == 3:
        x_all = x_all.unsqueeze(1)
    outs = []
    try:
        for i in range(0, len(x_all), batch_size):
            xb = prepare_input(x_all[i:i + batch_size].to(device), channels_last)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                outs.append(model(xb).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0, NUM_CLASSES)


def metrics_from_logits(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict:
    """Loss, accuracy, per-class accuracy and the confusion matrix (rows = true class, columns = predicted)."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "per_class": [float("nan")] * NUM_CLASSES,
                "confusion": [[0] * NUM_CLASSES for _ in range(NUM_CLASSES)], "n": 0}
    pred = logits.argmax(1)
    conf = torch.bincount(labels * NUM_CLASSES + pred, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    support = conf.sum(1)
    per_class = [float(conf[c, c] / support[c]) if support[c] > 0 else float("nan") for c in range(NUM_CLASSES)]
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": (pred == labels).float().mean().item(),
        "per_class": per_class,
        "confusion": conf.tolist(),
        "n": len(labels),
    }


def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 512, **kw) -> dict:
    """Metrics of a PyTorch model on a split (see metrics_from_logits)."""
    return metrics_from_logits(predict_logits(model, split.images, device, batch_size, **kw), split.labels)


def fit(
    model: nn.Module,
    data: FERData,
    cfg: TrainConfig,
    *,
    device: torch.device,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    teacher: nn.Module | None = None,
    on_batch: BatchHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[dict]:
    """Train epoch by epoch from `state`, yielding each finished epoch's metrics.

    The generator mutates `model`, `optimizer` and `state`; the caller saves checkpoints between yields.
    A stop request returns after the current batch without yielding the unfinished epoch.
    """
    train = data.splits["train"]
    if cfg.subset:
        train = stratified_subset(train, cfg.subset, cfg.seed)
    val = data.splits[data.val_split]
    n = len(train)
    if n == 0:
        raise ValueError(f"{data.source}: the training split is empty")
    batch = min(cfg.batch_size, n)
    drop_last = n > batch  # a trailing batch of 1-2 images gives BatchNorm useless statistics
    steps_per_epoch = n // batch if drop_last else 1
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    channels_last = device.type == "cpu"  # measured faster for these convnets on CPU (docs/benchmarks.md)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shapes are fixed, so the autotuned kernels are reused every step
    amp = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device).eval()
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
    x_train = _to_device_images(train, device)
    y_train = torch.from_numpy(train.labels).to(device)

    while state.epoch < cfg.epochs and (not cfg.max_steps or state.steps < cfg.max_steps):
        epoch = state.epoch
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # resumable: depends on epoch only
        order = torch.randperm(n, generator=gen).to(device)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        stopped = False
        for i in range(steps_per_epoch):
            if cfg.max_steps and state.steps >= cfg.max_steps:
                break
            if should_stop is not None and should_stop():
                stopped = True
                break
            idx = order[i * batch:(i + 1) * batch]
            xb = prepare_input(x_train[idx], channels_last)
            yb = y_train[idx]
            if cfg.augment:
                xb = augment_batch(xb, gen)
            lr = lr_at(cfg, state.steps, total_steps, steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb).float()
                    loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * distillation_loss(logits.float(), t_logits, cfg.distill_temperature)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            state.steps += 1
            bs = len(yb)
            seen += bs
            loss_sum += loss.detach() * bs
            correct += (logits.argmax(1) == yb).sum()
            if on_batch is not None:
                lv = loss.item()  # syncs; only paid when someone is listening
                if not math.isfinite(lv):
                    raise StopRun(f"loss became {lv} at epoch {epoch + 1}, step {i + 1}: lower the learning rate")
                on_batch({"epoch": epoch + 1, "step": i + 1, "steps": steps_per_epoch, "loss": lv, "lr": lr,
                          "global_step": state.steps, "total_steps": total_steps,
                          "seconds": time.perf_counter() - t0})
        if stopped or seen == 0:
            return
        train_loss = (loss_sum / seen).item()
        if not math.isfinite(train_loss):
            raise StopRun(f"loss became {train_loss} in epoch {epoch + 1}: lower the learning rate")
        train_seconds = time.perf_counter() - t0
        ev = evaluate(model, val, device, amp=amp, channels_last=channels_last)
        state.epoch += 1
        metrics = {
            "epoch": state.epoch, "steps": state.steps,
            "train_loss": train_loss, "train_acc": correct.item() / seen,
            "val_loss": ev["loss"], "val_acc": ev["accuracy"], "val_split": data.val_split,
            "lr": lr, "seconds": time.perf_counter() - t0, "images_per_s": seen / train_seconds,
        }
        state.history.append(metrics)
        yield metrics
        if cfg.max_steps and state.steps >= cfg.max_steps:
            return
