"""Batch augmentation on tensors: one affine warp per batch does shift, scale, rotation and flip for every image."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Ranges are modest on purpose: FER2013 faces are already aligned crops, and large rotations or crops
# cut away the mouth or brows that carry the expression.
MAX_SHIFT = 0.1  # fraction of the image side (about 5 px)
MAX_SCALE = 0.1  # zoom in/out by up to 10%
MAX_ROTATION_DEG = 10.0


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine + horizontal flip per image, for a float batch [B, 1, H, W] on any device.

    Per-item torchvision transforms in a DataLoader cost a Python call per image; `affine_grid` +
    `grid_sample` does the whole batch in two kernels, so augmentation stays a small share of a step.
    """
    b = x.shape[0]
    r = torch.rand(b, 5, generator=generator).to(x.device)
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
