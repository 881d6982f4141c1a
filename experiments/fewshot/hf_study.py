"""HF-MAML on Conv-4: does its finite-difference Hessian term converge to MAML's?

HF-MAML (Fallah, Mokhtari & Ozdaglar 2020) replaces each Hessian-vector product of eq. (10)
by the central difference ``(grad L(theta + delta v) - grad L(theta - delta v)) / (2 delta)``,
whose error is O(delta^2) when the gradient is smooth (the registry's ``fallah.hf_accuracy``
measures that on smooth tasks).  Conv-4's gradient is not smooth: ReLU and max-pool make it
jump where a unit or a pooling winner changes, and autograd's Hessian-vector product sets the
second derivative there to 0 while a difference across the jump does not.  This study
measures the meta-gradient's relative error ``||g_HF - g_MAML|| / ||g_MAML||`` against the
difference step, on Conv-4 and on a smooth control with the same parameters (softplus
instead of ReLU, average- instead of max-pooling), per task and over the meta-batch.

    python -m experiments.fewshot.hf_study --out results/fewshot/hf_maml_conv4
"""

from __future__ import annotations

import json
import sys
from statistics import median
from pathlib import Path

import torch
import torch.nn.functional as F

from experiments.provenance import git_commit
from experiments.cliutil import Parser, comma_separated, positive_int, positive_int_list
from experiments.fewshot.model import conv4_forward
from testbed import Tasks, algorithms

DELTAS = (1e-2, 1e-3, 1e-4)


def _softplus_avg_pool(h: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.softplus(h), 2)


def smooth_conv4_forward(params, x: torch.Tensor) -> torch.Tensor:
    """Conv-4 with softplus and 2x2 average pooling: the same parameters, a smooth gradient."""
    return conv4_forward(params, x, squash=_softplus_avg_pool)


MODELS = {"conv4 (ReLU, max-pool)": conv4_forward,
          "smooth control (softplus, avg-pool)": smooth_conv4_forward}


def _loss(forward):
    def loss(params, batch):
        return F.cross_entropy(forward(params, batch["x"]), batch["y"], reduction="none")
    return loss


def _problem(hidden: int, tasks: int, seed: int, dtype: torch.dtype):
    from experiments.bench.fewshot import Setting, make_problem

    setting = Setting("omniglot-5w1s", 5, 1, 5, 28, 1, 1, tasks, 0.4, hidden)
    return make_problem(setting, dtype=dtype, seed=seed)


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


def relative_errors(hidden: int, tasks: int = 4, seeds: tuple[int, ...] = (0, 1, 2),
                    deltas: tuple[float, ...] = DELTAS, dtype: torch.dtype = torch.float64,
                    beta_low: float = 0.4) -> dict:
    """{model: {"meta-batch": {delta: [error per seed]}, "per task": {delta: [error per task]},
    "first order": [error per seed]}}: the last is FO-MAML's (no Hessian term at all), the
    reference an approximate Hessian term has to beat."""
    maml = algorithms.make("maml", beta_low=beta_low, task_batching="loop")
    fomaml = algorithms.make("fomaml", beta_low=beta_low, task_batching="loop")
    out: dict = {}
    for name, forward in MODELS.items():
        loss = _loss(forward)
        whole = {d: [] for d in deltas}
        per_task = {d: [] for d in deltas}
        first = []
        for seed in seeds:
            params, batch = _problem(hidden, tasks, seed, dtype)
            singles = [Tasks({k: v[i:i + 1] for k, v in batch.support.items()},
                             {k: v[i:i + 1] for k, v in batch.query.items()}) for i in range(tasks)]
            exact = _flat(maml.meta_gradient(loss, params, batch).grad)
            exact_t = [_flat(maml.meta_gradient(loss, params, t).grad) for t in singles]
            fo = _flat(fomaml.meta_gradient(loss, params, batch).grad)
            first.append(float((fo - exact).norm() / exact.norm()))
            for d in deltas:
                hf = algorithms.make("hf-maml", beta_low=beta_low, fd_delta=d, task_batching="loop")
                g = _flat(hf.meta_gradient(loss, params, batch).grad)
                whole[d].append(float((g - exact).norm() / exact.norm()))
                for t, e in zip(singles, exact_t):
                    gt = _flat(hf.meta_gradient(loss, params, t).grad)
                    per_task[d].append(float((gt - e).norm() / e.norm()))
        out[name] = {"meta-batch": whole, "per task": per_task, "first order": first}
    return out


def format_table(result: dict, hidden: int, dtype: str) -> str:
    deltas = list(next(iter(result.values()))["meta-batch"])
    lines = [f"HF-MAML against MAML, Conv-4 with {hidden} filters, Omniglot-sized 5-way 1-shot random "
             f"tasks, one inner step of 0.4, {dtype}: relative error of the meta-gradient "
             "(median over the meta-batches [min, max]; per task: median [min, max] over tasks)", "",
             "model | delta | meta-batch | per task", "---|---|---|---"]
    for name, r in result.items():
        for d in deltas:
            w, t = sorted(r["meta-batch"][d]), sorted(r["per task"][d])
            lines.append(f"{name} | {d:g} | {median(w):.2e} [{w[0]:.1e}, {w[-1]:.1e}] | "
                         f"{median(t):.2e} [{t[0]:.1e}, {t[-1]:.1e}]")
        f = sorted(r["first order"])
        lines.append(f"{name}, FO-MAML (no Hessian term) | - | {median(f):.2e} "
                     f"[{f[0]:.1e}, {f[-1]:.1e}] | -")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m experiments.fewshot.hf_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for hf_maml_conv4.json and .md")
    p.add_argument("--hidden", type=positive_int_list, default=(8, 32),
                   help="filters per conv layer, comma-separated (default 8,32)")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="random meta-batches per size (default 3)")
    p.add_argument("--dtypes", type=comma_separated(str, lambda v: v in ("float64", "float32"),
                                                    "float64 / float32"),
                   default=("float64", "float32"), help="comma-separated (default float64,float32)")
    args = p.parse_args(argv)
    commit = git_commit() or "unknown"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    results, tables = {}, []
    for dtype in args.dtypes:
        for hidden in args.hidden:
            print(f"hidden {hidden}, {dtype} ...", file=sys.stderr, flush=True)
            r = relative_errors(hidden, seeds=tuple(range(args.seeds)), dtype=getattr(torch, dtype))
            results[f"{hidden} filters, {dtype}"] = {
                m: {k: ({str(d): v for d, v in s.items()} if isinstance(s, dict) else s)
                    for k, s in x.items()} for m, x in r.items()}
            tables.append(format_table(r, hidden, dtype))
    command = "python -m experiments.fewshot.hf_study " + " ".join(
        argv if argv is not None else sys.argv[1:])
    meta = {"command": command, "git_commit": commit, "torch": torch.__version__}
    (out / "hf_maml_conv4.json").write_text(json.dumps({**meta, "results": results}, indent=1) + "\n")
    text = "\n\n".join(tables)
    (out / "hf_maml_conv4.md").write_text(f"`{command}` at commit `{commit}`, torch "
                                          f"{torch.__version__}\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
