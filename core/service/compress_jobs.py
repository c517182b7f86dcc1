"""Background compression jobs for the app: a `python -m core compress` subprocess per job, whose state (command,
progress, log, result) lives in a hidden job folder under the runs folder, so a page rerun or reload loses nothing.
Jobs wait in the runs folder's queue with trainings and sweeps (core.service.jobs.submit), launched exactly once
by core.service.launcher when a slot is free."""
from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.compression.compress import CompressConfig
from core.service import jobs, launcher
from core.training import queue
from core.training.config import to_cli_args
from core.util.fsutil import read_json_object, runs_dir
from core.util.procs import lock_held, pid_alive

JOBS_DIR = ".compress-jobs"  # hidden: list_runs skips dot-folders
# a job folder's files: what was launched (the launch marker), its progress, its stdout (the JSON result on the
# last line), its stderr
JOB_FILE, PROGRESS_FILE, RESULT_FILE, LOG_FILE = launcher.MARKER, "progress.json", "stdout.txt", "log.txt"


def cli_args(run_dir: Path, cfg: CompressConfig, out: Path | None, force: bool = False) -> list[str]:
    """The `core compress` command line that does what cfg says (its flags generated from CompressConfig's fields,
    like the CLI's parser)."""
    return [sys.executable, "-m", "core", "compress", str(run_dir), *to_cli_args(cfg), *(["--force"] if force else []),
            *(["--out", str(out)] if out is not None else [])]


def start_job(run_dir: str | os.PathLike, cfg: CompressConfig, out: str | os.PathLike | None = None,
              root: str | os.PathLike | None = None, force: bool = False, *, session: str | None = None) -> Path:
    """Queue a compression (it starts when a slot is free; `session` counts against the per-user limit, with that
    user's trainings and sweeps); returns its job folder. The run and the variants' folder are checked first (an
    existing variant is replaced only with `force`), so bad input is a ValueError here rather than a failed job;
    a refused job writes nothing."""
    from core.compression.compress import check_free, load_parent, output_folder

    parent = load_parent(run_dir, cfg.techniques())
    check_free(parent, cfg.techniques(), output_folder(parent, out), force)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    job = runs_dir(root) / JOBS_DIR / f"{stamp}-{secrets.token_hex(3)}"
    asked = cli_args(Path(run_dir), cfg, Path(out) if out else None, force)  # what the user chose
    cmd = asked + ["--progress", str(job / PROGRESS_FILE), "--job-dir", str(job), "--json", "--quiet"]
    config = launcher.command_config(cmd[1:], {"run": str(run_dir), "techniques": cfg.techniques()}, log=LOG_FILE,
                                     stdout=RESULT_FILE)
    # the request: the command line less the job folder, which is named by the time of the click
    return jobs.submit(queue.JobKind.COMPRESS, config, job, root, session=session, request=asked[1:],
                       repeat_window_s=jobs.REPEAT_WINDOW_S)


def cancel_job(job: Path) -> None:
    """Take a waiting job out of the queue and forget it (ValueError when it is not waiting: it runs, or ran)."""
    jobs.cancel_waiting(job, job.parent.parent)


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting in the queue for a free slot ($FER_MAX_RUNS)
    RUNNING = "running"  # also while it starts
    DONE = "done"  # its result (the last line of its stdout) lists the variants
    FAILED = "failed"  # ended without a result; the last error line of its log says why


@dataclass
class JobState:
    path: Path
    status: str  # a JobStatus
    run: str
    techniques: list[str]
    progress: dict[str, Any] | None
    variants: list[dict[str, Any]]
    error: str | None
    position: int | None = None  # 1-based place in the queue while QUEUED
    owner: str | None = None  # the user (browser identity) that asked for it, if known


def job_state(job: Path) -> JobState:
    root = job.parent.parent  # <runs>/.compress-jobs/<job>: its queue is the runs folder's
    if (hit := queue.find(job, root)) is not None:
        info = hit[1].config.get("info") or {}
        return JobState(job, JobStatus.QUEUED, str(info.get("run", "")), list(info.get("techniques", [])), None, [],
                        None, hit[0], hit[1].session)
    meta = read_json_object(job / JOB_FILE) or {}
    entry = queue.claimed(job, root)
    alive = lock_held(job / launcher.LOCK) or _pid_alive(meta) or (entry is not None and entry.unconfirmed(meta))
    lines = (job / RESULT_FILE).read_text(errors="replace").strip().splitlines() if (job / RESULT_FILE).exists() else []
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
    log = (job / LOG_FILE).read_text(errors="replace") if (job / LOG_FILE).exists() else ""
    errors = [ln for ln in log.splitlines() if ln.startswith("error:")]
    if alive:  # whether it succeeded is read from its result, not its exit code
        status, error = JobStatus.RUNNING, None
    elif result is not None:
        status, error = JobStatus.DONE, None
    else:
        status = JobStatus.FAILED
        error = errors[-1].removeprefix("error: ") if errors else (log.strip().splitlines() or ["the job ended without a result"])[-1]
    return JobState(job, status, str(meta.get("run", "")), list(meta.get("techniques", [])),
                    read_json_object(job / PROGRESS_FILE), (result or {}).get("variants", []), error,
                    owner=entry.session if entry else None)


def _pid_alive(meta: dict[str, Any]) -> bool:
    """A job started before jobs took a lock is watched by its pid."""
    started = meta.get("started_unix")
    return pid_alive(meta.get("pid"), started if isinstance(started, (int, float)) else None)



def list_jobs(root: str | os.PathLike | None = None) -> list[JobState]:
    """Every compression job, newest first."""
    base = runs_dir(root) / JOBS_DIR
    if not base.is_dir():
        return []
    return [job_state(j) for j in sorted(base.iterdir(), reverse=True) if j.is_dir()]
