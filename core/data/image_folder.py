"""The image-folder release of FER2013 (`train/<class>/*.jpg`, `test/<class>/*.jpg`): listing and decoding."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.dataset import IMAGE_SIDE, Split
from core.util.classes import CLASSES

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".pgm"}


def _decode_gray48(path: Path) -> np.ndarray:
    import cv2

    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not raw.size:
        raise ValueError(f"{path}: the image file is empty (0 bytes)")
    img = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: not a readable image: truncated, corrupt, or not really a "
                         f"{path.suffix.lower()} file (allowed: {', '.join(sorted(IMAGE_EXTS))})")
    if img.shape != (IMAGE_SIDE, IMAGE_SIDE):
        img = cv2.resize(img, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_AREA)
    return img


IMAGE_FOLDER_SPLITS = {"train": "train", "test": "public", "val": "val", "validation": "val", "public": "public",
                       "private": "private"}


def image_folder_files(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """(image file, class index) pairs per split, in sorted order; ValueError names any stray file or folder."""
    found: dict[str, list[tuple[Path, int]]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        split = IMAGE_FOLDER_SPLITS.get(sub.name.lower())
        if split is None:
            continue
        files: list[tuple[Path, int]] = []
        for class_dir in sorted(p for p in sub.iterdir() if not p.name.startswith(".")):
            if not class_dir.is_dir():
                raise ValueError(f"{class_dir}: unexpected file in {sub}; expected one folder per class: "
                                 f"{', '.join(CLASSES)}")
            name = class_dir.name.lower()
            if name not in CLASSES:
                raise ValueError(f"{class_dir}: unknown class folder {class_dir.name!r}; allowed: {', '.join(CLASSES)}")
            for f in sorted(class_dir.iterdir()):
                if f.name.startswith("."):
                    continue
                if f.suffix.lower() not in IMAGE_EXTS or not f.is_file():
                    raise ValueError(f"{f}: not an image file (allowed extensions: {', '.join(sorted(IMAGE_EXTS))})")
                files.append((f, CLASSES.index(name)))
        found[split] = files
    if "train" not in found:
        raise ValueError(f"{root}: no train/ folder with class subfolders ({', '.join(CLASSES)})")
    if not found["train"]:
        raise ValueError(f"{root / 'train'}: holds no images; expected train/<class>/*.jpg with classes "
                         f"{', '.join(CLASSES)}")
    return found


def read_image_folder(root: Path) -> tuple[str, dict[str, Split]]:
    """Decode every image under train/ (and test/, val/, ...) to 48x48 gray, in sorted folder and file order."""
    splits = {}
    for split, files in image_folder_files(root).items():
        images = (np.stack([_decode_gray48(f) for f, _ in files]) if files
                  else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8))
        labels = np.array([c for _, c in files], dtype=np.int64)
        splits[split] = Split(images, labels)
    return "image folder", splits
