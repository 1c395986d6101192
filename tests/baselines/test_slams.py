"""SLAMS (baselines/models/slams.py): shapes and sizes, modalities as present/absent, the frozen
autoencoder stage in ``fit``, the latent guidance against a closed form, and training with an
EMA that resumes bit-identically and never moves the frozen autoencoder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sda import run_straight_and_resumed

from baselines.interface import DABatch
from baselines.layers.conv import count_parameters
from baselines.layers.diffusion import SamplerSettings, sample
from baselines.models.slams import SLAMS
from baselines.registry import create_model, model_info
from dambench import schema
from dambench.batching import make_dataloader
from dambench.exceptions import DambenchInputError

pytestmark = pytest.mark.usefixtures("one_thread")


SPLIT = {"scale": [1.0, 2.0, 3.0, 4.0], "smooth": True}
"""A smooth train split (channel std 1..4) without modalities."""


# --- shapes, sizes and the contract ---------------------------------------------------------------


def test_info_says_ensemble_with_modalities():
    info = model_info("slams_small")
    assert info.output == "ensemble" and info.needs_fit and info.uses_modalities
    assert info.trainable and not info.supports_patches


@pytest.mark.parametrize("grid", [(25, 48), (121, 240)])
def test_tiny_forward_backward_and_analysis_shapes(grid, make_batch, with_modalities):
    torch.manual_seed(0)
    model = create_model("slams_tiny", steps=4 if grid[0] > 100 else 8)  # 121 x 240: cheaper
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


def test_absent_modalities_are_flagged_not_faked(make_batch, with_modalities):
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
    # ... but its absence is seen: absent differs from "present and zero" (the loader's
    # modality_mask says a cell holds data, whatever its value)
    blank = {**base.__dict__, "modalities": torch.zeros(2, 2, 25, 48)}
    cells = torch.ones(2, 2, 25, 48)
    zeros = DABatch(**{**blank, "modality_present": torch.ones(2, 2), "modality_mask": cells})
    absent = DABatch(**{**blank, "modality_present": torch.zeros(2, 2)})
    assert not torch.allclose(model.da_latent(zeros), model.da_latent(absent))
    # a batch without modalities counts as all absent
    torch.testing.assert_close(
        model.da_latent(DABatch(base.background, base.observation, base.mask)),
        model.da_latent(absent),
    )
    with pytest.raises(DambenchInputError, match="modality_chans=2.*loader's modality count"):
        model.da_latent(with_modalities(base, [[1.0], [1.0]]))


def test_presence_is_per_cell(make_batch, with_modalities):
    """The presence channels follow ``modality_mask`` cell by cell: one cell marked absent
    changes the latent, and its value is no longer read."""
    torch.manual_seed(0)
    model = create_model("slams_tiny", modality_chans=1).eval()
    base = with_modalities(make_batch(batch=1), [[1.0]])
    mask = torch.ones(1, 1, 25, 48)
    full = DABatch(**{**base.__dict__, "modality_mask": mask})
    mask = mask.clone()
    mask[0, 0, 12, 20] = 0.0
    hole = DABatch(**{**base.__dict__, "modality_mask": mask})
    assert not torch.allclose(model.da_latent(hole), model.da_latent(full))
    values = base.modalities.clone()
    values[0, 0, 12, 20] += 7.0
    moved = DABatch(**{**hole.__dict__, "modalities": values})
    torch.testing.assert_close(model.da_latent(moved), model.da_latent(hole), rtol=0, atol=0)


def test_fit_trains_the_autoencoder_alone_and_the_loss_the_adapter_alone(train_split):
    """multi_slams: stage 1 (fit) leaves an attached adapter untouched (no step, no
    gradient), so a host checkpoint loaded afterwards starts at the host; stage 2's loss adds
    the frozen autoencoder's reconstruction error, which trains the adapter and nothing else."""
    from baselines.models.multi import adapter_of

    ds, stats = train_split(**SPLIT)
    rng = np.random.default_rng(1)
    gauges = (rng.random((4, 13, 24)) < 0.3).astype(np.float32)
    gauges[:, :4] = np.nan  # cells without data
    ds["precip_gauges"] = ((schema.TIME, schema.LATITUDE, schema.LONGITUDE), gauges, {"units": "1"})
    torch.manual_seed(0)
    multi = create_model("multi_slams_tiny", modalities=["precip_gauges"])
    adapter = adapter_of(multi)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    multi.fit(ds, stats)
    assert all(torch.equal(v, before[k]) for k, v in adapter.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in adapter.parameters())
    assert all(p.requires_grad for p in multi.unet.parameters())
    for head in adapter.heads:  # stand-in for a trained adapter
        torch.nn.init.normal_(head.weight, std=0.3)
    raw = next(iter(make_dataloader(ds, stats=stats, batch_size=2, train=True)))
    batch = DABatch.from_loader(raw)
    assert bool((batch.modality_mask[:, 0, :4] == 0).all() and batch.modality_mask[:, 0, 4:].all())
    result = multi.train().loss(batch)
    result.loss.backward()
    frozen = [*multi.encoder.parameters(), *multi.decoder.parameters()]
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in adapter.parameters())
    with torch.no_grad():
        field = multi.clean_field(batch)  # (x* - x_b) / sigma_b: the increment space
        clean = multi.decode_field(multi.clean_latent(batch)) - field
        da = multi.decode_field(multi.da_latent(batch)) - field
    expected = float(clean.square().mean() + da.square().mean())
    assert result.diagnostics["adapter_reconstruction"] == pytest.approx(expected, rel=1e-5)


