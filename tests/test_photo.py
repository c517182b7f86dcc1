"""Photo pipeline on real images: decoding, EXIF orientation, face detection, crops and ONNX classification."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import faces, rundir
from core.photo import analyze_photo, decode_image, draw_boxes

from conftest import SAMPLE_PHOTO


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
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
    from core import runviews
    from core.rundir import list_runs

    best = runviews.best_model([i for i in list_runs(None) if i.shipped])
    if best is None:
        pytest.skip("no shipped checkpoint with an ONNX model in checkpoints/")
    r = analyze_photo(SAMPLE_PHOTO.read_bytes(), SAMPLE_PHOTO.name, best.path / rundir.ONNX)
    assert len(r.faces) == 1 and r.faces[0].top == "happy" and r.faces[0].confidence > 0.5


def test_occlusion_map_points_at_what_matters(tiny_run: Path) -> None:
    from core.photo import occlusion_map, overlay_heatmap

    r = analyze_photo(SAMPLE_PHOTO.read_bytes(), SAMPLE_PHOTO.name, tiny_run / rundir.ONNX)
    heat, top = occlusion_map(r.faces[0].crop, tiny_run / rundir.ONNX)
    assert heat.shape == (48, 48) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert top == int(np.argmax(r.faces[0].probs))
    assert overlay_heatmap(r.faces[0].crop, heat, 96).shape == (96, 96, 3)
    # a constant image has nothing to hide: no patch changes the prediction
    flat, _ = occlusion_map(np.full((48, 48), 128, np.uint8), tiny_run / rundir.ONNX)
    assert float(flat.max()) == 0.0
