"""folder(path): one sub-folder of images per class becomes a few-shot source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.data import DataError, folder, resolve_source, sample_episode


def _write_class(directory: Path, count: int, shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Write ``count`` random PNGs of ``shape`` ((H, W) gray or (H, W, 3) RGB); return the pixels."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(count)]
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(directory / f"img{i:02d}.png")
    return pixels


@pytest.fixture()
def rgb_root(tmp_path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path / "rgb"
    sizes = {"cat": 3, "ant": 4, "bee": 5}
    pixels = {name: _write_class(root / name, n, (10, 12, 3), seed) for seed, (name, n) in enumerate(sizes.items())}
    return root, pixels


def test_rgb_folder_loads_classes_sorted_with_exact_pixels(rgb_root):
    root, pixels = rgb_root
    source = folder(root)
    assert source.class_names == ("ant", "bee", "cat")
    assert source.image_shape == (3, 10, 12)
    assert source.class_sizes.tolist() == [4, 5, 3]
    for c, name in enumerate(source.class_names):
        expected = np.stack([image.transpose(2, 0, 1) for image in pixels[name]])
        np.testing.assert_array_equal(source.class_images(c), expected)


def test_gray_folder_is_one_channel_and_resized(tmp_path):
    for name in ("a", "b"):
        _write_class(tmp_path / name, 2, (30, 30), seed=len(name))
    source = folder(tmp_path, image_size=16)
    assert source.image_shape == (1, 16, 16)


def test_channels_argument_overrides_first_image(rgb_root, tmp_path):
    root, _ = rgb_root
    assert folder(root, channels=1).image_shape == (1, 10, 12)
    for name in ("a", "b"):
        _write_class(tmp_path / "gray" / name, 2, (8, 8), seed=3)
    assert folder(tmp_path / "gray", channels=3).image_shape == (3, 8, 8)


def test_mixed_modes_and_sizes_follow_the_first_image(tmp_path):
    _write_class(tmp_path / "a", 2, (8, 8), seed=0)
    _write_class(tmp_path / "b", 2, (20, 14, 3), seed=1)
    source = folder(tmp_path)
    assert source.image_shape == (1, 8, 8)
    assert source.class_images(1).shape == (2, 1, 8, 8)


def test_hidden_and_non_image_files_are_ignored(rgb_root):
    root, _ = rgb_root
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / ".hidden.png").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / "README.md").write_text("top-level files are not classes")
    source = folder(root)
    assert source.class_names == ("ant", "bee", "cat")
    assert source.class_sizes.tolist() == [4, 5, 3]


def test_folder_source_gives_episodes_in_unit_range(rgb_root):
    source = folder(rgb_root[0])
    episode = sample_episode(source, ways=3, shots=1, queries=2, generator_or_seed=0)
    assert episode.support_x.shape == (3, 3, 10, 12)
    assert episode.query_x.shape == (6, 3, 10, 12)
    assert 0.0 <= float(episode.support_x.min()) and float(episode.support_x.max()) <= 1.0


# ---- errors -------------------------------------------------------------------------------


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        folder(tmp_path / "nowhere")


def test_file_instead_of_directory_is_rejected(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="file.png"):
        folder(tmp_path / "file.png")


@pytest.mark.parametrize("n_classes", [0, 1])
def test_fewer_than_two_classes_is_rejected(tmp_path, n_classes):
    for i in range(n_classes):
        _write_class(tmp_path / f"c{i}", 2, (4, 4), seed=i)
    with pytest.raises(DataError, match=f"has {n_classes} class sub-folder"):
        folder(tmp_path)


def test_class_without_images_names_the_class(tmp_path):
    _write_class(tmp_path / "full", 2, (4, 4), seed=0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="empty has no images"):
        folder(tmp_path)


@pytest.mark.parametrize("broken", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, broken):
    _write_class(tmp_path / "a", 2, (16, 16, 3), seed=0)
    _write_class(tmp_path / "b", 2, (16, 16, 3), seed=1)
    target = tmp_path / "b" / "img01.png"
    data = b"this is not a png" if broken == "garbage" else target.read_bytes()[:60]
    target.write_bytes(data)
    with pytest.raises(DataError, match=r"cannot read image .*b/img01\.png"):
        folder(tmp_path)


@pytest.mark.parametrize("kwargs, offending", [({"channels": 2}, "got 2"), ({"image_size": 0}, "got 0"), ({"image_size": "28"}, "'28'")])
def test_bad_arguments_name_the_value(rgb_root, kwargs, offending):
    with pytest.raises(DataError, match=offending):
        folder(rgb_root[0], **kwargs)


# ---- resolve_source -----------------------------------------------------------------------


def test_resolve_folder_with_part_sub_folders(tmp_path):
    for part, classes in {"train": ("a", "b", "c"), "test": ("x", "y")}.items():
        for name in classes:
            _write_class(tmp_path / part / name, 2, (6, 6), seed=0)
    assert resolve_source(f"folder:{tmp_path}", "train").class_names == ("a", "b", "c")
    assert resolve_source(f"folder:{tmp_path}", "test", image_size=4).class_names == ("x", "y")
    assert resolve_source(f"folder:{tmp_path}", "test", image_size=4).image_shape == (1, 4, 4)


def test_resolve_folder_without_parts_serves_every_part_with_a_warning(rgb_root):
    root, _ = rgb_root
    assert resolve_source(f"folder:{root}", "train").class_names == ("ant", "bee", "cat")
    with pytest.warns(UserWarning, match="has no val/ sub-folder"):
        assert resolve_source(f"folder:{root}", "val").class_names == ("ant", "bee", "cat")
