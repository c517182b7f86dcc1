"""Train page: launch background training runs (core.jobs) and watch them: progress with ETA, live curves, stop.
Runs live on disk, so they keep going and stay visible across page switches and browser reloads."""
import altair as alt
import pandas as pd
import streamlit as st

from core import archs, jobs
from core.checkpoint import check_run_name
from core.config import TrainConfig
from core.data import find_local_fer
from core.fsutil import runs_dir
from core.summary import summarize
from core.train import available_devices

LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
MAX_SHOWN = 8  # most recent runs shown here in full; every run is on Compare
STATUS_BADGE = {"starting": ":blue-badge[starting]", "running": ":blue-badge[running]",
                "stopping": ":orange-badge[stopping]", "done": ":green-badge[done]", "stopped": ":gray-badge[stopped]",
                "failed": ":red-badge[failed]", "interrupted": ":orange-badge[interrupted]"}

st.title("Train")
st.caption("Short trainings run in the background, one process each: start several, switch pages, reload the "
           "browser; they keep going. Finished runs appear on Compare and Predict at once.")

root = runs_dir()
S = "session"  # widget values survive page switches

# --- dataset -------------------------------------------------------------------------------------------------
chosen = st.session_state.get("data_source", "synthetic")
detected = find_local_fer()
fer_path = chosen if chosen != "synthetic" else (str(detected) if detected else None)
sources = ["synthetic"] + ([fer_path] if fer_path else [])
form, summary_col = st.columns([3, 2], gap="large")
with form:
    data = st.radio("Dataset", sources, key="train_data", horizontal=True, index=sources.index(chosen) if chosen in sources else 0,
                    format_func=lambda s: "synthetic (built-in)" if s == "synthetic" else f"FER2013 at {s}",
                    help="Choose FER2013 on the Data page; the built-in synthetic set needs no download.")
    c1, c2, c3 = st.columns([3, 3, 2])
    names = archs.list_archs()
    arch = c1.selectbox("Architecture", names, index=names.index("plain_cnn"), key="train_arch", persist_state=S,
                        format_func=lambda n: archs.get_family(n).title)
    width = c2.slider("Width", min_value=archs.WIDTH_MIN, max_value=archs.WIDTH_MAX, value=0.25, step=0.125,
                      key="train_width", persist_state=S, help="channel multiplier")
    fam = archs.get_family(arch)
    drop_knob = next((k for k in fam.knobs if k.name == "dropout"), None)
    dropout = None
    if drop_knob is not None:
        dropout = c3.slider("Dropout", min_value=drop_knob.low, max_value=drop_knob.high, value=drop_knob.default,
                            step=drop_knob.step, key=f"train_dropout_{arch}", persist_state=S)
    else:
        c3.caption("This family has no dropout knob.")

    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Epochs", min_value=1, max_value=1000, value=3, step=1, key="train_epochs", persist_state=S)
    batch = c2.selectbox("Batch size", [16, 32, 64, 128, 256, 512], index=2, key="train_batch", persist_state=S)
    lr = c3.selectbox("Learning rate", LEARNING_RATES, index=LEARNING_RATES.index(3e-3), format_func="{:g}".format,
                      key="train_lr", persist_state=S, help="Adam; the study used 0.001 with batch 256")
    devices = available_devices()
    device = c4.selectbox("Device", devices, key="train_device", persist_state=S,
                          help="auto picks cuda, then mps, then cpu; only devices present here are listed")

    c1, c2, c3, c4 = st.columns(4)
    augment = c1.toggle("Augment", value=False, key="train_augment", persist_state=S,
                        help="random shift, scale, rotation and flip; helps long FER2013 runs, slows short demos")
    subset = c2.number_input("Subset (0 = all)", min_value=0, max_value=10**7, value=0, step=500, key="train_subset",
                             persist_state=S, help="train on only this many images, class balance kept: classroom demos")
    synthetic_size = c3.number_input("Synthetic images", min_value=100, max_value=200_000, value=3000, step=500,
                                     key="train_synthetic_size", persist_state=S, disabled=data != "synthetic",
                                     help="how many faces to draw (80% train, 20% validation)")
    run_name = c4.text_input("Run name (optional)", key="train_name", persist_state=S,
                             placeholder="arch-width-time if empty").strip()
    with st.expander("More settings"):
        c1, c2, c3, c4 = st.columns(4)
        max_steps = c1.number_input("Max steps (0 = no cap)", min_value=0, max_value=10**9, value=0, step=10,
                                    key="train_max_steps", persist_state=S)
        schedule = c2.selectbox("Schedule", ["cosine", "constant"], key="train_schedule", persist_state=S)
        smoothing = c3.number_input("Label smoothing", min_value=0.0, max_value=0.5, value=0.0, step=0.05,
                                    key="train_smoothing", persist_state=S)
        seed = c4.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="train_seed",
                               persist_state=S)

