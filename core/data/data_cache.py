"""On-disk cache of decoded datasets: one .npz of the arrays and one .json of kind, split names and warnings per
source."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from core.data.dataset import FERData, Split
from core.data.image_folder import image_folder_files
from core.util.fsutil import atomic_write_bytes, cache_dir

# Bump when parsing changes, so stale cache entries are never reused.
CACHE_VERSION = 1


def fingerprint(kind: str, path: Path) -> str:
    """Cache key from path, sizes and mtimes: any edit, copy-over or touch invalidates the entry."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{path.resolve()}".encode())
    if kind == "folder":
        for split, files in image_folder_files(path).items():
            for f, label in files:
                st = f.stat()
                h.update(f"{split}|{f.name}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        for f in (path, path.with_name("test.csv")) if kind == "csvpair" else (path,):
            if f.exists():
                st = f.stat()
                h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cache_files(key: str) -> tuple[Path, Path]:
    """(arrays .npz, metadata .json) of one cache entry."""
    arrays = cache_dir("data") / f"{key}.npz"
    return arrays, arrays.with_suffix(".json")


def read_cached(key: str, source: str) -> FERData | None:
    """The cached dataset for `key`, or None when there is none or it is damaged (the caller then rebuilds it)."""
    arrays, meta_file = cache_files(key)
    if not (arrays.exists() and meta_file.exists()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        with np.load(arrays) as z:
            splits = {s: Split(z[f"{s}_x"], z[f"{s}_y"]) for s in meta["splits"]}
        return FERData(source, meta["kind"], splits, meta["warnings"])
    except (OSError, ValueError, KeyError):
        return None


def write_cached(key: str, data: FERData) -> None:
    """Store `data`'s arrays and metadata under `key`; each file is written atomically."""
    arrays_file, meta_file = cache_files(key)
    arrays = {f"{s}_{k}": getattr(v, a) for s, v in data.splits.items() for k, a in (("x", "images"), ("y", "labels"))}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(arrays_file, buf.getvalue())
    atomic_write_bytes(meta_file,
                       json.dumps({"kind": data.kind, "splits": list(data.splits), "warnings": data.warnings}).encode())
