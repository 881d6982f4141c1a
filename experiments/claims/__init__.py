"""The claim registry and ``testbed verify``.

Public API:

* :data:`REGISTRY`, :func:`register`, :class:`Claim`, :class:`ClaimResult`,
  :class:`Context`, :func:`select`, :func:`run_claims`: the registry
  (:mod:`experiments.claims.registry`); the first of these taken from this
  package imports (and so registers) every claim module below, so that
  ``testbed --help`` stays fast.
* :func:`verify`: run a selection and write ``report.json``/``report.md``/PNGs.
* Claim modules: :mod:`.lemma1` (Lemma 1), :mod:`.constants` (eq. 30,
  Lemmas 2-5 constants and bounds), :mod:`.rates` (Theorem 1 rates, outside
  its conditions, multi-step), :mod:`.proofs` (every proof step of
  :mod:`proofs_check` as ``proof.*``), :mod:`.pacbayes` (Theorems 2-3,
  Lemma 6, D.1, D.2: the bound against the radius), :mod:`.family` (Fallah et
  al., Mishchenko et al., Ji-Yang-Liang, ANIL, hypergradients).
"""

import importlib

CLAIM_MODULES = ("lemma1", "constants", "rates", "proofs", "pacbayes", "family")

__all__ = ["REGISTRY", "Claim", "ClaimResult", "Context", "register", "run_claims", "select",
           "verify", "load_all"]


def load_all() -> None:
    """Import every claim module, registering its claims, and bind the public API (idempotent)."""
    for name in CLAIM_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    registry = importlib.import_module(f"{__name__}.registry")
    namespace = globals()
    for name in __all__:
        if hasattr(registry, name):
            namespace[name] = getattr(registry, name)
    # the function, not the submodule of the same name
    namespace["verify"] = importlib.import_module(f"{__name__}.verify").verify


def __getattr__(name: str):
    if name in __all__:
        load_all()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
