"""Named tolerances, each with the reason for its size (keyed by dtype where it matters)."""

import torch

# Autograd against a closed form in float64: both are a few dozen flops from the
# same inputs, so they agree to a few ulps times the condition of the products.
CLOSED_FORM = {torch.float64: 1e-10, torch.float32: 1e-4}

# Vectorised (vmap) against per-task loop: same arithmetic, possibly reordered sums.
VMAP_VS_LOOP = {torch.float64: 1e-12, torch.float32: 1e-5}

# Central finite differences with step h in float64: truncation O(h^2 |f'''|) plus
# rounding O(eps/h); h = 1e-5 gives ~1e-8 on these O(1) functions.
FINITE_DIFFERENCE = 1e-6
FD_STEP = 1e-5

# "Really different": two formulas that must disagree (negative controls) differ by
# far more than this on the curved families used in the tests.
DISTINCT = 1e-6

# Lipschitz-type bounds evaluated in floating point: allow rounding on both sides.
BOUND_SLACK = 1e-9
