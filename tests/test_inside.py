"""A look inside a model (core.explain.featuremaps, core.explain.cam, core.explain.gallery, core.views.inside) without
Streamlit, then the Inside page and the Compare page's confusion gallery through AppTest."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SAMPLE_PHOTO
from streamlit.testing.v1 import AppTest

from core.data import FERData, Split
from core.data.synthetic import generate
from core.explain import cam, featuremaps, gallery
from core.inference.onnx_io import OnnxClassifier
from core.models import archs
from core.training.checkpoint import load_model
from core.training.rundir import read_record
from core.util.classes import CLASSES, NUM_CLASSES
from core.util.fsutil import SHIPPED_DIR, cache_dir
from core.views import inside

SMALL = SHIPPED_DIR / "mobilenet-w0.25"  # the smallest shipped model: quick to load and to run
needs_shipped = pytest.mark.skipif(not (SMALL / "model.pt").is_file() or not (SHIPPED_DIR / "mobilenet-w1").is_dir(),
                                   reason="shipped checkpoints not present in checkpoints/")


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    images, labels = generate(64, seed=3)
    return images, labels


# --- feature maps ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", archs.list_archs())
def test_hooks_give_every_rows_output_for_every_family(arch: str, faces) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = archs.build(arch, width=0.125).eval()
    crop = faces[0][0]
    with torch.no_grad():
        expected_logits = model(featuremaps.as_input(crop))[0].numpy()
    for level in featuremaps.LEVELS:
        rows = featuremaps.feature_maps(model, crop, level)
        assert rows[0].name == "input" and rows[0].shape == (1, 48, 48)
        assert rows[-1].role == "logits" and rows[-1].shape == (NUM_CLASSES,)
        np.testing.assert_allclose(rows[-1].maps.ravel(), expected_logits, rtol=1e-5, atol=1e-5)  # hooks left it alone
        for row in rows:
            assert row.maps.shape[0] == row.shape[0] and row.maps.size == int(np.prod(row.shape)), row.name
            assert sorted(row.order.tolist()) == list(range(row.shape[0]))  # a permutation of the channels
            assert (np.diff(row.activity) <= 1e-6).all(), row.name  # most active first
            if len(row.convs) == 1:
                assert row.shape[0] == row.convs[0].out_channels, row.name
                assert row.role == featuremaps.conv_kind(row.convs[0])
        module_names = dict(model.named_modules())
        linear = [r for r in rows if r.role in ("fully connected", "logits")]
        assert all(r.shape == (module_names[r.name].out_features,) for r in linear)
        assert sum(r.params for r in rows) <= sum(p.numel() for p in model.parameters())
        assert featuremaps.channel_grid(rows[1], 8).ndim == 3


def test_study_models_rows_follow_their_stage_tables(faces) -> None:  # noqa: ANN001
    """Shapes computed from the architecture tables, independently of the hooks."""
    crop = faces[0][0]
    plain = featuremaps.feature_maps(archs.build("plain_cnn", width=1.0), crop)
    expected, side = [(1, 48, 48)], 48
    for channels, convs in archs.PLAIN_STAGES:
        expected += [(channels, side, side)] * convs
        side //= 2
        expected.append((channels, side, side))
    expected += [(archs.PLAIN_HIDDEN,), (archs.PLAIN_HIDDEN,), (NUM_CLASSES,)]
    assert [r.shape for r in plain] == expected
    mobile = featuremaps.feature_maps(archs.build("mobilenet", width=1.0), crop)
    side, cin = 24, archs.MOBILENET_STEM
    expected = [(1, 48, 48), (cin, side, side)]
    for cout, stride in archs.MOBILENET_BLOCKS:
        side = -(-side // stride)
        expected += [(cin, side, side), (cout, side, side)]
        cin = cout
    expected += [(cin, 1, 1), (NUM_CLASSES,)]
    assert [r.shape for r in mobile] == expected
    roles = [r.role for r in mobile]
    assert roles.count("depthwise") == len(archs.MOBILENET_BLOCKS) == roles.count("pointwise")
    for dw, pw in zip(mobile, mobile[1:]):
        if dw.role == "depthwise":  # every depthwise conv filters channels alone and a pointwise one mixes them next
            assert dw.convs[0].groups == dw.convs[0].in_channels and pw.role == "pointwise"
            assert "filtered alone" in dw.caption and "would need" in pw.caption
    assert "Standard 3x3" in plain[2].caption and "pair would need" in plain[2].caption


def test_first_filters_and_layer_lookup() -> None:
    model = archs.build("mobilenet", width=0.5)
    grid, caption = featuremaps.first_filters(model)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3 and "filters, 3x3" in caption
    assert featuremaps.find_layer(model, "body.2.0") is model.body[2][0]
    with pytest.raises(ValueError, match=r"no layer 'body\.99'.*body\.2\.0"):
        featuremaps.find_layer(model, "body.99")
    with pytest.raises(ValueError, match="48x48"):
        featuremaps.feature_maps(model, np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="level"):
        featuremaps.feature_maps(model, np.zeros((48, 48), np.uint8), "everything")


# --- Grad-CAM ----------------------------------------------------------------------------------------------------
@needs_shipped
def test_grad_cam_has_the_crops_size_is_not_constant_and_follows_the_class(faces) -> None:  # noqa: ANN001
    model, _ = load_model(SHIPPED_DIR / "mobilenet-w0.5")
    crop = faces[0][0]
    rows = featuremaps.feature_maps(model, crop)
    layer = cam.default_cam_layer(rows)
    assert layer in cam.cam_layers(rows)
    maps = {}
    for target in range(NUM_CLASSES):
        result = cam.grad_cam(model, crop, layer, target)
        assert result.heat.shape == (48, 48) and result.target == target
        maps[target] = result.heat
    assert sum(m.std() > 0.01 for m in maps.values()) >= NUM_CLASSES - 1  # a class can have no positive evidence
    top = cam.grad_cam(model, crop, layer)
    assert top.target == int(np.argmax(featuremaps.probabilities(rows))) and top.heat.max() == pytest.approx(1.0)
    assert any(cam.agreement(maps[0], m) < 0.99 for m in maps.values())  # classes are explained differently
    with pytest.raises(ValueError, match="no layer 'nope'"):
        cam.grad_cam(model, crop, "nope")
    with pytest.raises(ValueError, match="unknown class 'bored'"):
        cam.grad_cam(model, crop, layer, "bored")


def test_agreement_and_photo_overlay() -> None:
    a = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (48, 1))
    assert cam.agreement(a, a) == pytest.approx(1.0) and cam.agreement(a, 1 - a) == pytest.approx(-1.0)
    assert np.isnan(cam.agreement(a, np.zeros_like(a)))
    assert cam.peak(a) == (0, 47)
    assert cam.face_square((10, 20, 40, 40), 0.0) == (10, 20, 40)


@needs_shipped
def test_photo_faces_bad_photos_are_clear_errors() -> None:
    from PIL import Image

    onnx = SMALL / "model.onnx"
    result = cam.photo_faces(SAMPLE_PHOTO.read_bytes(), "astronaut.jpg", onnx)
    assert result.faces and min(result.faces[0].box[2:]) >= cam.MIN_FACE_PX
    on_photo = cam.overlay_on_photo(result, 0, np.ones((48, 48), np.float32))
    assert on_photo.shape == result.display.shape and (on_photo != result.display).any()

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return buf.getvalue()

    with pytest.raises(ValueError, match="no face found"):
        cam.photo_faces(png(Image.new("RGB", (200, 150), (120, 130, 140))), "wall.png", onnx)
    tiny = Image.open(SAMPLE_PHOTO).crop((176, 66, 272, 162)).resize((30, 30))
    with pytest.raises(ValueError, match="only 30x30 px, too small"):
        cam.photo_faces(png(tiny), "tiny.png", onnx)


# --- gallery -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_predictions() -> gallery.Predictions:
    if not (SMALL / "model.onnx").is_file():
        pytest.skip("shipped checkpoints not present in checkpoints/")
    return gallery.predict_split(SMALL / "model.onnx", gallery.gallery_data("synthetic"))


def test_gallery_cells_add_up_to_the_confusion_matrix(synthetic_predictions: gallery.Predictions) -> None:
    pred = synthetic_predictions
    assert pred.synthetic and pred.split == "val" and len(pred.labels) == len(pred.images)
    # independently: ONNX Runtime directly, then a pandas cross-tabulation
    probs = OnnxClassifier.get(SMALL / "model.onnx").probabilities(pred.images)
    table = pd.crosstab(pd.Categorical(pred.labels, categories=range(NUM_CLASSES)),
                        pd.Categorical(probs.argmax(1), categories=range(NUM_CLASSES)), dropna=False).to_numpy()
    total = 0
    for t in range(NUM_CLASSES):
        for p in range(NUM_CLASSES):
            faces = gallery.cell(pred, CLASSES[t], CLASSES[p])
            assert len(faces) == table[t, p], (t, p)
            assert (np.diff(faces["confidence"].to_numpy()) <= 0).all()  # most confident first
            assert (pred.labels[faces["index"]] == t).all() and (probs[faces["index"]].argmax(1) == p).all()
            total += len(faces)
    assert total == len(pred.labels) and (pred.confusion() == table).all()
    typ = gallery.typical(pred, "happy", 5)
    assert len(typ) <= 5 and (typ["true"] == "happy").all() and (typ["predicted"] == "happy").all()


def test_gallery_cache_is_keyed_by_model_and_data(synthetic_predictions: gallery.Predictions, tmp_path: Path) -> None:
    shared = gallery.gallery_data("synthetic")
    before = set(cache_dir("predictions").glob("*.npz"))
    again = gallery.predict_split(SMALL / "model.onnx", shared)
    assert set(cache_dir("predictions").glob("*.npz")) == before  # read back, not recomputed
    np.testing.assert_array_equal(again.probs, synthetic_predictions.probs)
    val = shared.splits["val"]
    labels = val.labels.copy()
    labels[0] = (labels[0] + 1) % NUM_CLASSES  # other data -> other key
    data = FERData("synthetic", "synthetic", {"val": Split(val.images, labels)})
    gallery.predict_split(SMALL / "model.onnx", data)
    copy = tmp_path / "model.onnx"
    shutil.copy(SHIPPED_DIR / "mobilenet-w0.5" / "model.onnx", copy)  # another model -> another key
    gallery.predict_split(copy, data)
    assert len(set(cache_dir("predictions").glob("*.npz")) - before) == 2


def test_gallery_bad_cells(synthetic_predictions: gallery.Predictions) -> None:
    pred = synthetic_predictions
    conf = pred.confusion()
    empty = [(t, p) for t in range(NUM_CLASSES) for p in range(NUM_CLASSES) if conf[t, p] == 0]
    if empty:
        t, p = empty[0]
        assert gallery.cell(pred, t, p).empty and "No face in this cell" in gallery.cell_message(pred, t, p)
    with pytest.raises(ValueError, match="true class 'bored' is unknown"):
        gallery.cell(pred, "bored", "happy")
    with pytest.raises(ValueError, match="predicted class 9"):
        gallery.cell(pred, "happy", 9)
    t, p = gallery.biggest_mistake(pred)
    assert t != p and conf[t, p] == max(conf[i, j] for i in range(NUM_CLASSES) for j in range(NUM_CLASSES) if i != j)


@needs_shipped
def test_gallery_on_fer2013_matches_the_training_record(fer_dir: Path) -> None:
    """ONNX Runtime's public-split confusion against the one PyTorch recorded at the end of training."""
    run = SHIPPED_DIR / "mobilenet-w0.25"
    pred = gallery.predict_split(run / "model.onnx", gallery.gallery_data(str(fer_dir)))
    recorded = np.array(json.loads((run / "run.json").read_text())["final"]["confusion"]["public"])
    assert pred.split == "public" and not pred.synthetic and pred.confusion().sum() == recorded.sum() == 3589
    assert np.abs(pred.confusion() - recorded).sum() <= 10  # a few near-ties may flip between the two runtimes


