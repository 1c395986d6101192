"""Daily products read per block of days: CPC gauge precipitation and NOAA daily OLR.

A build asks for a few days at a time (the days before one block of cycles), never for the whole
record, so memory is bounded by the block, not by the 25 years a production build spans. Each
reader here is cheap to construct (it stores paths only, no data and no open file) and has two
methods:

- ``available(days) -> pd.DatetimeIndex``: which of ``days`` the source holds, from metadata only
  (the time coordinate of a netCDF file, or whether a daily file exists);
- ``read(days) -> xr.Dataset | None``: the source's modalities ``(time, latitude, longitude)`` on
  the canonical 1.5 degree grid for the held days among ``days`` (labelled by the source's own time
  stamps), or ``None`` when it holds none of them. Only those days are read and regridded.

Readers:

- :class:`CpcPslYears`: NOAA PSL's yearly netCDF files ``precip.{year}.nc`` (a URL or path
  template with ``{year}``); each year file needed is opened lazily, and only the days asked are
  read from it. A year file that does not exist is an error naming it (a wrong template is more
  likely than a missing year).
- :class:`CpcBinaryDays`: CPC's raw daily binaries (a template with ``{date:%Y%m%d}``); a day
  whose file does not exist is missing (NaN in the build and reported).
- :class:`OlrDays`: PSL's ``olr.day.mean.nc`` (one file for the whole record), opened lazily.

Local paths and fsspec URLs (``https://``, ``http://``, ``gs://``) go through the same code. Which
days a remote file holds is read from its metadata by small range requests (nothing downloaded:
the missing-day report of a build reads 25 time coordinates, not 25 yearly files). A remote
netCDF file whose days are read is downloaded once into dambench's cache
(:func:`~dambench.sources.base.local_copy`; one download at a time per process, so two threads
never write one cache file) when a block first needs it, and read from there day by day: the data
need no HTTP range requests and a year is never read twice over the network by one process.
Messages name the URL.
"""

from __future__ import annotations

import threading
from pathlib import Path

import fsspec
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.exceptions import DambenchError, DambenchInputError
from dambench.sources.base import (
    PathLike,
    is_remote,
    local_copy,
    open_dataset_any,
    time_lat_lon,
)
from dambench.sources.cpc import read_cpc_binary, read_cpc_psl
from dambench.sources.cpc_grid import GAUGES, PRECIP, cpc_on_grid
from dambench.sources.olr import OLR, olr_on_grid, read_olr
from dambench.sources.remote import prepare_remote

__all__ = ["CpcBinaryDays", "CpcPslYears", "OlrDays", "daily_reader", "file_days"]


def _days(days) -> pd.DatetimeIndex:
    """``days`` as a sorted, unique DatetimeIndex of midnights."""
    return pd.DatetimeIndex(days).normalize().unique().sort_values()


_DOWNLOADS = threading.Lock()


def fetched(path: str) -> str:
    """A local file for ``path``: the path itself, or the cached download of a URL (downloaded
    once; concurrent callers wait for it)."""
    if not is_remote(path):
        return path
    with _DOWNLOADS:
        return str(local_copy(path))


def file_days(path: PathLike, variable: str) -> pd.Series:
    """Day (midnight) -> the file's own time stamp, for every time of ``variable`` in ``path``.

    Reads the metadata and the time coordinate only: a local file (or a URL's cached copy) is
    opened lazily; a URL not yet downloaded is read by small range requests (nothing is
    downloaded, see :func:`_open_metadata`).

    Raises
    ------
    DambenchInputError
        No ``variable`` in the file (the variables found are named), or a time coordinate that is
        not decodable or not strictly increasing, or two stamps on one day.
    """
    source = str(path)
    with _open_metadata(source) as ds:
        if variable not in ds.data_vars:
            raise DambenchInputError(
                f"{source}: no {variable!r} variable; found variables "
                f"{sorted(map(str, ds.data_vars))}."
            )
        stamps = pd.DatetimeIndex(time_lat_lon(ds[variable], source)[schema.TIME].values)
    days = stamps.normalize()
    if days.has_duplicates:
        raise DambenchInputError(
            f"{source}: several {variable!r} values on one day; expected one daily value."
        )
    return pd.Series(stamps, index=days)


METADATA_BLOCK_BYTES = 256 * 1024
"""Range-request block of a metadata read of a remote netCDF-4 file."""


def _open_metadata(source: str) -> xr.Dataset:
    """``source`` opened lazily for its metadata and coordinates.

    A local path opens the file. A URL is read by range requests of
    :data:`METADATA_BLOCK_BYTES` through the retrying remote filesystem, so the missing-day
    report of a 25-year build reads the time coordinates of 25 yearly files, not the files.
    Where that cannot work (a netCDF-3 file, a server without range requests) the file is
    downloaded once (:func:`fetched`). Network failures raise naming the URL.
    """
    if not is_remote(source):
        return open_dataset_any(source)
    options = prepare_remote(source)
    try:
        handle = fsspec.open(source, "rb", block_size=METADATA_BLOCK_BYTES, **options).open()
        return xr.open_dataset(handle, engine="h5netcdf")
    except DambenchError:
        raise
    except Exception:  # noqa: BLE001 - not readable by ranges: the one-download path
        return open_dataset_any(fetched(source))


