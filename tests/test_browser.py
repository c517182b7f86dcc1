"""The real app in a real browser: `streamlit run` on a loopback port, driven by Debian's headless Chromium.

Visits every page, trains in the background and stops the run, uploads the sample photo on Predict and checks the
predicted class, and saves one screenshot per page to docs/screenshots/ (the README shows them). Predict is also walked
with a photo that has no face (the box placed by hand) and at a phone's width (nothing may overflow sideways).

Without Chromium the browser tests skip, except under CI (CI=true), where they fail: CI must run them for real."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_PHOTO

# `-m 'not browser'` leaves these out; under pytest-xdist they share one worker (one Chromium at a time)
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.xdist_group("browser")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = ROOT / "docs" / "screenshots"  # the README's pictures, committed
# A normal test run keeps its screenshots out of the work tree; FER_UPDATE_SCREENSHOTS=1 refreshes the README's.
SHOT_DIR = SHOTS if os.environ.get("FER_UPDATE_SCREENSHOTS") else Path(tempfile.gettempdir()) / "fer-browser-shots"
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

from selenium import webdriver  # noqa: E402 - requirements-dev.txt; a missing one is an error, not a skip
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def require_browser() -> None:
    """Skip the browser tests where Chromium is missing; under CI fail instead, so a broken install is never green.
    Only the tests that drive a browser call this (through their fixtures): the screenshot check needs none."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    msg = f"headless browser not installed ({CHROMIUM} and {CHROMEDRIVER}; `apt-get install chromium chromium-driver`)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}: CI must run the browser tests", pytrace=False)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_runs(runs: Path) -> None:
    """Two small finished runs so Compare and Predict have something to show when checkpoints/ is empty."""
    from core.training.config import TrainConfig
    from core.training.rundir import list_runs
    from core.training.runs import run_training

    if any(i.ok and i.has_onnx for i in list_runs(None)):
        return
    for arch, width in (("plain_cnn", 0.125), ("mobilenet", 0.25)):
        cfg = TrainConfig(arch=arch, width=width, synthetic_size=600, epochs=2, batch_size=32, lr=3e-3, augment=False)
        list(run_training(cfg, runs / f"demo-{arch}-w{width:g}"))


@contextlib.contextmanager
def serve(runs: Path, log_path: Path):  # noqa: ANN201 - yields the base URL
    """`streamlit run streamlit_app.py` on a free loopback port with `runs` as its runs folder, until the block ends."""
    port = free_port()
    log = open(log_path, "wb")
    env = {**os.environ, "FER_RUNS_DIR": str(runs), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail(f"streamlit did not start: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        from core.service import jobs
        from core.training import rundir

        for job in rundir.list_runs(runs, include_shipped=False):  # never leave a trainer behind
            if job.active:
                jobs.stop_run(job.path, kill=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields (base URL, runs folder)
    require_browser()
    runs = tmp_path_factory.mktemp("browser-runs")
    seed_runs(runs)
    with serve(runs, tmp_path_factory.mktemp("logs") / "streamlit.log") as url:
        yield url, runs


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201 - yields a selenium driver
    require_browser()
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1400,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = 60, what: str = "") -> object:  # noqa: ANN001
    try:
        # A page that reruns (Train refreshes every 2 s) swaps its elements between finding one and reading it, and
        # a reflowing layout may cover a button for a moment: a stale or covered element only means "look again".
        return WebDriverWait(driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException)
                             ).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}") from None


def settle(driver, title: str, timeout: float = 90) -> None:  # noqa: ANN001
    """Wait until the page's title is shown and the script has finished, then let charts draw."""
    wait(driver, lambda d: any(h.text.strip() == title for h in d.find_elements(By.CSS_SELECTOR, "h1")),
         timeout, f"the {title!r} heading")
    # Pages with a live panel (Train refreshes its runs every 2 s) are "running" most of the time on a busy machine:
    # a moment of "notRunning" is enough, polled often.
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=stApp]").get_attribute("data-test-script-state")
        == "notRunning", f"{title} to finish running")
    time.sleep(1.5)  # vega-embed draws charts after the script run ends
    assert not driver.find_elements(By.CSS_SELECTOR, "[data-testid=stException]"), f"{title} shows an exception"


