"""Photo pipeline: safe decoding (EXIF, first frame, odd modes, size limits), face detection and FER2013-style
48x48 crops (core.inference.faces), one batched ONNX Runtime classification, a box chosen by hand, labelled drawings."""
from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.inference import faces
from core.inference.onnx_io import OnnxClassifier
from core.util.classes import CLASSES

if TYPE_CHECKING:
    import pandas as pd

MAX_FILE_BYTES = 20 * 1024 * 1024  # matches .streamlit/config.toml's server.maxUploadSize
MAX_PIXELS = 40_000_000  # checked from the header, before any pixel is decoded (decompression bombs)
DISPLAY_SIDE = 1024  # longest side of the copy kept for drawing boxes
ALLOWED = "JPEG, PNG, WebP, BMP, GIF, TIFF"


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the upright photo's pixels
    crop: np.ndarray  # uint8 [48, 48]: exactly what the model sees
    probs: np.ndarray  # [7] in class order
    fallback: bool  # True when no face was found and the centre of the photo was used
    source: str = "mtcnn"  # what gave the box: "mtcnn", "haar", "centre" (no face found) or "manual" (the user's)
    landmarks: np.ndarray | None = None  # [5, 2] eyes, nose, mouth corners in the photo's pixels, where known

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
    # the file's own width and height, upright: a large JPEG is decoded at 1/2-1/8 scale, so `size` is smaller
    file_size: tuple[int, int] | None = None

    @property
    def no_face(self) -> bool:
        """No detector found a face: the centre square, or the user's own box, stands in."""
        return not any(f.source in ("mtcnn", "haar") for f in self.faces)


def file_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header gives them, turned upright by its EXIF orientation; None if unreadable."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        turned = im.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap width and height
    except Exception:  # noqa: BLE001 - the decoder already accepted these bytes; a header quirk only loses the figure
        return None
    return (h, w) if turned else (w, h)


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
    fast = _decode_jpeg(data, im)
    if fast is not None:
        return fast
    try:
        im.seek(0)  # animated GIF/WebP and multi-page TIFF: the first frame
        if _jpeg_reduction(im) > 1:
            im.draft("RGB", (DISPLAY_SIDE, DISPLAY_SIDE))  # the same reduction as _decode_jpeg's
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


def _jpeg_reduction(im) -> int:  # noqa: ANN001 - a PIL image, header read
    """1, 2, 4 or 8: the DCT-domain downscaling (a 12 MP photo decodes at 1/2-1/8 size for a fraction of the time)
    for a JPEG over 2 * DISPLAY_SIDE, keeping both sides >= DISPLAY_SIDE: the factor Pillow's draft() picks."""
    w, h = im.size
    if im.format != "JPEG" or max(w, h) <= 2 * DISPLAY_SIDE:
        return 1
    return next(f for f in (8, 4, 2, 1) if min(w // DISPLAY_SIDE, h // DISPLAY_SIDE) >= f)


def _decode_jpeg(data: bytes, im) -> np.ndarray | None:  # noqa: ANN001 - a PIL image, header read
    """A colour or grey JPEG decoded by OpenCV straight into an upright RGB array; None leaves the file to Pillow.

    Why: Pillow keeps RGB as 4 bytes a pixel, and handing that to numpy repacks it (tobytes): on a 1 MP photo, 5-6 of
    Pillow's 11-13 ms on the 2-core dev machine. OpenCV's libjpeg-turbo gave the same pixels as Pillow on every
    JPEG of ../shared/photos, at every EXIF orientation and at the reduced scales (tests/test_photo.py checks), and
    it refuses truncated files (None), which Pillow then reports as before. CMYK and other modes stay with Pillow."""
    import cv2

    if im.format != "JPEG" or im.mode not in ("RGB", "L"):
        return None
    f = _jpeg_reduction(im)
    flag = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}[f]
    try:
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # applies the EXIF orientation, as exif_transpose
    except cv2.error:  # e.g. out of memory: Pillow's path says what went wrong
        return None
    if rgb is None or rgb.ndim != 3:
        return None
    return rgb if f == 1 else cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)  # the reduced flags decode BGR only


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


