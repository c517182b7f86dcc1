"""Grad-CAM (Captum's LayerGradCam) for one face and any class, its agreement with the occlusion map, the overlay on
the photo, and choosing one face of a photo for a look inside (with clear errors for no face or a face too small)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.explain.featuremaps import Row, as_input, find_layer
from core.inference.faces import FACE_MARGIN, face_square
from core.inference.photo import PhotoResult, analyze_photo
from core.util.classes import CLASSES

MIN_FACE_PX = 24  # a face under 24 px in the photo is upscaled 2x or more into the 48x48 crop: mostly blur


@dataclass
class CamResult:
    heat: np.ndarray  # float32 [48, 48] in 0..1, 1 = the area whose activation raises the class score most
    target: int  # the class explained
    layer: str  # the layer whose activations and gradients made it
    probs: np.ndarray  # [7] the model's probabilities for the face
    layer_shape: tuple[int, ...]  # the layer's map size before upsampling (coarse maps give blocky heat)


def cam_layers(rows: list[Row]) -> list[str]:
    """Rows Grad-CAM can use: a spatial map (at least 2x2) from a module that runs once per forward."""
    return [r.name for r in rows if r.name != "input" and r.spatial and r.single_call]


def default_cam_layer(rows: list[Row]) -> str:
    """The last spatial row made by a convolution: the deepest map that still knows where things are, as Grad-CAM's
    authors advise."""
    usable = set(cam_layers(rows))
    conv_rows = [r.name for r in rows if r.name in usable and r.convs]
    if not conv_rows and not usable:
        raise ValueError("this model has no spatial layer that Grad-CAM can use")
    return (conv_rows or [r.name for r in rows if r.name in usable])[-1]


def class_index(target: int | str | None, probs: np.ndarray) -> int:
    """None -> the predicted class; a class name or index -> its index; anything else is a ValueError."""
    if target is None:
        return int(np.argmax(probs))
    if isinstance(target, str):
        if target not in CLASSES:
            raise ValueError(f"unknown class {target!r}; choose one of: {', '.join(CLASSES)}")
        return CLASSES.index(target)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < len(CLASSES):
        return int(target)
    raise ValueError(f"class index {target!r} is out of range: allowed 0-{len(CLASSES) - 1} ({', '.join(CLASSES)})")


def grad_cam(model: nn.Module, crop: np.ndarray, layer: str, target: int | str | None = None) -> CamResult:
    """Grad-CAM of one 48x48 face at `layer` for `target` (default: the predicted class), upsampled to 48x48.
    Captum's LayerGradCam does the hooks and the gradient weighting; an unknown layer is a ValueError listing them."""
    from captum.attr import LayerAttribution, LayerGradCam

    module = find_layer(model, layer)
    x = as_input(crop)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x)[0], 0).numpy()
    cls = class_index(target, probs)
    attr = LayerGradCam(model, module).attribute(x, target=cls, relu_attributions=True)
    if attr.dim() != 4:
        raise ValueError(f"layer {layer!r} has no spatial map (its output is {list(attr.shape)}); pick a conv layer")
    heat = LayerAttribution.interpolate(attr.detach(), (48, 48), interpolate_mode="bilinear")[0].mean(0).numpy()
    heat = np.clip(heat, 0, None)
    peak = float(heat.max())
    return CamResult((heat / peak if peak > 0 else heat).astype(np.float32), cls, layer, probs, tuple(attr.shape[-2:]))


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's strongest point on the 48x48 crop."""
    r, c = np.unravel_index(int(np.argmax(heat)), np.shape(heat))
    return int(r), int(c)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 48x48 maps (NaN when either is flat): 1 = same places, 0 = unrelated."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same size, got {a.size} and {b.size} values")
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def agreement_words(r: float) -> str:
    if not np.isfinite(r):
        return "cannot be compared (one map is flat)"
    if r >= 0.5:
        return "agree: both point at the same areas"
    if r >= 0.2:
        return "partly agree"
    return "disagree: each points somewhere else, so look at both"


def overlay_on_photo(result: PhotoResult, face: int, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The photo (display copy) with a 48x48 heat map blended into the face's crop square."""
    import cv2

    img = result.display.copy()
    f = result.faces[face]
    scale = img.shape[1] / result.size[0]
    x0, y0, s = (int(round(v * scale)) for v in face_square(f.box, 0.0 if f.fallback else FACE_MARGIN))
    s = max(1, s)
    colour = cv2.cvtColor(cv2.applyColorMap((cv2.resize(np.clip(heat, 0, 1), (s, s), interpolation=cv2.INTER_CUBIC)
                                             .clip(0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    H, W = img.shape[:2]
    ya, yb, xa, xb = max(0, y0), min(H, y0 + s), max(0, x0), min(W, x0 + s)  # the square may run past the border
    if ya < yb and xa < xb:
        patch = colour[ya - y0:yb - y0, xa - x0:xb - x0]
        img[ya:yb, xa:xb] = cv2.addWeighted(img[ya:yb, xa:xb], 1 - alpha, patch, alpha, 0)
        cv2.rectangle(img, (xa, ya), (xb - 1, yb - 1), (255, 255, 255), 1)
    return img


def photo_faces(data: bytes, name: str, model_path: str | Path) -> PhotoResult:
    """Detect the faces of a photo for a look inside. ValueError when the photo is too small to hold a face, when
    there is none, or when every face found is under MIN_FACE_PX (its 48x48 crop would be blur): explaining such a
    crop would explain noise. Faces under MIN_FACE_PX beside bigger ones are dropped."""
    result = analyze_photo(data, name, model_path)
    if min(result.size) < MIN_FACE_PX * 2:
        w, h = result.size
        raise ValueError(f"{name}: the photo is only {w}x{h} px, too small to hold a face of at least {MIN_FACE_PX} px "
                         f"with the margin around it; use a photo of at least {MIN_FACE_PX * 2} px on each side")
    if result.no_face:
        raise ValueError(f"{name}: no face found; upload a photo with a frontal face, or use the sample photo or a "
                         "dataset image")
    big = [f for f in result.faces if min(f.box[2:]) >= MIN_FACE_PX]
    if not big:
        w, h = result.faces[0].box[2:]
        raise ValueError(f"{name}: the face found is only {w}x{h} px; at least {MIN_FACE_PX}x{MIN_FACE_PX} px are "
                         "needed for a meaningful 48x48 crop (use a closer or larger photo)")
    result.faces = big
    return result
