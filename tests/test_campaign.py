"""The training campaign: its file, its order, its deadline, and a trial killed in one process and resumed in
another."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.service import campaign
from core.training import rundir
from core.util.fsutil import PROJECT_ROOT

TINY = """
[defaults]
data = "synthetic"
synthetic_size = {size}
batch_size = 32
epochs = {epochs}
precision = "fp32"

[[sweep]]
name = "later"
priority = 2
[sweep.fixed]
arch = "mobilenet"
width = 0.25

[[sweep]]
name = "grid"
priority = 1
seeds = 2
[sweep.grid]
width = [0.5, 0.25]
[sweep.fixed]
arch = "mobilenet"
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_order_is_priority_then_seed_then_cost(tmp_path: Path) -> None:
    trials = campaign.load_campaign(write(tmp_path, TINY.format(size=300, epochs=2)))
    assert [t.name for t in trials] == ["grid-w0.25-s0", "grid-w0.5-s0", "grid-w0.25-s1", "grid-w0.5-s1", "later-s0"]
    assert trials[0].config["width"] == 0.25 and trials[0].config["seed"] == 0 and trials[-1].priority == 2
    assert trials[0].cost < trials[1].cost


def test_a_blocks_later_seeds_can_wait_in_a_block_of_the_same_name(tmp_path: Path) -> None:
    """How the committed file puts off plain_cnn-w1's seeds 1 and 2: one name, two priorities, one point."""
    from core.views.campaignviews import points_frame, trials_frame

    split = TINY.format(size=300, epochs=2) + """
[[sweep]]
name = "big"
priority = 1
seeds = [0]
[sweep.fixed]
arch = "mobilenet"
width = 1.0

[[sweep]]
name = "big"
priority = 3
seeds = [1, 2]
[sweep.fixed]
arch = "mobilenet"
width = 1.0
"""
    trials = campaign.load_campaign(write(tmp_path, split))
    names = [t.name for t in trials]
    assert names.index("big-s0") < names.index("grid-w0.25-s1") < names.index("later-s0") < names.index("big-s1")
    assert names[-2:] == ["big-s1", "big-s2"] and len(set(names)) == len(names)
    points = points_frame(trials_frame(trials, tmp_path / "trials"))
    big = points[points["block"] == "big"]
    assert len(big) == 1 and int(big["seeds"].iloc[0]) == 3  # the two blocks pool into one point of three seeds


def test_the_committed_campaign_file_is_valid() -> None:
    """The file the issue asks for: every trial a valid TrainConfig, five widths x two families x three seeds."""
    trials = campaign.load_campaign()
    grid = [t for t in trials if t.block.startswith("grid-")]
    for arch in ("mobilenet", "plain_cnn"):
        widths = {t.config["width"] for t in grid if t.config["arch"] == arch}
        assert len(widths) >= 5, arch
        for w in widths:
            assert len({t.config["seed"] for t in grid if t.config["arch"] == arch and t.config["width"] == w}) >= 3
    assert len({t.name for t in trials}) == len(trials)
    assert all(not os.path.isabs(t.config["data"]) for t in trials)  # the file works on every machine
    names = [t.name for t in trials]  # the levers start before the largest plain width's seeds 1 and 2
    assert names.index("grid-plain_cnn-w1-s0") < names.index("kd-mobilenet-w1-s0") < names.index("grid-plain_cnn-w1-s1")


def test_a_tail_changes_only_the_schedule_of_the_run_it_continues() -> None:
    """A low-LR tail is one change against the shipped weights: every other part of the recipe is the shipped run's
    own, read from its record (the grid's defaults would change its weight decay or dropout on the way)."""
    from core.training.config import TrainConfig

    tails = [t for t in campaign.load_campaign() if t.config.get("init_from")]
    assert tails
    for t in tails:
        shipped = rundir.read_record(PROJECT_ROOT / t.config["init_from"])
        before = TrainConfig.from_dict(shipped.config).to_dict()  # an older record's missing keys: their defaults
        for key in ("arch", "width", "optimizer", "schedule", "batch_size", "augment", "label_smoothing",
                    "weight_decay", "dropout_kind", "ema_decay", "teacher", "erase_prob", "mixup_alpha"):
            assert t.config[key] == before[key], (t.name, key)
        assert TrainConfig.from_dict(t.config).model_knobs() == shipped.model.knobs, t.name
        assert t.config["lr"] < before["lr"]


@pytest.mark.parametrize("text, message", [
    ("[[sweep]]\nname = 'a'\nbogus = 1\n", "a \\[\\[sweep\\]\\] block has a name"),
    ("[[sweep]]\nname = 'a'\npriority = 'high'\n", "priority must be a whole number"),
    ("[defaults]\narch = 'nope'\n[[sweep]]\nname = 'a'\n", "nope"),
    ("[defaults]\nepochs = 2\n", "no \\[\\[sweep\\]\\] blocks"),
    ("[[sweep]]\nname = 'a'\n[sweep.fixed]\nlr = 1\n[[sweep]]\nname = 'a'\n", "two trials are named 'a-s0'"),
    ("this is not toml = = \n", "not a valid TOML"),
    ("[extra]\n", "unknown entries"),
])
def test_bad_campaign_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        campaign.load_campaign(write(tmp_path, text))


