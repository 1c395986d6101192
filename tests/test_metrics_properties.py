"""Property tests: every metric equals an independent numpy implementation written here.

Random small fields with random NaN placement, every weighting (None, "cos", "area", a 1-D latitude
DataArray, a 2-D DataArray given in another dim and coordinate order), skipna True and False,
numpy or dask input. The reference follows the documented NaN rule literally, field by field:
select the points of positive weight (and, with skipna, the finite ones); if a selected point is
NaN the field scores NaN; otherwise ``np.average`` over the selection.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from dambench import acc, bias, crps, mae, mse, rmse

WEIGHTINGS = (None, "cos", "area", "lat1d", "grid2d")


def reference_lat_weights(lat, method):
    """cos(lat) with exact zeros at the poles, or the cell area between row mid-points."""
    if method == "cos":
        w = np.cos(np.deg2rad(lat))
        w[np.isclose(np.abs(lat), 90.0)] = 0.0
        return np.clip(w, 0.0, None)
    order = np.argsort(lat)
    edges = np.deg2rad(np.concatenate([[-90.0], (lat[order][1:] + lat[order][:-1]) / 2, [90.0]]))
    area = np.empty(lat.size)
    area[order] = np.diff(np.sin(edges))
    return area


def field_average(x, w, skipna):
    """The documented rule for one field ``x`` (lat, lon) and weights ``w`` (lat, lon)."""
    selected = w > 0
    if skipna:
        selected &= ~np.isnan(x)
    elif np.isnan(x[selected]).any():
        return np.nan
    if not selected.any():
        return np.nan
    return np.average(x[selected], weights=w[selected])


def per_field(values, w, skipna):
    """Apply :func:`field_average` to every (lat, lon) field of ``values`` (..., lat, lon)."""
    lead = values.shape[:-2]
    flat = values.reshape(-1, *values.shape[-2:])
    return np.array([field_average(f, w, skipna) for f in flat]).reshape(lead)


def time_mean(values, skipna):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0) if skipna else np.mean(values, axis=0)


@st.composite
def cases(draw):
    n_time, n_channel = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    n_lat, n_lon = draw(st.integers(2, 6)), draw(st.integers(2, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if n_lat > 2 and draw(st.booleans()):
        lat = np.linspace(90.0, -90.0, n_lat)  # poles included (zero cos weight)
    else:
        lat = np.sort(rng.uniform(-85, 85, n_lat))[:: draw(st.sampled_from([1, -1]))]
    lon = np.arange(n_lon) * 360.0 / n_lon
    shape = (n_time, n_channel, n_lat, n_lon)
    truth = 10 + rng.standard_normal(shape)
    pred = truth + rng.standard_normal(shape)
    nan_fraction = draw(st.sampled_from([0.0, 0.1, 0.4, 1.0]))
    for array in (truth, pred):
        array[rng.random(shape) < nan_fraction / 2] = np.nan
    weighting = draw(st.sampled_from(WEIGHTINGS))
    raw = rng.random((n_lat, n_lon)) * (rng.random((n_lat, n_lon)) > 0.3)
    raw[0, 0] = 1.0  # a positive sum
    if weighting == "lat1d":
        raw = np.broadcast_to(raw[:, :1], raw.shape).copy()
    case = {
        "truth": truth,
        "pred": pred,
        "lat": lat,
        "lon": lon,
        "weighting": weighting,
        "raw": raw,
        "skipna": draw(st.booleans()),
        "dtype": draw(st.sampled_from(["float64", "float32"])),
        "dask": draw(st.booleans()),
        "rng": rng,
    }
    if draw(st.booleans()):  # NaN wherever the weight is 0: must not reach the score
        zero_weight = weights_option(case)[1] == 0
        pred[..., zero_weight] = np.nan
        truth[..., zero_weight] = np.nan
    return case


def to_xarray(values, case, dtype=None):
    coords = {
        "time": pd.date_range("2024-01-01", periods=values.shape[-4], freq="6h"),
        "channel": ["a", "b"][: values.shape[-3]],
        "latitude": case["lat"],
        "longitude": case["lon"],
    }
    dims = ("time", "channel", "latitude", "longitude")
    if values.ndim == 5:
        dims = ("member", *dims)
    da = xr.DataArray(values.astype(dtype or case["dtype"]), dims=dims, coords=coords)
    return da.chunk({"time": 1}) if case["dask"] else da


def weights_option(case):
    """(option passed to dambench, the same weights as a numpy (lat, lon) array)."""
    weighting, lat, n_lon = case["weighting"], case["lat"], case["lon"].size
    if weighting is None:
        return None, np.ones((lat.size, n_lon))
    if weighting in ("cos", "area"):
        return weighting, np.broadcast_to(
            reference_lat_weights(lat, weighting)[:, None], (lat.size, n_lon)
        )
    if weighting == "lat1d":
        da = xr.DataArray(case["raw"][:, 0], dims="latitude", coords={"latitude": lat})
        return da.isel(latitude=slice(None, None, -1)), case["raw"]
    da = xr.DataArray(
        case["raw"],
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": case["lon"]},
    )
    # another dim order, reversed latitude and -180..180 longitudes: matched by coordinate value
    da = da.transpose("longitude", "latitude").isel(latitude=slice(None, None, -1))
    return da.assign_coords(longitude=(da.longitude + 180) % 360 - 180), case["raw"]


def check(ours, expected, case):
    rtol = 1e-9 if case["dtype"] == "float64" else 2e-6
    np.testing.assert_allclose(np.asarray(ours.values, dtype=float), expected, rtol=rtol, atol=rtol)


POINTWISE = {
    "mse": (mse, lambda e: e**2),
    "mae": (mae, np.abs),
    "bias": (bias, lambda e: e),
}


@pytest.mark.parametrize("name", sorted(POINTWISE))
@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_pointwise_metrics_equal_numpy(name, case):
    func, transform = POINTWISE[name]
    option, w = weights_option(case)
    pred, truth = (
        np.asarray(a, dtype=case["dtype"]).astype(float) for a in (case["pred"], case["truth"])
    )
    per_sample = per_field(transform(pred - truth), w, case["skipna"])
    kwargs = {"weights": option, "skipna": case["skipna"]}
    ours = func(to_xarray(case["pred"], case), to_xarray(case["truth"], case), **kwargs)
    check(ours, time_mean(per_sample, case["skipna"]), case)
    per_sample_ours = func(
        to_xarray(case["pred"], case), to_xarray(case["truth"], case), sample_dim=None, **kwargs
    )
    check(per_sample_ours, per_sample, case)


@pytest.mark.parametrize("sqrt_before_mean", [True, False])
@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_rmse_equals_numpy(sqrt_before_mean, case):
    option, w = weights_option(case)
    pred, truth = (
        np.asarray(a, dtype=case["dtype"]).astype(float) for a in (case["pred"], case["truth"])
    )
    per_sample = per_field((pred - truth) ** 2, w, case["skipna"])
    if sqrt_before_mean:
        expected = time_mean(np.sqrt(per_sample), case["skipna"])
    else:
        expected = np.sqrt(time_mean(per_sample, case["skipna"]))
    ours = rmse(
        to_xarray(case["pred"], case),
        to_xarray(case["truth"], case),
        weights=option,
        skipna=case["skipna"],
        sqrt_before_mean=sqrt_before_mean,
    )
    check(ours, expected, case)


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_pooled_mse_over_channels_equals_numpy(case):
    """dims=(channel, latitude, longitude): one weighted mean over the channels' points."""
    option, w = weights_option(case)
    pred, truth = (
        np.asarray(a, dtype=case["dtype"]).astype(float) for a in (case["pred"], case["truth"])
    )
    err = (pred - truth) ** 2  # (time, channel, lat, lon)
    n_channel = err.shape[1]
    pooled = err.reshape(err.shape[0], n_channel * err.shape[2], err.shape[3])
    expected = time_mean(
        per_field(pooled, np.tile(w, (n_channel, 1)), case["skipna"]), case["skipna"]
    )
    ours = mse(
        to_xarray(case["pred"], case),
        to_xarray(case["truth"], case),
        weights=option,
        dims=("channel", "latitude", "longitude"),
        skipna=case["skipna"],
    )
    check(ours, expected, case)


