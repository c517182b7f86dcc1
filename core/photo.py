"""Photo pipeline: safe decoding (EXIF, first frame, odd modes, size limits), Haar face detection on a downscaled
copy, 48x48 face crops as the model sees them, and one batched ONNX Runtime classification."""
from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.classes import CLASSES
from core.onnx_io import OnnxClassifier

MAX_FILE_BYTES = 20 * 1024 * 1024  # matches .streamlit/config.toml's server.maxUploadSize
MAX_PIXELS = 40_000_000  # checked from the header, before any pixel is decoded (decompression bombs)
DETECT_SIDE = 320  # longest side for detection: Haar cost grows with area; faces >= 8% of the photo stay >= 25 px
DETECT_SCALE_STEP = 1.2  # pyramid step; on a 1 MP photo 1.1/1.15/1.2 found the same face in 35/22/16 ms
DISPLAY_SIDE = 1024  # longest side of the copy kept for drawing boxes
FACE_MARGIN = 0.12  # FER2013 crops include a little forehead and chin beyond the Haar box
ALLOWED = "JPEG, PNG, WebP, BMP, GIF, TIFF"


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the upright photo's pixels
    crop: np.ndarray  # uint8 [48, 48]: exactly what the model sees
    probs: np.ndarray  # [7] in class order
    fallback: bool  # True when no face was found and the centre of the photo was used

    @property
    def top(self) -> str:
        return CLASSES[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))


