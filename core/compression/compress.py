"""Compression variants of a run (int8, fp16, pruned): each written whole into its own folder beside its parent
(`<parent>--<technique>`; variants of shipped checkpoints go to the runs folder, since no user command writes into
checkpoints/) and measured side by side with the fp32 parent. Their table is core.views.compressviews,
their chart core.views.charts.size_accuracy_chart and their command `python -m core compress` (core.cli)."""
from __future__ import annotations

import copy
import gzip
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from core.compression.int8_names import CALIBRATE_METHODS, INT8_METHODS, INT8_TYPE_NAMES
from core.training.config import check_fields, knob

if TYPE_CHECKING:  # annotations only
    from torch import nn

    from core.compression.quantize import Int8Recipe
    from core.training.record import RunRecord

SEP = "--"  # <parent-name>--<technique>
QUANTIZED = ("int8", "fp16")  # variants without fp32 weights: nothing further can be done to them
STAGES = ("calibration", "fine-tune", "evaluation", "latency")
Progress = Callable[[str, int, int], None]  # stage, done, total


@dataclass(frozen=True)
class CompressConfig:
    """What `python -m core compress` makes of a run. Like TrainConfig, each field carries its help, choices and
    bounds (core.training.config.knob): the CLI's flags, the Compress form, validation and the flags of a
    background job are generated from it."""

    int8: bool = knob(False, "int8 ONNX: static QDQ quantisation, per-channel weights (ONNX Runtime)",
                      label="int8 (static, per-channel)", group="main", form_default=True)
    fp16: bool = knob(False, "fp16 ONNX weights and compute; input and output stay fp32", label="fp16 weights",
                      group="main")
    prune: float | None = knob(None, "remove this fraction of weights (or of channels, with --structured), then "
                                     "fine-tune", low=0.01, high=0.99, label="Prune amount (0 = none)", group="main",
                               step=0.05)
    structured: bool = knob(False, "with --prune: remove whole channels, so layers really become narrower (fewer "
                                   "parameters, MACs and milliseconds)", label="structured (whole channels)",
                            group="main")
    finetune_epochs: int = knob(2, "epochs of fine-tuning after pruning", low=1, high=100, label="Fine-tune epochs",
                                group="main")
    calibration: int = knob(256, "training images that set the int8 activation ranges", low=1, high=100_000,
                            label="Calibration images (int8)", group="main", step=16)
    int8_method: str = knob("static-qdq", "int8 method", choices=INT8_METHODS, label="int8 method")
    int8_calibrate: str = knob("minmax", "how calibration sets the activation ranges", choices=CALIBRATE_METHODS,
                               label="Calibration method")
    int8_types: str = knob("u8s8", "activation x weight types", choices=INT8_TYPE_NAMES, label="int8 types")
    int8_reduce_range: bool = knob(True, "7-bit weights: no 16-bit saturation on CPUs without VNNI",
                                   label="7-bit weights (reduce_range)")
    # the first conv sees raw pixels (docs/compression.md measures what quantising it costs)
    quantize_stem: bool = knob(False, "quantise the first conv too (costs accuracy)", label="quantise the stem too")
    exclude_depthwise: bool = knob(False, "keep depthwise convs in fp32 (for the speed comparison)",
                                   label="keep depthwise convs fp32")
    data: str | None = knob(None, "PATH or 'synthetic' (default: the data the run was trained on)", group=None)
    finetune_steps: int | None = knob(None, "cap on fine-tuning steps (tests, quick demos)", low=1, high=10**9,
                                      group=None)
    repeats: int = knob(60, "latency runs per batch size (medians are reported)", low=3, high=10_000, group=None)

    def __post_init__(self) -> None:
        from core.compression.prune import check_amount

        if not (self.int8 or self.fp16 or self.prune is not None):
            raise ValueError("no technique chosen: give at least one of --int8, --fp16, --prune AMOUNT")
        if self.prune is not None:
            check_amount(self.prune)
        elif self.structured:
            raise ValueError("--structured needs --prune AMOUNT (the fraction of channels to remove)")
        self.int8_recipe()  # a bad method, calibration or type name fails here, named as the recipe names it
        check_fields(self)

    def int8_recipe(self) -> "Int8Recipe":
        from core.compression.quantize import Int8Recipe

        return Int8Recipe(method=self.int8_method, calibrate=self.int8_calibrate, reduce_range=self.int8_reduce_range,
                          types=self.int8_types, keep_stem_fp32=not self.quantize_stem,
                          exclude_depthwise=self.exclude_depthwise)

    def techniques(self) -> list[str]:
        out = []
        if self.prune is not None:
            out.append(f"pruned-{'channels-' if self.structured else ''}{self.prune:g}")
        if self.int8:
            out.append("int8")
        if self.fp16:
            out.append("fp16")
        return out


