"""Augmentation: the affine warp's identity, flip rate and ranges; random erasing; mixup/cutmix; test-time
augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.data.augment import (
    ERASE_FILL,
    MAX_SCALE,
    MAX_SHIFT,
    MIX_PARAMS,
    TTA_CROP,
    TTAModel,
    affine,
    augment_batch,
    mix_batch,
    mix_plan,
    mix_weights,
    random_erase,
    with_tta,
)


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 48, 48), generator=torch.Generator().manual_seed(seed)).float()


def test_affine_identity_and_pure_flip() -> None:
    x = _faces(4)
    r = torch.full((4, 5), 0.5)  # no rotation, scale 1, no flip (>= 0.5), no shift
    torch.testing.assert_close(affine(x, r), x, atol=1e-3, rtol=0)
    r[:, 2] = 0.0  # flip only
    torch.testing.assert_close(affine(x, r), x.flip(-1), atol=1e-3, rtol=0)


def test_flip_rate_about_half_and_pixels_stay_in_range() -> None:
    x = torch.zeros(4000, 1, 48, 48)
    x[..., :24] = 255.0  # bright left half: a flip moves the brightness to the right
    out = augment_batch(x, torch.Generator().manual_seed(1))
    flipped = (out[..., 24:].mean((1, 2, 3)) > out[..., :24].mean((1, 2, 3))).float().mean().item()
    assert 0.46 < flipped < 0.54
    # bilinear sampling with border padding only blends existing pixels: never outside the input's range
    assert out.min().item() >= -1e-3 and out.max().item() <= 255.0 + 1e-3  # float rounding only


def test_shift_stays_within_its_range() -> None:
    x = torch.zeros(2000, 1, 48, 48)
    x[..., 23:25, 23:25] = 255.0  # a dot at the centre; rotation and zoom about the centre do not move it
    r = torch.rand(2000, 5, generator=torch.Generator().manual_seed(2))
    out = affine(x, r)
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    w = out[:, 0] / out[:, 0].sum((1, 2), keepdim=True)
    cy, cx = (w * ys).sum((1, 2)) - 23.5, (w * xs).sum((1, 2)) - 23.5
    # the shift is applied in the warped frame: zoom (up to 1 + MAX_SCALE) and rotation can turn it,
    # not lengthen it more
    limit = (1 + MAX_SCALE) * MAX_SHIFT * 48 * math.sqrt(2) + 0.5
    assert torch.sqrt(cx**2 + cy**2).max().item() <= limit
    assert cx.abs().max().item() > 0.7 * MAX_SHIFT * 48  # and the range is used, not collapsed to zero


def test_random_erasing_probability_and_area() -> None:
    x = torch.zeros(3000, 1, 48, 48)
    r = torch.rand(3000, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(random_erase(x, r, 0.0, (0.02, 0.33)), x)  # prob 0: identity
    out = random_erase(x, r, 0.5, (0.02, 0.33))
    erased = (out == ERASE_FILL).float().mean((1, 2, 3))
    assert out.unique().tolist() == [0.0, torch.tensor(ERASE_FILL).item()]  # the fill, in float32
    assert 0.46 < (erased > 0).float().mean().item() < 0.54
    hit = erased[erased > 0]
    assert hit.max().item() <= 0.33 + 0.03  # rounding to whole pixels adds at most a row and a column
    assert hit.min().item() >= 0.02 * 0.5 and hit.median().item() > 0.1  # box area spread over the range


def test_mix_plan_and_weights() -> None:
    rng = np.random.default_rng(0)
    off = mix_plan(rng, 8, 0.0, 0.0, 1.0)
    assert off.shape == (8, MIX_PARAMS) and torch.equal(mix_weights(off[0], 48, 48), torch.ones(1, 1, 48, 48))
    mixup = mix_plan(rng, 200, 0.4, 0.0, 1.0)
    lam = mixup[:, 0]
    assert (mixup[:, 1] == 0).all() and ((lam >= 0) & (lam <= 1)).all()
    assert 0.35 < lam.mean().item() < 0.65 and lam.std().item() > 0.25  # Beta(0.4, 0.4): U-shaped around 0.5
    w = mix_weights(mixup[0], 48, 48)
    assert torch.allclose(w, mixup[0, 0].expand_as(w))
    cut = mix_plan(rng, 200, 0.0, 1.0, 1.0)
    assert (cut[:, 1] == 1).all() and (cut[:, 0] == 1).all()
    wc = mix_weights(cut[0], 48, 48)
    assert set(wc.unique().tolist()) <= {0.0, 1.0} and wc.mean() <= 1.0
    assert (mix_plan(rng, 50, 0.4, 1.0, 0.0)[:, :2] == torch.tensor([1.0, 0.0])).all()  # prob 0: nothing mixed
    x = torch.rand(6, 1, 48, 48)
    assert torch.equal(mix_batch(x, torch.ones(1, 1, 48, 48)), x)
    torch.testing.assert_close(mix_batch(x, torch.full((1, 1, 48, 48), 0.25)), 0.25 * x + 0.75 * x.flip(0))


def test_cutmix_box_takes_the_partner_inside() -> None:
    mix = torch.tensor([1.0, 1.0, 0.5, 0.5, 0.5])  # centred box, half the side
    w = mix_weights(mix, 48, 48)
    assert w[0, 0, 24, 24] == 0 and w[0, 0, 0, 0] == 1
    assert w.mean().item() == pytest.approx(0.75)


class _Quadrant(torch.nn.Module):
    """A fixed 'model' whose logits depend on where the brightness is, so views change its output; it ends in a
    Linear layer, as the real families do, so the exported graph types its output [N, 7]."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(7, 7)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(7))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x[..., :24].mean((1, 2, 3)), x[..., 24:].mean((1, 2, 3))
        top = x[..., :24, :].mean((1, 2, 3))
        return self.head(torch.stack([left, right, top, left - right, x.mean((1, 2, 3)), right * 0, left * 2], 1))


