"""Background processes: the one way to start one (spawn_detached) and the one way to ask whether a recorded pid is
still the process that was launched (pid_alive). Trainings, compressions, sweeps and campaigns all start here.

Also file locks that say "a process owns this" (take_lock, lock_held): the kernel drops an flock when the last
process holding it exits, however it exits, so a lock cannot outlive its owner the way a pid file can; and a lock
taken before a spawn and handed to the child (spawn_detached's pass_fds) is held without a gap from the parent to
the child."""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

CRASH_ENV = "FER_TEST_CRASH_AT"  # tests only: the name of a crash_point where this process kills itself
LOCK_RETRY_S = 1.0  # how long take_lock retries while lock_held's momentary shared probes hold the file

# Popen objects of the jobs this process launched: polling them reaps finished children (no zombies).
CHILDREN: dict[int, subprocess.Popen] = {}


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reaped(pid: int) -> bool | None:
    """True/False for a child of this process (finished or not); None when it is not our child."""
    proc = CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return False
        CHILDREN.pop(pid, None)
        return True
    try:  # our child from an earlier import of this module: reap it if it has finished
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass  # not our child (another app process, a CLI run, a script): look it up instead
    except OSError:
        return True
    return None


def pid_alive(pid: int | None, started_by: float | None = None) -> bool:
    """Is `pid` a live (not zombie) process that was already running at `started_by` (unix time)? The time check
    guards against pid reuse: a trainer that died long ago may share its pid with some unrelated newer process."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**31:  # larger ones overflow os.kill
        return False
    reaped = _reaped(pid)
    if reaped is not None:
        return not reaped
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


def spawn_detached(cmd: list[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None, *,
                   stdout_path: Path | None = None, pass_fds: tuple[int, ...] = ()) -> int:
    """Start `cmd` in its own session (it outlives the caller: a page rerun, the app, a terminal, and ^C does not
    reach it), stdin closed, stderr appended to `log_path` and stdout too unless `stdout_path` gives it a file of its
    own; the Popen is kept so that polling it later (pid_alive) reaps the child. `pass_fds` stay open in the child
    (a lock from take_lock, so that the child holds it from its first instant). Returns the pid."""
    from core.util.fsutil import PROJECT_ROOT

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(stdout_path or os.devnull, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd or PROJECT_ROOT, stdin=subprocess.DEVNULL,
                                stdout=out if stdout_path else log, stderr=log, start_new_session=True, env=env,
                                pass_fds=pass_fds)
    CHILDREN[proc.pid] = proc
    return proc.pid


def lower_priority(nice: int) -> None:
    """Yield the CPU to everything else on the machine, as `nice` promises, also where the kernel groups processes
    by session (Linux's autogroup, on by default on desktops and on the machines here): there a process's nice only
    ranks it within its own session, and a detached job (start_new_session) is a session of its own, so at nice 19
    it still took half of a 2-core machine from an interactive shell's tests. Raising the session's autogroup nice
    (allowed without privileges, like raising one's own nice) makes the ranking hold across sessions."""
    os.nice(nice)
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        pass  # no autogroup (kernel without it, macOS): os.nice alone already ranks it against everything


def crash_point(name: str) -> None:
    """Tests only: SIGKILL this process here when $FER_TEST_CRASH_AT names this point, to reproduce a process dying
    at that exact moment (no cleanup, no finally blocks, like an OOM kill or a power cut of the app)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def take_lock(path: Path, *, wait_s: float = LOCK_RETRY_S) -> int | None:
    """An exclusive flock on `path` (created if missing): its file descriptor, or None when another process holds
    it. Retries for wait_s, since lock_held probes the same file for an instant. Close the descriptor (or exit) to
    release it; a child given the descriptor (spawn_detached's pass_fds) keeps holding it after the parent lets go."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() >= deadline:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return None
                raise
            time.sleep(0.02)


def lock_held(path: Path) -> bool:
    """Does some process hold take_lock's lock on `path`? A shared, non-blocking probe released at once; it never
    creates the file, so asking about a folder writes nothing into it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: nobody ever locked it (or the folder is gone)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # closing drops the probe's shared lock too
    return False