def text_of(driver) -> str:  # noqa: ANN001
    return driver.find_element(By.CSS_SELECTOR, "[data-testid=stMain]").text


def shoot(driver, name: str, height: int = 1000) -> Path:  # noqa: ANN001
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1400, height)
    time.sleep(0.8)
    path = SHOT_DIR / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    assert path.stat().st_size > 10_000
    return path


def click_button(driver, label: str) -> None:  # noqa: ANN001
    def find_and_click(d) -> bool:  # noqa: ANN001
        button = next((b for b in d.find_elements(By.CSS_SELECTOR, "button")
                       if b.text.strip().endswith(label) and b.is_enabled()), None)
        if button is None:
            return False
        d.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
        button.click()  # a rerun between finding and clicking raises stale, and wait() looks again
        return True

    wait(driver, find_and_click, 30, f"a {label!r} button")


def click_when_clear(driver, element) -> None:  # noqa: ANN001
    """Scroll an element to the middle and click it; while the page is still laying out (a phone-width column
    reflowing after an expander opened), another element may briefly cover it, so look again until it is clear."""
    def attempt(d) -> bool:  # noqa: ANN001
        d.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        try:
            element.click()
        except ElementClickInterceptedException:
            return False
        return True

    wait(driver, attempt, 15, "the element to be clickable")


def open_next_expander(driver) -> bool:  # noqa: ANN001
    """One step of "open every expander": click the first closed one and report False, or True once none is closed.
    Elements are found afresh on each step because React may re-render an expander (a stale element never opens),
    and a pause after the click lets a loaded machine apply it before the next look, so no expander is toggled twice."""
    closed = [x for x in driver.find_elements(By.CSS_SELECTOR, "[data-testid=stExpander] details")
              if x.get_attribute("open") is None]
    if not closed:
        return True
    summary = closed[0].find_element(By.TAG_NAME, "summary")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", summary)
    summary.click()  # covered (a reflowing column) or stale: wait() ignores both and this step runs again
    time.sleep(1.0)
    return False


def _page_shows(d, url: str, title: str, words: tuple[str, ...], height: int) -> None:  # noqa: ANN001
    """Open a page, wait for it to settle, check it shows `words`, and keep its screenshot."""
    d.get(url)
    settle(d, title)
    text = text_of(d)
    assert all(w in text for w in words), [w for w in words if w not in text]
    shoot(d, title.lower(), height)


def _train_watch_and_stop(d, url: str, runs: Path) -> None:  # noqa: ANN001
    """Train: start a run with the page's quick defaults, watch it learn, then stop it from the page."""
    d.get(f"{url}/train")
    settle(d, "Train")
    epochs = d.find_element(By.CSS_SELECTOR, "input[aria-label='Epochs']")
    epochs.send_keys(Keys.CONTROL, "a")
    epochs.send_keys("50", Keys.ENTER)  # far more than it trains before Stop, however slow or fast the machine
    settle(d, "Train")
    budget = d.find_element(By.CSS_SELECTOR, "input[aria-label='Time budget, s (0 = none)']")
    budget.send_keys(Keys.CONTROL, "a")
    budget.send_keys("0", Keys.ENTER)  # no time budget: the run must still be going when Stop is pressed
    settle(d, "Train")

    def run_folders() -> set[str]:  # the queue keeps its files in a hidden folder beside the runs
        return {p.name for p in runs.iterdir() if not p.name.startswith(".")}

    before = run_folders()
    click_button(d, "Start training")
    wait(d, lambda _: run_folders() - before, 30, "a new run folder")
    new_run = next(iter(run_folders() - before))
    wait(d, lambda dd: "ETA" in text_of(dd), 180, "the progress bar with an ETA")
    # A reload is a new browser session: the run must still be there, because its state lives on disk.
    d.get(f"{url}/train")
    settle(d, "Train")
    assert new_run in text_of(d)
    wait(d, lambda dd: (runs / new_run / "run.json").exists()
         and '"epoch": 2' in (runs / new_run / "run.json").read_text(),
         300, "two epochs to finish (curves need two points)")
    time.sleep(2.5)  # one fragment refresh draws the curves
    shoot(d, "train", 1300)
    _press_stop(d, runs / new_run)
    wait(d, lambda dd: "Stopped on request" in text_of(dd), 120, "the run to stop")


