"""Variants are configurations of one code path; each reduces to the others where it should."""

import math

import pytest
import torch

from synthetic import QuadraticFamily, TanhRegressionFamily
from testbed import SharpMAMLConfig, Tasks, adapt, algorithms, meta_gradient, sam_gradient
from testbed import params as P
from testbed.meta import _swp_masks, _top_fraction_weights
from testbed.optim import MetaOptimizer, sgd_update
from tolerances import CLOSED_FORM, DISTINCT, VMAP_VS_LOOP

TOL = CLOSED_FORM[torch.float64]
HEAD = ("head.w", "head.b")


def mlp_loss(params, batch):
    """A two-layer regression net: body (body.w, body.b), head (head.w, head.b); per-sample losses."""
    h = torch.tanh(batch["x"] @ params["body.w"] + params["body.b"])
    pred = h @ params["head.w"] + params["head.b"]
    return 0.5 * (pred - batch["y"]) ** 2


def mlp_setup(tasks=3, n=8, d=3, hidden=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    params = {"body.w": r(d, hidden) * 0.5, "body.b": r(hidden) * 0.1,
              "head.w": r(hidden) * 0.5, "head.b": r(()) * 0.1}
    batch = lambda: {"x": r(tasks, n, d), "y": r(tasks, n)}  # noqa: E731
    return params, Tasks(batch(), batch())


def reference_maml(loss_fn, params, tasks, beta, steps):
    """MAML written the usual way: a per-task loop with autograd.grad(create_graph=True)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    m = next(iter(tasks.support.values())).shape[0]
    total = 0.0
    for i in range(m):
        s = {k: v[i] for k, v in tasks.support.items()}
        q = {k: v[i] for k, v in tasks.query.items()}
        fast = dict(leaves)
        for _ in range(steps):
            grads = torch.autograd.grad(loss_fn(fast, s).mean(), list(fast.values()), create_graph=True)
            fast = {k: v - beta * g for (k, v), g in zip(fast.items(), grads)}
        total = total + loss_fn(fast, q).mean()
    grads = torch.autograd.grad(total / m, list(leaves.values()))
    return dict(zip(leaves, grads))


@pytest.mark.parametrize("steps", [1, 3])
def test_zero_radii_match_an_independent_maml_implementation(steps):
    params, tasks = mlp_setup()
    got = meta_gradient(mlp_loss, params, tasks, SharpMAMLConfig(beta_low=0.1, inner_steps=steps,
                                                                alpha_low=0.0, alpha_up=0.0)).grad
    want = reference_maml(mlp_loss, params, tasks, 0.1, steps)
    assert max((got[k] - want[k]).abs().max().item() for k in got) <= TOL


def test_zero_radii_reproduce_maml_bit_for_bit_over_a_training_run():
    family = TanhRegressionFamily.random(4, 3, seed=5)
    maml = algorithms.make("maml", beta_low=0.2, inner_steps=2)
    zero_sharp = SharpMAMLConfig(beta_low=0.2, inner_steps=2, alpha_low=0.0, alpha_up=0.0)
    a = b = family.params(torch.zeros(3, dtype=torch.float64))
    for t in range(15):
        tasks = family.tasks()
        ga = maml.meta_gradient(family.loss, a, tasks).grad
        gb = meta_gradient(family.loss, b, tasks, zero_sharp).grad
        a, b = sgd_update(a, ga, 0.3), sgd_update(b, gb, 0.3)
        assert torch.equal(a["theta"], b["theta"]), f"diverged at iteration {t}"


def test_sharp_up_and_sharp_low_are_sharp_both_with_one_radius_zero():
    family = TanhRegressionFamily.random(4, 3, seed=6)
    theta = family.params(torch.full((3,), 0.2, dtype=torch.float64))
    tasks = family.tasks()

    def grad_of(cfg):
        return meta_gradient(family.loss, theta, tasks, cfg).grad["theta"]

    up = algorithms.make("sharp-up", beta_low=0.2, alpha_up=0.1).config
    low = algorithms.make("sharp-low", beta_low=0.2, alpha_low=0.1).config
    assert up == SharpMAMLConfig(beta_low=0.2, alpha_low=0.0, alpha_up=0.1)
    assert low == SharpMAMLConfig(beta_low=0.2, alpha_low=0.1, alpha_up=0.0)
    assert torch.equal(grad_of(up), grad_of(SharpMAMLConfig(beta_low=0.2, alpha_low=0.0, alpha_up=0.1)))
    maml = grad_of(SharpMAMLConfig(beta_low=0.2))
    for g in (grad_of(up), grad_of(low)):  # both really perturb
        assert (g - maml).abs().max().item() > DISTINCT


def test_anil_never_changes_body_parameters_during_adaptation():
    params, tasks = mlp_setup()
    alg = algorithms.make("anil", beta_low=0.5, inner_steps=3, head_names=HEAD)
    support = {k: v[0] for k, v in tasks.support.items()}
    adapted = alg.adapt(mlp_loss, params, support)
    for k in ("body.w", "body.b"):
        assert torch.equal(adapted[k], params[k])
    assert all((adapted[k] - params[k]).abs().max().item() > DISTINCT for k in HEAD)
    g = alg.meta_gradient(mlp_loss, params, tasks).grad
    assert g["body.w"].abs().max().item() > DISTINCT  # the body still learns in the outer loop


def test_sharp_anil_perturbs_only_the_head():
    params, tasks = mlp_setup()
    anil = algorithms.make("anil", beta_low=0.5, head_names=HEAD)
    sharp = algorithms.make("sharp-anil", beta_low=0.5, alpha_low=0.2, head_names=HEAD)
    support = {k: v[0] for k, v in tasks.support.items()}
    a = sharp.adapt(mlp_loss, params, support)
    b = anil.adapt(mlp_loss, params, support)
    assert all(torch.equal(a[k], params[k]) for k in ("body.w", "body.b"))
    assert (a["head.w"] - b["head.w"]).abs().max().item() > DISTINCT


@pytest.mark.parametrize("anil", [False, True])
def test_esam_with_keep_one_and_fraction_one_reduces_to_sharp_low(anil):
    params, tasks = mlp_setup()
    head = {"head_names": HEAD} if anil else {}
    low = algorithms.make("sharp-anil" if anil else "sharp-low", beta_low=0.3, inner_steps=2,
                          alpha_low=0.2, **head)
    esam = algorithms.make("esharp-anil" if anil else "esharp", beta_low=0.3, inner_steps=2,
                           alpha_low=0.2, swp_keep=1.0, sds_fraction=1.0, **head)
    gen = torch.Generator().manual_seed(0)
    a = low.meta_gradient(mlp_loss, params, tasks).grad
    b = esam.meta_gradient(mlp_loss, params, tasks, generator=gen).grad
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= TOL
    half = algorithms.make("esharp", beta_low=0.3, inner_steps=2, alpha_low=0.2,
                           swp_keep=0.5, sds_fraction=0.5)
    c = half.meta_gradient(mlp_loss, params, tasks, generator=gen).grad
    assert max((a[k] - c[k]).abs().max().item() for k in a) > DISTINCT


def test_sds_keeps_the_samples_whose_loss_rises_most():
    inc = torch.tensor([0.3, -1.0, 2.0, 0.1, 0.5])
    w = _top_fraction_weights(inc, 0.4)
    assert torch.equal(w, torch.tensor([0.0, 0.0, 0.5, 0.0, 0.5]))
    assert torch.allclose(_top_fraction_weights(inc, 1.0), torch.full((5,), 0.2))
    assert _top_fraction_weights(inc, 1e-6).count_nonzero().item() == 1


def test_sds_step_uses_only_the_selected_samples():
    """N = 1, mu = 1/2: the inner step's gradient at theta + eps_m is over the selected half only."""
    fam = TanhRegressionFamily.random(1, 3, n_support=6, seed=7)
    theta = torch.tensor([0.4, -0.3, 0.8], dtype=torch.float64)
    cfg = SharpMAMLConfig(beta_low=0.5, alpha_low=0.3, sds_fraction=0.5)
    support = {"x": fam.x[0], "y": fam.y[0]}
    got = adapt(fam.loss, fam.params(theta), support, cfg)["theta"]
    eps = 0.3 * fam.gradient(theta)[0] / fam.gradient(theta)[0].norm()
    rise = fam.loss({"theta": theta + eps}, support) - fam.loss({"theta": theta}, support)
    keep = torch.topk(rise, 3).indices
    sub = TanhRegressionFamily(fam.x[:, keep], fam.y[:, keep], fam.x_val, fam.y_val)
    want = theta - 0.5 * sub.gradient(theta + eps)[0]
    assert (got - want).abs().max().item() <= TOL
    everything = theta - 0.5 * fam.gradient(theta + eps)[0]
    assert (got - everything).abs().max().item() > DISTINCT


def test_swp_masks_are_seeded_and_kill_coordinates():
    params, tasks = mlp_setup()
    alg = algorithms.make("esharp", beta_low=0.3, alpha_low=0.2, swp_keep=0.5)
    g1 = alg.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(3)).grad
    g2 = alg.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(3)).grad
    g3 = alg.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(4)).grad
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert any(not torch.equal(g1[k], g3[k]) for k in g1)
    with pytest.raises(ValueError, match="generator"):
        alg.meta_gradient(mlp_loss, params, tasks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_swp_masks_draw_what_a_filled_probability_tensor_draws(dtype):
    """The masks are drawn from one expanded probability (no tensor of their size): the same
    draws as from a filled tensor, so a seed's masks are what they were before that change,
    and drawing into given buffers (a CUDA graph's) changes nothing either."""
    params = {"w": torch.zeros(7, 5, dtype=dtype), "b": torch.zeros(5, dtype=dtype)}
    cfg = SharpMAMLConfig(beta_low=0.1, inner_steps=3, alpha_low=0.2, swp_keep=0.3)
    got = _swp_masks(cfg, params, 4, torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    want = {n: torch.bernoulli(torch.full((4, 3, *p.shape), 0.3, dtype=dtype), generator=gen)
            for n, p in params.items()}
    assert all(torch.equal(got[n], want[n]) for n in params)
    buffers = {n: torch.empty_like(v) for n, v in want.items()}
    into = _swp_masks(cfg, params, 4, torch.Generator().manual_seed(11), into=buffers)
    assert all(into[n] is buffers[n] and torch.equal(buffers[n], want[n]) for n in params)


@pytest.mark.parametrize("name", ["maml", "fomaml", "sharp-low", "sharp-up", "sharp-both", "anil",
                                  "sharp-anil", "esharp", "esharp-anil"])
def test_vmap_and_loop_over_tasks_agree(name):
    params, tasks = mlp_setup()
    kw = {"head_names": HEAD} if "anil" in name else {}
    alg = algorithms.make(name, beta_low=0.3, inner_steps=2, **kw)
    loop = algorithms.with_config(alg, task_batching="loop")
    a = alg.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(1))
    b = loop.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(1))
    tol = VMAP_VS_LOOP[torch.float64]
    assert max((a.grad[k] - b.grad[k]).abs().max().item() for k in a.grad) <= tol
    assert abs(a.loss.item() - b.loss.item()) <= tol


