"""A training run end to end: folder, data, model, resume, per-epoch checkpoints, final evaluation and ONNX export."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from core.data import FERData, load_data
from core.data.augment import with_tta
from core.inference.onnx_io import OnnxClassifier, export_onnx, parity
from core.models import archs
from core.models.summary import summarize
from core.training import checkpoint as ck
from core.training import rundir
from core.training.config import TrainConfig, with_defaults
from core.training.memory import release_free_memory
from core.training.record import FINISHED, Epoch, Final, ModelSpec, RecordStatus, RunRecord, now_iso
from core.training.train import (
    BatchHook,
    StopRun,
    TrainState,
    evaluate,
    fit,
    load_teacher,
    make_ema,
    make_optimizer,
    metrics_from_logits,
    resolve_device,
    stratified_subset,
)

OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA's and PyTorch CPU allocator's wording
TRAIN_EVAL_SAMPLE = 5000  # final train-split accuracy on a stratified sample: the full split costs minutes on CPU


def failure_reason(exc: BaseException) -> str:
    """One line for the record and the CLI; out-of-memory errors (CUDA's or the CPU allocator's) say what to do."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError) or any(m in reason.lower() for m in OOM_MESSAGES):
        reason = f"out of memory: {reason} (lower the batch size or width)"
    return reason


def versions() -> dict[str, str]:
    import onnxruntime
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def recipe_text(cfg: TrainConfig) -> str:
    parts = [f"{cfg.optimizer} lr {cfg.lr:g}", f"{cfg.schedule} schedule", f"batch {cfg.batch_size}",
             "augmentation" if cfg.augment else "no augmentation"]
    if cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    if cfg.weight_decay:
        parts.append(f"weight decay {cfg.weight_decay:g}")
    if cfg.init_from:
        parts.append(f"continued from {Path(cfg.init_from).name}")
    if cfg.ema_decay:
        parts.append(f"weight EMA {cfg.ema_decay:g}")
    if cfg.teacher:
        parts.append(f"distilled from {Path(cfg.teacher).name} (T={cfg.distill_temperature:g}, "
                     f"alpha={cfg.distill_alpha:g}"
                     + (", teacher logits computed once)" if cfg.teacher_mode == "once" else ")"))
    if cfg.precision != "auto":
        parts.append(cfg.precision)
    return ", ".join(parts)


def device_name(device: torch.device) -> str:
    return device.type if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})"


def new_record(name: str, cfg: TrainConfig, knobs: dict[str, float], data: FERData, device: torch.device) -> RunRecord:
    s = summarize(cfg.arch, **knobs)
    return RunRecord(
        name=name, model=ModelSpec(cfg.arch, knobs, archs.get_family(cfg.arch).title), status=RecordStatus.RUNNING,
        created=now_iso(), updated=now_iso(), pid=os.getpid(),
        params=s.params, trainable=s.trainable, macs=s.macs, size_bytes=s.size_bytes,
        data={**data.describe(), "warnings": data.warnings}, config=cfg.to_dict(), recipe=recipe_text(cfg),
        device=device_name(device), cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        versions=versions(),
    )


def final_evaluation(model: torch.nn.Module, data: FERData, device: torch.device, seed: int) -> Final:
    out = Final()
    for name, split in data.splits.items():
        if name == "train" and len(split) > TRAIN_EVAL_SAMPLE:
            split = stratified_subset(split, TRAIN_EVAL_SAMPLE, seed)
        # channels-last input on the CPU, as in training: oneDNN's path there also needs less scratch memory
        ev = evaluate(model, split, device, channels_last=device.type == "cpu")
        out.accuracy[name] = ev["accuracy"]
        out.per_class[name] = ev["per_class"]
        out.confusion[name] = ev["confusion"]
        out.n[name] = ev["n"]
    return out


def resolve_run_dir(cfg: TrainConfig, runs_root: str | os.PathLike | None = None, name: str | None = None,
                    run_dir: str | os.PathLike | None = None) -> Path:
    """An explicit run folder, or <runs folder>/<checked name or arch-width-timestamp>."""
    if run_dir is not None:
        return Path(run_dir)
    return rundir.run_path(name or rundir.default_run_name(cfg), runs_root)


@dataclass
class _Run:
    """What one training needs, resolved once: settings, model knobs, data, model, optimiser, state, record."""

    cfg: TrainConfig
    dir: Path
    knobs: dict[str, float]
    device: torch.device
    data: FERData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainState
    record: RunRecord
    teacher: torch.nn.Module | None = None
    ema: AveragedModel | None = None

    @property
    def deployed(self) -> torch.nn.Module:
        """What is evaluated, saved as model.pt and exported: the weight average when the run keeps one."""
        return self.model if self.ema is None else self.ema.module


