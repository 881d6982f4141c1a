"""``testbed bench fewshot``: Conv-4 meta-iterations, this project against the usual code.

On the same random data of a setting's shapes (Omniglot 20-way 1-shot 28x28,
or mini-ImageNet-sized 5-way 1-shot 84x84, with the paper's inner steps and
meta-batch), in one process:

1. MAML's meta-gradient from this project's core (``vmap`` over tasks and a
   per-task loop) against references written the way people write MAML today:
   a per-task loop with ``torch.autograd.grad(create_graph=True)``, a
   per-task loop with the ``higher`` library, and ``parallel-metalearn``'s
   ``MAML`` with its ``vmap`` backend (import name ``metalearn``; both from
   the optional extra ``bench``, each used when installed).  All must agree
   in float64 (relative error of the meta-gradient) before any time is
   reported.
2. Every Sharp variant's time per meta-gradient over MAML's, next to its
   operation-count ratio (FLOPs counted by ``torch.utils.flop_counter``) and
   the ratio the paper's Table 3 reports.
3. Peak memory per implementation and per variant (CUDA only; on CPU
   ``testbed bench memory`` measures it, one process per measurement).
4. With ``cuda_graph`` (CUDA only): the core's meta-gradient replayed from one captured CUDA
   graph that reads the bench's own tensors in place (:class:`testbed.cudagraph.MetaGradientGraph`,
   as ``testbed train --cuda-graph`` runs it), as MAML rows checked like the others and as a
   graphed time for every variant.

Times are medians over ``repeats`` rounds after one warm-up; each round runs every
implementation (or every variant) once, in turn.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from experiments.fewshot.model import HEAD_NAMES, conv4_forward, cross_entropy_loss, init_conv4
from testbed import Tasks, algorithms, cudagraph, meta
from testbed.meta import COMPILE_MODES
from testbed import validate as V

PAPER_TABLE3 = {"maml": 1.0, "sharp-low": 2.6, "sharp-up": 3.6, "sharp-both": 4.6,
                "sharp-anil": 1.4, "esharp": 2.2, "esharp-anil": 1.2}
"""Execution time over MAML's, Abbas et al. 2022, Table 3 (mini-ImageNet 5-way 1-shot)."""
TARGETS = {"sharp-low": 1.6, "sharp-up": 2.1, "sharp-both": 2.8, "sharp-anil": 1.2, "esharp": 1.4}
"""The overheads this project aims for (issue: performance)."""
VARIANTS = ("maml", "sharp-low", "sharp-up", "sharp-both", "anil", "sharp-anil", "esharp",
            "esharp-anil")
AGREEMENT = 1e-8
"""Relative error allowed between implementations' meta-gradients, computed in float64.

The check runs in float64 because the float32 meta-gradient of these problems is itself
ill-conditioned: at the Omniglot 20-way setting (5 inner steps on random images) the
per-task loops, written any of the three ways, are 8e-2 away from the float64 value while
the vmapped core is 3e-4 away; float32 peers cannot be told apart from bugs by comparing
them with each other.  Each implementation's float32 error against the float64 core is
reported beside the timings (``float32_error``)."""


@dataclass(frozen=True)
class Setting:
    name: str
    ways: int
    shots: int
    queries: int
    image_size: int
    channels: int
    inner_steps: int
    meta_batch: int
    beta_low: float
    hidden: int = 64


SETTINGS = {
    # MAML / Sharp-MAML Omniglot 20-way: 5 inner steps, meta-batch 16, inner lr 0.1
    "omniglot-20w1s": Setting("omniglot-20w1s", 20, 1, 15, 28, 1, 5, 16, 0.1),
    # mini-ImageNet 5-way 1-shot: 5 inner steps, meta-batch 4, inner lr 0.01, 15 queries
    "miniimagenet-5w1s": Setting("miniimagenet-5w1s", 5, 1, 15, 84, 3, 5, 4, 0.01),
}


