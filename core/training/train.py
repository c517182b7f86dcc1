"""Training engine: a generator of per-epoch metrics, plus evaluation. It knows nothing of files or reporting."""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from core.data import FERData, Split
from core.data.augment import (
    AFFINE_COLS,
    ERASE_COLS,
    MIX_PARAMS,
    RANDOMS_PER_IMAGE,
    affine,
    mix_batch,
    mix_plan,
    mix_weights,
    random_erase,
)
from core.models import archs
from core.training.config import TrainConfig
from core.training.memory import release_free_memory
from core.util.classes import NUM_CLASSES

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
    """AVX512-BF16 or AMX: bf16 convolutions run in hardware. Elsewhere oneDNN emulates bf16, which is slower than
    fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision: on CUDA by default (bf16 where supported, else fp16); on CPUs with native bf16 by
    default for the families it speeds up (archs.Family.cpu_bf16: plain_cnn-w1 2.25x the fp32 throughput with
    channels_last, see docs/benchmarks.md), fp32 for the others and elsewhere. "bf16" asks for it anyway."""
    if cfg.precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16() and archs.get_family(cfg.arch).cpu_bf16:
        return torch.bfloat16
    return None


def precision_name(amp: torch.dtype | None) -> str:
    """What an epoch trained in, as its record says it."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, "fp32")


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


def lr_at(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int, plateau_scale: float = 1.0) -> float:
    """Learning rate for a step: linear warm-up, then cosine to zero, constant, or constant times the plateau
    multiplier. A pure function of the step (and the multiplier, itself replayed from the finished epochs), so a
    resumed run continues on exactly the same curve."""
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "plateau":
        return cfg.lr * plateau_scale
    progress = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate; a tensor lr is filled in place, because a captured CUDA graph reads that
    very tensor (a new Python float would need a new capture)."""
    for g in optimizer.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def plateau_scheduler(cfg: TrainConfig, history: list[dict]) -> ReduceLROnPlateau | None:
    """torch's ReduceLROnPlateau on val accuracy, driving a stand-in optimiser whose lr is the multiplier.

    It is replayed over the finished epochs' val accuracies, which the resume state already holds (TrainState.history),
    so a resumed run makes exactly the decisions an uninterrupted one made, with no extra state to save."""
    if cfg.schedule != "plateau":
        return None
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = ReduceLROnPlateau(stand_in, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    for m in history:
        sched.step(m["val_acc"])
    return sched


def plateau_multiplier(sched: ReduceLROnPlateau | None) -> float:
    return 1.0 if sched is None else float(sched.optimizer.param_groups[0]["lr"])


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss, scaled by T^2 so its gradients match the hard-label term's size."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True) * t * t


class EnsembleTeacher(nn.Module):
    """Several trained models as one teacher: their logits averaged (an ensemble's usual soft targets)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def load_teacher(spec: str) -> nn.Module:
    """The teacher named by TrainConfig.teacher: one run folder, or several joined by os.pathsep (an ensemble)."""
    from core.training import checkpoint as ck

    folders = [f for f in spec.split(os.pathsep) if f.strip()]
    if not folders:
        raise ValueError(f"teacher must name one or more run folders (joined by {os.pathsep!r}), got {spec!r}")
    models = [ck.load_model(f.strip())[0] for f in folders]
    return models[0] if len(models) == 1 else EnsembleTeacher(models)


def _to_device_images(split: Split, device: torch.device) -> torch.Tensor:
    # uint8 on the device: 4x less memory traffic than float, converted per batch
    return torch.from_numpy(np.ascontiguousarray(split.images)).unsqueeze(1).to(device)


def prepare_input(xb: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = xb.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# Evaluation batch: large on an accelerator, where a batch is one launch; small on the CPU. Measured on this 2-core
# CPU (2026-11-30, best of 3): plain_cnn-w1 198 img/s at 512 and 326 at 16, mobilenet-w1 809 and 1,544, while batches
# of 32 and up grew the heap by 100-250 MB over the public split, and 16 stayed flat at ~40 MB.
EVAL_BATCH_ACCEL, EVAL_BATCH_CPU = 512, 16


def eval_batch(device: torch.device) -> int:
    return EVAL_BATCH_CPU if device.type == "cpu" else EVAL_BATCH_ACCEL


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device,
                   batch_size: int | None = None, amp: torch.dtype | None = None,
                   channels_last: bool = False) -> torch.Tensor:
    """Logits for uint8 images [N,48,48] (or [N,1,48,48]); model in eval mode; returns float32 on CPU."""
    batch_size = batch_size or eval_batch(device)
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


def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int | None = None, **kw: object) -> dict:
    """Metrics of a PyTorch model on a split (see metrics_from_logits)."""
    return metrics_from_logits(predict_logits(model, split.images, device, batch_size, **kw), split.labels)


# ---------------------------------------------------------------------------------------------------------
# The loop, split for a CUDA graph: `setup_training` puts everything on the device once; `make_step` builds one
# training step whose every input is a device tensor of fixed shape (batch indices, per-image random numbers,
# per-batch mixing parameters), so the step never syncs with the host; `Stepper` runs it eagerly or replays it
# from static buffers (captured in a CUDA graph on CUDA); `fit` drives epochs and reads the loss every few steps.
# ---------------------------------------------------------------------------------------------------------
SYNC_EVERY_CUDA = 50  # on CUDA the loss is read (and checked for NaN) every this many steps; on CPU a read is free
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN autotuning, lazy optimiser state)


@dataclass
class Setup:
    """What the loop needs on the device, worked out once per `fit`."""

    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    x: torch.Tensor  # uint8 training images [N, 1, 48, 48] on the device
    y: torch.Tensor
    val: Split
    batch: int
    micro: int  # images per forward/backward pass (the batch unless cfg.micro_batch splits it)
    steps_per_epoch: int
    total_steps: int
    graph: bool  # capture the step in a CUDA graph
    sync_every: int


@dataclass
class Accum:
    """Per-epoch sums kept on the device, so a step adds to them without a host sync."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    last_loss: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> "Accum":
        return cls(*(torch.zeros((), device=device) for _ in range(3)))

    def zero_(self) -> None:
        for t in (self.loss_sum, self.correct, self.last_loss):
            t.zero_()


def use_cuda_graph(cfg: TrainConfig, device: torch.device, amp: torch.dtype | None) -> bool:
    """Whether to capture the step: 'auto' on CUDA unless fp16 needs a GradScaler (its inf check syncs every step)."""
    if cfg.cuda_graph == "off":
        return False
    reason = ("it needs a CUDA device, this run uses " + device.type if device.type != "cuda"
              else "fp16 needs a GradScaler, which syncs with the host every step" if amp == torch.float16 else None)
    if reason is None:
        return True
    if cfg.cuda_graph == "on":
        raise ValueError(f"cuda_graph 'on' cannot be honoured: {reason}; use auto or off")
    return False


def prepare_optimizer(optimizer: torch.optim.Optimizer, device: torch.device, graph: bool) -> None:
    """Move optimiser state to the model's device (a resumed state loads on the CPU); for a CUDA graph, make the
    optimiser capturable and fused (one kernel for all parameters) with its lr in a device tensor."""
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and (k != "step" or graph):
                st[k] = v.to(device, dtype=torch.float32 if k == "step" else v.dtype)
    if not graph:
        return
    for g in optimizer.param_groups:
        if "capturable" in g:  # Adam/AdamW; SGD has no step counter and captures as it is
            g["capturable"] = True
        g["fused"], g["foreach"] = True, False
        g["lr"] = torch.tensor(float(g["lr"]), device=device)


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> None:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)


