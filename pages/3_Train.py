"""Train page: launch background training runs (core.service.jobs) and watch them: progress with ETA, live curves, stop.
Runs live on disk, so they keep going and stay visible across page switches and browser reloads. The form is
generated from core.training.config.TrainConfig's field metadata, like the CLI's flags."""
from pathlib import Path

import streamlit as st

from components import identity
from components.widgets import KEEP, field_rows, field_widget
from core.data import find_fer
from core.models import archs
from core.models.summary import summarize
from core.service import jobs, owners
from core.training import rundir
from core.training.config import FORM_DROPOUT, FormField, config_from_form, form_fields
from core.training.train import available_devices
from core.util import settings
from core.util.fsutil import runs_dir
from core.views import charts, runviews, sweepviews
from core.views.dataviews import dataset_choices

MAX_SHOWN = 8  # most recent runs shown here in full; every run is on Compare
STATUS_BADGE = {"queued": ":violet-badge[queued]", "starting": ":blue-badge[starting]", "running": ":blue-badge[running]",
                "stopping": ":orange-badge[stopping]", "done": ":green-badge[done]", "stopped": ":gray-badge[stopped]",
                "failed": ":red-badge[failed]", "interrupted": ":orange-badge[interrupted]"}


def widget(spec: FormField, where, fixed_choices: list | None = None):  # noqa: ANN001, ANN201 - a column; its value
    """One form widget for a TrainConfig field: the architecture by its family's title, the width as a slider, the
    rest as components.widgets draws any field."""
    key, kw = f"train_{spec.name}", {"help": spec.help, **KEEP}
    if spec.name == "arch":
        return where.selectbox(spec.label, spec.choices, index=spec.choices.index(spec.default), key=key,
                               format_func=lambda n: archs.get_family(n).title, **kw)
    if spec.name == "width":
        return where.slider(spec.label, spec.low, spec.high, spec.default, spec.step, format="%.3f", key=key, **kw)
    return field_widget(spec, where, key, KEEP, fixed_choices)


def form_group(specs: list[FormField], values: dict) -> None:
    field_rows(specs, values, lambda spec, col: widget(spec, col, available_devices() if spec.name == "device" else None))


def dropout_slider(arch: str, where):  # noqa: ANN001, ANN201 - a column; the value or None
    """The family's own dropout range and default (a key per family, so each starts at its default)."""
    knob = next((k for k in archs.get_family(arch).knobs if k.name == "dropout"), None)
    if knob is None:
        where.caption("This family has no dropout knob.")
        return None
    start = min(max(FORM_DROPOUT, knob.low), knob.high)  # the quick default: little dropout learns in few steps
    return where.slider("Dropout", knob.low, knob.high, start, knob.step, key=f"train_dropout_{arch}", **KEEP,
                        help=f"the family's own default is {knob.default:g}; the form starts lower for quick runs")


def train_form(where) -> tuple[dict, str | None]:  # noqa: ANN001 - a column
    """The form's values (TrainConfig fields, plus "data" and "dropout") and the run name typed, if any."""
    specs = form_fields()
    values: dict = {}
    with where:
        sources, default_source = dataset_choices(st.session_state.get("data_source"), find_fer())
        values["data"] = st.radio("Dataset", sources, key="train_data", horizontal=True,
                                  index=sources.index(default_source),
                                  format_func=lambda s: "synthetic (built-in)" if s == "synthetic" else f"FER2013 at {s}",
                                  help="Choose FER2013 on the Data page; the built-in synthetic set needs no download.")
        # the architecture's names are long ("MobileNet-style (depthwise-separable)"): a wide column of its own
        arch_col, width_col = st.columns([5, 3])
        first = {s.name: s for s in specs if s.group == "main"}
        values["arch"], values["width"] = widget(first.pop("arch"), arch_col), widget(first.pop("width"), width_col)
        form_group(list(first.values()), values)
        dropout_col, name_col = st.columns(2)
        values["dropout"] = dropout_slider(values["arch"], dropout_col)
        run_name = name_col.text_input("Run name (optional)", key="train_name", placeholder="arch-width-time if empty",
                                       persist_state="session").strip()
        with st.expander("More settings: optimizer, schedule, regularisation, distillation"):
            form_group([s for s in specs if s.group == "more"], values)
    return values, run_name or None


