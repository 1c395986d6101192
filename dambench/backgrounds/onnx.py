"""Forecast backgrounds from an ONNX weather model with FengWu's contract.

The contract (FengWu as published as ONNX, and as Earth2Studio runs it):

- **input**: one tensor ``(1, 2C, H, W)`` float32: the states at ``t - 6 h`` and ``t``, each
  normalised per channel as ``(x - mean) / std``, concatenated along channels, earlier state first;
  its name is read from the session (``"input"`` for FengWu);
- **output**: the first ``C`` channels of the first output are the normalised state at ``t + 6 h``
  (FengWu returns more channels after them, which are ignored);
- C = 69 channels in the schema order (u10, v10, t2m, msl, then z, q, u, v, t at 13 levels),
  H x W = 721 x 1440 (0.25 degrees, latitude 90 -> -90, longitude 0 -> 359.75).

Time convention of the rollout: a background of lead ``L`` valid at ``t`` starts from the analyses
at ``t - L - step`` and ``t - L`` and runs ``L / step`` steps, producing the states at
``t - L + step, ..., t``. For L = 24 h and step = 6 h: analyses at ``t - 30 h`` and ``t - 24 h``,
4 steps (``t - 18 h, t - 12 h, t - 6 h, t``). The upstream DAMBench code ran ``L // 6 + 2 = 6``
steps, producing a background valid at ``t + 12 h``; here the step count follows from the lead,
and the result's ``time`` is the valid time ``t`` with ``init_time = t - L``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias

import numpy as np
import pandas as pd
import xarray as xr

from dambench import schema
from dambench.backgrounds.base import (
    INIT_TIME,
    Background,
    BackgroundBase,
    as_times,
    format_times,
)
from dambench.exceptions import (
    DambenchInputError,
    DambenchSchemaError,
    MissingDependencyError,
)
from dambench.grid import CANONICAL_GRID, Grid, to_canonical
from dambench.regrid import Method, on_grid, regrid
from dambench.sources.base import PathLike, local_copy

logger = logging.getLogger(__name__)

FENGWU_GRID = Grid(0.25)
"""FengWu's native grid: 0.25 degrees, 721 x 1440, poles included."""
FENGWU_STEP_HOURS = 6

AnalysisLike: TypeAlias = Callable[[pd.DatetimeIndex], xr.DataArray] | xr.DataArray | Background
"""A stacked DataArray with the needed times, an object with ``at(times)`` (a
:class:`~dambench.backgrounds.base.Background`, e.g. a ``ForecastArchive`` with ``lead_hours=0``),
or a callable ``times -> DataArray``."""


class InferenceSessionLike(Protocol):
    """What the forecaster uses of ``onnxruntime.InferenceSession``."""

    def get_inputs(self) -> list[Any]: ...

    def run(
        self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]
    ) -> list[Any]: ...


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(
            "OnnxForecaster needs onnxruntime; install it with pip install 'dambench[onnx]'."
        ) from err
    return onnxruntime


def rollout(
    step: Callable[[np.ndarray], np.ndarray],
    previous: np.ndarray,
    current: np.ndarray,
    n_steps: int,
) -> np.ndarray:
    """Run a two-state model autoregressively.

    Parameters
    ----------
    step
        Maps the concatenated pair ``(2C, H, W)`` (earlier state first) to the next state
        ``(C, H, W)``.
    previous, current
        The two initial states ``(C, H, W)``, one model step apart.
    n_steps
        Number of model steps; the result is valid ``n_steps`` steps after ``current``.

    Returns
    -------
    The state after ``n_steps`` steps, ``(C, H, W)``. Step ``k`` (1-based) is fed the states of
    steps ``k - 2`` and ``k - 1`` (step 0 being ``current`` and step -1 ``previous``).

    Memory: one ``(2C, H, W)`` pair buffer, updated in place (the earlier half takes the later,
    the later the step's output), and the step's output (see :func:`rollout_pair`); ``step``
    must not keep its argument.
    """
    return rollout_pair(step, np.concatenate([previous, current], axis=0), n_steps)


