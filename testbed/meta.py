"""One Sharp-MAML meta-gradient with two radii; MAML and its relatives by configuration.

Notation follows Abbas et al. 2022 (Sharp-MAML, ICML): ``theta`` is the
meta-model, ``D_m`` a task's fine-tuning (support) data, ``D'_m`` its
validation (query) data, ``beta_low`` the fine-tuning step, ``alpha_low`` and
``alpha_up`` the lower and upper perturbation radii.

The meta-gradient (Algorithm 1, eqs. 9-15)
------------------------------------------
For every task ``m`` with ``N`` fine-tuning steps::

    theta_0           = theta + eps                                   (eq. 14)
    eps_m^k           = alpha_low * g_k / ||g_k||,  g_k = grad L(theta_k; D_m)   (eq. 11)
    theta_{k+1}       = theta_k - beta_low * grad L(theta_k + eps_m^k; D_m)      (eq. 9, 12)

and the meta-gradient is the gradient of ``F(theta) = 1/M sum_m L(theta_N; D'_m)``
(eq. 29a) with the perturbations held constant, which for ``N = 1`` is exactly
eq. (10)::

    (I - beta_low * hess L(theta + eps + eps_m; D_m)) grad L(theta_1; D'_m)

The upper perturbation is ``eps = alpha_up * h / ||h||`` where ``h`` is the
meta-gradient with ``eps = 0`` (eq. 13); it is shared by all tasks of the
batch.  ``alpha_up = 0`` skips that first pass entirely, so:

* ``alpha_low = alpha_up = 0`` is MAML (Algorithm 2), running no perturbation
  code at all;
* ``alpha_low = 0`` is Sharp-MAML_up (Algorithm 3, eqs. 20-21);
* ``alpha_up = 0`` is Sharp-MAML_low (Algorithm 4, eqs. 22-23);
* both positive is Sharp-MAML_both (Algorithm 1).

Several fine-tuning steps (``N > 1``)
-------------------------------------
The paper states one step.  Here SAM is applied to *every* fine-tuning step:
step ``k`` takes the gradient at ``theta_k + eps_m^k`` with ``eps_m^k`` the
normalised gradient at ``theta_k`` itself (so the inner loop is ``N`` steps
of SAM on ``L(.; D_m)``).  For Sharp-MAML_up/both the perturbations
``eps_m^k`` are computed once, on the unperturbed trajectory of the first pass
(where ``h`` is computed), and reused in the second pass started at
``theta + eps``.  For ``N = 1`` this is eq. (14) to the letter, which uses
``eps_m(theta^t)`` and not ``eps_m(theta^t + eps)``.

Options
-------
``first_order``
    FO-MAML: the inner gradients are constants, which removes the Hessian term
    of eq. (10) and nothing else.
``differentiate_perturbations``
    Autograd differentiates through ``eps_m(theta)`` and ``eps(theta)`` instead
    of treating them as constants (eq. 10).  This is the true gradient of the
    composite map ``theta -> L(theta_N(theta); D'_m)``, and is what code that
    builds ``eps_m`` inside a differentiable inner loop computes.
``hvp="finite-difference"`` (HF-MAML, Fallah et al. 2020)
    Every Hessian-vector product of eq. (10) is a central difference of two
    gradients with step ``fd_delta`` along the unit vector; the inner loop runs
    without a graph and the adjoint goes back through the steps by hand.
    Error O(fd_delta^2).
``inner_optimizer="sign"`` (Sign-MAML, Fan, Ram & Liu)
    The fine-tuning step is ``theta_k - beta_low sign(g)``; its Jacobian is the
    identity almost everywhere, so the meta-gradient is the query gradient at
    the adapted point (first order by nature, not by approximation).
``adapt_names``
    ANIL (eq. 19): only these parameters are fine-tuned; the others enter the
    loss unchanged.  ``eps_m`` lives on the adapted parameters only.
``swp_keep`` (xi)
    ESAM's stochastic weight perturbation: ``eps_m^k`` is multiplied by an
    i.i.d. Bernoulli(xi) mask (drawn from ``generator``) after normalisation.
``sds_fraction`` (mu)
    ESAM's sharpness-sensitive data selection: the perturbed gradient of step
    ``k`` uses only the ``ceil(mu * n)`` samples whose loss rises most from
    ``theta_k`` to ``theta_k + eps_m^k``.

Losses
------
``loss_fn(params, batch)`` returns the *per-sample* losses, shape ``[n]``;
``L(theta; D)`` is their mean.  Task data come as a :class:`Tasks` whose
leaves carry a leading task dimension ``M``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.func import grad, grad_and_value, vjp, vmap

from testbed import params as P
from testbed import validate as V

LossFn = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]

BATCHING = ("vmap", "loop")
INNER_OPTIMIZERS = ("sgd", "sign")
HVP_MODES = ("autograd", "finite-difference")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class Tasks(NamedTuple):
    """A meta-batch: every tensor leaf of ``support``/``query`` has leading dim ``M``."""

    support: Any
    query: Any


class MetaGradient(NamedTuple):
    """What one meta-gradient evaluation returns.

    grad:  the meta-gradient, a parameter dict (mean over tasks).
    loss:  the value of the objective whose gradient ``grad`` is: the mean
           query loss after fine-tuning from ``theta + eps``.
    eps:   the upper perturbation ``eps(theta)`` of eq. (13), or ``None``.
    """

    grad: dict[str, torch.Tensor]
    loss: torch.Tensor
    eps: dict[str, torch.Tensor] | None


@dataclass(frozen=True)
class SharpMAMLConfig:
    """Hyper-parameters of one meta-gradient.  Validated on construction.

    beta_low:    fine-tuning step size (eqs. 2, 9), > 0.
    inner_steps: number N of fine-tuning steps, >= 1.
    alpha_low:   lower radius (eq. 11), >= 0.
    alpha_up:    upper radius (eq. 13), >= 0.
    first_order: FO-MAML (drop the Hessian term of eq. 10).
    differentiate_perturbations: differentiate through eps_m and eps.
    adapt_names: names of the parameters fine-tuned (ANIL, eq. 19); None = all.
    swp_keep:    ESAM SWP keep probability xi in (0, 1]; None = no SWP.
    sds_fraction: ESAM SDS fraction mu in (0, 1]; None = no SDS.
                 At 1 both run their code and reduce to Sharp-MAML_low.
    inner_optimizer: "sgd" (eq. 9) or "sign" (Sign-MAML: theta - beta sign(g),
                 whose Jacobian is the identity almost everywhere).
    hvp:         "autograd" (exact second order) or "finite-difference"
                 (HF-MAML: each Hessian-vector product by a central difference
                 of gradients with step ``fd_delta`` along the unit vector).
    fd_delta:    the finite-difference step of ``hvp="finite-difference"``.
    checkpoint:  keep only each fine-tuning step's point, not its graph, and
                 compute eq. (10) by an adjoint sweep that recomputes each step's
                 exact Hessian-vector product: memory for one step's graph instead
                 of ``inner_steps``, the same meta-gradient, about one more forward
                 and backward per step.  (``hvp="finite-difference"`` always runs
                 this way.)
    compile:     run each task's fine-tuning and query loss through
                 ``torch.compile`` (``task_batching="loop"`` and the graph path only).
                 The first call of each configuration and shape compiles (minutes for
                 Conv-4 on a CPU); whether it pays is measured by ``testbed bench fewshot
                 --compile``.
    compile_mode: ``torch.compile``'s ``mode`` (:data:`COMPILE_MODES`):
                 "reduce-overhead" replays CUDA graphs on CUDA devices.
    cuda_graph:  capture the whole meta-gradient (every task, both passes of
                 Sharp-MAML_up/both) in one CUDA graph on its first call and replay it
                 on later calls with the same configuration, loss and shapes
                 (:mod:`testbed.cudagraph`): one launch per meta-iteration instead of
                 thousands, with the eager call's peak memory plus a copy of the inputs
                 (:class:`testbed.cudagraph.MetaGradientGraph` reads them in place
                 instead).  CUDA tensors only; the result is a constant.
    task_batching: "vmap" (one vectorised call over tasks) or "loop".
    """

    beta_low: float
    inner_steps: int = 1
    alpha_low: float = 0.0
    alpha_up: float = 0.0
    first_order: bool = False
    differentiate_perturbations: bool = False
    adapt_names: tuple[str, ...] | None = None
    swp_keep: float | None = None
    sds_fraction: float | None = None
    inner_optimizer: str = "sgd"
    hvp: str = "autograd"
    fd_delta: float = 1e-4
    checkpoint: bool = False
    compile: bool = False
    compile_mode: str = "default"
    cuda_graph: bool = False
    task_batching: str = field(default="vmap")

    def __post_init__(self) -> None:
        V.positive("beta_low", self.beta_low)
        V.positive_int("inner_steps", self.inner_steps)
        V.nonnegative("alpha_low", self.alpha_low)
        V.nonnegative("alpha_up", self.alpha_up)
        if self.swp_keep is not None:
            V.in_interval("swp_keep", self.swp_keep, 0.0, 1.0, low_open=True)
        if self.sds_fraction is not None:
            V.in_interval("sds_fraction", self.sds_fraction, 0.0, 1.0, low_open=True)
        V.one_of("task_batching", self.task_batching, BATCHING)
        V.one_of("inner_optimizer", self.inner_optimizer, INNER_OPTIMIZERS)
        V.one_of("hvp", self.hvp, HVP_MODES)
        V.one_of("compile_mode", self.compile_mode, COMPILE_MODES)
        V.positive("fd_delta", self.fd_delta)
        if self.hvp == "finite-difference" and self.differentiate_perturbations:
            raise ValueError("hvp='finite-difference' computes eq. (10) with constant "
                             "perturbations; it cannot differentiate_perturbations=True")
        if self.compile and (self.task_batching != "loop" or self.checkpoint
                             or self.hvp != "autograd" or self.differentiate_perturbations):
            raise ValueError(
                "compile=True compiles the per-task graph path: it needs task_batching='loop', "
                f"hvp='autograd', checkpoint=False and constant perturbations (got "
                f"task_batching={self.task_batching!r}, hvp={self.hvp!r}, "
                f"checkpoint={self.checkpoint!r}, "
                f"differentiate_perturbations={self.differentiate_perturbations!r})")
        if self.cuda_graph and self.compile:
            raise ValueError("cuda_graph=True captures the eager meta-gradient in one CUDA graph; "
                             "compile=True compiles it instead (its 'reduce-overhead' mode makes "
                             "its own graphs): choose one")
        if self.checkpoint and self.differentiate_perturbations:
            raise ValueError("checkpoint=True computes eq. (10) with constant perturbations "
                             "by an adjoint sweep; it cannot differentiate_perturbations=True")
        if self.adapt_names is not None:
            if isinstance(self.adapt_names, str) or len(self.adapt_names) == 0:
                raise ValueError(
                    f"adapt_names must be a non-empty tuple of parameter names, got {self.adapt_names!r}")
            object.__setattr__(self, "adapt_names", tuple(self.adapt_names))
        if (self.swp_keep is not None or self.sds_fraction is not None) and self.alpha_low == 0:
            raise ValueError(
                "swp_keep and sds_fraction act on the lower perturbation eps_m: "
                f"they need alpha_low > 0 (got alpha_low={self.alpha_low!r}, "
                f"swp_keep={self.swp_keep!r}, sds_fraction={self.sds_fraction!r})")


# ----------------------------------------------------------------------------
# pytree helpers for task batches (dicts, tuples, lists of tensors)


def _tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_tree_map(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return tree


def _leaves(tree: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _tree_map(lambda t: out.append(t), tree)
    return out


def num_tasks(tasks: Tasks) -> int:
    """The meta-batch size M, checked to agree across every leaf."""
    sizes = {t.shape[0] if t.dim() else None for t in _leaves(tasks)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "every tensor in tasks.support and tasks.query needs the same leading task "
            f"dimension M; found leading sizes {sorted(map(str, sizes))}")
    m = sizes.pop()
    if m < 1:
        raise ValueError(f"a meta-batch needs at least one task, got M={m}")
    return m


def task(tasks: Any, m: int) -> Any:
    """Task ``m`` of a stacked pytree."""
    return _tree_map(lambda t: t[m], tasks)


# ----------------------------------------------------------------------------
# the inner loop


def mean_loss(loss_fn: LossFn, params: Mapping[str, torch.Tensor], batch: Any,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    losses = loss_fn(params, batch)
    value = losses.mean() if weights is None else (losses * weights).sum()
    return value, losses.detach()


def _top_fraction_weights(increase: torch.Tensor, fraction: float) -> torch.Tensor:
    """Weights ``1/k`` on the ``k = ceil(fraction * n)`` largest entries, 0 elsewhere."""
    n = increase.shape[-1]
    k = max(1, math.ceil(fraction * n - 1e-9))
    idx = torch.topk(increase, k, dim=-1).indices
    return torch.zeros_like(increase).scatter(-1, idx, 1.0 / k)


try:
    from torch._C._functorch import is_functorch_wrapped_tensor, peek_interpreter_stack
except ImportError:         # private API moved: answer "a transform may be active", stay functional
    is_functorch_wrapped_tensor = peek_interpreter_stack = None


def _no_transform_active() -> bool:
    """True when no torch.func transform (vmap over tasks, an outer ``grad``) is running."""
    return peek_interpreter_stack is not None and peek_interpreter_stack() is None


def _plain_autograd_ok(cfg: SharpMAMLConfig) -> bool:
    """Whether a fine-tuning gradient may be one ``torch.autograd.grad``: no torch.func
    transform is active and nothing is being compiled."""
    return not (cfg.compile or torch.compiler.is_compiling()) and _no_transform_active()


def _step_grad(f: Callable, point: Mapping[str, torch.Tensor], plain: bool, *,
               has_aux: bool = False, create_graph: bool = True):
    """``torch.func.grad(f, has_aux)(point)``, by ``torch.autograd.grad`` where ``plain``.

    Same numbers and the same differentiability: the returned gradient carries the graph back
    to whatever ``point`` was computed from (``create_graph``), and none where ``point`` does
    not require grad.  ``torch.func.grad`` pays a per-operation dispatch cost that shows when
    the kernels are small (measured: the core's per-task loop 29% behind a plain autograd loop
    on a tiny Conv-4 on the CPU, 11% to 39% behind on an H200 at the paper's sizes)."""
    if not plain:
        return grad(f, has_aux=has_aux)(dict(point))
    inputs = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in point.items()}
    with torch.enable_grad():
        out = f(inputs)
    value, aux = out if has_aux else (out, None)
    g = _autograd_dict(value, inputs, create_graph and any(v.requires_grad for v in point.values()))
    return (g, aux) if has_aux else g