def small(setting: Setting) -> Setting:
    """A scaled-down copy (fewer tasks, queries and filters) for quick runs and tests."""
    return replace(setting, name=setting.name + "-small", meta_batch=2, queries=2, hidden=8,
                   inner_steps=2)


def make_problem(setting: Setting, device: str = "cpu", dtype=torch.float32, seed: int = 0):
    """Conv-4 parameters and one meta-batch of random images of the setting's shapes."""
    g = torch.Generator().manual_seed(seed)
    params = init_conv4(setting.ways, setting.channels, setting.image_size, setting.hidden,
                        generator=g, dtype=dtype)

    def batch(per_class):
        n = setting.ways * per_class
        x = torch.randn(setting.meta_batch, n, setting.channels, setting.image_size,
                        setting.image_size, generator=g, dtype=dtype)
        y = torch.arange(setting.ways).repeat_interleave(per_class).expand(setting.meta_batch, n)
        return {"x": x.to(device), "y": y.contiguous().to(device)}

    params = {k: v.to(device) for k, v in params.items()}
    return params, Tasks(batch(setting.shots), batch(setting.queries))


# ---------------------------------------------------------------------------
# references: MAML as people write it


def plain_autograd_maml(params: dict, tasks: Tasks, beta_low: float, steps: int) -> dict:
    """Per-task loop, ``torch.autograd.grad(create_graph=True)``, then one backward."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    m = tasks.support["x"].shape[0]
    for i in range(m):
        fast = dict(leaves)
        xs, ys = tasks.support["x"][i], tasks.support["y"][i]
        for _ in range(steps):
            loss = F.cross_entropy(conv4_forward(fast, xs), ys)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: v - beta_low * g for (k, v), g in zip(fast.items(), grads)}
        (F.cross_entropy(conv4_forward(fast, tasks.query["x"][i]), tasks.query["y"][i]) / m).backward()
    return {k: v.grad for k, v in leaves.items()}


class _Holder(torch.nn.Module):
    """A named container for one layer's parameters (``higher`` cannot patch a bare Module)."""


class Conv4Module(torch.nn.Module):
    """Conv-4 as an ``nn.Module`` holding the same named parameters (for ``higher``)."""

    def __init__(self, params: dict):
        super().__init__()
        for name, value in params.items():
            owner, leaf = name.split(".")
            if not hasattr(self, owner):
                self.add_module(owner, _Holder())
            getattr(self, owner).register_parameter(leaf, torch.nn.Parameter(value.detach().clone()))

    def forward(self, x):
        return conv4_forward(dict(self.named_parameters()), x)


def higher_maml(params: dict, tasks: Tasks, beta_low: float, steps: int) -> dict:
    """Per-task loop with ``higher.innerloop_ctx`` (differentiable SGD), then backward."""
    import higher

    model = Conv4Module(params)
    inner = torch.optim.SGD(model.parameters(), lr=beta_low)
    m = tasks.support["x"].shape[0]
    for i in range(m):
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(tasks.support["x"][i]), tasks.support["y"][i]))
            (F.cross_entropy(fmodel(tasks.query["x"][i]), tasks.query["y"][i]) / m).backward()
    return {k: p.grad for k, p in model.named_parameters()}


class _Conv4Backbone(Conv4Module):
    """Conv-4, logits included, as the backbone of ``parallel-metalearn``'s ``MAML_Model``.

    The wrapper calls its backbone and head with ``training=`` and ``num_step=`` keywords
    (hooks for per-step batch norm); ``conv4_forward`` has no state for them, so they are ignored.
    """

    def forward(self, x, **_):
        return super().forward(x)


class _Passthrough(torch.nn.Module):
    """The wrapper's head: identity, since the backbone already ends in Conv-4's linear head."""

    def forward(self, x, **_):
        return x


