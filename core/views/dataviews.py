"""Tables and pictures behind the Data page: class balance, sample galleries, and which dataset the app uses."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.util.classes import CLASSES


def class_balance(data: Any) -> pd.DataFrame:
    """split, class, count, share for every split of a core.data.FERData."""
    rows = []
    for split, s in data.splits.items():
        counts = s.class_counts()
        total = max(1, int(counts.sum()))
        for c, n in zip(CLASSES, counts):
            rows.append({"split": split, "class": c, "count": int(n), "share": int(n) / total})
    return pd.DataFrame(rows, columns=["split", "class", "count", "share"])


def upscale(img: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement: shows the 48x48 pixels the model sees, without smoothing them away."""
    return np.repeat(np.repeat(np.asarray(img), factor, axis=0), factor, axis=1)


def gallery(split: Any, per_class: int = 6, seed: int = 0, factor: int = 3) -> dict[str, list[np.ndarray]]:
    """Up to `per_class` random images of each class from a split, upscaled for display."""
    rng = np.random.default_rng(seed)
    out = {}
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(split.labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        out[name] = [upscale(split.images[i], factor) for i in pick]
    return out




def dataset_choices(chosen: str | None, detected: Path | None) -> tuple[list[str], str]:
    """(sources to offer, the default one) for the Train page: the built-in synthetic set, plus the FER2013 path
    chosen on the Data page or else the copy found in the project; the default is the Data page's choice."""
    chosen = chosen or "synthetic"
    fer = chosen if chosen != "synthetic" else (str(detected) if detected else None)
    sources = ["synthetic"] + ([fer] if fer else [])
    return sources, chosen if chosen in sources else "synthetic"
