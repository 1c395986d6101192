"""NOAA CPC Global Unified Gauge-Based Analysis of Daily Precipitation.

Two formats of the same 0.5 degree product are read into one canonical layout:

- CPC's raw daily binary ``PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.YYYYMMDD.RT`` (little-endian float32,
  two records of 360 x 720: ``rain`` in 0.1 mm/day and ``gnum``, the number of gauges in the cell;
  undefined -999; latitude south to north), optionally described by its GrADS ``.ctl`` file:
  :func:`read_cpc_binary`, :func:`parse_cpc_ctl`;
- NOAA PSL's yearly netCDF ``precip.YYYY.nc`` (``precip`` in mm/day, latitude north to south,
  missing values as ``_FillValue``, no gauge count): :func:`read_cpc_psl`.

Both return a Dataset ``(time, latitude, longitude)`` in canonical orientation (latitude
89.75 -> -89.75, longitude 0.25 -> 359.75) with ``precip`` in mm/day (float32, NaN where undefined)
and, for the binary, ``gauges``. :func:`cpc_on_grid` takes either to the canonical 1.5 degree grid.

Gauge rule on the output grid (:func:`cpc_on_grid`)
----------------------------------------------------
``precip`` is an observation only where gauges are. Before regridding, every source cell without a
gauge (``gauges == 0`` or undefined) or without an analysis value is set to NaN; ``precip`` is then
conservatively regridded, so each target value is the area-weighted mean of the analysis over the
gauge-covered part of the target cell, and NaN where that part is smaller than ``min_coverage`` of
the cell's area. Hence ``precip`` is NaN wherever the regridded gauge count is 0 (never 0 mm/day).
``gauges`` is regridded with ``method="sum"`` (each source cell's count split by shared area), so
the global total is preserved; the regridded counts are not integers.

Licence: NOAA CPC/PSL data carry no restrictions. Acknowledgement requested: "CPC Global Unified
Precipitation data provided by the NOAA/OAR/ESRL PSL, Boulder, Colorado, USA". References: Xie et
al. (2007), J. Hydrometeor. 8, 607-626; Chen et al. (2008), J. Geophys. Res. 113, D04110.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.regrid import regrid
from dambench.sources.base import (
    DambenchSourceError,
    PathLike,
    is_remote,
    local_copy,
    open_dataset_any,
    select_times,
    time_lat_lon,
)

PRECIP_UNITS = "mm/day"
"""Units of ``precip`` in every dataset this module returns."""

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
    "units": "1",
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

_MM_PER_DAY_SPELLINGS = frozenset(
    {"mm/day", "mm/d", "mm day-1", "mm d-1", "mm day**-1", "mm day^-1", "mm.day-1", "mm/24h"}
)


# --- binary layout and GrADS descriptor -----------------------------------------------------------


@dataclass(frozen=True)
class CpcBinaryLayout:
    """Layout of a CPC daily binary file (what its GrADS ``.ctl`` descriptor says).

    Attributes
    ----------
    nlon, lon_first, lon_step
        Number of longitudes and the first centre and spacing in degrees east (``xdef``).
    nlat, lat_first, lat_step
        Number of latitudes and the first centre and spacing in degrees north (``ydef``).
    undef
        Value marking undefined cells (``undef``).
    byteorder
        ``"<"`` little-endian or ``">"`` big-endian (``options``).
    yrev
        True when rows are stored north to south (``options yrev``).
    variables
        Record names in file order (``vars``), each one ``nlat x nlon`` float32 record.
    rain_scale
        Factor from the file's ``rain`` unit to mm/day (0.1 for "0.1mm/day").
    """

    nlon: int = 720
    lon_first: float = 0.25
    lon_step: float = 0.5
    nlat: int = 360
    lat_first: float = -89.75
    lat_step: float = 0.5
    undef: float = -999.0
    byteorder: str = "<"
    yrev: bool = False
    variables: tuple[str, ...] = ("rain", "gnum")
    rain_scale: float = 0.1

    @property
    def nbytes(self) -> int:
        """Expected file size in bytes: 4 x records x nlat x nlon."""
        return 4 * len(self.variables) * self.nlat * self.nlon

    @property
    def latitude(self) -> np.ndarray:
        """Row latitudes in file order, degrees north, float64, shape ``(nlat,)``."""
        lat = self.lat_first + self.lat_step * np.arange(self.nlat)
        return lat[::-1] if self.yrev else lat

    @property
    def longitude(self) -> np.ndarray:
        """Column longitudes in file order, degrees east, float64, shape ``(nlon,)``."""
        return self.lon_first + self.lon_step * np.arange(self.nlon)

    def describe(self) -> str:
        """Short text such as ``2 records x 360 x 720 float32``."""
        return f"{len(self.variables)} records x {self.nlat} x {self.nlon} float32"


CPC_BINARY_LAYOUT = CpcBinaryLayout()
"""The documented layout of ``PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.YYYYMMDD.RT``."""


def parse_cpc_ctl(path: PathLike) -> CpcBinaryLayout:
    """Parse a GrADS ``.ctl`` descriptor of a CPC daily binary file.

    Reads ``options`` (byte order, ``yrev``), ``undef``, ``xdef``/``ydef`` (``linear`` only),
    and the ``vars`` block; the ``rain`` unit factor comes from its description, e.g.
    ``"the grid analysis (0.1mm/day)"`` gives 0.1.

    Parameters
    ----------
    path
        Local path or fsspec URL of the ``.ctl`` file.

    Returns
    -------
    CpcBinaryLayout

    Raises
    ------
    DambenchInputError
        A required entry is missing or uses a form this reader does not support.
    """
    source = str(path)
    lines = _read_bytes(path).decode("ascii", errors="replace").splitlines()
    entries: dict[str, list[str]] = {}
    variables: list[list[str]] = []
    in_vars = False
    for line in lines:
        tokens = line.split()
        if not tokens or tokens[0].startswith("*"):
            continue
        key = tokens[0].lower()
        if in_vars:
            if key == "endvars":
                in_vars = False
            else:
                variables.append(tokens)
            continue
        if key == "vars":
            in_vars = True
        entries[key] = tokens[1:]
    for key in ("xdef", "ydef", "undef"):
        if key not in entries:
            raise DambenchInputError(f"{source}: GrADS descriptor has no '{key}' entry.")
    nlon, lon_first, lon_step = _parse_linear_def(entries["xdef"], "xdef", source)
    nlat, lat_first, lat_step = _parse_linear_def(entries["ydef"], "ydef", source)
    options = {word.lower() for word in entries.get("options", [])}
    names = tuple(_parse_var_line(tokens, source) for tokens in variables)
    _check_var_count(entries.get("vars"), names, source)
    rain_line = next((v for v in variables if v[0].lower() == "rain"), None)
    if rain_line is None or "gnum" not in names:
        raise DambenchInputError(
            f"{source}: expected variables 'rain' and 'gnum' in the GrADS descriptor, "
            f"found {list(names)}."
        )
    return CpcBinaryLayout(
        nlon=nlon,
        lon_first=lon_first,
        lon_step=lon_step,
        nlat=nlat,
        lat_first=lat_first,
        lat_step=lat_step,
        undef=_parse_float(entries["undef"][0] if entries["undef"] else "", "undef", source),
        byteorder=_byteorder(options),
        yrev="yrev" in options,
        variables=names,
        rain_scale=_rain_scale(" ".join(rain_line[3:]), source),
    )


def _parse_float(text: str, what: str, source: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DambenchInputError(
            f"{source}: cannot read {what} value {text!r} as a number."
        ) from None


def _parse_linear_def(tokens: list[str], key: str, source: str) -> tuple[int, float, float]:
    """``N linear start step`` -> (N, start, step)."""
    if len(tokens) < 4 or tokens[1].lower() != "linear":
        raise DambenchInputError(
            f"{source}: expected '{key} N linear START STEP', found '{key} {' '.join(tokens)}'; "
            "only linear axes are supported."
        )
    try:
        count = int(tokens[0])
    except ValueError:
        raise DambenchInputError(f"{source}: {key} size {tokens[0]!r} is not an integer.") from None
    start = _parse_float(tokens[2], f"{key} start", source)
    step = _parse_float(tokens[3], f"{key} step", source)
    if count < 2 or step <= 0:
        raise DambenchInputError(f"{source}: {key} needs >= 2 points and a positive step.")
    return count, start, step


def _parse_var_line(tokens: list[str], source: str) -> str:
    """``name levs units description`` -> name; only single-level records are supported."""
    if len(tokens) < 3:
        raise DambenchInputError(f"{source}: cannot read variable line {' '.join(tokens)!r}.")
    if tokens[1] not in ("0", "1"):
        raise DambenchInputError(
            f"{source}: variable {tokens[0]!r} has {tokens[1]} levels; expected 1 (one record)."
        )
    return tokens[0].lower()


def _check_var_count(declared: list[str] | None, names: tuple[str, ...], source: str) -> None:
    if not declared or not declared[0].isdigit() or int(declared[0]) != len(names):
        raise DambenchInputError(
            f"{source}: 'vars' declares {declared[0] if declared else 'nothing'} but "
            f"{len(names)} variable lines were found before ENDVARS."
        )


def _byteorder(options: set[str]) -> str:
    """GrADS ``options`` -> numpy byte-order character; native order when not stated."""
    native = "<" if sys.byteorder == "little" else ">"
    if "big_endian" in options:
        return ">"
    if "little_endian" in options:
        return "<"
    if "byteswapped" in options:
        return ">" if native == "<" else "<"
    return native


def _rain_scale(description: str, source: str) -> float:
    """Unit factor to mm/day from a description such as ``(0.1mm/day)``."""
    match = re.search(r"\(\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)?\s*mm\s*/\s*day\s*\)", description)
    if match is None:
        raise DambenchInputError(
            f"{source}: cannot find the rain unit, e.g. '(0.1mm/day)', in the description "
            f"{description!r}."
        )
    return float(match.group(1) or 1.0)


# --- raw binary ----------------------------------------------------------------------------


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
    - ``gauges``: number of gauges per cell, float32, NaN where undefined.

    Raises
    ------
    DambenchInputError
        Wrong file size, non-finite values, negative rain or gauge counts other than ``undef``,
        implausibly large rain, or no date.
    """
    source = str(path)
    layout = CPC_BINARY_LAYOUT if ctl is None else parse_cpc_ctl(ctl)
    time = _analysis_time(source, date)
    raw = _read_bytes(path)
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
        {"precip": precip[None], "gauges": gauges[None]},
        layout.latitude,
        layout.longitude,
        [time],
        source,
    )


