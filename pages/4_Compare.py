"""Compare page: every checkpoint (shipped and user-trained) in one table; a cost vs accuracy chart with the Pareto
front and the study's reference points; learning curves; confusion matrix and per-class accuracy; CSV; delete."""
import altair as alt
import streamlit as st

from components import identity
from core.explain import gallery
from core.service import owners
from core.training import rundir
from core.util.classes import CLASSES
from core.util.fsutil import runs_dir
from core.views import campaignviews, charts, runviews
from core.views.dataviews import upscale
from core.views.sweepviews import sweep_groups

st.title("Compare")
st.caption("Every checkpoint in one place: the shipped ones in `checkpoints/` and the runs you trained.")

root = runs_dir()
runs = rundir.list_runs(root)
table = runviews.runs_table(runs)
broken = [r for r in runs if r.problem]
records = {r.name: r.record for r in runs if r.ok}

flash = st.session_state.pop("compare_flash", None)
if flash:
    st.success(flash)

if table.empty:
    st.info("No checkpoints yet. Shipped models live in `checkpoints/`; runs you start on the Train page appear here "
            "as soon as they begin. Meanwhile the chart below shows the study's two reference models.")
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

for run in broken:
    st.warning(f"Unusable run folder `{run.name}`{' (shipped)' if run.shipped else ''}: {run.problem}")
for run in runs:
    if run.ok and run.onnx_problem:
        st.warning(f"Run `{run.name}` is listed, but left out of Predict: {run.onnx_problem}")

# --- cost vs accuracy ------------------------------------------------------------------------------------------
st.subheader("Cost vs accuracy")
c1, c2, c3 = st.columns(3)
data_opts = runviews.data_options(table)
data_pick = c1.selectbox("Data", data_opts or ["FER2013"], key="compare_data",
                         help="one dataset per chart: accuracies on synthetic and on FER2013 faces are not comparable")
split_opts = {"accuracy": "public, else val (headline)", "acc_public": "public (FER2013 PublicTest)",
              "acc_private": "private (FER2013 PrivateTest)", "acc_val": "val (held out)"}
acc_col = c2.selectbox("Accuracy on", list(split_opts), format_func=split_opts.get, key="compare_split")
x_col = c3.selectbox("Cost", list(charts.X_AXES), format_func=charts.X_AXES.get, key="compare_x",
                     help="parameters and MACs come from the architecture; file size from each ONNX export; latency "
                          "is measured for compression variants and their parents, side by side")
points = runviews.chart_points(table, data_pick, acc_col, x_col) if not table.empty else table
fer = data_pick != "synthetic"
st.altair_chart(charts.params_accuracy_chart(points, x_col=x_col, show_reference=fer), width="stretch")
if points.empty:
    st.info(runviews.empty_chart_reason(table, data_pick, acc_col, split_opts[acc_col], x_col, charts.X_AXES[x_col]))
st.caption("Each dot is a run (hover for details); the dashed step line is the Pareto front, the best accuracy "
           "reached at each cost" + ("; red diamonds are the study's models (FER2013 public accuracy)." if fer else
                                     ". The study's FER2013 models are not shown beside synthetic-data runs."))

if table.empty:
    st.stop()

# --- sweeps: seeds pooled -----------------------------------------------------------------------------------------
groups = sweep_groups(root)
if not groups.empty:
    st.subheader("Sweeps: mean ± spread over seeds")
    st.caption("Each row is one grid point of a sweep, its seeds pooled: a difference between two rows means "
               "something only where it is larger than their spread (the standard deviation over seeds).")
    st.dataframe(groups.style.format({"accuracy_mean": "{:.3f}", "accuracy_std": "{:.3f}", "accuracy_min": "{:.3f}",
                                      "accuracy_max": "{:.3f}", "params": "{:,}"}, na_rep="—"),
                 hide_index=True, key="compare_sweeps")

# --- the campaign: the study's grid over seeds ---------------------------------------------------------------------
camp, camp_error = campaignviews.campaign_points()
if camp_error:
    st.warning(f"The campaign file could not be read: {camp_error}")
elif not camp.empty:
    st.subheader("Campaign: the study's grid, mean ± spread over seeds")
    st.caption("Trained by `python -m core campaign` from `campaign/campaign.toml`, over many sessions on the CPU. "
               "Each row pools the finished seeds of one width; trials still training are listed as in progress, "
               "never as results. Bars on the chart span the lowest to the highest seed.")
    if (camp["seeds_done"] > 0).any():
        st.altair_chart(campaignviews.spread_chart(camp), width="stretch")
    st.dataframe(campaignviews.display_points(camp), hide_index=True, key="compare_campaign",
                 column_config={"params": st.column_config.NumberColumn(format="localized")})

