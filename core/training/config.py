"""Training configuration: one frozen dataclass whose fields carry their help, choices and bounds. The CLI's train
flags, the Train form, validation and the way back to flags are all generated from it, so a knob lives in one place."""
from __future__ import annotations

import argparse
import functools
import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable

from core.data.augment import TTA_MODES
from core.models import archs

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant", "plateau")
CUDA_GRAPH = ("auto", "on", "off")
DROPOUT_KINDS = ("channel", "element")
TEACHER_MODES = ("live", "once")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def knob(default: Any, help: str, *, low: float | None = None, high: float | str | None = None,
         choices: tuple | Callable[[], list] | None = None, required: bool = False, label: str | None = None,
         group: str | None = "more", form_default: Any = MISSING, step: float | None = None,
         options: tuple | None = None) -> Any:
    """A TrainConfig field with what every front end needs: `help`, bounds (`high` may name another field),
    `choices`, whether the CLI requires it, and for the Train form its `label`, `group` ('main', 'more', or None
    for not on the form), a `form_default` for quick classroom runs, a `step`, and `options` for a pick list."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "required": required, "label": label,
            "group": group, "form_default": default if form_default is MISSING else form_default, "step": step,
            "options": options}
    return field(default=default, metadata=meta)


# The Train form's quick defaults (each field's form_default, and this dropout) are chosen so that accuracy
# visibly climbs within the 30-second budget on a busy 2-core machine: measured at a load average of 11, a plain
# CNN at width 0.125 with dropout 0.1, batch 32 and lr 0.003 on 1,500 synthetic faces went from 0.40 to 0.49 val
# accuracy in two epochs; width 0.25, dropout 0.5, batch 64 on 3,000 faces managed one epoch at 0.20.
FORM_DROPOUT = 0.1


@dataclass(frozen=True)
class TrainConfig:
    arch: str = knob("mobilenet", "architecture (registry name)", choices=archs.list_archs, required=True,
                     label="Architecture", group="main", form_default="plain_cnn")
    width: float = knob(1.0, "channel multiplier; every family has it", low=archs.WIDTH_MIN, high=archs.WIDTH_MAX,
                        label="Width", group="main", form_default=0.125, step=0.125)
    # None keeps the family's default; the form shows the family's own dropout slider
    dropout: float | None = knob(None, "dropout probability (the family's default if omitted; families without "
                                       "dropout ignore it)", low=0.0, high=0.8, group=None)
    data: str = knob("synthetic", "'synthetic' or a path to FER2013 (CSV, image folder, or a folder holding them)",
                     required=True, group=None)
    synthetic_size: int = knob(6000, "images drawn when data is synthetic (80% train, 20% val)", low=10,
                               high=200_000, label="Synthetic images", group="main", form_default=1500, step=500)
    subset: int | None = knob(None, "train on only this many images, class balance kept: quick classroom runs",
                              low=7, high=10**9, label="Subset (0 = all)", group="main", step=500)
    epochs: int = knob(10, "full passes over the training split", low=1, high=1000, label="Epochs", group="main",
                       form_default=30)  # the time budget below usually ends a quick demo first
    # A classroom demo must end on time on a busy shared machine, where an epoch count takes 4x longer than on an
    # idle one: the budget is wall-clock time of training steps, so it is honoured however slow the steps are.
    time_budget_s: float | None = knob(None, "stop training after this many seconds of steps (start-up, the "
                                             "final evaluation and the export come on top); the epoch under way "
                                             "ends early and is evaluated; the run counts as done", low=1,
                                       high=10**7, label="Time budget, s (0 = none)", group="main", form_default=30,
                                       step=10)
    max_steps: int | None = knob(None, "stop after this many optimiser steps over the whole run (smoke tests, "
                                       "demos)", low=1, high=10**9, label="Max steps (0 = no cap)", step=10)
    batch_size: int = knob(256, "images per optimiser step (the study: 256)", low=1, high=8192, label="Batch size",
                           group="main", form_default=32, options=(16, 32, 64, 128, 256, 512))
    # Activations grow with the batch (plain_cnn-w1 at 256: ~1.2 GB on CPU); micro-batches keep the optimiser step
    # and cap that memory, for a shared server. BatchNorm then sees each micro-batch alone.
    micro_batch: int = knob(0, "split each batch into micro-batches of this many images and add up their gradients: "
                               "the same optimiser step in less memory; BatchNorm normalises each micro-batch on "
                               "its own (ghost batch norm); 0 = the whole batch at once", low=0, high="batch_size",
                            label="Micro-batch (0 = whole batch)", options=(0, 16, 32, 64, 128))
    lr: float = knob(1e-3, "peak learning rate (the study: Adam 0.001)", low=1e-7, high=10.0, label="Learning rate",
                     group="main", form_default=3e-3, options=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2))
    optimizer: str = knob("adam", "adam (the study), adamw, or sgd with Nesterov momentum 0.9", choices=OPTIMIZERS,
                          label="Optimizer")
    weight_decay: float = knob(0.0, "L2 (adam, sgd) or decoupled (adamw) weight decay", low=0.0, high=1.0,
                               label="Weight decay", step=1e-4)
    schedule: str = knob("cosine", "cosine decay to 0 over the run, or constant (the study)", choices=SCHEDULES,
                         label="Schedule")
    warmup_epochs: int = knob(0, "linear warm-up epochs before the schedule; helps large lr and SGD", low=0,
                              high="epochs", label="Warm-up epochs")
    label_smoothing: float = knob(0.0, "FER2013 labels are noisy; 0.1 usually helps a little", low=0.0, high=0.5,
                                  label="Label smoothing", step=0.05)
    augment: bool = knob(True, "random shift, scale, rotation and flip on whole batches", label="Augment",
                         group="main", form_default=False)
    seed: int = knob(0, "weights init, shuffling and augmentation all derive from it", low=0, high=2**31 - 1,
                     label="Seed")
    device: str = knob("auto", "auto picks cuda, then mps, then cpu", choices=DEVICES, label="Device", group="main")
    precision: str = knob("auto", "auto: mixed precision on CUDA, and on CPUs with native bf16 for the families "
                                  "it speeds up; else fp32", choices=PRECISIONS, label="Precision")
    teacher: str | None = knob(None, "run folder(s) of trained models to distil from; several, joined by "
                                     "os.pathsep (':'), form an ensemble whose logits are averaged",
                               label="Teacher run folder (distillation)")
    teacher_mode: str = knob("live", "live: the teacher sees every augmented batch (a teacher forward per step); "
                                     "once: its logits for every training image are computed once, unaugmented, "
                                     "before training (its cost paid once; the student's augmented view then meets "
                                     "the plain image's logits); not with mixup or CutMix", choices=TEACHER_MODES,
                             label="Teacher logits")
    distill_temperature: float = knob(4.0, "softening temperature for teacher and student logits", low=0.5,
                                      high=50.0, label="Distillation temperature", step=0.5)
    distill_alpha: float = knob(0.7, "weight of the distillation term; 1 - alpha weighs the label loss", low=0.0,
                                high=1.0, label="Distillation alpha", step=0.05)
    threads: int | None = knob(None, "torch CPU threads (torch's default if omitted)", low=1, high=512, group=None)
    # --- the CUDA path and the recipe levers ---
    cuda_graph: str = knob("auto", "capture the training step in a CUDA graph (auto: on CUDA unless fp16); a 48x48 "
                                   "convnet's step is bound by kernel launches", choices=CUDA_GRAPH, label="CUDA graph")
    plateau_factor: float = knob(0.75, "schedule plateau: lr multiplier when val accuracy stalls (Khaireddin & Chen "
                                       "2021: 0.75)", low=0.01, high=0.99, label="Plateau factor", step=0.05)
    plateau_patience: int = knob(5, "schedule plateau: epochs without improvement before the lr drops", low=0,
                                 high=1000, label="Plateau patience")
    erase_prob: float = knob(0.0, "random erasing: chance that an image gets one box of mean gray (0 = off)",
                             low=0.0, high=1.0, label="Random erasing", step=0.05)
    erase_area_min: float = knob(0.02, "random erasing: smallest box, as a fraction of the image (torchvision's "
                                       "default)", low=0.001, high="erase_area_max", label="Erasing area min", step=0.01)
    erase_area_max: float = knob(0.33, "random erasing: largest box fraction (torchvision's default)", low=0.001,
                                 high=1.0, label="Erasing area max", step=0.01)
    mixup_alpha: float = knob(0.0, "mixup: Beta(alpha, alpha) blend weight; 0 = off (0.2 is common)", low=0.0,
                              high=10.0, label="Mixup alpha", step=0.1)
    cutmix_alpha: float = knob(0.0, "cutmix: Beta(alpha, alpha) kept area; 0 = off; with mixup on too, each mixed "
                                    "batch uses one of them", low=0.0, high=10.0, label="CutMix alpha", step=0.1)
    mix_prob: float = knob(1.0, "share of batches that mixup/cutmix touch", low=0.0, high=1.0, label="Mix share",
                           step=0.05)
    dropout_kind: str = knob("channel", "MobileNet-style family: channel-wise Dropout2d, or element-wise Dropout as "
                                        "in the study", choices=DROPOUT_KINDS, label="Dropout kind")
    ema_decay: float = knob(0.0, "keep an exponential moving average of the weights and BatchNorm statistics, "
                                 "updated every step with this decay (e.g. 0.999); validation, the final evaluation "
                                 "and the export use the average; 0 = off", low=0.0, high=0.99999,
                            label="Weight EMA decay (0 = off)", step=0.001)
    init_from: str | None = knob(None, "a trained run folder whose weights this run starts from (same architecture "
                                       "and width), e.g. checkpoints/plain_cnn-w1 with a low learning rate: a tail "
                                       "that continues a finished model", label="Start from run (fine-tune)")
    tta: str = knob("none", "test-time augmentation folded into the exported ONNX graph: none, flip, or tencrop "
                            "(logits averaged in the graph)", choices=TTA_MODES, label="Test-time augmentation")

    def __post_init__(self) -> None:
        self.validate()

    def model_knobs(self) -> dict[str, float]:
        family = archs.get_family(self.arch)
        knobs: dict[str, float] = {"width": self.width}
        if self.dropout is not None and any(k.name == "dropout" for k in family.knobs):
            knobs["dropout"] = self.dropout
        return family.resolve(**knobs)

    def validate(self) -> None:
        check_fields(self)
        self.model_knobs()  # the family's own ranges (width, dropout)
        if self.teacher_mode == "once" and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            raise ValueError("teacher_mode 'once' keeps one set of teacher logits per image, which mixed images do not "
                             f"have (mixup_alpha={self.mixup_alpha:g}, cutmix_alpha={self.cutmix_alpha:g}); use 'live'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def with_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """A recorded config with the knobs it predates filled in at their defaults, which is how it ran: so a run
    started before a knob existed still compares equal to itself when it is resumed."""
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return {**defaults, **settings}


# ---------------------------------------------------------------------------------------------------------
# Field metadata -> validation, CLI flags and back, Train form
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(f: Any, cls: type | None = None) -> tuple[type, bool]:
    """(base type, optional) of a field of `cls` (TrainConfig by default): `int | None` -> (int, True)."""
    hint = _hints(cls or TrainConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return (args[0] if args else hint), bool(typing.get_args(hint))


def choices_of(f: Any) -> list | None:
    c = f.metadata["choices"]
    return list(c()) if callable(c) else (list(c) if c else None)


def check_fields(cfg: Any) -> None:
    """Each field of a config dataclass (TrainConfig, core.compression.compress.CompressConfig) against its
    metadata: choices, type, bounds; ValueError naming the field, the bad value and what is allowed."""
    for f in fields(cfg):
        _check_field(cfg, f)


def _check_field(cfg: Any, f: Any) -> None:
    value, meta = getattr(cfg, f.name), f.metadata
    base, optional = field_type(f, type(cfg))
    if value is None and optional:
        return
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise ValueError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"{f.name} must be true or false, got {value!r}")
    if base is str and (not isinstance(value, str) or not value):
        raise ValueError(f"{f.name} must be non-empty text, got {value!r}")
    if base in (int, float):
        high = getattr(cfg, meta["high"]) if isinstance(meta["high"], str) else meta["high"]
        (int_in if base is int else num_in)(f.name, value, meta["low"], high)


def int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (lo <= value <= hi):
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def num_in(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (lo <= value <= hi):
        raise ValueError(f"{name} must be a number from {lo:g} to {hi:g}, got {value!r}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(f: Any) -> str:
    meta, bits = f.metadata, [f.metadata["help"].replace("%", "%%")]  # argparse formats help with %
    if meta["low"] is not None:
        bits.append(f"{_num(meta['low'])} to {_num(meta['high'])}")
    if not meta["required"] and f.default is not None:
        bits.append("default: %(default)s")
    return "; ".join(bits)


def _num(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:,}" if isinstance(v, int) else f"{v:g}"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TrainConfig)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the config dataclass `cls`, with its help, default, choices and bounds."""
    for f in fields(cls):
        base, _ = field_type(f, cls)
        kw: dict[str, Any] = {"help": _help(f), "dest": f.name}
        if base is bool:
            kw.update(action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kw.update(type=base, default=None if f.metadata["required"] else f.default,
                      required=f.metadata["required"], metavar=f.name.upper())
            if choices_of(f):
                kw.update(choices=choices_of(f), metavar=None)
        parser.add_argument(_flag(f.name), **kw)


def config_from_args(ns: argparse.Namespace, cls: type = None) -> Any:  # type: ignore[assignment]
    """The config (TrainConfig by default) that the flags of add_config_arguments(parser, cls) gave."""
    cls = cls or TrainConfig
    return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})