@dataclass
class Parent:
    path: Path
    record: dict[str, Any]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def technique(self) -> str | None:
        v = self.record.get("variant")
        return v.get("technique") if isinstance(v, dict) else None


def load_parent(run_dir: str | os.PathLike, techniques: list[str]) -> Parent:
    """The run to compress, checked: finished, with weights and a contract-keeping ONNX file, and not a variant
    that the techniques make no sense on."""
    import onnx

    from core.inference.onnx_io import check_onnx_file
    from core.training import rundir
    from core.training.record import FINISHED, RecordStatus

    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    record = rundir.read_record(path).to_json()  # a plain copy: the variant's record is a deep copy of it
    if record.get("status", RecordStatus.DONE) not in FINISHED:
        raise ValueError(f"{path}: run status is {record.get('status')!r}; only finished runs (done or stopped) can be compressed")
    parent = Parent(path, record)
    tech = parent.technique or ""
    if tech.split("-")[0] in QUANTIZED:
        raise ValueError(f"{path}: is already a {tech} variant of {record['variant'].get('parent')!r}; "
                         f"{', '.join(techniques)} apply to fp32 runs: compress {record['variant'].get('parent')!r} instead")
    if tech.startswith("pruned") and any(t.startswith("pruned") for t in techniques):
        raise ValueError(f"{path}: is already a {tech} variant; prune its parent {record['variant'].get('parent')!r} "
                         "with the amount you want instead")
    problem = rundir.weights_problem(path / rundir.WEIGHTS)
    if problem:
        raise ValueError(f"{problem}: a run without its weights cannot be compressed")
    check_onnx_file(path / rundir.ONNX)  # a damaged file fails here, with its reason
    parent.meta = {p.key: p.value for p in onnx.load(str(path / rundir.ONNX), load_external_data=False).metadata_props}
    return parent


def resolve_data(parent: Parent, source: str | None) -> tuple[Any, str]:
    """The data set to calibrate, fine-tune and measure on (the parent's own unless given) and the split to score."""
    from core.data import load_data
    from core.util.fsutil import PROJECT_ROOT

    cfg = parent.record.get("config", {})
    src = source or cfg.get("data") or parent.record.get("data", {}).get("source")
    if not src:
        raise ValueError(f"{parent.path}: the record names no data set; give --data PATH or synthetic")
    if src != "synthetic" and not Path(src).exists() and (PROJECT_ROOT / src).exists():
        src = str(PROJECT_ROOT / src)  # shipped records name the data relative to the project
    data = load_data(src, synthetic_size=int(cfg.get("synthetic_size", 6000)), seed=int(cfg.get("seed", 0))) \
        if src == "synthetic" else load_data(src)
    if "train" not in data.splits or len(data.splits["train"]) == 0:
        raise ValueError(f"{src}: has no training images to calibrate or fine-tune with")
    split = "public" if "public" in data.splits else data.val_split
    if len(data.splits[split]) == 0:
        raise ValueError(f"{src}: the {split!r} split is empty, so accuracy cannot be measured")
    return data, split


def data_note(parent: Parent, data: Any, given: str | None) -> dict[str, Any]:
    """Which data set calibrated, fine-tuned and measured the variant, the parent's, and whether they are the same
    (the same folder, or a copy with the same split sizes as the parent's record): a variant measured on other data
    than its parent was trained on is not comparable with the parent's own record, and says so."""
    from core.util.fsutil import PROJECT_ROOT

    pdata = parent.record.get("data") or {}
    psrc = parent.record.get("config", {}).get("data") or pdata.get("source")
    src = given or psrc

    def where(s: str | None) -> str | None:
        if not s or s == "synthetic":
            return s
        p = Path(s) if Path(s).is_absolute() else PROJECT_ROOT / s
        return str(p.resolve())

    same = where(src) == where(psrc) if src == "synthetic" or psrc == "synthetic" else (
        where(src) == where(psrc) or {k: len(v) for k, v in data.splits.items() if len(v)} == pdata.get("splits"))
    return {"data": src, "parent_data": psrc, "same_data": bool(same)}