def _prepare(cfg: TrainConfig, run_dir: Path, data: FERData | None) -> _Run:
    """Data, model and optimiser for a run; continues from the folder's resume state when there is one."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    knobs = cfg.model_knobs()
    data = data if data is not None else load_data(cfg.data, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    model = archs.build(cfg.arch, **knobs)
    run = _Run(cfg, run_dir, knobs, device, data, model, make_optimizer(cfg, model), TrainState(),
               new_record(run_dir.name, cfg, knobs, data, device))
    if cfg.init_from and not (run_dir / rundir.RESUME).exists():
        _start_from(model, cfg, knobs)  # before the average is made, so that it starts from these weights too
    run.ema = make_ema(model, cfg.ema_decay)
    resume_path = run_dir / rundir.RESUME
    if resume_path.exists():
        old = rundir.read_record(run_dir)
        if with_defaults(old.config) != cfg.to_dict():
            raise ValueError(f"{run_dir}: holds a run with different settings; choose another run name to start anew")
        saved = ck.load_state_dict(resume_path)
        model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        if run.ema is not None:
            run.ema.load_state_dict(saved["ema"])
        run.state = TrainState(epoch=int(saved["epoch"]), steps=int(saved["steps"]),
                               history=[e.to_json() for e in old.epochs])
        run.record.created, run.record.wall_time_s = old.created or run.record.created, old.wall_time_s
        run.record.epochs, run.record.resumed_from_epoch = list(old.epochs), run.state.epoch
    rundir.write_record(run_dir, run.record)
    if cfg.teacher:
        run.teacher = load_teacher(cfg.teacher)
    return run


def _start_from(model: torch.nn.Module, cfg: TrainConfig, knobs: dict[str, float]) -> None:
    """A new run's weights from a trained run (cfg.init_from); ValueError when that run is another model."""
    source = find_run(cfg.init_from)
    trained, record = ck.load_model(source)
    if record.model.arch != cfg.arch or record.model.knobs.get("width") != knobs.get("width"):
        raise ValueError(f"init_from {cfg.init_from!r} is {record.model.arch} width {record.model.knobs.get('width')}, "
                         f"not {cfg.arch} width {knobs.get('width')}; start from a run of the same model")
    model.load_state_dict(trained.state_dict())


def _save_epoch(run: _Run, seconds: float) -> None:
    """Per-epoch checkpoint: weights first, then the resume state, then the record that points at them, each
    written atomically, so a kill at any moment leaves the last finished epoch intact."""
    def on_cpu(module: torch.nn.Module) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    cpu_state = on_cpu(run.model)
    ck.save_state_dict(run.dir / rundir.WEIGHTS, on_cpu(run.deployed))
    ck.save_state_dict(run.dir / rundir.RESUME, {"model": cpu_state, "optimizer": run.optimizer.state_dict(),
                                                 "epoch": run.state.epoch, "steps": run.state.steps,
                                                 **({"ema": on_cpu(run.ema)} if run.ema is not None else {})})
    run.record.epochs = [Epoch.from_json(e, i) for i, e in enumerate(run.state.history)]
    run.record.updated, run.record.wall_time_s = now_iso(), seconds
    rundir.write_record(run.dir, run.record)


STAGES = ("final evaluation", "export")  # what runs after the last step, told through run_training's on_stage


