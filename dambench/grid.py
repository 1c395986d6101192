"""The canonical grid, latitude weights and conversion of any lat-lon object to canonical form.

The one place that defines the 1.5 degree grid (121 x 240, poles included, latitude north to
south, longitude 0 to 358.5) and the latitude weights every metric uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench._typing import XrObject
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


def resolve_weights(
    weights: Literal["cos", "area"] | xr.DataArray | None, obj: XrObject
) -> xr.DataArray | None:
    """Turn a weights option into a validated latitude-weight DataArray (or None).

    A user-supplied DataArray must be finite and non-negative with a positive sum.
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        return lat_weights(obj[schema.LATITUDE], method=weights)  # type: ignore[arg-type]
    if not isinstance(weights, xr.DataArray):
        raise DambenchInputError(
            f"weights must be 'cos', 'area', None or a DataArray, got {type(weights).__name__}."
        )
    values = np.asarray(weights.values, dtype=np.float64)
    if np.any(np.isnan(values)):
        raise DambenchInputError("weights contain NaN.")
    if np.any(values < 0):
        raise DambenchInputError(f"weights must be non-negative, found min {values.min():.3g}.")
    if not values.sum() > 0:
        raise DambenchInputError("weights sum to zero.")
    return weights


def _find_dim(obj: XrObject, aliases: tuple[str, ...]) -> str | None:
    for name in aliases:
        if name in obj.dims:
            return name
    return None


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
    out = obj.rename(renames) if renames else obj
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
