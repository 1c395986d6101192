"""OnnxForecaster on tiny ONNX models exported from torch with FengWu's contract.

The models work on a 10 degree grid (19 x 36) with 4 channels. Their output is a known function of
the two input states, so every rollout result below is derived independently in numpy.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from dambench import schema
from dambench.backgrounds import Background, OnnxForecaster, rollout
from dambench.exceptions import DambenchInputError, MissingDependencyError
from dambench.grid import CANONICAL_GRID, Grid
from dambench.regrid import regrid
from dambench.testing import smooth_field

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

CHANNELS = ("u10", "t2m", "z500", "t850")
C = len(CHANNELS)
GRID = Grid(10.0)
MEAN = np.array([0.5, 280.0, 55000.0, 270.0])
STD = np.array([5.0, 15.0, 2000.0, 12.0])
DRIFT = np.array([0.1, -0.2, 0.05, 0.3])
"""Per-channel constant (normalised units) that the drift model adds at every step."""
VALID = pd.Timestamp("2024-01-03T00")
REF = pd.Timestamp("2024-01-01T00")


class LinearStep(torch.nn.Module):
    """out[:C] = 2 * x_t - x_{t-6h} + drift (linear extrapolation plus a constant);
    out[C:] = x_{t-6h} + 100 (extra channels the contract says to ignore)."""

    def __init__(self, drift: np.ndarray):
        super().__init__()
        eye = torch.eye(C)
        weight = torch.cat([torch.cat([-eye, 2 * eye], 1), torch.cat([eye, 0 * eye], 1)], 0)
        self.conv = torch.nn.Conv2d(2 * C, 2 * C, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(weight[:, :, None, None])
            self.conv.bias.copy_(torch.cat([torch.tensor(drift), torch.full((C,), 100.0)]))

    def forward(self, x):  # (1, 2C, H, W) -> (1, 2C, H, W)
        return self.conv(x)


def _export(module: torch.nn.Module, path, n_in: int = 2 * C, shape=GRID.shape) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, n_in, *shape),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "drift": _export(LinearStep(DRIFT), folder / "drift.onnx"),
        "linear": _export(LinearStep(np.zeros(C)), folder / "linear.onnx"),
    }


BASE = smooth_field(1, CHANNELS, grid=GRID, seed=3).isel(time=0, drop=True).astype(np.float64)
SLOPE = (
    0.01
    * STD[:, None, None]
    * smooth_field(1, CHANNELS, grid=GRID, seed=4).isel(time=0, drop=True).astype(np.float64)
    / BASE.std(("latitude", "longitude"))
)


def linear_analysis(times) -> xr.DataArray:
    """Analysis linear in time: BASE + SLOPE * (hours since REF), on the 10 degree grid."""
    index = pd.DatetimeIndex(times)
    hours = xr.DataArray(((index - REF) / pd.Timedelta(hours=1)).to_numpy(), dims="time")
    field = (BASE + SLOPE * hours).transpose("time", "channel", "latitude", "longitude")
    return field.assign_coords(time=index.values).astype(np.float32)


class Recorder:
    """Wraps an analysis callable or a session and records what it is asked."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, times):
        self.calls.append(pd.DatetimeIndex(times))
        return self.inner(times)

    def get_inputs(self):
        return self.inner.get_inputs()

    def run(self, names, feed):
        self.calls.append(next(iter(feed.values())).copy())
        out = self.inner.run(names, feed)
        self.calls[-1] = (self.calls[-1], out[0].copy())
        return out


def assert_close_normalised(actual, expected, atol=1e-4):
    """Compare in normalised units, (x - mean) / std, where float32 rounding is about 1e-6."""
    mean, std = MEAN[:, None, None], STD[:, None, None]
    np.testing.assert_allclose(
        (np.asarray(actual) - mean) / std, (np.asarray(expected) - mean) / std, atol=atol
    )


