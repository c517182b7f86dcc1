"""`core bench`: ratios point the right way for each unit, "met" follows the target, and a quick run renders them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.harness import Row, main, render_json, window_rates


def test_ratio_direction_and_met_logic() -> None:
    fast = Row("training", "x", ours=300.0, yardstick=100.0, unit="img/s", min_ratio=2.5)
    assert fast.ratio == pytest.approx(3.0) and fast.met is True and fast.target == ">= 2.5x"
    slow = Row("training", "x", ours=200.0, yardstick=100.0, unit="img/s", min_ratio=2.5)
    assert slow.ratio == pytest.approx(2.0) and slow.met is False
    # times: lower is better, so the ratio is yardstick / ours
    quick = Row("inference", "x", ours=2.0, yardstick=10.0, unit="ms", min_ratio=5)
    assert quick.ratio == pytest.approx(5.0) and quick.met is True
    assert Row("inference", "x", ours=3.0, yardstick=10.0, unit="ms", min_ratio=5).met is False
    assert Row("data", "x", ours=0.5, yardstick=None, unit="s", max_value=1).met is True
    assert Row("data", "x", ours=1.5, yardstick=None, unit="s", max_value=1).met is False
    assert Row("data", "x", ours=1.5, yardstick=None, unit="s").met is None and Row("data", "x", 1.0, None, "s").ratio is None


def test_window_rates_are_per_window() -> None:
    stamps = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0]  # steps end at these times; 1 warm-up step, windows of 3 steps
    assert window_rates(stamps, warm=1, steps=3, batch=10) == [30 / 3.0, 30 / 6.0]


def _table(md: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    return [r for r in rows if len(r) == 7 and r[0] != "figure"]


def test_quick_bench_inference_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    assert main(quick=True, out=str(out), sections=("inference",)) == 0
    md = out.read_text()
    rows = _table(md)
    assert len(rows) >= 8 and "median" in md
    for figure, ours, yard, ratio, target, met, _ in rows:
        o, y = float(ours.split()[0].replace(",", "")), float(yard.split()[0].replace(",", ""))
        r = float(ratio.rstrip("x"))
        # ms: the ratio is yardstick / ours; the table prints times to 0.1 ms, so small ones only bound the ratio
        assert (y - 0.05) / (o + 0.05) - 0.01 <= r <= (y + 0.05) / max(o - 0.05, 1e-9) + 0.01, figure
        if abs(y - o) > 0.1:
            assert (r > 1) == (y > o), figure  # direction: ratio > 1 exactly when ours is faster
        if target:
            goal = float(re.search(r"[\d.]+", target).group())
            assert (met == "yes") == (r >= goal), figure
        else:
            assert met == "", figure
    assert any("TTA 'tencrop'" in r[0] for r in rows)
    # the JSON beside the report holds the unrounded figures, and renders back to the very same report
    report = json.loads(out.with_suffix(".json").read_text())
    assert render_json(report) == md and len(report["rows"]) == len(rows)
    assert all(r["ratio"] is None or r["ratio"] > 0 for r in report["rows"])


def test_memory_figures_are_the_process_own_high_water_mark() -> None:
    """The memory rows read each training process's own peak (VmHWM at exit), which a fork from the harness would
    otherwise inherit: a trivial child of this torch-laden test process must come out small."""
    import sys

    from bench.memory import python_peak_mib

    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is read from /proc")
    small = python_peak_mib(["-c", "pass"])
    big = python_peak_mib(["-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    assert small < 100 and big - small > 250, (small, big)
    assert python_peak_mib(["-m", "json.tool", "--help"]) < 100  # modules run too
    with pytest.raises(RuntimeError, match="failed"):
        python_peak_mib(["-c", "raise SystemExit(3)"])
    # MiB is a cost: lower is better, so the ratio is yardstick / ours, and a ceiling target is met below it
    row = Row("memory", "x", ours=990.0, yardstick=1880.0, unit="MiB", max_value=1024)
    assert row.ratio == pytest.approx(1880 / 990) and row.met is True


def test_side_by_side_trainings_are_measured_in_their_own_processes() -> None:
    """The parallel section: N single-thread trainings at once against one N-thread training, each a real engine
    run in a spawned process (no timing asserted: the ratio is what the benchmark reports)."""
    import os

    from bench.harness import parallel_rows
    from core.data import load_data

    rows = parallel_rows(load_data("synthetic", synthetic_size=600), steps=2, warm=1, windows=1,
                         models=(("mobilenet", 0.25),))
    (row,) = rows
    assert row.ours > 0 and row.yardstick > 0 and row.unit == "img/s" and row.ratio == row.ours / row.yardstick
    assert f"{os.cpu_count()} single-thread trainings side by side" in row.figure


def test_sections_by_name_and_a_bad_one_named() -> None:
    from bench.harness import parse_sections

    assert parse_sections(" photo, faces ") == ("photo", "faces")
    with pytest.raises(ValueError, match="unknown 'fcaes'"):
        parse_sections("photo,fcaes")
    with pytest.raises(ValueError, match="none named"):
        parse_sections(" , ")


def test_side_by_side_times_each_function_in_turns() -> None:
    from bench.harness import side_by_side

    calls: list[str] = []
    out = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, block=2, warmup=1)
    assert set(out) == {"a", "b"} and all(w >= 0 and c >= 0 for w, c in out.values())
    assert calls[:2] == ["a", "b"] and "b" in calls[2:6] and calls.count("a") == calls.count("b")  # turns, alike


def test_photo_and_faces_sections_run_alone(tmp_path: Path) -> None:
    """`--sections photo,faces`: the photo path end to end (MTCNN, and beside Haar in turns, median of >= 9) with
    the recall on the real photos and the < 40 ms target, with no inference section run first. No time is asserted:
    the figures are the benchmark's to report."""
    from conftest import PHOTOS_DIR

    if not (PHOTOS_DIR / "manifest.csv").is_file():
        pytest.skip(f"real test photos not found at {PHOTOS_DIR} ($FER_PHOTOS, else ../shared/photos beside the "
                    "project)")
    out = tmp_path / "bench.md"
    assert main(quick=True, out=str(out), sections=("photo", "faces")) == 0
    rows = {r[0]: r for r in _table(out.read_text())}
    photo = next(r for f, r in rows.items() if f.startswith("photo end to end, 1 MP JPEG, one face: MTCNN"))
    assert "median of 9" in photo[0] and photo[2].endswith("ms") and photo[4] == "< 40 ms"
    assert photo[5] in ("yes", "**no**")
    assert re.search(r"recall [01]\.\d{3}", photo[6]) and "CPU time" in photo[6]
    assert "model shipped mobilenet-w1" in photo[6]  # the classifier by name, not a temporary folder's
    recall = next(r for f, r in rows.items() if f.startswith("recall, MTCNN"))
    assert "target >= 97%: met" in recall[6]
    assert any(f.startswith("photo end to end, 1 MP JPEG with one face") for f in rows)


def test_the_committed_report_is_its_json_rendered() -> None:
    """docs/benchmarks.md comes from one `python -m core bench` run: it is exactly its JSON's rendering, so no figure
    was edited by hand or spliced in from another run, and every figure has its unrounded value in the JSON."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    report = json.loads((docs / "benchmarks.json").read_text())
    assert render_json(report) == (docs / "benchmarks.md").read_text(), "regenerate with: python -m core bench"
    assert report["produced_by"] == "python -m core bench" and not report["quick"]
