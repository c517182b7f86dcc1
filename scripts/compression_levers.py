"""Measure the int8 levers of docs/compression.md on shipped checkpoints and write docs/compression.json, then the
generated tables of docs/compression.md from that JSON.

Every int8 row goes through core.compression.compress.make_int8, the pipeline `python -m core compress` ships,
calibrated on the same stratified training images (seed 0) as that command, so a row with the shipped recipe
reproduces the shipped variant's recorded public accuracy on the same kind of CPU. Each row gives two accuracies:
FER2013 PublicTest (where the levers are chosen) and a check slice, the last 10% of each class of Training (the
parents trained on it, so it checks the choice, not generalisation).

    python scripts/compression_levers.py --data data/fer2013          # measure (a few minutes on 2 cores), render
    python scripts/compression_levers.py --render                     # docs/compression.md from the JSON only
    python scripts/compression_levers.py --data data/fer2013 --other-cpu  # on a CPU of the other kind (VNNI or not)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

# this checkout's core first, even where another checkout is pip-installed (-e) in the same environment: the levers
# measured must be the pipeline beside this script
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from core.util.fsutil import PROJECT_ROOT, SHIPPED_DIR

JSON_PATH = PROJECT_ROOT / "docs" / "compression.json"
DOC_PATH = PROJECT_ROOT / "docs" / "compression.md"
CALIBRATION = 256  # CompressConfig's default
CHECK_FRACTION = 0.1  # the check slice: the last tenth of each class of Training
MIN_PARAMS = 100_000  # the target: int8 within a point for every shipped model this large
# (key, what it changes from the shipped recipe, Int8Recipe fields, other options); "fp32" rows are not quantised
LEVERS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("fp32", "fp32 parent (its own ONNX file)", {}, {"fp32": "parent"}),
    ("fp32-folded", "fp32, BatchNorms folded (exact folds only)", {}, {"fp32": "folded"}),
    ("fp32-folded-padded", "fp32, BN shifts folded into padded convs too (inexact at borders)", {},
     {"fp32": "padded"}),
    ("old-default", "int8 as shipped before: QDQ, per-channel, MinMax, u8s8, BN folded, stem fp32", {}, {}),
    ("no-fold", "BatchNorms not folded", {}, {"fold": False}),
    ("stem-int8", "stem (first conv) quantised too", {"keep_stem_fp32": False}, {}),
    ("depthwise-fp32", "depthwise convs kept fp32", {"exclude_depthwise": True}, {}),
    ("per-tensor", "per-tensor weight scales", {"per_channel": False}, {}),
    ("qoperator", "QOperator format instead of QDQ", {"method": "static-qoperator"}, {}),
    ("reduce-range", "7-bit weights (reduce_range)", {"reduce_range": True}, {}),
    ("u8u8", "uint8 weights (u8u8)", {"types": "u8u8"}, {}),
    ("s8s8", "int8 activations (s8s8)", {"types": "s8s8"}, {}),
    ("u16-act", "16-bit activations (u16s8)", {"types": "u16s8"}, {}),
    ("calib-1024", "1,024 calibration images", {}, {"calibration": 1024}),
    ("calib-4096", "4,096 calibration images", {}, {"calibration": 4096}),
    ("entropy", "Entropy calibration", {"calibrate": "entropy"}, {}),
    ("percentile", "Percentile calibration (99.999)", {"calibrate": "percentile"}, {}),
    ("percentile-99.99", "Percentile calibration (99.99)", {"calibrate": "percentile", "percentile": 99.99}, {}),
    ("reduce-range-entropy", "reduce_range + Entropy", {"reduce_range": True, "calibrate": "entropy"}, {}),
    ("reduce-range-percentile", "reduce_range + Percentile (99.999)", {"reduce_range": True, "calibrate": "percentile"},
     {}),
    ("u8u8-entropy", "u8u8 + Entropy", {"types": "u8u8", "calibrate": "entropy"}, {}),
    ("u8u8-percentile", "u8u8 + Percentile (99.999)", {"types": "u8u8", "calibrate": "percentile"}, {}),
]
QUICK = ("fp32", "old-default", "reduce-range", "u8u8")  # for the other models: the old and the saturation-free recipes
# on the other kind of CPU (--other-cpu): each int8 number type and the depthwise lever, the same files as above
CPU_KEYS = ("fp32", "old-default", "depthwise-fp32", "reduce-range", "u8u8", "s8s8")


def check_slice(train: Any) -> Any:
    """The check slice: the last CHECK_FRACTION of each class of Training, in the data set's own order."""
    from core.data.dataset import Split

    last = np.zeros(len(train), bool)
    for c in np.unique(train.labels):
        idx = np.flatnonzero(train.labels == c)
        last[idx[len(idx) - int(round(len(idx) * CHECK_FRACTION)):]] = True
    return Split(train.images[last], train.labels[last])