name_error = None
if run_name:
    try:
        check_run_name(run_name)
    except ValueError as exc:
        name_error = str(exc)
        form.error(name_error)

with summary_col:
    try:
        knobs = {"width": width} | ({"dropout": dropout} if dropout is not None else {})
        s = summarize(arch, **knobs)
        st.metric("Model parameters", f"{s.params:,}", border=True, help=f"{s.macs:,} MACs per image")
    except ValueError as exc:
        st.error(str(exc))
    st.caption("Quick defaults (plain CNN at width 0.25, batch 64, lr 0.003, 3 epochs on 3,000 synthetic faces) "
               "learn visibly in about a minute on a laptop CPU. The study's MobileNet learns slowly on few steps: "
               "give it more epochs.")
    start = st.button("Start training", type="primary", key="train_start", icon=":material/play_arrow:",
                      disabled=name_error is not None)

if start:
    try:
        cfg = TrainConfig(arch=arch, width=float(width), dropout=dropout, data=data, synthetic_size=int(synthetic_size),
                          subset=int(subset) or None, epochs=int(epochs), max_steps=int(max_steps) or None,
                          batch_size=int(batch), lr=float(lr), schedule=schedule, label_smoothing=float(smoothing),
                          augment=bool(augment), seed=int(seed), device=device)
        run_dir = jobs.start_run(cfg, root, run_name or None)
    except (ValueError, OSError) as exc:  # OSError: the runs folder is not writable, or no disk space
        st.error(f"Could not start: {exc}")
    else:
        st.toast(f"Started {run_dir.name}", icon=":material/rocket_launch:")
        st.session_state["train_last_started"] = run_dir.name


def curves(job: jobs.JobStatus) -> None:
    rows = []
    for e in job.epochs:
        rows += [{"epoch": e["epoch"], "metric": "loss", "split": "train", "value": e["train_loss"]},
                 {"epoch": e["epoch"], "metric": "loss", "split": e.get("val_split", "val"), "value": e["val_loss"]},
                 {"epoch": e["epoch"], "metric": "accuracy", "split": "train", "value": e["train_acc"]},
                 {"epoch": e["epoch"], "metric": "accuracy", "split": e.get("val_split", "val"), "value": e["val_acc"]}]
    if not rows:
        st.caption("Curves appear when the first epoch finishes.")
        return
    df = pd.DataFrame(rows)
    total = int(job.config.get("epochs") or df["epoch"].max())
    left, right = st.columns(2)
    for col, metric in ((left, "loss"), (right, "accuracy")):
        chart = alt.Chart(df[df["metric"] == metric]).mark_line(point=True).encode(
            x=alt.X("epoch:Q", scale=alt.Scale(domain=[1, max(2, total)]), axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=metric == "accuracy")),
            color=alt.Color("split:N", legend=alt.Legend(orient="top-right", title=None)),
            tooltip=["epoch", "split", alt.Tooltip("value:Q", format=".4f")],
        ).properties(height=190)
        col.altair_chart(chart, width="stretch")


