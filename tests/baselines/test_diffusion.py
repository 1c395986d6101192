"""The score-based prior and sampler shared by SDA and SLAMS (baselines/layers/diffusion.py) and
the time-conditioned UNet (baselines/layers/unet.py).

The sampler is checked where the answer is known in closed form: a Gaussian prior whose exact
noise predictor replaces the network, observed linearly with Gaussian noise, has a Gaussian
posterior (mean and covariance below). Guided samples must match it at the default settings and
get closer with more steps; unguided samples must have the prior's statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from baselines.layers.conv import count_parameters
from baselines.layers.covariance import check_train_split
from baselines.layers.diffusion import (
    GaussianObservation,
    SamplerDivergedError,
    SamplerSettings,
    VPSchedule,
    background_error_std,
    denoised,
    denoising_loss,
    fixed_denoising_loss,
    guided_eps,
    member_generator,
    observation_error_std,
    sample,
    sample_members,
    standard_normal_eps,
)
from baselines.layers.unet import ScoreUNet, channel_standardise
from dambench import schema
from dambench.exceptions import DambenchError, DambenchInputError

SCHEDULE = VPSchedule()


pytestmark = pytest.mark.usefixtures("one_thread")


# --- a linear-Gaussian problem with a closed-form posterior -------------------------------------


class GaussianProblem:
    """Prior N(m, S) on a ring of D points (squared-exponential correlations, length 3 points),
    observations of 4 points with std ``sigma_y``.

    Exact noise predictor: x_t ~ N(mu m, mu**2 S + sigma**2 I), so
    eps(x_t) = -sigma grad log p(x_t) = sigma (mu**2 S + sigma**2 I)^-1 (x_t - mu m).
    Posterior: P = (S^-1 + A^T A / sigma_y**2)^-1, mean = P (S^-1 m + A^T y / sigma_y**2).
    """

    def __init__(
        self,
        sigma_y: float = 0.1,
        size: int = 32,
        observed: tuple[int, ...] = (2, 9, 17, 25),
        y: tuple[float, ...] = (1.5, -1.0, 0.8, 2.0),
    ) -> None:
        idx = torch.arange(size, dtype=torch.float64)
        lag = (idx[:, None] - idx[None, :]).abs()
        lag = torch.minimum(lag, size - lag)
        self.prior_cov = torch.exp(-0.5 * (lag / 3.0) ** 2) + 1e-3 * torch.eye(size)
        self.prior_mean = 0.5 * torch.sin(2 * math.pi * idx / size)
        self.values, self.vectors = torch.linalg.eigh(self.prior_cov)
        self.observed = torch.tensor(observed)
        self.y = torch.tensor(y, dtype=torch.float64)
        self.sigma_y = sigma_y
        self.mask = torch.zeros(size)
        self.mask[self.observed] = 1.0
        self.y_full = torch.zeros(size)
        self.y_full[self.observed] = self.y.float()
        operator = torch.zeros(len(self.observed), size, dtype=torch.float64)
        operator[range(len(self.observed)), self.observed] = 1.0
        precision = torch.linalg.inv(self.prior_cov) + operator.T @ operator / sigma_y**2
        self.post_cov = torch.linalg.inv(precision)
        self.post_mean = self.post_cov @ (
            torch.linalg.solve(self.prior_cov, self.prior_mean) + operator.T @ self.y / sigma_y**2
        )

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mu, sigma = float(SCHEDULE.mu(t)), float(SCHEDULE.sigma(t))
        rotated = (x.double() - mu * self.prior_mean) @ self.vectors  # (N, D) in the eigenbasis
        return (sigma * (rotated / (mu**2 * self.values + sigma**2)) @ self.vectors.T).to(x)

    def term(self) -> GaussianObservation:
        return GaussianObservation(self.y_full[None], self.sigma_y, self.mask[None])

    def prior_misfit(self) -> float:
        """RMS of (prior mean - y) at the observed points."""
        return float((self.prior_mean[self.observed] - self.y).square().mean().sqrt())

    def draw(self, n: int, settings: SamplerSettings, guided: bool = True, seed: int = 0):
        generators = [torch.Generator().manual_seed(seed)]
        terms = [self.term()] if guided else []
        return sample(self.eps, (n, self.mask.numel()), generators, SCHEDULE, settings, terms)


def _mean_error(problem: GaussianProblem, samples: torch.Tensor) -> float:
    """||ensemble mean - posterior mean|| / ||posterior mean - prior mean||."""
    error = samples.double().mean(0) - problem.post_mean
    return float(error.norm() / (problem.post_mean - problem.prior_mean).norm())


def test_schedule_end_points_and_variance_identity():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    mu, sigma = SCHEDULE.mu(t), SCHEDULE.sigma(t)
    eta = SCHEDULE.eta
    assert float(mu[0]) == pytest.approx(1.0, abs=1e-15) and float(mu[-1]) == pytest.approx(eta)
    assert float(sigma[0]) == pytest.approx(eta) and float(sigma[-1]) == pytest.approx(1.0)
    assert bool((mu.diff() < 0).all()) and bool((sigma.diff() > 0).all())
    torch.testing.assert_close(mu**2 + sigma**2, torch.full_like(t, 1 + eta**2))
    with pytest.raises(DambenchInputError, match="0 < eta < 1"):
        VPSchedule(0.0)


def test_denoising_loss_equals_the_gaussian_closed_form():
    # Data x ~ N(0, I) and the exact predictor sigma x_t / (mu^2 + sigma^2): the residual is
    # (mu^2 eps - sigma mu x) / (mu^2 + sigma^2), of variance mu^2 / (mu^2 + sigma^2) at time t.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 500, generator=gen, dtype=torch.float64)
    t = torch.full((400,), 0.5, dtype=torch.float64)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    loss = denoising_loss(lambda z, s: standard_normal_eps(z, s, SCHEDULE), x, SCHEDULE, t=t,
                          noise=noise)  # fmt: skip
    mu, sigma = float(SCHEDULE.mu(0.5)), float(SCHEDULE.sigma(0.5))
    assert float(loss) == pytest.approx(mu**2 / (mu**2 + sigma**2), rel=0.01)


def test_fixed_denoising_loss_is_deterministic_and_stratified():
    x = torch.randn(3, 2, 5, 8)
    calls = []

    def eps_fn(z, t):
        calls.append(t.clone())
        return 0.3 * z

    first = fixed_denoising_loss(eps_fn, x, SCHEDULE, times=4, seed=7)
    second = fixed_denoising_loss(eps_fn, x, SCHEDULE, times=4, seed=7)
    assert float(first) == float(second)
    torch.testing.assert_close(
        calls[0], torch.tensor([0.125, 0.375, 0.625, 0.875]).repeat_interleave(3)
    )
    assert float(fixed_denoising_loss(eps_fn, x, SCHEDULE, times=4, seed=8)) != float(first)


def test_guided_eps_matches_the_analytic_gradient():
    # Exact Gaussian prior: x0_hat = (x - sigma eps(x)) / mu = M x + c with
    # M = (I - sigma^2 K^-1) / mu, K = mu^2 S + sigma^2 I; log p(y|x) = -1/2 sum m (y - x0)^2 / v,
    # v = sigma_y^2 + gamma (sigma/mu)^2, so grad = M^T (m (y - x0) / v).
    problem = GaussianProblem(sigma_y=0.2, size=16, observed=(1, 5, 11), y=(1.0, -0.5, 2.0))
    x = torch.randn(3, 16, dtype=torch.float64)
    t, gamma = torch.tensor(0.4, dtype=torch.float64), 0.05
    term = GaussianObservation(problem.y_full[None].double(), 0.2, problem.mask[None].double())
    got = guided_eps(problem.eps, x, t, SCHEDULE, [term], gamma)
    mu, sigma = float(SCHEDULE.mu(t)), float(SCHEDULE.sigma(t))
    k = mu**2 * problem.prior_cov + sigma**2 * torch.eye(16, dtype=torch.float64)
    m = (torch.eye(16, dtype=torch.float64) - sigma**2 * torch.linalg.inv(k)) / mu
    x0 = denoised(x, problem.eps(x, t), t, SCHEDULE)
    v = 0.2**2 + gamma * (sigma / mu) ** 2
    grad = (problem.mask.double() * (problem.y_full.double() - x0) / v) @ m  # rows: M^T r
    torch.testing.assert_close(got, problem.eps(x, t) - sigma * grad)
    assert not got.requires_grad


def test_guided_samples_match_the_closed_form_posterior_at_default_settings():
    problem = GaussianProblem(sigma_y=0.1)
    samples = problem.draw(1000, SamplerSettings())  # 256 steps, 1 corrector, tau 0.5, gamma 1e-2
    # A smooth prior (not N(0, 1)): the preconditioner's N(0, 1) variance is only a cap.
    # Measured 0.043 (the paper's corrector 0.060; sampling noise alone ~0.03); the prior mean
    # would give 1.0 and the predictor without corrector 0.24.
    assert _mean_error(problem, samples) < 0.1
    ratio = samples.double().var(0) / problem.post_cov.diagonal()
    # Per-point variance ratio: sampling error sqrt(2/1000) = 0.045 per point, 32 points.
    assert float((ratio - 1).abs().max()) < 0.25
    assert float((ratio - 1).abs().mean()) < 0.1


def test_more_steps_get_closer_to_the_posterior():
    problem = GaussianProblem(sigma_y=0.1)
    errors = [_mean_error(problem, problem.draw(1000, SamplerSettings(steps=s))) for s in (32, 256)]
    assert errors[1] < 0.6 * errors[0], errors  # measured 0.144 -> 0.060


def test_unguided_samples_have_the_prior_statistics():
    problem = GaussianProblem()
    samples = problem.draw(2000, SamplerSettings(steps=64), guided=False).double()
    # Sampling error of the mean: 1/sqrt(2000) = 0.022 per point; of the covariance entries
    # about sqrt(2 / 2000) = 0.032.
    assert float((samples.mean(0) - problem.prior_mean).abs().max()) < 0.1
    error = torch.cov(samples.T) - problem.prior_cov
    assert float(error.norm() / problem.prior_cov.norm()) < 0.08


def test_guided_samples_move_to_the_observations_as_gamma_and_sigma_y_fall():
    def misfit(sigma_y: float, gamma: float) -> float:
        problem = GaussianProblem(sigma_y=sigma_y)
        samples = problem.draw(300, SamplerSettings(steps=64, gamma=gamma))
        return float((samples[:, problem.observed].double() - problem.y).square().mean().sqrt())

    by_sigma = [misfit(s, 1e-2) for s in (0.3, 0.1, 0.03)]  # measured 0.28, 0.09, 0.06
    by_gamma = [misfit(0.1, g) for g in (1.0, 0.1, 1e-2)]  # measured 0.20, 0.094, 0.090
    assert by_sigma[0] > by_sigma[1] > by_sigma[2], by_sigma
    assert by_gamma[0] > by_gamma[1] >= 0.97 * by_gamma[2], by_gamma
    assert by_gamma[0] > 1.5 * by_gamma[2]
    assert by_sigma[2] < 0.1 * GaussianProblem().prior_misfit()


def test_members_do_not_depend_on_the_member_batch():
    terms = [
        GaussianObservation(torch.ones(2, 3, 4, 6), 0.3, (torch.rand(2, 3, 4, 6) < 0.3).float())
    ]
    settings = SamplerSettings(steps=8)

    def draw(generators):
        n = len(generators)
        return sample(lambda x, t: standard_normal_eps(x, t, SCHEDULE), (2, 3, 4, 6), generators,
                      SCHEDULE, settings, [term.repeat(n) for term in terms])  # fmt: skip

    together = sample_members(draw, 5, 5, seed=11, device="cpu")
    one_by_one = sample_members(draw, 5, 1, seed=11, device="cpu")
    in_twos = sample_members(draw, 5, 2, seed=11, device="cpu")
    assert together.shape == (2, 5, 3, 4, 6)
    torch.testing.assert_close(one_by_one, together, rtol=0, atol=1e-6)
    torch.testing.assert_close(in_twos, together, rtol=0, atol=1e-6)
    first_three = sample_members(draw, 3, 3, seed=11, device="cpu")
    torch.testing.assert_close(first_three, together[:, :3], rtol=0, atol=1e-6)
    other_seed = sample_members(draw, 5, 5, seed=12, device="cpu")
    assert not torch.allclose(other_seed, together)
    a, b = member_generator(3, 0), member_generator(3, 1)
    assert not torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    with pytest.raises(DambenchInputError, match="seed and member must be >= 0"):
        member_generator(-1, 0)


def test_divergence_is_refused_loudly():
    # sigma_y = 0.01 with 16 steps and gamma = 1e-3 is far beyond the stable step size.
    problem = GaussianProblem(sigma_y=0.01)
    x = problem.draw(50, SamplerSettings(steps=16, gamma=1e-3))
    from baselines.layers.diffusion import check_samples

    with pytest.raises(SamplerDivergedError, match="diverged.*steps=16") as info:
        check_samples(x, SamplerSettings(steps=16, gamma=1e-3), "test")
    assert isinstance(info.value, DambenchError) and isinstance(info.value, RuntimeError)
    check_samples(problem.draw(50, SamplerSettings(steps=16, gamma=1e-3), guided=False),
                  SamplerSettings(), "test")  # fmt: skip


def test_sampler_settings_are_validated_and_count_evaluations():
    assert SamplerSettings().network_evaluations() == 512
    assert SamplerSettings(steps=32, corrections=0).network_evaluations() == 32
    assert SamplerSettings().corrector == "preconditioned"
    with pytest.raises(DambenchInputError, match="steps >= 1"):
        SamplerSettings(steps=0)
    with pytest.raises(DambenchInputError, match="choose from"):
        SamplerSettings(corrector="euler")
    with pytest.raises(DambenchInputError, match="needs 0 < tau < 2"):
        SamplerSettings(tau=2.5)
    SamplerSettings(tau=2.5, corrector="langevin")  # the paper's SNR has no upper bound


def test_the_paper_corrector_stays_selectable_and_matches_at_its_settings():
    problem = GaussianProblem(sigma_y=0.1)
    samples = problem.draw(1000, SamplerSettings(corrector="langevin"))
    assert _mean_error(problem, samples) < 0.1  # measured 0.060


def test_term_precision_is_the_diagonal_curvature_bound():
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    term = GaussianObservation(torch.zeros(1, 3), 0.5, mask)
    like, extra = torch.zeros(2, 3), torch.tensor([0.0, 0.75])
    torch.testing.assert_close(term.precision(like, extra), torch.tensor([[4.0, 0, 4], [1, 0, 1]]))
    pooled = GaussianObservation(torch.zeros(1, 1), 0.5, operator=lambda x: x.mean(-1, True))
    assert torch.equal(pooled.precision(like, extra), torch.zeros(2, 3))  # unknown: nothing
    known = GaussianObservation(torch.zeros(1, 1), 0.5, operator=lambda x: x.mean(-1, True),
                                curvature=1 / 3)  # fmt: skip
    torch.testing.assert_close(known.precision(like, extra)[0], torch.full((3,), 4 / 3))
    assert known.repeat(2).curvature == 1 / 3


def test_normalised_innovations_per_channel():
    from baselines.layers.diffusion import normalised_innovations

    observation = torch.zeros(1, 2, 1, 4)
    mask = torch.tensor([[[[1.0, 1, 0, 0]], [[0.0, 0, 0, 0]]]])
    members = torch.zeros(1, 2, 2, 1, 4)
    members[0, 0, 0, 0] = torch.tensor([0.6, 0.0, 9.0, 9.0])  # unobserved 9s do not count
    members[0, 1, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    out = normalised_innovations(members, observation, mask, torch.tensor([0.1, 1.0]))
    assert out["rms"][0] == pytest.approx(3.0)  # sqrt((36 + 0 + 0 + 0) / 4)
    assert out["beyond_5"][0] == pytest.approx(0.25) and out["count"] == [2.0, 0.0]
    assert math.isnan(out["rms"][1])


# --- the UNet ------------------------------------------------------------------------------------


def _unet_parameters(c: int, hidden: list[int], blocks: list[int], emb: int = 64) -> int:
    """Independent count: a 3x3 conv a->b has 9ab + b parameters; a block at width w has two
    w->w convs and Linear(emb, w); each level has its blocks twice (descent and ascent); levels
    are joined by a stride-2 conv down and a conv up; head c->h0, tail h0->c; time MLP
    32->256->emb."""

    def conv(a, b):
        return 9 * a * b + b

    total = conv(c, hidden[0]) + conv(hidden[0], c) + (32 * 256 + 256) + (256 * emb + emb)
    for w, n in zip(hidden, blocks, strict=True):
        total += 2 * n * (2 * conv(w, w) + emb * w + w)
    for a, b in zip(hidden[:-1], hidden[1:], strict=True):
        total += conv(a, b) + conv(b, a)
    return total


def test_unet_parameter_counts_match_the_upstream_sizes():
    with torch.device("meta"):
        sda = ScoreUNet(69, hidden_channels=(96, 192, 384), hidden_blocks=(3, 3, 3))
        slams = ScoreUNet(25, hidden_channels=(32, 64, 128), layer_norm=False)
    assert count_parameters(sda) == _unet_parameters(69, [96, 192, 384], [3, 3, 3]) == 22_976_069
    # 23.0 M and 2.64 M measured with the upstream code (baselines.md section 9.1)
    assert count_parameters(slams) == _unet_parameters(25, [32, 64, 128], [3, 3, 3]) == 2_636_441


@pytest.mark.parametrize("grid", [(25, 48), (121, 240), (24, 48)])
def test_unet_keeps_any_grid_and_is_equivariant_to_rolls_in_longitude(grid):
    torch.manual_seed(0)
    net = ScoreUNet(3, hidden_channels=(4, 8, 8), hidden_blocks=(1, 1, 1), embed_dim=8)
    x = torch.randn(2, 3, *grid)
    out = net(x, torch.tensor([0.2, 0.7]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # Three levels: the strided grid is aligned for rolls by multiples of 4 columns.
    torch.testing.assert_close(net(x.roll(8, -1), torch.tensor([0.2, 0.7])), out.roll(8, -1),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    with pytest.raises(DambenchInputError, match=r"expects \(N, 3, H, W\)"):
        net(torch.randn(1, 4, *grid), 0.5)


def test_unet_time_conditioning_and_zero_tail():
    torch.manual_seed(0)
    net = ScoreUNet(2, hidden_channels=(4, 8), hidden_blocks=(1, 1), embed_dim=8)
    x = torch.randn(1, 2, 8, 16)
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))
    zero = ScoreUNet(2, hidden_channels=(4, 8), hidden_blocks=(1, 1), zero_init_tail=True)
    assert torch.equal(zero(x, 0.3), torch.zeros_like(x))


def test_channel_standardise_uses_the_unbiased_variance():
    x = torch.randn(2, 5, 3, 4) * 3 + 1
    y = channel_standardise(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=True), torch.ones(2, 3, 4), atol=1e-3, rtol=0)


# --- error statistics on the train split ---------------------------------------------------------


def _split(n_time: int = 3, split: str = "train", noise="default") -> tuple[xr.Dataset, xr.Dataset]:
    rng = np.random.default_rng(1)
    channels = ["u10", "t2m"]
    target = rng.standard_normal((n_time, 2, 5, 8))
    background = target + np.array([2.0, 0.5])[None, :, None, None] * rng.standard_normal(
        target.shape
    )
    ds = xr.Dataset(
        {
            "target": (schema.CANONICAL_DIMS, target),
            "background": (schema.CANONICAL_DIMS, background),
        },
        coords={schema.CHANNEL: channels, "split": (schema.TIME, [split] * n_time)},
        attrs={"observation": f'{{"noise": {noise!r}}}'.replace("'", '"')},
    )
    stats = xr.Dataset({"std": (schema.CHANNEL, [4.0, 10.0])}, coords={schema.CHANNEL: channels})
    return ds, stats


def test_background_error_std_is_the_normalised_rms():
    ds, stats = _split()
    expected = np.sqrt(
        (((ds.background - ds.target).values / np.array([4.0, 10.0])[:, None, None]) ** 2).mean(
            axis=(0, 2, 3)
        )
    )
    np.testing.assert_allclose(background_error_std(ds, stats), expected, rtol=1e-12)
    same = ds.assign(background=ds.target)
    with pytest.raises(DambenchInputError, match="finite and > 0"):
        background_error_std(same, stats)


def test_observation_error_std_is_the_recorded_noise_over_std_with_a_floor():
    ds, stats = _split()
    # defaults: u10 1.5 m/s, t2m 1 K (dambench.schema.OBSERVATION_ERROR_STD)
    expected = [
        schema.OBSERVATION_ERROR_STD["u10"] / 4.0,
        schema.OBSERVATION_ERROR_STD["t2m"] / 10.0,
    ]
    np.testing.assert_allclose(observation_error_std(ds, stats, 1e-3), expected)
    np.testing.assert_allclose(observation_error_std(ds, stats, 0.2), [0.375, 0.2])
    ds2, _ = _split(noise=2.0)
    np.testing.assert_allclose(observation_error_std(ds2, stats, 1e-3), [0.5, 0.2])


def test_observation_error_std_refuses_an_unrecorded_noise():
    """A dataset that does not record its observation noise readably is refused, never given
    the default noise (sigma_o, hence the guidance, would be silently wrong)."""
    ds, stats = _split()
    bare = ds.copy()
    bare.attrs = {}
    unreadable = [ds.assign_attrs(observation=v) for v in ("not json", '{"noise": "loud"}')]
    for dataset in (bare, *unreadable):
        with pytest.raises(DambenchInputError, match=r"attrs\['observation'\]"):
            observation_error_std(dataset, stats, 1e-3)


def test_fit_statistics_refuse_other_splits():
    ds, _ = _split(split="test")
    with pytest.raises(DambenchInputError, match=r"train split only.*\['test'\]"):
        check_train_split(ds, "SDA")
    train, _ = _split()
    assert check_train_split(train, "SDA", in_chans=2) == ["u10", "t2m"]
    with pytest.raises(DambenchInputError, match="SDA has 4 channels; the dataset has 2"):
        check_train_split(train, "SDA", in_chans=4)
    with pytest.raises(DambenchInputError, match="SDA.fit needs 'target'"):
        check_train_split(train.drop_vars("target"), "SDA")
