"""Compress page: make int8, fp16 and pruned variants of a checkpoint in the background (core.service.compress_jobs)
and see every variant's size, speed and accuracy beside its fp32 parent."""
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from components import identity
from components.widgets import field_rows, field_widget
from core.compression.compress import CompressConfig
from core.service import compress_jobs, jobs, owners
from core.training.config import FormField, config_from_form, form_fields
from core.training.rundir import RunStatus, list_runs
from core.util.fsutil import runs_dir
from core.views import charts, compressviews

VARIANT_COLUMNS = {
    "onnx_bytes": st.column_config.NumberColumn("ONNX bytes", format="localized"),
    "gzip_bytes": st.column_config.NumberColumn("gzip bytes", format="localized"),
    "size_ratio": st.column_config.NumberColumn("size vs fp32", format="%.2fx"),
    "latency_ms_b1": st.column_config.NumberColumn("ms, batch 1", format="%.2f"),
    "latency_ms_b64": st.column_config.NumberColumn("ms, batch 64", format="%.1f"),
    "speedup_b64": st.column_config.NumberColumn("speed-up, batch 64", format="%.2fx"),
    "accuracy": st.column_config.NumberColumn("accuracy", format="%.3f"),
    "parent_accuracy": st.column_config.NumberColumn("fp32 parent", format="%.3f"),
    "delta": st.column_config.NumberColumn("difference", format="%+.3f"),
    "sparsity": st.column_config.NumberColumn("zeros", format="%.2f"),
}


def draw_field(spec: FormField, col: Any) -> Any:
    return field_widget(spec, col, f"compress_{spec.name}", checkbox=True)  # a form: checkboxes read as settings


def compress_form(root: Path, names: dict[str, RunStatus]) -> None:
    """The form, generated from CompressConfig's fields like the CLI's flags; a submitted one starts a background
    job (its progress is shown below)."""
    specs = form_fields(CompressConfig)
    values: dict = {}
    with st.form("compress_form"):
        run = st.selectbox("Checkpoint", list(names), key="compress_run",
                           format_func=lambda n: f"{n} ({'shipped' if names[n].shipped else 'yours'})")
        field_rows([s for s in specs if s.group == "main"], values, draw_field)
        with st.expander("int8 settings (the defaults are what docs/compression.md found best)"):
            field_rows([s for s in specs if s.group == "more"], values, draw_field)
        force = st.checkbox("replace a variant of the same name", key="compress_force",
                            help="off: a variant that already exists is kept, and the job is refused")
        submitted = st.form_submit_button("Compress in the background", type="primary", key="compress_start")
    st.info("Unstructured pruning only writes zeros: dense kernels multiply by zero just as fast, so it saves **no "
            "time**, and the ONNX file keeps every zero, so it saves **little size unless the file is compressed** "
            "(see the gzip column). Structured pruning removes whole channels, which does save both.",
            icon=":material/info:")
    if not submitted:
        return
    if run is None:
        st.error("No checkpoint to compress: train one on the Train page first.")
        return
    try:
        cfg = config_from_form(values, CompressConfig)
        out = root if names[run].shipped else None  # shipped checkpoints stay as shipped
        # the browser's identity: $FER_MAX_QUEUED counts this user's compressions with their trainings and sweeps
        job = compress_jobs.start_job(names[run].path, cfg, out=out, root=root, force=force,
                                      session=identity.current_user())
    except jobs.RepeatedStart as exc:  # a double-click's second half: the first is queued, nothing is wrong
        st.info(f"Already started: {exc}.")
        return
    except (ValueError, OSError) as exc:  # OSError: the runs folder is not writable, or no disk space
        st.error(str(exc))
        return
    state = compress_jobs.job_state(job)
    if state.status == compress_jobs.JobStatus.QUEUED:
        st.info(f"Queued (place {state.position}): {', '.join(cfg.techniques())} of `{run}` starts when a slot is "
                "free. Its place is shown below.", icon=":material/hourglass_top:")
    else:
        st.success(f"Started: {', '.join(cfg.techniques())} of `{run}`. Progress below.")