def _autograd_dict(value: torch.Tensor, inputs: dict, create_graph: bool = False) -> dict:
    """``torch.autograd.grad`` of ``value`` with respect to a parameter dict, as a dict, with
    zeros (as ``torch.func.grad`` gives) for inputs ``value`` does not depend on."""
    grads = torch.autograd.grad(value, list(inputs.values()), create_graph=create_graph,
                                allow_unused=True)
    return {k: torch.zeros_like(v) if d is None else d for (k, v), d in zip(inputs.items(), grads)}


def _inner_loop(loss_fn: LossFn, cfg: SharpMAMLConfig, params: Mapping[str, torch.Tensor],
                support: Any, offset: Mapping[str, torch.Tensor] | None,
                plan: dict | None, masks: dict, trace: list | None = None) -> tuple[dict, dict]:
    """N fine-tuning steps from ``params + offset``; returns (adapted params, plan).

    ``plan`` holds the per-step lower perturbations (and SDS weights).  When
    ``plan`` is None they are computed on this trajectory; otherwise the given
    ones are reused (second pass of Sharp-MAML_up/both).  ``trace``, if given,
    receives ``(full params at the gradient point, SDS weights)`` per step.
    """
    start = dict(params) if offset is None else P.add(params, offset)
    names = cfg.adapt_names or tuple(start)
    fast = {k: start[k] for k in names}
    frozen = {k: v for k, v in start.items() if k not in fast}

    def full(f: Mapping[str, torch.Tensor]) -> dict:
        return {**frozen, **f}

    def loss_at(f, weights=None):
        return mean_loss(loss_fn, full(f), support, weights)

    perturb = cfg.alpha_low > 0
    plain = _plain_autograd_ok(cfg)
    keep_graph = not (cfg.first_order or cfg.inner_optimizer == "sign")
    eps_seq, w_seq = [], []
    for k in range(cfg.inner_steps):
        eps_m, weights = None, None
        if perturb and plan is None:
            # With constant perturbations (eq. 10) eps_m is computed on detached inputs, so the
            # outer differentiation records none of this work.
            const = not cfg.differentiate_perturbations
            at = P.detach(fast) if const else fast
            if const:
                g, losses0 = _step_grad(lambda f: mean_loss(loss_fn, {**P.detach(frozen), **f}, support),
                                        at, plain, has_aux=True)
            else:
                g, losses0 = _step_grad(loss_at, at, plain, has_aux=True)
            eps_m = P.normalized(g, cfg.alpha_low)
            if masks:
                eps_m = {n: e * masks[n][k] for n, e in eps_m.items()}
            if cfg.sds_fraction is not None:
                with torch.no_grad():
                    shifted = {**P.detach(frozen), **P.detach(P.add(fast, eps_m))}
                    losses1 = loss_fn(shifted, support).detach()
                weights = _top_fraction_weights(losses1 - losses0, cfg.sds_fraction)
        elif perturb:
            eps_m = plan["eps_m"][k]
            weights = plan["sds_w"][k] if "sds_w" in plan else None
        point = fast if eps_m is None else P.add(fast, eps_m)
        if trace is not None:
            trace.append((full(point), weights))
        g = _step_grad(lambda f: loss_at(f, weights)[0], point, plain, create_graph=keep_graph)
        if cfg.inner_optimizer == "sign":   # d sign(g) / d theta = 0 almost everywhere
            g = {k: torch.sign(v).detach() for k, v in g.items()}
        elif cfg.first_order:
            g = P.detach(g)
        fast = P.axpy(-cfg.beta_low, g, fast)
        if eps_m is not None:
            eps_seq.append(eps_m)
        if weights is not None:
            w_seq.append(weights)
    new_plan: dict = {}
    if eps_seq:
        new_plan["eps_m"] = tuple(eps_seq)
    if w_seq:
        new_plan["sds_w"] = tuple(w_seq)
    return full(fast), new_plan


