"""The baseline contract, checked on every registered ``*_tiny`` model (as timm tests every model).

Models are found through the registry, so a model file added later is tested without editing
this file. Each model is driven only through its :class:`~baselines.interface.ModelInfo`:

- the info is present and valid, and agrees with the model (parameters iff trainable, ``fit``
  iff needs_fit, ``_small`` and ``_full`` variants registered beside ``_tiny``);
- ``needs_fit`` models are fitted on a tiny synthetic train split first, and what the fit
  estimated travels in ``state_dict`` (so checkpoints carry it);
- trainable models: ``loss`` is a finite scalar and one backward pass reaches the parameters
  with finite gradients; ``forward`` returns an Analysis;
- ``analyse`` gives a (B, C, H, W) mean for every output kind, a positive std for Gaussian
  models, members (B, N, C, H, W) for ensemble models and for Gaussian models with
  ``members=N`` (reproducible from ``seed``), and refuses ``members`` for deterministic ones;
- the grad-mode contract: ``analyse`` gives the same result under an outer ``torch.no_grad()``
  (models that need gradients turn them on inside), returns tensors without a graph and leaves
  the parameters' gradients untouched.

Grid: 25 x 48 (7.5 degrees, both poles), batch 2, one thread. Models whose constructor takes
sampler settings are built with :data:`CHEAP_SAMPLER` (the contract does not depend on the step
count; their own tests check the sampler at their variants' settings).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from baselines.interface import OUTPUT_KINDS, Analysis, DABatch, ModelInfo
from baselines.layers.covariance import equiangular_grid
from baselines.models.multi import adapter_of
from baselines.registry import create_model, list_models, model_info

TINY = list_models("*_tiny")
SHAPE = (25, 48)
BATCH = 2
MEMBERS = 3
CHEAP_SAMPLER = {"steps": 4, "corrections": 0}
"""Sampler settings of the models that take them (SDA, SLAMS): 4 network evaluations per
member instead of the tiny variants' 16."""


@pytest.fixture(autouse=True)
def one_thread():
    """One thread per test: these tensors are small, and a second OpenMP thread stalls on its
    barriers when another process shares the two cores (as in test_models.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _create(name: str) -> torch.nn.Module:
    """``create_model(name)``, with :data:`CHEAP_SAMPLER` where the model's class takes it."""
    model = create_model(name)
    taken = inspect.signature(type(model)).parameters
    cheap = {key: value for key, value in CHEAP_SAMPLER.items() if key in taken}
    return create_model(name, **cheap) if cheap else model


def _in_chans(model: torch.nn.Module) -> int:
    return getattr(model, "in_chans", None) or 4


def _modality_count(model: torch.nn.Module) -> int:
    """M the model takes: its ``modality_chans`` (SLAMS), else its adapter's names, else 1."""
    count = getattr(model, "modality_chans", None)
    adapter = adapter_of(model)
    if count is None and adapter is not None:
        count = len(adapter.modalities)
    return 1 if count is None else int(count)


def _batch(in_chans: int, seed: int = 0, modalities: int = 1) -> DABatch:
    """Normalised random fields with 5 % observed points, ``modalities`` present modalities and
    the window's coordinates."""
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, in_chans, *SHAPE)
    background = torch.randn(shape, generator=gen)
    target = background + 0.5 * torch.randn(shape, generator=gen)
    mask = (torch.rand(shape, generator=gen) < 0.05).float()
    latitude, longitude = equiangular_grid(*SHAPE)
    return DABatch(
        background=background,
        observation=(target + 0.05 * torch.randn(shape, generator=gen)) * mask,
        mask=mask,
        target=target,
        modalities=torch.randn((BATCH, modalities, *SHAPE), generator=gen),
        modality_present=torch.ones(BATCH, modalities),
        latitude=torch.as_tensor(latitude, dtype=torch.float32).expand(BATCH, -1),
        longitude=torch.as_tensor(longitude, dtype=torch.float32).expand(BATCH, -1),
    )


@pytest.fixture
def ready(train_split):
    """``ready(name)``: the model (fitted first on a tiny train split with channel std 1..C when
    its info says so) in eval mode, and a batch for it."""

    def make(name: str) -> tuple[torch.nn.Module, DABatch]:
        torch.manual_seed(0)
        model = _create(name)
        if model.info.needs_fit:
            chans = _in_chans(model)
            split = train_split(chans, SHAPE, scale=np.arange(1.0, chans + 1))
            assert model.fit(*split) in (None, model)
        return model.eval(), _batch(_in_chans(model), modalities=_modality_count(model))

    return make


def _assert_no_graph(analysis: Analysis) -> None:
    for field in ("mean", "std", "members"):
        value = getattr(analysis, field)
        assert value is None or not value.requires_grad, f"analysis.{field} carries a graph"


