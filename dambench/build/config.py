"""Build configurations: data (JSON) loaded strictly into a frozen :class:`BuildConfig`.

The package ships ``era5-sample`` (the embedded default) and ``era5-fengwu`` (the production
recipe) in ``dambench/build/configs/``; users pass the path of their own JSON file instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dambench import schema
from dambench.channels import check_channel_names
from dambench.exceptions import DambenchInputError

RECIPES = ("era5-sample", "era5-fengwu")
_KEYS = {
    "name",
    "title",
    "recipe",
    "channels",
    "splits",
    "background",
    "observation",
    "modalities",
    "inputs",
    "cycles_per_shard",
    "cycles_per_parquet_file",
    "license",
    "sources",
}
_REQUIRED = {"name", "recipe", "channels", "splits", "background", "observation"}


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """What to build; see the shipped JSON files for examples.

    Attributes
    ----------
    channels
        Schema channels (``"all"`` for the 69) in schema order.
    splits
        ``{"dates": {split: [first_day, last_day]}}`` or ``{"last_days": {"test": n, ...}}``
        (the last days of the data; the rest is train).
    cycles_per_shard
        Cycles per Zarr shard (one chunk per cycle inside); also the unit of resumable work.
    cycles_per_parquet_file
        Rows per Parquet file (one row group per cycle).
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
        if self.recipe not in RECIPES:
            raise DambenchInputError(f"Unknown recipe {self.recipe!r}; choose from {RECIPES}.")
        check_channel_names(self.channels)
        if set(self.splits) - {"dates", "last_days"} or len(self.splits) != 1:
            raise DambenchInputError(
                f"splits must hold exactly one of 'dates' or 'last_days', got {list(self.splits)}."
            )
        for key in ("cycles_per_shard", "cycles_per_parquet_file"):
            if int(getattr(self, key)) < 1:
                raise DambenchInputError(f"{key} must be >= 1.")
        unknown = set(self.modalities) - {"precip", "olr"}
        if unknown:
            raise DambenchInputError(f"Unknown modalities {sorted(unknown)}; use precip, olr.")

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
    folder = resources.files("dambench.build") / "configs"
    return sorted(
        p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")
    )


def load_config(name_or_path: str | Path, **overrides: Any) -> BuildConfig:
    """Load a shipped config by name or a JSON file by path; ``overrides`` replace top-level keys
    (``None`` values are ignored)."""
    text = str(name_or_path)
    if text in available_configs():
        raw = json.loads(
            (resources.files("dambench.build") / "configs" / f"{text}.json").read_text()
        )
    elif Path(text).is_file():
        try:
            raw = json.loads(Path(text).read_text())
        except json.JSONDecodeError as err:
            raise DambenchInputError(f"Config {text} is not valid JSON: {err}.") from err
    else:
        raise DambenchInputError(
            f"No config {text!r}: neither a shipped config ({available_configs()}) nor a JSON file."
        )
    raw.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(raw) - _KEYS
    if unknown:
        raise DambenchInputError(f"Config {text}: unknown keys {sorted(unknown)}.")
    missing = _REQUIRED - set(raw)
    if missing:
        raise DambenchInputError(f"Config {text}: missing keys {sorted(missing)}.")
    channels = raw["channels"]
    raw["channels"] = tuple(schema.CHANNELS if channels == "all" else channels)
    return BuildConfig(**raw)
