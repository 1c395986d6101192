"""Pointwise metrics and the benchmark evaluation: pure functions over xarray objects.

Every function selects dims by name, stays lazy on dask input, computes in float64 whatever the
input dtype (float16 and integer fields neither overflow nor wrap), and records its settings in
``attrs``. ``prediction`` and ``truth`` must share coordinates (``xr.align(join="exact")``); the
sample dim must be non-empty and free of duplicated labels.

Conventions (the DAMBench protocol; see README "Metrics"):

- ``mse``, ``mae``, ``bias``: grid means over (latitude, longitude), unweighted by default as in
  the paper's eq. 24-25; ``weights="cos"``/``"area"``/a 1-D or 2-D DataArray for weighted means.
- ``rmse``: per channel, latitude-weighted with ``cos`` weights (the paper's eq. 26, normalised to
  mean 1), RMSE per sample and then the mean over samples (the upstream code's protocol);
  ``sqrt_before_mean=False`` gives WeatherBench2's sqrt of the mean MSE.
- Every metric averages over ``sample_dim`` (default ``"time"``) when present; pass
  ``sample_dim=None`` for per-sample values.
- NaN (one rule for every metric): points of zero weight (outside a region, the pole rows under
  ``cos`` weights) never enter a score. ``skipna=False`` (default): a NaN in the prediction or the
  truth at a weighted point makes that sample's score NaN, and so the mean over samples. With
  ``skipna=True`` the weights are renormalised over the points where both are finite (a sample
  without one scores NaN) and NaN samples are left out of the mean over samples. A NaN can
  therefore never improve a score. Inf is non-finite like NaN: ``skipna=True`` leaves it out
  too; otherwise it makes the score inf or NaN.
- Errors are formed in float64: a finite 1e30 in a float32 field squares to 1e60, never inf.
- Regions: pass ``weights=dambench.regions.region_weights(...)`` to a metric, or ``region=`` to
  :func:`evaluate`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench._typing import ErrorKind, RegionLike, SpectralReduction, WeightsLike
from dambench.exceptions import DambenchInputError
from dambench.grid import check_sample_dim, error_mean, spatial_mean
from dambench.normalize import normalize
from dambench.regions import Region, region_weights, resolve_region
from dambench.spectral import spec_div, spec_res
from dambench.units import canonical_units

SampleDim = str | None


def _aligned(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    sample_dim: SampleDim,
    exclude: Sequence[str] = (),
    skipna: bool = False,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Validated, exactly aligned (prediction, truth) in float64, so that no error or squared
    error overflows (a finite 1e30 squares to 1e60, not inf); with ``skipna`` Inf becomes NaN,
    so that every non-finite value is left out alike."""
    for role, field in (("prediction", prediction), ("truth", truth)):
        if not np.issubdtype(field.dtype, np.number):
            raise DambenchInputError(f"{role} must be numeric, got dtype {field.dtype}.")
        check_sample_dim(field, schema.TIME if sample_dim is None else sample_dim)
    try:
        aligned = xr.align(prediction, truth, join="exact", exclude=exclude)
    except ValueError as err:
        raise DambenchInputError(
            f"prediction and truth must share coordinates (same times, channels, grid): {err}"
        ) from err
    return tuple(_as_float64(field, skipna) for field in aligned)


def _as_float64(field: xr.DataArray, skipna: bool) -> xr.DataArray:
    out = field if field.dtype == np.float64 else field.astype(np.float64)
    return out.where(np.isfinite(out)) if skipna else out


def _sample_mean(x: xr.DataArray, sample_dim: SampleDim, skipna: bool) -> xr.DataArray:
    if sample_dim is not None and sample_dim in x.dims:
        return x.mean(sample_dim, skipna=skipna)
    return x


def _describe(x: xr.DataArray, name: str, **settings) -> xr.DataArray:
    x.name = name
    x.attrs = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in settings.items()}
    return x


def _weights_label(weights: WeightsLike) -> str:
    if isinstance(weights, xr.DataArray):
        if "region" in weights.attrs:
            return f"{weights.attrs.get('base', 'None')} over region {weights.attrs['region']}"
        return "custom"
    return str(weights)


def _pointwise(
    name: str,
    kind: ErrorKind,
    prediction: xr.DataArray,
    truth: xr.DataArray,
    weights: WeightsLike,
    dims: Sequence[str],
    sample_dim: SampleDim,
    skipna: bool,
) -> xr.DataArray:
    """A grid-mean error metric: the (weighted) mean of the error over ``dims``, then samples."""
    prediction, truth = _aligned(prediction, truth, sample_dim, skipna=skipna)
    options = {"weights": weights, "dims": dims, "skipna": skipna}
    per_sample = error_mean(prediction, truth, kind=kind, **options)
    out = _sample_mean(per_sample, sample_dim, skipna)
    label = _weights_label(weights)
    return _describe(out, name, weights=label, dims=",".join(dims), skipna=int(skipna))


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
    the mean over ``sample_dim``. Units: the fields' units squared. NaN: see the module notes."""
    return _pointwise("mse", "squared", prediction, truth, weights, dims, sample_dim, skipna)


