"""The schema's channel layout for models that group channels by variable (Adas, VAE-Var).

:data:`dambench.schema` orders channels as the surface channels first, then the upper-air
channels grouped by variable, each variable at the same pressure levels (69 = 4 + 5 x 13). A
schema-ordered subset keeps that shape: ``in_chans = surface_chans + upper_vars * levels``.
era5-sample's four surface channels are ``(4, upper_vars, 0)``: no level axis.
"""

from __future__ import annotations

import torch

from dambench import schema
from dambench.exceptions import DambenchInputError

SURFACE_CHANS = len(schema.SURFACE_VARIABLES)
UPPER_VARS = len(schema.ATMOSPHERIC_VARIABLES)


class ChannelLayout:
    """Surface channels and a (variable, level) grid of upper-air channels, in schema order.

    Parameters
    ----------
    in_chans
        Total number of channels.
    surface_chans
        Leading surface channels (schema: 4).
    upper_vars
        Upper-air variables (schema: 5); ``levels = (in_chans - surface_chans) / upper_vars``.
    """

    def __init__(
        self, in_chans: int, surface_chans: int = SURFACE_CHANS, upper_vars: int = UPPER_VARS
    ) -> None:
        upper = in_chans - surface_chans
        if surface_chans < 0 or upper < 0 or upper_vars < 1 or upper % upper_vars:
            raise DambenchInputError(
                f"Expected in_chans = surface_chans + upper_vars * levels in schema order; got "
                f"{in_chans=}, {surface_chans=}, {upper_vars=} ({upper} upper-air channels are "
                f"not a multiple of {upper_vars} variables). Pass the subset's surface_chans and "
                "upper_vars."
            )
        if in_chans < 1:
            raise DambenchInputError(f"Expected at least one channel; got {in_chans=}.")
        self.in_chans = in_chans
        self.surface_chans, self.upper_vars = surface_chans, upper_vars
        self.levels = upper // upper_vars

    @property
    def depth(self) -> int:
        """Level slices of a 3-D token grid: the levels plus one surface slice when present."""
        return self.levels + (1 if self.surface_chans else 0)

    @property
    def groups(self) -> list[int]:
        """Channels per variable group: the surface group, then one group per variable."""
        upper = [self.levels] * self.upper_vars if self.levels else []
        return ([self.surface_chans] if self.surface_chans else []) + upper

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> surface (B, S, H, W) and upper air (B, V, L, H, W)."""
        surface, upper = x[:, : self.surface_chans], x[:, self.surface_chans :]
        b, _, h, w = x.shape
        return surface, upper.reshape(b, self.upper_vars, self.levels, h, w)

    def merge(self, surface: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        b, _, _, h, w = upper.shape
        return torch.cat([surface, upper.reshape(b, -1, h, w)], dim=1)

    def __repr__(self) -> str:
        return (
            f"ChannelLayout(surface_chans={self.surface_chans}, upper_vars={self.upper_vars}, "
            f"levels={self.levels})"
        )
