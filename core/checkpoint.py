"""Self-describing checkpoint folders: weights (.pt), ONNX export and a JSON run record; listing and safe deletion."""
from __future__ import annotations

import io
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import archs
from core.classes import NUM_CLASSES
from core.fsutil import SHIPPED_DIR, atomic_write_bytes, atomic_write_json
from core.onnx_io import check_onnx_file

RECORD = "run.json"
WEIGHTS = "model.pt"
ONNX = "model.onnx"
RESUME = "resume.pt"
STOP_FILE = "STOP"  # the app asks a background run to stop by creating this file
LOG = "train.log"
RECORD_FORMAT = 1
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def check_run_name(name: str) -> str:
    """Run names become folder names: no separators, no '..', no hidden names (they cannot escape the runs folder)."""
    if not isinstance(name, str) or not RUN_NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} is not allowed: use 1-80 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def save_state_dict(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load tensors only: weights_only=True refuses pickles that would run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: weights file is missing") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; all mean "unusable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable weights file ({first[:200]})") from None


def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's JSON record, checked field by field: a hand-edited or foreign run.json must fail here with a reason,
    not later inside a page that formats its numbers."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: run record is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: run record is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: run record is not valid JSON (nested too deeply)") from None
    except OSError as exc:  # a folder named run.json, no permission, I/O error
        raise ValueError(f"{path}: run record cannot be read ({exc.strerror or exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict) or "arch" not in record["model"]:
        raise ValueError(f"{path}: run record has no model description ('model': {{'arch': ..., 'knobs': ...}})")
    problem = record_problem(record)
    if problem:
        raise ValueError(f"{path}: run record is malformed: {problem}")
    return record


STATUSES = ("running", "done", "stopped", "failed")
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def record_problem(record: dict[str, Any]) -> str | None:
    """The first field of a run record whose type the app cannot use, or None. Only what readers rely on is checked."""
    model = record["model"]
    if not isinstance(model["arch"], str) or not model["arch"]:
        return f"'model.arch' must be an architecture name, found {_short(model['arch'])}"
    knobs = model.get("knobs", {})
    if not isinstance(knobs, dict) or not all(isinstance(k, str) and _is_num(v) for k, v in knobs.items()):
        return f"'model.knobs' must map names to numbers, found {_short(knobs)}"
    if record.get("status", "done") not in STATUSES:
        return f"'status' must be one of {', '.join(STATUSES)}, found {_short(record.get('status'))}"
    for key in ("params", "trainable", "macs", "size_bytes", "resumed_from_epoch"):
        v = record.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            return f"{key!r} must be a whole number, found {_short(v)}"
    v = record.get("wall_time_s")
    if v is not None and not _is_num(v):
        return f"'wall_time_s' must be a number, found {_short(v)}"
    for key in ("name", "error", "device", "recipe", "created", "updated", "cpu"):
        v = record.get(key)
        if v is not None and not isinstance(v, str):
            return f"{key!r} must be text, found {_short(v)}"
    for key in ("config", "data", "onnx", "versions"):
        v = record.get(key)
        if v is not None and not isinstance(v, dict):
            return f"{key!r} must be an object, found {_short(v)}"
    epochs = record.get("epochs", [])
    if not isinstance(epochs, list):
        return f"'epochs' must be a list, found {_short(epochs)}"
    for i, e in enumerate(epochs):
        if not isinstance(e, dict) or not isinstance(e.get("epoch"), int) or isinstance(e.get("epoch"), bool) \
                or not all(_is_num(e.get(m)) for m in EPOCH_METRICS):
            return f"'epochs[{i}]' must hold 'epoch' and the numbers {', '.join(EPOCH_METRICS)}, found {_short(e)}"
    final = record.get("final")
    if final is None:
        return None
    if not isinstance(final, dict):
        return f"'final' must be an object, found {_short(final)}"
    for key in ("accuracy", "per_class", "confusion", "n"):
        if not isinstance(final.get(key, {}), dict):
            return f"'final.{key}' must map split names to values, found {_short(final.get(key))}"
    for split, acc in final.get("accuracy", {}).items():
        if not _is_num(acc):
            return f"'final.accuracy.{split}' must be a number, found {_short(acc)}"
    for split, per in final.get("per_class", {}).items():
        if per is not None and (not isinstance(per, list) or len(per) != NUM_CLASSES
                                or not all(v is None or _is_num(v) for v in per)):
            return f"'final.per_class.{split}' must be {NUM_CLASSES} numbers, found {_short(per)}"
    for split, conf in final.get("confusion", {}).items():
        if not (isinstance(conf, list) and len(conf) == NUM_CLASSES and all(
                isinstance(row, list) and len(row) == NUM_CLASSES and all(_is_num(v) for v in row) for row in conf)):
            return f"'final.confusion.{split}' must be a {NUM_CLASSES}x{NUM_CLASSES} table of counts, found {_short(conf)}"
    return None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / RECORD, record)


