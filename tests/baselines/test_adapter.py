"""The multi-modal representation adapter (baselines/layers/adapter.py) and its composition with
ConvCNP and FNP (baselines/models/multi.py).

- Streams: the loader's modalities grouped by schema group (precipitation with its gauge counts,
  OLR); token grids for each stream at 25 x 48 and 121 x 240 (the 121 rows padded to 128 and the
  padding marked absent).
- Zero-initialised heads: a *trained* host's analysis is unchanged bit for bit.
- Missing modalities: one, all and none present; an absent stream's values never reach the
  output; a sample without any token gets exactly the host's analysis, even with trained heads;
  patches without a present cell get exactly zero context; samples of a batch do not see each
  other's tokens.
- Per-cell presence from the loader's ``modality_mask``: a present cell whose value equals the
  train-split mean (0 in model space) is a token, an absent cell is not; gauge counts defined
  everywhere do not make precipitation tokens.
- Gradients reach the adapter and the host, and the host not when frozen (its BatchNorm
  statistics stay put).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.interface import DABatch
from baselines.layers.adapter import (
    ADAPTER_ATTRIBUTE,
    NO_CONTEXT,
    MultiModalAdapter,
    StreamEmbed,
    adapter_context,
    attach_adapter,
    modality_streams,
)
from baselines.models.multi import adapter_of, freeze_host, keep_host_in_eval
from baselines.registry import create_model, list_models, model_info
from dambench.exceptions import DambenchInputError

THREE = ["precip", "precip_gauges", "olr"]
SMALL = (25, 48)
FULL = (121, 240)


pytestmark = pytest.mark.usefixtures("one_thread")


def randomise_heads(model: torch.nn.Module, seed: int = 1) -> None:
    """Stand-in for trained heads: non-zero weights and biases."""
    gen = torch.Generator().manual_seed(seed)
    for head in adapter_of(model).heads:
        with torch.no_grad():
            head.weight.copy_(0.3 * torch.randn(head.weight.shape, generator=gen))
            head.bias.copy_(0.3 * torch.randn(head.bias.shape, generator=gen))


def trained_host(name: str, stream_batch, steps: int = 3) -> torch.nn.Module:
    """A host after a few AdamW steps on ``stream_batch`` batches (its zero-initialised layers
    are no longer zero)."""
    torch.manual_seed(0)
    host = create_model(name)
    optimizer = torch.optim.AdamW(host.parameters(), lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        host.loss(stream_batch(seed=10 + step)).loss.backward()
        optimizer.step()
    return host


def multi_like(host: torch.nn.Module, name: str, **kwargs) -> torch.nn.Module:
    """``multi_<name>`` with the host's weights (as ``model.init_from`` loads them)."""
    torch.manual_seed(1)
    multi = create_model(f"multi_{name}", modalities=THREE, **kwargs)
    missing, unexpected = multi.load_state_dict(host.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(ADAPTER_ATTRIBUTE + ".") for k in missing)
    return multi


# --- streams and tokens -------------------------------------------------------------------------


def test_modalities_are_grouped_into_streams_by_schema_group():
    streams = modality_streams(THREE)
    assert [(s.group, s.indices, s.primary) for s in streams] == [
        ("precip", (0, 1), 0),
        ("olr", (2,), 0),
    ]
    # the loader's order decides the indices; a count channel alone has no primary variable
    streams = modality_streams(["olr", "precip_gauges"])
    assert [(s.group, s.indices, s.primary) for s in streams] == [
        ("olr", (0,), 0),
        ("precip", (1,), None),
    ]
    with pytest.raises(DambenchInputError, match="distinct schema modalities"):
        modality_streams(["precip", "gauges"])


