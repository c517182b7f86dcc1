"""FER2013 readers for every released format, a vectorised pixel parser, an on-disk cache, and the dataset type."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.classes import CLASSES, NUM_CLASSES
from core.fsutil import atomic_write_bytes, cache_dir

IMAGE_SIDE = 48
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
# FER2013's Usage column -> our split names. The image-folder release's test/ is PublicTest.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "public", "PrivateTest": "private"}
SPLIT_TITLES = {"train": "Training", "public": "PublicTest", "private": "PrivateTest", "val": "validation (held out of train)"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".pgm"}
# Bump when parsing changes, so stale cache entries are never reused.
CACHE_VERSION = 1


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)


@dataclass
class FERData:
    """A dataset with named splits: train, and public/private (FER2013) or val (held out of train)."""

    source: str  # "synthetic" or the path the user gave
    kind: str  # which format was read
    splits: dict[str, Split]
    warnings: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    @property
    def val_split(self) -> str:
        """The split used for validation during training: FER2013's PublicTest where present."""
        for name in ("public", "val", "private"):
            if name in self.splits:
                return name
        raise ValueError(f"{self.source}: no validation split among {sorted(self.splits)}")

    def describe(self) -> dict:
        return {
            "source": self.source, "kind": self.kind, "synthetic": self.synthetic,
            "splits": {k: len(v) for k, v in self.splits.items()},
        }


# ---------------------------------------------------------------------------------------------------------
# Pixel parsing. FER2013 CSVs hold 2,304 space-separated integers per row. Calling int() per pixel is what
# makes naive readers (torchvision's included) slow; here all rows are joined into one byte buffer and
# tokenised with numpy, and errors are traced back to the row they came from.
# ---------------------------------------------------------------------------------------------------------
def parse_pixel_rows(rows: list[str], where: str, first_line: int = 2) -> np.ndarray:
    """Parse pixel strings into uint8 [N, 48, 48]; ValueError names the file and line of the first bad row."""
    n = len(rows)
    if n == 0:
        return np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
    try:
        buf = np.frombuffer(" ".join(rows).encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        bad_row = next(i for i, r in enumerate(rows) if not r.isascii())
        raise ValueError(f"{where}, line {first_line + bad_row}: pixels must be integers 0-255, found non-ASCII text") from None
    row_starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))

    def line_of(pos: int) -> int:
        return first_line + int(np.searchsorted(row_starts, pos, side="right") - 1)

    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(f"{where}, line {first_line + int(empty[0])}: empty pixels field (expected {N_PIXELS} values)")
    digit = (buf - 48) < 10  # uint8 wrap-around turns the range check into one comparison
    if not (digit | (buf == 32)).all():
        pos = int(np.flatnonzero(~digit & (buf != 32))[0])
        raise ValueError(f"{where}, line {line_of(pos)}: pixels must be integers 0-255 separated by spaces, found {chr(buf[pos])!r}")
    # a token starts where a digit follows a non-digit (bool '>' is "this and not that") and ends likewise
    start_mask = np.empty_like(digit)
    start_mask[0] = digit[0]
    np.greater(digit[1:], digit[:-1], out=start_mask[1:])
    starts = np.flatnonzero(start_mask)
    end_mask = start_mask  # reuse the buffer
    end_mask[-1] = digit[-1]
    np.greater(digit[:-1], digit[1:], out=end_mask[:-1])
    ends = np.flatnonzero(end_mask)
    # tokens per row: locate the ~30k row starts among the token starts, not the ~66M tokens among the rows
    bounds = np.searchsorted(starts, np.append(row_starts, len(buf)))
    counts = np.diff(bounds)
    wrong = np.flatnonzero(counts != N_PIXELS)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"{where}, line {first_line + i}: expected {N_PIXELS} pixel values (48x48), found {int(counts[i])}")
    width = ends - starts + 1
    values = buf[ends] - np.uint8(48)
    values = values.astype(np.uint16)
    two = width >= 2
    values[two] += (buf[ends[two] - 1] - np.uint8(48)).astype(np.uint16) * 10
    three = width >= 3
    values[three] += (buf[ends[three] - 2] - np.uint8(48)).astype(np.uint16) * 100
    too_big = np.flatnonzero((width > 3) | (values > 255))
    if too_big.size:
        raise ValueError(f"{where}, line {line_of(int(starts[too_big[0]]))}: pixel value out of range 0-255")
    return values.astype(np.uint8).reshape(n, IMAGE_SIDE, IMAGE_SIDE)


