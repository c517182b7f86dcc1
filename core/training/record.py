"""The typed run record (run.json): one dataclass that validates on load, names the bad field, and writes back."""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from core.util.classes import NUM_CLASSES

RECORD_FORMAT = 1


class RecordStatus(StrEnum):
    """A run record's status, as run.json stores it (a StrEnum: it compares and serialises as the plain string)."""

    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # asked to stop (or out of time): evaluated and exported from its last finished epoch
    FAILED = "failed"


STATUSES = tuple(RecordStatus)
FINISHED = (RecordStatus.DONE, RecordStatus.STOPPED)  # a run with final results, weights and an export
# Headline accuracy: FER2013's PublicTest where the run has it, else the held-out validation split.
HEADLINE_ORDER: tuple[str, ...] = ("public", "val", "private")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _need(cond: bool, where: str, what: str, value: Any, verb: str | None = None) -> None:
    """Raise the one message every reader gets for a bad field: which field, what it must be, what was found."""
    if not cond:
        raise ValueError(f"'{where}' {verb or 'must be ' + what}, found {_short(value)}")


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _opt(d: dict[str, Any], key: str, check: Any, what: str) -> Any:
    v = d.get(key)
    if v is not None:
        _need(check(v), key, what, v)
    return v


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture and knobs rebuild the model (nanoGPT-style self-describing checkpoint)."""

    arch: str
    knobs: dict[str, float] = field(default_factory=dict)
    family: str = ""

    @classmethod
    def from_json(cls, d: Any) -> "ModelSpec":
        _need(isinstance(d, dict) and "arch" in d, "model", "an object {'arch': ..., 'knobs': ...}", d)
        _need(isinstance(d["arch"], str) and bool(d["arch"]), "model.arch", "an architecture name", d["arch"])
        knobs = d.get("knobs", {})
        _need(isinstance(knobs, dict) and all(isinstance(k, str) and is_num(v) for k, v in knobs.items()),
              "model.knobs", "a map of names to numbers", knobs, verb="must map names to numbers")
        family = d.get("family") or ""
        _need(isinstance(family, str), "model.family", "text", family)
        return cls(d["arch"], dict(knobs), family)

    @property
    def width(self) -> float:
        return float(self.knobs.get("width", math.nan))


EPOCH_NUMBERS = ("train_loss", "train_acc", "val_loss", "val_acc")


@dataclass
class Epoch:
    """One finished epoch's metrics, as the trainer yields them."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_split: str = "val"
    steps: int = 0
    lr: float = math.nan
    seconds: float = 0.0
    images_per_s: float = 0.0
    train_seconds: float = 0.0  # the steps' time alone, which a time budget counts; 0 in older records
    precision: str = ""  # bf16, fp16 or fp32 (a resumed run may change machines mid-way); "" in older records
    extra: dict[str, Any] = field(default_factory=dict)  # keys newer trainers add; kept so records round-trip

    @classmethod
    def from_json(cls, d: Any, i: int) -> "Epoch":
        ok = isinstance(d, dict) and _whole(d.get("epoch")) and all(is_num(d.get(m)) for m in EPOCH_NUMBERS)
        _need(ok, f"epochs[{i}]", "", d, verb=f"must hold 'epoch' and the numbers {', '.join(EPOCH_NUMBERS)}")
        known = {f.name for f in fields(cls)} - {"extra"}
        typed = {k: v for k, v in d.items() if k in known}
        for k in ("lr", "seconds", "images_per_s", "train_seconds"):
            if k in typed and not is_num(typed[k]):
                typed.pop(k)
        for k in ("val_split", "precision"):
            if not isinstance(typed.get(k, ""), str):
                typed.pop(k)
        if not _whole(typed.get("steps", 0)):
            typed.pop("steps")
        return cls(**typed, extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if not self.precision:  # an older record, written before epochs said it: keep it as written
            del out["precision"]
        if not self.train_seconds:  # likewise
            del out["train_seconds"]
        return {**out, **self.extra}


@dataclass
class Final:
    """End-of-run evaluation per split: accuracy, per-class accuracy, confusion matrix (rows = true), image count."""

    accuracy: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, list[float | None]] = field(default_factory=dict)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> "Final":
        _need(isinstance(d, dict), "final", "an object", d)
        for key in ("accuracy", "per_class", "confusion", "n"):
            _need(isinstance(d.get(key, {}), dict), f"final.{key}", "a map of split names to values", d.get(key))
        acc, per, conf = d.get("accuracy", {}), d.get("per_class", {}), d.get("confusion", {})
        for split, v in acc.items():
            _need(is_num(v), f"final.accuracy.{split}", "a number", v)
        for split, v in per.items():
            ok = v is None or (isinstance(v, list) and len(v) == NUM_CLASSES and all(x is None or is_num(x) for x in v))
            _need(ok, f"final.per_class.{split}", f"{NUM_CLASSES} numbers", v)
        for split, v in conf.items():
            ok = isinstance(v, list) and len(v) == NUM_CLASSES and all(
                isinstance(row, list) and len(row) == NUM_CLASSES and all(is_num(x) for x in row) for row in v)
            _need(ok, f"final.confusion.{split}", f"a {NUM_CLASSES}x{NUM_CLASSES} table of counts", v)
        return cls(dict(acc), {k: v for k, v in per.items() if v is not None}, dict(conf), dict(d.get("n", {})))

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "per_class": self.per_class, "confusion": self.confusion, "n": self.n}


