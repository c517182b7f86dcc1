"""The job queue under load: 30 real tiny trainings through the Train page's code path (core.service.jobs.start_run),
never more than N alive, none lost, none run twice, FIFO order; an app process killed mid-queue; pages render."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.service import jobs
from core.training import queue, rundir
from core.training.config import TrainConfig
from core.util import settings
from core.util.procs import pid_alive

ROOT = Path(__file__).resolve().parent.parent
# Tiny on purpose: the cost of each run is the trainer process starting (imports), not the training.
TINY = dict(arch="plain_cnn", width=0.125, synthetic_size=40, epochs=1, max_steps=1, batch_size=16, threads=1,
            augment=False)


def launches(run_dir: Path) -> int:
    """How many times a trainer was launched into this folder: start_run writes one '=== ' header per launch."""
    log = run_dir / rundir.LOG
    return sum(line.startswith("=== ") for line in log.read_text().splitlines()) if log.exists() else 0


def started_at(run_dir: Path) -> float:
    return json.loads((run_dir / rundir.JOB_FILE).read_text())["started_unix"]


class LiveSampler(threading.Thread):
    """Counts live trainer processes (the pids start_run recorded) every 50 ms; keeps the highest count."""

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__(daemon=True)
        self.run_dirs, self.peak, self.samples, self.done = run_dirs, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            live = 0
            for d in self.run_dirs:
                job = rundir.read_job(d)
                live += bool(job) and pid_alive(job.get("pid"), job.get("started_unix"))
            self.peak, self.samples = max(self.peak, live), self.samples + 1
            time.sleep(0.05)


def wait_all(run_dirs: list[Path], timeout: float, tick=None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick:
            tick()
        if all(rundir.run_status(d).status in ("done", "failed", "stopped", "interrupted") for d in run_dirs):
            return
        time.sleep(0.3)
    states = {d.name: rundir.run_status(d).status for d in run_dirs}
    raise AssertionError(f"runs did not finish in {timeout} s: {states}")


def test_settings_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FER_MAX_RUNS", raising=False)
    n = settings.max_runs()
    assert 1 <= n <= (os.cpu_count() or 1)
    assert settings.max_runs(5) == 5
    monkeypatch.setenv("FER_MAX_RUNS", "7")
    assert settings.max_runs() == 7
    monkeypatch.setenv("FER_MAX_RUNS", "many")
    with pytest.raises(ValueError, match="FER_MAX_RUNS.*'many'"):
        settings.max_runs()
    with pytest.raises(ValueError, match="at least 1, got 0"):
        settings.max_runs(0)


def test_micro_batch_cap_for_cpu_runs_started_from_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FER_MICRO_BATCH", raising=False)
    assert settings.micro_batch_cap() == 0
    whole = settings.run_memory_bytes()
    big = TrainConfig(arch="plain_cnn", batch_size=256, device="cpu")
    assert jobs.within_server_memory(big) == big  # no cap: settings untouched
    monkeypatch.setenv("FER_MICRO_BATCH", "16")
    assert settings.run_memory_bytes() < 1.0 * 2**30 < whole  # the estimate follows the measured peaks
    assert jobs.within_server_memory(big).micro_batch == 16
    for untouched in (TrainConfig(batch_size=16, device="cpu"), TrainConfig(batch_size=256, micro_batch=8, device="cpu")):
        assert jobs.within_server_memory(untouched) == untouched  # already within the cap
    # through the Train page's path: the queued run's recorded settings carry the cap
    monkeypatch.setattr(queue, "schedule", lambda *a, **k: [])
    run_dir = jobs.start_run(TrainConfig(arch="plain_cnn", width=0.125, batch_size=64, device="cpu"), tmp_path, "capped")
    assert queue.find(run_dir)[1].config["micro_batch"] == 16
    monkeypatch.setenv("FER_MICRO_BATCH", "lots")
    with pytest.raises(ValueError, match="FER_MICRO_BATCH"):
        settings.micro_batch_cap()


def test_data_roots_and_delete_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from core.data import load_data

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (allowed / "link").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("FER_DATA_ROOTS", str(allowed))
    settings.check_data_path("synthetic")
    settings.check_data_path(allowed / "fer2013")
    for bad in ("/etc", tmp_path / "elsewhere", allowed / "link", allowed / ".." / "elsewhere"):
        with pytest.raises(ValueError, match="only reads data from"):
            settings.check_data_path(bad)
    with pytest.raises(ValueError, match="only reads data from"):  # the app's data entry enforces it
        load_data("/etc")
    monkeypatch.setenv("FER_ALLOW_DELETE", "0")
    with pytest.raises(ValueError, match="FER_ALLOW_DELETE"):
        settings.check_delete_allowed()


def test_queued_run_shows_place_and_can_be_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_MAX_QUEUED", "2")
    states: dict[Path, str] = {}
    cfg = TrainConfig(**TINY)
    blocker = tmp_path / "blocker"
    # A runner whose one launch stays alive: the others wait behind it.
    runner = queue.Runner(lambda c, d, token: states.__setitem__(d, "alive"), lambda d, token: states.get(d, "unlaunched"))
    queue.submit(cfg.to_dict(), blocker, runner, max_alive=1)
    a = queue.submit(cfg.to_dict(), tmp_path / "a", runner, session="s1", max_alive=1)
    b = queue.submit(cfg.to_dict(), tmp_path / "b", runner, session="s1", max_alive=1)
    assert states == {blocker.resolve(): "alive"}
    sa, sb = rundir.run_status(a), rundir.run_status(b)
    assert (sa.status, sa.position, sb.status, sb.position) == ("queued", 1, "queued", 2)
    assert sa.active and sa.config == cfg.to_dict()
    with pytest.raises(ValueError, match=r"already have 2 jobs queued.*\(2, \$FER_MAX_QUEUED\)"):
        queue.submit(cfg.to_dict(), tmp_path / "c", runner, session="s1", max_alive=1)
    with pytest.raises(ValueError, match="already queued"):
        jobs.start_run(cfg, run_dir=a)
    jobs.stop_run(a)  # Stop on a queued run cancels it
    assert queue.find(a) is None and rundir.run_status(b).position == 1
    with pytest.raises(ValueError, match="not waiting"):
        queue.cancel(a)
    states[blocker.resolve()] = "ended"  # the blocker's trainer exited: the next pass launches b
    assert queue.schedule(tmp_path, runner, max_alive=1) == [b.resolve()] and queue.find(b) is None


# The load check is 30 trainings at once; each trainer pays ~9 CPU-seconds of imports, so the default suite
# requests 8 (same code path, same assertions) and `FER_QUEUE_LOAD=30 python -m pytest tests/test_queue.py` runs the
# full check (about 4 minutes on 2 idle cores).
LOAD = int(os.environ.get("FER_QUEUE_LOAD", "8"))


@pytest.mark.slow
def test_many_runs_at_once_never_exceed_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    n = 2
    monkeypatch.setenv("FER_MAX_RUNS", str(n))
    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path))
    cfg = TrainConfig(**TINY)
    run_dirs = [jobs.start_run(cfg, name=f"load-{i:02d}") for i in range(LOAD)]  # what the Train button calls
    sampler = LiveSampler(run_dirs)
    sampler.start()
    queued = [j for j in rundir.list_runs(tmp_path, include_shipped=False) if j.status == "queued"]
    assert len(queued) == LOAD - n and sorted(j.position for j in queued) == list(range(1, LOAD + 1 - n))
    # The Train page renders during the load (its render also runs the queue's scheduler thread) and shows places.
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/3_Train.py").run()
    assert not at.exception
    assert any("in line" in str(getattr(p, "text", "")) for p in at.get("progress"))
    wait_all(run_dirs, timeout=1200, tick=lambda: jobs.schedule_runs(tmp_path))
    sampler.done.set()
    sampler.join()
    at.run()  # and again once it is over
    assert not at.exception
    assert sampler.samples > 20 and 1 <= sampler.peak <= n
    assert [rundir.run_status(d).status for d in run_dirs] == ["done"] * LOAD
    assert [launches(d) for d in run_dirs] == [1] * LOAD  # none lost, none run twice
    order = sorted(run_dirs, key=started_at)
    assert order == run_dirs  # first come, first served
    assert not queue.waiting(tmp_path)


SCHEDULER = """
import sys, time
sys.path.insert(0, {root!r})
from core.service import jobs
from core.training import queue
from core.training.config import TrainConfig
cfg = TrainConfig(**{tiny!r})
if {submit!r}:
    for i in range({k}):
        jobs.start_run(cfg, {runs!r}, f"restart-{{i}}")
