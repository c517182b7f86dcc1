"""Hostile data files: every broken CSV or image folder is a ValueError naming the file and the line (or the file
inside the folder), shown as st.error on the Data page and as one line by `core train`; FER2013's known quirks
(blank images, duplicates) only warn. All files are generated here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLE_PHOTO
from streamlit.testing.v1 import AppTest

from core.data import load_fer
from core.util.classes import CLASSES

RNG = np.random.default_rng(5)
HEADER = "emotion,pixels,Usage"


def pixels(n: int = 2304, value: int | None = None) -> str:
    vals = RNG.integers(0, 256, n) if value is None else [value] * n
    return " ".join(map(str, vals))


def rows(k: int = 3) -> list[str]:
    return [f"{i % 7},{pixels()},Training" for i in range(k)]


GOOD = rows(2)
# case id: (file text or bytes, what the message must contain after the path; the line is the file's line number)
CSV_CASES: dict[str, tuple[str | bytes, str]] = {
    "wrong header": ("name,value\na,b\n", "unrecognised CSV header"),
    "misspelled header": ("emotions,pixel,usage\n" + "\n".join(GOOD) + "\n", "unrecognised CSV header"),
    "too few pixels": ("\n".join([HEADER, *GOOD, f"3,{pixels(2303)},Training"]) + "\n",
                       "line 4: expected 2304 pixel values (48x48), found 2303"),
    "too many pixels": ("\n".join([HEADER, f"3,{pixels(2305)},Training", *GOOD]) + "\n",
                        "line 2: expected 2304 pixel values (48x48), found 2305"),
    "non-numeric pixels": ("\n".join([HEADER, GOOD[0], f"3,{pixels(2303)} abc,Training"]) + "\n",
                           "line 3: pixels must be integers 0-255"),
    "negative pixel": ("\n".join([HEADER, GOOD[0], f"3,-5 {pixels(2303)},Training"]) + "\n",
                       "line 3: pixels must be integers 0-255"),
    "pixel over 255": ("\n".join([HEADER, GOOD[0], f"3,256 {pixels(2303)},Training"]) + "\n",
                       "line 3: pixel value out of range 0-255"),
    "label 7": ("\n".join([HEADER, *GOOD, f"7,{pixels()},Training"]) + "\n",
                "line 4: label '7' is not a class index 0-6"),
    "label -1": ("\n".join([HEADER, f"-1,{pixels()},Training"]) + "\n", "line 2: label '-1' is not a class index 0-6"),
    "label as a word": ("\n".join([HEADER, GOOD[0], f"happy,{pixels()},Training"]) + "\n", "line 3: label 'happy'"),
    "empty row in the middle": ("\n".join([HEADER, GOOD[0], "", GOOD[1]]) + "\n", "line 3: empty row"),
    "row of empty fields": ("\n".join([HEADER, GOOD[0], GOOD[1], ",,", GOOD[0]]) + "\n", "line 4: empty row"),
    "extra field": ("\n".join([HEADER, GOOD[0], GOOD[1] + ",extra"]) + "\n",
                    "line 3: 4 comma-separated fields, but the header has 3"),
    "unknown Usage": ("\n".join([HEADER, GOOD[0], f"1,{pixels()},Validation"]) + "\n", "line 3: Usage 'Validation'"),
    "empty file": ("", "the file is empty"),
    "blank lines only": ("\n  \n\n", "the file is empty"),
    "header only": (HEADER + "\n", "no data rows"),
    "a photo renamed .csv": (SAMPLE_PHOTO.read_bytes(), "not a readable CSV"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv_names_file_and_line(case: str, tmp_path: Path) -> None:
    body, fragment = CSV_CASES[case]
    path = tmp_path / "fer2013.csv"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(ValueError) as err:
        load_fer(path, use_cache=False)
    msg = str(err.value)
    assert msg.startswith(str(path)) and fragment in msg, msg


def image_folder(root: Path, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in ("angry", "happy", "neutral"):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                cv2.imwrite(str(d / f"{i}.jpg"), RNG.integers(0, 256, (48, 48), dtype=np.uint8))
    return root


def _jpeg_bytes() -> bytes:
    return cv2.imencode(".jpg", RNG.integers(0, 256, (48, 48), dtype=np.uint8))[1].tobytes()


# case id: (make the bad thing inside a valid folder and return its path, what the message must contain)
FOLDER_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "text file among images": (lambda r: _write(r / "train" / "happy" / "notes.txt", b"my notes"), "not an image file"),
    "unknown class folder": (lambda r: _write(r / "train" / "joy" / "0.jpg", _jpeg_bytes()).parent,
                             "unknown class folder 'joy'"),
    "corrupt .jpg": (lambda r: _write(r / "train" / "happy" / "bad.jpg", b"<html>not a jpeg</html>"),
                     "not a readable image"),
    "truncated .jpg": (lambda r: _write(r / "test" / "angry" / "cut.jpg", _jpeg_bytes()[:200]), "not a readable image"),
    "zero-byte .png": (lambda r: _write(r / "train" / "neutral" / "empty.png", b""), "empty (0 bytes)"),
    "stray file in train/": (lambda r: _write(r / "train" / "README.md", b"# hi"), "unexpected file"),
    "folder named like an image": (lambda r: _mkdir(r / "train" / "angry" / "album.jpg"), "not an image file"),
}


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_bad_image_folder_names_the_file(case: str, tmp_path: Path) -> None:
    root = image_folder(tmp_path / "fer")
    make, fragment = FOLDER_CASES[case]
    bad = make(root)
    with pytest.raises(ValueError) as err:
        load_fer(root, use_cache=False)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and fragment in msg, msg


def test_image_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "fer" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images") as err:
        load_fer(tmp_path / "fer", use_cache=False)
    assert str(tmp_path / "fer" / "train") in str(err.value)


def quirky_csv(path: Path) -> Path:
    """FER2013's known noise: blank (single-colour) images and exact duplicates, one pair with conflicting labels."""
    img = [pixels() for _ in range(12)]
    lines = [HEADER]
    lines += [f"{i % 7},{img[i]},Training" for i in range(10)]
    lines += [f"0,{pixels(value=0)},Training", f"3,{pixels(value=255)},Training"]  # two blank images
    lines += [f"0,{img[0]},Training", f"6,{img[1]},Training"]  # duplicates of rows 1 (same label) and 2 (other label)
    lines += [f"{i % 7},{img[10 + i]},PublicTest" for i in range(2)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_known_quirks_warn_and_do_not_fail(tmp_path: Path) -> None:
    data = load_fer(quirky_csv(tmp_path / "fer2013.csv"), use_cache=False)
    assert len(data.splits["train"]) == 14 and len(data.splits["public"]) == 2
    assert "train: 2 blank (single-colour) image(s)" in data.warnings
    assert any(w.startswith("train: 2 exact duplicate image(s)") and "1 group(s) with conflicting labels" in w
               for w in data.warnings), data.warnings


def test_quality_warnings_survive_the_cache(tmp_path: Path) -> None:
    """FERData.warnings is what the CLI and pages print: a cache hit must bring back the same lines."""
    path = quirky_csv(tmp_path / "fer2013.csv")
    fresh = load_fer(path, use_cache=False)
    miss, hit = load_fer(path), load_fer(path)
    assert len(fresh.warnings) == 2 and fresh.warnings == miss.warnings == hit.warnings


# --- the Data page, `core train` and the Train page -----------------------------------------------------------------
def test_data_page_shows_each_bad_file_as_an_error(tmp_path: Path) -> None:
    sources: list[tuple[Path, str]] = []
    for i, case in enumerate(["wrong header", "too few pixels", "non-numeric pixels", "label 7",
                              "empty row in the middle", "empty file", "extra field", "a photo renamed .csv"]):
        body, fragment = CSV_CASES[case]
        path = tmp_path / f"csv{i}" / "fer2013.csv"
        path.parent.mkdir()
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        sources.append((path, fragment))
    for i, case in enumerate(["text file among images", "unknown class folder", "corrupt .jpg"]):
        root = image_folder(tmp_path / f"folder{i}", per_class=1)
        make, fragment = FOLDER_CASES[case]
        sources.append((root, f"{make(root)}: "))

    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    at.switch_page("pages/2_Data.py").run()
    at.radio(key="data_choice").set_value("fer2013").run()
    for path, fragment in sources:
        at.text_input(key="data_path").set_value(str(path)).run()
        assert not at.exception, (path, at.exception)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and fragment in errors[0] and str(path) in errors[0], (path, errors)
        assert not at.metric  # nothing of the bad data is shown
    # a quirky but usable file: the page works and lists the quirks as warnings
    at.text_input(key="data_path").set_value(str(quirky_csv(tmp_path / "fer2013.csv"))).run()
    assert not at.exception and not at.error
    warnings = [w.value for w in at.warning]
    assert any("blank" in w for w in warnings) and any("duplicate" in w for w in warnings), warnings


def test_core_train_and_train_page_report_a_bad_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "fer2013.csv"
    bad.write_text(CSV_CASES["label 7"][0])
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--arch", "plain_cnn", "--width", "0.125", "--data",
                           str(bad), "--epochs", "1", "--run-dir", str(runs / "bad-data"), "--quiet", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {bad}, line 4: label '7' is not a class index 0-6 ({', '.join(CLASSES)})"
    record = json.loads((runs / "bad-data" / "run.json").read_text())
    assert record["status"] == "failed" and "line 4" in record["error"]

    monkeypatch.setenv("FER_RUNS_DIR", str(runs))
    at = AppTest.from_file("../streamlit_app.py", default_timeout=120).run()
    at.switch_page("pages/3_Train.py").run()
    assert not at.exception, at.exception
    assert any(str(bad) in e.value and "line 4" in e.value for e in at.error), [e.value for e in at.error]
