"""Every FER2013 format is read, errors name the file and line, the cache works, and the synthetic set behaves."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FER_DATA_ENV, find_fer2013

from core.data import FERData, csv_reader, find_local_fer, load_data, load_fer, parse_pixel_rows
from core.data.data_cache import cache_files, fingerprint
from core.data.synthetic import generate, synthetic_dataset
from core.util.classes import CLASSES

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (21, 48, 48), dtype=np.uint8)
LABELS = np.arange(21) % 7
USAGE = ["Training"] * 14 + ["PublicTest"] * 4 + ["PrivateTest"] * 3


def pix(img: np.ndarray) -> str:
    return " ".join(map(str, img.ravel()))


def write_fer2013(path: Path) -> Path:
    rows = [f"{y},{pix(x)},{u}" for x, y, u in zip(IMAGES, LABELS, USAGE)]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    return path


def check_splits(data: FERData, expect: dict[str, int]) -> None:
    assert {k: len(v) for k, v in data.splits.items()} == expect
    for split in data.splits.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (48, 48)
        assert split.labels.dtype == np.int64


def test_fer2013_csv(tmp_path: Path) -> None:
    data = load_fer(write_fer2013(tmp_path / "fer2013.csv"))
    assert data.kind == "fer2013.csv"
    check_splits(data, {"train": 14, "public": 4, "private": 3})
    np.testing.assert_array_equal(data.splits["train"].images, IMAGES[:14])
    np.testing.assert_array_equal(data.splits["private"].labels, LABELS[18:])


def test_icml_face_data(tmp_path: Path) -> None:
    rows = [f"{y}, {u}, {pix(x)}" for x, y, u in zip(IMAGES, LABELS, USAGE)]
    (tmp_path / "icml_face_data.csv").write_text("emotion, Usage, pixels\n" + "\n".join(rows) + "\n")
    data = load_fer(tmp_path)  # found inside the folder
    assert data.kind == "icml_face_data.csv"
    check_splits(data, {"train": 14, "public": 4, "private": 3})
    np.testing.assert_array_equal(data.splits["public"].images, IMAGES[14:18])


def test_kaggle_train_and_test(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("emotion,pixels\n"
                                        + "\n".join(f"{y},{pix(x)}" for x, y in zip(IMAGES[:14], LABELS[:14])))
    (tmp_path / "test.csv").write_text("emotion,pixels\n"
                                       + "\n".join(f"{y},{pix(x)}" for x, y in zip(IMAGES[14:], LABELS[14:])))
    data = load_fer(tmp_path / "train.csv")
    assert data.kind == "kaggle train.csv"
    check_splits(data, {"train": 14, "public": 7})


def test_kaggle_unlabelled_test_gives_holdout(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("emotion,pixels\n" + "\n".join(f"{y},{pix(x)}" for x, y in zip(IMAGES, LABELS)))
    (tmp_path / "test.csv").write_text("pixels\n" + "\n".join(pix(x) for x in IMAGES[:3]))
    data = load_fer(tmp_path)
    assert set(data.splits) == {"train", "val"} and len(data.splits["val"]) == 7  # 10% of each class, rounded
    assert len(data.splits["train"]) + len(data.splits["val"]) == 21


def test_course_label_feature(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("label,feature\n"
                                        + "\n".join(f"{y},{pix(x)}" for x, y in zip(IMAGES[:14], LABELS[:14])))
    (tmp_path / "test.csv").write_text("label,feature\n"
                                       + "\n".join(f"{y},{pix(x)}" for x, y in zip(IMAGES[14:], LABELS[14:])))
    data = load_fer(tmp_path)
    assert data.kind == "course label,feature"
    check_splits(data, {"train": 14, "public": 7})


def test_image_folder(tmp_path: Path) -> None:
    for split, idx in (("train", range(14)), ("test", range(14, 21))):
        for i in idx:
            d = tmp_path / split / CLASSES[LABELS[i]]
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i}.png"), IMAGES[i])
    data = load_fer(tmp_path)
    assert data.kind == "image folder"
    check_splits(data, {"train": 14, "public": 7})
    # folders and files are read in sorted name order
    order = sorted(range(14), key=lambda i: (CLASSES[LABELS[i]], f"{i}.png"))
    np.testing.assert_array_equal(data.splits["train"].images, IMAGES[:14][order])


def test_torchvision_root_layout(tmp_path: Path) -> None:
    (tmp_path / "fer2013").mkdir()
    write_fer2013(tmp_path / "fer2013" / "fer2013.csv")
    data = load_data(tmp_path)
    check_splits(data, {"train": 14, "public": 4, "private": 3})


def _parser_must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the CSV was parsed again: the cache was not used")


def test_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_fer2013(tmp_path / "fer2013.csv")
    first = load_fer(path)
    # the miss wrote one entry, under the key of this file's path, size and mtime
    arrays, meta = cache_files(fingerprint("csv", path))
    assert arrays.is_file() and json.loads(meta.read_text())["splits"] == ["train", "public", "private"]
    with monkeypatch.context() as m:
        m.setattr(csv_reader, "parse_pixel_rows", _parser_must_not_run)
        second = load_fer(path)  # a hit: no parsing at all
        for name, split in first.splits.items():
            np.testing.assert_array_equal(second.splits[name].images, split.images)
            np.testing.assert_array_equal(second.splits[name].labels, split.labels)
        assert second.kind == first.kind == "fer2013.csv" and second.warnings == first.warnings
        with pytest.raises(AssertionError, match="parsed again"):  # the patch does reach the parser
            load_fer(path, use_cache=False)
        # the data came from the cache file: damaged, it is not used, and the file is parsed again
        arrays.write_bytes(b"not an npz")
        with pytest.raises(AssertionError, match="parsed again"):
            load_fer(path)
    load_fer(path)  # rebuilds the damaged entry
    # rewrite with different content: the cache key (size/mtime) changes and the new data is read
    rows = [f"{(y + 1) % 7},{pix(x)},{u}" for x, y, u in zip(IMAGES, LABELS, USAGE)]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n\n")
    third = load_fer(path)
    np.testing.assert_array_equal(third.splits["train"].labels, (LABELS[:14] + 1) % 7)


@pytest.mark.parametrize("body, message", [
    ("emotion,pixels,Usage\n0,1 2 3,Training\n", "line 2: expected 2304 pixel values"),
    ("emotion,pixels,Usage\n9," + " ".join(["0"] * 2304) + ",Training\n", "line 2: label '9'"),
    ("emotion,pixels,Usage\n0," + " ".join(["0"] * 2304) + ",Training\n1," + " ".join(["x"] * 2304) + ",Training\n",
     "line 3: pixels must be integers"),
    ("emotion,pixels,Usage\n0," + " ".join(["300"] * 2304) + ",Training\n", "out of range"),
    ("emotion,pixels,Usage\n0,,Training\n", "line 2: empty pixels"),
    ("name,value\na,b\n", "unrecognised CSV header"),
    ("", "empty"),
])
def test_bad_csv_names_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "fer2013.csv"
    path.write_text(body)
    with pytest.raises(ValueError, match=message) as err:
        load_fer(path)
    assert str(path) in str(err.value)


def test_parser_handles_real_formatting() -> None:
    rows = [pix(IMAGES[0]), "  " + pix(IMAGES[1]) + " "]
    out = parse_pixel_rows(rows, "x")
    np.testing.assert_array_equal(out, IMAGES[:2])


def test_missing_path() -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_data("/nonexistent/fer")


def test_synthetic_deterministic_and_balanced() -> None:
    a, ya = generate(500, seed=3)
    b, yb = generate(500, seed=3)
    c, _ = generate(500, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert set(np.unique(ya)) == set(range(7))
    assert a.std() > 20  # not blank
    data = synthetic_dataset(1000)
    assert data.synthetic and "synthetic" in data.source
    assert set(data.splits) == {"train", "val"} and len(data.splits["val"]) == 200


def test_synthetic_difficulty_validated() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        generate(10, difficulty=2.0)


def test_real_fer2013_image_folder(fer_dir: Path) -> None:
    data = load_fer(fer_dir)
    assert len(data.splits["train"]) == 28_709 and len(data.splits["public"]) == 3_589
    np.testing.assert_array_equal(data.splits["public"].class_counts(), [467, 56, 496, 895, 653, 415, 607])
    assert any("blank" in w for w in data.warnings) and any("duplicate" in w for w in data.warnings)


def test_fer2013_for_tests_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$FER_DATA points the FER2013 tests at a copy in any format; a wrong one fails instead of skipping."""
    copy = write_fer2013(tmp_path / "fer2013.csv")
    monkeypatch.setenv(FER_DATA_ENV, str(copy))
    assert find_fer2013() == (copy, f"${FER_DATA_ENV}")
    monkeypatch.setenv(FER_DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(pytest.fail.Exception, match="does not point at FER2013: .*missing: no such file"):
        find_fer2013()
    monkeypatch.delenv(FER_DATA_ENV)
    found, where = find_fer2013()
    assert found is None or found.is_dir() and where != f"${FER_DATA_ENV}"


def test_project_data_folder_is_found(tmp_path: Path) -> None:
    assert find_local_fer(tmp_path) is None
    (tmp_path / "data" / "fer2013").mkdir(parents=True)
    write_fer2013(tmp_path / "data" / "fer2013" / "fer2013.csv")
    assert find_local_fer(tmp_path) == tmp_path / "data" / "fer2013"


def test_the_app_finds_fer2013_at_fer_data_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$FER_DATA, then the project's data/ folder: the order the tests and the README use, now the app's too."""
    from core.data import find_fer

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_fer2013(elsewhere / "fer2013.csv")
    (tmp_path / "data" / "fer2013").mkdir(parents=True)
    write_fer2013(tmp_path / "data" / "fer2013" / "fer2013.csv")
    monkeypatch.setenv("FER_DATA", str(elsewhere))
    assert find_fer(tmp_path) == elsewhere
    monkeypatch.setenv("FER_DATA", str(tmp_path / "gone"))  # stale: the project's copy, no error
    assert find_fer(tmp_path) == tmp_path / "data" / "fer2013"
    monkeypatch.delenv("FER_DATA")
    assert find_fer(tmp_path) == tmp_path / "data" / "fer2013"
