"""Shared timing helper for the benchmark scripts."""

from __future__ import annotations

import time

import numpy as np


def best_of(func, repeats: int) -> float:
    """The shortest wall time in seconds of ``repeats`` calls of ``func``."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best
