"""Tests of the reference analyses: Background and 3D-Var (baselines/models/background.py,
baselines/models/threedvar.py) and the background-error library (baselines/layers/covariance.py).

The 3D-Var golden values come from an independent dense computation over the full state:
B is built for every grid point from the haversine great-circle angle (the model uses dot
products of unit vectors and FFTs in longitude), and
``x_a = x_b + B H^T (H B H^T + R)^-1 (y - H x_b)`` is solved with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from baselines.interface import DABatch
from baselines.layers.covariance import (
    equiangular_grid,
    fit_background_error,
    normalised_observation_error_std,
    observation_noise_of,
)
from baselines.models.background import Background
from baselines.models.threedvar import ThreeDVar
from baselines.registry import create_model
from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.grid import CANONICAL_GRID

EARTH_RADIUS_KM = 6371.0


# --- an independent dense 3D-Var -----------------------------------------------------------------


def _dense_covariance(lat_deg, lon_deg, sigma, length_km, kind):
    """B (n, n) over all grid points (row-major lat, lon), from haversine angles."""
    lat, lon = np.meshgrid(np.deg2rad(lat_deg), np.deg2rad(lon_deg), indexing="ij")
    lat, lon = lat.ravel(), lon.ravel()
    dlat = lat[:, None] - lat[None, :]
    dlon = lon[:, None] - lon[None, :]
    hav = (
        np.sin(dlat / 2) ** 2 + np.cos(lat[:, None]) * np.cos(lat[None, :]) * np.sin(dlon / 2) ** 2
    )
    gamma = 2 * np.arcsin(np.sqrt(np.clip(hav, 0, 1)))  # great-circle angle
    r = 2 * EARTH_RADIUS_KM * np.sin(gamma / 2)  # chordal distance, km
    if kind == "soar":
        rho = (1 + r / length_km) * np.exp(-r / length_km)
    else:
        rho = np.exp(-(r**2) / (2 * length_km**2))
    return sigma**2 * rho


def _dense_analysis(x_b, y, mask, B, obs_std):
    """x_a and the analysis-error std for one field (n,), with H selecting mask points."""
    idx = np.flatnonzero(mask)
    H = np.zeros((idx.size, x_b.size))
    H[np.arange(idx.size), idx] = 1.0
    S = H @ B @ H.T + obs_std**2 * np.eye(idx.size)
    gain = B @ H.T @ np.linalg.inv(S)
    x_a = x_b + gain @ (y[idx] - H @ x_b)
    p_a = B - gain @ H @ B
    return x_a, np.sqrt(np.clip(np.diag(p_a), 0, None))


def _batch(background, observation, mask, target=None):
    as_t = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return DABatch(
        as_t(background), as_t(np.where(mask, observation, 0.0)), as_t(mask), as_t(target)
    )


def _random_problem(rng, shape, n_obs_per_field):
    b, c, h, w = shape
    background = rng.normal(size=shape)
    observation = rng.normal(size=shape)
    mask = np.zeros(shape)
    for i in range(b):
        for j in range(c):
            mask[i, j].flat[rng.choice(h * w, n_obs_per_field[i][j], replace=False)] = 1.0
    return background, observation, mask


# --- Background ----------------------------------------------------------------------------------


def test_background_returns_the_background_exactly():
    rng = np.random.default_rng(0)
    bg, obs, mask = _random_problem(rng, (2, 3, 7, 12), [[5, 6, 7]] * 2)
    batch = _batch(bg, obs, mask, target=rng.normal(size=bg.shape))
    model = create_model("background")
    analysis = model(batch)
    assert torch.equal(analysis.mean, batch.background)
    assert analysis.std is None
    assert model.info.trainable is False and not list(model.parameters())
    result = model.loss(batch)
    assert not result.loss.requires_grad
    np.testing.assert_allclose(float(result.loss), np.mean((bg - batch.target.numpy()) ** 2))


# --- 3D-Var: exact solution ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["soar", "gaussian"])
def test_threedvar_equals_dense_solution_on_tiny_grid(kind):
    lat, lon = equiangular_grid(7, 12)
    rng = np.random.default_rng(1)
    bg, obs, mask = _random_problem(rng, (1, 1, 7, 12), [[5]])
    sigma, length, obs_std = 0.8, 2500.0, 0.3
    model = ThreeDVar(sigma, length, obs_std, correlation=kind, compute_std=True)
    analysis = model(_batch(bg, obs, mask))
    B = _dense_covariance(lat, lon, sigma, length, kind)
    x_a, std_a = _dense_analysis(bg.ravel(), obs.ravel(), mask.ravel(), B, obs_std)
    np.testing.assert_allclose(analysis.mean.numpy().ravel(), x_a, atol=1e-6, rtol=0)
    np.testing.assert_allclose(analysis.std.numpy().ravel(), std_a, atol=1e-6, rtol=0)


def test_threedvar_per_channel_parameters_and_masks():
    """Two samples, two channels with different sigma_b, L, R and different observed points."""
    lat, lon = equiangular_grid(7, 12)
    rng = np.random.default_rng(2)
    bg, obs, mask = _random_problem(rng, (2, 2, 7, 12), [[4, 9], [6, 1]])
    sigma, length, obs_std = [0.5, 1.5], [1500.0, 4000.0], [0.1, 0.6]
    analysis = ThreeDVar(sigma, length, obs_std)(_batch(bg, obs, mask)).mean.numpy()
    for c in range(2):
        B = _dense_covariance(lat, lon, sigma[c], length[c], "soar")
        for b in range(2):
            x_a, _ = _dense_analysis(
                bg[b, c].ravel(), obs[b, c].ravel(), mask[b, c].ravel(), B, obs_std[c]
            )
            np.testing.assert_allclose(analysis[b, c].ravel(), x_a, atol=1e-6, rtol=0)


def _haversine_cross(lat_a, lon_a, lat_b, lon_b, sigma, length_km):
    """SOAR covariance between point sets a and b (radians), (len(a), len(b))."""
    hav = (
        np.sin((lat_a[:, None] - lat_b[None, :]) / 2) ** 2
        + np.cos(lat_a[:, None])
        * np.cos(lat_b[None, :])
        * np.sin((lon_a[:, None] - lon_b) / 2) ** 2
    )
    r = 2 * EARTH_RADIUS_KM * np.sqrt(np.clip(hav, 0, 1))  # chord = 2 a sin(gamma / 2)
    return sigma**2 * (1 + r / length_km) * np.exp(-r / length_km)


def test_threedvar_on_the_canonical_grid_matches_dense_at_sampled_points():
    """121 x 240 with 5 % observed: the observation-space system solved densely with numpy, and
    the increment ``B_{grid,obs} w`` summed directly at 300 random grid points."""
    rng = np.random.default_rng(11)
    shape = (1, 1, *CANONICAL_GRID.shape)
    background = rng.normal(size=shape)
    observation = rng.normal(size=shape)
    mask = (rng.random(shape) < 0.05).astype(float)
    sigma, length, obs_std = 0.9, 600.0, 0.2
    x_a = ThreeDVar(sigma, length, obs_std)(_batch(background, observation, mask)).mean.numpy()

    lat, lon = np.meshgrid(
        np.deg2rad(CANONICAL_GRID.latitude),
        np.deg2rad(CANONICAL_GRID.longitude),
        indexing="ij",
    )
    lat, lon = lat.ravel(), lon.ravel()
    obs = np.flatnonzero(mask)
    S = _haversine_cross(lat[obs], lon[obs], lat[obs], lon[obs], sigma, length)
    S += obs_std**2 * np.eye(obs.size)
    w = np.linalg.solve(S, observation.ravel()[obs] - background.ravel()[obs])
    points = rng.choice(lat.size, 300, replace=False)
    increment = _haversine_cross(lat[points], lon[points], lat[obs], lon[obs], sigma, length) @ w
    np.testing.assert_allclose(
        x_a.ravel()[points], background.ravel()[points] + increment, atol=1e-6, rtol=0
    )


def test_threedvar_keeps_dtype_and_matches_in_float32():
    rng = np.random.default_rng(3)
    bg, obs, mask = _random_problem(rng, (1, 1, 7, 12), [[5]])
    batch64 = _batch(bg, obs, mask)
    batch32 = batch64.to("cpu", dtype=torch.float32)
    model = ThreeDVar(1.0, 2000.0, 0.2)
    out32 = model(batch32).mean
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), model(batch64).mean.numpy(), atol=1e-5)


def test_zero_observation_error_interpolates_the_observations():
    rng = np.random.default_rng(4)
    bg, obs, _ = _random_problem(rng, (1, 1, 7, 12), [[0]])
    mask = np.zeros_like(bg)  # six distinct points, off the poles (a pole row is one point)
    mask[0, 0, [1, 2, 3, 3, 4, 5], [0, 5, 2, 9, 7, 11]] = 1.0
    model = ThreeDVar(1.0, 1500.0, 0.0, obs_error_floor=1e-6)
    x_a = model(_batch(bg, obs, mask)).mean.numpy()
    observed = mask.astype(bool)
    np.testing.assert_allclose(x_a[observed], obs[observed], atol=1e-6)
    assert not np.allclose(x_a[~observed], bg[~observed])  # the increment spreads


def test_huge_observation_error_returns_the_background():
    rng = np.random.default_rng(5)
    bg, obs, mask = _random_problem(rng, (1, 1, 7, 12), [[6]])
    x_a = ThreeDVar(1.0, 1500.0, 1e8)(_batch(bg, obs, mask)).mean.numpy()
    np.testing.assert_allclose(x_a, bg, atol=1e-6, rtol=0)


def test_no_observations_returns_the_background():
    rng = np.random.default_rng(6)
    bg = rng.normal(size=(2, 3, 7, 12))
    batch = _batch(bg, np.zeros_like(bg), np.zeros_like(bg))
    analysis = ThreeDVar([1.0, 2.0, 0.5], 1000.0, 0.1, compute_std=True)(batch)
    np.testing.assert_array_equal(analysis.mean.numpy(), bg)
    np.testing.assert_allclose(analysis.std.numpy()[:, 1], 2.0)  # prior std everywhere


# --- 3D-Var: behaviour on a synthetic smooth truth -----------------------------------------------


def _sample_fields(lat, lon, sigma, length, kind, n, rng):
    """n draws of N(0, B) on the grid, (n, H, W) (a 1e-8 jitter makes B definite at the poles)."""
    B = _dense_covariance(lat, lon, sigma, length, kind)
    chol = np.linalg.cholesky(B + 1e-8 * sigma**2 * np.eye(B.shape[0]))
    return (chol @ rng.normal(size=(B.shape[0], n))).T.reshape(n, lat.size, lon.size)


def test_threedvar_reduces_the_error_at_and_near_observations():
    lat, lon = equiangular_grid(31, 60)
    rng = np.random.default_rng(7)
    sigma, length, obs_std = 0.5, 1000.0, 0.05
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    truth = np.cos(phi) * np.sin(2 * lam) + 0.5 * np.sin(phi) + 0.3 * np.cos(phi) ** 2 * np.cos(lam)
    background = truth + _sample_fields(lat, lon, sigma, length, "soar", 1, rng)[0]
    mask = (rng.random(truth.shape) < 0.05).astype(float)
    observation = truth + obs_std * rng.normal(size=truth.shape)
    batch = _batch(background[None, None], observation[None, None], mask[None, None])
    x_a = ThreeDVar(sigma, length, obs_std)(batch).mean.numpy()[0, 0]

    observed = mask.astype(bool)
    # chordal distance of every grid point to its nearest observation, km
    xyz = np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], -1)
    pts = xyz.reshape(-1, 3)
    chord = EARTH_RADIUS_KM * np.linalg.norm(pts[:, None] - pts[observed.ravel()][None], axis=-1)
    near = (chord.min(1) <= length).reshape(truth.shape) & ~observed

    def rms(field, where):
        return math.sqrt(np.mean((field - truth)[where] ** 2))

    assert observed.sum() > 40 and near.sum() > 200
    assert rms(x_a, observed) < 0.3 * rms(background, observed)
    assert rms(x_a, near) < 0.8 * rms(background, near)
    assert rms(x_a, np.ones_like(observed)) < rms(background, np.ones_like(observed))


# --- fitting B -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "lengths"), [("soar", (1200.0, 2000.0)), ("gaussian", (1500.0,))])
def test_fit_recovers_variance_and_length_scale(kind, lengths):
    lat, lon = equiangular_grid(31, 60)
    rng = np.random.default_rng(8)
    sigmas = (0.7, 1.3)[: len(lengths)]
    fields = [
        _sample_fields(lat, lon, s, length, kind, 30, rng)
        for s, length in zip(sigmas, lengths, strict=True)
    ]
    errors = np.stack(fields, axis=1)  # (30, C, 31, 60)
    fit = fit_background_error(
        [errors[:15], errors[15:]], lat, lon, correlation=kind, max_distance_km=3 * max(lengths)
    )
    assert fit.n_samples == 30
    np.testing.assert_allclose(fit.sigma_b, sigmas, rtol=0.1)
    np.testing.assert_allclose(fit.length_scale_km, lengths, rtol=0.2)


def test_fit_refuses_validation_and_test_cycles(embedded):
    folder, stats = embedded
    from dambench.load import open_dataset

    with pytest.raises(DambenchInputError, match="train split only"):
        create_model("threedvar", in_chans=4).fit(open_dataset(folder), stats)


def test_save_load_and_state_dict_roundtrip(tmp_path):
    model = ThreeDVar(
        [0.5, 0.7], [800.0, 1200.0], [0.1, 0.0], channels=["u10", "t2m"], fit_info={"n_cycles": 3}
    )
    path = model.save(tmp_path / "threedvar.json")
    for loaded in (ThreeDVar.load(path), create_model("threedvar", params=path)):
        for name in ("sigma_b", "length_scale_km", "obs_error_std"):
            torch.testing.assert_close(getattr(loaded, name), getattr(model, name))
        assert loaded.channels == ["u10", "t2m"] and loaded.fit_info == {"n_cycles": 3}
    other = ThreeDVar([1.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.length_scale_km, model.length_scale_km)


def test_normalised_observation_error_std():
    stats = xr.Dataset(
        {"std": ("channel", [2.0, 10.0]), "mean": ("channel", [0.0, 0.0])},
        coords={"channel": ["t2m", "u10"]},
    )
    out = normalised_observation_error_std(["u10", "t2m"], stats)
    expected = [schema.OBSERVATION_ERROR_STD["u10"] / 10.0, schema.OBSERVATION_ERROR_STD["t2m"] / 2]
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(normalised_observation_error_std(["u10"], stats, noise=0), [0.0])
    with pytest.raises(DambenchInputError, match=r"stats lack channels \['msl'\]"):
        normalised_observation_error_std(["u10", "msl"], stats)


def _tiny_train_dataset(observation_attr: str | None, n_time: int = 3) -> xr.Dataset:
    """Random background errors on a 9 x 16 grid, 2 channels, every cycle in the train split."""
    lat, lon = equiangular_grid(9, 16)
    rng = np.random.default_rng(12)
    target = rng.normal(size=(n_time, 2, 9, 16))
    ds = xr.Dataset(
        {
            "target": (schema.CANONICAL_DIMS, target),
            "background": (schema.CANONICAL_DIMS, target + rng.normal(size=target.shape)),
        },
        coords={
            "channel": ["u10", "t2m"],
            "latitude": lat,
            "longitude": lon,
            "split": ("time", ["train"] * n_time),
        },
    )
    if observation_attr is not None:
        ds.attrs["observation"] = observation_attr
    return ds


_STATS = xr.Dataset(
    {"std": ("channel", [2.0, 10.0]), "mean": ("channel", [0.0, 0.0])},
    coords={"channel": ["u10", "t2m"]},
)


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ('{"pattern": "random", "ratio": 0.05, "seed": 0, "noise": "default"}', "default"),
        ('{"noise": 0.5}', 0.5),
        ('{"noise": "0.5"}', 0.5),
        ('{"noise": null}', None),
        ('{"noise": {"u10": 1.0, "t2m": 2.0}}', {"u10": 1.0, "t2m": 2.0}),
        ('{"pattern": "random"}', "default"),  # observe()'s default noise
    ],
)
def test_observation_noise_of_reads_the_recorded_setting(recorded, expected):
    assert observation_noise_of(_tiny_train_dataset(recorded)) == expected


@pytest.mark.parametrize(
    ("recorded", "match"),
    [
        ('{"noise": 0.5', "not a JSON object"),  # truncated JSON
        ("noise=0.5", "not a JSON object"),
        ('{"noise": 0.5, "nosie": 1}', "does not take"),
        ('{"noise": "large"}', "records noise='large'"),
        (None, "records no observation settings"),
    ],
)
def test_unreadable_observation_noise_is_refused_not_defaulted(recorded, match):
    """Regression (issue 8 item 6): the old reader turned unreadable JSON (and a missing record)
    into the default noise, so 3D-Var's R was silently wrong."""
    ds = _tiny_train_dataset(recorded)
    with pytest.raises(DambenchInputError, match=match):
        observation_noise_of(ds)
    model = create_model("threedvar", in_chans=2)
    with pytest.raises(DambenchInputError, match=match):
        model.fit(ds, _STATS)
    # an explicit R needs no record
    model.fit(ds, _STATS, obs_error_std=[0.1, 0.2])
    torch.testing.assert_close(model.obs_error_std, torch.tensor([0.1, 0.2], dtype=torch.float64))


