"""One run folder, owned in one place: its file names, its record (read and write), its live status, listing
every run folder (shipped and user) and deleting one. Other modules never spell a run-folder file name."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.training import queue
from core.training.record import FINISHED, RecordStatus, RunRecord, is_num
from core.util.fsutil import SHIPPED_DIR, atomic_write_json, mtime, read_json_object, runs_dir
from core.util.procs import lock_held, pid_alive

if TYPE_CHECKING:
    from core.training.config import TrainConfig

RECORD = "run.json"
WEIGHTS = "model.pt"
ONNX = "model.onnx"
RESUME = "resume.pt"
STOP_FILE = "STOP"  # the app asks a background run to stop by creating this file
LOG = "train.log"
JOB_FILE = "job.json"  # written by core.service.jobs at launch: its queue token, pid, start time, command
TRAINER_LOCK = "trainer.lock"  # flock held by the run's trainer process for its whole life (core.service.jobs)
PROGRESS_FILE = "progress.json"  # written by `core train --run-dir` about twice a second: step, loss, elapsed


class RunState(StrEnum):
    """What the app shows for a run folder: its record's status, or what its process and the queue say."""

    QUEUED = "queued"  # waiting in core.training.queue
    STARTING = "starting"  # launched, no record written yet
    RUNNING = RecordStatus.RUNNING.value
    STOPPING = "stopping"  # asked to stop, the process still alive
    DONE = RecordStatus.DONE.value
    STOPPED = RecordStatus.STOPPED.value
    FAILED = RecordStatus.FAILED.value
    INTERRUPTED = "interrupted"  # the record says running, no process is behind it


ACTIVE = (RunState.QUEUED, RunState.STARTING, RunState.RUNNING, RunState.STOPPING)  # waiting, or a live process
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def check_run_name(name: str) -> str:
    """Run names become folder names: no separators, no '..', no hidden names (they cannot escape the runs folder)."""
    if not isinstance(name, str) or not RUN_NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} is not allowed: use 1-80 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def run_path(name: str, runs_root: str | os.PathLike | None = None) -> Path:
    """<runs folder>/<checked name>."""
    return runs_dir(runs_root) / check_run_name(name)


def default_run_name(cfg: TrainConfig) -> str:
    """arch-wWIDTH-timestamp-suffix: the folder name of a run started without one."""
    import secrets

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.arch}-w{cfg.width:g}-{stamp}-{secrets.token_hex(2)}"  # suffix: two runs started in one second


