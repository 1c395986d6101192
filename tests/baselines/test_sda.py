"""SDA (baselines/models/sda.py): shapes, the fit on the train split, the guidance wiring against
a closed form, members and seeds, and training with an EMA that resumes bit-identically.

The closed form: an untrained SDA is exactly the standard-normal prior (its UNet's last layer
starts at zero and the network predicts a residual on that prior's noise), so its analysis of
independent pixels is the per-pixel Gaussian posterior of N(0, 1), the background
N(x, sigma_b**2) and, where observed, N(x, sigma_o**2).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from baselines import train
from baselines.checkpoint import load_checkpoint, model_from_checkpoint
from baselines.config import load_run_config
from baselines.interface import DABatch
from baselines.layers.conv import count_parameters
from baselines.layers.covariance import block_error_std
from baselines.layers.diffusion import SamplerDivergedError
from baselines.models.sda import SDA
from baselines.registry import create_model, model_info
from dambench import schema
from dambench.exceptions import DambenchInputError

CHANNELS = ["u10", "v10", "t2m", "msl"]
MEAN_TOLERANCE = 0.12


pytestmark = pytest.mark.usefixtures("one_thread")


SPLIT = {"n_time": 3, "scale": [5.0, 5.0, 20.0, 1000.0], "error": [0.5, 0.5, 0.1, 0.2]}
"""A train split with channel std (5, 5, 20, 1000) and a background error std of (0.5, 0.5,
0.1, 0.2) normalised."""


# --- shapes, sizes and the contract ---------------------------------------------------------------


def test_info_says_ensemble_fitted_trainable():
    info = model_info("sda_small")
    assert info.output == "ensemble" and info.trainable and info.needs_fit
    assert not info.uses_modalities and not info.supports_patches and info.code_licence == "MIT"


@pytest.mark.parametrize("grid", [(25, 48), (121, 240)])
def test_tiny_forward_backward_and_analysis_shapes(grid, make_batch):
    torch.manual_seed(0)
    model = create_model("sda_tiny", steps=4 if grid[0] > 100 else 8)  # 121 x 240: cheaper
    batch = make_batch(grid=grid, batch=1 if grid[0] > 100 else 2)
    out = model(batch)
    assert out.mean.shape == batch.background.shape and torch.isfinite(out.mean).all()
    model.loss(batch).loss.backward()
    assert model.unet.tail.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    analysis = model.analyse(batch, members=2, seed=0)
    assert analysis.members.shape == (batch.shape[0], 2, *batch.shape[1:])
    assert analysis.std.shape == batch.background.shape and torch.isfinite(analysis.members).all()
    torch.testing.assert_close(analysis.mean, analysis.members.mean(1))


def test_full_size_is_the_paper_unet():
    with torch.device("meta"):
        model = create_model("sda_full")
    # 22,976,069 = the upstream UNet at C = 69 (23.0 M, baselines.md section 9.1; derived in
    # tests/baselines/test_diffusion.py::_unet_parameters); sigma buffers are not parameters.
    assert count_parameters(model) == 22_976_069
    assert model.sampling_cost()["network_evaluations_per_member"] == 512


def test_context_mode_feeds_the_background_to_the_network(make_batch):
    torch.manual_seed(0)
    model = create_model("sda_cond_tiny")
    batch = make_batch(batch=2)
    assert model.unet.in_chans == 8 and len(model.observation_terms(batch)) == 1
    model.loss(batch).loss.backward()
    assert model.analyse(batch, members=2).members.shape == (2, 2, 4, 25, 48)
    with pytest.raises(DambenchInputError, match="background='prior'"):
        create_model("sda_tiny", background="prior")
    with pytest.raises(DambenchInputError, match="another method: use sda_cond_"):
        create_model("sda_tiny", background="context")
    with pytest.raises(DambenchInputError, match=r"another method: use sda_\* \(SDA\)"):
        create_model("sda_cond_tiny", background="guidance")


def test_the_multi_modal_adapter_conditions_the_context_mode_only(make_batch):
    """Multi-SDA's host is the conditional model (multi_sda_cond_*): the adapter's context is
    added to the score network's context channels; zero-shot SDA hosts no adapter."""
    from baselines.models.multi import adapter_of

    torch.manual_seed(0)
    multi = create_model("multi_sda_cond_tiny", modalities=["olr"])
    assert multi.background == "context" and adapter_of(multi).slot_channels == (4,)
    batch = make_batch(batch=2)
    olr = DABatch(**{**batch.__dict__, "modalities": torch.randn(2, 1, 25, 48),
                     "modality_present": torch.tensor([[0.0], [1.0]])})  # fmt: skip
    assert torch.equal(multi.conditioning(olr), batch.background)  # zero heads: the same...
    torch.nn.init.normal_(adapter_of(multi).heads[0].weight)
    conditioned = multi.conditioning(olr)
    assert torch.equal(conditioned[0], batch.background[0])  # ... and no tokens: the same
    assert not torch.allclose(conditioned[1], batch.background[1])
    with pytest.raises(DambenchInputError, match="sda_tiny' declares no adapter entry"):
        create_model("multi_sda_tiny")
    with pytest.raises(DambenchInputError, match="use multi_sda_cond_"):
        create_model("sda_tiny").adapter_slots()


