"""Regridding from any regular lat-lon grid to the canonical grid.

First-order conservative regridding on a regular lat-lon grid is separable: the area shared by a
source cell and a target cell is ``R^2 * (sin overlap in latitude) * (overlap in longitude, rad)``,
so the regridder is two small banded matrices applied one axis at a time (latitude first: gathering
whole rows is the cheapest pass over a large array). Longitude is periodic; latitude bounds are
the mid-points between centres, the outermost clipped to the poles; longitude cells are one
regular spacing wide, so a regional grid crossing 0 degrees keeps its gap empty.

- ``method="conservative"`` (fields and fluxes): the area-weighted mean over the part of the target
  cell covered by valid (non-NaN) source cells; NaN where that part is below ``min_coverage``.
  The area-weighted global mean is preserved.
- ``method="sum"`` (counts, e.g. gauges per cell): each source cell's value is split between target
  cells in proportion to the shared area, so the total is preserved.
- ``method="bilinear"``: linear in latitude and in (periodic) longitude between the surrounding
  source centres, with the same NaN handling as conservative; a target up to one source spacing
  beyond the outermost source row (a pole) takes that row's value.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid, spatially_whole, to_canonical

Method = Literal["conservative", "sum", "bilinear"]
METHODS = ("conservative", "sum", "bilinear")


def _bounds(centres: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Cell bounds at mid-points; the outer ones half a spacing out, clipped to [lower, upper]."""
    mids = (centres[1:] + centres[:-1]) / 2
    first = centres[0] - (centres[1] - centres[0]) / 2
    last = centres[-1] + (centres[-1] - centres[-2]) / 2
    return np.clip(np.concatenate([[first], mids, [last]]), lower, upper)


def _longitude_bounds(lon: np.ndarray) -> np.ndarray:
    """(n, 2) west and east bounds of cells of a regular longitude spacing.

    A regional grid crossing 0 degrees, once wrapped and sorted, has a gap: the cells keep their own
    width instead of stretching across it. Spacings that are not multiples of the smallest raise.
    """
    steps = np.diff(lon)
    spacing = steps.min()
    multiples = steps / spacing
    if np.any(np.abs(multiples - np.round(multiples)) > 1e-6):
        raise DambenchInputError(
            f"Source longitude is not regularly spaced (steps {np.unique(np.round(steps, 6))})."
        )
    return np.stack([lon - spacing / 2, lon + spacing / 2], axis=1)


def _cell_overlap(src: np.ndarray, dst: np.ndarray, period: float) -> np.ndarray:
    """(n_dst, n_src) overlap of periodic cells given as (n, 2) [west, east] bounds."""
    total = np.zeros((dst.shape[0], src.shape[0]))
    for shift in (-period, 0.0, period):
        lo = np.maximum(dst[:, None, 0], src[None, :, 0] + shift)
        hi = np.minimum(dst[:, None, 1], src[None, :, 1] + shift)
        total += np.clip(hi - lo, 0.0, None)
    return total


