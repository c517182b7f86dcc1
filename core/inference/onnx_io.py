"""ONNX export per the contract (raw-pixel input 'image' [N,1,48,48], output 'logits' [N,7], metadata) and a
cached ONNX Runtime classifier that validates the contract on load."""
from __future__ import annotations

import io
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from core.data.augment import TTA_VIEWS
from core.util.classes import CLASSES, NUM_CLASSES
from core.util.fsutil import atomic_write_bytes

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(model: nn.Module, path: Path, *, arch: str, knobs: dict[str, float], params: int, extra: dict[str, Any] | None = None,
                tta: str = "none") -> None:
    """Export with the TorchScript-based exporter (dynamo=False): it matched PyTorch to 1e-8 on these models,
    needs no onnxscript, and the dynamo exporter failed on plain nn.Sequential nets in a quick try.

    `tta` ('none', 'flip', 'tencrop') folds test-time augmentation into the graph (core.data.augment.TTAModel): the views
    and the logit average are ONNX ops, so the contract (input 'image', output 'logits') holds; metadata names it."""
    import onnx

    from core.data.augment import with_tta

    model = with_tta(model.float().eval().to("cpu", memory_format=torch.contiguous_format), tta).eval()
    dummy = torch.full((2, 1, 48, 48), 128.0)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (dummy,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}, opset_version=OPSET, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"classes": json.dumps(list(CLASSES)), "arch": arch, "width_mult": str(knobs.get("width", 1.0)),
            "params": str(int(params)), "knobs": json.dumps(knobs), "tta": tta}
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if tta != "none" and len(dims) == 2 and not dims[1].dim_value:
        dims[1].dim_value = NUM_CLASSES  # shape inference loses the class count through TTA's reshape and mean
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    atomic_write_bytes(Path(path), proto.SerializeToString())


def parity(model: nn.Module, path: Path, n: int = 16, seed: int = 0) -> float:
    """Max |PyTorch - ONNX Runtime| logit difference on random 0-255 inputs."""
    x = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 48, 48), generator=x).float()
    with torch.no_grad():
        ref = model.float().eval().cpu()(images).numpy()
    got = OnnxClassifier.get(path).logits(images.numpy())
    return float(np.abs(ref - got).max())


def contract_error(inputs: list[tuple[str, list[Any], str]], outputs: list[tuple[str, list[Any], str]]) -> str | None:
    """What breaks the ONNX contract, or None. Each input/output is (name, shape, element type); a shape entry is an
    int for a fixed dimension and a string or None for a dynamic one; element types are 'float', 'double', ..."""
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME:
        return f"expected one input named {INPUT_NAME!r}, found {[i[0] for i in inputs]}"
    _, shape, etype = inputs[0]
    if len(shape) != 4 or list(shape[1:]) != [1, 48, 48]:
        return f"input shape must be [N, 1, 48, 48], found {shape}"
    if etype != "float":
        return f"input must be float32, found {etype}"
    if len(outputs) != 1 or outputs[0][0] != OUTPUT_NAME:
        return f"expected one output named {OUTPUT_NAME!r}, found {[o[0] for o in outputs]}"
    _, oshape, otype = outputs[0]
    if len(oshape) != 2 or oshape[1] != NUM_CLASSES:
        return f"output shape must be [N, {NUM_CLASSES}] (one logit per class: {', '.join(CLASSES)}), found {oshape}"
    if otype != "float":
        return f"output must be float32, found {otype}"
    if isinstance(shape[0], int):  # a fixed batch breaks on photos with several faces
        return f"the batch dimension of the input must be dynamic (N), found a fixed {shape[0]}"
    return None


class _LatestLRU:
    """A bounded LRU keyed by file path that keeps only the newest version of each file: a re-export replaces its
    entry instead of leaving the old session alive beside it (an unbounded mtime-keyed dict grew with every export)."""

    def __init__(self, size: int) -> None:
        self.size, self.items = size, OrderedDict()  # path -> (stamp, value)
        self.lock = threading.Lock()

    def get_or_make(self, key: tuple[str, int, int], make: Callable[[], Any]) -> Any:
        path, stamp = key[0], key[1:]
        with self.lock:
            hit = self.items.get(path)
            if hit is not None and hit[0] == stamp:
                self.items.move_to_end(path)
                return hit[1]
        value = make()  # outside the lock: building a session takes milliseconds to seconds
        with self.lock:
            self.items[path] = (stamp, value)
            self.items.move_to_end(path)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_FILE_CHECKS = _LatestLRU(256)  # contract verdicts are tiny; the app lists every run folder on each page


def _file_key(p: Path) -> tuple[str, int, int]:
    """Cache key that changes when the file is replaced or rewritten (path, size, mtime)."""
    try:
        st = p.stat()
    except OSError:
        raise ValueError(f"{p}: ONNX model file not found") from None
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


