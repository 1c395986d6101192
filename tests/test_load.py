"""``open_dataset``/``load_rows``: Hub locations and revisions, export to netCDF, CF attributes,
consolidated metadata, the normalization attribute, and failing fast without network."""

from __future__ import annotations

import json
import socket
import time
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from dambench.exceptions import DambenchInputError
from dambench.load import (
    ensure_embedded,
    hub_url,
    load_rows,
    open_dataset,
    parse_hub_url,
    resolve,
    stats_from_attrs,
)
from dambench.sources import DambenchSourceError

FENGWU_AT_V1 = "hf://datasets/dambench/era5-fengwu@v1.0/era5-fengwu.zarr"


@pytest.fixture(scope="module")
def built():
    return ensure_embedded()


# --- Hub locations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "revision"),
    [
        ("hf://datasets/dambench/era5-fengwu@v1.0", None),
        ("hf://datasets/dambench/era5-fengwu@v1.0/", None),
        ("hf://datasets/dambench/era5-fengwu", "v1.0"),
        ("era5-fengwu", "v1.0"),
        (FENGWU_AT_V1, None),
        ("hf://datasets/dambench/era5-fengwu/era5-fengwu.zarr", "v1.0"),
    ],
)
def test_the_revision_stays_with_the_repository(location, revision):
    from huggingface_hub.hf_file_system import parse_hf_uri

    assert resolve(location, revision=revision) == FENGWU_AT_V1
    parsed = parse_hf_uri(FENGWU_AT_V1)  # how HfFileSystem reads it
    assert (parsed.id, parsed.revision, parsed.path_in_repo) == (
        "dambench/era5-fengwu",
        "v1.0",
        "era5-fengwu.zarr",
    )


def test_revisions_with_slashes_are_encoded_and_round_trip():
    from huggingface_hub.hf_file_system import parse_hf_uri

    url = resolve("era5-fengwu", revision="refs/pr/1")
    assert url == "hf://datasets/dambench/era5-fengwu@refs%2Fpr%2F1/era5-fengwu.zarr"
    assert parse_hf_uri(url).revision == "refs/pr/1"
    assert parse_hub_url(url) == ("dambench/era5-fengwu", "refs/pr/1", "era5-fengwu.zarr")
    assert hub_url("a/b") == "hf://datasets/a/b"
    assert resolve("era5-fengwu") == "hf://datasets/dambench/era5-fengwu/era5-fengwu.zarr"


def test_bad_revisions_are_refused(built):
    with pytest.raises(DambenchInputError, match="names revision 'v1.0' but revision='v2'"):
        resolve("hf://datasets/dambench/era5-fengwu@v1.0", revision="v2")
    with pytest.raises(DambenchInputError, match="applies to Hub datasets only"):
        resolve(built, revision="v1.0")
    with pytest.raises(DambenchInputError, match="not a Hub dataset URL"):
        parse_hub_url("hf://datasets/onlyone")


# --- no network ---------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE unset and every TCP connection refused, as on a machine without network."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("reader", [open_dataset, lambda name: load_rows(name, split="train")])
def test_no_network_fails_fast_with_the_build_hint(no_network, monkeypatch, reader):
    import datasets

    def never(*args, **kwargs):
        raise AssertionError("the Hub client was called (it retries for about 23 s)")

    monkeypatch.setattr(datasets, "load_dataset", never)
    start = time.perf_counter()
    with pytest.raises(DambenchSourceError, match="dambench build era5-fengwu --out DIR") as info:
        reader("era5-fengwu")
    assert time.perf_counter() - start < 5
    assert "cannot connect to huggingface.co:443" in str(info.value)


def test_network_errors_of_the_hub_client_become_the_build_hint(monkeypatch):
    """A probe that passes, then an httpx-style ConnectError inside the Hub file system."""
    import dambench.load as load

    class ConnectError(Exception):  # httpx's name; not an OSError
        pass

    def unreachable(*args, **kwargs):
        raise ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(load, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(load, "check_folder", unreachable)
    with pytest.raises(DambenchSourceError, match="build the dataset locally: dambench build"):
        open_dataset("era5-fengwu")


def test_offline_mode_fails_at_once():
    start = time.perf_counter()
    with pytest.raises(DambenchSourceError, match="HF_HUB_OFFLINE is set"):
        open_dataset("hf://datasets/dambench/era5-fengwu@v1.0")  # HF_HUB_OFFLINE=1 in tests
    assert time.perf_counter() - start < 1


# --- what a built store holds -------------------------------------------------------------------


def test_exports_to_netcdf_and_round_trips_the_statistics(built, tmp_path):
    ds = open_dataset(built, split="validation")
    assert all(isinstance(v, str) for v in ds.attrs.values())  # no dict-valued attribute
    path = tmp_path / "validation.nc"
    ds.to_netcdf(path)
    back = xr.open_dataset(path).load()
    xr.testing.assert_identical(stats_from_attrs(back), stats_from_attrs(ds))
    np.testing.assert_array_equal(back["target"].values, ds["target"].values)
    assert json.loads(back.attrs["sources"])["era5"].startswith("ERA5")


def test_statistics_are_read_from_json_and_from_older_dict_attributes(built):
    stats = json.loads((built / "stats.json").read_text())
    ds = xr.Dataset(attrs={"normalization": stats})  # a store written by dambench 0.1
    expected = stats_from_attrs(open_dataset(built))
    xr.testing.assert_identical(stats_from_attrs(ds), expected)
    np.testing.assert_allclose(expected["mean"].values, stats["mean"], rtol=0)
    with pytest.raises(DambenchInputError, match="not valid JSON"):
        stats_from_attrs(xr.Dataset(attrs={"normalization": "{oops"}))
    with pytest.raises(DambenchInputError, match="records no normalization"):
        stats_from_attrs(xr.Dataset())


def test_cf_attributes_of_time_and_level(built):
    ds = open_dataset(built)
    assert ds["time"].attrs["standard_name"] == "time" and ds["time"].attrs["axis"] == "T"
    assert "long_name" in ds["time"].attrs
    level = ds["level"].attrs
    assert (level["standard_name"], level["units"], level["positive"]) == (
        "air_pressure",
        "hPa",
        "down",
    )


def test_metadata_is_consolidated_and_opens_without_warnings(built):
    store = built / "era5-sample.zarr"
    root = json.loads((store / "zarr.json").read_text())
    assert "target" in root["consolidated_metadata"]["metadata"]
    group = zarr.open_consolidated(store, zarr_format=3)
    assert group.attrs["dambench_dataset"] == "era5-sample"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_zarr(store, consolidated=True).close()
        open_dataset(built).close()
