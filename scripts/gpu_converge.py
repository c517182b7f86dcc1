"""Probe the CUDA training step's speed, then run the training campaign (campaign/campaign.toml) on the GPU.

Trials run one at a time at full speed, highest priority first (the campaign's own order), each into its ordinary
run folder under campaign/trials, so a GPU session continues exactly where the CPU sessions stopped and the other
way round. At the deadline the current trial stops cleanly, keeping its resume state.
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


def main(argv: list[str] | None = None) -> int:
    from core.service.campaign import DEFAULT_FILE, DEFAULT_OUT, Deadline, load_campaign, progress_lines, run_campaign

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--file", default=str(DEFAULT_FILE), help="campaign file (default campaign/campaign.toml)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="trials folder (default campaign/trials)")
    p.add_argument("--deadline-s", type=float, default=840.0, help="seconds from start after which nothing new starts "
                   "and the current trial stops at its next batch (default 840)")
    p.add_argument("--only", default=None, help="run only trials whose name contains this text")
    p.add_argument("--no-probe", action="store_true", help="skip the eager-vs-graph speed probe")
    a = p.parse_args(argv)
    start = time.monotonic()

    def seconds_left() -> float:
        return a.deadline_s - (time.monotonic() - start)

    trials = [t for t in load_campaign(a.file) if not a.only or a.only in t.name]
    summary: dict = {"probe": [] if a.no_probe else probe(seconds_left)}
    # 60 s before the deadline: the stopped trial's final evaluation and export still fit
    rows = run_campaign(trials, Path(a.out), Deadline(time.time() + seconds_left() - 60),
                        log=lambda line: print(line, flush=True))
    summary["progress"] = list(progress_lines(rows))
    print("\n".join(summary["progress"]), flush=True)
    (Path(a.out) / "gpu_converge.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