# --- fit: the frozen autoencoder ------------------------------------------------------------------


def test_fit_trains_then_freezes_the_autoencoder_and_standardises_latents(train_split):
    ds, stats = train_split(**SPLIT)
    torch.manual_seed(0)
    model = create_model("slams_tiny", ae_epochs=15, ae_batch_size=1, ae_lr=3e-3)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    batches = [DABatch.from_loader(raw) for raw in make_dataloader(ds, stats=stats, train=False)]

    def reconstruction() -> float:
        with torch.no_grad():
            errors = [model.decode(model.clean_latent(b), b.background) - b.target for b in batches]
        return float(torch.cat(errors).square().mean())

    before = reconstruction()
    assert model.fit(ds, stats) is model and model.fitted
    assert reconstruction() < 0.7 * before, (before, reconstruction())  # measured 1.12 -> 0.62
    assert not any(
        p.requires_grad for p in [*model.encoder.parameters(), *model.decoder.parameters()]
    )
    model.train()
    assert model.unet.training and not model.encoder.training and not model.decoder.training
    # clean latents of the autoencoder's cycles (this nameless split: its first 3 of 4; the
    # last is held out to measure sigma_z on) are standardised
    assert model.fit_info["autoencoder_cycles"] == 3
    assert model.fit_info["latent_std_cycles"].startswith("last 1 of 4 train cycles")
    loader = make_dataloader(ds.isel(time=slice(0, 3)), stats=stats, train=False)
    seen = [DABatch.from_loader(raw) for raw in loader]
    latents = torch.cat([model.clean_latent(b).detach() for b in seen])
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


def test_latent_guidance_gives_the_closed_form_posterior(make_batch, with_modalities):
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


def test_pixel_guidance_pulls_decoded_members_to_the_observations(make_batch, with_modalities):
    """The earlier version's extra pixel term (``pixel_guidance=True``, state space) pulls the
    decoded members to the observations."""
    torch.manual_seed(0)
    batch = with_modalities(make_batch(grid=(9, 16), batch=1), [[1.0]])
    mask = (torch.rand_like(batch.mask) < 0.3).float()
    extra = {"modalities": batch.modalities, "modality_present": batch.modality_present}
    batch = DABatch(batch.background, batch.background.roll(2, -1) * mask, mask, **extra)

    def misfit(pixel: bool) -> float:
        torch.manual_seed(0)
        model = create_model(
            "slams_tiny", pixel_guidance=pixel, steps=16, latent_space="state"
        ).eval()
        members = model.analyse(batch, members=4, seed=0).members
        return float(
            ((members - batch.observation[:, None]) * batch.mask[:, None]).square().sum()
            / (4 * batch.mask.sum())
        )

    assert misfit(True) < 0.5 * misfit(False)


