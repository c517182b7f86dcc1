"""Measure what test-time augmentation folded into the exported ONNX graph gives, and write docs/tta.json, then
docs/tta.md from that JSON.

Every finished campaign trial and every shipped model (compression variants aside) is exported three times from its
weights, with no views, with the mirror ('flip', 2 views) and with ten crops ('tencrop', 10 views), exactly as
`python -m core evaluate RUN --tta MODE` does (core.training.runs.evaluate_with_tta), and scored by ONNX Runtime on
FER2013 PublicTest. No run folder is changed. Campaign trials are pooled per point (block and width), so each gain
comes with its spread over seeds.

    python scripts/tta_gain.py --data data/fer2013     # measure what is new, then render
    python scripts/tta_gain.py --data data/fer2013 --all   # measure every model again (about 10 minutes on 2 cores)
    python scripts/tta_gain.py --render                # docs/tta.md from the JSON only

A model whose weights (model.pt, by content) are those of its row in docs/tta.json keeps that row: finished trials
do not change, so a rerun as the campaign goes measures only the trials finished since, in a minute or two.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# this checkout's core first, even where another checkout is pip-installed (-e) in the same environment
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from core.util.fsutil import PROJECT_ROOT, project_relative

JSON_PATH = PROJECT_ROOT / "docs" / "tta.json"
DOC_PATH = PROJECT_ROOT / "docs" / "tta.md"
MODES = ("none", "flip", "tencrop")
SPLIT = "public"


def models_to_measure() -> list[dict[str, Any]]:
    """Each finished campaign trial (with its block, width and seed) and each shipped trained model."""
    from core.service.campaign import DEFAULT_OUT, load_campaign, states
    from core.training.rundir import list_runs

    rows = [{"model": f"campaign/trials/{s.trial.name}", "kind": "campaign", "block": s.trial.block,
             "arch": s.trial.config["arch"], "width": float(s.trial.config["width"]), "seed": s.trial.config["seed"]}
            for s in states(load_campaign(), DEFAULT_OUT) if s.state == "done"]
    for r in list_runs(None, include_shipped=True):
        if r.ok and r.shipped and r.record.variant is None and not r.record.data.get("synthetic", False):
            rows.append({"model": f"checkpoints/{r.path.name}", "kind": "shipped", "block": r.path.name,
                         "arch": r.record.model.arch, "width": float(r.record.model.knobs.get("width", 1.0)),
                         "seed": r.record.config.get("seed", 0)})
    return rows


def weights_digest(path: Path) -> str:
    """The content of a model's weights (model.pt), which its three graphs are exported from."""
    import hashlib

    from core.training import rundir

    return hashlib.sha256((path / rundir.WEIGHTS).read_bytes()).hexdigest()[:16]


