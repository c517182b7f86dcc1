"""Photo pipeline on real images: decoding, EXIF orientation, face detection, crops and ONNX classification."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_PHOTO
from PIL import Image

from core.inference import faces
from core.inference.photo import analyze_photo, decode_image, draw_boxes
from core.training import rundir


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_detects_the_face_in_the_sample_photo(tiny_run: Path) -> None:
    r = analyze_photo(SAMPLE_PHOTO.read_bytes(), SAMPLE_PHOTO.name, tiny_run / rundir.ONNX)
    assert len(r.faces) == 1 and not r.no_face
    x, y, w, h = r.faces[0].box
    assert 150 < x < 200 and 40 < y < 90 and 80 < w < 130  # Eileen Collins' face in the 512x512 portrait
    face = r.faces[0]
    assert face.crop.shape == (48, 48) and face.crop.dtype == np.uint8
    assert face.probs.shape == (7,) and abs(face.probs.sum() - 1) < 1e-5
    assert draw_boxes(r).shape == r.display.shape


def test_no_face_falls_back_to_centre(tiny_run: Path) -> None:
    blank = encode(Image.new("RGB", (200, 100), (120, 120, 120)), "PNG")
    r = analyze_photo(blank, "wall.png", tiny_run / rundir.ONNX)
    assert r.no_face and len(r.faces) == 1 and r.faces[0].box == (50, 0, 100, 100)


def test_exif_rotation_is_applied() -> None:
    img = Image.open(SAMPLE_PHOTO).convert("RGB")
    rotated = img.rotate(-90, expand=True)  # stored turned clockwise, as a phone held sideways writes it...
    exif = Image.Exif()
    exif[0x0112] = 8  # ...with EXIF orientation 8: the viewer turns it back 90 degrees counter-clockwise
    upright = decode_image(encode(rotated, "JPEG", exif=exif.tobytes()), "sideways.jpg")
    assert upright.shape == (512, 512, 3)
    assert np.abs(upright.astype(int) - np.asarray(img).astype(int)).mean() < 6  # same picture, upright (JPEG noise)
    boxes = [d.box for d in faces.detect(upright)]
    assert any(150 < b[0] < 200 and 40 < b[1] < 90 for b in boxes)  # found where it is in the upright photo


def _pillow_decode(data: bytes) -> np.ndarray:
    """Pillow alone, as decode_image decoded every file before JPEGs went through OpenCV: the pixels it must keep."""
    from PIL import ImageOps

    im = Image.open(io.BytesIO(data))
    if max(im.size) > 2048:
        im.draft("RGB", (1024, 1024))
    return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_pixels_are_pillows_at_every_exif_orientation(orientation: int) -> None:
    img = Image.open(SAMPLE_PHOTO).convert("RGB").crop((0, 0, 400, 512))  # not square: turns change the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    got, want = decode_image(data, "turned.jpg"), _pillow_decode(data)
    assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("size, mode", [((4200, 3100), "RGB"), ((8400, 3000), "RGB"), ((4200, 2200), "L"),
                                        ((2100, 1500), "RGB")])
def test_large_and_grey_jpegs_keep_pillows_pixels_and_reduced_size(size: tuple[int, int], mode: str) -> None:
    img = Image.open(SAMPLE_PHOTO).convert(mode).resize(size)
    data = encode(img, "JPEG", quality=90)
    got, want = decode_image(data, "big.jpg"), _pillow_decode(data)
    assert got.shape == want.shape and np.array_equal(got, want)
    assert min(got.shape[:2]) >= 1024 or max(size) <= 2048  # reduced, never below the display size


def test_photo_set_jpegs_decode_as_pillow_does() -> None:
    from conftest import PHOTOS_DIR

    jpegs = sorted(PHOTOS_DIR.glob("*.jpg"))
    if not jpegs:
        pytest.skip(f"real test photos not found at {PHOTOS_DIR} ($FER_PHOTOS, else ../shared/photos beside the "
                    "project)")
    for p in jpegs:
        data = p.read_bytes()
        assert np.array_equal(decode_image(data, p.name), _pillow_decode(data)), p.name


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats_decode(fmt: str) -> None:
    img = Image.open(SAMPLE_PHOTO).convert("RGB").resize((128, 128))
    out = decode_image(encode(img, fmt), f"x.{fmt.lower()}")
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8


def test_corrupt_and_empty_files_are_value_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"", "empty.jpg")
    with pytest.raises(ValueError, match="not an image"):
        decode_image(b"hello, I am text", "note.jpg")
    truncated = SAMPLE_PHOTO.read_bytes()[:3000]
    with pytest.raises(ValueError, match="truncated or corrupt"):
        decode_image(truncated, "cut.jpg")


def test_crop_near_border_is_padded() -> None:
    gray = np.full((100, 100), 50, np.uint8)
    crop = faces.crop_box(gray, (-10, -10, 40, 40))
    assert crop.shape == (48, 48)


def test_best_shipped_model_reads_the_smile_in_the_sample() -> None:
    """End to end with a real FER2013-trained model: Eileen Collins smiles in the sample portrait."""
    from core.training.rundir import list_runs
    from core.views import runviews

    best = runviews.best_model([i for i in list_runs(None) if i.shipped])
    if best is None:
        pytest.skip("no shipped checkpoint with an ONNX model in checkpoints/")
    r = analyze_photo(SAMPLE_PHOTO.read_bytes(), SAMPLE_PHOTO.name, best.path / rundir.ONNX)
    assert len(r.faces) == 1 and r.faces[0].top == "happy" and r.faces[0].confidence > 0.5


def quadrant_model(path: Path) -> Path:
    """A contract-shaped ONNX model that looks at the top-left quadrant only: its 'angry' logit is that quadrant's
    mean brightness / 100 (small enough not to saturate), every other logit 0. Built node by node, so the test knows
    exactly where the model looks."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["quad"]),
        helper.make_node("ReduceMean", ["quad"], ["mean"], axes=[2, 3], keepdims=0),  # [N, 1]
        helper.make_node("MatMul", ["mean", "w"], ["logits"]),  # [N, 7]
    ]
    inits = [helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
             helper.make_tensor("ends", TensorProto.INT64, [2], [24, 24]),
             helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3]),
             helper.make_tensor("w", TensorProto.FLOAT, [1, 7], [0.01, 0, 0, 0, 0, 0, 0])]
    graph = helper.make_graph(nodes, "quadrant", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 48, 48])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_occlusion_map_points_where_the_model_looks(tmp_path: Path) -> None:
    from core.inference.photo import occlusion_map, overlay_heatmap

    model = quadrant_model(tmp_path / "quadrant.onnx")
    crop = np.full((48, 48), 30, np.uint8)
    crop[:24, :24] = 220  # bright where the model looks: 'angry' wins, and hiding any of it lowers 'angry'
    heat, top = occlusion_map(crop, model)
    assert top == 0 and heat.shape == (48, 48) and heat.dtype == np.float32
    assert float(heat.max()) == pytest.approx(1.0)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert y < 24 and x < 24  # the hottest spot is in the quadrant the model reads
    assert heat[:24, :24].mean() > 5 * heat[24:, 24:].mean()
    assert heat[36:, 36:].max() == 0.0  # patches that never touch the quadrant change nothing
    assert overlay_heatmap(crop, heat, 96).shape == (96, 96, 3)