@settings(max_examples=20, deadline=None)
@given(case=cases())
def test_acc_equals_numpy(case):
    option, w = weights_option(case)
    clim = 10 + case["rng"].standard_normal(case["truth"].shape[1:])
    pred, truth = (
        np.asarray(a, dtype=case["dtype"]).astype(float) for a in (case["pred"], case["truth"])
    )
    f_anom, o_anom = pred - clim, truth - clim
    expected = np.empty(truth.shape[:2])
    for i in np.ndindex(*expected.shape):
        f, o = f_anom[i], o_anom[i]
        if case["skipna"]:
            both = ~np.isnan(f) & ~np.isnan(o)
            f, o = np.where(both, f, np.nan), np.where(both, o, np.nan)
        means = [field_average(x, w, case["skipna"]) for x in (f * o, f * f, o * o)]
        expected[i] = means[0] / np.sqrt(means[1] * means[2])
    clim_da = xr.DataArray(clim, dims=("channel", "latitude", "longitude"))
    ours = acc(
        to_xarray(case["pred"], case),
        to_xarray(case["truth"], case),
        clim_da.assign_coords(to_xarray(case["truth"], case).isel(time=0, drop=True).coords),
        weights=option,
        skipna=case["skipna"],
    )
    check(ours, time_mean(expected, case["skipna"]), case)


def reference_crps(members, obs, fair):
    """Pointwise CRPS by brute force over member pairs (members on axis 0)."""
    m = members.shape[0]
    skill = np.mean(np.abs(members - obs[None]), axis=0)
    pairs = np.abs(members[:, None] - members[None, :]).sum(axis=(0, 1))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.parametrize("fair", [False, True])
@settings(max_examples=20, deadline=None)
@given(case=cases(), n_members=st.integers(2, 4))
def test_crps_equals_numpy(fair, case, n_members):
    option, w = weights_option(case)
    rng = case["rng"]
    members = case["truth"][None] + rng.standard_normal((n_members, *case["truth"].shape))
    members[rng.random(members.shape) < 0.05] = np.nan
    members = members.astype(case["dtype"])
    truth = np.asarray(case["truth"], dtype=case["dtype"]).astype(float)
    pointwise = reference_crps(members.astype(float), truth, fair)
    expected = time_mean(per_field(pointwise, w, case["skipna"]), case["skipna"])
    ours = crps(
        to_xarray(members, case),
        to_xarray(case["truth"], case),
        fair=fair,
        weights=option,
        skipna=case["skipna"],
    )
    check(ours, expected, case)
