"""Per-source names of the schema variables (short schema name -> the source's variable name).

WeatherBench2 and ARCO-ERA5 stores use long names; the Copernicus CDS netCDF files and cfgrib's
reading of GRIB use ERA5 short names, GRIB ``shortName`` keys differ for the surface variables.
"""

from __future__ import annotations

from types import MappingProxyType

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
