"""Compare page: every checkpoint (shipped and user-trained) in one table; a cost vs accuracy chart with the Pareto
front and the study's reference points; learning curves; confusion matrix and per-class accuracy; CSV; delete."""
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from components import identity
from core.explain import gallery
from core.service import owners
from core.training import rundir
from core.training.record import RunRecord
from core.util.classes import CLASSES
from core.util.fsutil import runs_dir
from core.views import campaignviews, charts, runviews
from core.views.dataviews import upscale
from core.views.sweepviews import sweep_groups

SPLITS = {"accuracy": "public, else val (headline)", "acc_public": "public (FER2013 PublicTest)",
          "acc_private": "private (FER2013 PrivateTest)", "acc_val": "val (held out)"}


def runs_table(table: pd.DataFrame, runs: list[rundir.RunStatus]) -> None:
    if table.empty:
        st.info("No checkpoints yet. Shipped models live in `checkpoints/`; runs you start on the Train page appear "
                "here as soon as they begin. Meanwhile the chart below shows the study's two reference models.")
    else:
        st.subheader("All runs")
        shown = ["name", "shipped", "family", "width", "technique", "params", "macs", "size_mb", "acc_public",
                 "acc_private", "acc_val", "epochs", "wall_time_s", "device", "data", "status"]
        shown = [c for c in shown if not (c.startswith("acc_") and table[c].isna().all())]  # e.g. no FER2013 runs yet
        st.dataframe(runviews.display_table(table), hide_index=True, column_order=shown, key="compare_table",
                     column_config={"name": st.column_config.TextColumn("run", pinned=True),
                                    "size_mb": "size (MiB)", "acc_public": "public acc", "acc_private": "private acc",
                                    "acc_val": "val acc", "wall_time_s": "wall time (s)", "macs": "MACs"})
        st.download_button("Download as CSV", table.to_csv(index=False).encode(), file_name="fer_runs.csv",
                           mime="text/csv", key="compare_csv")
    for run in runs:
        if run.problem:
            st.warning(f"Unusable run folder `{run.name}`{' (shipped)' if run.shipped else ''}: {run.problem}")
        elif run.ok and run.onnx_problem:
            st.warning(f"Run `{run.name}` is listed, but left out of Predict: {run.onnx_problem}")


def cost_chart(table: pd.DataFrame) -> None:
    st.subheader("Cost vs accuracy")
    c1, c2, c3 = st.columns(3)
    data_opts = runviews.data_options(table)
    data_pick = c1.selectbox("Data", data_opts or ["FER2013"], key="compare_data", help="one dataset per chart: "
                             "accuracies on synthetic and on FER2013 faces are not comparable")
    acc_col = c2.selectbox("Accuracy on", list(SPLITS), format_func=SPLITS.get, key="compare_split")
    x_col = c3.selectbox("Cost", list(charts.X_AXES), format_func=charts.X_AXES.get, key="compare_x",
                         help="parameters and MACs come from the architecture; file size from each ONNX export; "
                              "latency is measured for compression variants and their parents, side by side")
    points = runviews.chart_points(table, data_pick, acc_col, x_col) if not table.empty else table
    fer = data_pick != "synthetic"
    st.altair_chart(charts.params_accuracy_chart(points, x_col=x_col, show_reference=fer), width="stretch")
    if points.empty:
        st.info(runviews.empty_chart_reason(table, data_pick, acc_col, SPLITS[acc_col], x_col, charts.X_AXES[x_col]))
    st.caption("Each dot is a run (hover for details); the dashed step line is the Pareto front, the best accuracy "
               "reached at each cost" + ("; red diamonds are the study's models (FER2013 public accuracy)." if fer
                                         else ". The study's FER2013 models are not shown beside synthetic-data runs."))


