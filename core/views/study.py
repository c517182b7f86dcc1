"""`python -m core study`: docs/study.md and its charts, regenerated from the shipped checkpoint records alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.models import archs
from core.models.summary import summarize
from core.service.campaign import DEFAULT_FILE as CAMPAIGN_FILE
from core.service.campaign import CampaignTrial, load_campaign
from core.training.rundir import list_runs
from core.training.runs import TRAIN_EVAL_SAMPLE
from core.views import charts
from core.views.archviews import conv_breakdown
from core.views.campaignviews import (
    FAMILY_TITLES,
    accuracy_text,
    display_levers,
    lever_frame,
    points_frame,
    trials_frame,
)
from core.views.runviews import runs_table

STUDY_FAMILIES = ("mobilenet", "plain_cnn")


def study_table() -> pd.DataFrame:
    """Shipped runs trained on FER2013 with a public-split accuracy, smallest first."""
    # compression variants have their own section (compression_section); here each trained model counts once
    df = runs_table(r for r in list_runs(None, include_shipped=True) if r.ok and r.shipped and r.record.variant is None)
    if df.empty:
        return df
    df = df[(df["data"] != "synthetic") & df["acc_public"].notna()].copy()
    df["acc"] = df["acc_public"].astype(float)
    df["params"] = df["params"].astype(float)
    return df.sort_values("params").reset_index(drop=True)


def interpolate_accuracy(points: pd.DataFrame, params: float) -> float:
    """Accuracy of a family at a parameter budget, linear in log(params) between its measured points; where one
    width was trained with several recipes, its best run counts."""
    pts = points.groupby("params", as_index=False)["acc"].max().sort_values("params")
    return float(np.interp(np.log10(params), np.log10(pts["params"].to_numpy()), pts["acc"].to_numpy()))


def equal_budget_gaps(df: pd.DataFrame) -> list[dict]:
    """MobileNet minus plain CNN accuracy at budgets inside both families' measured ranges."""
    mb, pc = df[df["arch"] == "mobilenet"], df[df["arch"] == "plain_cnn"]
    if len(mb) < 2 or len(pc) < 2:
        return []
    lo, hi = max(mb["params"].min(), pc["params"].min()), min(mb["params"].max(), pc["params"].max())
    if lo >= hi:
        return []
    budgets = sorted({float(b) for b in np.geomspace(lo, hi, 4)})
    return [{"params": b, "mobilenet": interpolate_accuracy(mb, b), "plain_cnn": interpolate_accuracy(pc, b)}
            for b in budgets]


def why_text() -> list[str]:
    """The parameter arithmetic behind the answer, computed from the architectures themselves."""
    mb = conv_breakdown("mobilenet", width=1.0)
    total = summarize("mobilenet", width=1.0).params
    lines = [
        f"- In the 109,607-parameter MobileNet-style model the pointwise 1x1 convolutions hold "
        f"{mb['pointwise_params']:,} parameters ({mb['pointwise_params'] / total:.0%} of the model) and the depthwise "
        f"3x3 convolutions only {mb['depthwise_params']:,} ({mb['depthwise_params'] / total:.0%}).",
        f"- Its {len(mb['pairs'])} depthwise-separable blocks cost {mb['pairs_separable']:,} weights; standard 3x3 "
        f"convolutions with the same channels would cost {mb['pairs_standard']:,} "
        f"({mb['pairs_standard'] / max(1, mb['pairs_separable']):.1f}x more). A k x k standard conv pays k*k*Cin*Cout; "
        "the separable pair pays k*k*Cin + Cin*Cout, so with k = 3 and wide layers it is close to 9x cheaper, and "
        "almost all that remains is the 1x1 channel mixing - where the capacity of the layer lives.",
    ]
    for width in (0.125, 0.25):
        s = summarize("plain_cnn", width=width)
        fc = int(s.layers.loc[s.layers["type"] == "Linear", "params"].sum())
        lines.append(f"- The plain CNN at width {width:g} ({s.params:,} parameters) spends {fc / s.params:.0%} of "
                     "them on its fully connected layers over a flattened 6x6 map; its convolutions stay thin "
                     f"(at most {archs.make_divisible(128 * width)} channels), so it sees less while paying more.")
    return lines


