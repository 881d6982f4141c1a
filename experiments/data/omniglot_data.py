"""Omniglot read straight from the shipped zips, with the Vinyals and the Lake splits.

Public API:
    omniglot(split="vinyals", part="train", data_root=None, image_size=28, rotate=None)
        -> FewShotSource
    omniglot_characters(data_root=None, image_size=28) -> FewShotSource   (all 1623, unrotated)
    vinyals_split(names) -> dict[str, np.ndarray];  lake_split(names) -> dict[str, np.ndarray]
    constants: SPLITS, ZIP_NAMES, VINYALS_SEED, VINYALS_TRAIN, VINYALS_VAL, LAKE_VAL_ALPHABETS

Files. ``<data_root>/omniglot/`` holds ``images_background.zip``, ``images_evaluation.zip``
and ``MANIFEST.md5``. Each zip's md5 is checked against the manifest before it is read
(once per process per file version); members are decoded from the zip in memory, never
extracted. A missing or corrupt file raises DataError.

Images. A 105x105 one-bit PNG is converted to "L", resized with LANCZOS (``images.RESAMPLE``)
and inverted, so strokes are 1 and background 0: uint8 [1, S, S] here, float [0, 1] in episodes.

Cache. Decoding the 32,460 PNGs takes seconds, so each zip's decoded array is saved to
``<cache_dir>/omniglot-<zip stem>-<zip md5>-<S>px-v<CACHE_VERSION>.npz`` (cache_dir from
``paths.resolve_cache_dir``), written to a temporary file then ``os.replace``d. An unreadable
cache file is rebuilt (with a warning); an unwritable cache directory only warns.

Character names are ``"<background|evaluation>/<Alphabet>/characterNN"``; characters are
numbered in sorted name order (background before evaluation).

Splits (every part is a set of whole characters; no character is in two parts):
    vinyals: the 1623 sorted characters are permuted by
        ``np.random.default_rng(VINYALS_SEED).permutation(1623)``; the first 1100 are
        ``train``, the next 100 ``val`` and the last 423 ``test`` (Vinyals et al. 2016 as coded
        in MAML's data_generator.py: 1200 meta-training characters of which the last 100 are
        held out for validation). MAML shuffled an ``os.listdir`` order, so its exact
        membership cannot be reproduced; ours is fixed. Default ``rotate=True``: every
        character gives 4 classes (0, 90, 180, 270 degrees) in every part, so train has 4400
        classes, val 400 (4800 meta-training classes in all) and test 1692.
    lake: background alphabets are meta-training, evaluation alphabets (659 characters) are
        ``test``; the 5 background alphabets in LAKE_VAL_ALPHABETS (the last 5 in sorted
        order, 151 characters) are ``val`` and the other 25 (813 characters) ``train``.
        Default ``rotate=False``, as in Lake et al.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError, require_int, require_part
from .images import open_image, to_array
from .paths import CACHE_ENV, DATA_ENV, resolve_cache_dir, resolve_data_root
from .source import FewShotSource

__all__ = [
    "CACHE_VERSION",
    "LAKE_VAL_ALPHABETS",
    "SPLITS",
    "VINYALS_SEED",
    "VINYALS_TRAIN",
    "VINYALS_VAL",
    "ZIP_NAMES",
    "lake_split",
    "omniglot",
    "omniglot_characters",
    "vinyals_split",
]

ZIP_NAMES = ("images_background.zip", "images_evaluation.zip")
MANIFEST_NAME = "MANIFEST.md5"
SPLITS = ("vinyals", "lake")
#: Bump when the decoding changes, so stale cache files are not read.
CACHE_VERSION = 1
DEFAULT_IMAGE_SIZE = 28

VINYALS_SEED = 1
#: Meta-training characters (validation included) and, of those, the validation ones.
VINYALS_TRAIN = 1200
VINYALS_VAL = 100
LAKE_VAL_ALPHABETS = (
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Sanskrit",
    "Syriac_(Estrangelo)",
    "Tagalog",
    "Tifinagh",
)
_ALL_ROTATIONS = (0, 1, 2, 3)
_DEFAULT_ROTATE = {"vinyals": True, "lake": False}

_WHERE = (
    f"point elsewhere with --data-root DIR (data_root= in Python) or ${DATA_ENV} (the directory "
    "that holds omniglot/)"
)
# (resolved path, size, mtime_ns, expected md5) of zips whose md5 matched in this process.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _read_manifest(folder: Path) -> dict[str, str]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"Omniglot manifest missing: {path}; {_WHERE}")
    manifest = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or len(fields[0]) != 32:
            raise DataError(f"{path} line {number} is not '<md5>  <file>': {line!r}")
        manifest[fields[1]] = fields[0].lower()
    return manifest


def _verify_zip(path: Path, expected_md5: str) -> None:
    """Raise DataError unless ``path`` exists and its md5 is ``expected_md5``."""
    if not path.is_file():
        raise DataError(f"Omniglot zip missing: {path}; {_WHERE}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected_md5)
    if key in _VERIFIED:
        return
    with path.open("rb") as stream:
        actual = hashlib.file_digest(stream, "md5").hexdigest()
    if actual != expected_md5:
        raise DataError(
            f"Omniglot zip corrupt: md5 of {path} is {actual}, {MANIFEST_NAME} says "
            f"{expected_md5}; restore the file or {_WHERE}"
        )
    _VERIFIED.add(key)


def _decode_zip(path: Path, image_size: int) -> tuple[np.ndarray, list[str], list[int]]:
    """Decode every PNG of one zip: images uint8 [n, 1, S, S], character names, counts."""
    stem = path.stem.removeprefix("images_")
    with zipfile.ZipFile(path) as archive:
        members: dict[str, list[str]] = defaultdict(list)
        for member in archive.namelist():
            if member.endswith(".png"):
                parts = member.split("/")
                if len(parts) != 4:
                    raise DataError(
                        f"unexpected member {member!r} in {path}; "
                        "expected <top>/<Alphabet>/characterNN/<file>.png"
                    )
                members[f"{stem}/{parts[1]}/{parts[2]}"].append(member)
        names = sorted(members)
        counts = [len(members[name]) for name in names]
        images = np.empty((sum(counts), 1, image_size, image_size), dtype=np.uint8)
        row = 0
        for name in names:
            for member in sorted(members[name]):
                image = open_image(archive.read(member), f"{path}:{member}")
                images[row] = 255 - to_array(image, "L", (image_size, image_size))
                row += 1
    return images, names, counts


def _read_cache(path: Path, image_size: int) -> tuple[np.ndarray, list[str], list[int]] | None:
    """The cached arrays at ``path``, or None if absent or unusable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images, names, counts = data["images"], data["names"], data["counts"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"ignoring unreadable Omniglot cache {path} ({error}); rebuilding it", stacklevel=3)
        return None
    if (
        images.dtype != np.uint8
        or images.shape[1:] != (1, image_size, image_size)
        or len(names) != len(counts)
        or int(counts.sum()) != len(images)
    ):
        warnings.warn(f"ignoring inconsistent Omniglot cache {path}; rebuilding it", stacklevel=3)
        return None
    return images, names.tolist(), counts.tolist()