def _finish(run: _Run, stopped: bool, seconds: float, on_stage: Callable[[str], None] | None = None) -> None:
    """Final metrics in fp32 on the training device (seconds on a GPU, where the CPU would take minutes for the large
    models), then weights and the ONNX export from the CPU copy, checked against each other. on_stage hears each
    stage's name as it starts: after the last step the progress bar is full, and this can still take a while."""
    stage = on_stage or (lambda name: None)
    if not run.state.history:
        raise StopRun("stopped before the first epoch finished" if stopped else "no epoch was run")
    if stopped:  # a stop keeps the last finished epoch's weights (already on disk)
        run.deployed.load_state_dict(ck.load_state_dict(run.dir / rundir.WEIGHTS))
    release_free_memory()  # the last epoch's freed memory, before the final evaluation and the export
    model = run.deployed.float().eval()  # evaluated in the training's memory format (channels-last on the CPU)
    stage(STAGES[0])
    run.record.final = final_evaluation(model, run.data, run.device, run.cfg.seed)
    release_free_memory()  # the evaluation's, before the export builds its graphs
    stage(STAGES[1])
    cpu_model = model.to("cpu").to(memory_format=torch.contiguous_format)
    ck.save_state_dict(run.dir / rundir.WEIGHTS, {k: v.contiguous() for k, v in cpu_model.state_dict().items()})
    onnx_path = run.dir / rundir.ONNX
    export_onnx(cpu_model, onnx_path, arch=run.cfg.arch, knobs=run.knobs, params=run.record.params or 0,
                extra={"run": run.dir.name, "val_accuracy": run.record.accuracy(run.data.val_split)}, tta=run.cfg.tta)
    run.record.onnx = {"file": rundir.ONNX, "parity_max_abs": parity(with_tta(cpu_model, run.cfg.tta), onnx_path)}
    run.record.status, run.record.updated, run.record.wall_time_s = (
        (RecordStatus.STOPPED if stopped else RecordStatus.DONE), now_iso(), seconds)
    rundir.write_record(run.dir, run.record)
    if not stopped:  # a stopped run keeps its resume state, so it can be continued later
        (run.dir / rundir.RESUME).unlink(missing_ok=True)
    (run.dir / rundir.STOP_FILE).unlink(missing_ok=True)


def _record_failure(cfg: TrainConfig, run_dir: Path, record: RunRecord | None, exc: BaseException) -> None:
    """The reason goes into the record for the app and CLI; finished epochs stay on disk and resumable."""
    if record is None:
        record = RunRecord(name=run_dir.name, model=ModelSpec(cfg.arch, {}), config=cfg.to_dict(), created=now_iso())
    record.status, record.error, record.updated = RecordStatus.FAILED, failure_reason(exc), now_iso()
    rundir.write_record(run_dir, record)