def epochs_text(row: pd.Series) -> str:
    planned = row.get("epochs_planned")
    if row["status"] == "stopped" and isinstance(planned, (int, np.integer)) and planned > row["epochs"]:
        return f"{row['epochs']} of {planned} (stopped at the time limit)"
    return str(row["epochs"])


# the study-recipe target: within a point of the study's 0.651
STUDY_BAND = (0.641, 0.661)


def _target_status(point: pd.Series | None, ok: bool) -> str:
    """'met' for one target: judged on a point's mean over its finished seeds, final only once all have finished."""
    if point is None or point["seeds_done"] == 0:
        return "not yet measured"
    if point["seeds_done"] < point["seeds"]:
        return f"{'on track' if ok else 'not so far'} ({point['seeds_done']} of {point['seeds']} seeds)"
    return "yes" if ok else "no"


def tencrop_points(path: Path) -> pd.DataFrame:
    """Ten crops folded into the export, per campaign point: the mean and spread of public accuracy over the seeds
    that scripts/tta_gain.py measured (its docs/tta.json); empty when it has not run."""
    try:
        rows = [r for r in json.loads(path.read_text())["rows"] if r.get("kind") == "campaign"]
    except (OSError, ValueError, KeyError, TypeError):
        rows = []
    if not rows:
        return pd.DataFrame(columns=["tta_mean", "tta_std", "tta_seeds"])
    df = pd.DataFrame(rows).assign(width=lambda d: d["width"].astype(float).round(6))
    g = df.groupby(["block", "width"])["tencrop"]
    return pd.DataFrame({"tta_mean": g.mean(), "tta_std": g.std(), "tta_seeds": g.count()})


def _tencrop(point: pd.Series | None, tta: pd.DataFrame) -> pd.Series | None:
    key = None if point is None else (point["block"], round(float(point["width"]), 6))
    return tta.loc[key] if key is not None and key in tta.index else None


def _tencrop_text(t: pd.Series | None) -> str:
    if t is None:
        return "not measured yet"
    n = int(t["tta_seeds"])
    spread = f" ± {t['tta_std']:.4f}" if n >= 2 else ""
    return f"{t['tta_mean']:.4f}{spread} ({n} seed{'s' * (n != 1)})"


def _best_point(pts: pd.DataFrame) -> pd.Series | None:
    done = pts[pts["seeds_done"] > 0]
    return None if done.empty else done.loc[done["mean"].idxmax()]


def _point_text(p: pd.Series | None) -> str:
    if p is None:
        return "—"
    if p["seeds_done"] == 0:
        return f"`{p['block']}` w{p['width']:g}: no seed finished yet"
    return f"`{p['block']}` w{p['width']:g} ({int(p['params']):,} params): {accuracy_text(p)}"


def _shipped_text(sel: pd.DataFrame) -> str:
    if sel.empty:
        return "—"
    r = sel.loc[sel["acc"].idxmax()]
    return f"`{r['name']}` ({int(r['params']):,} params): {r['acc']:.4f}"


def grid_coverage(pts: pd.DataFrame, seeds: int = 3) -> dict[str, tuple[int, int]]:
    """Per family: (grid widths with `seeds` finished seeds, grid widths). The family's largest plain-CNN width
    counts with one seed, as the issue allows until the campaign reaches it."""
    grid = pts[pts["block"].str.startswith("grid-")]
    out = {}
    for arch in STUDY_FAMILIES:
        fam = grid[grid["arch"] == arch]
        need = np.where((arch == "plain_cnn") & (fam["params"] == fam["params"].max()), 1, seeds)
        out[arch] = (int((fam["seeds_done"].to_numpy() >= need).sum()), len(fam))
    return out