def progress_text(job: jobs.JobStatus) -> str:
    p = job.progress
    if job.status == "starting":
        return "starting: loading data and building the model..."
    if not p:
        done = len(job.epochs)
        return f"epoch {done}/{job.config.get('epochs', '?')}"
    text = f"epoch {p['epoch']}/{p['epochs']} · step {p['step']}/{p['steps']} · loss {p['loss']:.3f}"
    if job.status == "running":
        text += f" · ETA {jobs.format_eta(job.eta_s)}"
    return text


def run_button(where, label: str, key: str, action, toast: str | None, **kw) -> None:  # noqa: ANN001
    """A button that calls into core.jobs: a toast on success, the ValueError's message as st.error otherwise."""
    if where.button(label, key=key, **kw):
        try:
            action()
        except ValueError as exc:
            st.error(str(exc))
        else:
            if toast:
                st.toast(toast)


def show_job(job: jobs.JobStatus) -> None:
    cfg = job.config
    with st.container(border=True):
        head, buttons = st.columns([5, 1], vertical_alignment="center")
        desc = f"{cfg.get('arch', '?')} w{cfg.get('width', '?')}" if cfg else ""
        data_desc = "synthetic" if cfg.get("data") == "synthetic" else "FER2013"
        head.markdown(f"**{job.name}** {STATUS_BADGE.get(job.status, job.status)}  \n"
                      f"{desc} · {data_desc} · batch {cfg.get('batch_size', '?')} · lr {cfg.get('lr', '?')}"
                      + (f" · {job.record['params']:,} params" if job.record and job.record.get("params") else ""))
        if job.status in ("starting", "running"):
            run_button(buttons, "Stop", f"stop_{job.name}", lambda: jobs.stop_run(job.path),
                       f"Asked {job.name} to stop; it keeps its finished epochs.", icon=":material/stop:")
        elif job.status == "stopping":
            run_button(buttons, "Force stop", f"kill_{job.name}", lambda: jobs.stop_run(job.path, kill=True), None,
                       help="terminate the process now")
        elif job.resumable:
            run_button(buttons, "Resume", f"resume_{job.name}", lambda: jobs.resume_run(job.path), f"Resumed {job.name}",
                       icon=":material/replay:")
        if job.active or job.status == "interrupted":
            st.progress(job.fraction, text=progress_text(job))
        if job.status == "failed":
            st.error(f"Failed: {job.error}")
        elif job.status == "interrupted":
            st.warning(f"Interrupted: {job.error}")
        elif job.status == "stopped":
            st.info("Stopped on request" + (f": {job.error}" if job.error else "; finished epochs were kept and exported."))
        elif job.status == "done" and job.record:
            acc = (job.record.get("final") or {}).get("accuracy") or {}
            accs = " · ".join(f"{k} {v:.3f}" for k, v in acc.items() if isinstance(v, (int, float)))
            st.success(f"Done in {job.record.get('wall_time_s', 0):.0f} s on {job.record.get('device', '?')}: "
                       f"accuracy {accs}. See it on Compare; try it on Predict.")
        curves(job)


@st.fragment(run_every=2)
def runs_panel() -> None:
    all_jobs = jobs.list_jobs(root)
    active = sum(j.active for j in all_jobs)
    st.subheader(f"Runs ({active} running)" if active else "Runs")
    if not all_jobs:
        st.info("No runs yet. Press **Start training**; the run appears here with live progress.")
        return
    st.caption(f"Run folders in `{root}`. Showing the {min(len(all_jobs), MAX_SHOWN)} most recent of "
               f"{len(all_jobs)}; all are on Compare.")
    for job in all_jobs[:MAX_SHOWN]:
        show_job(job)


runs_panel()
