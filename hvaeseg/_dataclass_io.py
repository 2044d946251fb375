"""Reading a config dataclass from a mapping (a parsed JSON or YAML object): one rule for every config.

:func:`from_dict` refuses unknown and missing fields with a message that names them and the known fields,
turns JSON lists into tuples where a field's annotation is a tuple and nested mappings into the dataclass a
field is annotated with, then calls the class, so that its own ``__post_init__`` validates the values.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["FieldError", "check_fields", "from_dict"]

T = TypeVar("T", bound="DataclassInstance")


class FieldError(ValueError, TypeError):
    """Unknown or missing fields for a config dataclass. A :class:`ValueError` (a bad config file), and a
    :class:`TypeError` as well, as the class's own constructor raises for an unexpected or missing keyword."""


def check_fields(cls: type, names: Iterable[str], where: str = "", *, hint: str = "") -> None:
    """Raise a :class:`FieldError` when ``names`` holds a name that is not a field of the dataclass ``cls``.

    :param where: what the names come from, put first in the message (a file, ``"layers[0]"``; empty: nothing).
    :param hint: said last, e.g. how to fix it.
    """
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(names) - set(known), key=str)
    if unknown:
        raise FieldError(
            f"{_prefix(where)}unknown field(s) {', '.join(map(repr, unknown))}; known fields: {', '.join(known)}"
            + (f"; {hint}" if hint else "")
        )


def from_dict(cls: type[T], data: Any, where: str = "", *, hint: str = "") -> T:
    """The dataclass ``cls`` made from the mapping ``data`` of its fields (an instance of ``cls`` as it is).

    A list (or tuple) goes into a field annotated ``tuple[...]`` (or ``tuple[...] | None``) as a tuple, item by
    item; a mapping goes into a field annotated with a dataclass (or ``D | None``) as that dataclass, read by this
    function (its errors name the field: ``where.field``, ``layers[0]``). Other values are passed as they are,
    and the class's own validation judges them.

    :param where: what ``data`` comes from, put first in every message (a file name, ``"config.json"``).
    :param hint: said last in the message about unknown fields (e.g. that the file was written by another
        version).
    :raises TypeError: ``data`` is not a mapping.
    :raises FieldError: a key is not a field of ``cls``, or a field without a default is missing.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(f"{_prefix(where)}expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    check_fields(cls, data, where, hint=hint)
    missing = [
        f.name for f in dataclasses.fields(cls)
        if f.init and f.name not in data and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise FieldError(f"{_prefix(where)}missing field(s) {', '.join(missing)}")
    hints = _type_hints(cls)
    kwargs = {name: _convert(value, hints.get(name, Any), _join(where, name)) for name, value in data.items()}
    return cls(**kwargs)


def _convert(value: Any, hint: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        target = _member(hint, _is_dataclass)
        return value if target is None else from_dict(target, value, where)
    if isinstance(value, (list, tuple)):
        target = _member(hint, _is_tuple)
        if target is None:
            return value
        args = typing.get_args(target)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [args[0]] * len(value)
        elif len(args) == len(value):
            items = list(args)
        else:  # a bare tuple, or a wrong length the class reports itself
            items = [Any] * len(value)
        return tuple(_convert(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, items)))
    return value


def _member(hint: Any, wanted: Callable[[Any], bool]) -> Any:
    """``hint`` when ``wanted(hint)``, else its first union member for which it holds, else None."""
    if wanted(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next((h for h in typing.get_args(hint) if wanted(h)), None)
    return None


def _is_dataclass(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _is_tuple(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