def read_record(run_dir: str | os.PathLike) -> RunRecord:
    """The run's typed record; a hand-edited or foreign run.json fails here with the field at fault."""
    path = Path(run_dir) / RECORD
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: run record is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: run record is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: run record is not valid JSON (nested too deeply)") from None
    except OSError as exc:  # a folder named run.json, no permission, I/O error
        raise ValueError(f"{path}: run record cannot be read ({exc.strerror or exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict) or "arch" not in raw["model"]:
        raise ValueError(f"{path}: run record has no model description ('model': {{'arch': ..., 'knobs': ...}})")
    try:
        return RunRecord.from_json(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: run record is malformed: {exc}") from None


def write_record(run_dir: str | os.PathLike, record: RunRecord) -> None:
    atomic_write_json(Path(run_dir) / RECORD, record.to_json())


JOB_TYPES = {"token": str, "pid": int, "started": str, "started_unix": (int, float), "command": list, "config": dict}
PROGRESS_NUMBERS = ("epoch", "epochs", "step", "steps", "global_step", "total_steps", "loss")


def read_job(run_dir: Path) -> dict[str, Any]:
    """job.json with wrongly typed fields dropped: the app writes it, but a hand-edited or damaged one must not
    crash the pages that compare its times."""
    job = read_json_object(run_dir / JOB_FILE) or {}
    return {k: v for k, v in job.items()
            if k in JOB_TYPES and isinstance(v, JOB_TYPES[k]) and not isinstance(v, bool)}


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    """progress.json, or None unless it holds the numbers the progress bar and ETA use."""
    p = read_json_object(run_dir / PROGRESS_FILE)
    if p is None or not all(is_num(p.get(k)) for k in PROGRESS_NUMBERS) or not p.get("total_steps"):
        return None
    if not all(is_num(p.get(k, 0)) for k in ("first_step", "elapsed", "time", "seconds")):
        return None
    return p


def _valid_config(config: Any) -> dict[str, Any]:
    """A recorded config that rebuilds a TrainConfig, else {} (the run is then shown but cannot be resumed)."""
    from core.training.config import TrainConfig

    if not isinstance(config, dict) or not config:
        return {}
    try:
        TrainConfig.from_dict(config)
    except Exception:  # noqa: BLE001 - a damaged config may fail in any way (wrong types, unknown arch...)
        return {}
    return config


def log_tail(run_dir: Path, lines: int = 1) -> str:
    """Last non-empty lines of the run's log: the trainer prints its reason there before exiting."""
    try:
        with open(run_dir / LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    # "===" lines are the launch headers written by core.service.jobs, not the trainer's words
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("=== ")]
    return "\n".join(kept[-lines:])


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load tensors only: weights_only=True refuses pickles that would run code."""
    import torch  # here, not at the top: listing run folders must not pay for torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: weights file is missing") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files; all mean "unusable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable weights file ({first[:200]})") from None


def weights_problem(path: Path) -> str | None:
    """Why a weights file is unusable, found without unpickling anything: torch.save writes a zip archive whose
    index sits at the end, so a truncated or overwritten file has none. Old non-zip files get a full safe load."""
    if not path.is_file():
        return f"{path}: weights file is missing"
    if path.stat().st_size == 0:
        return f"{path}: weights file is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip archive's start, without the index that ends a complete one
                return f"{path}: weights file is truncated or corrupt (its zip index is missing)"
        try:
            load_state_dict(path)
        except ValueError as exc:
            return str(exc)
        return None
    try:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                return f"{path}: not a PyTorch weights file (a zip archive without data.pkl)"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{path}: weights file is truncated or corrupt ({exc})"
    return None


def _onnx_problem(run_dir: Path) -> str | None:
    from core.inference.onnx_io import check_onnx_file

    onnx_path = run_dir / ONNX
    if not onnx_path.exists():
        return f"{onnx_path}: ONNX export is missing; make it with `python -m core export {run_dir}`"
    try:
        check_onnx_file(onnx_path)
    except ValueError as exc:
        return str(exc)
    return None


def _iso_to_unix(value: Any) -> float | None:
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


@dataclass
class RunStatus:
    """Everything the app shows for one run folder, computed from its files each time it is asked for."""

    path: Path
    shipped: bool = False
    status: str = RunState.FAILED  # a RunState
    record: RunRecord | None = None  # None until the trainer writes it, or when it cannot be read
    problem: str | None = None  # why the folder cannot be used at all (unreadable record, broken weights)
    onnx_problem: str | None = None  # why its ONNX export cannot be used for predictions (the record still can)
    error: str | None = None  # why a run failed or was interrupted
    pid: int | None = None
    started: str | None = None  # ISO time of the latest launch
    started_unix: float = 0.0
    progress: dict[str, Any] | None = None  # progress.json: the latest batch
    config: dict[str, Any] = field(default_factory=dict)  # the settings a resume would use; {} if none usable
    position: int | None = None  # 1-based place in the queue while status is 'queued' (core.training.queue)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        """The record is there and usable (a finished run's weights too)."""
        return self.record is not None and self.problem is None

    @property
    def has_onnx(self) -> bool:
        return self.ok and self.onnx_problem is None and (self.path / ONNX).is_file()

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def resumable(self) -> bool:
        """Interrupted and failed runs with recorded settings can be launched again, and so can a stopped run that
        kept its resume state (it continues after its last finished epoch)."""
        if self.shipped or not self.config:
            return False
        return self.status in (RunState.INTERRUPTED, RunState.FAILED) or (self.status == RunState.STOPPED and (self.path / RESUME).exists())

    @property
    def fraction(self) -> float:
        """0..1 of the run's optimiser steps."""
        if self.status == "done":
            return 1.0
        p = self.progress
        if p and p.get("total_steps"):
            steps = p["global_step"] / p["total_steps"]
            budget = self.config.get("time_budget_s")  # a time budget may end the run long before its steps
            timed = p.get("elapsed", 0) / budget if is_num(budget) and budget > 0 else 0.0
            return max(0.0, min(1.0, max(steps, timed)))
        total = self.config.get("epochs") or 0
        done = len(self.record.epochs) if self.record else 0
        return min(1.0, done / total) if total else 0.0

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
        eta = max(0.0, p["elapsed"] / done * left - behind)
        budget = self.config.get("time_budget_s")
        return min(eta, max(0.0, budget - p["elapsed"] - behind)) if is_num(budget) and budget > 0 else eta


def _live_status(st: RunStatus, alive: bool, stop_requested: bool, fresh_launch: bool) -> None:
    """Set status/error from the record and the process: 'interrupted' when the record says running but no
    process is behind it any more; 'starting' while a (re)launched trainer has not written its record yet."""
    record = st.record
    if record is None or fresh_launch:
        if alive:
            st.status = RunState.STOPPING if stop_requested else RunState.STARTING
        else:
            st.status = RunState.FAILED
            st.error = st.problem or log_tail(st.path) or "the training process exited before writing its record"
        return
    if record.status == RecordStatus.RUNNING:
        if alive:
            st.status = RunState.STOPPING if stop_requested else RunState.RUNNING
        else:
            st.status = RunState.INTERRUPTED
            tail = log_tail(st.path)
            st.error = (f"the training process (pid {st.pid}) ended without finishing; finished epochs are saved, "
                        "so it can be resumed" + (f". Last log line: {tail}" if tail else ""))
        return
    if record.status == RecordStatus.FAILED and stop_requested and "stopped before" in str(record.error):
        st.status, st.error = RunState.STOPPED, record.error  # a stop during the first epoch: nothing to keep
        return
    st.status = RunState(record.status)
    st.error = record.error if record.status == RecordStatus.FAILED else None


def _check_files(st: RunStatus) -> None:
    """A finished run must have loadable weights; its ONNX export decides whether Predict can use it."""
    if st.record is None or st.record.status not in FINISHED:
        return  # running or failed: the weights are not final, nor expected
    if st.record.variant is None or (st.path / WEIGHTS).exists():  # int8/fp16 variants are ONNX only
        st.problem = weights_problem(st.path / WEIGHTS)
    if st.problem is None:
        st.onnx_problem = _onnx_problem(st.path)


def run_status(run_dir: str | os.PathLike, shipped: bool = False) -> RunStatus:
    """The state of one run folder: record, live process check, progress, files."""
    run_dir = Path(run_dir)
    st = RunStatus(run_dir, shipped)
    queued = None if shipped else _queued(run_dir)
    if queued is not None:  # waiting for a free slot; a resumed run shows its finished epochs meanwhile
        st.status, st.position, st.config = RunState.QUEUED, queued[0], queued[1].config
        try:
            st.record = read_record(run_dir) if (run_dir / RECORD).exists() else None
        except ValueError as exc:
            st.problem = str(exc)
        return st
    if (run_dir / RECORD).exists():
        try:
            st.record = read_record(run_dir)
        except ValueError as exc:
            st.problem = str(exc)
    elif not (run_dir / JOB_FILE).exists():
        st.problem = f"{run_dir / RECORD}: run record is missing"
    job = read_job(run_dir)
    st.progress = read_progress(run_dir)
    if job:  # launched by core.service.jobs: the process existed when job.json was written
        st.pid, started_by = job.get("pid"), job.get("started_unix")
    else:  # launched some other way (CLI, script): the trainer wrote its pid and was alive at `updated`
        st.pid = st.record.pid if st.record else None
        started_by = _iso_to_unix(st.record.updated) if st.record else None
    st.started = job.get("started") or (st.record.created if st.record else None)
    st.started_unix = float(job.get("started_unix") or mtime(run_dir))
    st.config = _valid_config(st.record.config if st.record else None) or _valid_config(job.get("config"))
    fresh = bool(job) and st.record is not None and job.get("started_unix", 0) > mtime(run_dir / RECORD)
    if not shipped:
        alive = pid_alive(st.pid, started_by) or lock_held(run_dir / TRAINER_LOCK)
        if not alive and (pending := _launch_pending(run_dir, job)) is not None:
            # claimed by the queue, no trainer confirmed yet (or its launcher died): the next pass starts it
            st.status, st.problem, st.config = RunState.STARTING, None, st.config or pending.config
            return st
        if not alive and st.record is None and _in_queue_after_all(st, run_dir):
            return st
        _live_status(st, alive, (run_dir / STOP_FILE).exists(), fresh)
    elif st.record is not None:
        st.status = st.record.status
    _check_files(st)
    return st


def _queued(run_dir: Path) -> Any:
    return queue.find(run_dir)


def _in_queue_after_all(st: RunStatus, run_dir: Path) -> bool:
    """A run with no record and no trainer would read as failed: look once more, under the queue's lock, in case a
    pass was moving its entry while we looked (a crashed launch put back in line, a claim). True, with the status
    set, when it is waiting or being launched after all."""
    hit = queue.locate(run_dir)
    if hit is None:
        return False
    place, entry = hit
    if place is not None:
        st.status, st.position = RunState.QUEUED, place
    elif _launch_pending(run_dir, read_job(run_dir)) is not None:
        st.status = RunState.STARTING
    else:
        return False  # its trainer confirmed and is gone without a record: it failed
    st.problem, st.config = None, st.config or entry.config
    return True


def _launch_pending(run_dir: Path, job: dict[str, Any]) -> Any:
    """The queue entry of a launch no trainer has confirmed (job.json holds no pid for its token), else None."""
    entry = queue.claimed(run_dir)
    return entry if entry is not None and entry.unconfirmed(job) else None


def list_runs(runs_root: str | os.PathLike | None = None, include_shipped: bool = True) -> list[RunStatus]:
    """Every run folder: shipped ones first (by name), then user runs: live ones, then interrupted, then the rest,
    newest first. Broken folders are listed too, with their problem."""
    out = []
    if include_shipped and SHIPPED_DIR.is_dir():
        out += [run_status(d, shipped=True) for d in sorted(SHIPPED_DIR.iterdir())
                if d.is_dir() and not d.name.startswith(".")]
    if runs_root is not None or not include_shipped:
        root = runs_dir(runs_root)
        user = [run_status(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        rank = {s: 0 for s in ACTIVE} | {RunState.INTERRUPTED: 1}
        user.sort(key=lambda s: (rank.get(s.status, 2), -s.started_unix))
        out += user
    return out


def delete_run(run_dir: str | os.PathLike, runs_root: str | os.PathLike) -> None:
    """Delete a user run; refuses shipped checkpoints and anything not directly inside the runs folder."""
    from core.util.settings import check_delete_allowed

    check_delete_allowed()  # a shared server may turn deleting off ($FER_ALLOW_DELETE=0)
    root = Path(runs_root).resolve()
    target = Path(run_dir)
    if target.is_symlink():
        raise ValueError(f"{run_dir}: is a symbolic link; only run folders inside {root} can be deleted")
    target = target.resolve()
    shipped = SHIPPED_DIR.resolve()
    if target == shipped or shipped in target.parents:
        raise ValueError(f"{run_dir}: shipped checkpoints are protected and cannot be deleted")
    if target.parent != root:
        raise ValueError(f"{run_dir}: not a run folder inside {root}; refusing to delete it")
    check_run_name(target.name)
    if not (target / RECORD).exists() and any(target.iterdir()):
        raise ValueError(f"{run_dir}: has no {RECORD}, so it does not look like a run folder; not deleting it")
    shutil.rmtree(target)
