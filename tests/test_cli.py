"""CLI smoke runs through a real subprocess, as a user would type them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, SAMPLE_PHOTO


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_for_every_command() -> None:
    for cmd in ("summary", "train", "export", "evaluate", "predict", "bench", "study"):
        assert "usage" in cli(cmd, "--help").stdout


def test_summary_json_and_table() -> None:
    out = json.loads(cli("summary", "--arch", "mobilenet", "--json").stdout)
    assert out["params"] == 109_607 and out["macs"] > 0 and len(out["layers"]) > 10
    assert "2,959,943" in cli("summary", "--arch", "plain_cnn").stdout


def test_train_export_evaluate_predict(tmp_path: Path) -> None:
    proc = cli("train", "--arch", "mobilenet", "--width", "0.25", "--data", "synthetic", "--synthetic-size", "400",
               "--epochs", "1", "--max-steps", "3", "--batch-size", "32", "--out", str(tmp_path), "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"run_dir", "params", "images_per_s", "accuracy"} <= set(result)
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path and (run_dir / "model.onnx").exists()
    assert "max |PyTorch - ONNX Runtime|" in cli("export", str(run_dir)).stdout
    ev = json.loads(cli("evaluate", str(run_dir), "--data", "synthetic", "--json").stdout)
    assert 0 <= ev["results"]["val"]["accuracy"] <= 1
    pred = json.loads(cli("predict", "--model", str(run_dir / "model.onnx"), str(SAMPLE_PHOTO), "--json").stdout)
    assert len(pred) == 1 and len(pred[0]["faces"]) == 1 and pred[0]["faces"][0]["top"]


def test_bad_input_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    proc = cli("train", "--arch", "mobilenet", "--width", "7", "--data", "synthetic", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "width" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("evaluate", str(tmp_path / "nope"), "--data", str(tmp_path / "missing.csv"), check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    proc = cli("predict", "--model", str(tmp_path / "none.onnx"), str(junk), check=False)
    assert "Traceback" not in proc.stderr and "junk.jpg" in proc.stderr
