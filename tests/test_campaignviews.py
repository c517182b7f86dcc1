"""The campaign's tables: seeds pooled per point, unfinished trials never counted, the equal-budget gap with spread."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from core.service.campaign import load_campaign
from core.views import campaignviews as cv
from core.views.study import campaign_budget_lines, campaign_section, targets_section, tencrop_points


def trials(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame([{"trial": f"{b}-w{w:g}-s{s}", "block": b, "arch": a, "width": w, "seed": s, "params": p,
                          "state": st, "progress": st if st != "in progress" else "in progress (epoch 12 of 50)",
                          "epoch": 50 if st == "done" else 12, "epochs": 50, "accuracy": acc}
                         for b, a, w, p, s, st, acc in rows])


def grid(mb: dict[float, list[float]], pc: dict[float, list[float]]) -> pd.DataFrame:
    rows = []
    for arch, fam, sizes in (("mobilenet", mb, {0.25: 9_000, 0.5: 30_000, 1.0: 110_000}),
                             ("plain_cnn", pc, {0.0625: 14_000, 0.125: 47_000, 0.25: 186_000})):
        for w, accs in fam.items():
            rows += [(f"grid-{arch}", arch, w, sizes[w], s, "done", a) for s, a in enumerate(accs)]
    return cv.points_frame(trials(rows))


def test_points_pool_finished_seeds_only() -> None:
    pts = cv.points_frame(trials([("grid-mobilenet", "mobilenet", 1.0, 110_000, 0, "done", 0.60),
                                  ("grid-mobilenet", "mobilenet", 1.0, 110_000, 1, "done", 0.62),
                                  ("grid-mobilenet", "mobilenet", 1.0, 110_000, 2, "in progress", math.nan)]))
    r = pts.iloc[0]
    assert r["seeds"] == 3 and r["seeds_done"] == 2
    assert r["mean"] == pytest.approx(0.61) and r["std"] == pytest.approx(pd.Series([0.60, 0.62]).std())
    assert r["in_progress"] == "seed 2: in progress (epoch 12 of 50)"


def test_one_seed_has_no_spread_and_blocks_the_equal_budget_verdict() -> None:
    pts = grid({0.25: [0.5], 1.0: [0.6, 0.61]}, {0.0625: [0.45, 0.46], 0.25: [0.6, 0.6]})
    assert math.isnan(pts.loc[pts["width"] == 0.25].query("arch == 'mobilenet'")["std"].iloc[0])
    assert cv.equal_budget(pts).empty
    assert "Not yet measurable" in "\n".join(campaign_budget_lines(cv.equal_budget(pts), None))


def test_points_with_one_seed_wait_while_the_seeded_ones_compare() -> None:
    # the seeded points span 9k-30k (MobileNet) and 14k-47k (plain): the overlap, 14k-30k, is what can be compared
    pts = grid({0.25: [0.52, 0.53], 0.5: [0.56, 0.57], 1.0: [0.61]},
               {0.0625: [0.53, 0.54], 0.125: [0.57, 0.58], 0.25: [0.62]})
    eb = cv.equal_budget(pts)
    assert eb["params"].min() == pytest.approx(14_000) and eb["params"].max() == pytest.approx(30_000)
    assert eb[["mobilenet_std", "plain_cnn_std"]].notna().all().all()
    # at 30k MobileNet is its own point (0.565); plain is 0.535 + 0.04 * log(30/14) / log(47/14) there
    plain = 0.535 + 0.04 * math.log(30 / 14) / math.log(47 / 14)
    assert eb["gap"].iloc[-1] == pytest.approx(0.565 - plain)


def test_targets_judged_on_means_over_seeds(tmp_path: Path) -> None:
    tta = tmp_path / "tta.json"  # scripts/tta_gain.py's rows: ten crops lift the small point over 0.67 on 2 seeds
    tta.write_text(json.dumps({"rows": [
        {"kind": "campaign", "block": "study-mobilenet", "width": 1, "tencrop": a} for a in (0.665, 0.675)]
        + [{"kind": "shipped", "block": "mobilenet-w1", "width": 1.0, "tencrop": 0.9}]}))  # not a campaign point
    pts = cv.points_frame(trials(
        [("study-mobilenet", "mobilenet", 1.0, 109_607, 0, "done", 0.650),
         ("study-mobilenet", "mobilenet", 1.0, 109_607, 1, "done", 0.652),
         ("study-mobilenet", "mobilenet", 1.0, 109_607, 2, "in progress", math.nan)]
        + [("grid-mobilenet", "mobilenet", 0.25, 9_191, s, "done", a) for s, a in enumerate([0.52, 0.53, 0.54])]
        + [("grid-plain_cnn", "plain_cnn", 0.25, 186_263, s, "done", a) for s, a in enumerate([0.73, 0.72, 0.74])]))
    shipped = pd.DataFrame({"name": ["mobilenet-w1"], "params": [109_607.0], "acc": [0.6163]})
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in targets_section(shipped, pts, tencrop_points(tta))
             if line.startswith("| ") and "---" not in line]
    rows = {r[0]: r[1:] for r in cells}
    study = rows["MobileNet-style width 1.0 on the study's recipe (`study-mobilenet`)"]
    assert study[1] == "`study-mobilenet` w1 (109,607 params): 0.6510 ± 0.0014"
    assert study[4] == "on track (2 of 3 seeds)"
    assert study[2] == "—"  # the study's recipe is judged as the study was: without views
    best = rows["best model"]
    assert best[1].startswith("`grid-plain_cnn` w0.25 (186,263 params): 0.7300") and best[4] == "yes"
    assert best[2] == "not measured yet" and best[3] == "`mobilenet-w1` (109,607 params): 0.6163"
    small = rows["a model of at most 110,000 parameters"]
    assert small[1].startswith("`study-mobilenet`") and small[2] == "0.6700 ± 0.0071 (2 seeds)"
    assert small[4] == "not so far (2 of 3 seeds); with ten crops: on track"
    grid_row = next(v for k, v in rows.items() if k.startswith("the grid"))
    assert grid_row[1] == "widths done: MobileNet-style 1 of 1, plain CNN 1 of 1" and grid_row[4] == "no"
    # a finished point below the goal is a final "no" only when no other point of that size is still to finish
    done = [("grid-mobilenet", "mobilenet", 0.25, 9_191, s, "done", a) for s, a in enumerate([0.52, 0.53, 0.54])]
    waiting = [("ema-mobilenet", "mobilenet", 1.0, 109_607, 0, "in progress", math.nan)]

    def small_status(rows: list[tuple]) -> str:
        lines = targets_section(shipped, cv.points_frame(trials(rows)), tencrop_points(tmp_path / "none.json"))
        return next(line for line in lines if line.startswith("| a model of at most")).strip("|").split("|")[-1].strip()

    assert small_status(done) == "no"
    assert small_status(done + waiting) == "not so far (1 more point of this size to finish)"


def test_a_winner_only_beyond_the_spread() -> None:
    # MobileNet 8 points ahead at the small end, level at 110k (plain interpolated: 0.617 against 0.62; spread 1.4)
    pts = grid({0.25: [0.52, 0.53, 0.54], 1.0: [0.61, 0.62, 0.63]},
               {0.0625: [0.44, 0.45, 0.46], 0.25: [0.65, 0.66, 0.67]})
    eb = cv.equal_budget(pts)
    assert list(eb["winner"])[0] == "MobileNet-style" and list(eb["winner"])[-1] == "within the spread"
    assert (eb["spread"] > 0).all() and eb["params"].min() == pytest.approx(14_000)


def test_crossover_with_its_uncertainty() -> None:
    pts = grid({0.25: [0.52, 0.53, 0.54], 1.0: [0.60, 0.61, 0.62]},
               {0.0625: [0.44, 0.45, 0.46], 0.25: [0.69, 0.70, 0.71]})
    cross = cv.crossover(pts)
    assert cross is not None and cross["mobilenet_below"]
    assert 14_000 < cross["low"] <= cross["params"] <= cross["high"] <= 110_000
    text = "\n".join(campaign_budget_lines(cv.equal_budget(pts), cross))
    assert "changes sign near" in text and "MobileNet-style ahead below it" in text


def test_study_section_lists_in_progress_trials_not_as_results(tmp_path: Path) -> None:
    """The committed campaign file against an empty trials folder: every point pending, no accuracy anywhere."""
    lines = "\n".join(campaign_section(tmp_path, cv.trials_frame(out=tmp_path / "none"), load_campaign()))
    assert "0 of " in lines and "seed 0: pending" in lines
    assert "not finished yet" in lines and "± 0." not in lines


def test_compare_shows_the_campaign_with_unfinished_trials_as_in_progress() -> None:
    from streamlit.testing.v1 import AppTest

    frame, points, levers, error = cv.campaign_results()
    assert error is None and not points.empty and not levers.empty
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    at.switch_page("pages/4_Compare.py").run()
    assert not at.exception, at.exception
    assert any("Campaign" in s.value for s in at.subheader)
    bar = at.get("progress")[0].proto  # the bar counts epochs: trials differ in length
    done, epochs, total = (frame["state"] == "done").sum(), frame["epoch"].sum(), frame["epochs"].sum()
    assert bar.value == int(100 * epochs / total) and f"{done} of {len(frame)} trials finished" in bar.text
    assert f"{epochs:,} of {total:,} epochs" in bar.text
    shown = next(d.value for d in at.dataframe if "public acc (mean ± spread)" in d.value.columns)
    assert len(shown) == len(points)
    pending = shown[points["seeds_done"].to_numpy() == 0]
    assert (pending["public acc (mean ± spread)"] == "—").all()  # no result without a finished seed
    assert shown["in progress"].str.contains("pending|in progress|—").all()
    curves = at.multiselect(key="compare_campaign_curves")
    assert curves.value == cv.curve_defaults(frame[frame["epoch"] > 0]) and curves.value
    assert len(cv.trial_records(frame, curves.value)) == len(curves.value)  # each one's record read, so drawn
    lever_table = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert list(lever_table["lever"]) == list(levers["block"])  # every lever of the committed file, with a verdict
    assert lever_table["verdict"].isin(["not finished yet", "needs two finished seeds on each side",
                                        "its baseline has no result yet", "within the spread", "helps",
                                        "hurts"]).all()


def test_chart_axis_spans_the_data_even_with_one_finished_trial() -> None:
    """One trial done (min = max = mean): the y axis must still span the accuracy, never start at 0 or label it "1"."""
    pts = cv.points_frame(trials([("grid-mobilenet", "mobilenet", 0.25, 9_191, 0, "done", 0.5283),
                                  ("grid-mobilenet", "mobilenet", 0.5, 30_359, 0, "in progress", math.nan)]))
    spec = cv.spread_chart(pts).to_dict()
    bars, line = spec["layer"]
    lo, hi = line["encoding"]["y"]["scale"]["domain"]
    assert 0.45 < lo < 0.5283 < hi < 0.6
    assert bars["encoding"]["y"]["scale"]["domain"] == [lo, hi]  # both layers share the span
    assert line["encoding"]["y"]["axis"]["format"] == ".2f"


LEVERS = """
[defaults]
data = "synthetic"
epochs = 50

