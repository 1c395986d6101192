"""Pointwise metrics and the benchmark evaluation: pure functions over xarray objects.

Every function selects dims by name, stays lazy on dask input, and records its settings in
``attrs``. ``prediction`` and ``truth`` must share coordinates (``xr.align(join="exact")``).

Conventions (the DAMBench protocol; see README "Metrics"):

- ``mse``, ``mae``, ``bias``: grid means over (latitude, longitude), unweighted by default as in
  the paper's eq. 24-25; ``weights="cos"``/``"area"``/a DataArray for weighted means.
- ``rmse``: per channel, latitude-weighted with ``cos`` weights (the paper's eq. 26, normalised to
  mean 1), RMSE per sample and then the mean over samples (the upstream code's protocol);
  ``sqrt_before_mean=False`` gives WeatherBench2's sqrt of the mean MSE.
- Every metric averages over ``sample_dim`` (default ``"time"``) when present; pass
  ``sample_dim=None`` for per-sample values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench._typing import WeightsLike
from dambench.exceptions import DambenchInputError
from dambench.grid import resolve_weights, spatially_whole
from dambench.normalize import normalize
from dambench.spectral import spec_div, spec_res

SampleDim = str | None


def spatial_mean(
    x: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    skipna: bool = False,
) -> xr.DataArray:
    """Mean of ``x`` over ``dims`` (latitude, longitude by default), optionally latitude-weighted.

    With ``skipna=False`` (default) a NaN anywhere in a field makes its mean NaN.
    """
    dims = list(dims)
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise DambenchInputError(f"Cannot average over missing dims {missing}; x has {x.dims}.")
    w = resolve_weights(weights, x)
    if w is None:
        return x.mean(dims, skipna=skipna)
    if skipna or set(w.dims) != {schema.LATITUDE} or schema.LATITUDE not in dims:
        return x.weighted(w).mean(dims, skipna=skipna)
    # latitude-only weights without skipna: average the other dims first (one pass over the
    # data), then weight the small per-latitude means; NaN still propagates.
    others = [d for d in dims if d != schema.LATITUDE]
    row_means = x.mean(others) if others else x
    return (row_means * w).sum(schema.LATITUDE) / float(w.sum())


def _error(prediction: xr.DataArray, truth: xr.DataArray) -> xr.DataArray:
    prediction, truth = xr.align(prediction, truth, join="exact")
    return prediction - truth


_BLOCK_ELEMENTS = 2**19
"""Elements per block in the fused error kernel: temporaries stay in cache (2 MB of float32)."""


def _row_error_means(pred: np.ndarray, truth: np.ndarray, power: int) -> np.ndarray:
    """Mean over longitude of |pred - truth|**power, block by block: (..., lat, lon) -> (..., lat).

    Fuses the difference, the power and the reduction so no full-size temporary is allocated.
    """
    pred, truth = np.broadcast_arrays(pred, truth)
    *lead, n_lat, n_lon = pred.shape
    flat_pred = pred.reshape(-1, n_lat, n_lon)
    flat_truth = truth.reshape(-1, n_lat, n_lon)
    out = np.empty((flat_pred.shape[0], n_lat), dtype=np.float64)
    step = max(1, _BLOCK_ELEMENTS // (n_lat * n_lon))
    for start in range(0, flat_pred.shape[0], step):
        block = np.subtract(flat_pred[start : start + step], flat_truth[start : start + step])
        if power == 2:
            np.square(block, out=block)
        else:
            np.abs(block, out=block)
        out[start : start + step] = block.mean(axis=-1)
    return out.reshape(*lead, n_lat)


def _error_mean(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    power: int,
    weights: WeightsLike,
    dims: Sequence[str],
    skipna: bool,
) -> xr.DataArray:
    """Spatial mean of |prediction - truth|**power (power 1 or 2) over ``dims``."""
    fused = not skipna and schema.LONGITUDE in dims and schema.LATITUDE in dims
    if not fused:
        err = _error(prediction, truth)
        return spatial_mean(
            err**2 if power == 2 else abs(err), weights=weights, dims=dims, skipna=skipna
        )
    prediction, truth = xr.align(prediction, truth, join="exact")
    core = list(schema.SPATIAL_DIMS)
    rows = xr.apply_ufunc(
        _row_error_means,
        spatially_whole(prediction),
        spatially_whole(truth),
        kwargs={"power": power},
        input_core_dims=[core, core],
        output_core_dims=[[schema.LATITUDE]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    rows = rows.assign_coords({schema.LATITUDE: prediction[schema.LATITUDE]})
    remaining = [d for d in dims if d != schema.LONGITUDE]
    return spatial_mean(rows, weights=weights, dims=remaining, skipna=skipna)


def _sample_mean(x: xr.DataArray, sample_dim: SampleDim, skipna: bool) -> xr.DataArray:
    if sample_dim is not None and sample_dim in x.dims:
        return x.mean(sample_dim, skipna=skipna)
    return x


def _describe(x: xr.DataArray, name: str, **settings) -> xr.DataArray:
    x.name = name
    x.attrs = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in settings.items()}
    return x


def _weights_label(weights: WeightsLike) -> str:
    return "custom" if isinstance(weights, xr.DataArray) else str(weights)


def mse(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Mean squared error over ``dims`` (add ``"channel"`` for the paper's all-channel MSE), then
    the mean over ``sample_dim``. Units: the fields' units squared."""
    per_sample = _error_mean(prediction, truth, power=2, weights=weights, dims=dims, skipna=skipna)
    out = _sample_mean(per_sample, sample_dim, skipna)
    return _describe(out, "mse", weights=_weights_label(weights), dims=",".join(dims))


