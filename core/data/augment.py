"""Batch augmentation on tensors (affine warp, random erasing, mixup/cutmix) and test-time augmentation for export.

Every random number a training step uses arrives as a tensor (`r` per image, `mix` per batch) drawn on the host
once per epoch, so a step is a pure function of its inputs: it has static shapes, never syncs with the host,
can be captured in a CUDA graph, and a resumed run draws exactly the numbers an uninterrupted one would.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.models.archs import PIXEL_MEAN
from core.util.classes import NUM_CLASSES

# Ranges are modest on purpose: FER2013 faces are already aligned crops, and large rotations or crops
# cut away the mouth or brows that carry the expression.
MAX_SHIFT = 0.1  # fraction of the image side (about 5 px)
MAX_SCALE = 0.1  # zoom in/out by up to 10%
MAX_ROTATION_DEG = 10.0
# Random erasing's aspect-ratio range, torchvision's RandomErasing default (Zhong et al. 2017).
ERASE_RATIO = (0.3, 3.3)
# Erased pixels take the training-set mean gray, which the model's in-graph normalisation maps to 0:
# torchvision erases with 0 after normalising, the same value.
ERASE_FILL = PIXEL_MEAN

AFFINE_COLS = slice(0, 5)
ERASE_COLS = slice(5, 10)
RANDOMS_PER_IMAGE = 10  # columns of `r`: 5 for the affine warp, 5 for random erasing
MIX_PARAMS = 5  # per batch: mixup lambda, cutmix flag, cutmix box centre y, x, box side fraction
TTA_MODES = ("none", "flip", "tencrop")
TTA_VIEWS = {"none": 1, "flip": 2, "tencrop": 10}  # images the graph runs per input image (TTAModel.views x mirror)
TTA_CROP = 44  # ten-crop side in pixels: a 0.92 zoom, inside the +-10% scale range the models train with


def affine(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Random affine + horizontal flip per image, for a float batch [B, 1, H, W]; `r` is [B, 5] uniform in [0, 1).

    Per-item torchvision transforms in a DataLoader cost a Python call per image; `affine_grid` +
    `grid_sample` does the whole batch in two kernels, so augmentation stays a small share of a step.
    """
    angle = (r[:, 0] * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    scale = 1.0 + (r[:, 1] * 2 - 1) * MAX_SCALE
    flip = torch.where(r[:, 2] < 0.5, -1.0, 1.0)
    tx = (r[:, 3] * 2 - 1) * MAX_SHIFT * 2  # affine_grid coordinates span [-1, 1]
    ty = (r[:, 4] * 2 - 1) * MAX_SHIFT * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, tx], dim=1),
        torch.stack([sin * flip, cos, ty], dim=1),
    ], dim=1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # border padding repeats edge pixels rather than inventing black bars the model could learn from
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """`affine` with its random numbers drawn here (from `generator` on the CPU, then moved to x's device)."""
    return affine(x, torch.rand(x.shape[0], 5, generator=generator).to(x.device))


def _box_mask(h: int, w: int, top: torch.Tensor, left: torch.Tensor, bh: torch.Tensor,
              bw: torch.Tensor) -> torch.Tensor:
    """[B, 1, h, w] float mask, 1 inside each image's box; built by comparisons so shapes stay static."""
    ys = torch.arange(h, device=top.device, dtype=top.dtype).view(1, h, 1)
    xs = torch.arange(w, device=top.device, dtype=top.dtype).view(1, 1, w)
    t, l_ = top.view(-1, 1, 1), left.view(-1, 1, 1)
    inside = (ys >= t) & (ys < t + bh.view(-1, 1, 1)) & (xs >= l_) & (xs < l_ + bw.view(-1, 1, 1))
    return inside.unsqueeze(1).to(top.dtype)