@needs_shipped
def test_sources_and_handed_faces(tmp_path: Path) -> None:
    record = read_record(SMALL)
    record.data["source"] = str(tmp_path / "missing")
    assert gallery.gallery_source(None, record) in ("synthetic", str(gallery.find_fer()))
    assert gallery.gallery_source(str(tmp_path), None) == str(tmp_path)
    data = gallery.gallery_data("synthetic")
    img, label = inside.dataset_face(data, "val", 0)
    assert img.shape == (48, 48) and 0 <= label < NUM_CLASSES
    with pytest.raises(ValueError, match="out of range: val has images 0-599"):
        inside.dataset_face(data, "val", 600)
    with pytest.raises(ValueError, match="split 'public' is not in"):
        inside.dataset_face(data, "public", 0)
    assert inside.handed_face(img) is not None
    with pytest.raises(ValueError, match="uint8 48x48"):
        inside.handed_face(np.zeros((48, 48), np.float32))


# --- the pages through AppTest -----------------------------------------------------------------------------------
def page(path: str, **state) -> AppTest:  # noqa: ANN003 - session keys to set before the first run
    at = AppTest.from_file("../streamlit_app.py", default_timeout=240)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


@needs_shipped
def test_inside_page_renders_and_a_class_change_updates_grad_cam() -> None:
    at = page("pages/6_Inside.py")
    assert not at.error, [e.value for e in at.error]
    assert at.radio(key="inside_source").value == "dataset"
    predicted = next(m.value for m in at.metric if m.label == "Prediction")
    assert predicted in CLASSES
    assert f"Grad-CAM for '{predicted}'" in captions(at) and "Standard 3x3 conv" in captions(at)
    other = next(c for c in CLASSES if c != predicted)
    at.selectbox(key="inside_cam_class").set_value(other).run()
    assert not at.exception and f"Grad-CAM for '{other}'" in captions(at)
    mobilenet = str(SHIPPED_DIR / "mobilenet-w1")
    at.selectbox(key="inside_model_pick").set_value(mobilenet).run()
    assert not at.exception and not at.error
    assert "Depthwise 3x3: each of its" in captions(at) and "Pointwise 1x1" in captions(at)


