"""``testbed bench``: benchmarks that print measured ratios (and save them with --out)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.cliutil import positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks: measured speed ratios",
        description="Benchmarks that print measured times and ratios. Suites: 'synthetic' runs "
                    "the claim registry's batched rate sweep against per-run loops doing the "
                    "same work (closed form one run at a time, and the torch.func core one run "
                    "and one iteration at a time), after checking that all three agree.")
    p.add_argument("suite", choices=("synthetic",), help="which benchmark")
    p.add_argument("--family", choices=("quadratic", "tanh"), default="quadratic",
                   help="task family of the sweep (default %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per setting (default %(default)s)")
    p.add_argument("--max-horizon", type=positive_int, default=200,
                   help="longest horizon T; the sweep uses T/4, T/2, T (default %(default)s)")
    p.add_argument("--out", type=Path, help="also write bench_synthetic.json and .md here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from experiments.bench import synthetic
    from experiments.claims.report import git_commit

    T = args.max_horizon
    if T < 4:
        raise ValueError(f"--max-horizon must be >= 4, got {T}")
    spec = replace(synthetic.default_spec(args.family), seeds=args.seeds,
                   horizons=(T // 4, T // 2, T))
    result = synthetic.run(spec)
    table = synthetic.format_table(result)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        import torch
        meta = {"command": f"testbed bench synthetic --family {args.family} --seeds {args.seeds} "
                           f"--max-horizon {T}", "git_commit": git_commit(), "torch": torch.__version__,
                "device": "cpu"}
        (args.out / "bench_synthetic.json").write_text(json.dumps({**meta, **result.to_dict()}, indent=1))
        (args.out / "bench_synthetic.md").write_text(
            f"`{meta['command']}` at commit `{meta['git_commit']}`, torch {meta['torch']}, CPU\n\n{table}\n")
    return 0
