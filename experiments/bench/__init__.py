"""Benchmarks: measured ratios, printed and saved; never timed tests.

* :mod:`experiments.bench.synthetic`: the claim registry's batched rate sweep
  against a straightforward per-run, per-iteration loop doing the same work.
"""
