"""A training campaign: a committed list of sweeps, run one trial at a time over many sessions and machines.

The campaign file is the sweep format (core.service.sweep) repeated: a [defaults] table shared by every block, then one
[[sweep]] block per grid, each with a `priority`. Trials run by priority, then seed by seed (so every width gets its
first seed before any gets a third), then cheapest first. Each trial trains into an ordinary run folder named from
its block, its grid values and its seed (never from a position, so adding a block later never renames a trial).

`python -m core campaign --deadline 21:00` runs it at low priority until the deadline: a finished trial is skipped,
an unfinished one resumes from its last finished epoch (the run folder's resume state), and at the deadline the
current trial stops cleanly (recorded as 'stopped', evaluated and exported from its last finished epoch, keeping
its resume state), so the folder can be committed and continued on the next machine.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator

from core.training.record import RecordStatus
from core.util.fsutil import PROJECT_ROOT

DEFAULT_FILE = PROJECT_ROOT / "campaign" / "campaign.toml"
DEFAULT_OUT = PROJECT_ROOT / "campaign" / "trials"
LOCK_FILE = ".campaign.lock"
LOG_FILE = "campaign.log"
STOP_FILE = "STOP"  # `python -m core campaign --stop` creates it in the trials folder; a running campaign stops cleanly
MIN_START_S = 120.0  # a trial is not started with less time left than this: its first epoch could not finish
BLOCK_KEYS = {"name", "priority", "seeds", "grid", "fixed"}
SHORT = {"width": "w"}  # grid knobs abbreviated in trial names, as the shipped folders write them (mobilenet-w0.5)


class CampaignStatus(StrEnum):
    """Where a campaign trial stands, read from its run folder."""

    PENDING = "pending"  # no run folder yet
    IN_PROGRESS = "in progress"  # finished epochs to resume from (stopped, killed or running)
    DONE = "done"
    FAILED = "failed"  # failed with nothing to resume


@dataclass(frozen=True)
class CampaignTrial:
    """One training of the campaign: its run folder name, settings, block, priority and estimated cost."""

    name: str
    config: dict[str, Any]
    block: str
    priority: int
    cost: float  # multiply-accumulates over the whole run: only used to order trials, cheapest first


@dataclass(frozen=True)
class TrialState:
    """Where a trial stands, read from its run folder."""

    trial: CampaignTrial
    state: str  # pending, in progress, done, failed
    epoch: int
    epochs: int
    accuracy: float | None  # the headline accuracy of a finished trial
    error: str | None = None

    def label(self) -> str:
        if self.state == CampaignStatus.IN_PROGRESS:
            return f"in progress (epoch {self.epoch} of {self.epochs})"
        return self.state


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the campaign file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not a valid TOML campaign file ({exc})") from None


def _block_trials(block: dict[str, Any], defaults: dict[str, Any], where: str) -> list[CampaignTrial]:
    """A [[sweep]] block's trials, each a TrainConfig checked by core.service.sweep.expand."""
    from core.service.sweep import SweepSpec, expand, seed_list, slug

    unknown = sorted(set(block) - BLOCK_KEYS)
    if unknown or not isinstance(block.get("name"), str):
        raise ValueError(f"{where}: a [[sweep]] block has a name and may have priority, seeds, grid and fixed; "
                         f"got {sorted(block)}")
    priority = block.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"{where}: priority must be a whole number, got {priority!r}")
    spec = SweepSpec(block["name"], dict(block.get("grid", {})), {**defaults, **block.get("fixed", {})},
                     seed_list(block.get("seeds", 1)))
    out = []
    for t in expand(spec):  # expand validates every knob and value; the names here leave out its index
        label = "-".join(f"{SHORT.get(k, k)}{slug(t.config[k])}" for k in spec.grid)
        name = "-".join(p for p in (spec.name, label, f"s{t.config['seed']}") if p)
        out.append(CampaignTrial(name, t.config, spec.name, priority, _cost(t.config)))
    return out


def _cost(config: dict[str, Any]) -> float:
    from core.models.summary import summarize
    from core.training.config import TrainConfig

    cfg = TrainConfig.from_dict(config)
    images = cfg.subset or 28_709  # FER2013's training split; only the order of trials depends on it
    return 3.0 * summarize(cfg.arch, **cfg.model_knobs()).macs * images * cfg.epochs


