"""The fine-tuning gradient by plain autograd equals torch.func's, first and second order."""

import torch

from experiments.bench import overhead
from testbed.meta import _step_grad


def _f(p):
    return (torch.tanh(p["w"] * p["x"]).sum() + (p["w"] ** 3).sum())


def test_plain_and_func_step_gradients_agree_and_stay_differentiable():
    theta = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([1.5, 0.2, -0.4], dtype=torch.float64)
    grads = {}
    for plain in (True, False):
        point = {"w": theta * 2.0, "x": x}            # a point computed from theta
        g = _step_grad(_f, point, plain)
        second = torch.autograd.grad(g["w"].sum(), theta)[0]   # differentiate through the step
        grads[plain] = (g["w"].detach(), g["x"].detach(), second)
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    # a point that does not require grad gives a gradient without a graph, as torch.func does
    g = _step_grad(_f, {"w": theta.detach(), "x": x}, True)
    assert not g["w"].requires_grad and g["w"].abs().sum() > 0


def test_overhead_bench_times_every_loop(capsys):
    assert overhead.main(["--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "core, loop:" in out and "autograd loop:" in out and " ms" in out
