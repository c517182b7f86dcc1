"""Command line: `python -m core summary|train|export|evaluate|predict|bench|study|compress|sweep|campaign` (see --help on each)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence


def _print_json(obj: Any) -> None:
    from core.util.fsutil import json_default

    print(json.dumps(obj, default=json_default, allow_nan=True))


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def cmd_summary(a: argparse.Namespace) -> int:
    from core.models.summary import summarize

    knobs = {"width": a.width}
    if a.dropout is not None:
        knobs["dropout"] = a.dropout
    s = summarize(a.arch, **knobs)
    if a.json:
        _print_json(s.as_dict())
        return 0
    print(s.layers.to_string(index=False))
    print(f"\n{a.arch} {s.knobs}")
    print(f"params     {_fmt_int(s.params)} ({_fmt_int(s.trainable)} trainable)")
    print(f"MACs       {_fmt_int(s.macs)} per 48x48 image")
    print(f"fp32 size  {s.size_bytes / 2**20:.2f} MiB (parameters + buffers)")
    return 0


class _ProgressWriter:
    """Writes the latest batch's position atomically, at most every `interval` seconds and at each epoch's end."""

    def __init__(self, path: Path, epochs: int, interval: float = 0.5) -> None:
        import time

        self.path, self.epochs, self.interval = path, epochs, interval
        self.clock = time.monotonic
        self.t0 = self.clock()  # reset at the first batch
        self.last = float("-inf")
        self.first_step: int | None = None  # a resumed run starts part-way; the ETA counts this process's steps
        self.latest: dict | None = None

    def __call__(self, b: dict) -> None:
        now = self.clock()
        if self.first_step is None:  # start the clock at the first batch: data loading is not training time
            self.first_step = b["global_step"] - 1
            self.t0 = now - b["seconds"]
        if now - self.last < self.interval and b["step"] < b["steps"] and b["global_step"] < b["total_steps"]:
            return
        self.last = now
        self.latest = b
        self.write(b)

    def write(self, b: dict, **extra: object) -> None:
        import time

        from core.util.fsutil import atomic_write_json

        atomic_write_json(self.path, {
            "epoch": b["epoch"], "epochs": self.epochs, "step": b["step"], "steps": b["steps"],
            "global_step": b["global_step"], "total_steps": b["total_steps"], "first_step": self.first_step,
            "loss": b["loss"], "lr": b["lr"], "seconds": b["seconds"], "elapsed": self.clock() - self.t0,
            "time": time.time(), **extra})

    def stage(self, name: str) -> None:
        """After the last step: the latest position plus the stage now running, so the app shows it, not a full bar."""
        if self.latest is not None:
            self.write(self.latest, stage=name)


def _progress_bar(quiet: bool, epochs: int, progress: "_ProgressWriter | None"):  # noqa: ANN202 - (hook, close)
    """A tqdm bar made at the first batch (so nothing prints while data loads), fed from the per-batch hook."""
    from tqdm import tqdm

    bar: list = []

    def on_batch(b: dict) -> None:
        if progress is not None:
            progress(b)
        if quiet:
            return
        if not bar:
            bar.append(tqdm(total=b["total_steps"], initial=b["global_step"] - 1, unit="step", dynamic_ncols=True,
                            file=sys.stderr))
        bar[0].n = b["global_step"]
        bar[0].set_description(f"epoch {b['epoch']}/{epochs}", refresh=False)
        bar[0].set_postfix(loss=f"{b['loss']:.3f}", lr=f"{b['lr']:.2e}", refresh=False)
        bar[0].update(0)

    def write(text: str) -> None:
        (bar[0].write if bar else print)(text, file=sys.stderr)

    def close() -> None:
        if bar:
            bar[0].close()
            bar.clear()  # closed once, when the steps end: a later close must not print it again

    def on_stage(name: str) -> None:
        """The steps are over: close the bar (its time is the training's) and say what runs now."""
        close()
        if progress is not None:
            progress.stage(name)
        if not quiet:
            print(f"{name}...", file=sys.stderr)

    return on_batch, write, close, on_stage


def cmd_train(a: argparse.Namespace) -> int:
    from core.data import load_data
    from core.service.jobs import check_inputs, claim_run_dir
    from core.training import rundir
    from core.training.config import config_from_args
    from core.training.runs import resolve_run_dir, run_training

    cfg = config_from_args(a)
    # A fresh CLI run checks its inputs (data roots, teacher and start-from folders, as the app's Start does) and
    # loads its data before any folder is made, so bad input leaves nothing behind; background runs (--run-dir,
    # checked when they were queued) load inside run_training, which records a failure for the app to show.
    if not a.run_dir:
        check_inputs(cfg)
    data = None if a.run_dir else load_data(cfg.data, synthetic_size=cfg.synthetic_size, seed=cfg.seed)
    if data is not None and not a.quiet:
        for warning in data.warnings:
            print(f"data warning: {warning}", file=sys.stderr)
    run_dir = resolve_run_dir(cfg, a.out, a.name, a.run_dir)
    claim_run_dir(run_dir)  # its lock stays held until this process exits, however it exits: one trainer per run
    # Background runs read a small progress file for a per-step bar with ETA; run.json is only written per epoch.
    # Throttled to twice a second so it costs nothing measurable.
    progress = _ProgressWriter(run_dir / rundir.PROGRESS_FILE, cfg.epochs) if a.run_dir else None
    on_batch, write, close, on_stage = _progress_bar(a.quiet, cfg.epochs, progress)
    last: dict = {}
    try:
        for m in run_training(cfg, run_dir, on_batch=on_batch, data=data, on_stage=on_stage):
            last = m
            # "during training": the running average over the epoch's augmented batches, in training mode; the
            # result's train accuracy is measured afterwards in eval mode on a sample, so it differs
            write(f"epoch {m['epoch']}: during training loss {m['train_loss']:.4f} acc {m['train_acc']:.4f} | "
                  f"{m['val_split']} loss {m['val_loss']:.4f} acc {m['val_acc']:.4f} | {m['images_per_s']:.0f} img/s")
    finally:
        close()
    record = rundir.read_record(run_dir)
    acc = record.final.accuracy if record.final else {}
    result = {
        "run_dir": str(run_dir), "status": record.status, "arch": cfg.arch, "knobs": record.model.knobs,
        "params": record.params, "macs": record.macs, "epochs": len(record.epochs),
        "images_per_s": last.get("images_per_s"), "accuracy": acc, "wall_time_s": record.wall_time_s,
        "device": record.device, "onnx": str(run_dir / rundir.ONNX), "data_warnings": record.data.get("warnings", []),
    }
    if a.json:
        _print_json(result)
    else:
        accs = ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
        print(f"{record.status}: {run_dir}\n{cfg.arch} {_fmt_int(result['params'] or 0)} params, accuracy: {accs}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from core.training.runs import export_run, find_run

    run_dir = find_run(a.run_dir)
    info = export_run(run_dir)
    if a.json:
        _print_json({"run_dir": str(run_dir), **info})
    else:
        print(f"exported {run_dir / info['file']} (max |PyTorch - ONNX Runtime| = {info['parity_max_abs']:.2e})")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from core.data import load_data
    from core.training.runs import evaluate_path, evaluate_with_tta
    from core.util.classes import CLASSES

    if a.tta and Path(a.target).is_file():
        raise ValueError(f"--tta needs a run folder (its weights are exported with the views), not {a.target!r}")
    data = load_data(a.data)
    splits = a.split or [s for s in data.splits if s != "train"] or list(data.splits)
    results = evaluate_with_tta(a.target, data, a.tta, splits) if a.tta else evaluate_path(a.target, data, splits)
    if a.json:
        _print_json({"target": a.target, "tta": a.tta, "data": data.describe(), "results": results})
        return 0
    for s, r in results.items():
        print(f"{s}: accuracy {r['accuracy']:.4f} on {r['n']:,} images (loss {r['loss']:.4f})")
        print("  per class: " + ", ".join(f"{c} {v:.3f}" for c, v in zip(CLASSES, r["per_class"])))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from core.inference.onnx_io import OnnxClassifier
    from core.inference.photo import analyze_photo
    from core.util.classes import CLASSES

    model = Path(a.model)
    if not model.is_file() and model.suffix != ".onnx":  # a run folder or name, as export and evaluate take
        from core.training import rundir
        from core.training.runs import find_run

        model = find_run(a.model) / rundir.ONNX
    OnnxClassifier.get(model)  # a missing or broken model is the first thing to say, before any photo
    out, failed = [], 0
    for img in a.images:
        p = Path(img)
        try:
            data = p.read_bytes()
            r = analyze_photo(data, p.name, model)
        except (OSError, ValueError) as exc:
            failed += 1
            msg = str(exc) if isinstance(exc, ValueError) else f"{p}: cannot read file ({exc.strerror})"
            out.append({"image": str(p), "error": msg})
            if not a.json:
                print(f"error: {msg}", file=sys.stderr)
            continue
        faces = [{"box": list(f.box), "top": f.top, "confidence": f.confidence, "no_face_found": f.fallback,
                  "probs": dict(zip(CLASSES, map(float, f.probs)))} for f in r.faces]
        out.append({"image": str(p), "faces": faces, "timings_ms": r.timings_ms})
        if not a.json:
            for i, f in enumerate(r.faces, 1):
                where = "no face found, centre crop" if f.fallback else f"face {i} at {f.box}"
                print(f"{p.name}: {where}: {f.top} ({f.confidence:.1%})")
    if a.json:
        _print_json(out)
    return 1 if failed and failed == len(a.images) else 0


def cmd_bench(a: argparse.Namespace) -> int:
    from bench.harness import SECTIONS, parse_sections  # outside the library; imported only when asked for
    from bench.harness import main as bench_main

    sections = parse_sections(a.sections) if a.sections else SECTIONS
    # a partial run prints its sections and writes a file only where --out says: docs/benchmarks.md stays one run
    out = a.out if a.out or a.sections else "docs/benchmarks.md"
    return bench_main(quick=a.quick, data=a.data, out=out, sections=sections)


def cmd_study(a: argparse.Namespace) -> int:
    from core.views.study import write_study

    path = write_study(a.out)
    print(f"wrote {path}")
    return 0


JSON_HELP = "print one JSON object (the last line printed)"


def _add_summary(sub: argparse._SubParsersAction) -> None:
    from core.models.archs import WIDTH_MAX, WIDTH_MIN, list_archs

    s = sub.add_parser("summary", help="parameters, MACs, size and layer table of an architecture",
                       description="Parameters, MACs, fp32 size and the layer table of an architecture, computed "
                                   "from shapes alone (no weights are allocated).")
    s.add_argument("--arch", required=True, choices=list_archs())
    s.add_argument("--width", type=float, default=1.0, help=f"width multiplier, {WIDTH_MIN} to {WIDTH_MAX}; default: 1.0")
    s.add_argument("--dropout", type=float, default=None, help="dropout probability (the family's default if omitted)")
    s.add_argument("--json", action="store_true", help=JSON_HELP)
    s.set_defaults(func=cmd_summary)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from core.training.config import add_train_arguments

    t = sub.add_parser("train", help="train a model, save a checkpoint folder and export ONNX",
                       description="Train a model into a run folder (weights, ONNX export, run.json). Every training "
                                   "setting below comes from core.training.config.TrainConfig.")
    add_train_arguments(t)
    t.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS_DIR, else ./runs)")
    t.add_argument("--name", default=None, help="run folder name (default: arch-width-timestamp)")
    t.add_argument("--run-dir", default=None, help="exact run folder; an unfinished run there is resumed")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help=JSON_HELP)
    t.set_defaults(func=cmd_train)


