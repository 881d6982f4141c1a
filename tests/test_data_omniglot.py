"""Omniglot from the shipped zips: splits, preprocessing, md5 checks, the decoded-image cache."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.data import DataError, omniglot, omniglot_characters, resolve_source
from experiments.data.omniglot_data import (
    LAKE_VAL_ALPHABETS,
    VINYALS_TRAIN,
    VINYALS_VAL,
    ZIP_NAMES,
    lake_split,
    vinyals_split,
)
from experiments.data.paths import DEFAULT_DATA_ROOT
import experiments.data.omniglot_data as omniglot_module

SHIPPED = DEFAULT_DATA_ROOT / "omniglot"
# LANCZOS keeps an image's mean up to overshoot clipped at 0 and 1; measured <= 0.007 on the data.
INK_FRACTION_TOL = 0.02
# sha256 of "\n".join(names) of each vinyals part: pins VINYALS_SEED, the name order and the cut.
VINYALS_PINS = {
    "train": "8916a2065ec4fc9926653cdbe3e5cf9144568dad5690d056003f3595c247542c",
    "val": "3b99c8c88c0650ebb5919ff81c0e7644bb5667ee2a4e4704578113372deecdc0",
    "test": "35a82b19470d0a1201fcc128e4b5776aef952e3a41a9b0681e8ede9572ad3f08",
}

pytestmark = pytest.mark.skipif(not SHIPPED.is_dir(), reason=f"shipped Omniglot not found at {SHIPPED}")


@pytest.fixture(scope="module")
def characters():
    return omniglot_characters()


@pytest.fixture(scope="module")
def vinyals():
    return {part: omniglot("vinyals", part) for part in ("train", "val", "test")}


def _first_png(archive: zipfile.ZipFile, character: str) -> bytes:
    members = sorted(m for m in archive.namelist() if m.startswith(f"images_{character}/") and m.endswith(".png"))
    return archive.read(members[0])


def _characters_of(source) -> set[str]:
    return {name.rsplit("/rot", 1)[0] for name in source.class_names}


# ---- splits -------------------------------------------------------------------------------


def test_shipped_data_has_1623_characters_of_20_drawings(characters):
    assert characters.num_classes == 1623
    assert characters.image_shape == (1, 28, 28)
    assert set(characters.counts.tolist()) == {20}
    assert list(characters.base_names) == sorted(characters.base_names)


def test_vinyals_split_has_1200_meta_training_and_423_test_characters(characters):
    parts = vinyals_split(characters.base_names)
    assert {part: len(indices) for part, indices in parts.items()} == {"train": 1100, "val": 100, "test": 423}
    assert len(parts["train"]) + len(parts["val"]) == VINYALS_TRAIN == 1200
    assert len(parts["val"]) == VINYALS_VAL == 100


def test_vinyals_parts_have_4800_meta_training_classes_with_rotations(vinyals):
    assert vinyals["train"].num_classes == 4400
    assert vinyals["val"].num_classes == 400
    assert vinyals["train"].num_classes + vinyals["val"].num_classes == 4800
    assert vinyals["test"].num_classes == 4 * 423
    for source in vinyals.values():
        assert source.rotations == (0, 1, 2, 3)
        assert source.image_shape == (1, 28, 28)


def test_no_character_is_in_two_vinyals_parts(vinyals, characters):
    train, val, test = (_characters_of(vinyals[part]) for part in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1100, 100, 423)
    assert not train & test and not train & val and not val & test
    assert train | val | test == set(characters.base_names)


def test_vinyals_membership_is_pinned(characters):
    parts = vinyals_split(characters.base_names)
    for part, indices in parts.items():
        joined = "\n".join(characters.base_names[i] for i in indices)
        assert hashlib.sha256(joined.encode()).hexdigest() == VINYALS_PINS[part], part


def test_vinyals_part_images_are_those_of_their_characters(vinyals, characters):
    source = vinyals["test"]
    for c in range(0, source.num_classes, 4 * 97):
        base = characters.base_names.index(source.class_names[c].rsplit("/rot", 1)[0])
        np.testing.assert_array_equal(source.class_images(c), characters.class_images(base))


def test_lake_split_puts_background_alphabets_in_train_and_val_and_evaluation_in_test():
    sources = {part: omniglot("lake", part) for part in ("train", "val", "test")}
    alphabets = {part: {name.split("/")[1] for name in s.class_names} for part, s in sources.items()}
    stems = {part: {name.split("/")[0] for name in s.class_names} for part, s in sources.items()}
    assert stems == {"train": {"background"}, "val": {"background"}, "test": {"evaluation"}}
    assert alphabets["val"] == set(LAKE_VAL_ALPHABETS)
    assert (len(alphabets["train"]), len(alphabets["val"]), len(alphabets["test"])) == (25, 5, 20)
    assert not alphabets["train"] & alphabets["val"]
    assert [s.num_classes for s in sources.values()] == [813, 151, 659]
    assert all(s.rotations == (0,) for s in sources.values())


def test_rotate_flag_overrides_split_default():
    assert omniglot("lake", "val", rotate=True).num_classes == 4 * 151
    assert omniglot("vinyals", "val", rotate=False).num_classes == 100


# ---- images -------------------------------------------------------------------------------


def test_image_is_lanczos_resize_of_inverted_png(characters):
    name = "background/Latin/character01"
    with zipfile.ZipFile(SHIPPED / ZIP_NAMES[0]) as archive:
        png = Image.open(io.BytesIO(_first_png(archive, name)))
        expected = 255 - np.asarray(png.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    got = characters.class_images(characters.base_names.index(name), [0])
    np.testing.assert_array_equal(got[0, 0], expected)


def test_strokes_are_one_and_background_zero(characters):
    with zipfile.ZipFile(SHIPPED / ZIP_NAMES[0]) as archive:
        for b in range(0, 964, 61):
            png = _first_png(archive, characters.base_names[b])
            ink = (np.asarray(Image.open(io.BytesIO(png)).convert("L")) == 0).mean()
            image = characters.class_images(b, [0])[0, 0] / 255.0
            assert abs(image.mean() - ink) < INK_FRACTION_TOL
            assert image.max() == 1.0 and np.median(image) == 0.0


def test_rotation_classes_are_quarter_turns_of_their_character(vinyals):
    source = vinyals["train"]
    for base in range(0, len(source.base_names), 113):
        upright = source.class_images(4 * base)
        for k in range(4):
            rotated = source.class_images(4 * base + k)
            np.testing.assert_array_equal(rotated, np.rot90(upright, k, axes=(-2, -1)))
            np.testing.assert_array_equal(rotated, torch.rot90(torch.from_numpy(upright.copy()), k, (-2, -1)).numpy())
        assert not np.array_equal(source.class_images(4 * base + 1), upright)
        assert source.class_names[4 * base + 1] == source.base_names[base] + "/rot90"


def test_quarter_turn_is_counter_clockwise(vinyals):
    upright = vinyals["train"].class_images(0, [0])[0, 0]
    turned = vinyals["train"].class_images(1, [0])[0, 0]
    width = upright.shape[1]
    i, j = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    np.testing.assert_array_equal(turned, upright[j, width - 1 - i])


def test_source_images_are_read_only(characters):
    with pytest.raises(ValueError):
        characters.images[0, 0, 0, 0] = 1


# ---- files: md5, data root, errors --------------------------------------------------------


@pytest.fixture(scope="module")
def copied_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copy")
    (root / "omniglot").mkdir()
    for name in (*ZIP_NAMES, "MANIFEST.md5"):
        shutil.copyfile(SHIPPED / name, root / "omniglot" / name)
    return root


def test_copied_data_loads_through_data_root(copied_root):
    assert omniglot("vinyals", "test", data_root=copied_root).num_classes == 1692


@pytest.fixture()
def corrupt_root(copied_root, tmp_path) -> Path:
    root = tmp_path / "corrupt"
    shutil.copytree(copied_root, root)
    path = root / "omniglot" / ZIP_NAMES[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return root


def test_flipped_byte_is_detected_by_md5(corrupt_root):
    with pytest.raises(DataError, match=r"images_evaluation\.zip.*md5|md5.*images_evaluation\.zip") as error:
        omniglot("vinyals", "train", data_root=corrupt_root)
    assert "SHARP_MAML_DATA" in str(error.value) and "data_root" in str(error.value)


def test_data_root_argument_beats_environment_beats_default(corrupt_root, copied_root, monkeypatch):
    monkeypatch.setenv("SHARP_MAML_DATA", str(corrupt_root))
    with pytest.raises(DataError, match="md5"):
        omniglot("lake", "test")
    assert omniglot("lake", "test", data_root=copied_root).num_classes == 659
    monkeypatch.delenv("SHARP_MAML_DATA")
    assert omniglot("lake", "test").num_classes == 659


def test_missing_zip_names_the_file(copied_root, tmp_path):
    root = tmp_path / "partial"
    (root / "omniglot").mkdir(parents=True)
    shutil.copyfile(copied_root / "omniglot" / "MANIFEST.md5", root / "omniglot" / "MANIFEST.md5")
    with pytest.raises(DataError, match=r"missing: .*images_background\.zip"):
        omniglot(data_root=root)


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"manifest missing: .*MANIFEST\.md5.*SHARP_MAML_DATA"):
        omniglot(data_root=tmp_path)


def test_manifest_without_entry_names_the_zip(copied_root, tmp_path):
    root = tmp_path / "noentry"
    shutil.copytree(copied_root, root)
    manifest = root / "omniglot" / "MANIFEST.md5"
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(True) if "evaluation" not in line))
    with pytest.raises(DataError, match=r"no md5 for images_evaluation\.zip"):
        omniglot(data_root=root)


@pytest.mark.parametrize(
    "kwargs, offending",
    [
        ({"split": "ravi"}, "'ravi'"),
        ({"part": "dev"}, "'dev'"),
        ({"image_size": 0}, "got 0"),
        ({"image_size": 28.0}, "28.0"),
        ({"rotate": "yes"}, "'yes'"),
    ],
)
def test_bad_arguments_raise_data_error_naming_the_value(kwargs, offending):
    with pytest.raises(DataError, match=offending):
        omniglot(**kwargs)


# ---- resolve_source -----------------------------------------------------------------------


def test_resolve_source_omniglot_specs():
    assert resolve_source("omniglot", "val").class_names == omniglot("vinyals", "val").class_names
    assert resolve_source("omniglot:vinyals", "val").num_classes == 400
    assert resolve_source("omniglot:lake", "val").num_classes == 151


@pytest.mark.parametrize("spec", ["omniglot:", "omniglot:ravi", "mnist", "folder:", "miniimagenet", ""])
def test_unknown_spec_lists_accepted_forms(spec):
    with pytest.raises(DataError, match="accepted forms: omniglot, omniglot:vinyals") as error:
        resolve_source(spec, "train")
    assert repr(spec) in str(error.value)


def test_resolve_source_rejects_bad_part():
    with pytest.raises(DataError, match="'training'"):
        resolve_source("omniglot", "training")


# ---- decoded-image cache (on a tiny synthetic Omniglot, so cold loads are fast) ------------


def _png(rng: np.random.Generator) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(rng.random((105, 105)) < 0.9).convert("1").save(stream, format="PNG")
    return stream.getvalue()


@pytest.fixture()
def tiny_root(tmp_path, monkeypatch) -> Path:
    """<tmp>/data/omniglot: 2 characters x 3 drawings in each of 6 background alphabets (one
    plus the lake validation ones) and 1 evaluation alphabet; cache in <tmp>/cache."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    lines = []
    alphabets = {ZIP_NAMES[0]: ("Alpha", *LAKE_VAL_ALPHABETS), ZIP_NAMES[1]: ("Omega",)}
    for zip_name in ZIP_NAMES:
        top = zip_name.removesuffix(".zip")
        with zipfile.ZipFile(folder / zip_name, "w") as archive:
            for alphabet in alphabets[zip_name]:
                for character in ("character01", "character02"):
                    for drawer in (1, 2, 3):
                        archive.writestr(f"{top}/{alphabet}/{character}/0001_{drawer:02d}.png", _png(rng))
        lines.append(f"{hashlib.md5((folder / zip_name).read_bytes()).hexdigest()}  {zip_name}\n")
    (folder / "MANIFEST.md5").write_text("".join(lines))
    monkeypatch.setenv("SHARP_MAML_CACHE", str(tmp_path / "cache"))
    return tmp_path / "data"