def _forecaster(model, analysis=linear_analysis, **kwargs) -> OnnxForecaster:
    options = dict(
        mean=MEAN, std=STD, analysis=analysis, channels=CHANNELS, model_grid=GRID, grid=None
    )
    options.update(kwargs)
    return OnnxForecaster(model, **options)


def test_linear_model_reproduces_the_analysis_at_the_valid_time(models):
    # The analysis is linear in time, so linear extrapolation from (t-30 h, t-24 h) is exact at
    # every step: after 4 steps the background equals the analysis at t. Had the rollout run
    # 6 steps (the upstream lead // 6 + 2 bug) it would equal the analysis at t + 12 h instead.
    forecaster = _forecaster(models["linear"])
    assert isinstance(forecaster, Background)
    bg = forecaster.at(VALID)
    assert bg.dims == schema.CANONICAL_DIMS and bg.shape == (1, C, *GRID.shape)
    assert pd.Timestamp(bg.time.values[0]) == VALID
    assert pd.Timestamp(bg.init_time.values[0]) == VALID - pd.Timedelta("24h")
    truth = linear_analysis([VALID]).values
    late = linear_analysis([VALID + pd.Timedelta("12h")]).values
    assert_close_normalised(bg.values, truth)
    assert np.abs(bg.values - late).max() > 100 * np.abs(bg.values - truth).max()
    assert bg.attrs["lead_hours"] == 24.0 and bg.attrs["n_steps"] == 4
    assert bg.attrs["method"] == "onnx_forecast"


def test_drift_model_counts_four_steps_and_matches_numpy(models):
    # In normalised units z_{k+1} = 2 z_k - z_{k-1} + c. Writing z_k = (linear part) + e_k with
    # e_{-1} = e_0 = 0 gives e_{k+1} = 2 e_k - e_{k-1} + c, so e_k = c k (k + 1) / 2: 10 c after
    # 4 steps (21 c after 6). In physical units the background is analysis(t) + 10 c std.
    bg = _forecaster(models["drift"]).at([VALID, VALID + pd.Timedelta("6h")])
    truth = linear_analysis(bg.time.values).values
    expected = truth + 10 * (DRIFT * STD)[None, :, None, None]
    assert_close_normalised(bg.values, expected)

    # The same numbers from an independent numpy rollout of the model's formula.
    def numpy_step(pair):
        return 2 * pair[C:] - pair[:C] + DRIFT[:, None, None]

    states = linear_analysis([VALID - pd.Timedelta("30h"), VALID - pd.Timedelta("24h")]).values
    normalised = (states - MEAN[:, None, None]) / STD[:, None, None]
    final = rollout(numpy_step, normalised[0], normalised[1], 4)
    assert_close_normalised(bg.values[0], final * STD[:, None, None] + MEAN[:, None, None])


def test_which_states_feed_which_step(models):
    import onnxruntime

    session = Recorder(onnxruntime.InferenceSession(models["drift"]))
    analysis = Recorder(linear_analysis)
    forecaster = _forecaster(session, analysis=analysis)
    forecaster.at(VALID)
    assert len(analysis.calls) == 1
    assert analysis.calls[0].equals(
        pd.DatetimeIndex([VALID - pd.Timedelta("30h"), VALID - pd.Timedelta("24h")])
    )
    assert len(session.calls) == 4  # t-18 h, t-12 h, t-6 h, t
    states = forecaster.normalise(linear_analysis(analysis.calls[0]).values)
    first_input = session.calls[0][0][0]
    np.testing.assert_allclose(first_input[:C], states[0], rtol=1e-6)  # t-30 h first
    np.testing.assert_allclose(first_input[C:], states[1], rtol=1e-6)  # then t-24 h
    for (prev_in, prev_out), (this_in, _) in zip(session.calls, session.calls[1:], strict=False):
        np.testing.assert_array_equal(this_in[0, :C], prev_in[0, C:])  # last state moves back
        np.testing.assert_array_equal(this_in[0, C:], prev_out[0, :C])  # new state: first C only


