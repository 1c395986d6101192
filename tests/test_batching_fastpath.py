"""The fast read path on private xarray, zarr and xbatcher internals, pinned.

``test_fast_path_is_taken_on_a_built_store`` fails, naming the dependency versions and the missing
link, when a dependency changes the internals; the other tests show that such a change is loud at
run time (a SlowReadWarning) and that the values stay the same.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dambench.batching import DATorchDataset, SlowReadWarning, _fastpath  # noqa: E402
from dambench.load import ensure_embedded, open_dataset  # noqa: E402
from dambench.modalities import ModalityStatsWarning  # noqa: E402

FIELDS = ("target", "background", "observation", "precip", "precip_gauges")


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


@pytest.fixture
def test_ds(folder):
    return open_dataset(folder, split="test")  # fresh: reading .values caches a variable


def _quiet(**kwargs):
    """A DATorchDataset over the test split where any SlowReadWarning is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModalityStatsWarning)
        warnings.simplefilter("error", SlowReadWarning)
        return DATorchDataset(**kwargs)


def test_fast_path_is_taken_on_a_built_store(test_ds):
    """The pin: a plain lazy store variable has a zarr view, xbatcher exposes its schema."""
    for name in FIELDS:
        view, reason = _fastpath.zarr_view(test_ds[name].variable)
        if view is None:
            pytest.fail(
                f"The fast read path is lost for {name!r}: {reason}. Versions: "
                f"{_fastpath.dependency_versions()}. Update dambench/batching/_fastpath.py for "
                "them, or pin the versions it was written for."
            )
    dataset = _quiet(ds=test_ds)
    selectors = getattr(getattr(dataset.generator, "_batch_selectors", None), "selectors", None)
    if not isinstance(selectors, dict):
        pytest.fail(
            "xbatcher's BatchGenerator._batch_selectors.selectors is gone "
            f"({_fastpath.dependency_versions()}); update _fastpath.window_starts."
        )
    assert _fastpath._zarr_sync is not None, _fastpath.dependency_versions()
    assert set(dataset._views or {}) == set()  # views are built on the first read, per process
    dataset[0]
    assert set(dataset._views) == set(FIELDS)


def test_fast_reads_equal_public_reads(test_ds):
    views = {name: _fastpath.zarr_view(test_ds[name].variable)[0] for name in FIELDS}
    for t in (0, test_ds.sizes["time"] - 1):
        fast = _fastpath.read_cycle(views, list(FIELDS), t)
        for name in FIELDS:
            np.testing.assert_array_equal(fast[name], test_ds[name].variable[t].values)
    # the store positions of a split's times are those of the whole store
    whole = open_dataset(test_ds.encoding["source"])
    positions = views["precip"].positions
    np.testing.assert_array_equal(whole["time"].values[positions], test_ds["time"].values)


def test_legitimate_public_reads_are_silent(test_ds):
    cases = {
        "reversed": test_ds.isel(latitude=slice(None, None, -1))["target"].variable,
        "dask": test_ds.chunk({})["target"].variable,
        "computed": (test_ds["target"] + 1).variable,
    }
    _ = test_ds["background"].values  # now cached in memory: read from there
    cases["cached"] = test_ds["background"].variable
    for label, variable in cases.items():
        view, reason = _fastpath.zarr_view(variable)
        assert view is None and not reason.startswith(_fastpath.INTERNALS), (label, reason)
    for ds in (test_ds.chunk({}), test_ds.load()):
        _quiet(ds=ds)  # no SlowReadWarning


@pytest.mark.parametrize(
    "break_it",
    [
        lambda mp: mp.delattr("xarray.backends.zarr.ZarrArrayWrapper.get_array"),
        lambda mp: mp.setattr("xarray.core.indexing.LazilyIndexedArray", type("Renamed", (), {})),
        lambda mp: mp.setattr(_fastpath, "_zarr_sync", None),
    ],
    ids=["zarr-wrapper", "lazy-array", "zarr-sync"],
)
def test_changed_internals_are_loud_and_values_stay(folder, monkeypatch, break_it):
    fast = _quiet(ds=open_dataset(folder, split="test"))
    reference = fast[3]
    ds = open_dataset(folder, split="test")
    break_it(monkeypatch)
    with pytest.warns(SlowReadWarning, match=r"internals changed.*xarray \S+, zarr \S+"):
        dataset = DATorchDataset(ds, modality_stats=fast.modality_stats)
    sample = dataset[3]
    for key, value in reference.items():
        assert torch.equal(sample[key], value), key


def test_window_starts_without_xbatcher_internals(test_ds):
    patches = DATorchDataset(
        test_ds,
        patch={"latitude": 64, "longitude": 64},
        patch_overlap={"latitude": 7, "longitude": 48},
    )

    class PublicOnly:  # just BatchGenerator's public iteration protocol
        def __init__(self, generator):
            self.generator = generator

        def __iter__(self):
            return iter(self.generator)

    with pytest.warns(SlowReadWarning, match="_batch_selectors.*xbatcher"):
        starts = _fastpath.window_starts(PublicOnly(patches.generator), test_ds)
    np.testing.assert_array_equal(starts, patches.windows)