def _read_bytes(path: PathLike) -> bytes:
    """All bytes of a local file or fsspec URL."""
    if not is_remote(path):
        return local_copy(path).read_bytes()
    try:
        with fsspec.open(str(path), "rb") as handle:
            return handle.read()
    except Exception as err:  # noqa: BLE001 - any fsspec backend error means unreachable
        raise DambenchSourceError(
            f"Cannot read {path!s} ({type(err).__name__}: {err}). Check the URL and the network, "
            "or download the file and pass its local path."
        ) from err


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
    attrs = {"precip": PRECIP_ATTRS, "gauges": GAUGES_ATTRS}
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
) -> xr.Dataset:
    """Read NOAA PSL's CPC global daily precipitation netCDF ``precip.YYYY.nc``.

    Parameters
    ----------
    path
        Local path or fsspec URL of the netCDF file (variable ``precip``, dims ``time``,
        ``lat``, ``lon``).
    times
        Days to select exactly (default: all); missing days raise, naming them.

    Returns
    -------
    Dataset ``(time, latitude, longitude)`` like :func:`read_cpc_binary` but without ``gauges``:
    ``precip`` in mm/day, float32, NaN where missing; loaded into memory.

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
    source = str(path)
    ds = open_dataset_any(path)
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


def _normalise_units(units) -> str:
    return " ".join(str(units).strip().lower().split())


def _check_psl_units(da: xr.DataArray, source: str) -> None:
    units = da.attrs.get("units")
    text = _normalise_units(units)
    if text in _MM_PER_DAY_SPELLINGS:
        return
    if text == "mm" and _is_daily(da[schema.TIME].values):
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


# --- canonical grid ----------------------------------------------------------------------------


def check_precip_units(ds: xr.Dataset, source: str = "dataset") -> None:
    """Raise unless ``ds["precip"]`` exists and its ``units`` attribute means mm/day."""
    if "precip" not in ds.data_vars:
        raise DambenchInputError(
            f"{source}: expected a 'precip' variable, found {sorted(map(str, ds.data_vars))}."
        )
    units = ds["precip"].attrs.get("units")
    if _normalise_units(units) not in _MM_PER_DAY_SPELLINGS:
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
        Output of :func:`read_cpc_binary` or :func:`read_cpc_psl`: ``precip`` in mm/day
        ``(time, latitude, longitude)`` and optionally ``gauges``.
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
      gauge count is 0. Without ``gauges`` (PSL files) the mean is over the defined (land) part.
    - ``gauges`` (count, float64, when given): gauges apportioned by shared area; total preserved.

    Raises
    ------
    DambenchInputError
        No ``precip``, or ``precip`` units other than mm/day.
    """
    check_precip_units(ds)
    if not 0 <= min_coverage <= 1:
        raise DambenchInputError(f"min_coverage must be in [0, 1], found {min_coverage}.")
    result = xr.Dataset(attrs=dict(ds.attrs))
    precip = ds["precip"]
    if "gauges" in ds.data_vars:
        precip = precip.where(ds["gauges"] > 0)  # gauge-less or undefined cells -> NaN
        result["gauges"] = regrid(ds["gauges"], grid, method="sum")
        result["gauges"].attrs.update(
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
    if "gauges" in result:
        regridded = regridded.where(result["gauges"] > 0)
    result["precip"] = regridded.astype(np.float32).assign_attrs(comment=comment)
    result.attrs["regridding"] = f"conservative to {grid.shape}, min_coverage={min_coverage:g}"
    return result[[name for name in ("precip", "gauges") if name in result]]
