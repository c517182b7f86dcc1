"""Probe the CUDA training step's speed, then train the reference models to convergence one after another in one process.

Each training writes an ordinary run folder (weights, ONNX export, run.json). A run that the deadline interrupts is
recorded as 'stopped' with its last finished epoch, and the remaining runs are skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:  # the project installed (pip install -e .), or run as `python -m scripts.gpu_converge` from the project root
    import core  # noqa: F401
except ModuleNotFoundError:  # `python scripts/gpu_converge.py` in a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Recipes, in the order they run: what the targets need first (the two reference models on the long recipe), then
# the study's own recipe with its element-wise dropout, three seeds each. The long recipe follows Khaireddin & Chen
# (2021): SGD with Nesterov momentum, lr 0.01, weight decay 1e-4, ReduceLROnPlateau (x0.75, patience 5), random
# erasing; with flip test-time augmentation in the exported graph.
LONG = dict(optimizer="sgd", lr=0.01, weight_decay=1e-4, schedule="plateau", plateau_factor=0.75, plateau_patience=5,
            batch_size=128, epochs=200, erase_prob=0.5, label_smoothing=0.1, tta="flip")
STUDY = dict(optimizer="adam", lr=1e-3, schedule="constant", batch_size=256, epochs=50, augment=False,
             dropout_kind="element")
RECIPES: dict[str, dict] = {
    "mobilenet-w1-long": dict(arch="mobilenet", width=1.0, dropout_kind="element", **LONG),
    "plain_cnn-w1-long": dict(arch="plain_cnn", width=1.0, **LONG),
    **{f"mobilenet-w1-study-s{s}": dict(arch="mobilenet", width=1.0, seed=s, **STUDY) for s in range(3)},
    **{f"plain_cnn-w1-study-s{s}": dict(arch="plain_cnn", width=1.0, seed=s, **STUDY) for s in range(3)},
}


def probe(seconds_left: float) -> list[dict]:
    """Eager vs CUDA-graph images/s for both reference models at batch 128 (random data on the card)."""
    import torch

    from bench.harness import cuda_throughput

    if not torch.cuda.is_available():
        print("no CUDA device: speed probe skipped", flush=True)
        return []
    out = []
    for arch in ("mobilenet", "plain_cnn"):
        if seconds_left() < 60:
            break
        eager, _ = cuda_throughput(arch, graph=False)
        graphed, capture_s = cuda_throughput(arch, graph=True)
        row = {"arch": arch, "eager_img_s": round(eager), "graph_img_s": round(graphed), "capture_s": round(capture_s, 2)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def train_one(name: str, overrides: dict, data, data_path: str, out: Path, device: str, seconds_left) -> dict:  # noqa: ANN001
    """One recipe into out/name (data loaded once for all), stopping after the current batch when the deadline comes."""
    from core.training import rundir
    from core.training.config import TrainConfig
    from core.training.runs import run_training

    cfg = TrainConfig(data=data_path, device=device, **overrides)
    t0 = time.monotonic()
    last: dict = {}
    for m in run_training(cfg, out / name, should_stop=lambda: seconds_left() < 30, data=data):
        last = m
        print(f"{name} epoch {m['epoch']}/{cfg.epochs}: val {m['val_acc']:.4f}, {m['images_per_s']:.0f} img/s", flush=True)
    record = rundir.read_record(out / name)
    return {"run": name, "status": record.status, "epochs": len(record.epochs),
            "final": record.final.accuracy if record.final else None,
            "seconds": round(time.monotonic() - t0, 1), "last_images_per_s": last.get("images_per_s")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="FER2013 in any supported format (e.g. ../shared/data/fer2013)")
    p.add_argument("--out", default="runs/gpu", help="folder for the run folders (default runs/gpu)")
    p.add_argument("--deadline-s", type=float, default=840.0, help="seconds from start after which nothing new starts "
                   "and the current run stops at its next batch (default 840)")
    p.add_argument("--only", nargs="*", choices=list(RECIPES), help="run only these recipes (default: all, in order)")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epoch count")
    p.add_argument("--no-probe", action="store_true", help="skip the eager-vs-graph speed probe")
    p.add_argument("--device", default="cuda", help="training device (default cuda)")
    a = p.parse_args(argv)
    start = time.monotonic()

    def seconds_left() -> float:
        return a.deadline_s - (time.monotonic() - start)

    from core.data import load_data

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(a.data)
    summary: dict = {"probe": [] if a.no_probe else probe(seconds_left), "runs": []}
    for name in a.only or list(RECIPES):
        if seconds_left() < 90:
            print(f"skipped {name}: deadline", flush=True)
            continue
        overrides = dict(RECIPES[name], **({"epochs": a.epochs} if a.epochs else {}))
        summary["runs"].append(train_one(name, overrides, data, a.data, out, a.device, seconds_left))
        print(json.dumps(summary["runs"][-1]), flush=True)
    (out / "gpu_converge.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
