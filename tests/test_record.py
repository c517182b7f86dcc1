"""The typed run record, the run-folder module, TrainConfig's generated CLI flags and form, and the view helpers that
pages call: each checked without Streamlit."""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from core.training import rundir
from core.training.config import (
    TrainConfig,
    add_train_arguments,
    config_from_args,
    config_from_form,
    form_fields,
    to_cli_args,
)
from core.training.record import RunRecord
from core.util.fsutil import SHIPPED_DIR, atomic_write_json
from core.views import runviews
from core.views.archviews import depthwise_explainer
from core.views.dataviews import dataset_choices

GOOD = {"name": "r", "status": "done", "model": {"arch": "plain_cnn", "knobs": {"width": 0.5}},
        "epochs": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.3, "val_loss": 1.1, "val_acc": 0.25,
                    "val_split": "public", "lr": 0.001, "seconds": 2.0, "images_per_s": 900.0, "new_metric": 7}],
        "final": {"accuracy": {"public": 0.6, "train": 0.8}, "per_class": {}, "confusion": {}, "n": {"public": 10}},
        "params": 123, "future_key": {"kept": True}}


def test_every_shipped_record_loads_and_round_trips() -> None:
    for folder in sorted(p for p in SHIPPED_DIR.iterdir() if p.is_dir()):
        raw = json.loads((folder / rundir.RECORD).read_text())
        record = rundir.read_record(folder)
        assert record.to_json() == raw, folder.name  # nothing lost or invented, so old records stay as written
        assert record.model.arch in ("plain_cnn", "mobilenet") and record.final is not None


def test_unknown_keys_survive_and_headline_prefers_public() -> None:
    r = RunRecord.from_json(GOOD)
    assert r.to_json()["future_key"] == {"kept": True} and r.epochs[0].extra == {"new_metric": 7}
    assert r.headline() == ("public", 0.6) and math.isnan(r.accuracy("private"))
    assert RunRecord.from_json({**GOOD, "final": {"accuracy": {"val": 0.4}}}).headline() == ("val", 0.4)


@pytest.mark.parametrize("patch, field", [
    ({"status": "finished"}, "status"),
    ({"params": -3}, "params"),
    ({"params": True}, "params"),
    ({"wall_time_s": "long"}, "wall_time_s"),
    ({"model": {"arch": ""}}, "model.arch"),
    ({"model": {"arch": "plain_cnn", "knobs": {"width": "wide"}}}, "model.knobs"),
    ({"epochs": [{"epoch": 1}]}, "epochs[0]"),
    ({"final": {"accuracy": {"public": "high"}}}, "final.accuracy.public"),
    ({"final": {"confusion": {"public": [[1, 2]]}}}, "final.confusion.public"),
    ({"variant": {"parent": 3}}, "variant"),
    ({"config": [1, 2]}, "config"),
])
def test_a_bad_field_is_named(patch: dict, field: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"'{field}'")):
        RunRecord.from_json({**GOOD, **patch})


def test_run_status_of_a_starting_job_and_a_broken_folder(tmp_path: Path) -> None:
    starting = tmp_path / "starting"
    starting.mkdir()
    atomic_write_json(starting / rundir.JOB_FILE, {"pid": 2**22 + 7, "started_unix": 0.0})
    st = rundir.run_status(starting)
    assert st.status == "failed" and st.problem is None and not st.ok  # the process is gone and wrote nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "run record is missing" in rundir.run_status(empty).problem
    listed = {r.name for r in rundir.list_runs(tmp_path, include_shipped=False)}
    assert listed == {"starting", "empty"}


def test_stopped_run_with_resume_state_is_resumable(tmp_path: Path) -> None:
    run = tmp_path / "stopped"
    run.mkdir()
    cfg = TrainConfig(arch="plain_cnn", width=0.125, epochs=3)
    atomic_write_json(run / rundir.RECORD, {**GOOD, "status": "stopped", "config": cfg.to_dict()})
    (run / rundir.WEIGHTS).write_bytes(b"")  # weights are checked only for usability, not for resuming
    assert not rundir.run_status(run).resumable  # no resume state: nothing to continue from
    (run / rundir.RESUME).write_bytes(b"x")
    assert rundir.run_status(run).resumable


