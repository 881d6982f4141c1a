"""``testbed verify``: the claim registry from the command line."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from experiments.cliutil import nonnegative_float, nonnegative_int, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="check the paper's claims numerically and write a report",
        description=(
            "Runs the claim registry (Lemma 1, eq. 30, Lemmas 2-5, Theorem 1 rates, outside "
            "Theorem 1's conditions, multi-step MAML) on synthetic task families and writes "
            "report.md, report.json (schema: experiments/claims/report_schema.json) and PNG plots. "
            "A claim the paper gets wrong is reported as 'fails' with its counterexample; that "
            "is a finding, and the exit status is still 0."))
    p.add_argument("--quick", action="store_true",
                   help="small sizes (about a minute on 2 cores) instead of the full budget")
    p.add_argument("--only", nargs="+", metavar="ID",
                   help="run only these claim ids or prefixes (e.g. lemma1 thm1.rate.maml)")
    p.add_argument("--out", type=Path, default=Path("verify-report"),
                   help="output folder (default %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="base seed (default %(default)s)")
    p.add_argument("--list", action="store_true", help="list the claim ids and exit")
    p.set_defaults(func=_run)


def register_proofs(sub) -> None:
    p = sub.add_parser(
        "proofs", help="check every proof step of Appendices B-D and write the table",
        description=(
            "Checks each transcribed proof step of the Sharp-MAML paper (Lemma 1, Lemmas 2-5, "
            "Theorem 3, D.1, D.2, Theorem 2 vs 3): identities by sympy, inequalities by sympy or "
            "a counterexample search (seeded sweep, hypothesis, Nelder-Mead, confirmed at 60 and "
            "120 mpmath digits). Writes proofs.md and proofs.json. A false step is a finding; "
            "the exit status is still 0."))
    p.add_argument("--out", type=Path, default=Path("proofs-report"),
                   help="output folder (default %(default)s)")
    p.add_argument("--budget", choices=("quick", "full"), default="quick",
                   help="search effort per step (default %(default)s)")
    p.add_argument("--only", nargs="+", metavar="ID", help="step ids or prefixes (e.g. proof.thm3)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="forked worker processes; results do not depend on it (default %(default)s)")
    # proofs_check (sympy) is not imported to build the parser: --help stays fast; a test keeps
    # these defaults equal to QUICK.step_seconds and FULL.step_seconds
    p.add_argument("--step-timeout", type=nonnegative_float, default=None, metavar="SECONDS",
                   help="wall-clock limit on one step, in seconds; a step still running then is "
                        "stopped and reported 'timed out' (neither proved nor refuted), and the run "
                        "goes on. 0: no limit (default: the budget's, quick 60 s, full 300 s)")
    p.set_defaults(func=_run_proofs)


def _run_proofs(args: argparse.Namespace) -> int:
    from collections import Counter

    from proofs_check import FULL, QUICK, TIMED_OUT, all_steps, run_all
    from proofs_check.report import with_step_limit

    known = [s.id for s in all_steps()]
    unknown = [o for o in args.only or [] if not any(k == o or k.startswith(o + ".") for k in known)]
    if unknown:
        raise ValueError(f"unknown step id(s) {', '.join(map(repr, unknown))}")
    budget = with_step_limit(FULL if args.budget == "full" else QUICK, args.step_timeout)
    args.out.mkdir(parents=True, exist_ok=True)   # an unwritable --out fails before any work
    results = run_all(budget, args.only, args.workers, out_dir=args.out)   # rewritten after every step
    md = args.out / "proofs.md"
    counts = ", ".join(f"{n} {v}" for v, n in Counter(r.verdict for r in results).items())
    print(f"{len(results)} steps: {counts}. Table: {md}")
    for r in results:
        if r.verdict == "false":
            print(f"  {r.step_id} ({r.location}): false")
        elif r.verdict == TIMED_OUT:
            print(f"  {r.step_id} ({r.location}): timed out, {r.detail}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from experiments.claims import REGISTRY, select, verify

    if args.list:
        for c in select(args.only):
            print(f"{c.id}\t{c.reference}")
        return 0
    select(args.only)  # unknown ids fail before any work
    args.out.mkdir(parents=True, exist_ok=True)   # so does an unwritable --out
    command = "testbed " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "testbed verify"
    rep = verify(args.out, quick=args.quick, only=args.only, seed=args.seed, command=command)
    counts = ", ".join(f"{v} {k}" for k, v in rep["counts"].items())
    print(f"{len(rep['claims'])} of {len(REGISTRY)} claims checked in {rep['runtime_seconds']:.1f} s: "
          f"{counts}. Report: {args.out / 'report.md'}")
    for cid, e in rep["claims"].items():
        if e["verdict"] != "holds":
            print(f"  {cid}: {e['verdict']}" + (f" ({e['condition']})" if e["condition"] else ""))
    return 0