def mae(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Mean absolute error over ``dims``, then the mean over ``sample_dim``; the fields' units."""
    per_sample = _error_mean(prediction, truth, power=1, weights=weights, dims=dims, skipna=skipna)
    out = _sample_mean(per_sample, sample_dim, skipna)
    return _describe(out, "mae", weights=_weights_label(weights), dims=",".join(dims))


def bias(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Mean error (prediction - truth) over ``dims``, then over ``sample_dim``; field units."""
    per_sample = spatial_mean(_error(prediction, truth), weights=weights, dims=dims, skipna=skipna)
    out = _sample_mean(per_sample, sample_dim, skipna)
    return _describe(out, "bias", weights=_weights_label(weights), dims=",".join(dims))


def rmse(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: WeightsLike = "cos",
    sample_dim: SampleDim = schema.TIME,
    sqrt_before_mean: bool = True,
    skipna: bool = False,
) -> xr.DataArray:
    """Latitude-weighted root mean squared error per channel, in the fields' units.

    ``RMSE_s = sqrt(sum_{h,w} w_h (x - x_hat)^2 / (H W))`` per sample ``s`` with weights of mean 1
    (the paper's eq. 26), then the mean over ``sample_dim`` (``sqrt_before_mean=True``, the
    benchmark protocol) or ``sqrt(mean_s MSE_s)`` (``False``, WeatherBench2's headline RMSE).
    """
    weighted_mse = _error_mean(
        prediction, truth, power=2, weights=weights, dims=schema.SPATIAL_DIMS, skipna=skipna
    )
    has_samples = sample_dim is not None and sample_dim in weighted_mse.dims
    if has_samples and not sqrt_before_mean:
        out = np.sqrt(weighted_mse.mean(sample_dim, skipna=skipna))
    else:
        out = _sample_mean(np.sqrt(weighted_mse), sample_dim, skipna)
    return _describe(
        out, "rmse", weights=_weights_label(weights), sqrt_before_mean=int(sqrt_before_mean)
    )


def acc(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    *,
    weights: WeightsLike = "cos",
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Anomaly correlation coefficient (uncentred, as WeatherBench2), dimensionless.

    ``ACC = <f' o'> / sqrt(<f'^2> <o'^2>)`` with anomalies ``f' = prediction - climatology``,
    ``o' = truth - climatology`` and ``<.>`` the (weighted) spatial mean; per sample, then the mean
    over ``sample_dim``. ``climatology`` broadcasts against the fields (e.g. already selected for
    each time's day of year).
    """
    prediction, truth = xr.align(prediction, truth, join="exact")
    f_anom = prediction - climatology
    o_anom = truth - climatology

    def mean(x: xr.DataArray) -> xr.DataArray:
        return spatial_mean(x, weights=weights, skipna=skipna)

    per_sample = mean(f_anom * o_anom) / np.sqrt(mean(f_anom**2) * mean(o_anom**2))
    out = _sample_mean(per_sample, sample_dim, skipna)
    return _describe(out, "acc", weights=_weights_label(weights), units="1")


def _crps_kernel(members: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    n = members.shape[-1]
    skill = np.abs(members - obs[..., None]).mean(axis=-1)
    ordered = np.sort(members, axis=-1)
    rank_weight = 2 * np.arange(n) - n + 1
    pair_sum = 2 * (ordered * rank_weight).sum(axis=-1)  # sum_ij |x_i - x_j|
    spread = pair_sum / (2 * n * (n - 1) if fair else 2 * n * n)
    return skill - spread


def crps(
    ensemble: xr.DataArray,
    truth: xr.DataArray,
    *,
    member_dim: str = "member",
    fair: bool = False,
    weights: WeightsLike = None,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble, in the fields' units.

    Per grid point ``CRPS = mean_i |x_i - y| - sum_ij |x_i - x_j| / (2 M^2)`` (``fair=True``:
    ``2 M (M - 1)``), then the spatial mean and the mean over ``sample_dim``.
    """
    if member_dim not in ensemble.dims:
        raise DambenchInputError(
            f"crps needs the ensemble dim {member_dim!r}; ensemble has dims {ensemble.dims}."
        )
    n_members = ensemble.sizes[member_dim]
    if n_members < (2 if fair else 1):
        raise DambenchInputError(f"crps with {fair=} needs more members than {n_members}.")
    ensemble, truth = xr.align(ensemble, truth, join="exact", exclude=[member_dim])
    pointwise = xr.apply_ufunc(
        _crps_kernel,
        ensemble,
        truth,
        kwargs={"fair": fair},
        input_core_dims=[[member_dim], []],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    out = _sample_mean(spatial_mean(pointwise, weights=weights, skipna=skipna), sample_dim, skipna)
    return _describe(out, "crps", weights=_weights_label(weights), fair=int(fair))


METRICS = {
    "mse": mse,
    "mae": mae,
    "rmse": rmse,
    "bias": bias,
    "spec_div": spec_div,
    "spec_res": spec_res,
}
"""Metrics usable by :func:`evaluate`: name -> function(prediction, truth, **kwargs)."""

NORMALIZED_METRICS = {"mse_norm": mse, "mae_norm": mae}
"""Metrics computed on fields normalised with per-channel statistics (Table 3's MSE and MAE)."""

DEFAULT_EVALUATION = ("spec_div", "spec_res", "mse", "mae", "rmse", "bias")


def evaluate(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    metrics: Sequence[str] = DEFAULT_EVALUATION,
    stats: xr.Dataset | None = None,
    sample_dim: SampleDim = schema.TIME,
) -> xr.Dataset:
    """Score ``prediction`` against ``truth`` per channel with the benchmark's metrics.

    Parameters
    ----------
    prediction, truth
        Stacked fields ``(time, channel, latitude, longitude)`` in physical units.
    metrics
        Names from :data:`METRICS`, each with its default settings.
    stats
        Per-channel ``mean``/``std`` (see :func:`dambench.normalize.channel_stats`). When given,
        ``mse_norm`` and ``mae_norm`` are added: MSE and MAE of the normalised fields (Table 3).
    sample_dim
        The dim averaged over.

    Returns
    -------
    Dataset with one data variable per channel (``z500``, ...), each over ``metric``; variable
    attrs carry the channel's units, Dataset attrs the protocol settings.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise DambenchInputError(f"Unknown metrics {unknown}; choose from {list(METRICS)}.")
    if schema.CHANNEL not in prediction.dims:
        raise DambenchInputError(
            f"evaluate needs stacked fields with a {schema.CHANNEL!r} dim; got {prediction.dims}."
        )
    scores = {name: METRICS[name](prediction, truth, sample_dim=sample_dim) for name in metrics}
    if stats is not None:
        norm_pred = normalize(prediction, stats)
        norm_truth = normalize(truth, stats)
        for name, func in NORMALIZED_METRICS.items():
            scores[name] = func(norm_pred, norm_truth, sample_dim=sample_dim)
    stacked = xr.concat(
        [_bare(score) for score in scores.values()],
        dim=xr.DataArray(list(scores), dims="metric", name="metric"),
    )
    result = stacked.to_dataset(dim=schema.CHANNEL)
    units = dict(
        zip(prediction[schema.CHANNEL].values.tolist(), _units_of(prediction), strict=True)
    )
    for channel in result.data_vars:
        result[channel].attrs["units"] = units[channel]
    result.attrs = {
        "sample_dim": str(sample_dim),
        "n_samples": int(prediction.sizes.get(sample_dim, 1)) if sample_dim else 1,
        "rmse": "cos latitude weights, RMSE per sample then mean over samples",
        "mse_mae": "unweighted grid means",
        "spectral": "q=0.9, per-sample scores then mean",
        "normalized": int(stats is not None),
    }
    return result


def _bare(score: xr.DataArray) -> xr.DataArray:
    out = score.reset_coords(drop=True)
    out.attrs = {}
    return out


def _units_of(field: xr.DataArray) -> list[str]:
    channels = field[schema.CHANNEL].values.tolist()
    if "units" in field.coords:
        return [str(u) for u in field["units"].values.tolist()]
    return [schema.channel_units(c) if c in schema.CHANNEL_INDEX else "" for c in channels]


TABLE3_COLUMNS = ("SpecDiv", "MSE(1e-2)", "MAE(1e-2)") + tuple(
    f"RMSE {c}" for c in schema.HEADLINE_CHANNELS
)


def table3_row(result: xr.Dataset) -> dict[str, float]:
    """One row of the paper's Table 3 from an :func:`evaluate` result.

    SpecDiv, MSE and MAE are means over the channels present (MSE/MAE on normalised fields,
    times 100); RMSE for each headline channel present, in physical units. Columns whose inputs are
    missing (a channel not in the data, no ``stats``) are left out, never faked.
    """
    channels = list(result.data_vars)
    table = result.to_dataarray(dim=schema.CHANNEL)
    metrics = table["metric"].values.tolist()
    row: dict[str, float] = {}
    if "spec_div" in metrics:
        row["SpecDiv"] = float(table.sel(metric="spec_div").mean())
    for metric, column in (("mse_norm", "MSE(1e-2)"), ("mae_norm", "MAE(1e-2)")):
        if metric in metrics:
            row[column] = 100 * float(table.sel(metric=metric).mean())
    if "rmse" in metrics:
        for channel in schema.HEADLINE_CHANNELS:
            if channel in channels:
                row[f"RMSE {channel}"] = float(result[channel].sel(metric="rmse"))
    return row


def format_table3(
    results: Mapping[str, xr.Dataset], *, fmt: Literal["text", "markdown"] = "text"
) -> str:
    """Render rows ``{name: evaluate(...)}`` as the paper's Table 3 (text or Markdown)."""
    rows = {name: table3_row(res) for name, res in results.items()}
    columns = [c for c in TABLE3_COLUMNS if any(c in r for r in rows.values())]
    header = ["Method", *columns]
    body = [
        [name, *(_format_number(r[c]) if c in r else "-" for c in columns)]
        for name, r in rows.items()
    ]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        lines = ["  ".join(str(v).rjust(w) for v, w in zip(header, widths, strict=True))]
        lines += [
            "  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)) for row in body
        ]
    return "\n".join(lines)


def scores_to_frame(results: Mapping[str, xr.Dataset]):
    """Long table (method, channel, metric, value, field_units) of :func:`evaluate` results."""
    import pandas as pd

    rows = [
        {
            "method": method,
            "channel": channel,
            "metric": metric,
            "value": float(value),
            "field_units": result[channel].attrs.get("units", ""),
        }
        for method, result in results.items()
        for channel in result.data_vars
        for metric, value in zip(
            result["metric"].values.tolist(), result[channel].values, strict=True
        )
    ]
    return pd.DataFrame(rows, columns=["method", "channel", "metric", "value", "field_units"])


def _format_number(value: float) -> str:
    if not np.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"
