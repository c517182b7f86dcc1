"""The campaign's results as tables and a chart: one row per trial, one point per (block, family, width) with the
mean and spread over its finished seeds, the equal-budget comparison with that spread, and each lever against its
baseline. Unfinished trials are shown as in progress ("epoch 12 of 50"), never as results. Used by Compare and
docs/study.md."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import altair as alt
import numpy as np
import pandas as pd

from core.service.campaign import DEFAULT_FILE, DEFAULT_OUT, CampaignTrial, load_campaign, states

POINT_COLUMNS = ["block", "arch", "width", "params", "seeds", "seeds_done", "mean", "std", "min", "max", "in_progress"]
FAMILY_TITLES = {"mobilenet": "MobileNet-style", "plain_cnn": "plain CNN"}


def trials_frame(trials: list[CampaignTrial] | None = None, out: Path = DEFAULT_OUT) -> pd.DataFrame:
    """One row per trial: its folder, block, arch, width, seed, params, state, the progress label, and the public
    accuracy of a finished trial (NaN for every other state)."""
    from core.models.summary import summarize
    from core.training.config import TrainConfig

    trials = load_campaign(DEFAULT_FILE) if trials is None else trials
    rows = []
    for s in states(trials, Path(out)):
        c = s.trial.config
        knobs = TrainConfig.from_dict(c).model_knobs()
        rows.append({"trial": s.trial.name, "folder": str(Path(out) / s.trial.name), "block": s.trial.block,
                     "arch": c["arch"], "width": float(c["width"]),
                     "seed": c["seed"], "params": summarize(c["arch"], **knobs).params, "state": s.state,
                     "progress": s.label(), "epoch": s.epoch, "epochs": s.epochs,
                     "accuracy": s.accuracy if s.state == "done" else np.nan})
    return pd.DataFrame(rows)


def points_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Seeds pooled per (block, arch, width): mean, sample standard deviation (NaN below two seeds), min and max of the
    finished seeds, and which seeds are still in progress."""
    if frame.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    rows = []
    for (block, arch, width), g in frame.groupby(["block", "arch", "width"], sort=False):
        done = g.loc[g["state"] == "done", "accuracy"].astype(float)
        waiting = g[g["state"] != "done"]
        rows.append({"block": block, "arch": arch, "width": width, "params": int(g["params"].iloc[0]),
                     "seeds": len(g), "seeds_done": len(done), "mean": done.mean() if len(done) else np.nan,
                     "std": done.std() if len(done) >= 2 else np.nan, "min": done.min() if len(done) else np.nan,
                     "max": done.max() if len(done) else np.nan,
                     "in_progress": "; ".join(f"seed {r.seed}: {r.progress}" for r in waiting.itertuples())})
    out = pd.DataFrame(rows, columns=POINT_COLUMNS)
    # blocks in the campaign's own order (priority first), each block's widths from the smallest
    order = {b: i for i, b in enumerate(dict.fromkeys(frame["block"]))}
    return out.sort_values(["block", "params"], key=lambda c: c.map(order) if c.name == "block" else c,
                           kind="stable").reset_index(drop=True)


def grid_points(points: pd.DataFrame) -> pd.DataFrame:
    """The study's grid: the blocks named grid-*, with at least one finished seed, smallest first."""
    sel = points[points["block"].str.startswith("grid-") & (points["seeds_done"] > 0)]
    return sel.sort_values(["arch", "params"]).reset_index(drop=True)


def _curve(fam: pd.DataFrame, budgets: np.ndarray, column: str) -> np.ndarray:
    return np.interp(np.log10(budgets), np.log10(fam["params"].to_numpy(float)), fam[column].to_numpy(float))


