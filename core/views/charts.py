"""Altair charts shared by the app and the generated docs (one definition, so the Compare page and
docs/study.md always show the same plot)."""
from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from core.util.classes import CLASSES
from core.views.archviews import reference_points
from core.views.photoviews import probabilities_frame
from core.views.runviews import pareto_front

TOOLTIP = ["name", "family", "technique", alt.Tooltip("width:Q", format=".3g"), alt.Tooltip("params:Q", format=","),
           alt.Tooltip("acc:Q", format=".3f", title="accuracy"), "accuracy_split", "data", "epochs", "recipe",
           "device", alt.Tooltip("wall_time_s:Q", format=".0f")]


# The choice of x axis on Compare: a model's cost measured four ways (all log scale).
X_AXES = {"params": "parameters", "macs": "MACs per image", "onnx_kb": "ONNX file size, KB",
          "latency_ms": "ONNX Runtime latency, batch 64, ms"}  # units after a comma: "(log scale)" follows


def params_accuracy_chart(points: pd.DataFrame, *, title: str | None = None, height: int = 420,
                          show_reference: bool = True, show_front: bool = True, x_col: str = "params") -> alt.LayerChart:
    """A cost (log x: parameters by default) vs accuracy, coloured by family, with the Pareto front and the study's
    two models (placed only on the parameter axis, where the study reports them).

    `points` is core.views.runviews.runs_table() output with an `acc` column holding the accuracy to plot."""
    x = alt.X(f"{x_col}:Q", scale=alt.Scale(type="log"), title=f"{X_AXES.get(x_col, x_col)} (log scale)",
              axis=alt.Axis(format="~s"))
    show_reference = show_reference and x_col == "params"
    y = alt.Y("acc:Q", title="accuracy", scale=alt.Scale(zero=False))
    layers: list[alt.Chart] = []
    if not points.empty:
        if show_front:
            front = pareto_front(points, x_col, "acc")
            layers.append(alt.Chart(front).mark_line(color="#888", strokeDash=[4, 3], interpolate="step-after").encode(
                x=x, y=y, order=f"{x_col}:Q"))
        tooltip = [t for t in TOOLTIP if (t if isinstance(t, str) else t.to_dict()["field"]) in points.columns]
        layers.append(alt.Chart(points).mark_point(size=110, filled=True, opacity=0.85).encode(
            x=x, y=y, color=alt.Color("family:N", legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)),
            shape=alt.Shape("shipped:N", legend=alt.Legend(title="shipped", orient="bottom")),
            tooltip=tooltip))
    if show_reference:
        refs = reference_points().assign(
            acc=lambda d: d["public"], short=lambda d: "study " + d["arch"] + ": " + d["public"].map("{:.3f}".format))
        # labels sit above-left of the diamond, inside the plot, so they never run over the axis
        layers += study_diamonds(refs, x, y, dict(baseline="bottom", dx=-8, dy=-8))
    chart = alt.layer(*layers).properties(height=height)
    return chart.properties(title=title) if title else chart


STUDY_RED = "#d62728"


def study_diamonds(refs: pd.DataFrame, x: alt.X, y: alt.Y, label_at: dict, halo: bool = False) -> list[alt.Chart]:
    """The study's models as red diamonds labelled with their `short` column, in every chart the same way;
    `label_at` places the label (offsets, baseline); `halo` draws a white outline under it, legible over lines."""
    diamonds = alt.Chart(refs).mark_point(shape="diamond", size=170, filled=True, color=STUDY_RED).encode(
        x=x, y=y, tooltip=["label", alt.Tooltip("public:Q", format=".3f"), alt.Tooltip("private:Q", format=".3f")])
    text = alt.Chart(refs).mark_text(align="right", color=STUDY_RED, fontSize=11, **label_at).encode(x=x, y=y, text="short")
    halos = [text.mark_text(align="right", fontSize=11, stroke="white", strokeWidth=4, **label_at)] if halo else []
    return [diamonds, *halos, text]


def params_width_chart(grid: pd.DataFrame, current: pd.DataFrame, height: int = 420) -> alt.LayerChart:
    """Parameters (log) against the width multiplier, a line per family (dashed: standard convolutions), the study's
    models, and the current choice (`current`: family, width, params, label) circled and labelled."""
    refs = reference_points().assign(short=lambda d: "study " + d["arch"] + ": " + d["params"].map("{:,}".format))
    y = alt.Y("params:Q", scale=alt.Scale(type="log"), title="parameters (log scale)", axis=alt.Axis(format="~s"))
    x = alt.X("width:Q", title="width multiplier", scale=alt.Scale(domain=[0, 3.1]))
    lines = alt.Chart(grid).mark_line(point=alt.OverlayMarkDef(size=25)).encode(
        x=x, y=y, color=alt.Color("family:N", title="family", legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)),
        strokeDash=alt.StrokeDash("depthwise:N", legend=None,
                                  scale=alt.Scale(domain=[True, False], range=[[1, 0], [6, 4]])),
        tooltip=["family", "width", alt.Tooltip("params:Q", format=",")])
    chosen = alt.Chart(current).mark_point(size=260, shape="circle", filled=False, strokeWidth=3, color="black").encode(
        x=x, y=y, tooltip=["label", "width"])
    chosen_text = alt.Chart(current).mark_text(align="left", dx=12, dy=-10, fontWeight="bold").encode(
        x=x, y=y, text="label")
    chosen_halo = chosen_text.mark_text(align="left", dx=12, dy=-10, fontWeight="bold", stroke="white", strokeWidth=4)
    layers = [lines, *study_diamonds(refs, x, y, dict(dx=-12, dy=14), halo=True), chosen, chosen_halo, chosen_text]
    return alt.layer(*layers).properties(height=height)