def output_folder(parent: Parent, out: str | os.PathLike | None) -> Path:
    """Where the variants go: `out`, else beside the parent, except that a shipped checkpoint's variants go to the
    runs folder. Nothing is ever written into checkpoints/: the shipped models and their variants stay as shipped."""
    from core.util.fsutil import SHIPPED_DIR, runs_dir

    shipped = SHIPPED_DIR.resolve()

    def inside_shipped(p: Path) -> bool:
        r = p.resolve()
        return r == shipped or shipped in r.parents

    if out is not None:
        if inside_shipped(Path(out)):
            raise ValueError(f"--out {out}: is inside the shipped checkpoints folder ({SHIPPED_DIR}), which no command "
                             "writes into; give another folder, or leave --out out to use the runs folder")
        return Path(out)
    return runs_dir() if inside_shipped(parent.path) else parent.path.parent


def check_free(parent: Parent, techniques: list[str], out_root: Path, force: bool) -> None:
    """Refuse before any work when a variant of that name already exists and `force` was not given."""
    from core.training import rundir

    taken = [str(out_root / n) for n in (f"{parent.name}{SEP}{t}" for t in techniques)
             if (out_root / rundir.check_run_name(n)).exists()]
    if taken and not force:
        raise ValueError(f"{', '.join(taken)}: already exist{'s' if len(taken) == 1 else ''}; "
                         "give --force to replace, or --out FOLDER to write elsewhere")


# ---------------------------------------------------------------------------------------------------------
# Measurement: accuracy with ONNX Runtime, file size raw and gzipped, median latency at batch 1 and 64.
# ---------------------------------------------------------------------------------------------------------
def onnx_accuracy(path: Path, split: Any, progress: Progress | None = None, batch: int = 256) -> dict:
    from core.inference.onnx_io import OnnxClassifier
    from core.training.train import metrics_from_logits

    clf = OnnxClassifier(path)  # not the shared cache: temp folders come and go
    outs = []
    for i in range(0, len(split), batch):
        outs.append(clf.logits(split.images[i:i + batch]))
        if progress is not None:
            progress("evaluation", min(i + batch, len(split)), len(split))
    return metrics_from_logits(np.concatenate(outs), split.labels)


