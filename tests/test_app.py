"""The Streamlit app through AppTest: every page renders, widgets by key, background training end to end,
predictions on the sample photo and on a corrupt upload; plus core.service.jobs and core.report on their own."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLE_PHOTO, wait_for_status
from streamlit.testing.v1 import AppTest

from core.service import jobs
from core.training import rundir
from core.training.config import TrainConfig, to_cli_args
from core.util.classes import CLASSES
from core.util.fsutil import runs_dir
from core.views import archviews, runviews
from core.views.text import format_eta

PAGES = ["pages/1_Architectures.py", "pages/2_Data.py", "pages/3_Train.py", "pages/4_Compare.py", "pages/5_Predict.py",
         "pages/6_Inside.py", "pages/7_Compress.py"]


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


wait_for = wait_for_status  # shared helper (conftest); the short name reads better in these tests


@pytest.fixture(scope="module")
def onnx_model() -> Path:
    """A run with an ONNX model in the runs folder (the Predict page needs one; checkpoints/ may be empty)."""
    from core.training.rundir import list_runs
    from core.training.runs import run_training

    usable = [i for i in list_runs(runs_dir()) if i.ok and i.has_onnx]
    if usable:
        return usable[0].path
    run_dir = runs_dir() / "tiny-predict"
    cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=300, epochs=1, max_steps=4, batch_size=32,
                      lr=3e-3, augment=False)
    list(run_training(cfg, run_dir))
    return run_dir


def test_every_page_renders_without_exception() -> None:
    at = app()
    assert any("Architectures" in t.value for t in at.title)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert len(at.title) == 1, page


def test_width_slider_changes_parameter_count() -> None:
    at = app("pages/1_Architectures.py")
    at.selectbox(key="arch_family").set_value("plain_cnn").run()
    at.slider(key="arch_width").set_value(1.0).run()
    assert metric(at, "Parameters") == "2,959,943"
    at.slider(key="arch_width").set_value(0.5).run()
    half = metric(at, "Parameters")
    assert half != "2,959,943" and int(half.replace(",", "")) < 2_959_943
    at.selectbox(key="arch_family").set_value("mobilenet").run()
    at.slider(key="arch_width").set_value(1.0).run()
    assert metric(at, "Parameters") == "109,607"
    assert not at.exception
    # the depthwise-separable explanation quotes the current model's own numbers
    assert any("depthwise-separable blocks hold" in i.value for i in at.info)


def test_data_page_bad_path_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    at = app("pages/2_Data.py")
    assert any("synthetic" in m.value.lower() for m in at.metric)
    at.radio(key="data_choice").set_value("fer2013").run()
    at.text_input(key="data_path").set_value(str(tmp_path / "missing")).run()
    assert not at.exception
    assert any("no such file or folder" in e.value for e in at.error)


def test_bad_run_name_shows_error() -> None:
    at = app("pages/3_Train.py")
    at.text_input(key="train_name").set_value("../escape").run()
    assert not at.exception
    assert any("not allowed" in e.value for e in at.error)
    assert at.button(key="train_start").proto.disabled
    assert not (runs_dir().parent / "escape").exists()


def test_train_page_tells_about_the_servers_micro_batch_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_MICRO_BATCH", "16")
    at = app("pages/3_Train.py")
    assert any("micro-batches of at most 16 images" in c.value for c in at.caption)
    monkeypatch.setenv("FER_MICRO_BATCH", "lots")
    at = app("pages/3_Train.py")
    assert any("FER_MICRO_BATCH must be an integer, got 'lots'" in w.value for w in at.warning)
    assert not at.exception


def test_train_page_runs_a_tiny_job_that_appears_on_compare() -> None:
    at = app("pages/3_Train.py")
    at.selectbox(key="train_arch").set_value("plain_cnn")
    at.slider(key="train_width").set_value(0.125)
    at.number_input(key="train_epochs").set_value(1)
    at.selectbox(key="train_batch_size").set_value(32)
    at.number_input(key="train_synthetic_size").set_value(200)
    at.number_input(key="train_max_steps").set_value(3)
    at.text_input(key="train_name").set_value("apptest-run")
    at.run()
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    run_dir = runs_dir() / "apptest-run"
    assert (run_dir / rundir.JOB_FILE).exists()
    done = wait_for(run_dir, ("done", "failed", "stopped", "interrupted"))
    assert done.status == "done", done.error
    assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
    at.run()  # the runs panel now shows the finished run
    assert not at.exception
    assert any("apptest-run" in m.value for m in at.markdown)
    assert any(s.value.startswith("Done in") for s in at.success)
    at.switch_page("pages/4_Compare.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    row = table[table["name"] == "apptest-run"].iloc[0]
    assert row["status"] == "done" and row["arch"] == "plain_cnn" and not row["shipped"]
    assert 0.0 <= row["acc_val"] <= 1.0


def test_stop_button_stops_a_running_job() -> None:
    cfg = TrainConfig(arch="plain_cnn", width=0.125, synthetic_size=3000, epochs=50, batch_size=16, lr=3e-3,
                      augment=False)
    run_dir = jobs.start_run(cfg, name="apptest-stop")
    try:
        wait_for(run_dir, ("running",), timeout=180)
        deadline = time.monotonic() + 60
        while rundir.run_status(run_dir).progress is None and time.monotonic() < deadline:
            time.sleep(0.3)
        progress = rundir.run_status(run_dir).progress  # written by `core train --run-dir` between epochs' records
        assert progress and progress["global_step"] >= 1 and progress["total_steps"] == 50 * (2400 // 16)
        at = app("pages/3_Train.py")
        at.button(key="stop_apptest-stop").click().run()
        assert not at.exception
        t0 = time.monotonic()
        st = wait_for(run_dir, ("stopped", "done", "failed", "interrupted"), timeout=120)
        assert st.status == "stopped", (st.status, st.error)
        assert time.monotonic() - t0 < 60
    finally:
        if rundir.run_status(run_dir).active:
            jobs.stop_run(run_dir, kill=True)


def face_metrics(at: AppTest) -> list[tuple[str, float]]:
    """(class, probability) of each face's metric on Predict: the value reads like 'happy 83%'."""
    out = []
    for m in at.metric:
        if m.label.startswith("Face"):
            name, pct = m.value.rsplit(" ", 1)
            out.append((name, float(pct.rstrip("%")) / 100))
    return out


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe on the page with this column (AppTest's dataframes carry no key): on Predict, the face
    grid has 'expression', the full table 'top'."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_predict_sample_photo_shows_a_prediction(onnx_model: Path) -> None:
    at = app("pages/5_Predict.py")
    assert not at.info or "No model" not in at.info[0].value
    at.button(key="predict_sample").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    tops = face_metrics(at)
    assert tops and all(t in CLASSES and 1 / len(CLASSES) <= p <= 1 for t, p in tops)  # the class with its probability
    grid = frame_with(at, "expression")
    assert list(grid["expression"]) == [t for t, _ in tops] and grid["photo"].str.contains("astronaut").all()
    table = frame_with(at, "top")
    assert len(table) == len(tops) and table["photo"].str.contains("astronaut").all()
    # one click takes this face to the Inside page, with the model that classified it
    model = at.selectbox(key="predict_model").value
    at.button(key="inside_0_1").click().run()
    assert not at.exception, at.exception
    assert at.session_state["inside_face"].shape == (48, 48) and at.session_state["inside_source"] == "predict"
    assert at.session_state["inside_model_pick"] == model  # the run whose model classified the face
    assert any(h.value == "Layer by layer" for h in at.subheader), [h.value for h in at.subheader]


def test_predict_with_ten_crops_folds_the_views_into_a_copy(onnx_model: Path) -> None:
    """Ten crops: the face is classified by the run's weights with the views in a cached copy of its graph, whose
    answer is that graph's on the same crop; the run's own files stay as they were."""
    from core.inference.onnx_io import OnnxClassifier
    from core.inference.photo import analyze_photo
    from core.training.runs import tta_graph

    before = {p.name: p.read_bytes() for p in onnx_model.iterdir() if p.is_file()}
    at = app("pages/5_Predict.py")
    at.selectbox(key="predict_model").set_value(str(onnx_model)).run()
    at.button(key="predict_sample").click().run()
    plain = face_metrics(at)
    at.radio(key="predict_tta").set_value("tencrop").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    tops = face_metrics(at)
    assert len(tops) == len(plain) and all(t in CLASSES for t, _ in tops)
    assert any("test-time augmentation: ten crops" in c.value for c in at.caption), [c.value for c in at.caption]
    graph = tta_graph(onnx_model, "tencrop")  # the cached copy the page made: no second export
    assert graph.parent.name == "tta" and OnnxClassifier.get(graph).meta["tta"] == "tencrop"
    faces = analyze_photo(SAMPLE_PHOTO.read_bytes(), "astronaut.jpg", str(graph)).faces
    assert [f"{f.top} {f.confidence:.0%}" for f in faces] == [f"{t} {p:.0%}" for t, p in tops]
    assert {p.name: p.read_bytes() for p in onnx_model.iterdir() if p.is_file()} == before


def test_predict_a_compressed_variant_runs_as_is() -> None:
    """An int8 variant has no weights to re-export with views: the choice is disabled, its own graph classifies,
    and asking core for a copy anyway is a ValueError that says why."""
    from core.training.runs import tta_graph
    from core.util.fsutil import SHIPPED_DIR

    variant = SHIPPED_DIR / "mobilenet-w1--int8"
    at = app("pages/5_Predict.py")
    at.selectbox(key="predict_model").set_value(str(variant)).run()
    assert at.radio(key="predict_tta").disabled
    at.button(key="predict_sample").click().run()
    assert not at.exception and not at.error and face_metrics(at)
    with pytest.raises(ValueError, match="compressed variant has only its graph"):
        tta_graph(variant, "flip")


def test_predict_corrupt_upload_is_an_error_and_others_still_work(onnx_model: Path) -> None:
    at = app("pages/5_Predict.py")
    at.file_uploader(key="predict_upload").set_value([
        ("bad.jpg", b"not an image", "image/jpeg"),
        ("astronaut.jpg", SAMPLE_PHOTO.read_bytes(), "image/jpeg"),
    ]).run()
    assert not at.exception
    # name shown literally
    assert any(e.value.startswith(r"bad\.jpg\: ") for e in at.error), [e.value for e in at.error]
    assert face_metrics(at)[0][0] in CLASSES
    table = frame_with(at, "top")
    assert (table["photo"] == "astronaut.jpg").any() and not (table["photo"] == "bad.jpg").any()


def test_predict_no_face_says_so_and_a_box_by_hand_is_classified(onnx_model: Path) -> None:
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (400, 200), (200, 200, 200))
    ImageDraw.Draw(img).rectangle((300, 100, 380, 180), fill=(20, 20, 20))  # something dark in the bottom right
    buf = io.BytesIO()
    img.save(buf, "PNG")
    at = app("pages/5_Predict.py")
    at.file_uploader(key="predict_upload").set_value([("wall__happy.png", buf.getvalue(), "image/png"),
                                                      ("astronaut.jpg", SAMPLE_PHOTO.read_bytes(), "image/jpeg")]).run()
    assert not at.exception and not at.error
    assert any(w.value.startswith(r"No face found in wall\_\_happy\.png")
               for w in at.warning), [w.value for w in at.warning]
    assert any(e.label.startswith(r"wall\_\_happy\.png · no face found") for e in at.expander)
    grid = frame_with(at, "expression")
    assert list(grid["found by"]) == ["centre", "mtcnn"] and grid["label"][0] == "happy"
    assert any(i.value.startswith("Matches your label:") and "of 1 faces" in i.value for i in at.info)
    centre_probs = frame_with(at, "top").iloc[0]
    # the square over the dark block, by hand: the photo is classified on it instead
    at.slider(key="predict_box_x_0").set_value(0.85).run()
    at.slider(key="predict_box_y_0").set_value(0.7).run()
    at.slider(key="predict_box_size_0").set_value(0.45).run()
    assert not at.exception and not at.error
    grid = frame_with(at, "expression")
    assert list(grid["found by"]) == ["manual", "mtcnn"]
    row = frame_with(at, "top").iloc[0]
    assert row["box"] == "295 95 90 90" and not row["no_face_found"]
    assert any(abs(row[c] - centre_probs[c]) > 1e-4 for c in CLASSES)  # a different crop, a different answer