@pytest.mark.parametrize(
    ("grid", "patch", "tokens"),
    [
        (SMALL, 8, (4, 6)),  # ceil(25 / 8) = 4 rows (7 padded), 48 / 8 = 6
        (FULL, 8, (16, 30)),  # ceil(121 / 8) = 16 rows (7 padded), not timm's grid_size 15
        (FULL, (11, 16), (11, 15)),  # 121 = 11 x 11, 240 = 15 x 16: no padding
    ],
)
def test_token_grid_of_each_stream_and_grid(grid, patch, tokens, stream_batch):
    adapter = MultiModalAdapter(THREE, [6], embed_dim=8, num_heads=2, depth=1, patch_size=patch)
    batch = stream_batch(grid)
    stream_tokens, valid = adapter.stream_tokens(*adapter._inputs(batch))
    in_chans = [embed.patch.proj.in_channels for embed in adapter.embeds]
    assert in_chans == [4, 2]  # precipitation + counts, OLR: each with a presence channel
    for t, v in zip(stream_tokens, valid, strict=True):
        assert t.shape == (2, *tokens, 8) and v.shape == (2, *tokens)
    assert bool(valid[1].all())  # dense OLR: every patch holds a present cell
    assert 0 < int(valid[0][0].sum()) < math.prod(tokens)  # sparse precipitation: some patches
    context = adapter(batch)
    assert context.tokens.shape == (2, *tokens, 8)
    assert context.field(0).shape == (2, 6, *grid)


def test_padded_rows_are_absent_and_a_bottom_row_station_makes_the_bottom_token(stream_batch):
    adapter = MultiModalAdapter(["precip"], [3], embed_dim=8, num_heads=2, depth=0, patch_size=8)
    values = torch.zeros(1, 1, *SMALL)
    values[0, 0, 24, 47] = 1.5  # the last row (the south pole) and column
    batch = stream_batch(SMALL, 1)
    batch = DABatch(
        **{**batch.__dict__, "modalities": values, "modality_present": torch.ones(1, 1)}
    )
    _, valid = adapter.stream_tokens(*adapter._inputs(batch))
    expected = torch.zeros(1, 4, 6, dtype=torch.bool)
    expected[0, 3, 5] = True  # rows 24..31 (25..31 padded) and columns 40..47
    assert torch.equal(valid[0], expected)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_position_tables_follow_the_token_grid(pos_embed):
    embed = StreamEmbed(1, 8, (8, 8), FULL, pos_embed)
    assert embed.base_grid == (16, 30)
    for grid, tokens in [(FULL, (16, 30)), (SMALL, (4, 6))]:
        out = embed(torch.zeros(2, 2, *grid))  # zero input: bias + positions + type
        assert out.shape == (2, *tokens, 8)
        assert not torch.allclose(out[0, 0, 0], out[0, -1, -1])  # positions differ


# --- zero-initialised heads ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["convcnp_tiny", "fnp_tiny"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_zero_heads_leave_a_trained_host_unchanged_bit_for_bit(name, train_mode, stream_batch):
    host = trained_host(name, stream_batch)
    multi = multi_like(host, name)
    host.train(train_mode)
    multi.train(train_mode)
    batch = stream_batch()  # every modality present: the adapter runs and adds its zero context
    assert adapter_context(multi, batch) is not NO_CONTEXT
    for run in (lambda m: m(batch), lambda m: m.analyse(batch)):
        ours, theirs = run(multi), run(host)
        assert torch.equal(ours.mean, theirs.mean) and torch.equal(ours.std, theirs.std)
    assert torch.equal(multi.loss(batch).loss, host.loss(batch).loss)


