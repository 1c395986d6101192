"""Every registered multi-modal model (``multi_*_tiny``), the way the contract tests every model.

Models are found through the registry (``list_models("multi_*_tiny")``): a host that declares
and implements an adapter entry later is tested without editing this file. For each, against
its host (``composed_host``, built with the multi model's host settings, e.g. SDA's
``background="context"``) with the same weights (fitted first when the host needs it):

- at step 0 (zero heads) the analysis, members and loss of a trained host (here: perturbed
  initial weights) are the host's, bit for bit (VAE-Var: the solve from ``z0 = 0``); a host
  whose own loss does not reach the adapter (VAE-Var, SLAMS) adds named terms, and every
  other diagnostic stays the host's, bit for bit;
- with trained heads, a sample without any present modality still gets the host's analysis,
  and a sample with them does not;
- one backward pass of the loss reaches every adapter parameter.

Grid 25 x 48, batch 2, the three schema modalities (sparse precipitation with gauge counts, dense
OLR).
"""

from __future__ import annotations

import pytest
import torch

from baselines.interface import DABatch
from baselines.layers.adapter import ADAPTER_ATTRIBUTE
from baselines.models.multi import adapter_of
from baselines.registry import (
    composed_host,
    composed_kwargs,
    create_model,
    list_models,
    variant_defaults,
)

MULTI = list_models("multi_*_tiny")
MODALITIES = ["precip", "precip_gauges", "olr"]
SHAPE = (25, 48)
MEMBERS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(name: str, train_split) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(host, multi) in eval mode with the host's weights in both: its initial weights plus
    noise, a stand-in for trained ones (zero-initialised output layers no longer zero)."""
    torch.manual_seed(0)
    own = composed_kwargs(name)  # the multi model's host: its defaults without the adapter's
    kwargs = {k: v for k, v in variant_defaults(name).items() if k not in own}
    reads = {"modality_chans": len(MODALITIES)} if "modality_chans" in kwargs else {}  # SLAMS
    host = create_model(composed_host(name), **{**kwargs, **reads})
    with torch.no_grad():
        for parameter in host.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    if host.info.needs_fit:
        host.fit(*train_split(getattr(host, "in_chans", 4), SHAPE))
    torch.manual_seed(1)
    multi = create_model(name, modalities=MODALITIES, **reads)
    missing, unexpected = multi.load_state_dict(host.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(ADAPTER_ATTRIBUTE + ".") for k in missing)
    return host.eval(), multi.eval()


def _randomise_heads(multi: torch.nn.Module) -> None:
    """Stand-ins for trained zero-initialised output layers: the adapter's heads and the last
    layer of each modality operator (VAE-Var's ``modality_term``)."""
    gen = torch.Generator().manual_seed(5)
    operators = [op[-1] for extra in adapter_of(multi).extras.values() for op in extra.operators]
    for head in [*adapter_of(multi).heads, *operators]:
        with torch.no_grad():
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=gen))
            head.bias.copy_(0.3 * torch.randn(head.bias.shape, generator=gen))


def _analyses(model: torch.nn.Module, batch: DABatch) -> list[torch.Tensor]:
    """The mean (and members, for samplers) of ``analyse`` with a fixed seed."""
    members = MEMBERS if model.info.output == "ensemble" else None
    analysis = model.analyse(batch, members=members, seed=3)
    return [t for t in (analysis.mean, analysis.std, analysis.members) if t is not None]


ADAPTER_TERMS = {
    "vaevar": {"adapter_first_guess", "modality_nll"},
    "slams": {"adapter_reconstruction"},
}
"""The loss terms a host adds for its adapter (the hosts whose own loss does not reach it;
VAE-Var's second one trains its modality operators)."""


def _host_kind(name: str) -> str:
    """``multi_vaevar_tiny`` -> ``vaevar``."""
    return name.removeprefix("multi_").rsplit("_", 1)[0]


def test_the_registry_composes_every_host_with_an_entry():
    hosts = ("convcnp", "fnp", "adas", "vaevar", "sda_cond", "slams")
    assert {f"multi_{h}_tiny" for h in hosts} <= set(MULTI)


@pytest.mark.parametrize("name", MULTI)
def test_step_zero_is_the_host_bit_for_bit(name, stream_batch, train_split):
    host, multi = _pair(name, train_split)
    batch = stream_batch(
        SHAPE, present=[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], in_chans=getattr(host, "in_chans", 4)
    )
    for ours, theirs in zip(_analyses(multi, batch), _analyses(host, batch), strict=True):
        assert torch.equal(ours, theirs)
    if not host.info.trainable:
        return
    torch.manual_seed(7)
    expected = host.loss(batch)
    torch.manual_seed(7)
    result = multi.loss(batch)
    extra = set(result.diagnostics) - set(expected.diagnostics)
    terms = ADAPTER_TERMS.get(_host_kind(name), set())
    assert extra == terms
    for key, value in expected.diagnostics.items():
        assert result.diagnostics[key] == value, key  # the host's terms, bit for bit
    if not terms:
        assert torch.equal(result.loss, expected.loss)
    else:  # the host's loss plus the adapter's terms
        total = float(expected.loss.detach()) + sum(result.diagnostics[t] for t in terms)
        assert float(result.loss.detach()) == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("name", MULTI)
def test_without_modalities_a_sample_gets_the_host_analysis(name, stream_batch, train_split):
    host, multi = _pair(name, train_split)
    _randomise_heads(multi)
    batch = stream_batch(
        SHAPE, present=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], in_chans=getattr(host, "in_chans", 4)
    )
    ours, theirs = _analyses(multi, batch)[0], _analyses(host, batch)[0]
    assert torch.equal(ours[0], theirs[0])
    if _host_kind(name) == "vaevar":
        # the tiny model's solve converges to the host's minimum from any first guess (its
        # decoder barely uses z); the context shows in where the solve starts
        start = [[s.costs[0] for s in m.solve(batch)] for m in (multi, host)]
        assert start[0][0] == start[1][0] and start[0][1] != start[1][1]
    else:
        assert not torch.allclose(ours[1], theirs[1])


@pytest.mark.parametrize("name", [n for n in MULTI if create_model(n).info.trainable])
def test_the_loss_trains_every_adapter_parameter(name, stream_batch, train_split):
    host, multi = _pair(name, train_split)
    _randomise_heads(multi)
    multi.train()
    batch = stream_batch(
        SHAPE, present=[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], in_chans=getattr(host, "in_chans", 4)
    )
    multi.loss(batch).loss.backward()
    params = dict(adapter_of(multi).named_parameters())
    without = [n for n, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == [], f"the loss of {name} does not reach adapter parameters {without}"
    assert all(torch.isfinite(p.grad).all() for p in params.values())