def test_occlusion_map_of_a_real_run_is_normalised(tiny_run: Path) -> None:
    from core.inference.photo import occlusion_map

    r = analyze_photo(SAMPLE_PHOTO.read_bytes(), SAMPLE_PHOTO.name, tiny_run / rundir.ONNX)
    heat, top = occlusion_map(r.faces[0].crop, tiny_run / rundir.ONNX)
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert top == int(np.argmax(r.faces[0].probs))


def test_labels_from_file_names_and_typed_text() -> None:
    from core.inference.photo import label_from_name, parse_label

    assert label_from_name("bodelha__angry__1.jpg") == "angry"
    assert label_from_name("Surprised-kid.PNG") == "surprise"
    assert label_from_name("sample: astronaut.jpg") is None
    assert label_from_name("happy_or_sad.jpg") is None  # two classes named: no label rather than a guess
    assert parse_label("  Happiness ") == "happy" and parse_label("") is None
    with pytest.raises(ValueError, match="'joyful' is not an expression.*angry, disgust"):
        parse_label("joyful")


def test_grid_and_label_summary(tiny_run: Path) -> None:
    from core.inference.photo import face_grid, label_summary

    data = SAMPLE_PHOTO.read_bytes()
    results = [analyze_photo(data, "eileen__happy__1.jpg", tiny_run / rundir.ONNX),
               analyze_photo(data, "eileen__sad__1.jpg", tiny_run / rundir.ONNX),
               analyze_photo(data, "eileen.jpg", tiny_run / rundir.ONNX)]
    top = results[0].faces[0].top
    grid = face_grid(results, typed_label="angry")
    assert list(grid["label"]) == ["happy", "sad", "angry"]  # the file name's label first, else the typed one
    assert list(grid["matches"]) == [top == "happy", top == "sad", top == "angry"]
    assert grid["crop"].str.startswith("data:image/png;base64,").all()
    hits = sum(top == lab for lab in ("happy", "sad", "angry"))
    assert label_summary(grid).startswith(f"Matches your label: {hits} of 3 faces")
    assert label_summary(face_grid(results[2:])) is None  # no label anywhere: no summary


