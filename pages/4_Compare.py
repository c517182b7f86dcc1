"""Compare page: every checkpoint (shipped and user-trained) in one table; parameters vs accuracy with the Pareto
front and the study's reference points; learning curves; confusion matrix and per-class accuracy; CSV; delete."""
import altair as alt
import streamlit as st

from core import charts, jobs, report
from core.checkpoint import delete_run, list_runs
from core.classes import CLASSES
from core.fsutil import runs_dir

st.title("Compare")
st.caption("Every checkpoint in one place: the shipped ones in `checkpoints/` and the runs you trained.")

root = runs_dir()
infos = list_runs(root)
live = {str(j.path): j.status for j in jobs.list_jobs(root)}
table = report.runs_table(infos, live)
broken = [i for i in infos if not i.ok]
records = {i.name: i.record for i in infos if i.ok}

flash = st.session_state.pop("compare_flash", None)
if flash:
    st.success(flash)

if table.empty:
    st.info("No checkpoints yet. Shipped models live in `checkpoints/`; runs you start on the Train page appear here "
            "as soon as they begin. Meanwhile the chart below shows the study's two reference models.")
else:
    st.subheader("All runs")
    shown = ["name", "shipped", "family", "width", "params", "macs", "size_mb", "acc_public", "acc_private", "acc_val",
             "epochs", "wall_time_s", "device", "data", "status"]
    shown = [c for c in shown if not (c.startswith("acc_") and table[c].isna().all())]  # e.g. no FER2013 runs yet
    st.dataframe(table, hide_index=True, column_order=shown, key="compare_table", column_config={
        "name": st.column_config.TextColumn("run", pinned=True),
        "shipped": st.column_config.CheckboxColumn("shipped"),
        "width": st.column_config.NumberColumn("width", format="%.3g"),
        "params": st.column_config.NumberColumn("params", format="localized"),
        "macs": st.column_config.NumberColumn("MACs", format="localized"),
        "size_mb": st.column_config.NumberColumn("size (MiB)", format="%.2f"),
        "acc_public": st.column_config.NumberColumn("public acc", format="%.3f"),
        "acc_private": st.column_config.NumberColumn("private acc", format="%.3f"),
        "acc_val": st.column_config.NumberColumn("val acc", format="%.3f"),
        "wall_time_s": st.column_config.NumberColumn("wall time (s)", format="%.0f"),
    })
    st.download_button("Download as CSV", table.to_csv(index=False).encode(), file_name="fer_runs.csv",
                       mime="text/csv", key="compare_csv", icon=":material/download:")

for info in broken:
    st.warning(f"Unusable run folder `{info.name}`{' (shipped)' if info.shipped else ''}: {info.problem}")
for info in infos:
    if info.ok and info.onnx_problem:
        st.warning(f"Run `{info.name}` is listed, but left out of Predict: {info.onnx_problem}")

# --- parameters vs accuracy ------------------------------------------------------------------------------------
st.subheader("Parameters vs accuracy")
c1, c2 = st.columns(2)
data_opts = ["all"] + sorted(table["data"].unique().tolist()) if not table.empty else ["all"]
data_pick = c1.selectbox("Data", data_opts, key="compare_data",
                         help="accuracies on synthetic and on FER2013 are not comparable; filter to one")
split_opts = {"accuracy": "public, else val (headline)", "acc_public": "public (FER2013 PublicTest)",
              "acc_private": "private (FER2013 PrivateTest)", "acc_val": "val (held out)"}
acc_col = c2.selectbox("Accuracy on", list(split_opts), format_func=split_opts.get, key="compare_split")
points = table if data_pick == "all" else table[table["data"] == data_pick]
points = points.dropna(subset=[acc_col, "params"]).assign(acc=lambda d: d[acc_col].astype(float),
                                                        params=lambda d: d["params"].astype(float))
st.altair_chart(charts.params_accuracy_chart(points), width="stretch")
st.caption("Each dot is a run (hover for details); the dashed step line is the Pareto front, the best accuracy "
           "reached at each parameter budget; red diamonds are the study's models (FER2013 public accuracy).")

if table.empty:
    st.stop()

# --- learning curves -------------------------------------------------------------------------------------------
st.subheader("Learning curves")
ranked = table.sort_values("accuracy", ascending=False, na_position="last")["name"].tolist()
with_epochs = [n for n in ranked if records.get(n) and records[n].get("epochs")]
c1, c2 = st.columns([3, 1])
picked = c1.multiselect("Runs", with_epochs, default=with_epochs[:3], key="compare_runs")
metric = c2.selectbox("Metric", ["val_acc", "train_acc", "val_loss", "train_loss"], key="compare_metric")
curves = report.learning_curves({n: records[n] for n in picked})
curves = curves[curves["metric"] == metric]
if curves.empty:
    st.info("Pick one or more runs with finished epochs.")
else:
    st.altair_chart(alt.Chart(curves).mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("run:N", legend=alt.Legend(orient="bottom")),
        tooltip=["run", "epoch", alt.Tooltip("value:Q", format=".4f")]).properties(height=300), width="stretch")

# --- one run in detail -----------------------------------------------------------------------------------------
st.subheader("One run in detail")
evaluated = [n for n in ranked if report.evaluated_splits(records.get(n))]
if not evaluated:
    st.info("Confusion matrices appear once a run has finished.")
else:
    c1, c2 = st.columns([3, 1])
    run = c1.selectbox("Run", evaluated, key="compare_detail_run")
    splits = report.evaluated_splits(records[run])
    split = c2.selectbox("Split", splits, key="compare_detail_split",
                         index=next((i for i, s in enumerate(splits) if s != "train"), 0))
    conf = report.confusion_long(records[run], split)
    per = report.per_class_accuracy(records[run], split)
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
user_runs = table.loc[~table["shipped"], "name"].tolist() + [i.name for i in broken if not i.shipped]
with st.expander("Delete a run"):
    if not user_runs:
        st.caption("No user runs to delete. Shipped checkpoints are protected.")
    else:
        target = st.selectbox("Run to delete", user_runs, key="compare_delete_pick")
        sure = st.checkbox(f"Yes, delete `{target}` and its files", key=f"compare_delete_confirm_{target}")
        if st.button("Delete", key="compare_delete", disabled=not sure, type="primary"):
            path = root / target
            if live.get(str(path)) in jobs.ACTIVE:
                st.error(f"{target} is still running: stop it on the Train page first.")
            else:
                try:
                    delete_run(path, root)
                except (ValueError, OSError) as exc:
                    st.error(f"Could not delete {target}: {exc}")
                else:
                    st.session_state["compare_flash"] = f"Deleted {target}."
                    st.rerun()
        st.caption("Shipped checkpoints cannot be deleted here.")
