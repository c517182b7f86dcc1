"""FER2013's CSV formats: the vectorised pixel parser, label and Usage columns, and the Kaggle/course train+test
pair."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.data.dataset import IMAGE_SIDE, N_PIXELS, Split
from core.util.classes import CLASSES, NUM_CLASSES

# FER2013's Usage column -> our split names. The image-folder release's test/ is PublicTest.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "public", "PrivateTest": "private"}


# ---------------------------------------------------------------------------------------------------------
# Pixel parsing. FER2013 CSVs hold 2,304 space-separated integers per row. Calling int() per pixel is what
# makes naive readers (torchvision's included) slow; here all rows are joined into one byte buffer and
# tokenised with numpy, and errors are traced back to the row they came from.
# ---------------------------------------------------------------------------------------------------------
def parse_pixel_rows(rows: list[str], where: str, first_line: int = 2) -> np.ndarray:
    """Parse pixel strings into uint8 [N, 48, 48]; ValueError names the file and line of the first bad row."""
    n = len(rows)
    if n == 0:
        return np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
    try:
        buf = np.frombuffer(" ".join(rows).encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        bad_row = next(i for i, r in enumerate(rows) if not r.isascii())
        raise ValueError(f"{where}, line {first_line + bad_row}: pixels must be integers 0-255, "
                         "found non-ASCII text") from None
    row_starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))

    def line_of(pos: int) -> int:
        return first_line + int(np.searchsorted(row_starts, pos, side="right") - 1)

    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(f"{where}, line {first_line + int(empty[0])}: empty pixels field (expected {N_PIXELS} values)")
    digit = (buf - 48) < 10  # uint8 wrap-around turns the range check into one comparison
    if not (digit | (buf == 32)).all():
        pos = int(np.flatnonzero(~digit & (buf != 32))[0])
        raise ValueError(f"{where}, line {line_of(pos)}: pixels must be integers 0-255 separated by spaces, "
                         f"found {chr(buf[pos])!r}")
    # a token starts where a digit follows a non-digit (bool '>' is "this and not that") and ends likewise
    start_mask = np.empty_like(digit)
    start_mask[0] = digit[0]
    np.greater(digit[1:], digit[:-1], out=start_mask[1:])
    starts = np.flatnonzero(start_mask)
    end_mask = start_mask  # reuse the buffer
    end_mask[-1] = digit[-1]
    np.greater(digit[:-1], digit[1:], out=end_mask[:-1])
    ends = np.flatnonzero(end_mask)
    # tokens per row: locate the ~30k row starts among the token starts, not the ~66M tokens among the rows
    bounds = np.searchsorted(starts, np.append(row_starts, len(buf)))
    counts = np.diff(bounds)
    wrong = np.flatnonzero(counts != N_PIXELS)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"{where}, line {first_line + i}: expected {N_PIXELS} pixel values (48x48), "
                         f"found {int(counts[i])}")
    width = ends - starts + 1
    values = buf[ends] - np.uint8(48)
    values = values.astype(np.uint16)
    two = width >= 2
    values[two] += (buf[ends[two] - 1] - np.uint8(48)).astype(np.uint16) * 10
    three = width >= 3
    values[three] += (buf[ends[three] - 2] - np.uint8(48)).astype(np.uint16) * 100
    too_big = np.flatnonzero((width > 3) | (values > 255))
    if too_big.size:
        raise ValueError(f"{where}, line {line_of(int(starts[too_big[0]]))}: pixel value out of range 0-255")
    return values.astype(np.uint8).reshape(n, IMAGE_SIDE, IMAGE_SIDE)


def _parse_labels(values: list[str], where: str, first_line: int = 2) -> np.ndarray:
    labels = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):  # ~30k short strings: a Python loop is fine and gives exact error lines
        v = v.strip()
        if not v.lstrip("-").isdigit() or not (0 <= int(v) < NUM_CLASSES):
            raise ValueError(f"{where}, line {first_line + i}: label {v!r} is not a class index "
                             f"0-{NUM_CLASSES - 1} ({', '.join(CLASSES)})")
        labels[i] = int(v)
    return labels


def _read_csv_columns(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Read a CSV as strings; header names are stripped (icml_face_data.csv writes ' Usage', ' pixels')."""
    import pandas as pd  # imported on first CSV read, as before: it is slow to import and only CSVs need it

    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty (expected a FER2013 CSV with a header row)")
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):  # text never holds NUL bytes; images, archives and spreadsheets do
            raise ValueError(f"{path}: not a readable CSV (binary data, e.g. an image or a spreadsheet, not text)")
    try:
        # header=None: the header is row 0, so a row with more fields than the header is a parser error naming
        # its line (with header=0, pandas would quietly turn the first column into an index and shift the rest)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, header=None)
    except pd.errors.ParserError as exc:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if m:
            raise ValueError(f"{path}, line {m.group(2)}: {m.group(3)} comma-separated fields, but the header has "
                             f"{m.group(1)}") from None
        raise ValueError(f"{path}: not a readable CSV ({str(exc).strip().splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a readable CSV (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except pd.errors.EmptyDataError:
        if path.read_bytes().strip():
            raise ValueError(f"{path}: the first line must be the header (e.g. 'emotion,pixels,Usage'), "
                             "found a blank line") from None
        raise ValueError(f"{path}: the file is empty (expected a FER2013 CSV with a header row)") from None
    columns = [str(c).strip() for c in frame.iloc[0]]
    if not any(columns):
        if not path.read_bytes().strip():
            raise ValueError(f"{path}: the file is empty (only blank lines or spaces)")
        raise ValueError(f"{path}: the first line must be the header (e.g. 'emotion,pixels,Usage'), found a blank line")
    frame = frame.iloc[1:]
    frame.columns = columns
    # blank lines at the end of a file are harmless; blank rows inside it are errors with their line
    filled = (frame != "").any(axis=1).to_numpy()
    last = int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0
    holes = np.flatnonzero(~filled[:last])
    if holes.size:
        raise ValueError(f"{path}, line {int(holes[0]) + 2}: empty row (every row needs a label and {N_PIXELS} pixels)")
    frame = frame.iloc[:last]
    return columns, {c: frame[c].tolist() for c in frame.columns}


CSV_LAYOUTS = {
    # format name: (label column, pixel column, usage column or None)
    "fer2013.csv": ("emotion", "pixels", "Usage"),
    "kaggle train.csv": ("emotion", "pixels", None),
    "course label,feature": ("label", "feature", None),
}


def _csv_layout(columns: list[str], path: Path) -> str:
    cols = set(columns)
    if {"emotion", "pixels", "Usage"} <= cols:
        return "fer2013.csv"
    if {"emotion", "pixels"} <= cols:
        return "kaggle train.csv"
    if {"label", "feature"} <= cols:
        return "course label,feature"
    if "pixels" in cols:
        raise ValueError(f"{path}: has pixels but no labels (columns {columns}); Kaggle's unlabelled test.csv "
                         "cannot be used for training or accuracy")
    raise ValueError(
        f"{path}: unrecognised CSV header {columns}; expected one of: 'emotion,pixels,Usage' (fer2013.csv), "
        "'emotion, Usage, pixels' (icml_face_data.csv), 'emotion,pixels' (Kaggle train.csv), "
        "'label,feature' (course format)"
    )


def read_csv_file(path: Path) -> tuple[str, dict[str, Split]]:
    """One CSV file -> its splits (by Usage where the file has it, else everything is 'train')."""
    columns, data = _read_csv_columns(path)
    layout = _csv_layout(columns, path)
    if not data[columns[0]]:
        raise ValueError(f"{path}: has a header ({', '.join(columns)}) but no data rows")
    label_col, pixel_col, usage_col = CSV_LAYOUTS[layout]
    labels = _parse_labels(data[label_col], str(path))
    images = parse_pixel_rows(data[pixel_col], str(path))
    if usage_col is None:
        return layout, {"train": Split(images, labels)}
    usage = np.array([u.strip() for u in data[usage_col]])
    unknown = sorted(set(usage.tolist()) - set(USAGE_TO_SPLIT))
    if unknown:
        row = int(np.flatnonzero(~np.isin(usage, list(USAGE_TO_SPLIT)))[0])
        raise ValueError(f"{path}, line {row + 2}: Usage {unknown[0]!r} is not one of {list(USAGE_TO_SPLIT)}")
    if "icml" in path.name or columns[1] == "Usage":
        layout = "icml_face_data.csv"
    splits = {}
    for usage_name, split in USAGE_TO_SPLIT.items():
        mask = usage == usage_name
        if mask.any():
            splits[split] = Split(images[mask], labels[mask])
    return layout, splits


def read_csv_pair(train_csv: Path) -> tuple[str, dict[str, Split]]:
    """Kaggle/course `train.csv`, plus a labelled `test.csv` beside it as the public split."""
    layout, splits = read_csv_file(train_csv)
    test_csv = train_csv.with_name("test.csv")
    if test_csv.exists() and "public" not in splits:
        columns, _ = _read_csv_columns(test_csv)
        if {"emotion", "pixels"} <= set(columns) or {"label", "feature"} <= set(columns):
            _, test_splits = read_csv_file(test_csv)
            splits["public"] = test_splits["train"]
    return layout, splits