def centre_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    h, w = gray.shape[:2]
    s = min(h, w)
    return ((w - s) // 2, (h - s) // 2, s, s)


def analyze_photo(data: bytes, name: str, model_path: str | Path, detector: str = "auto", align: bool = True) -> PhotoResult:
    """Decode, detect, crop and classify every face of one photo in a single batch. With no face found, the centre
    square is classified (marked `fallback`) so every photo gets an answer; the app then offers a box by hand."""
    import cv2

    t0 = time.perf_counter()
    rgb = decode_image(data, name)
    t1 = time.perf_counter()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = faces.detect(rgb, detector)
    t2 = time.perf_counter()
    if found:
        crops = np.stack([faces.face_crop(gray, d, align) for d in found])
        kinds = [(d.box, d.detector, d.landmarks) for d in found]
    else:
        box = centre_box(gray)
        crops = faces.crop_box(gray, box, 0.0)[None]
        kinds = [(box, "centre", None)]
    probs = OnnxClassifier.get(model_path).probabilities(crops)
    t3 = time.perf_counter()
    result = [Face(b, c, p, src == "centre", src, lm) for (b, src, lm), c, p in zip(kinds, crops, probs)]
    return PhotoResult(name, (gray.shape[1], gray.shape[0]), faces.downscale(rgb, DISPLAY_SIDE)[0], result,
                       {"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3, "classify": (t3 - t2) * 1e3},
                       file_dimensions(data))


def manual_box(size: tuple[int, int], centre_x: float, centre_y: float, side: float) -> tuple[int, int, int, int]:
    """A square box from fractions of the photo: centre (0..1 of width and height) and side (0..1 of the shorter
    side), as the app's sliders give them; clipped to the photo."""
    for what, v, lo in (("centre_x", centre_x, 0.0), ("centre_y", centre_y, 0.0), ("side", side, 0.02)):
        if not lo <= v <= 1.0:
            raise ValueError(f"{what}={v} is outside the allowed {lo:g}..1 (a fraction of the photo)")
    w, h = size
    s = max(1, round(side * min(w, h)))
    x = min(max(0, round(centre_x * w - s / 2)), w - s)
    y = min(max(0, round(centre_y * h - s / 2)), h - s)
    return (int(x), int(y), int(s), int(s))


def classify_box(result: PhotoResult, box: tuple[int, int, int, int], model_path: str | Path) -> PhotoResult:
    """The photo again with one face: the box the user chose (in the photo's pixels), cropped from the display copy
    (<= DISPLAY_SIDE px, plenty for a 48x48 crop) and classified."""
    import cv2

    x, y, w, h = box
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > result.size[0] or y + h > result.size[1]:
        raise ValueError(f"box {box} is not inside the {result.size[0]}x{result.size[1]} photo")
    scale = result.display.shape[1] / result.size[0]
    gray = cv2.cvtColor(result.display, cv2.COLOR_RGB2GRAY)
    crop = faces.crop_box(gray, tuple(int(round(v * scale)) for v in box), 0.0)
    probs = OnnxClassifier.get(model_path).probabilities(crop[None])[0]
    return replace(result, faces=[Face(tuple(box), crop, probs, False, "manual")])


BOX_COLOURS = {"mtcnn": (0, 170, 70), "haar": (0, 170, 70), "centre": (235, 130, 0), "manual": (40, 110, 230)}


def face_label(i: int, face: Face) -> str:
    """The text drawn beside face i: its number, top class and probability, and where the box came from if unusual."""
    note = {"centre": " (no face found: centre)", "manual": " (your box)"}.get(face.source, "")
    return f"{i}: {face.top} {face.confidence:.0%}{note}"


def put_label(img: np.ndarray, text: str, box: tuple[int, int, int, int], colour: tuple[int, int, int],
              size: float, avoid: list[tuple[int, int, int, int]] | None = None) -> tuple[int, int, int, int]:
    """Text on a filled background of the box's colour, above the box (or below it, or inside its top, where that
    keeps it clear of the labels in `avoid` or of the image's edge), shrunk and shifted as needed so it never leaves
    the image. Returns the label's rectangle (x0, y0, x1, y1)."""
    import cv2

    H, W = img.shape[:2]
    font, weight = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(size * 2))
    (tw, th), base = cv2.getTextSize(text, font, size, weight)
    if tw + 8 > W:  # wider than the photo: shrink to fit
        size *= (W - 8) / tw
        (tw, th), base = cv2.getTextSize(text, font, size, weight)
    pad = max(2, th // 4)
    lh, lw = th + base + 2 * pad, tw + 2 * pad
    x, y, _, h = box
    left = min(max(0, x), max(0, W - lw))
    tops = [t for t in (y - lh, y + h) if 0 <= t <= H - lh] + [max(0, min(y, H - lh))]

    def clear(t: int) -> bool:
        return not any(left < r[2] and r[0] < left + lw and t < r[3] and r[1] < t + lh for r in avoid or [])

    top = next((t for t in tops if clear(t)), tops[0])
    cv2.rectangle(img, (left, top), (left + lw, top + lh), colour, cv2.FILLED)
    ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)
    cv2.putText(img, text, (left + pad, top + pad + th), font, size, ink, weight, cv2.LINE_AA)
    return left, top, left + lw, top + lh


def draw_boxes(result: PhotoResult) -> np.ndarray:
    """The display copy with each face boxed and labelled in full (number, top class, probability). Sizes follow
    the photo's, so labels read alike on a thumbnail and on a 1024 px photo; in a group photo a label much wider
    than its face is drawn smaller (down to a readable floor) and placed clear of the labels already drawn."""
    import cv2

    img = result.display.copy()
    H, W = img.shape[:2]
    scale = W / result.size[0]
    thick = max(2, round(max(H, W) / 350))
    size = max(0.4, max(H, W) / 1500)  # OpenCV font scale: ~0.7 on a 1024 px photo
    boxes = [tuple(int(round(v * scale)) for v in f.box) for f in result.faces]
    for (x, y, w, h), f in zip(boxes, result.faces):
        cv2.rectangle(img, (x, y), (x + w, y + h), BOX_COLOURS.get(f.source, (0, 170, 70)), thick)
    placed: list[tuple[int, int, int, int]] = []
    for i, (b, f) in enumerate(zip(boxes, result.faces), 1):
        text, fit = face_label(i, f), size
        full_w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, max(1, round(size * 2)))[0][0]
        if len(result.faces) > 1 and full_w > 1.8 * b[2]:
            fit = max(min(size, 0.4), size * 1.8 * b[2] / full_w)
        placed.append(put_label(img, text, b, BOX_COLOURS.get(f.source, (0, 170, 70)), fit, placed))
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


