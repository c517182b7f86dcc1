"""Tables behind the Predict page: one row per detected face, and one photo's class probabilities."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from core.util.classes import CLASSES

# what the photo uploaders (Predict, Inside) accept: the formats core.inference.photo decodes
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


def photo_rows(results: Iterable[Any]) -> pd.DataFrame:
    """One row per face of core.inference.photo.PhotoResult objects: photo, face, box, top class, confidence, probabilities."""
    rows = []
    for r in results:
        for i, f in enumerate(r.faces, 1):
            rows.append({"photo": r.name, "face": i, "no_face_found": f.fallback, "box": " ".join(map(str, f.box)),
                         "top": f.top, "confidence": round(f.confidence, 4),
                         **{c: round(float(p), 4) for c, p in zip(CLASSES, f.probs)}})
    return pd.DataFrame(rows, columns=["photo", "face", "no_face_found", "box", "top", "confidence", *CLASSES])


def probabilities_frame(probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"class": list(CLASSES), "probability": [float(p) for p in probs]})
