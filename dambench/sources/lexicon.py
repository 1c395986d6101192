"""Per-source names of the schema variables, and the one reading of them every reader shares.

WeatherBench2 and ARCO-ERA5 stores use long names; the Copernicus CDS netCDF files and cfgrib's
reading of GRIB use ERA5 short names, GRIB ``shortName`` keys differ for the surface variables.
:func:`schema_variables` finds them under any of these names, checks their units and reads
pressure levels as whole hPa, for the ERA5 readers and the forecast archive alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import numpy as np
import xarray as xr

from dambench import schema
from dambench.channels import check_channel_names
from dambench.exceptions import DambenchSchemaError
from dambench.units import same_units

WB2 = MappingProxyType(
    {
        "u10": "10m_u_component_of_wind",
        "v10": "10m_v_component_of_wind",
        "t2m": "2m_temperature",
        "msl": "mean_sea_level_pressure",
        "z": "geopotential",
        "q": "specific_humidity",
        "u": "u_component_of_wind",
        "v": "v_component_of_wind",
        "t": "temperature",
    }
)
"""WeatherBench2 and ARCO-ERA5 zarr stores."""

ARCO = WB2

CDS = MappingProxyType({name: name for name in WB2})
"""CDS netCDF and cfgrib (which renames GRIB's 10u, 10v, 2t to u10, v10, t2m)."""

GRIB_SHORT_NAMES = MappingProxyType({"u10": "10u", "v10": "10v", "t2m": "2t"})
"""GRIB ``shortName`` where it differs from the schema name."""

LEXICONS = MappingProxyType({"wb2": WB2, "arco": ARCO, "cds": CDS})


def find_variable(data_vars, name: str) -> str | None:
    """The data variable holding schema variable ``name``, looked up in every lexicon."""
    candidates = [lex[name] for lex in LEXICONS.values()]
    candidates.append(GRIB_SHORT_NAMES.get(name, name))
    return next((c for c in candidates if c in data_vars), None)


# --- schema variables of a source -----------------------------------------------------------------


def check_units(field: xr.DataArray, var: str, source: str) -> None:
    """Raise unless ``field`` (holding schema variable ``var``) has ERA5's native units; a field
    without a ``units`` attribute is taken as it is.

    Raises
    ------
    DambenchSchemaError
        Other units; the message names the variable, the units found and those expected.
    """
    units = field.attrs.get("units")
    expected = schema.VARIABLES[var].units
    if units is not None and not same_units(units, expected):
        raise DambenchSchemaError(
            f"{source}: variable {field.name!r} has units {units!r}; expected {expected!r} "
            "(ERA5 native units)."
        )


def whole_levels(field: xr.DataArray, source: str) -> xr.DataArray:
    """``field`` with its ``level`` coordinate as int64 hPa.

    A level within :data:`~dambench.schema.LEVEL_ATOL_HPA` of a whole number is that number (a
    float32 ``849.99994`` is 850, never 849); any other level is refused rather than relabelled.

    Raises
    ------
    DambenchSchemaError
        A level that is not a whole number of hPa (the levels are named).
    """
    levels = np.asarray(field[schema.LEVEL].values, dtype=np.float64)
    whole = np.round(levels)
    odd = levels[np.abs(levels - whole) > schema.LEVEL_ATOL_HPA]
    if odd.size:
        raise DambenchSchemaError(
            f"{source}: variable {field.name!r} has pressure levels {odd.tolist()} that are not "
            f"whole hPa (tolerance {schema.LEVEL_ATOL_HPA} hPa); the schema's levels are "
            f"{list(schema.LEVELS_HPA)}. Convert the levels to hPa or select the schema's first."
        )
    return field.assign_coords({schema.LEVEL: whole.astype(np.int64)})


def _check_levels(field: xr.DataArray, var: str, wanted: Sequence[str], source: str) -> None:
    have = set(field[schema.LEVEL].values.tolist())
    need = [schema.CHANNEL_LEVEL[c] for c in wanted if schema.CHANNEL_VARIABLE[c] == var]
    missing = [lv for lv in need if lv not in have]
    if missing:
        raise DambenchSchemaError(
            f"{source}: variable {var!r} lacks levels {missing} hPa; it has {sorted(have)}."
        )


def _wanted_variables(channels: Sequence[str] | None) -> list[str]:
    if channels is None:
        return list(schema.VARIABLES)
    return list(dict.fromkeys(schema.CHANNEL_VARIABLE[c] for c in channels))


def schema_variables(
    ds: xr.Dataset, source: str, channels: Sequence[str] | None = None
) -> xr.Dataset:
    """The schema variables of a source Dataset, renamed to schema names, with units checked
    and integer hPa levels.

    Parameters
    ----------
    ds
        A source in canonical orientation, variables under any lexicon's names.
    source
        Name of the source in messages.
    channels
        Schema channels needed: their variables and levels must be there. Default: every schema
        variable the source holds (at least one).

    Returns
    -------
    Dataset of schema-named variables; upper-air ones on ``level`` (int64 hPa).

    Raises
    ------
    DambenchSchemaError
        Needed variables or levels missing (named), wrong units, an upper-air variable without a
        level dim, levels that are not whole hPa, or no schema variable at all.
    """
    wanted = check_channel_names(channels) if channels is not None else None
    found = {var: find_variable(ds.data_vars, var) for var in _wanted_variables(wanted)}
    missing = [var for var, name in found.items() if name is None]
    if wanted is not None and missing:
        raise DambenchSchemaError(
            f"{source}: missing variables {missing} (needed for channels "
            f"{[c for c in wanted if schema.CHANNEL_VARIABLE[c] in missing]}); "
            f"the source holds {list(ds.data_vars)}."
        )
    out = {}
    for var, name in ((v, n) for v, n in found.items() if n is not None):
        field = ds[name]
        check_units(field, var, source)
        if var in schema.ATMOSPHERIC_VARIABLES:
            if schema.LEVEL not in field.dims:
                raise DambenchSchemaError(
                    f"{source}: upper-air variable {name!r} has no pressure-level dim "
                    f"(dims {field.dims})."
                )
            field = whole_levels(field, source)
            if wanted is not None:
                _check_levels(field, var, wanted, source)
        out[var] = field.rename(var)
    if not out:
        raise DambenchSchemaError(
            f"{source}: no schema variables among {list(ds.data_vars)}; expected some of "
            f"{list(schema.VARIABLES)} (or their WeatherBench2/GRIB names)."
        )
    return xr.Dataset(out)
