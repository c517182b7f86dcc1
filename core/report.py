"""Tables behind the app's charts and the study docs: runs table, Pareto front, params-vs-width grid, reference
points, learning curves, confusion matrices, conv-parameter breakdown, class balance and photo results."""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import pandas as pd

from core import archs
from core.checkpoint import RunInfo
from core.classes import CLASSES

WIDTH_GRID: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
SPLITS: tuple[str, ...] = ("public", "private", "val", "train")
# Headline accuracy: FER2013's PublicTest where the run has it, else the held-out validation split.
HEADLINE_ORDER: tuple[str, ...] = ("public", "val", "private")
RUN_COLUMNS = ["name", "shipped", "arch", "family", "width", "params", "macs", "size_mb", "accuracy", "accuracy_split",
               "acc_public", "acc_private", "acc_val", "acc_train", "epochs", "epochs_planned", "wall_time_s", "device",
               "data", "status", "recipe", "created", "path"]


# ---------------------------------------------------------------------------------------------------------
# Architecture tables
# ---------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _params_at(arch: str, width: float) -> int:
    import torch

    with torch.device("meta"):  # parameter count only: no weights allocated, no FLOP counting
        model = archs.build(arch, width=width)
    return sum(p.numel() for p in model.parameters())


def params_vs_width(arch_names: Iterable[str] | None = None, widths: Iterable[float] = WIDTH_GRID) -> pd.DataFrame:
    """One row per (family, width): arch, family title, width, params, depthwise."""
    rows = []
    for name in arch_names or archs.list_archs():
        fam = archs.get_family(name)
        for w in widths:
            rows.append({"arch": name, "family": fam.title, "width": float(w), "params": _params_at(name, float(w)),
                         "depthwise": fam.depthwise})
    return pd.DataFrame(rows, columns=["arch", "family", "width", "params", "depthwise"])


def reference_points() -> pd.DataFrame:
    """The study's two models at width 1.0: arch, label, params, public and private accuracy."""
    rows = []
    for name in archs.list_archs():
        ref = archs.get_family(name).reference
        if ref:
            rows.append({"arch": name, "family": archs.get_family(name).title, "width": 1.0, "params": ref["params"],
                         "public": ref["public"], "private": ref["private"],
                         "label": f"study: {name} ({ref['params']:,} params, {ref['public']:.3f} public)"})
    return pd.DataFrame(rows, columns=["arch", "family", "width", "params", "public", "private", "label"])


@lru_cache(maxsize=256)
def _conv_rows(arch: str, knob_items: tuple[tuple[str, float], ...]) -> tuple[tuple, ...]:
    import torch
    from torch import nn

    with torch.device("meta"):
        model = archs.build(arch, **dict(knob_items))
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            rows.append((name, m.in_channels, m.out_channels, k, m.groups, m.weight.numel()))
    return tuple(rows)


def conv_breakdown(arch: str, **knobs: float) -> dict[str, Any]:
    """Where a model's convolution weights sit, and what the other kind of convolution would cost.

    Depthwise convs (groups == channels) filter space with k*k weights per channel; pointwise (1x1) convs mix
    channels with Cin*Cout weights; a standard k x k conv does both at once for k*k*Cin*Cout. Returns totals per
    kind, the depthwise-separable pairs (depthwise followed by pointwise) with the standard conv they replace,
    and the standard k x k convs with the separable pair that would replace them."""
    resolved = archs.get_family(arch).resolve(**knobs)
    rows = _conv_rows(arch, tuple(sorted(resolved.items())))
    kinds = {"depthwise": 0, "pointwise": 0, "standard": 0, "grouped": 0}
    pairs, standards = [], []
    for i, (name, cin, cout, k, groups, n) in enumerate(rows):
        if groups > 1 and groups == cin:
            kinds["depthwise"] += n
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            if nxt is not None and nxt[3] == 1 and nxt[4] == 1 and nxt[1] == cout:
                pairs.append({"depthwise": name, "pointwise": nxt[0], "cin": cin, "cout": nxt[2], "k": k,
                              "separable": n + nxt[5], "standard": k * cin * nxt[2]})
        elif groups > 1:
            kinds["grouped"] += n
        elif k == 1:
            kinds["pointwise"] += n
        else:
            kinds["standard"] += n
            standards.append({"conv": name, "cin": cin, "cout": cout, "k": k, "standard": n,
                              "separable": k * cin + cin * cout})
    total = sum(kinds.values())
    return {
        "arch": arch, "knobs": resolved, "conv_params": total, **{f"{k}_params": v for k, v in kinds.items()},
        "pairs": pairs, "standard_convs": standards,
        "pairs_separable": sum(p["separable"] for p in pairs), "pairs_standard": sum(p["standard"] for p in pairs),
        "standard_total": sum(s["standard"] for s in standards),
        "standard_as_separable": sum(s["separable"] for s in standards),
    }