@dataclass
class PhotoResult:
    name: str
    size: tuple[int, int]  # width, height of the upright photo
    display: np.ndarray  # RGB uint8, longest side <= DISPLAY_SIDE
    faces: list[Face]
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def no_face(self) -> bool:
        return any(f.fallback for f in self.faces)


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes -> upright RGB uint8. Every failure is a ValueError naming the file and what is allowed."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError(f"{name}: the file is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{name}: {len(data) / 2**20:.1f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit")
    try:
        # Image.open reads only the header: nothing is decoded until load(), so the size checks below come first.
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "its size"
        raise ValueError(f"{name}: the header claims {size}, over the {MAX_PIXELS:,}-pixel limit; "
                         "refused before decoding (a decompression bomb?)") from None
    except Exception:  # noqa: BLE001 - UnidentifiedImageError, or whatever a malformed header makes a plugin raise
        raise ValueError(f"{name}: not an image Pillow can read (allowed: {ALLOWED})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise ValueError(f"{name}: {w}x{h} pixels is over the {MAX_PIXELS:,}-pixel limit; refused before decoding")
    if w < 1 or h < 1:
        raise ValueError(f"{name}: image has no pixels ({w}x{h})")
    try:
        im.seek(0)  # animated GIF/WebP and multi-page TIFF: the first frame
        if im.format == "JPEG" and max(w, h) > 2 * DISPLAY_SIDE:
            # JPEG DCT-domain downscaling: decodes a 12 MP photo at 1/2-1/8 size for a fraction of the time
            im.draft("RGB", (DISPLAY_SIDE, DISPLAY_SIDE))
        im.load()
    except MemoryError:
        raise ValueError(f"{name}: not enough memory to decode {w}x{h} pixels") from None
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes raise many types; all mean "unusable"
        raise ValueError(f"{name}: truncated or corrupt image ({str(exc)[:120] or type(exc).__name__})") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - malformed EXIF: the pixels are fine, keep them as stored
        pass
    try:
        rgb = np.asarray(_to_rgb(im), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{name}: colour mode {im.mode} cannot be converted to RGB ({str(exc)[:120]})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{name}: could not convert to RGB (mode {im.mode})")
    return rgb


def _to_rgb(im):  # noqa: ANN001, ANN202 - PIL image in and out
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the actual range to 8 bits (convert('L') would clip to 255); NaN/inf in float
        # images (hostile or broken TIFFs) count as the darkest value instead of poisoning the range
        a = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        a = np.where(finite, a, lo)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


@lru_cache(maxsize=1)
def _cascade():  # noqa: ANN202
    import cv2

    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face cascade is missing at {path}; install opencv-python-headless<5")
    return cascade


def detect_faces(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Haar cascade on a copy downscaled to DETECT_SIDE; boxes are mapped back to full resolution, largest first."""
    import cv2

    h, w = gray.shape
    scale = min(1.0, DETECT_SIDE / max(h, w))
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else gray
    small = cv2.equalizeHist(small)
    min_side = max(20, int(min(small.shape) * 0.08))
    found = _cascade().detectMultiScale(small, scaleFactor=DETECT_SCALE_STEP, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / scale)) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = FACE_MARGIN) -> np.ndarray:
    """Square crop around the box with a margin (edges replicated past the border), resized to 48x48."""
    import cv2

    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    H, W = gray.shape
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    src = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
    patch = src[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
    interp = cv2.INTER_AREA if s > 48 else cv2.INTER_LINEAR
    return cv2.resize(patch, (48, 48), interpolation=interp)


def centre_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    h, w = gray.shape
    s = min(h, w)
    return ((w - s) // 2, (h - s) // 2, s, s)


def analyze_photo(data: bytes, name: str, model_path: str | Path) -> PhotoResult:
    """Decode, detect, crop and classify every face of one photo in a single batch."""
    import cv2

    t0 = time.perf_counter()
    rgb = decode_image(data, name)
    t1 = time.perf_counter()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    boxes = detect_faces(gray)
    t2 = time.perf_counter()
    fallback = not boxes
    if fallback:
        boxes = [centre_box(gray)]
    crops = np.stack([crop_face(gray, b, 0.0 if fallback else FACE_MARGIN) for b in boxes])
    probs = OnnxClassifier.get(model_path).probabilities(crops)
    t3 = time.perf_counter()
    faces = [Face(b, c, p, fallback) for b, c, p in zip(boxes, crops, probs)]
    h, w = gray.shape
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    display = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    return PhotoResult(name, (w, h), display, faces,
                       {"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3})


def draw_boxes(result: PhotoResult) -> np.ndarray:
    """The display copy with numbered face boxes and top classes drawn on it."""
    import cv2

    img = result.display.copy()
    scale = img.shape[1] / result.size[0]
    thick = max(2, img.shape[1] // 300)
    for i, f in enumerate(result.faces, 1):
        x, y, w, h = (int(round(v * scale)) for v in f.box)
        colour = (255, 170, 0) if f.fallback else (0, 200, 80)
        cv2.rectangle(img, (x, y), (x + w, y + h), colour, thick)
        label = f"{i}: {f.top} {f.confidence:.0%}" + (" (no face: centre)" if f.fallback else "")
        cv2.putText(img, label, (x + 2, max(14, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * thick / 2 + 0.2, colour, max(1, thick - 1), cv2.LINE_AA)
    return img


def occlusion_map(crop: np.ndarray, model_path: str | Path, patch: int = 12, stride: int = 4) -> tuple[np.ndarray, int]:
    """Where the model looks: grey out each patch of the 48x48 crop in turn and measure how much the top class's
    probability drops (Zeiler & Fergus's occlusion sensitivity). All occluded copies go through ONNX Runtime in one
    batch (121 crops with the defaults: a few milliseconds for the small models).

    Returns (map [48, 48] float32 in 0..1, where 1 = the area whose hiding costs the most; the class index explained)."""
    clf = OnnxClassifier.get(model_path)
    base = clf.probabilities(crop[None])[0]
    top = int(np.argmax(base))
    starts = list(range(0, 48 - patch + 1, stride))
    batch = np.repeat(crop[None].astype(np.float32), len(starts) ** 2, axis=0)
    fill = float(crop.mean())  # the crop's own mean grey: hides the patch without adding an edge the model reacts to
    for k, (y, x) in enumerate((y, x) for y in starts for x in starts):
        batch[k, y:y + patch, x:x + patch] = fill
    drop = np.clip(base[top] - clf.probabilities(batch)[:, top], 0, None)
    heat = np.zeros((48, 48), np.float32)
    count = np.zeros((48, 48), np.float32)
    for k, (y, x) in enumerate((y, x) for y in starts for x in starts):
        heat[y:y + patch, x:x + patch] += drop[k]
        count[y:y + patch, x:x + patch] += 1
    heat /= np.maximum(count, 1)
    peak = float(heat.max())
    return (heat / peak if peak > 0 else heat), top


def overlay_heatmap(crop: np.ndarray, heat: np.ndarray, size: int = 192) -> np.ndarray:
    """The crop upscaled with the occlusion map blended on top (RGB), for display."""
    import cv2

    gray = cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST)
    colour = cv2.applyColorMap((cv2.resize(heat, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8),
                               cv2.COLORMAP_INFERNO)
    blended = cv2.addWeighted(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), 0.55, colour, 0.45, 0)
    return cv2.cvtColor(blended, cv2.COLOR_BGR2RGB)