@needs_shipped
def test_inside_takes_the_face_predict_hands_over(faces) -> None:  # noqa: ANN001
    from core.inference.photo import analyze_photo

    photo = analyze_photo(SAMPLE_PHOTO.read_bytes(), "astronaut.jpg", SMALL / "model.onnx")
    at = page("pages/6_Inside.py", **{inside.FACE_KEY: photo.faces[0].crop, inside.MODEL_KEY: str(SMALL),
                                      inside.PHOTO_KEY: (photo, 0)})
    assert not at.error and not at.warning, [e.value for e in [*at.error, *at.warning]]
    assert at.radio(key="inside_source").value == "predict"
    assert at.selectbox(key="inside_model_pick").value == str(SMALL)
    assert next(m.value for m in at.metric if m.label == "Prediction") == photo.faces[0].top
    with_photo = len(at.get("image"))
    at.session_state[inside.PHOTO_KEY] = None  # a face without its photo: one picture fewer, no error
    at.run()
    assert not at.exception and not at.error and len(at.get("image")) == with_photo - 1


@needs_shipped
def test_inside_bad_checkpoint_and_faceless_photo_are_messages() -> None:
    from PIL import Image

    from core.util.fsutil import runs_dir

    bad = runs_dir() / "inside-mismatch"
    shutil.copytree(SMALL, bad)
    try:
        record = json.loads((bad / "run.json").read_text())
        record["model"]["knobs"]["width"] = 0.5  # the weights are w0.25's
        (bad / "run.json").write_text(json.dumps(record))
        at = page("pages/6_Inside.py")
        at.selectbox(key="inside_model_pick").set_value(str(bad)).run()
        assert not at.exception and any("cannot be opened" in e.value and "do not fit" in e.value for e in at.error)
        at.selectbox(key="inside_model_pick").set_value(str(SMALL)).run()
        at.radio(key="inside_source").set_value("upload").run()
        buf = io.BytesIO()
        Image.new("RGB", (160, 120), (90, 100, 110)).save(buf, "PNG")
        at.file_uploader(key="inside_upload").set_value(("wall.png", buf.getvalue(), "image/png")).run()
        assert not at.exception and any("no face found" in e.value for e in at.error)
        at.radio(key="inside_source").set_value("sample").run()  # the page keeps working
        assert not at.exception and not at.error and "Grad-CAM for '" in captions(at)
    finally:
        shutil.rmtree(bad, ignore_errors=True)


