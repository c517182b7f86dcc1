"""Server settings for a shared deployment, read from environment variables (one place, documented in the README).

FER_MAX_RUNS            background jobs (trainings, compressions, sweeps) alive at once; a sweep is one job, its
                        trials share its slot (default: what the machine holds, see default_max_runs)
FER_MAX_QUEUED          background jobs (trainings, compressions, sweeps) one browser may have queued or running
                        at once, all kinds together (default 3; 0 = no limit)
FER_ALLOW_DELETE        1/0: whether users may delete runs from the app (default 1)
FER_DATA_ROOTS          folders (separated by ':') the app may read FER2013 from; unset = any path (a single user)
FER_MICRO_BATCH         CPU trainings started from the app run in micro-batches of at most this many images
                        (16 keeps plain_cnn-w1 on FER2013 under 1 GiB); 0 or unset = the whole batch
FER_OPERATOR_TOKEN      a secret (12+ characters) that gives the browser opening the app with ?operator=SECRET
                        rights over every run (a teacher); unset = each run is its starter's alone
"""
from __future__ import annotations

import os
import re
from pathlib import Path

# Peak resident memory of one CPU training of plain_cnn-w1 (the largest shipped family) on FER2013, as a fixed part
# (torch, the trainer's imports, data, weights and optimiser state) plus activations per image of a forward/backward
# pass; fitted to an earlier benchmark run's memory row (~0.95 GiB in micro-batches of 16, ~1.85 GiB at batch 256).
# docs/benchmarks.md's run of 2026-12-07 measured 0.95 and 1.47 GiB: the estimate errs high, on the safe side.
RUN_FIXED_BYTES = int(0.85 * 2**30)
RUN_BYTES_PER_IMAGE = int(4.2 * 2**20)
ASSUMED_BATCH = 256  # the study's batch; the form's quick default (64) needs less
DEFAULT_MAX_QUEUED = 3


def _env_int(name: str, default: int, lo: int, allowed: str) -> int:
    """An integer setting; ValueError naming the variable, its bad value and what is allowed (`allowed`)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {raw!r}; allowed: {allowed}") from None
    if value < lo:
        raise ValueError(f"${name} must be at least {lo}, got {value}; allowed: {allowed}")
    return value


def available_memory() -> int | None:
    """Bytes the kernel says new processes can still use (MemAvailable), or None where /proc is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def micro_batch_cap() -> int:
    """$FER_MICRO_BATCH: the largest micro-batch of CPU trainings started from the app; 0 = no cap."""
    return _env_int("FER_MICRO_BATCH", 0, 0, "a whole number of images, 0 or unset for the whole batch")


def micro_batch_note() -> str | None:
    """What the Train page tells users about the cap, or None without one (ValueError on a bad setting)."""
    cap = micro_batch_cap()
    if not cap:
        return None
    return (f"This server trains on the CPU in micro-batches of at most {cap} images ($FER_MICRO_BATCH), so more "
            "runs fit in its memory: the optimiser step is the same, but BatchNorm normalises each micro-batch alone.")


def run_memory_bytes() -> int:
    """The peak one training is expected to reach on this server (see RUN_FIXED_BYTES)."""
    cap = micro_batch_cap()
    return RUN_FIXED_BYTES + RUN_BYTES_PER_IMAGE * (min(cap, ASSUMED_BATCH) if cap else ASSUMED_BATCH)


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_max_runs() -> int:
    """min(cores, available memory / one run's peak), at least 1: more runs than cores only slow each other down,
    and more than memory holds gets them killed."""
    cores = usable_cores()
    mem = available_memory()
    by_memory = mem // run_memory_bytes() if mem is not None else cores
    return max(1, min(cores, by_memory))


def max_runs(override: int | None = None) -> int:
    """N, the background jobs (trainings, compressions, sweeps) alive at once: the argument, else $FER_MAX_RUNS,
    else default_max_runs()."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise ValueError(f"max runs must be an integer of at least 1, got {override!r}")
        return override
    return _env_int("FER_MAX_RUNS", 0, 1, "a whole number of at least 1, or unset for what this machine holds") \
        or default_max_runs()


def max_queued_per_session() -> int:
    """Background jobs of all kinds one browser may have waiting or running at once; 0 means no limit."""
    return _env_int("FER_MAX_QUEUED", DEFAULT_MAX_QUEUED, 0,
                    f"a whole number, 0 for no limit, or unset for {DEFAULT_MAX_QUEUED}")


def deletion_allowed() -> bool:
    raw = os.environ.get("FER_ALLOW_DELETE", "1").strip().lower()
    if raw not in ("1", "0", "true", "false", "yes", "no", ""):
        raise ValueError(f"$FER_ALLOW_DELETE must be 1 or 0, got {raw!r}; allowed: 1, 0, true, false, yes, no, or unset")
    return raw in ("1", "true", "yes", "")


def check_delete_allowed() -> None:
    if not deletion_allowed():
        raise ValueError("deleting runs is turned off on this server ($FER_ALLOW_DELETE=0); ask its administrator")


def data_roots() -> list[Path] | None:
    """The folders the app may read data from, or None when any path is allowed."""
    raw = os.environ.get("FER_DATA_ROOTS", "").strip()
    if not raw:
        return None
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    for root in roots:
        if not root.is_dir():  # a typo here would refuse every data path, naming only the mistyped folder
            raise ValueError(f"$FER_DATA_ROOTS names {root}, which is not a folder; allowed: existing folders joined "
                             f"by {os.pathsep!r}, or unset for any path")
    return roots


def check_data_path(source: str | os.PathLike) -> None:
    """ValueError unless `source` is 'synthetic' or lies inside one of $FER_DATA_ROOTS (symbolic links resolved,
    so a link cannot lead out of an allowed folder)."""
    roots = data_roots()
    if roots is None or str(source) == "synthetic":
        return
    target = Path(source).expanduser().resolve()
    if not any(target == r or r in target.parents for r in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ValueError(f"{source}: this server only reads data from {allowed} ($FER_DATA_ROOTS)")


def check_server_settings() -> None:
    """Every server setting read once: ValueError for the first one that is mistyped (its name, its bad value and
    what is allowed). Called before a run is queued, so a bad setting refuses the Start instead of queueing a run
    that the scheduler can then never launch, and by the scheduler, which logs it for the server's operator."""
    max_runs()
    max_queued_per_session()
    micro_batch_cap()
    deletion_allowed()
    data_roots()
    operator_token()


def operator_token() -> str | None:
    """$FER_OPERATOR_TOKEN, or None when unset (ValueError when it could be guessed or mistyped)."""
    raw = os.environ.get("FER_OPERATOR_TOKEN", "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_-]{12,64}", raw):
        raise ValueError("$FER_OPERATOR_TOKEN must be 12 to 64 letters, digits, '-' or '_' (a secret the teacher "
                         f"opens the app with, as ?operator=...), got {len(raw)} characters")
    return raw