def rollout_pair(
    step: Callable[[np.ndarray], np.ndarray], pair: np.ndarray, n_steps: int
) -> np.ndarray:
    """:func:`rollout` from the concatenated pair ``(2C, H, W)`` (earlier state first), which is
    updated in place and is the only state buffer held; returns its later half after
    ``n_steps`` steps (a view of ``pair``)."""
    c = pair.shape[0] // 2
    for _ in range(n_steps):
        following = step(pair)
        if np.shares_memory(following, pair):
            following = following.copy()
        pair[:c] = pair[c:]
        pair[c:] = following
        del following
    return pair[c:]


class OnnxForecaster(BackgroundBase):
    """Forecast backgrounds rolled out by an ONNX model with FengWu's two-state contract.

    Parameters
    ----------
    model
        Path or fsspec URL of the ``.onnx`` file (a URL is downloaded once and cached), or an
        already-built ``onnxruntime.InferenceSession`` (anything with ``get_inputs`` and ``run``).
    mean, std
        Per-channel normalisation statistics of the model, shape ``(C,)``, in the channels' physical
        units and in ``channels`` order; ``std`` must be positive.
    analysis
        Provider of the initial states: a stacked DataArray ``(time, channel, latitude,
        longitude)`` holding the needed times, an object with ``at(times)``, or a callable
        ``times -> DataArray`` (called with a ``pd.DatetimeIndex``). Its fields must hold every
        model channel in physical units; they are put in canonical orientation and, when
        ``model_grid`` is given and differs, regridded to it with ``input_regrid``.
    channels
        The model's channel order (default: the 69 schema channels, FengWu's order).
    model_grid
        The grid the model runs on (FengWu: :data:`FENGWU_GRID`, 0.25 degrees); ``None`` feeds the
        analysis fields on their own grid.
    lead_hours, step_hours
        Background lead and model time step, hours; ``lead_hours`` must be a positive multiple of
        ``step_hours``.
    grid
        Output grid (default: canonical 1.5 degrees, conservative regridding); ``None`` keeps the
        model grid.
    providers
        onnxruntime execution providers (default: CUDA when available, then CPU).
    input_regrid
        Regridding method for analysis -> model grid (default ``"bilinear"``).

    Raises
    ------
    DambenchInputError
        Mismatched ``mean``/``std`` lengths, a lead that is not a multiple of the step, a model
        input whose shape is not ``(1, 2C, H, W)``, analysis times that are missing (named).
    MissingDependencyError
        onnxruntime is not installed (``pip install 'dambench[onnx]'``).

    Notes
    -----
    The model is run once per step with batch size 1 (FengWu's exported batch), one valid time
    after another, so memory holds two states and one output at a time.
    """

    method = "onnx_forecast"

    def __init__(
        self,
        model: PathLike | InferenceSessionLike,
        *,
        mean: Sequence[float] | np.ndarray,
        std: Sequence[float] | np.ndarray,
        analysis: AnalysisLike,
        channels: Sequence[str] = schema.CHANNELS,
        model_grid: Grid | None = None,
        lead_hours: int = 24,
        step_hours: int = FENGWU_STEP_HOURS,
        grid: Grid | None = CANONICAL_GRID,
        providers: Sequence[str] | None = None,
        input_regrid: Method = "bilinear",
    ):
        self.channels = _model_channels(channels)
        self.mean, self.std = _normalisation(mean, std, len(self.channels))
        self.n_steps = _n_steps(lead_hours, step_hours)
        self.lead_hours, self.step_hours = lead_hours, step_hours
        self.model_grid, self.grid, self.input_regrid = model_grid, grid, input_regrid
        self._analysis = _analysis_fetcher(analysis)
        self._analysis_name = _describe_analysis(analysis)
        is_session = hasattr(model, "run") and hasattr(model, "get_inputs")
        self.model_name = type(model).__name__ if is_session else str(model)
        self.session = _session(model, providers)
        self.input_name, self.spatial_shape = _check_input_spec(
            self.session, len(self.channels), model_grid
        )

    # --- public helpers -----------------------------------------------------------------------

    def initial_times(self, valid: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The two analysis times a background valid at ``valid`` starts from:
        ``(valid - lead - step, valid - lead)``."""
        init = pd.Timestamp(valid) - pd.Timedelta(hours=self.lead_hours)
        return init - pd.Timedelta(hours=self.step_hours), init

    def normalise(self, state: np.ndarray) -> np.ndarray:
        """``(state - mean) / std`` per channel for arrays ``(..., C, H, W)``, float32.

        Computed in float64 one channel at a time (a float64 temporary of one channel, not of
        the whole state) and rounded to float32.
        """
        return _per_channel(state, lambda x, i: (x - self.mean[i]) / self.std[i])

    def denormalise(self, state: np.ndarray) -> np.ndarray:
        """``state * std + mean`` per channel, the inverse of :meth:`normalise`, float32 (float64
        one channel at a time, as :meth:`normalise`)."""
        return _per_channel(state, lambda x, i: x * self.std[i] + self.mean[i])

    def step(self, pair: np.ndarray) -> np.ndarray:
        """One model step: normalised pair ``(2C, H, W)`` -> normalised next state ``(C, H, W)``."""
        c = len(self.channels)
        if pair.shape[0] != 2 * c:
            raise DambenchInputError(f"A model step needs {2 * c} channels, got {pair.shape}.")
        feed = np.ascontiguousarray(pair[None], dtype=np.float32)  # no copy when it is already
        out = np.asarray(self.session.run(None, {self.input_name: feed})[0])
        contract = out.ndim == 4 and out.shape[0] == 1 and out.shape[1] >= c
        if not contract or out.shape[2:] != pair.shape[1:]:
            raise DambenchInputError(
                f"Model output shape {out.shape} does not follow the contract "
                f"(1, >= {c}, {pair.shape[1]}, {pair.shape[2]})."
            )
        return out[0, :c].copy() if out.shape[1] > c else out[0]  # frees the extra channels

    # --- Background implementation ------------------------------------------------------------

    def _at(self, valid: pd.DatetimeIndex) -> xr.DataArray:
        fields = [self._one(t) for t in valid]
        field = xr.concat(fields, dim=schema.TIME)
        init = valid - pd.Timedelta(hours=self.lead_hours)
        return field.assign_coords({INIT_TIME: (schema.TIME, init.values)})

    def _one(self, valid: pd.Timestamp) -> xr.DataArray:
        """The background valid at ``valid`` ``(1, C, ...)``, already on the output grid.

        Each step's input is released before the next step is taken, and the model-grid state is
        regridded to ``grid`` here, so a block of cycles holds one model-grid state at a time.
        """
        states = self._initial_states(valid)
        pair = self.normalise(states.values).reshape(-1, *states.shape[2:])  # earlier first
        later = states.isel({schema.TIME: slice(1, 2)}).drop_vars(schema.TIME)  # a view
        dims, coords, name, attrs = later.dims, dict(later.coords), later.name, dict(later.attrs)
        del states, later
        final = rollout_pair(self.step, pair, self.n_steps)
        del pair
        logger.debug("rolled out %d steps to %s", self.n_steps, valid)
        data = self.denormalise(final)[None]
        del final
        out = xr.DataArray(data, coords=coords, dims=dims, name=name, attrs=attrs)
        if self.grid is not None and not on_grid(out, self.grid):
            out = regrid(out, self.grid)
        return out

    def _attrs(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "source": f"analysis: {self._analysis_name}",
            "model": self.model_name,
            "step_hours": float(self.step_hours),
            "n_steps": self.n_steps,
            "initial_states": (
                f"analyses at valid - {self.lead_hours + self.step_hours} h and "
                f"valid - {self.lead_hours} h"
            ),
        }

    def _initial_states(self, valid: pd.Timestamp) -> xr.DataArray:
        """Analyses ``(2, C, H, W)`` at the two initial times, model channels, model grid."""
        times = pd.DatetimeIndex(self.initial_times(valid))
        try:
            da = self._analysis(times)
        except (KeyError, IndexError) as err:
            raise DambenchInputError(
                f"The analysis could not provide {format_times(times)} (initial states of the "
                f"background valid at {valid}): {err}"
            ) from err
        da = _select(to_canonical(da), times, self.channels, valid)
        if self.model_grid is not None and not on_grid(da, self.model_grid):
            da = regrid(da, self.model_grid, method=self.input_regrid)
        da = da.transpose(schema.TIME, schema.CHANNEL, *schema.SPATIAL_DIMS).load()
        if self.spatial_shape is not None and da.shape[2:] != self.spatial_shape:
            raise DambenchInputError(
                f"Analysis fields are {da.shape[2:]} (latitude, longitude) but the model takes "
                f"{self.spatial_shape}; pass model_grid= to regrid them."
            )
        values = da.values
        bad = [c for i, c in enumerate(self.channels) if not np.isfinite(values[:, i]).all()]
        if bad:
            raise DambenchInputError(f"Analysis at {format_times(times)} has NaN/inf in {bad}.")
        return da


# --- construction helpers ---------------------------------------------------------------------


def _model_channels(channels: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(c) for c in channels)
    unknown = [c for c in names if c not in schema.CHANNEL_INDEX]
    if unknown or len(set(names)) != len(names) or not names:
        raise DambenchSchemaError(
            f"Model channels must be unique schema names (e.g. 'z500'); got {list(names)} "
            f"(unknown: {unknown})."
        )
    return names


def _normalisation(mean, std, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, values in (("mean", mean), ("std", std)):
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (n_channels,):
            raise DambenchInputError(
                f"{name} has shape {arr.shape}; expected ({n_channels},), one value per model "
                "channel in the model's channel order."
            )
        if not np.isfinite(arr).all():
            raise DambenchInputError(f"{name} contains NaN or inf.")
        out.append(arr)
    if (out[1] <= 0).any():
        raise DambenchInputError(f"std must be positive; got {out[1].min():.3g} at minimum.")
    return out[0], out[1]


def _n_steps(lead_hours: int, step_hours: int) -> int:
    if step_hours <= 0 or lead_hours <= 0:
        raise DambenchInputError(
            f"lead_hours={lead_hours} and step_hours={step_hours} must both be positive."
        )
    n, rest = divmod(lead_hours, step_hours)
    if rest:
        raise DambenchInputError(
            f"lead_hours={lead_hours} is not a multiple of the model step step_hours="
            f"{step_hours}; the rollout can only reach multiples of the step."
        )
    return int(n)


def _session(
    model: PathLike | InferenceSessionLike, providers: Sequence[str] | None
) -> InferenceSessionLike:
    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        return model
    path = local_copy(model)
    ort = _import_onnxruntime()
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), _session_options(ort), providers=list(providers))


def _session_options(ort):
    """Options that return each run's CPU memory when the run ends: no CPU arena (which keeps
    every allocation for reuse: about 4 GB after two FengWu-size steps) and no memory pattern
    (which pre-allocates all intermediates of a run at once). GPU memory is unaffected."""
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return options


def _per_channel(state: np.ndarray, func: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """``func(state[..., i, :, :], i)`` for each channel ``i`` (axis -3), float32, one channel at
    a time."""
    out = np.empty(state.shape, dtype=np.float32)
    for i in range(state.shape[-3]):
        out[..., i, :, :] = func(np.asarray(state[..., i, :, :], dtype=np.float64), i)
    return out


def _check_input_spec(
    session: InferenceSessionLike, n_channels: int, model_grid: Grid | None
) -> tuple[str, tuple[int, int] | None]:
    """The input name and, where the model fixes it, its (H, W); raises on a contract mismatch."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise DambenchInputError(
            f"The model has {len(inputs)} inputs {[i.name for i in inputs]}; the FengWu contract "
            "has one, (1, 2C, H, W)."
        )
    shape = list(inputs[0].shape)
    expected: list[int | None] = [1, 2 * n_channels, None, None]
    if model_grid is not None:
        expected[2:] = model_grid.shape
    fixed = [d if isinstance(d, (int, np.integer)) else None for d in shape]
    mismatch = len(shape) != 4 or any(
        f is not None and e is not None and f != e for f, e in zip(fixed, expected, strict=True)
    )
    if mismatch:
        grid_text = f"model_grid {model_grid.shape}" if model_grid else "the analysis grid"
        raise DambenchInputError(
            f"Model input {inputs[0].name!r} has shape {shape}; expected (1, 2C, H, W) = "
            f"(1, {2 * n_channels}, H, W): two states of C={n_channels} channels on {grid_text}."
        )
    spatial = tuple(fixed[2:]) if None not in fixed[2:] else None
    return inputs[0].name, spatial  # type: ignore[return-value]


