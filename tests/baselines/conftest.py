"""Shared helpers of the baseline tests: one torch thread, random DA batches and modalities,
synthetic train splits, shipped configs and a few optimiser steps.

A module opts into one thread with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the
fixtures ``make_batch``, ``with_modalities``, ``stream_batch``, ``train_split``,
``config_model`` and ``overfit`` hand out the functions below (test modules cannot import a
``conftest``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from baselines.config import RunConfig, load_run_config
from baselines.interface import DABatch
from baselines.layers.covariance import equiangular_grid
from baselines.registry import create_model
from dambench import schema

SMALL_GRID = (25, 48)
CONFIGS = Path(__file__).resolve().parents[2] / "baselines" / "configs"


def random_batch(
    channels: int = 4,
    grid: tuple[int, int] = SMALL_GRID,
    batch: int = 1,
    *,
    seed: int = 0,
    ratio: float = 0.05,
    smooth: bool = False,
) -> DABatch:
    """A random DA task (B, C, H, W) in normalised units, drawn from ``seed``.

    Truth ``x* ~ N(0, 1)`` (with ``smooth``, averaged with its longitude neighbours so the task
    has spatial structure), background ``x* + N(0, 0.5**2)``, a fraction ``ratio`` of the
    points observed as ``x* + N(0, 0.1**2)`` (0 elsewhere).
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *grid)
    target = torch.randn(shape, generator=gen)
    if smooth:
        target = (target + target.roll(1, -1) + target.roll(-1, -1)) / math.sqrt(3.0)
    background = target + 0.5 * torch.randn(shape, generator=gen)
    mask = (torch.rand(shape, generator=gen) < ratio).float()
    observation = (target + 0.1 * torch.randn(shape, generator=gen)) * mask
    return DABatch(background, observation, mask, target=target)


def _attach(batch: DABatch, values: torch.Tensor, present: torch.Tensor) -> DABatch:
    """``batch`` with modalities ``values`` (B, M, H, W), 0 where ``present`` (B, M) is 0 (as
    the loader sends an absent modality)."""
    modalities = values * present[:, :, None, None]
    return DABatch(**{**batch.__dict__, "modalities": modalities, "modality_present": present})


def add_modalities(batch: DABatch, present: Sequence[Sequence[float]], *, seed: int = 1) -> DABatch:
    """``batch`` with M independent N(0, 1) modality fields drawn from ``seed`` and their
    presence ``present`` (B, M)."""
    gen = torch.Generator().manual_seed(seed)
    b, _, h, w = batch.background.shape
    flags = torch.tensor(present, dtype=torch.float32)
    return _attach(batch, torch.randn((b, flags.shape[1], h, w), generator=gen), flags)


def random_stream_batch(
    grid: tuple[int, int] = SMALL_GRID,
    batch: int = 2,
    present: Sequence[Sequence[float]] | None = None,
    *,
    seed: int = 0,
    in_chans: int = 4,
) -> DABatch:
    """:func:`random_batch` with the loader's three streams ``["precip", "precip_gauges",
    "olr"]``, all present unless ``present`` (B, 3) says otherwise (B = ``len(present)``).

    Precipitation at ~1 % of cells (at least one station per sample), 0 elsewhere as the loader
    sends absence; its gauge count ``log1p(1)`` at the same cells; dense OLR.
    """
    flags = torch.ones(batch, 3) if present is None else torch.tensor(present)
    b = flags.shape[0]
    gen = torch.Generator().manual_seed(seed)
    cells = torch.rand((b, 1, *grid), generator=gen) < 0.01
    cells[:, :, 3, 5] = True
    precip = torch.randn((b, 1, *grid), generator=gen) * cells
    olr = torch.randn((b, 1, *grid), generator=gen)
    streams = torch.cat([precip, cells * math.log(2.0), olr], dim=1)
    return _attach(random_batch(in_chans, grid, b, seed=seed), streams, flags.float())