class _MetaGradientOnly(torch.optim.Optimizer):
    """An outer optimizer whose ``step`` does nothing.

    ``metalearn.algorithms.MAML.step`` always ends a training step with
    ``optimizer.step()``; with this one the parameters stay where they are and the
    meta-gradient is left in ``.grad`` (its ``zero_grad`` is the usual one).
    """

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def parallel_metalearn_maml(params: dict, tasks: Tasks, beta_low: float, steps: int) -> dict:
    """MAML through ``parallel-metalearn``'s ``MAML`` (``backend="vmap"``), read from ``.grad``.

    One ``MAML.step(training=True)`` on the whole meta-batch: its ``torch.func.grad`` inner
    loop under ``vmap`` over tasks, query loss averaged over tasks, one ``backward``.  The
    model is ``MAML_Model(backbone=<conv4_forward over the same named parameters>,
    head=identity)``; gradients are returned under ``params``' names (the wrapper's
    ``backbone.`` prefix removed).

    Configured to be textbook second-order MAML, the same numbers as the core (checked to
    1e-8 in float64, bit-identical on the tests' tiny setting):

    * ``InnerSGD(learn_lr=False)``: plain SGD, one global step size; learning it (Meta-SGD /
      MAML++ LSLR, the package's default ``learn_lr=True``) is off, so no step-size parameter
      joins the outer optimizer.  Its step size is an ``nn.Parameter`` created in float32
      (0.3 becomes 0.30000001...): it is cast to the parameters' dtype and set to ``beta_low``
      exactly, or float64 agreement stops at ~1e-7.
    * ``first_order=False`` (second order, the default); ``fast_weights_names=None``: all
      parameters adapted (not ANIL/BOIL).
    * ``multi_step_loss=False`` (the default): only the query loss after the last step, not
      MAML++'s weighted per-step query losses.
    * ``encoder=None``: labels are used as given (already 0..ways-1); its ``LabelEncoder``
      would re-index and, by default, randomly permute classes per task.
    * ``CrossEntropy(metric_fn=CategoricalAccuracy())``: mean cross-entropy on support and
      query, as in the core.  The metric instance is passed because the default (the class
      itself, 0.5.6) fails when called.
    * ``chunk_size`` = the meta-batch: one ``vmap`` call over all tasks, as the core's vmap;
      its loss is ``sum over tasks / tasks``, the same mean.
    * No buffers: the package would average the tasks' buffers (e.g. batch-norm running
      statistics) and copy them into the model after the step; Conv-4 here uses batch
      statistics and has none.
    * The outer ``optimizer.step()`` it always calls is a no-op (:class:`_MetaGradientOnly`).

    Per call (part of its time): building the wrapper, copying the parameters, two
    ``.item()`` host syncs for the reported loss and accuracy, the accuracy itself, and
    ``torch.cuda.empty_cache()`` after the backward whenever CUDA is available.
    """
    from metalearn.algorithms import MAML
    from metalearn.inner_optimizers import InnerSGD
    from metalearn.loss import CategoricalAccuracy, CrossEntropy
    from metalearn.model_wrappers import MAML_Model

    first = next(iter(params.values()))
    model = MAML_Model(backbone=_Conv4Backbone(params), head=_Passthrough(), fast_weights_names=None)
    inner = InnerSGD(model.get_fast_weights(), first_order=False, inner_lr=beta_low,
                     max_inner_steps=steps, per_layer=False, per_step=False, learn_lr=False)
    inner.to(device=first.device, dtype=first.dtype)
    with torch.no_grad():
        for lr in inner.parameters():
            lr.fill_(beta_low)
    m = tasks.support["x"].shape[0]
    maml = MAML(model=model, optimizer=_MetaGradientOnly(model.parameters()), inner_optimizer=inner,
                support_loss_fn=CrossEntropy(metric_fn=CategoricalAccuracy()), encoder=None,
                inner_steps=steps, multi_step_loss=False, chunk_size=m, device=first.device,
                backend="vmap")
    batch = (tasks.support["x"], {"labels": tasks.support["y"]},
             tasks.query["x"], {"labels": tasks.query["y"]})
    maml.step(iter([batch]), training=True)
    grads = {name.removeprefix("backbone."): p.grad for name, p in model.named_parameters()}
    return {k: grads[k] for k in params}