def test_compare_lists_a_broken_folder_with_its_reason() -> None:
    broken = runs_dir() / "apptest-broken"
    broken.mkdir(exist_ok=True)
    (broken / "run.json").write_text("{not json")
    try:
        at = app("pages/4_Compare.py")
        assert not at.exception
        assert any("apptest-broken" in w.value and "not valid JSON" in w.value for w in at.warning)
    finally:
        (broken / "run.json").unlink()
        broken.rmdir()


# --- core.service.jobs, core.training.rundir and the view tables without the UI ------------------------------------
def test_cli_args_rebuild_the_same_config() -> None:
    from core.cli import build_parser

    cfg = TrainConfig(arch="mobilenet", width=0.375, dropout=0.15, synthetic_size=500, subset=100, epochs=2,
                      max_steps=7, batch_size=48, lr=0.0031, augment=False, label_smoothing=0.1, device="cpu")
    from core.training.config import config_from_args

    for c in (cfg, TrainConfig(), TrainConfig(teacher="runs/x", threads=1, precision="fp32", schedule="constant")):
        assert config_from_args(build_parser().parse_args(["train", *to_cli_args(c)])) == c


def test_dead_process_with_running_record_is_interrupted(tmp_path: Path) -> None:
    run_dir = tmp_path / "ghost"
    run_dir.mkdir()
    cfg = TrainConfig(arch="plain_cnn", width=0.125, epochs=2)
    (run_dir / "run.json").write_text(json.dumps({"name": "ghost", "status": "running", "model": {"arch": "plain_cnn"},
                                                  "config": cfg.to_dict(), "epochs": [], "pid": 2**22 + 12345}))
    st = rundir.run_status(run_dir)
    assert st.status == "interrupted" and st.resumable and "resumed" in st.error
    with pytest.raises(ValueError, match="not running"):
        jobs.stop_run(run_dir)
    assert format_eta(75) == "1m 15s" and format_eta(None) == "estimating..."