def _exists(path: str) -> bool:
    if not is_remote(path):
        return Path(path.removeprefix("file://")).is_file()
    fs, inner = fsspec.core.url_to_fs(path)
    return bool(fs.exists(inner))


class CpcPslYears:
    """CPC daily precipitation from NOAA PSL's yearly files, read per block of days.

    Parameters
    ----------
    template
        Path or URL of the yearly files with a ``{year}`` field, e.g.
        ``https://downloads.psl.noaa.gov/Datasets/cpc_global_precip/precip.{year}.nc``.
    """

    names = (PRECIP,)

    def __init__(self, template: str):
        if "{year}" not in template:
            raise DambenchInputError(
                f"CPC PSL template {template!r} lacks '{{year}}'; expected e.g. "
                "'.../precip.{year}.nc'."
            )
        self.template = template
        self._held: dict[int, pd.Series] = {}

    def _stamps(self, year: int) -> pd.Series:
        """The time stamps of one year file, read once per reader (metadata only)."""
        if year not in self._held:
            self._held[year] = file_days(self.template.format(year=year), PRECIP)
        return self._held[year]

    def available(self, days) -> pd.DatetimeIndex:
        """The days among ``days`` that the yearly files hold (time coordinates only)."""
        days = _days(days)
        held = [days[days.year == y].intersection(self._stamps(y).index) for y in _years(days)]
        return _days(pd.DatetimeIndex([]).append(held)) if held else days[:0]

    def read(self, days) -> xr.Dataset | None:
        """``precip`` on the canonical grid for the held days among ``days``; see the module."""
        days = _days(days)
        pieces = []
        for year in _years(days):
            wanted = days[days.year == year]
            stamps = self._stamps(year)
            held = stamps[stamps.index.isin(wanted)]
            if len(held):
                url = self.template.format(year=year)
                pieces.append(read_cpc_psl(fetched(url), times=held.values, source=url))
        return cpc_on_grid(xr.concat(pieces, dim=schema.TIME)) if pieces else None


def _years(days: pd.DatetimeIndex) -> list[int]:
    return sorted(set(days.year))


class CpcBinaryDays:
    """CPC daily precipitation and gauge counts from CPC's raw daily binaries, one file a day.

    Parameters
    ----------
    template
        Path or URL of the daily files with a ``{date:%Y%m%d}`` field, e.g.
        ``.../PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.{date:%Y%m%d}.RT``.
    """

    names = (PRECIP, GAUGES)

    def __init__(self, template: str):
        if "{date" not in template:
            raise DambenchInputError(
                f"CPC binary template {template!r} lacks '{{date:%Y%m%d}}'; expected e.g. "
                "'.../PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.{date:%Y%m%d}.RT'."
            )
        self.template = template

    def available(self, days) -> pd.DatetimeIndex:
        """The days among ``days`` whose file exists."""
        days = _days(days)
        return days[[_exists(self.template.format(date=day)) for day in days]]

    def read(self, days) -> xr.Dataset | None:
        """``precip`` and ``precip_gauges`` on the canonical grid for the days whose file exists."""
        held = self.available(days)
        pieces = [read_cpc_binary(self.template.format(date=day), ctl=None) for day in held]
        return cpc_on_grid(xr.concat(pieces, dim=schema.TIME)) if pieces else None


class OlrDays:
    """NOAA interpolated daily OLR from PSL's single file, read per block of days.

    Parameters
    ----------
    path
        Path or URL of ``olr.day.mean.nc`` (or any subset of it).
    """

    names = (OLR,)

    def __init__(self, path: str):
        self.path = path
        self._held: pd.Series | None = None

    def _stamps(self) -> pd.Series:
        """The file's time stamps, read once per reader (metadata only)."""
        if self._held is None:
            self._held = file_days(self.path, OLR)
        return self._held

    def available(self, days) -> pd.DatetimeIndex:
        """The days among ``days`` that the file holds (time coordinate only)."""
        return _days(days).intersection(self._stamps().index)

    def read(self, days) -> xr.Dataset | None:
        """``olr`` on the canonical grid for the held days among ``days``."""
        stamps = self._stamps()
        held = stamps[stamps.index.isin(_days(days))]
        if not len(held):
            return None
        field = read_olr(fetched(self.path), times=held.values, source=self.path)
        return olr_on_grid(field).to_dataset()


DailyReader = CpcPslYears | CpcBinaryDays | OlrDays


def daily_reader(kind: str, location: str) -> DailyReader:
    """The reader of input ``kind`` (``"cpc"`` or ``"olr"``) at ``location``.

    A ``cpc`` template with ``{year}`` is PSL's yearly netCDF; one with ``{date...}`` is CPC's
    raw daily binaries.

    Raises
    ------
    DambenchInputError
        An unknown kind, or a CPC template with neither field.
    """
    if kind == "olr":
        return OlrDays(location)
    if kind != "cpc":
        raise DambenchInputError(f"No daily reader for input {kind!r}; known: 'cpc', 'olr'.")
    if "{year}" in location:
        return CpcPslYears(location)
    if "{date" in location:
        return CpcBinaryDays(location)
    raise DambenchInputError(
        f"inputs.cpc {location!r} has neither '{{year}}' (PSL yearly netCDF, e.g. "
        "'.../precip.{year}.nc') nor '{date:%Y%m%d}' (CPC daily binaries); add one."
    )
