"""Named regions and calendar periods for regional and seasonal breakdowns of the scores.

Regions follow WeatherBench2's set: the globe, the tropics (20S-20N, bounds included), the
extratropics of each hemisphere (poleward of 20 degrees, bound excluded), the polar caps (poleward
of 60 degrees, bound excluded), land or sea given a land-sea mask, and latitude-longitude boxes
(``"box:lat_min,lat_max,lon_min,lon_max"`` on the command line; longitudes wrap around, so
``"box:30,70,-20,40"`` spans 0 degrees). A region enters a metric as weights that are zero outside
it (:func:`region_weights`), so the data outside a region, NaN included, never touches its score.

Periods label each sample's valid time by calendar month (``"Jan"`` .. ``"Dec"``) or
meteorological season (``"DJF"``, ``"MAM"``, ``"JJA"``, ``"SON"``; December counts with the
January and February of the same labels, whatever the year), for per-period score breakdowns.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import lat_weights, match_grid


@dataclass(frozen=True)
class Region:
    """A latitude band or box, optionally restricted to land or sea points.

    Parameters
    ----------
    name
        Label recorded in results (``attrs["region"]``, the ``region`` column of score tables).
    lat_min, lat_max
        Latitude bounds in degrees north (of ``|latitude|`` when ``abs_latitude``).
    lon_min, lon_max
        Longitude bounds in degrees east; ``lon_max < lon_min`` or a negative ``lon_min`` wraps
        through 0 degrees. An extent of 360 degrees or more keeps every longitude.
    lat_min_inclusive, lat_max_inclusive
        Whether a grid row exactly on the bound belongs to the region.
    abs_latitude
        Apply the latitude bounds to ``|latitude|`` (both hemispheres at once).
    surface
        ``"land"`` or ``"sea"`` to keep only those points (needs a land-sea mask), or None.
    land_sea_mask
        The land fraction a ``land``/``sea`` region uses when :func:`region_weights` is given none
        (:func:`with_land_sea_mask`); not part of the region's identity (equality, hash, repr).
    """

    name: str
    lat_min: float = -90.0
    lat_max: float = 90.0
    lon_min: float = 0.0
    lon_max: float = 360.0
    lat_min_inclusive: bool = True
    lat_max_inclusive: bool = True
    abs_latitude: bool = False
    surface: Literal["land", "sea"] | None = None
    land_sea_mask: xr.DataArray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        low = 0.0 if self.abs_latitude else -90.0
        if not low <= self.lat_min <= self.lat_max <= 90.0:
            raise DambenchInputError(
                f"Region {self.name!r}: expected {low:g} <= lat_min <= lat_max <= 90, "
                f"found lat_min={self.lat_min}, lat_max={self.lat_max}."
            )
        if not (np.isfinite(self.lon_min) and np.isfinite(self.lon_max)):
            raise DambenchInputError(f"Region {self.name!r}: longitude bounds must be finite.")
        if self.surface not in (None, "land", "sea"):
            raise DambenchInputError(
                f"Region {self.name!r}: surface must be 'land', 'sea' or None, got "
                f"{self.surface!r}."
            )

    @property
    def is_global(self) -> bool:
        """True when the region keeps every point of any grid."""
        return (
            self.lat_min <= (0.0 if self.abs_latitude else -90.0)
            and self.lat_max >= 90.0
            and self.lat_min_inclusive
            and self.lat_max_inclusive
            and self._lon_extent() >= 360.0
            and self.surface is None
        )

    def _lon_extent(self) -> float:
        extent = self.lon_max - self.lon_min
        return extent if extent >= 0 else extent + 360.0

    def describe(self) -> str:
        """The region's definition in words, e.g. ``"latitude in [-20, 20], all longitudes"``."""
        var = "|latitude|" if self.abs_latitude else "latitude"
        left = "[" if self.lat_min_inclusive else "("
        right = "]" if self.lat_max_inclusive else ")"
        text = f"{var} in {left}{self.lat_min:g}, {self.lat_max:g}{right}"
        if self._lon_extent() >= 360.0:
            text += ", all longitudes"
        else:
            text += f", longitude from {self.lon_min:g} east to {self.lon_max:g}"
        return text + (f", {self.surface} points only" if self.surface else "")

    def latitude_mask(self, latitude: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows inside the region (latitude in degrees north)."""
        lat = np.abs(latitude) if self.abs_latitude else np.asarray(latitude, dtype=np.float64)
        above = lat >= self.lat_min if self.lat_min_inclusive else lat > self.lat_min
        below = lat <= self.lat_max if self.lat_max_inclusive else lat < self.lat_max
        return above & below

    def longitude_mask(self, longitude: np.ndarray) -> np.ndarray:
        """Boolean mask of the columns inside the region (any longitude convention)."""
        longitude = np.asarray(longitude, dtype=np.float64)
        extent = self._lon_extent()
        if extent >= 360.0:
            return np.ones(longitude.shape, dtype=bool)
        return np.mod(longitude - self.lon_min, 360.0) <= extent


REGIONS: dict[str, Region] = {
    region.name: region
    for region in (
        Region("global"),
        Region("tropics", lat_min=-20.0, lat_max=20.0),
        Region("extratropics", lat_min=20.0, abs_latitude=True, lat_min_inclusive=False),
        Region("extratropics_north", lat_min=20.0, lat_min_inclusive=False),
        Region("extratropics_south", lat_max=-20.0, lat_max_inclusive=False),
        Region("arctic", lat_min=60.0, lat_min_inclusive=False),
        Region("antarctic", lat_max=-60.0, lat_max_inclusive=False),
        Region("land", surface="land"),
        Region("sea", surface="sea"),
    )
}
"""Named regions (WeatherBench2's set): name -> :class:`Region`."""

BOX_PREFIX = "box:"


def resolve_region(spec: Region | str | None) -> Region:
    """A :class:`Region` from a name in :data:`REGIONS`, a Region, None (global) or a box string.

    A box string reads ``"box:lat_min,lat_max,lon_min,lon_max"`` in degrees, bounds included,
    e.g. ``"box:35,70,-10,40"`` (Europe, across 0 degrees east).
    """
    if spec is None:
        return REGIONS["global"]
    if isinstance(spec, Region):
        return spec
    if not isinstance(spec, str):
        raise DambenchInputError(
            f"region must be a name, a Region or 'box:...', got {type(spec).__name__}."
        )
    if spec.startswith(BOX_PREFIX):
        return _parse_box(spec)
    if spec not in REGIONS:
        raise DambenchInputError(
            f"Unknown region {spec!r}; choose from {list(REGIONS)} or write "
            "'box:lat_min,lat_max,lon_min,lon_max'."
        )
    return REGIONS[spec]


def _parse_box(spec: str) -> Region:
    parts = spec[len(BOX_PREFIX) :].split(",")
    try:
        bounds = [float(part) for part in parts]
    except ValueError:
        bounds = []
    if len(bounds) != 4 or len(parts) != 4:
        raise DambenchInputError(
            f"Cannot read region {spec!r}: expected 'box:lat_min,lat_max,lon_min,lon_max' with "
            "four numbers in degrees, e.g. 'box:35,70,-10,40'."
        )
    lat_min, lat_max, lon_min, lon_max = bounds
    return Region(spec, lat_min=lat_min, lat_max=lat_max, lon_min=lon_min, lon_max=lon_max)


def region_weights(
    region: Region | str | None,
    latitude: xr.DataArray | np.ndarray,
    longitude: xr.DataArray | np.ndarray,
    *,
    base: Literal["cos", "area"] | None = None,
    land_sea_mask: xr.DataArray | None = None,
    land_threshold: float | None = 0.5,
) -> xr.DataArray:
    """Weights of a region on a grid: ``base`` latitude weights inside, zero outside.

    Parameters
    ----------
    region
        Anything :func:`resolve_region` accepts.
    latitude, longitude
        1-D coordinates in degrees (DataArrays keep their dim names and values).
    base
        ``None``: 1 inside (an unweighted mean over the region's points); ``"cos"`` or ``"area"``:
        the latitude weights of :func:`dambench.grid.lat_weights` inside.
    land_sea_mask
        Land fraction in [0, 1] over (latitude, longitude), needed by the ``land`` and ``sea``
        regions (matched to the grid by coordinate values).
    land_threshold
        A point is land when its fraction exceeds this (sea otherwise); None weights each point by
        its land (sea: 1 - land) fraction instead, as WeatherBench2 does without a threshold.

    Returns
    -------
    float64 DataArray (latitude, longitude), non-negative, zero outside the region; attrs record
    ``region``, its ``region_definition`` and ``base``.
    """
    region = resolve_region(region)
    lat = _as_coordinate(latitude, schema.LATITUDE)
    lon = _as_coordinate(longitude, schema.LONGITUDE)
    inside = region.latitude_mask(lat.values)[:, None] & region.longitude_mask(lon.values)[None, :]
    weights = xr.DataArray(
        inside.astype(np.float64),
        dims=(lat.dims[0], lon.dims[0]),
        coords={**lat.coords, **lon.coords},
    )
    if region.surface is not None:
        mask = land_sea_mask if land_sea_mask is not None else region.land_sea_mask
        weights = weights * _surface_fraction(region, weights, mask, land_threshold)
    if base is not None:
        weights = weights * lat_weights(lat, method=base)
    if not float(weights.sum()) > 0:
        raise DambenchInputError(
            f"Region {region.name!r} ({region.describe()}) contains no grid point of this "
            f"grid (latitude {float(lat.min()):g}..{float(lat.max()):g})."
        )
    weights.name = "region_weights"
    weights.attrs = {
        "region": region.name,
        "region_definition": region.describe(),
        "base": str(base),
    }
    return weights


def _as_coordinate(values: xr.DataArray | np.ndarray, dim: str) -> xr.DataArray:
    """A 1-D coordinate DataArray over ``dim`` (the canonical name) from values or a DataArray."""
    array = np.asarray(values.values if isinstance(values, xr.DataArray) else values)
    if array.ndim != 1:
        raise DambenchInputError(f"{dim} must be 1-D, got shape {array.shape}.")
    array = array.astype(np.float64)
    return xr.DataArray(array, dims=dim, coords={dim: array})


def _surface_fraction(
    region: Region,
    grid: xr.DataArray,
    land_sea_mask: xr.DataArray | None,
    land_threshold: float | None,
) -> xr.DataArray:
    if land_sea_mask is None:
        raise DambenchInputError(
            f"Region {region.name!r} needs a land-sea mask: pass land_sea_mask= (land fraction "
            "in [0, 1] over latitude and longitude, e.g. ERA5's 'lsm'), or --land-sea-mask PATH "
            "on the command line."
        )
    values = np.asarray(land_sea_mask.values, dtype=np.float64)
    if np.any(~np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise DambenchInputError(
            "land_sea_mask must be a land fraction in [0, 1] without NaN; found values in "
            f"[{np.nanmin(values):.3g}, {np.nanmax(values):.3g}]."
        )
    if set(land_sea_mask.dims) != set(schema.SPATIAL_DIMS):
        raise DambenchInputError(
            f"land_sea_mask must have dims {schema.SPATIAL_DIMS}, got {land_sea_mask.dims}."
        )
    land = match_grid(land_sea_mask.astype(np.float64).rename("land_sea_mask"), grid)
    if land_threshold is not None:
        land = (land > land_threshold).astype(np.float64)
    return land if region.surface == "land" else 1.0 - land


LAND_SEA_MASK_NAMES = (
    "lsm",
    "land_sea_mask",
    "land_sea",
    "landmask",
    "land_mask",
    "LANDMASK",
    "land",
)
"""Variable names read as a land fraction by :func:`open_land_sea_mask`, in order of preference."""
_LAT_LON_NAMES = {"lat": schema.LATITUDE, "lon": schema.LONGITUDE}


def with_land_sea_mask(
    regions: Sequence[Region], land_sea_mask: xr.DataArray | None
) -> list[Region]:
    """``regions`` with ``land_sea_mask`` attached to each ``land``/``sea`` region (others as
    they are), so that any scorer computing their weights uses it."""
    if land_sea_mask is None:
        return list(regions)
    return [replace(r, land_sea_mask=land_sea_mask) if r.surface else r for r in regions]


def open_land_sea_mask(path: str | os.PathLike) -> xr.DataArray:
    """The land fraction ``(latitude, longitude)`` in a netCDF file or Zarr store.

    The variable is the first of :data:`LAND_SEA_MASK_NAMES` present (or the only data
    variable); ``lat``/``lon`` are renamed to ``latitude``/``longitude`` and length-1 dims such
    as ``time`` are dropped. Values must lie in [0, 1] (a fraction, or 0/1 flags).
    """
    path = Path(path)
    if not path.exists():
        raise DambenchInputError(
            f"Land-sea mask {path} not found; give a netCDF file or a Zarr store."
        )
    zarr = path.is_dir() or path.suffix == ".zarr"
    ds = xr.open_dataset(path, engine="zarr" if zarr else None)
    names = [n for n in LAND_SEA_MASK_NAMES if n in ds.data_vars] or (
        list(ds.data_vars) if len(ds.data_vars) == 1 else []
    )
    if not names:
        raise DambenchInputError(
            f"{path} holds no land-sea mask variable: expected one of "
            f"{list(LAND_SEA_MASK_NAMES)}, found {sorted(map(str, ds.data_vars))}."
        )
    mask = ds[names[0]]
    mask = mask.rename({k: v for k, v in _LAT_LON_NAMES.items() if k in mask.dims})
    single = [d for d in mask.dims if mask.sizes[d] == 1 and d not in schema.SPATIAL_DIMS]
    mask = mask.squeeze(single)
    if set(mask.dims) != set(schema.SPATIAL_DIMS):
        raise DambenchInputError(
            f"{path}: {names[0]!r} must be over (latitude, longitude); found dims {mask.dims}."
        )
    values = np.asarray(mask.values, dtype=np.float64)
    if np.any(~np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise DambenchInputError(
            f"{path}: {names[0]!r} must be a land fraction in [0, 1] without NaN; found "
            f"values in [{np.nanmin(values):.3g}, {np.nanmax(values):.3g}]."
        )
    return mask.astype(np.float64).load().rename("land_sea_mask").assign_attrs(source=str(path))


PERIODS: dict[str, tuple[str, ...]] = {
    "month": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "season": ("DJF", "MAM", "JJA", "SON"),
    "all": ("all",),
}
"""Period labels in calendar order for each breakdown ``by``."""

_SEASON_OF_MONTH = ("DJF",) * 2 + ("MAM",) * 3 + ("JJA",) * 3 + ("SON",) * 3 + ("DJF",)


def period_labels(
    times: xr.DataArray | Sequence | np.ndarray,
    by: Literal["month", "season", "all"] = "month",
) -> xr.DataArray:
    """Label each valid time with its calendar month, meteorological season or ``"all"``.

    Parameters
    ----------
    times
        Datetimes: a ``time`` coordinate (its dim and values are kept), or an array or list of
        ``numpy.datetime64``/``pandas`` timestamps/cftime dates.
    by
        ``"month"`` (``"Jan"`` .. ``"Dec"``), ``"season"`` (``"DJF"``, ``"MAM"``, ``"JJA"``,
        ``"SON"``) or ``"all"`` (one period). :data:`PERIODS` lists each set in calendar order.

    Returns
    -------
    DataArray of strings over the time dim, named ``"period"``, with ``attrs["by"]``.
    """
    if by not in PERIODS:
        raise DambenchInputError(f"Unknown period breakdown {by=}; choose from {list(PERIODS)}.")
    if isinstance(times, xr.DataArray):
        da = times
    else:
        values = np.asarray(times)
        da = xr.DataArray(values, dims=schema.TIME, coords={schema.TIME: values})
    try:
        months = np.asarray(da.dt.month.values, dtype=int)
    except (TypeError, AttributeError) as err:
        raise DambenchInputError(
            f"period_labels needs datetimes, got values of dtype {da.dtype}."
        ) from err
    if by == "month":
        labels = [PERIODS["month"][m - 1] for m in months]
    elif by == "season":
        labels = [_SEASON_OF_MONTH[m - 1] for m in months]
    else:
        labels = ["all"] * months.size
    return xr.DataArray(
        np.asarray(labels, dtype=object), dims=da.dims, coords=da.coords, name="period"
    ).assign_attrs(by=by)
