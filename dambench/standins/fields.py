"""Smooth, physically plausible global fields for stand-ins: never data.

A stand-in field is a pole-to-equator profile plus a few planetary waves drifting eastward with
time, at the magnitudes of :data:`dambench.testing._SCALE` (surface variables) and of a standard
atmosphere (pressure levels: geopotential from the hypsometric equation, a tropopause in
temperature, specific humidity falling off with pressure, a jet near 250 hPa). Values are stored
with :data:`MANTISSA_BITS` significant bits, about ERA5's 16-bit GRIB packing, which also lets
the stand-in stores compress like real ones instead of like noise.
"""

from __future__ import annotations

import math

import numpy as np

from dambench import schema
from dambench.testing import _SCALE

MANTISSA_BITS = 12
"""Significant bits kept in float32 stand-in values (relative precision 2**-13)."""
N_WAVES = 4
WAVE_SPEED_RAD_PER_DAY = 0.25
"""Eastward drift of the waves: about 14 degrees of longitude a day."""


def standin_attrs(what: str) -> dict[str, str]:
    """The attributes that label a file as a stand-in of ``what`` (every stand-in file has them)."""
    return {
        "standin": "true",
        "note": f"synthetic stand-in of {what}, not data: never use it as data or to measure skill",
        "generator": "dambench.standins",
    }


def level_profile(variable: str, level_hpa: float) -> tuple[float, float]:
    """``(mean, spread)`` of an upper-air ``variable`` at ``level_hpa`` in its ERA5 units."""
    log_p = math.log(1000.0 / level_hpa)
    if variable == "z":  # hypsometric: 7.5 km scale height, 9.81 m s-2
        return 1000.0 + 9.81 * 7500.0 * log_p, 300.0 + 1700.0 * log_p / math.log(2.0)
    if variable == "t":  # lapse to a 212 K tropopause
        return max(288.0 * (level_hpa / 1000.0) ** 0.19, 212.0), _SCALE["t"][1]
    if variable == "q":
        mean = 8e-3 * (level_hpa / 1000.0) ** 3
        return mean, 0.7 * mean
    if variable == "u":  # a jet near 250 hPa
        return 5.0 + 15.0 * math.exp(-((math.log(level_hpa / 250.0) / 0.7) ** 2)), _SCALE["u"][1]
    return _SCALE[variable]


def channel_profile(channel: str) -> tuple[float, float]:
    """``(mean, spread)`` of a schema ``channel`` in its ERA5 units (the stand-in's nominal
    statistics; also FengWu stand-in's normalisation)."""
    variable = schema.CHANNEL_VARIABLE[channel]
    level = schema.CHANNEL_LEVEL.get(channel)
    return level_profile(variable, level) if level is not None else _SCALE[variable]


def _meridional_shape(variable: str, lat_rad: np.ndarray) -> np.ndarray:
    """Pole-to-equator structure in units of the spread."""
    cos2 = np.cos(lat_rad) ** 2
    if variable in ("t2m", "t", "z", "q"):
        return 1.3 * (2.0 * cos2 - 1.0) if variable != "q" else 1.0 * (2.0 * cos2 - 1.0)
    if variable in ("u10", "u"):
        return -np.cos(3.0 * lat_rad)  # easterly trades, westerlies near 60 degrees
    if variable == "msl":
        return 0.8 * np.cos(4.0 * lat_rad)  # subtropical highs, subpolar lows
    return np.zeros_like(lat_rad)


def _waves(seed: int, lat_rad: np.ndarray, lon_rad: np.ndarray, days: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = np.zeros((lat_rad.size, lon_rad.size))
    for k in range(N_WAVES):
        m = int(rng.integers(1, 7))
        n = int(rng.integers(1, 5))
        amp = 0.3 / (k + 1)
        phase = rng.uniform(0, 2 * np.pi)
        profile = amp * np.cos(lat_rad) * np.sin(n * lat_rad + rng.uniform(0, np.pi))
        total += np.outer(profile, np.cos(m * lon_rad - WAVE_SPEED_RAD_PER_DAY * days + phase))
    return total


def round_mantissa(values: np.ndarray, bits: int = MANTISSA_BITS) -> np.ndarray:
    """``values`` (float32) rounded to ``bits`` significant mantissa bits (round half up)."""
    as_int = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    drop = 23 - bits
    half = np.uint32(1 << (drop - 1))
    mask = np.uint32((0xFFFFFFFF >> drop) << drop)
    return ((as_int + half) & mask).view(np.float32)


def channel_field(
    channel: str, latitude: np.ndarray, longitude: np.ndarray, hours: float, seed: int = 0
) -> np.ndarray:
    """The stand-in field of ``channel`` at ``hours`` after the stand-in epoch, ``(lat, lon)``
    float32 in ERA5 units, smooth in space and time."""
    variable = schema.CHANNEL_VARIABLE[channel]
    mean, spread = channel_profile(channel)
    lat_rad = np.deg2rad(np.asarray(latitude, dtype=np.float64))
    lon_rad = np.deg2rad(np.asarray(longitude, dtype=np.float64))
    channel_seed = seed * 1000 + schema.CHANNEL_INDEX[channel]
    anomaly = _meridional_shape(variable, lat_rad)[:, None] + _waves(
        channel_seed, lat_rad, lon_rad, hours / 24.0
    )
    field = mean + spread * anomaly
    if variable == "q":
        field = np.maximum(field, 0.02 * mean)
    return round_mantissa(field.astype(np.float32))