def load_campaign(path: str | os.PathLike = DEFAULT_FILE) -> list[CampaignTrial]:
    """Every trial of a campaign file, in the order they run. ValueError names the file and what is wrong."""
    path = Path(path)
    doc = _read_toml(path)
    unknown = sorted(set(doc) - {"defaults", "sweep"})
    if unknown:
        raise ValueError(f"{path}: unknown entries {unknown}; a campaign file has [defaults] and [[sweep]] blocks")
    blocks = doc.get("sweep", [])
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"{path}: no [[sweep]] blocks; nothing to run")
    trials = [t for i, b in enumerate(blocks) for t in _block_trials(b, doc.get("defaults", {}), f"{path} block {i + 1}")]
    seen: dict[str, CampaignTrial] = {}
    for t in trials:
        if t.name in seen and seen[t.name].config != t.config:
            raise ValueError(f"{path}: two trials are named {t.name!r} with different settings; rename a block")
        seen[t.name] = t
    return sorted(seen.values(), key=lambda t: (t.priority, t.config["seed"], t.cost))


def trial_state(trial: CampaignTrial, out: Path) -> TrialState:
    """pending (no folder), done, failed, or in progress with its finished epochs (stopped, killed or running)."""
    from core.training import rundir

    folder = out / trial.name
    epochs = int(trial.config["epochs"])
    try:
        record = rundir.read_record(folder)
    except ValueError:
        return TrialState(trial, CampaignStatus.PENDING, 0, epochs, None)
    if record.status == RecordStatus.DONE:
        return TrialState(trial, CampaignStatus.DONE, len(record.epochs), epochs, record.headline()[1])
    if record.status == RecordStatus.FAILED and not (folder / rundir.RESUME).exists():
        return TrialState(trial, CampaignStatus.FAILED, len(record.epochs), epochs, None, record.error)
    return TrialState(trial, CampaignStatus.IN_PROGRESS, len(record.epochs), epochs, None, record.error)


def states(trials: list[CampaignTrial], out: Path) -> list[TrialState]:
    return [trial_state(t, out) for t in trials]


def parse_deadline(text: str | None, now: _dt.datetime | None = None) -> float | None:
    """A deadline as unix time: HH:MM (today, local time; tomorrow if already past), an ISO date-time, or +N[smh]
    (from now). None: no deadline. ValueError says what is allowed."""
    if text is None:
        return None
    now = now or _dt.datetime.now().astimezone()
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip()
    try:
        if t.startswith("+"):
            scale = units.get(t[-1], 1)
            seconds = float(t[1:-1] if t[-1] in units else t[1:]) * scale
            if seconds <= 0:
                raise ValueError
            return now.timestamp() + seconds
        if len(t) <= 5 and ":" in t:
            hh, mm = (int(x) for x in t.split(":"))
            when = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            return (when if when > now else when + _dt.timedelta(days=1)).timestamp()
        when = _dt.datetime.fromisoformat(t)
        return (when if when.tzinfo else when.astimezone()).timestamp()
    except ValueError:
        raise ValueError(f"--deadline {text!r}: give HH:MM, an ISO date-time (2026-12-03T21:00) or +N with s, m or h "
                         "(+90m)") from None


class Deadline:
    """When to stop: at the deadline, or earlier at an epoch's end when the next epoch could not finish in time (the
    part of an epoch cut by a stop is lost, so it is better not begun)."""

    def __init__(self, at: float | None, clock: Callable[[], float] = time.time, stop_file: Path | None = None) -> None:
        self.at, self.clock, self.stop_file = at, clock, stop_file
        self.epoch_s: float | None = None
        self.stop_now = False

    def left(self) -> float:
        if self.stop_file is not None and self.stop_file.exists():  # `campaign --stop`: the deadline is now
            return 0.0
        return float("inf") if self.at is None else self.at - self.clock()

    def epoch_done(self, seconds: float) -> None:
        self.epoch_s = seconds
        if self.left() < 1.1 * seconds:
            self.stop_now = True

    def __call__(self) -> bool:
        return self.stop_now or self.left() <= 0


