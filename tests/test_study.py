"""docs/study.md regenerates from checkpoint records: charts, table and the equal-budget comparison."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.training import rundir
from core.training.config import TrainConfig
from core.training.runs import run_training
from core.views.study import (
    equal_budget_gaps,
    equal_budget_section,
    interpolate_accuracy,
    seed_spread,
    study_table,
    targets_section,
    tencrop_points,
    write_study,
)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five real (tiny) runs on a FER2013-format CSV, placed where shipped checkpoints live."""
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
    # One training step on random pixels leaves every run at chance (1/7 on these balanced splits), which would
    # hide a table that shows the wrong run's or the wrong split's accuracy; give each record distinct figures.
    for name, (train, public) in ACCURACIES.items():
        record_file = root / "checkpoints" / name / "run.json"
        record = json.loads(record_file.read_text())
        record["final"]["accuracy"].update(train=train, public=public)
        record_file.write_text(json.dumps(record))
    return root / "checkpoints"


# (train, public) accuracy per run, distinct so that a table showing the wrong run's figure fails
ACCURACIES = {"mobilenet-w0.5": (0.71, 0.55), "mobilenet-w1": (0.83, 0.68), "mobilenet-w1-noaug": (0.95, 0.61),
              "plain_cnn-w0.125": (0.62, 0.50), "plain_cnn-w0.25": (0.66, 0.58)}


def md_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after `heading`, header and rule left out."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[2:]]


def records(folder: Path) -> dict[str, dict]:
    """Each run's run.json as written on disk: the source the study must agree with."""
    return {p.name: json.loads((p / "run.json").read_text()) for p in sorted(folder.iterdir())}


def test_study_regenerates(shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "SHIPPED_DIR", shipped)
    recs = records(shipped)
    table = study_table()
    assert sorted(table["name"]) == sorted(recs)
    assert table["params"].is_monotonic_increasing and table["acc"].between(0, 1).all()
    path = write_study(tmp_path)
    text = path.read_text()
    # the shipped-models table says what each record says, smallest model first
    rows = md_table(text, "## Shipped models")
    assert [r[0] for r in rows] == [f"`{n}`" for n in sorted(recs, key=lambda n: recs[n]["params"])]
    for name, family, width, params, macs, acc, epochs, recipe, wall, device in rows:
        r = recs[name.strip("`")]
        assert (family, float(width), int(params.replace(",", "")), int(macs.replace(",", ""))) == (
            r["model"]["family"], r["model"]["knobs"]["width"], r["params"], r["macs"]), name
        assert (acc, epochs, recipe, device) == (f"{r['final']['accuracy']['public']:.4f}", str(len(r["epochs"])),
                                                r["recipe"], r["device"]), name
        assert wall == f"{r['wall_time_s'] / 60:.1f} min", name
    check_targets(md_table(text, "## Targets"), recs)
    check_ablation(md_table(text, "## What each part of the recipe gave"), recs)
    for png in ("study_both.png", "study_mobilenet.png", "study_plain_cnn.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gaps = equal_budget_gaps(table)
    # budgets lie inside both families' measured ranges (mobilenet 0.5-1.0: ~30k-110k, plain 0.125-0.25: ~47k-186k)
    assert gaps and all(46_000 < g["params"] < 110_000 for g in gaps)
    # and the document's equal-budget table is those numbers (their arithmetic is checked by hand below)
    budget_rows = md_table(text, "## At equal parameter counts")
    assert len(budget_rows) == len(gaps)
    for row, g in zip(budget_rows, gaps):
        shown = [float(c.replace(",", "")) for c in row]
        assert shown[0] == pytest.approx(g["params"], abs=0.5), row
        assert shown[1:] == pytest.approx([g["mobilenet"], g["plain_cnn"], g["mobilenet"] - g["plain_cnn"]],
                                          abs=6e-4), row


def check_targets(rows: list[list[str]], recs: dict[str, dict]) -> None:
    """The shipped column worked out again from the records; the campaign's verdicts are targets_section's on the
    committed campaign (their logic is checked on hand-made points in test_campaignviews)."""
    from core.views.campaignviews import campaign_results

    def best(keep) -> str:  # noqa: ANN001
        name = max((n for n, r in recs.items() if keep(r)), key=lambda n: recs[n]["final"]["accuracy"]["public"])
        return f"`{name}` ({recs[name]['params']:,} params): {recs[name]['final']['accuracy']['public']:.4f}"

    assert [row[4] for row in rows[:3]] == ["—", best(lambda r: True), best(lambda r: r["params"] <= 110_000)]
    assert rows[1][4] == "`mobilenet-w1` (109,607 params): 0.6800"  # the fixture's best run, by the figures set above
    no_tta = tencrop_points(Path("no-such-tta.json"))  # the study was written where tta.json is not
    expected = md_table("\n".join(targets_section(study_table(), campaign_results().points, no_tta)), "## Targets")
    assert rows == expected


def check_ablation(rows: list[list[str]], recs: dict[str, dict]) -> None:
    """Every MobileNet width-1.0 run with its own figures and its difference from mobilenet-w1, from the records."""
    same_size = {n for n, r in recs.items()
                 if r["model"]["arch"] == "mobilenet" and r["model"]["knobs"]["width"] == 1.0}
    assert sorted(row[0].strip("`") for row in rows) == sorted(same_size)
    ref = recs["mobilenet-w1"]["final"]["accuracy"]["public"]
    for run, recipe, epochs, train, public, delta, device in rows:
        r = recs[run.strip("`")]
        acc = r["final"]["accuracy"]
        assert (recipe, epochs, device) == (r["recipe"], str(len(r["epochs"])), r["device"]), run
        assert (train, public) == (f"{acc['train']:.3f}", f"{acc['public']:.4f}"), run
        assert delta == ("" if run == "`mobilenet-w1`" else f"{(acc['public'] - ref) * 100:+.1f} points"), run
    noaug = next(row for row in rows if row[0] == "`mobilenet-w1-noaug`")
    assert "no augmentation" in noaug[1] and noaug[5] == "-7.0 points"  # 0.61 - 0.68


def test_study_without_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rundir, "SHIPPED_DIR", tmp_path / "none")
    assert "No shipped FER2013 checkpoints" in write_study(tmp_path).read_text()


