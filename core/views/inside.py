"""A look inside a model, the pieces the Inside page and the Predict hand-off share: where a face comes from, the
session keys Predict sets, and the checkpoints that can be opened (its speed figures are measured by bench/inside.py)."""
from __future__ import annotations

from typing import Any

import numpy as np

from core.data import FERData
from core.inference.photo import label_from_name
from core.training.record import FINISHED
from core.training.rundir import WEIGHTS, RunStatus
from core.util.classes import CLASSES
from core.util.fsutil import PROJECT_ROOT

# Predict hands a face over by setting these two session keys and switching to the Inside page.
FACE_KEY = "inside_face"  # uint8 [48, 48] crop, as the model saw it
MODEL_KEY = "inside_model"  # the checkpoint folder (str) the face was classified with
PHOTO_KEY = "inside_photo"  # optional: (core.inference.photo.PhotoResult, face index) for the overlay on the photo
SAMPLE_PHOTO = PROJECT_ROOT / "assets" / "astronaut.jpg"


def openable(runs: list[RunStatus]) -> list[RunStatus]:
    """Checkpoints whose weights can be looked into: finished (or stopped) runs with a weights file (an int8 or fp16
    variant is ONNX only, so it has none)."""
    return [r for r in runs if r.ok and r.status in FINISHED and (r.path / WEIGHTS).is_file()]


def dataset_face(data: FERData, split: str, index: int) -> tuple[np.ndarray, int]:
    """(48x48 image, true label) of one dataset image; ValueError naming the allowed range."""
    if split not in data.splits:
        raise ValueError(f"split {split!r} is not in {data.source}; available: {', '.join(data.splits)}")
    s = data.splits[split]
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < len(s):
        raise ValueError(f"image index {index!r} is out of range: {split} has images 0-{len(s) - 1}")
    return s.images[index], int(s.labels[index])


def handed_face(value: Any) -> np.ndarray:
    """The face Predict put in the session, checked: a uint8 48x48 array, else ValueError."""
    a = np.asarray(value) if value is not None else None
    if a is None or a.shape != (48, 48) or a.dtype != np.uint8:
        shape = None if a is None else (a.shape, str(a.dtype))
        raise ValueError(f"the face handed over from Predict must be a uint8 48x48 array, got {shape}")
    return a


def label_index(name: str) -> int | None:
    """The class index a photo's file name carries ('anna__happy__1.jpg' -> 3), or None when it names none."""
    label = label_from_name(name.removeprefix("sample: "))
    return CLASSES.index(label) if label is not None else None
