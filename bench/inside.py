"""The Inside page's speed figures (docs/benchmarks.md quotes them): `python -c "from bench.inside import benchmark;
print(benchmark('../shared/data/fer2013'))"`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import median_time
from core.training.rundir import ONNX
from core.util.fsutil import SHIPPED_DIR


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
        out[name] = round(median_time(fn, repeats, warmup=0) * 1e3, 1)
    return out
