"""The frozen configuration of one few-shot meta-training run, with its defaults and sources.

Defaults are the 5-way 1-shot Omniglot set-up of MAML (Finn et al. 2017; the command for
"5-way, 1-shot omniglot" at the top of ``main.py`` in github.com/cbfinn/maml) with what
Abbas et al. 2022 (Sharp-MAML) change, each field saying where its value comes from.
20-way values (MAML: inner lr 0.1, 5 steps, meta-batch 16; Sharp-MAML Appendix E: 1 step
of 0.1, meta-batch 16) are set by :mod:`experiments.fewshot.tables`, not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from experiments.fewshot.common import PRECISIONS, build_algorithm
from testbed import cudagraph
from testbed import validate as V
from testbed.algorithms import CHECKPOINTABLE, NAMES, Algorithm
from testbed.meta import BATCHING

# Fields that change the numbers a run produces; a resumed run must keep them.
TRAINING_FIELDS = (
    "algorithm", "source", "image_size", "ways", "shots", "queries", "hidden", "inner_steps",
    "beta_low", "alpha_low", "alpha_up", "swp_keep", "sds_fraction", "sam_alpha", "first_order",
    "meta_batch", "meta_lr", "seed", "task_batching", "precision", "gradient_checkpointing",
)


@dataclass(frozen=True)
class TrainConfig:
    """One meta-training run (validated on construction; ValueError names the bad value).

    algorithm:     a :data:`testbed.algorithms.NAMES` entry.
    source:        data spec for ``experiments.data.resolve_source``: ``omniglot`` (Vinyals
                   split, rotations as classes), ``omniglot:lake``, ``miniimagenet:PATH``,
                   ``folder:PATH``.  Meta-training uses part ``train``.
    data_root:     where ``omniglot/`` lives; None: ``$SHARP_MAML_DATA`` or ``../shared/data``.
    image_size:    side of the square images; None keeps the source's (Omniglot 28, as MAML).
    ways, shots:   N-way K-shot; 5-way 1-shot (MAML's Omniglot command).
    queries:       query images per class: 15 (Sharp-MAML Sec. 5.1 and App. E, after Ravi &
                   Larochelle 2017).  MAML's own Omniglot code used ``queries = shots``.
    hidden:        filters per conv layer: 64 (Sec. 5.1; MAML's Omniglot ``num_filters``).
    inner_steps:   fine-tuning steps N in meta-training: 1 (MAML 5-way Omniglot; Sharp-MAML
                   App. E states 1 step for all its Omniglot runs).
    beta_low:      fine-tuning step size: 0.4 (MAML 5-way Omniglot ``update_lr``).
    alpha_low, alpha_up: radii (eqs. 11, 13); None takes the algorithm's default 0.05, the
                   largest of the paper's grid {0.05, 0.005, 0.0005, 0.00005}.
    swp_keep, sds_fraction: ESAM's xi and mu (esharp, esharp-anil only); None: 0.5.
    sam_alpha:     SAM radius of the ``sam`` (ERM) baseline; None: 0.05.
    first_order:   drop the Hessian term of eq. (10) (FO-MAML style) for any algorithm.
    meta_batch:    tasks per meta-update: 32 (MAML 5-way Omniglot ``meta_batch_size``).
    meta_lr:       Adam's learning rate: 0.001 (Sec. 5.1; MAML ``meta_lr``).
    iterations:    meta-iterations: 40000 (MAML's 5-way Omniglot ``metatrain_iterations``).
    seed:          seeds the initial parameters and the training episodes.
    device:        torch device, "cpu" or "cuda[:k]"; CUDA must be available to this torch
                   (:func:`device_problem`).
    threads:       ``torch.set_num_threads`` for the run; None leaves torch's choice.  On a
                   shared machine 1 thread per run avoids OpenMP spinning against other work.
    task_batching: "loop" (one task after another), "vmap" (vectorised over the meta-batch)
                   or "auto" (the default): loop on CPU, vmap on CUDA, replaced by the concrete
                   choice on construction.  On one CPU thread the loop is faster at
                   the paper's sizes (``testbed bench fewshot``: vmap 1.8x slower on
                   mini-ImageNet 5-way, 5% to 1.9x on Omniglot 20-way; README); smaller models may
                   favour vmap, which ``--task-batching vmap`` selects.  On an H200 vmap
                   was 2.4x (mini-ImageNet 5-way) and 9.3x (Omniglot 20-way) faster than the
                   loop, at 3.9x and 14x its peak memory (``results/bench/gpu-h200/``).
    precision:     "float32"; "bf16" (meta-gradients and evaluation under ``torch.autocast``
                   with bfloat16: convolutions and matrix products in bfloat16, parameters and
                   the meta-update in float32); "tf32" (CUDA only: float32 tensors, TensorFloat-32
                   tensor-core products).  Whether accuracy is unchanged is for each run to show
                   (compare with a float32 run on the same seed; README).
    gradient_checkpointing: keep only each fine-tuning step's point, not its graph, and
                   recompute each step in the backward sweep (``checkpoint=True`` of the core):
                   the same meta-gradient in memory for one step instead of ``inner_steps``.
    cuda_graph:    capture each meta-gradient in one CUDA graph on the first iteration and
                   replay it on the others (``cuda_graph=True`` of the core,
                   :mod:`testbed.cudagraph`): the same numbers without the host's cost of
                   launching thousands of small kernels per iteration.  CUDA only; the
                   MAML-type algorithms only (not reptile, imaml, sam, agnostic-sam).  It
                   changes speed, not numbers, so a run may be resumed with or without it.
    checkpoint_every: write a checkpoint every this many iterations (and at the end): 1000
                   (MAML ``SAVE_INTERVAL``).
    log_every:     one JSONL line (mean loss, post-adaptation query accuracy of the current
                   meta-batch) every this many iterations.
    val_every:     evaluate on part ``val`` every this many iterations (0: never), with
                   ``val_episodes`` episodes.
    eval_episodes: test episodes after training (0: skip): 600 (MAML ``NUM_TEST_POINTS``).
    eval_inner_steps: fine-tuning steps at meta-test: 10 (MAML ``test_num_updates`` for Omniglot).
    eval_queries:  query images per class at meta-test; None: ``queries``.
    eval_seed:     seed of the evaluation episodes (the same for every run, so runs are
                   compared on the same episodes).
    out:           run directory: ``checkpoint.pt``, ``log.jsonl``, ``results.json``.
    """

    algorithm: str = "maml"
    source: str = "omniglot"
    data_root: str | None = None
    image_size: int | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    hidden: int = 64
    inner_steps: int = 1
    beta_low: float = 0.4
    alpha_low: float | None = None
    alpha_up: float | None = None
    swp_keep: float | None = None
    sds_fraction: float | None = None
    sam_alpha: float | None = None
    first_order: bool = False
    meta_batch: int = 32
    meta_lr: float = 0.001
    iterations: int = 40000
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    task_batching: str = "auto"
    precision: str = "float32"
    gradient_checkpointing: bool = False
    cuda_graph: bool = False
    checkpoint_every: int = 1000
    log_every: int = 50
    val_every: int = 0
    val_episodes: int = 100
    eval_episodes: int = 600
    eval_inner_steps: int = 10
    eval_queries: int | None = None
    eval_seed: int = 0
    out: str = "runs/fewshot"

    def __post_init__(self) -> None:
        V.one_of("algorithm", self.algorithm, NAMES)
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a non-empty spec string, got {self.source!r}")
        if self.image_size is not None:
            V.positive_int("image_size", self.image_size)
        if isinstance(self.ways, bool) or not isinstance(self.ways, int) or self.ways < 2:
            raise ValueError(f"ways must be an integer >= 2, got {self.ways!r}")
        for name in ("shots", "queries", "hidden", "inner_steps", "meta_batch", "iterations",
                     "checkpoint_every", "log_every", "val_episodes", "eval_inner_steps"):
            V.positive_int(name, getattr(self, name))
        for name in ("seed", "val_every", "eval_episodes", "eval_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("threads", "eval_queries"):
            if getattr(self, name) is not None:
                V.positive_int(name, getattr(self, name))
        V.positive("meta_lr", self.meta_lr)
        V.one_of("task_batching", self.task_batching, BATCHING + ("auto",))
        V.one_of("precision", self.precision, PRECISIONS)
        problem = device_problem(self.device)
        if problem is not None:
            raise ValueError(problem)
        if self.precision == "tf32" and not self.device.startswith("cuda"):
            raise ValueError(f"precision 'tf32' is a CUDA tensor-core mode; on device "
                             f"{self.device!r} use float32 or bf16")
        if self.cuda_graph:
            if not cudagraph.supported(self.device):
                raise ValueError(f"cuda_graph captures CUDA kernels; on device {self.device!r} "
                                 "run without it (--no-cuda-graph)")
            if self.algorithm not in CHECKPOINTABLE:
                raise ValueError(f"cuda_graph replays the meta-gradient of the MAML-type "
                                 f"algorithms; {self.algorithm!r} has its own update rule")
        if self.task_batching == "auto":
            object.__setattr__(self, "task_batching", default_batching(self.device))
        self.build_algorithm()  # validates the algorithm's own hyper-parameters

    def build_algorithm(self, inner_steps: int | None = None) -> Algorithm:
        """The configured algorithm, with ``inner_steps`` fine-tuning steps (default: training's)."""
        return build_algorithm(
            self.algorithm, beta_low=self.beta_low,
            inner_steps=self.inner_steps if inner_steps is None else inner_steps,
            alpha_low=self.alpha_low, alpha_up=self.alpha_up, swp_keep=self.swp_keep,
            sds_fraction=self.sds_fraction, sam_alpha=self.sam_alpha,
            first_order=self.first_order, task_batching=self.task_batching,
            checkpoint=self.gradient_checkpointing, cuda_graph=self.cuda_graph)

    @property
    def needs_generator(self) -> bool:
        """Whether the algorithm draws random SWP masks."""
        return self.build_algorithm().config.swp_keep is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**data)


def device_problem(device: object) -> str | None:
    """Why ``device`` cannot run here (a one-line message naming it), or None if it can.

    Accepted: what ``torch.device`` parses as ``cpu`` or ``cuda[:k]``; CUDA only when
    ``torch.cuda.is_available()`` and ``k`` is below ``torch.cuda.device_count()``.
    """
    if not isinstance(device, str):
        return f"device must be 'cpu' or 'cuda[:k]', got {device!r}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return f"device must be 'cpu' or 'cuda[:k]', got {device!r}"
    if parsed.type not in ("cpu", "cuda"):
        return f"device must be 'cpu' or 'cuda[:k]', got {device!r}"
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            return (f"device {device!r}: CUDA is not available to this torch ({torch.__version__}); "
                    f"use device 'cpu'")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            return f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    return None


def default_batching(device: str) -> str:
    """What ``task_batching="auto"`` means on ``device``: the per-task loop on CPU (faster at
    the paper's model size, README "Speed"), vmap over tasks on CUDA."""
    return "vmap" if device.startswith("cuda") else "loop"


def training_differences(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields of :data:`TRAINING_FIELDS` that differ: ``{name: (old, new)}``."""
    return {name: (getattr(old, name), getattr(new, name)) for name in TRAINING_FIELDS
            if getattr(old, name) != getattr(new, name)}