@st.fragment(run_every=2)
def show_jobs(root: Path) -> None:
    listed = compress_jobs.list_jobs(root)[:5]
    running = {j.path.name for j in listed if j.status == "running"}
    ended = st.session_state.get("compress_running", set()) - running
    st.session_state["compress_running"] = running
    if ended:  # a job ended since the last look: the variants table and chart below are stale until the page reruns
        st.rerun(scope="app")
    for job in listed:
        label = f"`{job.path.name}`: {', '.join(job.techniques)} of `{job.run}`"
        if job.status == "queued":
            queued_job(job, label)
        elif job.status == "running":
            p = job.progress or {}
            total = p.get("total") or 0
            frac = min(1.0, p.get("done", 0) / total) if total else 0.0
            st.progress(frac, text=f"{label} — {p.get('stage', 'starting')} {p.get('done', 0)}/{total or '?'}")
        elif job.status == "done":
            st.success(f"{label}: done, " + ", ".join(f"`{v['name']}` {v['accuracy']:.3f}" for v in job.variants))
        else:
            st.error(f"{label}: failed: {job.error}")


def queued_job(job: compress_jobs.JobState, label: str) -> None:
    """A waiting job: its place in the line, and Cancel for the browser that asked for it (or the operator)."""
    text_col, button_col = st.columns([5, 1], vertical_alignment="center")
    text_col.info(f"{label}: queued (place {job.position}), starts when a slot is free", icon=":material/hourglass_top:")
    mine = owners.may_act(job.owner, identity.current_user(), identity.operator())
    if mine and button_col.button("Cancel", key=f"cancel_{job.path.name}"):
        try:
            compress_jobs.cancel_job(job.path)
        except ValueError as exc:  # it started meanwhile
            st.error(str(exc))
        else:
            st.rerun(scope="app")


def variants(table: pd.DataFrame) -> None:
    st.subheader("Variants")
    if table.empty:
        st.info("No variants yet.")
        return
    st.dataframe(table, hide_index=True, key="compress_table", column_config=VARIANT_COLUMNS, column_order=[
        "name", "technique", "params", "onnx_bytes", "gzip_bytes", "size_ratio", "latency_ms_b1", "latency_ms_b64",
        "speedup_b64", "accuracy", "parent_accuracy", "delta", "split", "data", "sparsity"])
    st.caption("Latency: ONNX Runtime on this machine's CPU, one thread, medians, each variant timed in alternating "
               "rounds with its parent. Accuracy: ONNX Runtime on the split named, of the data named.")
    other = table[~table["same_data"].fillna(True).astype(bool)]
    if not other.empty:
        st.warning("Calibrated and measured on other data than their parent was trained on: "
                   + ", ".join(f"`{r.name}` (on {r.data})" for r in other.itertuples())
                   + ". Their accuracies compare with the parent's on that data only, not with its own record.",
                   icon=":material/warning:")
    st.subheader("Size vs accuracy")
    # one chart per data set: a synthetic run's val accuracy and FER2013's public accuracy are not on one scale
    for n, (source, part) in enumerate(table.groupby(table["data"].fillna("unknown data"), sort=False)):
        title = f"measured on {'synthetic faces' if source == 'synthetic' else source}"
        st.altair_chart(charts.size_accuracy_chart(compressviews.chart_points(part), title=title), width="stretch",
                        key="compress_chart" if n == 0 else f"compress_chart_{n}")


def main() -> None:
    st.title("Compress")
    st.caption("Beyond width: store the same model in fewer bytes (int8, fp16) or with fewer weights (pruning), and "
               "measure what each costs in accuracy and gives in size and speed, against its fp32 parent.")
    root = runs_dir()
    parents = [r for r in list_runs(root) if r.has_onnx and r.record.variant is None]
    compress_form(root, {r.name: r for r in parents})
    show_jobs(root)
    variants(compressviews.variants_table(root))


if __name__ == "__main__":
    main()
