"""The claim registry and ``testbed verify``.

Public API:

* :data:`REGISTRY`, :func:`register`, :class:`Claim`, :class:`ClaimResult`,
  :class:`Context`, :func:`select`, :func:`run_claims`: the registry
  (:mod:`experiments.claims.registry`); importing this package registers
  every claim of the modules below.
* :func:`verify`: run a selection and write ``report.json``/``report.md``/PNGs.
* Claim modules: :mod:`.lemma1` (Lemma 1), :mod:`.constants` (eq. 30,
  Lemmas 2-5 constants and bounds), :mod:`.rates` (Theorem 1 rates, outside
  its conditions, multi-step), :mod:`.proofs` (every proof step of
  :mod:`proofs_check` as ``proof.*``), :mod:`.pacbayes` (Theorems 2-3,
  Lemma 6, D.1, D.2: the bound against the radius), :mod:`.family` (Fallah et
  al., Mishchenko et al., Ji-Yang-Liang, ANIL, hypergradients).
"""

from experiments.claims import constants, family, lemma1, pacbayes, proofs, rates  # noqa: F401  (registration)
from experiments.claims.registry import (REGISTRY, Claim, ClaimResult, Context, register,
                                         run_claims, select)
from experiments.claims.verify import verify

__all__ = ["REGISTRY", "Claim", "ClaimResult", "Context", "register", "run_claims", "select",
           "verify"]
