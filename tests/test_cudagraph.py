"""``cuda_graph=True``: the static-buffer plumbing around a captured meta-gradient.

CUDA graph capture itself needs a GPU (``tests/test_gpu.py``).  Here the capture is replaced
by an eager stand-in with a graph's contract (``cuda_graph_stand_in`` in tests/conftest.py):
it runs the function once at capture, and a replay reruns it and writes into the *same*
output tensors.  A call that read its inputs from anywhere but the static buffers, returned
the static outputs themselves, or reused a graph across layouts gives wrong numbers here as on
a GPU.  What a real graph freezes and the stand-in reruns (host-side state) and the capture
itself (``testbed.cudagraph._cuda_capture``) are for tests/test_gpu.py."""

import warnings

import pytest
import torch

from experiments.bench import fewshot
from experiments.fewshot.model import HEAD_NAMES, cross_entropy_loss
from testbed import algorithms, cudagraph, meta

TINY = fewshot.Setting("tiny", ways=3, shots=1, queries=2, image_size=16, channels=1,
                       inner_steps=2, meta_batch=2, beta_low=0.3, hidden=4)


def _alg(name, graphed, batching="loop"):
    alg = algorithms.make(name, beta_low=0.3, inner_steps=2, task_batching=batching,
                          head_names=HEAD_NAMES if "anil" in name else None)
    return algorithms.with_config(alg, cuda_graph=graphed)


