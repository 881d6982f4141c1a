"""mini-ImageNet (Ravi & Larochelle 2017 split), from data the user supplies.

Public API:
    miniimagenet(root, part="train", image_size=84) -> FewShotSource
    CSV_COLUMNS, PICKLE_NAME

mini-ImageNet derives from ImageNet and cannot be shipped. ``root`` holds one of two layouts,
looked up per part (CSV first):

(a) CSV: ``root/train.csv``, ``val.csv``, ``test.csv`` with header ``filename,label`` and the
    images in ``root/images/<filename>``;
(b) pickle: ``root/mini-imagenet-cache-<part>.pkl``, a dict with ``image_data`` (uint8
    [N, H, W, 3]) and ``class_dict`` ({label: [row indices]}).

Classes are the labels in sorted order; images are RGB uint8 [3, S, S] (float [0, 1] in
episodes), resized with ``images.RESAMPLE`` when not already S x S (S = 84 in the split).
Pickles are read with an unpickler that only admits the numpy globals an array needs, so a
hostile file cannot run code. In layout (b) with each class's rows contiguous (as in the
common files) the source is a view of ``image_data``, with no copy.

DataError: neither layout present (the message names what is missing and both layouts),
a missing images folder or image file, a malformed CSV or pickle.
"""

from __future__ import annotations

import csv
import os
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import DataError, require_int, require_part
from .images import open_image, resize_array, to_array
from .source import FewShotSource

__all__ = ["CSV_COLUMNS", "PICKLE_NAME", "miniimagenet"]

CSV_COLUMNS = ("filename", "label")
PICKLE_NAME = "mini-imagenet-cache-{part}.pkl"
DEFAULT_IMAGE_SIZE = 84

# Globals a pickled dict of numpy arrays needs (numpy 1.x and 2.x names; _codecs.encode for
# bytes written by Python 2 / protocol 2).
_PICKLE_GLOBALS = frozenset({
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in _PICKLE_GLOBALS."""

    def find_class(self, module: str, name: str):
        legacy = module == "numpy.core" or module.startswith("numpy.core.")
        canonical = "numpy._core" + module.removeprefix("numpy.core") if legacy else module
        if (canonical, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a mini-ImageNet pickle")
        return super().find_class(canonical, name)


def _layouts(root: Path, part: str) -> str:
    return (
        f"expected either {root / (part + '.csv')} (columns {','.join(CSV_COLUMNS)}) with images in "
        f"{root / 'images'}/, or {root / PICKLE_NAME.format(part=part)} (dict with image_data "
        "uint8 [N, 84, 84, 3] and class_dict {label: [indices]})"
    )


def _from_csv(root: Path, part: str, size: int) -> FewShotSource:
    csv_path = root / f"{part}.csv"
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(f"mini-ImageNet images folder missing: {image_dir}; {_layouts(root, part)}")
    by_label: dict[str, list[str]] = defaultdict(list)
    with csv_path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
            raise DataError(f"{csv_path} must have columns {CSV_COLUMNS}, got {reader.fieldnames}")
        for row in reader:
            by_label[row["label"]].append(row["filename"])
    labels = sorted(by_label)
    if not labels:
        raise DataError(f"{csv_path} lists no images")
    counts = [len(by_label[label]) for label in labels]
    images = np.empty((sum(counts), 3, size, size), dtype=np.uint8)
    row = 0
    for label in labels:
        for filename in by_label[label]:
            file = image_dir / filename
            if not file.is_file():
                raise DataError(f"mini-ImageNet image missing: {file} (listed in {csv_path})")
            images[row] = to_array(open_image(file, str(file)), "RGB", (size, size))
            row += 1
    return FewShotSource.from_counts(images, counts, labels, name=f"miniimagenet:{root}/{part}")


def _from_pickle(path: Path, part: str, size: int) -> FewShotSource:
    try:
        with path.open("rb") as stream:
            data = _ArrayUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise DataError(f"cannot read mini-ImageNet pickle {path}: {error}") from error
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} must hold a dict with keys 'image_data' and 'class_dict', got {keys}")
    image_data, class_dict = data["image_data"], data["class_dict"]
    if not (isinstance(image_data, np.ndarray) and image_data.dtype == np.uint8
            and image_data.ndim == 4 and image_data.shape[3] == 3):
        shape = getattr(image_data, "shape", None)
        raise DataError(
            f"{path}: image_data must be uint8 [N, H, W, 3], got {type(image_data).__name__} {shape}"
        )
    if not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f"{path}: class_dict must be a non-empty dict {{label: [indices]}}")
    labels = sorted(class_dict)
    rows = []
    for label in labels:
        try:
            indices = np.asarray(class_dict[label], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as error:
            raise DataError(f"{path}: class {label!r} indices are not integers: {error}") from error
        rows.append(indices)
        if indices.size == 0 or indices.min() < 0 or indices.max() >= len(image_data):
            raise DataError(
                f"{path}: class {label!r} has indices outside [0, {len(image_data)}) or none at all"
            )
    counts = [len(indices) for indices in rows]
    if all(np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices))) for indices in rows):
        images, starts = image_data, [int(indices[0]) for indices in rows]
    else:
        images, starts = image_data[np.concatenate(rows)], np.cumsum(counts) - counts
    images = resize_array(images.transpose(0, 3, 1, 2), (size, size))
    return FewShotSource(images, starts, counts, tuple(str(label) for label in labels),
                         name=f"miniimagenet:{path.parent}/{part}")


def miniimagenet(
    root: str | os.PathLike[str], part: str = "train", image_size: int = DEFAULT_IMAGE_SIZE
) -> FewShotSource:
    """One part of mini-ImageNet from ``root`` in either layout (see the module docstring)."""
    require_part(part)
    image_size = require_int("image_size", image_size, 1)
    root = Path(root).expanduser()
    if (root / f"{part}.csv").is_file():
        return _from_csv(root, part, image_size)
    pickle_path = root / PICKLE_NAME.format(part=part)
    if pickle_path.is_file():
        return _from_pickle(pickle_path, part, image_size)
    raise DataError(f"mini-ImageNet part {part!r} not found under {root}: {_layouts(root, part)}")