def build_from_record(record: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    m = record["model"]
    with torch.device(device):
        return archs.build(m["arch"], **m.get("knobs", {}))


def load_model(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its record and load its weights (nanoGPT-style self-describing checkpoint)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    model = build_from_record(record)
    state = load_state_dict(run_dir / WEIGHTS)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"{run_dir / WEIGHTS}: weights do not fit {record['model']} ({str(exc).splitlines()[0][:200]})") from None
    model.eval()
    return model, record


@dataclass
class RunInfo:
    path: Path
    shipped: bool
    record: dict[str, Any] | None
    problem: str | None  # why the folder cannot be used, if it cannot
    onnx_problem: str | None = None  # why its ONNX export cannot be used for predictions (the record still can)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def has_onnx(self) -> bool:
        return self.onnx_problem is None and (self.path / ONNX).is_file()


def weights_problem(path: Path) -> str | None:
    """Why a weights file is unusable, found without unpickling anything: torch.save writes a zip archive whose
    index sits at the end, so a truncated or overwritten file has none. Old non-zip files get a full safe load."""
    if not path.is_file():
        return f"{path}: weights file is missing"
    if path.stat().st_size == 0:
        return f"{path}: weights file is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip archive's start, without the index that ends a complete one
                return f"{path}: weights file is truncated or corrupt (its zip index is missing)"
        try:
            load_state_dict(path)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                return f"{path}: not a PyTorch weights file (a zip archive without data.pkl)"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{path}: weights file is truncated or corrupt ({exc})"
    return None


def inspect_run(path: Path, shipped: bool) -> RunInfo:
    try:
        record = read_record(path)
    except ValueError as exc:
        return RunInfo(path, shipped, None, str(exc))
    status = record.get("status", "done")
    if status not in ("done", "stopped"):
        return RunInfo(path, shipped, record, None)  # running or failed: the weights are not final, nor expected
    problem = weights_problem(path / WEIGHTS)
    if problem:
        return RunInfo(path, shipped, record, problem)
    onnx_path = path / ONNX
    if not onnx_path.exists():
        return RunInfo(path, shipped, record, None,
                       f"{onnx_path}: ONNX export is missing; make it with `python -m core export {path}`")
    try:
        check_onnx_file(onnx_path)
    except ValueError as exc:
        return RunInfo(path, shipped, record, None, str(exc))
    return RunInfo(path, shipped, record, None)


def list_runs(runs_root: Path | None = None, include_shipped: bool = True) -> list[RunInfo]:
    """Every checkpoint folder: shipped ones first, then user runs (newest first). Broken ones carry a reason."""
    out: list[RunInfo] = []
    roots: list[tuple[Path, bool]] = []
    if include_shipped:
        roots.append((SHIPPED_DIR, True))
    if runs_root is not None:
        roots.append((Path(runs_root), False))
    for root, shipped in roots:
        if not root.is_dir():
            continue
        dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        dirs.sort(key=(lambda d: d.name) if shipped else (lambda d: -_mtime(d)))
        out.extend(inspect_run(d, shipped) for d in dirs)
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted while listing
        return 0.0


def delete_run(run_dir: Path, runs_root: Path) -> None:
    """Delete a user run; refuses shipped checkpoints and anything not directly inside the runs folder."""
    root = Path(runs_root).resolve()
    target = Path(run_dir)
    if target.is_symlink():
        raise ValueError(f"{run_dir}: is a symbolic link; only run folders inside {root} can be deleted")
    target = target.resolve()
    shipped = SHIPPED_DIR.resolve()
    if target == shipped or shipped in target.parents:
        raise ValueError(f"{run_dir}: shipped checkpoints are protected and cannot be deleted")
    if target.parent != root:
        raise ValueError(f"{run_dir}: not a run folder inside {root}; refusing to delete it")
    check_run_name(target.name)
    if not (target / RECORD).exists() and any(target.iterdir()):
        raise ValueError(f"{run_dir}: has no {RECORD}, so it does not look like a run folder; not deleting it")
    shutil.rmtree(target)