def adapt(loss_fn: LossFn, params: Mapping[str, torch.Tensor], support: Any,
          cfg: SharpMAMLConfig, *, generator: torch.Generator | None = None) -> dict:
    """Fine-tune ``params`` on one task's ``support`` data (no task dimension).

    This is the lower level of eq. (P) as the algorithms run it: ``N`` steps of
    (SAM-)gradient descent, eqs. (9), (11), (12).  Used at meta-test time.
    """
    masks = _swp_masks(cfg, params, 1, generator)
    masks = {n: m[0] for n, m in masks.items()}
    adapted, _ = _inner_loop(loss_fn, cfg, params, support, None, None, masks)
    return adapted


def _swp_masks(cfg: SharpMAMLConfig, params: Mapping[str, torch.Tensor], m: int,
               generator: torch.Generator | None, into: dict | None = None) -> dict:
    """Bernoulli(xi) masks, one per task, step and adapted parameter: {name: [M, N, *shape]}.

    ``into``: tensors of those shapes on the generator's device to draw into (a captured
    graph's mask buffers), instead of new ones."""
    if cfg.swp_keep is None or cfg.alpha_low == 0:
        return {}
    if generator is None:
        raise ValueError(
            f"swp_keep={cfg.swp_keep!r} draws random masks: pass a seeded "
            "generator=torch.Generator().manual_seed(...)")
    names = cfg.adapt_names or tuple(params)
    out = {}
    for n in names:
        p = params[n]
        # drawn where the generator lives (a CUDA generator cannot draw CPU tensors), then moved;
        # the probability is one number expanded (no tensor of the masks' size), which draws
        # what a filled tensor of it draws
        probs = torch.full((), cfg.swp_keep, dtype=p.dtype, device=generator.device).expand(
            m, cfg.inner_steps, *p.shape)      # filled on the device: no copy from the host
        if into is not None:
            out[n] = torch.bernoulli(probs, generator=generator, out=into[n])
        else:
            out[n] = torch.bernoulli(probs, generator=generator).to(p.device)
    return out


