"""Synthetic task families with every derivative known in closed form.

Public API:

* :class:`QuadraticFamily`: ``1/2 (theta - c_m)^T A_m (theta - c_m)`` tasks,
  the MAML objective and its gradient (eq. 30) in closed form for N steps.
* :class:`TanhRegressionFamily`: nonconvex tanh-link regression with
  gradient, Hessian and third derivative in closed form and global constants.
* :class:`DoubleWellFamily`: tilted, coupled double wells (many stationary
  points; Lemma 1), constants on a box ``||theta||_inf <= R``.
* :class:`KernelTaskFamily`: bounded Gaussian-kernel loss on Gaussian data, exact
  population loss, one-GD-step stability (:mod:`synthetic.kernel_tasks`).
* :class:`BilevelQuadraticFamily`: shared-embedding bilevel tasks (inner on a
  head u, outer on an embedding phi) with exact hypergradients;
  :class:`AnilRegressionFamily`: ANIL with a strongly convex or nonconvex head.
* :class:`Constants`: the constants of Assumption 1 and their domain.
* :mod:`synthetic.closed_form`: Sharp-MAML meta-gradients built from a
  family's explicit derivatives (the oracle the autograd core is tested on).
* :mod:`synthetic.strategies`: hypothesis strategies that draw families.
"""

from synthetic.base import Constants
from synthetic.bilevel import AnilRegressionFamily, BilevelQuadraticFamily
from synthetic.double_well import DoubleWellFamily
from synthetic.kernel_tasks import KernelTaskFamily
from synthetic.quadratic import QuadraticFamily
from synthetic.tanh_regression import TanhRegressionFamily

__all__ = ["AnilRegressionFamily", "BilevelQuadraticFamily", "Constants", "DoubleWellFamily",
           "KernelTaskFamily", "QuadraticFamily", "TanhRegressionFamily"]
