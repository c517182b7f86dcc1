"""One queue for all background work: compressions and sweeps wait with trainings under
$FER_MAX_RUNS, count with them under $FER_MAX_QUEUED, and launch exactly once however their launcher dies.

Before, the Compress page and the Train page's sweep form spawned their processes directly: any number ran at once
beside N trainings, no per-user limit held, and their liveness was a pid alone. Real processes throughout: real
trainers, real `python -m core compress` children of the shipped plain_cnn-w0.125, a real launcher SIGKILLed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import slot_taken

from core.compression.compress import CompressConfig
from core.service import compress_jobs, jobs, launcher, sweep
from core.service.compress_jobs import JobStatus
from core.training import queue, rundir
from core.training.config import TrainConfig
from core.util.fsutil import SHIPPED_DIR
from core.util.procs import CRASH_ENV, lock_held, pid_alive

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(arch="plain_cnn", width=0.125, synthetic_size=40, epochs=1, max_steps=1, batch_size=16, threads=1,
            augment=False)
PARENT = SHIPPED_DIR / "plain_cnn-w0.125"  # shipped: nothing to train first
FP16 = dict(int8=False, fp16=True, data="synthetic", repeats=3)  # the quickest technique: ~10 s with the imports


def settle(root: Path, until, timeout: float = 240, every=None) -> None:  # noqa: ANN001 - callables
    """Run scheduler passes (as the app's thread does) until `until()`; `every()` is checked before each pass."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the queue to settle")
        if every:
            every()
        jobs.schedule_runs(root)
        time.sleep(0.2)


def job_log(job: Path) -> tuple[int, int]:
    """(launches, results): launcher.launch writes one '=== ' header into the log right before each spawn, and each
    compression that ran to its end prints one JSON line into its stdout file."""
    log, out = job / compress_jobs.LOG_FILE, job / compress_jobs.RESULT_FILE
    headers = sum(ln.startswith("=== ") for ln in log.read_text().splitlines()) if log.exists() else 0
    results = sum(ln.startswith("{") for ln in out.read_text().splitlines()) if out.exists() else 0
    return headers, results


def test_an_old_entry_without_a_kind_still_launches_as_a_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    # an entry exactly as the queue wrote it before jobs had kinds
    old = {"ticket": "0000000001", "run_dir": str(run_dir.resolve()), "config": TrainConfig(**TINY).to_dict(),
           "session": None, "enqueued": time.time(), "claimed": None, "token": None}
    (queue.queue_dir(tmp_path) / "waiting" / "0000000001.json").write_text(json.dumps(old))
    assert queue.find(run_dir)[1].kind == queue.JobKind.TRAIN
    assert jobs.schedule_runs(tmp_path) == [run_dir.resolve()]
    settle(tmp_path, lambda: queue.claimed(run_dir) is None)
    st = rundir.run_status(run_dir)
    assert st.status == "done", st.error
    assert json.loads((run_dir / rundir.JOB_FILE).read_text())["command"][3] == "train"


@pytest.mark.slow  # a real training, then a real compression after it: 20-30 s on 2 busy cores
def test_a_compression_waits_while_a_training_holds_the_only_slot(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_MAX_RUNS", "1")
    training = jobs.start_run(TrainConfig(**TINY), tmp_path, "training")
    assert rundir.run_status(training).status in ("starting", "running")
    job = compress_jobs.start_job(PARENT, CompressConfig(**FP16), out=tmp_path / "variants", root=tmp_path)
    state = compress_jobs.job_state(job)
    assert (state.status, state.position, state.run, state.techniques) == (JobStatus.QUEUED, 1, str(PARENT), ["fp16"])
    seen_waiting = []

    def check() -> None:
        state = compress_jobs.job_state(job)  # first the job, then the training: only this test's passes launch
        if rundir.run_status(training).active:
            assert state.status == JobStatus.QUEUED, "the compression started beside a live training"
            seen_waiting.append(state.position)

    settle(tmp_path, lambda: compress_jobs.job_state(job).status in (JobStatus.DONE, JobStatus.FAILED), every=check)
    state = compress_jobs.job_state(job)
    assert state.status == JobStatus.DONE, (state.error, (job / compress_jobs.LOG_FILE).read_text()[-1500:])
    assert seen_waiting and set(seen_waiting) == {1}
    assert rundir.run_status(training).status == "done"
    assert [v["name"] for v in state.variants] == ["plain_cnn-w0.125--fp16"]
    assert job_log(job) == (1, 1)


def test_the_per_user_limit_counts_trainings_compressions_and_sweeps_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_MAX_RUNS", "1")
    monkeypatch.setenv("FER_MAX_QUEUED", "3")
    user, cfg = "user-one", CompressConfig(**FP16)
    spec = sweep.SweepSpec("mine", {"width": [0.125, 0.25]}, {k: v for k, v in TINY.items() if k != "width"}, [0])
    with slot_taken(tmp_path):  # someone else's long training: everything below waits (and no sweep starts Ray)
        compression = compress_jobs.start_job(PARENT, cfg, out=tmp_path / "v", root=tmp_path, session=user)
        training = jobs.start_run(TrainConfig(**TINY), tmp_path, "mine", session=user)
        swept = sweep.start_sweep(spec, tmp_path, session=user)
        assert compress_jobs.job_state(compression).position == 1 and rundir.run_status(training).position == 2
        assert [(s["name"], s["state"], s["position"]) for s in sweep.list_sweeps(tmp_path)] == [("mine", "queued", 3)]
        limit = r"already have 3 jobs queued or running \(trainings, compressions and sweeps count together\).*" \
                r"\(3, \$FER_MAX_QUEUED\)"
        # other requests than the three (the same again at once would be a double-click: core.training.queue)
        with pytest.raises(ValueError, match=limit):
            compress_jobs.start_job(PARENT, cfg, out=tmp_path / "w", root=tmp_path, session=user)
        with pytest.raises(ValueError, match=limit):
            jobs.start_run(TrainConfig(**{**TINY, "seed": 1}), tmp_path, "one-more", session=user)
        assert len(list((tmp_path / compress_jobs.JOBS_DIR).iterdir())) == 1  # the refused ones wrote nothing
        assert not (tmp_path / "one-more").exists()
        other = jobs.start_run(TrainConfig(**TINY), tmp_path, "theirs", session="user-two")  # another user's limit
        for cancel in (lambda: compress_jobs.cancel_job(compression), lambda: jobs.stop_run(training),
                       lambda: queue.cancel(swept, tmp_path), lambda: jobs.stop_run(other)):
            cancel()
        assert not queue.waiting(tmp_path) and not compression.exists() and not swept.exists()



def test_a_double_click_queues_one_compression_and_one_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Their folders are named by the time they were asked for, so a second click names a new one: the queue knows
    the request by its command line and files less that folder and name."""
    monkeypatch.setattr(queue, "schedule", lambda *a, **k: [])  # nothing launches: the entries stay waiting
    monkeypatch.setenv("FER_MAX_QUEUED", "0")  # no per-user limit: four jobs wait
    user, cfg = "user-one", CompressConfig(**FP16)
    first = compress_jobs.start_job(PARENT, cfg, out=tmp_path / "v", root=tmp_path, session=user)
    with pytest.raises(jobs.RepeatedStart, match=rf"compression '{first.name}' was just started with these settings"):
        compress_jobs.start_job(PARENT, cfg, out=tmp_path / "v", root=tmp_path, session=user)
    compress_jobs.start_job(PARENT, CompressConfig(**{**FP16, "repeats": 4}), out=tmp_path / "v", root=tmp_path,
                            session=user)  # one setting changed: another job
    grid = {k: v for k, v in TINY.items() if k != "width"}
    sweep.start_sweep(sweep.SweepSpec("sweep-20261208-010101", {"width": [0.125]}, grid, [0]), tmp_path, session=user)
    with pytest.raises(jobs.RepeatedStart, match="sweep 'sweep-20261208-010101' was just started"):  # the next second
        sweep.start_sweep(sweep.SweepSpec("sweep-20261208-010102", {"width": [0.125]}, grid, [0]), tmp_path,
                          session=user)
    sweep.start_sweep(sweep.SweepSpec("sweep-20261208-010103", {"width": [0.25]}, grid, [0]), tmp_path, session=user)
    sweep.start_sweep(sweep.SweepSpec("named", {"width": [0.25]}, grid, [0]), tmp_path, session=user)  # typed
    assert [e.kind for e in queue.waiting(tmp_path)] == ["compress"] * 2 + ["sweep"] * 3

LAUNCHER = """
import sys
sys.path.insert(0, {root!r})
from core.compression.compress import CompressConfig
from core.service import compress_jobs
compress_jobs.start_job({parent!r}, CompressConfig(**{fp16!r}), out={out!r}, root={runs!r})  # dies in its pass
print("not killed", flush=True)
"""


@pytest.mark.parametrize("point", ["after_claim", "after_marker", "after_spawn"])
def test_a_compression_whose_launcher_is_killed_runs_once(point: str, tmp_path: Path) -> None:
    env = {**os.environ, "FER_MAX_RUNS": "1", "FER_RUNS_DIR": str(tmp_path), CRASH_ENV: point}
    code = LAUNCHER.format(root=str(ROOT), parent=str(PARENT), fp16=FP16, out=str(tmp_path / "v"), runs=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    (job,) = (tmp_path / compress_jobs.JOBS_DIR).iterdir()
    seen = {compress_jobs.job_state(job).status}
    assert seen == {JobStatus.RUNNING}  # claimed and not confirmed yet: starting, never 'failed'
    # the app restarts: its passes settle the claimed entry (launch it again, or leave the orphaned child be)
    settle(tmp_path, lambda: not queue.waiting(tmp_path) and queue.claimed(job, tmp_path) is None,
           every=lambda: seen.add(compress_jobs.job_state(job).status))
    for _ in range(5):  # and nothing launches it again afterwards
        jobs.schedule_runs(tmp_path)
    state = compress_jobs.job_state(job)
    assert state.status == JobStatus.DONE, (state.error, (job / compress_jobs.LOG_FILE).read_text()[-1500:])
    assert seen <= {JobStatus.RUNNING, JobStatus.DONE}, seen
    assert job_log(job) == (1, 1)
    assert json.loads((job / compress_jobs.JOB_FILE).read_text())["pid"]  # the one child that ran confirmed it


CHILD = """
import subprocess, sys
sys.path.insert(0, {root!r})
if {keep!r}:
    from core.service.launcher import keep_lock_from_children
    keep_lock_from_children()
grandchild = subprocess.Popen(["sleep", "30"], close_fds=False, start_new_session=True)  # outlives this child
print(grandchild.pid, flush=True)
"""


@pytest.mark.parametrize("keep", [True, False])
def test_a_jobs_lock_does_not_pass_to_the_processes_it_starts(keep: bool, tmp_path: Path) -> None:
    """Ray's workers or any helper a compression or sweep starts must not hold the job's lock after the job ended,
    or the queue would count it alive; without keep_lock_from_children (the CLI's first call) they would."""
    files = launcher.job_files(tmp_path)
    pid = launcher.launch(files, "t1", [sys.executable, "-c", CHILD.format(root=str(ROOT), keep=keep)], {})
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(files.log.read_text().split()[-1])
    try:
        assert pid_alive(grandchild)
        assert lock_held(files.lock) is (not keep)
        assert launcher.launch_state(files, "t1") == ("alive" if not keep else "ended")
    finally:
        os.kill(grandchild, signal.SIGKILL)