def test_meta_gradient_never_mutates_its_inputs():
    params, tasks = mlp_setup()
    before = {k: (v.clone(), v._version) for k, v in params.items()}
    alg = algorithms.make("sharp-both", beta_low=0.3, inner_steps=2)
    alg.meta_gradient(mlp_loss, params, tasks)
    assert all(torch.equal(params[k], v) and params[k]._version == ver for k, (v, ver) in before.items())


def test_sam_on_erm_is_the_gradient_at_the_ascent_point():
    fam = QuadraticFamily.random(3, 4, seed=8)
    theta = torch.linspace(-1, 1, 4, dtype=torch.float64)

    def erm_grad(t):
        return 0.5 * (fam.gradient(t, "support") + fam.gradient(t, "query")).mean(0)

    g = erm_grad(theta)
    want = erm_grad(theta + 0.3 * g / g.norm())
    got = sam_gradient(fam.loss, fam.params(theta), fam.tasks(), 0.3).grad["theta"]
    assert (got - want).abs().max().item() <= TOL
    plain = sam_gradient(fam.loss, fam.params(theta), fam.tasks(), 0.0).grad["theta"]
    assert (plain - g).abs().max().item() <= TOL


def test_zero_gradient_gives_zero_perturbation_not_nan():
    fam = QuadraticFamily.random(2, 3, val_shift=0.0, seed=9)
    c = fam.c[0]  # the minimiser of task 0: its inner gradient is exactly zero
    one = QuadraticFamily(fam.A[:1], fam.c[:1], fam.A_val[:1], fam.c_val[:1])
    cfg = SharpMAMLConfig(beta_low=0.1, alpha_low=0.5, differentiate_perturbations=True)
    g = meta_gradient(one.loss, one.params(c), one.tasks(), cfg).grad["theta"]
    assert torch.isfinite(g).all()


