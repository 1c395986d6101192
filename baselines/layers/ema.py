"""An exponential moving average (EMA) of a model's weights, kept beside the trained model.

After every optimiser step, ``ema = decay * ema + (1 - decay) * weights`` for every floating
parameter and floating buffer (BatchNorm's running statistics included); integer buffers
(``num_batches_tracked``) are copied. With ``decay = 0.999`` the average spans about the last
1,000 steps. The averaged copy is what evaluation uses and what a checkpoint keeps as its
``model`` weights (``baselines/train.py``); diffusion models (SDA, SLAMS) are evaluated with it.

Reference
    Polyak & Juditsky (1992), SIAM J. Control Optim. 30, 838-855; the form is timm's
    ``ModelEmaV2`` (``timm/utils/model_ema.py``), written here without a warm-up.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dambench.exceptions import DambenchInputError


class ModelEma(nn.Module):
    """A frozen copy of ``model`` whose weights follow an EMA of ``model``'s.

    Parameters
    ----------
    model
        The model being trained; copied (with its current weights) at construction.
    decay
        ``0 < decay < 1``: the weight of the old average at each :meth:`update`.

    Attributes
    ----------
    module
        The averaged copy (eval mode, no gradients); it keeps ``model``'s extra attributes
        (``model_name``, ``info``) and methods (``analyse``, ``loss``).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise DambenchInputError(f"EMA decay must lie in (0, 1); got {decay=}.")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        current = model.state_dict()
        for name, averaged in self.module.state_dict().items():
            value = current[name].detach()
            if averaged.is_floating_point():
                averaged.lerp_(value.to(averaged.dtype), 1.0 - self.decay)
            else:
                averaged.copy_(value)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
