"""The dataset types (`Split`, `FERData`) and image constants that every reader and the synthetic set share."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.util.classes import NUM_CLASSES

IMAGE_SIDE = 48
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
SPLIT_TITLES = {"train": "Training", "public": "PublicTest", "private": "PrivateTest",
                "val": "validation (held out of train)"}


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
    """A dataset with named splits: train, and public/private (FER2013) or val (held out of train).

    `warnings` lists the data-quality findings (blank images, exact duplicates and duplicate groups with
    conflicting labels), one readable line each, for the CLI and the app to show; they are never fatal."""

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
