"""The canonical grid, latitude weights, weighted spatial means and conversion to canonical form.

The one place that defines the 1.5 degree grid (121 x 240, poles included, latitude north to
south, longitude 0 to 358.5), the latitude weights every metric uses and how weights (1-D or 2-D,
e.g. a region's) are resolved and applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench._typing import ErrorKind, WeightsLike, XrObject
from dambench.exceptions import DambenchInputError, DambenchSchemaError


@dataclass(frozen=True)
class Grid:
    """An equiangular global grid with both poles, latitude north to south, longitude from 0.

    Parameters
    ----------
    spacing_deg
        Grid spacing in degrees; 180 and 360 must be multiples of it.
    """

    spacing_deg: float = schema.GRID_SPACING_DEG

    def __post_init__(self) -> None:
        for extent in (180.0, 360.0):
            n = extent / self.spacing_deg
            if self.spacing_deg <= 0 or abs(n - round(n)) > 1e-9:
                raise DambenchInputError(
                    f"Grid spacing_deg={self.spacing_deg} must divide 180 and 360 exactly."
                )

    @property
    def shape(self) -> tuple[int, int]:
        """(n_latitude, n_longitude)."""
        return round(180 / self.spacing_deg) + 1, round(360 / self.spacing_deg)

    @property
    def latitude(self) -> np.ndarray:
        """Latitudes in degrees north, 90 -> -90, float64."""
        return np.linspace(schema.LATITUDE_FIRST_DEG, -schema.LATITUDE_FIRST_DEG, self.shape[0])

    @property
    def longitude(self) -> np.ndarray:
        """Longitudes in degrees east, 0 -> 360 - spacing, float64."""
        return schema.LONGITUDE_FIRST_DEG + self.spacing_deg * np.arange(self.shape[1])

    def coords(self) -> dict[str, xr.DataArray]:
        """Latitude and longitude coordinates with CF attributes."""
        return {
            schema.LATITUDE: xr.DataArray(
                self.latitude, dims=schema.LATITUDE, attrs=LATITUDE_ATTRS
            ),
            schema.LONGITUDE: xr.DataArray(
                self.longitude, dims=schema.LONGITUDE, attrs=LONGITUDE_ATTRS
            ),
        }


LATITUDE_ATTRS = {
    "units": "degrees_north",
    "standard_name": "latitude",
    "long_name": "latitude",
    "axis": "Y",
}
LONGITUDE_ATTRS = {
    "units": "degrees_east",
    "standard_name": "longitude",
    "long_name": "longitude",
    "axis": "X",
}

CANONICAL_GRID = Grid()
"""The benchmark grid: 1.5 degrees, 121 x 240."""

COORD_TOLERANCE_DEG = 1e-6
"""Largest difference between a weight's coordinate and the data's that still counts as equal."""


def lat_weights(
    latitude: xr.DataArray | np.ndarray,
    method: Literal["cos", "area"] = "cos",
) -> xr.DataArray:
    """Latitude weights normalised to mean 1 over the latitude rows.

    Parameters
    ----------
    latitude
        Latitudes in degrees north, ascending or descending; a 1-D DataArray (its values and dim
        are kept as the coordinate of the result) or array.
    method
        ``"cos"``: cos(latitude) computed in float64 and clipped at 0, as in the DAMBench paper
        (eq. 26) and its upstream code; the pole rows get exactly 0.
        ``"area"``: the area of each grid cell, integral of cos between the mid-points to the
        neighbouring rows, the outermost cells reaching the poles (WeatherBench2's weights); on the
        121-row grid the pole rows get about 5.18e-3.

    Returns
    -------
    DataArray over ``latitude``, float64, mean 1.
    """
    if isinstance(latitude, xr.DataArray):
        lat_da = latitude
    else:
        lat_da = xr.DataArray(np.asarray(latitude), dims=schema.LATITUDE)
    if lat_da.ndim != 1:
        raise DambenchInputError(f"latitude must be 1-D, got dims {lat_da.dims}.")
    lat_deg = np.asarray(lat_da.values, dtype=np.float64)
    if not np.all(np.isfinite(lat_deg)) or np.any(np.abs(lat_deg) > 90 + schema.GRID_ATOL_DEG):
        raise DambenchInputError("latitude must be finite and within [-90, 90] degrees.")
    if method == "cos":
        raw = np.clip(np.cos(np.deg2rad(lat_deg)), 0.0, None)
        raw[np.isclose(np.abs(lat_deg), 90.0, atol=1e-9, rtol=0)] = 0.0
    elif method == "area":
        raw = _cell_area_weights(lat_deg)
    else:
        raise DambenchInputError(f"Unknown latitude weighting {method=}; use 'cos' or 'area'.")
    if not raw.sum() > 0:
        raise DambenchInputError(
            f"Every latitude {lat_deg.tolist()} gets weight 0 with {method=} (only poles); "
            "use method='area' or weights=None."
        )
    weights = raw / raw.mean()
    dim = lat_da.dims[0]
    return xr.DataArray(
        weights, dims=dim, coords={dim: lat_da.values}, name="lat_weights", attrs={"method": method}
    )


def _cell_area_weights(lat_deg: np.ndarray) -> np.ndarray:
    """sin(upper bound) - sin(lower bound) per row, in the rows' own order."""
    order = np.argsort(lat_deg)
    lat_sorted = np.deg2rad(lat_deg[order])
    if np.any(np.diff(lat_sorted) <= 0):
        raise DambenchInputError("latitude values must be unique.")
    bounds = np.concatenate([[-np.pi / 2], (lat_sorted[1:] + lat_sorted[:-1]) / 2, [np.pi / 2]])
    area = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    out = np.empty_like(area)
    out[order] = area
    return out


def resolve_weights(weights: WeightsLike, obj: XrObject) -> xr.DataArray | None:
    """Turn a weights option into validated float64 weights aligned with ``obj`` (or None).

    Parameters
    ----------
    weights
        ``None`` (uniform), ``"cos"`` or ``"area"`` (see :func:`lat_weights`), or a DataArray over
        ``latitude``, ``longitude`` or both (e.g. :func:`dambench.regions.region_weights`). A
        DataArray must be finite and non-negative with a positive sum; its coordinates are matched
        to ``obj``'s by value (within 1e-6 degrees, any order), or by position when it has none.
    obj
        The object to be averaged; supplies the latitude/longitude coordinates.

    Returns
    -------
    DataArray over a subset of (latitude, longitude), in ``obj``'s coordinate order, or None.
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        return lat_weights(obj[schema.LATITUDE], method=weights)  # type: ignore[arg-type]
    if not isinstance(weights, xr.DataArray):
        raise DambenchInputError(
            f"weights must be 'cos', 'area', None or a DataArray, got {type(weights).__name__}."
        )
    bad_dims = [d for d in weights.dims if d not in schema.SPATIAL_DIMS or d not in obj.dims]
    if bad_dims:
        raise DambenchInputError(
            f"weights have dims {weights.dims}; expected a subset of {schema.SPATIAL_DIMS} "
            f"that the data (dims {tuple(obj.dims)}) also has."
        )
    values = np.asarray(weights.values, dtype=np.float64)
    if np.any(np.isnan(values)):
        raise DambenchInputError("weights contain NaN.")
    if np.any(values < 0):
        raise DambenchInputError(f"weights must be non-negative, found min {values.min():.3g}.")
    if not values.sum() > 0:
        raise DambenchInputError("weights sum to zero: no grid point would be scored.")
    return match_grid(weights.astype(np.float64), obj)


def match_grid(field: xr.DataArray, obj: XrObject) -> xr.DataArray:
    """``field`` (over latitude and/or longitude) reindexed to ``obj``'s grid coordinates.

    Coordinates match by value within :data:`COORD_TOLERANCE_DEG` (any order; longitudes modulo
    360 degrees, so -180..180 serves 0..360), or by position when ``field`` has none.
    """
    out = field.reset_coords(drop=True)
    for dim in out.dims:
        out = _align_dim(out, obj, dim)
    return out


def _align_dim(weights: xr.DataArray, obj: XrObject, dim: str) -> xr.DataArray:
    """``weights`` with ``dim`` matched to ``obj``'s coordinate values (or sizes, if unlabelled)."""
    if dim not in weights.coords or dim not in obj.coords:
        if weights.sizes[dim] != obj.sizes[dim]:
            raise DambenchInputError(
                f"{weights.name or 'weights'}: {weights.sizes[dim]} {dim} points, the data has "
                f"{obj.sizes[dim]}."
            )
        return weights.assign_coords({dim: obj[dim].values}) if dim in obj.coords else weights
    source = np.asarray(weights[dim].values, dtype=np.float64)
    target = np.asarray(obj[dim].values, dtype=np.float64)
    gap = target[:, None] - source[None, :]
    if dim == schema.LONGITUDE:
        gap = (gap + 180.0) % 360.0 - 180.0
    nearest = np.abs(gap).argmin(axis=1)
    worst = np.abs(gap[np.arange(target.size), nearest]).max(initial=0.0)
    if worst > COORD_TOLERANCE_DEG:
        raise DambenchInputError(
            f"{weights.name or 'weights'}: {dim} coordinates do not match the data's: a data "
            f"{dim} is {worst:.3g} degrees from the nearest one (tolerance "
            f"{COORD_TOLERANCE_DEG}); build it on the data's grid."
        )
    return weights.isel({dim: nearest}).assign_coords({dim: obj[dim].values})


def weight_matrix(weights: WeightsLike, obj: XrObject) -> np.ndarray:
    """Weights as a float64 (latitude, longitude) array in ``obj``'s order (ones for None)."""
    shape = (obj.sizes[schema.LATITUDE], obj.sizes[schema.LONGITUDE])
    w = resolve_weights(weights, obj)
    if w is None:
        return np.ones(shape)
    dims = [d for d in schema.SPATIAL_DIMS if d in w.dims]
    values = w.transpose(*dims).values
    if dims == [schema.LATITUDE]:
        values = values[:, None]
    elif dims == [schema.LONGITUDE]:
        values = values[None, :]
    return np.ascontiguousarray(np.broadcast_to(values, shape), dtype=np.float64)


def spatial_mean(
    x: xr.DataArray,
    *,
    weights: WeightsLike = None,
    dims: Sequence[str] = schema.SPATIAL_DIMS,
    skipna: bool = False,
) -> xr.DataArray:
    """Weighted mean of ``x`` over ``dims``, computed in float64 whatever the input dtype.

    ``mean = sum(w x) / sum(w)`` over ``dims``. Points of zero weight do not enter the mean,
    whatever their value (NaN included), so a region's score ignores the data outside it. NaN
    among the weighted points: ``skipna=False`` (default), a NaN gives NaN; ``skipna=True``, NaN
    points are dropped and the weights renormalised over the rest (NaN when none is left).

    Parameters
    ----------
    x
        Any DataArray with ``dims``.
    weights
        See :func:`resolve_weights`; they broadcast over the dims they lack.
    dims
        Dims to average over.

    Returns
    -------
    float64 DataArray without ``dims``.
    """
    dims = list(dims)
    missing = [d for d in dims if d not in x.dims]
    if missing:
        raise DambenchInputError(f"Cannot average over missing dims {missing}; x has {x.dims}.")
    x = x.astype(np.float64)
    w = resolve_weights(weights, x)
    if w is None:
        w = xr.DataArray(1.0)
    elif bool((w == 0).any()):
        x = x.where(w > 0, 0.0)
    ones = xr.DataArray(np.ones([x.sizes[d] for d in dims]), dims=dims)
    if skipna:
        numerator = (x * w).sum(dims, skipna=True)
        denominator = (x.notnull() * w).sum(dims)
    else:
        numerator = (x * w).sum(dims, skipna=False)
        denominator = (ones * w).sum(dims)
    return numerator / denominator.where(denominator > 0)


_BLOCK_ELEMENTS = 2**19
"""Elements per block in the fused error kernel: temporaries stay in cache (2 MB of float32)."""


def _error_sums(
    pred: np.ndarray, truth: np.ndarray, *, weights: np.ndarray, kind: ErrorKind, skipna: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(sum w e, sum w)`` over the last two axes, ``e`` the signed, absolute or squared error.

    Fuses difference, transform and weighted reduction block by block, so no full-size temporary
    is allocated. The error is formed in float32 when both inputs are float32 or narrower
    (float16, 8- and 16-bit integers: exact in float32, and their squared differences stay far
    below float32's 3.4e38) and in float64 otherwise; sums accumulate in float64. Zero-weight
    points are dropped; with ``skipna`` NaN points leave both sums.
    """
    pred, truth = np.broadcast_arrays(pred, truth)
    *lead, n_lat, n_lon = pred.shape
    flat_pred = pred.reshape(-1, n_lat, n_lon)
    flat_truth = truth.reshape(-1, n_lat, n_lon)
    dtype = np.result_type(pred.dtype, truth.dtype, np.float32)
    separable = bool(np.all(weights == weights[:, :1]))
    numerator = np.empty(flat_pred.shape[0])
    denominator = np.full(flat_pred.shape[0], weights.sum())
    step = max(1, _BLOCK_ELEMENTS // (n_lat * n_lon))
    for start in range(0, flat_pred.shape[0], step):
        rows = slice(start, start + step)
        with np.errstate(invalid="ignore"):  # inf - inf is NaN, handled as any NaN
            block = np.subtract(flat_pred[rows], flat_truth[rows], dtype=dtype)
        if kind == "squared":
            np.square(block, out=block)
        elif kind == "absolute":
            np.abs(block, out=block)
        missing = np.isnan(block) if skipna else None
        if missing is not None:
            np.copyto(block, 0.0, where=missing)
        reduce = _row_weighted_sums if separable else _point_weighted_sums
        numerator[rows], valid_weight = reduce(block, missing, weights)
        if valid_weight is not None:
            denominator[rows] = valid_weight
    return numerator.reshape(lead), denominator.reshape(lead)


def _row_weighted_sums(
    block: np.ndarray, missing: np.ndarray | None, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted sums of (n, lat, lon) ``block`` for weights constant along longitude."""
    row_weights = weights[:, 0]
    row_sums = block.sum(axis=-1, dtype=np.float64)
    row_sums[:, row_weights == 0] = 0.0  # NaN on a zero-weight row must not leak
    if missing is None:
        return row_sums @ row_weights, None
    return row_sums @ row_weights, (block.shape[-1] - missing.sum(axis=-1)) @ row_weights


def _point_weighted_sums(
    block: np.ndarray, missing: np.ndarray | None, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Weighted sums of (n, lat, lon) ``block`` for any (lat, lon) weights."""
    flat = block.reshape(block.shape[0], -1)
    w = weights.ravel()
    flat[:, w == 0] = 0.0  # NaN on a zero-weight point must not leak
    if missing is None:
        return flat @ w, None
    return flat @ w, np.logical_not(missing.reshape(flat.shape)) @ w


def error_mean(
    prediction: xr.DataArray,
    truth: xr.DataArray,
    *,
    kind: ErrorKind,
    weights: WeightsLike,
    dims: Sequence[str],
    skipna: bool,
) -> xr.DataArray:
    """Weighted mean of the signed, absolute or squared error ``prediction - truth`` over ``dims``.

    Same weights and NaN rules as :func:`spatial_mean`, in float64 whatever the input dtype; when
    ``dims`` holds both spatial dims, one fused pass over the data (no full-size temporary).
    ``prediction`` and ``truth`` must already be aligned.
    """
    dims = list(dims)
    missing = [d for d in dims if d not in prediction.dims]
    if missing:
        raise DambenchInputError(
            f"Cannot average over missing dims {missing}; the fields have {prediction.dims}."
        )
    core = list(schema.SPATIAL_DIMS)
    if not set(core) <= set(dims):
        err = prediction.astype(np.float64) - truth.astype(np.float64)
        err = err**2 if kind == "squared" else abs(err) if kind == "absolute" else err
        return spatial_mean(err, weights=weights, dims=dims, skipna=skipna)
    numerator, denominator = xr.apply_ufunc(
        _error_sums,
        spatially_whole(prediction),
        spatially_whole(truth),
        kwargs={"weights": weight_matrix(weights, prediction), "kind": kind, "skipna": skipna},
        input_core_dims=[core, core],
        output_core_dims=[[], []],
        dask="parallelized",
        output_dtypes=[np.float64, np.float64],
    )
    extra = [d for d in dims if d not in core]
    if extra:
        numerator = numerator.sum(extra, skipna=False)
        denominator = denominator.sum(extra, skipna=False)
    return numerator / denominator.where(denominator > 0)


def check_sample_dim(obj: XrObject, dim: str | None) -> None:
    """Raise unless ``obj``'s ``dim`` (when present) is non-empty and free of duplicated labels."""
    if dim is None or dim not in obj.dims:
        return
    if obj.sizes[dim] == 0:
        raise DambenchInputError(f"The {dim} dim is empty: there are no samples to score.")
    if dim in obj.indexes:
        index = obj.indexes[dim]
        if index.has_duplicates:
            duplicated = [str(v) for v in index[index.duplicated()].unique()[:5]]
            raise DambenchInputError(
                f"Duplicated {dim} values {duplicated}: each sample must appear once (a repeated "
                f"cycle would count twice in the mean); drop the duplicates first."
            )


def _find_dim(obj: XrObject, aliases: tuple[str, ...]) -> str | None:
    for name in aliases:
        if name in obj.dims:
            return name
    return None


def rename_aliases(obj: XrObject) -> XrObject:
    """``obj`` with the common aliases of its dims (``lat``/``lon``, ``valid_time``,
    ``pressure_level``/``isobaricInhPa``, ...) renamed to the schema's; nothing is reoriented and
    nothing is read (lazy objects stay lazy)."""
    renames = {}
    for canonical, aliases in (
        (schema.LATITUDE, schema.LATITUDE_ALIASES),
        (schema.LONGITUDE, schema.LONGITUDE_ALIASES),
        (schema.TIME, schema.TIME_ALIASES),
        (schema.LEVEL, schema.LEVEL_ALIASES),
    ):
        if canonical in obj.dims:
            continue
        found = _find_dim(obj, aliases)
        if found is not None:
            renames[found] = canonical
    return obj.rename(renames) if renames else obj


def to_canonical(obj: XrObject) -> XrObject:
    """Return ``obj`` in canonical form: names, orientation and dim order of the schema.

    - renames common aliases (``lat``/``lon``, ``valid_time``, ``pressure_level``/``isobaricInhPa``)
      to ``latitude``, ``longitude``, ``time``, ``level``;
    - flips latitude to run north to south (90 -> -90);
    - wraps longitude into [0, 360) and sorts it (so -180..180 grids are rolled);
    - transposes to ``(time, ..., channel, level, latitude, longitude)`` (dims that are absent are
      skipped, other dims keep their place after ``time``);
    - adds CF attributes on latitude and longitude.

    Works lazily on dask-backed objects. Does not regrid: see :func:`validate` for the grid check.
    """
    out = rename_aliases(obj)
    for dim in schema.SPATIAL_DIMS:
        if dim not in out.dims:
            raise DambenchSchemaError(
                f"No {dim} dimension found among dims {tuple(out.dims)}; "
                f"rename it to {dim!r} or one of {getattr(schema, dim.upper() + '_ALIASES')}."
            )
    lat = out[schema.LATITUDE].values
    if lat.size > 1 and lat[0] < lat[-1]:
        out = out.isel({schema.LATITUDE: slice(None, None, -1)})
    lon = np.asarray(out[schema.LONGITUDE].values, dtype=np.float64)
    wrapped = np.mod(lon, 360.0)
    if np.any(wrapped != lon) or np.any(np.diff(wrapped) < 0):
        out = out.assign_coords({schema.LONGITUDE: wrapped}).sortby(schema.LONGITUDE)
    out = out.transpose(
        schema.TIME, ..., schema.CHANNEL, schema.LEVEL, *schema.SPATIAL_DIMS, missing_dims="ignore"
    )
    out[schema.LATITUDE].attrs.update(LATITUDE_ATTRS)
    out[schema.LONGITUDE].attrs.update(LONGITUDE_ATTRS)
    return out


def spatially_whole(obj: XrObject) -> XrObject:
    """``obj`` with latitude and longitude in one dask chunk each (no-op for numpy data), as the
    kernels that work on whole fields need."""
    if obj.chunks is None:
        return obj
    return obj.chunk({dim: -1 for dim in schema.SPATIAL_DIMS if dim in obj.dims})
