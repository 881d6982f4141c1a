"""``testbed bench memory``: peak memory and time of one meta-gradient as the inner loop grows.

Second-order MAML keeps the graph of every fine-tuning step of every task
until the meta-gradient's backward; its memory grows with ``N`` (inner
steps) and, when the tasks are vectorised, with ``M`` (meta-batch).  The
core has three ways to cut it, all giving the same meta-gradient as the graph
path except first order:

* ``task_batching="loop"``: each task's graph is differentiated and freed
  before the next task runs (memory / M);
* ``checkpoint=True``: only each step's point is kept; the backward is an
  adjoint sweep that recomputes each step's exact Hessian-vector product
  (memory for one step, not ``N``; about one more forward and backward per
  step);
* ``first_order=True`` (FO-MAML): a different, cheaper gradient.

On CPU each (mode, N) pair runs in a fresh Python process so that one
measurement's allocations cannot hide another's: the peak is the process's
peak resident set during the call (``VmHWM``, reset just before it through
``/proc/self/clear_refs``) minus its resident set just before the call, with
glibc set to map every large block on its own (:data:`CHILD_ENV`).  On CUDA
the caching allocator counts live tensors exactly and its peak can be reset,
so every pair runs in this process (a fresh process per pair would spend
seconds on CUDA's start each): the peak is ``torch.cuda.max_memory_allocated``
minus the memory allocated before the call.  ``isolate`` overrides the choice.
The time is one call after a one-step warm-up.

On CPU each child's address space is capped (:func:`_address_space_cap`) so
that a mode that does not fit fails alone with an allocation error instead of
waking the kernel's out-of-memory killer; such a cell reads "does not fit".
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch

MODES = {
    "graph, vmap": {"task_batching": "vmap"},
    "graph, loop": {"task_batching": "loop"},
    "checkpoint, loop": {"task_batching": "loop", "checkpoint": True},
    "first-order, loop": {"task_batching": "loop", "first_order": True},
}
"""Column name -> options of ``algorithms.make('maml', ...)``."""
DEFAULT_STEPS = (1, 5, 10, 20)
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc: every block over 128 KiB gets its own mapping, returned when freed, so a child's
peak resident set follows its peak of live tensors.  With glibc's adaptive default, freed
blocks stay in a fragmented heap and the peak grows with the number of allocations
(measured: the checkpointed sweep's peak rose 35 MiB per inner step that way, and stayed
flat with this setting)."""


@dataclass(frozen=True)
class MemoryBench:
    setting: str
    device: str
    steps: tuple[int, ...]
    peak_mib: dict[str, dict[int, float | None]]
    seconds: dict[str, dict[int, float | None]]
    cap_gib: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (``VmHWM``; Linux >= 4.0).

    ``ru_maxrss`` cannot be reset, and a child started from a large process inherits
    the parent's mark in it (measured: after an in-process bench every child read the
    same 137 MiB whatever N), so it cannot measure one call."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2 ** 20


def measure(setting, mode: str, steps: int, device: str = "cpu") -> tuple[float, float]:
    """(peak MiB above the pre-call level, seconds) of one MAML meta-gradient, in this process."""
    from experiments.bench.fewshot import make_problem
    from experiments.fewshot.model import cross_entropy_loss
    from testbed import algorithms

    params, tasks = make_problem(setting, device)
    warm = algorithms.make("maml", beta_low=setting.beta_low, inner_steps=1, **MODES[mode])
    warm.meta_gradient(cross_entropy_loss, params, tasks)
    alg = algorithms.make("maml", beta_low=setting.beta_low, inner_steps=steps, **MODES[mode])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_mib()
        _reset_peak_rss()
    t = time.perf_counter()
    alg.meta_gradient(cross_entropy_loss, params, tasks)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        peak = _peak_rss_mib() - before
    return max(peak, 0.0), seconds


def _address_space_cap() -> int:
    """Bytes of address space a CPU child may map: 80% of the memory available now."""
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(0.8 * int(info["MemAvailable"].split()[0]) * 1024)