def test_every_config_field_has_a_flag_with_help_and_a_round_trip() -> None:
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    help_text = p.format_help()
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in help_text
        assert f.metadata["help"], f.name
    assert "default: 10" in help_text.replace("\n", " ")  # --epochs shows its default
    for cfg in (TrainConfig(), TrainConfig(augment=False, subset=100, teacher="runs/t", lr=0.1 / 3, dropout=0.25)):
        assert config_from_args(p.parse_args(to_cli_args(cfg))) == cfg


def test_form_fields_build_the_same_config() -> None:
    specs = {s.name: s for s in form_fields()}
    assert {"data", "dropout", "threads"}.isdisjoint(specs)  # those have their own widgets, or none
    assert specs["subset"].zero_is_none and specs["lr"].kind == "choice" and specs["augment"].kind == "bool"
    values = {name: s.default for name, s in specs.items()}
    cfg = config_from_form(values, data="synthetic", dropout=None)
    assert cfg.subset is None and cfg.max_steps is None and cfg.teacher is None
    # the quick demo's defaults (config.py says why these): a 30 s budget usually ends the run before its 30 epochs
    assert (cfg.arch, cfg.width, cfg.batch_size, cfg.epochs, cfg.time_budget_s) == ("plain_cnn", 0.125, 32, 30, 30)
    with pytest.raises(ValueError, match="warmup_epochs must be an integer from 0 to 30"):  # bounded by the epochs
        config_from_form({**values, "warmup_epochs": 31}, data="synthetic")


def test_views_behind_the_pages() -> None:
    text = depthwise_explainer("mobilenet", width=1.0)
    assert "9 depthwise-separable blocks" in text and "8.4x more" in text
    assert "89% of the model" in depthwise_explainer("plain_cnn", width=1.0)  # the head is the plain CNN's cost
    assert dataset_choices(None, None) == (["synthetic"], "synthetic")
    assert dataset_choices("synthetic", Path("/d/fer")) == (["synthetic", "/d/fer"], "synthetic")
    assert dataset_choices("/x/fer.csv", Path("/d/fer")) == (["synthetic", "/x/fer.csv"], "/x/fer.csv")
    table = pd.DataFrame({"data": ["synthetic", "FER2013 (image folder)", "FER2013 (image folder)"],
                          "acc_private": [0.5, math.nan, math.nan], "params": [1, 2, 3]})
    assert runviews.data_options(table) == ["FER2013 (image folder)", "synthetic"]
    assert runviews.chart_points(table, "FER2013 (image folder)", "acc_private").empty
    assert "no run on fer2013" in runviews.empty_chart_reason(table, "FER2013 (image folder)", "acc_private",
                                                             "private").lower()
    table["latency_ms"] = math.nan
    assert "latency is measured" in runviews.empty_chart_reason(table, "synthetic", "acc_private", "private",
                                                                "latency_ms", "latency")
    html = runviews.display_table(pd.DataFrame({"recipe": [None], "params": [math.nan]})).to_html()
    assert "—" in html and "None" not in html and "nan" not in html


def test_shipped_runs_table_and_default_model() -> None:
    runs = rundir.list_runs(None)
    table = runviews.runs_table(runs)
    assert len(table) == len([r for r in runs if r.ok]) and table["shipped"].all()
    best = runviews.best_model(runs)
    fp32 = table[table["technique"] == "fp32"]
    assert best is not None and best.name == fp32.loc[fp32["accuracy"].idxmax(), "name"]
    curves = runviews.run_curves(best.record)
    assert set(curves["kind"]) == {"loss", "accuracy"} and set(curves["split"]) == {"train", "public"}
