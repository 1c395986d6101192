"""Fixtures for the scoring tests: the embedded era5-sample build and its test split."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sample_folder():
    """era5-sample built into the session's cache (real ERA5, 4 surface channels)."""
    from dambench.load import ensure_embedded

    return ensure_embedded()


@pytest.fixture(scope="session")
def sample_test(sample_folder):
    """The test split of era5-sample, in memory."""
    from dambench.load import open_dataset

    return open_dataset(sample_folder, split="test").load()
