"""Sharp-MAML and the MAML family as pure functions over parameter dicts (torch.func).

Public API:

* :class:`SharpMAMLConfig`, :func:`meta_gradient`, :func:`meta_objective`,
  :func:`adapt`, :class:`Tasks`, :class:`MetaGradient`: one meta-gradient with
  two radii (Abbas et al. 2022, Algorithm 1, eqs. 9-15); MAML, FO-MAML, ANIL,
  Sharp-MAML_low/up/both and ESharp-MAML by configuration.
* :func:`sam_gradient`, :func:`erm_objective`: SAM on multi-task ERM (eqs. 5-8).
* :mod:`testbed.baselines`: Reptile, iMAML (implicit gradient by conjugate
  gradients) and Agnostic-SAM (our reading of its outline).
* :mod:`testbed.algorithms`: every algorithm by name (:func:`algorithms.make`),
  including HF-MAML (finite-difference Hessian-vector products) and Sign-MAML.
* :mod:`testbed.hypergrad`: hypergradients of a bilevel problem (the
  shared-embedding problem of Liang's slides): ITD, AID (CG or Neumann) and
  the ES-based Jacobian estimator.
* :mod:`testbed.optim`: the meta-update (:func:`sgd_update`, :class:`MetaOptimizer`).
* :mod:`testbed.params`: helpers over parameter dicts.
* :mod:`testbed.cudagraph`: what ``SharpMAMLConfig(cuda_graph=True)`` runs, a whole
  meta-gradient replayed from one captured CUDA graph (:func:`cudagraph.clear`,
  :func:`cudagraph.counts`, :func:`cudagraph.supported`), and
  :class:`cudagraph.MetaGradientGraph`, the same capture reading the caller's tensors in place.

Nothing here imports :mod:`experiments`.
"""

from testbed import algorithms, baselines, cudagraph, hypergrad, optim, params
from testbed.meta import (MetaGradient, SharpMAMLConfig, Tasks, adapt, erm_objective,
                          meta_gradient, meta_objective, sam_gradient)
from testbed.optim import MetaOptimizer, sgd_update

__version__ = "0.1.0"

__all__ = [
    "MetaGradient", "MetaOptimizer", "SharpMAMLConfig", "Tasks", "adapt", "algorithms", "baselines",
    "cudagraph",
    "erm_objective", "hypergrad", "meta_gradient", "meta_objective", "optim", "params", "sam_gradient",
    "sgd_update", "__version__",
]