def quick_defaults_text() -> str:
    """The caption on the form's quick defaults, from the defaults themselves."""
    d = {f.name: f.default for f in form_fields()}
    return (f"Quick defaults: a plain CNN at width {d['width']:g} trains on {d['synthetic_size']:,} synthetic faces "
            f"for a **{d['time_budget_s']:g}-second time budget** (batch {d['batch_size']}, lr {d['lr']:g}, dropout "
            f"{FORM_DROPOUT:g}), which holds on a busy machine too: it trains fewer steps there, not longer. Start-up, "
            "the final evaluation and the export come on top. Set the budget to 0 to train for the epochs given. The "
            "study's MobileNet learns slowly on few steps: give it more time.")


def summary_and_start(values: dict, blocked: bool) -> bool:
    """The model's size, the quick defaults, the server's notes and the Start button (True when pressed)."""
    dropout = values["dropout"]
    try:
        s = summarize(values["arch"], width=values["width"], **({"dropout": dropout} if dropout is not None else {}))
        st.metric("Model parameters", f"{s.params:,}", border=True, help=f"{s.macs:,} MACs per image")
    except ValueError as exc:
        st.error(str(exc))
    st.caption(quick_defaults_text())
    try:
        if note := settings.micro_batch_note():
            st.caption(note)
    except ValueError as exc:  # a mistyped server setting: Start refuses too, with the same message
        st.warning(f"This server's settings need fixing by its administrator: {exc}")
    return st.button("Start training", type="primary", key="train_start", disabled=blocked)


def start(values: dict, run_name: str | None, root, box) -> None:  # noqa: ANN001 - a Path; an st.empty
    try:
        form = {k: v for k, v in values.items() if k not in ("data", "dropout")}
        cfg = config_from_form(form, data=values["data"], dropout=values["dropout"])
        # the browser's identity, not the Streamlit session's: the limit of queued runs per user ($FER_MAX_QUEUED)
        # and the one-click-one-run guard hold across reloads, and only this browser (or the operator) may stop it
        user = identity.current_user()
        run_dir = jobs.start_run(cfg, root, run_name, session=user, owner=user)
    except jobs.RepeatedStart as exc:  # a double-click's second half: the first started, nothing is wrong
        box.info(f"Already started: {exc}.")
    except (ValueError, OSError) as exc:  # OSError: the runs folder is not writable, or no disk space
        box.error(f"Could not start: {exc}")
    else:
        status = rundir.run_status(run_dir)
        if status.status == "queued":
            box.info(f"Queued **{run_dir.name}** (place {status.position}): it starts when a slot is free; it is "
                     "listed below.")
        else:
            box.success(f"Started **{run_dir.name}**; it is listed below.")


def curves(run: rundir.RunStatus) -> None:
    df = runviews.run_curves(run.record) if run.record else None
    if df is None or df.empty:
        st.caption("Curves appear when the first epoch finishes.")
        return
    total = int(run.config.get("epochs") or df["epoch"].max())
    left, right = st.columns(2)
    for col, kind in ((left, "loss"), (right, "accuracy")):
        chart = charts.run_curve_chart(df, kind, total)
        col.altair_chart(chart, width="stretch")


def run_button(where, label: str, key: str, action, toast: str | None, **kw: object) -> None:  # noqa: ANN001
    """A button that calls into core.service.jobs: a toast on success, the ValueError's message as st.error otherwise."""
    if where.button(label, key=key, **kw):
        try:
            action()
        except ValueError as exc:
            st.error(str(exc))
        else:
            if toast:
                st.toast(toast)


