"""Exceptions and warnings raised by dambench. Each leaf also subclasses the fitting built-in."""

from __future__ import annotations


class DambenchError(Exception):
    """Root of every dambench error."""


class DambenchSchemaError(DambenchError, ValueError):
    """An object does not follow the DAMBench schema (grid, dims, channels, times, units)."""


class DambenchInputError(DambenchError, ValueError):
    """An argument is invalid (bad option, bad weights, NaN where none are allowed)."""


class DambenchIntegrityError(DambenchError, ValueError):
    """A dataset folder or store cannot be trusted: an unfinished build, or files that are missing,
    changed or not listed in its ``manifest.json``. The message names the files and the fix."""


class DambenchSamplingError(DambenchError, RuntimeError):
    """A sampler (e.g. a diffusion model's guided sampler) produced unusable samples
    (non-finite or diverged values); the message names the settings to change."""


class DambenchSourceError(DambenchError, OSError):
    """A source cannot be reached or read; the message says which and what to do."""


class DambenchRemoteError(DambenchSourceError):
    """A remote read failed for good: a permanent answer (HTTP 403, a host that does not exist)
    or transient failures (HTTP 5xx and 429, timeouts, connection resets) past the retry budget.
    The message is one line naming the URL, what happened and how often it was tried."""


class MissingDependencyError(DambenchError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


class DegenerateFieldWarning(UserWarning):
    """A metric met a constant or NaN field and returned NaN."""
