"""Sweeps: a grid of trainings over any TrainConfig knobs, run by Ray Tune on this machine or an existing cluster.

Each trial trains into an ordinary run folder (core.training.runs.run_training, the checkpoint contract unchanged) named
deterministically from the sweep and trial, so a retried or re-run trial resumes from its last finished epoch.
The sweep folder <runs>/.sweeps/<name>/sweep.json records the grid, every trial, its state, node and failures.
Ray is optional: only run_sweep imports it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import logging
import os
import re
import socket
import sys
import time
import tomllib
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from core.training.record import RecordStatus, now_iso

INSTALL_HINT = 'sweeps need Ray, which is not installed: pip install "ray[tune]==2.60.0"'
MAX_TRIALS_WITHOUT_YES = 200  # a typo such as --width 0.1 0.2 ... x 10 seeds should not start hours of work
# Past this even --yes is not enough: a 50,000-trial grid built a 60 MB sweep.json and took 1 GB before any trial ran,
# so a grid that size needs a second, explicit flag.
MAX_TRIALS = 1000
SWEEPS_DIR = ".sweeps"  # inside the runs folder; hidden, so run listings skip it
SWEEP_FILE = "sweep.json"
SPEC_FILE, LOG_FILE = "sweep.toml", "sweep.log"  # what the app's background sweep runs, and its output
ADDRESS_TIMEOUT_S = 3.0
# ray.init waits this long for a joined cluster's GCS (it waits three times, so about 30 s in all); Ray's own default
# retries 20 times of 30 s (ten minutes, which reads as "forever"), and a cluster that is up answers in milliseconds.
JOIN_TIMEOUT_S = 10


class TrialStatus(StrEnum):
    """A sweep trial's state in sweep.json (and the sweep's own: running, done or failed)."""

    QUEUED = "queued"  # a sweep the app queued, waiting for a free slot (core.training.queue); never a trial's
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"  # failed, and Ray Tune restarts it from its last finished epoch
    DONE = "done"
    FAILED = "failed"


FINAL_STATES = (TrialStatus.DONE, TrialStatus.FAILED)


@dataclass(frozen=True)
class Trial:
    """One training of a sweep: its run folder name and its settings (a TrainConfig as a dict)."""

    name: str
    config: dict[str, Any]


@dataclass
class SweepSpec:
    """A grid: every combination of `grid` values, times every seed, on top of the `fixed` settings."""

    name: str
    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])

    def describe(self) -> dict[str, Any]:
        return {"grid": self.grid, "fixed": self.fixed, "seeds": self.seeds}


def knob_types() -> dict[str, str]:
    """TrainConfig field -> its annotation ('float', 'int | None', ...): what a sweep may vary."""
    from core.training.config import TrainConfig

    return {f.name: str(f.type) for f in fields(TrainConfig)}


def convert(knob: str, text: Any) -> Any:
    """A command-line or TOML value as the knob's type; ValueError naming the knob and the value."""
    types = knob_types()
    if knob not in types:
        raise ValueError(f"unknown knob {knob!r}; a sweep can vary: {', '.join(sorted(types))}")
    if not isinstance(text, str):
        return text  # TOML already typed it; TrainConfig validates the value
    kind = types[knob]
    if "None" in kind and text.lower() in ("none", "null", "default"):
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"{knob}: {text!r} is not a {kind.split(' ')[0]}") from None
    return text


def slug(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).replace("/", "_")[-24:]


def expand(spec: SweepSpec) -> list[Trial]:
    """Every (grid point, seed) as a validated TrainConfig, with a deterministic run name.
    ValueError: an unknown knob, an empty grid, a value TrainConfig refuses (naming the trial)."""
    from core.training.config import TrainConfig
    from core.training.rundir import check_run_name

    types = knob_types()
    for knob in [*spec.grid, *spec.fixed]:
        if knob not in types:
            raise ValueError(f"unknown knob {knob!r}; a sweep can vary: {', '.join(sorted(types))}")
    if "seed" in spec.grid or "seed" in spec.fixed:
        raise ValueError("give seeds with --seeds N (or seeds = [..] in the sweep file), not as a knob")
    empty = [k for k, v in spec.grid.items() if not v]
    if empty or not spec.seeds:
        raise ValueError(f"empty grid: no values for {', '.join(empty) or 'seeds'}; nothing to run")
    check_run_name(spec.name)
    keys = list(spec.grid)
    trials = []
    for i, (values, seed) in enumerate(itertools.product(itertools.product(*spec.grid.values()), spec.seeds)):
        point = dict(zip(keys, values))
        try:
            cfg = TrainConfig(**{**spec.fixed, **point, "seed": seed})
        except (ValueError, TypeError) as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise ValueError(f"{exc} (trial {i}: {where + ', ' if where else ''}seed {seed})") from None
        label = "-".join(f"{k[:5]}{slug(v)}" for k, v in point.items() if k != "arch")
        name = f"{spec.name}-{i:03d}-{point.get('arch', cfg.arch)}-{label}-s{seed}".replace("--", "-")
        trials.append(Trial(check_run_name(name[:80].rstrip("-.")), cfg.to_dict()))
    return trials