def to_cli_args(cfg: Any) -> list[str]:
    """The flags that rebuild exactly this config (`core train`'s for a TrainConfig: the trainer refuses to resume a
    different one; `core compress`'s for a CompressConfig)."""
    args: list[str] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):
            args.append(_flag(f.name) if value else "--no-" + f.name.replace("_", "-"))
        elif value is None:
            continue  # None means "the default" in every config, and the CLI's default is None too
        else:
            args += [_flag(f.name), repr(value) if isinstance(value, float) else str(value)]  # repr round-trips floats
    return args


@dataclass(frozen=True)
class FormField:
    """One Train-form widget, described without Streamlit: the page maps `kind` to a widget."""

    name: str
    label: str
    kind: str  # choice | bool | int | float | text
    default: Any
    help: str
    group: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    zero_is_none: bool = False  # optional numbers: 0 in the form means "not set"


def form_fields(cls: type | None = None) -> list[FormField]:
    """A form's widgets (the Train form's by default, of TrainConfig), in field order, from the same metadata as
    the CLI."""
    out = []
    for f in fields(cls or TrainConfig):
        meta = f.metadata
        if meta["group"] is None:
            continue
        base, optional = field_type(f, cls)
        choices = tuple(meta["options"] or choices_of(f) or ())
        kind = "choice" if choices else {bool: "bool", int: "int", float: "float"}.get(base, "text")
        high = None if isinstance(meta["high"], str) else meta["high"]
        default = meta["form_default"]
        zero = optional and base in (int, float)
        out.append(FormField(f.name, meta["label"] or f.name, kind, 0 if zero and default is None else default,
                             meta["help"], meta["group"], choices, meta["low"] if not zero else 0, high,
                             meta["step"], zero))
    return out


def config_from_form(values: dict[str, Any], cls: type | None = None, **fixed: Any) -> Any:
    """A config (TrainConfig by default) from its form's values (0 -> None where the form says so, '' -> None for
    text)."""
    cls = cls or TrainConfig
    by_name = {f.name: f for f in form_fields(cls)}
    clean: dict[str, Any] = {}
    for name, value in values.items():
        spec = by_name.get(name)
        if spec is not None and ((spec.zero_is_none and not value) or (spec.kind == "text" and not str(value).strip())):
            value = None
        elif spec is not None and spec.kind == "int":
            value = int(value)
        elif spec is not None and spec.kind == "float":
            value = float(value)
        clean[name] = value
    return cls(**clean, **fixed)
