"""Live page benchmark (issue 22): headless Chromium with a fake camera fed a video file, the Live page's frontend
running MTCNN and the expression model in onnxruntime-web; reports frames per second, per-frame detector and model
time, and agreement with the server's ONNX Runtime on the same crops and on the same frames.

    python -m bench.live [--models mobilenet-w1 plain_cnn-w1] [--seconds 20] [--photos DIR]

The helpers (the clip, the browser, reading the page's state) are shared with tests/test_live_browser.py."""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FRAME = (640, 480)  # what a laptop webcam gives at the size the page asks for


def letterbox(rgb: np.ndarray, size: tuple[int, int] = FRAME, zoom: float = 1.0, shift: tuple[float, float] = (0, 0),
              ) -> np.ndarray:
    """The photo scaled to fit size (times zoom) on a grey background, moved by shift (fractions of the frame)."""
    import cv2

    W, H = size
    h, w = rgb.shape[:2]
    s = min(W / w, H / h) * zoom
    img = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    m = np.float32([[1, 0, (W - img.shape[1]) / 2 + shift[0] * W], [0, 1, (H - img.shape[0]) / 2 + shift[1] * H]])
    return cv2.warpAffine(img, m, (W, H), borderMode=cv2.BORDER_CONSTANT, borderValue=(128, 128, 128))


def make_clip(photos: list[Path], path: Path, seconds_each: float = 1.0, fps: int = 30) -> Path:
    """A Y4M video (I420, what Chromium's fake camera reads) that shows each photo for `seconds_each`, slowly
    zooming and drifting, so consecutive frames give different crops."""
    import cv2

    n = max(1, round(seconds_each * fps))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{FRAME[0]} H{FRAME[1]} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for p in photos:
            rgb = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for k in range(n):
                t = k / max(1, n - 1)
                frame = letterbox(rgb, zoom=0.9 + 0.2 * t, shift=(0.04 * (t - 0.5), 0.02 * (0.5 - t)))
                f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def chrome(clip: Path | None, width: int = 1400, height: int = 1000, extra: tuple[str, ...] = ()):  # noqa: ANN201
    """Headless Chromium (selenium). With a clip: a fake camera showing it, permission granted; without: no camera."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={width},{height}",
            "--hide-scrollbars", "--force-device-scale-factor=1", "--autoplay-policy=no-user-gesture-required",
            *extra]
    if clip is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={clip}"]
    for a in args:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(log_path: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run streamlit_app.py` on a free loopback port; (process, base URL) once it answers."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true", "--server.port",
         str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise RuntimeError(f"streamlit did not start: {log_path.read_text()[-2000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def enter_component(driver, timeout: float = 90) -> None:  # noqa: ANN001
    """Switch into the Live component's iframe once it is on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.switch_to.default_content()
    frame = WebDriverWait(driver, timeout, 0.25).until(
        lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, "iframe[title*='fer_live']")), None))
    driver.switch_to.frame(frame)


def live_state(driver) -> dict:  # noqa: ANN001
    """The frontend's counters (status, frames, fps, detect ms, model ms per model, faces) from inside its iframe."""
    return driver.execute_script("""const s = window.liveState; if (!s) return null;
        return {status: s.status, message: s.message, frames: s.frames, fps: s.fps, detectMs: s.detectMs,
                modelMs: s.modelMs, minFace: s.minFace, slots: s.slots.map(x => x.id), labels: s.labels || [],
                faces: s.faces.map(f => ({box: f.box, probs: f.probs}))};""")


def last_frame(driver) -> dict:  # noqa: ANN001
    """The last processed frame (PNG) with its faces: landmarks, the 48x48 crops and probabilities the browser got."""
    got = driver.execute_script("return window.liveState.snapshot();")
    png = base64.b64decode(got["frame"].split(",", 1)[1])
    return {"png": png, "faces": got["faces"], "min_face": got["minFace"]}


def wait_for(driver, cond, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond(driver)
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; state: {live_state(driver)}")
