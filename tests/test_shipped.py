"""The shipped checkpoints: contract, size, coverage, honest records, and the script that retrains them."""
from __future__ import annotations

import importlib.util
import tarfile
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.inference.onnx_io import check_onnx_file
from core.training import checkpoint as ck
from core.training import rundir
from core.training.config import TrainConfig
from core.util.fsutil import PROJECT_ROOT, SHIPPED_DIR

# compression variants (`<parent>--<technique>`, core.compression.compress) have their own tests in test_compress.py
FOLDERS = sorted(p for p in SHIPPED_DIR.iterdir() if p.is_dir() and "--" not in p.name) if SHIPPED_DIR.is_dir() else []
needs_shipped = pytest.mark.skipif(not FOLDERS, reason="no shipped checkpoints in checkpoints/")


def load_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("train_shipped", PROJECT_ROOT / "scripts" / "train_shipped.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_shipped
@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_folder_follows_the_contract(folder: Path) -> None:
    record = rundir.read_record(folder)
    assert record.status in ("done", "stopped") and record.name == folder.name
    # what the issue asks every record to state
    assert record.recipe and record.epochs and record.wall_time_s > 0 and record.device
    assert 0 < record.final.accuracy["public"] <= 1
    for key in ("data", "teacher"):
        value = record.config.get(key)
        assert not value or not Path(value).is_absolute(), f"{key} names a machine's folder: {value}"
    model, _ = ck.load_model(folder)  # weights_only=True inside
    check_onnx_file(folder / rundir.ONNX)
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 48, 48)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(folder / rundir.ONNX), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-3)


@needs_shipped
def test_shipped_set_covers_the_study() -> None:
    records = {f.name: rundir.read_record(f) for f in FOLDERS}
    size = sum(p.stat().st_size for p in SHIPPED_DIR.rglob("*") if p.is_file())
    assert size < 60 * 2**20, f"shipped folders take {size / 2**20:.1f} MB"
    assert len(records) >= 6
    for arch in ("plain_cnn", "mobilenet"):
        widths = {r.model.width for r in records.values() if r.model.arch == arch}
        assert len(widths) >= 3 and 1.0 in widths, (arch, widths)
    params = [r.params for r in records.values()]
    assert min(params) <= 12_000 and max(params) >= 2_900_000
    assert records["plain_cnn-w1"].params == 2_959_943 and records["mobilenet-w1"].params == 109_607


@needs_shipped
def test_retrain_script_reproduces_each_shipped_recipe() -> None:
    """scripts/train_shipped.py holds the exact settings of every shipped run (machine-specific fields aside)."""
    script = load_script()
    machine = {"data", "device", "threads", "subset"}
    for folder in FOLDERS:
        assert folder.name in script.RECIPES and folder.name not in script.NOT_SHIPPED, folder.name
        want = script.config_for(folder.name, "x", "auto", None, None).to_dict()
        # settings added after a run was trained are absent from its record: it trained with their defaults
        got = TrainConfig.from_dict(rundir.read_record(folder).config).to_dict()
        diff = {k: (got.get(k), v) for k, v in want.items() if k not in machine and got.get(k) != v}
        assert not diff, f"{folder.name}: record vs recipe {diff}"


@needs_shipped
def test_recorded_public_accuracy_reproduces_with_onnx_runtime(fer_dir: Path) -> None:
    """Each record's public accuracy (measured in PyTorch where it trained) holds for the shipped ONNX here."""
    from core.data import load_fer
    from core.training.runs import evaluate_path

    data = load_fer(fer_dir)
    for folder in FOLDERS:
        recorded = rundir.read_record(folder).final.accuracy["public"]
        measured = evaluate_path(folder, data, ["public"])["public"]["accuracy"]
        # GPU and CPU kernels round differently; a handful of near-tied images may flip
        assert abs(measured - recorded) <= 0.002, (folder.name, recorded, measured)


def test_budget_sizes_epochs_to_the_time_given() -> None:
    script = load_script()
    cfg = TrainConfig(arch="mobilenet", width=0.25, data="synthetic", synthetic_size=600, batch_size=32, epochs=40,
                      device="cpu", threads=1)
    many, timing = script.epochs_for_budget(cfg, budget_s=3600)
    assert many == 40 and timing["step_s"] > 0 and timing["epoch_s"] > timing["step_s"]
    few, timing = script.epochs_for_budget(cfg, budget_s=script.FINISH_S + timing["probe_s"] + 3 * timing["epoch_s"])
    assert 1 <= few < 40


def test_pack_splits_results_into_small_tar_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script()
    monkeypatch.setattr(script, "PACK_LIMIT", 1000)
    runs = tmp_path / "runs"
    for name in ("a", "b", "c"):
        (runs / name).mkdir(parents=True)
        (runs / name / rundir.WEIGHTS).write_bytes(b"w" * 600)
        (runs / name / rundir.RECORD).write_text("{}")
        (runs / f"{name}.log").write_text("log")
    script.pack(["a", "b", "c", "never-started"], runs, tmp_path / "out")
    tars = sorted((tmp_path / "out").glob("*.tar"))
    assert len(tars) == 3
    names = [n for t in tars for n in tarfile.open(t).getnames()]
    assert sorted(names) == sorted([f"{n}/{f}" for n in "abc" for f in (rundir.WEIGHTS, rundir.RECORD)] + ["a.log", "b.log", "c.log"])
