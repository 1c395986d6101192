"""Backgrounds read from precomputed forecasts (WeatherBench2 forecast stores, GRIB files).

Two layouts are understood, both indexed by **initialisation time** and **lead**:

- WeatherBench2 forecasts (zarr/netCDF): ``time`` is the initialisation time and
  ``prediction_timedelta`` the lead; variables use WB2 long names (``2m_temperature``) or schema
  short names; levels on ``level``.
- GRIB read by cfgrib: ``time`` is the initialisation (base) time, ``step`` the lead and
  ``valid_time = time + step``; ``time`` and ``step`` may be scalars (one base time, one step).
  GRIB short names ``z, t, u, v, q, msl`` are schema names; ``10u, 10v, 2t`` (which cfgrib already
  renames to ``u10, v10, t2m``) are mapped; levels come from ``isobaricInhPa``.

Analyses stored the same way (``step = 0``) are served with ``lead_hours=0``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.backgrounds.base import INIT_TIME, BackgroundBase, format_times
from dambench.channels import to_channels
from dambench.exceptions import DambenchInputError, DambenchSchemaError
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.sources.base import PathLike, check_monotonic, open_dataset_any
from dambench.sources.lexicon import schema_variables

LEAD_TIME = "lead_time"
"""Internal dim of the archive's leads (timedelta)."""
LEAD_ALIASES = ("prediction_timedelta", "step", "lead_time")
"""Lead coordinate names: WeatherBench2, cfgrib, and already-normalised."""
_GRIB_SCALAR_COORDS = ("surface", "heightAboveGround", "meanSea", "valid_time", "number")


class ForecastArchive(BackgroundBase):
    """Serve the background valid at ``t`` from stored forecasts started at ``t - lead_hours``.

    Parameters
    ----------
    source
        A forecast store or file (local path or fsspec URL: zarr, netCDF, GRIB), a sequence of
        them (merged, e.g. one GRIB file per variable), or an opened Dataset.
    lead_hours
        Lead of the background in hours (24 by default; 0 serves stored analyses).
    channels
        Schema channels to serve (default: every schema channel the archive holds).
    grid
        Output grid (default: the canonical 1.5 degree grid, conservative regridding when the
        archive's grid differs); ``None`` keeps the archive's grid in canonical orientation
        (latitude 90 -> -90, longitude from 0), e.g. for regional files.
    member
        Ensemble member kept when the archive has a ``number`` dim.

    Attributes
    ----------
    forecasts
        Stacked forecasts ``(init_time, lead_time, channel, latitude, longitude)`` on the
        archive's grid, lazy where the store is.

    Raises
    ------
    DambenchSchemaError
        No lead coordinate, no schema variable, wrong units (named), unknown channels.

    Examples
    --------
    >>> archive = ForecastArchive("multi_param_on_multi_dims.grib", lead_hours=24)  # doctest: +SKIP
    >>> archive.at("2018-04-05T12").init_time.values  # doctest: +SKIP
    array(['2018-04-04T12:00:00.000000000'], dtype='datetime64[ns]')
    """

    method = "forecast_archive"

    def __init__(
        self,
        source: PathLike | Sequence[PathLike] | xr.Dataset,
        *,
        lead_hours: float = 24,
        channels: Sequence[str] | None = None,
        grid: Grid | None = CANONICAL_GRID,
        member: int = 0,
    ):
        if not np.isfinite(lead_hours) or lead_hours < 0:
            raise DambenchInputError(f"lead_hours={lead_hours!r} must be a finite number >= 0.")
        self.lead_hours = float(lead_hours)
        self.grid = grid
        self.source = _describe(source)
        ds = _open(source)
        ds = _forecast_layout(ds, member, self.source)
        per_variable = schema_variables(to_canonical(ds), self.source)
        self.forecasts = to_channels(per_variable, channels).transpose(
            INIT_TIME, LEAD_TIME, schema.CHANNEL, *schema.SPATIAL_DIMS
        )

    @property
    def init_times(self) -> pd.DatetimeIndex:
        """Initialisation times held by the archive."""
        return pd.DatetimeIndex(self.forecasts[INIT_TIME].values)

    @property
    def leads(self) -> pd.TimedeltaIndex:
        """Leads held by the archive."""
        return pd.TimedeltaIndex(self.forecasts[LEAD_TIME].values)

    def _at(self, valid: pd.DatetimeIndex) -> xr.DataArray:
        lead = pd.Timedelta(hours=self.lead_hours)
        lead_pos = self.leads.get_indexer([lead])[0]
        if lead_pos < 0:
            have = [f"{h:g}" for h in self.leads / pd.Timedelta(hours=1)]
            raise DambenchInputError(
                f"{self.source}: no {self.lead_hours:g} h lead; the archive holds leads "
                f"{have} h. Pass lead_hours= one of them."
            )
        init = valid - lead
        init_pos = self.init_times.get_indexer(init)
        missing = init_pos < 0
        if missing.any():
            raise DambenchInputError(
                f"{self.source}: missing initialisation times {format_times(init[missing])} "
                f"needed for the +{self.lead_hours:g} h background valid at "
                f"{format_times(valid[missing])}; the archive holds init times "
                f"{format_times(self.init_times)}."
            )
        out = self.forecasts.isel({LEAD_TIME: lead_pos, INIT_TIME: init_pos})
        out = out.drop_vars([LEAD_TIME, INIT_TIME]).rename({INIT_TIME: schema.TIME})
        return out.assign_coords({INIT_TIME: (schema.TIME, init.values)})

    def _attrs(self) -> dict[str, Any]:
        return {"method": self.method, "source": self.source}


