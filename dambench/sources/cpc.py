"""NOAA CPC Global Unified Gauge-Based Analysis of Daily Precipitation: the readers.

Two formats of the same 0.5 degree product are read into one canonical layout:

- CPC's raw daily binary ``PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.YYYYMMDD.RT`` (little-endian float32,
  two records of 360 x 720: ``rain`` in 0.1 mm/day and ``gnum``, the number of gauges in the cell;
  undefined -999; latitude south to north), optionally described by its GrADS ``.ctl`` file
  (:mod:`dambench.sources.cpc_layout`): :func:`read_cpc_binary`;
- NOAA PSL's yearly netCDF ``precip.YYYY.nc`` (``precip`` in mm/day, latitude north to south,
  missing values as ``_FillValue``, no gauge count): :func:`read_cpc_psl`.

Both return a Dataset ``(time, latitude, longitude)`` in canonical orientation (latitude
89.75 -> -89.75, longitude 0.25 -> 359.75) with the schema's modality names and units
(:data:`dambench.schema.MODALITIES`): ``precip`` in mm/day (float32, NaN where undefined) and, for
the binary, ``precip_gauges``. :func:`~dambench.sources.cpc_grid.cpc_on_grid` (also importable
from here) takes either to the canonical 1.5 degree grid.

Licence: NOAA CPC/PSL data carry no restrictions. Acknowledgement requested: "CPC Global Unified
Precipitation data provided by the NOAA/OAR/ESRL PSL, Boulder, Colorado, USA". References: Xie et
al. (2007), J. Hydrometeor. 8, 607-626; Chen et al. (2008), J. Geophys. Res. 113, D04110.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import to_canonical
from dambench.sources.base import PathLike, open_dataset_any, select_times, time_lat_lon
from dambench.sources.cpc_grid import GAUGES, PRECIP, PRECIP_UNITS, check_precip_units, cpc_on_grid
from dambench.sources.cpc_layout import (
    CPC_BINARY_LAYOUT,
    CpcBinaryLayout,
    parse_cpc_ctl,
    read_bytes,
)
from dambench.units import same_units

__all__ = [
    "CPC_BINARY_LAYOUT",
    "DATASET_ATTRS",
    "GAUGES_ATTRS",
    "MAX_PLAUSIBLE_MM_PER_DAY",
    "PRECIP_ATTRS",
    "PRECIP_UNITS",
    "CpcBinaryLayout",
    "check_precip_units",
    "cpc_on_grid",
    "parse_cpc_ctl",
    "read_cpc_binary",
    "read_cpc_psl",
]

MAX_PLAUSIBLE_MM_PER_DAY = 2000.0
"""Upper bound for a daily rain value; above it the file is taken as corrupt (wrong byte order,
wrong scale). The world record 24 h rainfall is 1825 mm (Foc-Foc, La Reunion, 1966)."""

PRECIP_ATTRS = {
    "units": PRECIP_UNITS,
    "standard_name": "lwe_precipitation_rate",
    "long_name": "Daily precipitation, gauge-based analysis (grid-box mean)",
    "cell_methods": "area: mean",
}
GAUGES_ATTRS = {
    "units": schema.MODALITIES[GAUGES].units,
    "long_name": "Number of rain gauges in the grid cell",
}
DATASET_ATTRS = {
    "title": "CPC Global Unified Gauge-Based Analysis of Daily Precipitation",
    "source": "CPC Global Unified Gauge-Based Analysis of Daily Precipitation, NOAA/OAR/ESRL PSL",
    "institution": "NOAA Climate Prediction Center (CPC); distributed by NOAA PSL",
    "license": "No restrictions (NOAA CPC/PSL public data).",
    "acknowledgement": (
        "CPC Global Unified Precipitation data provided by the NOAA/OAR/ESRL PSL, Boulder, "
        "Colorado, USA"
    ),
    "references": "Xie et al. (2007), J. Hydrometeor. 8, 607-626; "
    "Chen et al. (2008), J. Geophys. Res. 113, D04110",
}


def read_cpc_binary(
    path: PathLike,
    ctl: PathLike | None = None,
    date: str | np.datetime64 | pd.Timestamp | None = None,
) -> xr.Dataset:
    """Read a CPC daily binary file ``PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.YYYYMMDD.RT``.

    Parameters
    ----------
    path
        Local path or fsspec URL of the binary file (2,073,600 bytes for the 0.5 degree product).
    ctl
        Optional GrADS descriptor (``.ctl``) whose ``xdef``/``ydef``/``undef``/``vars`` define the
        layout; without it the documented layout :data:`CPC_BINARY_LAYOUT` is used.
    date
        The analysis day; by default the ``YYYYMMDD`` in the file name. Must be at 00 UTC.

    Returns
    -------
    Dataset with dims ``(time: 1, latitude: 360, longitude: 720)``, latitude 89.75 -> -89.75 and
    longitude 0.25 -> 359.75 (degrees), and data variables

    - ``precip``: daily precipitation in mm/day, float32, NaN where undefined (ocean);
    - ``precip_gauges``: number of gauges per cell, float32, NaN where undefined.

    Raises
    ------
    DambenchInputError
        Wrong file size, non-finite values, negative rain or gauge counts other than ``undef``,
        implausibly large rain, or no date.
    """
    source = str(path)
    layout = CPC_BINARY_LAYOUT if ctl is None else parse_cpc_ctl(ctl)
    time = _analysis_time(source, date)
    raw = read_bytes(path)
    if len(raw) != layout.nbytes:
        raise DambenchInputError(
            f"{source}: expected {layout.nbytes} bytes ({layout.describe()}), found {len(raw)} "
            "bytes; the file is truncated or not a CPC 0.5 degree daily binary."
        )
    dtype = np.dtype(layout.byteorder + "f4")
    records = (
        np.frombuffer(raw, dtype=dtype)
        .reshape(len(layout.variables), layout.nlat, layout.nlon)
        .astype(np.float32)
    )
    rain = records[layout.variables.index("rain")]
    gnum = records[layout.variables.index("gnum")]
    precip = _decode_rain(rain, layout, source)
    gauges = _decode_gauges(gnum, layout, source)
    return _assemble(
        {PRECIP: precip[None], GAUGES: gauges[None]},
        layout.latitude,
        layout.longitude,
        [time],
        source,
    )


def _analysis_time(source: str, date) -> np.datetime64:
    """The analysis day at 00 UTC, from ``date`` or the ``YYYYMMDD`` in the file name."""
    if date is None:
        name = source.rstrip("/").rsplit("/", 1)[-1]
        found = re.findall(r"(?<!\d)(\d{8})(?!\d)", name)
        if not found:
            raise DambenchInputError(
                f"{source}: no YYYYMMDD date in the file name; pass date= explicitly."
            )
        try:
            stamp = pd.to_datetime(found[-1], format="%Y%m%d")
        except ValueError:
            raise DambenchInputError(
                f"{source}: {found[-1]!r} in the file name is not a valid YYYYMMDD date; "
                "pass date= explicitly."
            ) from None
    else:
        try:
            stamp = pd.Timestamp(date)
        except (ValueError, TypeError):
            raise DambenchInputError(f"date={date!r} is not a date.") from None
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        if stamp != stamp.normalize():
            raise DambenchInputError(
                f"date={date!r}: expected a day at 00 UTC, found {stamp.isoformat()}."
            )
    return np.datetime64(stamp.to_datetime64(), "ns")


def _undefined(values: np.ndarray, layout: CpcBinaryLayout) -> np.ndarray:
    return values == np.float32(layout.undef)


def _check_finite(values: np.ndarray, name: str, source: str) -> None:
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise DambenchInputError(
            f"{source}: record {name!r} has {bad} non-finite values (expected finite float32); "
            "wrong byte order or not a CPC file?"
        )


def _decode_rain(rain: np.ndarray, layout: CpcBinaryLayout, source: str) -> np.ndarray:
    """Rain record in file units -> mm/day float32 with NaN where undefined."""
    _check_finite(rain, "rain", source)
    undefined = _undefined(rain, layout)
    negative = (rain < 0) & ~undefined
    if negative.any():
        raise DambenchInputError(
            f"{source}: {int(negative.sum())} negative rain values other than undef "
            f"{layout.undef} (min {rain[negative].min():.6g}); expected rain >= 0."
        )
    precip = np.where(undefined, np.float32(np.nan), rain * np.float32(layout.rain_scale))
    _check_plausible(precip, source)
    return precip.astype(np.float32)


def _check_plausible(precip: np.ndarray, source: str) -> None:
    largest = np.nanmax(precip) if np.isfinite(precip).any() else 0.0
    if largest > MAX_PLAUSIBLE_MM_PER_DAY:
        raise DambenchInputError(
            f"{source}: precipitation up to {largest:.6g} mm/day, above the plausible maximum "
            f"{MAX_PLAUSIBLE_MM_PER_DAY:g} mm/day; wrong units, scale or byte order?"
        )


def _decode_gauges(gnum: np.ndarray, layout: CpcBinaryLayout, source: str) -> np.ndarray:
    """Gauge-count record -> float32 counts with NaN where undefined."""
    _check_finite(gnum, "gnum", source)
    undefined = _undefined(gnum, layout)
    defined = gnum[~undefined]
    if (defined < 0).any():
        raise DambenchInputError(
            f"{source}: {int((defined < 0).sum())} negative gauge counts other than undef "
            f"{layout.undef}; expected counts >= 0."
        )
    if (defined != np.round(defined)).any():
        raise DambenchInputError(
            f"{source}: {int((defined != np.round(defined)).sum())} gauge counts are not whole "
            "numbers; wrong record order or not a CPC file?"
        )
    return np.where(undefined, np.float32(np.nan), gnum).astype(np.float32)


def _assemble(
    variables: dict[str, np.ndarray],
    latitude: np.ndarray,
    longitude: np.ndarray,
    times: Sequence[np.datetime64] | np.ndarray,
    source: str,
) -> xr.Dataset:
    """Arrays ``(time, lat, lon)`` in file order -> canonical Dataset with CF attributes."""
    dims = (schema.TIME, schema.LATITUDE, schema.LONGITUDE)
    attrs = {PRECIP: PRECIP_ATTRS, GAUGES: GAUGES_ATTRS}
    data_vars = {
        name: xr.Variable(dims, values, attrs=dict(attrs[name]))
        for name, values in variables.items()
    }
    coords = {
        schema.TIME: np.asarray(times, dtype="datetime64[ns]"),
        schema.LATITUDE: np.asarray(latitude, dtype=np.float64),
        schema.LONGITUDE: np.asarray(longitude, dtype=np.float64),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs={**DATASET_ATTRS, "source_file": source})
    ds[schema.TIME].attrs.update({"standard_name": "time", "long_name": "analysis day (00 UTC)"})
    return to_canonical(ds)


# --- PSL netCDF ----------------------------------------------------------------------------------


def read_cpc_psl(
    path: PathLike,
    *,
    times: Sequence | pd.DatetimeIndex | None = None,
    source: str | None = None,
) -> xr.Dataset:
    """Read NOAA PSL's CPC global daily precipitation netCDF ``precip.YYYY.nc``.

    Parameters
    ----------
    path
        Local path or fsspec URL of the netCDF file (variable ``precip``, dims ``time``,
        ``lat``, ``lon``).
    times
        Days to select exactly (default: all); missing days raise, naming them. Only these days
        are read from the file.
    source
        The name of the file in messages and in ``source_file`` (default: ``path``; e.g. the URL
        of which ``path`` is a cached copy).

    Returns
    -------
    Dataset ``(time, latitude, longitude)`` like :func:`read_cpc_binary` but without
    ``precip_gauges``: ``precip`` in mm/day, float32, NaN where missing; loaded into memory (the
    file is closed).

    Notes
    -----
    Units must be mm/day. PSL describes ``precip`` as a daily total; units spelled ``"mm"`` are
    therefore accepted, and taken as mm/day, when the time step is one day (or there is a single
    time). Any other units raise.

    Raises
    ------
    DambenchInputError
        No ``precip`` variable (the variables found are named), wrong units, non-monotonic
        coordinates, missing times, negative or implausible values.
    """
    source = source or str(path)
    with open_dataset_any(path) as ds:  # closed once the days asked are read
        if "precip" not in ds.data_vars:
            raise DambenchInputError(
                f"{source}: not a CPC precipitation file: no 'precip' variable; found variables "
                f"{sorted(map(str, ds.data_vars))}."
            )
        da = time_lat_lon(ds["precip"], source)
        _check_psl_units(da, source)
        if times is not None:
            da = select_times(da, times, source)
        values = np.asarray(da.values, dtype=np.float32)
    _check_psl_values(values, source)
    return _assemble(
        {"precip": values},
        da[schema.LATITUDE].values,
        da[schema.LONGITUDE].values,
        da[schema.TIME].values,
        source,
    )


def _check_psl_units(da: xr.DataArray, source: str) -> None:
    units = da.attrs.get("units")
    if same_units(units, PRECIP_UNITS):
        return
    if same_units(units, "mm") and _is_daily(da[schema.TIME].values):
        return
    raise DambenchInputError(
        f"{source}: precip units must be mm/day (or 'mm' per daily time step), found {units!r}."
    )


def _is_daily(times: np.ndarray) -> bool:
    if times.size < 2:
        return True
    return bool(np.all(np.diff(times) == np.timedelta64(1, "D")))


def _check_psl_values(values: np.ndarray, source: str) -> None:
    finite = np.isfinite(values)
    if np.isinf(values).any():
        raise DambenchInputError(f"{source}: {int(np.isinf(values).sum())} infinite precip values.")
    negative = finite & (values < 0)
    if negative.any():
        raise DambenchInputError(
            f"{source}: {int(negative.sum())} negative precip values (min "
            f"{values[negative].min():.6g}); expected >= 0 with missing as NaN/_FillValue."
        )
    _check_plausible(values, source)