def measure(data_path: str, rows: list[dict[str, Any]] | None = None,
            previous: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Public accuracy of every model under every mode, each row with its weights' digest, the day and the machine it
    was measured on. A row of `previous` with the same model and weights is kept as it is, not measured again."""
    from core.data import load_data
    from core.training import checkpoint as ck
    from core.training.runs import evaluate_with_tta

    data = load_data(data_path)
    if SPLIT not in data.splits:
        raise ValueError(f"{data_path}: has no {SPLIT!r} split (FER2013 PublicTest); found {sorted(data.splits)}")
    known = {(r["model"], r.get("weights")): r for r in previous or []}
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    out = []
    for row in models_to_measure() if rows is None else rows:
        path = PROJECT_ROOT / row["model"] if not Path(row["model"]).is_absolute() else Path(row["model"])
        digest = weights_digest(path)
        if (row["model"], digest) in known:
            out.append({**known[(row["model"], digest)], **row})
            continue
        acc = {m: evaluate_with_tta(path, data, m, [SPLIT])[SPLIT]["accuracy"] for m in MODES}
        params = sum(p.numel() for p in ck.load_model(path)[0].parameters())
        out.append({**row, "params": params, **acc, "weights": digest, "date": time.strftime("%Y-%m-%d"),
                    "machine": machine})
        print(f"{row['model']}: " + ", ".join(f"{m} {acc[m]:.4f}" for m in MODES), flush=True)
    dates = sorted({r["date"] for r in out}) or [time.strftime("%Y-%m-%d")]
    return {"produced_by": f"python scripts/tta_gain.py --data {project_relative(data_path)}",
            "date": dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}", "machine": machine,
            "split": SPLIT, "images": len(data.splits[SPLIT]), "rows": out}


def pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Campaign trials per (block, width): seeds, mean accuracy without views, and each mode's gain in points as
    mean and sample standard deviation (None below two seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] == "campaign":
            groups.setdefault((r["block"], r["arch"], r["width"]), []).append(r)
    out = []
    for (block, arch, width), g in groups.items():
        entry = {"block": block, "arch": arch, "width": width, "params": g[0]["params"], "seeds": len(g),
                 "none": float(np.mean([r["none"] for r in g]))}
        for m in MODES[1:]:
            gains = np.array([(r[m] - r["none"]) * 100 for r in g])
            entry[m] = (float(gains.mean()), float(gains.std(ddof=1)) if len(g) >= 2 else None)
        out.append(entry)
    return sorted(out, key=lambda e: (e["block"], e["params"]))


def _gain(g: tuple[float, float | None]) -> str:
    mean, std = g
    return f"{mean:+.2f}" + (f" ± {std:.2f}" if std is not None else " (1 seed)")


def render(data: dict[str, Any]) -> str:
    """docs/tta.md, from the JSON alone."""
    rows = data["rows"]
    lines = ["# Test-time augmentation folded into the export", "",
             f"Produced by `{data['produced_by']}` on {data['date']} ({data['machine']['cpu']}, "
             f"{data['machine']['cores']} cores); do not edit by hand. Accuracy on FER2013 PublicTest "
             f"({data['images']:,} images), scored by ONNX Runtime on graphs exported from each model's weights. "
             "`flip` averages the logits of the face and its mirror (2 views); `tencrop` those of four corner crops "
             "and the centre crop of 44 px, each resized back to 48, and their mirrors (10 views). The views and "
             "the average are ONNX ops, so the contract holds: [N,1,48,48] in, [N,7] logits out. The price is "
             "inference time, about the number of views ([benchmarks.md](benchmarks.md), Inference). A run trained "
             "with `--tta MODE` exports this graph; `python -m core evaluate RUN --tta MODE` measures it for any run.",
             ""]
    pts = pooled(rows)
    if pts:
        lines += ["## The campaign's points, pooled over seeds", "",
                  "Gains are in points of public accuracy against the same weights without views: mean ± sample "
                  "standard deviation over the point's finished seeds.", "",
                  "| block | width | params | seeds | no views | flip gain | tencrop gain |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['block']} | {p['width']:g} | {p['params']:,} | {p['seeds']} | {p['none']:.4f} | "
                  f"{_gain(p['flip'])} | {_gain(p['tencrop'])} |" for p in pts]
        lines.append("")
    lines += ["## Every model measured", "", "| model | params | no views | flip | tencrop |", "|---|---|---|---|---|"]
    lines += [f"| `{r['model']}` | {r['params']:,} | {r['none']:.4f} | {r['flip']:.4f} "
              f"({(r['flip'] - r['none']) * 100:+.1f}) | {r['tencrop']:.4f} ({(r['tencrop'] - r['none']) * 100:+.1f}) |"
              for r in sorted(rows, key=lambda r: (r["kind"], r["params"], r["model"]))]
    return "\n".join(lines + ["", summary(rows), ""])


def summary(rows: list[dict[str, Any]]) -> str:
    """The best single model with ten crops, overall and at most 110,000 parameters: single runs, not seed means."""
    def best(sel: list[dict]) -> str:
        r = max(sel, key=lambda r: r["tencrop"])
        return f"`{r['model']}` {r['tencrop']:.4f} ({r['none']:.4f} without views)"

    small = [r for r in rows if r["params"] <= 110_000]
    return (f"Best single model with ten crops: {best(rows)}; at most 110,000 parameters: "
            f"{best(small) if small else 'none measured'}. These are single runs; the targets in "
            "[study.md](study.md) are judged on means over seeds.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/fer2013", help="FER2013 with its PublicTest split")
    ap.add_argument("--render", action="store_true", help="only write docs/tta.md from docs/tta.json")
    ap.add_argument("--all", action="store_true", help="measure every model again, even where docs/tta.json has "
                    "a row for the same weights")
    a = ap.parse_args(argv)
    try:
        if not a.render:
            previous = [] if a.all or not JSON_PATH.exists() else json.loads(JSON_PATH.read_text())["rows"]
            JSON_PATH.write_text(json.dumps(measure(a.data, previous=previous), indent=1) + "\n")
            print(f"wrote {JSON_PATH}")
        DOC_PATH.write_text(render(json.loads(JSON_PATH.read_text())))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