def setup_training(model: nn.Module, data: FERData, cfg: TrainConfig, device: torch.device,
                   optimizer: torch.optim.Optimizer, teacher: nn.Module | None) -> Setup:
    """Device, precision, the training split on the device, model (and teacher) placed, optimiser prepared."""
    train = stratified_subset(data.splits["train"], cfg.subset, cfg.seed) if cfg.subset else data.splits["train"]
    n = len(train)
    if n == 0:
        raise ValueError(f"{data.source}: the training split is empty")
    batch = min(cfg.batch_size, n)
    # drop_last: a trailing batch of 1-2 images gives BatchNorm useless statistics, and fixed shapes let a graph replay
    steps_per_epoch = n // batch
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or 10**12)
    channels_last = device.type == "cpu"  # measured faster for these convnets on CPU (docs/benchmarks.md)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shapes are fixed, so the autotuned kernels are reused every step
    amp = autocast_dtype(cfg, device)
    graph = use_cuda_graph(cfg, device, amp)
    if cfg.dropout_kind == "element":
        archs.set_dropout_kind(model, "element")
    _place(model, device, channels_last)
    if teacher is not None:
        _place(teacher.eval(), device, channels_last)
    prepare_optimizer(optimizer, device, graph)
    return Setup(device, amp, channels_last, _to_device_images(train, device),
                 torch.from_numpy(train.labels).to(device), data.splits[data.val_split], batch,
                 min(cfg.micro_batch or batch, batch), steps_per_epoch, total_steps, graph,
                 SYNC_EVERY_CUDA if device.type == "cuda" else 1)


