"""Argument parsing shared by every ``testbed`` subcommand.

One-line errors naming the bad value, exit status 2, and typed parsers for
numbers with their allowed range.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``testbed demo: error: argument --dim: must be >= 1, got '0'``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _number(kind: Callable[[str], float], check: Callable[[float], bool], rule: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value
    parse.__name__ = rule
    return parse


positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")


def comma_separated(parse, ok, what: str):
    """An argparse type for ``"a,b,c"``: each entry ``parse``d and accepted by ``ok``."""
    def convert(text: str) -> tuple:
        try:
            values = tuple(parse(t.strip()) for t in text.split(","))
        except ValueError:
            values = ()
        if not values or not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}")
        return values
    return convert


def step_progress(i: int, n: int, text: str, seconds: float | None) -> None:
    """``[i/n] text`` on stderr for long work in steps: while a step runs (``seconds`` None)
    the line is rewritten in place on a terminal only; when it ends, a finished line with its
    time is printed everywhere (a log file keeps just those)."""
    if seconds is None:
        if sys.stderr.isatty():
            print(f"\r[{i}/{n}] {text}".ljust(78), end="", file=sys.stderr, flush=True)
        return
    print(f"\r[{i}/{n}] {text} ({seconds:.1f} s)".ljust(78), file=sys.stderr, flush=True)


def thread_count(text: str) -> int:
    """``--threads``: an integer from 1 to 4 per core of this machine (OpenMP fails to start
    tens of thousands of threads, and crashes the process doing so)."""
    import os

    value = positive_int(text)
    limit = 4 * (os.cpu_count() or 1)
    if value > limit:
        raise argparse.ArgumentTypeError(f"must be <= {limit} (4 per core of this machine), "
                                         f"got {text!r}")
    return value


positive_int_list = comma_separated(int, lambda v: v >= 1, "integers >= 1")
"""``"1,5,10"`` -> ``(1, 5, 10)``; every entry an integer >= 1."""
