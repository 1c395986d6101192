"""The inputs of an era5-fengwu production rehearsal, as stand-ins: never data, never skill.

:func:`write_rehearsal_inputs` writes, under one folder to serve over HTTP, the stand-ins of
every remote input of the shipped ``era5-fengwu`` config for a run of daily cycles;
:func:`build_overrides` gives the ``build(..., overrides=...)`` that points the shipped config
at them (the same inputs ``--era5``, ``--cpc``, ``--olr`` and ``--fengwu`` replace on the
command line) and at the run's cycles. The folder layout::

    arco/<grid>deg-<n>cycles/full_37-1h-0p25deg-chunk-1.zarr-v3   ARCO-ERA5 stand-in
    cpc/precip.{year}.nc                                         CPC PSL yearly files
    olr/olr.day.mean.nc                                          NOAA daily OLR
    fengwu/<grid>deg/{fengwu_v1.onnx,global_means.npy,global_stds.npy}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dambench.exceptions import DambenchInputError
from dambench.standins import arco, cpc, fengwu, olr

FIRST_CYCLE = "2022-12-15"
"""First cycle of a rehearsal: 32 cycles cross a year end (two CPC yearly files) and the train /
validation boundary of the shipped splits' years."""


@dataclass(frozen=True)
class RehearsalInputs:
    """Paths of a rehearsal's inputs relative to the served folder, its cycles and the FengWu
    stand-in's grid."""

    cycles: pd.DatetimeIndex
    era5: str
    cpc: str
    olr: str
    model: str
    grid_deg: float

    def urls(self, base: str) -> dict[str, str]:
        """The inputs as URLs (or paths) under ``base``."""
        base = base.rstrip("/")
        return {key: f"{base}/{getattr(self, key)}" for key in ("era5", "cpc", "olr", "model")}


def rehearsal_cycles(n_cycles: int, first: str = FIRST_CYCLE) -> pd.DatetimeIndex:
    """``n_cycles`` daily cycles at 00 UTC from ``first``."""
    if n_cycles < 3:
        raise DambenchInputError(
            f"A rehearsal needs at least 3 cycles (one per split), got {n_cycles}."
        )
    return pd.date_range(first, periods=n_cycles, freq="D")


def rehearsal_splits(cycles: pd.DatetimeIndex) -> dict:
    """``splits`` of the config: the first half train, then a quarter validation, the rest
    test (each at least one day)."""
    n = len(cycles)
    n_train = max(1, n // 2)
    n_validation = max(1, (n - n_train) // 2)
    bounds = {
        "train": (0, n_train),
        "validation": (n_train, n_train + n_validation),
        "test": (n_train + n_validation, n),
    }
    days = [str(t.date()) for t in cycles]
    return {"dates": {k: [days[a], days[b - 1]] for k, (a, b) in bounds.items()}}


def write_rehearsal_inputs(
    root: str | Path,
    cycles: pd.DatetimeIndex,
    *,
    grid_deg: float = 0.25,
    model_grid_deg: float | None = None,
    full_records: bool = True,
    store_name: str = arco.ARCO_STORE_NAME,
) -> RehearsalInputs:
    """Write (or reuse) the stand-ins of every input the cycles read, under ``root``.

    Parameters
    ----------
    cycles
        The daily cycles to build (:func:`rehearsal_cycles`).
    grid_deg
        Grid of the ARCO-ERA5 stand-in (0.25 as the real store).
    model_grid_deg
        Grid of the FengWu stand-in (default ``grid_deg``; FengWu's is 0.25).
    full_records
        True: CPC files with every day of their years and the OLR record from 1974-06-01, as the
        real files; False: only the days the cycles read (small tests).
    store_name
        Folder name of the ARCO-ERA5 stand-in (default the real store's).
    """
    root = Path(root)
    cycles = pd.DatetimeIndex(cycles)
    days = cycles.normalize() - pd.Timedelta(days=1)  # modalities of the day before each cycle
    tag = f"{grid_deg:g}deg"
    era5 = f"arco/{tag}-{len(cycles)}cycles-from-{cycles[0].date()}/{store_name}"
    arco.write_arco_standin(root / era5, arco.fengwu_times(cycles), grid_deg=grid_deg)
    years = sorted(set(days.year))
    cpc.write_cpc_standin(root / "cpc", years, days=None if full_records else days)
    olr_first = olr.FIRST_DAY if full_records else days[0]
    olr.write_olr_standin(root / "olr", days[-1], first_day=olr_first)
    model_grid_deg = grid_deg if model_grid_deg is None else model_grid_deg
    model = fengwu.write_fengwu_standin(
        root / "fengwu" / f"{model_grid_deg:g}deg", grid_deg=model_grid_deg
    )
    return RehearsalInputs(
        cycles=cycles,
        era5=era5,
        cpc=f"cpc/{cpc.CPC_FILE}",
        olr=f"olr/{olr.OLR_FILE}",
        model=model.relative_to(root).as_posix(),
        grid_deg=model_grid_deg,
    )


def build_overrides(
    config: dict,
    inputs: RehearsalInputs,
    base: str,
    *,
    model_grid_deg: float | None = None,
    allow_coarse: bool = False,
) -> dict:
    """``overrides`` for :func:`dambench.assembly.build` of ``config`` (the shipped era5-fengwu
    as a dict) on the stand-ins served at ``base``: its inputs, FengWu files and splits.

    ``model_grid_deg`` (default: the stand-in model's grid) and ``allow_coarse`` (sets
    ``background.allow_coarse_forecaster_input``) are for runs feeding the forecaster a coarser
    analysis than its grid.
    """
    urls = inputs.urls(base)
    model = urls["model"]
    background = {
        **config["background"],
        "model": model,
        "mean": model.rsplit("/", 1)[0] + "/" + fengwu.MEAN_FILE,
        "std": model.rsplit("/", 1)[0] + "/" + fengwu.STD_FILE,
        "model_grid_deg": model_grid_deg if model_grid_deg is not None else inputs.grid_deg,
    }
    if allow_coarse:
        background["allow_coarse_forecaster_input"] = True
    return {
        "inputs": {
            **config["inputs"],
            "era5": urls["era5"],
            "cpc": urls["cpc"],
            "olr": urls["olr"],
        },
        "background": background,
        "splits": rehearsal_splits(inputs.cycles),
    }