def test_pareto_front_keeps_only_undominated_runs() -> None:
    df = pd.DataFrame({"name": list("abcdef"), "params": [10, 20, 30, 40, 50, 50],
                       "accuracy": [0.50, 0.45, 0.60, 0.60, 0.70, 0.65]})
    assert runviews.pareto_front(df)["name"].tolist() == ["a", "c", "e"]
    refs = archviews.reference_points()
    assert set(refs["params"]) == {2_959_943, 109_607}
    grid = archviews.params_vs_width(["mobilenet"], [1.0])
    assert grid["params"].tolist() == [109_607]


def test_conv_breakdown_backs_the_depthwise_argument() -> None:
    b = archviews.conv_breakdown("mobilenet", width=1.0)
    assert b["pointwise_params"] > 10 * b["depthwise_params"]  # 1x1 convs carry the capacity
    assert b["pairs_standard"] > 8 * b["pairs_separable"]  # standard 3x3 convs would cost 8-9x more
    plain = archviews.conv_breakdown("plain_cnn", width=1.0)
    assert plain["pairs"] == [] and plain["standard_total"] > 8 * plain["standard_as_separable"]


def test_pages_stay_thin() -> None:
    root = Path(__file__).resolve().parent.parent
    banned = ("import torch", "from torch", "onnxruntime", "InferenceSession", "torch.save", "torch.load", "torch.onnx",
              "run_training", "export_onnx", "nn.Module")
    for page in [root / "streamlit_app.py", *(root / "pages").glob("*.py")]:
        text = page.read_text()
        assert not [w for w in banned if w in text], page.name
    assert os.environ["FER_RUNS_DIR"] == str(runs_dir())


