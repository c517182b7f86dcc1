"""Hostile uploads: every bad photo gets a ValueError naming the file and the problem (core.inference.photo, the Predict
page, `python -m core predict`), odd but valid images are converted and classified, and the good files of a batch with
bad ones in it still get predictions. Every hostile file is generated here; none is committed."""
from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SAMPLE_PHOTO
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.inference.photo import MAX_FILE_BYTES, MAX_PIXELS, analyze_photo, decode_image
from core.training import rundir
from core.util.classes import CLASSES


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def sample(size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.open(SAMPLE_PHOTO).convert("RGB")
    return img.resize(size) if size else img


def png_claiming(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR (with a correct CRC) claims width x height: a decompression bomb's header."""
    small = encode(Image.new("L", (8, 8), 0), "PNG")
    length = struct.unpack(">I", small[8:12])[0]  # IHDR is the first chunk after the 8-byte signature
    body = bytearray(small[12:16 + length])  # chunk type + data
    body[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)
    return small[:12] + bytes(body) + crc + small[16 + length + 4:]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header claims width x height."""
    data = bytearray(encode(Image.new("L", (8, 8), 0), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def frames(*colours: tuple[int, int, int]) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), c) for c in colours]


RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
JPEG_BYTES = encode(sample(), "JPEG", quality=90)
PNG_BYTES = encode(sample((256, 256)), "PNG")
OVER_LIMIT = b"\xff\xd8\xff\xe0" + bytes(MAX_FILE_BYTES + 1024)  # a "JPEG" just over the upload limit

# name, bytes, what the message must say besides the name
REJECTED = [
    ("empty.jpg", b"", "empty"),
    ("cut.jpg", JPEG_BYTES[: len(JPEG_BYTES) // 3], "truncated or corrupt"),
    ("cut.png", PNG_BYTES[: len(PNG_BYTES) // 3], "truncated or corrupt"),
    ("header-only.png", PNG_BYTES[:60], "truncated or corrupt"),
    ("note.jpg", b"hello, I am a text file with an image extension\n", "not an image"),
    ("page.png", b"<!DOCTYPE html><html><body><img src='x.png'></body></html>", "not an image"),
    ("vector.png", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="48" height="48">'
                   b'<circle cx="24" cy="24" r="20"/></svg>', "not an image"),
    ("bomb.png", png_claiming(30_000, 30_000), "900,000,000 pixels"),
    ("bomb.jpg", jpeg_claiming(30_000, 30_000), "900,000,000 pixels"),
    ("big-but-legal-header.png", png_claiming(8_000, 8_000), "8000x8000 pixels is over"),
    ("huge.jpg", OVER_LIMIT, f"over the {MAX_FILE_BYTES // 2**20} MB limit"),
]


@pytest.mark.parametrize("name, data, fragment", REJECTED, ids=[r[0] for r in REJECTED])
def test_bad_upload_is_a_value_error_naming_file_and_problem(name: str, data: bytes, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        decode_image(data, name)
    msg = str(err.value)
    assert msg.startswith(f"{name}: ") and fragment in msg, msg


def test_decompression_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from PIL import ImageFile

    decoded = []

    def no_decoding(self: ImageFile.ImageFile) -> None:
        decoded.append(self)
        raise AssertionError("a decoder ran")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for name, data in (("bomb.png", png_claiming(30_000, 30_000)), ("bomb.jpg", jpeg_claiming(30_000, 30_000)),
                       ("legal.png", png_claiming(8_000, 8_000))):
        assert len(data) < 1000  # tiny file, 900 MB or 190 MB of pixels once decoded
        t = time.perf_counter()
        with pytest.raises(ValueError, match="pixel limit"):
            decode_image(data, name)
        assert time.perf_counter() - t < 0.5
    assert not decoded  # refused from the header: no decoder ever ran
    # and in a fresh process, the peak memory does not grow by more than a few MB
    script = (
        "import json, resource, sys, time; sys.path.insert(0, sys.argv[1]);"
        "from core.inference.photo import decode_image; import PIL.Image, PIL.PngImagePlugin;"
        "data = open(sys.argv[2], 'rb').read(); before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "t = time.perf_counter()\n"
        "try:\n    decode_image(data, 'bomb.png'); msg = 'decoded'\n"
        "except ValueError as e:\n    msg = str(e)\n"
        "print(json.dumps({'msg': msg, 's': time.perf_counter() - t,"
        "'grew_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))"
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(30_000, 30_000))
    out = subprocess.run([sys.executable, "-c", script, str(ROOT), str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pixel limit" in result["msg"] and result["s"] < 0.5 and result["grew_kb"] < 20 * 1024, result


def test_upload_limit_matches_streamlit_config() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 2**20 == MAX_FILE_BYTES
    assert MAX_PIXELS == 40_000_000


def test_16bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really stored as 16-bit
    rgb = decode_image(data, "deep.png")
    assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 255  # the range is used, not clipped to 255
    assert (np.diff(rgb[:, :, 0].ravel().astype(int)) >= 0).all()  # order of grey levels kept


def test_cmyk_jpeg_is_converted() -> None:
    data = encode(Image.new("RGB", (64, 48), RED).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    rgb = decode_image(data, "print.jpg")
    assert rgb.shape == (48, 64, 3)
    assert np.abs(rgb.reshape(-1, 3).mean(0) - RED).max() < 20


def test_rgba_png_is_composited_on_white() -> None:
    img = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent black
    img.paste((255, 0, 0, 255), (0, 0, 20, 30))  # opaque red left half
    rgb = decode_image(encode(img, "PNG"), "alpha.png")
    assert tuple(rgb[10, 5]) == RED and tuple(rgb[10, 35]) == (255, 255, 255)


def test_palette_png_with_transparency() -> None:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (16, 0, 32, 32))
    data = encode(img, "PNG", transparency=0)  # palette index 0 (black) is transparent
    rgb = decode_image(data, "palette.png")
    assert tuple(rgb[5, 5]) == (255, 255, 255) and tuple(rgb[5, 25]) == GREEN


def test_animated_gif_uses_the_first_frame() -> None:
    first, *rest = frames(RED, BLUE, GREEN)
    data = encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert tuple(decode_image(data, "anim.gif")[10, 10]) == RED


def test_multipage_tiff_uses_the_first_page() -> None:
    first, *rest = frames(BLUE, RED, GREEN)
    data = encode(first, "TIFF", save_all=True, append_images=rest)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert tuple(decode_image(data, "scan.tiff")[10, 10]) == BLUE


@pytest.mark.parametrize("size", [(1, 1), (4000, 10), (10, 4000), (2, 3)], ids=["1x1", "4000x10", "10x4000", "2x3"])
def test_tiny_and_extreme_aspect_ratio_images_are_classified(size: tuple[int, int], tiny_run: Path) -> None:
    data = encode(Image.new("RGB", size, (90, 120, 150)), "PNG")
    r = analyze_photo(data, "odd.png", tiny_run / rundir.ONNX)
    assert r.size == size and len(r.faces) == 1 and r.no_face  # no face: the centre square is classified
    face = r.faces[0]
    assert face.crop.shape == (48, 48) and face.top in CLASSES and abs(face.probs.sum() - 1) < 1e-5


def test_exif_rotated_photo_is_turned_upright_not_rejected(tiny_run: Path) -> None:
    upright = sample().crop((0, 0, 512, 400))  # not square, so a missed rotation shows in the shape
    stored = upright.rotate(90, expand=True)  # stored turned counter-clockwise, as a phone held sideways writes it
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6: the viewer turns it 90 degrees clockwise
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    rgb = decode_image(data, "sideways.jpg")
    assert rgb.shape == (400, 512, 3)
    assert np.abs(rgb.astype(int) - np.asarray(upright).astype(int)).mean() < 6
    r = analyze_photo(data, "sideways.jpg", tiny_run / rundir.ONNX)
    assert not r.no_face and any(150 < f.box[0] < 200 and 40 < f.box[1] < 90 for f in r.faces)


# --- the Predict page and the CLI with mixed batches --------------------------------------------------------------
GOOD = [
    ("astronaut.jpg", SAMPLE_PHOTO.read_bytes()),
    ("alpha.png", encode(sample((128, 128)).convert("RGBA"), "PNG")),
    ("one-pixel.png", encode(Image.new("RGB", (1, 1), (120, 100, 80)), "PNG")),
    ("strip.png", encode(Image.new("L", (4000, 10), 90), "PNG")),
    ("anim.gif", encode(frames(RED)[0], "GIF", save_all=True, append_images=frames(BLUE, GREEN), duration=50)),
]
BAD = [(name, data) for name, data, _ in REJECTED if name in
       ("empty.jpg", "cut.jpg", "note.jpg", "page.png", "vector.png", "bomb.png", "huge.jpg")]


@pytest.fixture()
def predict_runs(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runs folder holding one finished run with an ONNX model, used by the app for this test only."""
    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "tiny-model")
    monkeypatch.setenv("FER_RUNS_DIR", str(root))
    return root


def test_predict_page_batch_with_bad_files_still_predicts_the_good_ones(predict_runs: Path) -> None:
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    at.switch_page("pages/5_Predict.py").run()
    assert not at.exception, at.exception
    mime = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif"}
    # a file name with Markdown and Streamlit directives in it must be shown as typed, not rendered
    bad = BAD + [("**bold** :red[x] $y$.jpg", b"not an image")]
    batch = [(n, d, mime[n.rsplit(".", 1)[1]]) for n, d in GOOD[:2] + bad + GOOD[2:]]
    at.file_uploader(key="predict_upload").set_value(batch).run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == len(bad), errors
    for (name, _), msg in zip(bad, errors):
        shown = re.sub(r"\\(.)", r"\1", msg)  # what Markdown renders: each escaped character, literally
        assert shown.startswith(f"{name}: "), (name, msg)  # in upload order, each naming its file and problem
    assert errors[-1].startswith(r"\*\*bold\*\* \:red\[x\] \$y\$\.jpg")
    table = next(d.value for d in at.dataframe if "top" in d.value.columns)  # the full table (the grid comes first)
    assert set(table["photo"]) == {n for n, _ in GOOD}
    assert table["top"].isin(CLASSES).all()
    assert [m.value for m in at.metric if m.label.startswith("Face")]


def test_cli_predict_with_good_and_bad_files(tiny_run: Path, tmp_path: Path) -> None:
    files = []
    for name, data in [GOOD[0], *BAD]:
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    files.append(str(tmp_path / "missing.jpg"))
    (tmp_path / "folder.jpg").mkdir()
    files.append(str(tmp_path / "folder.jpg"))
    cmd = [sys.executable, "-m", "core", "predict", "--model", str(tiny_run / rundir.ONNX), *files]
    human = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert human.returncode == 0, human.stderr  # some files worked
    assert "Traceback" not in human.stderr
    assert human.stdout.startswith("astronaut.jpg: face 1 at")
    lines = [ln for ln in human.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == len(BAD) + 2, human.stderr
    for (name, _), line in zip(BAD, lines):
        assert name in line, line
    assert "missing.jpg" in lines[-2] and "folder.jpg" in lines[-1]

    machine = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert machine.returncode == 0 and "Traceback" not in machine.stderr
    out = json.loads(machine.stdout.strip().splitlines()[-1])
    assert len(out) == len(files) and out[0]["faces"][0]["top"] in CLASSES
    for entry, (name, _) in zip(out[1:], BAD):
        assert Path(entry["image"]).name == name and name in entry["error"], entry



def test_streamlit_watches_no_files() -> None:
    """The app's own config turns the file watcher off, so a .venv inside the project cannot overflow inotify and
    fill the terminal with warnings; Streamlit itself reports the value it read from the project's config."""
    import subprocess
    import sys

    assert tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["fileWatcherType"] == "none"
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120).stdout
    assert '\nfileWatcherType = "none"' in shown and str(ROOT / ".streamlit" / "config.toml") in shown
