"""Built-in synthetic expression set: procedurally drawn 48x48 faces, deterministic per seed, no download."""
from __future__ import annotations

import numpy as np

from core.data.dataset import IMAGE_SIDE, FERData, Split
from core.util.classes import NUM_CLASSES

DEFAULT_DIFFICULTY = 0.5

# ---------------------------------------------------------------------------------------------------------
# Expression prototypes. Each row sets the face features drawn for a class:
#   brow_tilt  inner-end height vs outer end (+ = inner raised, sad/fear; - = inner lowered, angry)
#   brow_lift  how high the brows sit above the eyes
#   eye_open   eye height multiplier
#   smile      mouth curvature (+ = corners up)
#   mouth_open gap between the lips
#   mouth_wide half-width of the mouth
#   asym       one-sided mouth/brow raise (disgust's sneer)
# ---------------------------------------------------------------------------------------------------------
FEATURES = ("brow_tilt", "brow_lift", "eye_open", "smile", "mouth_open", "mouth_wide", "asym")
PROTOTYPES = np.array([
    # tilt  lift  eye   smile  open  wide  asym
    [-1.0, -0.6, 0.75, -0.25, 0.00, 0.95, 0.0],  # angry
    [-0.5, -0.3, 0.55, -0.45, 0.15, 0.85, 1.0],  # disgust
    [0.9, 0.9, 1.45, -0.20, 0.45, 1.15, 0.0],  # fear
    [0.0, 0.1, 0.80, 1.00, 0.20, 1.20, 0.0],  # happy
    [0.9, 0.0, 0.85, -0.90, 0.00, 0.90, 0.0],  # sad
    [0.1, 1.2, 1.60, 0.00, 1.00, 0.70, 0.0],  # surprise
    [0.0, 0.0, 1.00, 0.00, 0.00, 1.00, 0.0],  # neutral
], dtype=np.float32)
NEUTRAL = PROTOTYPES[6]
# FER2013-like class balance (disgust is rare) so class-imbalance effects show up in the demo too.
CLASS_WEIGHTS = np.array([0.14, 0.05, 0.14, 0.22, 0.16, 0.12, 0.17])