def _data_for(config: dict[str, Any], cache: dict[tuple, Any]) -> Any:
    """The data set a trial trains on, loaded once per campaign. A relative path is taken from the project folder (the
    campaign runs there), so the same file works on every machine that has ../shared beside the project, and the
    records name no machine's folders."""
    from core.data import load_data

    source = config["data"]
    key = (source, config.get("synthetic_size"), config["seed"] if source == "synthetic" else None)
    if key not in cache:
        cache.clear()  # one data set in memory at a time
        cache[key] = load_data(source, synthetic_size=config.get("synthetic_size", 6000), seed=config["seed"])
    return cache[key]


def run_trial(trial: CampaignTrial, out: Path, deadline: Deadline, cache: dict, log: Callable[[str], None]) -> str:
    """Train (or resume) one trial until it ends or the deadline stops it; returns its state afterwards."""
    from core.training.config import TrainConfig
    from core.training.runs import run_training

    cfg = TrainConfig.from_dict(trial.config)
    before = trial_state(trial, out)
    log(f"{trial.name}: {'resuming after epoch ' + str(before.epoch) if before.epoch else 'starting'} "
        f"({cfg.epochs} epochs)")
    deadline.stop_now = False
    t0 = time.monotonic()
    try:
        for m in run_training(cfg, out / trial.name, should_stop=deadline, data=_data_for(trial.config, cache)):
            deadline.epoch_done(time.monotonic() - t0)
            t0 = time.monotonic()
            log(f"{trial.name}: epoch {m['epoch']}/{cfg.epochs} val {m['val_acc']:.4f} ({m['images_per_s']:.0f} img/s)")
    except (ValueError, RuntimeError, MemoryError) as exc:  # recorded in the run folder by run_training
        log(f"{trial.name}: failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    after = trial_state(trial, out)
    log(f"{trial.name}: {after.label()}" + (f", accuracy {after.accuracy:.4f}" if after.accuracy is not None else ""))
    return after.state


def run_campaign(trials: list[CampaignTrial], out: Path, deadline: Deadline,
                 log: Callable[[str], None] = print) -> list[TrialState]:
    """Every unfinished trial in order until the deadline; failed trials are tried once per call. A trial that
    another worker of the campaign (--workers) is training is left to it: each trial's claim is an flock, so two
    workers never train one trial, and a worker that dies frees its trial for the next."""
    from core.util.procs import take_lock

    cache: dict = {}
    out.mkdir(parents=True, exist_ok=True)  # the trials' claims live there
    for trial in trials:
        current = trial_state(trial, out)
        if current.state == CampaignStatus.DONE:
            continue
        if deadline.left() < max(MIN_START_S, deadline.epoch_s or 0.0):
            log(f"deadline: {trial.name} and the trials after it wait for the next run")
            break
        claim = take_lock(out / f".{trial.name}.claim", wait_s=0)
        if claim is None:
            continue  # another worker trains it
        try:
            if trial_state(trial, out).state != CampaignStatus.DONE:  # it may have finished while we looked
                run_trial(trial, out, deadline, cache, log)
        finally:
            os.close(claim)
    return states(trials, out)


def lock(out: Path, worker: int = 0) -> Any:
    """One campaign at a time per trials folder, with its workers numbered from 0: an flock per worker, held for the
    life of its process."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / (LOCK_FILE if worker == 0 else f"{LOCK_FILE}.{worker}"), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        raise ValueError(f"a campaign is already running on {out} (pid {handle.read().strip() or '?'}); "
                         "wait for it or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def progress_lines(rows: list[TrialState]) -> Iterator[str]:
    done = sum(r.state == CampaignStatus.DONE for r in rows)
    epochs = sum(r.epoch for r in rows), sum(r.epochs for r in rows)
    yield f"{done} of {len(rows)} trials done; {epochs[0]} of {epochs[1]} epochs"
    for r in rows:
        acc = f"  {r.accuracy:.4f}" if r.accuracy is not None else ""
        yield f"  {r.label():34} {r.trial.name}{acc}" + (f"  ({r.error})" if r.state == CampaignStatus.FAILED and r.error else "")
