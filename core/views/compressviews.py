"""The table of compression variants and their fp32 parents (Compare, Predict, the Compress page and
docs/study.md read it), and its points ready to plot."""
from __future__ import annotations

import os

import pandas as pd

from core.compression import compress
from core.models import archs
from core.training import rundir


def variants_table(runs_root: str | os.PathLike | None = None, include_shipped: bool = True) -> pd.DataFrame:
    """One row per compression variant among the shipped checkpoints and the runs folder: name, parent, technique,
    params, MACs, ONNX and gzip bytes, latency at batch 1 and 64 (ms), accuracy and its split, the parent's accuracy,
    the difference, and the parent's own size and latency measured in the same call. Unreadable folders are skipped."""
    rows = [compress.variant_row(i.path, i.record) for i in rundir.list_runs(runs_root, include_shipped=include_shipped)
            if i.has_onnx and i.record.variant is not None]
    return pd.DataFrame(rows, columns=list(compress.VARIANT_COLUMNS))


def parents_table(variants: pd.DataFrame) -> pd.DataFrame:
    """The fp32 parents of the given variants as rows of the same shape, from the measurements stored with their
    int8/fp16 variants (same parameter count as the parent; measured side by side in the same call)."""
    same = variants[variants["technique"].isin(compress.QUANTIZED)]
    rows = []
    for name, grp in same.groupby("parent"):
        r = grp.iloc[0]
        rows.append({**{k: r[k] for k in ("arch", "width", "params", "macs", "split")}, "name": name, "parent": None,
                     "technique": "fp32", "accuracy": r["parent_accuracy"], "delta": 0.0,
                     **{k: r[f"parent_{k}"] for k in ("onnx_bytes", "gzip_bytes", "latency_ms_b1", "latency_ms_b64")}})
    return pd.DataFrame(rows, columns=[c for c in compress.VARIANT_COLUMNS if not c.startswith("parent_")])


def chart_points(variants: pd.DataFrame) -> pd.DataFrame:
    """Variants and their fp32 parents together, with the file size in KB and a family label, ready to plot."""
    pts = pd.concat([parents_table(variants), variants[[c for c in variants.columns if not c.startswith("parent_")]]],
                    ignore_index=True)
    pts = pts[pts["accuracy"].notna() & pts["onnx_bytes"].notna()].copy()
    pts["kb"] = pts["onnx_bytes"].astype(float) / 1024
    pts["family"] = pts["arch"].map(lambda a: archs.get_family(a).title if a in archs.list_archs() else str(a))
    pts["technique"] = pts["technique"].astype(str).str.replace(r"-[0-9.]+$", "", regex=True)
    return pts