def targets_section(df: pd.DataFrame, pts: pd.DataFrame, tta: pd.DataFrame) -> list[str]:
    """The results issue's targets, judged on the campaign's means over seeds (`pts`, campaignviews.points_frame);
    the best single shipped run (seed 0) stands beside each as context, never as the verdict. `tta`
    (tencrop_points): the same point with ten crops folded into its export, the accuracy export gives for free,
    judged in its own words, so a verdict never mixes the two."""
    study = pts[pts["block"] == "study-mobilenet"]
    study_pt = study.iloc[0] if len(study) else None
    small = pts[pts["params"] <= 110_000]
    best, best_small = _best_point(pts), _best_point(small)
    lines = ["## Targets", "",
             "The results issue's targets, on the public split. Each is judged on a campaign point's mean over its "
             "finished seeds, and only finally once all its seeds have finished; the best single shipped run "
             "(seed 0) is shown beside it for context.", "",
             "| target | goal | campaign, mean over seeds | with ten crops in the export | best single shipped run "
             "| met |",
             "|---|---|---|---|---|---|"]
    rows = [("MobileNet-style width 1.0 on the study's recipe (`study-mobilenet`)",
             f"within 1 point of 0.651 ({STUDY_BAND[0]:.3f} to {STUDY_BAND[1]:.3f})", study_pt, "—",
             study_pt is not None and STUDY_BAND[0] <= study_pt["mean"] <= STUDY_BAND[1]),
            ("best model", "at least 0.72", best, _shipped_text(df), best is not None and best["mean"] >= 0.72),
            ("a model of at most 110,000 parameters", "at least 0.67", best_small,
             _shipped_text(df[df["params"] <= 110_000]), best_small is not None and best_small["mean"] >= 0.67)]
    # a point of the right size whose seeds have not all finished (a lever's block, say) may still meet the target
    still_open = (0, int((pts["seeds_done"] < pts["seeds"]).sum()), int((small["seeds_done"] < small["seeds"]).sum()))
    for (label, goal, point, shipped, ok), low, n_open in zip(rows, (STUDY_BAND[0], 0.72, 0.67), still_open,
                                                              strict=True):
        t = _tencrop(point, tta) if label != rows[0][0] else None  # the study's recipe is judged as the study was
        status = _target_status(point, bool(ok))
        if status == "no" and n_open:
            status = f"not so far ({n_open} more point{'s' * (n_open != 1)} of this size to finish)"
        if t is not None and not ok and t["tta_mean"] >= low:
            status += f"; with ten crops: {'yes' if t['tta_seeds'] >= point['seeds'] else 'on track'}"
        ten = _tencrop_text(t) if label != rows[0][0] else "—"
        lines.append(f"| {label} | {goal} | {_point_text(point)} | {ten} | {shipped} | {status} |")
    cover = grid_coverage(pts)
    done = ", ".join(f"{FAMILY_TITLES[a]} {k} of {n}" for a, (k, n) in cover.items())
    met = all(k >= 5 for k, _ in cover.values())
    lines.append(f"| the grid: 5 or more widths per family with 3 seeds each (the largest plain CNN may have 1) | "
                 f"5 widths each | widths done: {done} | — | — | {'yes' if met else 'no'} |")
    return lines + ["", "Test-time augmentation folded into the exported graph (the mirror, or ten crops) adds to each "
                    "model without retraining, at about ten times the inference cost; the ten-crop column is the same "
                    "point's seeds as [tta.md](tta.md) last measured them (rerun `scripts/tta_gain.py` as trials "
                    "finish), and a target met only with it says so.", ""]


def ablation_section(df: pd.DataFrame, arch: str = "mobilenet", width: float = 1.0) -> list[str]:
    """Every shipped recipe at one size, side by side: what augmentation, label smoothing, schedule length and
    distillation each gave, against the run named <arch>-w<width> (the full recipe)."""
    sel = df[(df["arch"] == arch) & (df["width"] == width)].sort_values("acc", ascending=False)
    if len(sel) < 2:
        return []
    ref_name = f"{arch}-w{width:g}"
    ref = sel[sel["name"] == ref_name]
    ref_acc = float(ref["acc"].iloc[0]) if len(ref) else float("nan")
    lines = [f"## What each part of the recipe gave ({sel['family'].iloc[0]}, "
             f"{int(sel['params'].iloc[0]):,} parameters)", "",
             f"Each variant changes the recipe of `{ref_name}`; train accuracy far above public accuracy means "
             "overfitting, both low means the model or schedule is the limit. Train accuracy is measured on a "
             f"stratified sample of {TRAIN_EVAL_SAMPLE:,} training images, not the whole split. Every row is a single "
             "run (seed 0), and the rows were trained on different devices and precisions (last column), so a "
             "difference of a point or so is within what the seed alone can change.", "",
             f"| run | recipe | epochs | train acc | public acc | vs `{ref_name}` | device |",
             "|---|---|---|---|---|---|---|"]
    for _, r in sel.iterrows():
        delta = "" if r["name"] == ref_name or not np.isfinite(ref_acc) else f"{(r['acc'] - ref_acc) * 100:+.1f} points"
        lines.append(f"| `{r['name']}` | {r['recipe']} | {epochs_text(r)} | {r['acc_train']:.3f} | {r['acc']:.4f} | "
                     f"{delta} | {r['device']} |")
    return lines + [""]


