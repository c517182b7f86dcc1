"""ONNX export keeps the contract (names, raw-pixel input, dynamic batch, metadata) and matches PyTorch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from core.inference.onnx_io import OnnxClassifier, export_onnx, parity
from core.models import archs
from core.training import checkpoint as ck
from core.training import rundir
from core.util.classes import CLASSES


@pytest.mark.parametrize("name", archs.list_archs())
def test_every_family_exports_with_parity(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = archs.build(name, width=0.25).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, arch=name, knobs={"width": 0.25}, params=sum(p.numel() for p in model.parameters()))
    assert parity(model, path) < 1e-4


def test_small_batches_give_the_pools_logits(tiny_run: Path) -> None:
    """Batches of up to SMALL_BATCH (a photo's faces) run on a single-thread session, larger ones on the pool: the
    same model, so the same logits either way, and neither session's threads spin while idle."""
    clf = OnnxClassifier.get(tiny_run / rundir.ONNX)
    x = np.random.default_rng(0).integers(0, 256, (OnnxClassifier.SMALL_BATCH + 1, 1, 48, 48)).astype(np.float32)
    pool = clf.session.run(None, {"image": x})[0]
    for n in (1, OnnxClassifier.SMALL_BATCH, OnnxClassifier.SMALL_BATCH + 1):
        np.testing.assert_allclose(clf.logits(x[:n]), pool[:n], rtol=1e-5, atol=1e-5)
    assert clf._session_for(1).get_session_options().intra_op_num_threads == 1
    for sess in (clf.session, clf._session_for(1)):
        assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_large_inputs_run_in_chunks_sized_by_the_graphs_views(tiny_run: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A ten-crop graph multiplies its input by ten inside: logits() cuts a large input so that images x views stay
    under MAX_VIEWS, with the logits of one call."""
    model, record = ck.load_model(tiny_run)
    path = tmp_path / "tencrop.onnx"
    export_onnx(model, path, arch=record.model.arch, knobs=record.model.knobs, params=0, tta="tencrop")
    clf = OnnxClassifier(path)
    x = np.random.default_rng(0).integers(0, 256, (25, 48, 48)).astype(np.float32)
    whole = clf.logits(x)
    calls: list[int] = []
    run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run",
                        lambda self, out, feed, *a: calls.append(len(feed["image"])) or run(self, out, feed, *a))
    monkeypatch.setattr(OnnxClassifier, "MAX_VIEWS", 100)  # ten views: at most 10 images a call
    np.testing.assert_allclose(clf.logits(x), whole, rtol=1e-5, atol=1e-5)
    assert calls == [10, 10, 5]


def test_contract(tiny_run: Path) -> None:
    path = tiny_run / rundir.ONNX
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["arch"] == "plain_cnn" and float(meta["width_mult"]) == 0.125
    model, record = ck.load_model(tiny_run)
    assert int(meta["params"]) == record.params == sum(p.numel() for p in model.parameters())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(float)" and inp.shape[1:] == [1, 48, 48]
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert out.name == "logits" and out.shape[1] == 7
    for n in (1, 5):
        raw = np.random.default_rng(n).integers(0, 256, (n, 1, 48, 48)).astype(np.float32)
        got = sess.run(["logits"], {"image": raw})[0]
        assert got.shape == (n, 7)
        # normalisation lives in the graph: raw 0-255 pixels give PyTorch's logits
        np.testing.assert_allclose(got, model(torch.from_numpy(raw)).detach().numpy(), atol=1e-4)
    assert record.onnx["parity_max_abs"] < 1e-4


def test_session_is_reused(tiny_run: Path) -> None:
    assert OnnxClassifier.get(tiny_run / rundir.ONNX) is OnnxClassifier.get(tiny_run / rundir.ONNX)
    probs = OnnxClassifier.get(tiny_run / rundir.ONNX).probabilities(np.zeros((3, 48, 48), np.uint8))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_contract_violations_are_clear(tmp_path: Path) -> None:
    import torch.nn as nn

    bad = tmp_path / "bad.onnx"
    torch.onnx.export(nn.Linear(10, 3), (torch.zeros(1, 10),), str(bad), input_names=["x"], output_names=["y"], dynamo=False)
    with pytest.raises(ValueError, match="input named 'image'"):
        OnnxClassifier(bad)
    wrong_out = tmp_path / "wrong_out.onnx"
    torch.onnx.export(nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, 5)), (torch.zeros(1, 1, 48, 48),), str(wrong_out),
                      input_names=["image"], output_names=["logits"], dynamo=False)
    with pytest.raises(ValueError, match=r"output shape must be \[N, 7\]"):
        OnnxClassifier(wrong_out)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxClassifier(junk)


def test_tta_graph_is_cached_and_made_again_when_the_weights_change(tiny_run: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import shutil

    from core.training.runs import tta_graph

    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    graph = tta_graph(run, "flip")
    made = graph.stat().st_mtime_ns
    assert tta_graph(run, "flip") == graph and graph.stat().st_mtime_ns == made  # reused, not exported again
    later = graph.stat().st_mtime + 10
    os.utime(run / rundir.WEIGHTS, (later, later))  # the run was trained further: its weights are newer
    assert tta_graph(run, "flip") == graph and graph.stat().st_mtime_ns != made
    assert OnnxClassifier(graph).meta["tta"] == "flip" and tta_graph(run, "tencrop") != graph
    assert not list(graph.parent.glob("*.tmp"))  # no temp file left behind
    with pytest.raises(ValueError, match="must be one of"):
        tta_graph(run, "fivecrop")
