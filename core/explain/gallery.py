"""Confusion gallery: a checkpoint's predictions on an evaluation split (ONNX Runtime, cached on disk by the ONNX
file's content hash and the data's fingerprint), the faces in any confusion-matrix cell, and each class's most
typical faces."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import FERData, find_fer, load_data
from core.inference.onnx_io import OnnxClassifier
from core.training.record import RunRecord
from core.util.classes import CLASSES, NUM_CLASSES
from core.util.fsutil import PROJECT_ROOT, atomic_write_bytes, cache_dir

SYNTHETIC_SIZE = 3000  # the Data page's synthetic set, so the gallery shows the faces that page shows
BATCH = 512  # ONNX Runtime batch: big enough to amortise the call, small enough to keep memory flat
CACHE_VERSION = 1
_HASHES: dict[tuple[str, int, int], str] = {}


@dataclass
class Predictions:
    probs: np.ndarray  # float32 [N, 7]
    labels: np.ndarray  # int64 [N], the true classes
    images: np.ndarray  # uint8 [N, 48, 48]
    split: str
    synthetic: bool
    source: str  # the data's path, or 'synthetic'

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def confusion(self) -> np.ndarray:
        """[7, 7] counts, rows = true class, columns = predicted class."""
        out = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        np.add.at(out, (self.labels, self.predicted), 1)
        return out


def gallery_source(chosen: str | None, record: RunRecord | None) -> str:
    """The data the model was trained on, so its matrix shows its own kind of mistakes: synthetic faces for a
    synthetic run; for a FER2013 run, FER2013 at its recorded path where that still exists, else the copy picked
    on the Data page, $FER_DATA or the project's data/ folder; the synthetic set only when no FER2013 is found
    (the pages say so). Without a record: the Data page's pick, else FER2013 where found."""
    if record is not None and record.synthetic:
        return "synthetic"
    candidates = [record.data.get("source") if record is not None else None, chosen]
    for cand in candidates:
        if not cand or cand == "synthetic":
            continue
        path = Path(cand).expanduser()
        path = path if path.is_absolute() else PROJECT_ROOT / path
        if path.exists():
            return str(path)
    found = find_fer()
    return str(found) if found else "synthetic"


def gallery_data(source: str) -> FERData:
    """The data behind the gallery (FER2013 is cached on disk by core.data; the synthetic set is memoised here)."""
    return _synthetic() if source == "synthetic" else load_data(source)


@lru_cache(maxsize=1)
def _synthetic() -> FERData:
    # generating 3,000 faces takes seconds; every caller only reads it (do not modify the arrays)
    return load_data("synthetic", synthetic_size=SYNTHETIC_SIZE)


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's content, memoised by path, size and mtime (a re-export changes all three)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the split's pixels and labels: the same images give the same key wherever they were read from."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{images.shape}|{labels.shape}".encode())
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return h.hexdigest()


def compute_probs(onnx_path: str | Path, images: np.ndarray) -> np.ndarray:
    """Probabilities for many images with ONNX Runtime, in batches (no cache)."""
    clf = OnnxClassifier.get(onnx_path)
    parts = [clf.probabilities(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, NUM_CLASSES), np.float32)


def predict_split(onnx_path: str | Path, data: FERData, split: str | None = None) -> Predictions:
    """The model's probabilities for every image of a split (default: FER2013's PublicTest, else the validation
    split), computed once with ONNX Runtime and then read from the on-disk cache."""
    split = split or data.val_split
    if split not in data.splits:
        raise ValueError(f"split {split!r} is not in {data.source}; available: {', '.join(data.splits)}")
    s = data.splits[split]
    key = f"{file_hash(onnx_path)[:20]}-{data_fingerprint(s.images, s.labels)[:20]}"
    cached = cache_dir("predictions") / f"{key}.npz"
    probs = None
    if cached.exists():
        try:
            with np.load(cached) as z:
                probs = z["probs"]
        except (OSError, ValueError, KeyError):
            probs = None  # a damaged entry is recomputed below
    if probs is None or probs.shape != (len(s), NUM_CLASSES):
        probs = compute_probs(onnx_path, s.images)
        buf = io.BytesIO()
        np.savez(buf, probs=probs)
        atomic_write_bytes(cached, buf.getvalue())
    return Predictions(probs, s.labels, s.images, split, data.synthetic, data.source)


def _class(c: int | str, what: str) -> int:
    if isinstance(c, str) and c in CLASSES:
        return CLASSES.index(c)
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < NUM_CLASSES:
        return int(c)
    raise ValueError(f"{what} class {c!r} is unknown; choose one of: {', '.join(CLASSES)} (or 0-{NUM_CLASSES - 1})")


def cell(pred: Predictions, true: int | str, predicted: int | str, limit: int | None = None) -> pd.DataFrame:
    """The faces of one confusion-matrix cell, most confident first (for an off-diagonal cell: the most confident
    mistake first). Columns: index (in the split), true, predicted, confidence (probability of the predicted
    class), p_true (probability of the true class). Empty when the cell is."""
    t, p = _class(true, "true"), _class(predicted, "predicted")
    idx = np.flatnonzero((pred.labels == t) & (pred.predicted == p))
    conf = pred.probs[idx, p]
    order = np.argsort(-conf, kind="stable")[:limit]
    idx = idx[order]
    return pd.DataFrame({"index": idx, "true": CLASSES[t], "predicted": CLASSES[p],
                         "confidence": pred.probs[idx, p], "p_true": pred.probs[idx, t]})


def typical(pred: Predictions, cls: int | str, k: int = 8) -> pd.DataFrame:
    """The faces the model finds most typical of a class: correctly classified ones with the highest probability."""
    c = _class(cls, "")
    return cell(pred, c, c, k)


def cell_message(pred: Predictions, true: int | str, predicted: int | str) -> str:
    """Why a cell shows no faces, in words for the page."""
    t, p = _class(true, "true"), _class(predicted, "predicted")
    support = int((pred.labels == t).sum())
    if support == 0:
        return f"The {pred.split} split has no '{CLASSES[t]}' faces, so this row of the matrix is empty."
    return (f"No face in this cell: of the {support} '{CLASSES[t]}' faces in {pred.split}, the model called none "
            f"'{CLASSES[p]}'. Pick another cell.")


def cell_caption(pred: Predictions, true: int | str, predicted: int | str, run: str) -> str:
    """The words above a cell's faces; on the diagonal there is one class to name, so it is named once."""
    t, p = _class(true, "true"), _class(predicted, "predicted")
    count, support = int(pred.confusion()[t, p]), int((pred.labels == t).sum())
    head = f"{count} of the {support} '{CLASSES[t]}' faces in {pred.split} were called '{CLASSES[p]}' by {run}; "
    if t == p:
        return head + f"most confident first. Under each face: the model's probability for '{CLASSES[t]}'."
    return head + (f"most confident mistake first. Under each face: the model's probability for '{CLASSES[p]}' "
                   f"(and for '{CLASSES[t]}').")


def biggest_mistake(pred: Predictions) -> tuple[int, int]:
    """(true, predicted) of the fullest off-diagonal cell: the gallery's starting point."""
    conf = pred.confusion().astype(float)
    np.fill_diagonal(conf, -1)
    t, p = np.unravel_index(int(np.argmax(conf)), conf.shape)
    return int(t), int(p)
