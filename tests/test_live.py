"""The Live page without a browser (AppTest): it renders, lists every usable model with mobilenet-w1 first, offers a
second model side by side, falls back to snapshot mode, and accepts nothing image-sized back from the browser."""
from __future__ import annotations

import json

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from components.live import BUILD_DIR, FAILED, MAX_VALUE_CHARS, clean_value
from components.live.catalog import default_model, live_models, mtcnn_net_bytes

LIVE = "pages/8_Live.py"


def open_live(**state: object) -> AppTest:
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(LIVE).run()
    assert not at.exception, at.exception
    return at


def test_live_page_lists_models_and_says_it_is_private() -> None:
    at = open_live()
    assert at.title[0].value == "Live"
    assert any("never leaves this browser" in i.value for i in at.info)
    model = at.selectbox(key="live_model")
    names = [o.split(" · ")[0] for o in model.options]
    assert {"mobilenet-w1", "plain_cnn-w1", "mobilenet-w1--int8"} <= set(names)  # runs and compression variants
    assert model.value.endswith("mobilenet-w1"), model.value  # the fast default for live video
    assert len(names) == len(live_models()[0])


def test_side_by_side_offers_a_second_model() -> None:
    at = open_live()
    at.toggle(key="live_side_by_side").set_value(True).run()
    assert not at.exception
    assert at.selectbox(key="live_model_b").value.endswith("plain_cnn-w1")


def test_snapshot_mode_uses_the_camera_input() -> None:
    at = open_live()
    at.toggle(key="live_snapshot").set_value(True).run()
    assert not at.exception
    assert any(s.value == "Snapshot mode" for s in at.subheader)
    assert at.get("camera_input"), "snapshot mode shows st.camera_input"


@pytest.mark.parametrize("status", sorted(FAILED))
def test_a_failure_reported_by_the_browser_leads_to_snapshot_mode(status: str) -> None:
    at = open_live(live_stream={"status": status, "message": "x"})
    assert any("Live mode is not available here" in w.value for w in at.warning), [w.value for w in at.warning]
    assert at.get("camera_input")


def test_nothing_image_sized_comes_back_from_the_browser() -> None:
    small = {"status": "running", "message": "", "fps": 21.5, "detect_ms": 30.0, "faces": 1,
             "models": [{"id": "checkpoints/mobilenet-w1@1", "ms": 2.1, "top": "happy"}]}
    assert clean_value(small) == small
    assert len(json.dumps(small)) < MAX_VALUE_CHARS
    crop = {**small, "crop": list(range(48 * 48))}  # one 48x48 crop is already too big to be accepted
    assert clean_value(crop) is None
    assert clean_value({**small, "extra": "x"}) == small  # unknown keys are dropped
    assert clean_value("not a dict") is None and clean_value(None) is None


def test_the_component_ships_built_and_the_detector_is_the_servers() -> None:
    files = {p.name: p.stat().st_size for p in BUILD_DIR.iterdir()}
    assert {"index.html", "live.js", "worker.js", "live.css", "ort-wasm-simd-threaded.wasm"} <= set(files)
    assert sum(files.values()) < 20 * 2**20, files  # one WASM variant only
    html = (BUILD_DIR / "index.html").read_text()
    assert "http" not in html  # nothing from a CDN: it works offline
    nets = mtcnn_net_bytes()
    assert set(nets) == {"pnet", "rnet", "onet"} and all(len(b) > 10_000 for b in nets.values())


def test_default_model_falls_back_to_the_best_shipped_one() -> None:
    models, _ = live_models()
    assert default_model(models, "no-such-run") is not None
    assert default_model([], "mobilenet-w1") is None
    assert (ROOT / "components" / "live" / "frontend" / "package-lock.json").exists()


def test_the_readme_screenshot_is_a_png() -> None:
    for name in ("live", "live-phone"):
        path = ROOT / "docs" / "screenshots" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