def sweeps(root: Path) -> None:
    groups = sweep_groups(root)
    if groups.empty:
        return
    st.subheader("Sweeps: mean ± spread over seeds")
    st.caption("Each row is one grid point of a sweep, its seeds pooled: a difference between two rows means "
               "something only where it is larger than their spread (the standard deviation over seeds).")
    st.dataframe(groups.style.format({"accuracy_mean": "{:.3f}", "accuracy_std": "{:.3f}", "accuracy_min": "{:.3f}",
                                      "accuracy_max": "{:.3f}", "params": "{:,}"}, na_rep="—"),
                 hide_index=True, key="compare_sweeps")


def campaign() -> None:
    trials, points, levers, error = campaignviews.campaign_results()
    if error:
        st.warning(f"The campaign file could not be read: {error}")
        return
    if points.empty:
        return
    st.subheader("Campaign: the study's grid, mean ± spread over seeds")
    fraction, text = campaignviews.progress(trials)
    st.progress(fraction, text=f"Campaign progress: {text}")
    st.caption("Trained by `python -m core campaign` from `campaign/campaign.toml`, over many sessions on the CPU. "
               "Each row pools the finished seeds of one width; trials still training are listed as in progress, "
               "never as results. Bars on the chart span the lowest to the highest seed.")
    if (points["seeds_done"] > 0).any():
        st.altair_chart(campaignviews.spread_chart(points), width="stretch")
    st.dataframe(campaignviews.display_points(points), hide_index=True, key="compare_campaign",
                 column_config={"params": st.column_config.NumberColumn(format="localized")})
    if not levers.empty:
        st.markdown("**Levers past the study, each one change against the grid's recipe**")
        st.caption("A lever helps or hurts only where its difference from the baseline exceeds the spread (both "
                   "sides' spreads over seeds combined); a tail that continues shipped weights is compared with "
                   "those weights' own accuracy.")
        st.dataframe(campaignviews.display_levers(levers), hide_index=True, key="compare_levers")
    campaign_curves(trials)


def campaign_curves(trials: pd.DataFrame) -> None:
    """Public accuracy epoch by epoch for the campaign's trials, the running ones first: long work shows progress."""
    started = trials[trials["epoch"] > 0]
    if started.empty:
        return
    picked = st.multiselect("Learning curves of the campaign's trials", started["trial"].tolist(),
                            default=campaignviews.curve_defaults(started), key="compare_campaign_curves",
                            help="Public accuracy after each epoch. A running trial is shown beside the finished "
                                 "seeds of the same width; its last points are still moving.")
    curves = runviews.learning_curves(campaignviews.trial_records(trials, picked))
    curves = curves[curves["metric"] == "val_acc"]
    if curves.empty:
        st.info("Pick one or more of the campaign's trials to see their learning curves.")
    else:
        st.altair_chart(charts.learning_curves_chart(curves, "public accuracy"), width="stretch")


def learning_curves(ranked: list[str], records: dict[str, RunRecord]) -> None:
    st.subheader("Learning curves")
    with_epochs = [n for n in ranked if records.get(n) and records[n].epochs]
    c1, c2 = st.columns([3, 1])
    picked = c1.multiselect("Runs", with_epochs, default=with_epochs[:3], key="compare_runs")
    metric = c2.selectbox("Metric", ["val_acc", "train_acc", "val_loss", "train_loss"], key="compare_metric")
    curves = runviews.learning_curves({n: records[n] for n in picked})
    curves = curves[curves["metric"] == metric]
    if curves.empty:
        st.info("Pick one or more runs with finished epochs.")
    else:
        st.altair_chart(charts.learning_curves_chart(curves, metric), width="stretch")


