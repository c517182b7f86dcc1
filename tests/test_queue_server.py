"""The queue moves with the app server alone: a real `streamlit run` process that no browser ever opens launches the
waiting runs, also after it was SIGKILLed mid-queue and started again (before, only a render of the Train page
started the scheduler, so after a restart the queue stood still until someone opened it). A mistyped server setting
is said once in the server's log instead of being swallowed every second."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.service import jobs
from core.training import queue, rundir
from core.training.config import TrainConfig
from core.util.procs import lock_held

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(arch="plain_cnn", width=0.125, synthetic_size=40, epochs=1, max_steps=1, batch_size=16, threads=1,
            augment=False)
# The check is 30 runs through 2 slots; each trainer costs ~8 CPU-seconds of imports, so the default suite
# queues 5 (same path, same assertions) and FER_QUEUE_LOAD=30 runs the full check.
LOAD = int(os.environ.get("FER_QUEUE_LOAD", "5"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(runs: Path, log: Path, **env: str) -> subprocess.Popen:
    """`streamlit run streamlit_app.py`, headless, on a free port; nothing here ever connects to it."""
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
           "--server.port", str(free_port()), "--server.address", "127.0.0.1"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "FER_RUNS_DIR": str(runs), **env})


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no shutdown hook runs: a crash, an OOM kill
    proc.wait()


def wait_until(what: str, check, timeout: float = 300) -> None:  # noqa: ANN001 - a callable returning bool
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def statuses(run_dirs: list[Path]) -> list[str]:
    return [rundir.run_status(d).status for d in run_dirs]


def launches(run_dir: Path) -> int:
    log = run_dir / rundir.LOG
    return sum(line.startswith("=== ") for line in log.read_text().splitlines()) if log.exists() else 0


class LiveSampler(threading.Thread):
    """The most trainers alive at once (each holds its run folder's trainer lock), sampled every 50 ms."""

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__(daemon=True)
        self.run_dirs, self.peak, self.done = run_dirs, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, sum(lock_held(d / rundir.TRAINER_LOCK) for d in self.run_dirs))
            time.sleep(0.05)


def test_server_alone_runs_the_queue_across_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs, log = tmp_path / "runs", tmp_path / "server.log"
    with monkeypatch.context() as m:  # queued while no scheduler runs (the app was down)
        m.setattr(queue, "schedule", lambda *a, **k: [])
        run_dirs = [jobs.start_run(TrainConfig(**TINY), runs, f"q-{i:02d}") for i in range(LOAD)]
    assert statuses(run_dirs) == ["queued"] * LOAD

    # A mistyped setting: the server says so in its log, once, however many passes fail; nothing launches.
    bad = serve(runs, log, FER_MAX_RUNS="two")
    try:
        wait_until("the log line", lambda: "cannot launch runs" in log.read_text())
        time.sleep(3)  # three more passes at one a second, each failing the same way
    finally:
        kill(bad)
    said = [ln for ln in log.read_text().splitlines() if "cannot launch runs" in ln]
    assert len(said) == 1 and "$FER_MAX_RUNS must be an integer, got 'two'; allowed:" in said[0], said
    assert statuses(run_dirs) == ["queued"] * LOAD

    sampler = LiveSampler(run_dirs)
    sampler.start()
    first = serve(runs, log, FER_MAX_RUNS="2")
    try:  # killed mid-queue: some done, some still waiting
        wait_until("a first run done", lambda: "done" in statuses(run_dirs))
    finally:
        kill(first)
    assert queue.waiting(runs), "the queue finished before the kill; raise FER_QUEUE_LOAD"
    second = serve(runs, log, FER_MAX_RUNS="2")  # and again nothing opens a page
    try:
        wait_until("every run done", lambda: statuses(run_dirs) == ["done"] * LOAD, timeout=600)
    finally:
        kill(second)
        sampler.done.set()
    assert 1 <= sampler.peak <= 2  # FER_MAX_RUNS held across the restart
    assert [launches(d) for d in run_dirs] == [1] * LOAD  # none lost, none twice
    order = sorted(run_dirs, key=lambda d: rundir.read_job(d)["started_unix"])
    assert order == run_dirs  # first come, first served across the restart
    assert "Traceback" not in log.read_text()
