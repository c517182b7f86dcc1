"""FER2013 and the synthetic set behind one entry point: finding the data, reading it (cached), quality warnings.

The pieces live in their own modules (types in core.data.dataset, readers in core.data.csv_reader and
core.data.image_folder, the disk cache in core.data.data_cache); their public names are re-exported here so
`from core.data import ...` keeps working.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.data.csv_reader import CSV_LAYOUTS, USAGE_TO_SPLIT, parse_pixel_rows, read_csv_file, read_csv_pair
from core.data.data_cache import CACHE_VERSION, fingerprint, read_cached, write_cached
from core.data.dataset import IMAGE_SIDE, N_PIXELS, SPLIT_TITLES, FERData, Split
from core.data.image_folder import IMAGE_EXTS, IMAGE_FOLDER_SPLITS, read_image_folder
from core.data.synthetic import synthetic_dataset
from core.util.classes import NUM_CLASSES
from core.util.fsutil import PROJECT_ROOT

__all__ = [
    "CACHE_VERSION", "CSV_LAYOUTS", "IMAGE_EXTS", "IMAGE_FOLDER_SPLITS", "IMAGE_SIDE", "N_PIXELS", "SPLIT_TITLES",
    "USAGE_TO_SPLIT", "FERData", "Split", "find_fer", "find_local_fer", "load_data", "load_fer", "parse_pixel_rows",
    "read_csv_file", "read_image_folder", "resolve_source",
]


def resolve_source(path: Path) -> tuple[str, Path]:
    """Find what to read under a user-given path: ('csv'|'csvpair'|'folder', path)."""
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder (give a FER2013 CSV, a folder with train/<class>/ images, "
                         "or 'synthetic')")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: expected a .csv file or a folder, "
                             f"got {path.suffix or 'a file with no extension'}")
        return ("csvpair" if path.name == "train.csv" else "csv"), path
    if (path / "fer2013").is_dir():  # torchvision's root layout: ROOT/fer2013/*.csv
        return resolve_source(path / "fer2013")
    for name in ("fer2013.csv", "icml_face_data.csv"):
        if (path / name).is_file():
            return "csv", path / name
    if (path / "train.csv").is_file():
        return "csvpair", path / "train.csv"
    if (path / "train").is_dir():
        return "folder", path
    raise ValueError(
        f"{path}: found no FER2013 data; expected fer2013.csv, icml_face_data.csv, train.csv (+test.csv), "
        "train/<class>/*.jpg (+test/), or a fer2013/ folder holding one of these"
    )


def _quirk_warnings(splits: dict[str, Split]) -> list[str]:
    """FER2013's known noise: blank images, exact duplicates and duplicates with conflicting labels. Reported
    (FERData.warnings, run.json, the CLI), never fatal."""
    out = []
    for name, split in splits.items():
        if len(split) == 0:
            out.append(f"split {name!r} is empty")
            continue
        flat = split.images.reshape(len(split), -1)
        blank = int((flat.min(axis=1) == flat.max(axis=1)).sum())
        if blank:
            out.append(f"{name}: {blank} blank (single-colour) image(s)")
        _, inverse, counts = np.unique(np.ascontiguousarray(flat).view(f"V{N_PIXELS}").ravel(), return_inverse=True,
                                       return_counts=True)
        dup = int((counts - 1)[counts > 1].sum())
        if dup:
            groups = inverse.ravel()
            conflicting = sum(
                1 for g in np.flatnonzero(counts > 1) if len(set(split.labels[groups == g].tolist())) > 1
            ) if dup < 5000 else 0
            msg = f"{name}: {dup} exact duplicate image(s)"
            out.append(msg + (f", {conflicting} group(s) with conflicting labels" if conflicting else ""))
    return out


def _holdout_val(splits: dict[str, Split], fraction: float = 0.1, seed: int = 0) -> None:
    """Files without a test split get a stratified, deterministic validation split carved from train."""
    train = splits["train"]
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(train.labels == c)
        rng.shuffle(idx)
        k = max(1, int(round(len(idx) * fraction))) if len(idx) > 1 else 0  # every class seen in validation
        val_idx.append(idx[:k])
    mask = np.zeros(len(train), bool)
    mask[np.concatenate(val_idx)] = True
    splits["val"] = Split(train.images[mask], train.labels[mask])
    splits["train"] = Split(train.images[~mask], train.labels[~mask])


def _read_source(kind: str, target: Path) -> tuple[str, dict[str, Split]]:
    """Run the reader for what resolve_source found: (format name, splits)."""
    if kind == "folder":
        return read_image_folder(target)
    if kind == "csvpair":
        return read_csv_pair(target)
    return read_csv_file(target)


def load_fer(path: str | os.PathLike, *, use_cache: bool = True) -> FERData:
    """Read FER2013 in any supported format; decoded arrays are cached by path, size and mtime."""
    path = Path(path).expanduser()
    kind, target = resolve_source(path)
    key = fingerprint(kind, target)
    if use_cache and (cached := read_cached(key, str(path))) is not None:
        return cached
    fmt, splits = _read_source(kind, target)
    if "train" not in splits:
        raise ValueError(f"{target}: no Training rows found (splits present: {sorted(splits)})")
    if not any(s in splits for s in ("public", "val")):
        _holdout_val(splits)
    data = FERData(str(path), fmt, splits, _quirk_warnings(splits))
    if use_cache:
        write_cached(key, data)
    return data


def load_data(source: str | os.PathLike, *, synthetic_size: int = 6000, seed: int = 0,
              use_cache: bool = True) -> FERData:
    """'synthetic' -> the built-in procedural set; anything else is a path to FER2013."""
    from core.util.settings import check_data_path

    check_data_path(source)  # a shared server reads only the folders $FER_DATA_ROOTS allows
    if str(source) == "synthetic":
        return synthetic_dataset(synthetic_size, seed=seed)
    return load_fer(source, use_cache=use_cache)


FER_DATA_ENV = "FER_DATA"  # where the user keeps FER2013, as the CLI's docs and the tests read it


def find_fer(start: Path | None = None) -> Path | None:
    """The FER2013 copy the app offers by default: $FER_DATA where it holds one, else the project's data/ folder
    (the order the tests use), so the app, the CLI examples and the tests find the same copy."""
    env = os.environ.get(FER_DATA_ENV, "").strip()
    if env:
        try:
            resolve_source(Path(env).expanduser())
            return Path(env).expanduser()
        except ValueError:
            pass  # a stale $FER_DATA: fall back to the project's copy; the Data page still accepts any path
    return find_local_fer(start)


def find_local_fer(start: Path | None = None) -> Path | None:
    """Auto-detect FER2013 in a `data/` folder of the project (the app's convenience default)."""
    root = start or PROJECT_ROOT
    for cand in (root / "data" / "fer2013", root / "data"):
        try:
            resolve_source(cand)
            return cand
        except ValueError:
            continue
    return None
