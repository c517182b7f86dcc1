"""docs/study.md regenerates from checkpoint records: charts, table and the equal-budget comparison."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core import checkpoint as ck
from core.config import TrainConfig
from core.runs import run_training
from core.study import equal_budget_gaps, study_table, write_study


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real (tiny) runs on a FER2013-format CSV, placed where shipped checkpoints live."""
    root = tmp_path_factory.mktemp("shipped")
    rng = np.random.default_rng(0)
    usage = ["Training"] * 56 + ["PublicTest"] * 14
    rows = [f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 2304)))},{u}" for i, u in enumerate(usage)]
    csv = root / "fer2013.csv"
    csv.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    for arch, width, suffix in (("mobilenet", 0.5, ""), ("mobilenet", 1.0, ""), ("mobilenet", 1.0, "-noaug"),
                                ("plain_cnn", 0.125, ""), ("plain_cnn", 0.25, "")):
        cfg = TrainConfig(arch=arch, width=width, data=str(csv), epochs=1, max_steps=1, batch_size=32,
                          augment=not suffix)
        list(run_training(cfg, root / "checkpoints" / f"{arch}-w{width:g}{suffix}"))
    return root / "checkpoints"


def test_study_regenerates(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ck, "SHIPPED_DIR", shipped)
    table = study_table()
    assert sorted(table["name"]) == ["mobilenet-w0.5", "mobilenet-w1", "mobilenet-w1-noaug", "plain_cnn-w0.125",
                                     "plain_cnn-w0.25"]
    assert table["params"].is_monotonic_increasing and table["acc"].between(0, 1).all()
    path = write_study(tmp_path)
    text = path.read_text()
    for name in table["name"]:
        assert f"`{name}`" in text
    assert "109,607" in text and "| parameter budget |" in text
    # the targets, each against its best shipped run, and the recipe ablation at the study's MobileNet size
    targets = text.split("## Targets")[1].split("##")[0]
    assert targets.count("| no |") + targets.count("| yes |") == 3 and "`mobilenet-w1`" in targets
    ablation = text.split("## What each part of the recipe gave")[1].split("##")[0]
    noaug = next(line for line in ablation.splitlines() if line.startswith("| `mobilenet-w1-noaug`"))
    assert "no augmentation" in noaug and " points |" in noaug
    assert "plain_cnn" not in ablation
    for png in ("study_both.png", "study_mobilenet.png", "study_plain_cnn.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gaps = equal_budget_gaps(table)
    # budgets lie inside both families' measured ranges (mobilenet 0.5-1.0: ~30k-110k, plain 0.125-0.25: ~47k-186k)
    assert gaps and all(46_000 < g["params"] < 110_000 for g in gaps)


def test_study_without_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ck, "SHIPPED_DIR", tmp_path / "none")
    assert "No shipped FER2013 checkpoints" in write_study(tmp_path).read_text()
