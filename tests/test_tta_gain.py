"""scripts/tta_gain.py: each model's accuracy with no views, the mirror and ten crops, from graphs exported from its
weights; pooled over seeds; docs/tta.md is its JSON rendered."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from core.data import load_data
from core.training.runs import evaluate_path

spec = importlib.util.spec_from_file_location("tta_gain", ROOT / "scripts" / "tta_gain.py")
tta_gain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tta_gain)


def fer_csv(path: Path, n_train: int = 70, n_public: int = 140) -> Path:
    rng = np.random.default_rng(1)
    usage = ["Training"] * n_train + ["PublicTest"] * n_public
    rows = [f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 2304)))},{u}" for i, u in enumerate(usage)]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    return path


def test_measure_pool_and_render_on_a_real_run(tiny_run: Path, tmp_path: Path) -> None:
    csv = fer_csv(tmp_path / "fer2013.csv")
    before = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    rows = [{"model": str(tiny_run), "kind": "campaign", "block": "grid-x", "arch": "plain_cnn", "width": 0.125,
             "seed": s} for s in (0, 1)]
    data = tta_gain.measure(str(csv), rows)
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == before  # nothing rewritten
    r = data["rows"][0]
    # no views: the run's own exported graph, re-exported from the same weights, scores the same
    assert r["none"] == evaluate_path(tiny_run, load_data(str(csv)), ["public"])["public"]["accuracy"]
    assert all(0 <= r[m] <= 1 for m in tta_gain.MODES) and data["images"] == 140
    assert not Path(data["produced_by"].split("--data ", 1)[1]).is_absolute()  # a committed JSON names no machine
    (point,) = tta_gain.pooled(data["rows"])
    assert point["seeds"] == 2 and point["tencrop"] == pytest.approx(((r["tencrop"] - r["none"]) * 100, 0.0))
    text = tta_gain.render(data)
    assert f"| grid-x | 0.125 | {r['params']:,} | 2 | {r['none']:.4f} |" in text
    assert "These are single runs" in text


def test_a_rerun_measures_only_models_whose_weights_are_new(tiny_run: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import core.training.runs as runs

    csv = fer_csv(tmp_path / "fer2013.csv")
    rows = [{"model": str(tiny_run), "kind": "campaign", "block": "grid-x", "arch": "plain_cnn", "width": 0.125,
             "seed": 0}]
    first = tta_gain.measure(str(csv), rows)
    calls = []
    real = runs.evaluate_with_tta
    monkeypatch.setattr(runs, "evaluate_with_tta", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = tta_gain.measure(str(csv), rows, previous=first["rows"])
    assert calls == [] and again["rows"] == first["rows"]  # the same weights: the row kept, nothing evaluated
    stale = [{**first["rows"][0], "weights": "0" * 16, "none": 0.0}]  # a row for other weights than these
    fresh = tta_gain.measure(str(csv), rows, previous=stale)
    assert calls == list(tta_gain.MODES) and fresh["rows"][0]["none"] == first["rows"][0]["none"]


def test_a_split_missing_is_a_clear_error(tiny_run: Path) -> None:
    with pytest.raises(ValueError, match="has no 'public' split"):
        tta_gain.measure("synthetic", [])
    assert tta_gain.main(["--data", "synthetic"]) == 2


def test_the_document_is_its_json_rendered() -> None:
    data = json.loads(tta_gain.JSON_PATH.read_text())
    assert tta_gain.DOC_PATH.read_text() == tta_gain.render(data), "run: python scripts/tta_gain.py --render"
    assert len(data["rows"]) >= 2 and {r["kind"] for r in data["rows"]} == {"campaign", "shipped"}
