"""Every algorithm by name: a :class:`SharpMAMLConfig` plus, for a few, a different update rule.

| name          | what it is                                              | paper                      |
|---------------|---------------------------------------------------------|----------------------------|
| maml          | alpha_low = alpha_up = 0                                | Alg. 2, eqs. 2, 30         |
| fomaml        | maml with ``first_order=True``                          | Finn et al. 2017           |
| sharp-low     | alpha_low > 0, alpha_up = 0                             | Alg. 4, eqs. 11, 22-23     |
| sharp-up      | alpha_low = 0, alpha_up > 0                             | Alg. 3, eqs. 20-21         |
| sharp-both    | alpha_low > 0, alpha_up > 0                             | Alg. 1, eqs. 9-15          |
| anil          | maml fine-tuning only the head                          | eq. 19                     |
| sharp-anil    | sharp-low fine-tuning only the head                     | Sec. 5.4                   |
| esharp        | sharp-low with ESAM's SWP (xi) and SDS (mu)             | Sec. 5.4                   |
| esharp-anil   | esharp fine-tuning only the head                        | Sec. 5.4                   |
| sam           | SAM on multi-task ERM                                   | eqs. 5, 6, 8               |
| hf-maml       | maml, Hessian-vector products by finite differences     | Fallah et al. 2020         |
| sign-maml     | maml with signSGD fine-tuning (first order by nature)   | Fan, Ram & Liu             |
| reptile       | (theta - theta_N) / beta_low                            | Nichol & Schulman 2018     |
| imaml         | implicit gradient of the proximal inner problem (CG)    | Rajeswaran et al. 2019     |
| agnostic-sam  | SAM on D_m combined with a step lowering the D'_m loss  | Nguyen et al. (our reading)|

A radius that a name fixes at zero cannot be set (``sharp-low`` with
``alpha_up=0.1`` is an error naming the value: that is ``sharp-both``), and a
hyper-parameter an algorithm does not use is refused rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from testbed import baselines, meta
from testbed import validate as V
from testbed.meta import LossFn, MetaGradient, SharpMAMLConfig, Tasks

DEFAULT_RADIUS = 0.05
"""Default radius where a name needs one: the largest of the paper's grid {0.05, ..., 5e-5}."""
DEFAULT_SWP_KEEP = 0.5
DEFAULT_SDS_FRACTION = 0.5
DEFAULTS = {
    "fd_delta": 1e-4,        # HF-MAML's difference step (float64: error ~ delta^2)
    "imaml_lambda": 2.0,     # iMAML's proximal strength lambda
    "cg_steps": 20,          # iMAML's conjugate-gradient iterations at most
    "cg_tol": 1e-10,         # iMAML's relative residual
    "sam_alpha": DEFAULT_RADIUS,
    "rho1": DEFAULT_RADIUS,  # Agnostic-SAM's ascent radius on D_m
    "rho2": DEFAULT_RADIUS,  # Agnostic-SAM's descent radius on D'_m
}

# name -> (lower radius, upper radius, anil, esam, kind, extra hyper-parameters it takes)
_SPEC = {
    "maml": ("zero", "zero", False, False, "sharp-maml", ()),
    "fomaml": ("zero", "zero", False, False, "sharp-maml", ()),
    "sharp-low": ("positive", "zero", False, False, "sharp-maml", ()),
    "sharp-up": ("zero", "positive", False, False, "sharp-maml", ()),
    "sharp-both": ("positive", "positive", False, False, "sharp-maml", ()),
    "anil": ("zero", "zero", True, False, "sharp-maml", ()),
    "sharp-anil": ("positive", "zero", True, False, "sharp-maml", ()),
    "esharp": ("positive", "zero", False, True, "sharp-maml", ()),
    "esharp-anil": ("positive", "zero", True, True, "sharp-maml", ()),
    "sam": ("zero", "zero", False, False, "sam", ("sam_alpha",)),
    "hf-maml": ("zero", "zero", False, False, "sharp-maml", ("fd_delta",)),
    "sign-maml": ("zero", "zero", False, False, "sharp-maml", ()),
    "reptile": ("zero", "zero", False, False, "reptile", ()),
    "imaml": ("zero", "zero", False, False, "imaml", ("imaml_lambda", "cg_steps", "cg_tol")),
    "agnostic-sam": ("zero", "zero", False, False, "agnostic-sam", ("rho1", "rho2")),
}
NAMES = tuple(_SPEC)
CHECKPOINTABLE = tuple(n for n, spec in _SPEC.items() if spec[4] == "sharp-maml")
"""Names whose meta-gradient differentiates an inner loop, so ``checkpoint=True`` applies."""


