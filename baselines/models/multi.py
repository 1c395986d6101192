"""Multi-* baselines: any baseline with a declared adapter entry plus the multi-modal adapter.

Paper
    Wang, Weng, Han, Fan, Liu (2025), "DAMBench: A Multi-Modal Benchmark for Deep Learning-based
    Atmospheric Data Assimilation", https://arxiv.org/abs/2511.01468, sections 5.2-5.3 and
    Table 4 (Multi-Adas, Multi-ConvCNP, Multi-FNP, Multi-VAE-Var, SLAMS; dambench also composes
    SDA and SLAMS with the adapter).
Upstream code
    None published for the adapter; :mod:`baselines.layers.adapter` is written from the paper's
    text and ``shared/reference/baselines.md`` section 8.

Composition
    For every registered host whose :class:`~baselines.interface.ModelInfo` declares an
    ``adapter_entry`` and whose class implements it (``adapter_slots()`` and a call of
    :func:`~baselines.layers.adapter.adapter_context` at that entry), the registry resolves
    ``multi_<host>`` (e.g. ``multi_convcnp_small``): the host built with its own kwargs, with a
    :class:`~baselines.layers.adapter.MultiModalAdapter` attached as its submodule
    ``multimodal_adapter``. The host's file is not changed beyond declaring the entry; its
    ``forward``, ``loss``, ``analyse`` and ``fit`` are the multi model's, and its ``state_dict``
    keys are the host's plus ``multimodal_adapter.*`` (so a host checkpoint loads into it).
    The adapter's size follows the host's (``_tiny``, ``_small``, ``_full``:
    :data:`ADAPTER_SIZES`); ``create_model(name, adapter={...})`` overrides it. A host class
    may name settings the adapter needs in ``adapter_host_kwargs`` (SDA: ``background=
    "context"``); they are the multi model's defaults (:func:`host_defaults`) and a host that
    is given others refuses the adapter in its ``adapter_slots()``. A host class may also
    declare options of its multi-modal form in ``adapter_options`` (VAE-Var: ``modality_term``,
    default ``True``): they are kwargs of ``multi_<host>`` (not of the host, so a host
    checkpoint still loads), applied by the host's ``configure_adapter(**options)`` after the
    adapter is attached (:func:`host_options`).

Where the context enters (``ModelInfo.adapter_entry``)
    =========  ==============================  ================================================
    host       entry                           what the context is added to
    =========  ==============================  ================================================
    ConvCNP    ``observation_representation``  ``r_obs`` (B, r, H, W)
    FNP        ``observation_representation``  ``r_obs`` of every branch (one slot each)
    Adas       ``observation_tokens``          the observation stream's tokens after the patch
                                               embedding (B, d, D, Hp, Wp), resized
    VAE-Var    ``latent_initialisation``       the solve's first guess ``z0`` (B, L, H, W);
                                               ``loss`` adds its misfit (adapter only); with
                                               ``modality_term`` (default) also learned
                                               operators H_m, sigma_m whose observation term
                                               enters the solve's J (``loss``: their NLL)
    SDA        ``score_context``               the score network's context ``x_b`` (B, C, H,
                                               W); ``background="context"`` only
    SLAMS      ``encoder_input``               the encoder input (B, 3 C + 2 M, H, W);
                                               ``loss`` adds the frozen autoencoder's
                                               reconstruction error (adapter only)
    =========  ==============================  ================================================

    Where the host's own training signal does not pass through the entry (VAE-Var's VAE loss
    never sees ``z0``; SLAMS' denoising loss sees latents of a frozen encoder), the host's loss
    gains a named term (a diagnostic of its own) that trains the adapter only; every other
    term and diagnostic stays the host's.

Modalities
    ``modalities`` are the loader's modality names in ``batch.modalities`` order;
    ``baselines/train.py`` passes those of the data (era5-sample: ``["precip",
    "precip_gauges"]``, precipitation from ERA5 total precipitation kept at 70 capitals' cells,
    not CPC gauges). The default, :data:`DEFAULT_MODALITIES`, fits a batch with one modality.

Training (``baselines/train.py``)
    From scratch, or fine-tuned from a trained host checkpoint (``model.init_from``) with the
    host optionally frozen (``train.freeze: [host]``: the host's parameters get no gradient and
    its layers stay in eval mode, so BatchNorm statistics do not move). The zero-initialised
    heads make the fine-tuned model start exactly at the host's analysis.

Deliberate deviations
    - ``supports_patches`` is ``False`` for every multi model: the learned position table spans
      the whole globe.
    - The paper does not say which latent each baseline receives; the table above is
      dambench's choice (issue 13's entry points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from baselines.interface import ModelInfo
from baselines.layers.adapter import ADAPTER_ATTRIBUTE, MultiModalAdapter, attach_adapter
from baselines.registry import Composition, create_model, model_class, register_composition
from dambench.exceptions import DambenchInputError

__all__ = [
    "ADAPTER_SIZES",
    "DEFAULT_MODALITIES",
    "adapter_of",
    "build_multi",
    "freeze_host",
    "host_defaults",
    "host_options",
    "keep_host_in_eval",
    "multi_info",
]

PREFIX = "multi_"
ADAPTER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=16, num_heads=2, depth=1, patch_size=8),
    "small": dict(embed_dim=32, num_heads=4, depth=1, patch_size=8),
    "full": dict(embed_dim=128, num_heads=4, depth=2, patch_size=8, drop_rate=0.1),
}
"""Adapter settings by the host's size suffix (``shared/reference/baselines.md`` 8.2: d = 32 on
CPUs and 128 on GPUs, encoder depth 1 / 2, dropout 0 / 0.1; patch 8 gives 16 x 30 tokens)."""
DEFAULT_MODALITIES = ("precip",)
ADAPTER_PAPER = (
    "multi-modal representation adapter of Wang et al. (2025), DAMBench, "
    "https://arxiv.org/abs/2511.01468"
)
ADAPTER_CODE = "adapter: none published (dambench reimplements the paper's section 5.2)"


def _size(host: str) -> str | None:
    suffix = host.rsplit("_", 1)[-1]
    return suffix if suffix in ADAPTER_SIZES else None


def _refusal(host: str, info: ModelInfo, cls: type | None) -> str | None:
    """Why ``host`` gets no multi model (``None`` when it does)."""
    if info.adapter_entry is None:
        return f"{host!r} declares no adapter entry (ModelInfo.adapter_entry is None)."
    if cls is None or not callable(getattr(cls, "adapter_slots", None)):
        return (
            f"{host!r} declares adapter_entry={info.adapter_entry!r} but its class does not "
            "implement it yet (it needs adapter_slots() and a call of adapter_context(self, "
            "batch) at that entry; see baselines/layers/adapter.py)."
        )
    if getattr(cls, "adapter_options", None) and not callable(
        getattr(cls, "configure_adapter", None)
    ):
        return (
            f"{host!r} declares adapter_options {cls.adapter_options} but no "
            "configure_adapter(**options) to apply them."
        )
    if _size(host) is None:
        return f"{host!r} has no size suffix among {sorted(ADAPTER_SIZES)} to size the adapter."
    return None


def multi_info(host_info: ModelInfo) -> ModelInfo:
    """The host's info with ``uses_modalities=True``, no patches, and the adapter's paper and
    code named beside the host's."""
    return replace(
        host_info,
        uses_modalities=True,
        supports_patches=False,
        paper=f"{host_info.paper}; with the {ADAPTER_PAPER}",
        code=f"{host_info.code}; {ADAPTER_CODE}",
    )