def run_detail(ranked: list[str], records: dict[str, RunRecord]) -> None:
    st.subheader("One run in detail")
    evaluated = [n for n in ranked if records.get(n) and records[n].evaluated_splits()]
    if not evaluated:
        st.info("Confusion matrices appear once a run has finished.")
        return
    c1, c2 = st.columns([3, 1])
    name = c1.selectbox("Run", evaluated, key="compare_detail_run")
    splits = records[name].evaluated_splits()
    split = c2.selectbox("Split", splits, key="compare_detail_split",
                         index=next((i for i, s in enumerate(splits) if s != "train"), 0))
    left, right = st.columns([3, 2])
    left.altair_chart(charts.confusion_chart(runviews.confusion_long(records[name], split),
                                             f"Confusion matrix ({split})"), width="stretch")
    right.altair_chart(charts.per_class_chart(runviews.per_class_accuracy(records[name], split),
                                              f"Per-class accuracy ({split})"), width="stretch")


def delete_run(root: Path, table: pd.DataFrame, runs: list[rundir.RunStatus]) -> None:
    """Deleting is offered for this browser's runs only (core.service.owners); shipped checkpoints never."""
    mine, others = [], 0
    for name in table.loc[~table["shipped"], "name"].tolist() + [r.name for r in runs if r.problem and not r.shipped]:
        if owners.may_control(root / name, identity.current_user(), identity.operator()):
            mine.append(name)
        else:
            others += 1
    live = {r.name: r.status for r in runs}
    with st.expander("Delete a run"):
        if others:
            st.caption(f"{others} run(s) other users started are theirs to delete, and are not listed.")
        if not mine:
            st.caption("No runs of yours to delete. Shipped checkpoints are protected.")
            return
        target = st.selectbox("Run to delete", mine, key="compare_delete_pick")
        sure = st.checkbox(f"Yes, delete `{target}` and its files", key=f"compare_delete_confirm_{target}")
        if st.button("Delete", key="compare_delete", disabled=not sure, type="primary"):
            if live.get(target) in rundir.ACTIVE:
                st.error(f"{target} is still running: stop it on the Train page first.")
                return
            try:
                owners.check_control(root / target, identity.current_user(), identity.operator())
                rundir.delete_run(root / target, root)
            except (ValueError, OSError) as exc:
                st.error(f"Could not delete {target}: {exc}")
            else:
                st.session_state["compare_flash"] = f"Deleted {target}."
                st.rerun()
        st.caption("Shipped checkpoints cannot be deleted here.")


# --- confusion gallery: the faces behind a cell (core.explain.gallery; predictions cached on disk per ONNX file and data) ---
@st.cache_resource(max_entries=3, show_spinner=False)
def gallery_dataset(source: str):  # noqa: ANN201 - core.data.FERData
    return gallery.gallery_data(source)


@st.cache_resource(max_entries=3, show_spinner=False)
def gallery_predictions(onnx_path: str, stamp: float, source: str):  # noqa: ANN201 - core.explain.gallery.Predictions
    return gallery.predict_split(onnx_path, gallery_dataset(source))


def gallery_predict(runs: list[rundir.RunStatus]):  # noqa: ANN201 - (RunStatus, Predictions), or None
    """The chosen run and its predictions on its data's validation split, or None (said why)."""
    with_onnx = {r.name: r for r in runs if r.has_onnx}
    if not with_onnx:
        st.info("The gallery needs a run with an ONNX export.")
        return None
    names = list(with_onnx)
    default = st.session_state.get("compare_detail_run")
    run = with_onnx[st.selectbox("Run", names, key="gallery_run", index=names.index(default) if default in names else 0)]
    onnx = run.path / rundir.ONNX
    source = gallery.gallery_source(st.session_state.get("data_source"), run.record)
    try:  # two steps, each named while it runs: the first read of FER2013 and the first classification take a while
        with st.spinner(f"Loading {'the synthetic faces' if source == 'synthetic' else source} (the first read of "
                        "FER2013 takes a while; later ones use a cache)..."):
            data = gallery_dataset(source)
        with st.spinner(f"Classifying {len(data.splits[data.val_split]):,} faces with {run.name} in ONNX Runtime "
                        "(once per model; cached on disk)..."):
            pred = gallery_predictions(str(onnx), onnx.stat().st_mtime, source)
    except (ValueError, OSError) as exc:
        st.error(f"Cannot classify the faces with {run.name}: {exc}")
        return None
    if pred.synthetic and run.record is not None and not run.record.synthetic:
        st.warning(f"{run.name} was trained on FER2013, but no FER2013 copy was found (its recorded path, the Data "
                   "page's, `$FER_DATA`, `data/`), so the gallery shows the built-in **synthetic** faces, which it "
                   "was not trained on: its mistakes here say little. Choose FER2013 on the **Data** page.")
    return run, pred