def test_fit_uses_the_recorded_noise_in_normalised_units():
    model = create_model("threedvar", in_chans=7, img_size=(7, 12))
    model.fit(_tiny_train_dataset('{"noise": 0.5}'), _STATS, verbose=False)
    assert model.in_chans == 2 and model.channels == ["u10", "t2m"]  # follows the data
    np.testing.assert_allclose(model.obs_error_std.numpy(), [0.5 / 2.0, 0.5 / 10.0])
    assert model.latitude.size == 9 and model.fit_info["observation_noise"] == "0.5"
    # the fitted grid is kept: a batch on another grid is refused
    rng = np.random.default_rng(13)
    bg, obs, mask = _random_problem(rng, (1, 2, 7, 12), [[3, 3]])
    with pytest.raises(DambenchInputError, match="model's grid is 9 x 16"):
        model(_batch(bg, obs, mask))


# --- registry, contract and errors ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["background_tiny", "threedvar_tiny"])
def test_tiny_models_forward_shape_and_loss(name):
    rng = np.random.default_rng(9)
    bg, obs, mask = _random_problem(rng, (2, 4, 9, 16), [[7, 0, 3, 9], [1, 2, 3, 4]])
    batch = _batch(bg, obs, mask, target=rng.normal(size=bg.shape)).to("cpu", torch.float32)
    model = create_model(name)
    analysis = model(batch)
    assert analysis.mean.shape == (2, 4, 9, 16)
    assert torch.isfinite(analysis.mean).all()
    result = model.loss(batch)
    assert model.info.trainable is False and not result.loss.requires_grad
    assert result.diagnostics["trainable"] == 0.0
    np.testing.assert_allclose(
        float(result.loss), float(torch.mean((analysis.mean - batch.target) ** 2)), rtol=1e-6
    )


