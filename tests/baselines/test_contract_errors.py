"""Error types of the baselines' contract: a diverged sampler is a ``DambenchSamplingError``
(``dambench.exceptions``), caught as such, as a ``DambenchError`` or as a ``RuntimeError``."""

from __future__ import annotations

import pytest
import torch

from baselines.layers.diffusion import SamplerDivergedError, SamplerSettings, check_samples
from dambench.exceptions import DambenchError, DambenchSamplingError


def test_a_diverged_sampler_raises_the_packages_sampling_error():
    assert issubclass(DambenchSamplingError, DambenchError)
    assert issubclass(DambenchSamplingError, RuntimeError)
    assert issubclass(SamplerDivergedError, DambenchSamplingError)
    diverged = torch.tensor([0.0, 2e3])
    with pytest.raises(DambenchSamplingError, match="diverged.*steps=8") as info:
        check_samples(diverged, SamplerSettings(steps=8), "test")
    assert type(info.value) is SamplerDivergedError
    with pytest.raises(DambenchSamplingError, match="diverged"):
        check_samples(torch.tensor([float("nan")]), SamplerSettings(), "test")
    check_samples(torch.tensor([1.0, -999.0]), SamplerSettings(), "test")  # within the limit
