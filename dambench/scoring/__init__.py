"""Scoring as a product: ``dambench evaluate`` and :func:`evaluate_predictions` score anyone's
analyses on a DAMBench split, cycle by cycle, with block-bootstrap intervals.

Modules: :mod:`~dambench.scoring.predictions` (reading any layout lazily),
:mod:`~dambench.scoring.store` (writing a prediction store cycle by cycle),
:mod:`~dambench.scoring.engine` (per-cycle scores), :mod:`~dambench.scoring.bootstrap`
(intervals), :mod:`~dambench.scoring.report` (tidy table and Markdown tables),
:mod:`~dambench.scoring.api` (the entry point), :mod:`~dambench.scoring.cli` (the command).
"""

from dambench.scoring.api import ScoreReport, compare, evaluate_predictions
from dambench.scoring.bootstrap import block_bootstrap, optimal_block_length, paired_difference
from dambench.scoring.predictions import Predictions, open_predictions
from dambench.scoring.store import PredictionWriter

__all__ = [
    "PredictionWriter",
    "Predictions",
    "ScoreReport",
    "block_bootstrap",
    "compare",
    "evaluate_predictions",
    "open_predictions",
    "optimal_block_length",
    "paired_difference",
]
