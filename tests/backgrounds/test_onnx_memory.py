"""OnnxForecaster memory: flat in the number of valid times, float64 only one channel at a time,
and an onnxruntime session that returns its CPU memory after each run."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import schema
from dambench.backgrounds import OnnxForecaster
from dambench.channels import channel_coords
from dambench.grid import CANONICAL_GRID, Grid

CHANNELS = ("u10", "t2m", "z500", "t850")
C = len(CHANNELS)
MODEL_GRID = Grid(0.5)
MEAN = np.array([0.5, 280.0, 55000.0, 270.0])
STD = np.array([5.0, 15.0, 2000.0, 12.0])


class SwapSession:
    """A numpy stand-in of an ONNX session: the next state is the earlier one (a fresh array)."""

    class _Input:
        name, shape = "input", [1, 2 * C, "lat", "lon"]

    def get_inputs(self):
        return [self._Input()]

    def run(self, names, feed):
        (x,) = feed.values()
        return [np.concatenate([x[:, :C], x[:, C:]], axis=1)]


def analysis(times) -> xr.DataArray:
    """Fields on the model grid, a fresh float32 array per call."""
    index = pd.DatetimeIndex(times)
    shape = (len(index), C, *MODEL_GRID.shape)
    data = np.broadcast_to(MEAN[None, :, None, None], shape).astype(np.float32)
    coords = {schema.TIME: index.values, **MODEL_GRID.coords(), **channel_coords(CHANNELS)}
    return xr.DataArray(data, dims=schema.CANONICAL_DIMS, coords=coords)


def _forecaster(session=None) -> OnnxForecaster:
    return OnnxForecaster(
        session or SwapSession(),
        mean=MEAN,
        std=STD,
        analysis=analysis,
        channels=CHANNELS,
        model_grid=MODEL_GRID,
        grid=CANONICAL_GRID,
    )


def _peak_bytes(func) -> int:
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_flat_in_the_number_of_valid_times():
    forecaster = _forecaster()
    times = pd.date_range("2024-01-10", periods=8, freq="D")
    forecaster.at(times[:1])  # regridders and caches built before measuring
    two = _peak_bytes(lambda: forecaster.at(times[:2]))
    eight = _peak_bytes(lambda: forecaster.at(times))
    state = C * np.prod(MODEL_GRID.shape) * 4
    # the old code kept every model-grid background of the call, then concatenated them
    assert eight < two + 2 * state, (two, eight, state)


def test_normalise_holds_one_channel_in_float64():
    forecaster = _forecaster()
    state = analysis(pd.date_range("2024-01-10", periods=2, freq="6h")).values
    for func in (forecaster.normalise, forecaster.denormalise):
        peak = _peak_bytes(lambda func=func: func(state))
        one_channel_f64 = state.nbytes // C * 2
        # the old code made two float64 copies of the whole state (4x its bytes)
        assert peak < state.nbytes + 3 * one_channel_f64, (func.__name__, peak, state.nbytes)
    expected = ((state - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)
    np.testing.assert_array_equal(forecaster.normalise(state), expected)
    back = (expected * STD[:, None, None] + MEAN[:, None, None]).astype(np.float32)
    np.testing.assert_array_equal(forecaster.denormalise(expected), back)


def test_onnx_session_returns_its_cpu_memory(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "identity.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.nn.Identity(),
            (torch.zeros(1, 2 * C, *MODEL_GRID.shape),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    options = _forecaster(str(path)).session.get_session_options()
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
