"""proofs_check: every proof step of Abbas et al. (2022), Appendices B-D, with a verdict.

Public API
----------
Transcription and checking (``proofs_check.spec``, ``proofs_check.engine``):
    Var, Step, ArrayForm, Budget, QUICK, FULL, StepResult, Evaluation,
    VERIFIED, NO_COUNTEREXAMPLE, FALSE, NOT_TRANSCRIBABLE, TIMED_OUT, VERDICTS,
    claim, array_claim, untranscribable, check_step, evaluate_step, evaluate_array_step
Catalogue and report (``proofs_check.report``):
    all_steps, run_all, write_table, report_document, validate_report, JSON_SCHEMA
Numerical helpers for the bound-versus-radius study (``proofs_check.numerics``):
    max_quadratic_on_ball, BallMaximum, coverage, Coverage, coverage_verdict, CoverageVerdict

The step transcriptions live in ``steps_lemma1``, ``steps_lemma2_3``, ``steps_lemma4_5``,
``steps_thm3`` and ``steps_discussion``; each exposes ``steps() -> tuple[Step, ...]``.
"""

from .engine import array_claim, check_step, claim, evaluate_array_step, evaluate_step, untranscribable
from .numerics import BallMaximum, Coverage, CoverageVerdict, coverage, coverage_verdict, max_quadratic_on_ball
from .report import JSON_SCHEMA, all_steps, report_document, run_all, validate_report, write_table
from .spec import (FALSE, FULL, NO_COUNTEREXAMPLE, NOT_TRANSCRIBABLE, QUICK, TIMED_OUT, VERDICTS, VERIFIED,
                   ArrayForm, Budget, Evaluation, Step, StepResult, Var)

__all__ = [
    "Var", "Step", "ArrayForm", "Budget", "QUICK", "FULL", "StepResult", "Evaluation",
    "VERIFIED", "NO_COUNTEREXAMPLE", "FALSE", "NOT_TRANSCRIBABLE", "TIMED_OUT", "VERDICTS",
    "claim", "array_claim", "untranscribable", "check_step", "evaluate_step", "evaluate_array_step",
    "all_steps", "run_all", "write_table", "report_document", "validate_report", "JSON_SCHEMA",
    "max_quadratic_on_ball", "BallMaximum", "coverage", "Coverage", "coverage_verdict", "CoverageVerdict",
]
