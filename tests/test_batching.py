"""dambench.batching: torch datasets and loaders over a built DAMBench dataset."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dambench import schema  # noqa: E402
from dambench.exceptions import DambenchInputError, MissingDependencyError  # noqa: E402
from dambench.load import ensure_embedded, open_dataset, stats_from_attrs  # noqa: E402
from dambench.modalities import to_model_space  # noqa: E402
from dambench.normalize import normalize  # noqa: E402

batching = importlib.import_module("dambench.batching")
DATorchDataset = batching.DATorchDataset
make_dataloader = batching.make_dataloader

H, W = schema.N_LATITUDE, schema.N_LONGITUDE


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


@pytest.fixture(scope="module")
def full(folder):
    return open_dataset(folder)


@pytest.fixture(scope="module")
def train_ds(folder):
    return open_dataset(folder, split="train")


@pytest.fixture(scope="module")
def test_ds(folder):
    return open_dataset(folder, split="test")


def _batches(loader):
    return [{k: v.clone() for k, v in batch.items()} for batch in loader]


def _assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


# --- shapes ---------------------------------------------------------------------------------------


def test_whole_globe_samples_and_batches(test_ds):
    dataset = DATorchDataset(test_ds)
    n_time, n_channel = test_ds.sizes["time"], test_ds.sizes["channel"]
    assert len(dataset) == n_time == len(dataset.generator)
    assert dataset.modality_names == ["precip", "precip_gauges"]
    sample = dataset[0]
    for key in ("background", "observation", "mask", "target"):
        assert sample[key].shape == (n_channel, H, W) and sample[key].dtype == torch.float32
    assert sample["modalities"].shape == (2, H, W)
    assert sample["modality_present"].shape == (2,)
    assert sample["time"].dtype == torch.int64 and sample["time"].shape == ()
    assert sample["time"].item() == test_ds["time"].values[0].astype("datetime64[ns]").astype(int)
    assert sample["origin"].tolist() == [0, 0]
    assert sample["latitude"].dtype == sample["longitude"].dtype == torch.float32
    np.testing.assert_array_equal(sample["latitude"].numpy(), test_ds["latitude"].values)
    np.testing.assert_array_equal(sample["longitude"].numpy(), test_ds["longitude"].values)

    batch = next(iter(make_dataloader(test_ds, batch_size=2)))
    assert batch["target"].shape == (2, n_channel, H, W)
    assert batch["modalities"].shape == (2, 2, H, W)
    assert batch["modality_present"].shape == (2, 2)
    assert batch["time"].shape == (2,) and batch["origin"].shape == (2, 2)
    assert batch["latitude"].shape == (2, H) and batch["longitude"].shape == (2, W)
    assert all(t.is_contiguous() for t in batch.values())


def test_dabatch_from_loader(test_ds):
    interface = pytest.importorskip("baselines.interface")
    batch = interface.DABatch.from_loader(next(iter(make_dataloader(test_ds, batch_size=2))))
    assert batch.shape == (2, test_ds.sizes["channel"], H, W)
    assert batch.modality_present.shape == (2, 2)
    assert batch.modality_mask.shape == batch.modalities.shape == (2, 2, H, W)
    assert batch.latitude.shape == (2, H) and batch.longitude.shape == (2, W)
    assert batch.latitude[0, 0].item() == 90.0 and batch.longitude[0, -1].item() == 358.5


def test_patches_count_positions_and_values(train_ds):
    n_time = train_ds.sizes["time"]
    with pytest.warns(UserWarning, match="never sampled"):
        plain = DATorchDataset(train_ds, patch={"latitude": 64, "longitude": 64}, train=False)
    # latitude: one 64-row window (0..63; 64+64 > 121), longitude: 0, 64, 128 (192+64 > 240)
    assert plain.windows_per_time == 3 and len(plain) == 3 * n_time == len(plain.generator)
    assert plain.sample_shape == (train_ds.sizes["channel"], 64, 64)

    overlapped = DATorchDataset(
        train_ds,
        patch={"latitude": 64, "longitude": 64},
        patch_overlap={"latitude": 7, "longitude": 48},
        train=False,
    )  # strides 57 (rows 0, 57: covers all 121) and 16 (12 columns: 0 .. 176, covers all 240)
    assert overlapped.windows_per_time == 2 * 12
    assert len(overlapped) == 24 * n_time == len(overlapped.generator)
    starts = overlapped.windows[: overlapped.windows_per_time]
    assert sorted({int(r) for r in starts[:, 1]}) == [0, 57]
    assert sorted({int(c) for c in starts[:, 2]}) == list(range(0, 177, 16))
    assert set(overlapped.windows[:, 0].tolist()) == set(range(n_time))

    whole = DATorchDataset(train_ds, train=False)
    index = overlapped.windows_per_time + 13  # second cycle, some patch
    patch = overlapped[index]
    t, row, col = overlapped.windows[index]
    assert t == 1 and patch["origin"].tolist() == [row, col]
    reference = whole[1]
    for key in ("background", "observation", "mask", "target", "modalities"):
        assert patch[key].shape[-2:] == (64, 64)
        assert torch.equal(patch[key], reference[key][:, row : row + 64, col : col + 64]), key
    # xbatcher's own window for this sample covers the same points, and the sample says which
    view = overlapped.generator[index]
    assert view["latitude"].values[0] == train_ds["latitude"].values[row]
    assert view["longitude"].values[0] == train_ds["longitude"].values[col]
    np.testing.assert_array_equal(patch["latitude"].numpy(), view["latitude"].values)
    np.testing.assert_array_equal(patch["longitude"].numpy(), view["longitude"].values)

    one_dim = DATorchDataset(train_ds, patch={"longitude": 60}, train=False)
    assert one_dim.sample_shape[1:] == (H, 60) and one_dim.windows_per_time == 4


@pytest.mark.parametrize(
    ("patch", "overlap", "match"),
    [
        ({"latitude": 200}, None, "larger than the grid"),
        ({"latitude": 64}, {"latitude": 64}, "smaller than the patch"),
        ({"latitude": 64}, {"latitude": -1}, ">= 0"),
        ({"lat": 64}, None, "unknown dims"),
        ({"time": 1}, None, "unknown dims"),
        ({"latitude": 64}, {"channel": 1}, "unknown dims"),
        ({"latitude": 0}, None, ">= 1"),
        ({"latitude": 6.5}, None, "integer"),
        (None, {"latitude": 2}, "needs patch"),
        ([64, 64], None, "dict"),
    ],
)
def test_bad_patch_arguments(test_ds, patch, overlap, match):
    with pytest.raises(DambenchInputError, match=match):
        DATorchDataset(test_ds, patch=patch, patch_overlap=overlap)


def test_bad_arguments(test_ds):
    with pytest.raises(DambenchInputError, match="xarray Dataset"):
        DATorchDataset(test_ds["target"])
    with pytest.raises(DambenchInputError, match="seed"):
        DATorchDataset(test_ds, seed=-1)
    with pytest.raises(DambenchInputError, match="lack channels"):
        DATorchDataset(test_ds, stats=stats_from_attrs(test_ds).isel(channel=[0]))
    with pytest.raises(DambenchInputError, match="modalities"):
        DATorchDataset(test_ds, modalities=["precipitation"])
    with pytest.raises(DambenchInputError, match="batch_sampler"):
        make_dataloader(test_ds, batch_sampler=[[0]])
    with pytest.raises(DambenchInputError, match="not both"):
        make_dataloader(test_ds, shuffle=True, sampler=range(3))
    with pytest.raises(DambenchInputError, match="batch_size"):
        make_dataloader(test_ds, batch_size=0)
    with pytest.raises(DambenchInputError, match="configure a new DATorchDataset"):
        make_dataloader(DATorchDataset(test_ds), train=True)
    with pytest.raises(IndexError):
        DATorchDataset(test_ds)[test_ds.sizes["time"]]
    no_attrs = test_ds.copy()
    no_attrs.attrs = {k: v for k, v in test_ds.attrs.items() if k != "observation"}
    with pytest.raises(DambenchInputError, match="observation"):
        DATorchDataset(no_attrs, train=True)


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, {}, "memory"], ids=["zarr", "dask", "memory"])
def test_validation_samples_are_the_stored_fields_normalised(folder, chunks):
    if chunks == "memory":
        ds = open_dataset(folder, split="validation").load()
    else:
        ds = open_dataset(folder, split="validation", chunks=chunks)
    stats = stats_from_attrs(ds)
    loader = make_dataloader(ds, batch_size=2)
    assert loader.dataset.train is False
    batches = list(loader)
    assert [b["target"].shape[0] for b in batches] == [2, 1]
    got = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    for name in ("background", "target"):
        expected = normalize(ds[name], stats).values
        np.testing.assert_array_equal(got[name], expected)
    observed = normalize(ds["observation"], stats).values
    np.testing.assert_array_equal(got["mask"], np.isfinite(observed).astype(np.float32))
    np.testing.assert_array_equal(got["observation"], np.nan_to_num(observed, nan=0.0))
    precip = to_model_space(ds["precip"].values, "precip", loader.dataset.modality_stats)
    np.testing.assert_array_equal(got["modalities"][:, 0], np.nan_to_num(precip).astype("f4"))
    times = ds["time"].values.astype("datetime64[ns]").astype(int)
    np.testing.assert_array_equal(got["time"], times)


def test_custom_stats_are_used(test_ds):
    stats = stats_from_attrs(test_ds).copy()
    stats["mean"] = stats["mean"] * 0 + 1.0
    stats["std"] = stats["std"] * 0 + 2.0
    sample = DATorchDataset(test_ds, stats=stats)[0]
    expected = normalize(test_ds["target"].isel(time=[0]), stats).values[0]
    np.testing.assert_array_equal(sample["target"].numpy(), expected)


def _mask_stack(loader):
    return torch.cat([batch["mask"] for batch in loader])


def test_train_observations_fresh_per_epoch_and_reproducible(train_ds):
    train_ds = train_ds.isel(time=slice(0, 6))  # enough cycles, quicker
    stats = stats_from_attrs(train_ds)
    loader = make_dataloader(train_ds, batch_size=4, seed=3)
    assert loader.dataset.train is True
    loader.set_epoch(0)
    first = _batches(loader)
    masks0 = torch.cat([b["mask"] for b in first])
    density = masks0.mean(dim=(1, 2, 3))
    assert torch.all((density > 0.04) & (density < 0.06)), density
    # never the stored observations of these cycles
    stored = np.isfinite(train_ds["observation"].values)
    assert not np.array_equal(masks0.numpy().astype(bool), stored)
    # observed values are the normalised truth plus noise of about the observation error
    target = torch.cat([b["target"] for b in first])
    observed = masks0.bool()
    obs = torch.cat([b["observation"] for b in first])
    assert torch.all(obs[~observed] == 0)
    error_std = np.array([schema.OBSERVATION_ERROR_STD[c] for c in loader.dataset.channels])
    expected_spread = error_std / stats["std"].values
    for c in range(len(error_std)):
        diff = (obs[:, c] - target[:, c])[observed[:, c]]
        assert abs(diff.std().item() / expected_spread[c] - 1) < 0.1

    loader.set_epoch(1)
    masks1 = _mask_stack(loader)
    assert (masks0 != masks1).float().mean() > 0.05  # a different draw
    assert abs(masks1.mean().item() - 0.05) < 0.01

    twin = make_dataloader(train_ds, batch_size=2, seed=3)  # other batching, same (seed, epoch)
    twin.set_epoch(1)
    assert torch.equal(_mask_stack(twin), masks1)
    fresh = make_dataloader(train_ds, batch_size=4, seed=3)  # its first iteration: epoch 0
    _assert_same_batches(first, _batches(fresh))
    other_seed = make_dataloader(train_ds, batch_size=4, seed=4)
    assert not torch.equal(_mask_stack(other_seed), masks0)

    # an iteration without set_epoch advances the epoch
    auto = make_dataloader(train_ds, batch_size=4, seed=3)
    assert torch.equal(_mask_stack(auto), masks0) and auto.epoch == 0
    assert torch.equal(_mask_stack(auto), masks1) and auto.epoch == 1

    # the dataset alone: plain ints use dataset.epoch, (index, epoch) pairs their own epoch
    dataset = DATorchDataset(train_ds, seed=3)
    dataset.set_epoch(1)
    assert torch.equal(dataset[2]["mask"], masks1[2])
    assert torch.equal(dataset[(2, 0)]["mask"], masks0[2])


def test_train_patches_share_one_draw(train_ds):
    kwargs = {
        "patch": {"latitude": 64, "longitude": 64},
        "patch_overlap": {"latitude": 7, "longitude": 48},
        "seed": 1,
    }
    patches = DATorchDataset(train_ds, **kwargs)
    whole = DATorchDataset(train_ds, seed=1)
    reference = whole[(0, 2)]
    for index in (0, 5, 23):
        sample = patches[(index, 2)]
        row, col = sample["origin"].tolist()
        for key in ("observation", "mask"):
            assert torch.equal(sample[key], reference[key][:, row : row + 64, col : col + 64])


def test_user_sampler_epoch_is_used(train_ds):
    class Sampler(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            return iter([3, 1])

        def __len__(self):
            return 2

    sampler = Sampler()
    loader = make_dataloader(train_ds, sampler=sampler, seed=3)
    first = _mask_stack(loader)
    sampler.set_epoch(1)
    second = _mask_stack(loader)
    assert loader.epoch == 1 and sampler.epoch == 1
    reference = make_dataloader(train_ds, seed=3)
    reference.set_epoch(1)
    expected = _mask_stack(reference)
    assert torch.equal(second, expected[[3, 1]])
    assert not torch.equal(first, second)


# --- loaders --------------------------------------------------------------------------------------


def test_workers_give_the_same_batches_after_dask_ran_in_the_parent(folder):
    ds = open_dataset(folder, split="train", chunks={})  # dask-backed reads in the workers
    ds = ds.isel(time=slice(0, 7))
    float(ds["target"].mean().compute())  # the threaded scheduler's pool now exists (fork hazard)
    kwargs = {"batch_size": 3, "shuffle": True, "seed": 5}
    serial = make_dataloader(ds, num_workers=0, **kwargs)
    parallel = make_dataloader(ds, num_workers=2, timeout=60, **kwargs)
    for epoch in (0, 1):
        serial.set_epoch(epoch)
        parallel.set_epoch(epoch)
        _assert_same_batches(_batches(serial), _batches(parallel))


def test_persistent_workers_follow_the_epoch(train_ds):
    kwargs = {"batch_size": 4, "shuffle": True, "seed": 2}
    serial = make_dataloader(train_ds, num_workers=0, **kwargs)
    persistent = make_dataloader(
        train_ds, num_workers=2, persistent_workers=True, timeout=60, **kwargs
    )
    for _ in range(2):  # auto-advancing epochs 0, 1
        _assert_same_batches(_batches(serial), _batches(persistent))
    assert persistent.epoch == serial.epoch == 1


def test_shuffling_is_reproducible(full):
    times = full["time"].values.astype("datetime64[ns]").astype(int)

    def order(loader, epoch):
        loader.set_epoch(epoch)
        return torch.cat([b["time"] for b in loader]).tolist()

    ordered = make_dataloader(full, batch_size=5)
    assert order(ordered, 0) == order(ordered, 3) == times.tolist()
    a, b = make_dataloader(full, shuffle=True, seed=7), make_dataloader(full, shuffle=True, seed=7)
    assert order(a, 0) == order(b, 0)
    assert order(a, 1) == order(b, 1)
    assert order(a, 0) != order(a, 1)
    assert sorted(order(a, 1)) == times.tolist()
    assert order(make_dataloader(full, shuffle=True, seed=8), 0) != order(a, 0)


def test_incomplete_last_batch_is_kept(test_ds):
    assert test_ds.sizes["time"] == 7
    sizes = [b["target"].shape[0] for b in make_dataloader(test_ds, batch_size=3)]
    assert sizes == [3, 3, 1]
    dropped = [b["target"].shape[0] for b in make_dataloader(test_ds, batch_size=3, drop_last=True)]
    assert dropped == [3, 3]


def test_modalities_and_presence(test_ds):
    precip = test_ds["precip"].values
    assert np.isnan(precip).any() and np.isfinite(precip).any(axis=(1, 2)).all()
    dataset = DATorchDataset(test_ds)
    sample = dataset[0]
    expected = to_model_space(precip[0], "precip", dataset.modality_stats)
    expected = np.nan_to_num(expected).astype(np.float32)  # float64 arithmetic, then rounded
    np.testing.assert_array_equal(sample["modalities"][0].numpy(), expected)
    # gauge counts: a density channel, log1p of the count (0 without a station)
    gauges = test_ds["precip_gauges"].values[0]
    np.testing.assert_allclose(sample["modalities"][1].numpy(), np.log1p(gauges), rtol=1e-6)
    assert sample["modality_present"].tolist() == [1.0, 1.0]
    assert "olr" not in DATorchDataset(test_ds).modality_names
    assert torch.isfinite(sample["modalities"]).all()

    padded = DATorchDataset(test_ds, modalities=["olr", "precip"])
    sample = padded[0]
    assert padded.modality_names == ["olr", "precip"]
    assert sample["modality_present"].tolist() == [0.0, 1.0]
    assert torch.all(sample["modalities"][0] == 0)

    bare = DATorchDataset(test_ds.drop_vars(["precip", "precip_gauges"]))
    assert bare.modality_names == [] and bare[0]["modalities"].shape == (0, H, W)
    assert bare[0]["modality_present"].shape == (0,)
    batch = next(iter(make_dataloader(bare, batch_size=2)))
    assert batch["modalities"].shape == (2, 0, H, W) and batch["modality_present"].shape == (2, 0)


def test_modality_mask_marks_the_cells_holding_data(test_ds):
    """Per cell: 1 where the store's value is finite, whole globes, patches and batches alike;
    0 everywhere for a selected modality the dataset lacks."""
    finite = np.isfinite(test_ds["precip"].values)  # (T, H, W): a few stations per cycle
    gauges = np.isfinite(test_ds["precip_gauges"].values)
    dataset = DATorchDataset(test_ds, modalities=["precip", "olr", "precip_gauges"])
    sample = dataset[1]
    mask = sample["modality_mask"]
    assert mask.shape == (3, H, W) and mask.dtype == torch.float32
    np.testing.assert_array_equal(mask[0].numpy(), finite[1].astype(np.float32))
    assert not mask[1].any() and np.array_equal(mask[2].numpy() == 1, gauges[1])
    assert 0 < int(mask[0].sum()) < H * W
    batch = next(iter(make_dataloader(dataset, batch_size=3)))
    np.testing.assert_array_equal(batch["modality_mask"][:, 0].numpy(), finite[:3])
    patches = DATorchDataset(test_ds, patch={"latitude": 11, "longitude": 12})
    for index in (0, 5, patches.windows_per_time - 1):
        patch = patches[index]
        row, col = patch["origin"].tolist()
        window = finite[0, row : row + 11, col : col + 12]
        np.testing.assert_array_equal(patch["modality_mask"][0].numpy(), window)
        assert patch["modality_present"][0].item() == float(window.any())


def test_patch_samples_do_not_alias_the_cycle_cache(test_ds):
    patches = DATorchDataset(test_ds, patch={"latitude": 11, "longitude": 12})
    first = patches[0]
    kept = first["target"].clone()
    for tensor in first.values():
        tensor.zero_()
    assert torch.equal(patches[0]["target"], kept)


def test_patch_presence_is_per_patch(test_ds):
    patches = DATorchDataset(test_ds, patch={"latitude": 11, "longitude": 12})
    finite = np.isfinite(test_ds["precip"].values[0])
    flags = []
    for index in range(patches.windows_per_time):
        sample = patches[index]
        row, col = sample["origin"].tolist()
        expected = finite[row : row + 11, col : col + 12].any()
        assert sample["modality_present"][0].item() == float(expected)
        flags.append(bool(expected))
    assert any(flags) and not all(flags)  # precipitation gauges sit in a few cells only


def test_missing_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in [m for m in sys.modules if m.split(".")[:2] == ["dambench", "batching"]]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependencyError, match=r"pip install 'dambench\[torch\]'"):
        importlib.import_module("dambench.batching")


def test_subclass_keys_survive_collation(test_ds):
    class WithIndex(DATorchDataset):
        def __getitem__(self, key):
            sample = super().__getitem__(key)
            sample["index"] = torch.tensor(key[0] if isinstance(key, tuple) else key)
            return sample

    batches = list(make_dataloader(WithIndex(test_ds), batch_size=4))
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(7))
    assert batches[0]["target"].shape[0] == 4