def seed_spread(df: pd.DataFrame) -> float | None:
    """The largest standard deviation over seeds, in points, among runs whose settings differ only in the seed
    (core.views.runviews.seedless_key); None when no point was trained with two or more seeds."""
    if "seedless" not in df.columns:
        return None
    groups = df.groupby("seedless")["acc"]
    stds = [float(g.std()) * 100 for _, g in groups if len(g) >= 2]
    return max(stds) if stds else None


def _verdict(gaps: list[dict], spread: float | None) -> str:
    """What the equal-budget table says, and no more: a winner only where a gap exceeds the seed spread."""
    diffs = [(g["mobilenet"] - g["plain_cnn"]) * 100 for g in gaps]
    if min(diffs) > 0:
        seen = f"the MobileNet-style family is ahead at every budget, by {min(diffs):.1f} to {max(diffs):.1f} points"
    elif max(diffs) < 0:
        seen = f"the plain CNN is ahead at every budget, by {-max(diffs):.1f} to {-min(diffs):.1f} points"
    else:
        seen = f"neither family wins everywhere (differences from {min(diffs):+.1f} to {max(diffs):+.1f} points)"
    if spread is None:
        return (seen + ". Each point is a single run (one seed), so the seed-to-seed spread is not measured and these "
                "differences cannot be told from it: no winner is stated.")
    calls = [("MobileNet-style" if d > 0 else "plain CNN") if abs(d) > spread else "within the spread"
             for d in diffs]
    where = "; ".join(f"{g['params']:,.0f}: {c}" for g, c in zip(gaps, calls))
    return f"{seen}. With a seed spread of up to {spread:.1f} points, a winner is stated only beyond it: {where}."


def equal_budget_section(df: pd.DataFrame, spread: float | None = None) -> list[str]:
    """The equal-budget table (MobileNet vs plain CNN, interpolated) and its verdict, as markdown lines. `spread` is
    the seed-to-seed standard deviation in points (seed_spread), None when no point has seeds."""
    lines = ["## At equal parameter counts, which family wins?", ""]
    gaps = equal_budget_gaps(df)
    if gaps:
        lines += ["| parameter budget | MobileNet-style | plain CNN | difference |", "|---|---|---|---|"]
        lines += [f"| {g['params']:,.0f} | {g['mobilenet']:.3f} | {g['plain_cnn']:.3f} | "
                  f"{g['mobilenet'] - g['plain_cnn']:+.3f} |"
                  for g in gaps]
        lines += ["", "Accuracies are interpolated linearly in log(parameters) between each family's shipped models "
                  "(the best recipe at each width), only inside the range both families cover. Measured: "
                  + _verdict(gaps, spread), ""]
    else:
        lines += ["The shipped models of the two families do not yet overlap in parameter count, so no equal-budget "
                  "comparison can be interpolated from measurements.", ""]
    return lines


def compression_targets(v: pd.DataFrame) -> list[str]:
    """The issue's int8 targets, per shipped int8 variant and per family, with the numbers."""
    i8 = v[v["technique"] == "int8"]
    lines = ["| target | result | met |", "|---|---|---|"]
    ok = i8[(i8["delta"] >= -0.01) & (i8["size_ratio"] <= 0.3)]
    lines.append(f"| int8 within 1.0 point of its fp32 parent at 0.3x or less of its ONNX size | {len(ok)} of "
                 f"{len(i8)} variants (differences {i8['delta'].min() * 100:+.1f} to "
                 f"{i8['delta'].max() * 100:+.1f} points, sizes {i8['size_ratio'].min():.2f}x to "
                 f"{i8['size_ratio'].max():.2f}x) | {'yes' if len(ok) == len(i8) else 'no'} |")
    for arch in STUDY_FAMILIES:
        fam = i8[i8["arch"] == arch]
        if fam.empty:
            continue
        best = fam.loc[fam["speedup_b64"].idxmax()]
        met = (fam["speedup_b64"] >= 1.3).all()
        lines.append(f"| int8 at least 1.3x faster than fp32 at batch 64 ({arch}) | {fam['speedup_b64'].min():.2f}x to "
                     f"{fam['speedup_b64'].max():.2f}x (best `{best['name']}`) | {'yes' if met else 'no'} |")
    return lines


