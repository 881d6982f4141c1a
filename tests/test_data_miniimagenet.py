"""mini-ImageNet loader on small fixtures of both user layouts (never the real data)."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.data import DataError, miniimagenet, resolve_source

LABELS = ("n02", "n01", "n03")  # written unsorted on purpose
PER_CLASS = 3


def _pixels(seed: int, count: int, size: tuple[int, int] = (84, 84)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *size, 3), dtype=np.uint8)


@pytest.fixture()
def csv_root(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """train.csv / val.csv / test.csv + images/ (PNG, so pixels survive exactly)."""
    (tmp_path / "images").mkdir()
    pixels = {}
    for part_index, part in enumerate(("train", "val", "test")):
        with (tmp_path / f"{part}.csv").open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["filename", "label"])
            for class_index, label in enumerate(LABELS):
                label = f"{part}-{label}"
                pixels[label] = _pixels(10 * part_index + class_index, PER_CLASS)
                for i, image in enumerate(pixels[label]):
                    filename = f"{label}{i:04d}.png"
                    Image.fromarray(image).save(tmp_path / "images" / filename)
                    writer.writerow([filename, label])
    return tmp_path, pixels


def _write_pickle(path: Path, image_data: np.ndarray, class_dict: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps({"image_data": image_data, "class_dict": class_dict}, protocol=protocol))


@pytest.fixture()
def pickle_root(tmp_path) -> tuple[Path, np.ndarray, dict[str, list[int]]]:
    """mini-imagenet-cache-<part>.pkl with contiguous per-class rows, as in the common files."""
    image_data = _pixels(0, PER_CLASS * len(LABELS))
    class_dict = {label: list(range(i * PER_CLASS, (i + 1) * PER_CLASS)) for i, label in enumerate(LABELS)}
    for part in ("train", "val", "test"):
        _write_pickle(tmp_path / f"mini-imagenet-cache-{part}.pkl", image_data, class_dict)
    return tmp_path, image_data, class_dict


def _assert_matches(source, image_data: np.ndarray, class_dict: dict) -> None:
    assert source.class_names == tuple(sorted(class_dict))
    for c, label in enumerate(source.class_names):
        expected = image_data[class_dict[label]].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(source.class_images(c), expected)


def test_csv_layout_loads_84x84_rgb_with_exact_pixels(csv_root):
    root, pixels = csv_root
    source = miniimagenet(root, "val")
    assert source.image_shape == (3, 84, 84)
    assert source.class_names == ("val-n01", "val-n02", "val-n03")
    assert source.class_sizes.tolist() == [PER_CLASS] * 3
    for c, label in enumerate(source.class_names):
        np.testing.assert_array_equal(source.class_images(c), pixels[label].transpose(0, 3, 1, 2))


def test_csv_layout_resizes_other_sizes_to_84(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for label in ("a", "b"):
        for i, image in enumerate(_pixels(len(rows), 2, size=(50, 70))):
            Image.fromarray(image).convert("L").save(tmp_path / "images" / f"{label}{i}.jpg")
            rows.append(f"{label}{i}.jpg,{label}\n")
    (tmp_path / "train.csv").write_text("filename,label\n" + "".join(rows))
    source = miniimagenet(tmp_path, "train")
    assert source.image_shape == (3, 84, 84)
    assert miniimagenet(tmp_path, "train", image_size=32).image_shape == (3, 32, 32)


def test_pickle_layout_loads_84x84_rgb_with_exact_pixels(pickle_root):
    root, image_data, class_dict = pickle_root
    source = miniimagenet(root, "test")
    assert source.image_shape == (3, 84, 84)
    _assert_matches(source, image_data, class_dict)


def test_pickle_layout_with_interleaved_class_rows(tmp_path):
    image_data = _pixels(1, 9)
    class_dict = {"b": [0, 3, 6], "a": [1, 4, 7], "c": [8, 5, 2]}
    _write_pickle(tmp_path / "mini-imagenet-cache-train.pkl", image_data, class_dict)
    _assert_matches(miniimagenet(tmp_path, "train"), image_data, class_dict)


def test_pickle_written_by_numpy_1_with_protocol_2_loads(tmp_path):
    image_data = _pixels(2, 4)
    class_dict = {"x": [0, 1], "y": [2, 3]}
    data = pickle.dumps({"image_data": image_data, "class_dict": class_dict}, protocol=2)
    legacy = data.replace(b"numpy._core", b"numpy.core")  # protocol 2 names globals as text lines
    assert b"numpy.core.multiarray" in legacy
    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(legacy)
    _assert_matches(miniimagenet(tmp_path, "val"), image_data, class_dict)


def test_pickle_layout_resizes_on_request(pickle_root):
    assert miniimagenet(pickle_root[0], "train", image_size=28).image_shape == (3, 28, 28)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": _Exploit(marker)}))
    with pytest.raises(DataError, match="mkdir is not allowed"):
        miniimagenet(tmp_path, "train")
    assert not marker.exists()


def test_csv_layout_is_preferred_when_both_exist(csv_root, pickle_root):
    assert miniimagenet(csv_root[0], "train").class_names[0] == "train-n01"


def test_resolve_source_miniimagenet(pickle_root):
    root = pickle_root[0]
    source = resolve_source(f"miniimagenet:{root}", "val")
    assert source.image_shape == (3, 84, 84) and source.num_classes == 3
    assert resolve_source(f"miniimagenet:{root}", "val", image_size=20).image_shape == (3, 20, 20)


# ---- errors -------------------------------------------------------------------------------


def test_missing_data_names_both_layouts(tmp_path):
    with pytest.raises(DataError) as error:
        miniimagenet(tmp_path, "test")
    message = str(error.value)
    assert "'test'" in message and str(tmp_path / "test.csv") in message
    assert str(tmp_path / "images") in message and "mini-imagenet-cache-test.pkl" in message


def test_csv_without_images_folder_names_it(csv_root):
    root, _ = csv_root
    (root / "images").rename(root / "pictures")
    with pytest.raises(DataError, match=r"images folder missing: .*images"):
        miniimagenet(root, "train")


def test_csv_listing_a_missing_image_names_it(csv_root):
    root, _ = csv_root
    (root / "images" / "train-n030001.png").unlink()
    with pytest.raises(DataError, match=r"image missing: .*train-n030001\.png"):
        miniimagenet(root, "train")


def test_csv_with_wrong_columns_is_rejected(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "train.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(DataError, match=r"columns \('filename', 'label'\).*'file', 'class'"):
        miniimagenet(tmp_path, "train")


def test_unreadable_csv_image_names_it(csv_root):
    root, _ = csv_root
    (root / "images" / "train-n010000.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"cannot read image .*train-n010000\.png"):
        miniimagenet(root, "train")


@pytest.mark.parametrize(
    "content, offending",
    [
        ({"images": 1}, "got \\['images'\\]"),
        ({"image_data": np.zeros((2, 84, 84), np.uint8), "class_dict": {"a": [0]}}, "\\(2, 84, 84\\)"),
        ({"image_data": np.zeros((2, 84, 84, 3), np.float32), "class_dict": {"a": [0]}}, "uint8"),
        ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [0, 5]}}, "class 'a'"),
        ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": ["x"]}}, "class 'a'"),
        ({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {}}, "non-empty"),
    ],
)
def test_malformed_pickle_is_rejected(tmp_path, content, offending):
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=offending):
        miniimagenet(tmp_path, "train")


def test_truncated_pickle_names_the_file(pickle_root):
    root = pickle_root[0]
    path = root / "mini-imagenet-cache-val.pkl"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cannot read mini-ImageNet pickle .*cache-val\.pkl"):
        miniimagenet(root, "val")


@pytest.mark.parametrize("kwargs, offending", [({"part": "dev"}, "'dev'"), ({"image_size": -1}, "-1")])
def test_bad_arguments_name_the_value(pickle_root, kwargs, offending):
    with pytest.raises(DataError, match=offending):
        miniimagenet(pickle_root[0], **kwargs)
