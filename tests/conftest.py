"""Shared fixtures: temp cache/runs folders, the real FER2013 copy (skipped when absent), one tiny trained run."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # on sys.path through pyproject.toml's pytest pythonpath
# Where the FER2013 tests look for the real data set, first match wins: $FER_DATA (any format core.data reads),
# the project's data/ folder (core.data.find_local_fer, as the app does), then the shared copy beside the project.
FER_DATA_ENV = "FER_DATA"
SHARED_FER_DIR = ROOT.parent / "shared" / "data" / "fer2013"
SAMPLE_PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"
# The real photos with their manifest, for the face detector's recall: $FER_PHOTOS, else ../shared/photos.
PHOTOS_DIR = Path(os.environ.get("FER_PHOTOS") or ROOT.parent / "shared" / "photos")
pytest_plugins = ["skipguard"]  # under CI, a skip off its allow-list fails the run

# Under pytest-xdist (the default, pyproject.toml) each worker and every process it starts (trainers, the app, Ray)
# computes on one thread: two processes of two OpenMP threads each on a 2-core machine wait on each other's
# preempted threads (one epoch of the quick test training took 39 s instead of 3.5 s beside a trainer). Set before
# anything imports torch; an explicit $OMP_NUM_THREADS wins.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never touch the user's cache or runs folder.
    os.environ["FER_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["FER_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))


def find_fer2013() -> tuple[Path | None, str]:
    """(the FER2013 copy the tests use, or None; where it was looked for). A $FER_DATA that holds no readable
    FER2013 is an error, not a skip: whoever set it expects those tests to run."""
    from core.data import find_local_fer, resolve_source

    if os.environ.get(FER_DATA_ENV):
        given = Path(os.environ[FER_DATA_ENV]).expanduser()
        try:
            resolve_source(given)
        except ValueError as err:
            pytest.fail(f"${FER_DATA_ENV} does not point at FER2013: {err}")
        return given, f"${FER_DATA_ENV}"
    local = find_local_fer(ROOT)
    if local is not None:
        return local, "the project's data/ folder"
    try:
        resolve_source(SHARED_FER_DIR)
        return SHARED_FER_DIR, "../shared/data/fer2013"
    except ValueError:
        return None, f"${FER_DATA_ENV} (unset), {ROOT / 'data'} and {SHARED_FER_DIR}"


@pytest.fixture(scope="session")
def fer_dir() -> Path:
    """The real FER2013 (every test that needs it takes this fixture); skips, saying where it looked, when absent."""
    found, where = find_fer2013()
    if found is None:
        pytest.skip(f"real FER2013 not found: looked in {where}; set ${FER_DATA_ENV} to a copy to run this test")
    return found


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of a small model on synthetic data: a real checkpoint folder for the ONNX/photo/CLI tests."""
    from core.training.config import TrainConfig
    from core.training.runs import run_training

    run_dir = tmp_path_factory.mktemp("tiny") / "tiny-run"
    cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=600, epochs=2, batch_size=64, lr=3e-3)
    list(run_training(cfg, run_dir))
    return run_dir


def wait_for_status(run_dir: Path, statuses: tuple[str, ...], timeout: float = 240):  # noqa: ANN201
    """Poll a background run (core.service.jobs) until it reaches one of `statuses`; fail with its log otherwise."""
    import time

    from core.training import rundir
    from core.training.rundir import LOG

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rundir.run_status(run_dir)
        if st.status in statuses:
            return st
        time.sleep(0.3)
    log = (run_dir / LOG).read_text() if (run_dir / LOG).exists() else "(no log)"
    raise AssertionError(f"{run_dir.name} never reached {statuses}; last status {st.status}; log:\n{log[-2000:]}")


@contextlib.contextmanager
def slot_taken(root: Path):  # noqa: ANN201 - yields the blocking run's folder
    """With $FER_MAX_RUNS=1, a long real training in `root` that holds the only slot, so that every job queued
    meanwhile waits. On exit, what still waits is cancelled first (a sweep must not start Ray), then the training
    is killed and the queue settles."""
    import time

    from core.service import jobs
    from core.training import queue, rundir
    from core.training.config import TrainConfig
    from core.util.procs import lock_held

    blocker = jobs.start_run(TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=40, epochs=1000, batch_size=16,
                                         threads=1, augment=False), root, "blocker")
    try:
        yield blocker
    finally:
        for entry in queue.waiting(root):
            queue.cancel(entry.run_dir, root)
        with contextlib.suppress(ValueError):  # it failed or ended already
            jobs.stop_run(blocker, kill=True)
        deadline = time.monotonic() + 120
        while (lock_held(blocker / rundir.TRAINER_LOCK) or queue.claimed(blocker)) and time.monotonic() < deadline:
            jobs.schedule_runs(root)
            time.sleep(0.2)