def test_a_compression_variant_is_not_listed_as_a_training(tiny_run: Path) -> None:
    """A variant's record copies its parent's time and curves: under Train's Runs it would pass for a finished
    training, so Train leaves it out (and says where it is) while its parent stays."""
    import shutil

    from core.compression.compress import CompressConfig, compress_run

    parent = runs_dir() / "train-parent"
    shutil.copytree(tiny_run, parent, dirs_exist_ok=True)
    compress_run(parent, CompressConfig(fp16=True, data="synthetic", repeats=3), force=True)
    at = app("pages/3_Train.py")
    shown = " ".join(m.value for m in at.markdown)
    assert "**train-parent**" in shown and "train-parent--fp16" not in shown
    assert any("compression variant(s) are not trainings" in c.value for c in at.caption)


def test_run_curves_have_a_colour_per_split_and_only_their_own_legend() -> None:
    from core.views import charts

    def df(splits: list[str]) -> pd.DataFrame:
        return pd.DataFrame([{"epoch": e, "kind": "accuracy", "split": s, "value": 0.1 * e}
                             for e in (1, 2) for s in splits])

    synthetic = charts.run_curve_chart(df(["train", "val"]), "accuracy", 3).to_dict()
    scale = synthetic["encoding"]["color"]["scale"]
    assert scale["domain"] == ["train", "val"] and len(set(scale["range"])) == 2  # no public/private in its legend
    fer = (charts.run_curve_chart(df(["train", "public", "private"]), "accuracy", 3)
           .to_dict()["encoding"]["color"]["scale"])
    assert fer["domain"] == ["train", "public", "private"] and len(set(fer["range"])) == 3
    assert len(set(charts.SPLIT_COLOURS.values())) == len(charts.SPLIT_COLOURS)  # val and public no longer share one
    assert synthetic["height"] >= 300  # the whole chart's: the plot itself must not shrink to a strip


def test_small_texts_say_what_the_charts_show() -> None:
    """The depthwise explainer names both counts, axis titles carry one unit and one '(log scale)', and the Data
    caption quotes the synthetic set's own disgust share."""
    from core.data.synthetic import CLASS_WEIGHTS
    from core.views import charts

    b = archviews.conv_breakdown("mobilenet", width=1.0)
    text = archviews._pairs_text("MobileNet-style", 1.0, b)
    dw = b["pairs_depthwise"]
    assert f"({dw:,} depthwise + {b['pairs_separable'] - dw:,} pointwise)" in text and dw > 0
    assert all("(" not in t for t in charts.X_AXES.values())
    at = app("pages/2_Data.py")
    assert any(f"({CLASS_WEIGHTS[1]:.0%} of its faces" in c.value for c in at.caption)