def synthetic_train_split(
    channels: int = 4,
    grid: tuple[int, int] = (13, 24),
    n_time: int = 4,
    *,
    scale: float | Sequence[float] = 1.0,
    error: float | Sequence[float] = 0.5,
    smooth: bool = False,
    seed: int = 0,
) -> tuple[xr.Dataset, xr.Dataset]:
    """A train split in physical units as ``open_dataset`` gives it, and its statistics.

    The first ``channels`` schema channels on the equiangular ``grid``, ``n_time`` daily cycles,
    all in the train split: truth ``scale * z`` per channel (``z ~ N(0, 1)``; with ``smooth``,
    averaged with its east and south neighbours), background ``truth + error * scale *
    N(0, 1)`` (``error`` relative to ``scale``), stored observations at ~5 % of the points (NaN
    elsewhere) and the observation settings a build records (default noise). Statistics: mean
    0, std ``scale``.
    """
    rng = np.random.default_rng(seed)
    names = list(schema.CHANNELS[:channels])
    scale = np.broadcast_to(np.asarray(scale, np.float64), (channels,))[None, :, None, None]
    error = np.broadcast_to(np.asarray(error, np.float64), (channels,))[None, :, None, None]
    z = rng.standard_normal((n_time, channels, *grid))
    if smooth:
        z = (z + np.roll(z, 1, -1) + np.roll(z, 1, -2)) / np.sqrt(3.0)
    target = scale * z
    background = target + error * scale * rng.standard_normal(target.shape)
    latitude, longitude = equiangular_grid(*grid)
    dims = schema.CANONICAL_DIMS
    ds = xr.Dataset(
        {"target": (dims, target), "background": (dims, background)},
        coords={
            schema.TIME: np.arange(n_time).astype("datetime64[D]").astype("datetime64[ns]"),
            schema.CHANNEL: names,
            schema.LATITUDE: latitude,
            schema.LONGITUDE: longitude,
            "split": (schema.TIME, ["train"] * n_time),
        },
        attrs={"observation": json.dumps({"noise": "default", "pattern": "random", "seed": 0})},
    )
    ds["observation"] = ds["target"].where(rng.random(target.shape) < 0.05)
    stats = xr.Dataset(
        {"mean": (schema.CHANNEL, np.zeros(channels)), "std": (schema.CHANNEL, scale.ravel())},
        coords={schema.CHANNEL: names},
    )
    return ds, stats


def shipped_config_model(name: str) -> tuple[RunConfig, torch.nn.Module]:
    """The shipped ``baselines/configs/NAME.yaml`` (it must name the variant ``NAME``) and its
    model built on the ``meta`` device (shapes only, no memory)."""
    cfg = load_run_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name, f"{name}.yaml builds {cfg.model.name}"
    with torch.device("meta"):
        return cfg, create_model(cfg.model.name, **cfg.model.kwargs)


def overfit_losses(
    model: torch.nn.Module, batch: DABatch, steps: int, lr: float, *, clip: float | None = None
) -> list[float]:
    """The training losses of ``steps`` AdamW steps (no weight decay; gradient norm clipped at
    ``clip`` when given) on one fixed ``batch``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model.loss(batch).loss
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def one_thread():
    """Run the test on one torch thread and yield the count before (small tensors: a second
    thread gains little, and when another process shares the cores the threads' barriers
    stall)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield before
    torch.set_num_threads(before)


@pytest.fixture
def make_batch():
    """:func:`random_batch`."""
    return random_batch


@pytest.fixture
def with_modalities():
    """:func:`add_modalities`."""
    return add_modalities


@pytest.fixture
def stream_batch():
    """:func:`random_stream_batch`."""
    return random_stream_batch


@pytest.fixture
def train_split():
    """:func:`synthetic_train_split`."""
    return synthetic_train_split


@pytest.fixture
def config_model():
    """:func:`shipped_config_model`."""
    return shipped_config_model


@pytest.fixture
def overfit():
    """:func:`overfit_losses`."""
    return overfit_losses
