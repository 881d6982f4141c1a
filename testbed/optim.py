"""The meta-update: plain SGD with ``beta_up`` (theory runs) or any ``torch.optim`` optimizer.

``sgd_update`` is eq. (15) with the task mean in place of the sum.  For
practice the paper uses Adam (Section 5.1); :class:`MetaOptimizer` drives any
``torch.optim.Optimizer`` from meta-gradients computed functionally.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from testbed import validate as V


def sgd_update(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
               beta_up: float) -> dict[str, torch.Tensor]:
    """``theta - beta_up * g``: a new dict, inputs untouched."""
    V.positive("beta_up", beta_up)
    missing = set(params) ^ set(grads)
    if missing:
        raise ValueError(f"params and grads differ in names: {sorted(missing)}")
    return {k: params[k] - beta_up * grads[k] for k in params}


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    lookup = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
              if isinstance(getattr(torch.optim, n), type)
              and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
              and n != "Optimizer"}
    cls = lookup.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown torch.optim optimizer {name!r}; known: {', '.join(sorted(lookup))}")
    return cls


class MetaOptimizer:
    """Owns a copy of the meta-parameters and a ``torch.optim`` optimizer over them.

    >>> opt = MetaOptimizer({"w": torch.zeros(2)}, "adam", lr=1e-3)
    >>> new = opt.step({"w": torch.ones(2)})

    ``step`` returns the current parameters as detached tensors; the caller's
    dicts are never modified.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], name: str = "adam",
                 **hyper: Any) -> None:
        if "lr" in hyper:
            V.positive("lr", hyper["lr"])
        self._names = list(params)
        self._leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.optimizer = _optimizer_class(name)(list(self._leaves.values()), **hyper)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self._leaves.items()}

    def step(self, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(grads) != set(self._names):
            raise ValueError(f"grads must have the names {sorted(self._names)}, got {sorted(grads)}")
        for k, leaf in self._leaves.items():
            leaf.grad = grads[k].detach().to(leaf.dtype).clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.params

    def state_dict(self) -> dict:
        """A snapshot (deep copy): later steps do not change it.

        ``torch.optim.Optimizer.state_dict`` returns live references (Adam's
        ``step`` counter would be shared with an optimizer it is loaded into).
        """
        return copy.deepcopy({"params": self.params, "optimizer": self.optimizer.state_dict()})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self._leaves[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
