"""Tests of Multi-VAE-Var's modality observation term (issue 17 item 6).

``multi_vaevar_*`` with ``modality_term`` (the default and every shipped config) adds
``M(x) = sum_m sum_cells (H_m(x) - y_m)^2 / (2 sigma_m^2)`` (learned operators
:class:`~baselines.layers.modality_operator.ModalityOperator`) to the solve's ``J``. Checked: the
converged analysis depends on the modality values and moves ``H_m(x)`` towards them, and with
``sigma_m = inf`` it is the host's bit for bit; ``J`` is the documented formula and its gradient
matches finite differences; cells without data never enter the term; the operators learn from the
training pairs' target (the NLL's minimiser over ``sigma_m`` is the residual's RMS) while
``analyse`` never reads a target; ``modality_term: false`` keeps the first guess alone.

On the code before this change every test fails: ``multi_vaevar_*`` had no ``modality_term``
and ``J`` did not depend on the modalities.
"""

from __future__ import annotations

import math

import pytest
import torch

from baselines.interface import DABatch
from baselines.layers.adapter import ADAPTER_ATTRIBUTE
from baselines.layers.modality_operator import ModalityData, ModalityOperator
from baselines.layers.variational import latent_cost
from baselines.models.multi import adapter_of, freeze_host
from baselines.registry import create_model
from dambench.exceptions import DambenchInputError