def test_the_zero_latent_decodes_to_the_background_exactly(make_batch):
    """Issue 17: in the default increment space a latent decodes to x_b + sigma_b (D(z) -
    D(0)), so the zero latent is the background bit for bit (the state-space decoding D(0)
    is not), for member-major stacks of the batch too."""
    torch.manual_seed(0)
    sigma_b = torch.tensor([0.5, 1.0, 2.0, 3.0])
    model = create_model("slams_tiny", background_std=sigma_b.tolist()).eval()
    batch = make_batch(grid=(9, 16), batch=2)
    with torch.no_grad():
        zero = model.decode(torch.zeros(6, 4, 9, 16), batch.background)  # 3 members x B = 2
        assert torch.equal(zero, batch.background.repeat(3, 1, 1, 1))
        z = torch.randn(2, 4, 9, 16)
        increment = (model.decode(z, batch.background) - batch.background) / sigma_b.view(
            1, 4, 1, 1
        )
        torch.testing.assert_close(increment, model.decode_field(z))
        assert increment.abs().max() > 0
        state = create_model("slams_tiny", latent_space="state").eval()
        decoded = state.decode(torch.zeros(2, 4, 9, 16), batch.background)
        assert not torch.equal(decoded, batch.background)


def test_each_observation_enters_the_posterior_once(make_batch, with_modalities):
    """Issue 17: y used to enter both the latent pseudo-observation E(x_b, y, mask) and a pixel
    term. By default the only guidance term is y_z = E(DA), which changes with y; no term
    compares anything with y directly. ``pixel_guidance=True`` (kept to reproduce the earlier
    numbers) adds the second count."""
    torch.manual_seed(0)
    model = create_model("slams_tiny").eval()
    batch = with_modalities(make_batch(grid=(9, 16), batch=1, ratio=0.3), [[1.0]])
    extra = {"modalities": batch.modalities, "modality_present": batch.modality_present}
    terms = model.observation_terms(batch)
    assert len(terms) == 1 and terms[0].operator is None and terms[0].mask is None
    moved = DABatch(batch.background, batch.observation + batch.mask, batch.mask, **extra)
    assert not torch.equal(model.observation_terms(moved)[0].value, terms[0].value)
    # unobserved values do not enter (anything may stand there, NaN included)
    observed = torch.where(batch.mask > 0, batch.observation, torch.nan)
    hidden = DABatch(batch.background, observed, batch.mask, **extra)
    assert torch.equal(model.observation_terms(hidden)[0].value, terms[0].value)
    twice = create_model("slams_tiny", pixel_guidance=True).eval().observation_terms(batch)
    assert len(twice) == 2 and twice[1].value is batch.observation


def _split(make_split, split: str, error: float, seed: int):
    ds, stats = make_split(**SPLIT, error=error, seed=seed)
    return ds.assign_coords(split=(schema.TIME, [split] * ds.sizes[schema.TIME])), stats


def test_sigma_z_is_measured_on_validation_cycles(train_split):
    """Issue 17: sigma_z is the RMS of E(DA) - E(clean) on validation cycles the autoencoder
    never saw, not on its own train cycles: the fitted value is the one measured on the
    validation split (here with 4x the background error) and differs from the train cycles'
    (what the old fit gave); a validation dataset of another split is refused."""
    ds, stats = _split(train_split, "train", 0.5, 0)
    validation, _ = _split(train_split, "validation", 2.0, 1)
    torch.manual_seed(0)
    model = create_model("slams_tiny", ae_epochs=5, ae_batch_size=1, ae_lr=3e-3)
    model.fit(ds, stats, validation=validation)
    assert model.fit_info == {
        "autoencoder_cycles": 4,
        "latent_std_cycles": "validation split (given)",
        "n_latent_std_cycles": 4,
    }
    fitted = model.latent_std.clone()
    model._fit_latent_std(model._loader(validation, stats, train=False))
    assert torch.equal(model.latent_std, fitted)
    model._fit_latent_std(model._loader(ds, stats, train=False))
    on_train = model.latent_std.clone()
    assert float((fitted - on_train).abs().max()) > 0.1 * float(on_train.min()), (fitted, on_train)
    with pytest.raises(DambenchInputError, match=r"validation cycles.*splits \['train'\]"):
        create_model("slams_tiny").fit(ds, stats, validation=ds)