# ----------------------------------------------------------------------------
# the meta-objective over a batch of tasks


def map_tasks(one: Callable, params, tasks: Tasks, plans, masks: dict, mode: str) -> Any:
    """``one(params, support_m, query_m, plan_m, mask_m)`` for every task, outputs stacked.

    ``plans`` is None (computed afresh) or stacked per task, as returned.
    """
    if mode == "vmap":
        if plans is None:
            return vmap(lambda p, s, q, mk: one(p, s, q, None, mk), in_dims=(None, 0, 0, 0))(
                params, tasks.support, tasks.query, masks)
        return vmap(one, in_dims=(None, 0, 0, 0, 0))(params, tasks.support, tasks.query, plans, masks)
    outs = [one(params, task(tasks.support, m), task(tasks.query, m),
                None if plans is None else task(plans, m), task(masks, m))
            for m in range(num_tasks(tasks))]
    return _join(outs)


def _join(trees: list, op: Callable = torch.stack) -> Any:
    """Join same-structured trees leaf by leaf with ``op`` (``torch.stack`` or ``torch.cat``)."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return op(trees)
    if isinstance(first, Mapping):
        return {k: _join([t[k] for t in trees], op) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_join([t[i] for t in trees], op) for i in range(len(first)))
    raise TypeError(f"cannot join {type(first).__name__}")


def _task_value(loss_fn: LossFn, cfg: SharpMAMLConfig, p, support, query, offset, plan, mask):
    """One task's query loss after fine-tuning, and its plan (the unit ``compile`` compiles)."""
    adapted, new_plan = _inner_loop(loss_fn, cfg, p, support, offset, plan, mask)
    return loss_fn(adapted, query).mean(), new_plan


