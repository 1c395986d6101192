"""Units strings: one spelling for the many ways ERA5, CF and users write the same unit."""

from __future__ import annotations

import re

NORMALIZED_UNITS = "1"
"""Units of normalised (z-scored) fields."""

_UNIT_WORDS = {"kelvin": "K", "pascal": "Pa", "degk": "K", "deg_k": "K", "m/s": "m s-1"}


def canonical_units(units: str) -> str:
    """Spell a units string the schema's way: ``"m s**-1"``, ``"m/s"`` -> ``"m s-1"``;
    ``"m**2 s**-2"`` -> ``"m2 s-2"``; ``"kg/kg"`` -> ``"kg kg-1"``."""
    text = units.strip()
    text = _UNIT_WORDS.get(text.lower(), text)
    text = text.replace("**", "").replace("^", "")
    if text.count("/") == 1:
        num, den = (part.strip() for part in text.split("/"))
        den_terms = [re.sub(r"^([A-Za-z]+)(\d*)$", _negate_power, t) for t in den.split()]
        text = f"{num} {' '.join(den_terms)}"
    return " ".join(text.split())


def _negate_power(match: re.Match[str]) -> str:
    return f"{match.group(1)}-{match.group(2) or '1'}"
