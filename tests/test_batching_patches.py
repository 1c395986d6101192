"""Patches that respect the sphere: refused for whole-globe models, located for the others."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dambench.batching import DATorchDataset, make_dataloader  # noqa: E402
from dambench.exceptions import DambenchInputError  # noqa: E402
from dambench.load import ensure_embedded, open_dataset  # noqa: E402

PATCH = {"latitude": 64, "longitude": 64}
OVERLAP = {"latitude": 7, "longitude": 48}


@pytest.fixture(scope="module")
def test_ds():
    return open_dataset(ensure_embedded(), split="test")


def _info(supports_patches):
    interface = pytest.importorskip("baselines.interface")
    return interface.ModelInfo(
        output="deterministic",
        supports_patches=supports_patches,
        paper="-",
        code="none",
        code_licence="none",
    )


@pytest.mark.parametrize(
    "declared",
    [{"supports_patches": False}, {"model_info": "whole-globe"}],
    ids=["flag", "model_info"],
)
def test_a_whole_globe_model_is_refused_patches(test_ds, declared):
    if "model_info" in declared:
        declared = {"model_info": _info(False)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any window is planned or read
        with pytest.raises(DambenchInputError, match=r"64 x 64.*does not support patches.*121"):
            make_dataloader(test_ds, patch=PATCH, **declared)
        with pytest.raises(DambenchInputError, match=r"121 x 60.*does not support patches"):
            make_dataloader(test_ds, patch={"longitude": 60}, **declared)
    patched = DATorchDataset(test_ds, patch=PATCH, patch_overlap=OVERLAP)
    with pytest.raises(DambenchInputError, match="does not support patches"):
        make_dataloader(patched, **declared)
    whole = make_dataloader(test_ds, batch_size=7, **declared)  # whole globes are fine
    assert next(iter(whole))["target"].shape[-2:] == (121, 240)


def test_contradicting_declarations_are_refused(test_ds):
    with pytest.raises(DambenchInputError, match="contradicts model_info"):
        make_dataloader(test_ds, supports_patches=True, model_info=_info(False))
    with pytest.raises(DambenchInputError, match="supports_patches as a bool"):
        make_dataloader(test_ds, model_info=object())


def test_a_patch_model_gets_each_window_coordinates(test_ds):
    loader = make_dataloader(
        test_ds,
        batch_size=5,
        patch=PATCH,
        patch_overlap=OVERLAP,
        shuffle=True,
        model_info=_info(True),
    )
    latitude, longitude = test_ds["latitude"].values, test_ds["longitude"].values
    seen = 0
    for batch in loader:
        assert batch["latitude"].shape == (batch["target"].shape[0], 64)
        assert batch["longitude"].shape == (batch["target"].shape[0], 64)
        windows = zip(batch["origin"], batch["latitude"], batch["longitude"], strict=True)
        for origin, lat, lon in windows:
            row, col = origin.tolist()
            np.testing.assert_array_equal(lat.numpy(), latitude[row : row + 64])
            np.testing.assert_array_equal(lon.numpy(), longitude[col : col + 64])
            seen += 1
    assert seen == len(loader.dataset) == 24 * test_ds.sizes["time"]