[[sweep]]
name = "grid-mobilenet"
seeds = 3
[sweep.grid]
width = [0.25, 1.0]
[sweep.fixed]
arch = "mobilenet"

[[sweep]]
name = "ema-mobilenet"
seeds = 3
[sweep.grid]
width = [1.0]
[sweep.fixed]
arch = "mobilenet"
ema_decay = 0.999

[[sweep]]
name = "kd-mobilenet"
seeds = 3
[sweep.grid]
width = [0.25, 1.0]
[sweep.fixed]
arch = "mobilenet"
teacher = "checkpoints/plain_cnn-w1"

[[sweep]]
name = "tail-mobilenet-w1"
seeds = 2
[sweep.fixed]
arch = "mobilenet"
width = 1.0
init_from = "checkpoints/mobilenet-w1"
lr = 0.0002
epochs = 15
"""


def test_each_lever_against_its_baseline_beyond_the_spread_only(tmp_path: Path) -> None:
    from core.training import rundir
    from core.util.fsutil import PROJECT_ROOT

    (tmp_path / "c.toml").write_text(LEVERS)
    configs = load_campaign(tmp_path / "c.toml")
    rows = [("grid-mobilenet", "mobilenet", w, p, s, "done", a) for w, p, accs in
            ((0.25, 9_191, [0.52, 0.53, 0.54]), (1.0, 109_607, [0.61, 0.62, 0.63])) for s, a in enumerate(accs)]
    rows += [("ema-mobilenet", "mobilenet", 1.0, 109_607, s, "done", a) for s, a in enumerate([0.64, 0.65, 0.66])]
    rows += [("kd-mobilenet", "mobilenet", 0.25, 9_191, s, "done", a) for s, a in enumerate([0.52, 0.535])]
    rows += [("kd-mobilenet", "mobilenet", 1.0, 109_607, 0, "done", 0.70),
             ("kd-mobilenet", "mobilenet", 1.0, 109_607, 1, "in progress", math.nan)]
    rows += [("tail-mobilenet-w1", "mobilenet", 1.0, 109_607, s, "done", a) for s, a in enumerate([0.63, 0.632])]
    levers = cv.lever_frame(cv.points_frame(trials(rows)), configs).set_index(["block", "width"])

    ema = levers.loc[("ema-mobilenet", 1.0)]
    assert ema["change"] == "ema_decay 0.999" and ema["baseline"] == "grid-mobilenet w1"
    assert ema["difference"] == pytest.approx(0.03) and ema["spread"] == pytest.approx(math.hypot(0.01, 0.01))
    assert ema["verdict"] == "helps"
    small = levers.loc[("kd-mobilenet", 0.25)]
    assert small["difference"] == pytest.approx(-0.0025) and small["verdict"] == "within the spread"
    assert small["change"] == "teacher checkpoints/plain_cnn-w1"
    # one finished seed is 8 points ahead, and still no verdict: a single seed has no spread
    assert levers.loc[("kd-mobilenet", 1.0)]["verdict"] == "needs two finished seeds on each side"
    tail = levers.loc[("tail-mobilenet-w1", 1.0)]
    shipped = rundir.read_record(PROJECT_ROOT / "checkpoints" / "mobilenet-w1").headline()[1]
    assert tail["baseline"] == "checkpoints/mobilenet-w1" and tail["baseline_mean"] == pytest.approx(shipped)
    assert tail["spread"] == pytest.approx(pd.Series([0.63, 0.632]).std())  # the shipped weights are fixed, no draw
    assert tail["difference"] == pytest.approx(0.631 - shipped) and tail["verdict"] == "helps"
    assert "init_from checkpoints/mobilenet-w1" in tail["change"] and "lr 0.0002" in tail["change"]
    shown = cv.display_levers(levers.reset_index())
    assert list(shown["difference (points)"])[0] == "+3.0" and list(shown["spread (points)"])[0] == "1.4"


def study_trial(folder: Path, final: float, train: float, peak: tuple[int, float]) -> None:
    """A finished trial's folder: a real campaign record with its accuracies set to the figures given."""
    import json
    import shutil

    from core.util.fsutil import PROJECT_ROOT

    record = json.loads((PROJECT_ROOT / "checkpoints" / "mobilenet-w1" / "run.json").read_text())
    for e in record["epochs"]:
        e["val_split"], e["val_acc"] = "public", final - 0.01
    record["epochs"][peak[0] - 1]["val_acc"] = peak[1]
    record["final"]["accuracy"].update(public=final, train=train)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(record))
    shutil.copy(PROJECT_ROOT / "checkpoints" / "mobilenet-w1" / "model.onnx", folder / "model.onnx")


