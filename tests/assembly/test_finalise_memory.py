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


@pytest.mark.parametrize(("per_shard", "step"), [(4, 4), (1, 1), (32, 16)])
def test_statistics_and_preview_read_at_most_a_shard(per_shard, step):
    assert read_step(load_config("era5-fengwu", cycles_per_shard=per_shard)) == step