@dataclass(frozen=True)
class Algorithm:
    """A named algorithm.

    config: the meta-gradient configuration; for ``sam``, ``reptile``,
        ``agnostic-sam`` it is also the plain fine-tuning used at meta-test time.
    kind: which update rule ("sharp-maml", "sam", "reptile", "imaml", "agnostic-sam").
    hyper: the extra hyper-parameters of that rule, as (name, value) pairs.
    """

    name: str
    config: SharpMAMLConfig
    kind: str = "sharp-maml"
    hyper: tuple[tuple[str, float], ...] = ()

    def meta_gradient(self, loss_fn: LossFn, params: dict, tasks: Tasks, *,
                      generator: torch.Generator | None = None) -> MetaGradient:
        """The update direction of one meta-iteration."""
        h = dict(self.hyper)
        if self.kind == "sam":
            return meta.sam_gradient(loss_fn, params, tasks, h["sam_alpha"])
        if self.kind == "reptile":
            return baselines.reptile_gradient(loss_fn, params, tasks, self.config)
        if self.kind == "imaml":
            return baselines.imaml_gradient(loss_fn, params, tasks, self.config, lam=h["imaml_lambda"],
                                            cg_steps=int(h["cg_steps"]), cg_tol=h["cg_tol"])
        if self.kind == "agnostic-sam":
            return baselines.agnostic_sam_gradient(loss_fn, params, tasks, rho1=h["rho1"], rho2=h["rho2"])
        return meta.meta_gradient(loss_fn, params, tasks, self.config, generator=generator)

    def adapt(self, loss_fn: LossFn, params: dict, support: Any, *,
              generator: torch.Generator | None = None) -> dict:
        """Meta-test fine-tuning on one task: the algorithm's own inner loop
        (iMAML: its proximal problem; the others: eqs. 9, 11 with their options)."""
        if self.kind == "imaml":
            return baselines.imaml_adapt(loss_fn, params, support, self.config,
                                         dict(self.hyper)["imaml_lambda"])
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


def _hyper(name: str, takes: tuple[str, ...], given: dict[str, float | None]) -> tuple:
    for key, value in given.items():
        if value is not None and key not in takes:
            users = [n for n, spec in _SPEC.items() if key in spec[5]]
            raise ValueError(f"{key}={value!r} applies to {', '.join(users)} only, not {name}")
    out = []
    for key in takes:
        value = DEFAULTS[key] if given.get(key) is None else given[key]
        if key == "cg_steps":
            V.positive_int(key, value)
        elif key == "sam_alpha":
            V.nonnegative(key, value)
        elif key in ("rho1", "rho2"):
            V.nonnegative(key, value)
        else:
            V.positive(key, value)
        out.append((key, value))
    return tuple(out)


def make(name: str, *, beta_low: float, inner_steps: int = 1,
         alpha_low: float | None = None, alpha_up: float | None = None,
         head_names: tuple[str, ...] | None = None,
         swp_keep: float | None = None, sds_fraction: float | None = None,
         sam_alpha: float | None = None, fd_delta: float | None = None,
         imaml_lambda: float | None = None, cg_steps: int | None = None,
         cg_tol: float | None = None, rho1: float | None = None, rho2: float | None = None,
         first_order: bool = False, differentiate_perturbations: bool = False,
         checkpoint: bool = False, task_batching: str = "vmap") -> Algorithm:
    """Build the algorithm ``name`` (one of :data:`NAMES`).

    ``head_names`` is required by the ANIL variants (the parameters that adapt).
    Radii left as ``None`` take :data:`DEFAULT_RADIUS` where the name needs one;
    other hyper-parameters left as ``None`` take :data:`DEFAULTS`.
    ``checkpoint`` recomputes each fine-tuning step in the backward sweep instead of
    keeping its graph (:class:`~testbed.meta.SharpMAMLConfig`); the gradient-based
    kinds only.
    """
    V.one_of("algorithm", name, NAMES)
    low_rule, up_rule, anil, esam, kind, takes = _SPEC[name]
    a_low = _radius(name, "alpha_low", low_rule, alpha_low)
    a_up = _radius(name, "alpha_up", up_rule, alpha_up)
    if anil and not head_names:
        raise ValueError(f"{name} fine-tunes only the head: pass head_names (got {head_names!r})")
    if not esam and (swp_keep is not None or sds_fraction is not None):
        raise ValueError(f"{name} does not use ESAM: swp_keep={swp_keep!r}, "
                         f"sds_fraction={sds_fraction!r} apply to esharp and esharp-anil only")
    hyper = _hyper(name, takes, {"sam_alpha": sam_alpha, "fd_delta": fd_delta,
                                 "imaml_lambda": imaml_lambda, "cg_steps": cg_steps,
                                 "cg_tol": cg_tol, "rho1": rho1, "rho2": rho2})
    extra = {}
    if checkpoint and name not in CHECKPOINTABLE:
        raise ValueError(f"checkpoint=True applies to the MAML-type algorithms, not {name} "
                         "(its update keeps no inner-loop graph to checkpoint)")
    if name == "hf-maml":
        extra = {"hvp": "finite-difference", "fd_delta": dict(hyper)["fd_delta"]}
    elif name == "sign-maml":
        extra = {"inner_optimizer": "sign"}
    cfg = SharpMAMLConfig(
        beta_low=beta_low, inner_steps=inner_steps, alpha_low=a_low, alpha_up=a_up,
        first_order=first_order or name == "fomaml",
        differentiate_perturbations=differentiate_perturbations,
        adapt_names=tuple(head_names) if anil else None,
        swp_keep=(DEFAULT_SWP_KEEP if swp_keep is None else swp_keep) if esam else None,
        sds_fraction=(DEFAULT_SDS_FRACTION if sds_fraction is None else sds_fraction) if esam else None,
        checkpoint=checkpoint, task_batching=task_batching, **extra)
    return Algorithm(name, cfg, kind, hyper)


def with_config(algorithm: Algorithm, **changes: Any) -> Algorithm:
    """A copy of ``algorithm`` with config fields replaced (validated again)."""
    return replace(algorithm, config=replace(algorithm.config, **changes))