_IN_PLACE: dict = {}
"""The CUDA graph rows' graphs, by configuration and the tensors they adopted (held alive by
the graph, so their ids cannot be reused while cached); :func:`clear_graphs` drops them."""


def clear_graphs() -> None:
    """Drop every graph the bench made (and their pools once no output is held)."""
    _IN_PLACE.clear()
    cudagraph.clear()


def core_maml(batching: str, compile: bool = False, mode: str = "default",
              cuda_graph: bool = False) -> Callable:
    """The core's MAML meta-gradient; ``cuda_graph``: from a :class:`cudagraph.MetaGradientGraph`
    that adopts the given tensors (captured on the first call with them, replayed after)."""
    def run(params, tasks, beta_low, steps):
        alg = algorithms.make("maml", beta_low=beta_low, inner_steps=steps, task_batching=batching)
        if compile:
            alg = algorithms.with_config(alg, compile=True, compile_mode=mode)
        if cuda_graph:
            key = (batching, beta_low, steps, *map(id, meta._leaves((params, tasks))))
            graph = _IN_PLACE.get(key)
            if graph is None:
                graph = _IN_PLACE[key] = cudagraph.MetaGradientGraph(
                    cross_entropy_loss, params, tasks, alg.config)
            return graph().grad
        return alg.meta_gradient(cross_entropy_loss, params, tasks).grad
    return run


COMPILED = "core, loop, compiled"


def compiled_name(mode: str) -> str:
    """The table's name for the core's loop under ``torch.compile(mode=mode)``."""
    return COMPILED if mode == "default" else f"{COMPILED} ({mode})"


def graphed_name(batching: str) -> str:
    """The table's name for the core (``task_batching=batching``) under ``cuda_graph=True``."""
    return f"core, {batching}, CUDA graph"


def implementations(compile: bool = False, compile_modes: tuple[str, ...] = ("default",),
                    cuda_graph: bool = False) -> dict[str, Callable]:
    """Name -> ``fn(params, tasks, beta_low, steps) -> meta-gradient`` for every MAML at hand.

    ``compile`` adds the core's loop under ``torch.compile``, once per mode of
    ``compile_modes`` (:func:`compiled_name`; "reduce-overhead" replays CUDA graphs on CUDA);
    its first call per dtype and shape compiles (minutes for Conv-4 on a CPU, not timed: the
    warm-up and the float64 check take it).

    ``cuda_graph`` adds the core's loop and vmap replayed from CUDA graphs that read their
    inputs in place (:func:`graphed_name`; CUDA tensors only): the first call with given
    tensors captures the graph, later calls with them replay it (:func:`clear_graphs`).
    """
    out = {"core, vmap": core_maml("vmap"), "core, loop": core_maml("loop"),
           "autograd loop": plain_autograd_maml}
    if compile:
        for mode in compile_modes:
            V.one_of("compile mode", mode, COMPILE_MODES)
            out[compiled_name(mode)] = core_maml("loop", compile=True, mode=mode)
    try:
        import higher  # noqa: F401  (optional extra "bench")
    except ImportError:
        pass
    else:
        out["higher loop"] = higher_maml
    try:
        import metalearn  # noqa: F401  (optional extra "bench": parallel-metalearn)
    except ImportError:
        pass
    else:
        out["parallel-metalearn (vmap)"] = parallel_metalearn_maml
    if cuda_graph:   # last: every eager row's peak memory is read before a graph holds its buffers
        for batching in ("loop", "vmap"):
            out[graphed_name(batching)] = core_maml(batching, cuda_graph=True)
    return out