def equal_budget(points: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """MobileNet-style minus plain CNN at `n` budgets inside both families' ranges: each family's mean and spread
    interpolated linearly in log(parameters) between its grid points with two or more finished seeds (a point
    without a spread cannot be compared; those with one join as their next seeds finish). `spread` is the two
    spreads combined (root of the sum of squares); a winner is named only where the gap exceeds it. Empty when a
    family has fewer than two such points or the families' ranges do not overlap."""
    seeded = grid_points(points)[lambda d: d["seeds_done"] >= 2]
    fams = {a: seeded[seeded["arch"] == a] for a in ("mobilenet", "plain_cnn")}
    if any(len(f) < 2 for f in fams.values()):
        return pd.DataFrame()
    lo = max(f["params"].min() for f in fams.values())
    hi = min(f["params"].max() for f in fams.values())
    if lo >= hi:
        return pd.DataFrame()
    budgets = np.geomspace(lo, hi, n)
    out = pd.DataFrame({"params": budgets})
    for arch, f in fams.items():
        out[arch], out[f"{arch}_std"] = _curve(f, budgets, "mean"), _curve(f, budgets, "std")
    out["gap"] = out["mobilenet"] - out["plain_cnn"]
    out["spread"] = np.hypot(out["mobilenet_std"], out["plain_cnn_std"])
    out["winner"] = np.where(out["gap"].abs() <= out["spread"], "within the spread",
                             np.where(out["gap"] > 0, "MobileNet-style", "plain CNN"))
    return out


def crossover(points: pd.DataFrame) -> dict | None:
    """Where the gap changes sign on a fine grid of budgets, with the range of budgets around it where the gap is
    within the spread (its uncertainty); None when the sign never changes inside the overlap."""
    fine = equal_budget(points, n=400)
    if fine.empty:
        return None
    sign = np.sign(fine["gap"].to_numpy())
    flips = np.nonzero(sign[:-1] * sign[1:] < 0)[0]
    if not len(flips):
        return None
    i = int(flips[0])
    within = (fine["gap"].abs() <= fine["spread"]).to_numpy()
    lo, hi = i, i + 1
    while lo > 0 and within[lo - 1]:
        lo -= 1
    while hi < len(fine) - 1 and within[hi + 1]:
        hi += 1
    return {"params": float(np.sqrt(fine["params"][i] * fine["params"][i + 1])), "low": float(fine["params"][lo]),
            "high": float(fine["params"][hi]), "mobilenet_below": bool(fine["gap"][i] > 0)}


def spread_chart(points: pd.DataFrame, *, height: int = 360) -> alt.LayerChart:
    """Mean public accuracy against parameters (log), one line per family and block, with min-max bars over seeds."""
    # the grid's blocks draw one line per family; other blocks (the study's recipe, longer schedules) their own
    data = points[points["seeds_done"] > 0].assign(
        family=lambda d: d["arch"].map(FAMILY_TITLES).fillna(d["arch"])
        + np.where(d["block"].str.startswith("grid-"), "", " · " + d["block"]))
    # the x domain hugs the points: Vega's own log domain starts at a power of ten (1k), leaving a third blank
    span = [float(data["params"].min()) / 1.25, float(data["params"].max()) * 1.25] if len(data) else [1e3, 1e7]
    x = alt.X("params:Q", scale=alt.Scale(type="log", domain=span, nice=False), title="parameters (log scale)",
              axis=alt.Axis(format="~s"))
    color = alt.Color("family:N", legend=alt.Legend(orient="bottom", columns=2, labelLimit=0, title=None))
    tip = ["block", "arch", alt.Tooltip("width:Q", format="g"), alt.Tooltip("params:Q", format=","),
           alt.Tooltip("mean:Q", format=".4f"), alt.Tooltip("std:Q", format=".4f"), "seeds_done", "seeds"]
    # an explicit domain two points past the data: with one trial done (min = max) Vega's own domain has no span,
    # and its axis then labelled an accuracy of 0.53 as "1"
    # (pandas skips the NaN min/max of a point with one seed)
    lo, hi = ((float(data[["min", "mean"]].min().min()), float(data[["max", "mean"]].max().max())) if len(data)
              else (0, 1))
    scale = alt.Scale(domain=[max(0.0, lo - 0.02), min(1.0, hi + 0.02)])  # both layers: a shared scale would add 0
    y = alt.Y("mean:Q", title="public accuracy (mean over seeds)", axis=alt.Axis(format=".2f"), scale=scale)
    line = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=70, filled=True)).encode(x=x, y=y, color=color,
                                                                                              tooltip=tip)
    bars = alt.Chart(data).mark_rule(strokeWidth=2).encode(x=x, y=alt.Y("min:Q", scale=scale), y2="max:Q", color=color)
    return alt.layer(bars, line).properties(height=height)


def accuracy_text(r: pd.Series) -> str:
    if r["seeds_done"] == 0:
        return "—"
    return f"{r['mean']:.4f}" + (f" ± {r['std']:.4f}" if r["seeds_done"] >= 2 else " (1 seed)")