def _close(a: meta.MetaGradient, b: meta.MetaGradient):
    for k in a.grad:
        torch.testing.assert_close(a.grad[k], b.grad[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=1e-12)
    assert (a.eps is None) == (b.eps is None)
    if a.eps is not None:
        for k in a.eps:
            torch.testing.assert_close(a.eps[k], b.eps[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("batching", ["loop", "vmap"])
@pytest.mark.parametrize("name", ["maml", "sharp-both", "esharp-anil"])
def test_replays_give_the_eager_meta_gradient_for_new_inputs(cuda_graph_stand_in, name, batching):
    graphed, eager = _alg(name, True, batching), _alg(name, False, batching)
    before = cudagraph.counts()
    for seed in (0, 1, 2):        # new parameters, data and SWP masks on every call
        params, tasks = fewshot.make_problem(TINY, dtype=torch.float64, seed=seed)
        got = graphed.meta_gradient(cross_entropy_loss, params, tasks,
                                    generator=torch.Generator().manual_seed(seed))
        want = eager.meta_gradient(cross_entropy_loss, params, tasks,
                                   generator=torch.Generator().manual_seed(seed))
        _close(got, want)
    after = cudagraph.counts()
    assert after["captures"] - before["captures"] == 1
    assert after["replays"] - before["replays"] == 3


def test_outputs_are_copies_that_the_next_replay_leaves_alone(cuda_graph_stand_in):
    alg = _alg("sharp-up", True)
    p0, t0 = fewshot.make_problem(TINY, dtype=torch.float64, seed=0)
    p1, t1 = fewshot.make_problem(TINY, dtype=torch.float64, seed=1)
    first = alg.meta_gradient(cross_entropy_loss, p0, t0)
    kept = {k: v.clone() for k, v in first.grad.items()}
    alg.meta_gradient(cross_entropy_loss, p1, t1)
    for k in kept:
        assert torch.equal(first.grad[k], kept[k])
    # nor does the caller's use of its result reach into the graph's buffers
    first.grad["head.bias"].add_(1.0)
    _close(alg.meta_gradient(cross_entropy_loss, p0, t0),
           _alg("sharp-up", False).meta_gradient(cross_entropy_loss, p0, t0))


def test_a_new_layout_or_configuration_captures_again(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    before = cudagraph.counts()["captures"]
    _alg("maml", True).meta_gradient(cross_entropy_loss, params, tasks)
    _alg("maml", True).meta_gradient(cross_entropy_loss, params, tasks)       # equal config: reused
    assert cudagraph.counts()["captures"] == before + 1
    _alg("sharp-low", True).meta_gradient(cross_entropy_loss, params, tasks)
    assert cudagraph.counts()["captures"] == before + 2
    p32 = {k: v.float() for k, v in params.items()}
    t32 = meta.Tasks(*({k: v.float() if v.is_floating_point() else v for k, v in part.items()}
                       for part in tasks))
    _alg("maml", True).meta_gradient(cross_entropy_loss, p32, t32)
    assert cudagraph.counts()["captures"] == before + 3
    bigger = fewshot.make_problem(fewshot.replace(TINY, meta_batch=3), dtype=torch.float64)
    got = _alg("maml", True).meta_gradient(cross_entropy_loss, *bigger)
    assert cudagraph.counts()["captures"] == before + 4
    _close(got, _alg("maml", False).meta_gradient(cross_entropy_loss, *bigger))


def test_the_cache_keeps_at_most_max_graphs(cuda_graph_stand_in, monkeypatch):
    monkeypatch.setattr(cudagraph, "MAX_GRAPHS", 2)
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    for name in ("maml", "sharp-low", "sharp-up"):
        _alg(name, True).meta_gradient(cross_entropy_loss, params, tasks)
    assert len(cudagraph._GRAPHS) == 2
    before = cudagraph.counts()["captures"]
    _alg("sharp-up", True).meta_gradient(cross_entropy_loss, params, tasks)   # still cached
    assert cudagraph.counts()["captures"] == before
    _alg("maml", True).meta_gradient(cross_entropy_loss, params, tasks)       # evicted first
    assert cudagraph.counts()["captures"] == before + 1


def test_cpu_tensors_are_refused_with_the_device_named():
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    with pytest.raises(ValueError, match="one CUDA device; they are on cpu"):
        _alg("maml", True).meta_gradient(cross_entropy_loss, params, tasks)


def test_differentiating_through_a_graphed_meta_gradient_is_refused(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    with pytest.raises(ValueError, match="constant meta-gradient"):
        _alg("maml", True).meta_gradient(cross_entropy_loss, params, tasks)


def test_cuda_graph_and_compile_are_exclusive():
    with pytest.raises(ValueError, match="choose one"):
        meta.SharpMAMLConfig(beta_low=0.1, cuda_graph=True, compile=True, task_batching="loop")


def test_a_failed_capture_caches_nothing_and_the_refusal_says_what_cannot_be_captured(
        cuda_graph_stand_in, monkeypatch):
    def refusing(fn, device):
        raise cudagraph.refused(RuntimeError("operation not permitted when stream is capturing"))
    monkeypatch.setattr(cudagraph, "_capture", refusing)
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    before = cudagraph.counts()["captures"]
    with pytest.raises(RuntimeError, match=r"could not capture .*operation not permitted.*"
                                           r"\.item\(\).*cuda_graph=False"):
        _alg("maml", True).meta_gradient(cross_entropy_loss, params, tasks)
    assert not cudagraph._GRAPHS and cudagraph.counts()["captures"] == before


def test_a_loss_made_anew_on_every_call_is_warned_about_once(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    alg = _alg("maml", True)
    with pytest.warns(RuntimeWarning, match="loss_fn objects") as seen:
        for _ in range(cudagraph.NEW_LOSS_WARNING + 2):
            alg.meta_gradient(lambda p, b: cross_entropy_loss(p, b), params, tasks)
    assert len([w for w in seen if "loss_fn objects" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # one function object: replays, no warning
        for _ in range(cudagraph.NEW_LOSS_WARNING + 2):
            alg.meta_gradient(cross_entropy_loss, params, tasks)


# ---------------------------------------------------------------------------
# MetaGradientGraph: the inputs adopted and read in place


def _graph(name, params, tasks, batching="loop"):
    return cudagraph.MetaGradientGraph(cross_entropy_loss, params, tasks,
                                       _alg(name, False, batching).config)


@pytest.mark.parametrize("name", ["maml", "sharp-both", "esharp"])
def test_an_in_place_graph_reads_the_adopted_tensors_as_they_are_at_each_call(
        cuda_graph_stand_in, name):
    """Written into in place (an optimiser's step, :meth:`load` from elsewhere), the adopted
    tensors give the eager meta-gradient at their new values; nothing is copied in their
    stead (a graph over copies would keep giving the first call's numbers)."""
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64, seed=0)
    graph = _graph(name, params, tasks)
    assert all(graph.params[k] is params[k] for k in params)
    assert all(a is b for a, b in zip(meta._leaves(graph.tasks), meta._leaves(tasks)))
    eager = _alg(name, False)
    before = cudagraph.counts()
    for seed in (0, 1, 2):
        p, t = fewshot.make_problem(TINY, dtype=torch.float64, seed=seed)
        with torch.no_grad():
            for k in params:
                params[k].copy_(p[k])                  # as an optimiser's in-place step
        graph.load(tasks=t)
        _close(graph(torch.Generator().manual_seed(seed)),
               eager.meta_gradient(cross_entropy_loss, p, t, generator=torch.Generator().manual_seed(seed)))
        assert torch.equal(tasks.query["x"], t.query["x"])   # load wrote into the adopted tensors
    after = cudagraph.counts()
    assert (after["captures"] - before["captures"], after["replays"] - before["replays"]) == (1, 3)


def test_load_skips_what_already_is_the_graphs_memory_and_checks_layouts(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    graph = _graph("maml", params, tasks)
    copied = []
    real = torch.Tensor.copy_
    views = {k: v.detach() for k, v in params.items()}          # new objects, same memory
    try:
        torch.Tensor.copy_ = lambda self, src, non_blocking=False: copied.append(1) or real(self, src, non_blocking)
        graph.load(params=views, tasks=tasks)
    finally:
        torch.Tensor.copy_ = real
    assert copied == []
    with pytest.raises(ValueError, match=r"load\(tasks=...\) needs the layout"):
        graph.load(tasks=fewshot.make_problem(fewshot.replace(TINY, meta_batch=3), dtype=torch.float64)[1])
    with pytest.raises(ValueError, match=r"load\(params=...\) needs the layout.*float32"):
        graph.load(params={k: v.float() for k, v in params.items()})


def test_an_in_place_graph_refuses_a_call_under_other_kernel_settings(cuda_graph_stand_in, monkeypatch):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    graph = _graph("maml", params, tasks)
    graph()
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", not torch.backends.cudnn.deterministic)
    with pytest.raises(ValueError, match="other kernel settings: cudnn deterministic (False|True) at capture, (True|False) now"):
        graph()


def test_an_in_place_graph_checks_its_inputs_when_made(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    with pytest.raises(ValueError, match="adapt_names"):
        cudagraph.MetaGradientGraph(cross_entropy_loss, params, tasks, meta.SharpMAMLConfig(
            beta_low=0.1, adapt_names=("nope",)))
    with pytest.raises(ValueError, match="constant meta-gradient"):
        _graph("maml", {k: v.clone().requires_grad_(True) for k, v in params.items()}, tasks)
    with pytest.raises(ValueError, match="SWP|generator"):
        _graph("esharp", params, tasks)()          # masks need a generator, as eagerly


def test_a_refused_in_place_capture_can_be_tried_again(cuda_graph_stand_in, monkeypatch):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    graph = _graph("maml", params, tasks)
    stand_in = cudagraph._capture

    def refusing(fn, device):
        raise cudagraph.refused(RuntimeError("operation not permitted when stream is capturing"))
    monkeypatch.setattr(cudagraph, "_capture", refusing)
    with pytest.raises(RuntimeError, match="could not capture"):
        graph()
    monkeypatch.setattr(cudagraph, "_capture", stand_in)
    _close(graph(), _alg("maml", False).meta_gradient(cross_entropy_loss, params, tasks))


def test_load_matches_entries_by_name_and_copies_nothing_unless_all_fit(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64, seed=0)
    graph = _graph("maml", params, tasks)
    p1, t1 = fewshot.make_problem(TINY, dtype=torch.float64, seed=1)
    graph.load(params=dict(reversed(list(p1.items()))))            # another order, same names
    assert all(torch.equal(params[k], p1[k]) for k in params)
    before = {k: v.clone() for k, v in params.items()}
    bad = fewshot.make_problem(fewshot.replace(TINY, meta_batch=3), dtype=torch.float64)[1]
    with pytest.raises(ValueError, match=r"load\(tasks=...\)"):
        graph.load(params=fewshot.make_problem(TINY, dtype=torch.float64, seed=2)[0], tasks=bad)
    assert all(torch.equal(params[k], before[k]) for k in params)  # the params were not half-loaded


def test_an_in_place_graph_keeps_its_own_containers(cuda_graph_stand_in):
    """Replacing an entry of the caller's dict neither frees a tensor the graph reads nor
    diverts load() from it."""
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64, seed=0)
    graph = _graph("maml", params, tasks)
    read = tasks.query["x"]
    tasks.query["x"] = torch.zeros_like(read)
    params["head.bias"] = torch.zeros_like(params["head.bias"])
    assert graph.tasks.query["x"] is read and graph.params["head.bias"] is not params["head.bias"]


def test_a_refused_call_draws_no_masks(cuda_graph_stand_in, monkeypatch):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    graph = _graph("esharp", params, tasks)
    graph(torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", not torch.backends.cudnn.deterministic)
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    with pytest.raises(ValueError, match="other kernel settings"):
        graph(gen)
    assert torch.equal(gen.get_state(), state)


def test_masks_are_drawn_into_the_graphs_buffers_when_the_generator_is_on_its_device(
        cuda_graph_stand_in, monkeypatch):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    graph = _graph("esharp", params, tasks)
    graph(torch.Generator().manual_seed(0))
    buffers = dict(graph._masks)
    copied = []
    real = cudagraph._copy_into
    monkeypatch.setattr(cudagraph, "_copy_into", lambda s, n: copied.append(
        sum(not cudagraph._same_memory(a, b) for a, b in cudagraph._pairs(s, n))) or real(s, n))
    got = graph(torch.Generator().manual_seed(1))
    assert copied == [0] and all(graph._masks[k] is buffers[k] for k in buffers)
    _close(got, _alg("esharp", False).meta_gradient(cross_entropy_loss, params, tasks,
                                                    generator=torch.Generator().manual_seed(1)))


def test_a_generator_on_the_current_cuda_device_counts_as_the_graphs_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    same = cudagraph._same_device
    assert same(torch.device("cuda"), torch.device("cuda:1"))
    assert not same(torch.device("cuda"), torch.device("cuda:0"))
    assert same(torch.device("cpu"), torch.device("cpu")) and not same("cpu", "cuda:1")


def test_compile_cannot_be_captured_in_an_in_place_graph(cuda_graph_stand_in):
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    cfg = meta.SharpMAMLConfig(beta_low=0.1, compile=True, task_batching="loop")
    with pytest.raises(ValueError, match="compile=True"):
        cudagraph.MetaGradientGraph(cross_entropy_loss, params, tasks, cfg)


def test_capture_stream_does_nothing_off_cuda():
    """Off CUDA the context yields no stream and touches no CUDA state (this machine may have none)."""
    with cudagraph.capture_stream("cpu") as stream:
        assert stream is None
    assert torch.ones(2).sum().item() == 2