def mae(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Mean absolute error over ``dims``, then the mean over ``sample_dim``; the fields' units.
    NaN: see the module notes."""
    return _pointwise("mae", "absolute", prediction, truth, weights, dims, sample_dim, skipna)


def bias(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
) -> xr.DataArray:
    """Mean error (prediction - truth) over ``dims``, then over ``sample_dim``; field units.
    NaN: see the module notes."""
    return _pointwise("bias", "signed", prediction, truth, weights, dims, sample_dim, skipna)


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

    ``RMSE_s = sqrt(sum_{h,w} w_h (x - x_hat)^2 / sum_{h,w} w_h)`` per sample ``s`` (the paper's
    eq. 26; any 1-D or 2-D ``weights``, e.g. a region's), then the mean over ``sample_dim``
    (``sqrt_before_mean=True``, the benchmark protocol) or ``sqrt(mean_s MSE_s)`` (``False``,
    WeatherBench2's headline RMSE). NaN: see the module notes.
    """
    prediction, truth = _aligned(prediction, truth, sample_dim, skipna=skipna)
    weighted_mse = error_mean(
        prediction, truth, kind="squared", weights=weights, dims=schema.SPATIAL_DIMS, skipna=skipna
    )
    has_samples = sample_dim is not None and sample_dim in weighted_mse.dims
    if has_samples and not sqrt_before_mean:
        out = np.sqrt(weighted_mse.mean(sample_dim, skipna=skipna))
    else:
        out = _sample_mean(np.sqrt(weighted_mse), sample_dim, skipna)
    return _describe(
        out,
        "rmse",
        weights=_weights_label(weights),
        sqrt_before_mean=int(sqrt_before_mean),
        skipna=int(skipna),
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
    each time's day of year). With ``skipna=True`` all three means use the points where both
    anomalies are finite; otherwise a NaN gives NaN.
    """
    prediction, truth = _aligned(prediction, truth, sample_dim, skipna=skipna)
    clim = climatology.astype(np.float64)
    f_anom = prediction.astype(np.float64) - clim
    o_anom = truth.astype(np.float64) - clim
    if skipna:
        both = f_anom.notnull() & o_anom.notnull()
        f_anom, o_anom = f_anom.where(both), o_anom.where(both)

    def mean(x: xr.DataArray) -> xr.DataArray:
        return spatial_mean(x, weights=weights, skipna=skipna)

    per_sample = mean(f_anom * o_anom) / np.sqrt(mean(f_anom**2) * mean(o_anom**2))
    out = _sample_mean(per_sample, sample_dim, skipna)
    return _describe(out, "acc", weights=_weights_label(weights), units="1", skipna=int(skipna))


def _crps_kernel(members: np.ndarray, obs: np.ndarray, fair: bool) -> np.ndarray:
    members = members.astype(np.float64, copy=False)
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
    ``2 M (M - 1)``), then the spatial mean and the mean over ``sample_dim``. A NaN member or
    truth makes that point's CRPS NaN; the spatial mean then follows the module's NaN rule.
    """
    if member_dim not in ensemble.dims:
        raise DambenchInputError(
            f"crps needs the ensemble dim {member_dim!r}; ensemble has dims {ensemble.dims}."
        )
    n_members = ensemble.sizes[member_dim]
    if n_members < (2 if fair else 1):
        raise DambenchInputError(f"crps with {fair=} needs more members than {n_members}.")
    ensemble, truth = _aligned(ensemble, truth, sample_dim, exclude=[member_dim], skipna=skipna)
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
    return _describe(
        out, "crps", weights=_weights_label(weights), fair=int(fair), skipna=int(skipna)
    )


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

SPECTRAL_METRICS = ("spec_div", "spec_res")
"""Metrics defined on whole-globe fields only: :func:`evaluate` leaves them out for a region."""


def evaluate(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    metrics: Sequence[str] = DEFAULT_EVALUATION,
    stats: xr.Dataset | None = None,
    sample_dim: SampleDim = schema.TIME,
    skipna: bool = False,
    region: RegionLike = None,
    land_sea_mask: xr.DataArray | None = None,
    spectral_reduction: SpectralReduction = "per_sample",
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
        The dim averaged over; None keeps per-sample values (a ``time`` dim in the result).
    skipna
        The NaN rule of every metric (module notes): False, a NaN gives NaN; True, NaN points
        and NaN samples are left out.
    region
        A name in :data:`dambench.regions.REGIONS`, a :class:`~dambench.regions.Region` or a
        ``"box:lat_min,lat_max,lon_min,lon_max"`` string (default: the globe). Inside a region
        MSE/MAE/bias are unweighted means over its grid points and RMSE is cos-weighted over them.
        SpecDiv and SpecRes are defined for the whole globe only: for any other region they are
        left out of the result (listed in ``attrs["metrics_left_out"]``), never approximated.
    land_sea_mask
        Land fraction over (latitude, longitude), needed by the ``land`` and ``sea`` regions.
    spectral_reduction
        ``"per_sample"`` (default: SpecDiv/SpecRes per sample, then the mean) or
        ``"mean_field"`` (ChaosBench's batch value: fields averaged over the samples first).

    Returns
    -------
    Dataset with one data variable per channel (``z500``, ...), each over ``metric`` (and the
    sample dim when ``sample_dim=None``); variable attrs carry the channel's units, Dataset attrs
    the protocol settings (``region``, ``skipna``, ``spectral_reduction``, ...).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise DambenchInputError(f"Unknown metrics {unknown}; choose from {list(METRICS)}.")
    if schema.CHANNEL not in prediction.dims:
        raise DambenchInputError(
            f"evaluate needs stacked fields with a {schema.CHANNEL!r} dim; got {prediction.dims}."
        )
    if spectral_reduction == "mean_field" and sample_dim is None:
        raise DambenchInputError(
            "spectral_reduction='mean_field' averages fields over the sample dim: give "
            "sample_dim (e.g. 'time'), or use 'per_sample' for per-sample values."
        )
    region = resolve_region(region)
    names = [m for m in metrics if region.is_global or m not in SPECTRAL_METRICS]
    if not names and stats is None:
        raise DambenchInputError(
            f"Nothing to score in region {region.name!r}: {list(metrics)} are defined for the "
            "whole globe only; add pointwise metrics or pass stats."
        )
    common = {"sample_dim": sample_dim, "skipna": skipna}
    plain, cos = _region_weights(region, prediction, land_sea_mask)
    scores = {}
    for name in names:
        if name in SPECTRAL_METRICS:
            scores[name] = METRICS[name](prediction, truth, reduce=spectral_reduction, **common)
        else:
            weights = cos if name == "rmse" else plain
            scores[name] = METRICS[name](prediction, truth, weights=weights, **common)
    if stats is not None:
        norm_pred, norm_truth = normalize(prediction, stats), normalize(truth, stats)
        for name, func in NORMALIZED_METRICS.items():
            scores[name] = func(norm_pred, norm_truth, weights=plain, **common)
    result = _as_table(scores, prediction)
    result.attrs = _evaluation_attrs(prediction, sample_dim, skipna, region, spectral_reduction)
    result.attrs["metrics_left_out"] = ",".join(m for m in metrics if m not in names)
    result.attrs["normalized"] = int(stats is not None)
    return result


def _as_table(scores: Mapping[str, xr.DataArray], prediction: xr.DataArray) -> xr.Dataset:
    """One variable per channel over ``metric``, each with the channel's units."""
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
    return result


def _region_weights(
    region: Region, template: xr.DataArray, land_sea_mask: xr.DataArray | None
) -> tuple[WeightsLike, WeightsLike]:
    """(plain, cos) weights of a region: None and "cos" for the globe, 2-D arrays otherwise."""
    if region.is_global:
        return None, "cos"
    lat, lon = template[schema.LATITUDE], template[schema.LONGITUDE]
    plain = region_weights(region, lat, lon, base=None, land_sea_mask=land_sea_mask)
    cos = region_weights(region, lat, lon, base="cos", land_sea_mask=land_sea_mask)
    return plain, cos


def _evaluation_attrs(
    prediction: xr.DataArray,
    sample_dim: SampleDim,
    skipna: bool,
    region: Region,
    spectral_reduction: SpectralReduction,
) -> dict[str, str | int]:
    spectral = {
        "per_sample": "q=0.9, per-sample scores then mean over samples",
        "mean_field": "q=0.9, fields averaged over samples then scored (ChaosBench)",
    }
    return {
        "sample_dim": str(sample_dim),
        "n_samples": int(prediction.sizes.get(sample_dim, 1)) if sample_dim else 1,
        "skipna": int(skipna),
        "region": region.name,
        "region_definition": region.describe(),
        "rmse": "cos latitude weights, RMSE per sample then mean over samples",
        "mse_mae": "unweighted means over the region's grid points",
        "spectral_reduction": spectral_reduction,
        "spectral": spectral[spectral_reduction],
    }


def _bare(score: xr.DataArray) -> xr.DataArray:
    out = score.reset_coords(drop=True)
    out.attrs = {}
    return out


def _units_of(field: xr.DataArray) -> list[str]:
    channels = field[schema.CHANNEL].values.tolist()
    if "units" in field.coords:
        return [str(u) for u in field["units"].values.tolist()]
    return [schema.channel_units(c) if c in schema.CHANNEL_INDEX else "" for c in channels]


_FIELD_UNIT_METRICS = frozenset({"mae", "rmse", "bias", "crps"})
_DIMENSIONLESS_METRICS = frozenset({"mse_norm", "mae_norm", "spec_div", "spec_res", "acc"})


def metric_units(metric: str, field_units: str) -> str:
    """Units of a metric's value given the field's units (UDUNITS spelling, as the schema).

    ``mse``: the units squared, term by term (``"m s-1" -> "m2 s-2"``, ``"K" -> "K2"``; a
    units string that is not a product of powers becomes ``"(<u>)2"``); ``mae``, ``rmse``,
    ``bias``, ``crps``: the field's units; ``mse_norm``, ``mae_norm``, ``spec_div``,
    ``spec_res``, ``acc``: ``"1"``. Unknown field units (``""``) stay unknown.
    """
    if metric in _DIMENSIONLESS_METRICS:
        return "1"
    units = canonical_units(field_units) if field_units else ""
    if metric in _FIELD_UNIT_METRICS:
        return units
    if metric == "mse":
        return _squared_units(units)
    known = sorted(_FIELD_UNIT_METRICS | _DIMENSIONLESS_METRICS | {"mse"})
    raise DambenchInputError(f"No units rule for metric {metric!r}; known metrics: {known}.")


def _squared_units(units: str) -> str:
    if units in ("", "1"):
        return units
    terms = []
    for term in units.split():
        match = re.fullmatch(r"([A-Za-z]+)(-?\d+)?", term)
        if match is None:
            return f"({units})2"
        terms.append(f"{match.group(1)}{2 * int(match.group(2) or 1)}")
    return " ".join(terms)


TABLE3_COLUMNS = ("SpecDiv", "MSE(1e-2)", "MAE(1e-2)") + tuple(
    f"RMSE {c}" for c in schema.HEADLINE_CHANNELS
)


def table3_row(result: xr.Dataset) -> dict[str, float]:
    """One row of the paper's Table 3 from an :func:`evaluate` result.

    SpecDiv, MSE and MAE are means over the channels present (MSE/MAE on normalised fields,
    times 100; a NaN channel makes the mean NaN); RMSE for each headline channel present, in
    physical units. Columns whose inputs are missing (a channel not in the data, no ``stats``, a
    spectral metric outside the globe) are left out, never faked.
    """
    channels = list(result.data_vars)
    table = result.to_dataarray(dim=schema.CHANNEL)
    metrics = table["metric"].values.tolist()
    row: dict[str, float] = {}
    if "spec_div" in metrics:
        row["SpecDiv"] = float(table.sel(metric="spec_div").mean(skipna=False))
    for metric, column in (("mse_norm", "MSE(1e-2)"), ("mae_norm", "MAE(1e-2)")):
        if metric in metrics:
            row[column] = 100 * float(table.sel(metric=metric).mean(skipna=False))
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
    """Long table (method, channel, metric, value, units, region) of :func:`evaluate` results.

    ``units`` are the value's units (:func:`metric_units`: MSE in the field's units squared,
    normalised and spectral metrics ``"1"``); ``region`` comes from the result's attrs.
    """
    import pandas as pd

    rows = []
    for method, result in results.items():
        extra = sorted({d for var in result.data_vars.values() for d in var.dims} - {"metric"})
        if extra:
            raise DambenchInputError(
                f"scores_to_frame needs sample-averaged results (one value per metric); "
                f"{method!r} has dims {extra}: evaluate with sample_dim='time'."
            )
        region = str(result.attrs.get("region", "global"))
        metrics = result["metric"].values.tolist()
        for channel in result.data_vars:
            field_units = str(result[channel].attrs.get("units", ""))
            for metric, value in zip(metrics, result[channel].values, strict=True):
                rows.append(
                    {
                        "method": method,
                        "channel": channel,
                        "metric": metric,
                        "value": float(value),
                        "units": metric_units(metric, field_units),
                        "region": region,
                    }
                )
    columns = ["method", "channel", "metric", "value", "units", "region"]
    return pd.DataFrame(rows, columns=columns)


def _format_number(value: float) -> str:
    if not np.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"