def gallery_cell(pred, name: str) -> None:  # noqa: ANN001 - core.explain.gallery.Predictions
    """A clickable confusion matrix; the clicked (or picked) cell's faces below it."""
    true, predicted = gallery.biggest_mistake(pred)
    st.session_state.setdefault("gallery_true", CLASSES[true])
    st.session_state.setdefault("gallery_predicted", CLASSES[predicted])
    pick = alt.selection_point(name="cell", fields=["true", "predicted"], on="click", clear=False)
    event = st.altair_chart(charts.confusion_chart(runviews.confusion_frame(pred), f"{name} on {pred.split}: click a "
                                                   "cell", height=300, pick=pick), key="gallery_chart", on_select="rerun")
    clicked = (event.selection.get("cell") or [None])[0] if event else None
    if clicked and clicked != st.session_state.get("gallery_clicked"):  # a new click moves the two pickers below
        st.session_state.update(gallery_clicked=clicked, gallery_true=clicked["true"],
                                gallery_predicted=clicked["predicted"])
    c1, c2, c3 = st.columns([2, 2, 1])
    t = c1.selectbox("True class", CLASSES, key="gallery_true")
    p = c2.selectbox("Predicted class", CLASSES, key="gallery_predicted")
    n = c3.number_input("Faces", 1, 96, 24, key="gallery_n")
    cell = gallery.cell(pred, t, p, int(n))
    if cell.empty:
        st.info(gallery.cell_message(pred, t, p))
        return
    st.caption(gallery.cell_caption(pred, t, p, name))
    st.image([upscale(pred.images[i], 2) for i in cell["index"]], width=96,
             caption=[f"#{i}: {c:.0%}" + ("" if t == p else f" ({pt:.0%})")
                      for i, c, pt in zip(cell["index"], cell["confidence"], cell["p_true"])])


def typical_faces(pred) -> None:  # noqa: ANN001 - core.explain.gallery.Predictions
    with st.expander("The faces it finds most typical, per class"):
        for cls in CLASSES:
            typical = gallery.typical(pred, cls, 8)
            left, right = st.columns([1, 6], vertical_alignment="center")
            left.markdown(f"**{cls}**")
            if typical.empty:
                right.caption(gallery.cell_message(pred, cls, cls))
            else:
                right.image([upscale(pred.images[i], 2) for i in typical["index"]], width=64,
                            caption=[f"{c:.0%}" for c in typical["confidence"]])


def main() -> None:
    st.title("Compare")
    st.caption("Every checkpoint in one place: the shipped ones in `checkpoints/` and the runs you trained.")
    root = runs_dir()
    runs = rundir.list_runs(root)
    table = runviews.runs_table(runs)
    records = {r.name: r.record for r in runs if r.ok}
    if flash := st.session_state.pop("compare_flash", None):
        st.success(flash)
    runs_table(table, runs)
    cost_chart(table)
    if table.empty:
        return
    sweeps(root)
    campaign()
    ranked = table.sort_values("accuracy", ascending=False, na_position="last")["name"].tolist()
    learning_curves(ranked, records)
    run_detail(ranked, records)
    delete_run(root, table, runs)
    st.subheader("Confusion gallery")
    if chosen := gallery_predict(runs):
        run, pred = chosen
        gallery_cell(pred, run.name)
        typical_faces(pred)


if __name__ == "__main__":
    main()