def _analysis_fetcher(analysis: AnalysisLike) -> Callable[[pd.DatetimeIndex], xr.DataArray]:
    if isinstance(analysis, xr.DataArray):
        return lambda times: _select_times(analysis, times)
    if hasattr(analysis, "at"):
        return analysis.at
    if callable(analysis):
        return analysis
    raise DambenchInputError(
        "analysis must be a stacked DataArray, an object with .at(times), or a callable "
        f"times -> DataArray; got {type(analysis).__name__}."
    )


def _describe_analysis(analysis: AnalysisLike) -> str:
    if isinstance(analysis, xr.DataArray):
        return str(analysis.attrs.get("source", analysis.name or "DataArray"))
    source = getattr(analysis, "source", None)
    if isinstance(source, str):
        return source
    return getattr(analysis, "__name__", type(analysis).__name__)


def _select_times(field: xr.DataArray, times: pd.DatetimeIndex) -> xr.DataArray:
    field = to_canonical(field)
    return _select(field, times, None, None)


def _select(
    field: xr.DataArray,
    times: pd.DatetimeIndex,
    channels: Sequence[str] | None,
    valid: pd.Timestamp | None,
) -> xr.DataArray:
    """``field`` at exactly ``times`` (and ``channels``, in that order), naming what is missing.

    A field already holding exactly these times (channels), in order, is returned without a copy.
    """
    for dim in schema.CANONICAL_DIMS:
        if dim not in field.dims:
            raise DambenchSchemaError(
                f"Analysis fields need dims {schema.CANONICAL_DIMS}; got {tuple(field.dims)}."
            )
    have = pd.DatetimeIndex(field[schema.TIME].values)
    pos = have.get_indexer(as_times(times))
    if (pos < 0).any():
        purpose = f" (initial states of the background valid at {valid})" if valid else ""
        raise DambenchInputError(
            f"Missing analysis times {format_times(times[pos < 0])}{purpose}; the analysis "
            f"covers {format_times(have)}."
        )
    if not np.array_equal(pos, np.arange(len(have))):
        field = field.isel({schema.TIME: pos})
    if channels is None:
        return field
    present = [str(c) for c in field[schema.CHANNEL].values]
    missing = [c for c in channels if c not in present]
    if missing:
        raise DambenchSchemaError(
            f"The analysis lacks model channels {missing}; it holds {present}."
        )
    return field if present == list(channels) else field.sel({schema.CHANNEL: list(channels)})