def count(spec: SweepSpec) -> int:
    """Trials in the grid, known before any is built."""
    n = len(spec.seeds)
    for values in spec.grid.values():
        n *= len(values)
    return n


def check_size(n: int, yes: bool, allow_huge: bool = False) -> None:
    """Refuse a grid by its size alone: call it with count(spec), before expand builds a single trial."""
    if n == 0:
        raise ValueError("empty grid: it has no trials; give at least one value per knob")
    if n > MAX_TRIALS and not (yes and allow_huge):
        raise ValueError(f"the grid has {n:,} trials, more than the cap of {MAX_TRIALS:,}; check the values, or "
                         "pass both --yes and --allow-huge-grid to run them all")
    if n > MAX_TRIALS_WITHOUT_YES and not yes:
        raise ValueError(f"the grid has {n:,} trials, more than {MAX_TRIALS_WITHOUT_YES} without --yes; "
                         "check the values, or pass --yes to run them all")


def spec_from_toml(path: str | os.PathLike, name: str | None = None) -> SweepSpec:
    """A sweep file: optional `name` and `seeds` (a count or a list), a [grid] table of lists, a [fixed] table.

        name = "widths"
        seeds = 3
        [grid]
        arch = ["mobilenet", "plain_cnn"]
        width = [0.25, 0.5, 1.0]
        [fixed]
        epochs = 30
        data = "data/fer2013"
    """
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the sweep file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not a valid TOML sweep file ({exc})") from None
    unknown = sorted(set(doc) - {"name", "seeds", "grid", "fixed"})
    if unknown:
        raise ValueError(f"{path}: unknown entries {unknown}; a sweep file has name, seeds, [grid] and [fixed]")
    grid = doc.get("grid", {})
    bad = [k for k, v in grid.items() if not isinstance(v, list)]
    if bad:
        raise ValueError(f"{path}: [grid] {bad[0]} must be a list of values, got {grid[bad[0]]!r}")
    return SweepSpec(name or doc.get("name") or default_name(), grid, dict(doc.get("fixed", {})),
                     seed_list(doc.get("seeds", 1)))


def seed_list(seeds: Any) -> list[int]:
    """--seeds 3 means seeds 0, 1, 2; a list is taken as given."""
    if isinstance(seeds, list):
        return seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 0 <= seeds <= 1000:
        raise ValueError(f"seeds must be a count from 0 to 1000 or a list of seeds, got {seeds!r}")
    return list(range(seeds))


def default_name() -> str:
    return "sweep-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def is_default_name(name: str) -> bool:
    """Whether `name` has default_name's shape: made up by the click, not typed."""
    return re.fullmatch(r"sweep-\d{8}-\d{6}", name) is not None


def parse_address(address: str | None) -> str | None:
    """The Ray address to join, from --address or $RAY_ADDRESS; None (or 'local') means start Ray embedded here.
    Only the form is checked (ValueError naming it): whether a head answers is found out when the sweep starts."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        return None
    if address == "auto":
        return address
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: give auto or HOST:PORT (the head node's `ray start --head` port)")
    return address


def resolve_auto() -> str:
    """'auto' as ray.init documents it, without its legacy fallback: $RAY_ADDRESS, else the address the last
    `ray start` on this machine wrote to <Ray's temp folder>/ray_current_cluster. Ray's own 'auto' also joins any GCS
    process it finds running here, which on a shared server is another user's cluster."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    # Ray's temp folder, as Ray finds it (RAY_TMPDIR, else TMPDIR, else /tmp), and its address file
    file = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
    try:
        found = file.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise ValueError(f"--address 'auto': no cluster was started with `ray start` on this machine (no {file}); "
                         "give the head's HOST:PORT")
    return found


