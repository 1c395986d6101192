"""The layout of CPC's raw daily binary files and their GrADS ``.ctl`` descriptors.

``PRCP_CU_GAUGE_V1.0GLB_0.50deg.lnx.YYYYMMDD.RT`` holds little-endian float32 records of 360 x 720
(``rain`` in 0.1 mm/day and ``gnum``, the number of gauges in the cell; undefined -999; latitude
south to north). :class:`CpcBinaryLayout` describes such a file; :func:`parse_cpc_ctl` reads the
description from the GrADS descriptor distributed with it. The reader is
:func:`dambench.sources.cpc.read_cpc_binary`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import fsspec
import numpy as np

from dambench.exceptions import DambenchError, DambenchInputError
from dambench.sources.base import PathLike, is_remote, local_copy, unreachable
from dambench.sources.remote import prepare_remote


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
    lines = read_bytes(path).decode("ascii", errors="replace").splitlines()
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


def read_bytes(path: PathLike) -> bytes:
    """All bytes of a local file or fsspec URL.

    A URL is opened as every remote read is (:func:`~dambench.sources.remote.prepare_remote`:
    the filesystem installed, the host reachable, transient failures retried with backoff); a
    dambench error (e.g. :class:`~dambench.exceptions.DambenchRemoteError` naming the URL)
    propagates as it is, and any other failure raises one error naming the URL.
    """
    if not is_remote(path):
        return local_copy(path).read_bytes()
    text = str(path)
    options = prepare_remote(text)
    try:
        with fsspec.open(text, "rb", **options) as handle:
            return handle.read()
    except DambenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any fsspec backend error means unreachable
        raise unreachable(text, err) from err
