"""VAE-Var: a variational analysis whose background-error model is a VAE decoder.

Paper
    Xiao, Jia, Wang, Bai, Zhou, Ouyang, Chen, Han, Li (2025), "VAE-Var: Variational
    autoencoder-enhanced variational methods for data assimilation in meteorology", ICLR 2025,
    https://openreview.net/forum?id=AfJQdFbyhW (arXiv 2405.13711).
Upstream code
    ``xiaoyi018/VAE-Var`` (archived; ``nf_model/vae.py``, ``da_4dvar.py``) and its successor
    ``xiaoyi018/AI-VarDA`` (``assimilation_models/var_assimilation.py``); DAMBench's
    ``models/VAE.py`` has the network only. None has a licence; this file is written from
    ``shared/reference/baselines.md`` sections 5 and 11 and copies no code.

Method
    **Training** (``loss``): a VAE of normalised background errors
    ``eps = (x* - x_b) / sigma_err`` (x*, x_b in the dataset's normalised units; ``sigma_err``
    the per-channel RMS of ``x* - x_b`` on the train split, :meth:`VAEVar.fit`). Encoder and
    decoder are local-global Swin U-Nets (:class:`~baselines.layers.lgunet.LGUnet`) over the
    variable groups; the latent ``z`` has half of each group's channels at full resolution
    ([2, 6, 6, 6, 6, 6] = 32 at 69 channels, 2 for era5-sample's four surface channels). Loss:
    ``sum (d(z) - eps)^2 / (2 sigma^2) + KL(q(z | eps) || N(0, I))`` with ``sigma`` =
    ``recon_sigma`` (upstream 2.0) and ``d`` the decoded increment (below).

    **Decoded increment** ``d(z)`` (``increment``): ``"centred"`` (dambench's default, every
    shipped config and the README's tables) is ``D(z) - D(0)``, so ``d(0) = 0`` exactly and the
    solve starts from the background, ``x(0) = x_b``; ``"raw"`` (upstream) is ``D(z)``, whose
    ``x(0) = x_b + D(0) sigma_err`` differs from the background by whatever the decoder gives
    at 0. The decoder's patch recovery (``recovery``, :mod:`baselines.layers.lgunet`) is
    ``"resize_conv"`` by default (shipped configs) and ``"transposed"`` upstream, whose 2 x 2
    tiles put grid-scale (2-periodic) noise into every increment (issue 17: SpecDiv 0.78 on
    era5-sample came from it).

    **Analysis** (``analyse``, also ``forward``): for each sample, minimise over ``z``

    ``J(z) = 1/2 ||z||^2 + (1/2 sum mask (x(z) - y)^2 / R) / lambda``,
    ``x(z) = x_b + d(z) sigma_err``,

    from ``z = 0`` with L-BFGS (``lbfgs_history`` 10, ``lbfgs_max_iter`` 10, strong-Wolfe line
    search) stepped ``outer_steps`` times
    (:func:`~baselines.layers.variational.variational_solve`); the analysis is ``x(z*)``.
    ``R = max(obs_error_std, obs_error_floor)^2`` per channel, ``obs_error_std`` the dataset's
    recorded observation noise in normalised units (:meth:`VAEVar.fit`). Defaults are
    the upstream code's (section 11.1): ``bg_lambda`` = 400, ``outer_steps`` = 2. The solve runs
    with gradients on (for ``z`` only) and in float32 whatever the caller's grad mode or
    autocast.

Grid
    The LGUnet pads the input on the sphere to multiples of 4 (121 -> 124 rows) and crops back;
    ``z`` and the analysis live on the dataset's grid. No resize.

Deliberate deviations
    - Training target: ``x* - x_b`` on the train split (the dataset has one 24 h background per
      cycle, so the upstream NMC pairs of two forecasts cannot be formed; section 11.1 names this
      the fallback), normalised by its own per-channel RMS.
    - The loss is divided by the number of state elements (upstream: plain sums); the minimiser
      is the same and the scale does not depend on the grid.
    - The analysis solves each sample of a batch on its own (its result does not depend on the
      batch it came in). ``R`` is the dataset's noise (upstream: a fixed normalised 0.005-0.01,
      which ``lambda = 400`` then inflates to an effective std of 0.1-0.2).
    - ``vaevar_small`` (era5-sample, 11 train cycles) uses ``recon_sigma = 0.5`` and
      ``lambda = 1`` (the Bayesian weight of the dataset's R). Measured on era5-sample's test
      split: with the upstream sigma = 2.0 the posterior collapses (KL 0.001 per element after
      10 epochs; the decoder ignores z) and the analysis barely moves (MSE 40.7e-2 vs the
      background's 43.7e-2); with sigma = 0.5, 30 epochs: 24.1e-2 at lambda = 1, 27.7e-2 at
      lambda = 4; 4 outer steps instead of 2 fit the observations harder and score worse.
    - ``seed`` of :meth:`VAEVar.analyse` is accepted for the contract and unused: ``z`` starts at
      0 (or an adapter's ``z0``) and L-BFGS is deterministic.
    - ``batch.modalities`` are ignored by VAE-Var itself.

Multi-VAE-Var (``multi_vaevar_*``, :mod:`baselines.models.multi`)
    The multi-modal adapter gives the solve's first guess ``z0``, and ``loss`` adds
    ``mean(((x_b + d(z0) sigma_err - x*) / sigma_err)^2)`` (diagnostic ``adapter_first_guess``,
    decoder weights detached: it trains the adapter only). A first guess alone leaves ``J``
    unchanged, so a converged solve ends where it would without the modalities (issue 17).
    With ``modality_term`` (the multi model's option, default ``True``; every shipped
    ``multi_vaevar_*`` config) the modalities also enter the analysis as observations: a
    learned operator ``H_m`` and error std ``sigma_m`` per observed modality
    (:class:`~baselines.layers.modality_operator.ModalityOperator`, in the adapter's
    ``extras``) add

    ``M(x) = sum_m sum_cells (H_m(x(z)) - y_m)^2 / (2 sigma_m^2)``

    to the observation term of ``J`` (divided by ``lambda`` as the state's own), over the cells
    where modality ``m`` has data. ``H_m`` and ``sigma_m`` are trained in the fine-tuning by
    ``loss``'s ``modality_nll``, ``-log N(y_m; H_m(x*), sigma_m^2)`` of the pairs' **target**
    (the train split's; ``analyse`` never reads a target). ``H_m`` starts at 0, so the
    fine-tuning starts from the host's analysis. ``modality_term: false`` is the first guess
    alone (the paper's adapter entry as dambench had it before issue 17).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import xarray as xr

from baselines.interface import Analysis, BaselineModule, DABatch, LossAndDiagnostics, ModelInfo
from baselines.layers.adapter import (
    ADAPTER_ATTRIBUTE,
    adapter_context,
    adapter_extra,
    add_adapter_extra,
    has_adapter,
)
from baselines.layers.channel_layout import SURFACE_CHANS, UPPER_VARS, ChannelLayout
from baselines.layers.covariance import (
    channel_std,
    check_train_split,
    cycle_indices,
    normalised_errors,
    normalised_observation_error_std,
    observation_noise_of,
)
from baselines.layers.gaussian import check_batch
from baselines.layers.lgunet import RECOVERIES, LGUnet
from baselines.layers.modality_operator import ModalityData, ModalityOperator
from baselines.layers.variational import Misfit, VariationalSolution, variational_solve
from baselines.registry import register_variants
from dambench import schema
from dambench.exceptions import DambenchInputError

__all__ = ["VAEVar"]

logger = logging.getLogger(__name__)

DEFAULT_OBS_ERROR_FLOOR = 1e-3
"""Smallest observation-error std in R (normalised units), so R stays positive."""
INCREMENTS = ("centred", "raw")
"""Decoded increments (module docstring): ``D(z) - D(0)`` (default) or upstream's ``D(z)``."""
MODALITY_OPERATOR = "modality_operator"
"""Name of Multi-VAE-Var's :class:`ModalityOperator` among the adapter's extras."""


