"""The embedded ``era5-sample`` dataset, built into the user cache on first use."""

from __future__ import annotations

import os
from pathlib import Path

from dambench import schema
from dambench.assembly.builder import build, is_finished
from dambench.sources.base import cache_root


def ensure_embedded(cache_dir: str | os.PathLike | None = None, verbose: bool = False) -> Path:
    """The era5-sample build folder in the user cache, built on first use (seconds); a process
    that finds another one building it waits for it."""
    folder = Path(cache_dir) if cache_dir else cache_root() / "datasets" / schema.EMBEDDED_DATASET
    if is_finished(folder):
        return folder
    return build(schema.EMBEDDED_DATASET, folder, verbose=verbose, wait_s=600)