@needs_shipped
def test_compare_gallery_shows_a_cell_and_explains_an_empty_one() -> None:
    at = page("pages/4_Compare.py")
    assert not at.error, [e.value for e in at.error]
    assert "most confident mistake first" in captions(at)
    run = SHIPPED_DIR / at.selectbox(key="gallery_run").value
    pred = gallery.predict_split(run / "model.onnx",
                                 gallery.gallery_data(gallery.gallery_source(None, read_record(run))))
    conf = pred.confusion()
    t, p = gallery.biggest_mistake(pred)
    assert f"{conf[t, p]} of the {(pred.labels == t).sum()} '{CLASSES[t]}' faces" in captions(at)
    empty = [(i, j) for i in range(NUM_CLASSES) for j in range(NUM_CLASSES) if conf[i, j] == 0]
    if empty:
        at.selectbox(key="gallery_true").set_value(CLASSES[empty[0][0]]).run()
        at.selectbox(key="gallery_predicted").set_value(CLASSES[empty[0][1]]).run()
        assert not at.exception and any("No face in this cell" in i.value for i in at.info)


@needs_shipped
def test_inside_true_class_comes_from_the_photos_file_name(faces) -> None:  # noqa: ANN001
    from core.inference.photo import analyze_photo

    photo = analyze_photo(SAMPLE_PHOTO.read_bytes(), "anna__happy__1.jpg", SMALL / "model.onnx")
    at = page("pages/6_Inside.py", **{inside.FACE_KEY: photo.faces[0].crop, inside.MODEL_KEY: str(SMALL),
                                      inside.PHOTO_KEY: (photo, 0)})
    assert not at.exception and next(m.value for m in at.metric if m.label == "True class") == "happy"
    assert inside.label_index("sample: astronaut.jpg") is None and inside.label_index("x__sad__2.png") == 4


