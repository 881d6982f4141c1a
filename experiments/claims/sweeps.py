"""Meta-training sweeps for the rate claims, vectorised over every run at once.

A sweep runs plain-SGD meta-training (eq. 15 with the task mean) for every
combination of schedule x variant x horizon T x seed in lock-step: one call
of :func:`synthetic.closed_form.batched_sharp_meta_gradient` per iteration
evaluates all active runs.  Runs are sorted by horizon and dropped from the
batch when they finish, so the work is the sum of the horizons, not their
count times the longest.

Each run records ``(1/T) sum_t ||grad F(theta_t)||^2`` (the left side of
eq. 16), with ``F`` the MAML objective of eq. (29a) for that run's
``beta_low`` (exact, no perturbation, no noise).

Schedules (Theorem 1 asks ``beta_low, beta_up, alpha_up = O(1/sqrt T)``,
``alpha_low = O(1)``):

* ``theorem``: ``beta_low = c_low/sqrt T``, ``beta_up = c_up/sqrt T``,
  ``alpha_up = c_alpha/sqrt T``, ``alpha_low = alpha_low``;
* ``constant``: all of them fixed at their value for the shortest horizon
  ``T0`` (how Sharp-MAML is run in practice);
* ``constant-<name>``: only ``<name>`` fixed at its ``T0`` value, the rest as
  in ``theorem`` (which condition matters).
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from synthetic import QuadraticFamily, TanhRegressionFamily
from synthetic.closed_form import batched_sharp_meta_gradient
from testbed import validate as V

VARIANTS = {  # name -> (uses alpha_low, uses alpha_up)
    "maml": (False, False),
    "sharp-low": (True, False),
    "sharp-up": (False, True),
    "sharp-both": (True, True),
}
SCHEDULES = {  # name -> hyper-parameters held constant at their T0 value
    "theorem": frozenset(),
    "constant": frozenset({"beta_low", "beta_up", "alpha_up"}),
    "constant-beta_low": frozenset({"beta_low"}),
    "constant-beta_up": frozenset({"beta_up"}),
    "constant-alpha_up": frozenset({"alpha_up"}),
}
FAMILIES = ("quadratic", "tanh")


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: a family, an oracle and the grid of runs.

    c_low, c_up, c_alpha: constants of the 1/sqrt(T) schedules.
    alpha_low: the O(1) lower radius.
    alpha_lows: optional grid of lower radii (default empty: the single value
        ``alpha_low``).  When given, every run is repeated for each value; run such
        a spec with :func:`run_alpha_low_sweep` (one batch, one result per value).
    sigma: oracle noise (0: exact gradients).
    init_scale: theta_0 ~ N(0, init_scale^2 I), one draw per seed.
    """

    family: str = "quadratic"
    sigma: float = 0.0
    horizons: tuple[int, ...] = (100, 200, 400, 800)
    seeds: int = 3
    variants: tuple[str, ...] = tuple(VARIANTS)
    schedules: tuple[str, ...] = ("theorem",)
    inner_steps: int = 1
    dim: int = 5
    tasks: int = 8
    c_low: float = 1.0
    c_up: float = 5.0
    c_alpha: float = 0.5
    alpha_low: float = 0.1
    alpha_lows: tuple[float, ...] = ()
    init_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        V.one_of("family", self.family, FAMILIES)
        V.nonnegative("sigma", self.sigma)
        if len(self.horizons) < 1 or any(int(t) != t or t < 1 for t in self.horizons):
            raise ValueError(f"horizons must be positive integers, got {self.horizons!r}")
        V.positive_int("seeds", self.seeds)
        for v in self.variants:
            V.one_of("variant", v, tuple(VARIANTS))
        for s in self.schedules:
            V.one_of("schedule", s, tuple(SCHEDULES))
        V.positive_int("inner_steps", self.inner_steps)
        for name in ("c_low", "c_up", "c_alpha", "init_scale"):
            V.positive(name, getattr(self, name))
        V.nonnegative("alpha_low", self.alpha_low)
        for a in self.alpha_lows:
            V.nonnegative("alpha_lows entry", a)
        if len(set(self.alpha_lows)) != len(self.alpha_lows):
            raise ValueError(f"alpha_lows must not repeat a value, got {self.alpha_lows!r}")


