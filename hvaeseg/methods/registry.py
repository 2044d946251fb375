"""The registry of segmentation methods: ``--method NAME`` -> a :class:`~hvaeseg.methods.base.SegmentationMethod`
class.

It is the one list of methods: the command line's choices, the checks of a run's configuration and
:func:`hvaeseg.experiment.train_run` read it and the class attributes of what it holds, never a method's name. The
built-in methods are registered by :mod:`hvaeseg.methods`; another one is one class and one :func:`register` call::

    @dataclass(frozen=True)
    class MyConfig:
        lr: float = 1e-3

    class MyMethod(Method):
        name, config_class, streams, needs_labels = "mine", MyConfig, ("labelled",), True

        @classmethod
        def build(cls, in_channels, num_classes, *, temporal=False, config=None, seed=0, patch_size=None,
                  device="cpu", band_names=None, band_stats=None): ...
        ...  # modules, optimizers, losses, predict_proba

    register(MyMethod)
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from hvaeseg._dataclass_io import check_fields, from_dict
from hvaeseg.methods.base import STREAMS, FittedMethod, Method, SegmentationMethod
from hvaeseg.options import check_option_types

__all__ = ["METHODS", "build_method", "is_fitted", "method_class", "method_config", "register", "unregister"]

#: method name -> class, in the order ``hvaeseg train --help`` lists them
METHODS: dict[str, type[SegmentationMethod]] = {}


def register(cls: type[SegmentationMethod]) -> type[SegmentationMethod]:
    """Add the method class ``cls`` under its :attr:`~SegmentationMethod.name` (usable as a class decorator).

    :raises TypeError: ``cls`` is not a :class:`~hvaeseg.methods.base.Method` or
        :class:`~hvaeseg.methods.base.FittedMethod`, or lacks a ``name``, a dataclass ``config_class`` or a
        ``build``.
    :raises ValueError: the name is taken by another class, or ``streams`` names an unknown stream.
    """
    if not (isinstance(cls, type) and issubclass(cls, (Method, FittedMethod))):
        raise TypeError(f"expected a Method or FittedMethod subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}: expected a class attribute `name` (the --method name), got {name!r}")
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise TypeError(f"{cls.__name__}: expected a dataclass as the class attribute `config_class`, got "
                        f"{config_class!r}")
    build = inspect.getattr_static(cls, "build")  # the classmethod object itself, from the class that defines it
    inherited = build is inspect.getattr_static(SegmentationMethod, "build")
    if inherited or not isinstance(build, classmethod):
        raise TypeError(f"{cls.__name__}: expected a classmethod `build` (SegmentationMethod.build's signature), "
                        f"got {'none' if inherited else f'a {type(build).__name__}'}")
    unknown = [s for s in cls.streams if s not in STREAMS]
    if unknown:
        raise ValueError(f"{cls.__name__}.streams: expected some of {STREAMS}, got {unknown}")
    if METHODS.get(name, cls) is not cls:
        raise ValueError(f"method {name!r} is already registered (by {METHODS[name].__name__}): choose another name, "
                         "or unregister it first")
    METHODS[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove method ``name`` from the registry (nothing when it is not there)."""
    METHODS.pop(name, None)


def method_class(name: str) -> type[SegmentationMethod]:
    """The class registered as ``name``.

    :raises ValueError: no method has that name (the message lists those that do).
    """
    if name not in METHODS:
        raise ValueError(f"expected a method among {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def is_fitted(name: str) -> bool:
    """Whether method ``name`` is fitted in one call (a :class:`~hvaeseg.methods.base.FittedMethod`, no loop)."""
    return method_class(name).fitted


def method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """The validated config dataclass of method ``name`` from ``options``: unknown keys are an error, values of
    the wrong JSON type too (:func:`~hvaeseg.options.check_option_types`); lists go into tuple fields as tuples,
    objects into dataclass fields as those dataclasses (:func:`~hvaeseg._dataclass_io.from_dict`)."""
    config_class = method_class(name).config_class
    options = dict(options or {})
    where = f"method {name!r} options"
    check_fields(config_class, options, where)  # unknown names first, then the types of the known ones
    check_option_types(config_class, options, f"method {name!r}")
    return from_dict(config_class, options, where)


def build_method(
    name: str,
    in_channels: int,
    num_classes: int,
    temporal: bool = False,
    options: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    patch_size: int | None = None,
    device: str | torch.device = "cpu",
    band_names: Sequence[str] | None = None,
    band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> SegmentationMethod:
    """A fresh method ``name`` for ``in_channels`` bands and ``num_classes`` classes, on ``device``, configured by
    ``options`` (:func:`method_config`); the other arguments as in
    :meth:`~hvaeseg.methods.base.SegmentationMethod.build`."""
    cls = method_class(name)
    config = method_config(name, options)
    return cls.build(in_channels, num_classes, temporal=temporal, config=config, seed=seed, patch_size=patch_size,
                     device=device, band_names=band_names, band_stats=band_stats)