# ---------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------
def headline_accuracy(record: dict[str, Any] | None) -> tuple[str | None, float]:
    """(split, accuracy) used to rank a run: public where present, else val, else private; NaN if none."""
    acc = ((record or {}).get("final") or {}).get("accuracy") or {}
    for split in HEADLINE_ORDER:
        v = acc.get(split)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return split, float(v)
    return None, float("nan")


def data_label(record: dict[str, Any] | None) -> str:
    data = (record or {}).get("data") or {}
    if data.get("synthetic") or data.get("kind") == "synthetic":
        return "synthetic"
    if data.get("kind"):
        return f"FER2013 ({data['kind']})"
    return "unknown"


def run_row(info: RunInfo, status: str | None = None) -> dict[str, Any]:
    r = info.record or {}
    model = r.get("model") or {}
    knobs = model.get("knobs") or {}
    acc = (r.get("final") or {}).get("accuracy") or {}
    split, headline = headline_accuracy(r)
    arch = model.get("arch", "?")
    try:
        family = archs.get_family(arch).title
    except ValueError:
        family = model.get("family") or arch
    size = r.get("size_bytes")
    nan = float("nan")
    return {
        "name": info.name, "shipped": info.shipped, "arch": arch, "family": family,
        "width": float(knobs.get("width", nan)), "params": r.get("params"), "macs": r.get("macs"),
        "size_mb": size / 2**20 if isinstance(size, (int, float)) else nan,
        "accuracy": headline, "accuracy_split": split,
        **{f"acc_{s}": float(acc[s]) if isinstance(acc.get(s), (int, float)) else nan for s in SPLITS},
        "epochs": len(r.get("epochs") or []), "epochs_planned": (r.get("config") or {}).get("epochs"),
        "wall_time_s": float(r.get("wall_time_s") or 0.0),
        "device": r.get("device", ""), "data": data_label(r), "status": status or r.get("status", "done"),
        "recipe": r.get("recipe", ""), "created": r.get("created", ""), "path": str(info.path),
    }


def runs_table(infos: Iterable[RunInfo], statuses: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per usable run (broken folders are left out: see RunInfo.problem). `statuses` maps run paths to a
    live status (core.jobs) that overrides the record's, e.g. 'interrupted'."""
    statuses = statuses or {}
    rows = [run_row(i, statuses.get(str(i.path))) for i in infos if i.ok]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return df.astype({"params": "Int64", "macs": "Int64", "epochs": "int64", "shipped": "bool"})


def pareto_front(df: pd.DataFrame, x: str = "params", y: str = "accuracy") -> pd.DataFrame:
    """Rows not dominated by another (another has <= x and >= y, one strictly), sorted by x: the best accuracy
    reachable at each parameter budget."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[True, False])
    keep, best = [], -math.inf
    for idx, val in zip(d.index, d[y]):
        if val > best:
            keep.append(idx)
            best = val
    return d.loc[keep]


def learning_curves(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Long table of per-epoch metrics: run, epoch, metric (train_loss, train_acc, val_loss, val_acc), value."""
    rows = []
    for name, r in records.items():
        for e in (r or {}).get("epochs") or []:
            for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
                v = e.get(metric)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    rows.append({"run": name, "epoch": int(e["epoch"]), "metric": metric, "value": float(v)})
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "value"])


def evaluated_splits(record: dict[str, Any] | None) -> list[str]:
    conf = ((record or {}).get("final") or {}).get("confusion") or {}
    order = [s for s in SPLITS if s in conf]
    return order + [s for s in conf if s not in order]