def _add_model_io(sub: argparse._SubParsersAction) -> None:
    from core.data.augment import TTA_MODES

    e = sub.add_parser("export", help="(re-)export a run folder's weights to ONNX",
                       description="Re-export a run's weights to model.onnx and record the PyTorch/ONNX parity check.")
    e.add_argument("run_dir", help="a run folder, or a run's name in the runs folder or checkpoints/")
    e.add_argument("--json", action="store_true", help=JSON_HELP)
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("evaluate", help="accuracy of a run folder or .onnx model on a dataset (ONNX Runtime)")
    v.add_argument("target", help="run folder or model.onnx")
    v.add_argument("--data", required=True, help="'synthetic' or a path to FER2013")
    v.add_argument("--split", action="append", default=None,
                   help="split name (train, public, private, val); repeatable; default: every split but train")
    v.add_argument("--tta", choices=TTA_MODES, default=None,
                   help="a run folder's weights with this test-time augmentation folded into a fresh ONNX graph "
                        "(the run's files are not changed); default: the run's own model.onnx")
    v.add_argument("--json", action="store_true", help=JSON_HELP)
    v.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="detect faces in photos and classify their expressions",
                       description="Find the faces in each photo (MTCNN, else OpenCV's Haar detector; the centre "
                                   "square when none is found), crop them to 48x48 grayscale as FER2013's are, and "
                                   "classify them with an ONNX model in ONNX Runtime.")
    r.add_argument("--model", required=True,
                   help="a run folder or its name (e.g. checkpoints/mobilenet-w1), or an .onnx model following the contract")
    r.add_argument("images", nargs="+", help="photo files (JPEG, PNG, WebP, BMP, GIF, TIFF)")
    r.add_argument("--json", action="store_true",
                   help="print a JSON array with one object per photo (its faces, or its error) instead of text")
    r.set_defaults(func=cmd_predict)


