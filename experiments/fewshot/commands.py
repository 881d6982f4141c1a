"""The ``testbed train``, ``testbed eval`` and ``testbed landscape`` subcommands.

``register(sub)`` adds them to the ``testbed`` parser's subparsers (their parser class is
inherited, so a bad value prints one line naming it and exits with status 2).  Errors found
later (a missing checkpoint, a bad source spec, a diverged run) are ``ValueError``s, which
``experiments.cli.main`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from experiments.cliutil import nonnegative_int, positive_float, positive_int, thread_count
from experiments.data import DATA_ENV, SPEC_FORMS
from experiments.fewshot.common import PRECISIONS
from experiments.fewshot.config import TrainConfig
from testbed.algorithms import NAMES

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _with_default(name: str, text: str) -> str:
    value = _DEFAULTS[name]
    return text if value is None else f"{text} (default {value})"


# TrainConfig field -> (type, help).  Defaults come from TrainConfig, never written here.
_TRAIN_OPTIONS = {
    "algorithm": (str, "algorithm: " + ", ".join(NAMES)),
    "source": (str, "data spec: " + ", ".join(SPEC_FORMS) + "; meta-training uses part train"),
    "image_size": (positive_int, "image side in pixels (>= 16); default: the source's (Omniglot 28)"),
    "ways": (positive_int, "classes per task N, >= 2 (MAML's 5-way 1-shot Omniglot)"),
    "shots": (positive_int, "support images per class K (MAML's 5-way 1-shot Omniglot)"),
    "queries": (positive_int, "query images per class in meta-training (Sharp-MAML: 15)"),
    "hidden": (positive_int, "filters per conv layer of Conv-4 (Sharp-MAML Sec. 5.1; MAML's Omniglot num_filters)"),
    "inner_steps": (positive_int, "fine-tuning steps N in meta-training (MAML 5-way Omniglot; Sharp-MAML App. E)"),
    "beta_low": (positive_float, "fine-tuning step size beta_low, the inner learning rate (MAML 5-way Omniglot update_lr)"),
    "alpha_low": (positive_float, "lower radius alpha_low (sharp-low/both, *anil, esharp*); default 0.05"),
    "alpha_up": (positive_float, "upper radius alpha_up (sharp-up/both); default 0.05"),
    "swp_keep": (positive_float, "ESAM SWP keep probability xi in (0, 1] (esharp*); default 0.5"),
    "sds_fraction": (positive_float, "ESAM SDS fraction mu in (0, 1] (esharp*); default 0.5"),
    "sam_alpha": (positive_float, "SAM radius of the sam (ERM) baseline; default 0.05"),
    "meta_batch": (positive_int, "tasks per meta-update M (MAML 5-way Omniglot meta_batch_size)"),
    "meta_lr": (positive_float, "Adam learning rate of the meta-update (Sharp-MAML Sec. 5.1; MAML meta_lr)"),
    "iterations": (positive_int, "meta-iterations (MAML 5-way Omniglot metatrain_iterations)"),
    "seed": (nonnegative_int, "seed of the initial parameters and of the training episodes"),
    "device": (str, "torch device: cpu or cuda[:k]"),
    "threads": (thread_count, "torch threads for this run, at most 4 per core; default: torch's choice"),
    "task_batching": (str, "loop (task after task), vmap (vectorised over tasks) or auto "
                           "(loop on CPU, vmap on CUDA)"),
    "precision": (str, "float32; bf16 (torch.autocast with bfloat16: products in bfloat16, "
                       "parameters and updates in float32; slow on CPUs without bfloat16); "
                       "tf32 (CUDA tensor cores)"),
    "checkpoint_every": (positive_int, "write OUT/checkpoint.pt every this many iterations and at the end (MAML SAVE_INTERVAL)"),
    "log_every": (positive_int, "one OUT/log.jsonl line (loss, batch accuracy) every this many iterations"),
    "val_every": (nonnegative_int, "validate on part val every this many iterations (0: never)"),
    "val_episodes": (positive_int, "episodes per validation"),
    "eval_episodes": (nonnegative_int, "test episodes after training, 0 skips the test (MAML NUM_TEST_POINTS)"),
    "eval_inner_steps": (positive_int, "fine-tuning steps at meta-test (MAML test_num_updates, Omniglot)"),
    "eval_queries": (positive_int, "query images per class at meta-test; default: --queries"),
    "eval_seed": (nonnegative_int, "seed of the validation and test episodes"),
    "out": (str, "run directory: checkpoint.pt, log.jsonl, results.json"),
}


def _add_data_root(p: argparse.ArgumentParser, **default) -> None:
    p.add_argument("--data-root", metavar="DIR", **default,
                   help=f"directory holding omniglot/ (default ${DATA_ENV}, else ../shared/data)")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="meta-train Conv-4 on few-shot episodes (MAML, Sharp-MAML and relatives)",
        description=(
            "Meta-trains Conv-4 (4 x [3x3 conv, batch norm with batch statistics, ReLU, 2x2 "
            "max-pool], linear head) with the chosen algorithm and Adam, writing "
            "OUT/checkpoint.pt atomically, OUT/log.jsonl and OUT/results.json, then tests on "
            "part test. Defaults: MAML's 5-way 1-shot Omniglot set-up with Sharp-MAML's 15 "
            "queries per class. --resume continues a run exactly where its last checkpoint "
            "stopped; pass the same options (or none: they are read from the checkpoint)."),
        argument_default=argparse.SUPPRESS)
    for name, (kind, text) in _TRAIN_OPTIONS.items():
        extra = {"choices": NAMES} if name == "algorithm" else {}
        if name == "task_batching":
            extra = {"choices": ("auto", "loop", "vmap")}
        if name == "precision":
            extra = {"choices": PRECISIONS}
        p.add_argument(_option(name), type=kind, help=_with_default(name, text), **extra)
    p.add_argument("--first-order", action="store_true",
                   help="drop the Hessian term of eq. (10) (first-order meta-gradient)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="keep each fine-tuning step's point, not its graph, and recompute the "
                        "step in the backward sweep: the same meta-gradient with memory for one "
                        "inner step instead of --inner-steps (about one more forward and backward "
                        "per step)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction,
                   help="CUDA only: capture each meta-gradient in one CUDA graph on the first "
                        "iteration and replay it on the others (same numbers, without launching "
                        "thousands of small kernels per iteration; testbed bench fewshot "
                        "--cuda-graph measures the gain); --no-cuda-graph turns it off when "
                        "resuming such a run elsewhere (default: off)")
    _add_data_root(p)
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue from OUT/checkpoint.pt (its training settings must match)")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress line on stderr")
    p.add_argument("--json", action="store_true", default=False, help="print results.json to stdout")
    p.set_defaults(func=_run_train)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the defaults (or the checkpoint's config on --resume) and given options."""
    from experiments.fewshot.checkpoint import CHECKPOINT_NAME, load_checkpoint
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    out = Path(given.get("out", _DEFAULTS["out"]))
    if args.resume and (out / CHECKPOINT_NAME).is_file():
        # merged before validation: a run trained on cuda resumes here with --device cpu
        return TrainConfig.from_dict({**load_checkpoint(out / CHECKPOINT_NAME)["config"], **given})
    return TrainConfig(**given)


