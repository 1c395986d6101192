"""SLAMS (baselines/models/slams.py): shapes and sizes, modalities as present/absent, the frozen
autoencoder stage in ``fit``, the latent guidance against a closed form, and training with an
EMA that resumes bit-identically and never moves the frozen autoencoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from test_sda import make_batch, run_straight_and_resumed

from baselines.config import load_run_config
from baselines.interface import DABatch
from baselines.layers.conv import count_parameters
from baselines.layers.diffusion import SamplerSettings, sample
from baselines.models.slams import SLAMS
from baselines.registry import create_model, model_info
from dambench import schema
from dambench.batching import make_dataloader
from dambench.exceptions import DambenchInputError

CONFIGS = Path(__file__).resolve().parents[2] / "baselines" / "configs"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def with_modalities(batch: DABatch, present: list[list[float]], seed: int = 1) -> DABatch:
    gen = torch.Generator().manual_seed(seed)
    b, _, h, w = batch.background.shape
    flags = torch.tensor(present)
    return DABatch(
        batch.background,
        batch.observation,
        batch.mask,
        target=batch.target,
        modalities=torch.randn((b, flags.shape[1], h, w), generator=gen) * flags[:, :, None, None],
        modality_present=flags,
    )


def train_split(n_time: int = 4, grid=(13, 24)) -> tuple[xr.Dataset, xr.Dataset]:
    """A train split in physical units without modalities (channel std 1..4)."""
    rng = np.random.default_rng(0)
    channels = ["u10", "v10", "t2m", "msl"]
    scale = np.arange(1.0, 5.0)[None, :, None, None]
    smooth = rng.standard_normal((n_time, 4, *grid))
    smooth = (smooth + np.roll(smooth, 1, -1) + np.roll(smooth, 1, -2)) / np.sqrt(3)
    target = scale * smooth
    lat = np.linspace(90, -90, grid[0])
    lon = np.arange(grid[1]) * 360.0 / grid[1]
    ds = xr.Dataset(
        {
            "target": (schema.CANONICAL_DIMS, target),
            "background": (
                schema.CANONICAL_DIMS,
                target + 0.5 * scale * rng.standard_normal(target.shape),
            ),
        },
        coords={
            schema.TIME: np.arange(n_time).astype("datetime64[D]").astype("datetime64[ns]"),
            schema.CHANNEL: channels,
            schema.LATITUDE: lat,
            schema.LONGITUDE: lon,
            "split": (schema.TIME, ["train"] * n_time),
        },
        attrs={"observation": json.dumps({"noise": "default", "pattern": "random", "seed": 0})},
    )
    ds["observation"] = ds["target"].where(rng.random(target.shape) < 0.05)
    stats = xr.Dataset(
        {"mean": (schema.CHANNEL, np.zeros(4)), "std": (schema.CHANNEL, scale.ravel())},
        coords={schema.CHANNEL: channels},
    )
    return ds, stats


# --- shapes, sizes and the contract ---------------------------------------------------------------


def test_info_says_ensemble_with_modalities():
    info = model_info("slams_small")
    assert info.output == "ensemble" and info.needs_fit and info.uses_modalities
    assert info.trainable and not info.supports_patches


@pytest.mark.parametrize("grid", [(25, 48), (121, 240)])
def test_tiny_forward_backward_and_analysis_shapes(grid):
    torch.manual_seed(0)
    model = create_model("slams_tiny")
    batch = with_modalities(make_batch(grid=grid, batch=1), [[1.0]])
    out = model(batch)
    assert out.mean.shape == batch.background.shape and torch.isfinite(out.mean).all()
    model.loss(batch).loss.backward()
    assert model.unet.tail.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    analysis = model.analyse(batch, members=2, seed=0)
    assert analysis.members.shape == (1, 2, *batch.shape[1:])
    assert torch.isfinite(analysis.members).all()


def test_full_size():
    with torch.device("meta"):
        model = create_model("slams_full")
    # UNet (64, 128, 256) x 3 blocks on 16 latent channels: 10,251,088 (the 10.3 M measured for
    # the upstream pixel model, section 9.1; formula in test_diffusion.py::_unet_parameters).
    # Encoder, k5 convs 213 -> 64 -> 48 -> 32 -> 24 -> 16 (213 = 3 x 69 + 2 x 3) with BatchNorm
    # between: 25 (213*64 + 64*48 + 48*32 + 32*24 + 24*16) + 184 biases + 2 (64+48+32+24)
    # = 485,320; decoder 16 -> 24 -> 32 -> 48 -> 64 -> 69: 25 * 10,176 + 237 + 336 = 254,973.
    assert count_parameters(model.unet) == 10_251_088
    assert count_parameters(model.encoder) == 485_320
    assert count_parameters(model.decoder) == 254_973
    assert model.sampling_cost()["network_evaluations_per_member"] == 1024  # 512 steps + 1 corr.


# --- modalities -----------------------------------------------------------------------------------


def test_absent_modalities_are_flagged_not_faked():
    torch.manual_seed(0)
    model = create_model("slams_tiny", modality_chans=2).eval()
    base = make_batch(batch=2)
    present = with_modalities(base, [[1.0, 0.0], [1.0, 1.0]])
    latent = model.da_latent(present)
    # the values of an absent modality are ignored
    noisy = DABatch(
        present.background,
        present.observation,
        present.mask,
        modalities=present.modalities
        + torch.tensor([0.0, 5.0])[None, :, None, None] * torch.tensor([[1.0], [0.0]])[:, :, None],
        modality_present=present.modality_present,
    )
    torch.testing.assert_close(model.da_latent(noisy), latent)
    # ... but its absence is seen: absent differs from "present and zero"
    zeros = DABatch(
        base.background,
        base.observation,
        base.mask,
        modalities=torch.zeros(2, 2, 25, 48),
        modality_present=torch.ones(2, 2),
    )
    absent = DABatch(
        base.background,
        base.observation,
        base.mask,
        modalities=torch.zeros(2, 2, 25, 48),
        modality_present=torch.zeros(2, 2),
    )
    assert not torch.allclose(model.da_latent(zeros), model.da_latent(absent))
    # a batch without modalities counts as all absent
    torch.testing.assert_close(
        model.da_latent(DABatch(base.background, base.observation, base.mask)),
        model.da_latent(absent),
    )
    with pytest.raises(DambenchInputError, match="modality_chans=2.*loader's modality count"):
        model.da_latent(with_modalities(base, [[1.0], [1.0]]))


# --- fit: the frozen autoencoder ------------------------------------------------------------------


def test_fit_trains_then_freezes_the_autoencoder_and_standardises_latents():
    ds, stats = train_split()
    torch.manual_seed(0)
    model = create_model("slams_tiny", ae_epochs=15, ae_batch_size=1, ae_lr=3e-3)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    batches = [DABatch.from_loader(raw) for raw in make_dataloader(ds, stats=stats, train=False)]

    def reconstruction() -> float:
        with torch.no_grad():
            errors = [model.decode(model.clean_latent(b)) - b.target for b in batches]
        return float(torch.cat(errors).square().mean())

    before = reconstruction()
    assert model.fit(ds, stats) is model and model.fitted
    assert reconstruction() < 0.7 * before, (before, reconstruction())  # measured 1.12 -> 0.62
    assert not any(
        p.requires_grad for p in [*model.encoder.parameters(), *model.decoder.parameters()]
    )
    model.train()
    assert model.unet.training and not model.encoder.training and not model.decoder.training
    # clean latents of the train split are standardised
    latents = torch.cat([model.clean_latent(b).detach() for b in batches])
    torch.testing.assert_close(latents.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(latents.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3, rtol=0)
    sigma_z = model.latent_std
    assert torch.isfinite(sigma_z).all() and bool((sigma_z >= 0.01).all())
    # default noise over std (1, 2, 3, 4): u10 1.5, v10 1.5, t2m 1, msl 100
    np.testing.assert_allclose(model.observation_std.numpy(), [1.5, 0.75, 1 / 3, 25.0], rtol=1e-6)
    # a training step of the prior leaves the autoencoder as fitted
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("enc", "dec"))}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.loss(batches[0]).loss.backward()
    optimizer.step()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in frozen.items())


# --- guidance -------------------------------------------------------------------------------------


def test_latent_guidance_gives_the_closed_form_posterior():
    # Untrained prior = N(0, I) on standardised latents; the latent pseudo-observation
    # y_z ~ N(z, sigma_z^2) alone (no pixel term) gives the posterior mean y_z / (1 + sigma_z^2).
    torch.manual_seed(0)
    sigma_z = 0.5
    model = create_model("slams_tiny", latent_std=sigma_z, pixel_guidance=False).eval()
    batch = with_modalities(make_batch(grid=(9, 16), batch=1), [[1.0]])
    terms = model.observation_terms(batch)
    assert len(terms) == 1
    n = 48
    generators = [torch.Generator().manual_seed(k) for k in range(n)]
    z = sample(
        model.eps,
        (1, 4, 9, 16),
        generators,
        model.schedule,
        SamplerSettings(steps=32, gamma=0.1),
        [t.repeat(n) for t in terms],
    )
    expected = terms[0].value / (1 + sigma_z**2)
    error = z.mean(0, keepdim=True) - expected
    # posterior std sqrt(0.2) = 0.45 per latent pixel; 48 members: 0.065 for the mean
    assert float(error.square().mean().sqrt()) < 0.1
    # posterior variance 0.2; measured 0.245 (the Gaussian guidance at 32 steps and gamma 0.1
    # is weaker than the exact likelihood at intermediate times); sigma_z taken as a variance
    # would give 0.06, sigma_z ignored 0.5
    assert float(z.var(0).mean()) == pytest.approx(sigma_z**2 / (1 + sigma_z**2), rel=0.3)


def test_pixel_guidance_pulls_decoded_members_to_the_observations():
    torch.manual_seed(0)
    batch = with_modalities(make_batch(grid=(9, 16), batch=1), [[1.0]])
    mask = (torch.rand_like(batch.mask) < 0.3).float()
    extra = {"modalities": batch.modalities, "modality_present": batch.modality_present}
    batch = DABatch(batch.background, batch.background.roll(2, -1) * mask, mask, **extra)

    def misfit(pixel: bool) -> float:
        torch.manual_seed(0)
        model = create_model("slams_tiny", pixel_guidance=pixel, steps=32).eval()
        members = model.analyse(batch, members=4, seed=0).members
        return float(
            ((members - batch.observation[:, None]) * batch.mask[:, None]).square().sum()
            / (4 * batch.mask.sum())
        )

    assert misfit(True) < 0.5 * misfit(False)


def test_input_checks_and_unfitted_refusal():
    model = create_model("slams_small")
    with pytest.raises(DambenchInputError, match="not fitted: call fit"):
        model.analyse(with_modalities(make_batch(), [[1.0, 1.0]] * 2))
    with pytest.raises(DambenchInputError, match=r"expects \(B, 4, H, W\)"):
        model.loss(make_batch(channels=5))
    with pytest.raises(DambenchInputError, match="modality_chans"):
        create_model("slams_tiny", modality_chans=-1)


# --- training with train.py -----------------------------------------------------------------------


def test_resumed_run_is_bit_identical_and_the_ema_leaves_the_autoencoder(tmp_path, monkeypatch):
    # era5-sample has two modalities (precip, precip_gauges)
    kwargs = {"modality_chans": 2}
    a, b = run_straight_and_resumed(tmp_path, "slams_tiny", monkeypatch, kwargs)
    for key in ("model", "raw_model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    assert not torch.equal(a["model"]["unet.tail.weight"], a["raw_model"]["unet.tail.weight"])
    for name, value in a["model"].items():
        if name.startswith(("encoder", "decoder", "latent")):
            assert torch.equal(value, a["raw_model"][name]), name  # fitted before the EMA


def test_configs_load_and_build():
    for size in ("small", "full"):
        cfg = load_run_config(CONFIGS / f"slams_{size}.yaml")
        assert cfg.model.name == f"slams_{size}" and cfg.train.ema_decay is not None
        with torch.device("meta"):
            model = create_model(cfg.model.name, **cfg.model.kwargs)
        assert isinstance(model, SLAMS)