# --- labels the user already knows: "matches your label" ---------------------------------------------------------
# Words that name each class in file names and typed labels (FER2013's names, their common forms, and the Portuguese
# "neutro" that one of the public test sets uses).
LABEL_WORDS = {
    "angry": ("angry", "anger", "mad"), "disgust": ("disgust", "disgusted", "disgusting"),
    "fear": ("fear", "fearful", "scared", "afraid"), "happy": ("happy", "happiness", "joy", "smile", "smiling"),
    "sad": ("sad", "sadness"), "surprise": ("surprise", "surprised"), "neutral": ("neutral", "neutro", "calm"),
}
_WORD_TO_CLASS = {w: c for c, words in LABEL_WORDS.items() for w in words}


def label_from_name(name: str) -> str | None:
    """The class a file name carries, e.g. 'source__angry__1.jpg' -> 'angry'; None when it names none, or several."""
    stem = Path(name).stem.lower()
    found = {_WORD_TO_CLASS[w] for w in re.split(r"[^a-z]+", stem) if w in _WORD_TO_CLASS}
    return found.pop() if len(found) == 1 else None


def parse_label(text: str) -> str | None:
    """A typed label -> its class; '' -> None. ValueError names the text and the classes allowed."""
    t = text.strip().lower()
    if not t:
        return None
    if t not in _WORD_TO_CLASS:
        raise ValueError(f"label {text.strip()!r} is not an expression the models know; allowed: {', '.join(CLASSES)}")
    return _WORD_TO_CLASS[t]


def png_data_uri(img: np.ndarray) -> str:
    """A small image as a data: URI, so a table cell can show it (st.column_config.ImageColumn) with no file."""
    import base64

    import cv2

    ok, buf = cv2.imencode(".png", img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode an image of shape {img.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def face_grid(results: list[PhotoResult], typed_label: str | None = None) -> "pd.DataFrame":
    """One row per face for the compact overview: crop (data URI), photo, face number, expression, confidence, the
    label (from the file name, else the typed one) and whether the prediction matches it (None without a label)."""
    import pandas as pd

    rows = []
    for r in results:
        label = label_from_name(r.name) or typed_label
        for i, f in enumerate(r.faces, 1):
            rows.append({"crop": png_data_uri(f.crop), "photo": r.name, "face": i, "expression": f.top,
                         "confidence": round(f.confidence, 4), "found by": f.source, "label": label,
                         "matches": None if label is None else f.top == label})
    return pd.DataFrame(rows, columns=["crop", "photo", "face", "expression", "confidence", "found by", "label", "matches"])


def label_summary(grid: "pd.DataFrame") -> str | None:
    """'Matches your label: 18 of 24 faces (75%)...' over the faces that have a label; None when none has."""
    known = grid[grid["label"].notna()]
    if known.empty:
        return None
    hits = int(known["matches"].astype(bool).sum())
    missed = known[~known["matches"].astype(bool)]
    text = f"Matches your label: {hits} of {len(known)} faces ({hits / len(known):.0%})"
    if len(missed):
        text += "; differs on " + ", ".join(f"{p} face {f} ({e}, labelled {lab})" for p, f, e, lab in
                                           missed[["photo", "face", "expression", "label"]].itertuples(index=False))
    return text
