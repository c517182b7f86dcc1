"""Self-describing checkpoint folders: weights (.pt), ONNX export and a JSON run record; listing and safe deletion."""
from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import archs
from core.fsutil import SHIPPED_DIR, atomic_write_bytes, atomic_write_json

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
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: run record is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: run record is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("model"), dict) or "arch" not in record["model"]:
        raise ValueError(f"{path}: run record has no model description ('model': {{'arch': ..., 'knobs': ...}})")
    return record


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

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def has_onnx(self) -> bool:
        return (self.path / ONNX).is_file()


def inspect_run(path: Path, shipped: bool) -> RunInfo:
    try:
        record = read_record(path)
    except ValueError as exc:
        return RunInfo(path, shipped, None, str(exc))
    status = record.get("status", "done")
    if status == "done" and not (path / WEIGHTS).is_file():
        return RunInfo(path, shipped, record, f"{path / WEIGHTS}: weights file is missing")
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
        dirs.sort(key=(lambda d: d.name) if shipped else (lambda d: -d.stat().st_mtime))
        out.extend(inspect_run(d, shipped) for d in dirs)
    return out


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