def _parse_labels(values: list[str], where: str, first_line: int = 2) -> np.ndarray:
    labels = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):  # ~30k short strings: a Python loop is fine and gives exact error lines
        v = v.strip()
        if not v.lstrip("-").isdigit() or not (0 <= int(v) < NUM_CLASSES):
            raise ValueError(f"{where}, line {first_line + i}: label {v!r} is not a class index 0-{NUM_CLASSES - 1} ({', '.join(CLASSES)})")
        labels[i] = int(v)
    return labels


def _read_csv_columns(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Read a CSV as strings; header names are stripped (icml_face_data.csv writes ' Usage', ' pixels')."""
    import re

    import pandas as pd

    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (expected a FER2013 CSV with a header row)")
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):  # text never holds NUL bytes; images, archives and spreadsheets do
            raise ValueError(f"{path}: not a readable CSV (binary data, e.g. an image or a spreadsheet, not text)")
    try:
        # header=None: the header is row 0, so a row with more fields than the header is a parser error naming
        # its line (with header=0, pandas would quietly turn the first column into an index and shift the rest)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, header=None)
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise ValueError(f"{path}, line {m.group(2)}: {m.group(3)} comma-separated fields, but the header has "
                             f"{m.group(1)}") from None
        raise ValueError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a readable CSV (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except pd.errors.EmptyDataError:
        if path.read_bytes().strip():
            raise ValueError(f"{path}: the first line must be the header (e.g. 'emotion,pixels,Usage'), found a blank line") from None
        raise ValueError(f"{path}: the file is empty (expected a FER2013 CSV with a header row)") from None
    columns = [str(c).strip() for c in frame.iloc[0]]
    if not any(columns):
        if not path.read_bytes().strip():
            raise ValueError(f"{path}: the file is empty (only blank lines or spaces)")
        raise ValueError(f"{path}: the first line must be the header (e.g. 'emotion,pixels,Usage'), found a blank line")
    frame = frame.iloc[1:]
    frame.columns = columns
    # blank lines at the end of a file are harmless; blank rows inside it are errors with their line
    filled = (frame != "").any(axis=1).to_numpy()
    last = int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0
    holes = np.flatnonzero(~filled[:last])
    if holes.size:
        raise ValueError(f"{path}, line {int(holes[0]) + 2}: empty row (every row needs a label and {N_PIXELS} pixels)")
    frame = frame.iloc[:last]
    return columns, {c: frame[c].tolist() for c in frame.columns}


CSV_LAYOUTS = {
    # format name: (label column, pixel column, usage column or None)
    "fer2013.csv": ("emotion", "pixels", "Usage"),
    "kaggle train.csv": ("emotion", "pixels", None),
    "course label,feature": ("label", "feature", None),
}


def _csv_layout(columns: list[str], path: Path) -> str:
    cols = set(columns)
    if {"emotion", "pixels", "Usage"} <= cols:
        return "fer2013.csv"
    if {"emotion", "pixels"} <= cols:
        return "kaggle train.csv"
    if {"label", "feature"} <= cols:
        return "course label,feature"
    if "pixels" in cols:
        raise ValueError(f"{path}: has pixels but no labels (columns {columns}); Kaggle's unlabelled test.csv cannot be used for training or accuracy")
    raise ValueError(
        f"{path}: unrecognised CSV header {columns}; expected one of: 'emotion,pixels,Usage' (fer2013.csv), "
        "'emotion, Usage, pixels' (icml_face_data.csv), 'emotion,pixels' (Kaggle train.csv), 'label,feature' (course format)"
    )


def read_csv_file(path: Path) -> tuple[str, dict[str, Split]]:
    """One CSV file -> its splits (by Usage where the file has it, else everything is 'train')."""
    columns, data = _read_csv_columns(path)
    layout = _csv_layout(columns, path)
    if not data[columns[0]]:
        raise ValueError(f"{path}: has a header ({', '.join(columns)}) but no data rows")
    label_col, pixel_col, usage_col = CSV_LAYOUTS[layout]
    labels = _parse_labels(data[label_col], str(path))
    images = parse_pixel_rows(data[pixel_col], str(path))
    if usage_col is None:
        return layout, {"train": Split(images, labels)}
    usage = np.array([u.strip() for u in data[usage_col]])
    unknown = sorted(set(usage.tolist()) - set(USAGE_TO_SPLIT))
    if unknown:
        row = int(np.flatnonzero(~np.isin(usage, list(USAGE_TO_SPLIT)))[0])
        raise ValueError(f"{path}, line {row + 2}: Usage {unknown[0]!r} is not one of {list(USAGE_TO_SPLIT)}")
    if "icml" in path.name or columns[1] == "Usage":
        layout = "icml_face_data.csv"
    splits = {}
    for usage_name, split in USAGE_TO_SPLIT.items():
        mask = usage == usage_name
        if mask.any():
            splits[split] = Split(images[mask], labels[mask])
    return layout, splits


def _read_csv_pair(train_csv: Path) -> tuple[str, dict[str, Split]]:
    """Kaggle/course `train.csv`, plus a labelled `test.csv` beside it as the public split."""
    layout, splits = read_csv_file(train_csv)
    test_csv = train_csv.with_name("test.csv")
    if test_csv.exists() and "public" not in splits:
        columns, _ = _read_csv_columns(test_csv)
        if {"emotion", "pixels"} <= set(columns) or {"label", "feature"} <= set(columns):
            _, test_splits = read_csv_file(test_csv)
            splits["public"] = test_splits["train"]
    return layout, splits


def _decode_gray48(path: Path) -> np.ndarray:
    import cv2

    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not raw.size:
        raise ValueError(f"{path}: the image file is empty (0 bytes)")
    img = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: not a readable image: truncated, corrupt, or not really a {path.suffix.lower()} file "
                         f"(allowed: {', '.join(sorted(IMAGE_EXTS))})")
    if img.shape != (IMAGE_SIDE, IMAGE_SIDE):
        img = cv2.resize(img, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_AREA)
    return img


IMAGE_FOLDER_SPLITS = {"train": "train", "test": "public", "val": "val", "validation": "val", "public": "public", "private": "private"}


def _image_folder_files(root: Path) -> dict[str, list[tuple[Path, int]]]:
    found: dict[str, list[tuple[Path, int]]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        split = IMAGE_FOLDER_SPLITS.get(sub.name.lower())
        if split is None:
            continue
        files: list[tuple[Path, int]] = []
        for class_dir in sorted(p for p in sub.iterdir() if not p.name.startswith(".")):
            if not class_dir.is_dir():
                raise ValueError(f"{class_dir}: unexpected file in {sub}; expected one folder per class: {', '.join(CLASSES)}")
            name = class_dir.name.lower()
            if name not in CLASSES:
                raise ValueError(f"{class_dir}: unknown class folder {class_dir.name!r}; allowed: {', '.join(CLASSES)}")
            for f in sorted(class_dir.iterdir()):
                if f.name.startswith("."):
                    continue
                if f.suffix.lower() not in IMAGE_EXTS or not f.is_file():
                    raise ValueError(f"{f}: not an image file (allowed extensions: {', '.join(sorted(IMAGE_EXTS))})")
                files.append((f, CLASSES.index(name)))
        found[split] = files
    if "train" not in found:
        raise ValueError(f"{root}: no train/ folder with class subfolders ({', '.join(CLASSES)})")
    if not found["train"]:
        raise ValueError(f"{root / 'train'}: holds no images; expected train/<class>/*.jpg with classes {', '.join(CLASSES)}")
    return found


def read_image_folder(root: Path) -> tuple[str, dict[str, Split]]:
    splits = {}
    for split, files in _image_folder_files(root).items():
        images = np.stack([_decode_gray48(f) for f, _ in files]) if files else np.zeros((0, 48, 48), np.uint8)
        labels = np.array([c for _, c in files], dtype=np.int64)
        splits[split] = Split(images, labels)
    return "image folder", splits


def resolve_source(path: Path) -> tuple[str, Path]:
    """Find what to read under a user-given path: ('csv'|'csvpair'|'folder', path)."""
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder (give a FER2013 CSV, a folder with train/<class>/ images, or 'synthetic')")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: expected a .csv file or a folder, got {path.suffix or 'a file with no extension'}")
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


def _fingerprint(kind: str, path: Path) -> str:
    """Cache key from path, sizes and mtimes: any edit, copy-over or touch invalidates the entry."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{path.resolve()}".encode())
    if kind == "folder":
        for split, files in _image_folder_files(path).items():
            for f, label in files:
                st = f.stat()
                h.update(f"{split}|{f.name}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        for f in (path, path.with_name("test.csv")) if kind == "csvpair" else (path,):
            if f.exists():
                st = f.stat()
                h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _quirk_warnings(splits: dict[str, Split]) -> list[str]:
    """FER2013's known noise: blank images and exact duplicates. Reported, never fatal."""
    out = []
    for name, split in splits.items():
        if len(split) == 0:
            out.append(f"split {name!r} is empty")
            continue
        flat = split.images.reshape(len(split), -1)
        blank = int((flat.min(axis=1) == flat.max(axis=1)).sum())
        if blank:
            out.append(f"{name}: {blank} blank (single-colour) image(s)")
        _, inverse, counts = np.unique(np.ascontiguousarray(flat).view(f"V{N_PIXELS}").ravel(), return_inverse=True, return_counts=True)
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


def load_fer(path: str | os.PathLike, *, use_cache: bool = True) -> FERData:
    """Read FER2013 in any supported format; decoded arrays are cached by path, size and mtime."""
    path = Path(path).expanduser()
    kind, target = resolve_source(path)
    key = _fingerprint(kind, target)
    cached = cache_dir("data") / f"{key}.npz"
    meta_file = cached.with_suffix(".json")
    if use_cache and cached.exists() and meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(cached) as z:
                splits = {s: Split(z[f"{s}_x"], z[f"{s}_y"]) for s in meta["splits"]}
            return FERData(str(path), meta["kind"], splits, meta["warnings"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    if kind == "folder":
        fmt, splits = read_image_folder(target)
    elif kind == "csvpair":
        fmt, splits = _read_csv_pair(target)
    else:
        fmt, splits = read_csv_file(target)
    if "train" not in splits:
        raise ValueError(f"{target}: no Training rows found (splits present: {sorted(splits)})")
    if not any(s in splits for s in ("public", "val")):
        _holdout_val(splits)
    warnings = _quirk_warnings(splits)
    if use_cache:
        import io

        arrays = {f"{s}_{k}": getattr(v, a) for s, v in splits.items() for k, a in (("x", "images"), ("y", "labels"))}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(cached, buf.getvalue())
        atomic_write_bytes(meta_file, json.dumps({"kind": fmt, "splits": list(splits), "warnings": warnings}).encode())
    return FERData(str(path), fmt, splits, warnings)


def load_data(source: str | os.PathLike, *, synthetic_size: int = 6000, seed: int = 0, use_cache: bool = True) -> FERData:
    """'synthetic' -> the built-in procedural set; anything else is a path to FER2013."""
    if str(source) == "synthetic":
        from core.synthetic import synthetic_dataset

        return synthetic_dataset(synthetic_size, seed=seed)
    return load_fer(source, use_cache=use_cache)


def find_local_fer(start: Path | None = None) -> Path | None:
    """Auto-detect FER2013 in a `data/` folder of the project (the app's convenience default)."""
    root = start or Path(__file__).resolve().parent.parent
    for cand in (root / "data" / "fer2013", root / "data"):
        try:
            resolve_source(cand)
            return cand
        except ValueError:
            continue
    return None