# --- building blocks ---------------------------------------------------------------------------


def decoded_increment(decode, z: torch.Tensor, centred: bool) -> torch.Tensor:
    """``decode(z) - decode(0)`` (``centred``; exactly 0 at ``z = 0``) or ``decode(z)``.

    ``z`` is (B, L, H, W); ``decode(0)`` is evaluated on zeros of ``z``'s shape (a batch of
    another size may take other kernels, whose rounding would leave ~1e-7 at ``z = 0``).
    """
    decoded = decode(z)  # (B, C, H, W)
    if not centred:
        return decoded
    return decoded - decode(torch.zeros_like(z))


# --- model -------------------------------------------------------------------------------------


class VAEVar(BaselineModule):
    """VAE-Var on a lat-lon grid (see the module docstring).

    Parameters
    ----------
    in_chans, surface_chans, upper_vars
        Channels and their schema layout (:class:`~baselines.layers.channel_layout.ChannelLayout`);
        one variable group for the surface channels and one per upper-air variable.
    img_size
        (H, W) the position embeddings are built for (other grids resample them).
    enc_dim, depths, num_heads, embed_dim, global_depths, global_heads, window_size
        The LGUnet of encoder and decoder (upstream: 96, (2, 2), (3, 6), 1152, (4, 4, 4), 6,
        (4, 4)).
    recon_sigma
        ``sigma`` of the Gaussian reconstruction term (upstream training script: 2.0).
    recovery
        The decoder's patch recovery, ``"resize_conv"`` (default) or ``"transposed"``
        (upstream); :mod:`baselines.layers.lgunet`.
    increment
        ``"centred"`` (default): the decoded increment is ``D(z) - D(0)``; ``"raw"``
        (upstream): ``D(z)``.
    bg_lambda, outer_steps, lbfgs_max_iter, lbfgs_history
        The analysis solve (upstream: 400, 2, 10, 10).
    obs_error_floor
        Smallest observation-error std in R (normalised units).
    sigma_err, obs_error_std
        Per-channel values (or one for all) to use without :meth:`fit` (tests, the tiny
        variant); by default the model is unfitted and refuses ``loss``/``analyse`` until
        :meth:`fit` has run on the train split.
    """

    adapter_options: ClassVar[dict[str, Any]] = {"modality_term": True}
    """Options of ``multi_vaevar_*`` (:meth:`configure_adapter`; module docstring)."""

    def __init__(
        self,
        in_chans: int = 69,
        img_size: Sequence[int] = (121, 240),
        enc_dim: int = 96,
        depths: Sequence[int] = (2, 2),
        num_heads: Sequence[int] = (3, 6),
        embed_dim: int = 1152,
        global_depths: Sequence[int] = (4, 4, 4),
        global_heads: int = 6,
        window_size: Sequence[int] = (4, 4),
        surface_chans: int = SURFACE_CHANS,
        upper_vars: int = UPPER_VARS,
        recon_sigma: float = 2.0,
        recovery: str = "resize_conv",
        increment: str = "centred",
        bg_lambda: float = 400.0,
        outer_steps: int = 2,
        lbfgs_max_iter: int = 10,
        lbfgs_history: int = 10,
        obs_error_floor: float = DEFAULT_OBS_ERROR_FLOOR,
        sigma_err: float | Sequence[float] | None = None,
        obs_error_std: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not (recon_sigma > 0 and bg_lambda > 0 and obs_error_floor > 0):
            raise DambenchInputError(
                f"Need recon_sigma, bg_lambda and obs_error_floor > 0; got {recon_sigma=}, "
                f"{bg_lambda=}, {obs_error_floor=}."
            )
        if outer_steps < 0 or lbfgs_max_iter < 1 or lbfgs_history < 1:
            raise DambenchInputError(
                f"Need outer_steps >= 0, lbfgs_max_iter >= 1, lbfgs_history >= 1; got "
                f"{outer_steps=}, {lbfgs_max_iter=}, {lbfgs_history=}."
            )
        if increment not in INCREMENTS:
            raise DambenchInputError(
                f"increment must be one of {INCREMENTS}; got {increment!r} ('centred': "
                "D(z) - D(0), dambench's default; 'raw': D(z), upstream)."
            )
        if recovery not in RECOVERIES:
            raise DambenchInputError(
                f"recovery must be one of {RECOVERIES}; got {recovery!r} ('resize_conv', "
                "dambench's default; 'transposed', upstream)."
            )
        self.increment_form, self.recovery = increment, recovery
        self.in_chans = in_chans
        self.layout = ChannelLayout(in_chans, surface_chans, upper_vars)
        groups = self.layout.groups
        self.latent_groups = [max(1, c // 2) for c in groups]
        net = dict(
            enc_dim=enc_dim,
            depths=depths,
            num_heads=num_heads,
            embed_dim=embed_dim,
            global_depths=global_depths,
            global_heads=global_heads,
            window_size=window_size,
            img_size=img_size,
            recovery=recovery,
        )
        self.encoder = LGUnet(groups, [2 * n for n in self.latent_groups], **net)
        self.decoder = LGUnet(self.latent_groups, groups, **net)
        self.recon_sigma = float(recon_sigma)
        self.bg_lambda = float(bg_lambda)
        self.outer_steps, self.lbfgs_max_iter = outer_steps, lbfgs_max_iter
        self.lbfgs_history = lbfgs_history
        self.obs_error_floor = float(obs_error_floor)
        self.register_buffer("sigma_err", torch.ones(in_chans))
        self.register_buffer("obs_error_std", torch.ones(in_chans))
        self.register_buffer("fitted", torch.tensor(False))
        self.fit_info: dict = {}
        if (sigma_err is None) != (obs_error_std is None):
            raise DambenchInputError("Pass both sigma_err and obs_error_std, or neither.")
        if sigma_err is not None:
            self.set_error_statistics(sigma_err, obs_error_std)

    # - error statistics -

    def set_error_statistics(
        self, sigma_err: float | Sequence[float], obs_error_std: float | Sequence[float]
    ) -> None:
        """Set ``sigma_err`` (> 0) and the observation-error std (>= 0), normalised units, one
        value or one per channel; the model counts as fitted."""
        values = []
        for name, value in (("sigma_err", sigma_err), ("obs_error_std", obs_error_std)):
            vector = torch.as_tensor(value, dtype=torch.float32).flatten()
            if vector.numel() == 1:
                vector = vector.expand(self.in_chans)
            if vector.numel() != self.in_chans or not torch.isfinite(vector).all():
                raise DambenchInputError(
                    f"{name} needs 1 or {self.in_chans} finite values; got {vector.tolist()}."
                )
            values.append(vector)
        if (values[0] <= 0).any() or (values[1] < 0).any():
            raise DambenchInputError(
                f"Need sigma_err > 0 and obs_error_std >= 0; got {values[0].tolist()}, "
                f"{values[1].tolist()}."
            )
        self.sigma_err.copy_(values[0])
        self.obs_error_std.copy_(values[1])
        self.fitted.fill_(True)

    def fit(
        self,
        dataset: xr.Dataset,
        stats: xr.Dataset,
        *,
        verbose: bool = False,
        max_cycles: int | None = None,
    ) -> VAEVar:
        """Estimate ``sigma_err`` and the observation-error std on the **train split**.

        Parameters
        ----------
        dataset
            ``open_dataset(..., split="train")`` with ``background`` and ``target`` (time,
            channel, latitude, longitude) in physical units and the ``observation`` attribute
            that records the noise. Cycles of any other split are refused.
        stats
            Train-split mean/std per channel (:func:`dambench.load.stats_from_attrs`).
        verbose
            Show a progress bar over cycles.
        max_cycles
            Use at most this many cycles, evenly spaced (default: all).

        Returns
        -------
        The model itself: ``sigma_err[c]`` = RMS over cycles and grid points of
        ``(x* - x_b) / std[c]`` (unweighted, as the training loss), ``obs_error_std`` = the
        recorded noise / ``std[c]``.
        """
        channels = check_train_split(dataset, type(self).__name__, in_chans=self.in_chans)
        std = channel_std(stats, channels)
        times = cycle_indices(dataset.sizes[schema.TIME], max_cycles)
        squares, count = np.zeros(len(channels)), 0
        for errors in normalised_errors(
            dataset, std, times, 1, desc="VAE-Var fit", verbose=verbose
        ):
            error = errors[0]  # (C, H, W), normalised; its sign does not matter here
            squares += np.square(error).sum(axis=(1, 2))
            count += error[0].size
        sigma_err = np.sqrt(squares / count)
        noise = observation_noise_of(dataset)
        obs_std = normalised_observation_error_std(channels, stats, noise)
        if not np.all(sigma_err > 0):
            raise DambenchInputError(
                f"x* - x_b is zero on the train split for channels "
                f"{[c for c, s in zip(channels, sigma_err, strict=True) if s <= 0]}; VAE-Var "
                "needs background errors to learn."
            )
        self.set_error_statistics(sigma_err.tolist(), obs_std.tolist())
        self.fit_info = {
            "split": "train",
            "dataset": str(dataset.attrs.get("dambench_dataset", "")),
            "n_cycles": int(times.size),
            "channels": channels,
            "observation_noise": str(noise),
        }
        logger.info("VAE-Var fit on %d train cycles: sigma_err=%s", times.size, sigma_err)
        return self

    def _require_fitted(self) -> None:
        if not bool(self.fitted):
            raise DambenchInputError(
                "VAE-Var has no error statistics: call model.fit(train_ds, stats) on the train "
                "split (train.py does), load a checkpoint of a fitted model, or pass sigma_err= "
                "and obs_error_std=."
            )

    # - training -

    def loss(self, batch: DABatch) -> LossAndDiagnostics:
        """The VAE loss on ``eps = (x* - x_b) / sigma_err``, per state element.

        ``[sum (d(z) - eps)^2 / (2 sigma^2) + KL] / (B C H W)`` with ``z`` drawn by the
        reparameterisation trick; diagnostics ``recon_mse`` (error units), ``kl`` (per element).
        """
        check_batch(batch, self.in_chans, type(self).__name__)
        self._require_fitted()
        if batch.target is None:
            raise DambenchInputError("VAEVar.loss needs batch.target (the truth x*).")
        eps = (batch.target - batch.background) / self.sigma_err.view(1, -1, 1, 1)
        stats = self.encoder(eps)  # (B, 2 L, H, W), per group [mu, logvar]
        mu, logvar = self._split_posterior(stats)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = self.increment(z).float()  # the sums in float32 under autocast
        mu, logvar, eps = mu.float(), logvar.float(), eps.float()
        elements = eps.numel()
        recon_term = ((recon - eps) ** 2).sum() / (2 * self.recon_sigma**2) / elements
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / elements
        loss = recon_term + kl
        diagnostics = {
            "vae_loss": float(loss.detach()),
            "recon_mse": float(((recon.detach() - eps) ** 2).mean()),
            "kl": float(kl.detach()),
        }
        if has_adapter(self):  # after the VAE terms: their random draws stay the host's
            first_guess = self._first_guess_error(batch, eps)
            loss = loss + first_guess
            diagnostics["adapter_first_guess"] = float(first_guess.detach())
        operator = self.modality_operator()
        if operator is not None:
            nll = self._modality_nll(operator, batch)
            loss = loss + nll
            diagnostics["modality_nll"] = float(nll.detach())
        return LossAndDiagnostics(loss, diagnostics)

    def _modality_nll(self, operator: ModalityOperator, batch: DABatch) -> torch.Tensor:
        """The operators' ``-log N(y_m; H_m(x*), sigma_m^2)`` per cell with data (float32;
        0 for a batch without modalities): it trains ``H_m`` and ``sigma_m`` only."""
        data = operator.data(batch)
        if data is None:
            return batch.target.new_zeros((), dtype=torch.float32)
        with torch.autocast(batch.target.device.type, enabled=False):
            return operator.nll(batch.target.float(), data)

    def increment(self, z: torch.Tensor) -> torch.Tensor:
        """The decoded increment ``d(z)`` (B, C, H, W) in error units of latents ``z`` (B, L, H,
        W): ``D(z) - D(0)`` (``increment="centred"``, exactly 0 at ``z = 0``) or ``D(z)``."""
        return decoded_increment(self.decoder, z, self.increment_form == "centred")

    def _solve_increment(self, latent_shape: Sequence[int], like: torch.Tensor):
        """``z -> d(z)`` for the solve: ``D(0)`` (constant in ``z``) decoded once, without a
        graph, on a zero latent (1, *latent_shape) in ``like``'s dtype."""
        if self.increment_form != "centred":
            return self.decoder
        with torch.no_grad():
            offset = self.decoder(like.new_zeros((1, *latent_shape)))  # (1, C, H, W)
        return lambda z: self.decoder(z) - offset

    def _first_guess_error(self, batch: DABatch, eps: torch.Tensor) -> torch.Tensor:
        """``mean((d(z0) - eps)^2)`` in error units (= ``((x_b + d(z0) sigma - x*) / sigma)^2``)
        with the adapter's first guess ``z0`` and the decoder's weights detached: it trains
        the adapter only."""
        z0 = self._first_guess(batch)  # (B, L, H, W)
        frozen = {name: p.detach() for name, p in self.decoder.named_parameters()}

        def decode(z: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.decoder, frozen, (z,))

        decoded = decoded_increment(decode, z0, self.increment_form == "centred").float()
        return ((decoded - eps.float()) ** 2).mean()

    def _first_guess(self, batch: DABatch) -> torch.Tensor:
        """The adapter's first guess ``z0`` (B, L, H, W); 0 without an adapter or tokens."""
        b, _, h, w = batch.background.shape
        zeros = batch.background.new_zeros((b, sum(self.latent_groups), h, w))
        return adapter_context(self, batch).add(zeros, slot=0)

    def configure_adapter(self, *, modality_term: bool) -> None:
        """Multi-VAE-Var's option (after :func:`~baselines.layers.adapter.attach_adapter`):
        with ``modality_term``, learned operators of the adapter's observed modalities whose
        observation term enters ``J`` (module docstring); without, the first guess alone.

        Raises
        ------
        DambenchInputError
            ``modality_term`` is not a bool, or the modalities hold no observed one.
        """
        if not isinstance(modality_term, bool):
            raise DambenchInputError(
                f"modality_term must be true or false; got {modality_term!r}."
            )
        if modality_term:
            modalities = getattr(self, ADAPTER_ATTRIBUTE).modalities
            operator = ModalityOperator(self.in_chans, modalities)
            add_adapter_extra(self, MODALITY_OPERATOR, operator)

    def modality_operator(self) -> ModalityOperator | None:
        """Multi-VAE-Var's modality operators (``modality_term``), or ``None``."""
        return adapter_extra(self, MODALITY_OPERATOR)

    def adapter_slots(self) -> tuple[int, ...]:
        """Channels of the adapter entry (``ModelInfo.adapter_entry``): the first guess of the
        latent ``z``, (B, sum(latent_groups), H, W)."""
        return (sum(self.latent_groups),)

    def _split_posterior(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per group, the first half of the encoder's channels is mu, the second log-variance."""
        parts = stats.split([2 * n for n in self.latent_groups], dim=1)
        mu = torch.cat([p[:, : p.shape[1] // 2] for p in parts], dim=1)
        logvar = torch.cat([p[:, p.shape[1] // 2 :] for p in parts], dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    # - analysis -

    def solve(self, batch: DABatch) -> list[VariationalSolution]:
        """The variational solve for every sample of ``batch`` (gradients on inside).

        Runs in float32 with the decoder in eval mode, whatever the caller's grad mode,
        autocast or the module's training flag (restored afterwards). With Multi-VAE-Var's
        ``modality_term``, each sample's ``J`` includes its modalities' observation term.
        """
        check_batch(batch, self.in_chans, type(self).__name__)
        self._require_fitted()
        obs_variance = self.obs_error_std.clamp(min=self.obs_error_floor) ** 2
        with torch.no_grad():  # the first guess is a starting point, not part of the graph
            z0 = self._first_guess(batch).float()  # (B, L, H, W), 0 without an adapter
        operator = self.modality_operator()
        data = None if operator is None else operator.data(batch)
        was_training = self.decoder.training
        self.decoder.eval()
        device_type = batch.background.device.type
        solutions = []
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.inference_mode(False))
                stack.enter_context(torch.enable_grad())
                stack.enter_context(torch.autocast(device_type, enabled=False))
                for i in range(batch.background.shape[0]):
                    fields = [
                        getattr(batch, name)[i : i + 1].float().clone()
                        for name in ("background", "observation", "mask")
                    ]
                    misfit = self._sample_misfit(operator, data, i)
                    solutions.append(
                        self._solve_one(*fields, obs_variance, z0[i : i + 1], misfit)
                    )
        finally:
            self.decoder.train(was_training)
        return solutions

    @staticmethod
    def _sample_misfit(
        operator: ModalityOperator | None, data: ModalityData | None, index: int
    ) -> Misfit | None:
        """The modalities' observation term of sample ``index`` (float32), ``None`` without
        an operator or without a cell with data in that sample."""
        if operator is None or data is None or not bool(data.cells[index].any()):
            return None
        sample = data.sample(index)
        return operator.misfit(ModalityData(sample.values.float(), sample.cells))

    def _solve_one(
        self, background, observation, mask, obs_variance, z0, misfit
    ) -> VariationalSolution:
        latent_shape = (sum(self.latent_groups), *background.shape[-2:])
        return variational_solve(
            self._solve_increment(latent_shape, background),
            background,
            observation,
            mask,
            self.sigma_err.float(),
            obs_variance.float(),
            latent_shape,
            bg_lambda=self.bg_lambda,
            outer_steps=self.outer_steps,
            max_iter=self.lbfgs_max_iter,
            history_size=self.lbfgs_history,
            z0=z0,
            modality_misfit=misfit,
        )

    def analyse(self, batch: DABatch, *, members: int | None = None, seed: int = 0) -> Analysis:
        """The VAE-Var analysis ``x_b + d(z*) sigma_err`` (B, C, H, W), in the background's dtype.

        ``seed`` is unused (the solve is deterministic); ``members`` is refused.
        """
        if members is not None:
            raise ValueError(
                f"VAEVar does not sample ensembles; call analyse() without members (got {members})."
            )
        solutions = self.solve(batch)
        mean = torch.cat([s.analysis for s in solutions]).to(batch.background.dtype)
        return Analysis(mean=mean)

    def forward(self, batch: DABatch) -> Analysis:
        """Same as :meth:`analyse` (the analysis needs the solve; the training pass is
        :meth:`loss`)."""
        return self.analyse(batch)

    def analysis_settings(self) -> dict:
        """Every setting of the analysis step (for results.json)."""
        return {
            "bg_lambda": self.bg_lambda,
            "outer_steps": self.outer_steps,
            "lbfgs_max_iter": self.lbfgs_max_iter,
            "lbfgs_history": self.lbfgs_history,
            "line_search": "strong_wolfe",
            "obs_error_floor": self.obs_error_floor,
            "sigma_err": self.sigma_err.tolist(),
            "obs_error_std": self.obs_error_std.tolist(),
            "latent_channels": sum(self.latent_groups),
            "increment": self.increment_form,
            "recovery": self.recovery,
            **self._modality_settings(),
        }

    def _modality_settings(self) -> dict:
        """Multi-VAE-Var's modality term for results.json (nothing for the plain host)."""
        if not has_adapter(self):
            return {}
        operator = self.modality_operator()
        if operator is None:
            return {"modality_term": False}
        sigma = torch.exp(operator.log_sigma.detach()).tolist()
        return {
            "modality_term": True,
            "modality_sigma": dict(zip(operator.observed_names, sigma, strict=True)),
        }


# --- registered variants (configs as data) ------------------------------------------------------

INFO = ModelInfo(
    output="deterministic",
    trainable=True,
    needs_fit=True,
    adapter_entry="latent_initialisation",
    paper="Xiao et al. (2025), VAE-Var: Variational autoencoder-enhanced variational methods for "
    "data assimilation in meteorology, ICLR, https://arxiv.org/abs/2405.13711",
    code="https://github.com/xiaoyi018/VAE-Var",
    code_licence="none (no licence file)",
)

register_variants(
    VAEVar,
    {
        "vaevar_tiny": (
            "CPU-test size: enc_dim 8, one block per level, global width 16 (1 block), window "
            "(4, 4), 2 outer L-BFGS steps of 5 iterations; placeholder error statistics "
            "(sigma_err 1, obs_error_std 0.1) so it runs unfitted.",
            dict(
                in_chans=4,
                enc_dim=8,
                depths=(1, 1),
                num_heads=(1, 2),
                embed_dim=16,
                global_depths=(1,),
                global_heads=2,
                window_size=(4, 4),
                lbfgs_max_iter=5,
                sigma_err=1.0,
                obs_error_std=0.1,
            ),
        ),
        "vaevar_small": (
            "CPU-training size (reference section 5.6): enc_dim 16, heads (2, 4), global width "
            "96 (one stage of 2 blocks, 4 heads), window (4, 4); sigma 0.5, lambda 1 with the "
            "dataset's R (see the module notes).",
            dict(
                in_chans=4,
                enc_dim=16,
                depths=(2, 2),
                num_heads=(2, 4),
                embed_dim=96,
                global_depths=(2,),
                global_heads=4,
                window_size=(4, 4),
                recon_sigma=0.5,
                bg_lambda=1.0,
            ),
        ),
        "vaevar_full": (
            "Published size (reference section 5.3): enc_dim 96, depths (2, 2), heads (3, 6), "
            "global width 1152 with 3 stages of 4 blocks, 6 heads, window (4, 4); 69 channels; "
            "upstream solve settings (lambda 400, 2 outer L-BFGS steps of 10 iterations).",
            dict(
                in_chans=69,
                enc_dim=96,
                depths=(2, 2),
                num_heads=(3, 6),
                embed_dim=1152,
                global_depths=(4, 4, 4),
                global_heads=6,
                window_size=(4, 4),
            ),
        ),
    },
    info=INFO,
)