# ---------------------------------------------------------------------------
# measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def turned(names: list[str], r: int) -> list[str]:
    """``names`` turned by ``r`` places: round ``r``'s order of an interleaved timing."""
    return names[r % len(names):] + names[:r % len(names)]


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: str,
                        say: Callable[[str], None] = lambda _: None
                        ) -> tuple[dict[str, float], dict[str, float | None]]:
    """Median seconds of each function over ``repeats`` rounds, and its peak CUDA memory.

    Each function is called once to warm up (its peak memory is read on that call); then
    every round calls each function once, in turn, so that a slow spell of a shared machine
    falls on all of them alike instead of on whichever was being timed.  The order turns by one
    each round, so that no function always runs after the same one and inherits the heap state
    it leaves (on the CPU that moved a 1% comparison: results/bench/omniglot-20w1s/loop_vs_plain.md).
    """
    peak = {}
    for name, fn in fns.items():
        say(f"warm-up: {name}")
        _reset_peak(device)
        fn()
        _sync(device)
        peak[name] = _peak_mb(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        say(f"round {r + 1} of {repeats}")
        for name in turned(names, r):
            fn = fns[name]
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}, peak


CHECK_TASKS = 2
"""Tasks of the meta-batch on which the implementations are compared before timing."""


def _float64(d: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in d.items()}


def relative_error(a: dict, b: dict) -> float:
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in a)
    den = sum((a[k].double() ** 2).sum() for k in a)
    return float(torch.sqrt(num / den))


@dataclass(frozen=True)
class FewshotBench:
    setting: Setting
    device: str
    repeats: int
    maml_seconds: dict[str, float]
    maml_agreement: dict[str, float]
    maml_float32_error: dict[str, float]
    variant_seconds: dict[str, float]
    variant_gflops: dict[str, float]
    variant_peak_mb: dict[str, float | None]
    batching: str
    maml_peak_mb: dict[str, float | None] | None = None
    variant_seconds_graphed: dict[str, float] | None = None
    """Each variant's seconds under ``cuda_graph=True`` (same batching); None: not measured."""

    def to_dict(self) -> dict:
        return asdict(self)


def run(setting: Setting, device: str = "cpu", repeats: int = 3,
        variants: tuple[str, ...] = VARIANTS, progress=None, compile: bool = False,
        compile_modes: tuple[str, ...] = ("default",), cuda_graph: bool = False) -> FewshotBench:
    """Check agreement, then time MAML's implementations and every variant.

    ``progress``: a text stream that gets one line per stage (None: silent).
    ``compile``: also time the core's loop under ``torch.compile`` (see :func:`implementations`).
    ``cuda_graph``: also time the core's loop and vmap under ``cuda_graph=True`` (MAML rows,
    checked like the others), and every variant under it, in the same rounds as the eager
    variants (``variant_seconds_graphed``).  CUDA devices only.
    """
    def say(text: str) -> None:
        if progress is not None:
            print(f"[{setting.name}] {text}", file=progress, flush=True)

    V.positive_int("repeats", repeats)
    for v in variants:
        V.one_of("variant", v, VARIANTS)
    if "maml" not in variants:
        variants = ("maml",) + tuple(variants)
    if cuda_graph:
        if not cudagraph.supported(device):
            raise ValueError(f"cuda_graph=True captures CUDA kernels: it needs a CUDA device, "
                             f"got device {device!r}")
    # with CUDA graph rows, every row on the stream graphs are captured on: cuBLAS keeps a
    # workspace per stream (65 MiB on an H200), and a process running one of them holds one
    with cudagraph.capture_stream(device) if cuda_graph else contextlib.nullcontext():
        return _timed(setting, device, repeats, variants, say, compile, compile_modes, cuda_graph)