def accuracy(path: Path, split: Any) -> float:
    from core.compression.compress import onnx_accuracy

    return float(onnx_accuracy(path, split)["accuracy"])


def build(run: Path, fields: dict[str, Any], opts: dict[str, Any], train: Any, dst: Path) -> dict[str, Any]:
    """Write the lever's ONNX file to dst; returns what the row records besides accuracy."""
    from core.compression.compress import make_int8
    from core.compression.quantize import Int8Recipe, fold_batchnorm
    from core.inference.onnx_io import export_onnx
    from core.training import checkpoint, rundir
    from core.training.train import stratified_subset

    model, _ = checkpoint.load_model(run)
    arch = rundir.read_record(run).model.arch
    if opts.get("fp32") == "parent":
        dst.write_bytes((run / rundir.ONNX).read_bytes())
        return {}
    if opts.get("fp32"):
        export_onnx(fold_batchnorm(model, shift_into_padded=opts["fp32"] == "padded"), dst, arch=arch, knobs={},
                    params=0)
        return {}
    recipe = Int8Recipe(**fields)
    n = opts.get("calibration", CALIBRATION)
    calib = stratified_subset(train, n, seed=0).images
    make_int8(model, run / rundir.ONNX, arch, dst, calib, recipe, fold=opts.get("fold", True))
    return {"recipe": dataclasses.asdict(recipe), "calibration_images": n, "bn_folded": opts.get("fold", True)}


def measure_run(run: Path, keys: tuple[str, ...] | None, data: Any, repeats: int) -> list[dict[str, Any]]:
    from core.compression.compress import file_sizes, latencies

    check = check_slice(data.splits["train"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for key, label, fields, opts in LEVERS:
            if keys is not None and key not in keys:
                continue
            dst = Path(tmp) / f"{key}.onnx"
            row = {"key": key, "lever": label, **build(run, fields, opts, data.splits["train"], dst)}
            row.update(public=accuracy(dst, data.splits["public"]), check=accuracy(dst, check),
                       onnx_bytes=file_sizes(dst)[0], **(int8_facts(dst) if "recipe" in row else {}))
            print(f"{run.name} {key}: public {row['public']:.4f}, check {row['check']:.4f}", flush=True)
            rows.append(row)
            paths.append(dst)
        # alternating rounds, so load from other processes falls on every row alike
        for row, lat in zip(rows, latencies(paths, data.splits["public"].images[:64], repeats)):
            row.update(latency_ms_b1=lat[1], latency_ms_b64=lat[64])
    fp32 = rows[0]
    for row in rows:
        row.update(delta_public=row["public"] - fp32["public"], delta_check=row["check"] - fp32["check"],
                   speedup_b1=fp32["latency_ms_b1"] / row["latency_ms_b1"],
                   speedup_b64=fp32["latency_ms_b64"] / row["latency_ms_b64"])
    return rows


def fold_facts(run: Path) -> dict[str, Any]:
    """How many BatchNorms fold, and how far the folded fp32 graph is from the original, on random images."""
    import torch

    from core.compression.quantize import ChannelShift, fold_batchnorm
    from core.training import checkpoint

    model, _ = checkpoint.load_model(run)
    folded = fold_batchnorm(model)
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 1, 48, 48)).astype(np.float32))
    with torch.no_grad():
        diff = float((model.eval()(x) - folded(x)).abs().max())
    return {"batchnorms": sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()),
            "shifts_left": sum(isinstance(m, ChannelShift) for m in folded.modules()), "fold_max_abs_diff": diff}