def test_output_is_regridded_to_the_canonical_grid(models):
    native = _forecaster(models["drift"]).at(VALID)
    canonical = _forecaster(models["drift"], grid=CANONICAL_GRID).at(VALID)
    assert canonical.shape == (1, C, *CANONICAL_GRID.shape)
    xr.testing.assert_allclose(canonical, regrid(native, CANONICAL_GRID), rtol=1e-6)


class IdentitySession:
    """A session-like object (no onnxruntime) whose next state is the current state."""

    class _Input:
        name, shape = "x", [1, 2 * C, "lat", "lon"]

    def get_inputs(self):
        return [self._Input()]

    def run(self, names, feed):
        (x,) = feed.values()
        return [np.concatenate([x[:, C:], x[:, :C]], axis=1)]


def test_normalisation_round_trip():
    forecaster = _forecaster(IdentitySession())
    state = linear_analysis([VALID]).values[0]
    normalised = forecaster.normalise(state)
    np.testing.assert_allclose(
        normalised.mean(axis=(1, 2)), ((state.mean(axis=(1, 2)) - MEAN) / STD), rtol=1e-4, atol=1e-6
    )
    assert_close_normalised(forecaster.denormalise(normalised), state, atol=1e-6)
    # identity dynamics: the +24 h background is the analysis at t - 24 h, back in physical units
    bg = forecaster.at(VALID)
    assert_close_normalised(
        bg.values[0], linear_analysis([VALID - pd.Timedelta("24h")]).values[0], atol=1e-6
    )


def test_analysis_as_dataarray_on_another_grid_is_regridded():
    times = pd.date_range("2024-01-01", periods=3, freq="6h")
    analysis = smooth_field(1, CHANNELS, seed=5).isel(time=[0, 0, 0]).assign_coords(time=times)
    bg = _forecaster(IdentitySession(), analysis=analysis, lead_hours=6, grid=CANONICAL_GRID).at(
        times[-1]
    )
    expected = regrid(regrid(analysis.isel(time=[1]), GRID, method="bilinear"), CANONICAL_GRID)
    np.testing.assert_allclose(bg.values, expected.values, rtol=1e-5, atol=1e-6)
    assert bg.attrs["lead_hours"] == 6.0 and bg.attrs["n_steps"] == 1


def test_model_from_file_url(models):
    bg = _forecaster("file://" + models["linear"]).at(VALID)
    assert bg.attrs["model"].endswith("linear.onnx")


def test_errors_name_the_problem(models, tmp_path):
    with pytest.raises(DambenchInputError, match=r"mean has shape \(3,\); expected \(4,\)"):
        _forecaster(models["drift"], mean=MEAN[:3])
    with pytest.raises(DambenchInputError, match="std must be positive"):
        _forecaster(models["drift"], std=-STD)
    with pytest.raises(DambenchInputError, match="lead_hours=25 is not a multiple"):
        _forecaster(models["drift"], lead_hours=25)
    with pytest.raises(DambenchInputError, match=r"has shape \[1, 8, 19, 36\].*\(1, 6, H, W\)"):
        _forecaster(models["drift"], channels=CHANNELS[:3], mean=MEAN[:3], std=STD[:3])
    with pytest.raises(DambenchInputError, match=r"model_grid \(37, 72\)"):
        _forecaster(models["drift"], model_grid=Grid(5.0))
    few = linear_analysis(pd.date_range("2024-01-01T18", periods=2, freq="6h"))
    with pytest.raises(DambenchInputError, match=r"Missing analysis times \[2024-01-01 12:00\]"):
        _forecaster(models["drift"], analysis=few).at(pd.Timestamp("2024-01-02T18"))


def test_missing_onnxruntime_names_the_extra(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'dambench\[onnx\]'"):
        _forecaster(models["drift"])
