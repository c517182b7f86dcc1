"""Sweeps on real Ray Tune: bad input refused before anything starts, a 4-trial sweep on two simulated nodes
(ray.cluster_utils.Cluster, started once per session), and a trial killed with SIGKILL that resumes its epochs."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from core import cli
from core.cli import build_parser, main
from core.service import sweep
from core.training import rundir
from core.views import sweepviews

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(synthetic_size=200, max_steps=None, batch_size=32, width=0.125, threads=1, augment=False, subset=None)
# Under pytest-xdist every Ray test runs on one worker, so no two Ray clusters start at once (one test starts a
# stranger's cluster on purpose and checks that a sweep never joins it)
pytestmark = pytest.mark.xdist_group("ray")


def tiny_spec(name: str, **grid) -> sweep.SweepSpec:  # noqa: ANN003
    return sweep.SweepSpec(name, grid, {**TINY, "epochs": 1}, [0, 1])


# --- bad input: one clear ValueError naming the value, and nothing starts (no Ray needed) -------------------
@pytest.mark.parametrize("argv, message", [
    (["--arch", "plain_cnn", "--seeds", "0"], "empty grid"),
    (["--arch", "plain_cnn", "--width", "0.125", "0.25", "--lr", *[f"1e-{i}" for i in range(1, 6)],
      "--batch-size", *map(str, range(1, 11)), "--seeds", "3"],
     "300 trials, more than 200 without --yes"),
    (["--arch", "plain_cnn", "--width", "0.125", "0.25", "--lr", *[f"1e-{i}" for i in range(1, 6)],
      "--batch-size", *map(str, range(1, 11)), "--epochs", *map(str, range(1, 11)), "--seeds", "10", "--yes"],
     "10,000 trials, more than the cap of 1,000; check the values, or pass both --yes and --allow-huge-grid"),
    (["--arch", "plain_cnn", "--width", "0.125", "9"], "width must be a number from 0.0625 to 3, got 9.0 (trial 1: width=9.0, seed 0)"),
    (["--arch", "plain_cnn", "--lr", "fast"], "lr: 'fast' is not a float"),
    (["--arch", "plain_cnn", "--address", "nowhere"], "give auto or HOST:PORT"),
])
def test_bad_sweep_input_is_refused_before_anything_starts(argv: list[str], message: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", "--out", str(tmp_path), "--name", "bad", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / sweep.SWEEPS_DIR).exists() and not any(tmp_path.iterdir())


def test_a_huge_grid_is_refused_from_its_value_counts_before_any_trial_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def build(spec: sweep.SweepSpec) -> None:
        raise AssertionError(f"expand() built the {sweep.count(spec):,}-trial grid")

    monkeypatch.setattr(sweep, "expand", build)  # 50,000 configs once took 1 GB and a 60 MB sweep.json
    grid = ["--width", *[f"0.{i}" for i in range(1, 11)], "--lr", *[f"1e-{i}" for i in range(1, 11)],
            "--batch-size", *map(str, range(1, 51)), "--seeds", "10"]
    assert main(["sweep", "--out", str(tmp_path), "--name", "huge", "--arch", "plain_cnn", *grid, "--yes"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: the grid has 50,000 trials, more than the cap of 1,000; check the values, or pass both "
                   "--yes and --allow-huge-grid to run them all\n")
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="50,000 trials, more than the cap"):  # the flag alone is not enough either
        sweep.check_size(50_000, yes=False, allow_huge=True)
    sweep.check_size(50_000, yes=True, allow_huge=True)
    args = build_parser().parse_args(["sweep", "--arch", "plain_cnn", "--allow-huge-grid", "--yes"])
    assert args.allow_huge_grid and "allow_huge_grid" not in cli.spec_from_args(args).fixed  # a flag, not a knob


def test_unknown_knob_and_bad_sweep_files_name_the_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"unknown knob 'colour'; a sweep can vary: .*width"):
        sweep.expand(sweep.SweepSpec("x", {"colour": [1, 2]}))
    with pytest.raises(SystemExit) as exit_:  # on the command line argparse names it, and nothing starts
        main(["sweep", "--arch", "plain_cnn", "--colour", "red"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --colour red" in capsys.readouterr().err
    f = tmp_path / "s.toml"
    f.write_text('seeds = 2\n[grid]\nwidth = []\n[fixed]\narch = "plain_cnn"\n')
    with pytest.raises(ValueError, match="empty grid: no values for width"):
        sweep.expand(sweep.spec_from_toml(f))
    f.write_text('[grid]\nwidht = [0.25, 0.5]\n')
    with pytest.raises(ValueError, match="unknown knob 'widht'"):
        sweep.expand(sweep.spec_from_toml(f))
    f.write_text('[grid]\nwidth = 0.25\n')
    with pytest.raises(ValueError, match=r"\[grid\] width must be a list of values, got 0.25"):
        sweep.spec_from_toml(f)


def test_sweep_file_and_flags_make_the_grid(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('name = "widths"\nseeds = 3\n[grid]\narch = ["mobilenet", "plain_cnn"]\nwidth = [0.25, 0.5, 1.0]\n'
                 '[fixed]\nepochs = 30\n')
    args = build_parser().parse_args(["sweep", "--file", str(f), "--lr", "0.01", "--epochs", "5"])
    spec = cli.spec_from_args(args)
    trials = sweep.expand(spec)
    assert len(trials) == sweep.count(spec) == 2 * 3 * 3
    assert trials[0].name == "widths-000-mobilenet-width0.25-s0" and trials[-1].name.endswith("-plain_cnn-width1-s2")
    assert {t.config["epochs"] for t in trials} == {5} and {t.config["lr"] for t in trials} == {0.01}
    assert len({t.name for t in trials}) == 18 and sweep.expand(spec) == trials  # deterministic names


def test_without_ray_the_sweep_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    assert main(["sweep", "--out", str(tmp_path), "--arch", "plain_cnn", "--epochs", "1"]) == 2
    assert capsys.readouterr().err == f"error: {sweep.INSTALL_HINT}\n"
    assert 'pip install "ray[tune]==2.60.0"' in sweep.INSTALL_HINT


# --- real Ray ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ray_cluster():  # noqa: ANN201
    """Two simulated nodes of one CPU each, started once per test session; trials hold one CPU, so they spread."""
    ray = pytest.importorskip("ray", reason="Ray is optional; pip install -r requirements-dev.txt to test sweeps")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def four_trials(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: ANN001
    runs = tmp_path_factory.mktemp("sweep-runs")
    spec = tiny_spec("four", arch=["plain_cnn", "mobilenet"])
    state = sweep.run_sweep(sweep.expand(spec), spec.name, spec_doc=spec.describe(), runs_root=runs, quiet=True)
    return runs, state


def test_four_tiny_trials_write_ordinary_run_folders(four_trials: tuple[Path, dict]) -> None:
    runs, state = four_trials
    assert state["state"] == "done" and len(state["trials"]) == 4
    assert json.loads((runs / sweep.SWEEPS_DIR / "four" / sweep.SWEEP_FILE).read_text())["trials"] == state["trials"]
    assert state["grid"] == {"arch": ["plain_cnn", "mobilenet"]} and state["seeds"] == [0, 1]
    for t in state["trials"]:
        run = runs / t["run"]
        record = rundir.read_record(run)
        assert (t["state"], record.status, t["epoch"], len(record.epochs)) == ("done", "done", 1, 1)
        assert record.config == t["config"] and t["val_acc"] == record.epochs[-1].val_acc
        assert rundir.run_status(run).has_onnx  # the checkpoint contract, unchanged
        assert t["final"]["val"] == record.accuracy("val")
    assert {rundir.read_record(runs / t["run"]).config["seed"] for t in state["trials"]} == {0, 1}


def test_trials_spread_across_both_nodes(four_trials: tuple[Path, dict], ray_cluster) -> None:  # noqa: ANN001
    import ray

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    used = {t["node"] for t in four_trials[1]["trials"]}
    assert used == nodes, (used, nodes)


def test_killed_trial_is_recorded_and_resumes_from_its_last_epoch(ray_cluster, tmp_path: Path) -> None:  # noqa: ANN001
    from ray import tune

    killed: list[int] = []

    class KillAfterFirstEpoch(tune.Callback):
        """SIGKILL the trial's worker process once, right after its first epoch is on disk."""

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001, ANN003
            if not killed and result.get("epoch") == 1 and not result.get("finished"):
                killed.append(result["pid"])
                os.kill(result["pid"], signal.SIGKILL)

    spec = sweep.SweepSpec("kill", {}, {**TINY, "arch": "plain_cnn", "epochs": 3}, [0])
    state = sweep.run_sweep(sweep.expand(spec), "kill", runs_root=tmp_path, quiet=True, max_failures=2,
                            callbacks=[KillAfterFirstEpoch()])
    (t,) = state["trials"]
    record = rundir.read_record(tmp_path / t["run"])
    assert killed and t["failures"] == 1 and t["state"] == "done" and state["state"] == "done"
    assert t["pid"] != killed[0] and t["error"]  # Ray's reason for the failure it recovered from
    print("recorded failure:", t["error"])
    assert 1 <= record.resumed_from_epoch < 3 and [e.epoch for e in record.epochs] == [1, 2, 3]
    assert record.status == "done"