# --- learning curves -------------------------------------------------------------------------------------------
st.subheader("Learning curves")
ranked = table.sort_values("accuracy", ascending=False, na_position="last")["name"].tolist()
with_epochs = [n for n in ranked if records.get(n) and records[n].epochs]
c1, c2 = st.columns([3, 1])
picked = c1.multiselect("Runs", with_epochs, default=with_epochs[:3], key="compare_runs")
metric = c2.selectbox("Metric", ["val_acc", "train_acc", "val_loss", "train_loss"], key="compare_metric")
curves = runviews.learning_curves({n: records[n] for n in picked})
curves = curves[curves["metric"] == metric]
if curves.empty:
    st.info("Pick one or more runs with finished epochs.")
else:
    st.altair_chart(alt.Chart(curves).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom", columns=2, labelLimit=0)),
        tooltip=["run", "epoch", alt.Tooltip("value:Q", format=".4f")]).properties(height=300), width="stretch")

# --- one run in detail -----------------------------------------------------------------------------------------
st.subheader("One run in detail")
evaluated = [n for n in ranked if records.get(n) and records[n].evaluated_splits()]
if not evaluated:
    st.info("Confusion matrices appear once a run has finished.")
else:
    c1, c2 = st.columns([3, 1])
    run_name = c1.selectbox("Run", evaluated, key="compare_detail_run")
    splits = records[run_name].evaluated_splits()
    split = c2.selectbox("Split", splits, key="compare_detail_split",
                         index=next((i for i, s in enumerate(splits) if s != "train"), 0))
    conf = runviews.confusion_long(records[run_name], split)
    per = runviews.per_class_accuracy(records[run_name], split)
    left, right = st.columns([3, 2])
    base = alt.Chart(conf).encode(x=alt.X("predicted:N", sort=list(CLASSES)), y=alt.Y("true:N", sort=list(CLASSES)))
    heat = base.mark_rect().encode(color=alt.Color("rate:Q", scale=alt.Scale(scheme="blues"), title="share of true class"),
                                   tooltip=["true", "predicted", "count", alt.Tooltip("rate:Q", format=".1%")])
    text = base.mark_text(fontSize=11).encode(text="count:Q",
                                              color=alt.condition("datum.rate > 0.5", alt.value("white"), alt.value("black")))
    left.altair_chart((heat + text).properties(height=340, title=f"Confusion matrix ({split})"), width="stretch")
    right.altair_chart(alt.Chart(per).mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("class:N", sort=list(CLASSES), title=None),
        color=alt.Color("accuracy:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), legend=None),
        tooltip=["class", alt.Tooltip("accuracy:Q", format=".1%"), "support"]).properties(
        height=340, title=f"Per-class accuracy ({split})"), width="stretch")

# --- delete ----------------------------------------------------------------------------------------------------
user_runs = table.loc[~table["shipped"], "name"].tolist() + [r.name for r in broken if not r.shipped]
me, operator = identity.current_user(), identity.operator()
others = [n for n in user_runs if not owners.may_control(root / n, me, operator)]  # runs other browsers started
user_runs = [n for n in user_runs if n not in others]
live = {r.name: r.status for r in runs}
with st.expander("Delete a run"):
    if others:
        st.caption(f"{len(others)} run(s) other users started are theirs to delete, and are not listed.")
    if not user_runs:
        st.caption("No runs of yours to delete. Shipped checkpoints are protected.")
    else:
        target = st.selectbox("Run to delete", user_runs, key="compare_delete_pick")
        sure = st.checkbox(f"Yes, delete `{target}` and its files", key=f"compare_delete_confirm_{target}")
        if st.button("Delete", key="compare_delete", disabled=not sure, type="primary"):
            if live.get(target) in rundir.ACTIVE:
                st.error(f"{target} is still running: stop it on the Train page first.")
            else:
                try:
                    owners.check_control(root / target, me, operator)
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


st.subheader("Confusion gallery")
gallery_runs = {r.name: r for r in runs if r.has_onnx}
if not gallery_runs:
    st.info("The gallery needs a run with an ONNX export.")
    st.stop()