_COMPILED: dict[str, Callable] = {}


def _compiled_task_value(mode: str = "default") -> Callable:
    """``torch.compile(_task_value, mode=mode)``, made once per process and mode.

    Dynamo guards on ``loss_fn`` and ``cfg`` (and on shapes, ``dynamic=False``), so each
    configuration and input shape compiles once and is reused; the outer meta-gradient's
    backward runs through the compiled graph's own backward (AOTAutograd).  Under
    "reduce-overhead" on CUDA the outputs live in a CUDA-graph pool that the next replay
    overwrites, so callers copy what they keep across tasks (:func:`_graph_pass`).
    """
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(_task_value, dynamic=False, mode=mode)
    return _COMPILED[mode]


def _objective(loss_fn: LossFn, cfg: SharpMAMLConfig, params, tasks: Tasks, *,
               offset=None, plans=None, masks=None) -> tuple[torch.Tensor, Any]:
    """Mean query loss after fine-tuning; returns (value, per-task plans)."""
    if cfg.compile:
        compiled = _compiled_task_value(cfg.compile_mode)

        def one(p, support, query, plan, mask):
            return compiled(loss_fn, cfg, p, support, query, offset, plan, mask)
    else:
        def one(p, support, query, plan, mask):
            return _task_value(loss_fn, cfg, p, support, query, offset, plan, mask)

    values, new_plans = map_tasks(one, params, tasks, plans, masks or {}, cfg.task_batching)
    return values.mean(), new_plans