def test_compare_groups_sweep_runs_over_seeds(four_trials: tuple[Path, dict]) -> None:
    import math

    runs, state = four_trials
    df = sweepviews.sweep_groups(runs)
    assert list(df["arch"]) == ["plain_cnn", "mobilenet"] and set(df["sweep"]) == {"four"}
    assert list(df["seeds"]) == [2, 2] and list(df["done"]) == [2, 2]
    for _, row in df.iterrows():
        accs = [rundir.read_record(runs / t["run"]).accuracy("val") for t in state["trials"]
                if t["config"]["arch"] == row["arch"]]
        assert math.isclose(row["accuracy_mean"], sum(accs) / 2)
        assert math.isclose(row["accuracy_std"], abs(accs[0] - accs[1]) / math.sqrt(2), abs_tol=1e-12)
    table = sweepviews.trials_table(state)
    assert list(table["state"]) == ["done"] * 4 and list(table["epoch"]) == ["1/1"] * 4


def test_train_page_sweep_form_refuses_an_empty_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/3_Train.py").run()
    assert not at.exception
    if not sweep.ray_available():
        assert any(sweep.INSTALL_HINT in i.value for i in at.info)
        return
    at.multiselect(key="sweep_archs").set_value([])
    at.button(key="FormSubmitter:sweep_form-Start sweep").click().run()
    assert any("Could not start the sweep: empty grid" in e.value for e in at.error), [e.value for e in at.error]
    assert not (tmp_path / sweep.SWEEPS_DIR).exists() or not any((tmp_path / sweep.SWEEPS_DIR).iterdir())


