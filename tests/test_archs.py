"""Every registered family builds, runs forward and backward; the study's models match to the parameter."""
import pytest
import torch

from core.models import archs
from core.models.summary import summarize

FAMILIES = archs.list_archs()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("width", [archs.WIDTH_MIN, 1.0])
def test_forward_backward(name: str, width: float) -> None:
    torch.manual_seed(0)
    model = archs.build(name, width=width)
    x = torch.randint(0, 256, (3, 1, 48, 48)).float()
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_reference_param_counts_exact() -> None:
    assert sum(p.numel() for p in archs.build("plain_cnn", width=1.0).parameters()) == 2_959_943
    assert sum(p.numel() for p in archs.build("mobilenet", width=1.0).parameters()) == 109_607
    for name in ("plain_cnn", "mobilenet"):
        assert summarize(name, width=1.0).params == archs.get_family(name).reference["params"]


def test_width_range_spans_5k_to_10m() -> None:
    smallest = summarize("mobilenet", width=archs.WIDTH_MIN).params
    largest = summarize("plain_cnn", width=2.0).params
    assert smallest < 6_000 and largest > 10_000_000
    for name in FAMILIES:  # params grow with width in every family
        counts = [summarize(name, width=w).params for w in (0.25, 0.5, 1.0, 2.0)]
        assert counts == sorted(counts) and counts[0] < counts[-1], name


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ValueError, match="mobilenet"):
        archs.build("vgg99")


@pytest.mark.parametrize("bad", [0.0, -1.0, 100.0, float("nan"), "wide"])
def test_bad_width_is_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="width"):
        archs.build("mobilenet", width=bad)


def test_unknown_knob_is_value_error() -> None:
    with pytest.raises(ValueError, match="allowed"):
        archs.build("resnet18", dropout=0.3)


def test_make_divisible_torchvision_rule() -> None:
    assert archs.make_divisible(64 * 1.0) == 64
    assert archs.make_divisible(16 * 0.125) == 8  # never below the divisor
    assert archs.make_divisible(100) == 104
    assert archs.make_divisible(90) == 88
    assert archs.make_divisible(116, 4) == 116