def _run_train(args: argparse.Namespace) -> int:
    from experiments.fewshot.common import keep_freed_memory
    from experiments.fewshot.train import RESULTS_NAME, run
    config = _train_config(args)
    keep_freed_memory()
    try:
        # SIGINT/SIGTERM: TrainingInterrupted (a KeyboardInterrupt) names the checkpoint it
        # saved; experiments.cli prints it and exits with its status, 130 or 143
        result = run(config, resume=args.resume, progress=None if args.quiet else sys.stderr)
    except OSError as error:  # unwritable --out and the like: one line, exit 2
        raise ValueError(str(error)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
        return 0
    rate = "n/a" if result.it_per_s is None else f"{result.it_per_s:.2f}"
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    print(f"{config.algorithm}: {result.iterations} iterations, {rate} it/s, "
          f"final meta-loss {loss}; results in {Path(config.out) / RESULTS_NAME}")
    if result.test is not None:
        print(f"test accuracy {result.test}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="mean test accuracy of a checkpoint with a 95%% confidence interval",
        description=(
            "Adapts the checkpoint's meta-parameters to EPISODES episodes with the trained "
            "algorithm's own fine-tuning (Algorithm.adapt) and prints the mean query accuracy "
            "+- 1.96 * std / sqrt(EPISODES), std with ddof=1. Batch norm uses each set's own "
            "statistics (transductive, as MAML). The same seed gives the same number."))
    p.add_argument("checkpoint", help="a checkpoint.pt, or the run directory holding it")
    p.add_argument("--source", default=None,
                   help="data spec (" + ", ".join(SPEC_FORMS) + "); default: the checkpoint's")
    p.add_argument("--part", choices=("train", "val", "test"), default="test",
                   help="split part the episodes come from (default %(default)s)")
    p.add_argument("--episodes", type=positive_int, default=600,
                   help="number of test episodes (default %(default)s, as MAML)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the episodes (default %(default)s)")
    p.add_argument("--inner-steps", type=positive_int, default=None,
                   help="fine-tuning steps per episode (default: the checkpoint's --eval-inner-steps, 10)")
    p.add_argument("--queries", type=positive_int, default=None,
                   help="query images per class (default: the checkpoint's)")
    _add_data_root(p, default=None)
    _add_device(p)
    p.add_argument("--json", action="store_true", help="print JSON (with --per-episode, every accuracy)")
    p.add_argument("--per-episode", action="store_true", help="include per-episode accuracies in --json")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=_run_eval)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="torch device, cpu or cuda[:k] (default: the checkpoint's if usable here, "
                        "else cpu, said on stderr)")


