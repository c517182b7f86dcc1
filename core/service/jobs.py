"""Background training jobs: launch `python -m core train` subprocesses whose whole state lives in their run
folders (core.training.rundir), so they survive Streamlit reruns, page switches, browser reloads and app restarts."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from core.training import queue, rundir
from core.training.config import TrainConfig, to_cli_args, with_defaults
from core.training.record import FINISHED, now_iso
from core.util import settings
from core.util.fsutil import atomic_write_json, runs_dir
from core.util.procs import pid_alive, spawn_detached

REPEAT_WINDOW_S = 5.0  # a second click on Start within this time, with the same settings, is the same click


def click_stamp(cfg: TrainConfig, now: float | None = None) -> tuple[dict, float]:
    """What the app remembers of a Start click, to recognise a double-click."""
    return cfg.to_dict(), time.time() if now is None else now


def repeat_click(last: tuple[dict, float] | None, cfg: TrainConfig, now: float | None = None) -> bool:
    """Is this Start the second half of a double-click (same settings, within REPEAT_WINDOW_S)? A browser sends
    each click as its own rerun, so without this a double-click launches two identical runs."""
    if not last:
        return False
    settings, when = last
    return settings == cfg.to_dict() and 0 <= (time.time() if now is None else now) - when < REPEAT_WINDOW_S


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


def start_run(cfg: TrainConfig, runs_root: str | os.PathLike | None = None, name: str | None = None, *,
              run_dir: str | os.PathLike | None = None, session: str | None = None) -> Path:
    """Queue `python -m core train` for this config (core.training.queue launches it when a slot is free; `session` counts
    against the per-user limit); returns the run folder.

    With `run_dir` (or a `name` whose folder holds an unfinished run) the trainer resumes from the last
    finished epoch."""
    if run_dir is None:
        run_dir = runs_dir(runs_root) / rundir.check_run_name(name or rundir.default_run_name(cfg))
    run_dir = Path(run_dir)
    if not (run_dir / rundir.RECORD).exists():  # a resumed run keeps the settings it started with
        cfg = within_server_memory(cfg)
    if run_dir.exists():
        _check_can_start(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return queue.submit(cfg.to_dict(), run_dir, RUNNER, session=session)


def schedule_runs(runs_root: str | os.PathLike | None = None) -> list[Path]:
    """One pass of the queue: launch waiting runs while fewer than N trainings are alive."""
    return queue.schedule(runs_root, RUNNER)


def ensure_scheduler(runs_root: str | os.PathLike | None = None) -> None:
    """A background thread in this process that runs a pass every second (the app calls it on each render)."""
    queue.ensure_scheduler(runs_root, RUNNER)


def launch_state(run_dir: Path, since: float) -> str:
    """For core.training.queue: 'alive'/'ended' for a trainer launched at or after `since`, else 'unlaunched'. The
    process counts, not the record: a trainer that has written 'done' holds its memory until it has exited."""
    job = rundir.read_job(run_dir)
    if job and float(job.get("started_unix", 0)) >= since:
        return "alive" if pid_alive(job.get("pid"), job.get("started_unix")) else "ended"
    # a launcher killed between starting the trainer and writing job.json: the trainer's record has its pid
    return "alive" if rundir.run_status(run_dir).active else "unlaunched"


def launch(cfg: TrainConfig | dict, run_dir: Path) -> Path:
    """Start the trainer process now (core.training.queue calls this when a slot is free)."""
    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    for stale in (rundir.STOP_FILE, rundir.PROGRESS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "core", "train", *to_cli_args(cfg), "--run-dir", str(run_dir), "--json", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / rundir.LOG, "ab") as log:
        log.write(f"\n=== {now_iso()} {' '.join(cmd[1:])}\n".encode())
    pid = spawn_detached(cmd, run_dir / rundir.LOG, env=env)
    atomic_write_json(run_dir / rundir.JOB_FILE, {"pid": pid, "started": now_iso(), "started_unix": time.time(),
                                                  "command": cmd, "config": cfg.to_dict()})
    return run_dir


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