def test_a_box_by_hand_is_classified(tiny_run: Path) -> None:
    from core.inference.photo import classify_box, manual_box

    blank = encode(Image.new("RGB", (200, 100), (120, 120, 120)), "PNG")
    r = analyze_photo(blank, "wall.png", tiny_run / rundir.ONNX)
    assert r.no_face and r.faces[0].source == "centre"
    box = manual_box(r.size, 0.9, 0.5, 0.5)
    assert box == (150, 25, 50, 50)  # clipped to the photo's right edge
    mine = classify_box(r, box, tiny_run / rundir.ONNX)
    assert mine.no_face and len(mine.faces) == 1 and mine.faces[0].source == "manual" and mine.faces[0].box == box
    assert mine.faces[0].crop.shape == (48, 48) and abs(mine.faces[0].probs.sum() - 1) < 1e-5
    with pytest.raises(ValueError, match="side=0.0 is outside"):
        manual_box(r.size, 0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="not inside the 200x100 photo"):
        classify_box(r, (180, 0, 50, 50), tiny_run / rundir.ONNX)


@pytest.mark.parametrize("box", [(0, 0, 30, 30), (170, 0, 30, 30), (0, 70, 30, 30), (150, 60, 50, 40)])
def test_labels_stay_inside_the_photo(box: tuple[int, int, int, int]) -> None:
    from core.inference.photo import put_label

    img = np.zeros((100, 200, 3), np.uint8)
    x0, y0, x1, y1 = put_label(img, "1: surprise 100% (no face found: centre)", box, (235, 130, 0), 0.7)
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100
    assert (img[y0:y1, x0:x1] == (235, 130, 0)).all(axis=2).mean() > 0.5  # a filled background behind the text


def test_group_photo_labels_are_complete_and_do_not_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two small faces side by side: each box gets its full label ("1: happy 83%"), not just its number, and the
    labels are placed clear of each other."""
    import cv2

    from core.inference.photo import Face, PhotoResult

    drawn: list[tuple[str, tuple[int, int], float]] = []
    real = cv2.putText

    def spy(img, text, org, font, size, *a):  # noqa: ANN001, ANN002, ANN202
        drawn.append((text, org, size))
        return real(img, text, org, font, size, *a)

    monkeypatch.setattr(cv2, "putText", spy)

    def face(x: int, top: int, p: float) -> Face:
        probs = np.full(7, (1 - p) / 6, np.float32)
        probs[top] = p
        return Face((x, 150, 40, 40), np.zeros((48, 48), np.uint8), probs, False)

    r = PhotoResult("pair.jpg", (600, 400), np.zeros((400, 600, 3), np.uint8), [face(200, 3, 0.83), face(250, 4, 0.6)])
    draw_boxes(r)
    assert [t for t, _, _ in drawn] == ["1: happy 83%", "2: sad 60%"]
    assert all(size >= 0.4 for _, _, size in drawn)
    (x1, y1), (x2, y2) = drawn[0][1], drawn[1][1]
    assert abs(y1 - y2) > 10 or abs(x1 - x2) > 120, drawn  # not drawn on top of each other


def test_a_large_jpegs_own_size_is_kept(tiny_run: Path) -> None:
    """A large JPEG is decoded at a reduced scale for speed; the photo's caption must still give its real size."""
    from PIL import Image

    from core.inference.photo import file_dimensions
    from core.training import rundir

    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2400, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big.save(buf, "JPEG")
    r = analyze_photo(buf.getvalue(), "big.jpg", tiny_run / rundir.ONNX, detector="haar")
    assert r.file_size == (2400, 1600) and r.size[0] <= 2400
    assert file_dimensions(b"not an image") is None