def test_train_page_queues_a_sweep_and_shows_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep is one job of the runs folder's queue: with the only slot taken it waits, and the page says queued
    and its place; past the user's $FER_MAX_QUEUED the next one is refused on the page, no traceback."""
    from conftest import slot_taken
    from streamlit.testing.v1 import AppTest

    from core.training import queue

    pytest.importorskip("ray", reason="Ray is optional; pip install -r requirements-dev.txt to test sweeps")
    monkeypatch.setenv("FER_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("FER_MAX_RUNS", "1")
    monkeypatch.setenv("FER_MAX_QUEUED", "1")
    with slot_taken(tmp_path):
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
        at.run()
        at.switch_page("pages/3_Train.py").run()
        for name in ("waits", "refused"):
            at.text_input(key="sweep_name").set_value(name)
            at.button(key="FormSubmitter:sweep_form-Start sweep").click().run()
            assert not at.exception, at.exception
        assert any("**waits**" in m.value and "queued (place 1)" in m.value for m in at.markdown)
        assert any("Could not start the sweep: you already have 1 job queued or running" in e.value
                   for e in at.error), [e.value for e in at.error]
        assert [(e.kind, e.run_dir.name) for e in queue.waiting(tmp_path)] == [("sweep", "waits")]
        at.button(key="cancel_sweep_waits").click().run()  # its owner (this browser) takes it out of the line
        assert not at.exception, at.exception
        assert not queue.waiting(tmp_path) and not (tmp_path / sweep.SWEEPS_DIR / "waits").exists()
        assert not any("**waits**" in m.value for m in at.markdown)