def size_accuracy_chart(points: pd.DataFrame, *, title: str | None = None, height: int = 400) -> Any:
    """ONNX file size (KB, log x) vs accuracy, coloured by technique, shaped by family, with one Pareto front."""
    x = alt.X("kb:Q", scale=alt.Scale(type="log"), title="ONNX file size (KB, log scale)")
    y = alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(zero=False))
    front = pareto_front(points, "kb", "accuracy")
    tips = ["name", "technique", "family", alt.Tooltip("kb:Q", format=",.0f", title="KB"),
            alt.Tooltip("accuracy:Q", format=".3f"), "split", alt.Tooltip("latency_ms_b64:Q", format=".2f")]
    chart = alt.layer(
        alt.Chart(front).mark_line(color="#888", strokeDash=[4, 3], interpolate="step-after").encode(x=x, y=y, order="kb:Q"),
        alt.Chart(points).mark_point(size=110, filled=True, opacity=0.85).encode(
            x=x, y=y, color=alt.Color("technique:N", legend=alt.Legend(orient="bottom")),
            shape=alt.Shape("family:N", legend=alt.Legend(orient="bottom")), tooltip=tips),
    ).properties(height=height)
    return chart.properties(title=title) if title else chart


# Each split its own colour (val and public were one orange, and a run has either, but the legend showed both).
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "public": "#9467bd", "private": "#2ca02c"}


def run_curve_chart(curves: pd.DataFrame, kind: str, epochs: int, height: int = 340) -> alt.Chart:
    """One run's loss or accuracy per epoch (curves: runviews.run_curves), one line per split it has: the legend
    lists only those, so a synthetic run's shows train and val, not FER2013's public and private. The height is
    the whole chart's in the app (axes and legend included), so the plot itself gets about 200 px of it."""
    df = curves[curves["kind"] == kind]
    splits = [s for s in SPLIT_COLOURS if s in set(df["split"])] + sorted(set(df["split"]) - set(SPLIT_COLOURS))
    scale = alt.Scale(domain=splits, range=[SPLIT_COLOURS.get(s, "#7f7f7f") for s in splits])
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("epoch:Q", scale=alt.Scale(domain=[1, max(2, epochs)]), axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=kind, scale=alt.Scale(zero=kind == "accuracy")),
        color=alt.Color("split:N", scale=scale, legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["epoch", "split", alt.Tooltip("value:Q", format=".4f")],
    ).properties(height=height)


def learning_curves_chart(curves: pd.DataFrame, metric: str, height: int = 300) -> alt.Chart:
    """Several runs' `metric` per epoch (curves: runviews.learning_curves, one metric), a line per run."""
    return alt.Chart(curves).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)),
        tooltip=["run", "epoch", alt.Tooltip("value:Q", format=".4f")]).properties(height=height)


def confusion_chart(conf: pd.DataFrame, title: str, height: int = 340, pick: Any = None) -> alt.LayerChart:
    """A confusion matrix (conf: runviews.confusion_long) as a heatmap with counts, shaded by the share of each true
    class. With `pick` (an alt.selection_point on true and predicted) a click selects a cell, which is outlined."""
    base = alt.Chart(conf).encode(x=alt.X("predicted:N", sort=list(CLASSES)), y=alt.Y("true:N", sort=list(CLASSES)))
    heat = base.mark_rect(stroke="black").encode(
        color=alt.Color("rate:Q", scale=alt.Scale(scheme="blues"), title="share of true class"),
        strokeWidth=alt.condition(pick, alt.value(2), alt.value(0)) if pick is not None else alt.value(0),
        tooltip=["true", "predicted", "count", alt.Tooltip("rate:Q", format=".1%")])
    if pick is not None:
        heat = heat.add_params(pick)
    text = base.mark_text(fontSize=11).encode(
        text="count:Q", color=alt.condition("datum.rate > 0.5", alt.value("white"), alt.value("black")))
    return (heat + text).properties(height=height, title=title)


def per_class_chart(per: pd.DataFrame, title: str, height: int = 340) -> alt.Chart:
    """Accuracy per class (per: runviews.per_class_accuracy) as bars, red to green."""
    return alt.Chart(per).mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("class:N", sort=list(CLASSES), title=None),
        color=alt.Color("accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None),
        tooltip=["class", alt.Tooltip("accuracy:Q", format=".1%"), "support"]).properties(height=height, title=title)


def probabilities_chart(probs: Any, height: int = 215) -> alt.Chart:
    """One face's seven class probabilities as bars, the top class highlighted."""
    df = probabilities_frame(probs)
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
        y=alt.Y("class:N", sort=list(CLASSES), title=None),
        color=alt.condition(alt.datum.probability == float(probs.max()), alt.value("#2f6fdf"), alt.value("#b8c4d6")),
        tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
    ).properties(height=height)