def test_stochastic_oracle_is_unbiased_with_variance_sigma_squared():
    fam = QuadraticFamily.random(2, 4, sigma=0.5, seed=10)
    theta = torch.ones(4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(4000):
        b = {k: v[0] for k, v in fam.batch("support", gen).items()}
        draws.append(torch.func.grad(lambda p: fam.loss(p, b).mean())(fam.params(theta))["theta"])
    draws = torch.stack(draws)
    exact = fam.gradient(theta)[0]
    # mean within 5 standard errors; total variance within 10% of sigma^2
    assert ((draws.mean(0) - exact).abs() <= 5 * 0.5 / math.sqrt(4 * 4000)).all()
    assert abs(((draws - exact) ** 2).sum(1).mean().item() - 0.25) <= 0.025


def test_meta_optimizer_matches_torch_adam_and_leaves_inputs_alone():
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    grads = [{"w": torch.tensor([0.5, 0.1], dtype=torch.float64) * (i + 1)} for i in range(5)]
    opt = MetaOptimizer(params, "adam", lr=0.01)
    leaf = params["w"].clone().requires_grad_(True)
    ref = torch.optim.Adam([leaf], lr=0.01)
    for g in grads:
        new = opt.step(g)
        leaf.grad = g["w"].clone()
        ref.step()
    assert torch.equal(new["w"], leaf.detach())
    assert torch.equal(params["w"], torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert torch.equal(sgd_update(params, grads[0], 0.1)["w"], params["w"] - 0.1 * grads[0]["w"])


def test_meta_optimizer_state_round_trips():
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    g = {"w": torch.ones(3, dtype=torch.float64)}
    a = MetaOptimizer(params, "adam", lr=0.1)
    a.step(g)
    b = MetaOptimizer(params, "adam", lr=0.1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.step(g)["w"], b.step(g)["w"])


def test_normalized_handles_zero_and_scales_to_radius():
    z = {"a": torch.zeros(3), "b": torch.zeros(2, 2)}
    assert all(torch.equal(v, torch.zeros_like(v)) for v in P.normalized(z, 1.0).values())
    x = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    assert torch.isclose(P.global_norm(P.normalized(x, 2.0)), torch.tensor(2.0))


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("name", ["maml", "fomaml", "sharp-low", "sharp-up", "sharp-both", "anil",
                                  "sharp-anil", "esharp", "esharp-anil"])
def test_checkpointed_adjoint_sweep_gives_the_graph_meta_gradient(name, batching):
    params, tasks = mlp_setup()
    kw = {"head_names": HEAD} if "anil" in name else {}
    graph = algorithms.make(name, beta_low=0.3, inner_steps=3, task_batching=batching, **kw)
    ckpt = algorithms.with_config(graph, checkpoint=True)
    a = graph.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(1))
    b = ckpt.meta_gradient(mlp_loss, params, tasks, generator=torch.Generator().manual_seed(1))
    assert max((a.grad[k] - b.grad[k]).abs().max().item() for k in a.grad) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    if a.eps is not None:
        assert max((a.eps[k] - b.eps[k]).abs().max().item() for k in a.eps) <= TOL


def test_checkpoint_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="checkpoint=True"):
        SharpMAMLConfig(beta_low=0.1, alpha_up=0.1, checkpoint=True, differentiate_perturbations=True)
    with pytest.raises(ValueError, match="checkpoint=True applies"):
        algorithms.make("reptile", beta_low=0.1, checkpoint=True)