def _soft(d: np.ndarray, edge: float = 0.8) -> np.ndarray:
    """Anti-aliased coverage from a signed distance-like field (negative inside)."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def _occlude(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator,
             difficulty: float) -> np.ndarray:
    """Occluders (hands, hair, glasses glare): a random rectangle over part of the face, on some images."""
    b = img.shape[0]
    occ = rng.random(b) < 0.35 * difficulty
    if occ.any():
        ox = rng.uniform(-20, 12, b)[:, None, None]
        oy = rng.uniform(-20, 14, b)[:, None, None]
        ow = rng.uniform(6, 16, b)[:, None, None]
        oh = rng.uniform(4, 12, b)[:, None, None]
        shade = rng.uniform(0, 255, b)[:, None, None]
        box = (xs >= ox) & (xs < ox + ow) & (ys >= oy) & (ys < oy + oh) & occ[:, None, None]
        img = np.where(box, shade, img)
    return img


def _draw(p: dict[str, np.ndarray], rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Render a batch; p holds per-image parameters of shape [B, 1, 1]."""
    ys, xs = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE].astype(np.float32)
    ys, xs = ys[None] - 23.5, xs[None] - 23.5
    # Pose: rotate/scale/shift the sampling grid into face coordinates (u right, v down, unit ~ 1 px at scale 1).
    c, s = np.cos(p["rot"]), np.sin(p["rot"])
    x0, y0 = xs - p["dx"], ys - p["dy"]
    u = (c * x0 + s * y0) / p["scale"]
    v = (-s * x0 + c * y0) / p["scale"]

    bg = p["bg"] + p["bg_grad"] * xs / 24.0
    face = _soft(np.sqrt((u / 17.0) ** 2 + (v / 21.0) ** 2) * 17.0 - 17.0, 1.5)
    skin = p["skin"] + p["light"] * u / 17.0  # side lighting
    img = bg * (1 - face) + skin * face

    dark = p["skin"] * 0.25
    # Eyes: ellipses whose height follows eye_open.
    eye_h = np.clip(2.2 * p["eye_open"], 0.4, 5.0)
    for side in (-1.0, 1.0):
        d = np.sqrt(((u - side * 7.0) / 3.2) ** 2 + ((v + 4.0) / eye_h) ** 2)
        img = img * (1 - _soft((d - 1.0) * 2.0)) + dark * _soft((d - 1.0) * 2.0)
    # Brows: thick segments; the inner end moves with brow_tilt, the whole brow with brow_lift.
    for side in (-1.0, 1.0):
        asym = np.where(side > 0, p["asym"], 0.0)
        inner_y = -9.5 - 2.2 * p["brow_lift"] - 2.4 * p["brow_tilt"] - 1.5 * asym
        outer_y = -9.5 - 2.2 * p["brow_lift"] + 0.6 * p["brow_tilt"]
        ax, bx = side * 3.0, side * 11.0
        t = np.clip((u - ax) / (bx - ax), 0.0, 1.0)
        line_y = inner_y + t * (outer_y - inner_y)
        inside_x = ((u - ax) * side > -1) & ((u - bx) * side < 1)
        d = np.where(inside_x, np.abs(v - line_y) - 1.0, 9.0)
        cover = _soft(d, 1.0)
        img = img * (1 - cover) + dark * cover
    # Mouth: lips follow a parabola (corners up for +smile); mouth_open separates upper and lower lips.
    half = 7.0 * p["mouth_wide"]
    un = np.clip(u / half, -1.5, 1.5)
    centre = 9.5 - p["asym"] * 1.5 * np.clip(u / half, 0, 1)
    upper = centre - 3.0 * p["smile"] * (un**2 - 0.3) - 1.8 * p["mouth_open"] * (1 - un**2)
    lower = centre - 3.0 * p["smile"] * (un**2 - 0.3) + 2.6 * p["mouth_open"] * (1 - un**2)
    within = np.abs(u) < half
    cavity = within & (v > upper) & (v < lower)
    lip = within & ((np.abs(v - upper) < 0.9) | (np.abs(v - lower) < 0.9))
    mouth = np.maximum(cavity * 0.85, lip * 1.0).astype(np.float32)
    img = img * (1 - mouth) + dark * mouth
    # Nose shadow: a small vertical stroke for structure.
    nose = _soft(np.maximum(np.abs(u) - 0.8, np.abs(v - 2.5) - 3.0), 1.0) * 0.35
    img = img * (1 - nose) + dark * nose

    img = _occlude(img, xs, ys, rng, difficulty)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * p["noise"]
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(n: int, *, seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY,
             chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Draw n faces; returns (uint8 [n,48,48], int64 labels). Same seed, same images."""
    if not (0.0 <= difficulty <= 1.0):
        raise ValueError(f"difficulty must be between 0 and 1, got {difficulty!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, size=n, p=CLASS_WEIGHTS).astype(np.int64)
    out = np.empty((n, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    for start in range(0, n, chunk):
        y = labels[start:start + chunk]
        b = len(y)
        # Expression intensity: at high difficulty many faces are only a weak version of their class,
        # which (as in real photos) makes neighbouring expressions genuinely ambiguous.
        intensity = np.clip(rng.normal(1.0 - 0.45 * difficulty, 0.15 + 0.25 * difficulty, b), 0.1, 1.4)
        feats = NEUTRAL + (PROTOTYPES[y] - NEUTRAL) * intensity[:, None]
        feats = feats + rng.normal(0, 0.12 + 0.25 * difficulty, feats.shape).astype(np.float32)  # individual variation
        p = {name: feats[:, i, None, None] for i, name in enumerate(FEATURES)}
        p["eye_open"] = np.abs(p["eye_open"])
        p["mouth_open"] = np.clip(p["mouth_open"], 0, None)
        p["mouth_wide"] = np.clip(p["mouth_wide"], 0.4, None)
        p["asym"] = np.clip(p["asym"], 0, None)
        j = 0.5 + difficulty  # pose/lighting jitter scale
        col = lambda lo, hi: rng.uniform(lo, hi, b).astype(np.float32)[:, None, None]  # noqa: E731
        nrm = lambda sd: (rng.normal(0, sd, b).astype(np.float32))[:, None, None]  # noqa: E731
        p.update(
            rot=nrm(0.12 * j), scale=1.0 + nrm(0.06 * j), dx=nrm(1.5 * j), dy=nrm(1.5 * j),
            skin=col(110, 220), light=nrm(25 * j), bg=col(0, 255), bg_grad=nrm(30),
            noise=col(2, 6 + 14 * difficulty),
        )
        out[start:start + b] = _draw(p, rng, difficulty)
    return out, labels


def synthetic_dataset(n: int = 6000, *, seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY,
                      val_fraction: float = 0.2) -> FERData:
    """A train/val dataset of synthetic faces, labelled 'synthetic' everywhere it is shown."""
    if n < 10:
        raise ValueError(f"synthetic set size must be at least 10, got {n!r}")
    images, labels = generate(n, seed=seed, difficulty=difficulty)
    n_val = max(1, int(n * val_fraction))
    splits = {"train": Split(images[n_val:], labels[n_val:]), "val": Split(images[:n_val], labels[:n_val])}
    return FERData(f"synthetic (seed {seed}, difficulty {difficulty:g}, {n} images)", "synthetic", splits, [])
