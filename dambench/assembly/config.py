"""Build configurations: data (JSON) loaded strictly into a frozen :class:`BuildConfig`.

The package ships ``era5-sample`` (the embedded default) and ``era5-fengwu`` (the production
recipe) in ``dambench/assembly/configs/``; users pass the path of their own JSON file instead (a copy
with another name, observation ratio or channel list is a dataset of its own).

Every key is checked before anything is written: its name (a misspelt key is named with the
closest known one), its JSON type (``"8"`` is not an integer), its range, and whether the recipe
uses it (``inputs.era5`` means nothing to ``era5-sample``). Errors are
:class:`~dambench.exceptions.DambenchInputError` naming the key, what was expected and what was
found.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from dambench import schema
from dambench.channels import check_channel_names
from dambench.exceptions import DambenchError, DambenchInputError
from dambench.sources.era5 import ARCO_ERA5_URL, ERA5_STORES

RECIPES = ("era5-sample", "era5-fengwu")
SPLIT_NAMES = ("train", "validation", "test")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
"""Dataset names: also the Hub repository ``dambench/NAME`` and the store ``NAME.zarr``."""

RECIPE_INPUTS = {"era5-sample": (), "era5-fengwu": ("era5", "cpc", "olr")}
"""The ``inputs`` keys each recipe reads (era5-sample reads only the embedded sample)."""
RECIPE_MODALITIES = {
    "era5-sample": {"precip": {"reader": ("era5_tp",), "stations": ("capitals",)}},
    "era5-fengwu": {"precip": {"reader": ("cpc",)}, "olr": {"reader": ("olr",)}},
}
"""The modalities each recipe makes, with the allowed values of their settings."""
BACKGROUND_KEYS = {
    "persistence": {"kind", "lag_steps"},
    "onnx": {
        "kind",
        "model",
        "mean",
        "std",
        "model_grid_deg",
        "lead_hours",
        "step_hours",
        "channels",
        "allow_coarse_forecaster_input",
    },
}
RECIPE_BACKGROUND = {"era5-sample": "persistence", "era5-fengwu": "onnx"}
OBSERVATION_KEYS = ("pattern", "ratio", "seed", "noise", "stations")
PATTERNS = ("random", "columns", "stations")

_TYPES = {
    "name": (str, "a string"),
    "title": (str, "a string"),
    "recipe": (str, "a string"),
    "channels": ((str, list), "'all' or a list of channel names"),
    "splits": (dict, "an object"),
    "background": (dict, "an object"),
    "observation": (dict, "an object"),
    "modalities": (dict, "an object"),
    "inputs": (dict, "an object"),
    "cycles_per_shard": (int, "an integer"),
    "cycles_per_parquet_file": (int, "an integer"),
    "license": (str, "a string"),
    "sources": (dict, "an object"),
}
_REQUIRED = ("name", "recipe", "channels", "splits", "background", "observation")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """What to build; see the shipped JSON files for examples.

    Attributes
    ----------
    name
        Dataset name (:data:`NAME_PATTERN`): the store is ``NAME.zarr`` inside the build folder.
    channels
        Schema channels (``"all"`` for the 69) in schema order.
    splits
        ``{"dates": {split: [first_day, last_day]}}`` or ``{"last_days": {"test": n, ...}}``
        (the last days of the data; the rest is train).
    cycles_per_shard
        Cycles per Zarr shard (one chunk per cycle inside); also the unit of resumable work.
    cycles_per_parquet_file
        Rows per Parquet file at most (one row group per cycle); see
        :func:`dambench.assembly.builder.make_plan` for the number of files.
    """

    name: str
    title: str = ""
    recipe: str
    channels: tuple[str, ...]
    splits: dict[str, Any]
    background: dict[str, Any]
    observation: dict[str, Any]
    modalities: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    cycles_per_shard: int = 16
    cycles_per_parquet_file: int = 64
    license: str = "cc-by-4.0"
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_config(self.to_dict(), source=repr(self.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (channels as a list)."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        return out

    def digest(self) -> str:
        """sha256 of the canonical JSON form: a changed config never resumes an old build."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def available_configs() -> list[str]:
    """Names of the configurations shipped with dambench."""
    folder = resources.files("dambench.assembly") / "configs"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_config(name_or_path: str | Path, **overrides: Any) -> BuildConfig:
    """Load a shipped config by name or a JSON file by path, checking every key.

    Parameters
    ----------
    name_or_path
        ``era5-sample``, ``era5-fengwu`` or the path of a JSON file.
    overrides
        Top-level keys to replace (``None`` values are ignored).

    Raises
    ------
    DambenchInputError
        No such config, invalid JSON, or any key that is unknown, missing, of the wrong type,
        out of range or unused by the recipe (see :func:`check_config`).
    """
    text = str(name_or_path)
    if text in available_configs():
        raw = json.loads(
            (resources.files("dambench.assembly") / "configs" / f"{text}.json").read_text()
        )
    elif Path(text).is_file():
        try:
            raw = json.loads(Path(text).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DambenchInputError(f"Config {text} is not valid JSON: {err}.") from err
    else:
        raise DambenchInputError(
            f"No config {text!r}: neither a shipped config ({available_configs()}) nor a JSON file."
        )
    if not isinstance(raw, dict):
        raise DambenchInputError(
            f"Config {text}: expected a JSON object, found {type(raw).__name__}."
        )
    raw.update({k: v for k, v in overrides.items() if v is not None})
    check_config(raw, source=text)
    if raw["channels"] == "all":
        raw["channels"] = schema.CHANNELS
    return BuildConfig(**{**raw, "channels": tuple(raw["channels"])})


def check_config(raw: Mapping[str, Any], source: str = "config") -> None:
    """Check a config mapping completely; raise :class:`DambenchInputError` naming the key.

    Checks, in order: unknown and missing keys, JSON types, the name, the recipe, channels,
    splits, background, observation, modalities, inputs, shard and file sizes, sources.
    """
    where = f"Config {source}"
    _check_keys(raw, _TYPES, _REQUIRED, where, "")
    for key, value in raw.items():
        kind, what = _TYPES[key]
        _expect(value, kind, f"{where}: {key!r}", what)
    _check_name(raw["name"], where)
    if raw["recipe"] not in RECIPES:
        raise DambenchInputError(
            f"{where}: 'recipe' must be one of {list(RECIPES)}, got {raw['recipe']!r}."
        )
    recipe = raw["recipe"]
    _check_channels(raw["channels"], f"{where}: 'channels'")
    _check_splits(raw["splits"], recipe, where)
    _check_background(raw["background"], recipe, where)
    check_observation(raw["observation"], f"{where}: 'observation'")
    _check_modalities(raw.get("modalities", {}), recipe, where)
    _check_inputs(raw.get("inputs", {}), recipe, where)
    _check_declared_store(raw, where)
    for key in ("cycles_per_shard", "cycles_per_parquet_file"):
        if key in raw and raw[key] < 1:
            raise DambenchInputError(f"{where}: {key!r} must be >= 1, got {raw[key]}.")
    for key in ("sources",):
        for name, value in raw.get(key, {}).items():
            _expect(value, str, f"{where}: '{key}.{name}'", "a string")
    if "license" in raw and not raw["license"].strip():
        raise DambenchInputError(f"{where}: 'license' must not be empty (e.g. 'cc-by-4.0').")


def _check_keys(raw: Mapping, known, required, where: str, prefix: str) -> None:
    """Raise naming unknown keys (with the closest known key) and missing required keys."""
    unknown = sorted(str(k) for k in set(raw) - set(known))
    if unknown:
        hints = []
        for key in unknown:
            names = [str(k) for k in known]
            close = [k for k in names if k.startswith(key) or key.startswith(k)]
            close = close or difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hints.append(repr(prefix + key) + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise DambenchInputError(
            f"{where}: unknown keys {unknown}: {', '.join(hints)}; known keys are {sorted(known)}."
        )
    missing = sorted(set(required) - set(raw))
    if missing:
        raise DambenchInputError(f"{where}: missing keys {[prefix + m for m in missing]}.")


def _expect(value, kind, key: str, what: str) -> None:
    """Raise unless ``value`` has the JSON type ``kind`` (an integer is a float; a boolean is
    neither)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DambenchInputError(f"{key} must be {what}, got {type(value).__name__} {value!r}.")


def _check_name(name: str, where: str) -> None:
    if not NAME_PATTERN.match(name) or ".." in name or name.endswith((".", "-")):
        raise DambenchInputError(
            f"{where}: 'name' must be 1-96 lowercase letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit, without '..' or a '/' (it names NAME.zarr inside the output "
            f"folder and the Hub repository), got {name!r}."
        )


def _check_channels(channels, key: str) -> None:
    if isinstance(channels, str):
        if channels != "all":
            raise DambenchInputError(f"{key} must be 'all' or a list of names, got {channels!r}.")
        return
    _expect(channels, list, key, "'all' or a list of channel names")
    for i, channel in enumerate(channels):
        _expect(channel, str, f"{key}[{i}]", "a channel name")
    if not channels:
        raise DambenchInputError(f"{key} is empty; list at least one channel.")
    try:
        check_channel_names(channels)
    except DambenchError as err:
        raise DambenchInputError(f"{key}: {err}") from err


def _check_splits(splits: Mapping, recipe: str, where: str) -> None:
    if len(splits) != 1 or set(splits) - {"dates", "last_days"}:
        raise DambenchInputError(
            f"{where}: 'splits' must hold exactly one of 'dates' or 'last_days', got "
            f"{sorted(splits)}."
        )
    if "dates" in splits:
        _check_dates(splits["dates"], where)
        return
    if recipe == "era5-fengwu":
        raise DambenchInputError(f"{where}: recipe era5-fengwu needs 'splits.dates'.")
    days = splits["last_days"]
    _expect(days, dict, f"{where}: 'splits.last_days'", "an object of split -> days")
    _check_keys(days, ("test", "validation"), (), f"{where}: 'splits.last_days'", "")
    for name, n in days.items():
        _expect(n, int, f"{where}: 'splits.last_days.{name}'", "an integer")
        if n < 0:
            raise DambenchInputError(f"{where}: 'splits.last_days.{name}' must be >= 0, got {n}.")


def _check_dates(dates, where: str) -> None:
    key = f"{where}: 'splits.dates'"
    _expect(dates, dict, key, "an object of split -> [first_day, last_day]")
    _check_keys(dates, SPLIT_NAMES, (), key, "")
    if not dates:
        raise DambenchInputError(f"{key} is empty; give at least a train split.")
    spans = []
    for name, span in dates.items():
        _expect(span, list, f"{key}.{name}", "[first_day, last_day]")
        if len(span) != 2 or not all(isinstance(d, str) for d in span):
            raise DambenchInputError(
                f"{key}.{name} must be [first_day, last_day] as 'YYYY-MM-DD' strings, got {span!r}."
            )
        try:
            first, last = (pd.Timestamp(d) for d in span)
        except ValueError as err:
            raise DambenchInputError(f"{key}.{name}: not a date in {span!r} ({err}).") from err
        if last < first:
            raise DambenchInputError(f"{key}.{name}: the last day {span[1]} is before the first.")
        spans.append((first, last, name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start <= end:
            raise DambenchInputError(f"{key}: splits {a!r} and {b!r} overlap.")


def _check_background(background: Mapping, recipe: str, where: str) -> None:
    kind = RECIPE_BACKGROUND[recipe]
    key = f"{where}: 'background'"
    if background.get("kind") != kind:
        raise DambenchInputError(
            f"{key}: recipe {recipe} makes a {kind!r} background ('kind': {kind!r}), got "
            f"{background.get('kind')!r}."
        )
    _check_keys(background, BACKGROUND_KEYS[kind], ("kind",), key, "background.")
    if kind == "persistence":
        lag = background.get("lag_steps", 3)
        _expect(lag, int, f"{key}.lag_steps", "an integer")
        if lag < 1:
            raise DambenchInputError(f"{key}.lag_steps must be >= 1, got {lag}.")
        return
    for name in ("model", "mean", "std"):
        if name not in background:
            raise DambenchInputError(f"{key}: missing key 'background.{name}'.")
        _expect(background[name], str, f"{key}.{name}", "a path or URL")
    for name in ("lead_hours", "step_hours"):
        value = background.get(name, 24 if name == "lead_hours" else 6)
        _expect(value, int, f"{key}.{name}", "an integer number of hours")
        if value < 1:
            raise DambenchInputError(f"{key}.{name} must be >= 1, got {value}.")
    grid = background.get("model_grid_deg")
    if grid is not None:
        _expect(grid, float, f"{key}.model_grid_deg", "a number of degrees or null")
        if grid <= 0:
            raise DambenchInputError(f"{key}.model_grid_deg must be > 0, got {grid}.")
    if "channels" in background:
        _check_channels(background["channels"], f"{key}.channels")
    allow = background.get("allow_coarse_forecaster_input", False)
    if not isinstance(allow, bool):
        raise DambenchInputError(
            f"{key}.allow_coarse_forecaster_input must be true or false, got "
            f"{type(allow).__name__} {allow!r}."
        )


def check_observation(spec: Mapping, key: str = "observation") -> None:
    """Check ``observe`` settings as stored in a config or a store's ``observation`` attribute.

    ``pattern`` one of :data:`PATTERNS`, ``ratio`` in (0, 1], ``seed`` an integer >= 0,
    ``noise`` ``"default"``, a number >= 0, ``null`` or an object of channel -> number >= 0,
    ``stations`` ``[[latitudes], [longitudes]]`` (needed by ``pattern: "stations"``).
    """
    _expect(spec, dict, key, "an object")
    _check_keys(spec, OBSERVATION_KEYS, (), key, "")
    pattern = spec.get("pattern", schema.DEFAULT_OBSERVATION_PATTERN)
    if pattern not in PATTERNS:
        raise DambenchInputError(f"{key}.pattern must be one of {list(PATTERNS)}, got {pattern!r}.")
    ratio = spec.get("ratio", schema.DEFAULT_OBSERVATION_RATIO)
    _expect(ratio, float, f"{key}.ratio", "a number in (0, 1]")
    if not 0 < ratio <= 1:
        raise DambenchInputError(f"{key}.ratio must be in (0, 1], got {ratio}.")
    seed = spec.get("seed", schema.DEFAULT_OBSERVATION_SEED)
    _expect(seed, int, f"{key}.seed", "an integer")
    if seed < 0:
        raise DambenchInputError(f"{key}.seed must be >= 0, got {seed}.")
    _check_noise(spec.get("noise", "default"), f"{key}.noise")
    stations = spec.get("stations")
    if stations is not None:
        ok = (
            isinstance(stations, list)
            and len(stations) == 2
            and all(isinstance(s, list) for s in stations)
            and len(stations[0]) == len(stations[1]) > 0
        )
        if not ok:
            raise DambenchInputError(
                f"{key}.stations must be [[latitudes], [longitudes]] of equal, non-zero length."
            )
    elif pattern == "stations":
        raise DambenchInputError(f"{key}: pattern 'stations' needs 'stations'.")


def _check_noise(noise, key: str) -> None:
    what = "'default', a number >= 0, null or an object of channel -> number >= 0"
    if noise is None or noise == "default":
        return
    if isinstance(noise, dict):
        _check_channels(list(noise), key)
        values = noise.items()
    else:
        _expect(noise, float, key, what)
        values = [("", noise)]
    for channel, value in values:
        name = f"{key}.{channel}" if channel else key
        _expect(value, float, name, "a number >= 0")
        if not value >= 0:
            raise DambenchInputError(f"{name} must be >= 0, got {value}.")


def _check_modalities(modalities: Mapping, recipe: str, where: str) -> None:
    allowed = RECIPE_MODALITIES[recipe]
    key = f"{where}: 'modalities'"
    unknown = sorted(set(modalities) - set(allowed))
    if unknown:
        raise DambenchInputError(
            f"{key}: recipe {recipe} does not make {unknown}; it makes {sorted(allowed)}."
        )
    for name, settings in modalities.items():
        _expect(settings, dict, f"{key}.{name}", "an object")
        _check_keys(settings, allowed[name], (), f"{key}.{name}", "")
        for option, value in settings.items():
            if value not in allowed[name][option]:
                raise DambenchInputError(
                    f"{key}.{name}.{option} must be one of {list(allowed[name][option])} for "
                    f"recipe {recipe}, got {value!r}."
                )


def _check_inputs(inputs: Mapping, recipe: str, where: str) -> None:
    allowed = RECIPE_INPUTS[recipe]
    unused = sorted(set(inputs) - set(allowed))
    if unused:
        takes = f"it reads {list(allowed)}" if allowed else "it reads only the embedded sample"
        raise DambenchInputError(
            f"{where}: 'inputs' {unused} are not used by recipe {recipe} ({takes}); remove them."
        )
    for name, value in inputs.items():
        _expect(value, str, f"{where}: 'inputs.{name}'", "a path, URL or URL template")
    if recipe == "era5-fengwu" and "era5" not in inputs:
        raise DambenchInputError(f"{where}: recipe era5-fengwu needs 'inputs.era5' (--era5).")


def _check_declared_store(raw: Mapping[str, Any], where: str) -> None:
    """For an ``inputs.era5`` that is a known public store (:data:`ERA5_STORES`), check what it
    declares before anything is opened: its grid against the forecaster's ``model_grid_deg`` and
    its valid times against the splits' cycles and the forecaster's initial states."""
    store = ERA5_STORES.get(raw.get("inputs", {}).get("era5", ""))
    if store is None or raw["recipe"] != "era5-fengwu" or "dates" not in raw["splits"]:
        return
    background = raw["background"]
    model_grid = background.get("model_grid_deg")
    coarse = model_grid is not None and store.grid_deg > model_grid + 1e-6
    if coarse and not background.get("allow_coarse_forecaster_input", False):
        raise DambenchInputError(
            f"{where}: inputs.era5 is {store.description} ({store.grid_deg:g} deg) but the "
            f"forecaster runs on a {model_grid:g} deg grid (background.model_grid_deg); expected "
            f"an ERA5 store at {model_grid:g} deg or finer, e.g. ARCO-ERA5 ({ARCO_ERA5_URL}). "
            "Pass such a store (--era5), or set background.allow_coarse_forecaster_input to true "
            "to feed the interpolated field (recorded in the card)."
        )
    span = _needed_span(raw["splits"]["dates"], background)
    for name, (first, last) in span.items():
        early = first < pd.Timestamp(store.first)
        late = store.last is not None and last > pd.Timestamp(store.last)
        if early or late:
            raise DambenchInputError(
                f"{where}: split {name!r} needs ERA5 from {first} to {last} (its cycles and the "
                f"forecaster's initial states) but inputs.era5, {store.description}, holds "
                f"{store.first} to {store.last or 'present'}; choose split dates inside it or "
                f"another ERA5 store (e.g. ARCO-ERA5, {ARCO_ERA5_URL})."
            )


def _needed_span(dates: Mapping, background: Mapping) -> dict[str, tuple[pd.Timestamp, ...]]:
    """Split -> (first, last) ERA5 time its cycles need, initial states included."""
    back = pd.Timedelta(
        hours=background.get("lead_hours", 24) + background.get("step_hours", 6)
    )
    last_hour = pd.Timedelta(hours=max(schema.CYCLE_HOURS_UTC))
    return {
        name: (pd.Timestamp(a) - back, pd.Timestamp(b).normalize() + last_hour)
        for name, (a, b) in dates.items()
    }
