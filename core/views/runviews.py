"""Tables about runs behind the Train and Compare pages and the study: the runs table, the Pareto front, learning
curves, confusion matrices, per-class accuracy, and which model Predict uses by default."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import numpy as np
import pandas as pd

from core.models import archs
from core.training.record import EPOCH_NUMBERS, Final, ModelSpec, RunRecord
from core.training.rundir import ONNX, RunStatus
from core.util.classes import CLASSES
from core.views.text import format_eta

if TYPE_CHECKING:
    from core.explain.gallery import Predictions

SPLITS: tuple[str, ...] = ("public", "private", "val", "train")
RUN_COLUMNS = ["name", "shipped", "arch", "family", "width", "params", "macs", "size_mb", "accuracy", "accuracy_split",
               "acc_public", "acc_private", "acc_val", "acc_train", "epochs", "epochs_planned", "wall_time_s", "device",
               "data", "status", "recipe", "created", "technique", "parent", "onnx_kb", "latency_ms", "seedless", "path"]
# Settings that do not change what is trained: runs equal in everything else are seeds of one point.
NOT_RECIPE = ("seed", "threads", "device", "cuda_graph")


def family_title(arch: str, recorded: str = "") -> str:
    try:
        return archs.get_family(arch).title
    except ValueError:  # a record from a newer or foreign registry
        return recorded or arch


def run_row(run: RunStatus) -> dict:
    """One table row for a run whose record is usable."""
    r: RunRecord = run.record  # type: ignore[assignment] - callers pass ok runs only
    split, headline = r.headline()
    onnx = run.path / ONNX
    return {
        "name": run.name, "shipped": run.shipped, "arch": r.model.arch,
        "family": family_title(r.model.arch, r.model.family), "width": r.model.width,
        "params": r.params, "macs": r.macs,
        "size_mb": r.size_bytes / 2**20 if r.size_bytes is not None else math.nan,
        "accuracy": headline, "accuracy_split": split, **{f"acc_{s}": r.accuracy(s) for s in SPLITS},
        "epochs": len(r.epochs), "epochs_planned": r.epochs_planned, "wall_time_s": r.wall_time_s,
        "device": r.device, "data": r.data_label, "status": run.status, "recipe": r.recipe, "created": r.created,
        "technique": r.variant.technique if r.variant else "fp32",
        "parent": r.variant.parent if r.variant else None,
        "onnx_kb": onnx.stat().st_size / 1024 if run.has_onnx else math.nan,
        "latency_ms": _latency(r.variant.measured.get("latency_ms_b64")) if r.variant else math.nan,
        "seedless": seedless_key(r), "path": str(run.path),
    }


def _latency(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def seedless_key(r: RunRecord) -> str:
    """The run's settings without its seed (and without where it ran): equal keys are seeds of the same recipe."""
    import json

    kept = {k: v for k, v in r.config.items() if k not in NOT_RECIPE}
    return json.dumps([r.model.arch, r.model.knobs, kept, r.variant.technique if r.variant else ""], sort_keys=True)


def runs_table(runs: Iterable[RunStatus]) -> pd.DataFrame:
    """One row per usable run (broken folders are left out: see RunStatus.problem). Latency (ONNX Runtime, batch 64,
    ms) is known for compression variants and for their parents, measured side by side when the variant was made."""
    runs = [r for r in runs if r.ok]
    parent_latency = {r.record.variant.parent: _latency(r.record.variant.measured.get("parent_latency_ms_b64"))
                      for r in runs if r.record.variant}
    rows = [run_row(r) for r in runs]
    for row in rows:
        if row["technique"] == "fp32" and row["name"] in parent_latency:
            row["latency_ms"] = parent_latency[row["name"]]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return df.astype({"params": "Int64", "macs": "Int64", "epochs": "int64", "shipped": "bool",
                      "epochs_planned": "Int64"})