def probe_address(address: str | None) -> None:
    """A HOST:PORT that does not answer within a few seconds is a ValueError before ray.init, which would retry for
    minutes. An address that answers but is no Ray head is left to ray.init, under JOIN_TIMEOUT_S."""
    if address is None:
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as exc:
        raise ValueError(f"--address {address!r}: no Ray head answers there ({exc.strerror or exc}); "
                         "start one with `ray start --head` or check the address") from None


def sweep_dir(runs_root: str | os.PathLike | None, name: str) -> Path:
    from core.util.fsutil import runs_dir

    return runs_dir(runs_root) / SWEEPS_DIR / name


def read_sweep(path: str | os.PathLike) -> dict[str, Any]:
    import json

    file = Path(path) / SWEEP_FILE
    try:
        obj = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: not a readable sweep record ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("trials"), list):
        raise ValueError(f"{file}: not a sweep record (no trials list)")
    return obj


def list_sweeps(runs_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every readable sweep record in the runs folder, newest first, after the sweeps waiting in the queue: those
    have no record yet, only their name, state 'queued', their place in the line (`position`) and no trials."""
    from core.training import queue
    from core.util.fsutil import runs_dir

    base = runs_dir(runs_root) / SWEEPS_DIR
    out = [{"name": e.config.get("info", {}).get("name", e.run_dir.name), "state": TrialStatus.QUEUED, "position": i,
            "planned_trials": e.config.get("info", {}).get("trials"), "trials": [], "owner": e.session,
            "folder": str(e.run_dir)}
           for i, e in enumerate(queue.waiting(runs_root), 1) if e.kind == queue.JobKind.SWEEP][::-1]
    for d in sorted(base.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if base.is_dir() else []:
        try:
            out.append(read_sweep(d))
        except ValueError:
            if queue.claimed(d, runs_dir(runs_root)) is not None:  # launched, its record not written yet (Ray starts)
                out.append({"name": d.name, "state": TrialStatus.PENDING, "trials": []})
    return out


def cancel_sweep(folder: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> None:
    """Take a waiting sweep out of the queue and forget it (ValueError when it is not waiting: it runs, or ran)."""
    from core.service import jobs
    from core.util.fsutil import runs_dir

    jobs.cancel_waiting(folder, runs_dir(runs_root))


# ---------------------------------------------------------------------------------------------------------
# Running on Ray Tune. Tune schedules trials onto the cluster's CPUs/GPUs, restarts failed ones (FailureConfig)
# and reports per-epoch results to the driver, where one callback keeps sweep.json and the progress bar.
# ---------------------------------------------------------------------------------------------------------
def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _trial(config: dict[str, Any]) -> None:
    """The Tune trainable: train (or resume) one run folder, reporting every epoch to Tune."""
    import ray
    import torch
    from ray import tune

    from core.training import rundir
    from core.training.config import TrainConfig
    from core.training.runs import run_training

    cfg = TrainConfig.from_dict(config["config"])
    run_dir = Path(config["run_dir"])
    if cfg.threads is None:  # as many torch threads as CPUs the trial holds, not every core of the node
        torch.set_num_threads(max(1, int(config["cpus"])))
    info = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "run": run_dir.name}
    try:
        old = rundir.read_record(run_dir)
    except ValueError:  # not started yet (or unreadable: run_training rewrites it)
        old = None
    if old is not None and old.status == RecordStatus.DONE:  # a re-run sweep: this trial finished before
        tune.report({**info, "epoch": len(old.epochs), "finished": 1, **_final(old)})
        return
    info["resumed_from"] = len(old.epochs) if old is not None else 0
    for m in run_training(cfg, run_dir):
        tune.report({**info, **_numbers(m), "finished": 0})
    record = rundir.read_record(run_dir)
    tune.report({**info, "epoch": len(record.epochs), "finished": 1, **_final(record)})


def _final(record: Any) -> dict[str, Any]:
    """A finished run's numbers for its last report: its final accuracies, and its last val_acc, which a trial
    skipped on a re-run reports from its record alone (it trains no epoch that would report it)."""
    acc = record.final.accuracy if record.final else {}
    last = {"val_acc": record.epochs[-1].val_acc} if record.epochs else {}
    return {**last, **{f"final_{k}": v for k, v in acc.items() if isinstance(v, (int, float))}}


def _initial_state(spec_doc: dict[str, Any], trials: list[Trial], runs: Path, resources: dict[str, float],
                   address: str | None) -> dict[str, Any]:
    return {"format": 1, **spec_doc, "created": now_iso(), "updated": now_iso(), "address": address or "embedded",
            "resources_per_trial": resources, "runs_dir": str(runs), "state": TrialStatus.RUNNING,
            "trials": [{"index": i, "run": t.name, "config": t.config, "state": TrialStatus.PENDING, "epoch": 0,
                        "epochs": t.config["epochs"], "val_acc": None, "node": None, "nodes": [], "failures": 0,
                        "error": None} for i, t in enumerate(trials)]}


def _make_callback(state: dict[str, Any], folder: Path, bar: Any) -> Any:
    """A Tune callback on the driver: trial states into sweep.json, finished epochs into the progress bar."""
    from ray import tune

    from core.util.fsutil import atomic_write_json

    def save() -> None:
        state["updated"] = now_iso()
        atomic_write_json(folder / SWEEP_FILE, state)

    def row(trial: Any) -> dict[str, Any]:
        return state["trials"][trial.config["trial"]["index"]]

    class SweepRecorder(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            row(trial)["state"] = TrialStatus.RUNNING
            save()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            r = row(trial)
            node = result.get("node")
            if node and node not in r["nodes"]:
                r["nodes"].append(node)
            before = r["epoch"]
            r.update(node=node, pid=result.get("pid"), epoch=int(result.get("epoch", r["epoch"])),
                     resumed_from=result.get("resumed_from", r.get("resumed_from")))
            if "val_acc" in result:
                r["val_acc"] = result["val_acc"]
            bar.update(max(0, r["epoch"] - before))
            if result.get("finished"):
                r["final"] = {k[6:]: v for k, v in result.items() if k.startswith("final_")}
            save()

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r = row(trial)
            r.update(failures=r["failures"] + 1, state=TrialStatus.RETRYING, error=_error_line(trial))
            save()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r = row(trial)
            r.update(failures=r["failures"] + 1, state=TrialStatus.FAILED, error=_error_line(trial))
            save()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            row(trial)["state"] = TrialStatus.DONE  # `error` keeps the reason of any failure it recovered from
            save()

    return SweepRecorder()


def _error_line(trial: Any) -> str:
    """The last line of Ray's error for a trial (a killed worker, or the trainer's own reason)."""
    text = ""
    try:
        path = getattr(trial, "error_file", None) or ""
        text = Path(path).read_text() if path and Path(path).exists() else str(getattr(trial, "error_msg", "") or "")
    except OSError:
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "the trial's process died")[:300]


def _start_ray(address: str | None, runtime_env: dict[str, Any]) -> tuple[bool, str]:
    """Join the cluster at `address`, or start Ray embedded here (None); returns (whether this call started Ray, and
    so shuts it down at the end; the address to record). ValueError with one line when Ray cannot start or join."""
    import ray
    from ray.exceptions import AuthenticationError

    if address == "auto":
        address = resolve_auto()
    probe_address(address)
    if ray.is_initialized():  # a caller (a test, a notebook) already connected: use that cluster, and say which
        return False, ray.get_runtime_context().gcs_address
    options = dict(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env, logging_level="WARNING",
                   configure_logging=True)
    try:
        if address is None:
            # "local", not None: None joins whatever cluster $RAY_ADDRESS or the temp folder's ray_current_cluster
            # names (another user's `ray start`, or one long dead), while the record would say embedded.
            ray.init(address="local", **options)
            return True, "embedded"
        with _join_timeout():
            ray.init(address=address, **options)
    except AuthenticationError as exc:
        raise ValueError(f"--address {address!r}: the cluster refused this sweep's token ({_first_line(exc)}); "
                         "set RAY_AUTH_MODE=token and give the head's token (README: Sweeps)") from None
    except (ConnectionError, RuntimeError) as exc:
        if not address:
            raise ValueError(f"cannot start Ray here ({_first_line(exc)})") from None
        # Ray 2.60 turns token authentication on by itself (a head started where a token exists); a client without
        # the token is only told that the connection failed, the reason is in the cause's text
        refused = any(w in str(exc.__cause__ or exc) for w in ("InvalidAuthToken", "Unauthenticated"))
        hint = ("the head refused this sweep's token: set RAY_AUTH_MODE=token and give the head's token"
                if refused else "no Ray cluster answered there in time, or it wants a token: RAY_AUTH_MODE=token "
                "on every node and here")
        raise ValueError(f"--address {address!r}: cannot join a Ray cluster ({_first_line(exc)}; {hint})") from None
    return True, address


@contextlib.contextmanager
def _join_timeout() -> Iterator[None]:
    """Bound ray.init's wait for a joined cluster's GCS with Ray's RAY_<setting> environment variables (read when
    ray.init starts its GCS client), only around ray.init and only where the operator has not set them."""
    settings = {"RAY_py_gcs_connect_timeout_s": str(JOIN_TIMEOUT_S), "RAY_gcs_server_port_wait_time_s": "1"}
    added = [k for k in settings if k not in os.environ]
    os.environ.update({k: settings[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def check_cluster(cpus_per_trial: float, gpus_per_trial: float) -> dict[str, Any]:
    """After ray.init: what the cluster has; ValueError when no node can hold one trial, which Tune would otherwise
    leave pending forever. A trial runs on one node, so the largest node counts, not the cluster's sum."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    have = {"nodes": len(nodes), "cpu": total.get("CPU", 0.0), "gpu": total.get("GPU", 0.0),
            "largest_node": {"cpu": max((r.get("CPU", 0.0) for r in nodes), default=0.0),
                             "gpu": max((r.get("GPU", 0.0) for r in nodes), default=0.0)}}
    if not any(r.get("CPU", 0.0) >= cpus_per_trial and r.get("GPU", 0.0) >= gpus_per_trial for r in nodes):
        big = have["largest_node"]
        raise ValueError(f"each trial asks for {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs (--cpus-per-trial, "
                         f"--gpus-per-trial), more than any node has: the cluster has {have['cpu']:g} CPUs and "
                         f"{have['gpu']:g} GPUs on {len(nodes)} node(s), the largest {big['cpu']:g} CPUs and "
                         f"{big['gpu']:g} GPUs")
    return have