def run_training(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    on_batch: BatchHook | None = None,
    should_stop: Callable[[], bool] | None = None,
    data: FERData | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """Train into a run folder, yielding each epoch's metrics; resumes if the folder holds a resume state.
    on_stage hears the STAGES after the last epoch (final evaluation, export) as each starts.

    After the last yield the folder holds model.pt, model.onnx and run.json with status 'done' (or 'stopped'
    after a stop request, or 'failed' with the reason)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stop_file = run_dir / rundir.STOP_FILE

    def stop_requested() -> bool:
        return (should_stop is not None and should_stop()) or stop_file.exists()

    run: _Run | None = None
    try:
        run = _prepare(cfg, run_dir, data)
        t_start, wall0 = time.perf_counter(), run.record.wall_time_s
        run.model.to(run.device)
        for metrics in fit(run.model, run.data, cfg, device=run.device, optimizer=run.optimizer, state=run.state,
                           teacher=run.teacher, on_batch=on_batch, should_stop=stop_requested, ema=run.ema):
            _save_epoch(run, wall0 + time.perf_counter() - t_start)
            yield metrics
        _finish(run, stop_requested(), wall0 + time.perf_counter() - t_start, on_stage)
    except (StopRun, ValueError, RuntimeError, MemoryError) as exc:
        _record_failure(cfg, run_dir, run.record if run else None, exc)
        raise


def evaluate_path(target: str | os.PathLike, data: FERData, splits: list[str] | None = None) -> dict[str, dict]:
    """Evaluate a run folder or an .onnx file with ONNX Runtime (the deployed graph) on the given splits."""
    target = Path(target)
    if not target.exists():
        raise ValueError(f"{target}: no such run folder or ONNX file")
    onnx_path = target / rundir.ONNX if target.is_dir() else target
    if target.is_dir() and not onnx_path.exists():
        raise ValueError(f"{target}: has no {rundir.ONNX}; run `python -m core export {target}` first")
    return evaluate_classifier(OnnxClassifier.get(onnx_path), data, splits)


def evaluate_with_tta(run_dir: str | os.PathLike, data: FERData, tta: str,
                      splits: list[str] | None = None) -> dict[str, dict]:
    """A run's weights with test-time augmentation `tta` folded into an ONNX graph (tta_graph), evaluated with ONNX
    Runtime; the run folder itself is not touched (shipped runs included)."""
    return evaluate_classifier(OnnxClassifier.get(tta_graph(find_run(run_dir), tta)), data, splits)


def tta_graph(run_dir: str | os.PathLike, tta: str) -> Path:
    """A run's weights exported with test-time augmentation `tta` folded in, as a run trained with `--tta` exports
    them: kept in the cache (one file per run and mode, made again when the weights are newer), never in the run
    folder, so a shipped run is not changed. ValueError for a mode not in TTA_MODES or a run without its own
    weights (a compressed variant's graph is not its parent's weights)."""
    import hashlib
    import tempfile

    from core.data.augment import TTA_MODES
    from core.util.fsutil import cache_dir

    if tta not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    run_dir = Path(run_dir)
    record = rundir.read_record(run_dir)
    weights = run_dir / rundir.WEIGHTS
    if record.variant is not None or not weights.is_file():
        raise ValueError(f"{run_dir.name}: test-time augmentation needs the run's own weights ({rundir.WEIGHTS}); "
                         "a compressed variant has only its graph")
    key = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    path = cache_dir("tta") / f"{run_dir.name}-{key}-{tta}.onnx"
    if path.exists() and path.stat().st_mtime >= weights.stat().st_mtime:
        return path
    model, _ = ck.load_model(run_dir)
    # a temp file of its own beside the target: two sessions (threads of one server) exporting at once each put a
    # whole file in place, and a failed export leaves nothing behind
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        export_onnx(model, Path(tmp), arch=record.model.arch, knobs=record.model.knobs,
                    params=sum(p.numel() for p in model.parameters()), extra={"run": run_dir.name}, tta=tta)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def evaluate_classifier(clf: OnnxClassifier, data: FERData, splits: list[str] | None = None) -> dict[str, dict]:
    """Accuracy, loss and per-class accuracy of an ONNX Runtime session on the given splits (default: all)."""
    names = splits or list(data.splits)
    unknown = [s for s in names if s not in data.splits]
    if unknown:
        raise ValueError(f"split(s) {unknown} not in {data.source}; available: {sorted(data.splits)}")
    results = {}
    for s in names:
        split = data.splits[s]
        logits = (np.concatenate([clf.logits(split.images[i:i + 1024]) for i in range(0, len(split), 1024)])
                  if len(split) else np.zeros((0, 7), np.float32))
        results[s] = metrics_from_logits(logits, split.labels)
    return results


def find_run(target: str | os.PathLike) -> Path:
    """A run folder as the user named it: the path itself, else that name inside the runs folder
    ($FER_RUNS_DIR), else inside checkpoints/; ValueError naming where it looked."""
    from core.util.fsutil import SHIPPED_DIR, runs_dir

    path = Path(target)
    candidates = [path, runs_dir() / path.name, SHIPPED_DIR / path.name]
    for c in candidates:
        if c.is_dir():
            return c
    raise ValueError(f"run folder {str(target)!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def export_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re-)export a run's weights to ONNX and record the parity check."""
    run_dir = find_run(run_dir)
    model, record = ck.load_model(run_dir)
    tta = record.config.get("tta", "none")  # a re-export keeps the run's test-time augmentation
    export_onnx(model, run_dir / rundir.ONNX, arch=record.model.arch, knobs=record.model.knobs,
                params=sum(p.numel() for p in model.parameters()), extra={"run": run_dir.name}, tta=tta)
    record.onnx = {"file": rundir.ONNX, "parity_max_abs": parity(with_tta(model, tta), run_dir / rundir.ONNX)}
    rundir.write_record(run_dir, record)
    return record.onnx


def ship_run(run_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a finished run's contract files (weights, ONNX, record) into `dest`, e.g. checkpoints/NAME.

    Paths in the record (data source, teacher) are made relative to the project, so shipped records name no
    machine's folders."""
    from core.util.fsutil import atomic_write_bytes, project_relative

    run_dir, dest = Path(run_dir), Path(dest)
    record = rundir.read_record(run_dir)
    # 'stopped' runs were evaluated and exported from their last finished epoch; the record says how many ran
    if record.status not in FINISHED or not (run_dir / rundir.ONNX).is_file():
        raise ValueError(f"{run_dir}: only finished or stopped runs with an ONNX export can be shipped "
                         f"(status {record.status!r})")

    rel = project_relative
    record.config = {**record.config, "data": rel(record.config.get("data")),
                     "teacher": rel(record.config.get("teacher"))}
    record.data = {**record.data, "source": rel(record.data.get("source"))}
    record.name, record.pid = dest.name, None
    for name in (rundir.WEIGHTS, rundir.ONNX):
        atomic_write_bytes(dest / name, (run_dir / name).read_bytes())
    rundir.write_record(dest, record)
    return dest
