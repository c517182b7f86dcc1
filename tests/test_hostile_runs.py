"""Hostile runs: SIGKILL mid-epoch leaves only complete files and resumes from the last finished epoch; two runs at
once both finish; run names cannot escape the runs folder; NaN loss and out-of-memory end a run with the reason
recorded and shown; deleting a run cannot touch shipped checkpoints or anything outside the runs folder."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, wait_for_status
from streamlit.testing.v1 import AppTest

from core.inference.onnx_io import check_onnx_file
from core.service import jobs
from core.training import checkpoint as ck
from core.training import rundir
from core.training.config import TrainConfig
from core.training.runs import run_training
from core.util.fsutil import SHIPPED_DIR, atomic_write_json

TINY = dict(arch="plain_cnn", width=0.125, synthetic_size=300, epochs=1, max_steps=4, batch_size=32, lr=3e-3,
            augment=False, threads=1)


def app(page: str) -> AppTest:
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


wait_for = wait_for_status  # shared helper (conftest); the short name reads better in these tests


# --- SIGKILL mid-epoch ---------------------------------------------------------------------------------------------
KNOWN_FILES = {rundir.RECORD, rundir.WEIGHTS, rundir.RESUME, rundir.ONNX, rundir.PROGRESS_FILE,
               rundir.TRAINER_LOCK}  # the lock a trainer holds while it lives: one trainer per run folder
# core.util.fsutil.atomic_write_bytes: '.<name>.<random>.tmp', renamed when complete
TEMP_FILE = re.compile(r"^\..+\.tmp$")


def test_sigkill_mid_epoch_leaves_complete_files_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "killed"
    # 3,200 training images at batch 16: 200 steps, about 3 s per epoch on 2 busy cores, so the kill lands inside
    # epoch 2 (progress.json is written at most twice a second: its first epoch-2 write comes early in the epoch)
    cmd = [sys.executable, "-m", "core", "train", "--arch", "plain_cnn", "--width", "0.125", "--data", "synthetic",
           "--synthetic-size", "4000", "--epochs", "2", "--batch-size", "16", "--no-augment", "--threads", "1",
           "--run-dir", str(run), "--quiet", "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ((rec := read_json(run / rundir.RECORD)) and rec.get("epochs")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.02)
        while (p := read_json(run / rundir.PROGRESS_FILE)) is None or p["epoch"] < 2:  # a batch of epoch 2 has run
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # nothing half-written looks complete
    record = rundir.read_record(run)
    finished = len(record.epochs)
    progress = read_json(run / rundir.PROGRESS_FILE)
    assert record.status == "running" and finished == 1, (record.status, finished)
    assert progress["epoch"] == 2 and progress["step"] < progress["steps"], progress  # killed mid-epoch
    for f in run.iterdir():
        assert f.name in KNOWN_FILES or TEMP_FILE.match(f.name), f"unexpected file {f.name}"
    assert not (run / rundir.ONNX).exists()  # exported only at the end
    for pt in run.glob("*.pt"):
        state = torch.load(pt, map_location="cpu", weights_only=True)
        assert isinstance(state, dict) and state
    assert ck.load_state_dict(run / rundir.RESUME)["epoch"] == finished
    ck.load_model(run)  # the last finished epoch's weights fit the recorded model
    st = rundir.run_status(run)
    assert st.status == "interrupted" and st.resumable, (st.status, st.error)

    # the same command again continues after the last finished epoch
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout.strip().splitlines()[-1])
    record = rundir.read_record(run)
    assert result["status"] == "done" == record.status
    assert record.resumed_from_epoch == finished
    assert [e.epoch for e in record.epochs] == [1, 2]
    assert not (run / rundir.RESUME).exists()
    check_onnx_file(run / rundir.ONNX)
    (info,) = rundir.list_runs(tmp_path, include_shipped=False)
    assert info.ok and info.has_onnx


# --- two runs at once ----------------------------------------------------------------------------------------------
def test_two_runs_at_once_both_finish_in_separate_folders(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    cfg = TrainConfig(**TINY)
    a = jobs.start_run(cfg, root, "twin-a")
    b = jobs.start_run(cfg, root, "twin-b")  # same settings, started together
    assert a != b and a.parent == b.parent == root
    assert {j.name for j in rundir.list_runs(root, include_shipped=False) if j.active} == {"twin-a", "twin-b"}
    for run in (a, b):
        st = wait_for(run, ("done", "failed", "interrupted", "stopped"))
        assert st.status == "done", st.error
        record = rundir.read_record(run)
        assert record.name == run.name and (run / rundir.ONNX).is_file()
    assert read_json(a / rundir.JOB_FILE)["pid"] != read_json(b / rundir.JOB_FILE)["pid"]
    assert sorted(i.name for i in rundir.list_runs(root, include_shipped=False)
                  if i.ok and i.has_onnx) == ["twin-a", "twin-b"]
    with pytest.raises(ValueError, match="already exists"):  # a finished run is never overwritten
        jobs.start_run(cfg, root, "twin-a")


# --- run names -----------------------------------------------------------------------------------------------------
HOSTILE_NAMES = ["../escape", "..", ".", "/var/evil-run", "/", "a/b", "a\\b", "..\\..\\windows", "a/../../b", "./run",
                 ".hidden", "a..b", "", " ", "name with space", "tab\tname", "new\nline", "nul\x00byte", "ümlaut",
                 "名前", "x" * 81, "-rf", "~root", "$(touch pwned)", "`id`", "run;rm -rf ~",
                 "C:\\evil", "%2e%2e%2fescape"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n)[1:-1][:20] or "empty" for n in HOSTILE_NAMES])
def test_hostile_run_name_is_refused(name: str, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    with pytest.raises(ValueError, match="is not allowed"):
        rundir.check_run_name(name)
    if name:  # an empty name means "make one up" to start_run
        with pytest.raises(ValueError, match="is not allowed"):
            jobs.start_run(TrainConfig(**TINY), root, name)
    assert not root.exists() or not any(root.iterdir())
    assert list(tmp_path.iterdir()) in ([], [root])


def test_good_run_names_are_accepted() -> None:
    for name in ("run-1", "my_run.v2", "A", "x" * 80, "plain_cnn-w0.125-20261128"):
        assert rundir.check_run_name(name) == name


def test_train_page_refuses_hostile_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    at = app("pages/3_Train.py")
    for name in ["../escape", "/var/evil-run", "a/b", "..", ".hidden", "name with space", "$(touch pwned)", "ümlaut",
                 "x" * 81]:
        at.text_input(key="train_name").set_value(name).run()
        assert not at.exception, at.exception
        assert any("not allowed" in e.value for e in at.error), (name, [e.value for e in at.error])
        assert at.button(key="train_start").proto.disabled, name
    assert not any(root.iterdir())
    assert not (root.parent / "escape").exists() and not (tmp_path / "pwned").exists()


def test_cli_refuses_a_hostile_name(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--arch", "plain_cnn", "--data", "synthetic",
                           "--out", str(tmp_path / "runs"), "--name", "../escape"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "'../escape' is not allowed" in proc.stderr
    assert not (tmp_path / "escape").exists()


# --- NaN loss and out of memory ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def failed_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with a background run whose loss becomes NaN, and two in-process runs that run out of memory."""
    root = tmp_path_factory.mktemp("failing") / "runs"
    nan = jobs.start_run(TrainConfig(**{**TINY, "max_steps": None, "lr": 10.0, "optimizer": "sgd"}), root, "nan-run")

    def oom(exc: BaseException):  # noqa: ANN202
        def hook(batch: dict) -> None:
            raise exc
        return hook

    for name, exc in (("oom-host", MemoryError()),
                      ("oom-cuda",
                       RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)"))):
        with pytest.raises(type(exc)):
            list(run_training(TrainConfig(**{**TINY, "threads": None}), root / name, on_batch=oom(exc)))

    def cpu_allocator_fails(batch: dict) -> None:
        torch.empty(10**13)  # 40 TB: PyTorch's real CPU allocation failure

    with pytest.raises(RuntimeError, match="can't allocate memory"):
        list(run_training(TrainConfig(**{**TINY, "threads": None}), root / "oom-torch-cpu",
                          on_batch=cpu_allocator_fails))
    wait_for(nan, ("failed", "done", "interrupted", "stopped"))
    return root


def test_nan_loss_ends_the_run_with_the_reason(failed_runs: Path) -> None:
    st = rundir.run_status(failed_runs / "nan-run")
    assert st.status == "failed" and st.resumable
    assert re.match(r"loss became (nan|inf) at epoch 1 \(by step \d+\): lower the learning rate", st.error), st.error
    assert rundir.read_record(failed_runs / "nan-run").status == "failed"


def test_out_of_memory_ends_the_run_with_the_reason(failed_runs: Path) -> None:
    # A MemoryError, CUDA's message and PyTorch's CPU allocator's message ("can't allocate memory") are all named
    # "out of memory: <the original first line> (<advice>)" in the record.
    for name, original in (("oom-host", "MemoryError"),
                           ("oom-cuda", "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)"),
                           ("oom-torch-cpu", "can't allocate memory")):
        record = rundir.read_record(failed_runs / name)
        assert record.status == "failed", name
        error = record.error
        assert error.startswith("out of memory: ") and error.endswith(" (lower the batch size or width)"), error
        assert original in error and "\n" not in error, error


def test_train_page_shows_why_runs_failed(failed_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_RUNS_DIR", str(failed_runs))
    at = app("pages/3_Train.py")
    errors = [e.value for e in at.error]
    assert any(e.startswith("Failed: loss became") for e in errors), errors
    assert sum(e.startswith("Failed: out of memory: ") for e in errors) == 3, errors  # host, CUDA and CPU allocator
    assert any(e.startswith("Failed: out of memory: ") and "can't allocate memory" in e for e in errors), errors
    assert at.button(key="resume_nan-run")  # a failed run can be started again (e.g. after a fix)


def test_nan_loss_cli_prints_one_line_not_a_traceback(failed_runs: Path) -> None:
    log = (failed_runs / "nan-run" / rundir.LOG).read_text()  # the background run's `core train` stderr
    assert "error: training stopped: loss became" in log and "Traceback" not in log, log[-2000:]


# --- deleting runs -------------------------------------------------------------------------------------------------
def fake_run(path: Path) -> Path:
    path.mkdir(parents=True)
    atomic_write_json(path / rundir.RECORD, {"name": path.name, "status": "failed", "error": "x",
                                             "model": {"arch": "plain_cnn"}})
    (path / "keep.txt").write_text("precious")
    return path


def test_delete_cannot_touch_shipped_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    for target, runs_root in ((SHIPPED_DIR, root), (SHIPPED_DIR / "mobilenet-w1", root),
                              (SHIPPED_DIR / "mobilenet-w1", SHIPPED_DIR)):  # even with the runs folder set to it
        with pytest.raises(ValueError, match="shipped checkpoints are protected"):
            rundir.delete_run(target, runs_root)
    assert SHIPPED_DIR.is_dir()
    # with a real shipped run in place (a stand-in folder, so the repository is never at risk)
    shipped = tmp_path / "checkpoints"
    monkeypatch.setattr(rundir, "SHIPPED_DIR", shipped)
    victim = fake_run(shipped / "plain_cnn-w1")
    (root / "alias").symlink_to(victim, target_is_directory=True)
    for target, runs_root in ((victim, shipped), (victim, root), (root / "alias", root),
                              (root / ".." / "checkpoints" / victim.name, root)):
        with pytest.raises(ValueError):
            rundir.delete_run(target, runs_root)
    assert (victim / "keep.txt").read_text() == "precious"


def test_delete_cannot_escape_the_runs_folder(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    outside = fake_run(tmp_path / "outside")
    inner = fake_run(root / "inner")
    (root / "link").symlink_to(outside, target_is_directory=True)
    targets = [root / "link", root / ".." / "outside", root / "inner" / ".." / ".." / "outside", outside, root,
               root.parent, root / "inner" / "keep.txt", Path("/"), root / "inner" / "sub"]
    (root / "inner" / "sub").mkdir()
    for target in targets:
        with pytest.raises(ValueError):
            rundir.delete_run(target, root)
    assert (outside / "keep.txt").read_text() == "precious" and (inner / "keep.txt").exists()
    # a symlink inside a run folder is removed, never followed
    (inner / "escape").symlink_to(outside, target_is_directory=True)
    rundir.delete_run(inner, root)
    assert not inner.exists() and (outside / "keep.txt").read_text() == "precious"


def test_compare_page_delete_is_confined(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "checkpoints"
    shutil.copytree(tiny_run, shipped / "shipped-model")
    monkeypatch.setattr(rundir, "SHIPPED_DIR", shipped)
    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "mine")
    shutil.copytree(tiny_run, tmp_path / "elsewhere")
    (root / "sneaky").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    at = app("pages/4_Compare.py")
    pick = at.selectbox(key="compare_delete_pick")
    assert "shipped-model" not in pick.options and {"mine", "sneaky"} <= set(pick.options)
    pick.set_value("sneaky").run()
    at.checkbox(key="compare_delete_confirm_sneaky").check().run()
    at.button(key="compare_delete").click().run()
    assert not at.exception, at.exception
    assert any("Could not delete sneaky" in e.value and "symbolic link" in e.value
               for e in at.error), [e.value for e in at.error]
    assert ((tmp_path / "elsewhere" / rundir.WEIGHTS).is_file()
            and (shipped / "shipped-model" / rundir.WEIGHTS).is_file())
    at.selectbox(key="compare_delete_pick").set_value("mine").run()
    at.checkbox(key="compare_delete_confirm_mine").check().run()
    at.button(key="compare_delete").click().run()
    assert not at.exception, at.exception
    assert not (root / "mine").exists() and any(s.value == "Deleted mine." for s in at.success)
    assert ((tmp_path / "elsewhere" / rundir.WEIGHTS).is_file()
            and (shipped / "shipped-model" / rundir.WEIGHTS).is_file())


def test_damaged_job_and_progress_files_do_not_crash_the_train_page(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    cfg = TrainConfig(**TINY).to_dict()
    damage = {  # run name: (job.json, progress.json, run.json changes)
        "job-wrong-types": ({"pid": "1234", "started_unix": "yesterday", "started": 5, "config": [1, 2]}, None, None),
        "job-truncated": ('{"pid": 12', None, None),
        "progress-wrong-types": (None, {"epoch": "one", "steps": None, "loss": "low"}, {}),
        "progress-truncated": (None, '{"epoch": 1, "ste', {}),
        "huge-pid": (None, None, {"pid": 10**30}),
        "bad-config": (None, None, {"config": {"arch": ["plain_cnn"], "epochs": "many"}}),
    }
    for name, (job, progress, record) in damage.items():
        run = root / name
        run.mkdir(parents=True)
        for fname, content in ((rundir.JOB_FILE, job), (rundir.PROGRESS_FILE, progress)):
            if content is not None:
                (run / fname).write_text(content if isinstance(content, str) else json.dumps(content))
        if record is not None:
            atomic_write_json(run / rundir.RECORD, {"name": name, "status": "running", "model": {"arch": "plain_cnn"},
                                  "config": cfg, "epochs": [], "pid": 2**22 + 7, **record})
    statuses = {j.name: j for j in rundir.list_runs(root, include_shipped=False)}
    assert set(statuses) == set(damage)
    assert statuses["huge-pid"].status == "interrupted"
    assert statuses["progress-wrong-types"].progress is None and statuses["progress-truncated"].progress is None
    assert not statuses["bad-config"].resumable  # settings that cannot be rebuilt are not relaunched
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    at = app("pages/3_Train.py")
    assert not at.exception, at.exception
    assert all(any(name in m.value for m in at.markdown) for name in damage)
