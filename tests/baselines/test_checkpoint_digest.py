"""Checkpoints carry a digest of their content, checked on every load.

Regression of issue 18: one flipped byte changed a weight by 9.7 and the checkpoint loaded
silently.
"""

from __future__ import annotations

import pytest
import torch

from baselines.checkpoint import (
    DIGEST_KEY,
    CheckpointError,
    content_digest,
    load_checkpoint,
    save_checkpoint,
)

WEIGHT = torch.arange(4096, dtype=torch.float32) / 7 + 0.25


def _payload() -> dict:
    return {
        "model": {
            "layer.weight": WEIGHT.clone(),
            "layer.bias": torch.zeros(3, dtype=torch.bfloat16),
        },
        "config": {"train": {"seed": 0, "lr": 1e-3}, "model": {"name": "toy"}},
        "model_name": "toy",
        "dataset": {"name": "era5-sample", "digest": "0" * 64, "channels": ["t2m"]},
        "normalization": {"mean": [280.0], "std": [10.0]},
        "rng": {"python": (3, [1, 2, 3], None)},
    }


def _flip_a_weight_byte(path) -> None:
    data = bytearray(path.read_bytes())
    start = bytes(data).find(WEIGHT.numpy().tobytes())
    assert start > 0
    data[start + 4 * 2000 + 3] ^= 0x01  # an exponent bit of weight 2000: x4 or /4
    path.write_bytes(bytes(data))


def test_an_untouched_checkpoint_loads_with_its_digest(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", _payload())
    for mmap in (True, False):
        state = load_checkpoint(path, mmap=mmap)
        torch.testing.assert_close(state["model"]["layer.weight"], WEIGHT, rtol=0, atol=0)
        assert state[DIGEST_KEY] == content_digest(state) == content_digest(_with_version())


def _with_version() -> dict:
    state = _payload()
    state["format_version"] = 1
    return state


def test_a_flipped_byte_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", _payload())
    _flip_a_weight_byte(path)
    changed = torch.load(path, weights_only=True)["model"]["layer.weight"]
    assert abs(float(changed[2000] - WEIGHT[2000])) > 100  # what used to load silently
    with pytest.raises(CheckpointError, match=rf"{path} is damaged: its content has sha256"):
        load_checkpoint(path)


def test_the_digest_sees_every_kind_of_value():
    base = content_digest(_payload())
    edits = [
        lambda p: p["model"]["layer.bias"].add_(1),
        lambda p: p["config"]["train"].update(lr=2e-3),
        lambda p: p["normalization"]["mean"].__setitem__(0, 280.5),
        lambda p: p["model"].update({"layer.weight": WEIGHT.reshape(64, 64).clone()}),
        lambda p: p["model"].update({"layer.weight": WEIGHT.double()}),
    ]
    for edit in edits:
        payload = _payload()
        edit(payload)
        assert content_digest(payload) != base
    assert content_digest(_payload()) == base


def test_a_checkpoint_without_a_digest_loads_with_a_warning(tmp_path):
    torch.save(_payload(), tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=f"records no {DIGEST_KEY}"):
        state = load_checkpoint(tmp_path / "old.pt")
    assert state["model_name"] == "toy"
