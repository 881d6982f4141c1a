"""Episode sampling: shapes, labels, reproducibility by (seed, index), argument validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experiments.data import (
    DataError,
    Episode,
    FewShotSource,
    episode_batch,
    episode_rng,
    omniglot,
    sample_episode,
)

SIZES = (6, 7, 8, 6, 9, 10, 6, 7)  # images per class of the tagged source


def _tagged_source(rotations: tuple[int, ...] = (0,)) -> FewShotSource:
    """Every image is constant, equal to its row number, so an episode reveals where it came from."""
    rows = sum(SIZES)
    images = np.broadcast_to(np.arange(rows, dtype=np.uint8)[:, None, None, None], (rows, 1, 3, 3)).copy()
    return FewShotSource.from_counts(images, SIZES, [f"c{i}" for i in range(len(SIZES))], rotations, "tagged")


TAGGED = _tagged_source()
STARTS = np.cumsum(SIZES) - np.array(SIZES)


def _rows(x: torch.Tensor) -> np.ndarray:
    """Row number of each image of an episode tensor from TAGGED."""
    return np.rint(x[..., 0, 0, 0].double().numpy() * 255).astype(int)


def _assert_episode_equal(a: Episode, b: Episode) -> None:
    for left, right in zip(a, b):
        assert torch.equal(left, right)


@given(
    ways=st.integers(2, len(SIZES)),
    shots=st.integers(1, 3),
    queries=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_episode_labels_are_balanced_and_match_their_classes(ways, shots, queries, seed):
    episode = sample_episode(TAGGED, ways, shots, queries, seed)
    assert episode.support_x.shape == (ways * shots, 1, 3, 3)
    assert episode.query_x.shape == (ways * queries, 1, 3, 3)
    assert torch.equal(episode.support_y, torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(episode.query_y, torch.arange(ways).repeat_interleave(queries))
    classes = episode.classes.numpy()
    assert len(set(classes.tolist())) == ways and classes.min() >= 0 and classes.max() < TAGGED.num_classes
    for x, y in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
        rows, owners = _rows(x), classes[y.numpy()]
        assert np.all((rows >= STARTS[owners]) & (rows < STARTS[owners] + np.array(SIZES)[owners]))
    every_row = np.concatenate([_rows(episode.support_x), _rows(episode.query_x)])
    assert len(set(every_row.tolist())) == len(every_row)  # no image twice, support and query disjoint


def test_class_order_is_randomly_permuted():
    orders = [tuple(sample_episode(TAGGED, 4, 1, 1, seed).classes.tolist()) for seed in range(30)]
    assert any(list(order) != sorted(order) for order in orders)
    assert len(set(orders)) > 20


def test_every_class_and_label_slot_is_reached():
    seen = np.zeros((len(SIZES), 3), dtype=int)
    for seed in range(200):
        for label, c in enumerate(sample_episode(TAGGED, 3, 1, 1, seed).classes.tolist()):
            seen[c, label] += 1
    assert seen.min() > 0


def test_pixels_are_uint8_over_255_in_requested_dtype():
    source = omniglot("vinyals", "val")
    for dtype in (torch.float32, torch.float64, torch.float16):
        episode = sample_episode(source, 5, 2, 3, 11, dtype=dtype)
        assert episode.support_x.dtype == episode.query_x.dtype == dtype
        assert episode.support_y.dtype == episode.query_y.dtype == episode.classes.dtype == torch.int64
        assert 0.0 <= float(episode.query_x.min()) and float(episode.query_x.max()) <= 1.0
    episode = sample_episode(source, 5, 2, 3, 11, dtype=torch.float64)
    for label, c in enumerate(episode.classes.tolist()):
        block = episode.support_x[2 * label : 2 * label + 2].numpy() * 255
        candidates = source.class_images(c).astype(float)
        for image in block:
            assert any(np.array_equal(image, candidate) for candidate in candidates)


def test_omniglot_batch_has_the_paper_shapes():
    batch = episode_batch(omniglot("vinyals", "train"), ways=20, shots=1, queries=15, meta_batch=4, seed=0, index=0)
    assert batch.support_x.shape == (4, 20, 1, 28, 28)
    assert batch.support_y.shape == (4, 20)
    assert batch.query_x.shape == (4, 300, 1, 28, 28)
    assert batch.query_y.shape == (4, 300)
    assert batch.classes.shape == (4, 20)


def test_rotated_classes_reach_episodes_rotated():
    source = _tagged_source()
    asymmetric = np.arange(9, dtype=np.uint8).reshape(1, 1, 3, 3) * np.ones((sum(SIZES), 1, 1, 1), dtype=np.uint8)
    rotated = FewShotSource.from_counts(asymmetric, SIZES, source.base_names, (0, 1, 2, 3))
    episode = sample_episode(rotated, 6, 1, 1, 5, dtype=torch.float64)
    for label, c in enumerate(episode.classes.tolist()):
        expected = np.rot90(asymmetric[0, 0], c % 4) / 255
        np.testing.assert_array_equal(episode.support_x[label, 0].numpy(), expected)


# ---- reproducibility ----------------------------------------------------------------------


def test_same_seed_gives_identical_episode():
    _assert_episode_equal(sample_episode(TAGGED, 3, 2, 2, 42), sample_episode(TAGGED, 3, 2, 2, 42))
    _assert_episode_equal(episode_batch(TAGGED, 3, 2, 2, 4, 9, 3), episode_batch(TAGGED, 3, 2, 2, 4, 9, 3))


def test_different_index_or_seed_gives_different_episode():
    base = episode_batch(TAGGED, 4, 2, 2, 4, seed=9, index=3)
    for other in (episode_batch(TAGGED, 4, 2, 2, 4, seed=9, index=4), episode_batch(TAGGED, 4, 2, 2, 4, seed=10, index=3)):
        assert not torch.equal(base.support_x, other.support_x)


def test_batch_does_not_depend_on_what_was_sampled_before():
    fresh = episode_batch(TAGGED, 3, 1, 2, 5, seed=1, index=7)
    for index in range(7):
        episode_batch(TAGGED, 3, 1, 2, 5, seed=1, index=index)
    np.random.seed(123)
    torch.manual_seed(123)
    _assert_episode_equal(fresh, episode_batch(TAGGED, 3, 1, 2, 5, seed=1, index=7))


def test_batch_task_j_is_sample_episode_with_episode_rng():
    batch = episode_batch(TAGGED, 3, 2, 1, 4, seed=5, index=2)
    for task in range(4):
        single = sample_episode(TAGGED, 3, 2, 1, episode_rng(5, 2, task))
        _assert_episode_equal(Episode(*(field[task] for field in batch)), single)


def test_smaller_meta_batch_is_a_prefix_of_a_larger_one():
    small, large = (episode_batch(TAGGED, 3, 1, 1, m, seed=0, index=1) for m in (2, 6))
    _assert_episode_equal(small, Episode(*(field[:2] for field in large)))


def test_generator_is_advanced_in_place():
    rng = np.random.default_rng(0)
    first, second = sample_episode(TAGGED, 5, 1, 1, rng), sample_episode(TAGGED, 5, 1, 1, rng)
    assert not torch.equal(first.support_x, second.support_x)


def test_seed_list_equals_generator_from_the_same_list():
    _assert_episode_equal(
        sample_episode(TAGGED, 3, 1, 1, [4, 5]), sample_episode(TAGGED, 3, 1, 1, np.random.default_rng([4, 5]))
    )


# ---- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ways, shots, queries, offending",
    [
        (1, 1, 1, "ways must be >= 2, got 1"),
        (9, 1, 1, "ways must be <= 8 .*got 9"),
        (2.0, 1, 1, "ways must be an int, got 2.0"),
        (2, 0, 1, "shots must be >= 1, got 0"),
        (2, 1, 0, "queries must be >= 1, got 0"),
        (2, True, 1, "shots must be an int, got True"),
        (2, 3, 4, "class 'c0' .* has 6 images, fewer than shots \\+ queries = 3 \\+ 4 = 7"),
    ],
)
def test_bad_episode_sizes_name_the_value(ways, shots, queries, offending):
    with pytest.raises(DataError, match=offending):
        sample_episode(TAGGED, ways, shots, queries, 0)
    with pytest.raises(DataError, match=offending):
        episode_batch(TAGGED, ways, shots, queries, 2, 0, 0)


@pytest.mark.parametrize("seed", [-1, "7", 1.5, [], [1, -2], None])
def test_bad_seed_names_the_value(seed):
    with pytest.raises(DataError, match=repr(seed).replace("[", "\\[").replace("]", "\\]")):
        sample_episode(TAGGED, 2, 1, 1, seed)


@pytest.mark.parametrize(
    "kwargs, offending",
    [
        ({"meta_batch": 0}, "meta_batch must be >= 1, got 0"),
        ({"seed": -3}, "seed must be >= 0, got -3"),
        ({"index": -1}, "index must be >= 0, got -1"),
        ({"index": 1.0}, "index must be an int, got 1.0"),
        ({"dtype": torch.int64}, "floating torch.dtype, got torch.int64"),
        ({"dtype": np.float32}, "floating torch.dtype, got"),
    ],
)
def test_bad_batch_arguments_name_the_value(kwargs, offending):
    arguments = {"meta_batch": 2, "seed": 0, "index": 0} | kwargs
    with pytest.raises(DataError, match=offending):
        episode_batch(TAGGED, 2, 1, 1, **arguments)


def test_source_that_is_not_a_few_shot_source_is_rejected():
    with pytest.raises(DataError, match="FewShotSource, got ndarray"):
        sample_episode(np.zeros((4, 1, 2, 2)), 2, 1, 1, 0)


# ---- FewShotSource invariants --------------------------------------------------------------


def test_source_validates_its_layout():
    images = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    with pytest.raises(DataError, match="uint8"):
        FewShotSource.from_counts(images.astype(np.float32), [2, 2], ["a", "b"])
    with pytest.raises(DataError, match="inside the 4 images"):
        FewShotSource.from_counts(images, [2, 3], ["a", "b"])
    with pytest.raises(DataError, match="distinct"):
        FewShotSource.from_counts(images, [2, 2], ["a", "a"])
    with pytest.raises(DataError, match="rotations .* got \\(0, 4\\)"):
        FewShotSource.from_counts(images, [2, 2], ["a", "b"], (0, 4))
    with pytest.raises(DataError, match="square"):
        FewShotSource.from_counts(np.zeros((4, 1, 2, 3), np.uint8), [2, 2], ["a", "b"], (0, 1))
    with pytest.raises(DataError, match="class index must be < 2, got 2"):
        FewShotSource.from_counts(images, [2, 2], ["a", "b"]).class_images(2)


def test_subset_copies_only_the_chosen_classes():
    subset = TAGGED.subset([3, 1], rotations=(0, 2))
    assert subset.base_names == ("c3", "c1")
    assert subset.num_classes == 4 and subset.class_names[1] == "c3/rot180"
    assert len(subset.images) == SIZES[3] + SIZES[1]
    np.testing.assert_array_equal(subset.class_images(2), TAGGED.class_images(1))