def _adjoint_pass(loss_fn: LossFn, cfg: SharpMAMLConfig, params, tasks: Tasks, *,
                  offset=None, plans=None, masks=None) -> tuple[dict, torch.Tensor, Any]:
    """Eq. (10) by an explicit adjoint sweep back through the fine-tuning steps.

    Per task: the inner loop runs forward without a graph, keeping only the
    points at which its gradients were taken; then the adjoint ``a`` (over the
    adapted parameters) goes backward through the steps,
    ``a <- a - beta_low H(p_k) [a; 0]``, and the rows of that product on the
    frozen parameters (ANIL) accumulate their meta-gradient.  The
    Hessian-vector product is

    * ``hvp="finite-difference"`` (HF-MAML): the central difference
      ``||a|| (grad L(p_k + delta u) - grad L(p_k - delta u)) / (2 delta)``
      with ``u = a / ||a||``, error O(delta^2);
    * ``hvp="autograd"`` with ``checkpoint=True``: exact, by a vector-Jacobian
      product of the gradient recomputed at ``p_k`` (reverse over reverse).
      The same meta-gradient as the graph path, with memory for one step's
      graph instead of ``N`` (gradient checkpointing at step granularity), for
      one more forward and backward per step.

    Returns (mean meta-gradient, mean query loss, plans).
    """
    delta = cfg.fd_delta

    def hvp(support, point, weights, adj, names):
        def full_grad(q):
            return grad(lambda r: mean_loss(loss_fn, r, support, weights)[0])(q)
        if cfg.hvp == "finite-difference":
            norm = P.global_norm(adj)
            unit = P.normalized(adj, 1.0)
            plus = full_grad({**point, **P.axpy(delta, unit, {k: point[k] for k in names})})
            minus = full_grad({**point, **P.axpy(-delta, unit, {k: point[k] for k in names})})
            return {k: (plus[k] - minus[k]) * (norm / (2 * delta)) for k in point}
        _, pullback = vjp(full_grad, point)
        cotangent = {k: adj[k] if k in adj else torch.zeros_like(v) for k, v in point.items()}
        return pullback(cotangent)[0]

    def one(p, support, query, plan, mask):
        trace: list = []
        adapted, new_plan = _inner_loop(loss_fn, cfg, P.detach(p), support, offset, plan, mask, trace)
        # one plain backward at the outermost level: torch.func.grad would keep its own
        # backward's buffers (measured: 1.5 GiB against 0.65 GiB on the mini-ImageNet Conv-4)
        g_out, value = _grad_and_value(lambda q: loss_fn(q, query).mean(), P.detach(adapted))
        names = cfg.adapt_names or tuple(p)
        adj = {k: g_out[k] for k in names}
        acc = {k: v for k, v in g_out.items() if k not in adj}
        if not cfg.first_order and cfg.inner_optimizer == "sgd":
            for point, weights in reversed(trace):
                hv = hvp(support, point, weights, adj, names)
                adj = {k: adj[k] - cfg.beta_low * hv[k] for k in adj}
                acc = {k: acc[k] - cfg.beta_low * hv[k] for k in acc}
        return {k: {**acc, **adj}[k] for k in p}, value, new_plan

    grads, values, new_plans = map_tasks(one, params, tasks, plans, masks or {}, cfg.task_batching)
    return {k: v.mean(0) for k, v in grads.items()}, values.mean(), new_plans


