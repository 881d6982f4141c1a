"""The ``testbed`` command.

Every subcommand has ``--help``.  A bad value is reported in one line that
names it, and the exit status is 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields

from experiments.cliutil import (EXIT_USAGE, Parser, nonnegative_int, positive_float,
                                 positive_int)


def _add_demo(sub) -> None:
    from experiments.demo import ALGORITHMS, FAMILIES, DemoConfig
    d = {f.name: f.default for f in fields(DemoConfig)}
    p = sub.add_parser(
        "demo", help="MAML vs Sharp-MAML meta-gradients and losses on a synthetic family",
        description=(
            "Computes the meta-gradient of " + ", ".join(ALGORITHMS) + " at theta=0 on a "
            "synthetic task family (checking it against the closed form), then meta-trains "
            "each with plain SGD and prints the MAML objective F and ||grad F|| reached."))
    p.add_argument("--family", choices=FAMILIES, default=d["family"],
                   help="task family: quadratic (convex, constant Hessian) or tanh "
                        "(nonconvex tanh-link regression); default %(default)s")
    p.add_argument("--dim", type=positive_int, default=d["dim"], help="parameter dimension d (default %(default)s)")
    p.add_argument("--tasks", type=positive_int, default=d["tasks"], help="number of tasks M (default %(default)s)")
    p.add_argument("--inner-steps", type=positive_int, default=d["inner_steps"],
                   help="fine-tuning steps N (default %(default)s)")
    p.add_argument("--beta-low", type=positive_float, default=d["beta_low"],
                   help="fine-tuning step size beta_low (default %(default)s)")
    p.add_argument("--beta-up", type=positive_float, default=d["beta_up"],
                   help="meta step size beta_up of plain SGD (default %(default)s)")
    p.add_argument("--alpha-low", type=positive_float, default=d["alpha_low"],
                   help="lower radius alpha_low of sharp-low/both (default %(default)s)")
    p.add_argument("--alpha-up", type=positive_float, default=d["alpha_up"],
                   help="upper radius alpha_up of sharp-up/both (default %(default)s)")
    p.add_argument("--iterations", type=positive_int, default=d["iterations"],
                   help="meta-iterations T (default %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=d["seed"], help="seed of the family (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from experiments.demo import DemoConfig, format_table, run, to_dict
    config = DemoConfig(
        family=args.family, dim=args.dim, tasks=args.tasks, inner_steps=args.inner_steps,
        beta_low=args.beta_low, beta_up=args.beta_up, alpha_low=args.alpha_low,
        alpha_up=args.alpha_up, iterations=args.iterations, seed=args.seed)
    rows = run(config)
    print(json.dumps(to_dict(config, rows), indent=2) if args.json else format_table(config, rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="testbed",
        description="Sharp-MAML testbed: theory checks, synthetic studies and few-shot "
                    "benchmarks for Sharp-MAML (Abbas et al., ICML 2022) and the MAML family.")
    from testbed import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    _add_demo(sub)
    __import__("experiments.fewshot.commands", fromlist=["register"]).register(sub)
    from experiments.claims.commands import register as register_verify
    from experiments.claims.commands import register_proofs
    register_verify(sub)
    register_proofs(sub)
    from experiments.bench.commands import register as register_bench
    register_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # every library check raises ValueError naming the bad value
        print(f"testbed {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as err:  # sizes too large for this machine (numpy names the amount)
        print(f"testbed {args.command}: error: out of memory: {err or 'an allocation failed'}; "
              "ask for smaller sizes", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # an unwritable --out, a missing file: the message names the path
        print(f"testbed {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:  # SIGINT; a command may re-raise SIGTERM with its own status
        print(f"testbed {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_status", 130)


if __name__ == "__main__":
    sys.exit(main())
