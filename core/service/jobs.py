"""Background training jobs: launch `python -m core train` subprocesses whose whole state lives in their run
folders (core.training.rundir), so they survive Streamlit reruns, page switches, browser reloads and app restarts.
Also the one way into the queue for every kind of background work (submit, RUNNERS): compressions
(core.service.compress_jobs) and sweeps (core.service.sweep) wait in the same queue, under the same limits.

One trainer per run folder, whatever crashes: a trainer holds the folder's trainer lock (rundir.TRAINER_LOCK) for
its whole life, and job.json is its launch marker, as core.service.launcher describes for every kind of job; the
trainer confirms its launch before it trains (claim_run_dir)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
from pathlib import Path

from core.service import launcher, owners
from core.training import queue, rundir
from core.training.config import TrainConfig, to_cli_args, with_defaults
from core.training.queue import JobKind, RepeatedStart  # noqa: F401 - the Train page catches it here
from core.training.record import FINISHED
from core.util import settings
from core.util.fsutil import runs_dir
from core.util.procs import take_lock

REPEAT_WINDOW_S = 5.0  # a second Start from one browser this soon, with the same settings, is the same click


def _check_can_start(run_dir: Path, cfg: TrainConfig) -> None:
    """A live run, or a finished run of the same name, is never overwritten; nor is an unfinished different one."""
    current = rundir.run_status(run_dir)
    if current.active:
        raise ValueError(f"run {run_dir.name!r} is already {current.status}; stop it first or choose another name")
    can_continue = current.status == "stopped" and (run_dir / rundir.RESUME).exists()
    if current.status in FINISHED and current.record is not None and not can_continue:
        raise ValueError(f"a finished run named {run_dir.name!r} already exists; choose another name")
    if current.record and current.record.config and with_defaults(current.record.config) != cfg.to_dict() \
            and (run_dir / rundir.RESUME).exists():
        raise ValueError(f"run {run_dir.name!r} holds an unfinished run with different settings; choose another name")


def within_server_memory(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its micro-batch capped by $FER_MICRO_BATCH when it trains on the CPU, where activations take the
    server's memory (an accelerator's live in its own). The run record keeps the setting it ran with."""
    cap = settings.micro_batch_cap()
    if not cap or cfg.batch_size <= cap or 0 < cfg.micro_batch <= cap:
        return cfg
    from core.training.train import resolve_device  # torch; only when a cap is set

    return dataclasses.replace(cfg, micro_batch=cap) if resolve_device(cfg.device).type == "cpu" else cfg


def check_inputs(cfg: TrainConfig) -> None:
    """What a trainer would refuse only after taking a slot, refused before anything is queued or written: data
    outside the allowed roots ($FER_DATA_ROOTS) or not FER2013, a teacher or start-from folder that is not a usable
    trained run. The app's Start and the CLI's train both call it; ValueError names the value and what is allowed."""
    from core.data import resolve_source

    if cfg.data != "synthetic":
        settings.check_data_path(cfg.data)
        resolve_source(Path(cfg.data).expanduser())
    for folder in [f.strip() for f in (cfg.teacher or "").split(os.pathsep) if f.strip()]:
        _check_trained_run(Path(folder), "teacher", f"a trained run folder (several joined by {os.pathsep!r})")
    if cfg.init_from:
        from core.training.runs import find_run  # torch: only for a run that starts from another

        _check_trained_run(find_run(cfg.init_from), "init_from", "a trained run folder or a run's name")


def _check_trained_run(folder: Path, what: str, allowed: str) -> None:
    """A finished run's folder with a readable record and intact weights (nothing unpickled: a zip index check)."""
    if not folder.is_dir():
        raise ValueError(f"{what} {str(folder)!r} is not a folder; allowed: {allowed}")
    try:
        rundir.read_record(folder)
    except ValueError as exc:
        raise ValueError(f"{what} {str(folder)!r} is not a trained run ({exc}); allowed: {allowed}") from None
    if problem := rundir.weights_problem(folder / rundir.WEIGHTS):
        raise ValueError(f"{what} {str(folder)!r} cannot be used: {problem}")


def start_run(cfg: TrainConfig, runs_root: str | os.PathLike | None = None, name: str | None = None, *,
              run_dir: str | os.PathLike | None = None, session: str | None = None,
              owner: str | None = None) -> Path:
    """Queue `python -m core train` for this config (core.training.queue launches it when a slot is free; `session` counts
    against the per-user limit); returns the run folder. Every check comes first: a refused start writes nothing.

    With `run_dir` (or a `name` whose folder holds an unfinished run) the trainer resumes from the last
    finished epoch. `owner` (a browser's identity, core.service.owners) is written into the run folder as the queue
    makes it, before any pass can launch the run: an app that dies just after the Start leaves no unowned run."""
    settings.check_server_settings()  # a mistyped setting refuses the Start; queued, the run could never launch
    check_inputs(cfg)
    if run_dir is None:
        run_dir = runs_dir(runs_root) / rundir.check_run_name(name or rundir.default_run_name(cfg))
    run_dir = Path(run_dir)
    if not (run_dir / rundir.RECORD).exists():  # a resumed run keeps the settings it started with
        cfg = within_server_memory(cfg)
    if run_dir.exists():
        _check_can_start(run_dir, cfg)
        if owner is not None:  # continuing an unfinished run of the same name: it must be this user's to continue
            owners.check_control(run_dir, owner)
    fresh = not run_dir.exists()  # a repeated click names a new folder; resuming one is never a repeat
    files = {owners.OWNER_FILE: owners.owner_entry(owner)} if owner is not None else None
    # a stop request left by an earlier trainer that died before it could honour it: not a request for this run
    (run_dir / rundir.STOP_FILE).unlink(missing_ok=True)
    # the request: the settings, and the name only where the user typed one (a default name is new every click)
    return submit(JobKind.TRAIN, cfg.to_dict(), run_dir, run_dir.parent, session=session, files=files,
                  request={"config": cfg.to_dict(), "name": name}, repeat_window_s=REPEAT_WINDOW_S if fresh else None)


