"""A disk-backed FIFO queue for all background work (trainings, compressions, sweeps): at most N jobs alive at
once, the rest wait in order.

The queue is files in <runs folder>/.queue/ (so it survives app restarts, like the runs themselves), one queue for
every kind of job, so $FER_MAX_RUNS and $FER_MAX_QUEUED count them together:
  waiting/<ticket>.json   a job asked for and not launched yet; tickets sort in arrival order
  running/<ticket>.json   a job claimed by a scheduler pass, with the token of its launch; removed once that
                          launch's process has ended, put back in waiting/ if it never started
  lock                    fcntl lock held by every pass: two app processes never launch the same job twice
A job is its folder (a run folder, a compression's job folder, a sweep's folder) and its kind (JobKind). A
scheduler pass (`schedule`) runs on every submission, and a daemon thread (`ensure_scheduler`, started with the app
server) repeats it every second; any app process may run passes, they take turns on the lock.
The queue knows nothing of trainers or compressors: a Runner per kind (core.service.jobs.RUNNERS) launches a job and
tells whether that launch lives, ended, or never started. A pass killed at any point leaves a claimed entry the
next pass settles by asking.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from core.util.fsutil import atomic_write_json, runs_dir
from core.util.procs import crash_point
from core.util.settings import check_server_settings, max_queued_per_session, max_runs

QUEUE_DIR = ".queue"  # hidden, so run listings skip it
log = logging.getLogger(__name__)


class JobKind(StrEnum):
    """What a queue entry launches; entries written before kinds existed are trainings."""

    TRAIN = "train"
    COMPRESS = "compress"
    SWEEP = "sweep"

    @property
    def noun(self) -> str:
        return {"train": "run", "compress": "compression"}.get(self.value, self.value)


class Runner(NamedTuple):
    """How runs are launched and watched. launch(config dict, run folder, token) starts one (ValueError/OSError when
    it cannot); state(run folder, token) says of the launch with that token 'alive', 'ended' (its trainer ran and is
    gone), or 'unlaunched': no trainer of it runs or ever will (its launcher died first), so it may be launched anew.
    The runner must make 'unlaunched' certain, never a guess: a wrong one trains a run twice."""

    launch: Callable[[dict[str, Any], Path, str], Any]
    state: Callable[[Path, str | None], str]


# One Runner for every kind, or a Runner per kind (core.service.jobs.RUNNERS): the queue dispatches by entry kind.
Runners = Runner | Mapping[str, Runner]


def _runner(runners: Runners, kind: str) -> Runner:
    return runners if isinstance(runners, Runner) else runners[kind]


@dataclass
class Entry:
    """One queued or launched run."""

    ticket: str
    run_dir: Path
    config: dict[str, Any]
    session: str | None
    enqueued: float  # unix time
    claimed: float | None = None  # unix time a scheduler pass moved it to running/
    token: str | None = None  # names that launch: the runner tells its state by it
    kind: JobKind = JobKind.TRAIN
    request: Any = None  # what the user asked for, to know a repeated click (_check_repeat); None: never a repeat

    def unconfirmed(self, marker: dict[str, Any]) -> bool:
        """Whether no process has confirmed this launch yet: the job's marker (job.json) holds no pid for its token
        (its launcher may also have died; the next pass launches it again). Such a job is starting, not failed."""
        return not (marker.get("token") == self.token and marker.get("pid"))

    def to_json(self) -> dict[str, Any]:
        return {"ticket": self.ticket, "run_dir": str(self.run_dir), "config": self.config, "session": self.session,
                "enqueued": self.enqueued, "claimed": self.claimed, "token": self.token, "kind": self.kind.value,
                "request": self.request}


def _root(folder: str | os.PathLike, runs_root: str | os.PathLike | None) -> Path:
    """The runs folder whose queue holds the job in `folder`: given, else the folder's parent (a run folder's).
    Compression and sweep folders lie deeper (<runs>/.compress-jobs/<id>, <runs>/.sweeps/<name>): their callers
    name the runs folder, so that every kind waits in the one queue."""
    return runs_dir(runs_root) if runs_root is not None else Path(folder).parent


def queue_dir(runs_root: str | os.PathLike | None = None) -> Path:
    """The queue folder of a runs folder, made if missing."""
    d = runs_dir(runs_root) / QUEUE_DIR
    for sub in ("waiting", "running"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def _locked(qdir: Path) -> Iterator[None]:
    with open(qdir / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also when the holder is killed
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: Path) -> Entry | None:
    try:
        d = json.loads(path.read_text())
        return Entry(d["ticket"], Path(d["run_dir"]), d["config"], d.get("session"), float(d["enqueued"]),
                     d.get("claimed"), d.get("token"), JobKind(d.get("kind", JobKind.TRAIN)), d.get("request"))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # removed by another pass meanwhile, or damaged: not a run we can launch


def _entries(qdir: Path, sub: str) -> list[Entry]:
    files = sorted((qdir / sub).glob("*.json"))
    return [e for e in map(_read, files) if e is not None]


def _next_ticket(qdir: Path) -> str:
    """A counter kept under the lock: arrival order, immune to clock changes."""
    counter = qdir / "counter"
    try:
        n = int(counter.read_text().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    counter.write_text(str(n))
    return f"{n:010d}"


def submit(config: dict[str, Any], run_dir: str | os.PathLike, runner: Runners, *, session: str | None = None,
           max_alive: int | None = None, kind: JobKind = JobKind.TRAIN,
           runs_root: str | os.PathLike | None = None, files: dict[str, Any] | None = None,
           request: Any = None, repeat_window_s: float | None = None) -> Path:  # noqa: ANN401 - JSON
    """Queue a job of `kind` (its folder: `run_dir`), then run a pass. `runs_root` names the runs folder whose queue
    it joins (default: the folder's parent, as for a run). `files` (name: JSON object) are written into the folder
    as it is made, under the queue's lock, so no pass can launch the job before they exist. ValueError, with nothing written, when a server setting is
    mistyped, the job is already queued, or this session already has its maximum waiting or running, of all kinds
    together; the folder is made only once the job is accepted, so a refused Start leaves no empty folder that
    would list as a failed run. With `repeat_window_s`, the same `request` (what the user chose: JSON, without what is
    made up per click, such as a folder named by the time) from the same session within that many seconds is
    refused as a repeated click (see _check_repeat)."""
    run_dir, kind = Path(run_dir), JobKind(kind)
    check_server_settings()
    max_runs(max_alive)  # an invalid override fails here, not in the pass after the entry is written
    root = _root(run_dir, runs_root)
    qdir = queue_dir(root)
    with _locked(qdir):
        _check_repeat(qdir, session, kind, request, repeat_window_s)  # first: a double-click is no error
        if find(run_dir, root) is not None:
            raise ValueError(f"{kind.noun} {run_dir.name!r} is already queued")
        if (launched := claimed(run_dir, root)) is not None:
            if _runner(runner, launched.kind).state(launched.run_dir, launched.token) != "ended":
                raise ValueError(f"{kind.noun} {run_dir.name!r} is already starting or running")
            # its process is gone but no pass has forgotten it yet: forget it now, or a pass would take the old
            # entry, whose token no longer matches the folder's launch, for one that never started and launch it too
            (qdir / "running" / f"{launched.ticket}.json").unlink(missing_ok=True)
        _check_session_limit(qdir, session, runner)
        # The entry before the folder: a folder with no entry beside it would list as a failed run meanwhile.
        ticket = _next_ticket(qdir)
        entry = qdir / "waiting" / f"{ticket}.json"
        atomic_write_json(entry, Entry(ticket, run_dir.resolve(), config, session, time.time(), kind=kind,
                                       request=request if repeat_window_s else None).to_json())
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            for name, obj in (files or {}).items():
                atomic_write_json(run_dir / name, obj)
        except OSError:
            entry.unlink(missing_ok=True)
            raise
    schedule(root, runner, max_alive=max_alive)
    return run_dir


class RepeatedStart(ValueError):
    """A job refused as the second half of a double-click: the first one is queued or running."""


def _check_repeat(qdir: Path, session: str | None, kind: JobKind, request: Any,  # noqa: ANN401 - JSON
                  window_s: float | None) -> None:
    """One click, one job. A double-click on Start reaches the server as two reruns, and a guard kept in the
    browser's Streamlit session missed the second one under load (the fresh-clone CI once got two runs). Checked here,
    under the queue's lock, it holds whatever the reruns, tabs or sessions: the same request of the same kind that
    this session queued less than `window_s` ago, waiting or launched, is the same click."""
    if session is None or not window_s or request is None:
        return
    now, request = time.time(), json.loads(json.dumps(request))  # as the entries hold it: tuples become lists
    for e in _entries(qdir, "waiting") + _entries(qdir, "running"):
        if e.session == session and e.kind == kind and e.request == request and 0 <= now - e.enqueued < window_s:
            raise RepeatedStart(f"{kind.noun} {e.run_dir.name!r} was just started with these settings, and one click "
                                f"starts one {kind.noun}; to start another, change a setting or wait {window_s:g} s")


def _check_session_limit(qdir: Path, session: str | None, runner: Runners) -> None:
    """$FER_MAX_QUEUED: a user's trainings, compressions and sweeps, waiting or alive, count together."""
    limit = max_queued_per_session()
    if session is None or not limit:
        return
    mine = [e for sub in ("waiting", "running") for e in _entries(qdir, sub) if e.session == session
            and (sub == "waiting" or _runner(runner, e.kind).state(e.run_dir, e.token) != "ended")]
    if len(mine) >= limit:
        raise ValueError(f"you already have {len(mine)} job{'s' * (len(mine) != 1)} queued or running (trainings, compressions and sweeps "
                         f"count together), the most this server allows per user ({limit}, $FER_MAX_QUEUED); wait "
                         "for one to finish or cancel one")


def schedule(runs_root: str | os.PathLike | None, runner: Runners, *, max_alive: int | None = None) -> list[Path]:
    """One scheduler pass: forget launched jobs that ended, put back in line the claimed ones that never started
    (their pass was killed), then launch waiting jobs in order while fewer than N are alive. A job is one slot
    whatever it runs inside: a sweep manages its own trials' concurrency on Ray. Returns the folders launched."""
    qdir = runs_dir(runs_root) / QUEUE_DIR
    if not (qdir / "waiting").is_dir():
        return []  # nothing was ever queued here; a page render must not create folders
    n = max_runs(max_alive)
    started: list[Path] = []
    with _locked(qdir):
        alive = 0
        for e in _entries(qdir, "running"):
            state = _runner(runner, e.kind).state(e.run_dir, e.token)
            if state == "alive":
                alive += 1
            elif state == "unlaunched":  # back to its place in the line, launched again below if a slot is free
                os.replace(qdir / "running" / f"{e.ticket}.json", qdir / "waiting" / f"{e.ticket}.json")
            else:
                (qdir / "running" / f"{e.ticket}.json").unlink(missing_ok=True)
        for e in _entries(qdir, "waiting"):
            if alive >= n:
                break
            # Claim first, then launch: a pass killed in between leaves a claimed entry with a fresh token, which
            # the runner reports 'unlaunched' (requeued) or 'alive'/'ended' (never launched again).
            e.claimed, e.token = time.time(), secrets.token_hex(8)
            atomic_write_json(qdir / "running" / f"{e.ticket}.json", e.to_json())
            (qdir / "waiting" / f"{e.ticket}.json").unlink()
            crash_point("after_claim")
            try:
                _runner(runner, e.kind).launch(e.config, e.run_dir, e.token)
            except (ValueError, OSError):  # e.g. the folder was deleted while waiting: the job shows as failed
                (qdir / "running" / f"{e.ticket}.json").unlink(missing_ok=True)
                continue
            alive += 1
            started.append(e.run_dir)
    return started


def find(run_dir: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> tuple[int, Entry] | None:
    """(1-based place in the queue, entry) for a waiting job, else None. `runs_root` as for submit."""
    qdir = _root(run_dir, runs_root) / QUEUE_DIR
    run_dir = Path(run_dir).resolve()
    if not (qdir / "waiting").is_dir():
        return None
    for i, e in enumerate(_entries(qdir, "waiting"), 1):
        if e.run_dir == run_dir:
            return i, e
    return None


def locate(run_dir: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> tuple[int | None, Entry] | None:
    """(place, entry) for a waiting job, (None, entry) for a claimed one, else None, read under the queue's lock:
    find and claimed read one folder each, and a pass that moves the entry between them in between (a requeue, a
    claim) makes a job that is in the queue look absent from both. For the rare reader that must not be wrong."""
    root = _root(run_dir, runs_root)
    qdir = root / QUEUE_DIR
    if not (qdir / "waiting").is_dir():
        return None
    with _locked(qdir):
        if (hit := find(run_dir, root)) is not None:
            return hit
        entry = claimed(run_dir, root)
    return (None, entry) if entry is not None else None


def claimed(run_dir: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> Entry | None:
    """The entry of a job a pass has claimed (launched, or being launched), else None. `runs_root` as for submit."""
    qdir = _root(Path(run_dir).resolve(), runs_root) / QUEUE_DIR
    run_dir = Path(run_dir).resolve()
    if not (qdir / "running").is_dir():
        return None
    return next((e for e in _entries(qdir, "running") if e.run_dir == run_dir), None)


def waiting(runs_root: str | os.PathLike | None = None) -> list[Entry]:
    """Waiting jobs of every kind in launch order."""
    return _entries(runs_dir(runs_root) / QUEUE_DIR, "waiting")


def cancel(run_dir: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> None:
    """Take a waiting job out of the queue (ValueError when it is not waiting: launched jobs are stopped instead).
    The folder is removed if nothing was ever written into it (a resumed run keeps its epochs)."""
    run_dir = Path(run_dir)
    root = _root(run_dir, runs_root)
    qdir = queue_dir(root)
    with _locked(qdir):
        hit = find(run_dir, root)
        if hit is None:
            raise ValueError(f"{run_dir.name!r} is not waiting in the queue")
        (qdir / "waiting" / f"{hit[1].ticket}.json").unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


_THREADS: dict[Path, threading.Thread] = {}
_THREADS_LOCK = threading.Lock()


def ensure_scheduler(runs_root: str | os.PathLike | None, runner: Runners, interval_s: float = 1.0) -> None:
    """Start (once per process and runs folder) a daemon thread running a pass every interval_s, so waiting runs
    start when a slot frees even when no page is open."""
    root = runs_dir(runs_root).resolve()
    with _THREADS_LOCK:
        if root in _THREADS and _THREADS[root].is_alive():
            return
        t = threading.Thread(target=_scheduler_loop, args=(root, runner, interval_s), name=f"fer-queue-{root.name}",
                             daemon=True)
        t.start()
        _THREADS[root] = t


def _scheduler_loop(root: Path, runner: Runners, interval_s: float) -> None:
    """Passes forever. A failing pass (a mistyped server setting, a full disk) must not end the thread, nor go
    unnoticed: its reason goes to the server's log once, and again only when it changes or clears."""
    last_error: str | None = None
    while True:
        try:
            check_server_settings()
            schedule(root, runner)
            if last_error is not None:
                log.warning("the run queue in %s works again; waiting runs start as slots free", root)
            last_error = None
        except Exception as exc:  # noqa: BLE001 - logged; the next pass retries
            if str(exc) != last_error:
                log.error("the run queue in %s cannot launch runs, they wait until this is fixed: %s", root, exc)
            last_error = str(exc)
        time.sleep(interval_s)