def _timed(setting: Setting, device: str, repeats: int, variants: tuple[str, ...], say,
           compile: bool, compile_modes: tuple[str, ...], cuda_graph: bool) -> FewshotBench:
    params, tasks = make_problem(setting, device)
    args = (params, tasks, setting.beta_low, setting.inner_steps)
    impls = implementations(compile, compile_modes, cuda_graph)
    # the check uses the first CHECK_TASKS tasks of the meta-batch (the meta-gradient is a
    # mean over tasks, so agreement per task is what matters; a float64 second-order graph
    # of the whole paper-scale batch does not fit in 24 GiB)
    few = Tasks(*({k: v[:CHECK_TASKS] for k, v in part.items()} for part in (tasks.support, tasks.query)))
    narrow = (params, few, setting.beta_low, setting.inner_steps)
    wide = (_float64(params), Tasks(_float64(few.support), _float64(few.query)),
            setting.beta_low, setting.inner_steps)
    say(f"float64 reference: core, vmap on {min(CHECK_TASKS, setting.meta_batch)} tasks")
    reference = impls["core, vmap"](*wide)
    agreement, float32_error = {}, {}
    for name, fn in impls.items():
        say(f"checking {name} against the core in float64")
        agreement[name] = relative_error(fn(*wide), reference)
        if agreement[name] > AGREEMENT:
            raise RuntimeError(f"{name} disagrees with the core's meta-gradient by "
                               f"{agreement[name]:.2e} in float64 (> {AGREEMENT:g}); no timing reported")
        float32_error[name] = relative_error(_float64(fn(*narrow)), reference)
    if cuda_graph:
        # the check's graphs (and an earlier run's) go, pools included, so that each graphed
        # row's warm-up, where its peak memory is read, is the capture of its timed graph
        clear_graphs()
    say("timing MAML, every implementation in turn")
    try:
        maml_seconds, maml_peak = interleaved_medians(
            {name: (lambda fn=fn: fn(*args)) for name, fn in impls.items()}, repeats, device, say)
    finally:
        if cuda_graph:
            clear_graphs()         # their pools, before the variants' graphs add theirs
    batching = "vmap" if maml_seconds["core, vmap"] <= maml_seconds["core, loop"] else "loop"
    gflops, calls, graphed = {}, {}, {}
    for name in variants:
        say(f"counting FLOPs of {name} (core, {batching})")
        alg = algorithms.make(name, beta_low=setting.beta_low, inner_steps=setting.inner_steps,
                              head_names=HEAD_NAMES if "anil" in name else None,
                              task_batching=batching)
        calls[name] = _variant_call(alg, params, tasks)
        with FlopCounterMode(display=False) as counter:
            calls[name]()
        gflops[name] = counter.get_total_flops() / 1e9
        if cuda_graph:
            graphed[f"{name}, CUDA graph"] = _variant_call(alg, params, tasks, graphed=True)
    # graphed calls after the eager ones: each eager peak is read before any variant's capture
    say(f"timing every variant in turn (core, {batching})"
        + (", eager and under a CUDA graph" if cuda_graph else ""))
    try:
        seconds, peak = interleaved_medians({**calls, **graphed}, repeats, device, say)
    finally:
        graphed.clear()            # their pools, before another setting's graphs are captured
    return FewshotBench(setting, device, repeats, maml_seconds, agreement, float32_error,
                        {n: seconds[n] for n in calls}, gflops, {n: peak[n] for n in calls},
                        batching, maml_peak,
                        {n: seconds[f"{n}, CUDA graph"] for n in calls} if cuda_graph else None)


def _variant_call(alg, params: dict, tasks: Tasks, graphed: bool = False) -> Callable[[], object]:
    """One meta-gradient of ``alg`` per call, its SWP masks drawn from its own generator seeded 0
    on the parameters' device, as ``testbed train`` draws them (on the H200, masks drawn on
    the CPU cost ESharp 0.03 s to 0.13 s per call of host work: results/bench/gpu-h200-graphs).
    ``graphed``: replayed from a :class:`cudagraph.MetaGradientGraph` over ``params`` and
    ``tasks`` in place, as ``testbed train --cuda-graph`` runs it."""
    gen = torch.Generator(device=next(iter(params.values())).device).manual_seed(0)
    if graphed:
        if alg.kind != "sharp-maml":   # the graph runs the MAML-type meta-gradient only
            raise ValueError(f"{alg.name} is not a MAML-type algorithm: it has no graphed time")
        graph = cudagraph.MetaGradientGraph(cross_entropy_loss, params, tasks, alg.config)
        return lambda: graph(gen)
    return lambda: alg.meta_gradient(cross_entropy_loss, params, tasks, generator=gen)


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: str) -> float | None:
    """Peak CUDA memory allocated since :func:`_reset_peak` (MiB); None on CPU, where one
    process's peak cannot be reset (``testbed bench memory`` measures it per process)."""
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.startswith("cuda") else None


