"""Read anyone's analyses for scoring: any layout the schema's converters accept, lazily.

A prediction file or store (Zarr, netCDF, local path or any fsspec URL) holds either

- a **stacked** variable with a ``channel`` dim (``(time, [member], channel, lat, lon)``), e.g.
  what :class:`PredictionWriter` or ``ds.dambench.to_channels()`` writes; or
- **per-variable** fields with schema short names (``u10, v10, t2m, msl, z, q, u, v, t``) or
  WeatherBench2 names (``2m_temperature``, ``geopotential``, ...: any name
  :func:`dambench.sources.lexicon.find_variable` knows), the upper-air ones on a ``level`` dim in
  hPa (``Pa`` is converted when the level's ``units`` say so).

Units must be the schema's: a variable (or stacked channel) in other units is refused; one
without a ``units`` attribute is read as the schema's units, with a warning that
:attr:`Predictions.warnings` records. float16 is refused for channels whose values exceed
float16's largest finite value (msl in Pa, geopotential aloft).

Latitude may run either way and longitude may be -180..180 (:func:`dambench.grid.to_canonical`
fixes both); dims may use the usual aliases (``lat``, ``lon``, ``valid_time``, ...). Any subset
of the schema channels may be present. An ensemble has a member dim (``member_dim``; ``member``,
``ensemble``, ``number`` or ``realization`` are found without being named).

Nothing is read at opening but coordinates: :meth:`Predictions.cycle` reads one cycle, so a year
of 69-channel analyses is scored in the memory of a few cycles.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.channels import available_channels, to_channels
from dambench.exceptions import (
    DambenchError,
    DambenchInputError,
    DambenchIntegrityError,
    DambenchSchemaError,
)
from dambench.grid import rename_aliases, to_canonical
from dambench.load import chunk_key
from dambench.sources.base import is_remote, open_dataset_any
from dambench.sources.lexicon import find_variable
from dambench.units import canonical_units

MEMBER_DIM_ALIASES = ("member", "ensemble", "number", "realization")
STACKED_NAMES = ("analysis", "prediction", "state", "forecast")
_MAX_LISTED = 8


def _few(times: Sequence) -> str:
    shown = ", ".join(str(pd.Timestamp(t))[:16] for t in list(times)[:_MAX_LISTED])
    more = len(times) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _open_raw(path: str | os.PathLike) -> xr.Dataset:
    text = str(path).rstrip("/")
    local_zarr = not is_remote(text) and Path(text).is_dir()
    if local_zarr and not any((Path(text) / n).exists() for n in ("zarr.json", ".zgroup")):
        raise DambenchInputError(
            f"{text} is a folder but not a Zarr store (no zarr.json or .zgroup); pass the store "
            "or a netCDF file."
        )
    engine = "zarr" if local_zarr else None
    kwargs = {"consolidated": None} if (engine == "zarr" or text.endswith(".zarr")) else {}
    try:
        obj = open_dataset_any(text, engine=engine, chunks=None, **kwargs)
    except FileNotFoundError as err:
        raise DambenchInputError(f"No predictions at {text}.") from err
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset()
    return obj


def _stacked_variable(ds: xr.Dataset, variable: str | None) -> str | None:
    """Name of the stacked (``channel``) variable, or None for a per-variable layout."""
    if variable is not None:
        if variable not in ds.data_vars:
            raise DambenchInputError(
                f"{variable=} is not in the predictions; data variables: {list(ds.data_vars)}."
            )
        return variable
    stacked = [n for n, v in ds.data_vars.items() if schema.CHANNEL in v.dims]
    if len(stacked) == 1:
        return str(stacked[0])
    preferred = [n for n in STACKED_NAMES if n in stacked]
    if preferred:
        return preferred[0]
    if stacked:
        raise DambenchInputError(
            f"The predictions hold several stacked variables {stacked}; name one with variable=."
        )
    return None


def _level_in_hpa(ds: xr.Dataset) -> xr.Dataset:
    if schema.LEVEL not in ds.coords:
        return ds
    units = canonical_units(str(ds[schema.LEVEL].attrs.get("units", "hPa")))
    if units == "Pa":
        return ds.assign_coords({schema.LEVEL: ds[schema.LEVEL] / 100.0})
    if units not in ("hPa", "mbar", "millibar"):
        raise DambenchInputError(f"Pressure levels in units {units!r}; expected hPa or Pa.")
    return ds


def _member_dim(ds: xr.Dataset, member_dim: str | None) -> str | None:
    if member_dim is not None:
        if member_dim not in ds.dims:
            raise DambenchInputError(
                f"members_dim={member_dim!r} is not a dim of the predictions; dims: "
                f"{dict(ds.sizes)}."
            )
        return member_dim
    found = [d for d in MEMBER_DIM_ALIASES if d in ds.dims]
    return found[0] if found else None


def _check_dims(ds: xr.Dataset, names: Sequence[str], member_dim: str | None) -> None:
    allowed = {schema.TIME, schema.CHANNEL, schema.LEVEL, *schema.SPATIAL_DIMS, member_dim}
    for name in names:
        extra = [d for d in ds[name].dims if d not in allowed]
        if extra:
            raise DambenchInputError(
                f"Prediction variable {name!r} has dims {extra} besides time, channel, level, "
                f"latitude, longitude and a member dim; select or average them first, or pass "
                "members_dim= if one of them holds ensemble members."
            )


FLOAT16_MAX = float(np.finfo(np.float16).max)


def _check_precision(dtypes: dict[str, np.dtype]) -> None:
    """Refuse float16 channels whose typical values (the middle of their plausible range)
    float16 cannot hold: msl in Pa, geopotential at 400 hPa and above (Inf by construction)."""
    for channel, dtype in dtypes.items():
        typical = float(np.mean(schema.PHYSICAL_RANGE[channel]))
        if dtype == np.float16 and abs(typical) > FLOAT16_MAX:
            units = schema.channel_units(channel)
            raise DambenchSchemaError(
                f"The predictions hold {channel} as float16, which cannot hold {channel} in "
                f"{units}: its values are about {typical:.6g} {units} and float16's largest "
                f"finite value is {FLOAT16_MAX:.0f} (larger values are Inf). Write the "
                "predictions as float32."
            )


def _unit_warnings(found: dict[str, str]) -> tuple[str, ...]:
    """One warning naming the channels without a ``units`` attribute, or none."""
    absent = [c for c, u in found.items() if not u]
    if not absent:
        return ()
    expected = ", ".join(f"{c}: {schema.channel_units(c)!r}" for c in absent[:8])
    more = f" and {len(absent) - 8} more" if len(absent) > 8 else ""
    return (
        f"The predictions give no units for {absent[:8]}{more}; they are read as the schema's "
        f"units ({expected}). Set a 'units' attribute on each variable (or a 'units' channel "
        "coordinate) so that a unit mistake is refused rather than scored.",
    )


def _check_units(found: dict[str, str]) -> None:
    wrong = {
        c: (u, schema.channel_units(c))
        for c, u in found.items()
        if u and canonical_units(u) != canonical_units(schema.channel_units(c))
    }
    if wrong:
        listed = ", ".join(f"{c}: {u!r} (expected {e!r})" for c, (u, e) in list(wrong.items())[:8])
        raise DambenchSchemaError(
            f"Predictions in units other than the schema's: {listed}. Convert them to ERA5 "
            "native units (dambench.schema) before scoring."
        )


@dataclass(frozen=True)
class Predictions:
    """Lazily opened predictions; :meth:`cycle` reads one cycle and canonicalises it.

    Attributes
    ----------
    raw
        The file as opened (lazy), with the aliases of dims renamed (``lat`` -> ``latitude``,
        ...) and pressure levels in hPa; orientation is fixed per cycle.
    coords
        The canonical coordinates (latitude 90 -> -90, longitude 0..360), no data.
    stacked
        Name of the stacked variable, or ``None`` (per-variable layout).
    member_dim
        The ensemble member dim, or ``None``.
    channels
        Schema channels present, in schema order.
    times
        Valid times of the cycles (in the file's order).
    location
        Path or URL opened.
    warnings
        What was read on trust (e.g. channels without units): to be recorded with the scores.
    """

    raw: xr.Dataset
    coords: xr.Dataset
    stacked: str | None
    member_dim: str | None
    channels: tuple[str, ...]
    times: pd.DatetimeIndex
    location: str
    warnings: tuple[str, ...] = ()

    @property
    def n_members(self) -> int:
        return int(self.raw.sizes[self.member_dim]) if self.member_dim else 0

    @property
    def attrs(self) -> dict:
        return dict(self.raw.attrs)

    def _read(self, position: int) -> xr.Dataset:
        """The cycle at ``position`` in memory; a failed read (a corrupted chunk) is one
        :class:`DambenchIntegrityError` naming the file, the chunk and the cycle."""
        try:
            return self.raw.isel({schema.TIME: position}).load()
        except (DambenchError, MemoryError):
            raise
        except Exception as err:  # zarr, netCDF and fsspec readers raise many types
            where = self.location.rstrip("/")
            if self.stacked is not None:
                key = chunk_key(self.raw[self.stacked], position)
                where = f"{where}/{self.stacked}" + (f"/{key}" if key else "")
            raise DambenchIntegrityError(
                f"Cannot read {where} (cycle {str(self.times[position])[:16]}): "
                f"{type(err).__name__}: {str(err).rstrip('.')}. The predictions are damaged or "
                "unreadable: write them again."
            ) from err

    def cycle(self, time: np.datetime64) -> xr.DataArray:
        """The predictions valid at ``time``, in memory: ``([member,] channel, latitude,
        longitude)`` in physical units on the canonical grid (members on a dim ``member``)."""
        position = self.times.get_loc(pd.Timestamp(time))
        one = to_canonical(self._read(position))
        if self.stacked is not None:
            field = one[self.stacked].sel({schema.CHANNEL: list(self.channels)})
        else:
            field = to_channels(one, list(self.channels))
        if self.member_dim and self.member_dim != "member":
            field = field.rename({self.member_dim: "member"})
        order = ["member"] if self.member_dim else []
        return field.transpose(*order, schema.CHANNEL, *schema.SPATIAL_DIMS)


def _schema_names(ds: xr.Dataset) -> xr.Dataset:
    """Data variables named as another source names them (WeatherBench2's ``2m_temperature``,
    GRIB's ``2t``) renamed to the schema's short names."""
    renames = {}
    for name in schema.VARIABLES:
        found = find_variable(ds.data_vars, name)
        if found is None or found == name:
            continue
        if name in ds.data_vars:
            raise DambenchInputError(
                f"The predictions hold both {name!r} and {found!r} (the same variable under two "
                "names); keep one."
            )
        renames[found] = name
    return ds.rename(renames)


def _renamed(raw: xr.Dataset) -> xr.Dataset:
    """Dim aliases and source variable names renamed (cheap, lazy), without reorienting any
    data; levels in hPa."""
    return _schema_names(_level_in_hpa(rename_aliases(raw)))


def _channels_of(ds: xr.Dataset, stacked: str | None) -> tuple[str, ...]:
    if stacked is None:
        return tuple(available_channels(ds))
    found = [str(c) for c in ds[stacked][schema.CHANNEL].values]
    unknown = [c for c in found if c not in schema.CHANNEL_INDEX]
    if unknown:
        raise DambenchSchemaError(f"Unknown channels {unknown} in the predictions.")
    return tuple(c for c in schema.CHANNELS if c in found)


def _units_and_dtypes(
    ds: xr.Dataset, stacked: str | None, channels: Sequence[str]
) -> tuple[dict[str, str], dict[str, np.dtype]]:
    """Units (``""`` when not given) and dtype of each channel, from attributes only."""
    if stacked is None:
        names = {c: schema.CHANNEL_VARIABLE[c] for c in channels}
        units = {c: str(ds[v].attrs.get("units", "")) for c, v in names.items()}
        return units, {c: ds[v].dtype for c, v in names.items()}
    field = ds[stacked]
    if "units" in field.coords:
        listed = [str(c) for c in field[schema.CHANNEL].values]
        given = dict(zip(listed, field["units"].values.tolist(), strict=True))
    else:
        given = dict.fromkeys(channels, field.attrs.get("units", ""))
    return {c: str(given[c]) for c in channels}, dict.fromkeys(channels, field.dtype)


def open_predictions(
    path: str | os.PathLike, *, members_dim: str | None = None, variable: str | None = None
) -> Predictions:
    """Open predictions lazily (see the module docstring for the layouts accepted).

    Raises
    ------
    DambenchInputError
        No time dim, duplicated times, unknown dims, an unknown ``variable`` or ``members_dim``.
    DambenchSchemaError
        No schema channel found, units other than the schema's, or float16 for a channel it
        cannot hold.

    Warns
    -----
    UserWarning
        Channels without units (read as the schema's; also in :attr:`Predictions.warnings`).
    """
    raw = _renamed(_open_raw(path))
    if schema.TIME not in raw.dims:
        raise DambenchInputError(
            f"The predictions at {path} have no time dim (dims: {dict(raw.sizes)}); one analysis "
            "per cycle along 'time' (or valid_time) is needed."
        )
    times = pd.DatetimeIndex(raw[schema.TIME].values)
    if times.has_duplicates:
        raise DambenchInputError(
            f"The predictions at {path} repeat times: {_few(times[times.duplicated()])}."
        )
    stacked = _stacked_variable(raw, variable)
    member_dim = _member_dim(raw, members_dim)
    channels = _channels_of(raw, stacked)
    if not channels:
        raise DambenchSchemaError(
            f"No schema channels in the predictions at {path} (data variables "
            f"{list(raw.data_vars)}); expected a stacked variable with a 'channel' dim or some of "
            f"{list(schema.VARIABLES)} (upper-air ones on a 'level' dim)."
        )
    names = [stacked] if stacked else sorted({schema.CHANNEL_VARIABLE[c] for c in channels})
    _check_dims(raw, names, member_dim)
    units, dtypes = _units_and_dtypes(raw, stacked, channels)
    _check_units(units)
    _check_precision(dtypes)
    notes = _unit_warnings(units)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    coords = to_canonical(raw.drop_vars(list(raw.data_vars)))
    return Predictions(raw, coords, stacked, member_dim, channels, times, str(path), notes)


def check_against(predictions: Predictions, ds: xr.Dataset) -> None:
    """Refuse predictions whose cycles, grid or channels do not match the split ``ds``.

    The times must be exactly the split's cycles (the error names missing and extra times); the
    latitude/longitude coordinates must equal the dataset's after canonicalisation; every
    predicted channel must be in the dataset.
    """
    wanted = pd.DatetimeIndex(ds[schema.TIME].values)
    missing = wanted.difference(predictions.times)
    extra = predictions.times.difference(wanted)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} cycles of the split are missing: {_few(missing)}")
        if len(extra):
            parts.append(f"{len(extra)} times are not cycles of the split: {_few(extra)}")
        raise DambenchInputError(
            f"The predictions' times do not match the split's {len(wanted)} cycles "
            f"({_few(wanted[:1])} .. {_few(wanted[-1:])}): " + "; ".join(parts) + "."
        )
    for dim in schema.SPATIAL_DIMS:
        mine = np.asarray(predictions.coords[dim].values, dtype=np.float64)
        theirs = np.asarray(ds[dim].values, dtype=np.float64)
        if mine.shape != theirs.shape or not np.allclose(mine, theirs, atol=1e-6):
            raise DambenchSchemaError(
                f"The predictions' {dim} ({mine.size} points, {mine[:1]}..{mine[-1:]}) differ "
                f"from the dataset's ({theirs.size} points, {theirs[:1]}..{theirs[-1:]}); "
                "regrid them to the dataset's grid first (dambench.regrid)."
            )
    available = [str(c) for c in ds[schema.CHANNEL].values]
    absent = [c for c in predictions.channels if c not in available]
    if absent:
        raise DambenchInputError(
            f"Predicted channels {absent} are not in the dataset (which has {available}); drop "
            "them or score against a dataset that has them."
        )