def _add_docs(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="speed benchmarks against plain PyTorch/torchvision; writes docs/benchmarks.md",
                       description="Measure training throughput and memory, inference, face detection, Inside and "
                                   "the gallery, data loading and the model summary on this machine, each side by "
                                   "side with plain PyTorch/torchvision, and write the report (docs/benchmarks.md).")
    b.add_argument("--quick", action="store_true", help="short run (fewer repeats and steps)")
    b.add_argument("--data", default=None, help="FER2013 path (synthetic data when absent)")
    b.add_argument("--out", default=None, help="where to write the report; default: docs/benchmarks.md for a full run, "
                                               "none (printed only) with --sections")
    b.add_argument("--sections", default=None,
                   help="comma-separated parts to run alone, e.g. photo,faces (training, parallel, cuda, cli, memory, "
                        "peak, inference, photo, faces, data, summary); default: all")
    b.set_defaults(func=cmd_bench)

    st = sub.add_parser("study", help="regenerate docs/study.md and its charts from the checkpoint records",
                        description="Regenerate docs/study.md (the width study's tables and findings) and its charts "
                                    "from the shipped checkpoints' run.json records; nothing is trained or measured.")
    st.add_argument("--out", default="docs", help="folder for study.md and its charts; default: docs")
    st.set_defaults(func=cmd_study)


