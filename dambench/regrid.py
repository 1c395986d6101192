"""Regridding from any regular lat-lon grid to the canonical grid.

First-order conservative regridding on a regular lat-lon grid is separable: the area shared by a
source cell and a target cell is ``R^2 * (sin overlap in latitude) * (overlap in longitude, rad)``,
so the regridder is two small banded matrices applied one axis at a time (longitude first, which
shrinks the array most). Longitude is periodic; cell bounds are the mid-points between centres,
the outermost latitude bounds clipped to the poles.

- ``method="conservative"`` (fields and fluxes): the area-weighted mean over the part of the target
  cell covered by valid (non-NaN) source cells; NaN where that part is below ``min_coverage``.
  The area-weighted global mean is preserved.
- ``method="sum"`` (counts, e.g. gauges per cell): each source cell's value is split between target
  cells in proportion to the shared area, so the total is preserved.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid, to_canonical


def _bounds(centres: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Cell bounds at mid-points; the outer ones half a spacing out, clipped to [lower, upper]."""
    mids = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (centres[1] - centres[0]) / 2
    last = centres[-1] + (centres[-1] - centres[-2]) / 2
    return np.clip(np.concatenate([[first], mids, [last]]), lower, upper)


def _interval_overlap(src: np.ndarray, dst: np.ndarray, period: float | None) -> np.ndarray:
    """(n_dst, n_src) length of the overlap of intervals ``dst[i]..dst[i+1]`` and ``src[j]..``."""
    shifts = (0.0,) if period is None else (-period, 0.0, period)
    total = np.zeros((dst.size - 1, src.size - 1))
    for shift in shifts:
        lo = np.maximum(dst[:-1, None], src[None, :-1] + shift)
        hi = np.minimum(dst[1:, None], src[None, 1:] + shift)
        total += np.clip(hi - lo, 0.0, None)
    return total


