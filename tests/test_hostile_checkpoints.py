"""Hostile checkpoints: a .pt whose unpickling would run code never runs it; run folders with missing, truncated or
malformed records, weights or ONNX files are listed as broken with the reason and never crash Compare, Predict or
Train; ONNX files that break the contract get a clear error in core, on Predict and in the CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import ROOT, SAMPLE_PHOTO
from streamlit.testing.v1 import AppTest
from torch import nn

from core.inference.onnx_io import OnnxClassifier, check_onnx_file
from core.inference.photo import analyze_photo
from core.training import checkpoint as ck
from core.training import rundir
from core.training.config import TrainConfig
from core.training.runs import run_training
from core.util.classes import CLASSES
from core.util.fsutil import atomic_write_json


class Payload:
    """Unpickling this calls os.system(cmd): what a booby-trapped checkpoint downloaded from the internet does."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (self.cmd,))


def evil_weights(path: Path, sentinel: Path, legacy: bool = False) -> Path:
    state = {"features.0.weight": torch.zeros(1), "trap": Payload(f"touch {sentinel}")}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip format", "legacy pickle format"])
def test_the_crafted_file_really_runs_code_when_loaded_unsafely(tmp_path: Path, legacy: bool) -> None:
    """Proof that the payload is live (in a throwaway process): the safe-load tests below test something real."""
    sentinel = tmp_path / "PWNED"
    path = evil_weights(tmp_path / "evil.pt", sentinel, legacy)
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120, check=False)
    assert sentinel.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip format", "legacy pickle format"])
def test_malicious_weights_never_run(tiny_run: Path, tmp_path: Path, legacy: bool) -> None:
    sentinel = tmp_path / "PWNED"
    run = tmp_path / "evil-run"
    shutil.copytree(tiny_run, run)
    evil_weights(run / rundir.WEIGHTS, sentinel, legacy)
    with pytest.raises(ValueError, match="not a loadable weights file") as err:
        ck.load_model(run)
    assert str(run / rundir.WEIGHTS) in str(err.value)
    with pytest.raises(ValueError, match="not a loadable weights file"):
        ck.load_state_dict(run / rundir.WEIGHTS)
    infos = rundir.list_runs(tmp_path, include_shipped=False)  # listing inspects without unpickling
    assert [i.name for i in infos] == ["evil-run"]
    assert not sentinel.exists()