def pareto_front(df: pd.DataFrame, x: str = "params", y: str = "accuracy") -> pd.DataFrame:
    """Rows not dominated by another (another has <= x and >= y, one strictly), sorted by x: the best accuracy
    reachable at each budget."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    keep, best = [], -math.inf
    for idx, val in zip(d.index, d[y]):
        if val > best:
            keep.append(idx)
            best = val
    return d.loc[keep]


def learning_curves(records: dict[str, RunRecord]) -> pd.DataFrame:
    """Long table of per-epoch metrics: run, epoch, metric (train_loss, train_acc, val_loss, val_acc), split, value."""
    rows = []
    for name, r in records.items():
        for e in r.epochs:
            for metric in EPOCH_NUMBERS:
                v = getattr(e, metric)
                if math.isfinite(v):
                    split = "train" if metric.startswith("train") else e.val_split
                    rows.append({"run": name, "epoch": e.epoch, "metric": metric, "split": split, "value": float(v)})
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "split", "value"])


def run_curves(record: RunRecord) -> pd.DataFrame:
    """One run's curves for the Train page: epoch, kind (loss or accuracy), split, value."""
    df = learning_curves({"run": record})
    return df.assign(kind=df["metric"].str.split("_").str[1].map({"loss": "loss", "acc": "accuracy"}))


def confusion_long(record: RunRecord, split: str) -> pd.DataFrame:
    """true, predicted, count, and rate (share of the true class): the heatmap's rows."""
    conf = np.asarray(record.final.confusion[split], dtype=float)  # type: ignore[union-attr]
    support = conf.sum(axis=1, keepdims=True)
    rate = np.divide(conf, support, out=np.zeros_like(conf), where=support > 0)
    rows = [{"true": CLASSES[i], "predicted": CLASSES[j], "count": int(conf[i, j]), "rate": float(rate[i, j])}
            for i in range(len(CLASSES)) for j in range(len(CLASSES))]
    return pd.DataFrame(rows)


def confusion_frame(pred: "Predictions") -> pd.DataFrame:
    """true, predicted, count, rate (share of the true class): the gallery's clickable matrix, in the same layout as
    the run record's matrix on Compare."""
    matrix = RunRecord(name="gallery", model=ModelSpec(arch=""), final=Final(confusion={pred.split: pred.confusion().tolist()}))
    return confusion_long(matrix, pred.split)


def per_class_accuracy(record: RunRecord, split: str) -> pd.DataFrame:
    """class, accuracy, support for one split of a finished run."""
    final = record.final
    per = (final.per_class.get(split) if final else None) or [math.nan] * len(CLASSES)
    conf = np.asarray(final.confusion.get(split) if final and split in final.confusion
                      else np.zeros((len(CLASSES), len(CLASSES))))
    return pd.DataFrame({"class": list(CLASSES), "accuracy": [float(v) if v is not None else math.nan for v in per],
                         "support": conf.sum(axis=1).astype(int)})


def best_model(runs: Iterable[RunStatus]) -> RunStatus | None:
    """The default model for predictions: the best shipped fp32 run with an ONNX file (by headline accuracy), else
    the best of any run with one."""
    usable = [r for r in runs if r.has_onnx]

    def score(r: RunStatus) -> float:
        v = r.record.headline()[1]  # type: ignore[union-attr]
        return v if math.isfinite(v) else -1.0

    shipped = [r for r in usable if r.shipped and r.record.variant is None]  # type: ignore[union-attr]
    pool = shipped or usable
    return max(pool, key=score) if pool else None


def model_label(run: RunStatus) -> str:
    r: RunRecord = run.record  # type: ignore[assignment]
    split, acc = r.headline()
    width = r.model.knobs.get("width", "?")
    bits = [run.name, f"{r.model.arch} w{width:g}" if isinstance(width, float) else f"{r.model.arch} w{width}"]
    if r.variant:
        bits.append(r.variant.technique)
    if r.params is not None:
        bits.append(f"{r.params:,} params")
    if split:
        bits.append(f"{split} acc {acc:.3f}")
    bits.append(r.data_label)
    return " · ".join(bits) + (" (shipped)" if run.shipped else "")