# --- missing modalities -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["convcnp_tiny", "fnp_tiny"])
def test_one_all_and_none_present(name, stream_batch):
    host = trained_host(name, stream_batch).eval()
    multi = multi_like(host, name).eval()
    randomise_heads(multi)  # a trained adapter: its context is non-zero
    # sample 0: nothing present; sample 1: only OLR; sample 2: everything
    flags = [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    batch = stream_batch(batch=3, present=flags)
    ours, theirs = multi.analyse(batch).mean, host.analyse(batch).mean
    assert torch.equal(ours[0], theirs[0])  # none present: exactly the host
    assert not torch.allclose(ours[1], theirs[1]) and not torch.allclose(ours[2], theirs[2])
    # a batch without any present modality (or without modalities) skips the adapter
    nothing = stream_batch(batch=3, present=[[0.0] * 3] * 3)
    assert adapter_context(multi, nothing) is NO_CONTEXT
    assert torch.equal(multi.analyse(nothing).mean, host.analyse(nothing).mean)
    empty = DABatch(**{**batch.__dict__, "modalities": None, "modality_present": None})
    assert torch.equal(multi.analyse(empty).mean, host.analyse(empty).mean)


def test_an_absent_stream_never_reaches_the_output(stream_batch):
    torch.manual_seed(0)
    multi = create_model("multi_convcnp_tiny", modalities=THREE).eval()
    randomise_heads(multi)
    batch = stream_batch(present=[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    changed = batch.modalities.clone()
    changed[:, 2] += 5.0  # OLR values change, absent in sample 0, present in sample 1
    other = DABatch(**{**batch.__dict__, "modalities": changed})
    a, b = multi.analyse(batch).mean, multi.analyse(other).mean
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_gauge_counts_alone_do_not_make_a_precipitation_stream(stream_batch):
    adapter = MultiModalAdapter(THREE, [3], embed_dim=8, num_heads=2, depth=1)
    batch = stream_batch(present=[[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # counts, no precipitation
    _, valid = adapter.stream_tokens(*adapter._inputs(batch))
    assert not bool(valid[0].any())  # no precipitation tokens in either sample
    assert not bool(valid[1][0].any()) and bool(valid[1][1].all())  # OLR only in sample 1


def test_a_present_cell_at_the_train_mean_is_a_token_and_an_absent_cell_is_not():
    """Through the loader on era5-sample: one precipitation cell kept, its value the train
    mean of the transform (exactly 0 in model space); every other cell absent (NaN)."""
    from dambench.batching import DATorchDataset, make_dataloader
    from dambench.load import ensure_embedded, open_dataset

    ds = open_dataset(ensure_embedded(), split="test").isel(time=[0]).load()
    precip = ds["precip"].values[0]
    row, col = (int(i) for i in np.argwhere(np.isfinite(precip) & (precip > 0))[0])
    kept = np.full(precip.shape, np.nan, np.float32)
    kept[row, col] = precip[row, col]
    ds["precip"][0] = kept
    stats = DATorchDataset(ds, modalities=["precip"]).modality_stats.copy(deep=True)
    stats["mean"][:] = np.log1p(np.float64(precip[row, col]))  # the cell's own transform
    loader = make_dataloader(ds, train=False, modalities=["precip"], modality_stats=stats)
    batch = DABatch.from_loader(next(iter(loader)))
    assert batch.modalities[0, 0, row, col] == 0 and batch.modality_mask[0, 0, row, col] == 1
    assert int(batch.modality_mask.sum()) == 1
    adapter = MultiModalAdapter(["precip"], [3], embed_dim=8, num_heads=2, depth=0, patch_size=8)
    _, valid = adapter.stream_tokens(*adapter._inputs(batch))
    expected = torch.zeros(1, 16, 30, dtype=torch.bool)
    expected[0, row // 8, col // 8] = True
    assert torch.equal(valid[0], expected)
    # without the mask the zero would read as absent (the fallback for hand-built batches)
    bare = DABatch(**{**batch.__dict__, "modality_mask": None})
    assert adapter(bare) is NO_CONTEXT and adapter(batch) is not NO_CONTEXT


def test_counts_defined_everywhere_make_no_tokens_without_precipitation(stream_batch):
    """The loader marks gauge counts present in every cell (0 is a stored count); tokens of
    the precipitation stream still sit only where precipitation is, and a mask of the wrong
    shape is refused."""
    batch = stream_batch(present=[[1.0, 1.0, 1.0]] * 2)
    mask = torch.ones_like(batch.modalities)
    mask[:, 0] = (batch.modalities[:, 0] != 0).float()  # precipitation: its stations
    masked = DABatch(**{**batch.__dict__, "modality_mask": mask})
    adapter = MultiModalAdapter(THREE, [3], embed_dim=8, num_heads=2, depth=1)
    _, valid = adapter.stream_tokens(*adapter._inputs(masked))
    _, expected = adapter.stream_tokens(*adapter._inputs(batch))
    assert torch.equal(valid[0], expected[0]) and not bool(valid[0].all())
    wrong = DABatch(**{**batch.__dict__, "modality_mask": mask[:, :2]})
    with pytest.raises(DambenchInputError, match="modality_mask must have the shape"):
        adapter(wrong)


def test_context_is_exactly_zero_on_patches_without_a_present_cell(stream_batch):
    torch.manual_seed(0)
    adapter = MultiModalAdapter(["precip"], [5], embed_dim=8, num_heads=2, depth=1, patch_size=8)
    for head in adapter.heads:
        torch.nn.init.normal_(head.weight)
        torch.nn.init.normal_(head.bias)
    values = torch.zeros(1, 1, *SMALL)
    values[0, 0, 10, 20] = 0.7  # one station: the patch of rows 8..15, columns 16..23
    batch = stream_batch(SMALL, 1)
    batch = DABatch(
        **{**batch.__dict__, "modalities": values, "modality_present": torch.ones(1, 1)}
    )
    field = adapter(batch).field(0)  # (1, 5, 25, 48)
    inside = torch.zeros(SMALL, dtype=torch.bool)
    inside[8:16, 16:24] = True
    assert bool((field[..., inside] != 0).all())
    assert bool((field[..., ~inside] == 0).all())


def test_samples_do_not_see_each_others_tokens(stream_batch):
    torch.manual_seed(0)
    adapter = MultiModalAdapter(THREE, [4], embed_dim=8, num_heads=2, depth=2).eval()
    for head in adapter.heads:
        torch.nn.init.normal_(head.weight)
    batch = stream_batch(batch=3, present=[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    together = adapter(batch).field(0)
    for i in range(3):
        alone = DABatch(
            **{k: None if v is None else v[i : i + 1] for k, v in batch.__dict__.items()}
        )
        torch.testing.assert_close(adapter(alone).field(0)[0], together[i], rtol=1e-5, atol=1e-6)


def test_patches_without_data_are_no_tokens(stream_batch):
    """Changing what an empty precipitation patch would embed to (its position entry) changes
    nothing: it is masked in every attention and left out of the merge with OLR's tokens."""
    torch.manual_seed(0)
    adapter = MultiModalAdapter(THREE, [4], embed_dim=8, num_heads=2, depth=2, img_size=SMALL)
    torch.nn.init.normal_(adapter.eval().heads[0].weight)
    batch = stream_batch()
    before = adapter(batch).field(0)
    _, valid = adapter.stream_tokens(*adapter._inputs(batch))
    empty = ~(valid[0][0] | valid[0][1]).reshape(-1)  # precipitation patches empty in both
    assert 0 < int(empty.sum()) < empty.numel()
    with torch.no_grad():
        adapter.embeds[0].pos_embed[0, empty] += 3.0
    torch.testing.assert_close(adapter(batch).field(0), before, rtol=0, atol=1e-6)


def test_batches_with_other_modalities_are_refused_naming_them(stream_batch):
    torch.manual_seed(0)
    multi = create_model("multi_convcnp_tiny", modalities=THREE)
    batch = stream_batch()
    two = DABatch(
        **{**batch.__dict__, "modalities": batch.modalities[:, :2],
           "modality_present": batch.modality_present[:, :2]}
    )  # fmt: skip
    with pytest.raises(DambenchInputError, match=r"3 modalities \['precip', 'precip_gauges'"):
        multi(two)
    flags = DABatch(**{**batch.__dict__, "modality_present": torch.ones(2)})
    with pytest.raises(DambenchInputError, match="modality_present must be"):
        multi(flags)


# --- entry points -------------------------------------------------------------------------------


def test_context_reaches_a_coarser_multi_axis_entry(stream_batch):
    """An Adas-like entry: tokens (B, d, L, Hp, Wp) on a coarser grid than the batch."""
    adapter = MultiModalAdapter(THREE, [6 * 3], embed_dim=8, num_heads=2, depth=1)
    torch.nn.init.normal_(adapter.heads[0].weight)
    context = adapter(stream_batch())
    features = torch.zeros(2, 6, 3, 9, 16)  # d = 6, L = 3 levels, 9 x 16 patches
    out = context.add(features, slot=0)
    assert out.shape == features.shape and bool((out != 0).any())
    with pytest.raises(DambenchInputError, match="prod of the lead dims"):
        context.add(torch.zeros(2, 5, 3, 9, 16), slot=0)
    assert NO_CONTEXT.add(features) is features and NO_CONTEXT.entry(0) is None


def test_hosts_without_an_entry_are_refused():
    host = create_model("background_tiny")
    with pytest.raises(DambenchInputError, match="declares no adapter entry point"):
        attach_adapter(host, ["precip"])
    with pytest.raises(DambenchInputError, match="declares no adapter entry"):
        create_model("multi_background_tiny")
    with pytest.raises(DambenchInputError, match="compositions do not nest"):
        create_model("multi_multi_convcnp_tiny")
    multi = create_model("multi_convcnp_tiny")
    with pytest.raises(DambenchInputError, match="already has"):
        attach_adapter(multi, ["precip"])


def test_multi_models_are_registered_with_honest_info():
    names = list_models("multi_*")
    hosts = ("convcnp", "fnp", "adas", "vaevar", "sda_cond", "slams")
    assert {f"multi_{h}_{s}" for h in hosts for s in ("tiny", "small", "full")} <= set(names)
    for name in names:
        info, host = model_info(name), model_info(name.removeprefix("multi_"))
        assert info.uses_modalities and not info.supports_patches
        assert info.output == host.output and info.adapter_entry == host.adapter_entry
        assert host.paper in info.paper and "arxiv.org/abs/2511.01468" in info.paper


def test_fnp_gets_one_slot_per_branch():
    multi = create_model("multi_fnp_tiny", in_chans=4 + 13)  # groups [4, 13] + all-variable
    assert adapter_of(multi).slot_channels == (8, 8, 8)


# --- gradients ----------------------------------------------------------------------------------


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_gradients_reach_the_adapter_and_the_host(stream_batch):
    torch.manual_seed(0)
    multi = create_model("multi_convcnp_tiny", modalities=THREE)
    adapter = adapter_of(multi)
    batch = stream_batch()
    multi.loss(batch).loss.backward()  # zero heads: only the heads and the host learn
    assert all(h.weight.grad.abs().sum() > 0 for h in adapter.heads)
    assert multi.encoder.obs_encoder.embed.proj.weight.grad.abs().sum() > 0
    multi.zero_grad(set_to_none=True)
    randomise_heads(multi)  # after the first steps the whole adapter learns
    multi.loss(batch).loss.backward()
    named = dict(adapter.named_parameters())
    without = [n for n, p in named.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == [], f"no gradient reached {without}"


def test_a_frozen_host_gets_no_gradient_and_keeps_its_batch_statistics(stream_batch):
    torch.manual_seed(0)
    multi = create_model("multi_convcnp_tiny", modalities=THREE)  # BatchNorm in the host
    randomise_heads(multi)
    frozen = freeze_host(multi)
    host_params = [p for n, p in multi.named_parameters() if not n.startswith(ADAPTER_ATTRIBUTE)]
    assert frozen == sum(p.numel() for p in host_params) > 0
    stats = {n: b.clone() for n, b in multi.named_buffers() if "running" in n}
    multi.train()
    keep_host_in_eval(multi)
    assert adapter_of(multi).training and not multi.encoder.training
    multi.loss(stream_batch()).loss.backward()
    assert all(p.grad is None for p in host_params)
    assert all(p.grad is not None for p in adapter_of(multi).parameters())
    assert all(torch.equal(b, stats[n]) for n, b in multi.named_buffers() if n in stats)
    with pytest.raises(DambenchInputError, match="has no adapter"):
        freeze_host(create_model("convcnp_tiny"))