g_names = list(gallery_runs)
g_default = st.session_state.get("compare_detail_run")
g_info = gallery_runs[st.selectbox("Run", g_names, key="gallery_run",
                                   index=g_names.index(g_default) if g_default in g_names else 0)]
g_onnx = g_info.path / rundir.ONNX
g_source = gallery.gallery_source(st.session_state.get("data_source"), g_info.record)
try:  # two steps, each named while it runs: the first read of FER2013 and the first classification take a while
    with st.spinner(f"Loading {'the synthetic faces' if g_source == 'synthetic' else g_source} (the first read of "
                    "FER2013 takes a while; later ones use a cache)..."):
        g_data = gallery_dataset(g_source)
    with st.spinner(f"Classifying {len(g_data.splits[g_data.val_split]):,} faces with {g_info.name} in ONNX Runtime "
                    "(once per model; cached on disk)..."):
        g_pred = gallery_predictions(str(g_onnx), g_onnx.stat().st_mtime, g_source)
except (ValueError, OSError) as exc:
    st.error(f"Cannot classify the faces with {g_info.name}: {exc}")
    st.stop()
if g_pred.synthetic and g_info.record is not None and not g_info.record.synthetic:
    st.warning(f"{g_info.name} was trained on FER2013, but no FER2013 copy was found (its recorded path, the Data "
               "page's, `$FER_DATA`, `data/`), so the gallery shows the built-in **synthetic** faces, which it was "
               "not trained on: its mistakes here say little. Choose FER2013 on the **Data** page.")
g_true, g_predicted = gallery.biggest_mistake(g_pred)
st.session_state.setdefault("gallery_true", CLASSES[g_true])
st.session_state.setdefault("gallery_predicted", CLASSES[g_predicted])
g_cell_pick = alt.selection_point(name="cell", fields=["true", "predicted"], on="click", clear=False)
g_base = alt.Chart(runviews.confusion_frame(g_pred)).encode(x=alt.X("predicted:N", sort=list(CLASSES)),
                                                          y=alt.Y("true:N", sort=list(CLASSES)))
g_event = st.altair_chart((g_base.mark_rect(stroke="black").encode(
    color=alt.Color("rate:Q", scale=alt.Scale(scheme="blues"), legend=None),
    strokeWidth=alt.condition(g_cell_pick, alt.value(2), alt.value(0)),
    tooltip=["true", "predicted", "count"]).add_params(g_cell_pick)
    + g_base.mark_text(fontSize=11).encode(text="count:Q")).properties(
    height=300, title=f"{g_info.name} on {g_pred.split}: click a cell"), key="gallery_chart", on_select="rerun")
g_clicked = (g_event.selection.get("cell") or [None])[0] if g_event else None
if g_clicked and g_clicked != st.session_state.get("gallery_clicked"):  # a new click moves the two pickers below
    st.session_state.update(gallery_clicked=g_clicked, gallery_true=g_clicked["true"],
                            gallery_predicted=g_clicked["predicted"])
c1, c2, c3 = st.columns([2, 2, 1])
g_t = c1.selectbox("True class", CLASSES, key="gallery_true")
g_p = c2.selectbox("Predicted class", CLASSES, key="gallery_predicted")
g_n = c3.number_input("Faces", 1, 96, 24, key="gallery_n")
g_cell = gallery.cell(g_pred, g_t, g_p, int(g_n))
if g_cell.empty:
    st.info(gallery.cell_message(g_pred, g_t, g_p))
else:
    st.caption(gallery.cell_caption(g_pred, g_t, g_p, g_info.name))
    st.image([upscale(g_pred.images[i], 2) for i in g_cell["index"]], width=96,
             caption=[f"#{i}: {c:.0%}" + ("" if g_t == g_p else f" ({t:.0%})")
                      for i, c, t in zip(g_cell["index"], g_cell["confidence"], g_cell["p_true"])])
with st.expander("The faces it finds most typical, per class"):
    for g_c in CLASSES:
        g_typ = gallery.typical(g_pred, g_c, 8)
        left, right = st.columns([1, 6], vertical_alignment="center")
        left.markdown(f"**{g_c}**")
        if g_typ.empty:
            right.caption(gallery.cell_message(g_pred, g_c, g_c))
        else:
            right.image([upscale(g_pred.images[i], 2) for i in g_typ["index"]], width=64,
                        caption=[f"{c:.0%}" for c in g_typ["confidence"]])
