import math

import pytest

from baselines.config import TrainConfig, load_run_config
from baselines.train import EpochSampler, learning_rate
from dambench.exceptions import DambenchInputError


def test_paper_schedule_golden_points():
    cfg = TrainConfig()  # 1e-5 -> 1e-4 over the first sixth, cosine to 3e-6
    total = 600
    assert learning_rate(0, total, cfg) == pytest.approx(1e-5)
    assert learning_rate(50, total, cfg) == pytest.approx(1e-5 + 0.5 * 9e-5)
    assert learning_rate(100, total, cfg) == pytest.approx(1e-4)
    midway = 100 + 250  # half of the cosine: the mean of peak and end
    assert learning_rate(midway, total, cfg) == pytest.approx((1e-4 + 3e-6) / 2)
    assert learning_rate(total, total, cfg) == pytest.approx(3e-6)
    rates = [learning_rate(s, total, cfg) for s in range(100, total)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_config_is_strict_and_overridable(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "task: {dataset: era5-sample}\nmodel: {name: convcnp_tiny}\ntrain: {epochs: 2}\n"
    )
    cfg = load_run_config(path, ["train.epochs=5", "model.kwargs.embed_dim=8"])
    assert cfg.train.epochs == 5 and cfg.model.kwargs == {"embed_dim": 8}
    path.write_text("model: {name: x}\ntrain: {epoch: 2}\n")
    with pytest.raises(ValueError, match=r"Unknown keys in train: \['epoch'\]"):
        load_run_config(path)
    path.write_text("model: {name: x}\noptimizer: {}\n")
    with pytest.raises(ValueError, match="Unknown sections"):
        load_run_config(path)
    path.write_text("model: {name: x}\n")
    with pytest.raises(ValueError, match="must look like"):
        load_run_config(path, ["train.epochs"])


def test_train_options_are_validated_naming_the_key():
    cfg = TrainConfig(ema_decay=0.999, sample_every=2, sample_batches=3, sample_members=4)
    assert cfg.ema_decay == 0.999 and cfg.sample_every == 2
    for bad, key in [
        ({"ema_decay": 1.0}, "train.ema_decay"),
        ({"sample_every": 0}, "train.sample_every"),
        ({"sample_batches": 0}, "train.sample_batches"),
        ({"sample_members": 0}, "train.sample_members"),
        ({"max_steps_per_epoch": 0}, "train.max_steps_per_epoch"),
        ({"epochs": 0}, "train.epochs"),
    ]:
        with pytest.raises(DambenchInputError, match=key):
            TrainConfig(**bad)


@pytest.mark.parametrize("name", ["convcnp_small", "convcnp_full", "fnp_small", "fnp_full"])
def test_shipped_configs_load(name):
    cfg = load_run_config(f"baselines/configs/{name}.yaml")
    assert cfg.model.name == name


def test_ranks_split_one_shuffled_order():
    single = list(EpochSampler(10, seed=3))
    ranks = [list(EpochSampler(10, rank=r, world=2, seed=3)) for r in (0, 1)]
    assert sorted(single) == list(range(10))
    assert [i for pair in zip(*ranks, strict=True) for i in pair] == single
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != single
    odd = [list(EpochSampler(7, rank=r, world=2)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == math.ceil(7 / 2)
