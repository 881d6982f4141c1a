"""Plots of the claim registry (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _reference(ax, x, y0, exponent, label):
    x = np.asarray(x, dtype=float)
    ax.plot(x, y0 * (x / x[0]) ** exponent, "k--", lw=1, label=label)


def _curve_panel(ax, horizons, curves: dict[str, np.ndarray], exponent: float, title: str):
    for name, curve in curves.items():          # curve: [seeds, horizons]
        mean = curve.mean(0)
        ax.errorbar(horizons, mean, yerr=[mean - curve.min(0), curve.max(0) - mean],
                    marker="o", ms=3, capsize=2, label=name)
    first = np.mean([c.mean(0)[0] for c in curves.values()])
    _reference(ax, horizons, first, exponent, f"slope {exponent:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("T (iterations)")
    ax.set_ylabel("(1/T) sum ||grad F||^2")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def rate_panels(path: Path, results: dict, schedule: str, exponent: float, title: str) -> None:
    """One panel per family/oracle; one line per variant (mean, min-max over seeds)."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False,
                             layout="constrained")
    for ax, (label, r) in zip(axes[0], results.items()):
        curves = {v: r.curve(schedule, v) for v in r.spec.variants}
        _curve_panel(ax, r.spec.horizons, curves, exponent, label)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def schedule_panels(path: Path, results: dict, variant: str, exponent: float) -> None:
    """One panel per family/oracle; one line per schedule, for one variant."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False,
                             layout="constrained")
    for ax, (label, r) in zip(axes[0], results.items()):
        curves = {s: r.curve(s, variant) for s in r.spec.schedules}
        _curve_panel(ax, r.spec.horizons, curves, exponent, label)
    fig.suptitle(f"{variant}: which condition of Theorem 1 matters")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def alpha_low_panels(path: Path, sweeps: dict[str, dict[float, object]], variant: str,
                     exponent: float) -> None:
    """One panel per family/oracle (``{label: {alpha_low: sweep result}}``); one line per
    alpha_low under Theorem 1's schedule (mean, min-max over seeds)."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.6), squeeze=False,
                             layout="constrained")
    for ax, (label, by_alpha) in zip(axes[0], sweeps.items()):
        curves = {f"alpha_low={a:g}": r.curve("theorem", variant) for a, r in by_alpha.items()}
        _curve_panel(ax, next(iter(by_alpha.values())).spec.horizons, curves, exponent, label)
    fig.suptitle(f"{variant}, Theorem 1 schedule with constant alpha_low")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measured_vs_bound(path: Path, x: np.ndarray, series: dict[str, tuple[np.ndarray, np.ndarray]],
                      xlabel: str, ylabel: str, title: str) -> None:
    """For each series: measured (markers) against its bound (line), log-log."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8), layout="constrained")
    for i, (name, (measured, bound)) in enumerate(series.items()):
        color = f"C{i}"
        ax.plot(x, measured, "o", color=color, ms=4, label=f"{name}: measured")
        ax.plot(x, bound, "-", color=color, lw=1, label=f"{name}: bound")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
