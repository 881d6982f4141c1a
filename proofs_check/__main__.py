"""``python -m proofs_check --budget quick --out out/proofs``: check every step, write the report."""

from .report import main

raise SystemExit(main())