def test_members_default_reproducibility_and_member_batches(make_batch):
    torch.manual_seed(0)
    model = create_model("sda_tiny", members=3, member_batch=3)
    batch = make_batch(grid=(9, 16), batch=2)
    assert model.analyse(batch).members.shape[1] == 3  # default members
    a = model.analyse(batch, members=3, seed=5).members
    model.member_batch = 1
    b = model.analyse(batch, members=3, seed=5).members
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, 0], a[:, 1])
    cost = model.sampling_cost()
    assert cost == {"steps": 8, "corrections": 1, "network_evaluations_per_member": 16,
                    "backward_passes_per_member": 16, "default_members": 3,
                    "member_batch": 1}  # fmt: skip


def test_input_checks_name_the_problem(make_batch):
    model = create_model("sda_tiny")
    with pytest.raises(DambenchInputError, match=r"expects \(B, 4, H, W\)"):
        model.analyse(make_batch(channels=3))
    batch = make_batch()
    no_target = DABatch(batch.background, batch.observation, batch.mask)
    with pytest.raises(DambenchInputError, match="batch.target"):
        model.loss(no_target)
    with pytest.raises(DambenchInputError, match="needs one positive value or 4"):
        create_model("sda_tiny", background_std=[1.0, 2.0])


# --- fit and guidance -----------------------------------------------------------------------------


def test_fit_measures_sigma_b_and_sigma_o_on_the_train_split(make_batch, train_split):
    ds, stats = train_split(**SPLIT)
    model = create_model("sda_small", background_block=1)
    assert not model.fitted
    with pytest.raises(DambenchInputError, match="not fitted: call fit"):
        model.analyse(make_batch(grid=(13, 24)))
    assert model.fit(ds, stats) is model and model.fitted
    expected_b = np.sqrt(
        (((ds.background - ds.target).values / stats["std"].values[:, None, None]) ** 2).mean(
            axis=(0, 2, 3)
        )
    )
    np.testing.assert_allclose(model.background_std.numpy(), expected_b, rtol=1e-6)
    assert expected_b == pytest.approx([0.5, 0.5, 0.1, 0.2], rel=0.1)  # the construction
    # default noise: u10, v10 1.5 m/s; t2m 1 K; msl 100 Pa (over std 5, 5, 20, 1000)
    np.testing.assert_allclose(model.observation_std.numpy(), [0.3, 0.3, 0.05, 0.1], rtol=1e-6)
    state = model.state_dict()
    assert torch.equal(state["background_std"], model.background_std)
    with pytest.raises(DambenchInputError, match="train split only"):
        model.fit(ds.assign_coords(split=(schema.TIME, ["test"] * 3)), stats)