def file_sizes(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    return len(raw), len(gzip.compress(raw, 9))


def timing_session(path: Path) -> Any:
    """An ONNX Runtime session for timing: one thread, no spin-waiting. The app's sessions use two threads, but on a
    shared 2-core machine a second thread mostly measures the neighbours, and int8 vs fp32 is a per-kernel question."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def latencies(paths: list[Path], images: np.ndarray, repeats: int, progress: Progress | None = None) -> list[dict[int, float]]:
    """Median ms per run at batch 1 and 64 for each model, measured in alternating rounds so that load from other
    processes falls on all of them alike."""
    from core.inference.onnx_io import INPUT_NAME

    sessions = [timing_session(p) for p in paths]
    batches = {1: images[:1], 64: np.resize(images, (64, 48, 48))}
    batches = {b: x.astype(np.float32)[:, None] for b, x in batches.items()}
    times: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in paths]
    rounds = 3
    done, total = 0, rounds * len(paths) * len(batches)
    for _ in range(rounds):
        for sess, t in zip(sessions, times):
            for b, x in batches.items():
                sess.run(None, {INPUT_NAME: x})  # warm-up
                for _ in range(max(1, repeats // rounds // (4 if b > 1 else 1))):
                    t0 = time.perf_counter()
                    sess.run(None, {INPUT_NAME: x})
                    t[b].append((time.perf_counter() - t0) * 1e3)
                done += 1
                if progress is not None:
                    progress("latency", done, total)
    return [{b: statistics.median(v) for b, v in t.items()} for t in times]


# ---------------------------------------------------------------------------------------------------------
# Building one variant into a folder (a temp folder that becomes the variant only when everything worked).
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Built:
    compression: str  # the ONNX metadata value, e.g. int8-static-qdq-per-channel
    settings: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # measured facts of the build (sparsity, fine-tune)
    params: int | None = None  # changed parameter count (channel pruning)
    macs: int | None = None
    device: str = "cpu"  # where the build computed (ONNX Runtime's quantiser and converters run on the CPU)


def make_int8(model: "nn.Module | None", fallback: Path, arch: str, dst: Path, calib: np.ndarray | None,
              recipe: "Int8Recipe", *, fold: bool = True, on_batch: Callable[[int], None] | None = None) -> bool:
    """BN-folded fp32 export of `model` (or `fallback`, an ONNX file, when there is no model to fold) -> ONNX
    Runtime pre-processing -> int8 by `recipe` -> compact names, written to dst. Returns whether BN was folded.
    build_int8 and scripts/compression_levers.py share it, so the levers measured are the pipeline shipped."""
    from core.compression.quantize import (
        Calibration,
        compact_names,
        fold_batchnorm,
        preprocess,
        quantize_int8,
        stem_nodes,
    )
    from core.inference.onnx_io import export_onnx

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        folded, pre = Path(tmp) / "folded.onnx", Path(tmp) / "preprocessed.onnx"
        if model is not None:
            export_onnx(fold_batchnorm(model) if fold else model, folded, arch=arch, knobs={}, params=0)
        else:
            shutil.copyfile(fallback, folded)
        preprocess(folded, pre)
        reader = Calibration(calib, on_batch=on_batch) if recipe.static and calib is not None else None
        quantize_int8(pre, dst, reader, recipe, exclude=stem_nodes(pre) if recipe.keep_stem_fp32 else [])
    compact_names(dst)
    return model is not None and fold


def build_int8(parent: Parent, tmp: Path, cfg: CompressConfig, data: Any, progress: Progress | None) -> Built:
    """make_int8 on the parent's weights, calibrated on a stratified sample of its training images."""
    from core.training import checkpoint, rundir
    from core.training.train import stratified_subset

    try:
        model, _ = checkpoint.load_model(parent.path)
    except ValueError:  # channel-pruned weights do not fit the registry's model: start from its ONNX file
        model = None
    calib = stratified_subset(data.splits["train"], cfg.calibration, seed=0).images
    seen = [0]

    def on_batch(n: int) -> None:
        seen[0] += n
        if progress is not None:
            progress("calibration", seen[0], len(calib))

    recipe = cfg.int8_recipe()
    bn_folded = make_int8(model, parent.path / rundir.ONNX, parent.record["model"]["arch"], tmp / rundir.ONNX, calib,
                          recipe, on_batch=on_batch)
    settings = {**recipe.settings(), "bn_folded": bn_folded, "names_compacted": True}
    if recipe.static:
        settings.update(calibration_images=len(calib), calibration_split="train")
    return Built(f"int8-{cfg.int8_method}-per-channel", settings)


def build_fp16(parent: Parent, tmp: Path, cfg: CompressConfig, data: Any, progress: Progress | None) -> Built:
    from core.compression.quantize import to_fp16
    from core.training import rundir

    to_fp16(parent.path / rundir.ONNX, tmp / rundir.ONNX)
    return Built("fp16", {"weights": "fp16", "io": "fp32 (casts inside the graph)"})


def build_pruned(parent: Parent, tmp: Path, cfg: CompressConfig, data: Any, progress: Progress | None) -> Built:
    """Prune, fine-tune a few epochs with the parent's recipe (a tenth of its learning rate), save weights and ONNX."""
    from core.compression import prune
    from core.inference.onnx_io import export_onnx, parity
    from core.models.summary import summarize_model
    from core.training import checkpoint, rundir
    from core.training.runs import device_name
    from core.training.train import resolve_device

    model, _ = checkpoint.load_model(parent.path)
    record = parent.record
    if cfg.structured:
        model = prune.channel_prune(model, cfg.prune)
    else:
        prune.magnitude_prune(model, cfg.prune)
    ft = prune.finetune_config(record, cfg.finetune_epochs, cfg.finetune_steps, data.source)

    def on_batch(b: dict) -> None:
        if progress is not None:
            progress("fine-tune", b["global_step"], b["total_steps"])

    history = prune.finetune(model, data, ft, on_batch=on_batch)
    prune.make_permanent(model)
    checkpoint.save_state_dict(tmp / rundir.WEIGHTS, {k: v.contiguous() for k, v in model.state_dict().items()})
    s = summarize_model(copy.deepcopy(model))
    export_onnx(model, tmp / rundir.ONNX, arch=record["model"]["arch"], knobs=record["model"].get("knobs", {}), params=s.params)
    extra = {"sparsity": prune.sparsity(model), "nonzero_params": int(sum(int((p != 0).sum()) for p in model.parameters())),
             "finetune": [{k: m[k] for k in ("epoch", "train_acc", "val_acc", "val_split")} for m in history],
             "parity_max_abs": parity(model, tmp / rundir.ONNX)}
    kind = "channels" if cfg.structured else "magnitude"
    settings = {"amount": cfg.prune, "kind": kind, "scope": "per-layer channels (L2)" if cfg.structured else "global L1",
                "finetune_epochs": cfg.finetune_epochs, "finetune_steps": cfg.finetune_steps, "finetune_lr": ft.lr}
    tag = f"pruned-{'channels-' if cfg.structured else ''}{cfg.prune:g}"
    return Built(tag, settings, extra, params=s.params, macs=s.macs, device=device_name(resolve_device(ft.device)))


BUILDERS = {"int8": build_int8, "fp16": build_fp16, "pruned": build_pruned}


def stamp_metadata(path: Path, parent: Parent, name: str, compression: str, params: int | None) -> None:
    """The contract's metadata (the parent's, so classes, arch and width_mult stay) plus `compression`."""
    import onnx

    proto = onnx.load(str(path))
    meta = {**parent.meta, "run": name, "compression": compression}
    if params is not None:
        meta["params"] = str(int(params))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))


