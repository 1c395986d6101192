"""Tests of the neural-process baselines ConvCNP and FNP (baselines/models/{convcnp,fnp}.py) and
their shared layers (baselines/layers/{conv,gaussian}.py).

Every registered ``*_tiny`` and ``*_small`` variant: forward shapes at 121 x 240, finite values and
a positive std, finite gradients for every parameter, a loss that decreases on a fixed batch,
exact equivariance to rolls in longitude (sphere padding, no zero-padding seam), and acceptance of
``batch.modalities``. The full variants' parameter counts are checked on the ``meta`` device
against the counts measured for the upstream models (shared/reference/baselines.md section 9.1).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from baselines.config import load_run_config
from baselines.interface import DABatch
from baselines.layers.conv import PositiveConv2d, SphereConv2d, count_parameters
from baselines.layers.gaussian import gaussian_nll
from baselines.models.convcnp import ConvCNP
from baselines.models.fnp import (
    FNP,
    SpectralConv2d,
    default_channel_groups,
    double_fourier_sphere,
)
from baselines.registry import create_model, list_models, variant_defaults
from dambench.exceptions import DambenchInputError

CONFIGS = Path(__file__).resolve().parents[2] / "baselines" / "configs"
FAMILIES = ("convcnp", "fnp")
VARIANTS = [f"{family}_{size}" for family in FAMILIES for size in ("tiny", "small")]
TINY = [f"{family}_tiny" for family in FAMILIES]
FULL_GRID = (121, 240)
SMALL_GRID = (33, 64)


pytestmark = pytest.mark.usefixtures("one_thread")


def roll_batch(batch: DABatch, shift: int) -> DABatch:
    """Every field of ``batch`` rolled by ``shift`` columns in longitude."""
    return DABatch(
        *(batch.__dict__[name].roll(shift, -1) for name in ("background", "observation", "mask")),
        target=batch.target.roll(shift, -1),
    )


def config_kwargs(name: str) -> dict:
    """``model.kwargs`` of ``baselines/configs/NAME.yaml``, {} when there is no such config."""
    path = CONFIGS / f"{name}.yaml"
    return load_run_config(path).model.kwargs if path.exists() else {}


def build(name: str, channels: int = 4, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, in_chans=channels, **kwargs)


# --- every tiny and small variant ----------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_and_backward_at_121x240(name, make_batch, with_modalities):
    model = build(name, **config_kwargs(name))
    batch = with_modalities(make_batch(4, FULL_GRID, smooth=True), [[1.0, 1.0]])
    out = model(batch)
    assert out.mean.shape == out.std.shape == (1, 4, *FULL_GRID)
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.std).all()
    assert (out.std > 0).all()
    result = model.loss(batch)
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    assert set(result.diagnostics) >= {"nll", "mse", "mean_std"}
    assert all(isinstance(v, float) for v in result.diagnostics.values())
    result.loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_with_69_channels(name, make_batch):
    model = build(name, channels=69)
    if isinstance(model, FNP):
        assert model.channel_groups == [4, 13, 13, 13, 13, 13]
    batch = make_batch(69, SMALL_GRID, batch=2, smooth=True)
    out = model(batch)
    assert out.mean.shape == out.std.shape == (2, 69, *SMALL_GRID)
    assert torch.isfinite(out.mean).all() and (out.std > 0).all()
    model.loss(batch).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", VARIANTS)
def test_loss_decreases_on_a_fixed_batch(name, make_batch, overfit):
    # A learnable task: the truth is the background shifted by 0.5 everywhere; small variants
    # with the model settings their training config uses.
    model = build(name, **config_kwargs(name))
    task = make_batch(4, (17, 32), batch=2, seed=1, smooth=True)
    batch = DABatch(task.background, task.observation, task.mask, target=task.background + 0.5)
    losses = overfit(model, batch, steps=20, lr=1e-3, clip=1.0)
    assert min(losses[-3:]) < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", ["convcnp_small", "fnp_tiny", "fnp_small"])
def test_residual_models_start_at_the_background_and_leave_it(name, make_batch):
    # The increment's last layer starts at 0: the untrained analysis is the background exactly,
    # and one optimiser step moves it (the zeroed layer still receives gradients).
    model = build(name, **config_kwargs(name))
    batch = make_batch(4, SMALL_GRID, seed=3, smooth=True)
    with torch.no_grad():
        before = model(batch).mean
    torch.testing.assert_close(before, batch.background, atol=0.0, rtol=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(batch).loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = model(batch).mean
    assert (after - batch.background).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(name, {}) for name in VARIANTS] + [("fnp_tiny", {"fourier_domain": "torus"})],
)
def test_longitude_roll_equivariance(name, kwargs, make_batch):
    # Sphere padding and the (doubly) periodic FFT commute with a roll in longitude, so the
    # analysis of a rolled task is the rolled analysis, to float32 rounding.
    model = build(name, **kwargs).eval()
    batch = make_batch(4, SMALL_GRID, seed=2, smooth=True)
    shift = 13
    with torch.no_grad():
        out = model(batch)
        rolled = model(roll_batch(batch, shift))
    torch.testing.assert_close(rolled.mean, out.mean.roll(shift, -1), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rolled.std, out.std.roll(shift, -1), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_modalities_are_accepted_and_ignored(name, make_batch, with_modalities):
    model = build(name).eval()
    with_extra = with_modalities(make_batch(4, SMALL_GRID, smooth=True), [[1.0] * 3])
    without = DABatch(with_extra.background, with_extra.observation, with_extra.mask)
    with torch.no_grad():
        torch.testing.assert_close(model(with_extra).mean, model(without).mean)


@pytest.mark.parametrize("name", TINY)
def test_sample_shape(name, make_batch):
    model = build(name).eval()
    batch = make_batch(4, SMALL_GRID, batch=2, smooth=True)
    samples = model.sample(batch, 3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 2, 4, *SMALL_GRID)
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("name", TINY)
def test_bad_inputs_raise(name, make_batch):
    model = build(name)
    with pytest.raises(DambenchInputError, match="in_chans"):
        model(make_batch(5, SMALL_GRID, smooth=True))
    batch = make_batch(4, SMALL_GRID, smooth=True)
    with pytest.raises(DambenchInputError, match="mask"):
        model(DABatch(batch.background, batch.observation, batch.mask[:, :2]))
    with pytest.raises(DambenchInputError, match="target"):
        model.loss(DABatch(batch.background, batch.observation, batch.mask))


def test_fnp_spectral_conv_runs_under_cpu_autocast(make_batch):
    # torch.fft has no bfloat16 kernels: the spectral convolution must leave autocast.
    model = build("fnp_tiny")
    batch = make_batch(4, SMALL_GRID, smooth=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = model.loss(batch)
    assert torch.isfinite(result.loss)


# --- registry and sizes --------------------------------------------------------------------------


def test_registry():
    names = list_models()
    for family in FAMILIES:
        for size in ("tiny", "small", "full"):
            assert f"{family}_{size}" in names
    model = create_model("convcnp_tiny", in_chans=4)
    assert isinstance(model, ConvCNP) and model.in_chans == 4
    assert isinstance(create_model("fnp_tiny", in_chans=7, embed_dim=None), FNP)
    # variants are data: their defaults are readable and keyword arguments override them
    assert variant_defaults("convcnp_small")["embed_dim"] == 32
    assert create_model("convcnp_small", embed_dim=8).embed_dim == 8
    with pytest.raises(ValueError, match="registered"):
        create_model("convcnp_huge")


@pytest.mark.parametrize(
    ("name", "expected", "upstream"),
    [
        # exact counts of this implementation; "upstream" is the count measured for the upstream
        # models (baselines.md section 9.1): 16.5 M and 552.1 M at 69 channels.
        ("convcnp_full", 16_477_124, 16.5e6),
        ("fnp_full", 552_100_198, 552.1e6),
        ("convcnp_tiny", 14_196, None),
        ("convcnp_small", 66_404, 66e3),  # baselines.md 3.6: r = 32, 2 blocks, k9: 66 k
        ("fnp_tiny", 337_558, None),
        ("fnp_small", 2_445_190, None),
    ],
)
def test_parameter_counts_at_69_channels(name, expected, upstream):
    with torch.device("meta"):
        model = create_model(name, in_chans=69)
    n = count_parameters(model)
    assert n == expected
    if upstream is not None:
        assert abs(n - upstream) / upstream < 0.01


def test_tiny_sizes_at_4_channels():
    for name in TINY:
        n = count_parameters(build(name))
        assert 1_000 <= n <= 100_000, (name, n)


# --- layers --------------------------------------------------------------------------------------


def test_default_channel_groups(make_batch):
    assert default_channel_groups(69) == [4, 13, 13, 13, 13, 13]
    assert default_channel_groups(4) == [4]
    assert default_channel_groups(17) == [4, 13]
    assert default_channel_groups(7) == [7]
    with pytest.raises(ValueError, match="channel_groups"):
        FNP(in_chans=8, channel_groups=[4, 3], embed_dim=4, depth=0)
    model = FNP(
        in_chans=4,
        channel_groups=[1, 1, 2],
        embed_dim=4,
        depth=1,
        modes=2,
        kernel_size=3,
        setconv_kernel_size=3,
        decoder_depth=1,
    )
    out = model(make_batch(4, (9, 16), smooth=True))
    assert out.mean.shape == (1, 4, 9, 16)


def test_double_fourier_sphere_continues_smooth_fields():
    # x = sin(colatitude) cos(longitude) is smooth on the sphere; walking along a meridian past
    # the south pole (colatitude theta > pi) the same formula holds on the doubled circle, so the
    # extension of the grid values must equal sin(theta) cos(lon) for theta = k * pi / (H - 1),
    # k = 0 .. 2H - 3.
    n_lat, n_lon = 7, 12
    theta = torch.arange(n_lat, dtype=torch.float64) * math.pi / (n_lat - 1)
    lon = torch.arange(n_lon, dtype=torch.float64) * 2 * math.pi / n_lon
    field = torch.sin(theta)[:, None] * torch.cos(lon)[None, :]  # (H, W)
    theta_ext = torch.arange(2 * n_lat - 2, dtype=torch.float64) * math.pi / (n_lat - 1)
    expected = torch.sin(theta_ext)[:, None] * torch.cos(lon)[None, :]  # (2H - 2, W)
    torch.testing.assert_close(double_fourier_sphere(field), expected)


def test_spectral_conv_clips_modes_on_small_grids():
    conv = SpectralConv2d(3, 5, modes=12)
    out = conv(torch.randn(2, 3, 5, 8))
    assert out.shape == (2, 5, 5, 8) and torch.isfinite(out).all()


def test_spectral_conv_is_exact_for_the_modes_it_keeps():
    # With identity weights on every mode of a small torus, the spectral conv is the identity.
    conv = SpectralConv2d(1, 1, modes=(4, 5), fourier_domain="torus")
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[..., 0] = 1.0  # real part 1, imaginary 0
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(conv(x), x, atol=1e-5, rtol=1e-5)


def test_positive_setconv_reproduces_constant_fields():
    # The normalised convolution of a constant c observed anywhere is c wherever the density is
    # positive, whatever the (positive) kernel; the density is 0 where no observation is in reach.
    conv = PositiveConv2d(2, 5)
    with torch.no_grad():
        conv.weight.uniform_(-1, 1)  # |W| is used, so negative raw weights are fine
    mask = (torch.rand(1, 2, 11, 16, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    values = torch.full_like(mask, 3.0)
    density = conv(mask)
    signal = conv(values * mask) / density.clamp(min=1e-5)
    reached = density > 1e-3
    assert reached.any()
    torch.testing.assert_close(signal[reached], torch.full_like(signal[reached], 3.0))


def test_sphere_conv_wraps_longitude():
    # A 3 x 3 box sum at column 0 must include column W - 1 (no zero padding at the date line).
    conv = SphereConv2d(1, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.zeros(1, 1, 5, 8)
    x[..., 2, 7] = 1.0
    assert conv(x)[0, 0, 2, 0] == 1.0


def test_gaussian_nll_golden():
    # -log N(1 | 0, 2) = log 2 + 1 / 8 + log(2 pi) / 2
    value = gaussian_nll(torch.tensor(0.0), torch.tensor(2.0), torch.tensor(1.0))
    assert float(value) == pytest.approx(math.log(2) + 0.125 + 0.5 * math.log(2 * math.pi))


# --- CPU step time (printed, not asserted; run with -s to see it) --------------------------------


def test_cpu_step_time_small_variants(capsys, make_batch):
    # One thread (the fixture's setting): a second thread saves about a third of a step on a quiet
    # machine but stalls when the two cores are shared, so the one-thread time is the stable one.
    batch = make_batch(4, FULL_GRID, batch=1, seed=3, smooth=True)
    lines = []
    for name in ("convcnp_small", "fnp_small"):
        model = build(name)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        timings = []
        for _ in range(3):  # the first step warms up kernels and allocations
            start = time.perf_counter()
            loss = model.loss(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            timings.append(time.perf_counter() - start)
        lines.append(
            f"{name}: {count_parameters(model):,} params, forward+backward+AdamW step at "
            f"121 x 240, C=4, batch 1: {min(timings[1:]):.2f} s "
            f"({torch.get_num_threads()} threads; first step {timings[0]:.2f} s)"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_beta_nll_weights_the_mean_gradient_like_mse():
    # beta = 1: d loss / d mean = (mean - y) / n, the gradient of MSE / 2; beta = 0: plain NLL.
    from baselines.interface import Analysis
    from baselines.layers.gaussian import gaussian_loss

    gen = torch.Generator().manual_seed(4)
    target = torch.randn(2, 3, 5, 7, generator=gen)
    batch = DABatch(target, target, torch.ones_like(target), target=target)
    mean = torch.randn(target.shape, generator=gen, requires_grad=True)
    std = (0.1 + torch.rand(target.shape, generator=gen)).requires_grad_()
    plain = gaussian_loss(Analysis(mean=mean, std=std), batch)
    torch.testing.assert_close(plain.loss, gaussian_nll(mean, std, target).mean())
    gaussian_loss(Analysis(mean=mean, std=std), batch, beta=1.0).loss.backward()
    torch.testing.assert_close(mean.grad, (mean - target).detach() / target.numel())
    assert plain.diagnostics["nll"] == pytest.approx(float(plain.loss.detach()))
    with pytest.raises(ValueError, match="beta"):
        gaussian_loss(Analysis(mean=mean, std=std), batch, beta=2.0)


@pytest.mark.parametrize("name", ["convcnp_tiny", "fnp_tiny"])
def test_detached_std_does_not_train_the_encoders(name, make_batch):
    # With detach_std the std's loss reaches only the std decoder(s).
    model = build(name, detach_std=True)
    out = model(make_batch(4, SMALL_GRID, seed=5, smooth=True))
    out.std.sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert with_grad and all(".std_mlp." in n for n in with_grad), sorted(with_grad)
