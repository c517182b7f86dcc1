"""How well the face detector does on a folder of real photos with a manifest of face counts (benchmarks, tests)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.inference.faces import detect
from core.inference.photo import decode_image


@dataclass
class ManifestScore:
    """How a detector did on a folder of photos whose manifest.csv gives the face count per photo (no boxes):
    a photo with n faces and d detections counts min(n, d) found and max(0, d - n) extra (false) faces."""
    detector: str
    photos: int
    faces: int
    found: int
    extra: int
    detect_ms: list[float]  # per photo, decoding excluded
    mismatches: list[tuple[str, int, int]]  # (file, faces in the manifest, detections) where they differ

    @property
    def recall(self) -> float:
        return self.found / self.faces if self.faces else 0.0


def score_on_manifest(photos_dir: str | Path, detector: str = "auto") -> ManifestScore:
    """Run `detector` on every photo listed in photos_dir/manifest.csv (columns file, faces, ...)."""
    import csv
    import time

    manifest = Path(photos_dir) / "manifest.csv"
    if not manifest.is_file():
        raise ValueError(f"{manifest}: no manifest.csv (columns file, faces) in {photos_dir}")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    score = ManifestScore(detector, len(rows), 0, 0, 0, [], [])
    for row in rows:
        rgb = decode_image((Path(photos_dir) / row["file"]).read_bytes(), row["file"])
        t = time.perf_counter()
        d = len(detect(rgb, detector))
        score.detect_ms.append((time.perf_counter() - t) * 1e3)
        n = int(row["faces"])
        score.faces, score.found, score.extra = score.faces + n, score.found + min(n, d), score.extra + max(0, d - n)
        if d != n:
            score.mismatches.append((row["file"], n, d))
    return score
