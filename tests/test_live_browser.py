"""The Live page in a real browser: Debian's headless Chromium with a fake camera that plays a clip made from the
tests' own photo (tests/data/astronaut.jpg). Checks that the face is boxed and labelled in the browser, that the
browser's crop and probabilities match the server's ONNX Runtime and the server's own pipeline on the same frame,
that a model switch takes effect without a reload, side by side too, that the page sends the server no image, and
the fallbacks (no camera, permission denied, no WebAssembly) that lead to snapshot mode.

As in tests/test_browser.py, these skip without Chromium, except under CI (CI=true), where they fail."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_PHOTO
from selenium.webdriver.common.by import By  # noqa: E402 - requirements-dev.txt
from test_browser import SHOT_DIR, overflow, require_browser, settle, text_of, wait

from bench.live import chrome, enter_component, last_frame, live_state, make_clip, start_app, stop_app, wait_for
from components.live.catalog import server_faces, server_probabilities

CHECKPOINTS = ROOT / "checkpoints"
FIRST, SECOND, THIRD = "mobilenet-w1", "mobilenet-w0.5", "plain_cnn-w0.25"
# `-m 'not browser'` leaves these out; under pytest-xdist they share the other browser tests' worker
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]
# Counts what the top page sends the server over Streamlit's WebSocket (installed before any page script runs).
WS_TALLY = """window.__wsSent = [];
const _send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  const n = typeof data === 'string' ? data.length : (data.byteLength !== undefined ? data.byteLength : data.size);
  window.__wsSent.push(n);
  return _send.call(this, data);
};"""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields the base URL
    require_browser()
    if not (CHECKPOINTS / FIRST / "model.onnx").exists():
        pytest.fail(f"the shipped {FIRST} checkpoint is missing from {CHECKPOINTS}")
    proc, url = start_app(tmp_path_factory.mktemp("live-logs") / "streamlit.log",
                          {"FER_RUNS_DIR": str(tmp_path_factory.mktemp("live-runs"))})
    try:
        yield url
    finally:
        stop_app(proc)


@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields a selenium driver with a fake camera
    require_browser()
    clip = make_clip([SAMPLE_PHOTO], tmp_path_factory.mktemp("clip") / "astronaut.y4m", seconds_each=2.0)
    driver = chrome(clip)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WS_TALLY})
    try:
        yield driver
    finally:
        driver.quit()


def open_live(driver, url: str) -> None:  # noqa: ANN001
    driver.get(f"{url}/live")  # a fresh server's first deep link too (streamlit_app.py turns pages/-folder mode off)
    settle(driver, "Live")


def choose(driver, label: str, name: str) -> None:  # noqa: ANN001
    """Pick the model whose label starts with `name` in the selectbox called `label`."""
    box = driver.find_element(By.CSS_SELECTOR, f"[data-testid=stSelectbox] input[aria-label^='{label}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    box.send_keys(name + " ·")
    option = wait(driver, lambda d: next((o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                          if o.text.startswith(name + " ·")), None), 20, f"the option {name}")
    option.click()


def running(n_frames: int, slots: int = 1):  # noqa: ANN201
    def check(d):  # noqa: ANN001, ANN202
        s = live_state(d)
        ok = s and s["status"] == "running" and s["frames"] >= n_frames and s["faces"] and len(s["slots"]) == slots
        return s if ok and len(s["labels"]) >= slots else None
    return check


def server_view(png: bytes) -> list[np.ndarray]:
    """The crops the server's Predict pipeline makes of the same frame, largest face first."""
    from PIL import Image

    return [crop for _, crop in server_faces(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))]


def _labels_match_the_server(d, state: dict) -> None:  # noqa: ANN001
    """The browser's crop through the server's ONNX Runtime, and the server's own pipeline on the same frame."""
    shot = last_frame(d)
    assert shot["min_face"] == 20
    model_id = state["slots"][0]
    assert f"/{FIRST}@" in model_id
    browser_crops = [np.asarray(f["crop"], np.uint8).reshape(48, 48) for f in shot["faces"]]
    assert browser_crops, "the snapshot frame has no face"
    onnx = CHECKPOINTS / FIRST / "model.onnx"
    server_probs = server_probabilities(onnx, np.stack(browser_crops))
    for face, probs in zip(shot["faces"], server_probs):
        np.testing.assert_allclose(face["probs"][model_id], probs, atol=1e-4)
    crops = server_view(shot["png"])
    assert len(crops) == len(browser_crops)
    for mine, theirs, p_server, face in zip(browser_crops, crops, server_probabilities(onnx, np.stack(crops)),
                                            shot["faces"]):
        # the same pixels: OpenCV's arithmetic reproduced, up to rounding in a few pixels
        assert np.abs(mine.astype(int) - theirs).max() <= 2, "the browser's crop differs from the server's"
        assert int(np.argmax(face["probs"][model_id])) == int(np.argmax(p_server))