def test_missing_campaign_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the campaign file"):
        campaign.load_campaign(tmp_path / "none.toml")


def test_deadline_forms() -> None:
    now = dt.datetime(2026, 12, 3, 18, 0, tzinfo=dt.timezone.utc)
    assert campaign.parse_deadline("+90m", now) == now.timestamp() + 5400
    assert campaign.parse_deadline("+2h", now) == now.timestamp() + 7200
    assert campaign.parse_deadline("20:30", now) == now.replace(hour=20, minute=30).timestamp()
    assert campaign.parse_deadline("17:00", now) == (now.replace(hour=17) + dt.timedelta(days=1)).timestamp()
    assert campaign.parse_deadline("2026-12-04T01:00+00:00", now) == now.replace(day=4, hour=1).timestamp()
    assert campaign.parse_deadline(None, now) is None
    for bad in ("soon", "+-5m", "25:00", "+m"):
        with pytest.raises(ValueError, match="give HH:MM"):
            campaign.parse_deadline(bad, now)


def test_deadline_stops_at_an_epoch_end_when_the_next_epoch_cannot_finish() -> None:
    clock = [0.0]
    d = campaign.Deadline(100.0, clock=lambda: clock[0])
    assert not d()
    clock[0] = 50.0
    d.epoch_done(30.0)  # 50 s left, an epoch takes 30: go on
    assert not d()
    clock[0] = 80.0
    d.epoch_done(30.0)  # 20 s left: the next epoch would be cut, so stop now
    assert d()
    assert campaign.Deadline(None)() is False