def _run_eval(args: argparse.Namespace) -> int:
    from experiments.fewshot.evaluate import evaluate_checkpoint
    result = evaluate_checkpoint(args.checkpoint, source=args.source, part=args.part,
                                 episodes=args.episodes, seed=args.seed, inner_steps=args.inner_steps,
                                 queries=args.queries, data_root=args.data_root, device=args.device,
                                 progress=None if args.quiet else sys.stderr, notes=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(per_episode=args.per_episode), indent=2, allow_nan=False))
    else:
        print(str(result))
    return 0


def _add_landscape(sub) -> None:
    from experiments.fewshot.landscape import LandscapeConfig
    d = {f.name: f.default for f in fields(LandscapeConfig)}
    p = sub.add_parser(
        "landscape", help="1-D or 2-D loss landscape of one task (Li et al. 2018 directions)",
        description=(
            "Plots the post-adaptation query loss of one task as the meta-parameters move along "
            "filter-normalised random directions (each filter rescaled to the norm of the "
            "corresponding filter of the weights; batch-norm parameters and biases fixed), "
            "as Figures 1 and 4 of Abbas et al. 2022. Writes a PNG and the numbers as JSON beside it."))
    p.add_argument("checkpoint", help="a checkpoint.pt, or the run directory holding it")
    p.add_argument("--out", required=True, help="PNG file to write (the numbers go to the same name .json)")
    p.add_argument("--2d", dest="two_d", action="store_true", help="2-D contour plot instead of a 1-D curve")
    p.add_argument("--points", type=positive_int, default=d["points"],
                   help="grid points per axis, >= 2 (default %(default)s)")
    p.add_argument("--span", type=positive_float, default=d["span"],
                   help="the grid covers [-SPAN, SPAN] (default %(default)s)")
    p.add_argument("--source", default=None, help="data spec; default: the checkpoint's")
    p.add_argument("--part", choices=("train", "val", "test"), default=d["part"],
                   help="part the task comes from (default %(default)s)")
    p.add_argument("--episode", type=nonnegative_int, default=d["episode"],
                   help="which evaluation episode (default %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=d["seed"],
                   help="seed of the episode and the directions (default %(default)s)")
    p.add_argument("--inner-steps", type=positive_int, default=None,
                   help="fine-tuning steps (default: the checkpoint's --eval-inner-steps)")
    _add_data_root(p, default=None)
    _add_device(p)
    p.set_defaults(func=_run_landscape)


def _run_landscape(args: argparse.Namespace) -> int:
    from experiments.fewshot.landscape import LandscapeConfig, plot, plot_path, run

    plot_path(args.out)   # a bad --out fails before the landscape is computed
    config = LandscapeConfig(checkpoint=args.checkpoint, source=args.source, part=args.part,
                             episode=args.episode, seed=args.seed, points=args.points, span=args.span,
                             two_d=args.two_d, inner_steps=args.inner_steps, data_root=args.data_root,
                             device=args.device)
    result = run(config, notes=sys.stderr)
    try:
        path = plot(result, args.out)
    except OSError as error:
        raise ValueError(str(error)) from None
    low = min(min(row) if isinstance(row, tuple) else row for row in result.losses)
    print(f"wrote {path} and {path.with_suffix('.json')} (min loss {low:.4f})")
    return 0


def register(sub) -> None:
    """Add ``train``, ``eval`` and ``landscape`` to the ``testbed`` subparsers ``sub``."""
    _add_train(sub)
    _add_eval(sub)
    _add_landscape(sub)
