"""Parameter dictionaries: the pytree every algorithm in :mod:`testbed` works on.

A *parameter dict* maps names to tensors, exactly what
:func:`torch.func.functional_call` takes.  All helpers here are pure: they
return new dicts and never modify their inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

Params = dict[str, torch.Tensor]


def tree_map(fn: Callable[..., torch.Tensor], first: Mapping[str, torch.Tensor],
             *rest: Mapping[str, torch.Tensor]) -> Params:
    """Apply ``fn`` leaf-wise over dicts that share the keys of ``first``."""
    return {k: fn(v, *(r[k] for r in rest)) for k, v in first.items()}


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> Params:
    return tree_map(torch.add, a, b)


def axpy(alpha: float | torch.Tensor, x: Mapping[str, torch.Tensor],
         y: Mapping[str, torch.Tensor]) -> Params:
    """``y + alpha * x`` leaf-wise."""
    return {k: y[k] + alpha * x[k] for k in y}


def scale(alpha: float | torch.Tensor, x: Mapping[str, torch.Tensor]) -> Params:
    return {k: alpha * v for k, v in x.items()}


def zeros_like(x: Mapping[str, torch.Tensor]) -> Params:
    return {k: torch.zeros_like(v) for k, v in x.items()}


def detach(x: Mapping[str, torch.Tensor]) -> Params:
    return {k: v.detach() for k, v in x.items()}


def subset(x: Mapping[str, torch.Tensor], names: Iterable[str]) -> Params:
    return {k: x[k] for k in names}


def global_norm(x: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Euclidean norm of all leaves taken together, ``||vec(x)||_2``."""
    return torch.sqrt(sum((v * v).sum() for v in x.values()))


def normalized(x: Mapping[str, torch.Tensor], radius: float) -> Params:
    """``radius * x / ||x||``, and the zero dict (with zero derivative) where ``x = 0``.

    This is the SAM ascent direction of Abbas et al. 2022, eqs. (8a), (11) and
    (13).  At ``x = 0`` the direction is undefined; returning 0 there (instead
    of NaN) with a zero derivative is the convention used throughout.  Written
    with ``torch.where`` on a safe denominator so that it can be traced by
    ``vmap`` and differentiated through without producing NaN.
    """
    sq = sum((v * v).sum() for v in x.values())
    nonzero = sq > 0
    safe = torch.where(nonzero, sq, torch.ones_like(sq))
    inv = torch.where(nonzero, radius / torch.sqrt(safe), torch.zeros_like(sq))
    return {k: v * inv for k, v in x.items()}


def flatten(x: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the leaves (in key order) into one vector."""
    return torch.cat([v.reshape(-1) for v in x.values()])


def unflatten(vec: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Params:
    """Inverse of :func:`flatten` with the shapes and key order of ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vec[i:i + n].reshape(v.shape)
        i += n
    if i != vec.numel():
        raise ValueError(f"vector has {vec.numel()} entries, parameters need {i}")
    return out
