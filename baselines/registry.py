"""A timm-style model registry: factories registered with their :class:`ModelInfo`.

``create_model(name, **kwargs)`` builds a model; ``model_info(name)`` says what it is and can do
(output kind, trainable, fitted on the train split, patches, modalities, paper, upstream licence);
``list_models(pattern)`` filters names with shell wildcards as timm's does. Scripts dispatch on
the info and never name a model.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Sequence

import torch

from baselines.interface import ModelInfo
from dambench.exceptions import DambenchInputError

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}
_DEFAULTS: dict[str, dict] = {}


def register_model(
    factory: Callable[..., torch.nn.Module] | None = None, *, info: ModelInfo
) -> Callable:
    """Register ``factory`` under its function name with ``info``; names must be unique.

    Use as ``@register_model(info=INFO)`` or ``register_model(factory, info=INFO)``.
    """
    if not isinstance(info, ModelInfo):
        raise TypeError(f"register_model needs info=ModelInfo(...), got {type(info).__name__}.")

    def decorate(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise DambenchInputError(f"Model {name!r} is registered twice.")
        _MODELS[name] = fn
        _INFO[name] = info
        return fn

    return decorate if factory is None else decorate(factory)


def register_variants(
    model_class: Callable[..., torch.nn.Module],
    variants: dict[str, tuple[str, dict]],
    *,
    info: ModelInfo,
) -> None:
    """Register one factory per variant: ``{name: (docstring, default kwargs)}``, all with
    ``info``.

    ``create_model(name, **kwargs)`` then builds ``model_class(**{**defaults, **kwargs})``;
    :func:`variant_defaults` returns the defaults.
    """
    for name, (doc, defaults) in variants.items():

        def factory(_defaults: dict = defaults, **kwargs) -> torch.nn.Module:
            return model_class(**{**_defaults, **kwargs})

        factory.__name__ = factory.__qualname__ = name
        factory.__doc__ = doc
        register_model(factory, info=info)
        _DEFAULTS[name] = dict(defaults)


def variant_defaults(name: str) -> dict:
    """The default kwargs of a variant registered with :func:`register_variants`."""
    _import_models()
    if name not in _DEFAULTS:
        raise DambenchInputError(
            f"{name!r} is not a registered variant; variants: {sorted(_DEFAULTS)}."
        )
    return dict(_DEFAULTS[name])


def _import_models() -> None:
    package = importlib.import_module("baselines.models")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"baselines.models.{module.name}")


def list_models(
    pattern: str | Sequence[str] = "*", *, exclude: str | Sequence[str] = ()
) -> list[str]:
    """Sorted names of registered models matching any of ``pattern`` (shell wildcards, e.g.
    ``"*_tiny"``) and none of ``exclude``."""
    _import_models()
    include = [pattern] if isinstance(pattern, str) else list(pattern)
    excluded = [exclude] if isinstance(exclude, str) else list(exclude)
    return sorted(
        name
        for name in _MODELS
        if any(fnmatch.fnmatchcase(name, p) for p in include)
        and not any(fnmatch.fnmatchcase(name, p) for p in excluded)
    )


def _check_name(name: str) -> None:
    _import_models()
    if name not in _MODELS:
        raise DambenchInputError(f"Unknown model {name!r}; registered: {sorted(_MODELS)}.")


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` registered with model ``name``."""
    _check_name(name)
    return _INFO[name]


def create_model(name: str, **config) -> torch.nn.Module:
    """Build model ``name``; ``None`` values in ``config`` are dropped (they mean "unset").

    The model gets ``model_name`` and ``info`` attributes (its registered :class:`ModelInfo`).
    """
    _check_name(name)
    model = _MODELS[name](**{k: v for k, v in config.items() if v is not None})
    model.model_name = name
    model.info = _INFO[name]
    return model
