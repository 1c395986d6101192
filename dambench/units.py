"""Units strings: one spelling for the many ways ERA5, CF, CPC, OLR files and users write a unit.

Every comparison of units in dambench goes through :func:`canonical_units` (or
:func:`same_units`): the ERA5 and forecast readers, the CPC and OLR readers and the loader's check
of the modality units all compare the canonical spellings, never raw strings.
"""

from __future__ import annotations

import re

NORMALIZED_UNITS = "1"
"""Units of normalised (z-scored) fields."""

_UNIT_WORDS = {
    "kelvin": "K",
    "pascal": "Pa",
    "degk": "K",
    "deg_k": "K",
    "m/s": "m s-1",
    "mm/24h": "mm day-1",
}
"""Whole spellings (compared case-insensitively) that no rule below turns into the schema's."""

_TOKEN_ALIASES = {"d": "day", "days": "day", "w": "W"}
"""Unit symbols written another way: ``mm/d`` is mm/day; ``w m-2`` is W m-2 (no unit is "w")."""

_TOKEN = re.compile(r"^([A-Za-z]+)(-?\d*)$")


def canonical_units(units: str) -> str:
    """Spell a units string the schema's (UDUNITS) way.

    Powers lose ``**`` and ``^``; a single ``/`` turns the denominator's powers negative; a
    ``.`` between symbols is a product; ``d`` is ``day``.

    Examples
    --------
    >>> canonical_units("m s**-1"), canonical_units("m/s"), canonical_units("m**2 s**-2")
    ('m s-1', 'm s-1', 'm2 s-2')
    >>> canonical_units("kg/kg"), canonical_units("mm/day"), canonical_units("mm.d-1")
    ('kg kg-1', 'mm day-1', 'mm day-1')
    >>> canonical_units("W/m^2"), canonical_units("w m**-2"), canonical_units("W.m-2")
    ('W m-2', 'W m-2', 'W m-2')
    """
    text = units.strip()
    text = _UNIT_WORDS.get(text.lower(), text)
    text = text.replace("**", "").replace("^", "")
    text = re.sub(r"(?<=[A-Za-z0-9])\.(?=[A-Za-z])", " ", text)  # "mm.day-1": a product
    if text.count("/") == 1:
        num, den = (part.strip() for part in text.split("/"))
        den_terms = [re.sub(r"^([A-Za-z]+)(\d*)$", _negate_power, t) for t in den.split()]
        text = f"{num} {' '.join(den_terms)}"
    return " ".join(_canonical_token(token) for token in text.split())


def same_units(found: object, expected: str) -> bool:
    """Whether ``found`` (any object; ``None`` is never a match) spells the units ``expected``."""
    if found is None:
        return False
    return canonical_units(str(found)) == canonical_units(expected)


def _negate_power(match: re.Match[str]) -> str:
    return f"{match.group(1)}-{match.group(2) or '1'}"


def _canonical_token(token: str) -> str:
    match = _TOKEN.match(token)
    if match is None:
        return token
    symbol, power = match.groups()
    return _TOKEN_ALIASES.get(symbol.lower(), symbol) + power
