"""How every background job (a training, a compression, a sweep) is launched exactly once, and watched.

A job's process holds its folder's lock (take_lock) for its whole life. launch() takes that lock before it writes
anything and hands it to the child at the spawn, so from the claim to the job's exit some live process holds it,
and a free lock proves that no process of the job runs. The marker (job.json) is first written without a pid, with
the queue entry's token, then with the pid, by the launcher after the spawn and by the child itself when it starts
(confirm): a launch whose marker never got a pid and whose lock is free never ran, and the queue may launch it again
(core.training.queue asks launch_state). The child learns its token and the lock's descriptor from TOKEN_ENV and
LOCK_FD_ENV; the descriptor is made non-inheritable at once, so a grandchild (Ray's workers, a DataLoader's) never
keeps a finished job looking alive.

Compressions and sweeps are queued as a ready command (COMMAND_RUNNER): the queue entry's config holds the command,
the log file names and the small files to write before it starts; trainings have their own runner
(core.service.jobs), which rebuilds the command from the run's TrainConfig."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.training import queue
from core.training.record import now_iso
from core.util.fsutil import atomic_write_bytes, atomic_write_json, read_json_object
from core.util.procs import crash_point, lock_held, pid_alive, spawn_detached, take_lock

TOKEN_ENV, LOCK_FD_ENV = "FER_LAUNCH_TOKEN", "FER_RUN_LOCK_FD"  # how launch() tells its child which launch it is
MARKER, LOCK = "job.json", "job.lock"  # in a compression's or a sweep's folder (a run folder names its own: rundir)


@dataclass(frozen=True)
class JobFiles:
    """Where a job keeps its launch: the lock its process holds, the marker (token, then pid) and its log."""

    lock: Path
    marker: Path
    log: Path
    stdout: Path | None = None  # its own file for the child's stdout (a compression's JSON result), else the log


def job_files(folder: Path, log: str = "log.txt", stdout: str | None = None) -> JobFiles:
    """The files of a compression's or a sweep's folder."""
    return JobFiles(folder / LOCK, folder / MARKER, folder / log, folder / stdout if stdout else None)


def launch(files: JobFiles, token: str, cmd: list[str], info: dict[str, Any], *, stale: tuple[Path, ...] = (),
           write: dict[Path, str] | None = None) -> int:
    """Start `cmd` as launch `token` of the job whose files these are; returns its pid. Under the lock, before the
    marker: `stale` files (an earlier launch's) are removed and `write` files written. ValueError when the folder
    is gone or another process holds the lock; OSError (also in the log) when no process could start."""
    folder = files.marker.parent
    if not folder.is_dir():
        raise ValueError(f"{folder}: the folder was removed while the job waited")
    lock = take_lock(files.lock)
    if lock is None:
        raise ValueError(f"{folder.name!r} is already running in another process")
    try:
        for path in stale:
            path.unlink(missing_ok=True)
        for path, text in (write or {}).items():
            atomic_write_bytes(path, text.encode())
        job = {"token": token, "started": now_iso(), "started_unix": time.time(), "command": cmd, **info}
        atomic_write_json(files.marker, job)  # the marker: the job shows 'starting', not 'failed'
        crash_point("after_marker")
        with open(files.log, "ab") as log:
            log.write(f"\n=== {now_iso()} {' '.join(cmd[1:])}\n".encode())
        env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: token, LOCK_FD_ENV: str(lock)}
        try:
            pid = spawn_detached(cmd, files.log, env=env, pass_fds=(lock,), stdout_path=files.stdout)
        except OSError as exc:  # no process could start (limits, memory): the job's log tells why it failed
            with open(files.log, "ab") as log:
                log.write(f"could not start: {exc}\n".encode())
            raise
        crash_point("after_spawn")
        atomic_write_json(files.marker, {**job, "pid": pid})  # started_unix stays the launch's order
    finally:
        os.close(lock)  # the child holds its own copy from the spawn on
    return pid


def launch_state(files: JobFiles, token: str | None, job: dict[str, Any] | None = None) -> str:
    """For core.training.queue: 'alive' while a process holds the job's lock, 'ended' once the process of launch
    `token` (it wrote its pid) is gone, 'unlaunched' when no process of that launch ever ran. That last answer is
    certain, not a timeout: the lock is held without a gap from before the spawn, so a free lock and no pid mean
    the launcher died before the spawn or the child before it confirmed. `job`: the marker, if already read."""
    if lock_held(files.lock):
        return "alive"
    job = (read_json_object(files.marker) or {}) if job is None else job
    if job.get("token") != token:
        return "unlaunched"  # its launcher died before writing the marker: the marker is an earlier launch's
    if job.get("pid"):  # a process of a version that took no lock is watched by its pid
        return "alive" if pid_alive(job["pid"], job.get("started_unix")) else "ended"
    files.marker.unlink(missing_ok=True)  # the marker of a launch that never ran: not a failure
    return "unlaunched"


def confirm(files: JobFiles) -> int | None:
    """For the child, first thing: when launch() started it (TOKEN_ENV and LOCK_FD_ENV name this job's lock), keep
    the lock, write its pid into the marker and return the lock's descriptor (keep it open); None when it was not
    started by launch() (the CLI by hand). ValueError when the marker names another launch."""
    token, fd_text = os.environ.pop(TOKEN_ENV, None), os.environ.pop(LOCK_FD_ENV, None)
    if not (token and fd_text and fd_text.isdigit() and _is_lock_of(int(fd_text), files.lock)):
        return None
    fd = int(fd_text)
    os.set_inheritable(fd, False)  # the job's own children must not keep it looking alive
    job = read_json_object(files.marker) or {}
    if job.get("token") != token:
        raise ValueError(f"{files.marker}: names another launch than this process's; not starting")
    atomic_write_json(files.marker, {**job, "pid": os.getpid()})
    return fd


def keep_lock_from_children() -> None:
    """At a child's start, before anything else: its inherited lock must not pass on to the processes it starts
    (Ray's workers, a compression's helpers), or the job would look alive after it ended."""
    fd_text = os.environ.get(LOCK_FD_ENV, "")
    if fd_text.isdigit():
        try:
            os.set_inheritable(int(fd_text), False)
        except OSError:
            pass  # no such descriptor: a stray variable in a user's shell


def _is_lock_of(fd: int, lock_path: Path) -> bool:
    """Is descriptor `fd` open on `lock_path`? (A stray $FER_RUN_LOCK_FD in a user's shell must not pass.)"""
    try:
        a, b = os.fstat(fd), os.stat(lock_path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# --- compressions and sweeps: a queue entry that carries its ready command ------------------------------------
def command_config(args: list[str], info: dict[str, Any], *, log: str = "log.txt", stdout: str | None = None,
                   write: dict[str, str] | None = None) -> dict[str, Any]:
    """The queue entry's config of a job launched by COMMAND_RUNNER: `args` for the Python interpreter (`-m core
    ...`), `info` goes into its marker (what the app shows of it), `write` names files (in its folder, with their
    text) written just before it starts."""
    return {"args": args, "info": info, "log": log, "stdout": stdout, "write": write or {}}


def _files_of(config: dict[str, Any], folder: Path) -> JobFiles:
    return job_files(folder, config.get("log") or "log.txt", config.get("stdout"))


def _launch_command(config: dict[str, Any], folder: Path, token: str) -> int:
    cmd = [sys.executable, *config["args"]]  # the interpreter that launches it: the app's, as for trainings
    write = {folder / name: text for name, text in (config.get("write") or {}).items()}
    return launch(_files_of(config, folder), token, cmd, dict(config.get("info") or {}), write=write)


def _command_state(folder: Path, token: str | None) -> str:
    # the log names do not matter here: lock and marker are the same for every command job
    return launch_state(job_files(folder), token)


COMMAND_RUNNER = queue.Runner(launch=_launch_command, state=_command_state)