print("ready", flush=True)
while True:  # the app's scheduler pass, as its page renders and background thread run it
    jobs.schedule_runs({runs!r})
    time.sleep(0.2)
"""


def test_app_killed_mid_queue_resumes_without_running_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = 5
    env = {**os.environ, "FER_MAX_RUNS": "1", "FER_RUNS_DIR": str(tmp_path)}

    def app(submit: bool) -> subprocess.Popen:
        code = SCHEDULER.format(root=str(ROOT), tiny=TINY, submit=submit, k=k, runs=str(tmp_path))
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)

    first = app(True)
    assert first.stdout.readline().strip() == "ready"
    run_dirs = [tmp_path / f"restart-{i}" for i in range(k)]
    sampler = LiveSampler(run_dirs)
    sampler.start()
    deadline = time.monotonic() + 300
    while rundir.run_status(run_dirs[1]).status == "queued" and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the app dies while run 1 trains and 2.. wait; its trainer lives on
    first.wait()
    assert [rundir.run_status(d).status for d in run_dirs[2:]] == ["queued"] * (k - 2)
    second = app(False)
    try:
        assert second.stdout.readline().strip() == "ready"
        wait_all(run_dirs, timeout=300)
    finally:
        second.kill()
        second.wait()
    sampler.done.set()
    sampler.join()
    assert [rundir.run_status(d).status for d in run_dirs] == ["done"] * k
    assert [launches(d) for d in run_dirs] == [1] * k  # the restarted scheduler launched none a second time
    assert sorted(run_dirs, key=started_at) == run_dirs
    assert sampler.peak == 1  # N = 1 held across the restart