GRID = (13, 24)
LATENT = 2  # the tiny model's latent channels at 4 state channels
STREAMS = ["precip", "precip_gauges", "olr"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(modality_term: bool = True, **kwargs) -> torch.nn.Module:
    """``multi_vaevar_tiny`` on the three streams with a stand-in decoder that uses ``z``
    (a random 3 x 3 convolution: the tiny LGUnet's untrained decoder barely does), zero
    adapter heads (the first guess is 0) and, with the term, random operator output layers
    (a stand-in for trained ones), in eval mode."""
    torch.manual_seed(0)
    model = create_model(
        "multi_vaevar_tiny",
        img_size=GRID,
        modalities=STREAMS,
        modality_term=modality_term,
        bg_lambda=1.0,
        outer_steps=8,
        lbfgs_max_iter=20,
        **kwargs,
    )
    model.decoder = torch.nn.Conv2d(LATENT, 4, 3, padding=1)
    operator = model.modality_operator()
    if operator is not None:
        for layer in operator.operators:
            torch.nn.init.normal_(layer[-1].weight, std=0.5)
    return model.eval()


def _batch(seed: int = 0, *, shift: float = 0.0, batch: int = 1) -> DABatch:
    """A random task with sparse precipitation (~10 % of cells, per-cell mask), its gauge
    counts and dense OLR; ``shift`` is added to every modality value that has data."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 4, *GRID)
    target = torch.randn(shape, generator=gen)
    background = target + 0.5 * torch.randn(shape, generator=gen)
    mask = (torch.rand(shape, generator=gen) < 0.05).float()
    observation = (target + 0.1 * torch.randn(shape, generator=gen)) * mask
    cells = torch.rand((batch, 1, *GRID), generator=gen) < 0.1
    precip = torch.randn((batch, 1, *GRID), generator=gen)
    olr = torch.randn((batch, 1, *GRID), generator=gen)
    values = torch.cat([(precip + shift) * cells, cells * math.log(2.0), olr + shift], dim=1)
    present_cells = torch.cat([cells, torch.ones_like(cells), torch.ones_like(cells)], dim=1)
    return DABatch(
        background,
        observation,
        mask,
        target=target,
        modalities=values,
        modality_present=torch.ones(batch, 3),
        modality_mask=present_cells.float(),
    )


def _same_weights(source: torch.nn.Module, modality_term: bool) -> torch.nn.Module:
    """A model with ``source``'s weights (its operators too, when it has them)."""
    model = _model(modality_term)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    assert all(k.startswith(ADAPTER_ATTRIBUTE + ".extras.") for k in [*missing, *unexpected])
    return model.eval()


def _modality_misfit(model, batch: DABatch, analysis: torch.Tensor) -> float:
    operator = model.modality_operator()
    with torch.no_grad():
        return float(operator.misfit(operator.data(batch))(analysis))


# --- the term is in J --------------------------------------------------------------------------


def test_the_converged_analysis_depends_on_the_modalities_and_fits_them():
    model = _model()
    host = _same_weights(model, modality_term=False)  # the first guess alone: J is the host's
    batch, shifted = _batch(), _batch(shift=1.0)
    solutions = model.solve(batch)
    analysis = solutions[0].analysis
    other = model.solve(shifted)[0].analysis
    plain = host.solve(batch)[0]
    # converged: the last outer steps no longer change J
    assert abs(solutions[0].costs[-1] - solutions[0].costs[-2]) < 1e-4 * solutions[0].costs[-1]
    assert (analysis - other).abs().max() > 1e-2  # changing y_m changes the analysis
    assert torch.equal(host.solve(shifted)[0].analysis, plain.analysis)  # the old J did not see y_m
    # the term pulls H_m(x) towards y_m: its misfit is smaller than at the host's analysis
    assert _modality_misfit(model, batch, analysis) < 0.95 * _modality_misfit(
        model, batch, plain.analysis
    )


def test_with_infinite_modality_errors_the_analysis_is_the_hosts():
    model = _model()
    with torch.no_grad():
        model.modality_operator().log_sigma.fill_(math.inf)
    host = _same_weights(model, modality_term=False)
    for batch in (_batch(), _batch(shift=3.0)):
        assert torch.equal(model.analyse(batch).mean, host.analyse(batch).mean)


def test_the_cost_is_the_documented_formula_and_its_gradient_matches_finite_differences():
    torch.manual_seed(2)
    batch = _batch(seed=2)
    operator = ModalityOperator(4, STREAMS).double()
    for layer in operator.operators:
        torch.nn.init.normal_(layer[-1].weight, std=0.5)
    with torch.no_grad():
        operator.log_sigma.copy_(torch.tensor([-0.3, 0.4]))
    decoder = torch.nn.Conv2d(LATENT, 4, 3, padding=1).double()
    data = operator.data(batch.to("cpu", torch.float64))
    fields = [t.double() for t in (batch.background, batch.observation, batch.mask)]
    sigma, variance = torch.tensor([0.5, 1.0, 2.0, 0.7]), torch.tensor([0.01, 0.2, 0.05, 0.1])
    lam = 3.0
    cost = latent_cost(
        decoder, *fields, sigma.double(), variance.double(), bg_lambda=lam,
        modality_misfit=operator.misfit(data),
    )  # fmt: skip
    z = torch.randn((1, LATENT, *GRID), dtype=torch.float64, requires_grad=True)
    value, state = cost(z)
    # the formula, written out
    background, observation, mask = fields
    x = background + decoder(z) * sigma.double().view(1, -1, 1, 1)
    r = (operator(x) - data.values) * data.cells
    modality = (r.square() / (2 * torch.exp(2 * operator.log_sigma).view(1, -1, 1, 1))).sum()
    own = 0.5 * (mask * (x - observation).square() / variance.double().view(1, -1, 1, 1)).sum()
    expected = 0.5 * z.square().sum() + (own + modality) / lam
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(state, x, rtol=0.0, atol=0.0)
    assert float(modality.detach()) > 0.1 * float(own.detach())  # not negligible here
    (gradient,) = torch.autograd.grad(value, z)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        direction = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        h = 1e-5
        with torch.no_grad():
            numeric = (cost(z + h * direction)[0] - cost(z - h * direction)[0]) / (2 * h)
        analytic = (gradient * direction).sum()
        assert float(numeric) == pytest.approx(float(analytic), rel=1e-7)


# --- missing data ------------------------------------------------------------------------------


def test_cells_without_data_never_enter_the_term():
    operator = ModalityOperator(4, STREAMS)
    for layer in operator.operators:
        torch.nn.init.normal_(layer[-1].weight, std=0.5)
    batch = _batch(seed=4)
    data = operator.data(batch)
    assert data.cells[:, 0].float().mean() < 0.2 and bool(data.cells[:, 1].all())  # sparse, dense
    garbage = torch.where(data.cells, data.values, torch.full_like(data.values, math.nan))
    state = batch.background.clone().requires_grad_(True)
    values, gradients = [], []
    for values_at_missing in (data, ModalityData(garbage, data.cells)):
        term = operator.misfit(values_at_missing)(state)
        values.append(term.detach())
        gradients.append(torch.autograd.grad(term, state)[0])
    assert torch.equal(values[0], values[1]) and torch.equal(gradients[0], gradients[1])
    assert torch.isfinite(values[0]) and torch.isfinite(gradients[0]).all()
    # a cell absent in the store (modality_mask 0) or a modality absent in its sample: the
    # analysis does not see what the batch carries there
    model = _model()
    missing = batch.modality_mask[:, :1] == 0
    noisy = batch.modalities.clone()
    noisy[:, :1][missing] = 1e3
    changed = DABatch(**{**batch.__dict__, "modalities": noisy})
    assert torch.equal(model.analyse(changed).mean, model.analyse(batch).mean)
    nothing = DABatch(**{**batch.__dict__, "modality_present": torch.zeros(1, 3)})
    host = _same_weights(model, modality_term=False)
    assert torch.equal(model.analyse(nothing).mean, host.analyse(nothing).mean)


# --- training: targets in the loss, never in analyse ------------------------------------------


def test_the_operator_trains_on_the_target_and_analyse_never_reads_it():
    model = _model().train()
    batch = _batch(seed=5, batch=2)
    result = model.loss(batch)
    assert {"adapter_first_guess", "modality_nll"} <= set(result.diagnostics)
    operator = model.modality_operator()
    nll = model._modality_nll(operator, batch)
    nll.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in operator.parameters())
    assert all(p.grad is None for p in (*model.encoder.parameters(), *model.decoder.parameters()))
    other = DABatch(**{**batch.__dict__, "target": batch.target + 1.0})
    assert float(model._modality_nll(operator, other)) != float(nll)  # the target is used
    model.eval()
    blind = DABatch(**{**batch.__dict__, "target": torch.full_like(batch.target, math.nan)})
    assert torch.equal(model.analyse(blind).mean, model.analyse(batch).mean)
    no_target = DABatch(**{**batch.__dict__, "target": None})
    assert torch.equal(model.analyse(no_target).mean, model.analyse(batch).mean)


