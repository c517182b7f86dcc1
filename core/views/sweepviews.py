"""Sweeps as tables: a sweep record's trials (the Train page) and runs grouped by sweep and grid point with their
seeds pooled (Compare)."""
from __future__ import annotations

import os
from typing import Any

import pandas as pd

from core.service.sweep import list_sweeps
from core.training import rundir
from core.util.fsutil import runs_dir


def trials_table(state: dict[str, Any]) -> pd.DataFrame:
    """One row per trial of a sweep record: what the Train page shows."""
    grid = list((state.get("grid") or {}))
    rows = [{"trial": t["run"], **{k: t["config"].get(k) for k in grid}, "seed": t["config"].get("seed"),
             "state": t["state"], "epoch": f"{t['epoch']}/{t['epochs']}", "val acc": t.get("val_acc"),
             "failures": t.get("failures", 0)} for t in state.get("trials", [])]
    return pd.DataFrame(rows)


def sweep_groups(runs_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Runs grouped by sweep and grid point, seeds pooled: mean ± spread (sample std) of the headline accuracy.
    Columns: sweep, the grid's knobs, params, seeds, done, accuracy_mean, accuracy_std, accuracy_min,
    accuracy_max, split. For Compare."""
    rows = []
    for state in list_sweeps(runs_root):
        knobs = list(state.get("grid") or {}) or ["arch", "width"]
        for t in state["trials"]:
            try:
                record = rundir.read_record(runs_dir(runs_root) / t["run"])
            except ValueError:
                continue  # not started yet, or deleted
            split, acc = record.headline()
            rows.append({"sweep": state.get("name"), **{k: str(t["config"].get(k)) for k in knobs},
                         "params": record.params, "accuracy": acc, "split": split,
                         "done": record.status == "done", "_knobs": tuple(knobs)})
    if not rows:
        return pd.DataFrame(columns=["sweep", "params", "seeds", "done", "accuracy_mean", "accuracy_std",
                                     "accuracy_min", "accuracy_max", "split"])
    frames = []
    for (_, knobs), df in pd.DataFrame(rows).groupby(["sweep", "_knobs"], sort=False):
        g = df.groupby(["sweep", *knobs], sort=False, dropna=False).agg(
            params=("params", "first"), seeds=("accuracy", "size"), done=("done", "sum"),
            accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"), accuracy_min=("accuracy", "min"),
            accuracy_max=("accuracy", "max"), split=("split", "first"))
        frames.append(g.reset_index())
    return pd.concat(frames, ignore_index=True)