def _switch_models_in_place(d) -> dict:  # noqa: ANN001
    """A new model takes effect on the running page: same iframe (no reload), the camera still on; then a second
    model side by side on the same frames, each with its own per-frame time."""
    d.execute_script("window.__sameFrame = true;")
    d.switch_to.default_content()
    d.find_element(By.XPATH, "//label[.//p[starts-with(text(), 'Find small faces')]]").click()  # the faster default
    settle(d, "Live")
    choose(d, "Model", SECOND)
    enter_component(d)
    state = wait_for(d, lambda dd: (s := live_state(dd)) and f"/{SECOND}@" in s["slots"][0] and s["labels"] and s, 90,
                     f"{SECOND} to label frames")
    assert d.execute_script("return window.__sameFrame === true;"), "the component was reloaded"

    d.switch_to.default_content()
    d.find_element(By.XPATH, "//label[.//p[text()='Side by side']]").click()
    settle(d, "Live")
    choose(d, "Second model", THIRD)
    enter_component(d)
    two = running(state["frames"] + 5, slots=2)
    # a frame the worker labels while the second model's session is still being created has no timing for it (the
    # worker runs only the sessions it has): wait for a frame that both models labelled, as CI once caught
    state = wait_for(d, lambda dd: (s := two(dd)) and set(s["slots"]) <= set(s["modelMs"]) and s, 120,
                     "two models labelling the same frames")
    assert (len(d.find_elements(By.CSS_SELECTOR, ".panel canvas")) == 2
            and all(state["modelMs"][s] > 0 for s in state["slots"]))
    assert {lab["model"] for lab in state["labels"]} == set(state["slots"])
    assert d.execute_script("return window.__sameFrame === true;"), "the component was reloaded"
    return state


def _nothing_but_code_fetched_or_sent(d) -> None:  # noqa: ANN001
    """Privacy: the component fetched only its own files, and no message to the server could hold an image."""
    resources = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert all(r.split("?")[0].rsplit(".", 1)[-1] in ("js", "css", "wasm", "html") for r in resources), resources
    d.switch_to.default_content()
    sent = d.execute_script("return window.__wsSent;")
    assert sent and max(sent) < 2048, f"a message of {max(sent)} bytes went to the server: {sorted(sent)[-5:]}"


def _screenshots_at_both_widths(d) -> None:  # noqa: ANN001
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    d.set_window_size(1400, 1450)  # down to the probability bars and the frame rate
    time.sleep(3.5)  # the component's report after the last switch reruns the page once more
    settle(d, "Live")
    d.save_screenshot(str(SHOT_DIR / "live.png"))
    d.set_window_size(420, 1000)
    try:
        settle(d, "Live")
        time.sleep(1.5)
        d.save_screenshot(str(SHOT_DIR / "live-phone.png"))
        scroll, client = overflow(d)
        assert scroll <= client, f"Live is {scroll} px wide in a {client} px window: it scrolls sideways"
    finally:
        d.set_window_size(1400, 1000)


def test_live_boxes_labels_match_the_server_and_switch_models(app: str, camera) -> None:  # noqa: ANN001
    d = camera
    open_live(d, app)
    assert "never leaves this browser" in text_of(d)
    # The detector's settings as on the server (faces down to 20 px at 320 px), so both see the same faces.
    d.find_element(By.XPATH, "//label[.//p[starts-with(text(), 'Find small faces')]]").click()
    settle(d, "Live")
    enter_component(d)
    state = wait_for(d, running(3), 120, "the first labelled frames")
    assert state["minFace"] == 20
    state = wait_for(d, running(state["frames"] + 2), 60, "frames at the server's detector settings")
    label = state["labels"][0]["text"]
    assert (label.split()[0] in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
            and label.endswith("%"))
    assert d.find_element(By.CSS_SELECTOR, ".bar .pct").text.endswith("%")  # the probability bars are filled
    _labels_match_the_server(d, state)
    _switch_models_in_place(d)
    _nothing_but_code_fetched_or_sent(d)
    enter_component(d)
    # no "Loading..." left behind: the page's rerun after the last switch may show it for a moment, never for good
    wait(d, lambda dd: dd.find_element(By.ID, "status").text.startswith("Live:"), 60, "the status to say Live again")
    d.switch_to.default_content()
    _screenshots_at_both_widths(d)


# A browser without WebAssembly: Chromium has no switch for that, so the component's frame loses it before its own
# scripts run (it starts as about:blank and keeps that window, hence no test on its URL).
NO_WASM = "if (window.self !== window.top) { delete globalThis.WebAssembly; }"


@pytest.mark.parametrize("flags, script, status, words", [
    ((), None, ("no-camera",), "no camera found"),  # headless Chromium has no camera device at all
    (("--use-fake-device-for-media-stream", "--deny-permission-prompts"), None, ("denied",), "permission was denied"),
    ((), NO_WASM, ("no-wasm",), "no WebAssembly"),
], ids=["no-camera", "denied", "no-wasm"])
def test_live_fallbacks_lead_to_snapshot_mode(app: str, flags: tuple[str, ...], script: str | None,
                                              status: tuple[str, ...], words: str) -> None:
    require_browser()
    d = chrome(None, extra=flags)
    try:
        if script:
            d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": script})
        open_live(d, app)
        enter_component(d)
        state = wait_for(d, lambda dd: (s := live_state(dd)) and s["status"] in status and s, 60, f"status {status}")
        assert words.lower() in state["message"].lower()
        assert words.lower() in d.find_element(By.ID, "status").text.lower()  # said in the component itself
        d.switch_to.default_content()
        wait(d, lambda dd: "Live mode is not available here" in text_of(dd), 30, "the page's warning")
        wait(d, lambda dd: dd.find_elements(By.CSS_SELECTOR, "[data-testid=stCameraInput]"), 30,
             "snapshot mode's camera")
        assert "Snapshot mode" in text_of(d)
    finally:
        d.quit()
