"""Training configuration as one frozen dataclass: the CLI and the UI both build it, the run record stores it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from core import archs

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "mobilenet"  # registry name (core.archs)
    width: float = 1.0  # channel multiplier; every family has it
    dropout: float | None = None  # None keeps the family's default; families without dropout ignore it
    data: str = "synthetic"  # 'synthetic' or a path to FER2013 in any supported format
    synthetic_size: int = 6000  # images drawn when data is synthetic (80% train, 20% val)
    subset: int | None = None  # use only this many training images (stratified): quick classroom runs
    epochs: int = 10  # full passes over the training split
    max_steps: int | None = None  # hard cap on optimiser steps over the whole run (smoke tests, demos)
    batch_size: int = 256  # the study's batch size
    lr: float = 1e-3  # the study's Adam learning rate
    optimizer: str = "adam"  # adam (the study), adamw, or sgd with Nesterov momentum 0.9
    weight_decay: float = 0.0  # L2 (adam/sgd) or decoupled (adamw)
    schedule: str = "cosine"  # cosine decay to 0 over the run, or constant (the study)
    warmup_epochs: int = 0  # linear warm-up before the schedule; helps large lr and SGD
    label_smoothing: float = 0.0  # FER2013 labels are noisy; 0.1 usually helps a little
    augment: bool = True  # random shift/scale/rotation/flip on whole batches
    seed: int = 0  # weights init, shuffling and augmentation are all derived from it
    device: str = "auto"  # auto picks cuda, then mps, then cpu
    precision: str = "auto"  # auto: mixed precision on CUDA, fp32 on CPU/MPS; bf16 forces bf16 autocast
    teacher: str | None = None  # run folder of a trained model to distil from (knowledge distillation)
    distill_temperature: float = 4.0  # softening temperature for teacher and student logits
    distill_alpha: float = 0.7  # weight of the distillation term; 1 - alpha weighs the label loss
    threads: int | None = None  # torch intra-op threads for CPU training; None = torch's default

    def __post_init__(self) -> None:
        self.validate()

    def model_knobs(self) -> dict[str, float]:
        family = archs.get_family(self.arch)
        knobs: dict[str, float] = {"width": self.width}
        if self.dropout is not None and any(k.name == "dropout" for k in family.knobs):
            knobs["dropout"] = self.dropout
        return family.resolve(**knobs)

    def validate(self) -> None:
        archs.get_family(self.arch)  # raises ValueError listing the choices
        self.model_knobs()
        _int_in("epochs", self.epochs, 1, 1000)
        _int_in("batch_size", self.batch_size, 1, 8192)
        _int_in("synthetic_size", self.synthetic_size, 10, 200_000)
        if self.max_steps is not None:
            _int_in("max_steps", self.max_steps, 1, 10**9)
        if self.subset is not None:
            _int_in("subset", self.subset, 7, 10**9)
        if self.threads is not None:
            _int_in("threads", self.threads, 1, 512)
        _int_in("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        _int_in("seed", self.seed, 0, 2**31 - 1)
        _num_in("lr", self.lr, 1e-7, 10.0)
        _num_in("weight_decay", self.weight_decay, 0.0, 1.0)
        _num_in("label_smoothing", self.label_smoothing, 0.0, 0.5)
        _num_in("distill_temperature", self.distill_temperature, 0.5, 50.0)
        _num_in("distill_alpha", self.distill_alpha, 0.0, 1.0)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment must be true or false, got {self.augment!r}")
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data must be 'synthetic' or a path, got {self.data!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _num_in(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (lo <= value <= hi):
        raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