@dataclass(frozen=True)
class SweepResult:
    """avg_sq_grad and final_sq_grad have shape [schedules, variants, horizons, seeds]."""

    spec: SweepSpec
    avg_sq_grad: np.ndarray
    final_sq_grad: np.ndarray
    seconds: float
    iterations: int   # sum over runs of their horizon (the work done)

    def index(self, schedule: str, variant: str) -> tuple[int, int]:
        return self.spec.schedules.index(schedule), self.spec.variants.index(variant)

    def curve(self, schedule: str, variant: str) -> np.ndarray:
        """``[seeds, horizons]`` values of (1/T) sum ||grad F||^2."""
        s, v = self.index(schedule, variant)
        return self.avg_sq_grad[s, v].T

    def to_dict(self) -> dict:
        return {"spec": asdict(self.spec), "avg_sq_grad": self.avg_sq_grad.tolist(),
                "final_sq_grad": self.final_sq_grad.tolist(), "seconds": self.seconds,
                "iterations": self.iterations}


def make_family(spec: SweepSpec):
    if spec.family == "quadratic":
        return QuadraticFamily.random(spec.tasks, spec.dim, eig_low=0.1, eig_high=1.0,
                                      sigma=spec.sigma, seed=spec.seed)
    return TanhRegressionFamily.random(spec.tasks, spec.dim, sigma=spec.sigma, seed=spec.seed)


def alpha_low_grid(spec: SweepSpec) -> tuple[float, ...]:
    """The lower radii a spec runs: ``spec.alpha_lows`` if given, else ``(spec.alpha_low,)``."""
    return tuple(spec.alpha_lows) or (spec.alpha_low,)


def run_table(spec: SweepSpec) -> dict[str, np.ndarray]:
    """Per-run hyper-parameters, in the order [alpha_low,] schedule, variant, horizon, seed.

    The leading alpha_low level exists only when ``spec.alpha_lows`` is given.
    """
    t0 = min(spec.horizons)
    rows = {k: [] for k in ("beta_low", "beta_up", "alpha_low", "alpha_up", "T", "seed")}
    for alpha_low, sched in itertools.product(alpha_low_grid(spec), spec.schedules):
        const = SCHEDULES[sched]
        for variant in spec.variants:
            low, up = VARIANTS[variant]
            for T in spec.horizons:
                def sched_value(name, c):
                    return c / math.sqrt(t0 if name in const else T)
                for s in range(spec.seeds):
                    rows["beta_low"].append(sched_value("beta_low", spec.c_low))
                    rows["beta_up"].append(sched_value("beta_up", spec.c_up))
                    rows["alpha_up"].append(sched_value("alpha_up", spec.c_alpha) if up else 0.0)
                    rows["alpha_low"].append(alpha_low if low else 0.0)
                    rows["T"].append(int(T))
                    rows["seed"].append(s)
    return {k: np.asarray(v) for k, v in rows.items()}