@pytest.mark.parametrize("name", ["maml", "sharp-both"])
def test_meta_gradient_stays_differentiable_inside_transforms(name):
    """The outermost gradient is taken by one plain backward; inside vmap (a batch of runs)
    or under an outer autograd graph it must still give the same numbers and stay
    differentiable."""
    params, tasks = mlp_setup()
    alg = algorithms.make(name, beta_low=0.3, inner_steps=2)
    runs = {k: torch.stack([v, v * 0.5]) for k, v in params.items()}
    batched = torch.func.vmap(lambda p: alg.meta_gradient(mlp_loss, p, tasks).grad)(runs)
    for r in range(2):
        one = alg.meta_gradient(mlp_loss, {k: v[r] for k, v in runs.items()}, tasks).grad
        assert max((batched[k][r] - one[k]).abs().max().item() for k in one) <= TOL
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    g = alg.meta_gradient(mlp_loss, leaves, tasks).grad
    (d,) = torch.autograd.grad(sum(v.sum() for v in g.values()), [leaves["head.b"]])
    assert torch.isfinite(d).all() and d.abs().item() > 0


@pytest.mark.parametrize("name", ["sharp-low", pytest.param("sharp-both", marks=pytest.mark.slow)])
def test_compiled_loop_gives_the_eager_meta_gradient(name):
    """torch.compile of the per-task graph path (one compile, ~20 s on a CPU) changes the
    schedule of the arithmetic, not the meta-gradient."""
    params, tasks = mlp_setup()
    eager = algorithms.make(name, beta_low=0.3, inner_steps=2, task_batching="loop")
    compiled = algorithms.with_config(eager, compile=True)
    a = eager.meta_gradient(mlp_loss, params, tasks)
    b = compiled.meta_gradient(mlp_loss, params, tasks)
    assert max((a.grad[k] - b.grad[k]).abs().max().item() for k in a.grad) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL


def test_compile_is_refused_off_the_per_task_graph_path():
    for bad in ({"task_batching": "vmap"}, {"task_batching": "loop", "checkpoint": True},
                {"task_batching": "loop", "hvp": "finite-difference"}):
        with pytest.raises(ValueError, match="compile=True"):
            SharpMAMLConfig(beta_low=0.1, compile=True, **bad)


def test_compile_mode_is_validated():
    with pytest.raises(ValueError, match="compile_mode"):
        SharpMAMLConfig(beta_low=0.1, compile=True, task_batching="loop", compile_mode="fastest")
