"""Scoring as a product: ``dambench evaluate`` and :func:`evaluate_predictions` score anyone's
analyses on a DAMBench split, cycle by cycle, with block-bootstrap intervals; ``dambench
leaderboard`` and :func:`leaderboard` put several results side by side against a reference.

Modules: :mod:`~dambench.scoring.predictions` (reading any layout lazily),
:mod:`~dambench.scoring.store` (writing a prediction store cycle by cycle),
:mod:`~dambench.scoring.engine` (per-cycle scores), :mod:`~dambench.scoring.obsspace` (scores at
observed and unobserved points, O-B and O-A), :mod:`~dambench.scoring.bootstrap` (intervals),
:mod:`~dambench.scoring.report` (tidy table and Markdown tables),
:mod:`~dambench.scoring.comparison` (comparable or refused: common channels, regions and data),
:mod:`~dambench.scoring.leaderboard` and :mod:`~dambench.scoring.scorecard` (results side by
side), :mod:`~dambench.scoring.outputs` (result folders written whole, under a lock),
:mod:`~dambench.scoring.api` (the entry point), :mod:`~dambench.scoring.cli` (the commands).
"""

from dambench.scoring.api import ScoreReport, evaluate_predictions
from dambench.scoring.bootstrap import block_bootstrap, optimal_block_length, paired_difference
from dambench.scoring.comparison import common_ground, compare
from dambench.scoring.leaderboard import leaderboard, load_result
from dambench.scoring.predictions import Predictions, open_predictions
from dambench.scoring.store import PredictionWriter

__all__ = [
    "PredictionWriter",
    "Predictions",
    "ScoreReport",
    "block_bootstrap",
    "common_ground",
    "compare",
    "evaluate_predictions",
    "leaderboard",
    "load_result",
    "open_predictions",
    "optimal_block_length",
    "paired_difference",
]
