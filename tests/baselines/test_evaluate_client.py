"""baselines/evaluate.py as a client of the package scorer: models streamed to prediction
stores, scored by ``dambench.evaluate_predictions``; dispatch on ModelInfo; ensembles."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from baselines import evaluate, train
from baselines.config import load_run_config
from baselines.interface import Analysis, BaselineModule
from dambench import schema
from dambench.exceptions import DambenchInputError
from dambench.load import ensure_embedded, open_dataset, stats_from_attrs
from dambench.metrics import mse, rmse
from dambench.normalize import normalize


@pytest.fixture(scope="module")
def folder():
    return ensure_embedded()


def _run(folder, out, *extra):
    argv = ["run", *extra, "--dataset", str(folder), "--out", str(out), "--bootstrap", "200"]
    evaluate.main(argv)
    return json.loads((out / "results.json").read_text())


def test_reference_models_equal_the_metrics_module_and_3dvar_beats_background(folder, tmp_path):
    background = _run(folder, tmp_path / "bg", "--model", "background")
    ds = open_dataset(folder, split="test").load()
    stats = stats_from_attrs(ds)
    norm_bg, norm_target = normalize(ds["background"], stats), normalize(ds["target"], stats)
    expected = 100 * float(mse(norm_bg, norm_target, dims=("channel", "latitude", "longitude")))
    row = background["table3"]["background"]
    assert row["MSE(1e-2)"]["value"] == pytest.approx(expected, rel=1e-6)
    assert row["RMSE t2m"]["value"] == pytest.approx(
        float(rmse(ds["background"], ds["target"]).sel(channel="t2m")), rel=1e-6
    )
    assert row["MSE(1e-2)"]["ci"][0] <= row["MSE(1e-2)"]["value"] <= row["MSE(1e-2)"]["ci"][1]
    for name in ("results.json", "table3.md", "scores.parquet", "summary.json", "maps.png"):
        assert (tmp_path / "bg" / name).exists(), name
    threedvar = _run(folder, tmp_path / "3dvar", "--model", "threedvar")
    assert threedvar["table3"]["threedvar"]["MSE(1e-2)"]["value"] < expected
    board = evaluate.leaderboard([str(tmp_path / m / "results.json") for m in ("bg", "3dvar")])
    assert "background is higher than threedvar on MSE(1e-2)" in board
    # the dataset's Background row that every result carries is not repeated beside the
    # background model's own row (the same analyses up to float32 round-off)
    assert board.count(f"{row['MSE(1e-2)']['value']:.4g} [") == 1


def test_trainable_model_and_members_of_a_deterministic_model_are_refused(folder, tmp_path):
    with pytest.raises(DambenchInputError, match="is trainable: evaluate a checkpoint"):
        _run(folder, tmp_path / "a", "--model", "convcnp_small")
    with pytest.raises(DambenchInputError, match="no members to draw"):
        _run(folder, tmp_path / "b", "--model", "background", "--members", "4")


class _GradProbe(BaselineModule):
    """Records the grad mode its analysis step runs in."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def analyse(self, batch, *, members=None, seed=0):
        self.modes.append(torch.is_grad_enabled())
        return Analysis(mean=batch.background)


def test_predictions_are_streamed_without_taking_the_models_grad_mode(folder, tmp_path):
    ds = open_dataset(folder, split="test")
    probe = _GradProbe()
    evaluate.predict_to_store(
        probe,
        ds,
        stats_from_attrs(ds),
        tmp_path / "p.zarr",
        members=None,
        sample_seed=0,
        batch_size=2,
        attrs={},
    )
    assert probe.modes and all(probe.modes)  # evaluate never wraps analyse in no_grad
    stored = xr.open_zarr(tmp_path / "p.zarr", consolidated=True)["analysis"]
    assert stored.encoding["chunks"][0] == 1  # one chunk per cycle: written cycle by cycle
    np.testing.assert_allclose(stored.values, ds["background"].values, rtol=1e-6, atol=1e-5)


def _fair_crps(members: np.ndarray, truth: np.ndarray, latitude: np.ndarray) -> float:
    """Fair CRPS per grid point, cos-latitude weighted grid mean (like RMSE)."""
    n = members.shape[0]
    skill = np.abs(members - truth).mean(axis=0)
    pairs = np.abs(members[:, None] - members[None, :]).sum(axis=(0, 1)) / (2 * n * (n - 1))
    weights = np.clip(np.cos(np.deg2rad(latitude)), 0, None)[:, None] * np.ones(truth.shape)
    return float(np.average(skill - pairs, weights=weights))