def display_points(points: pd.DataFrame) -> pd.DataFrame:
    """The points as Compare shows them: one text column for mean ± spread, one for what is still running."""
    return pd.DataFrame({
        "block": points["block"], "family": points["arch"].map(FAMILY_TITLES).fillna(points["arch"]),
        "width": points["width"], "params": points["params"],
        "seeds done": [f"{d} of {n}" for d, n in zip(points["seeds_done"], points["seeds"])],
        "public acc (mean ± spread)": [accuracy_text(r) for _, r in points.iterrows()],
        "range": [f"{r['min']:.4f}–{r['max']:.4f}" if r["seeds_done"] >= 2 else "—" for _, r in points.iterrows()],
        "in progress": points["in_progress"].replace("", "—")})


def peak_frame(frame: pd.DataFrame, block: str) -> pd.DataFrame:
    """Per finished seed of `block`: its final public accuracy, the best public accuracy of any epoch and that epoch,
    and its accuracy on the training sample of the final evaluation: how far a run overfits, and what it lost after
    its peak. The peak is picked on the test split itself, so it is optimistic: a diagnosis, never a result."""
    from core.training import rundir

    rows = []
    for r in frame[(frame["block"] == block) & (frame["state"] == "done")].itertuples():
        record = rundir.read_record(r.folder)
        public = [e for e in record.epochs if e.val_split == "public"]
        peak = max(public, key=lambda e: e.val_acc) if public else None
        rows.append({"seed": r.seed, "final": record.accuracy("public"), "train": record.accuracy("train"),
                     "peak": peak.val_acc if peak else np.nan, "peak_epoch": peak.epoch if peak else 0,
                     "epochs": len(record.epochs)})
    return pd.DataFrame(rows, columns=["seed", "final", "train", "peak", "peak_epoch", "epochs"])


LEVER_COLUMNS = ["block", "arch", "width", "params", "change", "baseline", "seeds_done", "seeds", "mean", "std",
                 "baseline_mean", "baseline_std", "difference", "spread", "verdict"]


def _change_text(config: dict, base: dict) -> str:
    """The settings in which a lever's trials differ from the grid's at the same width (the seed aside)."""
    shown = {None: "the architecture's default", True: "on", False: "off"}
    return ", ".join(f"{k} {shown.get(v, v) if isinstance(v, (bool, type(None))) else v}"
                     for k, v in config.items() if k != "seed" and v != base.get(k))


def _shipped_accuracy(folder: str) -> float:
    from core.training import rundir
    from core.util.fsutil import PROJECT_ROOT

    try:
        return float(rundir.read_record(PROJECT_ROOT / folder).headline()[1])
    except ValueError:
        return float("nan")


def _lever_verdict(r: dict) -> str:
    if r["seeds_done"] == 0:
        return "not finished yet"
    if np.isnan(r["baseline_mean"]):
        return "its baseline has no result yet"
    if np.isnan(r["spread"]):
        return "needs two finished seeds on each side"
    if abs(r["difference"]) <= r["spread"]:
        return "within the spread"
    return "helps" if r["difference"] > 0 else "hurts"


def lever_frame(points: pd.DataFrame, trials: list[CampaignTrial]) -> pd.DataFrame:
    """Every lever (a block named neither grid-* nor study-*) at each width against its baseline, as the results
    issue asks: one change against the grid's recipe, with seeds. The baseline is the grid's point of the same family
    and width, or, for a block that continues shipped weights (`init_from`), that checkpoint's own accuracy: fixed
    weights, not a draw, so the spread is the lever's alone. `difference` is lever minus baseline; a lever "helps" or
    "hurts" only where the difference exceeds the spread (both spreads combined, as at equal budgets)."""
    configs: dict[tuple, dict] = {}
    for t in trials:  # the first trial's settings stand for the block's (they differ only by seed)
        configs.setdefault((t.block, t.config["arch"], float(t.config["width"])), t.config)
    grid = {(a, w): b for (b, a, w) in configs if b.startswith("grid-")}
    by_key = points.set_index(["block", "arch", "width"])
    rows = []
    for _, p in points[~points["block"].str.startswith(("grid-", "study-"))].iterrows():
        config, key = configs[(p["block"], p["arch"], p["width"])], (p["arch"], p["width"])
        base = configs.get((grid.get(key, ""), *key), {})
        if config.get("init_from"):
            baseline, b_mean, b_std = config["init_from"], _shipped_accuracy(config["init_from"]), 0.0
        elif key in grid:
            g = by_key.loc[(grid[key], *key)]
            baseline, b_mean, b_std = f"{grid[key]} w{p['width']:g}", g["mean"], g["std"]
        else:
            baseline, b_mean, b_std = "no grid point at this width", np.nan, np.nan
        row = {**{c: p[c] for c in ("block", "arch", "width", "params", "seeds_done", "seeds", "mean", "std")},
               "change": _change_text(config, base), "baseline": baseline, "baseline_mean": b_mean,
               "baseline_std": b_std, "difference": p["mean"] - b_mean, "spread": float(np.hypot(p["std"], b_std))}
        rows.append({**row, "verdict": _lever_verdict(row)})
    return pd.DataFrame(rows, columns=LEVER_COLUMNS)


