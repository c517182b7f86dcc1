"""Model summary: counts agree with real models, MACs come from the flop counter, the layer table adds up."""
import pytest

from core.models import archs
from core.models.summary import summarize


@pytest.mark.parametrize("name", archs.list_archs())
def test_summary_matches_real_model(name: str) -> None:
    s = summarize(name, width=0.5)
    model = archs.build(name, width=0.5)
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.trainable == s.params
    assert int(s.layers["params"].sum()) == s.params
    assert s.macs > 0 and int(s.layers["macs"].sum()) <= s.macs
    assert s.size_bytes == 4 * (s.params + s.buffers)
    assert list(s.layers.columns) == ["layer", "type", "output", "params", "macs"]


def test_reference_macs_and_shapes() -> None:
    plain, mobile = summarize("plain_cnn"), summarize("mobilenet")
    # hand count for the first conv of the plain CNN: 48*48 outputs x 64 channels x 9 taps
    assert plain.layers.iloc[0]["type"] == "PixelNorm"  # in-graph normalisation, no parameters
    first = plain.layers.iloc[1]
    assert first["type"] == "Conv2d" and first["macs"] == 48 * 48 * 64 * 9 and first["output"] == "64x48x48"
    assert plain.macs > 10 * mobile.macs
    assert mobile.layers.iloc[-1]["output"] == "7"


def test_summary_is_cached_per_knobs() -> None:
    # a slider moving back and forth must not rebuild the model
    assert summarize("resnet18", width=2.0) is summarize("resnet18", width=2.0)
    assert summarize("resnet18", width=2.0) is not summarize("resnet18", width=1.0)


def test_summary_bad_knob() -> None:
    with pytest.raises(ValueError):
        summarize("plain_cnn", width=5.0)