def _host_class_defaults(host: str, cls: type | None) -> dict[str, Any]:
    return dict(getattr(cls, "adapter_host_kwargs", None) or {})


def host_defaults(host: str) -> dict[str, Any]:
    """Host kwargs ``multi_<host>`` sets unless given: the host class's
    ``adapter_host_kwargs`` (SDA: ``{"background": "context"}``), else none."""
    return _host_class_defaults(host, model_class(host))


def host_options(host: str) -> dict[str, Any]:
    """Options of ``multi_<host>`` its host class declares in ``adapter_options``, with their
    defaults (VAE-Var: ``{"modality_term": True}``), else none. They are the multi model's own
    kwargs (not the host's: a host checkpoint is compared without them) and reach the host's
    ``configure_adapter(**options)`` once the adapter is attached."""
    return dict(getattr(model_class(host), "adapter_options", None) or {})


def build_multi(
    host: str,
    *,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    adapter: dict[str, Any] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """``create_model(host, **host_kwargs)`` with a :class:`MultiModalAdapter` attached, then
    configured with the host's :func:`host_options`.

    Parameters
    ----------
    host
        A registered host (``convcnp_small``).
    modalities
        The loader's modality names, in ``batch.modalities`` order.
    adapter
        Adapter settings overriding :data:`ADAPTER_SIZES` of the host's size.
    kwargs
        The host's options (:func:`host_options`, over their defaults), then the host's
        kwargs (over :func:`host_defaults`).
    """
    settings = {**ADAPTER_SIZES[_size(host)], **(adapter or {})}
    options = {name: kwargs.pop(name, value) for name, value in host_options(host).items()}
    model = create_model(host, **{**host_defaults(host), **kwargs})
    attach_adapter(model, modalities, **settings)
    if options:
        model.configure_adapter(**options)
    return model


def adapter_of(model: torch.nn.Module) -> MultiModalAdapter | None:
    """The model's attached adapter, or ``None``."""
    return getattr(model, ADAPTER_ATTRIBUTE, None)


def _host_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module of ``model`` outside its adapter (the model itself included)."""
    prefix = ADAPTER_ATTRIBUTE
    return [
        module
        for name, module in model.named_modules()
        if not (name == prefix or name.startswith(prefix + "."))
    ]


def freeze_host(model: torch.nn.Module) -> int:
    """Stop gradients to every parameter outside the adapter; returns how many were frozen.

    Raises
    ------
    DambenchInputError
        ``model`` has no adapter (there would be nothing left to train).
    """
    if adapter_of(model) is None:
        raise DambenchInputError(
            f"train.freeze: [host] needs a multi-modal model (multi_*); "
            f"{type(model).__name__} has no adapter, so nothing would be trained."
        )
    frozen = 0
    for module in _host_modules(model):
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def keep_host_in_eval(model: torch.nn.Module) -> None:
    """Put the host's layers (not the adapter's) in eval mode, after ``model.train()``: a
    frozen host keeps its BatchNorm statistics and runs without dropout."""
    for module in _host_modules(model):
        module.training = False


register_composition(
    Composition(
        prefix=PREFIX,
        build=build_multi,
        info=multi_info,
        refusal=_refusal,
        defaults=lambda host: {
            "modalities": list(DEFAULT_MODALITIES),
            "adapter": dict(ADAPTER_SIZES[_size(host)]),
            **host_options(host),
        },
        host_defaults=_host_class_defaults,
    )
)