def _write_cache(path: Path, images: np.ndarray, names: list[str], counts: list[int]) -> None:
    """Write the arrays to ``path`` atomically (temporary file, then os.replace)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(
                    stream, images=images, names=np.array(names), counts=np.array(counts, dtype=np.int64)
                )
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(
            f"could not write Omniglot cache {path} ({error}); set ${CACHE_ENV} to a writable "
            "directory to avoid decoding again",
            stacklevel=3,
        )


def _zip_characters(path: Path, md5: str, image_size: int) -> tuple[np.ndarray, list[str], list[int]]:
    """Verified, decoded contents of one zip, from the cache when it holds them."""
    _verify_zip(path, md5)
    cache = resolve_cache_dir() / f"omniglot-{path.stem}-{md5}-{image_size}px-v{CACHE_VERSION}.npz"
    cached = _read_cache(cache, image_size)
    if cached is not None:
        return cached
    decoded = _decode_zip(path, image_size)
    _write_cache(cache, *decoded)
    return decoded


def omniglot_characters(
    data_root: str | os.PathLike[str] | None = None, image_size: int = DEFAULT_IMAGE_SIZE
) -> FewShotSource:
    """Every Omniglot character as one unrotated class, in sorted name order."""
    image_size = require_int("image_size", image_size, 1)
    folder = resolve_data_root(data_root) / "omniglot"
    manifest = _read_manifest(folder)
    images, names, counts = [], [], []
    for zip_name in ZIP_NAMES:  # "background/..." sorts before "evaluation/...": order stays sorted
        if zip_name not in manifest:
            raise DataError(f"{folder / MANIFEST_NAME} has no md5 for {zip_name}; {_WHERE}")
        zip_images, zip_names, zip_counts = _zip_characters(folder / zip_name, manifest[zip_name], image_size)
        images.append(zip_images)
        names += zip_names
        counts += zip_counts
    return FewShotSource.from_counts(np.concatenate(images), counts, names, name=f"omniglot:{folder}")


def vinyals_split(names: Sequence[str]) -> dict[str, np.ndarray]:
    """Sorted character indices of each part of the Vinyals split (see the module docstring)."""
    if len(names) <= VINYALS_TRAIN:
        raise DataError(f"the vinyals split needs more than {VINYALS_TRAIN} characters, got {len(names)}")
    order = np.random.default_rng(VINYALS_SEED).permutation(len(names))
    train_end = VINYALS_TRAIN - VINYALS_VAL
    return {
        "train": np.sort(order[:train_end]),
        "val": np.sort(order[train_end:VINYALS_TRAIN]),
        "test": np.sort(order[VINYALS_TRAIN:]),
    }


def lake_split(names: Sequence[str]) -> dict[str, np.ndarray]:
    """Character indices of each part of the Lake split (see the module docstring)."""
    where = {"train": [], "val": [], "test": []}
    seen_val_alphabets = set()
    for index, name in enumerate(names):
        stem, alphabet = name.split("/")[:2]
        if stem == "evaluation":
            where["test"].append(index)
        elif alphabet in LAKE_VAL_ALPHABETS:
            where["val"].append(index)
            seen_val_alphabets.add(alphabet)
        else:
            where["train"].append(index)
    missing = sorted(set(LAKE_VAL_ALPHABETS) - seen_val_alphabets)
    if missing:
        raise DataError(f"the lake split's validation alphabets are missing from the data: {missing}")
    return {part: np.array(indices, dtype=np.int64) for part, indices in where.items()}


_SPLIT_FUNCTIONS = {"vinyals": vinyals_split, "lake": lake_split}


def omniglot(
    split: str = "vinyals",
    part: str = "train",
    data_root: str | os.PathLike[str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    rotate: bool | None = None,
) -> FewShotSource:
    """One part of an Omniglot few-shot split.

    Args:
        split: "vinyals" or "lake" (see the module docstring for membership).
        part: "train", "val" or "test".
        data_root: directory holding ``omniglot/``; default ``$SHARP_MAML_DATA`` or
            ``<repo>/../shared/data``.
        image_size: side S of the square images (28 in MAML and Sharp-MAML).
        rotate: give each character 4 classes (0/90/180/270 degrees); None uses the split's
            default (vinyals: True, lake: False).
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    require_part(part)
    if rotate is None:
        rotate = _DEFAULT_ROTATE[split]
    elif not isinstance(rotate, bool):
        raise DataError(f"rotate must be a bool or None, got {rotate!r}")
    characters = omniglot_characters(data_root, image_size)
    indices = _SPLIT_FUNCTIONS[split](characters.base_names)[part]
    return characters.subset(indices, _ALL_ROTATIONS if rotate else (0,), f"omniglot:{split}/{part}")