def _press_stop(d, run: Path) -> None:  # noqa: ANN001
    """Press Stop until the page has asked the trainer to stop (its STOP file, or the run already stopped). A click
    that lands as a fragment refresh replaces the button reaches no handler: under a full load that lost one."""
    from core.training import rundir

    def done() -> bool:  # the trainer removes the file once it has stopped and recorded so
        return (run / rundir.STOP_FILE).exists() or rundir.run_status(run).status == "stopped"

    def asked(dd) -> bool:  # noqa: ANN001
        if done():
            return True
        status = rundir.run_status(run).status
        assert status in ("running", "starting"), f"the run is {status} before Stop took: nothing left to stop"
        click_button(dd, "Stop")
        time.sleep(5)  # a fragment refresh every 2 s: the click's rerun has written the file by now, if it arrived
        return done()

    wait(d, asked, 60, "the page to ask the trainer to stop")


def test_every_page_in_a_real_browser(server, browser) -> None:  # noqa: ANN001
    url, runs = server
    d = browser

    for path, title, words, height in (("", "Architectures", ("Parameters", "Why depthwise-separable"), 1250),
                                       ("data", "Data", ("Synthetic data", "Samples per class"), 1300)):
        _page_shows(d, f"{url}/{path}", title, words, height)
    _train_watch_and_stop(d, url, runs)
    _page_shows(d, f"{url}/compare", "Compare", ("Cost vs accuracy", "Download as CSV"), 1300)

    d.get(f"{url}/predict")
    settle(d, "Predict")
    d.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(SAMPLE_PHOTO.resolve()))
    values = wait(d, lambda dd: [e.text.strip()
                                 for e in dd.find_elements(By.CSS_SELECTOR, "[data-testid=stMetricValue]")
                                 if e.text.strip()], 90, "a predicted class")
    assert values[0].split()[0] in CLASSES and values[0].endswith("%"), values  # "happy 83%"
    settle(d, "Predict")
    assert "astronaut.jpg" in text_of(d)
    shoot(d, "predict", 1150)


def test_inside_page_and_confusion_gallery_in_a_real_browser(server, browser) -> None:  # noqa: ANN001
    url, _ = server
    d = browser
    d.get(f"{url}/")  # a fresh server knows its pages only after the router has run once
    settle(d, "Architectures")
    d.get(f"{url}/inside")
    settle(d, "Inside", 240)
    text = text_of(d)
    assert "Where it looks" in text and "Layer by layer" in text and "Grad-CAM for" in text, text[:500]
    values = [e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, "[data-testid=stMetricValue]")]
    assert values and values[0] in CLASSES, values
    assert len(d.find_elements(By.CSS_SELECTOR, "[data-testid=stImage] img")) >= 10  # crop, maps, filters, rows
    shoot(d, "inside", 1500)
    layers = next(h for h in d.find_elements(By.CSS_SELECTOR, "h3") if h.text.strip() == "Layer by layer")
    d.execute_script("arguments[0].scrollIntoView({block: 'start'});", layers)
    time.sleep(0.5)
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOT_DIR / "inside-layers.png"))
    assert (SHOT_DIR / "inside-layers.png").stat().st_size > 10_000

    d.get(f"{url}/compare")
    settle(d, "Compare", 240)
    heading = next(h for h in d.find_elements(By.CSS_SELECTOR, "h3") if h.text.strip() == "Confusion gallery")
    text = text_of(d)
    assert "most confident mistake first" in text or "No face in this cell" in text, text[-800:]
    d.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading)
    time.sleep(0.5)
    d.save_screenshot(str(SHOT_DIR / "gallery.png"))
    assert (SHOT_DIR / "gallery.png").stat().st_size > 10_000


