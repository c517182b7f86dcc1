"""A training run end to end: folder, data, model, resume, per-epoch checkpoints, final evaluation and ONNX export."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from core import archs, checkpoint as ck
from core.config import TrainConfig
from core.data import FERData, load_data
from core.onnx_io import OnnxClassifier, export_onnx, parity
from core.summary import summarize
from core.train import (BatchHook, StopRun, TrainState, evaluate, fit, make_optimizer, metrics_from_logits, resolve_device,
                        stratified_subset)

OOM_MESSAGES = ("out of memory", "can't allocate memory")  # CUDA's and PyTorch CPU allocator's wording
TRAIN_EVAL_SAMPLE = 5000  # final train-split accuracy on a stratified sample: the full split costs minutes on CPU


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import onnxruntime
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def default_run_name(cfg: TrainConfig) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.arch}-w{cfg.width:g}-{stamp}-{secrets.token_hex(2)}"  # suffix: two runs started in one second


def recipe_text(cfg: TrainConfig) -> str:
    parts = [f"{cfg.optimizer} lr {cfg.lr:g}", f"{cfg.schedule} schedule", f"batch {cfg.batch_size}",
             "augmentation" if cfg.augment else "no augmentation"]
    if cfg.label_smoothing:
        parts.append(f"label smoothing {cfg.label_smoothing:g}")
    if cfg.weight_decay:
        parts.append(f"weight decay {cfg.weight_decay:g}")
    if cfg.teacher:
        parts.append(f"distilled from {Path(cfg.teacher).name} (T={cfg.distill_temperature:g}, alpha={cfg.distill_alpha:g})")
    if cfg.precision != "auto":
        parts.append(cfg.precision)
    return ", ".join(parts)


def new_record(name: str, cfg: TrainConfig, data: FERData, device: torch.device) -> dict[str, Any]:
    knobs = cfg.model_knobs()
    s = summarize(cfg.arch, **knobs)
    return {
        "format": ck.RECORD_FORMAT, "name": name, "status": "running", "error": None,
        "created": now_iso(), "updated": now_iso(), "pid": os.getpid(),
        "model": {"arch": cfg.arch, "knobs": knobs, "family": archs.get_family(cfg.arch).title},
        "params": s.params, "trainable": s.trainable, "macs": s.macs, "size_bytes": s.size_bytes,
        "data": {**data.describe(), "warnings": data.warnings},
        "config": cfg.to_dict(), "recipe": recipe_text(cfg),
        "epochs": [], "final": None, "wall_time_s": 0.0,
        "device": device.type if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "versions": versions(),
    }


def final_evaluation(model: torch.nn.Module, data: FERData, device: torch.device, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": {}, "per_class": {}, "confusion": {}, "n": {}}
    for name, split in data.splits.items():
        if name == "train" and len(split) > TRAIN_EVAL_SAMPLE:
            split = stratified_subset(split, TRAIN_EVAL_SAMPLE, seed)
        ev = evaluate(model, split, device)
        out["accuracy"][name] = ev["accuracy"]
        out["per_class"][name] = ev["per_class"]
        out["confusion"][name] = ev["confusion"]
        out["n"][name] = ev["n"]
    return out


def resolve_run_dir(cfg: TrainConfig, runs_root: str | os.PathLike | None = None, name: str | None = None,
                    run_dir: str | os.PathLike | None = None) -> Path:
    """An explicit run folder, or <runs folder>/<checked name or arch-width-timestamp>."""
    from core.fsutil import runs_dir

    if run_dir is not None:
        return Path(run_dir)
    return runs_dir(runs_root) / ck.check_run_name(name or default_run_name(cfg))


def run_training(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    on_batch: BatchHook | None = None,
    should_stop: Callable[[], bool] | None = None,
    data: FERData | None = None,
) -> Iterator[dict]:
    """Train into a run folder, yielding each epoch's metrics; resumes if the folder holds a resume state.

    After the last yield the folder holds model.pt, model.onnx and run.json with status 'done' (or 'stopped'
    after a stop request, or 'failed' with the reason)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    stop_file = run_dir / ck.STOP_FILE

    def stop_requested() -> bool:
        return (should_stop is not None and should_stop()) or stop_file.exists()

    record: dict[str, Any] | None = None
    try:
        data = data if data is not None else load_data(cfg.data, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
        model = archs.build(cfg.arch, **cfg.model_knobs())
        optimizer = make_optimizer(cfg, model)
        state = TrainState()
        resume_path = run_dir / ck.RESUME
        record = new_record(run_dir.name, cfg, data, device)
        if resume_path.exists():
            old = ck.read_record(run_dir)
            if old.get("config") != cfg.to_dict():
                raise ValueError(f"{run_dir}: holds a run with different settings; choose another run name to start anew")
            saved = ck.load_state_dict(resume_path)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = TrainState(epoch=int(saved["epoch"]), steps=int(saved["steps"]), history=list(old.get("epochs", [])))
            record.update(created=old.get("created", record["created"]), wall_time_s=float(old.get("wall_time_s", 0.0)),
                          epochs=state.history, resumed_from_epoch=state.epoch)
        ck.write_record(run_dir, record)
        teacher = None
        if cfg.teacher:
            teacher, _ = ck.load_model(cfg.teacher)
        t_start = time.perf_counter()
        wall0 = record["wall_time_s"]
        model.to(device)
        for metrics in fit(model, data, cfg, device=device, optimizer=optimizer, state=state, teacher=teacher,
                           on_batch=on_batch, should_stop=stop_requested):
            # Per-epoch checkpoint: weights first, then the resume state, then the record that points at them,
            # each written atomically, so a kill at any moment leaves the last finished epoch intact.
            cpu_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            ck.save_state_dict(run_dir / ck.WEIGHTS, cpu_state)
            ck.save_state_dict(resume_path, {"model": cpu_state, "optimizer": optimizer.state_dict(),
                                             "epoch": state.epoch, "steps": state.steps})
            record.update(epochs=state.history, updated=now_iso(), wall_time_s=wall0 + time.perf_counter() - t_start)
            ck.write_record(run_dir, record)
            yield metrics
        stopped = stop_requested()
        if not state.history:
            raise StopRun("stopped before the first epoch finished" if stopped else "no epoch was run")
        # A stop keeps the last finished epoch's weights (already on disk); a full run keeps the final weights.
        if stopped:
            model.load_state_dict(ck.load_state_dict(run_dir / ck.WEIGHTS))
        # Final metrics in fp32 on the training device (seconds on a GPU, where the CPU would take minutes for
        # the large models); the ONNX export below is checked against the same weights on the CPU.
        model.to(memory_format=torch.contiguous_format).float().eval()
        record["final"] = final_evaluation(model, data, device, cfg.seed)
        cpu_model = model.to("cpu")
        ck.save_state_dict(run_dir / ck.WEIGHTS, {k: v.contiguous() for k, v in cpu_model.state_dict().items()})
        export_onnx(cpu_model, run_dir / ck.ONNX, arch=cfg.arch, knobs=cfg.model_knobs(), params=record["params"],
                    extra={"run": run_dir.name, "val_accuracy": record["final"]["accuracy"].get(data.val_split)})
        record["onnx"] = {"file": ck.ONNX, "parity_max_abs": parity(cpu_model, run_dir / ck.ONNX)}
        record.update(status="stopped" if stopped else "done", updated=now_iso(),
                      wall_time_s=wall0 + time.perf_counter() - t_start)
        ck.write_record(run_dir, record)
        resume_path.unlink(missing_ok=True)
        stop_file.unlink(missing_ok=True)
    except (StopRun, ValueError, RuntimeError, MemoryError) as exc:
        # The reason is recorded for the app and CLI; finished epochs stay on disk and resumable.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, MemoryError) or any(m in reason.lower() for m in OOM_MESSAGES):
            reason = f"out of memory: {reason} (lower the batch size or width)"
        if record is not None:
            record.update(status="failed", error=reason, updated=now_iso())
            ck.write_record(run_dir, record)
        else:
            ck.write_record(run_dir, {"format": ck.RECORD_FORMAT, "name": run_dir.name, "status": "failed",
                                      "error": reason, "model": {"arch": cfg.arch, "knobs": {}}, "config": cfg.to_dict(),
                                      "created": now_iso(), "updated": now_iso(), "epochs": []})
        raise


def evaluate_path(target: str | os.PathLike, data: FERData, splits: list[str] | None = None) -> dict[str, dict]:
    """Evaluate a run folder or an .onnx file with ONNX Runtime (the deployed graph) on the given splits."""
    target = Path(target)
    onnx_path = target / ck.ONNX if target.is_dir() else target
    if target.is_dir() and not onnx_path.exists():
        raise ValueError(f"{target}: has no {ck.ONNX}; run `python -m core export {target}` first")
    clf = OnnxClassifier.get(onnx_path)
    names = splits or list(data.splits)
    unknown = [s for s in names if s not in data.splits]
    if unknown:
        raise ValueError(f"split(s) {unknown} not in {data.source}; available: {sorted(data.splits)}")
    results = {}
    for s in names:
        split = data.splits[s]
        logits = np.concatenate([clf.logits(split.images[i:i + 1024]) for i in range(0, len(split), 1024)]) if len(split) else np.zeros((0, 7), np.float32)
        results[s] = metrics_from_logits(logits, split.labels)
    return results


def export_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re-)export a run's weights to ONNX and record the parity check."""
    run_dir = Path(run_dir)
    model, record = ck.load_model(run_dir)
    export_onnx(model, run_dir / ck.ONNX, arch=record["model"]["arch"], knobs=record["model"].get("knobs", {}),
                params=sum(p.numel() for p in model.parameters()), extra={"run": run_dir.name})
    record["onnx"] = {"file": ck.ONNX, "parity_max_abs": parity(model, run_dir / ck.ONNX)}
    ck.write_record(run_dir, record)
    return record["onnx"]