def format_table(b: FewshotBench) -> str:
    s = b.setting
    head = (f"bench fewshot: {s.name} ({s.ways}-way {s.shots}-shot, {s.queries} queries, "
            f"{s.image_size}x{s.image_size}x{s.channels}, Conv-4 {s.hidden} filters, "
            f"{s.inner_steps} inner steps, meta-batch {s.meta_batch}) on {b.device}, "
            f"median of {b.repeats} interleaved rounds")
    cuda = b.device.startswith("cuda")
    higher = b.maml_seconds.get("higher loop")
    cols = ["MAML meta-gradient", "seconds", "time / core (vmap)"]
    cols += ["speed / higher loop"] if higher else []
    cols += ["difference to core, float64", "float32 error vs float64"]
    cols += ["peak MiB"] if cuda else []
    lines = [head, "", " | ".join(cols), "|".join(["---"] * len(cols))]
    core = b.maml_seconds["core, vmap"]
    for name, sec in b.maml_seconds.items():
        row = [name, f"{sec:.3f}", f"{sec / core:.2f}x"]
        row += [f"{higher / sec:.2f}x"] if higher else []
        row += [f"{b.maml_agreement[name]:.1e}", f"{b.maml_float32_error[name]:.1e}"]
        row += [f"{b.maml_peak_mb[name]:.0f}"] if cuda and b.maml_peak_mb else []
        lines.append(" | ".join(row))
    if cuda and b.maml_peak_mb and any(graphed_name(k) in b.maml_seconds for k in ("loop", "vmap")):
        lines += ["", "CUDA graph rows: the graph reads the bench's tensors in place (no copy); "
                      "peak MiB is that of the first call (eager warm-ups, then the capture); "
                      "between calls the graph's private pool keeps what its capture had alive "
                      "reserved (tests/test_gpu.py compares it with the eager peak). Every row "
                      "runs on the graphs' stream, so all hold the same one cuBLAS workspace."]
    graphed = b.variant_seconds_graphed
    cols = [f"variants (core, {b.batching})", "seconds", "time / MAML", "FLOPs / MAML",
            "time / FLOP ratio"]
    cols += ["graphed s", "graphed time / graphed MAML"] if graphed else []
    cols += ["paper Table 3", "target"]
    cols += ["peak MiB"] if cuda else []
    lines += ["", " | ".join(cols), "|".join(["---"] * len(cols))]
    t0, f0 = b.variant_seconds["maml"], b.variant_gflops["maml"]
    for name, sec in b.variant_seconds.items():
        tr, fr = sec / t0, b.variant_gflops[name] / f0
        row = [name, f"{sec:.3f}", f"{tr:.2f}x", f"{fr:.2f}x", f"{tr / fr:.2f}"]
        row += [f"{graphed[name]:.3f}", f"{graphed[name] / graphed['maml']:.2f}x"] if graphed else []
        row += [f"{PAPER_TABLE3[name]:.1f}x" if name in PAPER_TABLE3 else "-",
                f"<= {TARGETS[name]:.1f}x" if name in TARGETS else "-"]
        row += [f"{b.variant_peak_mb[name]:.0f}"] if cuda else []
        lines.append(" | ".join(row))
    if graphed:
        lines += ["", "target: the overhead aimed for, a variant's time over MAML's, eager "
                      "(time / MAML) or graphed (graphed time / graphed MAML) alike."]
    return "\n".join(lines)
