"""Stand-ins of FengWu's three files (``fengwu_v1.onnx``, ``global_means.npy``,
``global_stds.npy``): never a forecast model, never skill.

The ONNX file has FengWu's exact contract (see :mod:`dambench.backgrounds.onnx`): one input named
``"input"``, ``(1, 138, 721, 1440)`` float32, the normalised states at ``t - 6 h`` and ``t``; one
output ``"output"`` of the same shape (as FengWu's: Earth2Studio binds it like the input), whose
first 69 channels are the normalised state at ``t + 6 h``. The stand-in's step is cheap but not
trivial: a fixed 3 x 3 smoothing of the later state (renormalised at the edges of the grid) plus
half its 6-hour tendency; the other 69 output channels hold that tendency. The
mean and std files are ``(69,)`` float32 in the schema's channel order (FengWu's order), as the
upstream ``data_mean.npy`` and Earth2Studio's ``center``/``scale`` of size 69: here the stand-in
fields' nominal profile (:func:`dambench.standins.fields.channel_profile`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from dambench import schema
from dambench.grid import Grid
from dambench.standins.fields import channel_profile, standin_attrs

MODEL_FILE = "fengwu_v1.onnx"
MEAN_FILE = "global_means.npy"
STD_FILE = "global_stds.npy"
LABEL_FILE = "STANDIN.json"
SMOOTHING = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
TENDENCY_WEIGHT = 0.5


def normalisation() -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of the stand-in, ``(69,)`` float32 each, schema channel order."""
    profiles = np.array([channel_profile(c) for c in schema.CHANNELS], dtype=np.float32)
    return profiles[:, 0], profiles[:, 1]


def _module(n_channels: int, shape: tuple[int, int]):
    import torch

    class SmoothStep(torch.nn.Module):
        """(1, 2C, H, W) -> (1, 2C, H, W): [smooth(x_t) + w (x_t - x_{t-6h}), x_t - x_{t-6h}]."""

        def __init__(self, shape: tuple[int, int]):
            super().__init__()
            kernel = torch.tensor(SMOOTHING, dtype=torch.float32).expand(n_channels, 1, 3, 3)
            self.register_buffer("kernel", kernel.clone())
            ones = torch.ones(1, 1, *shape)
            weight = torch.nn.functional.conv2d(ones, self.kernel[:1], padding=1)
            self.register_buffer("inverse_weight", 1.0 / weight)  # renormalises the edges

        def forward(self, x):
            earlier, later = x[:, :n_channels], x[:, n_channels:]
            smooth = torch.nn.functional.conv2d(later, self.kernel, padding=1, groups=n_channels)
            tendency = later - earlier
            return torch.cat(
                [smooth * self.inverse_weight + TENDENCY_WEIGHT * tendency, tendency], 1
            )

    return SmoothStep(shape)


def write_fengwu_standin(folder: str | Path, *, grid_deg: float = 0.25) -> Path:
    """Write the three files into ``folder`` (kept when present) and a ``STANDIN.json`` label.

    Returns the model's path; the statistics lie beside it under FengWu's file names.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / MODEL_FILE
    mean, std = normalisation()
    np.save(folder / MEAN_FILE, mean)
    np.save(folder / STD_FILE, std)
    label = {**standin_attrs("FengWu's ONNX model and normalisation files"), "grid_deg": grid_deg}
    (folder / LABEL_FILE).write_text(json.dumps(label, indent=1))
    if model.exists():
        return model
    c = len(schema.CHANNELS)
    example = torch.zeros(1, 2 * c, *Grid(grid_deg).shape)
    partial = model.with_suffix(".onnx.partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _module(c, Grid(grid_deg).shape),
            (example,),
            str(partial),
            input_names=["input"],
            output_names=["output"],
            dynamo=False,
        )
    partial.rename(model)
    return model
