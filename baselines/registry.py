"""A timm-style model registry: factories registered with their :class:`ModelInfo`.

``create_model(name, **kwargs)`` builds a model; ``model_info(name)`` says what it is and can do
(output kind, trainable, fitted on the train split, patches, modalities, paper, upstream licence);
``list_models(pattern)`` filters names with shell wildcards as timm's does. Scripts dispatch on
the info and never name a model.

A :class:`Composition` (``register_composition``) builds a model from any registered host it
accepts and registers it as ``prefix + host``: the multi-modal adapter
(:mod:`baselines.models.multi`) gives ``multi_<host>`` for every host whose ``ModelInfo``
declares an ``adapter_entry`` and whose class implements it. Compositions are resolved whenever
the registry is read, so a host registered by a model file added later is included.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from baselines.interface import ModelInfo
from dambench.exceptions import DambenchInputError

_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}
_DEFAULTS: dict[str, dict] = {}
_CLASSES: dict[str, type | None] = {}
_COMPOSED: dict[str, str] = {}


@dataclass(frozen=True)
class Composition:
    """A model made from any registered host, registered as ``prefix + host`` (e.g. the
    multi-modal adapter: ``multi_convcnp_small``).

    Attributes
    ----------
    prefix
        Name prefix of the composed models.
    build
        ``build(host_name, **kwargs) -> nn.Module``.
    info
        ``info(host_info) -> ModelInfo`` of the composed model.
    refusal
        ``refusal(host_name, host_info, host_class) -> str | None``: why ``host`` cannot be
        composed (shown when the composed name is asked for), ``None`` when it can.
    defaults
        ``defaults(host_name) -> dict``: the composed model's extra default kwargs (those it
        takes beyond its host's, :func:`composed_kwargs`).
    host_defaults
        ``host_defaults(host_name, host_class) -> dict``: host kwargs the composition sets
        unless given (SDA's ``background="context"`` for the adapter); ``build`` applies them,
        :func:`variant_defaults` shows them. Default: none.
    """

    prefix: str
    build: Callable[..., torch.nn.Module]
    info: Callable[[ModelInfo], ModelInfo]
    refusal: Callable[[str, ModelInfo, type | None], str | None]
    defaults: Callable[[str], dict]
    host_defaults: Callable[[str, type | None], dict] = lambda host, cls: {}


_COMPOSITIONS: list[Composition] = []


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
        _CLASSES.setdefault(name, None)
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
        _CLASSES[name] = model_class
        register_model(factory, info=info)
        _DEFAULTS[name] = dict(defaults)


def register_composition(composition: Composition) -> None:
    """Register ``composition``: every registered host it does not refuse gets a composed model
    ``composition.prefix + host`` (resolved whenever the registry is read, so hosts registered
    later are included)."""
    if any(c.prefix == composition.prefix for c in _COMPOSITIONS):
        raise DambenchInputError(f"A composition with prefix {composition.prefix!r} exists.")
    _COMPOSITIONS.append(composition)


def composed_host(name: str) -> str | None:
    """The host a composed model (e.g. ``multi_convcnp_small``) is built on, else ``None``."""
    _check_name(name)
    return _COMPOSED.get(name)


def composed_kwargs(name: str) -> tuple[str, ...]:
    """The kwargs a composed model takes beyond its host's (``modalities``, ``adapter`` for the
    multi-modal adapter); ``()`` for any other name (registered or not)."""
    _import_models()
    host = _COMPOSED.get(name)
    if host is None:
        return ()
    composition = next(c for c in _COMPOSITIONS if name == c.prefix + host)
    return tuple(composition.defaults(host))


def _compose(composition: Composition, host: str) -> None:
    name = composition.prefix + host

    def factory(**kwargs) -> torch.nn.Module:
        return composition.build(host, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{host} with {composition.prefix.rstrip('_')} composition."
    register_model(factory, info=composition.info(_INFO[host]))
    _COMPOSED[name] = host
    if host in _DEFAULTS:
        _DEFAULTS[name] = {
            **_DEFAULTS[host],
            **composition.host_defaults(host, _CLASSES.get(host)),
            **composition.defaults(host),
        }


def _apply_compositions() -> None:
    for composition in _COMPOSITIONS:
        hosts = [n for n in _MODELS if n not in _COMPOSED]
        for host in hosts:
            if composition.prefix + host in _MODELS:
                continue
            if composition.refusal(host, _INFO[host], _CLASSES.get(host)) is None:
                _compose(composition, host)


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
    _apply_compositions()


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
    if name in _MODELS:
        return
    for composition in _COMPOSITIONS:
        host = name.removeprefix(composition.prefix)
        if host != name and host in _MODELS:
            reason = (
                f"{host!r} is itself composed; compositions do not nest."
                if host in _COMPOSED
                else composition.refusal(host, _INFO[host], _CLASSES.get(host))
            )
            raise DambenchInputError(f"Model {name!r} is not available: {reason}")
    raise DambenchInputError(f"Unknown model {name!r}; registered: {sorted(_MODELS)}.")


def model_class(name: str) -> type | None:
    """The class :func:`register_variants` registered ``name`` with (``None`` for a plain
    factory or a composed model)."""
    _check_name(name)
    return _CLASSES.get(name)


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
