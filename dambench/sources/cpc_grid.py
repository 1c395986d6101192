"""CPC precipitation and gauge counts on the canonical grid.

Gauge rule on the output grid (:func:`cpc_on_grid`)
----------------------------------------------------
``precip`` is an observation only where gauges are. Before regridding, every source cell without a
gauge (``precip_gauges == 0`` or undefined) or without an analysis value is set to NaN; ``precip``
is then conservatively regridded, so each target value is the area-weighted mean of the analysis
over the gauge-covered part of the target cell, and NaN where that part is smaller than
``min_coverage`` of the cell's area. Hence ``precip`` is NaN wherever the regridded gauge count is
0 (never 0 mm/day). ``precip_gauges`` is regridded with ``method="sum"`` (each source cell's count
split by shared area), so the global total is preserved; the regridded counts are not integers.
Variable names and units are the schema's (:data:`dambench.schema.MODALITIES`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid
from dambench.regrid import regrid
from dambench.units import same_units

PRECIP = "precip"
GAUGES = "precip_gauges"
PRECIP_UNITS = schema.MODALITIES[PRECIP].units
"""Units of ``precip`` in every dataset the CPC readers return (the schema's)."""


def check_precip_units(ds: xr.Dataset, source: str = "dataset") -> None:
    """Raise unless ``ds["precip"]`` exists and its ``units`` attribute means mm/day."""
    if PRECIP not in ds.data_vars:
        raise DambenchInputError(
            f"{source}: expected a 'precip' variable, found {sorted(map(str, ds.data_vars))}."
        )
    units = ds[PRECIP].attrs.get("units")
    if not same_units(units, PRECIP_UNITS):
        raise DambenchInputError(
            f"{source}: precip units must be mm/day, found {units!r}; convert first "
            "(1 kg m-2 s-1 = 86400 mm/day, 1 m/day = 1000 mm/day)."
        )


def cpc_on_grid(
    ds: xr.Dataset,
    min_coverage: float = 0.0,
    grid: Grid = CANONICAL_GRID,
) -> xr.Dataset:
    """CPC precipitation (and gauge counts) on the canonical 1.5 degree grid.

    The default ``min_coverage=0`` defines precipitation in every target cell that contains a
    gauge-covered source cell (a 1.5 degree cell holds 9 source cells, and a single gauge cell
    covers 1/9 of it), so the output is observed exactly where gauges are.

    Parameters
    ----------
    ds
        Output of :func:`~dambench.sources.cpc.read_cpc_binary` or
        :func:`~dambench.sources.cpc.read_cpc_psl`: ``precip`` in mm/day
        ``(time, latitude, longitude)`` and optionally ``precip_gauges``.
    min_coverage
        Fraction of a target cell's area that gauge-covered source cells must cover for
        ``precip`` to be defined there (0 keeps every cell touched by a gauge cell).
    grid
        Target grid (the canonical 121 x 240 grid by default).

    Returns
    -------
    Dataset ``(time, latitude: 121, longitude: 240)``:

    - ``precip`` (mm/day, float32): area-weighted mean of the analysis over the gauge-covered part
      of each cell; NaN where that part is below ``min_coverage`` and wherever the regridded
      gauge count is 0. Without ``precip_gauges`` (PSL files) the mean is over the defined
      (land) part.
    - ``precip_gauges`` (count, float64, when given): gauges apportioned by shared area; total
      preserved.

    Raises
    ------
    DambenchInputError
        No ``precip``, or ``precip`` units other than mm/day.
    """
    check_precip_units(ds)
    if not 0 <= min_coverage <= 1:
        raise DambenchInputError(f"min_coverage must be in [0, 1], found {min_coverage}.")
    result = xr.Dataset(attrs=dict(ds.attrs))
    precip = ds[PRECIP]
    if GAUGES in ds.data_vars:
        precip = precip.where(ds[GAUGES] > 0)  # gauge-less or undefined cells -> NaN
        result[GAUGES] = regrid(ds[GAUGES], grid, method="sum")
        result[GAUGES].attrs.update(
            long_name="Number of rain gauges apportioned to the grid cell by area",
            comment="Regridded with method='sum': totals are preserved, counts are fractional.",
        )
        comment = (
            "Area-weighted mean over the gauge-covered part of the cell; NaN where "
            f"gauge-covered cells cover less than {min_coverage:g} "
            "of it or it has no gauge."
        )
    else:
        comment = (
            "Area-weighted mean over the defined part of the cell; NaN where it covers "
            f"less than {min_coverage:g} of the cell."
        )
    regridded = regrid(precip, grid, method="conservative", min_coverage=min_coverage)
    if GAUGES in result:
        regridded = regridded.where(result[GAUGES] > 0)
    result[PRECIP] = regridded.astype(np.float32).assign_attrs(comment=comment)
    result.attrs["regridding"] = f"conservative to {grid.shape}, min_coverage={min_coverage:g}"
    return result[[name for name in (PRECIP, GAUGES) if name in result]]