def ship_run(run_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a finished run's contract files (weights, ONNX, record) into `dest`, e.g. checkpoints/NAME.

    Paths in the record (data source, teacher) are made relative to the project, so shipped records name no
    machine's folders."""
    from core.fsutil import PROJECT_ROOT, atomic_write_bytes

    run_dir, dest = Path(run_dir), Path(dest)
    record = ck.read_record(run_dir)
    # 'stopped' runs were evaluated and exported from their last finished epoch; the record says how many ran
    if record.get("status") not in ("done", "stopped") or not (run_dir / ck.ONNX).is_file():
        raise ValueError(f"{run_dir}: only finished or stopped runs with an ONNX export can be shipped "
                         f"(status {record.get('status')!r})")

    def rel(value: str | None) -> str | None:
        if not value or value == "synthetic" or not os.path.isabs(value):
            return value
        return os.path.relpath(value, PROJECT_ROOT)

    record["config"]["data"] = rel(record["config"].get("data"))
    record["config"]["teacher"] = rel(record["config"].get("teacher"))
    record["data"]["source"] = rel(record["data"].get("source"))
    record["name"] = dest.name
    record.pop("pid", None)
    for name in (ck.WEIGHTS, ck.ONNX):
        atomic_write_bytes(dest / name, (run_dir / name).read_bytes())
    ck.write_record(dest, record)
    return dest