def test_errors_name_the_problem():
    rng = np.random.default_rng(10)
    bg, obs, mask = _random_problem(rng, (1, 3, 7, 12), [[3, 3, 3]])
    with pytest.raises(DambenchInputError, match="parameters for 4 channels"):
        create_model("threedvar_tiny")(_batch(bg, obs, mask))
    with pytest.raises(DambenchInputError, match="correlation"):
        ThreeDVar(1.0, 1.0, 1.0, correlation="exponential")
    with pytest.raises(DambenchInputError, match="sigma_b > 0"):
        ThreeDVar(0.0, 1000.0, 0.1)
    with pytest.raises(DambenchInputError, match="model's grid is 9 x 16"):
        create_model("threedvar", in_chans=3, img_size=(9, 16))(_batch(bg, obs, mask))
    with pytest.raises(DambenchInputError, match="needs batch.target"):
        ThreeDVar(1.0, 1000.0, 0.1).loss(_batch(bg[:, :1], obs[:, :1], mask[:, :1]))


# --- the embedded real dataset -------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    from dambench.load import ensure_embedded, open_dataset, stats_from_attrs

    folder = ensure_embedded()
    return folder, stats_from_attrs(open_dataset(folder, split="train"))


def _normalised_batch(ds: xr.Dataset, stats: xr.Dataset) -> DABatch:
    """Background, observation (0 where unobserved), mask and target, normalised, float32."""
    mean = stats["mean"].values[None, :, None, None]
    std = stats["std"].values[None, :, None, None]
    raw = {
        name: ds[name].transpose(*schema.CANONICAL_DIMS).values for name in schema.TRIPLET_VARIABLES
    }
    mask = np.isfinite(raw["observation"])
    arrays = {
        "background": (raw["background"] - mean) / std,
        "target": (raw["target"] - mean) / std,
        "observation": np.where(mask, (raw["observation"] - mean) / std, 0.0),
        "mask": mask,
    }
    return DABatch(**{k: torch.as_tensor(v, dtype=torch.float32) for k, v in arrays.items()})


