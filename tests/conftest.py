"""Shared fixtures: temp cache/runs folders, the real FER2013 copy (skipped when absent), one tiny trained run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FER_DIR = ROOT.parent / "shared" / "data" / "fer2013"
SAMPLE_PHOTO = ROOT / "tests" / "data" / "astronaut.jpg"


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tests never touch the user's cache or runs folder.
    os.environ["FER_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["FER_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def fer_dir() -> Path:
    if not (FER_DIR / "train").is_dir():
        pytest.skip(f"real FER2013 not found at {FER_DIR} (../shared/data/fer2013 beside the project)")
    return FER_DIR


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of a small model on synthetic data: a real checkpoint folder for the ONNX/photo/CLI tests."""
    from core.config import TrainConfig
    from core.runs import run_training

    run_dir = tmp_path_factory.mktemp("tiny") / "tiny-run"
    cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=600, epochs=2, batch_size=64, lr=3e-3)
    list(run_training(cfg, run_dir))
    return run_dir


def wait_for_status(run_dir: Path, statuses: tuple[str, ...], timeout: float = 240):  # noqa: ANN201
    """Poll a background run (core.jobs) until it reaches one of `statuses`; fail with its log otherwise."""
    import time

    from core import rundir
    from core.rundir import LOG

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rundir.run_status(run_dir)
        if st.status in statuses:
            return st
        time.sleep(0.3)
    log = (run_dir / LOG).read_text() if (run_dir / LOG).exists() else "(no log)"
    raise AssertionError(f"{run_dir.name} never reached {statuses}; last status {st.status}; log:\n{log[-2000:]}")