def transform_batch(xb: torch.Tensor, r: torch.Tensor, mix: torch.Tensor,
                    cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a float batch from its random numbers; returns the batch and, when mixing is on, the weight of each
    image's own label (the mean of its per-pixel mixing weights)."""
    if cfg.augment:
        xb = affine(xb, r[:, AFFINE_COLS])
    if cfg.erase_prob > 0:
        xb = random_erase(xb, r[:, ERASE_COLS], cfg.erase_prob, (cfg.erase_area_min, cfg.erase_area_max))
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return xb, None
    w = mix_weights(mix, xb.shape[-2], xb.shape[-1])
    return mix_batch(xb, w.to(xb.dtype)), w.mean()


def batch_loss(logits: torch.Tensor, yb: torch.Tensor, own: torch.Tensor | None, t_logits: torch.Tensor | None,
               cfg: TrainConfig, partner: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and (weighted) correct count of a batch. With mixing, both are weighed between each image's label and
    its partner's by `own`, so train accuracy measures agreement with the mixed targets. `partner` holds the
    partners' labels (the whole batch's labels reversed, as mix_batch pairs them); a micro-batch passes its slice."""
    loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
    pred = logits.argmax(1)
    hits = (pred == yb).sum().float()
    if own is not None:
        partner = yb.flip(0) if partner is None else partner
        loss = own * loss + (1 - own) * F.cross_entropy(logits, partner, label_smoothing=cfg.label_smoothing)
        hits = own * hits + (1 - own) * (pred == partner).sum().float()
    if t_logits is not None:
        loss = ((1 - cfg.distill_alpha) * loss
                + cfg.distill_alpha * distillation_loss(logits, t_logits, cfg.distill_temperature))
    return loss, hits


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, su: Setup,
              teacher: nn.Module | None, acc: Accum,
              teacher_logits: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """One training step as a function of device tensors only: batch indices [B], random numbers [B, R] and mixing
    parameters [MIX_PARAMS]. It writes nothing to the host, so the same function runs eagerly or inside a graph.
    The caller clears the gradients before an eager call (a graph captures them cleared). With `teacher_logits`
    (one row per training image, core.training.train.teacher_logits_once) the teacher is not run: its rows are read."""
    scaler = torch.amp.GradScaler("cuda") if su.amp == torch.float16 else None

    def forward_backward(xb: torch.Tensor, yb: torch.Tensor, partner: torch.Tensor, own: torch.Tensor | None,
                         share: float, t_logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture
        # (PyTorch's CUDA graph notes)
        with torch.autocast(su.device.type, dtype=su.amp, enabled=su.amp is not None, cache_enabled=False):
            logits = model(xb).float()
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(xb).float()
        loss, hits = batch_loss(logits, yb, own, t_logits, cfg, partner)
        # each micro-batch's mean loss weighed by its share of the batch: the gradients add up to the batch mean's
        (scaler.scale(loss * share) if scaler is not None else loss * share).backward()
        return loss.detach() * share, hits

    def step(idx: torch.Tensor, r: torch.Tensor, mix: torch.Tensor) -> None:
        # the whole batch is augmented and mixed at once (a few MB), so mixing pairs span micro-batches
        xb, own = transform_batch(prepare_input(su.x[idx], su.channels_last), r, mix, cfg)
        yb = su.y[idx]
        t_all = teacher_logits[idx] if teacher_logits is not None else None
        partner, loss = yb.flip(0), torch.zeros((), device=su.device)
        for lo in range(0, len(idx), su.micro):
            part = slice(lo, lo + su.micro)
            share = len(yb[part]) / len(idx)
            part_loss, hits = forward_backward(xb[part], yb[part], partner[part], own, share,
                                               t_all[part] if t_all is not None else None)
            loss = loss + part_loss
            acc.correct.add_(hits)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        acc.loss_sum.add_(loss * len(idx))
        acc.last_loss.copy_(loss)

    return step


StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


class Stepper:
    """Runs the step eagerly, or copies its inputs into static buffers and replays it (from a CUDA graph when
    `capture`; on other devices the buffered call is what a test compares with the eager one)."""

    def __init__(self, step: StepFn, model: nn.Module, optimizer: torch.optim.Optimizer, su: Setup,
                 static: bool, capture: bool, ema: AveragedModel | None = None) -> None:
        self.step, self.optimizer, self.static = step, optimizer, static or capture
        self.model, self.ema = model, ema
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_seconds = 0.0
        dev = su.device
        self.bufs = (torch.zeros(su.batch, dtype=torch.long, device=dev),
                     torch.zeros(su.batch, RANDOMS_PER_IMAGE, device=dev),
                     torch.zeros(MIX_PARAMS, device=dev)) if self.static else ()
        if capture:
            t = time.perf_counter()
            self.graph = capture_step(step, self.bufs, model, optimizer)
            self.capture_seconds = time.perf_counter() - t

    def __call__(self, idx: torch.Tensor, r: torch.Tensor, mix: torch.Tensor) -> None:
        if not self.static:
            self.optimizer.zero_grad(set_to_none=True)
            self.step(idx, r, mix)
        else:
            for buf, value in zip(self.bufs, (idx, r, mix)):
                buf.copy_(value, non_blocking=True)
            if self.graph is not None:
                self.graph.replay()
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self.step(*self.bufs)
        if self.ema is not None:  # outside the graph: a few fused element-wise kernels over the weights
            self.ema.update_parameters(self.model)


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = {p: {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)} for p, st in optimizer.state.items()}
    return weights, opt


@torch.no_grad()
def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, snap: tuple[dict, dict]) -> None:
    """Undo warm-up steps in place (a graph holds these very tensors). Optimiser state that warm-up created is zeroed:
    Adam's moments and step count start at 0, and SGD's first momentum step (buffer = grad) equals buffer 0 + grad."""
    weights, opt = snap
    for k, v in model.state_dict().items():
        v.copy_(weights[k])
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                v.copy_(opt[p][k]) if k in opt.get(p, {}) else v.zero_()


def capture_step(step: StepFn, bufs: tuple[torch.Tensor, ...], model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> torch.cuda.CUDAGraph:
    """Whole-step capture as in PyTorch's CUDA graph notes ("whole network capture"): warm up on a side stream,
    clear the gradients to None so backward allocates them in the graph's pool, then capture forward, backward and
    the optimiser step. The warm-up's effect on weights, BatchNorm statistics and optimiser state is undone."""
    snap = _snapshot(model, optimizer)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_STEPS):
            optimizer.zero_grad(set_to_none=True)
            step(*bufs)
    torch.cuda.current_stream().wait_stream(side)
    _restore(model, optimizer, snap)
    optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(*bufs)
    return graph