def _outermost(params: Mapping[str, torch.Tensor]) -> bool:
    """True when nothing differentiates through this call: no torch.func transform is active
    and no parameter takes part in a regular autograd graph."""
    return _no_transform_active() and not any(
        v.requires_grad or is_functorch_wrapped_tensor(v) for v in params.values())


def _grad_and_value(f: Callable, params: dict, has_aux: bool = False):
    """``torch.func.grad_and_value(f, has_aux)(params)``, by one plain backward where it can.

    ``torch.func.grad`` always records the graph of its own backward (so that it can be
    nested), which makes the autograd engine accumulate gradients out of place and keep
    second-order buffers alive.  At the outermost level no one differentiates the result,
    so one ``torch.autograd.grad`` without ``create_graph`` gives the same numbers with
    less work.  Inner levels (the fine-tuning gradients) stay torch.func transforms.
    Inside a transform (vmap over runs, a Hessian of the meta-objective) or under an
    outer autograd graph this falls back to ``torch.func``, so the result stays
    differentiable.
    """
    if not _outermost(params):
        return grad_and_value(f, has_aux=has_aux)(params)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        out = f(leaves)
    value, aux = out if has_aux else (out, None)
    g = _autograd_dict(value, leaves)
    aux = _tree_map(torch.Tensor.detach, aux)
    return g, ((value.detach(), aux) if has_aux else value.detach())


def _graph_pass(loss_fn: LossFn, cfg: SharpMAMLConfig, params: dict, tasks: Tasks, *,
                offset=None, plans=None, masks=None) -> tuple[dict, torch.Tensor, Any]:
    """Gradient of the mean query loss by differentiating through the inner loop's graph.

    Returns (meta-gradient, value, detached per-task plans).  With
    ``task_batching="loop"`` at the outermost level, each task's graph is
    differentiated and freed before the next task is fine-tuned (as a per-task
    ``backward`` would), so peak memory holds one task's graph, not ``M``.
    """
    masks = masks or {}
    m = num_tasks(tasks)
    if cfg.task_batching == "loop" and m > 1 and _outermost(params):
        total, values, per_task = None, [], []
        for i in range(m):
            sub = Tasks(*(_tree_map(lambda t: t[i:i + 1], part) for part in tasks))
            g, (value, plan) = _grad_and_value(
                lambda p: _objective(loss_fn, cfg, p, sub, offset=offset,
                                     plans=None if plans is None else _tree_map(lambda t: t[i:i + 1], plans),
                                     masks=_tree_map(lambda t: t[i:i + 1], masks)),
                params, has_aux=True)
            if cfg.compile:            # CUDA-graph outputs are overwritten by the next replay
                g, value, plan = _tree_map(torch.Tensor.clone, (g, value, plan))
            total = g if total is None else {k: total[k] + g[k] for k in g}
            values.append(value)
            per_task.append(plan)
        grads = {k: v / m for k, v in total.items()}
        return grads, torch.stack(values).mean(), _join(per_task, torch.cat)
    g, (value, new_plans) = _grad_and_value(
        lambda p: _objective(loss_fn, cfg, p, tasks, offset=offset, plans=plans, masks=masks),
        params, has_aux=True)
    return g, value.detach(), _tree_map(torch.Tensor.detach, new_plans)


def meta_objective(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks,
                   cfg: SharpMAMLConfig) -> torch.Tensor:
    """``F(theta)`` of eq. (29a) (generalised to N steps and SAM fine-tuning)."""
    num_tasks(tasks)
    value, _ = _objective(loss_fn, cfg, dict(params), tasks)
    return value.detach()


