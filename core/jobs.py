"""Background training jobs: `python -m core train` subprocesses whose whole state lives in their run folders,
so they survive Streamlit reruns, page switches, browser reloads and even a restart of the app."""
from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core import checkpoint as ck
from core.config import TrainConfig
from core.fsutil import PROJECT_ROOT, atomic_write_json, runs_dir

JOB_FILE = "job.json"  # written here at launch: pid, start time, command
PROGRESS_FILE = "progress.json"  # written by `core train --run-dir` about twice a second: step, loss, elapsed
ACTIVE = ("starting", "running", "stopping")  # statuses with a live process behind them
# Popen objects of the jobs this process launched: polling them reaps finished children (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


def cli_args(cfg: TrainConfig) -> list[str]:
    """The `core train` flags that rebuild exactly this config (the trainer refuses to resume a different one)."""
    args: list[str] = []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "augment":
            if not value:
                args.append("--no-augment")
        elif value is None:
            continue  # None means "the default" everywhere in TrainConfig, and the CLI's default is None too
        elif isinstance(value, float):
            args += [flag, repr(value)]  # repr round-trips floats exactly
        else:
            args += [flag, str(value)]
    return args


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


JOB_TYPES = {"pid": int, "started": str, "started_unix": (int, float), "command": list, "config": dict}
PROGRESS_NUMBERS = ("epoch", "epochs", "step", "steps", "global_step", "total_steps", "loss")


def _read_job(run_dir: Path) -> dict[str, Any]:
    """job.json with wrongly typed fields dropped: the app writes it, but a hand-edited or damaged one must not
    crash the pages that compare its times."""
    job = _read_json(run_dir / JOB_FILE) or {}
    return {k: v for k, v in job.items()
            if k in JOB_TYPES and isinstance(v, JOB_TYPES[k]) and not isinstance(v, bool)}


def _read_progress(run_dir: Path) -> dict[str, Any] | None:
    """progress.json, or None unless it holds the numbers the progress bar and ETA use."""
    p = _read_json(run_dir / PROGRESS_FILE)
    if p is None or not all(_is_num(p.get(k)) for k in PROGRESS_NUMBERS) or not p.get("total_steps"):
        return None
    if not all(_is_num(p.get(k, 0)) for k in ("first_step", "elapsed", "time", "seconds")):
        return None
    return p


def _valid_config(config: Any) -> dict[str, Any]:
    """A recorded config that rebuilds a TrainConfig, else {} (the run is then shown but cannot be resumed)."""
    if not isinstance(config, dict):
        return {}
    try:
        TrainConfig.from_dict(config)
    except Exception:  # noqa: BLE001 - a damaged config may fail in any way (wrong types, unknown arch...)
        return {}
    return config