@needs_shipped
def test_gallery_defaults_to_the_data_the_model_was_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FER2013 model's mistakes are shown on FER2013 (found through $FER_DATA when its recorded path is gone),
    not on the synthetic cartoons; a synthetic run's on synthetic faces even when FER2013 is picked on Data."""
    from test_data import write_fer2013

    fer = tmp_path / "fer"
    fer.mkdir()
    write_fer2013(fer / "fer2013.csv")
    record = read_record(SMALL)
    record.data["source"] = str(tmp_path / "missing")
    monkeypatch.setenv("FER_DATA", str(fer))
    assert gallery.gallery_source(None, record) == str(fer)
    assert gallery.gallery_source("synthetic", record) == str(fer)
    synthetic = read_record(SMALL)
    synthetic.data = {"source": "synthetic", "synthetic": True}
    assert gallery.gallery_source(str(fer), synthetic) == "synthetic"


def test_a_diagonal_cells_caption_names_its_class_once(synthetic_predictions: gallery.Predictions) -> None:
    same = gallery.cell_caption(synthetic_predictions, "happy", "happy", "run")
    assert same.endswith("probability for 'happy'.") and "(and for" not in same
    other = gallery.cell_caption(synthetic_predictions, "sad", "happy", "run")
    assert "probability for 'happy' (and for 'sad')" in other
