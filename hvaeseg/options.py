"""Type checks of user-given options against a config dataclass's annotations, so that a JSON option of the
wrong type (``{"dihedral": "no"}``, ``{"lr": "0.001"}``) is refused with the field named before anything runs.

JSON types map to annotations as follows: ``bool`` takes only true/false; ``int`` an integer (not a bool);
``float`` any number (not a bool); ``str`` a string; ``tuple[T, ...]`` a list (or tuple) of T; ``dict`` an
object; ``X | None`` also null; a dataclass field (e.g. ``SymmetricWeights``) an object, checked by that
dataclass itself. Other annotations (``Any``) accept anything.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

__all__ = ["check_option_types"]


def _json_type(value: Any) -> str:
    """The JSON name of a Python value's type, as a user wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _matches(value: Any, annotation: Any) -> tuple[bool, str]:
    """Whether ``value`` fits ``annotation``, and how to say what was expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, a) for a in typing.get_args(annotation)]
        return any(ok for ok, _ in results), " or ".join(want for _, want in results)
    if annotation is type(None):
        return value is None, "null"
    if annotation is bool:
        return isinstance(value, bool), "true or false"
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if annotation is str:
        return isinstance(value, str), "a string"
    if origin is tuple or annotation is tuple:
        args = typing.get_args(annotation)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if not isinstance(value, (list, tuple)):
            return False, "a list"
        if item is not None:
            results = [_matches(v, item) for v in value]
            want = results[0][1] if results else "values"
            return all(ok for ok, _ in results), f"a list (each {want})"
        return True, "a list"
    if origin is dict or annotation is dict:
        return isinstance(value, dict), "an object"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return isinstance(value, (dict, annotation)), "an object"
    return True, str(annotation)


def check_option_types(config_class: type, options: dict[str, Any], owner: str, *, fix: str | None = None) -> None:
    """Raise a :class:`ValueError` naming the first option whose value does not fit its field's annotation.

    :param config_class: a dataclass (its annotations are resolved, ``from __future__ import annotations`` too).
    :param options: field name -> value, as parsed from JSON (unknown names are the caller's concern).
    :param owner: what the options belong to, for the message (e.g. ``"method 'supervised'"``).
    :param fix: how to write the value, said last (default: as JSON in ``--options``).
    """
    hints = typing.get_type_hints(config_class)
    for name, value in options.items():
        if name not in hints:
            continue
        ok, want = _matches(value, hints[name])
        if not ok:
            if fix is None:
                fix = f"write it as JSON, e.g. --options '{{\"{name}\": ...}}' with an unquoted number or true/false"
            raise ValueError(f"{owner} option {name}: expected {want}, got {value!r} ({_json_type(value)}); {fix}")