def run_sweep(trials: Sequence[Trial], name: str, *, spec_doc: dict[str, Any] | None = None,
              runs_root: str | os.PathLike | None = None, address: str | None = None, cpus_per_trial: float = 1.0,
              gpus_per_trial: float = 0.0, max_failures: int = 2, yes: bool = False, allow_huge_grid: bool = False,
              quiet: bool = False, callbacks: Iterable[Any] = ()) -> dict[str, Any]:
    """Run the trials on Ray Tune; returns the sweep record (also in <runs>/.sweeps/<name>/sweep.json).

    Bad input is refused before anything is written. A sweep that cannot start (no head at the address, a refused
    token, trials bigger than any node) raises ValueError and leaves a record that says failed and why. Running it
    again with the same name resumes: finished trials are skipped, unfinished ones continue from their last epoch."""
    check_size(len(trials), yes, allow_huge_grid)
    _check_resources(cpus_per_trial, gpus_per_trial, max_failures)
    # Ray's newer console output ignores verbose=0 and prints tables; the legacy reporter honours it (tqdm is ours)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    address = parse_address(address)
    state, old = _new_state(trials, name, spec_doc, runs_root, address, cpus_per_trial, gpus_per_trial)
    folder = sweep_dir(state["runs_dir"], name)
    started = _start(address, state, old, folder, cpus_per_trial, gpus_per_trial)
    try:
        _fit(trials, state, folder, cpus_per_trial, gpus_per_trial, max_failures, quiet, callbacks)
    finally:
        if started:
            ray.shutdown()
    failed = [t for t in state["trials"] if t["state"] != TrialStatus.DONE]
    state["state"] = TrialStatus.FAILED if failed else TrialStatus.DONE
    if failed:
        state["failed_trials"] = [t["run"] for t in failed]
        state.setdefault("error", f"{len(failed)} of {len(state['trials'])} trials failed; "
                                  f"{failed[0]['run']}: {failed[0].get('error') or failed[0]['state']}")
    from core.util.fsutil import atomic_write_json

    atomic_write_json(folder / SWEEP_FILE, {**state, "updated": now_iso()})
    return state