def test_gaussian_model_sampled_as_an_ensemble_stand_in(folder, tmp_path):
    config = {
        "task": {"dataset": str(folder), "batch_size": 1},
        "model": {"name": "convcnp_tiny", "kwargs": {}},
        "train": {"epochs": 1, "max_steps_per_epoch": 2, "amp": False, "out": str(tmp_path / "r")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    train.run(load_run_config(tmp_path / "c.yaml"), verbose=False)
    checkpoint = tmp_path / "r" / "checkpoints" / "best.pt"
    results = _run(folder, tmp_path / "ens", "--checkpoint", str(checkpoint), "--members", "3")
    store = xr.open_zarr(tmp_path / "ens" / "predictions" / "seed0.zarr", consolidated=True)[
        "analysis"
    ]
    assert store.sizes["member"] == 3
    ds = open_dataset(folder, split="test").load()
    members = store.values.astype(np.float64)  # (time, member, channel, lat, lon)
    truth = ds["target"].values.astype(np.float64)
    c = list(ds.channel.values).index("u10")
    lat = ds["latitude"].values
    expected = np.mean(
        [_fair_crps(members[t, :, c], truth[t, c], lat) for t in range(len(truth))]
    )
    scores = pd.read_parquet(tmp_path / "ens" / "scores.parquet")
    row = scores[(scores.model == "r") & (scores.channel == "u10") & (scores.metric == "crps")]
    row = row[(row.region == "global") & (row.period == "all")]
    assert row["value"].item() == pytest.approx(expected, rel=1e-6)
    assert "Spread/skill" in (tmp_path / "ens" / "ensemble.md").read_text()
    assert results["members"] == 3 and results["analysis_seconds_per_cycle"] > 0


def _recipe(name: str, **train) -> dict:
    return {
        "model": {"name": name, "kwargs": {"norm_layer": "group"}},
        "train": {"epochs": 10, **train},
        "task": {"dataset": "era5-sample"},
    }


CHANNELS = ["u10", "v10", "t2m", "msl"]


def _result(name: str, model_name: str, mse_per_cycle, digest="d" * 64, seed=0,
            per_channel: dict | None = None) -> dict:  # fmt: skip
    """A ``results.json`` of one seed: per-cycle MSE(1e-2) ``mse_per_cycle`` in every channel
    of ``CHANNELS``, or per channel (``per_channel``: channel -> per-cycle MSE(1e-2))."""
    per_channel = per_channel or dict.fromkeys(CHANNELS, mse_per_cycle)
    stacked = np.array([np.asarray(v, dtype=np.float64) for v in per_channel.values()])
    values = [float(v) for v in stacked.mean(axis=0)]
    entry = {"value": float(np.mean(values)), "ci": [0.0, 1.0], "std_over_seeds": None}
    host_name = model_name.removeprefix("multi_")
    normalised = {c: [float(x) / 100 for x in v] for c, v in per_channel.items()}
    return {
        "model": name,
        "models": [
            {
                "model_name": model_name,
                "checkpoint": {"seed": seed, "checkpoint": f"/runs/{model_name}/best.pt"},
                "recipe": _recipe(host_name),
            }
        ],
        "dataset_digest": digest,
        "split": "test",
        "times": [f"2024-01-{d:02d}" for d in range(1, len(values) + 1)],
        "channels": list(per_channel),
        "table3": {name: {"MSE(1e-2)": entry}},
        "per_cycle": {name: {"MSE(1e-2)": values}},
        "per_cycle_channels": {name: {"global": {"mse_norm": normalised}}},
        "modalities": {"used": ["precip"], "sources": {"precip": "ERA5 tp at capitals"}},
    }


def test_table4_imp_is_the_relative_mse_improvement_with_a_paired_interval(tmp_path):
    rng = np.random.default_rng(0)
    host = rng.uniform(30, 40, 50)
    multi = host * 0.9 + rng.normal(0, 0.1, 50)  # about 10 % better on every cycle
    results = [
        _result("ConvCNP", "convcnp_small", host),
        _result("Multi", "multi_convcnp_small", multi),
    ]
    imp = evaluate.improvement(results[1], results[0])
    assert imp["value"] == pytest.approx(100 * (1 - multi.mean() / host.mean()))
    assert imp["ci"][0] < imp["value"] < imp["ci"][1] and imp["ci"][0] > 9
    assert imp["host"] == "same recipe"
    table = evaluate.table4(results)
    assert "Imp (%)" in table and "| Multi |" in table and "precip: ERA5 tp at capitals" in table
    assert evaluate.table4(results[:1]) is None
    assert "trained from scratch" in table
    results[1]["modalities"]["used"] = ["precip", "precip_gauges"]
    assert "precip, precip_gauges (precip: ERA5 tp at capitals)" in evaluate.table4(results)
    host_path = tmp_path / "host.pt"
    results[0]["models"][0]["checkpoint"]["checkpoint"] = str(host_path)
    results[1]["models"][0]["checkpoint"]["init_from"] = {"path": str(host_path), "epoch": 9}
    assert "fine-tuned from this host's checkpoint" in evaluate.table4(results)
    assert evaluate.improvement(results[1], results[0])["host"] == "fine-tuned"
    other = _result("Multi", "multi_convcnp_small", multi, digest="e" * 64)
    with pytest.raises(DambenchInputError, match="dataset_digest differ"):
        evaluate.improvement(other, results[0])


def test_table4_imp_is_made_on_the_channels_both_results_scored():
    """A Multi-X scored on u10 and t2m against its host scored on all four channels: Imp is
    dambench.scoring's relative improvement on u10 and t2m (the old formula divided the mean
    over two channels by the mean over four)."""
    rng = np.random.default_rng(2)
    host = {c: rng.uniform(10 * (k + 1), 10 * (k + 2), 30) for k, c in enumerate(CHANNELS)}
    multi = {c: host[c] * 0.8 for c in ("u10", "t2m")}
    results = [
        _result("ConvCNP", "convcnp_small", None, per_channel=host),
        _result("Multi", "multi_convcnp_small", None, per_channel=multi),
    ]
    with pytest.warns(UserWarning, match="common channels u10, t2m"):
        imp = evaluate.improvement(results[1], results[0])
    shared = np.mean([host["u10"], host["t2m"]], axis=0).mean()
    assert imp["value"] == pytest.approx(100 * (1 - 0.8 * shared / shared))
    assert imp["channels"] == ["u10", "t2m"] and imp["host"] == "same recipe"
    assert imp["ci"][0] <= imp["value"] <= imp["ci"][1]
    with pytest.warns(UserWarning):
        table = evaluate.table4(results)
    assert "Imp on channels u10, t2m (compared on the common channels u10, t2m" in table


def test_table4_refuses_an_imp_across_different_hosts(tmp_path):
    """Multi-SDA (background as the score network's context) against zero-shot SDA, or a
    Multi-X trained with another recipe or seed than the X given, gets no Imp."""
    rng = np.random.default_rng(1)
    host_mse = rng.uniform(30, 40, 20)
    sda = _result("sda", "sda_small", host_mse)
    multi = _result("multi_sda", "multi_sda_small", host_mse * 0.5)
    multi["models"][0]["recipe"]["model"]["kwargs"] = {"background": "context"}
    sda["models"][0]["recipe"]["model"]["kwargs"] = {"background": "guidance"}
    with pytest.raises(DambenchInputError, match="background.*Imp across different hosts"):
        evaluate.improvement(multi, sda)
    table = evaluate.table4([sda, multi])
    assert "no Imp" in table and "| multi_sda |" in table
    assert "Imp (%)" not in table.splitlines()[0]  # the only Multi-X has no Imp
    # another model altogether, another seed, or a fine-tune from another checkpoint
    adas = _result("adas", "adas_small", host_mse)
    with pytest.raises(DambenchInputError, match="not on adas"):
        evaluate.improvement(_result("m", "multi_convcnp_small", host_mse), adas)
    reseeded = _result("m", "multi_sda_small", host_mse, seed=3)
    with pytest.raises(DambenchInputError, match="seed 3: no host run of that seed"):
        evaluate.improvement(reseeded, _result("sda", "sda_small", host_mse))
    longer = _result("m", "multi_sda_small", host_mse)
    longer["models"][0]["recipe"]["train"]["epochs"] = 90
    with pytest.raises(DambenchInputError, match="train.epochs: 10 -> 90"):
        evaluate.improvement(longer, _result("sda", "sda_small", host_mse))
    longer["models"][0]["checkpoint"]["init_from"] = {"path": str(tmp_path / "x.pt"), "epoch": 1}
    with pytest.raises(DambenchInputError, match="Imp across different hosts"):
        evaluate.improvement(longer, _result("sda", "sda_small", host_mse))


def _meta(model: str, seed: int, **train) -> dict:
    config = _recipe(model, seed=seed, out=f"runs/{model}_{seed}", **train)
    return {"checkpoint": f"runs/{model}_{seed}/best.pt", "model": model, "seed": seed,
            "config": config}


def test_seeds_of_one_method_share_model_and_config_and_differ_in_seed():
    evaluate.check_seeds_of_one_method([_meta("convcnp_small", 0), _meta("convcnp_small", 1)])
    with pytest.raises(DambenchInputError, match="holds convcnp_small and .* holds adas_small"):
        evaluate.check_seeds_of_one_method([_meta("convcnp_small", 0), _meta("adas_small", 1)])
    with pytest.raises(DambenchInputError, match="train.epochs: 10 -> 20"):
        evaluate.check_seeds_of_one_method(
            [_meta("convcnp_small", 0), _meta("convcnp_small", 1, epochs=20)]
        )
    with pytest.raises(DambenchInputError, match="all trained with train.seed=0"):
        evaluate.check_seeds_of_one_method([_meta("convcnp_small", 0), _meta("convcnp_small", 0)])
    a, b = _meta("convcnp_small", 0), _meta("convcnp_small", 1)
    assert evaluate.config_digest(a["config"]) == evaluate.config_digest(b["config"])


class _TargetProbe(BaselineModule):
    """Records whether its analysis step was handed the target."""

    def __init__(self):
        super().__init__()
        self.targets = []

    def analyse(self, batch, *, members=None, seed=0):
        self.targets.append(batch.target)
        return Analysis(mean=batch.background + 0.1 * batch.observation)


def test_analyse_never_sees_the_target_and_a_nan_target_changes_nothing(folder, tmp_path):
    ds = open_dataset(folder, split="test").load()
    stats = stats_from_attrs(ds)
    stores = {}
    for label, data in (("real", ds), ("nan", ds.assign(target=ds["target"] * np.nan))):
        probe = _TargetProbe()
        stores[label] = tmp_path / f"{label}.zarr"
        options = {"members": None, "sample_seed": 0, "batch_size": 2, "attrs": {}}
        evaluate.predict_to_store(probe, data, stats, stores[label], **options)
        assert probe.targets and all(t is None for t in probe.targets)
    real, nan = (xr.open_zarr(stores[k])["analysis"].values for k in ("real", "nan"))
    assert np.isfinite(real).all()
    np.testing.assert_array_equal(real, nan)


def test_withheld_modalities_are_marked_absent_not_faked():
    from baselines.interface import DABatch

    ones = torch.ones(2, 3, 5, 6)
    batch = DABatch(
        background=ones,
        observation=ones,
        mask=ones,
        modalities=torch.full((2, 2, 5, 6), 0.7),
        modality_present=torch.ones(2, 2),
    )
    batch = replace(batch, modality_mask=torch.ones(2, 2, 5, 6))
    kept = evaluate.withhold_modalities(batch, ["precip", "olr"], ["olr"])
    assert torch.equal(kept.modality_present, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert float(kept.modality_mask[:, 0].sum()) == 0 and float(kept.modality_mask[:, 1].min()) == 1
    assert float(kept.modalities[:, 0].abs().sum()) == 0 and torch.equal(
        kept.modalities[:, 1], batch.modalities[:, 1]
    )
    assert evaluate.withhold_modalities(batch, ["precip", "olr"], None) is batch
    none = evaluate.withhold_modalities(batch, ["precip", "olr"], [])
    assert float(none.modality_present.sum()) == 0
    with pytest.raises(DambenchInputError, match="not among"):
        evaluate.withhold_modalities(batch, ["precip", "olr"], ["gauges"])


def test_a_kept_modality_group_keeps_its_gauge_count_and_the_labels_say_so():
    """``--modalities precip`` once kept ``precip`` but silently withheld its gauge-count
    channel, while the labels said nothing was withheld."""
    assert evaluate._kept_modalities("precip") == ["precip", "precip_gauges"]
    assert evaluate._kept_modalities("olr, precip_gauges") == ["olr", "precip_gauges"]
    assert evaluate._kept_modalities("None") == [] and evaluate._kept_modalities(None) is None
    field = xr.DataArray(np.zeros((1, 2, 3)), dims=(schema.TIME, schema.LATITUDE, schema.LONGITUDE))
    ds = xr.Dataset(
        {"precip": field, "precip_gauges": field},
        attrs={"modalities": json.dumps({"precip": "ERA5 tp at 70 capitals"})},
    )
    labels = evaluate.modality_labels(ds, evaluate._kept_modalities("precip"))
    assert labels["used"] == ["precip", "precip_gauges"] and labels["withheld"] == []
    labels = evaluate.modality_labels(ds, evaluate._kept_modalities("none"))
    assert labels["used"] == [] and labels["withheld"] == ["precip", "precip_gauges"]
    assert labels["sources"] == {"precip": "ERA5 tp at 70 capitals"}


class _InnovationProbe(BaselineModule):
    """An ensemble whose members are the background shifted by 0.1 k, keeping
    ``innovations`` as SDA and SLAMS do; records each batch's observations and members."""

    def __init__(self, std):
        super().__init__()
        self.std, self.seen = torch.as_tensor(std, dtype=torch.float32), []

    def analyse(self, batch, *, members=None, seed=0):
        from baselines.layers.diffusion import normalised_innovations

        shifts = 0.1 * torch.arange(members, dtype=torch.float32).reshape(1, -1, 1, 1, 1)
        stacked = batch.background[:, None] + shifts  # (B, N, C, H, W)
        self.innovations = normalised_innovations(
            stacked, batch.observation, batch.mask, self.std
        )
        self.seen.append((stacked, batch.observation, batch.mask))
        return Analysis.from_members(stacked)


def test_innovations_pooled_over_cycles_equal_one_computation_over_the_split(folder, tmp_path):
    ds = open_dataset(folder, split="test")
    std = [0.3, 0.3, 0.05, 0.08]
    probe, records = _InnovationProbe(std), []
    options = {"members": 3, "sample_seed": 0, "batch_size": 2, "attrs": {}}
    evaluate.predict_to_store(probe, ds, stats_from_attrs(ds), tmp_path / "p.zarr",
                              innovations=records, **options)  # fmt: skip
    assert len(records) == 4  # 7 cycles in batches of 2, 2, 2, 1
    summary = evaluate.innovation_summary(records, CHANNELS)
    members = torch.cat([m for m, _, _ in probe.seen]).double()  # (T, N, C, H, W)
    observation = torch.cat([o for _, o, _ in probe.seen]).double()[:, None]
    mask = torch.cat([k for _, _, k in probe.seen]).bool()[:, None].expand_as(members)
    z = (members - observation) / torch.tensor(std, dtype=torch.float64).reshape(1, 1, 4, 1, 1)
    for c, channel in enumerate(CHANNELS):
        values = z[:, :, c][mask[:, :, c]]
        assert summary[channel]["rms"] == pytest.approx(float(values.square().mean().sqrt()))
        assert summary[channel]["beyond_5"] == pytest.approx(float((values.abs() > 5).double().mean()))
        observed = ds["observation"].sel(channel=channel).notnull().sum()
        assert summary[channel]["points"] == int(observed) > 0


def test_innovation_summary_of_an_unobserved_channel_and_a_wrong_length():
    record = {"rms": [1.0, float("nan")], "beyond_5": [0.0, float("nan")], "count": [10.0, 0.0]}
    summary = evaluate.innovation_summary([record, record], ["u10", "t2m"])
    assert summary == {
        "u10": {"rms": 1.0, "beyond_5": 0.0, "points": 20},
        "t2m": {"rms": None, "beyond_5": None, "points": 0},
    }
    assert evaluate.innovation_summary([], ["u10"]) == {}
    with pytest.raises(DambenchInputError, match=r"expected one per channel \(3: u10, v10, t2m\)"):
        evaluate.innovation_summary([record], ["u10", "v10", "t2m"])


def test_a_slams_run_records_its_normalised_innovations_per_channel(folder, tmp_path, monkeypatch):
    """evaluate.py run writes SLAMS' innovations per channel and seed into results.json
    (slams_tiny with its pre-fit noise levels stands in for a trained checkpoint)."""
    from baselines.registry import create_model

    model = create_model("slams_tiny", modality_chans=2)  # era5-sample's two modalities
    monkeypatch.setattr(evaluate, "build_models", lambda args, ds, stats: [model])
    results = _run(folder, tmp_path / "ens", "--model", "slams_tiny", "--members", "2")
    recorded = results["innovations"]
    assert "(member - y) / sigma_o" in recorded["definition"]
    per_channel = recorded["seeds"]["0"]
    assert list(per_channel) == CHANNELS
    ds = open_dataset(folder, split="test")
    for channel, entry in per_channel.items():
        assert entry["points"] == int(ds["observation"].sel(channel=channel).notnull().sum())
        assert np.isfinite(entry["rms"]) and 0 <= entry["beyond_5"] <= 1
