"""Live page benchmark: headless Chromium with a fake camera fed a video file, the Live page's frontend
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
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
            "--autoplay-policy=no-user-gesture-required", *extra]
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


def choose(driver, label: str, name: str, timeout: float = 20) -> None:  # noqa: ANN001
    """Pick the model whose label starts with `name` in the page's selectbox called `label`."""
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    box = driver.find_element(By.CSS_SELECTOR, f"[data-testid=stSelectbox] input[aria-label^='{label}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    box.send_keys(name + " ·")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        option = next((o for o in driver.find_elements(By.CSS_SELECTOR, "[role=option]")
                       if o.text.startswith(name + " ·")), None)
        if option is not None:
            option.click()
            return
        time.sleep(0.2)
    raise AssertionError(f"no option {name!r} in {label!r}")


def toggle(driver, label: str) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    driver.switch_to.default_content()
    xpath = f"//label[.//p[starts-with(text(), '{label}')]]"
    deadline = time.monotonic() + 30
    while not driver.find_elements(By.XPATH, xpath) and time.monotonic() < deadline:
        time.sleep(0.3)
    driver.find_element(By.XPATH, xpath).click()


def open_live(driver, url: str, timeout: float = 120) -> None:  # noqa: ANN001
    """Load the Live page and wait for its model picker."""
    from selenium.webdriver.common.by import By

    def picker() -> bool:
        return bool(driver.find_elements(By.CSS_SELECTOR, "[data-testid=stSelectbox] input[aria-label^='Model']"))

    for path in ("/", "/live"):  # a fresh server knows its pages only after the router has run once
        driver.get(f"{url}{path}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (picker() if path == "/live" else
                                                    driver.find_elements(By.CSS_SELECTOR, "h1")):
            time.sleep(0.3)
    if not picker():
        raise AssertionError("the Live page did not show its model picker")


# --- the benchmark ----------------------------------------------------------------------------------------------

def speed(driver, model: str, seconds: float) -> dict:  # noqa: ANN001
    """Frames per second and per-frame times over `seconds` of live video once `model` runs."""
    enter_component(driver)
    wait_for(driver, lambda d: (s := live_state(d)) and s["status"] == "running"
             and any(f"/{model}@" in x for x in s["slots"]) and s["frames"] > 0 and s, 180, f"{model} running")
    time.sleep(3)  # warm-up: first runs of each net allocate
    driver.execute_script("window.liveState.resetStats();")
    t0 = time.monotonic()
    time.sleep(seconds)
    per = driver.execute_script("return window.liveState.perFrame;")
    wall = time.monotonic() - t0
    total = np.array([p["total"] for p in per])
    return {"model": model, "frames": len(per), "fps": len(per) / wall, "frame_ms_median": float(np.median(total)),
            "frame_ms_p90": float(np.percentile(total, 90)),
            "detect_ms_median": float(np.median([p["detect"] for p in per])),
            "model_ms_median": float(np.median([p["model"] for p in per if p["faces"]] or [0])),
            "faces_per_frame": float(np.mean([p["faces"] for p in per]))}


def agreement(driver, model_onnx: Path, samples: int) -> dict:  # noqa: ANN001
    """Top-class agreement with the server on `samples` processed frames: ONNX Runtime on the browser's own crops,
    and the server's whole Predict pipeline (MTCNN, aligned crop, ONNX Runtime) on the same frame."""
    import io

    from PIL import Image

    from components.live.catalog import server_faces, server_probabilities

    same_crop = same_frame = crops = frame_faces = 0
    max_prob_diff, crop_diffs, seen = 0.0, [], set()
    enter_component(driver)
    while len(seen) < samples:
        shot = last_frame(driver)
        key = shot["png"][-64:]
        if key in seen or not shot["faces"]:
            time.sleep(0.1)
            continue
        seen.add(key)
        mine = np.stack([np.asarray(f["crop"], np.uint8).reshape(48, 48) for f in shot["faces"]])
        browser = np.array([next(iter(f["probs"].values())) for f in shot["faces"]])
        server = server_probabilities(model_onnx, mine)
        same_crop += int((browser.argmax(1) == server.argmax(1)).sum())
        crops += len(mine)
        max_prob_diff = max(max_prob_diff, float(np.abs(browser - server).max()))
        theirs = server_faces(np.asarray(Image.open(io.BytesIO(shot["png"])).convert("RGB")))
        for f, p in zip(shot["faces"], browser):  # pair each browser face with the server's nearest one
            if not theirs:
                break
            cx, cy = f["box"][0] + f["box"][2] / 2, f["box"][1] + f["box"][3] / 2
            box, crop = min(theirs, key=lambda t: abs(t[0][0] + t[0][2] / 2 - cx) + abs(t[0][1] + t[0][3] / 2 - cy))
            same_frame += int(server_probabilities(model_onnx, crop[None])[0].argmax() == p.argmax())
            crop_diffs.append(float(np.abs(np.asarray(f["crop"]).reshape(48, 48) - crop.astype(int)).mean()))
            frame_faces += 1
    return {"frames": len(seen), "crops": crops, "same_crop_top_class": same_crop / crops,
            "max_prob_diff": max_prob_diff, "faces_paired": frame_faces,
            "same_frame_top_class": same_frame / max(1, frame_faces),
            "crop_mean_abs_diff": float(np.mean(crop_diffs)) if crop_diffs else None}


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet-w1", "plain_cnn-w1"])
    ap.add_argument("--seconds", type=float, default=20, help="measured seconds per model")
    ap.add_argument("--samples", type=int, default=60, help="frames compared with the server per model")
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "photos",
                    help="photos for the agreement clip (each shown 1 s); tests/data/astronaut.jpg when absent")
    ap.add_argument("--small-faces", action="store_true", help="the detector at the server's 20 px smallest face")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import tempfile

    from core.training import rundir

    tmp = Path(tempfile.mkdtemp(prefix="fer-live-bench-"))
    one_face = make_clip([ROOT / "tests" / "data" / "astronaut.jpg"], tmp / "one_face.y4m", seconds_each=3.0)
    photos = sorted(args.photos.glob("*.jpg")) if args.photos.is_dir() else []
    many = make_clip(photos or [ROOT / "tests" / "data" / "astronaut.jpg"], tmp / "photos.y4m", seconds_each=1.0)
    report = {"machine": machine(), "small_faces": args.small_faces, "speed": [], "agreement": [],
              "agreement_clip": f"{len(photos)} photos from {args.photos}" if photos else "tests/data/astronaut.jpg"}
    proc, url = start_app(tmp / "streamlit.log")
    try:
        for clip, part in ((one_face, "speed"), (many, "agreement")):
            d = chrome(clip)
            try:
                open_live(d, url)
                if args.small_faces:
                    toggle(d, "Find small faces")
                for name in args.models:
                    choose(d, "Model", name)
                    if part == "speed":
                        report["speed"].append(speed(d, name, args.seconds))
                    else:
                        speed(d, name, 0.5)  # waits until the model runs
                        report["agreement"].append({"model": name, **agreement(
                            d, ROOT / "checkpoints" / name / rundir.ONNX, args.samples)})
                    print(json.dumps(report[part][-1]), file=sys.stderr)
            finally:
                d.quit()
    finally:
        stop_app(proc)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
