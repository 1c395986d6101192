"""Regridding memory and dtype: float32 stays float32, and the leading dims are regridded one
2-D field at a time, so the peak is the result plus one field's temporaries."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from dambench.grid import Grid
from dambench.regrid import Regridder

SOURCE = Grid(3.0)
TARGET = Grid(0.5)
N_FIELDS = 16


def _fields(dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (280 + 10 * rng.standard_normal((N_FIELDS, *SOURCE.shape))).astype(dtype)


def _peak_bytes(func) -> tuple[int, np.ndarray]:
    tracemalloc.start()
    try:
        result = func()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
def test_peak_is_the_result_plus_one_field(method):
    regridder = Regridder(SOURCE.latitude, SOURCE.longitude, TARGET)
    regridder.regrid_array(_fields(np.float32)[:1], method=method)  # bands built before measuring
    x = _fields(np.float32)
    peak, out = _peak_bytes(lambda: regridder.regrid_array(x, method=method))
    field_f64 = np.prod(TARGET.shape) * 8
    # the old code held the float32 result three times and two float64 copies of it (~5x)
    assert peak < 1.5 * out.nbytes + 4 * field_f64, (peak, out.nbytes)


@pytest.mark.parametrize("method", ["conservative", "bilinear", "sum"])
def test_float32_in_float32_out_close_to_float64(method):
    regridder = Regridder(SOURCE.latitude, SOURCE.longitude, TARGET)
    x = _fields(np.float64)
    x[:, 5:9, 10:20] = np.nan
    single = regridder.regrid_array(x.astype(np.float32), method=method)
    double = regridder.regrid_array(x, method=method)
    assert single.dtype == (np.float64 if method == "sum" else np.float32)
    assert double.dtype == np.float64
    np.testing.assert_array_equal(np.isnan(single), np.isnan(double))
    np.testing.assert_allclose(single, double, rtol=2e-6, equal_nan=True)


def test_nan_in_some_fields_only_matches_each_field_alone():
    regridder = Regridder(SOURCE.latitude, SOURCE.longitude, TARGET)
    x = _fields(np.float32)
    x[3, :10, :] = np.nan
    together = regridder.regrid_array(x)
    alone = np.stack([regridder.regrid_array(field) for field in x])
    np.testing.assert_array_equal(together, alone)
    assert np.isnan(together[3]).any() and not np.isnan(together[2]).any()
