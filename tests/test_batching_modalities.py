"""Modalities through the loader: model space, train-split statistics, presence flags.

The OLR tests use a copy of the embedded store with an ``olr`` field of about 250 W m-2 added, so
that a model's view of it can be checked against an independent z-score.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from dambench.batching import DATorchDataset, make_dataloader  # noqa: E402
from dambench.exceptions import DambenchInputError, DambenchSchemaError  # noqa: E402
from dambench.load import ensure_embedded, open_dataset  # noqa: E402
from dambench.modalities import ModalityStatsWarning  # noqa: E402

ABSENT_CYCLE = 2  # a train cycle without OLR in the store below


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


@pytest.fixture(scope="module")
def olr_store(folder, tmp_path_factory):
    """The embedded store plus ``olr`` (W/m^2, about 250 +- 40), NaN on one whole train cycle;
    its statistics are not recorded (as in a store built before they were)."""
    ds = open_dataset(folder).load()
    rng = np.random.default_rng(7)
    lat = np.deg2rad(ds["latitude"].values)[None, :, None]
    olr = 290.0 - 80.0 * np.sin(lat) ** 2 + rng.normal(0.0, 15.0, (ds.sizes["time"], 121, 240))
    olr[ABSENT_CYCLE] = np.nan
    ds["olr"] = (("time", "latitude", "longitude"), olr.astype(np.float32), {"units": "W/m^2"})
    for variable in ds.variables.values():
        variable.encoding = {}
    path = tmp_path_factory.mktemp("olr") / "with-olr.zarr"
    ds.to_zarr(path, consolidated=False)
    return path


def _normalization(ds):
    """The store's ``normalization`` attribute as a dict (older builds: a dict; newer: JSON)."""
    raw = ds.attrs["normalization"]
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def _open(path, split):
    """A split of the hand-made store, opened lazily as open_dataset does (no manifest here)."""
    ds = xr.open_dataset(path, engine="zarr", consolidated=False, chunks=None)
    return ds.isel(time=np.flatnonzero(ds["split"].values == split))


def _model_space_olr(path):
    """Independent: z-score of OLR with mean/std over the finite values of the train cycles."""
    ds = xr.open_zarr(path, consolidated=False)
    train = ds["olr"].values[ds["split"].values == "train"].astype(np.float64)
    train = train[np.isfinite(train)]
    return train.mean(), train.std()


def test_a_model_given_olr_sees_values_of_order_one(olr_store):
    interface = pytest.importorskip("baselines.interface")
    train = _open(olr_store, "train")
    with pytest.warns(ModalityStatsWarning, match=r"\['olr'\].*once from its train cycles"):
        loader = make_dataloader(train, batch_size=4, train=False, modalities=["olr"])
    mean, std = _model_space_olr(olr_store)
    raw = train["olr"].values
    assert np.nanmean(raw) > 200  # what used to reach the model, next to z-scores
    seen = []
    for i, batch in enumerate(loader):
        dabatch = interface.DABatch.from_loader(batch)
        for b in range(dabatch.shape[0]):
            t = 4 * i + b
            expected = np.nan_to_num(((raw[t] - mean) / std).astype(np.float32))
            np.testing.assert_allclose(dabatch.modalities[b, 0].numpy(), expected, atol=1e-6)
            assert dabatch.modality_present[b, 0].item() == float(t != ABSENT_CYCLE)
        seen.append(dabatch.modalities[dabatch.modality_present[:, 0] == 1, 0])
    seen = torch.cat(seen)
    assert abs(seen.mean().item()) < 1e-3 and abs(seen.std().item() - 1) < 1e-3
    assert seen.abs().max().item() < 6


