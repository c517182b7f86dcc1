"""A disk-backed FIFO job queue for background trainings: at most N alive at once, the rest wait in order.

The queue is files in <runs folder>/.queue/ (so it survives app restarts, like the runs themselves):
  waiting/<ticket>.json   a run asked for and not launched yet; tickets sort in arrival order
  running/<ticket>.json   a run launched by a scheduler pass; removed once its process has ended
  lock                    fcntl lock held by every pass: two app processes never launch the same run twice
A scheduler pass (`schedule`) runs on every start_run call and every Train page render, and a daemon thread
(`ensure_scheduler`) repeats it every few seconds; any app process may run passes, they take turns on the lock.
The queue knows nothing of trainers: a Runner (core.service.jobs.RUNNER) launches a run and tells whether it still lives.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from core.util.fsutil import atomic_write_json, runs_dir
from core.util.settings import max_queued_per_session, max_runs

QUEUE_DIR = ".queue"  # hidden, so run listings skip it
LAUNCH_GRACE_S = 60.0  # a claimed entry with no sign of its process after this long was never launched (killed pass)


class Runner(NamedTuple):
    """How runs are launched and watched. launch(config dict, run folder) starts one (ValueError/OSError when it
    cannot); state(run folder, since unix time) says 'alive', 'ended', or 'unlaunched' (nothing launched since)."""

    launch: Callable[[dict[str, Any], Path], Any]
    state: Callable[[Path, float], str]


@dataclass
class Entry:
    """One queued or launched run."""

    ticket: str
    run_dir: Path
    config: dict[str, Any]
    session: str | None
    enqueued: float  # unix time
    claimed: float | None = None  # unix time a scheduler pass moved it to running/

    def to_json(self) -> dict[str, Any]:
        return {"ticket": self.ticket, "run_dir": str(self.run_dir), "config": self.config, "session": self.session,
                "enqueued": self.enqueued, "claimed": self.claimed}


def queue_dir(run_dir_or_root: str | os.PathLike | None = None, *, is_run: bool = False) -> Path:
    """The queue folder of a runs folder (of the runs folder holding `run_dir` when is_run)."""
    root = Path(run_dir_or_root).parent if is_run else runs_dir(run_dir_or_root)
    d = root / QUEUE_DIR
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
                     d.get("claimed"))
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


def _state(entry: Entry, runner: Runner) -> str:
    """'alive' (holds a slot), 'ended' (launched, process gone) or 'lost' (claimed by a pass that was killed before
    it launched: after a grace period it goes back to its place in the line)."""
    state = runner.state(entry.run_dir, entry.claimed or 0.0)
    if state != "unlaunched":
        return state
    return "alive" if time.time() - (entry.claimed or 0) < LAUNCH_GRACE_S else "lost"


def submit(config: dict[str, Any], run_dir: str | os.PathLike, runner: Runner, *, session: str | None = None,
           max_alive: int | None = None) -> Path:
    """Queue a run (ValueError when this session already has its maximum waiting or running), then run a pass."""
    run_dir = Path(run_dir)
    qdir = queue_dir(run_dir, is_run=True)
    limit = max_queued_per_session()
    with _locked(qdir):
        if find(run_dir) is not None:
            raise ValueError(f"run {run_dir.name!r} is already queued")
        if session is not None and limit:
            mine = [e for sub in ("waiting", "running") for e in _entries(qdir, sub) if e.session == session
                    and (sub == "waiting" or _state(e, runner) == "alive")]
            if len(mine) >= limit:
                raise ValueError(f"you already have {len(mine)} runs queued or running, the most this server allows "
                                 f"per user ({limit}, $FER_MAX_QUEUED); wait for one to finish or cancel one")
        ticket = _next_ticket(qdir)
        atomic_write_json(qdir / "waiting" / f"{ticket}.json",
                          Entry(ticket, run_dir.resolve(), config, session, time.time()).to_json())
    schedule(run_dir.parent, runner, max_alive=max_alive)
    return run_dir


def schedule(runs_root: str | os.PathLike | None, runner: Runner, *, max_alive: int | None = None) -> list[Path]:
    """One scheduler pass: forget launched runs that ended, then launch waiting runs in order while fewer than
    N are alive. Returns the run folders launched by this pass."""
    qdir = runs_dir(runs_root) / QUEUE_DIR
    if not (qdir / "waiting").is_dir():
        return []  # nothing was ever queued here; a page render must not create folders
    n = max_runs(max_alive)
    started: list[Path] = []
    with _locked(qdir):
        alive = 0
        for e in _entries(qdir, "running"):
            state = _state(e, runner)
            if state == "alive":
                alive += 1
            elif state == "lost":  # back to its place in the line
                os.replace(qdir / "running" / f"{e.ticket}.json", qdir / "waiting" / f"{e.ticket}.json")
            else:
                (qdir / "running" / f"{e.ticket}.json").unlink(missing_ok=True)
        for e in _entries(qdir, "waiting"):
            if alive >= n:
                break
            # Claim first, then launch: a pass killed in between leaves a claimed entry that the next pass
            # requeues (no launch evidence) rather than a waiting one it would launch a second time.
            e.claimed = time.time()
            atomic_write_json(qdir / "running" / f"{e.ticket}.json", e.to_json())
            (qdir / "waiting" / f"{e.ticket}.json").unlink()
            try:
                runner.launch(e.config, e.run_dir)
            except (ValueError, OSError):  # e.g. the folder was deleted while waiting: the run shows as failed
                (qdir / "running" / f"{e.ticket}.json").unlink(missing_ok=True)
                continue
            alive += 1
            started.append(e.run_dir)
    return started


def find(run_dir: str | os.PathLike) -> tuple[int, Entry] | None:
    """(1-based place in the queue, entry) for a waiting run, else None."""
    run_dir = Path(run_dir).resolve()
    qdir = Path(run_dir).parent / QUEUE_DIR
    if not (qdir / "waiting").is_dir():
        return None
    for i, e in enumerate(_entries(qdir, "waiting"), 1):
        if e.run_dir == run_dir:
            return i, e
    return None


def waiting(runs_root: str | os.PathLike | None = None) -> list[Entry]:
    """Waiting runs in launch order."""
    return _entries(runs_dir(runs_root) / QUEUE_DIR, "waiting")


def cancel(run_dir: str | os.PathLike) -> None:
    """Take a waiting run out of the queue (ValueError when it is not waiting: launched runs are stopped instead).
    The run folder is removed if nothing was ever written into it (a resumed run keeps its epochs)."""
    run_dir = Path(run_dir)
    qdir = queue_dir(run_dir, is_run=True)
    with _locked(qdir):
        hit = find(run_dir)
        if hit is None:
            raise ValueError(f"run {run_dir.name!r} is not waiting in the queue")
        (qdir / "waiting" / f"{hit[1].ticket}.json").unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


_THREADS: dict[Path, threading.Thread] = {}
_THREADS_LOCK = threading.Lock()


def ensure_scheduler(runs_root: str | os.PathLike | None, runner: Runner, interval_s: float = 1.0) -> None:
    """Start (once per process and runs folder) a daemon thread running a pass every interval_s, so waiting runs
    start when a slot frees even when no page is open."""
    root = runs_dir(runs_root).resolve()
    with _THREADS_LOCK:
        if root in _THREADS and _THREADS[root].is_alive():
            return

        def loop() -> None:
            while True:
                try:
                    schedule(root, runner)
                except Exception:  # noqa: BLE001 - a pass that fails (disk full...) must not end the thread
                    pass
                time.sleep(interval_s)

        t = threading.Thread(target=loop, name=f"fer-queue-{root.name}", daemon=True)
        t.start()
        _THREADS[root] = t