def test_tiny_models_are_registered():
    assert {"background_tiny", "threedvar_tiny", "convcnp_tiny", "fnp_tiny"} <= set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_model_info_is_valid_and_agrees_with_the_model(name):
    info = model_info(name)
    assert isinstance(info, ModelInfo) and info.output in OUTPUT_KINDS
    for text in (info.paper, info.code, info.code_licence):
        assert isinstance(text, str) and text.strip()
    assert info.adapter_entry is None or isinstance(info.adapter_entry, str)
    base = name.removesuffix("_tiny")
    for size in ("small", "full"):
        assert model_info(f"{base}_{size}").output == info.output, f"{base}_{size} missing"
    model = create_model(name)
    assert model.info is info and model.model_name == name
    trainable = any(p.requires_grad for p in model.parameters())
    assert trainable == info.trainable, "ModelInfo.trainable must say whether it has parameters"
    assert callable(getattr(model, "fit", None)) == info.needs_fit
    assert callable(getattr(model, "analyse", None)) and callable(getattr(model, "loss", None))


@pytest.mark.parametrize("name", [n for n in TINY if model_info(n).trainable])
def test_forward_and_backward(name, ready):
    model, batch = ready(name)
    model.train()
    analysis = model(batch)
    assert isinstance(analysis, Analysis)
    assert analysis.mean.shape == batch.background.shape
    result = model.loss(batch)
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    assert all(np.isfinite(float(v)) for v in result.diagnostics.values())
    model.zero_grad(set_to_none=True)
    result.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached"
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", TINY)
def test_analysis_shape_for_each_output_kind(name, ready):
    model, batch = ready(name)
    kind = model.info.output
    analysis = model.analyse(batch)
    assert analysis.mean.shape == batch.background.shape
    assert torch.isfinite(analysis.mean).all()
    if kind == "gaussian":
        assert analysis.std is not None and analysis.std.shape == batch.background.shape
        assert (analysis.std > 0).all()
    if kind == "deterministic":
        assert analysis.members is None
        with pytest.raises(ValueError, match="members"):
            model.analyse(batch, members=MEMBERS)
        return
    sampled = model.analyse(batch, members=MEMBERS, seed=3)
    members = sampled.members
    assert members is not None and members.shape == (BATCH, MEMBERS, *batch.background.shape[1:])
    assert torch.isfinite(members).all()
    again = model.analyse(batch, members=MEMBERS, seed=3)
    assert torch.equal(again.members, members), "members must be reproducible from the seed"
    other = model.analyse(batch, members=MEMBERS, seed=4)
    assert not torch.equal(other.members, members)
    if kind == "ensemble":
        torch.testing.assert_close(sampled.mean, members.mean(dim=1))


@pytest.mark.parametrize("name", TINY)
def test_grad_mode_contract(name, ready):
    model, batch = ready(name)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        free = model.analyse(batch, seed=1)
    with torch.no_grad():
        inside = model.analyse(batch, seed=1)  # models that need gradients turn them on inside
    torch.testing.assert_close(inside.mean, free.mean, rtol=1e-5, atol=1e-6)
    _assert_no_graph(free)
    _assert_no_graph(inside)
    assert all(p.grad is None for p in params), "analyse must not touch parameter gradients"


@pytest.mark.parametrize("name", [n for n in TINY if model_info(n).needs_fit])
def test_fitted_state_travels_in_the_state_dict(name, ready):
    fitted, batch = ready(name)
    torch.manual_seed(0)
    fresh = _create(name)
    fresh.load_state_dict(fitted.state_dict())
    fresh.eval()
    torch.testing.assert_close(
        fresh.analyse(batch, seed=2).mean, fitted.analyse(batch, seed=2).mean, rtol=0, atol=0
    )


def test_model_info_refuses_invalid_capabilities():
    valid = {"output": "gaussian", "paper": "p", "code": "c", "code_licence": "l"}
    ModelInfo(**valid)
    for bad, match in [
        ({"output": "sampler"}, "choose from"),
        ({"trainable": 1}, "trainable must be a bool"),
        ({"paper": " "}, "paper must be a non-empty string"),
        ({"adapter_entry": 3}, "adapter_entry must be a string or None"),
    ]:
        with pytest.raises(ValueError, match=match):
            ModelInfo(**{**valid, **bad})


def test_registry_filters_like_timm_and_names_unknown_models():
    assert set(list_models("*_tiny", exclude="background*")) == set(TINY) - {"background_tiny"}
    assert list_models(["convcnp_tiny", "fnp_t*"]) == ["convcnp_tiny", "fnp_tiny"]
    with pytest.raises(ValueError, match="Unknown model 'nope'.*convcnp_tiny"):
        model_info("nope")