def _start(address: str | None, state: dict[str, Any], old: dict[str, Any] | None, folder: Path, cpus: float,
           gpus: float) -> bool:
    """Start or join Ray and check that a trial fits; True when Ray was started here (run_sweep shuts it down).
    sweep.json says running only once this succeeded; any failure is written there as failed, with its reason (an
    earlier run's trial states kept), and raised as a one-line ValueError."""
    import ray

    from core.util.fsutil import PROJECT_ROOT, atomic_write_json

    started = False
    try:
        # Workers import `core` from the project folder (on a cluster: the same path on every node).
        started, state["address"] = _start_ray(address, {"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})
        state["cluster"] = check_cluster(cpus, gpus)
        state["gcs_address"] = ray.get_runtime_context().gcs_address
    except Exception as exc:  # noqa: BLE001 - whatever stops the start is recorded; ValueErrors already read well
        if started:
            ray.shutdown()
        reason = (str(exc) if isinstance(exc, ValueError)
                  else f"Ray did not start: {type(exc).__name__}: {_first_line(exc)}")
        atomic_write_json(folder / SWEEP_FILE, {**(old or state), "state": TrialStatus.FAILED, "error": reason,
                                                "updated": now_iso()})
        raise ValueError(reason) from None
    atomic_write_json(folder / SWEEP_FILE, state)
    return started


def _new_state(trials: Sequence[Trial], name: str, spec_doc: dict[str, Any] | None,
               runs_root: str | os.PathLike | None, address: str | None, cpus: float, gpus: float,
               ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The record a run starts from (nothing written yet) and the record of an earlier run of this sweep, if any;
    ValueError when a sweep of that name has other trials."""
    from core.util.fsutil import runs_dir

    runs = runs_dir(runs_root).resolve()
    folder = sweep_dir(runs, name)
    state = _initial_state(spec_doc or {"trials_given": len(trials)}, list(trials), runs, {"cpu": cpus, "gpu": gpus},
                           address)
    state["name"] = name
    old = None
    if (folder / SWEEP_FILE).exists():
        old = read_sweep(folder)
        if [t["config"] for t in old["trials"]] != [t.config for t in trials]:
            raise ValueError(f"a sweep named {name!r} with other trials exists in {folder}; choose another --name")
        state["created"] = old.get("created", state["created"])
    return state, old


def _fit(trials: Sequence[Trial], state: dict[str, Any], folder: Path, cpus: float, gpus: float, max_failures: int,
         quiet: bool, callbacks: Iterable[Any]) -> None:
    """Tune's run, kept in `state` by the recorder. A failure of Ray itself (a lost node or head) ends the run with
    a one-line reason in the record, not Ray's traceback: trials still unfinished are marked failed."""
    from tqdm import tqdm

    bar = tqdm(total=sum(t.config["epochs"] for t in trials), unit="epoch", desc=f"sweep {state['name']}",
               disable=quiet, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    quiet_errors = _QuietTuneErrors()
    handlers = logging.getLogger("ray").handlers
    for h in handlers:
        h.addFilter(quiet_errors)
    try:
        _tuner(trials, Path(state["runs_dir"]), folder, cpus, gpus, max_failures,
               [_make_callback(state, folder, bar), *callbacks]).fit()
    except Exception as exc:  # noqa: BLE001 - Ray's errors differ by version and cause; the reason is kept
        state["error"] = f"Ray stopped the sweep: {type(exc).__name__}: {_first_line(exc)}"
        for t in state["trials"]:
            if t["state"] not in FINAL_STATES:
                t.update(state=TrialStatus.FAILED, error=t.get("error") or state["error"])
    finally:
        for h in handlers:
            h.removeFilter(quiet_errors)
        bar.close()
        state["wall_time_s"] = round(time.perf_counter() - t0, 1)


class _QuietTuneErrors(logging.Filter):
    """Tune logs each failed trial with Ray's whole traceback (30 lines for a lost node) on the console; the
    recorder keeps the reason's last line in sweep.json, and the summary prints it. Tune's warnings still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("ray.tune") and record.levelno >= logging.ERROR)


def _check_resources(cpus_per_trial: float, gpus_per_trial: float, max_failures: int) -> None:
    for label, v, lo in (("--cpus-per-trial", cpus_per_trial, 0.01), ("--gpus-per-trial", gpus_per_trial, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= 1024:
            raise ValueError(f"{label} must be a number from {lo:g} to 1024 (fractions allowed), got {v!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"--max-failures must be a count of at least 0, got {max_failures!r}")


def _tuner(trials: Sequence[Trial], runs: Path, folder: Path, cpus: float, gpus: float, max_failures: int,
           callbacks: list[Any]) -> Any:
    """A Tune grid over the trial indices; each trial holds `cpus`/`gpus` and is restarted max_failures times."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(_trial_by_index, trials=[
        {"config": t.config, "run_dir": str(runs / t.name), "cpus": cpus} for t in trials]), {"cpu": cpus, "gpu": gpus})
    return tune.Tuner(
        trainable, param_space={"trial": tune.grid_search([{"index": i, "name": t.name} for i, t in enumerate(trials)])},
        # reuse_actors: a worker that finished a trial takes the next one without importing torch again
        tune_config=tune.TuneConfig(trial_dirname_creator=_trial_dirname, trial_name_creator=_trial_dirname,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(folder), verbose=0, log_to_file=True,
                                  failure_config=tune.FailureConfig(max_failures=max_failures), callbacks=callbacks))


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.config['trial']['index']:03d}"