def buttons(run: rundir.RunStatus, where) -> None:  # noqa: ANN001 - a column
    # Checked as the buttons are drawn, which is also when a click is handled: a click on a run that changed hands
    # since the browser drew it finds no button, and does nothing.
    if not owners.may_control(run.path, identity.current_user(), identity.operator()):
        if run.active or run.resumable:
            where.caption("another user's run", help="Only the browser that started a run, or this server's "
                          "operator, may stop or resume it.")
        return
    if run.status == "queued":
        run_button(where, "Cancel", f"cancel_{run.name}", lambda: jobs.stop_run(run.path), f"Cancelled {run.name}")
    elif run.status in ("starting", "running"):
        run_button(where, "Stop", f"stop_{run.name}", lambda: jobs.stop_run(run.path),
                   f"Asked {run.name} to stop; it keeps its finished epochs.")
    elif run.status == "stopping":
        run_button(where, "Force stop", f"kill_{run.name}", lambda: jobs.stop_run(run.path, kill=True), None,
                   help="terminate the process now")
    elif run.resumable:
        run_button(where, "Resume", f"resume_{run.name}", lambda: jobs.resume_run(run.path), f"Resumed {run.name}",
                   help="continue after the last finished epoch")


def outcome(run: rundir.RunStatus) -> None:
    if run.status == "failed":
        st.error(f"Failed: {run.error}")
    elif run.status == "interrupted":
        st.warning(f"Interrupted: {run.error}")
    elif run.status == "stopped" and run.record and run.record.final:
        st.info(f"Stopped on request after {len(run.record.epochs)} epochs; kept and exported: "
                f"{runviews.done_text(run)}." + (" Resume continues it." if run.resumable else ""))
    elif run.status == "stopped":
        st.info("Stopped on request" + (f": {run.error}" if run.error else "."))
    elif run.status == "done" and run.record:
        st.success(f"Done in {runviews.done_text(run)}. See it on Compare; try it on Predict.")


def show_run(run: rundir.RunStatus) -> None:
    cfg = run.config
    with st.container(border=True):
        head, button_col = st.columns([5, 1], vertical_alignment="center")
        desc = f"{cfg.get('arch', '?')} w{cfg.get('width', '?')}" if cfg else ""
        data_desc = "synthetic" if cfg.get("data") == "synthetic" else "FER2013"
        params = f" · {run.record.params:,} params" if run.record and run.record.params else ""
        head.markdown(f"**{run.name}** {STATUS_BADGE.get(run.status, run.status)}  \n"
                      f"{desc} · {data_desc} · batch {cfg.get('batch_size', '?')} · lr {cfg.get('lr', '?')}{params}")
        buttons(run, button_col)
        if run.active or run.status == "interrupted":
            st.progress(run.fraction, text=runviews.progress_text(run))
        outcome(run)
        curves(run)


@st.fragment(run_every=2)
def runs_panel(root: Path) -> None:
    runs, variants = runviews.trainings(rundir.list_runs(root, include_shipped=False))
    active = sum(r.active for r in runs)
    st.subheader(f"Runs ({active} running)" if active else "Runs")
    if not runs:
        st.info("No runs yet. Press **Start training**; the run appears here with live progress.")
        return
    st.caption(f"Run folders in `{root}`. Showing the {min(len(runs), MAX_SHOWN)} most recent of "
               f"{len(runs)}; all are on Compare."
               + (f" {variants} compression variant(s) are not trainings: they are on Compress." if variants else ""))
    for run in runs[:MAX_SHOWN]:
        show_run(run)



# --- sweeps: a grid of trainings on Ray Tune (core.service.sweep), run by a background `python -m core sweep` -----------
@st.fragment(run_every=3)
def sweep_trials(root: Path) -> None:
    from core.service import sweep

    for record in sweep.list_sweeps(root)[:3]:
        if record.get("state") == sweep.TrialStatus.QUEUED:  # no record yet: it waits for a free slot
            queued_sweep(record, root)
            continue
        st.markdown(f"**{record.get('name')}** · {record.get('state')} · {len(record['trials'])} trials")
        if record.get("state") == "failed" and record.get("error"):  # e.g. it asked for more than the cluster has
            st.error(f"Sweep {record.get('name')} failed: {record['error']}")
        st.dataframe(sweepviews.trials_table(record), hide_index=True, key=f"sweep_table_{record.get('name')}")