def meta_gradient(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks,
                  cfg: SharpMAMLConfig, *, generator: torch.Generator | None = None) -> MetaGradient:
    """The Sharp-MAML meta-gradient of Algorithm 1 (see the module docstring).

    Args:
        loss_fn: per-sample loss ``loss_fn(params, batch) -> [n]``.
        params: the meta-model ``theta`` (never modified).
        tasks: support and query data with a leading task dimension ``M``.
        cfg: radii, steps and options.
        generator: source of SWP masks (needed only when ``cfg.swp_keep`` is set).

    Returns:
        :class:`MetaGradient` with the gradient averaged over the ``M`` tasks
        (eq. 15 sums; take ``beta_up`` ``M`` times smaller to match it).
    """
    params = dict(params)
    _check_adapt_names(cfg, params)
    masks = _swp_masks(cfg, params, num_tasks(tasks), generator)
    if cfg.cuda_graph:
        from testbed import cudagraph
        return cudagraph.replay(_meta_gradient, loss_fn, params, tasks, cfg, masks)
    return _meta_gradient(loss_fn, params, tasks, cfg, masks)


def _check_adapt_names(cfg: SharpMAMLConfig, params: Mapping[str, torch.Tensor]) -> None:
    if cfg.adapt_names is not None:
        missing = [n for n in cfg.adapt_names if n not in params]
        if missing:
            raise ValueError(f"adapt_names {missing} are not parameters of the model; its "
                             f"parameters are {sorted(params)}")


def _meta_gradient(loss_fn: LossFn, params: dict, tasks: Tasks, cfg: SharpMAMLConfig,
                   masks: dict) -> MetaGradient:
    """:func:`meta_gradient` after its checks, with the SWP masks drawn (the unit that
    ``cuda_graph=True`` captures: it reads no tensor value on the host)."""
    if cfg.hvp == "finite-difference" or cfg.checkpoint:
        h, value, plans = _adjoint_pass(loss_fn, cfg, params, tasks, masks=masks)
        if cfg.alpha_up == 0:
            return MetaGradient(h, value, None)
        eps = P.normalized(h, cfg.alpha_up)
        g, value, _ = _adjoint_pass(loss_fn, cfg, params, tasks, offset=eps, plans=plans,
                                    masks=masks)
        return MetaGradient(g, value, eps)

    def first_pass(p):
        return _objective(loss_fn, cfg, p, tasks, masks=masks)

    if cfg.alpha_up == 0 or not cfg.differentiate_perturbations:
        h, value, plans = _graph_pass(loss_fn, cfg, params, tasks, masks=masks)
        if cfg.alpha_up == 0:
            return MetaGradient(h, value, None)
        eps = P.normalized(P.detach(h), cfg.alpha_up)
        g, value, _ = _graph_pass(loss_fn, cfg, params, tasks, offset=eps, plans=plans, masks=masks)
        return MetaGradient(g, value, eps)

    def composite(p):
        h, plans = grad(first_pass, has_aux=True)(p)
        eps = P.normalized(h, cfg.alpha_up)
        value, _ = _objective(loss_fn, cfg, p, tasks, offset=eps, plans=plans, masks=masks)
        return value, P.detach(eps)

    g, (value, eps) = _grad_and_value(composite, params, has_aux=True)
    return MetaGradient(g, value.detach(), eps)


# ----------------------------------------------------------------------------
# SAM on plain ERM (eqs. 5, 6, 8)


def erm_objective(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks) -> torch.Tensor:
    """Multi-task ERM of eq. (5), each task's loss taken on all of its data (D_m and D'_m)."""
    m = num_tasks(tasks)
    total = 0.0
    for i in range(m):
        s, q = task(tasks.support, i), task(tasks.query, i)
        total = total + 0.5 * (loss_fn(params, s).mean() + loss_fn(params, q).mean())
    return total / m


def sam_gradient(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks,
                 alpha: float) -> MetaGradient:
    """SAM (eqs. 8a-8b) on the ERM objective: the gradient at ``theta + eps(theta)``.

    ``alpha = 0`` is the plain ERM gradient.
    """
    V.nonnegative("alpha", alpha)
    params = dict(params)

    def f(p):
        return erm_objective(loss_fn, p, tasks)

    if alpha == 0:
        g, value = _grad_and_value(f, params)
        return MetaGradient(g, value.detach(), None)
    eps = P.normalized(P.detach(_grad_and_value(f, params)[0]), alpha)
    g, value = _grad_and_value(f, P.add(params, eps))
    return MetaGradient(g, value.detach(), eps)