def confusion_long(record: dict[str, Any], split: str) -> pd.DataFrame:
    """true, predicted, count, and rate (share of the true class): the heatmap's rows."""
    conf = np.asarray(((record.get("final") or {}).get("confusion") or {})[split], dtype=float)
    support = conf.sum(axis=1, keepdims=True)
    rate = np.divide(conf, support, out=np.zeros_like(conf), where=support > 0)
    rows = [{"true": CLASSES[i], "predicted": CLASSES[j], "count": int(conf[i, j]), "rate": float(rate[i, j])}
            for i in range(len(CLASSES)) for j in range(len(CLASSES))]
    return pd.DataFrame(rows)


def per_class_accuracy(record: dict[str, Any], split: str) -> pd.DataFrame:
    """class, accuracy, support for one split of a finished run."""
    final = record.get("final") or {}
    per = (final.get("per_class") or {}).get(split) or [float("nan")] * len(CLASSES)
    conf = np.asarray((final.get("confusion") or {}).get(split) or np.zeros((len(CLASSES), len(CLASSES))))
    return pd.DataFrame({"class": list(CLASSES), "accuracy": [float(v) if v is not None else float("nan") for v in per],
                         "support": conf.sum(axis=1).astype(int)})


def best_model(infos: Iterable[RunInfo]) -> RunInfo | None:
    """The default model for predictions: the best shipped run with an ONNX file (by headline accuracy), else the
    best of any run with one."""
    usable = [i for i in infos if i.ok and i.has_onnx]

    def score(i: RunInfo) -> float:
        v = headline_accuracy(i.record)[1]
        return v if math.isfinite(v) else -1.0

    shipped = [i for i in usable if i.shipped]
    pool = shipped or usable
    return max(pool, key=score) if pool else None


def model_label(info: RunInfo) -> str:
    r = info.record or {}
    model = r.get("model") or {}
    split, acc = headline_accuracy(r)
    bits = [info.name, f"{model.get('arch', '?')} w{(model.get('knobs') or {}).get('width', '?')}"]
    if isinstance(r.get("params"), int):
        bits.append(f"{r['params']:,} params")
    if split:
        bits.append(f"{split} acc {acc:.3f}")
    bits.append(data_label(r))
    return " · ".join(bits) + (" (shipped)" if info.shipped else "")


# ---------------------------------------------------------------------------------------------------------
# Data and photos
# ---------------------------------------------------------------------------------------------------------
def class_balance(data: Any) -> pd.DataFrame:
    """split, class, count, share for every split of a core.data.FERData."""
    rows = []
    for split, s in data.splits.items():
        counts = s.class_counts()
        total = max(1, int(counts.sum()))
        for c, n in zip(CLASSES, counts):
            rows.append({"split": split, "class": c, "count": int(n), "share": int(n) / total})
    return pd.DataFrame(rows, columns=["split", "class", "count", "share"])


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:])")


def md_escape(text: str) -> str:
    """Backslash-escape Markdown in user-supplied text (file names) so st.markdown/st.error show it literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def upscale(img: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement: shows the 48x48 pixels the model sees, without smoothing them away."""
    return np.repeat(np.repeat(np.asarray(img), factor, axis=0), factor, axis=1)


def gallery(split: Any, per_class: int = 6, seed: int = 0, factor: int = 3) -> dict[str, list[np.ndarray]]:
    """Up to `per_class` random images of each class from a split, upscaled for display."""
    rng = np.random.default_rng(seed)
    out = {}
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(split.labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        out[name] = [upscale(split.images[i], factor) for i in pick]
    return out


def photo_rows(results: Iterable[Any]) -> pd.DataFrame:
    """One row per face of core.photo.PhotoResult objects: photo, face, box, top class, confidence, probabilities."""
    rows = []
    for r in results:
        for i, f in enumerate(r.faces, 1):
            rows.append({"photo": r.name, "face": i, "no_face_found": f.fallback, "box": " ".join(map(str, f.box)),
                         "top": f.top, "confidence": round(f.confidence, 4),
                         **{c: round(float(p), 4) for c, p in zip(CLASSES, f.probs)}})
    return pd.DataFrame(rows, columns=["photo", "face", "no_face_found", "box", "top", "confidence", *CLASSES])


def probabilities_frame(probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"class": list(CLASSES), "probability": [float(p) for p in probs]})