# --- the study's arithmetic, on hand-computed inputs -----------------------------------------------------------
def family(arch: str, points: list[tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame({"arch": arch, "params": [p for p, _ in points], "acc": [a for _, a in points]})


def test_interpolate_accuracy_is_linear_in_log_params_and_takes_each_widths_best() -> None:
    # 1,000 -> 0.5 and 100,000 -> 0.7: log10 runs 3..5, so 10,000 (log 4) is halfway and 10**4.5 three quarters
    pts = family("mobilenet", [(100_000, 0.7), (1_000, 0.3), (1_000, 0.5)])  # two recipes at 1,000: 0.5 counts
    assert interpolate_accuracy(pts, 1_000) == pytest.approx(0.5)
    assert interpolate_accuracy(pts, 10_000) == pytest.approx(0.6)
    assert interpolate_accuracy(pts, 10**4.5) == pytest.approx(0.65)
    assert interpolate_accuracy(pts, 100_000) == pytest.approx(0.7)
    # linear in params (not log) would give 0.5 + 0.2 * 9,000 / 99,000 = 0.518 at 10,000
    assert abs(interpolate_accuracy(pts, 10_000) - 0.518) > 0.05


MOBILE = [(1_000, 0.5), (100_000, 0.7)]  # 0.5 + 0.1 * (log10 p - 3)
PLAIN = [(10_000, 0.4), (1_000_000, 0.8)]  # 0.4 + 0.2 * (log10 p - 4)


def test_equal_budget_gaps_by_hand() -> None:
    df = pd.concat([family("mobilenet", MOBILE), family("plain_cnn", PLAIN)])
    gaps = equal_budget_gaps(df)
    # the overlap is 10,000..100,000; four budgets evenly spaced in log: 10**4, 10**(13/3), 10**(14/3), 10**5
    assert [g["params"] for g in gaps] == pytest.approx([1e4, 10 ** (13 / 3), 10 ** (14 / 3), 1e5])
    assert [g["mobilenet"] for g in gaps] == pytest.approx([0.6, 0.6 + 0.1 / 3, 0.6 + 0.2 / 3, 0.7])
    assert [g["plain_cnn"] for g in gaps] == pytest.approx([0.4, 0.4 + 0.2 / 3, 0.4 + 0.4 / 3, 0.6])
    lines = equal_budget_section(df)
    assert "| 10,000 | 0.600 | 0.400 | +0.200 |" in lines and "| 21,544 | 0.633 | 0.467 | +0.167 |" in lines
    assert "| 46,416 | 0.667 | 0.533 | +0.133 |" in lines and "| 100,000 | 0.700 | 0.600 | +0.100 |" in lines
    assert any("MobileNet-style family is ahead at every budget, by 10.0 to 20.0 points" in line for line in lines)


# MobileNet at the four budgets (log10 4, 13/3, 14/3, 5) is 0.600, 0.633, 0.667, 0.700. Plain CNNs:
#   0.65 + 0.15 * (log10 p - 4) -> 0.650, 0.700, 0.750, 0.800: differences -5.0, -6.7, -8.3, -10.0 points
#   0.55 + 0.10 * (log10 p - 4) -> 0.550, 0.583, 0.617, 0.650: differences +5.0, +5.0, +5.0, +5.0 points
#   0.55 + 0.20 * (log10 p - 4) -> 0.550, 0.617, 0.683, 0.750: differences +5.0, +1.7, -1.7, -5.0 points
@pytest.mark.parametrize("plain, verdict", [
    ([(10_000, 0.65), (1_000_000, 0.95)], "the plain CNN is ahead at every budget, by 5.0 to 10.0 points"),
    ([(10_000, 0.55), (1_000_000, 0.75)], "the MobileNet-style family is ahead at every budget, by 5.0 to 5.0 points"),
    ([(10_000, 0.55), (1_000_000, 0.95)], "neither family wins everywhere (differences from -5.0 to +5.0 points)"),
])
def test_equal_budget_verdict(plain: list[tuple[float, float]], verdict: str) -> None:
    lines = equal_budget_section(pd.concat([family("mobilenet", MOBILE), family("plain_cnn", plain)]))
    assert any(verdict in line for line in lines), lines
    # single runs: what was measured is said, but no winner, since the seed-to-seed spread is unknown
    assert any("no winner is stated" in line for line in lines) and not any("finding holds" in line for line in lines)


def test_a_winner_only_beyond_the_seed_spread() -> None:
    plain = [(10_000, 0.55), (1_000_000, 0.95)]  # differences +5.0, +1.7, -1.7, -5.0 points (see above)
    lines = equal_budget_section(pd.concat([family("mobilenet", MOBILE), family("plain_cnn", plain)]), spread=2.0)
    text = " ".join(lines)
    assert ("10,000: MobileNet-style; 21,544: within the spread; 46,416: within the spread; 100,000: plain CNN"
            in text), text


def test_seed_spread_pools_runs_that_differ_only_in_seed() -> None:
    from core.training.record import RunRecord
    from core.views.runviews import seedless_key

    def key(seed: int, epochs: int = 30) -> str:
        return seedless_key(RunRecord.from_json({"model": {"arch": "mobilenet", "knobs": {"width": 1.0}},
                                                 "config": {"seed": seed, "epochs": epochs, "threads": seed}}))

    assert key(0) == key(1) != key(0, epochs=50)  # another schedule is another point, not a seed
    runs = pd.DataFrame({"seedless": [key(0), key(1), key(0, 50), "plain"], "acc": [0.50, 0.52, 0.90, 0.60]})
    assert seed_spread(runs) == pytest.approx(100 * 0.02 / 2 ** 0.5)  # std of 0.50 and 0.52; the others are alone
    assert seed_spread(runs.drop(index=1)) is None


def test_equal_budget_needs_two_points_each_and_an_overlap() -> None:
    assert equal_budget_gaps(pd.concat([family("mobilenet", MOBILE[:1]), family("plain_cnn", PLAIN)])) == []
    apart = [(1e6, 0.6), (1e7, 0.7)]  # plain CNNs all above MobileNet's largest
    assert equal_budget_gaps(pd.concat([family("mobilenet", MOBILE), family("plain_cnn", apart)])) == []
    lines = equal_budget_section(pd.concat([family("mobilenet", MOBILE), family("plain_cnn", apart)]))
    assert any("do not yet overlap in parameter count" in line for line in lines)