def _interval_overlap(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(n_dst, n_src) length of the overlap of intervals ``dst[i]..dst[i+1]`` and ``src[j]..``."""
    lo = np.maximum(dst[:-1, None], src[None, :-1])
    hi = np.minimum(dst[1:, None], src[None, 1:])
    return np.clip(hi - lo, 0.0, None)


def _linear_weights(src: np.ndarray, dst: np.ndarray, period: float | None) -> np.ndarray:
    """(n_dst, n_src) linear-interpolation weights; ``src`` in any monotonic order.

    Periodic when ``period`` is given; otherwise a target up to one source spacing beyond the
    first or last centre takes that edge value, and one further out gets no weight (NaN), as does
    a target inside a gap of a regional grid.
    """
    order = np.argsort(src)
    s = src[order]
    weights = np.zeros((dst.size, src.size))
    if period is not None:
        s_ext = np.concatenate([s[-1:] - period, s, s[:1] + period])
        idx_ext = np.concatenate([order[-1:], order, order[:1]])
        pos = np.mod(dst - s_ext[0], period) + s_ext[0]
    else:
        s_ext, idx_ext, pos = s, order, dst
    spacing = np.abs(np.diff(s)).min()
    for i, x in enumerate(pos):
        j = np.searchsorted(s_ext, x, side="right") - 1
        if 0 <= j < s_ext.size - 1 and s_ext[j + 1] - s_ext[j] > 1.5 * spacing:
            continue  # a gap in a regional grid: no source on either side
        if 0 <= j < s_ext.size - 1:
            frac = (x - s_ext[j]) / (s_ext[j + 1] - s_ext[j])
            weights[i, idx_ext[j]] += 1 - frac
            weights[i, idx_ext[j + 1]] += frac
        elif x == s_ext[-1] or (period is None and 0 < x - s_ext[-1] <= spacing):
            weights[i, idx_ext[-1]] = 1.0
        elif period is None and 0 < s_ext[0] - x <= spacing:
            weights[i, idx_ext[0]] = 1.0
    return weights


class _Band:
    """A sparse (n_dst, n_src) matrix stored as per-row source indices and weights."""

    def __init__(self, dense: np.ndarray):
        width = max(int((dense > 0).sum(axis=1).max()), 1)
        order = np.argsort(~(dense > 0), axis=1, kind="stable")[:, :width]
        self.index = order
        self.weight = np.take_along_axis(dense, order, axis=1)
        self.dense = dense
        self.sparse = scipy.sparse.csr_matrix(dense)

    def apply(self, x: np.ndarray, axis: int) -> np.ndarray:
        """Contract ``x`` along ``axis`` (-1 or -2) with the matrix."""
        dtype = np.result_type(x, np.float32)
        if axis == -2:
            # sparse rows times whole contiguous source rows, one 2-D slice at a time
            matrix = self.sparse.astype(dtype)
            flat = x.reshape(-1, *x.shape[-2:])
            out = np.empty((flat.shape[0], self.index.shape[0], x.shape[-1]), dtype=dtype)
            for i, plane in enumerate(flat):
                out[i] = matrix @ plane
            return out.reshape(*x.shape[:-2], *out.shape[-2:])
        n_out = self.index.shape[0]
        out = np.zeros((*x.shape[:-1], n_out), dtype=dtype)
        scratch = np.empty_like(out)
        for k in range(self.index.shape[1]):
            picked = np.take(x, self.index[:, k], axis=-1)
            np.multiply(picked, self.weight[:, k].astype(dtype), out=scratch)
            out += scratch
        return out


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
        lat_overlap = _interval_overlap(src_lat_b, dst_lat_b)[::-1]  # target rows N -> S
        self._lat = _Band(lat_overlap if ascending else lat_overlap[:, ::-1])
        src_lon_b = _longitude_bounds(src_lon)
        dst_lon_b = np.stack(
            [grid.longitude - grid.spacing_deg / 2, grid.longitude + grid.spacing_deg / 2], axis=1
        )
        self._lon = _Band(np.deg2rad(_cell_overlap(src_lon_b, dst_lon_b, 360.0)))
        self.target_area = np.outer(
            np.diff(dst_lat_b)[::-1], np.deg2rad(np.diff(dst_lon_b, axis=1)[:, 0])
        )
        self.source_area = np.outer(self._lat.dense.sum(axis=0), self._lon.dense.sum(axis=0))

        self._source = (src_lat, src_lon)
        self._bilinear: tuple[_Band, _Band] | None = None

    def _contract(self, x: np.ndarray, bands: tuple[_Band, _Band] | None = None) -> np.ndarray:
        lat_band, lon_band = bands or (self._lat, self._lon)
        return lon_band.apply(lat_band.apply(x, axis=-2), axis=-1)

    def _bilinear_bands(self) -> tuple[_Band, _Band]:
        if self._bilinear is None:
            src_lat, src_lon = self._source
            self._bilinear = (
                _Band(_linear_weights(src_lat, self.grid.latitude, None)),
                _Band(_linear_weights(src_lon, self.grid.longitude, 360.0)),
            )
        return self._bilinear

    def regrid_array(
        self,
        x: np.ndarray,
        method: Method = "conservative",
        min_coverage: float = 0.5,
    ) -> np.ndarray:
        """Regrid an array ``(..., latitude, longitude)`` in the source's orientation.

        The result has ``x``'s floating dtype (float32 stays float32; integers give float64;
        ``"sum"`` gives float64). Memory: the result plus the temporaries of one 2-D field
        (the leading dims are regridded one field at a time).
        """
        if method not in METHODS:
            raise DambenchInputError(f"Unknown regridding {method=}; use one of {METHODS}.")
        x = np.asarray(x)
        dtype = _output_dtype(x.dtype, method)
        planes = x.reshape(-1, *x.shape[-2:])
        out = np.empty((planes.shape[0], *self.grid.shape), dtype=dtype)
        full_cover = None
        for i, plane in enumerate(planes):
            if np.issubdtype(plane.dtype, np.floating) and np.isnan(plane).any():
                out[i] = self._regrid_plane(plane, method, min_coverage, ~np.isnan(plane))
                continue
            if full_cover is None:
                full_cover = self._covered(np.ones(plane.shape, dtype=bool), method)
            out[i] = self._regrid_plane(plane, method, min_coverage, None, full_cover)
        return out.reshape(*x.shape[:-2], *self.grid.shape)

    def _covered(self, valid: np.ndarray, method: Method) -> np.ndarray:
        """The regridded coverage of ``valid`` (float64), the denominator of a mean."""
        bands = self._bilinear_bands() if method == "bilinear" else None
        return self._contract(valid.astype(np.float64), bands)

    def _regrid_plane(
        self,
        plane: np.ndarray,
        method: Method,
        min_coverage: float,
        valid: np.ndarray | None,
        covered: np.ndarray | None = None,
    ) -> np.ndarray:
        """One 2-D field; ``valid`` is its non-NaN mask (``None``: no NaN, ``covered`` given)."""
        if not np.issubdtype(plane.dtype, np.floating):
            plane = plane.astype(np.float64)
        filled = plane if valid is None else np.where(valid, plane, 0)
        if method == "sum":
            return self._contract(filled.astype(np.float64) / self.source_area)
        bands = self._bilinear_bands() if method == "bilinear" else None
        full = 1.0 if method == "bilinear" else self.target_area
        if covered is None:
            covered = self._covered(valid, method)
        out = self._contract(filled, bands)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(out, covered, out=out, casting="same_kind")
        out[~(covered >= min_coverage * full)] = np.nan
        return out

    def __call__(
        self,
        obj: xr.DataArray | xr.Dataset,
        method: Method = "conservative",
        min_coverage: float = 0.5,
    ):
        """Regrid a DataArray or Dataset with ``latitude``/``longitude`` dims; lazy on dask."""
        core = list(schema.SPATIAL_DIMS)
        out_coords = self.grid.coords()

        def one(da: xr.DataArray) -> xr.DataArray:
            if not set(core) <= set(da.dims):
                return da
            da = spatially_whole(da)
            result = xr.apply_ufunc(
                self.regrid_array,
                da,
                kwargs={"method": method, "min_coverage": min_coverage},
                input_core_dims=[core],
                output_core_dims=[["__lat", "__lon"]],
                dask="parallelized",
                output_dtypes=[_output_dtype(da.dtype, method)],
                dask_gufunc_kwargs={
                    "output_sizes": dict(zip(["__lat", "__lon"], self.grid.shape, strict=True))
                },
                keep_attrs=True,
            )
            result = result.rename({"__lat": schema.LATITUDE, "__lon": schema.LONGITUDE})
            result = result.assign_coords(out_coords)
            return result.transpose(*[d for d in da.dims])

        if isinstance(obj, xr.Dataset):
            return obj.map(one, keep_attrs=True).assign_coords(out_coords)
        return one(obj)


def on_grid(obj: xr.DataArray | xr.Dataset, grid: Grid = CANONICAL_GRID) -> bool:
    """Whether ``obj``'s latitude and longitude are exactly ``grid``'s (within 1e-3 degrees)."""
    lat = np.asarray(obj[schema.LATITUDE].values, dtype=np.float64)
    lon = np.asarray(obj[schema.LONGITUDE].values, dtype=np.float64)
    return (
        lat.shape == grid.latitude.shape
        and lon.shape == grid.longitude.shape
        and np.allclose(lat, grid.latitude, atol=schema.GRID_ATOL_DEG, rtol=0)
        and np.allclose(lon, grid.longitude, atol=schema.GRID_ATOL_DEG, rtol=0)
    )


def _output_dtype(dtype: np.dtype, method: str) -> np.dtype:
    if method == "sum" or not np.issubdtype(dtype, np.floating):
        return np.dtype(np.float64)
    return np.dtype(dtype)


def regrid(
    obj: xr.DataArray | xr.Dataset,
    grid: Grid = CANONICAL_GRID,
    method: Method = "conservative",
    min_coverage: float = 0.5,
):
    """Conservatively regrid ``obj`` (any regular lat-lon grid) to ``grid``, in canonical form
    (returned as it is when already on ``grid``)."""
    obj = to_canonical(obj)
    if on_grid(obj, grid):
        return obj
    regridder = Regridder(obj[schema.LATITUDE].values, obj[schema.LONGITUDE].values, grid)
    return regridder(obj, method=method, min_coverage=min_coverage)