def test_the_reproductions_gap_comes_with_what_its_seeds_measured(tmp_path: Path) -> None:
    from core.views.study import campaign_reproduction

    study_trial(tmp_path / "s0", 0.600, 0.980, (20, 0.640))
    study_trial(tmp_path / "s1", 0.610, 0.960, (25, 0.630))
    frame = trials([("study-mobilenet", "mobilenet", 1.0, 109_607, s, "done", a) for s, a in enumerate([0.6, 0.61])])
    frame["folder"] = [str(tmp_path / "s0"), str(tmp_path / "s1")]
    peaks = cv.peak_frame(frame, "study-mobilenet")
    assert list(peaks["peak_epoch"]) == [20, 25] and list(peaks["peak"]) == pytest.approx([0.64, 0.63])
    text = "\n".join(campaign_reproduction(cv.points_frame(frame), frame))
    assert "0.6050 ± 0.0071 over 2 seeds, -4.6 points against the study" in text
    assert "seed 0: 0.6000 at the end, peak 0.6400 at epoch 20" in text and "training sample 0.9800" in text
    # 0.970 on the training sample against 0.605 public; 3.0 points lost after the peak on average
    assert "Measured cause: overfitting" in text and "0.970" in text and "lose 3.0 points" in text
    study_trial(tmp_path / "fit", 0.600, 0.650, (20, 0.610))
    frame = frame.iloc[:1].assign(folder=str(tmp_path / "fit"))
    assert "Not overfitting" in "\n".join(campaign_reproduction(cv.points_frame(frame), frame))


def test_the_curves_shown_first_are_the_running_trials_beside_their_finished_seeds() -> None:
    frame = trials([("grid-mobilenet", "mobilenet", 1.0, 109_607, 0, "done", 0.61),
                    ("grid-mobilenet", "mobilenet", 1.0, 109_607, 1, "in progress", math.nan),
                    ("grid-mobilenet", "mobilenet", 1.0, 109_607, 2, "pending", math.nan),
                    ("grid-mobilenet", "mobilenet", 0.5, 30_359, 0, "done", 0.57),
                    ("kd-mobilenet", "mobilenet", 1.0, 109_607, 0, "done", 0.62)])
    frame.loc[frame["state"] == "pending", "epoch"] = 0
    started = frame[frame["epoch"] > 0]
    assert cv.curve_defaults(started) == ["grid-mobilenet-w1-s0", "grid-mobilenet-w1-s1"]
    finished = started[started["state"] == "done"]
    assert cv.curve_defaults(finished) == ["kd-mobilenet-w1-s0"]  # none running: the last finished