def no_face_photo(folder: Path) -> Path:
    """A photo with no face: a grey wall with a dark block in its bottom right."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (400, 200), (200, 200, 200))
    ImageDraw.Draw(img).rectangle((300, 100, 380, 180), fill=(20, 20, 20))
    path = folder / "wall.png"
    img.save(path)
    return path


def open_page(driver, url: str, path: str, title: str) -> None:  # noqa: ANN001
    """Load url/path and wait for its title."""
    driver.get(f"{url}{path}")
    settle(driver, title)


def test_a_fresh_servers_first_visit_to_a_deep_link(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """A teacher starts the server and shares /predict: the first student to open it sees Predict, not Streamlit's
    "Page not found" (its pages/-folder mode, which the router turns off at server start)."""
    with serve(tmp_path / "runs", tmp_path / "streamlit.log") as url:
        browser.get(f"{url}/predict")
        settle(browser, "Predict")
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stDialog]"), \
            browser.find_element(By.TAG_NAME, "body").text[:300]


def overflow(driver) -> tuple[int, int]:  # noqa: ANN001
    """(scrollWidth, clientWidth) of the document: content wider than the window makes the first exceed the second."""
    return tuple(driver.execute_script("const e = document.documentElement; return [e.scrollWidth, e.clientWidth];"))


def test_architectures_has_its_own_url(server, browser) -> None:  # noqa: ANN001
    url, _ = server
    open_page(browser, url, "/", "Architectures")  # the root opens Architectures under its own URL: a working link
    wait(browser, lambda d: d.current_url.rstrip("/").endswith("/architectures"), 30, "the URL /architectures")
    open_page(browser, url, "/architectures", "Architectures")  # a direct load of that link
    assert "Page not found" not in browser.find_element(By.TAG_NAME, "body").text


def test_predict_no_face_then_a_box_by_hand(server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    url, _ = server
    d = browser
    open_page(d, url, "/predict", "Predict")
    d.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(no_face_photo(tmp_path)))
    wait(d, lambda dd: "No face found in wall.png" in text_of(dd), 90, "the no-face message")
    settle(d, "Predict")
    assert "no face found · centre square" in text_of(d) and "1 face(s)" not in text_of(d)
    size = d.find_element(By.CSS_SELECTOR, "[data-testid=stSlider] input[type=range][aria-label='Size']")
    d.execute_script("arguments[0].focus();", size)  # the slider's own (visually hidden) range input takes the keys
    webdriver.ActionChains(d).send_keys(Keys.ARROW_LEFT * 40).perform()
    wait(d, lambda dd: "your box" in text_of(dd), 60, "the hand-placed box to be classified (its caption)")
    settle(d, "Predict")
    size = d.find_element(By.CSS_SELECTOR, "[data-testid=stSlider] input[type=range][aria-label='Size']")
    assert float(size.get_attribute("value")) < 1.0 and "centre square" not in text_of(d)


def test_predict_fits_a_phone(server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    url, _ = server
    d = browser
    d.set_window_size(400, 900)
    try:
        open_page(d, url, "/predict", "Predict")
        files = d.find_element(By.CSS_SELECTOR, "input[type=file]")
        files.send_keys(f"{SAMPLE_PHOTO.resolve()}\n{no_face_photo(tmp_path)}")
        wait(d, lambda dd: "wall.png · no face found" in text_of(dd) and "astronaut.jpg · 1 face(s)" in text_of(dd), 90,
             "both photos analysed (their folded details)")
        settle(d, "Predict")
        wait(d, open_next_expander, 90, "every photo's details to open (charts and sliders included)")
        settle(d, "Predict")
        assert "No face found in wall.png" in text_of(d) and "Size" in text_of(d)
        scroll, client = overflow(d)
        SHOT_DIR.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(SHOT_DIR / "predict-phone.png"))
        assert scroll <= client, f"Predict is {scroll} px wide in a {client} px window: it scrolls sideways"
    finally:
        d.set_window_size(1400, 1000)


def test_train_form_survives_a_reload_and_a_double_click_starts_one_run(server, browser) -> None:  # noqa: ANN001
    url, runs = server
    d = browser
    open_page(d, url, "/train", "Train")
    epochs = d.find_element(By.CSS_SELECTOR, "input[aria-label='Epochs']")
    epochs.send_keys(Keys.CONTROL, "a")
    epochs.send_keys("7", Keys.ENTER)
    settle(d, "Train")
    d.refresh()  # a reload is a new session: the form comes back from the URL
    settle(d, "Train")
    assert d.find_element(By.CSS_SELECTOR, "input[aria-label='Epochs']").get_attribute("value") == "7"
    # No run name: each launch would get its own timestamped folder, so a second launch could not hide behind a
    # name clash.
    before = {p.name for p in runs.iterdir() if not p.name.startswith(".")}
    button = next(b for b in d.find_elements(By.CSS_SELECTOR, "button") if b.text.strip().endswith("Start training"))
    d.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    ActionChains(d).double_click(button).perform()
    wait(d, lambda dd: {p.name for p in runs.iterdir() if not p.name.startswith(".")} - before, 30, "a run folder")
    time.sleep(4)  # the second click's rerun has had time to launch a second run, if it were going to
    settle(d, "Train")
    new = {p.name for p in runs.iterdir() if not p.name.startswith(".")} - before
    assert len(new) == 1, new
    for name in new:
        from core.service import jobs

        if (runs / name / "job.json").exists():
            try:
                jobs.stop_run(runs / name, kill=True)
            except ValueError:
                pass  # it already ended


@pytest.mark.parametrize("path, title", [("/architectures", "Architectures"), ("/data", "Data"), ("/train", "Train"),
                                         ("/compare", "Compare"), ("/inside", "Inside"), ("/compress", "Compress")])
def test_every_page_fits_a_phone(server, browser, path: str, title: str) -> None:  # noqa: ANN001
    url, _ = server
    d = browser
    d.set_window_size(400, 900)
    try:
        open_page(d, url, path, title)
        scroll, client = overflow(d)
        assert scroll <= client, f"{title} is {scroll} px wide in a {client} px window: it scrolls sideways"
        if title == "Compress":
            assert "Compress in the background" in d.find_element(By.TAG_NAME, "body").text
    finally:
        d.set_window_size(1400, 1000)


def test_screenshots_are_pngs() -> None:
    for name in ("architectures", "data", "train", "compare", "predict", "inside", "inside-layers", "gallery"):
        path = SHOTS / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_train_form_and_curves_read_at_desktop_width(server, browser) -> None:  # noqa: ANN001
    """At 1400 px every architecture's name fits its select (it was cut to 'Plain CNN (\\"'), and a finished run's
    learning curves are drawn tall enough to read (they were squashed into a strip about 30 px tall)."""
    from core.models import archs
    from core.training.config import TrainConfig
    from core.training.runs import run_training

    url, runs = server
    if not (runs / "curves-demo" / "model.onnx").exists():
        cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=300, epochs=2, batch_size=32, augment=False)
        list(run_training(cfg, runs / "curves-demo"))
    d = browser
    open_page(d, url, "/train", "Train")
    wait(d, lambda dd: len(dd.find_elements(By.CSS_SELECTOR, "[data-testid=stVegaLiteChart]")) >= 2, 60, "the curves")
    titles = [archs.get_family(a).title for a in archs.list_archs()]
    widths = d.execute_script("""const i = document.querySelector("input[aria-label='Architecture']"), was = i.value;
        const out = arguments[0].map(t => { i.value = t; return [t, i.scrollWidth, i.clientWidth]; });
        i.value = was; return out;""", titles)
    assert all(scroll <= client for _, scroll, client in widths), widths
    heights = d.execute_script("return [...document.querySelectorAll('[data-testid=stVegaLiteChart]')]"
                               ".map(e => e.getBoundingClientRect().height);")
    assert min(heights) >= 300, heights


def phone(driver, width: int = 420) -> None:  # noqa: ANN001
    """A phone's viewport: headless Chrome keeps its window at least 500 px wide, so the width is emulated."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": True})


def main_overflow(driver) -> tuple[int, int]:  # noqa: ANN001
    """(widest of the document and the main area, the window's width): the main area scrolls on its own, so a wide
    picture inside it shows up there rather than in the document."""
    return tuple(driver.execute_script(
        "const e = document.documentElement, m = document.querySelector('[data-testid=stMain]');"
        "return [Math.max(e.scrollWidth, m.scrollWidth), e.clientWidth];"))


def test_look_inside_and_back_keeps_photos_and_model_and_both_fit_a_phone(server, browser) -> None:  # noqa: ANN001
    url, _ = server
    d = browser
    open_page(d, url, "/predict", "Predict")
    model = d.find_element(By.CSS_SELECTOR, "input[aria-label='Model']")
    chosen_before = model.get_attribute("value")
    click_when_clear(d, model)
    options = wait(d, lambda dd: dd.find_elements(By.CSS_SELECTOR, "[role=option]"), 20, "the model list")
    other = next(o for o in options if o.text.strip() and o.text.strip() != chosen_before)
    chosen = other.text.strip()
    other.click()
    settle(d, "Predict")
    d.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(SAMPLE_PHOTO.resolve()))
    wait(d, lambda dd: "astronaut.jpg · 1 face(s)" in text_of(dd), 90, "the photo analysed")
    settle(d, "Predict")
    click_button(d, "Look inside")
    settle(d, "Inside")
    try:
        phone(d)
        settle(d, "Inside")
        scroll, client = main_overflow(d)
        assert scroll <= client, f"Inside is {scroll} px wide in a {client} px window: it scrolls sideways"
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    # back through the page menu, as a visitor would: the photo and the model are still there
    click_when_clear(d, next(a for a in d.find_elements(By.CSS_SELECTOR, "[data-testid=stSidebarNav] a")
                             if a.get_attribute("href").rstrip("/").endswith("/predict")))
    settle(d, "Predict")
    wait(d, lambda dd: "astronaut.jpg · 1 face(s)" in text_of(dd), 60, "the photo, still there")
    assert d.find_element(By.CSS_SELECTOR, "input[aria-label='Model']").get_attribute("value") == chosen
    try:
        phone(d)
        settle(d, "Predict")
        scroll, client = main_overflow(d)
        assert scroll <= client, f"Predict is {scroll} px wide in a {client} px window: it scrolls sideways"
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_run_stays_its_starters_across_reloads_and_typed_urls(server, browser) -> None:  # noqa: ANN001
    """The identity lives in a cookie, so a reload or a typed /train (no ?user=) keeps the owner's Stop
    button; another browser (no cookie) sees the run without it."""
    from core.service import jobs, owners
    from core.training.config import TrainConfig

    url, runs = server
    d = browser
    open_page(d, url, "/train", "Train")
    wait(d, lambda dd: dd.get_cookie("fer_user"), 30, "the identity cookie")
    token = d.get_cookie("fer_user")["value"]
    cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=3000, epochs=50, batch_size=16, lr=3e-3,
                      augment=False)
    run_dir = jobs.start_run(cfg, runs, "owned-by-browser", session=token)
    owners.record_owner(run_dir, token)
    try:
        d.get(f"{url}/train")  # typed, without ?user=: the cookie alone says who this is
        settle(d, "Train")
        assert "user=" not in d.current_url
        wait(d, lambda dd: any(b.text.strip() in ("Stop", "Cancel")
                               for b in dd.find_elements(By.CSS_SELECTOR, "button")),
             60, "the owner's Stop button")
        d.delete_all_cookies()  # now another browser
        d.get(f"{url}/train")
        settle(d, "Train")
        wait(d, lambda dd: "another user's run" in text_of(dd), 60, "the run marked as another user's")
        assert not any(b.text.strip() in ("Stop", "Cancel") for b in d.find_elements(By.CSS_SELECTOR, "button"))
        assert d.get_cookie("fer_user")["value"] != token
    finally:
        jobs.stop_run(run_dir, kill=True)