def variant_record(parent: Parent, name: str, technique: str, built: Built, measured: dict[str, Any],
                   metrics: dict[str, Any], split: str, note: dict[str, Any] | None = None,
                   wall_time_s: float = 0.0) -> dict[str, Any]:
    """A deep copy of the parent's record with the variant's name, its measured accuracy as `final`, and `variant`.
    Where, how long and with which libraries are the variant's own (its build and measurement, here), not the
    parent's training: a variant made on a CPU must not say it ran on the parent's GPU."""
    import platform

    import torch

    from core.training import rundir
    from core.training.record import now_iso
    from core.training.runs import versions

    rec = copy.deepcopy(parent.record)
    rec.pop("pid", None)
    rec.update(name=name, status="done", error=None, created=now_iso(), updated=now_iso(), device=built.device,
               wall_time_s=wall_time_s, cpu=platform.processor() or platform.machine(),
               threads=torch.get_num_threads(), versions=versions())
    if built.params is not None:
        rec["params"] = rec["trainable"] = built.params
    if built.macs is not None:
        rec["macs"] = built.macs
    rec["final"] = {"accuracy": {split: metrics["accuracy"]}, "per_class": {split: metrics["per_class"]},
                    "confusion": {split: metrics["confusion"]}, "n": {split: metrics["n"]}}
    rec["onnx"] = {"file": rundir.ONNX, "compression": built.compression}
    rec["variant"] = {"parent": parent.name, "technique": technique, "settings": {**built.settings, **(note or {})},
                      "measured": {**measured, **built.extra}}
    return rec


def _measure(parent: Parent, onnx_path: Path, data: Any, split: str, parent_eval: dict, cfg: CompressConfig,
             progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any]]:
    from core.compression.quantize import cpu_has_vnni
    from core.training import rundir

    metrics = onnx_accuracy(onnx_path, data.splits[split], progress)
    raw, gz = file_sizes(onnx_path)
    praw, pgz = file_sizes(parent.path / rundir.ONNX)
    lat, plat = latencies([onnx_path, parent.path / rundir.ONNX], data.splits[split].images[:64], cfg.repeats, progress)
    measured = {
        "accuracy": metrics["accuracy"], "split": split, "n": metrics["n"], "onnx_bytes": raw, "gzip_bytes": gz,
        "latency_ms_b1": lat[1], "latency_ms_b64": lat[64], "parent_accuracy": parent_eval["accuracy"],
        "delta": metrics["accuracy"] - parent_eval["accuracy"], "parent_onnx_bytes": praw, "parent_gzip_bytes": pgz,
        "parent_latency_ms_b1": plat[1], "parent_latency_ms_b64": plat[64],
        "size_ratio": raw / praw, "load_avg_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "cpu_vnni": cpu_has_vnni(), "speedup_b1": plat[1] / lat[1], "speedup_b64": plat[64] / lat[64],
    }
    return measured, metrics


