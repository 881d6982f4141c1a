"""Few-shot data layer: sources of labelled images and reproducible N-way K-shot episodes.

Public API:
    DataError                      ValueError raised for every missing/corrupt file or bad argument
    FewShotSource                  images (one uint8 array) grouped by class; lazy rotation classes
    omniglot(split="vinyals", part="train", data_root=None, image_size=28, rotate=None)
        -> FewShotSource           shipped Omniglot zips, md5-checked, decoded once and cached
    omniglot_characters(data_root=None, image_size=28) -> FewShotSource
    folder(path, image_size=None, channels=None) -> FewShotSource
    miniimagenet(root, part="train", image_size=84) -> FewShotSource
    resolve_source(spec, part, data_root=None, image_size=None) -> FewShotSource
        spec: omniglot | omniglot:vinyals | omniglot:lake | miniimagenet:PATH | folder:PATH
    Episode                        NamedTuple(support_x, support_y, query_x, query_y, classes)
    sample_episode(source, ways, shots, queries, generator_or_seed, dtype=torch.float32) -> Episode
    episode_batch(source, ways, shots, queries, meta_batch, seed, index, dtype=torch.float32)
        -> Episode                 [meta_batch, ...]; task j drawn from episode_rng(seed, index, j)
    episode_rng(seed, index, task) -> np.random.Generator
    PARTS, SPEC_FORMS, DATA_ENV ("SHARP_MAML_DATA"), CACHE_ENV ("SHARP_MAML_CACHE")

Split membership, image preprocessing and cache details are in the docstrings of
``omniglot``, ``folder``, ``miniimagenet`` and ``episodes``.
"""

from .episodes import Episode, episode_batch, episode_rng, sample_episode
from .errors import PARTS, DataError
from .folder_data import folder
from .miniimagenet_data import miniimagenet
from .omniglot_data import omniglot, omniglot_characters
from .paths import CACHE_ENV, DATA_ENV
from .resolve import SPEC_FORMS, resolve_source
from .source import FewShotSource

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "DataError",
    "Episode",
    "FewShotSource",
    "PARTS",
    "SPEC_FORMS",
    "episode_batch",
    "episode_rng",
    "folder",
    "miniimagenet",
    "omniglot",
    "omniglot_characters",
    "resolve_source",
    "sample_episode",
]