def run_cli(args: list[str], **kw: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", "campaign", *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def epochs_done(folder: Path) -> int:
    try:
        return len(json.loads((folder / rundir.RECORD).read_text())["epochs"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_trial_killed_in_one_process_resumes_in_another_to_the_same_result(tmp_path: Path) -> None:
    """SIGKILL mid-trial (no chance to clean up), then the same command in a new process: the trial continues after
    its last finished epoch and ends with the weights and curves of a campaign that was never interrupted."""
    text = TINY.format(size=1500, epochs=4).split("[[sweep]]\nname = \"grid\"")[0]  # the one 'later' trial
    file = write(tmp_path, text)
    common = [str(file), "--threads", "1", "--nice", "0"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = run_cli([*common, "--out", str(killed)])
    trial = killed / "later-s0"
    t0 = time.monotonic()
    while epochs_done(trial) < 1 and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.02)
    assert proc.poll() is None, "the trial finished before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    status = subprocess.run([sys.executable, "-m", "core", "campaign", *common, "--out", str(killed), "--status"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    assert "in progress (epoch " in status and "of 4)" in status and "0 of 1 trials done" in status
    first = epochs_done(trial)
    assert 1 <= first < 4 and (trial / rundir.RESUME).exists()

    resumed = run_cli([*common, "--out", str(killed)])
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert f"resuming after epoch {first}" in log
    uninterrupted = run_cli([*common, "--out", str(whole)])
    assert uninterrupted.wait(timeout=600) == 0
    a, b = (rundir.read_record(d / "later-s0") for d in (killed, whole))
    assert a.status == b.status == "done" and a.resumed_from_epoch == first
    for key in ("lr", "val_acc", "train_loss"):
        assert [getattr(e, key) for e in a.epochs] == [getattr(e, key) for e in b.epochs], key
    wa, wb = (torch.load(d / "later-s0" / rundir.WEIGHTS, weights_only=True) for d in (killed, whole))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (trial / rundir.RESUME).exists()  # a finished trial drops its resume state


def test_deadline_leaves_a_stopped_trial_with_its_resume_state(tmp_path: Path) -> None:
    trials = campaign.load_campaign(write(tmp_path, TINY.format(size=300, epochs=3)))[:2]
    clock = {"calls": 0}

    def fake_deadline_clock() -> float:  # time runs out during the first trial's second epoch
        clock["calls"] += 1
        return 0.0 if clock["calls"] < 12 else 1e9

    lines: list[str] = []
    rows = campaign.run_campaign(trials, tmp_path / "out", campaign.Deadline(1e6, clock=fake_deadline_clock),
                                 log=lines.append)
    first = rows[0]
    assert first.state == "in progress" and 1 <= first.epoch < 3, lines
    assert rundir.read_record(tmp_path / "out" / first.trial.name).status == "stopped"
    assert (tmp_path / "out" / first.trial.name / rundir.RESUME).exists()
    assert rows[1].state == "pending" and any("wait for the next run" in ln for ln in lines)


def test_one_campaign_at_a_time(tmp_path: Path) -> None:
    handle = campaign.lock(tmp_path)
    try:
        with pytest.raises(ValueError, match="already running"):
            campaign.lock(tmp_path)
    finally:
        handle.close()


def test_cli_refuses_bad_flags(tmp_path: Path) -> None:
    file = write(tmp_path, TINY.format(size=300, epochs=1))
    for extra, message in ((["--deadline", "later"], "give HH:MM"), (["--nice", "40"], "--nice must be"),
                           (["--only", "zzz"], "no trial name contains"), (["--workers", "999"], "--workers must be"),
                           (["--workers", "2"], "--workers needs --background")):
        out = subprocess.run([sys.executable, "-m", "core", "campaign", str(file), "--out", str(tmp_path), *extra],
                             cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_the_gpu_script_runs_the_campaign_file(tmp_path: Path) -> None:
    """scripts/gpu_converge.py (here on the CPU, probe skipped): the campaign's trials in its order, into run
    folders."""
    file = write(tmp_path, TINY.format(size=200, epochs=1))
    out = subprocess.run([sys.executable, "scripts/gpu_converge.py", "--file", str(file), "--out", str(tmp_path / "t"),
                          "--no-probe", "--only", "grid-w0.25"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.index("grid-w0.25-s0: starting") < out.stdout.index("grid-w0.25-s1: starting")
    assert "2 of 2 trials done" in out.stdout
    assert json.loads((tmp_path / "t" / "gpu_converge.json").read_text())["probe"] == []


def test_stop_asks_a_running_campaign_to_stop_cleanly(tmp_path: Path) -> None:
    """`campaign --stop` from another shell: the running trial ends after its batch as at a deadline (stopped,
    evaluated, exported, resumable) and no further trial starts."""
    file = write(tmp_path, TINY.format(size=1500, epochs=20))
    out = tmp_path / "out"
    proc = run_cli([str(file), "--out", str(out), "--threads", "1", "--nice", "0", "--only", "grid-w0.25"])
    first = out / "grid-w0.25-s0"
    t0 = time.monotonic()
    while epochs_done(first) < 1 and proc.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    stop = subprocess.run([sys.executable, "-m", "core", "campaign", str(file), "--out", str(out), "--stop"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and "asked the campaign" in stop.stdout
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log
    record = rundir.read_record(first)
    assert record.status == "stopped" and (first / rundir.RESUME).exists() and (first / rundir.ONNX).exists()
    assert not (out / "grid-w0.25-s1").exists() and "wait for the next run" in log


def test_a_detached_campaign_yields_across_sessions(tmp_path: Path) -> None:
    """A background job is a session of its own, and where Linux groups processes by session (autogroup) a plain
    nice ranks it only inside that session: measured here, a campaign at nice 19 took half of both cores from the
    test suite. lower_priority must lower the session's group as well as the process."""
    from core.util.procs import spawn_detached

    probe = ("import os, pathlib; from core.util.procs import lower_priority; lower_priority(19); "
             "g = pathlib.Path('/proc/self/autogroup'); "
             "print(os.nice(0), g.read_text().split()[-1] if g.exists() else 'none')")
    log = tmp_path / "probe.log"
    autogroup = Path("/proc/self/autogroup")
    ours = autogroup.read_text() if autogroup.exists() else None
    spawn_detached([sys.executable, "-c", probe], log, stdout_path=tmp_path / "out.txt")
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "out.txt").read_text().strip():
        time.sleep(0.2)
    own_nice, group_nice = (tmp_path / "out.txt").read_text().split()
    assert own_nice == "19", log.read_text()
    assert group_nice == ("19" if ours is not None else "none")
    # only the job's own group yielded: the session that started it (this test's) keeps its priority
    assert (autogroup.read_text() if ours is not None else None) == ours


def test_two_workers_share_the_trials_and_never_train_one_twice(tmp_path: Path) -> None:
    """`--background --workers 2`: two processes, one thread each, take the trials in order; a trial one of them
    trains is skipped by the other (its claim is an flock), and every trial is trained once."""
    from core.util.procs import pid_alive

    if (os.cpu_count() or 1) < 2:
        pytest.skip("--workers 2 needs 2 cores")
    file = write(tmp_path, TINY.format(size=200, epochs=2))
    out = tmp_path / "out"
    started = subprocess.run([sys.executable, "-m", "core", "campaign", str(file), "--out", str(out), "--nice", "0",
                              "--background", "--workers", "2", "--deadline", "+10m"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    pids = [int(p) for p in re.search(r"pid ([\d, ]+), log", started.stdout).group(1).split(", ")]
    assert len(pids) == 2, started.stdout
    deadline = time.monotonic() + 300
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    log = (out / campaign.LOG_FILE).read_text()
    names = [t.name for t in campaign.load_campaign(file)]
    assert len(names) == 5 and all(log.count(f"{n}: starting") == 1 for n in names), log
    assert all(campaign.trial_state(t, out).state == "done" for t in campaign.load_campaign(file)), log
    assert (out / campaign.LOCK_FILE).exists() and (out / f"{campaign.LOCK_FILE}.1").exists()  # two workers ran