class _Band:
    """A sparse (n_dst, n_src) matrix stored as per-row source indices and weights."""

    def __init__(self, dense: np.ndarray):
        width = max(int((dense > 0).sum(axis=1).max()), 1)
        order = np.argsort(~(dense > 0), axis=1, kind="stable")[:, :width]
        self.index = order
        self.weight = np.take_along_axis(dense, order, axis=1)
        self.dense = dense

    def apply(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Contract ``x`` along ``axis`` with the matrix."""
        x = np.moveaxis(x, axis, -1)
        out = np.zeros(x.shape[:-1] + (self.index.shape[0],), dtype=np.result_type(x, np.float32))
        for k in range(self.index.shape[1]):
            out += x[..., self.index[:, k]] * self.weight[:, k].astype(out.dtype)
        return np.moveaxis(out, -1, axis)


class Regridder:
    """Conservative regridder from a source lat-lon grid to a target :class:`Grid`.

    Parameters
    ----------
    latitude, longitude
        Source cell centres in degrees (any order; longitude in [0, 360) after wrapping),
        regularly spaced.
    grid
        Target grid (the canonical 1.5 degree grid by default).
    """

    def __init__(self, latitude: np.ndarray, longitude: np.ndarray, grid: Grid = CANONICAL_GRID):
        src_lat = np.asarray(latitude, dtype=np.float64)
        src_lon = np.asarray(longitude, dtype=np.float64)
        for name, values in (("latitude", src_lat), ("longitude", src_lon)):
            if values.ndim != 1 or values.size < 2:
                raise DambenchInputError(f"Source {name} must be 1-D with at least 2 values.")
            if not (np.all(np.diff(values) > 0) or np.all(np.diff(values) < 0)):
                raise DambenchInputError(f"Source {name} is not monotonic.")
        if src_lon[0] > src_lon[-1]:
            raise DambenchInputError("Source longitude must increase (wrap it with to_canonical).")
        self.grid = grid
        ascending = src_lat[0] < src_lat[-1]
        src_lat_b = np.sin(np.deg2rad(_bounds(src_lat if ascending else src_lat[::-1], -90, 90)))
        dst_lat_b = np.sin(np.deg2rad(_bounds(grid.latitude[::-1], -90, 90)))
        lat_overlap = _interval_overlap(src_lat_b, dst_lat_b, None)[::-1]  # target rows N -> S
        self._lat = _Band(lat_overlap if ascending else lat_overlap[:, ::-1])
        spacing = np.diff(src_lon).mean()
        src_lon_b = np.concatenate(
            [[src_lon[0] - spacing / 2], (src_lon[1:] + src_lon[:-1]) / 2, [src_lon[-1] + spacing / 2]]
        )
        dst_lon_b = np.append(grid.longitude, grid.longitude[-1] + grid.spacing_deg)
        dst_lon_b = dst_lon_b - grid.spacing_deg / 2
        self._lon = _Band(np.deg2rad(_interval_overlap(src_lon_b, dst_lon_b, 360.0)))
        self.target_area = np.outer(np.diff(dst_lat_b)[::-1], np.diff(np.deg2rad(dst_lon_b)))
        self.source_area = np.outer(self._lat.dense.sum(axis=0), self._lon.dense.sum(axis=0))

    def _contract(self, x: np.ndarray) -> np.ndarray:
        return self._lat.apply(self._lon.apply(x, axis=-1), axis=-2)

    def regrid_array(
        self,
        x: np.ndarray,
        method: Literal["conservative", "sum"] = "conservative",
        min_coverage: float = 0.5,
    ) -> np.ndarray:
        """Regrid an array ``(..., latitude, longitude)`` in the source's orientation."""
        if method not in ("conservative", "sum"):
            raise DambenchInputError(f"Unknown regridding {method=}; use 'conservative' or 'sum'.")
        x = np.asarray(x)
        valid = ~np.isnan(x)
        has_nan = not valid.all()
        filled = np.where(valid, x, 0) if has_nan else x
        if method == "sum":
            return self._contract(filled.astype(np.float64) / self.source_area)
        weighted_sum = self._contract(filled)
        coverage_source = valid if has_nan else np.ones(x.shape[-2:], dtype=bool)
        covered = self._contract(coverage_source.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = weighted_sum / covered
        enough = covered >= min_coverage * self.target_area
        return np.where(enough, out, np.nan).astype(x.dtype, copy=False)

    def __call__(
        self,
        obj: xr.DataArray | xr.Dataset,
        method: Literal["conservative", "sum"] = "conservative",
        min_coverage: float = 0.5,
    ):
        """Regrid a DataArray or Dataset with ``latitude``/``longitude`` dims; lazy on dask."""
        core = list(schema.SPATIAL_DIMS)
        out_coords = self.grid.coords()

        def one(da: xr.DataArray) -> xr.DataArray:
            if not set(core) <= set(da.dims):
                return da
            result = xr.apply_ufunc(
                self.regrid_array,
                da,
                kwargs={"method": method, "min_coverage": min_coverage},
                input_core_dims=[core],
                output_core_dims=[["__lat", "__lon"]],
                dask="parallelized",
                output_dtypes=[da.dtype],
                dask_gufunc_kwargs={"output_sizes": dict(zip(["__lat", "__lon"], self.grid.shape,
                                                             strict=True))},
                keep_attrs=True,
            )
            result = result.rename({"__lat": schema.LATITUDE, "__lon": schema.LONGITUDE})
            result = result.assign_coords(out_coords)
            return result.transpose(*[d for d in da.dims])

        if isinstance(obj, xr.Dataset):
            return obj.map(one, keep_attrs=True).assign_coords(out_coords)
        return one(obj)


def regrid(
    obj: xr.DataArray | xr.Dataset,
    grid: Grid = CANONICAL_GRID,
    method: Literal["conservative", "sum"] = "conservative",
    min_coverage: float = 0.5,
):
    """Conservatively regrid ``obj`` (any regular lat-lon grid) to ``grid``, in canonical form."""
    obj = to_canonical(obj)
    regridder = Regridder(obj[schema.LATITUDE].values, obj[schema.LONGITUDE].values, grid)
    return regridder(obj, method=method, min_coverage=min_coverage)