def machine() -> dict[str, Any]:
    import onnxruntime

    from core.compression.quantize import cpu_has_vnni

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cpu": model, "cpu_vnni": cpu_has_vnni(), "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def int8_facts(path: Path) -> dict[str, Any]:
    """What an int8 file holds: its int8 weight bytes, and a digest of its scalar scales (two rows with the same
    digest chose the same activation ranges, whatever their calibration method was called)."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    inits = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer]
    scales = np.array([a.item() for a in inits if a.dtype == np.float32 and a.size == 1], np.float32)
    return {"int8_weight_bytes": int(sum(a.nbytes for a in inits if a.dtype in (np.int8, np.uint8) and a.size > 1)),
            "scales_digest": hashlib.sha256(scales.tobytes()).hexdigest()[:12]}


def shipped_recipe() -> dict[str, Any]:
    """The recipe `python -m core compress --int8` uses today (CompressConfig's defaults)."""
    from core.compression.compress import CompressConfig

    return dataclasses.asdict(CompressConfig(int8=True).int8_recipe())


def models_to_check() -> list[str]:
    """Shipped fp32 checkpoints of at least MIN_PARAMS parameters."""
    from core.training import rundir

    return sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_dir() and "--" not in p.name
                  and (rundir.read_record(p).params or 0) >= MIN_PARAMS)