def test_latent_block_observes_block_means_with_sigma_z_of_block_means(train_split, make_batch):
    """latent_block = k: the latent pseudo-observation is the k x k block means of y_z (one
    value per block, not one per latent cell), and sigma_z is the RMS of the block means of
    E(DA) - E(clean) on the validation cycles (recomputed here by hand)."""
    from baselines.layers.covariance import block_mean

    ds, stats = _split(train_split, "train", 0.5, 0)
    validation, _ = _split(train_split, "validation", 2.0, 1)
    torch.manual_seed(0)
    model = create_model("slams_tiny", ae_epochs=2, ae_batch_size=1, latent_block=4)
    model.fit(ds, stats, validation=validation)
    loader = model._loader(validation, stats, train=False)
    diffs = []
    with torch.no_grad():
        for raw in loader:
            batch = DABatch.from_loader(raw)
            diffs.append(block_mean(model.da_latent(batch) - model.clean_latent(batch), 4))
    expected = torch.cat(diffs).double().square().mean(dim=(0, 2, 3)).sqrt()
    torch.testing.assert_close(model.latent_std.double(), expected.clamp(min=0.01), rtol=1e-5,
                               atol=0)  # fmt: skip
    per_cell = create_model("slams_tiny", ae_epochs=2, ae_batch_size=1)
    torch.manual_seed(0)
    per_cell.fit(ds, stats, validation=validation)
    assert bool((model.latent_std < per_cell.latent_std).all())  # averaging lowers the RMS
    batch = make_batch(grid=(8, 16), batch=1)
    (term,) = model.observation_terms(batch)
    assert term.value.shape == (1, 4, 2, 4) and term.operator is not None
    z = torch.randn(3, 4, 8, 16)
    torch.testing.assert_close(term.operator(z), block_mean(z, 4))
    (cell_term,) = per_cell.observation_terms(batch)
    assert cell_term.value.shape == (1, 4, 8, 16) and cell_term.operator is None
    with pytest.raises(DambenchInputError, match="latent_block must be an integer >= 1"):
        create_model("slams_tiny", latent_block=0)


def test_input_checks_and_unfitted_refusal(make_batch, with_modalities):
    model = create_model("slams_small")
    with pytest.raises(DambenchInputError, match="not fitted: call fit"):
        model.analyse(with_modalities(make_batch(batch=2), [[1.0, 1.0]] * 2))
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


@pytest.mark.parametrize("size", ["small", "full"])
def test_configs_load_and_build(size, config_model):
    cfg, model = config_model(f"slams_{size}")
    assert cfg.train.ema_decay is not None and isinstance(model, SLAMS)


def test_corrector_is_a_setting_and_the_analysis_keeps_its_innovations(make_batch, with_modalities):
    """SLAMS takes ``corrector`` as SDA does (the old constructor refused it) and keeps the
    normalised innovations ``(member - y) / sigma_o`` of its decoded members per channel."""
    from baselines.layers.diffusion import normalised_innovations

    assert create_model("slams_tiny").sampler.corrector == "preconditioned"
    model = create_model("slams_tiny", corrector="langevin", steps=4).eval()
    assert model.sampler.corrector == "langevin"
    with pytest.raises(DambenchInputError, match="corrector='euler'"):
        create_model("slams_tiny", corrector="euler")
    torch.manual_seed(0)
    batch = with_modalities(make_batch(grid=(9, 16), batch=1), [[1.0]])
    analysis = model.analyse(batch, members=2, seed=0)
    expected = normalised_innovations(
        analysis.members, batch.observation, batch.mask, model.observation_std
    )
    assert model.innovations == expected and len(expected["rms"]) == 4