def _child(spec: str) -> None:
    a = json.loads(spec)
    if a.get("cap_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (a["cap_bytes"], a["cap_bytes"]))
    torch.set_num_threads(a["threads"])
    print(json.dumps(_in_process(a["setting"], a["scale"], a["steps"], a["mode"], a["device"])))


def _in_process(setting_name: str, scale: str, steps: int, mode: str, device: str) -> dict:
    """One cell measured in this process; an out-of-memory error reads "does not fit"."""
    from experiments.bench.fewshot import SETTINGS, small

    setting = SETTINGS[setting_name]
    if scale == "small":
        setting = small(setting)
    setting = replace(setting, inner_steps=steps)
    try:
        peak, seconds = measure(setting, mode, steps, device)
    except (MemoryError, RuntimeError) as err:     # torch's allocators raise RuntimeError
        if "memory" not in str(err).lower():
            raise
        return {"out_of_memory": str(err).splitlines()[0][:200]}
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"peak_mib": peak, "seconds": seconds}


def _in_child(spec: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "experiments.bench.memory", spec],
                         capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
    if out.returncode != 0:
        a = json.loads(spec)
        raise RuntimeError(f"memory bench child ({a['mode']}, N={a['steps']}) failed:\n"
                           f"{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(setting_name: str, scale: str = "paper", steps: tuple[int, ...] = DEFAULT_STEPS,
        device: str = "cpu", modes: tuple[str, ...] = tuple(MODES), threads: int | None = None,
        progress=None, isolate: bool | None = None) -> MemoryBench:
    """Every mode at every ``N`` in ``steps``: on CPU (or with ``isolate=True``) each in its
    own process, on CUDA (or with ``isolate=False``) in this one."""
    from experiments.bench.fewshot import SETTINGS

    if setting_name not in SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {setting_name!r}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, got {m!r}")
    if not steps or any(not isinstance(n, int) or n < 1 for n in steps):
        raise ValueError(f"steps must be positive integers, got {steps!r}")
    name = setting_name + ("-small" if scale == "small" else "")
    if isolate is None:
        isolate = not device.startswith("cuda")
    cap = _address_space_cap() if isolate and not device.startswith("cuda") else None
    peak: dict[str, dict[int, float | None]] = {m: {} for m in modes}
    secs: dict[str, dict[int, float | None]] = {m: {} for m in modes}
    for n in steps:
        for m in modes:
            if progress is not None:
                print(f"[{name}] {m}, {n} inner steps", file=progress, flush=True)
            if isolate:
                got = _in_child(json.dumps({
                    "setting": setting_name, "scale": scale, "steps": n, "mode": m,
                    "device": device, "threads": threads or torch.get_num_threads(),
                    "cap_bytes": cap}))
            else:
                got = _in_process(setting_name, scale, n, m, device)
            if "out_of_memory" in got:
                if progress is not None:
                    print(f"[{name}] {m}, N={n} does not fit: {got['out_of_memory']}",
                          file=progress, flush=True)
                peak[m][n] = secs[m][n] = None
            else:
                peak[m][n], secs[m][n] = got["peak_mib"], got["seconds"]
    return MemoryBench(name, device, tuple(steps), peak, secs,
                       None if cap is None else round(cap / 2 ** 30, 1))


def format_table(b: MemoryBench) -> str:
    what = "peak resident memory above the pre-call level" if b.device == "cpu" else \
        "peak CUDA memory allocated above the pre-call level"
    cap = "" if b.cap_gib is None else f" (each run capped at {b.cap_gib} GiB of address space)"
    lines = [f"bench memory: {b.setting}, MAML meta-gradient on {b.device}; {what} (MiB) "
             f"and seconds of one call, against the number of inner steps N{cap}", "",
             "N | " + " | ".join(b.peak_mib) , "---|" + "---|" * (len(b.peak_mib) - 1) + "---"]
    for n in b.steps:
        cells = ["does not fit" if b.peak_mib[m][n] is None
                 else f"{b.peak_mib[m][n]:.0f} MiB, {b.seconds[m][n]:.2f} s" for m in b.peak_mib]
        lines.append(f"{n} | " + " | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    _child(sys.argv[1])