def compression_section(out: Path) -> list[str]:
    """Shipped compression variants (core.compression.compress) beside their fp32 parents: a size-vs-accuracy chart
    with one Pareto front across widths and techniques, the table, and the int8 targets."""
    from core.views.charts import size_accuracy_chart
    from core.views.compressviews import chart_points, variants_table

    v = variants_table(None, include_shipped=True)
    v = v[v["split"] == "public"]
    if v.empty:
        return []
    size_accuracy_chart(chart_points(v), title="ONNX file size vs public accuracy: widths x techniques", height=380) \
        .properties(width=620).save(str(out / "study_compression.png"), format="png", scale_factor=1.5)
    lines = ["## Compression beyond width", "",
             "Generated from the shipped variants (`python -m core compress RUN --int8`): each is measured beside its "
             "fp32 parent in one call, accuracy with ONNX Runtime on PublicTest, latency as medians on one CPU thread "
             "in alternating rounds. This 2-core machine was shared with other jobs (1-minute load average "
             f"{v['load_avg_1min'].min():.0f} to {v['load_avg_1min'].max():.0f} during these measurements), so the "
             "latencies are noisy; the accuracies are exact. Each int8 lever (calibration, types, BN folding, the "
             "stem), measured on mobilenet-w1 and the large models: [compression.md](compression.md).",
             "", "![size vs accuracy](study_compression.png)", "",
             "| variant | technique | params | ONNX KB (vs fp32) | gzip KB | ms batch 1 | ms batch 64 (speed-up) | "
             "public acc | fp32 | difference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in v.sort_values(["arch", "params"]).iterrows():
        lines.append(f"| `{r['name']}` | {r['technique']} | {int(r['params']):,} | {r['onnx_bytes'] / 1024:,.0f} "
                     f"({r['size_ratio']:.2f}x) | {r['gzip_bytes'] / 1024:,.0f} | {r['latency_ms_b1']:.2f} | "
                     f"{r['latency_ms_b64']:.1f} ({r['speedup_b64']:.2f}x) | {r['accuracy']:.4f} | "
                     f"{r['parent_accuracy']:.4f} | {r['delta'] * 100:+.1f} points |")
    return lines + ["", "### int8 targets", ""] + compression_targets(v) + [""]


def write_study(out: str | Path = "docs") -> Path:
    """Write study.md and its charts into `out` from the shipped records; returns the path of study.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = study_table()
    lines = ["# The study, reproduced", "",
             "Generated by `python -m core study` from the records of the shipped checkpoints in `checkpoints/`; "
             "do not edit by hand. Accuracies are on FER2013's public test split (PublicTest, 3,589 images), as "
             "measured at the end of each run. The private split is scored independently and is not used here.", ""]
    if df.empty:
        lines.append("No shipped FER2013 checkpoints yet.")
        path = out / "study.md"
        path.write_text("\n".join(lines) + "\n")
        return path
    images = []
    for key, title, sel in (("both", "Both families", df[df["arch"].isin(STUDY_FAMILIES)]),
                            ("mobilenet", "MobileNet-style (depthwise-separable)", df[df["arch"] == "mobilenet"]),
                            ("plain_cnn", "Plain CNN (VGG-style)", df[df["arch"] == "plain_cnn"]),
                            ("all", "Every shipped family", df)):
        if sel.empty or (key == "all" and set(df["arch"]) <= set(STUDY_FAMILIES)):
            continue
        chart = charts.params_accuracy_chart(sel, title=f"{title}: parameters vs public accuracy", height=360)
        name = f"study_{key}.png"
        chart.properties(width=620).save(str(out / name), format="png", scale_factor=1.5)
        images.append((title, name))
    lines += ["## Parameters vs accuracy", ""]
    lines += [f"![{t}]({n})" for t, n in images]
    lines += ["",
              "Red diamonds: the study's models (public accuracy as reported). The dashed line is the Pareto front.",
              "",
              "## Shipped models", "",
              "Wall time is each run's own as recorded, including time lost to other runs sharing the device.", "",
              "| model | family | width | params | MACs | public acc | epochs | recipe | wall time | device |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        lines.append(f"| `{r['name']}` | {r['family']} | {r['width']:g} | {int(r['params']):,} | {int(r['macs']):,} | "
                     f"{r['acc']:.4f} | {epochs_text(r)} | {r['recipe']} | {r['wall_time_s'] / 60:.1f} min | "
                     f"{r['device']} |")
    lines += ["", "The study's figures for comparison: plain CNN 2,959,943 parameters, 0.722 public; MobileNet-style "
              "109,607 parameters, 0.651 public (50 epochs, batch 256, Adam 1e-3, no augmentation).", ""]
    trials = load_campaign(CAMPAIGN_FILE)
    frame = trials_frame(trials)  # the campaign's trials, read once for its own section and for the Targets table
    lines += campaign_section(out, frame, trials) + targets_section(df, points_frame(frame),
                                                                    tencrop_points(out / "tta.json"))
    lines += ablation_section(df)
    lines += compression_section(out)
    lines += equal_budget_section(df, seed_spread(df))
    lines += ["Where the parameters go (computed from the architectures), which is why the depthwise-separable family "
              "is expected to win when parameters are scarce:", ""] + why_text()
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def campaign_section(out: Path, frame: pd.DataFrame, trials: list[CampaignTrial]) -> list[str]:
    """The campaign's grid (core.campaign) from its trials (`frame`, campaignviews.trials_frame, of `trials`): every
    point as mean ± spread over its finished seeds, trials still running shown as in progress, the equal-budget
    comparison with the spread, the study's recipe reproduced, and the levers against their baselines."""
    from core.views.campaignviews import crossover, display_points, equal_budget, progress, spread_chart

    if frame.empty:
        return []
    pts = points_frame(frame)
    lines = ["## The grid with error bars (the campaign)", "",
             f"`campaign/campaign.toml` lists every training of this comparison; `python -m core campaign` runs them "
             f"on the CPU over many sessions, resuming each unfinished trial. So far {progress(frame)[1]}. Each point "
             "below pools the finished seeds of one width: mean public accuracy, sample standard deviation (the "
             "spread; none below two seeds) and the range. Unfinished trials are listed as in progress, never as "
             "results.", ""]
    if (pts["seeds_done"] > 0).any():
        spread_chart(pts).properties(width=620, title="Campaign: parameters vs public accuracy (bars: min to max "
                                     "over seeds)") \
            .save(str(out / "study_campaign.png"), format="png", scale_factor=1.5)
        lines += ["![campaign grid](study_campaign.png)", ""]
    lines += ["| block | family | width | params | seeds done | public acc, mean ± spread | range | in progress |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in display_points(pts).iterrows():
        lines.append(f"| {r['block']} | {r['family']} | {r['width']:g} | {r['params']:,} | {r['seeds done']} | "
                     f"{r['public acc (mean ± spread)']} | {r['range']} | {r['in progress']} |")
    return (lines + [""] + campaign_budget_lines(equal_budget(pts), crossover(pts)) + campaign_reproduction(pts, frame)
            + lever_lines(lever_frame(pts, trials)))


def lever_lines(levers: pd.DataFrame) -> list[str]:
    """The levers past the study, each against its baseline, as a table (campaignviews.display_levers)."""
    if levers.empty:
        return []
    table = display_levers(levers)
    lines = ["### The levers past the study, each one change against the grid's recipe", "",
             "Each lever changes one thing in the grid's recipe at one width, with the grid's seeds. Its baseline is "
             "the grid's point of the same family and width, or, for a low learning-rate tail that continues shipped "
             "weights, those weights' own accuracy (fixed weights, so the spread is the tail's alone). A lever helps "
             "or hurts only where the difference exceeds the spread (both sides' spreads combined).", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return lines + [""]


def campaign_budget_lines(eb: pd.DataFrame, cross: dict | None) -> list[str]:
    lines = ["### Equal parameter budgets, with the spread", ""]
    if eb.empty:
        return lines + ["Not yet measurable: each family needs two or more grid widths with at least two finished "
                        "seeds each, over overlapping budgets, so that a spread exists to compare the gap with.", ""]
    lines += ["| parameter budget | MobileNet-style | plain CNN | difference | spread | winner |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r.params:,.0f} | {r.mobilenet:.3f} ± {r.mobilenet_std:.3f} | {r.plain_cnn:.3f} ± "
              f"{r.plain_cnn_std:.3f} | {r.gap:+.3f} | {r.spread:.3f} | {r.winner} |" for r in eb.itertuples()]
    if cross is None:
        where = "The gap keeps its sign over the whole overlap: there is no crossover inside the measured range."
    else:
        below = "MobileNet-style" if cross["mobilenet_below"] else "plain CNN"
        where = (f"The gap changes sign near {cross['params']:,.0f} parameters ({below} ahead below it); within the "
                 f"spread from {cross['low']:,.0f} to {cross['high']:,.0f} parameters, which is the crossover's "
                 "uncertainty.")
    return lines + ["", "Means and spreads are interpolated linearly in log(parameters) between each family's grid "
                    "points with two or more finished seeds, so the table covers only the budgets those points span "
                    "and widens as seeds finish; the spread of a difference is the two spreads combined (root of the "
                    "sum of squares), and a winner is named only where the difference exceeds it. " + where, ""]


# a run "overfits" when its training accuracy ends this far above its public accuracy (the grid's recipe, with
# augmentation, ends about 0.06 apart at mobilenet-w1: grid-mobilenet-w1-s1, 0.697 train against 0.632 public)
OVERFIT_GAP = 0.15


def peak_lines(peaks: pd.DataFrame) -> list[str]:
    """What the finished seeds of a reproduction measured about its gap: overfitting, and what was lost after the
    peak (campaignviews.peak_frame)."""
    if peaks.empty:
        return []
    lines = [f"  - seed {p.seed}: {p.final:.4f} at the end, peak {p.peak:.4f} at epoch {p.peak_epoch} of {p.epochs}, "
             f"training sample {p.train:.4f}" for p in peaks.itertuples()]
    train, final, lost = peaks["train"].mean(), peaks["final"].mean(), (peaks["peak"] - peaks["final"]).mean()
    if train - final > OVERFIT_GAP:
        cause = (f"  - Measured cause: overfitting. Without augmentation the runs end at {train:.3f} accuracy on a "
                 f"sample of their own training images against {final:.3f} public, and lose {lost * 100:.1f} points "
                 "of public accuracy after their peak on average (the peak is picked on the test split, so it is "
                 "optimistic and only says how much a stop at the right epoch could keep).")
    else:
        cause = (f"  - Not overfitting: the runs end at {train:.3f} on their training sample against {final:.3f} "
                 f"public, {lost * 100:.1f} points below their peak on average.")
    return lines + [cause]


def campaign_reproduction(pts: pd.DataFrame, frame: pd.DataFrame) -> list[str]:
    """The study's own recipe against the figures it reports, with what its finished seeds measured about a gap."""
    from core.views.campaignviews import peak_frame

    lines = []
    for block, reported in (("study-mobilenet", 0.651), ("study-plain_cnn", 0.722)):
        sel = pts[pts["block"] == block]
        if sel.empty:
            continue
        r = sel.iloc[0]
        got = ("not finished yet" + (f" ({r.in_progress})" if r.in_progress else "") if r.seeds_done == 0 else
               f"{r['mean']:.4f}" + (f" ± {r['std']:.4f} over {r.seeds_done} seeds" if r.seeds_done >= 2 else
                                     " (1 seed)") + f", {(r['mean'] - reported) * 100:+.1f} points against the study")
        lines.append(f"- `{block}` ({r.arch} width {r.width:g}, the study's recipe), reported {reported:.3f}: {got}.")
        lines += peak_lines(peak_frame(frame, block))
    return (["### The study's recipe, reproduced", ""] + lines + [""]) if lines else []