@dataclass
class Variant:
    """A compression variant's link to its parent run: the technique, its settings and what was measured."""

    parent: str
    technique: str
    settings: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> "Variant":
        _need(isinstance(d, dict) and isinstance(d.get("parent"), str) and isinstance(d.get("technique"), str),
              "variant", "an object with 'parent' and 'technique' names", d)
        for key in ("settings", "measured"):
            _need(isinstance(d.get(key, {}), dict), f"variant.{key}", "an object", d.get(key))
        return cls(d["parent"], d["technique"], dict(d.get("settings", {})), dict(d.get("measured", {})))

    def to_json(self) -> dict[str, Any]:
        return {"parent": self.parent, "technique": self.technique, "settings": self.settings, "measured": self.measured}


_TEXT = ("error", "created", "updated", "device", "recipe", "cpu")
_WHOLE = ("params", "trainable", "macs", "size_bytes", "resumed_from_epoch", "threads")
_OBJECTS = ("data", "config", "onnx", "versions")


@dataclass
class RunRecord:
    """Everything a run folder says about its run. `from_json` checks each field a reader relies on and raises
    ValueError naming the first bad one; unknown keys are kept in `extra`, so old and newer records both load."""

    name: str
    model: ModelSpec
    status: str = RecordStatus.DONE
    error: str | None = None
    created: str = ""
    updated: str = ""
    pid: int | None = None
    params: int | None = None
    trainable: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    data: dict[str, Any] = field(default_factory=dict)  # core.data.FERData.describe() plus its warnings
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict() as trained (may be older fields)
    recipe: str = ""
    epochs: list[Epoch] = field(default_factory=list)
    final: Final | None = None
    wall_time_s: float = 0.0
    device: str = ""
    cpu: str = ""
    threads: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    onnx: dict[str, Any] | None = None
    resumed_from_epoch: int | None = None
    variant: Variant | None = None
    format: int = RECORD_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Any) -> "RunRecord":
        _need(isinstance(d, dict) and isinstance(d.get("model"), dict), "model",
              "a model description {'arch': ..., 'knobs': ...}", d.get("model") if isinstance(d, dict) else d)
        status = d.get("status", "done")
        _need(status in STATUSES, "status", f"one of {', '.join(STATUSES)}", status)
        for key in _TEXT:
            _opt(d, key, lambda v: isinstance(v, str), "text")
        for key in _WHOLE:
            _opt(d, key, _whole, "a whole number")
        for key in _OBJECTS:
            _opt(d, key, lambda v: isinstance(v, dict), "an object")
        _opt(d, "wall_time_s", is_num, "a number")
        _opt(d, "name", lambda v: isinstance(v, str), "text")
        epochs = d.get("epochs", [])
        _need(isinstance(epochs, list), "epochs", "a list", epochs)
        pid = d.get("pid")
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            name=d.get("name") or "", model=ModelSpec.from_json(d["model"]), status=status, error=d.get("error"),
            created=d.get("created") or "", updated=d.get("updated") or "",
            pid=pid if _whole(pid) else None, **{k: d.get(k) for k in _WHOLE},
            data=d.get("data") or {}, config=d.get("config") or {}, recipe=d.get("recipe") or "",
            epochs=[Epoch.from_json(e, i) for i, e in enumerate(epochs)],
            final=Final.from_json(d["final"]) if d.get("final") is not None else None,
            wall_time_s=float(d.get("wall_time_s") or 0.0), device=d.get("device") or "", cpu=d.get("cpu") or "",
            versions=d.get("versions") or {}, onnx=d.get("onnx"),
            variant=Variant.from_json(d["variant"]) if d.get("variant") is not None else None,
            format=d.get("format", RECORD_FORMAT) if _whole(d.get("format", RECORD_FORMAT)) else RECORD_FORMAT,
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra":
                continue
            if f.name == "model":
                v = {"arch": v.arch, "knobs": v.knobs, "family": v.family}
            elif f.name == "epochs":
                v = [e.to_json() for e in v]
            elif isinstance(v, (Final, Variant)):
                v = v.to_json()
            elif f.name in ("variant", "resumed_from_epoch", "pid") and v is None:
                continue  # absent rather than null: records stay as they were written before these existed
            out[f.name] = v
        return {**out, **self.extra}

    # ---- what readers ask of a record ------------------------------------------------------------------------
    def accuracy(self, split: str) -> float:
        v = self.final.accuracy.get(split) if self.final else None
        return float(v) if is_num(v) else math.nan

    def headline(self) -> tuple[str | None, float]:
        """(split, accuracy) used to rank a run: public where present, else val, else private; NaN if none."""
        for split in HEADLINE_ORDER:
            v = self.accuracy(split)
            if math.isfinite(v):
                return split, v
        return None, math.nan

    @property
    def synthetic(self) -> bool:
        return bool(self.data.get("synthetic")) or self.data.get("kind") == "synthetic"

    @property
    def data_label(self) -> str:
        if self.synthetic:
            return "synthetic"
        return f"FER2013 ({self.data['kind']})" if self.data.get("kind") else "unknown"

    @property
    def epochs_planned(self) -> int | None:
        v = self.config.get("epochs")
        return v if _whole(v) else None

    def evaluated_splits(self, order: tuple[str, ...] = ("public", "private", "val", "train")) -> list[str]:
        conf = self.final.confusion if self.final else {}
        first = [s for s in order if s in conf]
        return first + [s for s in conf if s not in first]