def test_the_nll_fits_the_operator_and_its_error_to_the_training_pairs():
    """y = 0.8 x*_0 - 0.3 x*_2 + 0.25 noise at the cells with data: fitting H and sigma on the
    NLL of the targets gives sigma = the RMS of the fitted residual (the NLL's minimiser over
    sigma; below 0.25 by what H overfits), and H predicts y on pairs it never saw."""

    def pairs(seed: int) -> tuple[torch.Tensor, ModalityData, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        target = torch.randn((16, 4, *GRID), generator=gen)
        truth = 0.8 * target[:, :1] - 0.3 * target[:, 2:3]
        cells = torch.rand((16, 1, *GRID), generator=gen) < 0.3
        precip = truth + 0.25 * torch.randn(truth.shape, generator=gen)
        return target, ModalityData(precip * cells, cells), truth

    torch.manual_seed(6)
    target, data, _ = pairs(6)
    operator = ModalityOperator(4, ["precip"], hidden=4)
    optimiser = torch.optim.Adam(operator.parameters(), lr=1e-2)
    for _ in range(600):
        optimiser.zero_grad()
        operator.nll(target, data).backward()
        optimiser.step()
    sigma = float(torch.exp(operator.log_sigma.detach()))
    with torch.no_grad():
        fitted = (operator(target) - data.values)[data.cells].square().mean().sqrt()
        unseen, held_out, truth = pairs(7)
        error = (operator(unseen) - held_out.values)[held_out.cells].square().mean().sqrt()
        spread = held_out.values[held_out.cells].std()
    assert sigma == pytest.approx(float(fitted), rel=0.01)
    assert 0.15 < sigma < 0.25
    assert float(error) < 0.35 < 0.4 * float(spread)  # noise 0.25 plus what H misses


# --- options, configs, refusals ----------------------------------------------------------------


def test_the_first_guess_alone_stays_selectable_and_the_settings_say_which():
    plain = create_model("multi_vaevar_tiny", modalities=STREAMS, modality_term=False)
    assert plain.modality_operator() is None and len(adapter_of(plain).extras) == 0
    assert plain.analysis_settings()["modality_term"] is False
    model = _model()
    settings = model.analysis_settings()
    assert settings["modality_term"] is True
    assert set(settings["modality_sigma"]) == {"precip", "olr"}  # gauge counts observe nothing
    assert "modality_term" not in create_model("vaevar_tiny").analysis_settings()


def test_a_host_checkpoint_loads_and_a_frozen_host_leaves_the_operator_trainable():
    host = create_model("vaevar_tiny", img_size=GRID)
    model = create_model("multi_vaevar_tiny", img_size=GRID, modalities=STREAMS)
    missing, unexpected = model.load_state_dict(host.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(ADAPTER_ATTRIBUTE + ".") for k in missing)
    assert any(".extras.modality_operator." in k for k in missing)
    freeze_host(model)
    assert all(p.requires_grad for p in model.modality_operator().parameters())
    assert not any(p.requires_grad for p in model.decoder.parameters())


@pytest.mark.parametrize("size", ["small", "full"])
def test_the_shipped_multi_configs_use_the_modality_term(size, config_model):
    cfg, model = config_model(f"multi_vaevar_{size}")
    assert cfg.model.kwargs["modality_term"] is True
    assert model.modality_operator() is not None


def test_bad_options_are_refused_naming_the_fix():
    with pytest.raises(DambenchInputError, match=r"observed modality .*modality_term: false"):
        create_model("multi_vaevar_tiny", modalities=["precip_gauges"])
    with pytest.raises(DambenchInputError, match="modality_term must be true or false"):
        create_model("multi_vaevar_tiny", modalities=STREAMS, modality_term="yes")
    model = _model()
    batch = _batch()
    fewer = DABatch(
        **{
            **batch.__dict__,
            "modalities": batch.modalities[:, :2],
            "modality_present": batch.modality_present[:, :2],
            "modality_mask": batch.modality_mask[:, :2],
        }
    )
    with pytest.raises(DambenchInputError, match="built for 3 modalities"):
        model.modality_operator().data(fewer)