def test_tta_averages_views() -> None:
    model = _Quadrant()
    x = _faces(3)
    assert with_tta(model, "none") is model
    torch.testing.assert_close(TTAModel(model, "flip")(x), (model(x) + model(x.flip(-1))) / 2)
    ten = TTAModel(model, "tencrop")
    assert len(ten.views(x)) == 5 and ten(x).shape == (3, 7)
    with pytest.raises(ValueError, match="tencrop"):
        TTAModel(model, "sixcrop")
    assert TTA_CROP < 48


def test_tta_export_keeps_the_contract_and_matches(tmp_path) -> None:  # noqa: ANN001
    import onnx

    from core.inference.onnx_io import OnnxClassifier, contract_error, export_onnx

    model = _Quadrant()  # its logits depend on where the brightness is, so each view counts
    x = _faces(5)
    for mode in ("flip", "tencrop"):
        path = tmp_path / f"{mode}.onnx"
        export_onnx(model, path, arch="quadrant", knobs={"width": 1.0}, params=0, tta=mode)
        proto = onnx.load(str(path))
        assert {p.key: p.value for p in proto.metadata_props}["tta"] == mode
        clf = OnnxClassifier.get(path)
        with torch.no_grad():
            want = TTAModel(model, mode)(x).numpy()
            plain = model(x).numpy()
        got = clf.logits(x.numpy())
        assert got.shape == (5, 7) and np.abs(got - want).max() < 1e-3
        assert np.abs(got - plain).max() > 1e-3  # the views really are in the graph
    graph = proto.graph
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert contract_error([(i.name, dims(i), "float") for i in graph.input],
                          [(o.name, dims(o), "float") for o in graph.output]) is None
    assert not math.isnan(float(got.sum()))