def write_variant(parent: Parent, technique: str, out_root: Path, cfg: CompressConfig, data: Any, split: str,
                  parent_eval: dict, progress: Progress | None = None, note: dict[str, Any] | None = None) -> Path:
    """Build, stamp, check and measure one variant in a hidden temp folder, then rename it into place (replacing
    an older variant of the same name only at that last step). On any error the temp folder is removed."""
    from core.inference.onnx_io import check_onnx_file
    from core.training import rundir
    from core.training.record import RunRecord
    from core.util.fsutil import UMASK

    name = rundir.check_run_name(f"{parent.name}{SEP}{technique}")
    final = out_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_root))
    started = time.perf_counter()
    try:
        built = BUILDERS[technique.split("-")[0]](parent, tmp, cfg, data, progress)
        stamp_metadata(tmp / rundir.ONNX, parent, name, built.compression, built.params)
        check_onnx_file(tmp / rundir.ONNX)
        measured, metrics = _measure(parent, tmp / rundir.ONNX, data, split, parent_eval, cfg, progress)
        record = RunRecord.from_json(variant_record(parent, name, technique, built, measured, metrics, split, note,
                                                    wall_time_s=time.perf_counter() - started))
        rundir.write_record(tmp, record)
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes it private; a run folder gets normal permissions
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=out_root))
            os.replace(final, old / name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def compress_run(run_dir: str | os.PathLike, cfg: CompressConfig, *, out: str | os.PathLike | None = None,
                 progress: Progress | None = None, log: Callable[[str], None] | None = None,
                 force: bool = False) -> list[dict[str, Any]]:
    """Write every variant cfg asks for, each of the parent itself, into output_folder (beside a user run, the runs
    folder for a shipped one, or `out`), and return their table rows. An existing variant is replaced only with
    `force`. To chain techniques (int8 of a pruned model), compress the pruned variant."""
    from core.training import rundir

    techniques = cfg.techniques()
    parent = load_parent(run_dir, techniques)
    out_root = output_folder(parent, out)
    check_free(parent, techniques, out_root, force)
    data, split = resolve_data(parent, cfg.data)
    note = data_note(parent, data, cfg.data)
    if log is not None and not note["same_data"]:
        log(f"note: measuring on {note['data']}, not on {note['parent_data']} that {parent.name} was trained on; "
            "the variant's record says so")
    out_root.mkdir(parents=True, exist_ok=True)
    parent_eval = onnx_accuracy(parent.path / rundir.ONNX, data.splits[split], progress)
    if log is not None:
        log(f"{parent.name}: fp32 accuracy {parent_eval['accuracy']:.4f} on {split} ({parent_eval['n']:,} images)")
    rows = []
    for technique in techniques:
        path = write_variant(parent, technique, out_root, cfg, data, split, parent_eval, progress, note)
        rows.append(variant_row(path, rundir.read_record(path)))
        if log is not None:
            r = rows[-1]
            log(f"{r['name']}: accuracy {r['accuracy']:.4f} ({r['delta'] * 100:+.1f} points), {r['onnx_bytes']:,} bytes "
                f"({r['size_ratio']:.2f}x), batch 64 {r['latency_ms_b64']:.2f} ms ({r['speedup_b64']:.2f}x faster)")
    return rows


# ---------------------------------------------------------------------------------------------------------
# The table of variants (Compare, Predict, the Compress page and docs/study.md read it).
# ---------------------------------------------------------------------------------------------------------
VARIANT_COLUMNS = ("name", "parent", "technique", "arch", "width", "params", "macs", "onnx_bytes", "gzip_bytes",
                   "latency_ms_b1", "latency_ms_b64", "accuracy", "split", "parent_accuracy", "delta", "size_ratio",
                   "speedup_b1", "speedup_b64", "sparsity", "parent_onnx_bytes", "parent_gzip_bytes",
                   "parent_latency_ms_b1", "parent_latency_ms_b64", "load_avg_1min", "data", "same_data", "path")


def variant_row(path: Path, record: "RunRecord") -> dict[str, Any]:
    v = record.variant
    row = {"name": record.name or path.name, "parent": v.parent, "technique": v.technique, "arch": record.model.arch,
           "width": record.model.knobs.get("width"), "params": record.params, "macs": record.macs, "path": str(path)}
    row.update({k: v.measured.get(k) for k in VARIANT_COLUMNS if k not in row})
    # variants made before the record named its data were made on their parent's (the shipped ones on FER2013)
    row["data"] = v.settings.get("data") or (record.data or {}).get("source")
    row["same_data"] = v.settings.get("same_data", True)
    return row