def _trial_by_index(config: dict[str, Any], trials: list[dict[str, Any]]) -> None:
    # The trial table travels once, in Ray's object store (tune.with_parameters); the grid holds only indices,
    # so Tune's own trial names and result files stay short.
    _trial(trials[config["trial"]["index"]])


# ---------------------------------------------------------------------------------------------------------
# For the app: start a sweep in the background, its trials as a table, and runs grouped by sweep for Compare.
# ---------------------------------------------------------------------------------------------------------
def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def start_sweep(spec: SweepSpec, runs_root: str | os.PathLike | None = None, *, cpus_per_trial: float = 1.0,
                session: str | None = None) -> Path:
    """Check the grid (ValueError as the CLI would give it), then queue `python -m core sweep --file ...` with the
    app's other background jobs (`session` counts against the per-user limit): Ray runs in that process, never in
    the app's. The whole sweep is one job of the queue. Returns the sweep folder; its record (sweep.json) appears
    once the sweep runs, and list_sweeps shows it as queued until then."""
    from core.service import jobs, launcher
    from core.training.queue import JobKind
    from core.util.fsutil import runs_dir

    if not ray_available():
        raise ValueError(INSTALL_HINT)
    check_size(count(spec), yes=False)
    expand(spec)
    folder = sweep_dir(runs_root, spec.name)
    if (folder / SWEEP_FILE).exists():
        raise ValueError(f"a sweep named {spec.name!r} already exists; choose another name")
    # --name too, though the file names it: the child confirms its launch in its folder before it reads the file
    args = ["-m", "core", "sweep", "--file", str(folder / SPEC_FILE), "--name", spec.name,
            "--out", str(runs_dir(runs_root)), "--cpus-per-trial", repr(float(cpus_per_trial)), "--quiet"]
    config = launcher.command_config(args, {"name": spec.name, "trials": count(spec)}, log=LOG_FILE,
                                     write={SPEC_FILE: _to_toml(spec)})
    # the request: the grid, and the name only where the user typed one (a default name is new every second)
    request = {**spec.describe(), "name": None if is_default_name(spec.name) else spec.name}
    return jobs.submit(JobKind.SWEEP, config, folder, runs_root, session=session, request=request,
                       repeat_window_s=jobs.REPEAT_WINDOW_S)


def _to_toml(spec: SweepSpec) -> str:
    import json

    def value(v: Any) -> str:
        return json.dumps(v) if v is not None else '"none"'  # JSON scalars and lists of them are valid TOML

    lines = [f"name = {value(spec.name)}", f"seeds = {value(spec.seeds)}", "[grid]"]
    lines += [f"{k} = [{', '.join(value(v) for v in vs)}]" for k, vs in spec.grid.items()]
    lines += ["[fixed]"] + [f"{k} = {value(v)}" for k, v in spec.fixed.items() if v is not None]
    return "\n".join(lines) + "\n"
