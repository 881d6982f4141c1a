"""Every algorithm by name: a :class:`SharpMAMLConfig` (or SAM on ERM) and nothing else.

| name          | what it is                                   | paper                          |
|---------------|----------------------------------------------|--------------------------------|
| maml          | alpha_low = alpha_up = 0                     | Alg. 2, eqs. 2, 30             |
| fomaml        | maml with ``first_order=True``               | Finn et al. 2017               |
| sharp-low     | alpha_low > 0, alpha_up = 0                  | Alg. 4, eqs. 11, 22-23         |
| sharp-up      | alpha_low = 0, alpha_up > 0                  | Alg. 3, eqs. 20-21             |
| sharp-both    | alpha_low > 0, alpha_up > 0                  | Alg. 1, eqs. 9-15              |
| anil          | maml fine-tuning only the head               | eq. 19                         |
| sharp-anil    | sharp-low fine-tuning only the head          | Sec. 5.4                       |
| esharp        | sharp-low with ESAM's SWP (xi) and SDS (mu)  | Sec. 5.4                       |
| esharp-anil   | esharp fine-tuning only the head             | Sec. 5.4                       |
| sam           | SAM on multi-task ERM                        | eqs. 5, 6, 8                   |

A radius that a name fixes at zero cannot be set (``sharp-low`` with
``alpha_up=0.1`` is an error naming the value: that is ``sharp-both``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from testbed import meta
from testbed import validate as V
from testbed.meta import LossFn, MetaGradient, SharpMAMLConfig, Tasks

DEFAULT_RADIUS = 0.05
"""Default radius where a name needs one: the largest of the paper's grid {0.05, ..., 5e-5}."""
DEFAULT_SWP_KEEP = 0.5
DEFAULT_SDS_FRACTION = 0.5

# name -> (lower radius: "zero"|"positive", upper radius, anil, esam)
_SPEC = {
    "maml": ("zero", "zero", False, False),
    "fomaml": ("zero", "zero", False, False),
    "sharp-low": ("positive", "zero", False, False),
    "sharp-up": ("zero", "positive", False, False),
    "sharp-both": ("positive", "positive", False, False),
    "anil": ("zero", "zero", True, False),
    "sharp-anil": ("positive", "zero", True, False),
    "esharp": ("positive", "zero", False, True),
    "esharp-anil": ("positive", "zero", True, True),
    "sam": ("zero", "zero", False, False),
}
NAMES = tuple(_SPEC)


@dataclass(frozen=True)
class Algorithm:
    """A named algorithm.

    config: the meta-gradient configuration (for ``sam``, the fine-tuning used at
        meta-test time: plain gradient descent).
    sam_alpha: the SAM radius on ERM for ``sam``; ``None`` otherwise.
    """

    name: str
    config: SharpMAMLConfig
    sam_alpha: float | None = None

    def meta_gradient(self, loss_fn: LossFn, params: dict, tasks: Tasks, *,
                      generator: torch.Generator | None = None) -> MetaGradient:
        """The update direction of one meta-iteration."""
        if self.sam_alpha is not None:
            return meta.sam_gradient(loss_fn, params, tasks, self.sam_alpha)
        return meta.meta_gradient(loss_fn, params, tasks, self.config, generator=generator)

    def adapt(self, loss_fn: LossFn, params: dict, support: Any, *,
              generator: torch.Generator | None = None) -> dict:
        """Meta-test fine-tuning on one task: the algorithm's own inner loop."""
        return meta.adapt(loss_fn, params, support, self.config, generator=generator)


def _radius(name: str, which: str, rule: str, value: float | None) -> float:
    if rule == "zero":
        if value not in (None, 0, 0.0):
            raise ValueError(
                f"{name} has {which} = 0 by definition, got {which}={value!r} "
                f"(use {'sharp-both' if 'sharp' in name else 'a sharp-* algorithm'})")
        return 0.0
    if value is None:
        return DEFAULT_RADIUS
    if V.nonnegative(which, value) == 0:
        raise ValueError(f"{name} needs {which} > 0, got {which}={value!r} (0 makes it another algorithm)")
    return float(value)


def make(name: str, *, beta_low: float, inner_steps: int = 1,
         alpha_low: float | None = None, alpha_up: float | None = None,
         head_names: tuple[str, ...] | None = None,
         swp_keep: float | None = None, sds_fraction: float | None = None,
         sam_alpha: float | None = None, first_order: bool = False,
         differentiate_perturbations: bool = False, task_batching: str = "vmap") -> Algorithm:
    """Build the algorithm ``name`` (one of :data:`NAMES`).

    ``head_names`` is required by the ANIL variants (the parameters that adapt).
    Radii left as ``None`` take :data:`DEFAULT_RADIUS` where the name needs one.
    """
    V.one_of("algorithm", name, NAMES)
    low_rule, up_rule, anil, esam = _SPEC[name]
    a_low = _radius(name, "alpha_low", low_rule, alpha_low)
    a_up = _radius(name, "alpha_up", up_rule, alpha_up)
    if anil and not head_names:
        raise ValueError(f"{name} fine-tunes only the head: pass head_names (got {head_names!r})")
    if not esam and (swp_keep is not None or sds_fraction is not None):
        raise ValueError(f"{name} does not use ESAM: swp_keep={swp_keep!r}, "
                         f"sds_fraction={sds_fraction!r} apply to esharp and esharp-anil only")
    if name != "sam" and sam_alpha is not None:
        raise ValueError(f"sam_alpha applies to the 'sam' algorithm only, got sam_alpha={sam_alpha!r} for {name}")
    cfg = SharpMAMLConfig(
        beta_low=beta_low, inner_steps=inner_steps, alpha_low=a_low, alpha_up=a_up,
        first_order=first_order or name == "fomaml",
        differentiate_perturbations=differentiate_perturbations,
        adapt_names=tuple(head_names) if anil else None,
        swp_keep=(DEFAULT_SWP_KEEP if swp_keep is None else swp_keep) if esam else None,
        sds_fraction=(DEFAULT_SDS_FRACTION if sds_fraction is None else sds_fraction) if esam else None,
        task_batching=task_batching)
    if name == "sam":
        alpha = DEFAULT_RADIUS if sam_alpha is None else V.nonnegative("sam_alpha", sam_alpha)
        return Algorithm(name, cfg, sam_alpha=alpha)
    return Algorithm(name, cfg)


def with_config(algorithm: Algorithm, **changes: Any) -> Algorithm:
    """A copy of ``algorithm`` with config fields replaced (validated again)."""
    return replace(algorithm, config=replace(algorithm.config, **changes))