def test_untrained_analysis_is_the_per_pixel_gaussian_posterior():
    # Per pixel: prior N(0, 1), background N(x, sigma_b^2), observation N(x, sigma_o^2) where
    # observed: precision 1 + 1/sigma_b^2 + m/sigma_o^2, mean (x_b/sigma_b^2 + m y/sigma_o^2) / it.
    torch.manual_seed(0)
    sigma_b, sigma_o = 0.5, 0.3
    model = create_model("sda_tiny", steps=32, background_std=sigma_b, observation_std=sigma_o,
                         members=24, member_batch=24, background_block=1)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    background = torch.randn(1, 4, 9, 16, generator=gen)
    mask = (torch.rand(1, 4, 9, 16, generator=gen) < 0.3).float()
    observation = (background.roll(3, -1) + 0.5) * mask
    batch = DABatch(background, observation, mask)
    precision = 1 + 1 / sigma_b**2 + mask / sigma_o**2
    post_mean = (background / sigma_b**2 + observation / sigma_o**2) / precision
    analysis = model.analyse(batch, seed=0)
    error = analysis.mean - post_mean
    # 24 members: sampling std of the mean sqrt(1 / precision / 24) <= 0.09 per pixel (measured
    # RMS error 0.090, variance ratio 1.12; without the background term: 0.71)
    assert float(error.square().mean().sqrt()) < MEAN_TOLERANCE, float(error.square().mean().sqrt())
    variance = analysis.members.var(1)
    ratio = float(variance.mean() / (1 / precision).mean())
    assert ratio == pytest.approx(1.0, abs=0.3), ratio
    # wrong wiring fails: without the background term the mean would be far off
    no_background = (observation / sigma_o**2) / (1 + mask / sigma_o**2)
    assert float((analysis.mean - no_background).square().mean().sqrt()) > 3 * MEAN_TOLERANCE
    # a tight background pins the analysis to it
    tight = create_model("sda_tiny", steps=32, background_std=0.05, observation_std=sigma_o,
                         background_block=1)  # fmt: skip
    pinned = tight.analyse(batch, members=4, seed=0).mean
    assert float((pinned - background).square().mean()) < 0.01


def test_too_few_steps_for_the_observation_error_is_refused(make_batch):
    model = create_model("sda_tiny", steps=4, gamma=1e-3, observation_std=0.02,
                         observation_std_floor=0.01, corrector="langevin")  # fmt: skip
    with pytest.raises(SamplerDivergedError, match="diverged"):
        model.analyse(make_batch(batch=2), members=2)


# --- training with train.py: EMA weights, fit, resume ---------------------------------------------