def test_cold_load_writes_one_cache_file_per_zip_keyed_by_md5_and_size(tiny_root, tmp_path):
    source = omniglot_characters(tiny_root, image_size=12)
    assert source.num_classes == 14 and source.image_shape == (1, 12, 12)
    manifest = dict(line.split()[::-1] for line in (tiny_root / "omniglot" / "MANIFEST.md5").read_text().splitlines())
    files = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert files == [
        f"omniglot-{Path(z).stem}-{manifest[z]}-12px-v{omniglot_module.CACHE_VERSION}.npz" for z in ZIP_NAMES
    ]
    omniglot_characters(tiny_root, image_size=10)
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_warm_load_reads_cache_without_decoding(tiny_root, monkeypatch):
    cold = omniglot_characters(tiny_root, image_size=12)

    def no_decoding(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(omniglot_module, "_decode_zip", no_decoding)
    warm = omniglot_characters(tiny_root, image_size=12)
    np.testing.assert_array_equal(warm.images, cold.images)
    assert warm.base_names == cold.base_names


def test_unreadable_cache_file_is_rebuilt_with_a_warning(tiny_root, tmp_path):
    cold = omniglot_characters(tiny_root, image_size=12)
    for path in (tmp_path / "cache").iterdir():
        path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable Omniglot cache"):
        rebuilt = omniglot_characters(tiny_root, image_size=12)
    np.testing.assert_array_equal(rebuilt.images, cold.images)
    assert all(path.read_bytes() != b"not an npz" for path in (tmp_path / "cache").iterdir())


def test_unwritable_cache_warns_and_still_loads(tiny_root, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SHARP_MAML_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write Omniglot cache.*SHARP_MAML_CACHE"):
        assert omniglot_characters(tiny_root, image_size=12).num_classes == 14


def test_md5_is_computed_once_per_file_version(tiny_root, monkeypatch):
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    omniglot_characters(tiny_root, image_size=12)
    omniglot_characters(tiny_root, image_size=12)
    assert len(calls) == 2  # one per zip, then remembered
    path = tiny_root / "omniglot" / ZIP_NAMES[0]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="md5"):
        omniglot_characters(tiny_root, image_size=12)


def test_vinyals_split_rejects_too_few_characters(tiny_root):
    with pytest.raises(DataError, match="more than 1200 characters, got 14"):
        omniglot("vinyals", "train", data_root=tiny_root)


def test_resolve_source_passes_data_root_and_image_size(tiny_root):
    source = resolve_source("omniglot:lake", "val", data_root=tiny_root, image_size=12)
    assert source.image_shape == (1, 12, 12)
    assert {name.split("/")[1] for name in source.class_names} == set(LAKE_VAL_ALPHABETS)
    assert resolve_source("omniglot:lake", "test", data_root=tiny_root, image_size=12).class_names == (
        "evaluation/Omega/character01",
        "evaluation/Omega/character02",
    )


def test_lake_split_rejects_data_without_its_validation_alphabets(tiny_root):
    names = omniglot_characters(tiny_root, image_size=12).base_names
    kept = [name for name in names if "Tifinagh" not in name]
    with pytest.raises(DataError, match="Tifinagh"):
        lake_split(kept)


@pytest.mark.slow
def test_cold_decode_of_shipped_data_equals_cached_arrays(characters, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARP_MAML_CACHE", str(tmp_path))
    cold = omniglot_characters()
    assert len(list(tmp_path.iterdir())) == 2
    np.testing.assert_array_equal(cold.images, characters.images)
    assert cold.base_names == characters.base_names


def test_fresh_decode_is_lanczos_resize_of_inverted_png(tiny_root):
    source = omniglot_characters(tiny_root, image_size=12)
    with zipfile.ZipFile(tiny_root / "omniglot" / ZIP_NAMES[1]) as archive:
        png = Image.open(io.BytesIO(_first_png(archive, "evaluation/Omega/character02")))
        expected = 255 - np.asarray(png.convert("L").resize((12, 12), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(source.class_images(source.base_names.index("evaluation/Omega/character02"), [0])[0, 0], expected)
