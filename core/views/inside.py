"""A look inside a model, the pieces the Inside page and the Predict hand-off share: where a face comes from, the
session keys Predict sets, the checkpoints that can be opened, and the speed measurements for the benchmark."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.training.rundir import ONNX, WEIGHTS, RunStatus
from core.data import FERData
from core.util.fsutil import PROJECT_ROOT, SHIPPED_DIR

# Predict hands a face over by setting these two session keys and switching to the Inside page.
FACE_KEY = "inside_face"  # uint8 [48, 48] crop, as the model saw it
MODEL_KEY = "inside_model"  # the checkpoint folder (str) the face was classified with
PHOTO_KEY = "inside_photo"  # optional: (core.inference.photo.PhotoResult, face index) for the overlay on the photo
SAMPLE_PHOTO = PROJECT_ROOT / "assets" / "astronaut.jpg"


def openable(runs: list[RunStatus]) -> list[RunStatus]:
    """Checkpoints whose weights can be looked into: finished (or stopped) runs with a weights file (an int8 or fp16
    variant is ONNX only, so it has none)."""
    return [r for r in runs if r.ok and r.status in ("done", "stopped") and (r.path / WEIGHTS).is_file()]


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


def _median_ms(fn, repeats: int) -> float:  # noqa: ANN001 - any callable
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def benchmark(fer_dir: str | Path | None = None, repeats: int = 5) -> dict[str, Any]:
    """The Inside page's three speed figures, each the median of `repeats` after one warm-up:
    feature maps (16 channels per row, every row rendered) + Grad-CAM for one face on plain_cnn-w1 after loading;
    one gallery cell (24 faces) once predictions are cached, for mobilenet-w1; and computing the predictions for the
    whole evaluation split (PublicTest with FER2013, else the synthetic validation split) with ONNX Runtime."""
    from core.explain import cam, featuremaps, gallery
    from core.training.checkpoint import load_model
    from core.views.dataviews import upscale

    data = gallery.gallery_data(str(fer_dir) if fer_dir else "synthetic")
    split = data.splits[data.val_split]
    face = split.images[0]
    model, _ = load_model(SHIPPED_DIR / "plain_cnn-w1")

    def inside() -> None:
        rows = featuremaps.feature_maps(model, face)
        [featuremaps.channel_grid(r, 16) for r in rows]
        cam.grad_cam(model, face, cam.default_cam_layer(rows))

    onnx = SHIPPED_DIR / "mobilenet-w1" / ONNX
    pred = gallery.predict_split(onnx, data)
    t, p = gallery.biggest_mistake(pred)

    def one_cell() -> None:
        cached = gallery.predict_split(onnx, data)
        [upscale(cached.images[i], 2) for i in gallery.cell(cached, t, p, 24)["index"]]

    out = {"data": "FER2013 " + data.val_split if not data.synthetic else "synthetic " + data.val_split,
           "images": len(split)}
    for name, fn in (("inside_face_ms", inside), ("gallery_cell_ms", one_cell),
                     ("predictions_ms", lambda: gallery.compute_probs(onnx, split.images))):
        fn()  # warm-up: imports, ONNX session, first-call allocations
        out[name] = round(_median_ms(fn, repeats), 1)
    return out
