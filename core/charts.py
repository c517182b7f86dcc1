"""Altair charts shared by the app and the generated docs (one definition, so the Compare page and
docs/study.md always show the same plot)."""
from __future__ import annotations

import altair as alt
import pandas as pd

from core import report

TOOLTIP = ["name", "family", alt.Tooltip("width:Q", format=".3g"), alt.Tooltip("params:Q", format=","),
           alt.Tooltip("acc:Q", format=".3f", title="accuracy"), "accuracy_split", "data", "epochs", "recipe",
           "device", alt.Tooltip("wall_time_s:Q", format=".0f")]


def params_accuracy_chart(points: pd.DataFrame, *, title: str | None = None, height: int = 420,
                          show_reference: bool = True, show_front: bool = True) -> alt.LayerChart:
    """Parameter count (log x) vs accuracy, coloured by family, with the Pareto front and the study's two models.

    `points` is core.report.runs_table() output with an `acc` column holding the accuracy to plot."""
    x = alt.X("params:Q", scale=alt.Scale(type="log"), title="parameters (log scale)", axis=alt.Axis(format="~s"))
    y = alt.Y("acc:Q", title="accuracy", scale=alt.Scale(zero=False))
    layers: list[alt.Chart] = []
    if not points.empty:
        if show_front:
            front = report.pareto_front(points, "params", "acc")
            layers.append(alt.Chart(front).mark_line(color="#888", strokeDash=[4, 3], interpolate="step-after").encode(
                x=x, y=y, order="params:Q"))
        tooltip = [t for t in TOOLTIP if (t if isinstance(t, str) else t.to_dict()["field"]) in points.columns]
        layers.append(alt.Chart(points).mark_point(size=110, filled=True, opacity=0.85).encode(
            x=x, y=y, color=alt.Color("family:N", legend=alt.Legend(orient="bottom", columns=3)),
            shape=alt.Shape("shipped:N", legend=alt.Legend(title="shipped", orient="bottom")),
            tooltip=tooltip))
    if show_reference:
        refs = report.reference_points().assign(
            acc=lambda d: d["public"], short=lambda d: "study " + d["arch"] + ": " + d["public"].map("{:.3f}".format))
        layers.append(alt.Chart(refs).mark_point(shape="diamond", size=170, filled=True, color="#d62728").encode(
            x=x, y=y, tooltip=["label", alt.Tooltip("public:Q", format=".3f"), alt.Tooltip("private:Q", format=".3f")]))
        layers.append(alt.Chart(refs).mark_text(align="right", dx=-12, dy=-10, color="#d62728", fontSize=11).encode(
            x=x, y=y, text="short"))
    chart = alt.layer(*layers).properties(height=height)
    return chart.properties(title=title) if title else chart
