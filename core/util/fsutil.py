"""Filesystem helpers: atomic writes and the configurable cache and runs folders."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # core/util/fsutil.py -> the project
SHIPPED_DIR = PROJECT_ROOT / "checkpoints"
UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a killed writer never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=json_default).encode())


def json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def project_relative(value: str | None) -> str | None:
    """An absolute path as seen from the project folder (e.g. ../shared/data/fer2013), so that a committed record or
    report names no machine's folders; relative paths, 'synthetic' and None are returned as they are."""
    if not value or value == "synthetic" or not os.path.isabs(value):
        return value
    return os.path.relpath(value, PROJECT_ROOT)


def cache_dir(sub: str = "") -> Path:
    """Decoded-data cache; FER_CACHE_DIR overrides (tests point it at a temp dir)."""
    base = Path(os.environ.get("FER_CACHE_DIR") or Path.home() / ".cache" / "fer-explorer")
    d = base / sub if sub else base
    d.mkdir(parents=True, exist_ok=True)
    return d


def runs_dir(override: str | os.PathLike | None = None) -> Path:
    """Where user runs go: explicit argument, else FER_RUNS_DIR, else ./runs in the project."""
    d = Path(override or os.environ.get("FER_RUNS_DIR") or PROJECT_ROOT / "runs").expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def mtime(path: str | os.PathLike) -> float:
    """The file's modification time, or 0.0 when it is missing (deleted while listing, never written)."""
    try:
        return Path(path).expanduser().stat().st_mtime
    except OSError:
        return 0.0


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when the file is missing, unreadable, not JSON or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