def test_other_splits_use_the_train_statistics_of_the_store(olr_store):
    names = ["precip", "precip_gauges", "olr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModalityStatsWarning)
        train = DATorchDataset(_open(olr_store, "train"), modalities=names)
        test = DATorchDataset(_open(olr_store, "test"), modalities=names)
    xr.testing.assert_identical(
        test.modality_stats, train.modality_stats.sel(modality=["precip", "olr"])
    )
    mean, std = _model_space_olr(olr_store)
    assert float(test.modality_stats["mean"].sel(modality="olr")) == pytest.approx(mean)
    assert float(test.modality_stats["std"].sel(modality="olr")) == pytest.approx(std)


def test_recorded_statistics_are_applied_without_warning(folder):
    ds = open_dataset(folder, split="test")
    recorded = {"transform": "log1p", "standardize": True, "mean": 1.0, "std": 2.0}
    ds.attrs["normalization"] = json.dumps(
        {**_normalization(ds), "modalities": {"precip": recorded}}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModalityStatsWarning)
        sample = DATorchDataset(ds, modalities=["precip"])[0]
    precip = ds["precip"].values[0].astype(np.float64)
    expected = np.nan_to_num((np.log1p(precip) - 1.0) / 2.0).astype(np.float32)
    np.testing.assert_array_equal(sample["modalities"][0].numpy(), expected)


def test_raw_statistics_of_an_old_build_are_not_applied_to_log_precipitation(folder):
    ds = open_dataset(folder, split="test")
    ds.attrs["normalization"] = {
        **_normalization(ds),
        "modalities": {"precip": {"mean": 3.08, "std": 7.6, "n_finite": 770}},  # raw mm/day
    }
    with pytest.warns(ModalityStatsWarning, match="precip"):
        dataset = DATorchDataset(ds, modalities=["precip"])
    whole = xr.open_zarr(ds.encoding["source"], consolidated=False)
    logs = np.log1p(whole["precip"].values[whole["split"].values == "train"].astype(np.float64))
    logs = logs[np.isfinite(logs)]
    assert float(dataset.modality_stats["mean"].item()) == pytest.approx(logs.mean())
    assert float(dataset.modality_stats["std"].item()) == pytest.approx(logs.std())


def test_no_train_split_within_reach_is_refused(folder):
    ds = open_dataset(folder, split="test").load()
    ds.encoding = {}  # in memory, no store behind it
    ds.attrs["normalization"] = {**_normalization(ds), "modalities": {}}
    with pytest.raises(DambenchInputError, match="pass modality_stats="):
        DATorchDataset(ds)
    sample = DATorchDataset(ds, modalities=["precip_gauges"])[0]  # not standardised: no stats
    assert sample["modalities"].shape[0] == 1


def test_absent_modality_is_absent_never_a_fake(folder):
    ds = open_dataset(folder, split="test").load()
    ds["precip"][1] = np.nan  # a day without gauge data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModalityStatsWarning)
        dataset = DATorchDataset(ds, modalities=["olr", "precip"])
    missing_day, normal_day = dataset[1], dataset[0]
    assert missing_day["modality_present"].tolist() == [0.0, 0.0]
    assert normal_day["modality_present"].tolist() == [0.0, 1.0]
    assert torch.all(missing_day["modalities"] == 0) and torch.all(normal_day["modalities"][0] == 0)


def test_wrong_units_and_unknown_names_are_refused(folder):
    ds = open_dataset(folder, split="test")
    ds["precip"].attrs["units"] = "m"
    with pytest.raises(DambenchSchemaError, match="'precip' has units 'm'; expected 'mm/day'"):
        DATorchDataset(ds)
    with pytest.raises(DambenchInputError, match="distinct names among"):
        DATorchDataset(ds, modalities=["gauges"])
    with pytest.raises(DambenchInputError, match="distinct names among"):
        make_dataloader(ds, modalities=["olr", "olr"])


def test_selection_and_model_info(folder):
    ds = open_dataset(folder, split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModalityStatsWarning)
        one = next(iter(make_dataloader(ds, batch_size=2, modalities="precip_gauges")))
        default = make_dataloader(ds)
    assert one["modalities"].shape == (2, 1, 121, 240)
    assert default.dataset.modality_names == ["precip", "precip_gauges"]

    class Info:  # duck-typed ModelInfo
        supports_patches = False
        uses_modalities = False

    with warnings.catch_warnings():
        warnings.simplefilter("error", ModalityStatsWarning)  # nothing to standardise: no stats
        bare = next(iter(make_dataloader(ds, batch_size=2, model_info=Info())))
    assert bare["modalities"].shape == (2, 0, 121, 240)
    assert bare["modality_present"].shape == (2, 0)


def test_a_value_outside_the_transform_domain_is_an_error_not_absent(folder):
    ds = open_dataset(folder, split="test").load()
    row, col = np.argwhere(np.isfinite(ds["precip"].values[0]))[0]
    ds["precip"][0, row, col] = -2.0  # log1p(-2) is NaN: a corrupt rain rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModalityStatsWarning)
        dataset = DATorchDataset(ds, modalities=["precip"])
    with pytest.raises(DambenchSchemaError, match=r"'precip' at .* log1p transform \(min -2"):
        dataset[0]
    assert dataset[1]["modality_present"].tolist() == [1.0]