# ---------------------------------------------------------------------------------------------------------
# `python -m core compress RUN ...`: imports stay inside the handler, so `python -m core --help` loads neither
# torch nor onnxruntime.
# ---------------------------------------------------------------------------------------------------------
class ProgressReporter:
    """One tqdm bar per stage on stderr, and optionally a small JSON progress file (the app's background job reads
    it), written at most every `interval` seconds and at each stage's end."""

    def __init__(self, path: Path | None, quiet: bool, interval: float = 0.5) -> None:
        self.path, self.quiet, self.interval = path, quiet, interval
        self.bar: Any = None
        self.stage: str | None = None
        self.last = float("-inf")
        self.variant = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            if self.bar is not None:
                self.bar.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{self.variant} {stage}".strip(), unit="img" if stage in
                            ("calibration", "evaluation") else "step", disable=self.quiet, file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()
        now = time.monotonic()
        if self.path is not None and (now - self.last >= self.interval or done >= total):
            from core.util.fsutil import atomic_write_json

            self.last = now
            atomic_write_json(self.path, {"stage": stage, "done": done, "total": total, "variant": self.variant,
                                          "time": time.time()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_compress(a: argparse.Namespace) -> int:
    from core.compression.compress import CompressConfig, compress_run
    from core.training.config import config_from_args
    from core.util.fsutil import json_default

    if a.job_dir:  # started by the app's queue: confirm that launch first, so that even a refusal below is its end
        from core.service.launcher import confirm, job_files

        confirm(job_files(Path(a.job_dir)))
    cfg = config_from_args(a, CompressConfig)
    reporter = ProgressReporter(Path(a.progress) if a.progress else None, a.quiet)

    def log(msg: str) -> None:
        if not a.json:
            print(msg, file=sys.stderr)

    try:
        rows = compress_run(a.run, cfg, out=a.out, progress=reporter, log=log, force=a.force)
    finally:
        reporter.close()
    if a.json:
        print(json.dumps({"run": a.run, "variants": rows}, default=json_default, allow_nan=True))
    else:
        for r in rows:
            print(f"wrote {r['path']}")
    return 0


def _add_compress(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compress", help="int8, fp16 and pruned variants of a run, each measured against it")
    c.add_argument("run", help="run folder (e.g. checkpoints/mobilenet-w1)")
    from core.compression.compress import CompressConfig
    from core.training.config import add_config_arguments

    add_config_arguments(c, CompressConfig)  # one flag per CompressConfig field, with its help, bounds and choices
    c.add_argument("--out", default=None, help="folder for the variants (default: beside a run of yours; the runs "
                   "folder for a shipped checkpoint, since nothing is written into checkpoints/)")
    c.add_argument("--force", action="store_true", help="replace a variant of the same name (default: refuse)")
    c.add_argument("--progress", default=None, help="also write progress as JSON to this file (for the app)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    c.add_argument("--job-dir", default=None, help=argparse.SUPPRESS)  # the app's job folder (core.service.launcher)
    c.set_defaults(func=cmd_compress)


# ---------------------------------------------------------------------------------------------------------
# `python -m core sweep`: nothing here imports Ray or torch until the command runs.
# ---------------------------------------------------------------------------------------------------------
SWEEP_OPTIONS = ("file", "name", "seeds", "address", "cpus_per_trial", "gpus_per_trial", "max_failures", "yes",
                 "allow_huge_grid", "out", "quiet", "json")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    """The `sweep` subcommand: one flag per TrainConfig knob, each taking one or more values."""
    from dataclasses import fields

    from core.service.sweep import MAX_TRIALS, MAX_TRIALS_WITHOUT_YES
    from core.training.config import TrainConfig

    s = sub.add_parser("sweep", help="a grid of trainings over any training settings, run by Ray Tune",
                       description="Every combination of the values given, times --seeds, each trained into its "
                       "own run folder by Ray Tune (embedded here, or an existing cluster with --address). "
                       "Example: --arch mobilenet plain_cnn --width 0.25 0.5 1 --seeds 3 --epochs 30 --data PATH")
    for f in fields(TrainConfig):
        if f.name != "seed":
            s.add_argument("--" + f.name.replace("_", "-"), dest=f.name, nargs="+", default=None, metavar="V",
                           help=f"values of {f.name} ({f.type})")
    s.add_argument("--file", default=None, help="a TOML sweep file ([grid], [fixed], seeds, name); flags add to it")
    s.add_argument("--name", default=None, help="sweep name (default sweep-DATE); the same name resumes a sweep")
    s.add_argument("--seeds", default=None, help="number of seeds per grid point (0..N-1), default 1")
    s.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT (default: $RAY_ADDRESS, "
                   "else Ray starts on this machine)")
    s.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial holds (fractions allowed)")
    s.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs each trial holds (fractions allowed)")
    s.add_argument("--max-failures", type=int, default=2, help="restarts of a failed trial (it resumes its epochs)")
    s.add_argument("--yes", action="store_true", help=f"run grids of more than {MAX_TRIALS_WITHOUT_YES} trials")
    s.add_argument("--allow-huge-grid", action="store_true",
                   help=f"with --yes: run grids of more than {MAX_TRIALS:,} trials")
    s.add_argument("--out", default=None, help="runs folder (default: $FER_RUNS_DIR or ./runs)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the sweep record as one JSON object")
    s.set_defaults(func=cmd_sweep)


def spec_from_args(a: argparse.Namespace) -> Any:
    """The SweepSpec the flags ask for: flags with one value are fixed settings, flags with several are grid
    dimensions; --file adds to them."""
    from core.service.sweep import SweepSpec, convert, default_name, seed_list, spec_from_toml

    spec = spec_from_toml(a.file, a.name) if a.file else SweepSpec(a.name or default_name(), {}, {}, [0])
    for knob, values in vars(a).items():
        if knob in SWEEP_OPTIONS or knob in ("command", "func") or values is None:
            continue
        converted = [convert(knob, v) for v in values]
        if len(converted) == 1:
            spec.fixed[knob] = converted[0]
            spec.grid.pop(knob, None)
        else:
            spec.grid[knob] = converted
            spec.fixed.pop(knob, None)
    if a.seeds is not None:
        if not a.seeds.isdigit():
            raise ValueError(f"--seeds must be a count (0..N-1 are used), got {a.seeds!r}")
        spec.seeds = seed_list(int(a.seeds))
    return spec


def cmd_sweep(a: argparse.Namespace) -> int:
    from core.service.sweep import SWEEP_FILE, check_size, count, expand, run_sweep, sweep_dir
    from core.util.fsutil import json_default

    if a.name:  # the app's queue names the sweep: confirm its launch (core.service.launcher) before anything else
        from core.service.launcher import confirm, job_files

        confirm(job_files(sweep_dir(a.out, a.name)))
    spec = spec_from_args(a)
    check_size(count(spec), a.yes, a.allow_huge_grid)  # from the value counts, before building 10,000 configs
    trials = expand(spec)
    state = run_sweep(trials, spec.name, spec_doc=spec.describe(), runs_root=a.out, address=a.address,
                      cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                      max_failures=a.max_failures, yes=a.yes, allow_huge_grid=a.allow_huge_grid, quiet=a.quiet)
    if a.json:
        print(json.dumps(state, default=json_default))
    else:
        for t in state["trials"]:
            acc = t.get("val_acc")
            print(f"{t['state']:8} {t['run']}  epoch {t['epoch']}/{t['epochs']}"
                  + (f"  val acc {acc:.4f}" if isinstance(acc, float) else "")
                  + (f"  ({t['failures']} failures)" if t["failures"] else "")
                  + (f"  {t['error']}" if t["state"] != "done" and t.get("error") else ""))
        reason = f" ({state['error']})" if state.get("error") else ""
        print(f"sweep {spec.name}: {state['state']}{reason}; record in {sweep_dir(a.out, spec.name) / SWEEP_FILE}")
    return 0 if state["state"] == "done" else 1


# ---------------------------------------------------------------------------------------------------------
# `python -m core campaign`
# ---------------------------------------------------------------------------------------------------------
def _add_campaign(sub: argparse._SubParsersAction) -> None:
    from core.service import campaign
    from core.service.campaign import DEFAULT_FILE, DEFAULT_OUT, LOG_FILE

    c = sub.add_parser("campaign", help="run the committed training campaign until a deadline (resumable)",
                       description=campaign.__doc__.split("\n\n")[1])
    c.add_argument("file", nargs="?", default=str(DEFAULT_FILE), help="campaign file (default campaign/campaign.toml)")
    c.add_argument("--deadline", default=None, help="stop by HH:MM, an ISO date-time, or +N[s|m|h]; default: none")
    c.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the trials' run folders (default campaign/trials)")
    c.add_argument("--only", default=None, help="run only trials whose name contains this text")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    c.add_argument("--nice", type=int, default=19, help="scheduling niceness, 0-19 (default 19: yields to all else)")
    c.add_argument("--background", action="store_true", help=f"detach, logging to OUT/{LOG_FILE}; prints the pid")
    c.add_argument("--workers", type=int, default=1,
                   help="with --background: trials trained side by side, each on its own share of the cores "
                        "(default 1; on a 2-core machine 2 trained small models 1.1-1.2x faster, docs/bench_parallel.md)")
    c.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # which one this process is
    c.add_argument("--status", action="store_true", help="list the trials and where each stands; trains nothing")
    c.add_argument("--stop", action="store_true", help="ask the campaign running on OUT to stop now, as at a deadline "
                   "(the current trial ends after its batch, evaluated, exported and resumable)")
    c.set_defaults(func=cmd_campaign)


def _selected(a: argparse.Namespace) -> list[Any]:
    from core.service.campaign import load_campaign

    trials = load_campaign(a.file)
    if a.only:
        trials = [t for t in trials if a.only in t.name]
        if not trials:
            raise ValueError(f"--only {a.only!r}: no trial name contains it")
    return trials


def cmd_campaign(a: argparse.Namespace) -> int:
    import datetime as _dt

    from core.service.campaign import STOP_FILE, Deadline, lock, parse_deadline, progress_lines, run_campaign, states
    from core.util.fsutil import PROJECT_ROOT
    from core.util.procs import lower_priority
    from core.util.settings import usable_cores

    trials, out = _selected(a), Path(a.out).resolve()
    at = parse_deadline(a.deadline)
    if a.threads is not None and not 1 <= a.threads <= 1024:
        raise ValueError(f"--threads must be from 1 to 1024, got {a.threads}")
    cores = usable_cores()
    if not 1 <= a.workers <= cores:
        raise ValueError(f"--workers must be from 1 to this machine's {cores} cores, got {a.workers}")
    if a.workers > 1 and not a.background:
        raise ValueError("--workers needs --background: the workers are processes of their own, each logging to "
                         "the campaign's log")
    if not 0 <= a.nice <= 19:
        raise ValueError(f"--nice must be from 0 to 19, got {a.nice}")
    if a.status:
        print("\n".join(progress_lines(states(trials, out))))
        return 0
    if a.stop:
        out.mkdir(parents=True, exist_ok=True)
        (out / STOP_FILE).touch()
        print(f"asked the campaign on {out} to stop; it ends its current batch, then evaluates and exports")
        return 0
    if a.background:
        return _detach(a, out)
    handle = lock(out, a.worker)
    if a.worker == 0:
        (out / STOP_FILE).unlink(missing_ok=True)  # a request left from an earlier campaign is not this one's
    os.chdir(PROJECT_ROOT)  # relative data paths in the campaign file are the project's
    lower_priority(a.nice)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    def log(line: str) -> None:
        print(f"{_dt.datetime.now():%H:%M:%S} {line}", flush=True)

    try:
        rows = run_campaign(trials, out, Deadline(at, stop_file=out / STOP_FILE), log)
    finally:
        handle.close()
    for line in progress_lines(rows):
        log(line)
    return 0


def _detach(a: argparse.Namespace, out: Path) -> int:
    from core.service.campaign import LOG_FILE, STOP_FILE
    from core.util.procs import spawn_detached
    from core.util.settings import usable_cores

    out.mkdir(parents=True, exist_ok=True)
    (out / STOP_FILE).unlink(missing_ok=True)  # before any worker starts: a request left from an earlier campaign
    cmd = [sys.executable, "-m", "core", "campaign", str(Path(a.file).resolve()), "--out", str(out.resolve()),
           "--nice", str(a.nice)]
    # the workers share the cores: without --threads each computes on its share (OpenMP threads beyond it only wait)
    threads = a.threads or (max(1, usable_cores() // a.workers) if a.workers > 1 else None)
    for flag, value in (("--deadline", a.deadline), ("--only", a.only), ("--threads", threads)):
        if value is not None:
            cmd += [flag, str(value)]
    pids = [spawn_detached([*cmd, "--worker", str(i)], out / LOG_FILE) for i in range(a.workers)]
    print(f"campaign running in the background: pid {', '.join(map(str, pids))}, log {out / LOG_FILE}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="FER Compact-CNN Explorer: how small can an expression classifier get?")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_summary, _add_train, _add_model_io, _add_docs, _add_compress, _add_sweep, _add_campaign):
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from core.service.launcher import keep_lock_from_children

    keep_lock_from_children()  # a job's lock, inherited from the app's launcher, stays with this process alone
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        code = a.func(a)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) surfaces here
        return code
    except BrokenPipeError:
        # The reader closed the pipe: Python's documented remedy is to point stdout at devnull so the interpreter's
        # final flush does not raise again, and to exit quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ValueError as exc:
        # bad input: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished epochs are saved and the run can be resumed with --run-dir", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only the trainer's own early-stop reason is turned into one line
        from core.training.runs import OOM_MESSAGES, failure_reason
        from core.training.train import StopRun

        if isinstance(exc, StopRun):  # NaN loss, stop before the first epoch: recorded in run.json too
            print(f"error: training stopped: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in OOM_MESSAGES):
            print(f"error: {failure_reason(exc)}", file=sys.stderr)
            return 1
        raise