@contextmanager
def single_threaded():
    """Run torch on one thread: these ops are tiny, and extra threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_sweep(spec: SweepSpec) -> SweepResult:
    """Meta-train every run of ``spec`` with plain SGD, all runs in one batch."""
    if spec.alpha_lows:
        raise ValueError(f"a spec with alpha_lows={spec.alpha_lows!r} gives one result per "
                         "value: run it with run_alpha_low_sweep")
    start = time.perf_counter()
    with single_threaded():
        avg, final, work = run_subset(spec, np.arange(len(run_table(spec)["T"])))
    shape = (len(spec.schedules), len(spec.variants), len(spec.horizons), spec.seeds)
    return SweepResult(spec, avg.reshape(shape), final.reshape(shape),
                       time.perf_counter() - start, work)


def run_alpha_low_sweep(spec: SweepSpec) -> dict[float, SweepResult]:
    """Every run of ``spec`` for every lower radius in ``spec.alpha_lows``, in one batch.

    Returns one :class:`SweepResult` per value, whose spec is ``spec`` with
    ``alpha_low`` set to it (and no grid); ``seconds`` and ``iterations`` are
    the whole batch's.  With an exact oracle each result equals what
    :func:`run_sweep` gives for its spec; with ``sigma > 0`` the noise draws differ
    (see :func:`run_subset`).
    """
    if not spec.alpha_lows:
        raise ValueError("run_alpha_low_sweep needs a non-empty alpha_lows, got ()")
    start = time.perf_counter()
    with single_threaded():
        avg, final, work = run_subset(spec, np.arange(len(run_table(spec)["T"])))
    grid = alpha_low_grid(spec)
    shape = (len(grid), len(spec.schedules), len(spec.variants), len(spec.horizons), spec.seeds)
    avg, final = avg.reshape(shape), final.reshape(shape)
    seconds = time.perf_counter() - start
    return {a: SweepResult(replace(spec, alpha_low=a, alpha_lows=()), avg[i], final[i], seconds,
                           work) for i, a in enumerate(grid)}


def run_subset(spec: SweepSpec, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The runs ``runs`` (indices into :func:`run_table`) in one batch.

    Returns per-run ``(1/T) sum ||grad F||^2``, the final ``||grad F||^2`` and
    the number of meta-iterations done.  With ``sigma > 0`` the noise stream
    depends on which runs share the batch; with an exact oracle a run's
    numbers do not.
    """
    family = make_family(spec)
    full = run_table(spec)
    table = {k: v[runs] for k, v in full.items()}
    dt = family.dtype
    order = np.argsort(table["T"], kind="stable")
    t = {k: torch.as_tensor(v[order], dtype=dt) for k, v in table.items() if k not in ("T", "seed")}
    T = table["T"][order]
    init = np.random.default_rng([spec.seed, 1]).normal(0.0, spec.init_scale,
                                                        (spec.seeds, family.dim))
    theta = torch.as_tensor(init[table["seed"][order]], dtype=dt)
    acc = torch.zeros(len(T), dtype=dt)
    gen = torch.Generator().manual_seed(spec.seed)
    noise_scale = spec.sigma / math.sqrt(family.dim)
    first = 0
    for it in range(int(T.max())):
        while T[first] <= it:
            first += 1
        sl = slice(first, len(T))
        th = theta[sl]
        grad_F = batched_sharp_meta_gradient(family, th, beta_low=t["beta_low"][sl],
                                             steps=spec.inner_steps)
        acc[sl] += (grad_F ** 2).sum(-1)
        noise = None
        if spec.sigma > 0:
            shape = (th.shape[0], family.num_tasks, family.dim)
            noise = (torch.randn(shape, generator=gen, dtype=dt) * noise_scale,
                     torch.randn(shape, generator=gen, dtype=dt) * noise_scale)
        g = batched_sharp_meta_gradient(family, th, beta_low=t["beta_low"][sl],
                                        steps=spec.inner_steps, alpha_low=t["alpha_low"][sl],
                                        alpha_up=t["alpha_up"][sl], noise=noise)
        theta[sl] = th - t["beta_up"][sl, None] * g
    final = (batched_sharp_meta_gradient(family, theta, beta_low=t["beta_low"],
                                         steps=spec.inner_steps) ** 2).sum(-1)
    avg = (acc / torch.as_tensor(T, dtype=dt)).numpy()
    unsorted_avg, unsorted_final = np.empty_like(avg), np.empty_like(avg)
    unsorted_avg[order], unsorted_final[order] = avg, final.numpy()
    return unsorted_avg, unsorted_final, int(T.sum())


def run_sweep_reference(spec: SweepSpec, run: int) -> float:
    """One run of ``spec`` the straightforward way: the autograd core, one iteration at a time.

    Returns the run's ``(1/T) sum ||grad F||^2``; used by the benchmark (and a
    test) to check the batched sweep against plain code doing the same work.
    Only exact oracles (``sigma = 0``) can be compared run by run.
    """
    from testbed import SharpMAMLConfig, meta_gradient

    if spec.sigma != 0:
        raise ValueError(f"the reference run needs sigma = 0, got sigma={spec.sigma!r}")
    family = make_family(spec)
    table = run_table(spec)
    init = np.random.default_rng([spec.seed, 1]).normal(0.0, spec.init_scale,
                                                        (spec.seeds, family.dim))
    theta = torch.as_tensor(init[table["seed"][run]], dtype=family.dtype)
    tasks = family.tasks()
    cfg = SharpMAMLConfig(beta_low=float(table["beta_low"][run]), inner_steps=spec.inner_steps,
                          alpha_low=float(table["alpha_low"][run]),
                          alpha_up=float(table["alpha_up"][run]))
    maml = SharpMAMLConfig(beta_low=cfg.beta_low, inner_steps=spec.inner_steps)
    total = 0.0
    for _ in range(int(table["T"][run])):
        params = family.params(theta)
        total += float((meta_gradient(family.loss, params, tasks, maml).grad["theta"] ** 2).sum())
        theta = theta - float(table["beta_up"][run]) * meta_gradient(family.loss, params, tasks, cfg).grad["theta"]
    return total / int(table["T"][run])