def test_malicious_resume_state_and_cli_export_never_run(tiny_run: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "PWNED"
    cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=100, epochs=2, batch_size=32, augment=False)
    run = tmp_path / "interrupted"
    run.mkdir()
    atomic_write_json(run / rundir.RECORD, {"name": "interrupted", "status": "running",
                          "model": {"arch": "plain_cnn", "knobs": {}}, "config": cfg.to_dict(), "epochs": []})
    evil_weights(run / rundir.RESUME, sentinel)
    with pytest.raises(ValueError, match="not a loadable weights file"):
        list(run_training(cfg, run))
    assert rundir.read_record(run).status == "failed"

    exported = tmp_path / "to-export"
    shutil.copytree(tiny_run, exported)
    evil_weights(exported / rundir.WEIGHTS, sentinel)
    proc = subprocess.run([sys.executable, "-m", "core", "export", str(exported)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a loadable weights file" in proc.stderr and str(exported / rundir.WEIGHTS) in proc.stderr
    assert not sentinel.exists()


# --- broken run folders ------------------------------------------------------------------------------------------
def _export(model: nn.Module, path: Path, example: torch.Tensor, dynamic: bool = True) -> Path:
    torch.onnx.export(model.eval(), (example,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}} if dynamic else None, dynamo=False)
    return path


@pytest.fixture(scope="module")
def contract_breakers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files with the right names but the wrong shapes."""
    d = tmp_path_factory.mktemp("breakers")
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    five = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 5))
    seven = nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 7))
    return {
        "input": _export(rgb, d / "rgb_input.onnx", torch.zeros(2, 3, 48, 48)),
        "output": _export(five, d / "five_classes.onnx", torch.zeros(2, 1, 48, 48)),
        "batch": _export(seven, d / "fixed_batch.onnx", torch.zeros(1, 1, 48, 48), dynamic=False),
    }


def _edit_record(run: Path, change: Callable[[dict], None]) -> None:
    record = json.loads((run / rundir.RECORD).read_text())
    change(record)
    (run / rundir.RECORD).write_text(json.dumps(record))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


# case: (break a copy of a good run folder, which field reports it ('problem' = unusable, 'onnx' = left out of
# Predict only), what the reason must say)
BROKEN: dict[str, tuple[Callable[[Path, dict], None], str, str]] = {
    "record-missing": (lambda r, b: (r / rundir.RECORD).unlink(), "problem", "run record is missing"),
    "record-truncated": (lambda r, b: _truncate(r / rundir.RECORD), "problem", "not valid JSON"),
    "record-binary": (lambda r, b: (r / rundir.RECORD).write_bytes(b"\xff\xfe\x00\x89PNG garbage"), "problem",
                      "not valid JSON"),
    "record-deeply-nested": (lambda r, b: (r / rundir.RECORD).write_text("[" * 200_000), "problem",
                             "nested too deeply"),
    "record-is-a-folder": (lambda r, b: _replace_dir(r / rundir.RECORD), "problem", "cannot be read"),
    "record-is-a-list": (lambda r, b: (r / rundir.RECORD).write_text("[1, 2, 3]"), "problem", "no model description"),
    "record-without-model": (lambda r, b: _edit_record(r, lambda d: d.pop("model")), "problem", "no model description"),
    "record-params-text": (lambda r, b: _edit_record(r, lambda d: d.update(params="lots")), "problem",
                           "'params' must be a whole number"),
    "record-epochs-number": (lambda r, b: _edit_record(r, lambda d: d.update(epochs=3)), "problem",
                             "'epochs' must be a list"),
    "record-epoch-without-loss": (lambda r, b: _edit_record(r, lambda d: d["epochs"][0].pop("val_loss")), "problem",
                                  "'epochs[0]' must hold"),
    "record-bad-confusion": (lambda r, b: _edit_record(r,
                                                       lambda d: d["final"]["confusion"].update(val=[[1, 2], [3, 4]])),
                             "problem", "'final.confusion.val' must be a 7x7 table"),
    "record-accuracy-text": (lambda r, b: _edit_record(r, lambda d: d["final"]["accuracy"].update(val="high")),
                             "problem", "'final.accuracy.val' must be a number"),
    "record-knobs-text": (lambda r, b: _edit_record(r, lambda d: d["model"].update(knobs={"width": "wide"})), "problem",
                          "'model.knobs' must map names to numbers"),
    "record-unknown-status": (lambda r, b: _edit_record(r, lambda d: d.update(status="exploded")), "problem",
                              "'status' must be one of"),
    "weights-missing": (lambda r, b: (r / rundir.WEIGHTS).unlink(), "problem", "weights file is missing"),
    "weights-empty": (lambda r, b: (r / rundir.WEIGHTS).write_bytes(b""), "problem", "weights file is empty"),
    "weights-truncated": (lambda r, b: _truncate(r / rundir.WEIGHTS), "problem", "truncated or corrupt"),
    "weights-garbage": (lambda r, b: (r / rundir.WEIGHTS).write_text("definitely not tensors"), "problem",
                        "not a loadable weights file"),
    "onnx-missing": (lambda r, b: (r / rundir.ONNX).unlink(), "onnx", "ONNX export is missing"),
    "onnx-empty": (lambda r, b: (r / rundir.ONNX).write_bytes(b""), "onnx", "empty (0 bytes)"),
    "onnx-truncated": (lambda r, b: _truncate(r / rundir.ONNX), "onnx", "not a loadable ONNX model"),
    "onnx-garbage": (lambda r, b: (r / rundir.ONNX).write_text("<html>404 Not Found</html>"), "onnx",
                     "not a loadable ONNX model"),
    "onnx-wrong-input": (lambda r, b: shutil.copy(b["input"], r / rundir.ONNX), "onnx",
                         "input shape must be [N, 1, 48, 48]"),
    "onnx-wrong-output": (lambda r, b: shutil.copy(b["output"], r / rundir.ONNX), "onnx",
                          "output shape must be [N, 7]"),
    "onnx-fixed-batch": (lambda r, b: shutil.copy(b["batch"], r / rundir.ONNX), "onnx",
                         "batch dimension of the input must be dynamic"),
}


def make_broken(root: Path, case: str, tiny_run: Path, breakers: dict[str, Path]) -> Path:
    run = root / case
    shutil.copytree(tiny_run, run)
    BROKEN[case][0](run, breakers)
    return run


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_is_listed_with_its_reason(case: str, tiny_run: Path, contract_breakers: dict[str, Path],
                                                 tmp_path: Path) -> None:
    run = make_broken(tmp_path, case, tiny_run, contract_breakers)
    _, field, fragment = BROKEN[case]
    (info,) = rundir.list_runs(tmp_path, include_shipped=False)
    assert info.path == run
    if field == "problem":
        assert not info.ok and fragment in info.problem and str(run) in info.problem, info.problem
    else:  # the record and weights are fine: it stays on Compare, but Predict cannot use its model
        assert info.ok and not info.has_onnx, info
        assert fragment in info.onnx_problem and str(run / rundir.ONNX) in info.onnx_problem, info.onnx_problem


def test_good_folder_has_no_problem(tiny_run: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_run, tmp_path / "good")
    (info,) = rundir.list_runs(tmp_path, include_shipped=False)
    assert info.ok and info.has_onnx and info.onnx_problem is None


def test_pages_survive_every_broken_folder(tiny_run: Path, contract_breakers: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    for case in BROKEN:
        make_broken(root, case, tiny_run, contract_breakers)
    shutil.copytree(tiny_run, root / "good-run")
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()

    at.switch_page("pages/4_Compare.py").run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    for case, (_, _, fragment) in BROKEN.items():
        assert any(f"`{case}`" in w and fragment in w for w in warnings), (case, warnings)
    table = at.dataframe[0].value
    assert "good-run" in set(table["name"]) and "onnx-garbage" in set(table["name"])
    assert not {c for c, (_, field, _) in BROKEN.items() if field == "problem"} & set(table["name"])

    at.switch_page("pages/5_Predict.py").run()
    assert not at.exception, at.exception
    left_out = " ".join(w.value for w in at.warning)
    for case, (_, field, fragment) in BROKEN.items():
        if field == "onnx":
            assert case in left_out and fragment in left_out, case
    user_models = [o for o in at.selectbox(key="predict_model").options if "(shipped)" not in o]
    assert len(user_models) == 1 and user_models[0].startswith("good-run")  # of the user runs, only the good one
    at.button(key="predict_sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [m.value for m in at.metric if m.label.startswith("Face")][0].split()[0] in CLASSES  # "happy 83%"

    at.switch_page("pages/3_Train.py").run()
    assert not at.exception, at.exception
    assert any("malformed" in e.value or "not valid JSON" in e.value for e in at.error), [e.value for e in at.error]


def test_contract_breaking_onnx_is_a_clear_error(contract_breakers: dict[str, Path]) -> None:
    expected = {"input": r"input shape must be \[N, 1, 48, 48\], found \['N', 3, 48, 48\]",
                "output": r"output shape must be \[N, 7\] .*found \['N', 5\]",
                "batch": "batch dimension of the input must be dynamic"}
    for kind, path in contract_breakers.items():
        with pytest.raises(ValueError, match=expected[kind]):
            check_onnx_file(path)
        with pytest.raises(ValueError, match=expected[kind]):
            OnnxClassifier.get(path)
        with pytest.raises(ValueError, match=expected[kind]) as err:
            analyze_photo(SAMPLE_PHOTO.read_bytes(), "astronaut.jpg", path)
        assert str(path) in str(err.value)


def test_cli_reports_contract_breaking_onnx(contract_breakers: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "core", "predict", "--model", str(contract_breakers["output"]),
                           str(SAMPLE_PHOTO)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    # a model that breaks the contract is bad input, said once before any photo is read
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{contract_breakers['output']}: output shape must be [N, 7]" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "core", "evaluate", str(contract_breakers["input"]),
                           "--data", "synthetic"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{contract_breakers['input']}: input shape must be [N, 1, 48, 48]" in proc.stderr
