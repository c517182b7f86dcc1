"""Background processes: the one way to start one (spawn_detached) and the one way to ask whether a recorded pid is
still the process that was launched (pid_alive). Trainings, compressions, sweeps and campaigns all start here."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
                   stdout_path: Path | None = None) -> int:
    """Start `cmd` in its own session (it outlives the caller: a page rerun, the app, a terminal, and ^C does not
    reach it), stdin closed, stderr appended to `log_path` and stdout too unless `stdout_path` gives it a file of its
    own; the Popen is kept so that polling it later (pid_alive) reaps the child. Returns the pid."""
    from core.util.fsutil import PROJECT_ROOT

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log, open(stdout_path or os.devnull, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd or PROJECT_ROOT, stdin=subprocess.DEVNULL,
                                stdout=out if stdout_path else log, stderr=log, start_new_session=True, env=env)
    CHILDREN[proc.pid] = proc
    return proc.pid