def measure(data_path: str, repeats: int, full: str) -> dict[str, Any]:
    from core.data import load_data
    from core.training import rundir

    data = load_data(data_path)
    check = check_slice(data.splits["train"])
    out: dict[str, Any] = {"machine": machine(), "data": {
        "public": len(data.splits["public"]), "check": len(check), "check_slice": f"last {CHECK_FRACTION:.0%} of "
        "each class of Training, in the data set's order", "calibration": f"{CALIBRATION} Training images, "
        "stratified (seed 0), as python -m core compress"}, "shipped_recipe": shipped_recipe(), "models": {}}
    for name in models_to_check():
        run = SHIPPED_DIR / name
        keys = None if name == full else QUICK
        out["models"][name] = {"params": rundir.read_record(run).params, "rows": measure_run(run, keys, data, repeats)}
    out["models"][full]["facts"] = fold_facts(SHIPPED_DIR / full)
    out["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    return out


# ---------------------------------------------------------------------------------------------------------
# docs/compression.md: its marked sections are rendered from the JSON, the prose around them is written by hand.
# ---------------------------------------------------------------------------------------------------------
BEGIN = "<!-- generated by scripts/compression_levers.py from docs/compression.json: {} (do not edit) -->"
END = "<!-- end of generated section: {} -->"


def _pts(x: float) -> str:
    return f"{x * 100:+.2f}"


def _is_shipped(row: dict[str, Any], data: dict[str, Any]) -> bool:
    return row.get("recipe") == data["shipped_recipe"] and row.get("calibration_images") == CALIBRATION \
        and row.get("bn_folded", False)


def render_machine(data: dict[str, Any]) -> str:
    m, d = data["machine"], data["data"]
    return (f"Measured on {m['cpu']} ({m['cpu_count']} cores, VNNI: {'yes' if m['cpu_vnni'] else 'no'}), ONNX Runtime "
            f"{m['onnxruntime']}, one thread for latency, load average {m['load_avg_1min']:.1f} at the start and "
            f"{m['load_avg_1min_end']:.1f} at the end (other jobs shared the machine: latencies are noisy, accuracies "
            f"exact). Accuracies on FER2013 PublicTest ({d['public']:,} images) and on a check slice of Training "
            f"({d['check']:,} images, the {d['check_slice']}; the models trained on it, so it checks the choice of "
            f"lever, not generalisation). Calibration: {d['calibration']}.")


def render_levers(data: dict[str, Any], model: str) -> str:
    rows = data["models"][model]["rows"]
    digests = {r["scales_digest"]: r["key"] for r in reversed(rows) if "scales_digest" in r}
    out = ["| lever | public | vs fp32 (points) | check slice | vs fp32 (points) | ONNX KB |", "|---|---|---|---|---|---|"]
    for r in rows:
        label = f"`{r['key']}`: {r['lever']}" + (" **(shipped)**" if _is_shipped(r, data) else "")
        same = digests.get(r.get("scales_digest"))
        if same and same != r["key"]:
            label += f" (same activation scales as `{same}`)"
        out.append(f"| {label} | {r['public']:.4f} | {_pts(r['delta_public'])} | {r['check']:.4f} | "
                   f"{_pts(r['delta_check'])} | {r['onnx_bytes'] / 1000:.0f} |")
    return "\n".join(out)


def render_models(data: dict[str, Any]) -> str:
    out = ["| model | params | fp32 public | " + " | ".join(f"`{k}` public (check)" for k in QUICK[1:]) + " |",
           "|---|---|---|" + "---|" * (len(QUICK) - 1)]
    for name, m in data["models"].items():
        by = {r["key"]: r for r in m["rows"]}
        cells = [f"{by[k]['public']:.4f} ({_pts(by[k]['delta_public'])}; check {_pts(by[k]['delta_check'])})"
                 for k in QUICK[1:]]
        out.append(f"| {name} | {m['params']:,} | {by['fp32']['public']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def render_facts(data: dict[str, Any], model: str) -> str:
    f = data["models"][model]["facts"]
    shipped = next(r for r in data["models"][model]["rows"] if _is_shipped(r, data))
    fp32 = data["models"][model]["rows"][0]
    return (f"{model}: {f['batchnorms']} BatchNorms, {f['shifts_left']} of whose shifts stay as per-channel Adds "
            f"after folding; the folded fp32 model differs from the original by at most {f['fold_max_abs_diff']:.1e} "
            f"in the logits (64 random images). The shipped recipe's int8 file, before the run's metadata is stamped in: "
            f"{shipped['onnx_bytes']:,} bytes "
            f"({shipped['onnx_bytes'] / fp32['onnx_bytes']:.2f}x the fp32 file), of which "
            f"{shipped['int8_weight_bytes']:,} are int8 weights. {latency_noise(data, model)}")


def latency_noise(data: dict[str, Any], model: str) -> str:
    """How far apart the latencies of rows with the same graph (same scales, same file size) came out: the measure
    of how much the shared machine's load moved them."""
    groups: dict[tuple, list[dict]] = {}
    for r in data["models"][model]["rows"]:
        if "scales_digest" in r:
            groups.setdefault((r["scales_digest"], r["onnx_bytes"], r["recipe"]["types"]), []).append(r)
    pairs = [g for g in groups.values() if len(g) > 1]
    if not pairs:
        return ""
    spread = max(max(r[k] for r in g) / min(r[k] for r in g) for g in pairs for k in ("latency_ms_b1", "latency_ms_b64"))
    names = ", ".join("/".join(f"`{r['key']}`" for r in g) for g in pairs)
    return (f"Latency is left out of the table: rows with the same graph ({names}) came out up to {spread:.1f}x apart "
            "in median latency on this shared machine (each row's latencies are in the JSON).")


def render_doc(text: str, data: dict[str, Any], model: str = "mobilenet-w1") -> str:
    """text with each generated section replaced by its rendering from data; a missing marker is a ValueError."""
    sections = {"machine": render_machine(data), "levers": render_levers(data, model), "models": render_models(data),
                "facts": render_facts(data, model), "cpus": render_cpus(data)}
    for name, body in sections.items():
        begin, end = BEGIN.format(name), END.format(name)
        if begin not in text or end not in text:
            raise ValueError(f"{DOC_PATH.name}: has no generated section {name!r} (markers {begin} ... {end})")
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"
    return text


def measure_other_cpu(data_path: str, model: str, data: dict[str, Any]) -> dict[str, Any]:
    """CPU_KEYS of `model` on this machine, kept beside the main measurement when this CPU is of the other kind
    (with or without VNNI): ONNX Runtime's int8 kernels differ between the two. Latency is not compared."""
    from core.data import load_data

    here = machine()
    if here["cpu_vnni"] == data["machine"]["cpu_vnni"]:
        raise ValueError(f"this CPU is of the same kind as the main measurement's (VNNI: {here['cpu_vnni']}); "
                         "rerun the whole measurement instead, or run --other-cpu on a CPU of the other kind")
    rows = measure_run(SHIPPED_DIR / model, CPU_KEYS, load_data(data_path), repeats=1)
    here["load_avg_1min_end"] = os.getloadavg()[0]
    return {**data, "other_cpu": {"machine": here, "model": model, "rows": rows}}


def render_cpus(data: dict[str, Any]) -> str:
    other = data.get("other_cpu")
    if not other:
        return "Only one kind of CPU has been measured."
    main = {r["key"]: r for r in data["models"][other["model"]]["rows"]}
    m, o = data["machine"], other["machine"]
    kind = {True: "with VNNI", False: "without VNNI"}
    out = [f"{other['model']}, the same int8 files on both kinds (public accuracy; a row's activation scales have "
           f"the same digest on both): {m['cpu']} {kind[m['cpu_vnni']]} (above) against {o['cpu']} "
           f"{kind[o['cpu_vnni']]} ({o['cpu_count']} cores, ONNX Runtime {o['onnxruntime']}, load average "
           f"{o['load_avg_1min']:.1f} at the start).", "",
           f"| lever | {kind[m['cpu_vnni']]} | {kind[o['cpu_vnni']]} | difference (points) | {kind[o['cpu_vnni']]}: "
           "vs its fp32 (points) | same file |", "|---|---|---|---|---|---|"]
    for r in other["rows"]:
        a = main[r["key"]]
        same = "yes" if a.get("scales_digest") == r.get("scales_digest") else "no"
        out.append(f"| `{r['key']}` | {a['public']:.4f} | {r['public']:.4f} | {_pts(r['public'] - a['public'])} | "
                   f"{_pts(r['delta_public'])} | {same if 'scales_digest' in r else '(fp32)'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/fer2013", help="FER2013 (Training and PublicTest)")
    ap.add_argument("--model", default="mobilenet-w1", help="the shipped model every lever is measured on")
    ap.add_argument("--repeats", type=int, default=12, help="latency runs per batch size and row")
    ap.add_argument("--render", action="store_true", help="only write docs/compression.md from the JSON")
    ap.add_argument("--other-cpu", action="store_true", help="measure --model's int8 number types on this CPU, of "
                    "the other kind than the JSON's (with or without VNNI), and keep them beside it")
    a = ap.parse_args(argv)
    if a.other_cpu:
        result = measure_other_cpu(a.data, a.model, json.loads(JSON_PATH.read_text()))
        JSON_PATH.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {JSON_PATH}")
    elif not a.render:
        result = measure(a.data, a.repeats, a.model)
        old = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
        if old.get("other_cpu") and old["other_cpu"]["machine"]["cpu_vnni"] != result["machine"]["cpu_vnni"]:
            result["other_cpu"] = old["other_cpu"]  # still the other kind: keep it
        JSON_PATH.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {JSON_PATH}")
    DOC_PATH.write_text(render_doc(DOC_PATH.read_text(), json.loads(JSON_PATH.read_text())))
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
