"""SDA-cond: a conditional score model ``p(x | x_b)`` trained on (background, state) pairs,
guided by the observations.

Paper
    Rozet & Louppe (2023), "Score-based Data Assimilation", NeurIPS 2023,
    https://arxiv.org/abs/2306.10574, section 6.5 of ``shared/reference/baselines.md`` (the
    background as context channels of the score network instead of a likelihood term).
Upstream code
    ``francois-rozet/sda`` (MIT licence) has no conditional network; this file reuses the
    zero-shot model's code (:class:`~baselines.models.sda.SDA`) with the context channels.

Method
    The noise predictor ``eps_phi([x_t || x_b], t)`` learns ``p(x* | x_b)`` from the train
    split's pairs, so the background's error statistics (correlations included) are learned,
    not assumed; the observations ``y ~ N(x, sigma_o**2)`` guide the sampler
    (:mod:`baselines.layers.diffusion`, preconditioned corrector) and there is no background
    term. A different method from zero-shot SDA (``sda_*``): its own Table 3 row, and the host
    of the multi-modal adapter (``multi_sda_cond_*``: the adapter's context is added to the
    context channels, :meth:`~baselines.models.sda.SDA.adapter_slots`), so Multi-SDA's Imp is
    measured against the same kind of model.

Deliberate deviations
    Those of :mod:`baselines.models.sda`; ``sigma_b`` is still measured by ``fit`` (a
    statistic reported beside the model) but not used by the sampler.
"""

from __future__ import annotations

from typing import ClassVar

from baselines.interface import ModelInfo
from baselines.models.sda import PAPER, SDA
from baselines.registry import register_variants

__all__ = ["SDACond"]


class SDACond(SDA):
    """SDA with the background as the score network's context (see the module docstring);
    the constructor is :class:`~baselines.models.sda.SDA`'s with ``background="context"``."""

    background_modes: ClassVar[tuple[str, ...]] = ("context",)

    def __init__(self, *args, background: str = "context", **kwargs) -> None:
        super().__init__(*args, background=background, **kwargs)


SMALL = dict(in_chans=4, hidden_channels=(16, 32), hidden_blocks=(1, 1), embed_dim=32)
TINY = dict(in_chans=4, hidden_channels=(8, 16), hidden_blocks=(1, 1), embed_dim=16)
FULL = dict(in_chans=69, hidden_channels=(96, 192, 384), hidden_blocks=(3, 3, 3))

INFO = ModelInfo(
    output="ensemble",
    trainable=True,
    needs_fit=True,
    supports_patches=False,
    uses_modalities=False,
    adapter_entry="score_context",
    paper=PAPER + " (conditional score p(x | x_b), section 6.5)",
    code="https://github.com/francois-rozet/sda",
    code_licence="MIT",
)

register_variants(
    SDACond,
    {
        "sda_cond_tiny": (
            "CPU-test size of the conditional model: hidden (8, 16), 8 steps, gamma 0.1, "
            "2 members; before fit(), sigma_b = 0.5 and sigma_o = 0.3 until fit() (C = 4).",
            {**TINY, "steps": 8, "gamma": 0.1, "members": 2, "member_batch": 2,
             "background_std": 0.5, "observation_std": 0.3},  # fmt: skip
        ),
        "sda_cond_small": (
            "CPU-training size of the conditional model: hidden (16, 32), 32 steps, "
            "1 preconditioned corrector, gamma 0.1 (sda_small's network and sampler).",
            {**SMALL, "steps": 32, "gamma": 0.1},
        ),
        "sda_cond_full": (
            "Paper size of the conditional model: hidden (96, 192, 384) x 3 blocks with 2C "
            "input channels, 256 steps, 1 preconditioned corrector, tau 0.5, gamma 1e-2.",
            dict(FULL),
        ),
    },
    info=INFO,
)