def _contract_problem(p: Path, size: int) -> str | None:
    """What breaks the contract in a model file, read from its declared inputs and outputs; None if nothing."""
    import onnx
    from onnx import TensorProto

    if not p.is_file():
        return "not a file"
    if size == 0:
        return "the file is empty (0 bytes)"
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, OSError...: all mean "not a model"
        return f"not a loadable ONNX model ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"

    def describe(values) -> list[tuple[str, list[Any], str]]:  # noqa: ANN001
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            out.append((v.name, dims, TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "unknown"))
        return out

    inits = {i.name for i in proto.graph.initializer}  # old exports also list weights as inputs
    return contract_error(describe(i for i in proto.graph.input if i.name not in inits), describe(proto.graph.output))


def check_onnx_file(path: str | os.PathLike) -> None:
    """Cheap contract check of a model file without building a session (listing many runs stays fast): reads the
    graph's declared inputs and outputs. ValueError says what is wrong; results are cached by path, size and mtime."""
    p = Path(path)
    key = _file_key(p)
    problem = _FILE_CHECKS.get_or_make(key, lambda: _contract_problem(p, key[1]))
    if problem is not None:
        raise ValueError(f"{p}: {problem}")


def cpu_session(path: str | os.PathLike, threads: int):  # noqa: ANN201 - onnxruntime.InferenceSession
    """An ONNX Runtime CPU session with `threads` intra-op threads whose pool never spins while idle.

    Why no spinning: by default a pool's threads keep spinning for a while after each run() returns, holding a core.
    On the 2-core AMD EPYC (AVX-512) dev machine, loaded by other work, MTCNN right after a spinning 2-thread
    classifier run took 171 ms against 91-101 ms after one that did not spin (median of 60, one process); in the
    photo path the spin stole the core from the next photo's decoding and detection."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """One ONNX Runtime session per model file, reused across calls (building one costs milliseconds to seconds)."""

    _cache = _LatestLRU(16)  # sessions hold their weights in memory: keep the models in use, not every one ever opened
    # Batches up to this size (a photo's faces) run on a single-thread session: without spinning, waking a pool's
    # thread for each op doubled mobilenet-w1's batch-1 latency (0.39 vs 0.22 ms; 0.18 with the spinning pool, whose
    # spin then slows whatever runs next), and a single thread leaves nothing behind to compete with the next photo.
    # The price: plain_cnn-w1, whose convolutions are big enough to share, takes 3.5 ms at batch 1 against 1.8 ms.
    # Larger batches (evaluation, occlusion maps) share the work between min(2, cores) threads. (2-core AMD EPYC,
    # other work held off with real-time priority, one process per setting.)
    SMALL_BATCH = 8
    # Larger inputs run in chunks of at most this many views (images x the graph's test-time views): a ten-crop
    # graph turns 1,024 images into 10,240 inside, and plain_cnn-w1's activations for them outgrew a 23 GiB machine.
    MAX_VIEWS = 1024

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.session = cpu_session(self.path, min(2, os.cpu_count() or 1))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for unreadable models
            raise ValueError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self._single = self.session if self.session.get_session_options().intra_op_num_threads == 1 else None
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_contract()

    def _session_for(self, n: int):  # noqa: ANN202 - onnxruntime.InferenceSession
        if n > self.SMALL_BATCH:
            return self.session
        if self._single is None:  # built on first use; two threads racing here build two, and one is kept: harmless
            self._single = cpu_session(self.path, 1)
        return self._single

    def _check_contract(self) -> None:
        def describe(values) -> list[tuple[str, list[Any], str]]:  # noqa: ANN001 - ORT NodeArg list
            return [(v.name, list(v.shape), v.type.removeprefix("tensor(").removesuffix(")")) for v in values]

        problem = contract_error(describe(self.session.get_inputs()), describe(self.session.get_outputs()))
        if problem is not None:
            raise ValueError(f"{self.path}: {problem}")

    @classmethod
    def get(cls, path: str | Path) -> "OnnxClassifier":
        """Cached by path, size and mtime so a re-exported file gets a fresh session (and the old one is dropped)."""
        p = Path(path)
        return cls._cache.get_or_make(_file_key(p), lambda: cls(p))

    def logits(self, images: np.ndarray) -> np.ndarray:
        """images: raw 0-255 pixels, [N,48,48] or [N,1,48,48], any numeric dtype."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 48, 48):
            raise ValueError(f"images must be [N, 48, 48] or [N, 1, 48, 48], got {x.shape}")
        step = max(1, self.MAX_VIEWS // TTA_VIEWS.get(self.meta.get("tta", "none"), 1))
        if len(x) > step:
            return np.concatenate([self.logits(x[i:i + step]) for i in range(0, len(x), step)])
        try:
            out = self._session_for(len(x)).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types: a model that declares the contract but fails
            raise ValueError(f"{self.path}: the model failed on a batch of {len(x)} ({str(exc).splitlines()[0][:200]})") from None
        if out.ndim != 2 or out.shape != (len(x), NUM_CLASSES):
            raise ValueError(f"{self.path}: the model returned shape {list(out.shape)} for {len(x)} images, "
                             f"expected [{len(x)}, {NUM_CLASSES}]")
        return out

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        z = self.logits(images)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
