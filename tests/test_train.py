"""Training engine: learns on synthetic data, checkpoints round-trip, resume continues, stop ends cleanly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core import rundir
from core import checkpoint as ck
from core.config import TrainConfig
from core.record import RunRecord
from core.data import Split
from core.runs import run_training
from core.synthetic import synthetic_dataset
from core.train import lr_at, resolve_device, stratified_subset

# Measured: dropout 0.1 and batch 32 learn visibly in 3 epochs of 1,600 synthetic faces (the default 0.5 does not).
QUICK = dict(arch="plain_cnn", width=0.25, dropout=0.1, synthetic_size=2000, batch_size=32, lr=1e-3)


def test_short_training_beats_chance(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, **QUICK)
    history = list(run_training(cfg, tmp_path / "run"))
    assert [m["epoch"] for m in history] == [1, 2, 3]
    record = rundir.read_record(tmp_path / "run")
    assert record.status == "done"
    # 7 classes, the largest 22%: well above chance on held-out synthetic faces
    assert record.final.accuracy["val"] > 0.40
    assert record.final.accuracy["val"] < 1.0
    for key in ("params", "macs", "size_bytes", "config", "epochs", "wall_time_s", "device", "versions", "data"):
        assert key in record.to_json()
    assert record.params == sum(p.numel() for p in ck.load_model(tmp_path / "run")[0].parameters())
    for m in history:
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(m)


def test_checkpoint_round_trip(tiny_run: Path) -> None:
    model, record = ck.load_model(tiny_run)
    state = torch.load(tiny_run / rundir.WEIGHTS, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    x = torch.randint(0, 256, (4, 1, 48, 48)).float()
    fresh, _ = ck.load_model(tiny_run)
    torch.testing.assert_close(model(x), fresh(x))
    assert not (tiny_run / rundir.RESUME).exists()  # removed once the run is done
    assert (tiny_run / rundir.ONNX).is_file()


def test_resume_continues_from_last_epoch(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, **{**QUICK, "synthetic_size": 600})
    run = tmp_path / "run"
    gen = run_training(cfg, run)
    next(gen)  # one epoch finished and saved
    gen.close()  # the process "dies" here
    assert (run / rundir.RESUME).exists() and rundir.read_record(run).status == "running"
    history = list(run_training(cfg, run))
    assert [m["epoch"] for m in history] == [2, 3]
    record = rundir.read_record(run)
    assert record.status == "done" and [e.epoch for e in record.epochs] == [1, 2, 3]
    assert record.resumed_from_epoch == 1


def test_resume_refuses_different_settings(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, **{**QUICK, "synthetic_size": 600})
    gen = run_training(cfg, tmp_path / "run")
    next(gen)
    gen.close()
    with pytest.raises(ValueError, match="different settings"):
        list(run_training(TrainConfig(epochs=2, **{**QUICK, "synthetic_size": 600, "lr": 1e-2}), tmp_path / "run"))


def test_stop_request_ends_within_a_batch(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=5, **{**QUICK, "synthetic_size": 600})
    batches: list[dict] = []
    stop_after = 25  # 15 steps per epoch: stop inside epoch 2

    history = list(run_training(cfg, tmp_path / "run", on_batch=batches.append, should_stop=lambda: len(batches) >= stop_after))
    assert len(batches) == stop_after  # no batch ran after the request
    assert [m["epoch"] for m in history] == [1]
    record = rundir.read_record(tmp_path / "run")
    assert record.status == "stopped" and (tmp_path / "run" / rundir.ONNX).exists()


def test_stop_file_from_another_process(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, **{**QUICK, "synthetic_size": 600})
    run = tmp_path / "run"

    def touch_stop(b: dict) -> None:
        if b["epoch"] == 2:
            (run / rundir.STOP_FILE).touch()

    history = list(run_training(cfg, run, on_batch=touch_stop))
    assert len(history) == 1 and rundir.read_record(run).status == "stopped"
    assert not (run / rundir.STOP_FILE).exists()


def test_nan_loss_is_recorded(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, **{**QUICK, "synthetic_size": 300, "lr": 10.0, "optimizer": "sgd"})
    with pytest.raises(Exception):
        list(run_training(cfg, tmp_path / "run", on_batch=lambda b: None))
    record = json.loads((tmp_path / "run" / rundir.RECORD).read_text())
    assert record["status"] == "failed" and "loss" in record["error"]


def test_distillation_runs(tiny_run: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, arch="mobilenet", width=0.25, synthetic_size=300, batch_size=64, teacher=str(tiny_run))
    history = list(run_training(cfg, tmp_path / "student"))
    assert len(history) == 1 and "distilled" in rundir.read_record(tmp_path / "student").recipe


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="unknown architecture"):
        TrainConfig(arch="nope")
    assert TrainConfig.from_dict(TrainConfig(width=0.5).to_dict()) == TrainConfig(width=0.5)


def test_device_auto_and_missing_cuda() -> None:
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")


def test_cosine_schedule_and_warmup() -> None:
    cfg = TrainConfig(lr=1.0, epochs=10, warmup_epochs=1)
    assert lr_at(cfg, 0, 100, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 10, 100, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 100, 10) == pytest.approx(0.0)


def test_stratified_subset_keeps_balance() -> None:
    data = synthetic_dataset(2000)
    sub = stratified_subset(data.splits["train"], 700, 0)
    full = data.splits["train"].class_counts() / len(data.splits["train"])
    assert len(sub) == 700 and abs(sub.class_counts() / 700 - full).max() < 0.02
    assert isinstance(sub, Split)


def test_ship_run_copies_contract_files_with_relative_paths(tiny_run: Path, tmp_path: Path) -> None:
    from core.fsutil import PROJECT_ROOT
    from core.runs import ship_run

    dest = ship_run(tiny_run, tmp_path / "shipped" / "tiny")
    assert sorted(p.name for p in dest.iterdir()) == sorted([rundir.WEIGHTS, rundir.ONNX, rundir.RECORD])
    record = rundir.read_record(dest)
    assert record.name == "tiny" and "pid" not in record.to_json() and record.config["data"] == "synthetic"
    model, _ = ck.load_model(dest)
    x = torch.randint(0, 256, (2, 1, 48, 48)).float()
    torch.testing.assert_close(model(x), ck.load_model(tiny_run)[0](x))
    # an absolute data path becomes relative to the project
    original = rundir.read_record(tiny_run)
    rec = json.loads(json.dumps(original.to_json()))
    rec["config"]["data"] = rec["data"]["source"] = str(PROJECT_ROOT.parent / "shared" / "data" / "fer2013")
    rundir.write_record(tiny_run, RunRecord.from_json(rec))
    try:
        shipped = rundir.read_record(ship_run(tiny_run, tmp_path / "shipped" / "tiny2"))
        assert shipped.config["data"] == shipped.data["source"] == "../shared/data/fer2013"
    finally:
        rundir.write_record(tiny_run, original)


def test_ship_refuses_unfinished(tmp_path: Path) -> None:
    from core.runs import ship_run

    cfg = TrainConfig(epochs=2, **{**QUICK, "synthetic_size": 300})
    gen = run_training(cfg, tmp_path / "run")
    next(gen)
    gen.close()
    with pytest.raises(ValueError, match="only finished or stopped runs"):
        ship_run(tmp_path / "run", tmp_path / "dest")