def _describe(source: PathLike | Sequence[PathLike] | xr.Dataset) -> str:
    if isinstance(source, xr.Dataset):
        return str(source.attrs.get("source", "dataset"))
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    names = [str(p) for p in source]
    if len(names) == 1:
        return names[0]
    folder = os.path.commonpath(names) if all("://" not in n for n in names) else ""
    shown = [os.path.relpath(n, folder) for n in names] if folder else names
    return f"{len(names)} files in {folder or '.'}: " + ", ".join(shown)


def _open(source: PathLike | Sequence[PathLike] | xr.Dataset) -> xr.Dataset:
    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        return open_dataset_any(source)
    paths = list(source)
    if not paths:
        raise DambenchInputError("ForecastArchive got an empty list of files.")
    parts = [open_dataset_any(p) for p in paths]
    return xr.merge(parts, compat="override", join="outer", combine_attrs="drop_conflicts")


def _forecast_layout(ds: xr.Dataset, member: int, source: str) -> xr.Dataset:
    """Rename to ``init_time`` x ``lead_time`` dims, keep one member, drop GRIB scalars."""
    lead_name = next((name for name in LEAD_ALIASES if name in ds.coords), None)
    if lead_name is None or schema.TIME not in ds.coords:
        raise DambenchSchemaError(
            f"{source}: not a forecast layout; expected an init-time coordinate 'time' and a lead "
            f"coordinate (one of {LEAD_ALIASES}), found coordinates {list(ds.coords)}."
        )
    if "number" in ds.dims:
        if member not in ds["number"].values:
            raise DambenchInputError(
                f"{source}: ensemble member {member} not in {ds['number'].values.tolist()}."
            )
        ds = ds.sel(number=member)
    ds = ds.drop_vars([c for c in _GRIB_SCALAR_COORDS if c in ds.coords and c not in ds.dims])
    for name in (schema.TIME, lead_name):
        if name not in ds.dims:
            ds = ds.expand_dims(name)
    ds = ds.rename({schema.TIME: INIT_TIME, lead_name: LEAD_TIME})
    if ds[LEAD_TIME].dtype.kind != "m":
        raise DambenchSchemaError(
            f"{source}: lead coordinate {lead_name!r} must be a timedelta, got "
            f"{ds[LEAD_TIME].dtype}."
        )
    for dim in ("latitude", "longitude", "lat", "lon"):
        if dim in ds.dims:
            check_monotonic(ds[dim], dim, source)
    return ds
