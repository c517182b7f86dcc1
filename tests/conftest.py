"""Shared fixtures: temp cache/runs folders, the real FER2013 copy (skipped when absent), one tiny trained run."""
from __future__ import annotations

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