def _read_record(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(run.json, None) when usable; (None, reason) when present but unusable; (None, None) when not written yet."""
    if not (run_dir / ck.RECORD).exists():
        return None, None
    try:
        return ck.read_record(run_dir), None
    except ValueError as exc:
        return None, str(exc)


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _pid_alive(pid: int | None, started_by: float | None = None) -> bool:
    """Is `pid` a live (not zombie) process that was already running at `started_by` (unix time)? The time check
    guards against pid reuse: a trainer that died long ago may share its pid with some unrelated newer process."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:  # larger ones overflow os.kill
        return False
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:  # our child from an earlier import of this module: reap it if it has finished
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child (another app process, a CLI run, a script): look it up instead
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else; /proc below still tells its state and age
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return True  # no /proc (macOS): os.kill's answer is all there is
    try:
        fields_after_name = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if fields_after_name[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if started_by is not None and boot is not None:
        started = boot + int(fields_after_name[19]) / os.sysconf("SC_CLK_TCK")
        return started <= started_by + 2.0  # 2 s of slack for clock granularity
    return True


def _iso_to_unix(value: Any) -> float | None:
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _log_tail(run_dir: Path, lines: int = 1) -> str:
    """Last non-empty lines of the run's log: the trainer prints its reason there before exiting."""
    try:
        with open(run_dir / ck.LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    # "===" lines are the launch headers written by start_run, not the trainer's words
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("=== ")]
    return "\n".join(kept[-lines:])


@dataclass
class JobStatus:
    """What the app shows for one run folder; computed from files on disk every time it is asked for."""

    path: Path
    status: str  # starting | running | stopping | done | stopped | failed | interrupted
    error: str | None = None  # why a run failed or was interrupted
    pid: int | None = None
    started: str | None = None  # ISO time of the latest launch
    record: dict[str, Any] | None = None  # run.json, once the trainer has written it
    progress: dict[str, Any] | None = None  # progress.json: the latest batch
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def resumable(self) -> bool:
        """Interrupted runs (process gone, record still 'running') and failed ones can be launched again."""
        return self.status in ("interrupted", "failed") and bool(self.config)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return list((self.record or {}).get("epochs") or [])

    @property
    def fraction(self) -> float:
        """0..1 of the run's optimiser steps."""
        if self.status == "done":
            return 1.0
        p = self.progress
        if p and p.get("total_steps"):
            return max(0.0, min(1.0, p["global_step"] / p["total_steps"]))
        total = self.config.get("epochs") or 0
        return min(1.0, len(self.epochs) / total) if total else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left, from this process's step rate (evaluation time included); None when unknown."""
        p = self.progress
        if self.status != "running" or not p:
            return None
        done = p.get("global_step", 0) - p.get("first_step", 0)
        if done <= 0 or not p.get("elapsed"):
            return None
        left = p["total_steps"] - p["global_step"]
        # The file is written at most twice a second; count the time since it was written as well.
        behind = max(0.0, time.time() - p.get("time", time.time()))
        return max(0.0, p["elapsed"] / done * left - behind)


def job_status(run_dir: str | os.PathLike) -> JobStatus:
    """The state of one run folder: record, live process check, progress, and an 'interrupted' verdict when
    the record says running but no process is behind it any more."""
    run_dir = Path(run_dir)
    record, record_problem = _read_record(run_dir)
    job = _read_job(run_dir)
    progress = _read_progress(run_dir)
    if job:  # launched by start_run: the process existed when job.json was written
        pid, started_by = job.get("pid"), job.get("started_unix")
    else:  # launched some other way (CLI, script): the trainer wrote its pid and was alive at `updated`
        pid, started_by = (record or {}).get("pid"), _iso_to_unix((record or {}).get("updated"))
    alive = _pid_alive(pid, started_by)
    stop_requested = (run_dir / ck.STOP_FILE).exists()
    config = _valid_config((record or {}).get("config")) or _valid_config(job.get("config"))
    st = JobStatus(run_dir, "failed", pid=pid, started=job.get("started") or (record or {}).get("created"),
                   record=record, progress=progress, config=config)
    launched_after_record = bool(job) and record is not None and job.get("started_unix", 0) > _record_mtime(run_dir)
    if record is None or launched_after_record:
        # The trainer (re)writes run.json once its data is loaded; until then the process is all there is.
        if alive:
            st.status = "stopping" if stop_requested else "starting"
        else:
            st.status = "failed"
            st.error = record_problem or _log_tail(run_dir) or "the training process exited before writing its record"
        return st
    status = record.get("status", "done")
    if status == "running":
        if alive:
            st.status = "stopping" if stop_requested else "running"
        else:
            st.status = "interrupted"
            tail = _log_tail(run_dir)
            st.error = (f"the training process (pid {pid}) ended without finishing; finished epochs are saved, "
                        "so it can be resumed" + (f". Last log line: {tail}" if tail else ""))
        return st
    if status == "failed" and stop_requested and "stopped before" in str(record.get("error")):
        st.status, st.error = "stopped", record.get("error")  # a stop during the first epoch: nothing to keep
        return st
    st.status = status
    st.error = record.get("error") if status == "failed" else None
    return st


def _record_mtime(run_dir: Path) -> float:
    try:
        return (run_dir / ck.RECORD).stat().st_mtime
    except OSError:
        return 0.0


def list_jobs(runs_root: str | os.PathLike | None = None) -> list[JobStatus]:
    """Every run folder in the runs folder: live ones first, then interrupted, then the rest newest first."""
    root = runs_dir(runs_root)
    out = []
    for d in root.iterdir():
        if d.is_dir() and not d.name.startswith(".") and ((d / JOB_FILE).exists() or (d / ck.RECORD).exists()):
            out.append(job_status(d))
    rank = {s: 0 for s in ACTIVE} | {"interrupted": 1}
    out.sort(key=lambda j: (rank.get(j.status, 2), -_started_unix(j)))
    return out


def _started_unix(j: JobStatus) -> float:
    job = _read_job(j.path)
    if job.get("started_unix"):
        return float(job["started_unix"])
    try:
        return j.path.stat().st_mtime
    except OSError:
        return 0.0


def start_run(cfg: TrainConfig, runs_root: str | os.PathLike | None = None, name: str | None = None, *,
              run_dir: str | os.PathLike | None = None) -> Path:
    """Launch `python -m core train` in the background for this config; returns the run folder.

    With `run_dir` (or a `name` whose folder holds an unfinished run) the trainer resumes from the last
    finished epoch. A live run, or a finished run of the same name, is never overwritten (ValueError)."""
    from core.runs import default_run_name

    if run_dir is None:
        run_dir = runs_dir(runs_root) / ck.check_run_name(name or default_run_name(cfg))
    run_dir = Path(run_dir)
    if run_dir.exists():
        current = job_status(run_dir)
        if current.active:
            raise ValueError(f"run {run_dir.name!r} is already {current.status}; stop it first or choose another name")
        if current.status in ("done", "stopped") and current.record is not None:
            raise ValueError(f"a finished run named {run_dir.name!r} already exists; choose another name")
        if current.record and current.record.get("config") and current.record["config"] != cfg.to_dict() \
                and (run_dir / ck.RESUME).exists():
            raise ValueError(f"run {run_dir.name!r} holds an unfinished run with different settings; choose another name")
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ck.STOP_FILE, PROGRESS_FILE):
        (run_dir / stale).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "core", "train", *cli_args(cfg), "--run-dir", str(run_dir), "--json", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / ck.LOG, "ab") as log:
        log.write(f"\n=== {_now_iso()} {' '.join(cmd[1:])}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)  # own session: survives the app, not killed by ^C
    _CHILDREN[proc.pid] = proc
    atomic_write_json(run_dir / JOB_FILE, {"pid": proc.pid, "started": _now_iso(), "started_unix": time.time(),
                                           "command": cmd, "config": cfg.to_dict()})
    return run_dir


def resume_run(run_dir: str | os.PathLike) -> Path:
    """Launch an interrupted or failed run again with its recorded settings; it continues after its last epoch."""
    st = job_status(run_dir)
    if not st.config:
        raise ValueError(f"{run_dir}: no recorded settings to resume from")
    if st.active:
        raise ValueError(f"run {st.name!r} is already {st.status}")
    return start_run(TrainConfig.from_dict(st.config), run_dir=st.path)


def stop_run(run_dir: str | os.PathLike, *, kill: bool = False) -> None:
    """Ask a run to stop: the trainer sees the STOP file at its next batch, keeps its finished epochs and exports
    them. `kill=True` also sends SIGTERM to the process group (for a run stuck outside the batch loop)."""
    run_dir = Path(run_dir)
    st = job_status(run_dir)
    if not st.active:
        raise ValueError(f"run {run_dir.name!r} is not running (status: {st.status})")
    (run_dir / ck.STOP_FILE).touch()
    if kill and st.pid:
        try:
            os.killpg(st.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating..."
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"