def done_text(run: RunStatus) -> str:
    """The Train page's line for a finished run: time, device, every split's accuracy."""
    r: RunRecord = run.record  # type: ignore[assignment]
    accs = " · ".join(f"{k} {v:.3f}" for k, v in (r.final.accuracy.items() if r.final else []))
    return f"{r.wall_time_s:.0f} s on {r.device or '?'}: accuracy {accs}"


def chart_points(table: pd.DataFrame, data_label: str, acc_col: str, x_col: str = "params") -> pd.DataFrame:
    """The runs of one dataset that have the chosen accuracy and cost, with `acc` holding that accuracy."""
    pts = table[table["data"] == data_label].dropna(subset=[acc_col, x_col])
    return pts.assign(acc=pts[acc_col].astype(float), **{x_col: pts[x_col].astype(float)})


def empty_chart_reason(table: pd.DataFrame, data_label: str, acc_col: str, split_title: str,
                       x_col: str = "params", x_title: str = "parameter count") -> str:
    """Why the chart has no points, in words a learner can act on."""
    if table.empty:
        return "No runs yet: train one on the Train page."
    mine = table[table["data"] == data_label]
    if mine.empty:
        return f"No runs on {data_label} data."
    if mine[acc_col].isna().all():
        return f"No run on {data_label} data has an accuracy on the {split_title} split; pick another split."
    return (f"No run on {data_label} data has a measured {x_title}: latency is measured when a compression variant "
            "is made (Compress page); pick another cost.")


def data_options(table: pd.DataFrame) -> list[str]:
    """Datasets to chart, one at a time (accuracies on synthetic and FER2013 faces are not comparable); FER2013
    first, since the study's points are FER2013 ones."""
    labels = sorted(table["data"].unique().tolist()) if not table.empty else []
    return sorted(labels, key=lambda d: (d == "synthetic", d))


def display_table(table: pd.DataFrame):  # noqa: ANN201 - a pandas Styler
    """The runs table as shown: numbers formatted, and a dash wherever a value is missing (not 'None')."""
    formats = {"width": "{:.3g}", "params": "{:,}", "macs": "{:,}", "size_mb": "{:.2f}", "onnx_kb": "{:,.0f}",
               "wall_time_s": "{:.0f}", **{f"acc_{s}": "{:.3f}" for s in SPLITS}, "accuracy": "{:.3f}"}
    styled = table.style.format(na_rep="—")  # every column; the number formats below keep the dash too
    return styled.format({k: v for k, v in formats.items() if k in table.columns}, na_rep="—")


def left_out_text(left_out: list) -> str:
    """The warning Predict and Live show for runs whose ONNX export cannot be used, one line each with the reason."""
    return ("Left out, their ONNX export cannot be used (details on Compare):  \n"
            + "  \n".join(f"`{i.name}`: {i.onnx_problem}" for i in left_out))


def trainings(runs: list[RunStatus]) -> tuple[list[RunStatus], int]:
    """The runs that are trainings, and how many were left out as compression variants: a variant's record is a copy
    of its parent's (its time, its curves), so among trainings it would pass for a second finished training."""
    kept = [r for r in runs if r.record is None or r.record.variant is None]
    return kept, len(runs) - len(kept)


def progress_text(run: RunStatus) -> str:
    """The text on a live run's progress bar: its place in the queue, its step and ETA, or, once the steps are
    done, the stage that runs before the run is finished (the bar is full then, and this can take a while)."""
    p = run.progress
    if run.status == "queued":
        return f"queued: number {run.position} in line; it starts when a running training ends"
    if run.status == "starting":
        return "starting: loading data and building the model..."
    if not p:
        return f"epoch {len(run.record.epochs) if run.record else 0}/{run.config.get('epochs', '?')}"
    if run.status == "running" and isinstance(p.get("stage"), str):  # the steps are done; this can take a while
        return f"training steps done · now: {p['stage']}..."
    text = f"epoch {p['epoch']}/{p['epochs']} · step {p['step']}/{p['steps']} · loss {p['loss']:.3f}"
    if run.status == "running":
        text += f" · ETA {format_eta(run.eta_s)}"
    return text