def test_threedvar_beats_background_on_embedded_test_split(embedded, tmp_path):
    """Fit B on train, analyse the test split's stored observations.

    MSE: ``dambench.metrics.mse`` of the normalised fields (train z-scores) over
    (channel, latitude, longitude), unweighted (the paper's eq. 24), averaged over test cycles.
    """
    from dambench.load import open_dataset
    from dambench.metrics import mse

    folder, stats = embedded
    model = create_model("threedvar", in_chans=4)
    assert model.info.needs_fit
    assert model.fit(open_dataset(folder, split="train"), stats) is model
    assert model.channels == ["u10", "v10", "t2m", "msl"] and model.latitude.size == 121
    assert model.fit_info["split"] == "train" and model.fit_info["n_cycles"] == 11
    assert np.all(model.sigma_b.numpy() > 0) and np.all(model.length_scale_km.numpy() > 50)
    model = ThreeDVar.load(model.save(tmp_path / "threedvar.json"))  # as evaluate would

    test = open_dataset(folder, split="test")
    batch = _normalised_batch(test, stats)
    analyses = {
        "background": Background()(batch).mean,
        "threedvar": model(batch).mean,
    }
    template = test["target"].transpose(*schema.CANONICAL_DIMS)
    truth = template.copy(data=batch.target.numpy())
    dims = (schema.CHANNEL, *schema.SPATIAL_DIMS)
    scores = {
        name: float(mse(template.copy(data=field.numpy()), truth, dims=dims))
        for name, field in analyses.items()
    }
    print(f"era5-sample test MSE (normalised): {scores}")
    assert scores["threedvar"] < 0.6 * scores["background"]