def display_levers(levers: pd.DataFrame) -> pd.DataFrame:
    """The levers as Compare and study.md show them: accuracies as text, the difference and spread in points."""
    def points_text(v: float, sign: str = "") -> str:
        return "—" if np.isnan(v) else f"{v * 100:{sign}.1f}"

    def baseline_text(name: str, mean: float, std: float) -> str:
        return f"{name}: " + ("—" if np.isnan(mean) else f"{mean:.4f}" + ("" if np.isnan(std) or std == 0
                                                                          else f" ± {std:.4f}"))

    # the verdict and the numbers behind it first, the long description of the change last: a narrow screen
    # scrolls the table sideways, and the verdict must be in its first view
    return pd.DataFrame({
        "lever": levers["block"], "width": levers["width"], "verdict": levers["verdict"],
        "difference (points)": [points_text(v, "+") for v in levers["difference"]],
        "spread (points)": [points_text(v) for v in levers["spread"]],
        "public acc (mean ± spread)": [accuracy_text(r) for _, r in levers.iterrows()],
        "seeds done": [f"{d} of {n}" for d, n in zip(levers["seeds_done"], levers["seeds"])],
        "baseline": [baseline_text(*v) for v in
                     zip(levers["baseline"], levers["baseline_mean"], levers["baseline_std"])],
        "change against the grid's recipe": levers["change"]})


def curve_defaults(frame: pd.DataFrame) -> list[str]:
    """The trials whose learning curves Compare shows first: those training now, beside the finished seeds of the
    same point (how the running seed compares with them); the last finished trial when none is running."""
    running = frame[frame["state"] == "in progress"]
    if running.empty:
        done = frame[frame["state"] == "done"]
        return done["trial"].tail(1).tolist()
    same = frame.set_index(["block", "arch", "width"]).index.isin(running.set_index(["block", "arch", "width"]).index)
    return frame.loc[same & (frame["epoch"] > 0), "trial"].tolist()


def trial_records(frame: pd.DataFrame, names: list[str]) -> dict:
    """name -> RunRecord of the named trials (a folder whose record cannot be read is left out)."""
    from core.training import rundir

    folders = dict(zip(frame["trial"], frame["folder"]))
    out = {}
    for name in names:
        try:
            out[name] = rundir.read_record(folders[name])
        except (KeyError, ValueError):
            continue
    return out


def progress(frame: pd.DataFrame) -> tuple[float, str]:
    """How far the campaign is, by epochs (trials differ in length): (fraction done, a sentence saying it)."""
    done, epochs, total = int((frame["state"] == "done").sum()), int(frame["epoch"].sum()), int(frame["epochs"].sum())
    return (epochs / total if total else 0.0,
            f"{done} of {len(frame)} trials finished ({epochs:,} of {total:,} epochs)")


class CampaignResults(NamedTuple):
    trials: pd.DataFrame  # trials_frame
    points: pd.DataFrame  # points_frame
    levers: pd.DataFrame  # lever_frame
    error: str | None  # why the campaign file could not be read (every frame then empty)


def campaign_results() -> CampaignResults:
    """The committed campaign's trials, points and levers, its file and trial folders read once."""
    try:
        trials = load_campaign(DEFAULT_FILE)
        frame = trials_frame(trials)
        points = points_frame(frame)
        return CampaignResults(frame, points, lever_frame(points, trials), None)
    except ValueError as exc:
        return CampaignResults(pd.DataFrame(), pd.DataFrame(columns=POINT_COLUMNS),
                               pd.DataFrame(columns=LEVER_COLUMNS), str(exc))