def submit(kind: JobKind, config: dict, folder: Path, runs_root: str | os.PathLike | None, *,
           session: str | None = None, files: dict[str, dict] | None = None,
           request: object = None, repeat_window_s: float | None = None) -> Path:
    """Queue a job of any kind in the runs folder's queue (it makes `folder`, with `files` in it, once the job is
    accepted); ValueError when a setting is mistyped, the job is already queued or running, or `session` has
    $FER_MAX_QUEUED jobs."""
    return queue.submit(config, folder, RUNNERS, session=session, kind=kind, runs_root=runs_dir(runs_root),
                        files=files, request=request, repeat_window_s=repeat_window_s)


def cancel_waiting(folder: str | os.PathLike, runs_root: str | os.PathLike) -> None:
    """Take a waiting compression or sweep out of the queue and forget its folder: it never started, so nothing in
    it is worth keeping (a run is cancelled by queue.cancel, which keeps a resumed run's epochs). ValueError when
    it is not waiting: it runs, or ran."""
    queue.cancel(folder, runs_root)
    shutil.rmtree(folder, ignore_errors=True)


def schedule_runs(runs_root: str | os.PathLike | None = None) -> list[Path]:
    """One pass of the queue: launch waiting jobs while fewer than N jobs are alive."""
    return queue.schedule(runs_root, RUNNERS)


def ensure_scheduler(runs_root: str | os.PathLike | None = None) -> None:
    """A background thread in this process that runs a pass every second: started with the app server
    (streamlit_app.py's lifespan hook), and again by every render, which finds it running."""
    queue.ensure_scheduler(runs_root, RUNNERS)


def _files(run_dir: Path) -> launcher.JobFiles:
    return launcher.JobFiles(run_dir / rundir.TRAINER_LOCK, run_dir / rundir.JOB_FILE, run_dir / rundir.LOG)


def launch_state(run_dir: Path, token: str | None) -> str:
    """For core.training.queue: 'alive' while a trainer holds the run's lock, 'ended' once the trainer of launch
    `token` is gone, 'unlaunched' when no trainer of that launch ever ran (core.service.launcher.launch_state)."""
    return launcher.launch_state(_files(run_dir), token, rundir.read_job(run_dir))


def launch(cfg: TrainConfig | dict, run_dir: Path, token: str) -> Path:
    """Start the trainer process now (core.training.queue calls this when a slot is free, under its lock)."""
    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    cmd = [sys.executable, "-m", "core", "train", *to_cli_args(cfg), "--run-dir", str(run_dir), "--json", "--quiet"]
    # an earlier launch's progress is not this one's (removed under the lock: never a live one's). Its STOP file
    # stays: a stale one went at submission (start_run), so one here was pressed while a crashed launch waited to
    # be launched again, and the trainer honours it at once.
    launcher.launch(_files(run_dir), token, cmd, {"config": cfg.to_dict()}, stale=(run_dir / rundir.PROGRESS_FILE,))
    return run_dir


def claim_run_dir(run_dir: Path) -> int:
    """For the trainer process, before it trains: hold the run folder's trainer lock until this process exits and
    return its descriptor (keep it open). A trainer that launch() started inherits the lock and confirms its launch
    by writing its pid into job.json; any other (the CLI) takes the lock, or ValueError when a trainer holds it."""
    fd = launcher.confirm(_files(run_dir))
    if fd is not None:
        return fd
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = take_lock(run_dir / rundir.TRAINER_LOCK)
    if fd is None:
        raise ValueError(f"run {run_dir.name!r} is already being trained by another process; wait for it to finish "
                         "or stop it, or train under another name")
    return fd


def resume_run(run_dir: str | os.PathLike) -> Path:
    """Launch an interrupted or failed run again with its recorded settings; it continues after its last epoch."""
    st = rundir.run_status(run_dir)
    if not st.config:
        raise ValueError(f"{run_dir}: no recorded settings to resume from")
    if st.active:
        raise ValueError(f"run {st.name!r} is already {st.status}")
    return start_run(TrainConfig.from_dict(st.config), run_dir=st.path)


def stop_run(run_dir: str | os.PathLike, *, kill: bool = False) -> None:
    """Ask a run to stop: the trainer sees the STOP file at its next batch, keeps its finished epochs and exports
    them. `kill=True` also sends SIGTERM to the process group (for a run stuck outside the batch loop)."""
    run_dir = Path(run_dir)
    st = rundir.run_status(run_dir)
    if st.status == "queued":
        return queue.cancel(run_dir)  # never started: stopping it means taking it out of the line
    if not st.active:
        raise ValueError(f"run {run_dir.name!r} is not running (status: {st.status})")
    (run_dir / rundir.STOP_FILE).touch()
    if kill and st.pid:
        try:
            os.killpg(st.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


RUNNER = queue.Runner(launch=launch, state=launch_state)  # how core.training.queue launches and watches trainers
# The queue's runner for each kind. A sweep is one job (one slot of $FER_MAX_RUNS) however many trials it runs:
# its own process spreads them over Ray's CPUs, and Ray, not this queue, bounds their concurrency.
RUNNERS = {JobKind.TRAIN: RUNNER, JobKind.COMPRESS: launcher.COMMAND_RUNNER, JobKind.SWEEP: launcher.COMMAND_RUNNER}
