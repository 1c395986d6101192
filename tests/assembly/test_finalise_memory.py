"""The finishing steps of a build hold one cycle (Parquet) or at most a shard's cycles
(statistics, preview), so a build's peak memory is flat in the number of cycles."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from dambench.assembly import writers
from dambench.assembly.builder import read_step
from dambench.assembly.config import load_config
from dambench.grid import CANONICAL_GRID

C = 8
TIMES = pd.date_range("2023-01-01", periods=12, freq="D").values


def _cycle(i: int) -> dict[str, np.ndarray]:
    shape = (1, C, *CANONICAL_GRID.shape)
    rows = {name: np.full(shape, i + k, np.float32) for k, name in enumerate(writers.STATE_FIELDS)}
    rows["olr"] = np.full((1, *CANONICAL_GRID.shape), 200.0 + i, np.float32)
    return rows


def test_rows_are_written_one_cycle_at_a_time(tmp_path):
    features = writers.hf_features(C, ["olr"])
    one_cycle = sum(a.nbytes for a in _cycle(0).values())
    tracemalloc.start()
    try:
        writers.write_parquet_rows(tmp_path / "x.parquet", TIMES, map(_cycle, range(12)), features)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the old _write_parquet read every cycle of the file before writing (12 cycles here)
    assert peak < 3 * one_cycle, (peak, one_cycle)


def test_rows_and_arrays_write_the_same_bytes(tmp_path):
    features = writers.hf_features(C, ["olr"])
    cycles = [_cycle(i) for i in range(len(TIMES))]
    arrays = {name: np.concatenate([c[name] for c in cycles]) for name in cycles[0]}
    writers.write_parquet(tmp_path / "a.parquet", TIMES, arrays, features)
    writers.write_parquet_rows(tmp_path / "b.parquet", TIMES, iter(cycles), features)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_rows_must_match_the_times(tmp_path):
    features = writers.hf_features(C, ["olr"])
    with pytest.raises(ValueError):
        writers.write_parquet_rows(tmp_path / "c.parquet", TIMES, map(_cycle, range(3)), features)


def test_preview_holds_one_cycles_temporaries_whatever_the_block():
    """Regression: preview_table computed its float64 temporaries over the whole block (4
    cycles in the rehearsal), the peak of the whole 69-channel build (1,131-1,189 MB against
    790-831 MB for the shards); it now works one cycle at a time (11.1 -> 2.8 cycles' worth here)."""
    rng = np.random.default_rng(0)
    n = 4
    arrays = {
        name: rng.standard_normal((n, C, *CANONICAL_GRID.shape)).astype(np.float32)
        for name in writers.STATE_FIELDS
    }
    arrays["observation"][:, :, ::2] = np.nan
    one_cycle = sum(a[:1].nbytes for a in arrays.values())
    channels = ["u10", "v10", "t2m", "msl", "z500", "t850", "q700", "u250"][:C]
    tracemalloc.start()
    try:
        table = writers.preview_table(TIMES[:n], channels, arrays)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert table.num_rows == n * C
    assert peak < 4 * one_cycle, (peak / one_cycle)


def test_preview_rows_match_brute_force_numpy():
    """Golden values: cos-latitude weighted mean/std/RMSE and the observed points' RMSE."""
    rng = np.random.default_rng(3)
    arrays = {
        name: (280 + 10 * rng.standard_normal((2, 2, *CANONICAL_GRID.shape))).astype(np.float32)
        for name in writers.STATE_FIELDS
    }
    arrays["observation"][rng.random(arrays["observation"].shape) > 0.05] = np.nan
    table = writers.preview_table(TIMES[:2], ["u10", "t2m"], arrays).to_pydict()
    w = np.cos(np.deg2rad(CANONICAL_GRID.latitude)).clip(0)[:, None] * np.ones((1, 240))
    w = w / w.sum()
    row = 0
    for i in range(2):
        for c in range(2):
            t = arrays["target"][i, c].astype(np.float64)
            mean = (t * w).sum()
            assert table["target_mean"][row] == pytest.approx(mean, rel=1e-12)
            assert table["target_std"][row] == pytest.approx(
                np.sqrt(((t - mean) ** 2 * w).sum()), rel=1e-9
            )
            b = arrays["background"][i, c].astype(np.float64)
            assert table["background_rmse"][row] == pytest.approx(
                np.sqrt(((b - t) ** 2 * w).sum()), rel=1e-9
            )
            o = arrays["observation"][i, c].astype(np.float64)
            seen = np.isfinite(o)
            assert table["observed_fraction"][row] == pytest.approx(seen.mean())
            assert table["observation_rmse"][row] == pytest.approx(
                np.sqrt(((o - t)[seen] ** 2).mean()), rel=1e-9
            )
            row += 1


@pytest.mark.parametrize(("per_shard", "step"), [(4, 4), (1, 1), (32, 16)])
def test_statistics_and_preview_read_at_most_a_shard(per_shard, step):
    assert read_step(load_config("era5-fengwu", cycles_per_shard=per_shard)) == step