def epoch_plan(cfg: TrainConfig, epoch: int, su: Setup, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The epoch's batch indices [S, B], random numbers [S, B, R] and mixing parameters [S, MIX_PARAMS], drawn on the
    host from the seed and the epoch alone (so resumable) and moved to the device in one copy each."""
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    s, b = su.steps_per_epoch, su.batch
    order = torch.randperm(n, generator=gen)[:s * b].view(s, b)
    r = torch.rand(s, b, RANDOMS_PER_IMAGE, generator=gen)
    mix = mix_plan(np.random.default_rng([cfg.seed, epoch]), s, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob)
    return order.to(su.device), r.to(su.device), mix.to(su.device)


def _read_loss(acc: Accum, epoch: int, step: int) -> float:
    """The host sync: the last loss, after checking that no loss so far this epoch was NaN or infinite."""
    if not math.isfinite(acc.loss_sum.item()):
        raise StopRun(f"loss became {acc.last_loss.item()} at epoch {epoch + 1} (by step {step}): "
                      "lower the learning rate")
    return acc.last_loss.item()


def run_epoch(stepper: Stepper, su: Setup, cfg: TrainConfig, state: TrainState, acc: Accum, plan: tuple,
              lr_scale: float, on_batch: BatchHook | None, should_stop: Callable[[], bool] | None,
              deadline: float | None = None) -> tuple[int, bool, float]:
    """Steps of one epoch, cut short at `deadline` (time.perf_counter); returns images seen, whether a stop was
    requested, and the last lr."""
    epoch, (order, r, mix) = state.epoch, plan
    t0, seen, lr, loss = time.perf_counter(), 0, cfg.lr, float("nan")
    for i in range(su.steps_per_epoch):
        if ((cfg.max_steps and state.steps >= cfg.max_steps)
                or (deadline is not None and time.perf_counter() >= deadline)):
            break
        if should_stop is not None and should_stop():
            return seen, True, lr
        lr = lr_at(cfg, state.steps, su.total_steps, su.steps_per_epoch, lr_scale)
        set_lr(stepper.optimizer, lr)
        stepper(order[i], r[i], mix[i])
        state.steps += 1
        seen += su.batch
        if (i + 1) % su.sync_every == 0:
            loss = _read_loss(acc, epoch, i + 1)
        if on_batch is not None:
            on_batch({"epoch": epoch + 1, "step": i + 1, "steps": su.steps_per_epoch, "loss": loss, "lr": lr,
                      "global_step": state.steps, "total_steps": su.total_steps, "seconds": time.perf_counter() - t0})
    return seen, False, lr


def teacher_logits_once(teacher: nn.Module, su: Setup) -> torch.Tensor:
    """The teacher's logits for every training image, unaugmented, on the training device: computed once, so that
    distillation costs no teacher forward per step (teacher_mode 'once')."""
    return predict_logits(teacher, su.x, su.device, amp=su.amp, channels_last=su.channels_last).to(su.device)


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """torch's AveragedModel as an exponential moving average of the weights and (use_buffers) BatchNorm statistics;
    None when decay is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def finish_epoch(model: nn.Module, su: Setup, data: FERData, acc: Accum, state: TrainState, seen: int, t0: float,
                 lr: float) -> dict:
    """Epoch-end NaN check, validation and the epoch's metrics (state.epoch advances)."""
    train_loss = (acc.loss_sum / seen).item()
    if not math.isfinite(train_loss):
        raise StopRun(f"loss became {train_loss} in epoch {state.epoch + 1}: lower the learning rate")
    train_seconds = time.perf_counter() - t0
    ev = evaluate(model, su.val, su.device, amp=su.amp, channels_last=su.channels_last)
    state.epoch += 1
    return {"epoch": state.epoch, "steps": state.steps, "train_loss": train_loss,
            "train_acc": acc.correct.item() / seen, "val_loss": ev["loss"], "val_acc": ev["accuracy"],
            "val_split": data.val_split, "lr": lr, "seconds": time.perf_counter() - t0,
            "images_per_s": seen / train_seconds, "train_seconds": train_seconds, "precision": precision_name(su.amp)}


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
    ema: AveragedModel | None = None,
) -> Iterator[dict]:
    """Train epoch by epoch from `state`, yielding each finished epoch's metrics.

    The generator mutates `model`, `optimizer`, `state` and `ema` (a weight average that validation then uses);
    the caller saves checkpoints between yields.
    A stop request returns after the current batch without yielding the unfinished epoch.
    """
    su = setup_training(model, data, cfg, device, optimizer, teacher)
    n = len(su.x)
    acc = Accum.zeros(device)
    if ema is not None:
        _place(ema, device, su.channels_last)
    cached = teacher_logits_once(teacher, su) if teacher is not None and cfg.teacher_mode == "once" else None
    step = make_step(model, optimizer, cfg, su, None if cached is not None else teacher, acc, teacher_logits=cached)
    stepper = Stepper(step, model, optimizer, su, static=False, capture=su.graph, ema=ema)
    sched = plateau_scheduler(cfg, state.history)
    # the budget counts this process's steps (a resumed run gets its own), not its data loading or evaluations
    budget, spent = cfg.time_budget_s or math.inf, 0.0
    while state.epoch < cfg.epochs and (not cfg.max_steps or state.steps < cfg.max_steps) and spent < budget:
        # Dropout masks from a per-epoch seed: a resumed run draws exactly what an uninterrupted one would.
        torch.manual_seed(cfg.seed * 100_003 + state.epoch)
        plan = epoch_plan(cfg, state.epoch, su, n)
        model.train()
        acc.zero_()
        t0 = time.perf_counter()
        seen, stopped, lr = run_epoch(stepper, su, cfg, state, acc, plan, plateau_multiplier(sched), on_batch,
                                      should_stop, None if budget == math.inf else t0 + budget - spent)
        spent += time.perf_counter() - t0
        # the steps' freed activations, before evaluation allocates its own (core.training.memory)
        release_free_memory()
        if stopped or seen == 0:
            return
        metrics = finish_epoch(model if ema is None else ema.module, su, data, acc, state, seen, t0, lr)
        if sched is not None:
            sched.step(metrics["val_acc"])
        state.history.append(metrics)
        yield metrics
        if cfg.max_steps and state.steps >= cfg.max_steps:
            return
