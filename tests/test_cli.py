"""CLI smoke runs through a real subprocess, as a user would type them."""
from __future__ import annotations

import json
import re
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
    # ONNX Runtime on the exported graph agrees with PyTorch on the same weights and the same (default-size) data
    import torch

    from core.data import load_data
    from core.training import checkpoint as ck
    from core.training.train import evaluate

    ref = evaluate(ck.load_model(run_dir)[0], load_data("synthetic").splits["val"], torch.device("cpu"))
    assert ev["results"]["val"]["n"] == ref["n"] == 1200  # 20% of the 6,000 faces `evaluate --data synthetic` draws
    assert abs(ev["results"]["val"]["accuracy"] - ref["accuracy"]) < 2 / ref["n"]  # at most a borderline image apart
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
    # the missing model is said first, before any photo is looked at
    assert proc.returncode == 2 and "none.onnx: ONNX model file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_new_user_paths(tmp_path: Path, tiny_run: Path) -> None:
    import os
    import shutil

    runs = tmp_path / "runs"
    # a bad --data is refused before any run folder is made
    proc = cli("train", "--arch", "plain_cnn", "--data", str(tmp_path / "nonexistent"), "--out", str(runs), check=False)
    assert proc.returncode == 2 and "nonexistent" in proc.stderr and not any(runs.glob("*"))
    # `export NAME` finds a run in $FER_RUNS_DIR; a missing one is named as a missing folder
    shutil.copytree(tiny_run, runs / "mine")
    env = {**os.environ, "FER_RUNS_DIR": str(runs)}
    out = subprocess.run([sys.executable, "-m", "core", "export", "runs/mine"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and str(runs / "mine" / "model.onnx") in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "core", "export", "runs/ghost"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "run folder 'runs/ghost' not found" in out.stderr and "run.json" not in out.stderr
    # --json piped into a reader that stops early: no BrokenPipeError traceback
    # (the reader's end is closed before anything is written, so the write fails for certain, not by a race)
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nsys.stdout = os.fdopen(w, 'w')\n"
            "from core.cli import main\nsys.stderr.write(f'exit {main([\"summary\", \"--arch\", \"plain_cnn\", \"--json\"])}')")
    pipe = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "exit 141" in pipe.stderr and "Traceback" not in pipe.stderr, pipe.stderr


def test_train_help_and_output_are_clean(tmp_path: Path) -> None:
    helptext = cli("train", "--help").stdout.replace("\n", " ")
    for flag, default in (("--epochs", "10"), ("--lr", "0.001"), ("--batch-size", "256"), ("--seed", "0")):
        assert flag in helptext and f"default: {default}" in helptext
    proc = cli("train", "--arch", "plain_cnn", "--width", "0.125", "--data", "synthetic", "--synthetic-size", "300",
               "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path))
    # no total-less bar ('0step [00:00, ?step/s]') before the real one: the bar is made with its total
    assert "0step [" not in proc.stderr and re.search(r"\| 0/\d+ \[", proc.stderr), proc.stderr


def test_train_says_what_runs_after_the_last_step(tmp_path: Path) -> None:
    """After the steps, the bar closes once (its time is the training's, not reprinted with the evaluation folded in)
    and the stages that follow are named; the epoch line says its train figures are from during training."""
    proc = cli("train", "--arch", "plain_cnn", "--width", "0.125", "--data", "synthetic", "--synthetic-size", "300",
               "--epochs", "1", "--max-steps", "2", "--out", str(tmp_path))
    err = proc.stderr
    assert "final evaluation...\nexport...\n" in err, err
    assert err.rindex("100%|") < err.index("final evaluation..."), err
    assert "epoch 1: during training loss" in err


def test_background_progress_names_the_stage_and_the_page_shows_it(tmp_path: Path) -> None:
    from core.training import rundir
    from core.views.runviews import progress_text

    run = tmp_path / "bg"
    cli("train", "--arch", "plain_cnn", "--width", "0.125", "--data", "synthetic", "--synthetic-size", "300",
        "--epochs", "1", "--max-steps", "2", "--run-dir", str(run), "--quiet")
    p = rundir.read_progress(run)
    assert p is not None and p["stage"] == "export" and p["global_step"] == p["total_steps"]
    live = rundir.RunStatus(run, status="running", progress=p, config={"epochs": 1})
    assert progress_text(live) == "training steps done · now: export..."
    busy = rundir.RunStatus(run, status="running", progress={k: v for k, v in p.items() if k != "stage"})
    assert progress_text(busy).startswith("epoch 1/1 · step ") and "ETA" in progress_text(busy)


def test_predict_takes_a_run_folder_and_says_what_it_prints() -> None:
    """The README's example works as written (the shipped sample photo, a run folder as export and evaluate take),
    --json prints what its help says, and bench, study and predict --help have a description."""
    proc = cli("predict", "--model", "checkpoints/plain_cnn-w0.125", "assets/astronaut.jpg", "--json")
    out = json.loads(proc.stdout)
    assert isinstance(out, list) and out[0]["image"] == "assets/astronaut.jpg" and out[0]["faces"][0]["top"]
    assert "a JSON array with one object per photo" in cli("predict", "--help").stdout.replace("\n", " ")
    assert "python -m core predict --model checkpoints/mobilenet-w1 assets/astronaut.jpg --json" in (
        ROOT / "README.md").read_text()
    for cmd in ("bench", "study", "predict"):
        lines = cli(cmd, "--help").stdout.split("\n\n")
        assert len(lines) > 2 and not lines[1].startswith(("positional", "options")), (cmd, lines[:2])
    proc = cli("predict", "--model", "no-such-run", "assets/astronaut.jpg", check=False)
    assert proc.returncode == 2 and "run folder 'no-such-run' not found" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_with_tta_leaves_the_run_as_it_is(tiny_run: Path) -> None:
    """`evaluate RUN --tta flip`: the run's weights with the views folded into a fresh graph, scored by ONNX Runtime
    as PyTorch scores the same TTA model, and the run folder's files unchanged."""
    import torch

    from core.data import load_data
    from core.data.augment import with_tta
    from core.training import checkpoint as ck
    from core.training.train import evaluate

    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    ev = json.loads(cli("evaluate", str(tiny_run), "--data", "synthetic", "--split", "val", "--tta", "flip",
                        "--json").stdout)
    assert ev["tta"] == "flip"
    ref = evaluate(with_tta(ck.load_model(tiny_run)[0], "flip"), load_data("synthetic").splits["val"],
                   torch.device("cpu"))
    assert abs(ev["results"]["val"]["accuracy"] - ref["accuracy"]) < 2 / ref["n"]
    plain = json.loads(cli("evaluate", str(tiny_run), "--data", "synthetic", "--split", "val", "--json").stdout)
    assert ev["results"]["val"]["loss"] != plain["results"]["val"]["loss"]  # the views really were averaged
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before
    proc = cli("evaluate", str(tiny_run / "model.onnx"), "--data", "synthetic", "--tta", "flip", check=False)
    assert proc.returncode == 2 and "--tta needs a run folder" in proc.stderr and "Traceback" not in proc.stderr