def queued_sweep(record: dict, root: Path) -> None:
    """A waiting sweep: its place in the line, and Cancel for the browser that asked for it (or the operator)."""
    from core.service import sweep

    text, button = st.columns([5, 1], vertical_alignment="center")
    text.markdown(f"**{record.get('name')}** · :violet-badge[queued (place {record.get('position')})] · "
                  f"{record.get('planned_trials')} trials, started when a slot is free")
    if owners.may_act(record.get("owner"), identity.current_user(), identity.operator()) \
            and button.button("Cancel", key=f"cancel_sweep_{record.get('name')}"):
        try:
            sweep.cancel_sweep(record["folder"], root)
        except ValueError as exc:  # it started meanwhile
            st.error(str(exc))
        else:
            st.rerun()


def sweep_panel(root: Path, values: dict) -> None:
    from core.service import sweep

    st.subheader("Sweep")
    if not sweep.ray_available():
        st.info(f"A sweep trains every combination of architectures, widths and seeds on Ray. {sweep.INSTALL_HINT}")
        return
    with st.form("sweep_form"):
        c1, c2, c3, c4, c5 = st.columns([3, 3, 1, 1, 2])
        s_archs = c1.multiselect("Architectures", archs.list_archs(), default=["plain_cnn", "mobilenet"], key="sweep_archs")
        s_widths = c2.multiselect("Widths", [0.125, 0.25, 0.5, 1.0, 2.0], default=[0.25, 0.5], key="sweep_widths")
        s_seeds = c3.number_input("Seeds", min_value=1, max_value=10, value=2, key="sweep_seeds")
        s_epochs = c4.number_input("Epochs", min_value=1, max_value=1000, value=3, key="sweep_epochs")
        s_name = c5.text_input("Sweep name (optional)", key="sweep_name").strip()
        go = st.form_submit_button("Start sweep", icon=":material/grid_view:")
    if go:
        try:
            spec = sweep.SweepSpec(s_name or sweep.default_name(), {"arch": s_archs, "width": s_widths},
                                   {"data": values["data"], "epochs": int(s_epochs),  # the rest as in the form above
                                    **{k: values[k] for k in ("synthetic_size", "batch_size", "lr", "device")}},
                                   list(range(int(s_seeds))))
            # the browser's identity: $FER_MAX_QUEUED counts this user's sweeps with their trainings and compressions
            sweep.start_sweep(spec, root, session=identity.current_user())
        except jobs.RepeatedStart as exc:  # a double-click's second half: the first is queued
            st.info(f"Already started: {exc}.")
        except (ValueError, OSError) as exc:
            st.error(f"Could not start the sweep: {exc}")
        else:
            waiting = [s for s in sweep.list_sweeps(root) if s["name"] == spec.name and s["state"] == "queued"]
            st.toast(f"Queued sweep {spec.name} (place {waiting[0]['position']}): {sweep.count(spec)} trials"
                     if waiting else f"Started sweep {spec.name}: {sweep.count(spec)} trials", icon=":material/grid_view:")
    sweep_trials(root)


def main() -> None:
    st.title("Train")
    st.caption("Short trainings run in the background, one process each: start several, switch pages, reload the "
               "browser; they keep going. Finished runs appear on Compare and Predict at once.")
    root = runs_dir()
    jobs.ensure_scheduler(root)  # launches waiting runs as slots free, in this app process, also after a restart
    form_col, summary_col = st.columns([3, 2], gap="large")
    values, run_name = train_form(form_col)
    name_error = None
    if run_name:
        try:
            rundir.check_run_name(run_name)
        except ValueError as exc:
            name_error = str(exc)
            form_col.error(name_error)
    with summary_col:
        pressed = summary_and_start(values, blocked=name_error is not None)
        box = st.empty()
    if pressed:
        start(values, run_name, root, box)
    runs_panel(root)
    sweep_panel(root, values)


if __name__ == "__main__":
    main()
