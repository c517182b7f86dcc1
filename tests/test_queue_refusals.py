"""Refused before anything is written: a mistyped server setting, the per-user limit, data outside the allowed roots,
a missing teacher or start-from run. Before, a refused Start left an empty run folder that listed as "Failed: run
record is missing" for everyone, a mistyped $FER_MAX_RUNS said "Could not start" yet queued the run, and a bad data
path or teacher failed only inside the trainer, after it had taken a queue slot (or, from the CLI, left a failed
run folder behind). The app's Start and the CLI's train share one check, core.service.jobs.check_inputs."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.service import jobs
from core.training import queue, rundir
from core.training.config import TrainConfig
from core.util import settings

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(arch="plain_cnn", width=0.125, synthetic_size=40, epochs=1, max_steps=1, batch_size=16, threads=1,
            augment=False)
BAD_SETTINGS = [("FER_MAX_RUNS", "two", "a whole number of at least 1"), ("FER_MAX_RUNS", "0", "at least 1"),
                ("FER_MAX_QUEUED", "three", "0 for no limit"), ("FER_MICRO_BATCH", "-4", "0 or unset"),
                ("FER_ALLOW_DELETE", "maybe", "1, 0"), ("FER_DATA_ROOTS", "/no/such/folder", "existing folders")]


def run_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_SETTINGS, ids=[f"{n}={v}" for n, v, _ in BAD_SETTINGS])
def test_a_mistyped_setting_refuses_the_start_and_queues_nothing(name: str, value: str, allowed: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"\${name}.*{value}.*allowed: .*{allowed}"):
        settings.check_server_settings()
    with pytest.raises(ValueError, match=rf"\${name}"):
        jobs.start_run(TrainConfig(**TINY), tmp_path, "refused")
    assert run_folders(tmp_path) == [] and not queue.waiting(tmp_path)


def test_refused_starts_write_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    allowed, teacher = tmp_path / "data", tmp_path / "not-a-run"
    allowed.mkdir()
    teacher.mkdir()
    monkeypatch.setenv("FER_MAX_QUEUED", "1")
    monkeypatch.setattr(queue, "schedule", lambda *a, **k: [])  # the first run waits: the limit counts it
    root = tmp_path / "runs"
    first = jobs.start_run(TrainConfig(**TINY), root, "first", session="s")
    refusals = [
        (dict(seed=1), r"jobs? queued or running .*, the most this server allows"),  # the per-user limit
        (dict(data="/etc"), r"only reads data from .*\$FER_DATA_ROOTS"),
        (dict(data=str(allowed)), "found no FER2013 data"),
        (dict(teacher="/nonexistent"), r"teacher '/nonexistent' is not a folder; allowed: a trained run folder"),
        (dict(teacher=str(teacher)), r"is not a trained run \(.*run record is missing\)"),
        (dict(init_from="no-such-run"), "no-such-run"),
    ]
    monkeypatch.setenv("FER_DATA_ROOTS", str(allowed))
    for i, (change, message) in enumerate(refusals):
        with pytest.raises(ValueError, match=message):
            jobs.start_run(TrainConfig(**{**TINY, **change}), root, f"refused-{i}", session="s")
    assert run_folders(root) == ["first"] and [e.run_dir for e in queue.waiting(root)] == [first.resolve()]
    assert [(r.name, r.status) for r in rundir.list_runs(root, include_shipped=False)] == [("first", "queued")]


def test_train_page_refusal_shows_the_reason_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    monkeypatch.setenv("FER_MAX_RUNS", "two")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Train.py").run()
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Could not start: $FER_MAX_RUNS must be an integer, got 'two'; allowed:") for e in errors)
    monkeypatch.setenv("FER_MAX_RUNS", "1")
    at.text_input(key="train_teacher").set_value("/nonexistent").run()
    at.button(key="train_start").click().run()
    assert any("Could not start: teacher '/nonexistent' is not a folder" in e.value for e in at.error), at.error
    assert run_folders(root) == [] and not queue.waiting(root)


def test_cli_refuses_bad_inputs_before_making_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    base = [sys.executable, "-m", "core", "train", "--arch", "plain_cnn", "--width", "0.125", "--data", "synthetic",
            "--synthetic-size", "40", "--epochs", "1", "--max-steps", "1", "--out", str(out), "--name", "t"]
    for extra, message in ((["--teacher", "/nonexistent"], "teacher '/nonexistent' is not a folder"),
                           (["--init-from", "/nonexistent"], "/nonexistent")):
        proc = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert run_folders(out) == []


def test_a_repeated_start_is_one_job_whatever_the_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A double-click is two reruns; the guard is the queue's, so it holds across Streamlit sessions and under load
    (a guard in st.session_state once let the browser test start two runs)."""
    monkeypatch.setattr(queue, "schedule", lambda *a, **k: [])  # nothing launches: the entries stay waiting
    monkeypatch.setenv("FER_MAX_QUEUED", "0")  # no per-user limit: every accepted run waits
    root, cfg = tmp_path / "runs", TrainConfig(**TINY)
    first = jobs.start_run(cfg, root, session="browser-a")
    with pytest.raises(jobs.RepeatedStart, match=rf"run '{first.name}' was just started with these settings"):
        jobs.start_run(cfg, root, session="browser-a")  # its default name is new, but it is the same click
    assert run_folders(root) == [first.name]
    jobs.start_run(cfg, root, "typed-a-name", session="browser-a")  # a name typed since: the user asks for another
    jobs.start_run(cfg, root, session="browser-b")  # another browser's identical run is its own
    jobs.start_run(TrainConfig(**{**TINY, "seed": 1}), root, session="browser-a")  # a setting changed
    jobs.start_run(cfg, root, session=None)  # the CLI has no session, and no double-click
    monkeypatch.setattr(jobs, "REPEAT_WINDOW_S", 0.2)
    time.sleep(0.3)  # past the window, the same settings are a new run
    jobs.start_run(cfg, root, session="browser-a")
    assert len(run_folders(root)) == len(queue.waiting(root)) == 6


def test_train_page_says_a_double_click_started_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(queue, "schedule", lambda *a, **k: [])
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("pages/3_Train.py").run()
    at.button(key="train_start").click().run()
    at.button(key="train_start").click().run()  # the second half of a double-click: same browser, same settings
    assert not at.exception and not at.error, (at.exception, at.error)
    assert any(i.value.startswith("Already started: run '") for i in at.info), [i.value for i in at.info]
    assert len(run_folders(tmp_path)) == 1