def _config(path: Path, out: Path, model: str, kwargs: dict | None = None, epochs: int = 2) -> Path:
    from dambench.load import ensure_embedded

    config = {
        "task": {"dataset": str(ensure_embedded()), "batch_size": 1, "num_workers": 0},
        "model": {"name": model, "kwargs": kwargs or {}},
        "train": {"epochs": epochs, "max_steps_per_epoch": 2, "amp": False, "seed": 0,
                  "ema_decay": 0.5, "out": str(out)},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def run_straight_and_resumed(
    tmp_path: Path, model: str, monkeypatch, kwargs: dict | None = None
) -> tuple[dict, dict]:
    """Two epochs straight, and one epoch killed before the second is saved then resumed."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = _config(tmp_path / "a.yaml", straight, model, kwargs)
    train.run(load_run_config(first), verbose=False)
    config = load_run_config(_config(tmp_path / "b.yaml", resumed, model, kwargs))
    original = train._log

    def killed(path, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt
        original(path, record)

    with monkeypatch.context() as patch:
        patch.setattr(train, "_log", killed)
        with pytest.raises(KeyboardInterrupt):
            train.run(config, verbose=False)
    torch.manual_seed(999)  # a fresh process starts from other generator states
    np.random.seed(999)  # noqa: NPY002
    random.seed(999)
    train.run(config, verbose=False)
    return (
        load_checkpoint(straight / "checkpoints" / "last.pt", mmap=False),
        load_checkpoint(resumed / "checkpoints" / "last.pt", mmap=False),
    )


def test_ema_weights_are_what_evaluation_uses_and_fit_travels(tmp_path):
    # (a resumed run continuing bit-identically: test_slams.py, which shares the machinery)
    out = tmp_path / "run"
    config = load_run_config(_config(tmp_path / "c.yaml", out, "sda_tiny", epochs=1))
    train.run(config, verbose=False)
    state = load_checkpoint(out / "checkpoints" / "last.pt", mmap=False)
    # the checkpoint's model is the EMA of the weights, not the raw weights
    assert not torch.equal(
        state["model"]["unet.tail.weight"], state["raw_model"]["unet.tail.weight"]
    )
    model = model_from_checkpoint(out / "checkpoints" / "last.pt", channels=CHANNELS)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    # fit ran on era5-sample's train split before training; its sigma_b travels with the weights
    from dambench.load import ensure_embedded, open_dataset, stats_from_attrs

    ds = open_dataset(ensure_embedded(), split="train")
    expected = block_error_std(ds, stats_from_attrs(ds), model.background_block)
    np.testing.assert_allclose(model.background_std.numpy(), expected, rtol=1e-6)
    assert model.fitted and model.observation_std.shape == (4,)


@pytest.mark.parametrize("name", ["sda_small", "sda_full", "sda_cond_small", "sda_cond_full"])
def test_configs_load_and_build(name, config_model):
    cfg, model = config_model(name)
    assert cfg.train.ema_decay is not None and isinstance(model, SDA)
    assert model.sampler.corrector == "preconditioned"
    assert model.background == ("context" if "cond" in name else "guidance")
    assert "cond" in name or model.background_block == 8


# --- the background term with correlated errors ---------------------------------------------------


def _spread_skill(prior: torch.Tensor, rows: torch.Tensor, std: float, errors: torch.Tensor,
                  observed: torch.Tensor, sigma_o: float) -> float:  # fmt: skip
    """Closed-form spread/skill of the posterior N(0, prior) x N(A x_b; A x, std**2) x
    N(y; x_obs, sigma_o**2) when the true background errors have covariance ``errors``:
    sqrt(tr P) / sqrt(E ||mean - x||**2), with mean - x = P (-prior^-1 x + A^T e_A / std**2 +
    H^T e_o / sigma_o**2)."""
    n = prior.shape[0]
    h = torch.eye(n, dtype=torch.float64)[observed]
    inverse = torch.linalg.inv(prior)
    gain = rows.T @ rows / std**2
    posterior = torch.linalg.inv(inverse + gain + h.T @ h / sigma_o**2)
    error = inverse + gain @ errors @ gain + h.T @ h / sigma_o**2
    return float((posterior.trace() / (posterior @ error @ posterior).trace()).sqrt())


def test_block_background_term_is_calibrated_for_correlated_errors():
    """A smooth prior and background errors correlated over 3 cells (SOAR): the paper's
    per-cell term is over-confident (spread/skill 0.30), the 8 x 8 block term is not (0.99)."""
    height, width = 16, 32
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    i, j = i.reshape(-1).double(), j.reshape(-1).double()
    dj = (j[:, None] - j[None, :]).abs()
    distance = torch.hypot(i[:, None] - i[None, :], torch.minimum(dj, width - dj))
    n = height * width
    prior = torch.exp(-0.5 * (distance / 4.0) ** 2) + 1e-3 * torch.eye(n, dtype=torch.float64)
    errors = 0.25 * (1 + distance / 3.0) * torch.exp(-distance / 3.0)  # sigma_b = 0.5
    observed = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // 20]
    ratios = {}
    for block in (1, 8):
        model = create_model("sda_tiny", in_chans=1, background_block=block)
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, height, width)
        term = model.background_term(torch.zeros(1, 1, height, width, dtype=torch.float64))
        rows = (basis if term.operator is None else term.operator(basis)).reshape(n, -1).T
        std = float((rows @ errors @ rows.T).diagonal().mean().sqrt())  # what fit() measures
        ratios[block] = _spread_skill(prior, rows, std, errors, observed, 0.3)
    assert ratios[1] < 0.5, ratios  # measured 0.30
    assert 0.85 < ratios[8] < 1.15, ratios  # measured 0.99


def test_fit_measures_sigma_b_on_block_means(train_split):
    ds, stats = train_split(**SPLIT)
    model = create_model("sda_small").fit(ds, stats)
    assert model.background_block == 8
    scale = stats["std"].values[:, None, None]
    error = torch.from_numpy((ds.background - ds.target).values / scale)
    from baselines.layers.covariance import block_mean

    expected = block_mean(error, 8).square().mean(dim=(0, 2, 3)).sqrt()
    np.testing.assert_allclose(model.background_std.numpy(), expected.numpy(), rtol=1e-5)
    with pytest.raises(DambenchInputError, match="background_block must be a positive integer"):
        create_model("sda_small", background_block=7).fit(ds, stats)