def random_erase(x: torch.Tensor, r: torch.Tensor, prob: float, area: tuple[float, float]) -> torch.Tensor:
    """Random erasing per image (Zhong et al. 2017): with probability `prob`, a box covering a fraction of the image
    drawn from `area`, with aspect ratio in ERASE_RATIO, is filled with the mean gray. `r` is [B, 5] uniform.

    torchvision's RandomErasing retries until a box fits; here the box is clipped to the image instead, which keeps
    one kernel per batch and no data-dependent control flow (a CUDA graph cannot hold a retry loop)."""
    h, w = x.shape[-2:]
    frac = area[0] + r[:, 1] * (area[1] - area[0])
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = torch.exp(log_lo + r[:, 2] * (log_hi - log_lo))
    bh = torch.sqrt(frac * h * w * aspect).round().clamp(1, h)
    bw = torch.sqrt(frac * h * w / aspect).round().clamp(1, w)
    top = (r[:, 3] * (h - bh + 1)).floor()
    left = (r[:, 4] * (w - bw + 1)).floor()
    mask = _box_mask(h, w, top, left, bh, bw) * (r[:, 0] < prob).to(x.dtype).view(-1, 1, 1, 1)
    return x * (1 - mask) + ERASE_FILL * mask


def mix_weights(mix: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-pixel weight [1, 1, h, w] of each image against its partner (the batch reversed), from `mix`
    [MIX_PARAMS]: mixup weighs every pixel by lambda; cutmix takes a box from the partner (weight 0 there).
    A batch left unmixed has lambda 1 and no cutmix, so every weight is exactly 1."""
    box = (mix[4] * h).round().clamp(0, h), (mix[4] * w).round().clamp(0, w)
    top = (mix[2] * h - box[0] / 2).round().clamp(min=0)
    left = (mix[3] * w - box[1] / 2).round().clamp(min=0)
    inside = _box_mask(h, w, top.view(1), left.view(1), box[0].view(1), box[1].view(1))
    return torch.where(mix[1] > 0.5, 1 - inside, mix[0].expand_as(inside))


def mix_batch(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mix each image with its partner: the batch reversed (timm's cheap pairing), which needs no random
    permutation on the device and keeps the step a pure function of its inputs."""
    return x * weights + x.flip(0) * (1 - weights)


def mix_plan(rng: np.random.Generator, steps: int, mixup_alpha: float, cutmix_alpha: float,
             prob: float) -> torch.Tensor:
    """Per-step mixing parameters [steps, MIX_PARAMS] for `mix_weights`, drawn on the host (numpy has the Beta
    distribution with a seedable generator; torch's Beta sampler takes none). With both alphas 0, every row leaves
    the batch unmixed. When both are on, each mixed batch uses one or the other with equal chance (timm's default)."""
    out = np.zeros((steps, MIX_PARAMS), np.float32)
    out[:, 0] = 1.0
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return torch.from_numpy(out)
    apply = rng.random(steps) < prob
    use_cut = (cutmix_alpha > 0) & ((mixup_alpha <= 0) | (rng.random(steps) < 0.5))
    alpha = np.where(use_cut, cutmix_alpha, mixup_alpha)
    lam = rng.beta(np.maximum(alpha, 1e-6), np.maximum(alpha, 1e-6)).astype(np.float32)
    out[:, 0] = np.where(apply & ~use_cut, lam, 1.0)
    out[:, 1] = apply & use_cut
    out[:, 2:4] = rng.random((steps, 2))
    out[:, 4] = np.sqrt(1.0 - lam)  # cutmix box side fraction: the box covers 1 - lambda of the image before clipping
    return torch.from_numpy(out)


class TTAModel(nn.Module):
    """Averages a model's logits over views of each image, inside the exported graph: 'flip' (the image and its
    mirror) or 'tencrop' (four corner crops and the centre crop of TTA_CROP px, each resized back to 48 so every
    architecture accepts it, and each with its mirror). Input and output keep the ONNX contract."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        if mode not in TTA_MODES:
            raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {mode!r}")
        self.model, self.mode = model, mode

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.mode != "tencrop":
            return [x]
        side, c = x.shape[-1], TTA_CROP
        o = (side - c) // 2
        crops = [x[..., :c, :c], x[..., :c, -c:], x[..., -c:, :c], x[..., -c:, -c:], x[..., o:o + c, o:o + c]]
        return [F.interpolate(v, size=(side, side), mode="bilinear", align_corners=False) for v in crops]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.model(x)
        views = self.views(x)
        views = views + [v.flip(-1) for v in views]
        out = self.model(torch.cat(views, 0))  # one batched call: V*N images
        # a literal class count (not out.shape[-1], which tracing would make symbolic) keeps 'logits' typed [N, 7]
        return out.view(len(views), -1, NUM_CLASSES).mean(0)


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """The model itself for 'none', else wrapped in TTAModel (the module ONNX export and parity both use)."""
    return model if mode == "none" else TTAModel(model, mode)
