"""Mapping -> frozen dataclass conversion, strict and loud.

``harness.resolve`` turns the composed tree into typed dataclasses with it, so nothing downstream sees a
``DictConfig``. An unknown key, a value of the wrong type or outside a ``Literal`` is a ``ConfigError`` that
names the dotted key, the value and what is allowed. The same function reads ``result.json`` back. Value
checks that several groups share (``check_seed``) live here too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, get_args, get_origin

from harness.errors import ConfigError, as_written, unknown_key_message, unknown_name_message

T = TypeVar("T")


def from_mapping(cls: type[T], data: object, *, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursively, checking every key and value against the type hints."""
    return typing.cast(T, _convert(cls, data, key))


def convert_value(hint: Any, value: object, key: str) -> object:
    """``value`` checked against (and converted to) ``hint``; a ``ConfigError`` naming ``key`` when it does not fit."""
    return _convert(hint, value, key)


def hint_at(cls: type, dotted_key: str) -> Any | None:
    """The type hint of ``dotted_key`` inside dataclass ``cls`` (list indices allowed), or ``None`` if it has none."""
    hint: Any = cls
    for part in dotted_key.replace("[", ".").replace("]", "").split("."):
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            if part not in hints:
                return None
            hint = hints[part]
        elif get_origin(hint) is tuple and part.isdigit():
            arguments = get_args(hint)
            hint = arguments[0] if arguments[-1] is Ellipsis else arguments[int(part)]
        else:
            return None
        options = [option for option in get_args(hint) if option is not type(None)]
        if get_origin(hint) in (typing.Union, types.UnionType) and len(options) == 1:
            hint = options[0]
    return hint


def _convert(hint: Any, value: object, key: str) -> object:
    origin = get_origin(hint)
    if hint is Any or hint is object:
        return value
    if dataclasses.is_dataclass(hint):
        return _convert_dataclass(typing.cast(type, hint), value, key)
    if origin is typing.Literal:
        if value not in get_args(hint):
            raise ConfigError(unknown_name_message(key, value, get_args(hint)))
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (option for option in options if option is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={as_written(value)}: expected {_describe(hint)}")
    if origin is tuple:
        return _convert_sequence(hint, value, key)
    if origin is list:
        return list(_convert_sequence(tuple.__class_getitem__((get_args(hint)[0], ...)), value, key))
    if origin is dict:
        if value is None:
            # The conf files write an empty mapping as null: Hydra adds no key to a `{}` (its config is closed to new
            # keys), so `backend.aot_inductor_configs={max_autotune:true}` was refused, where a null is replaced.
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}={as_written(value)}: expected a mapping")
        value_hint = get_args(hint)[1]
        return {str(name): _convert(value_hint, item, f"{key}.{name}") for name, item in value.items()}
    return _convert_scalar(hint, value, key)


def _convert_dataclass(cls: type, value: object, key: str) -> object:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key or cls.__name__}={as_written(value)}: expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    for name in value:
        if name not in fields:
            raise ConfigError(unknown_key_message(f"{key}.{name}".lstrip("."), str(name), fields))
    arguments = {}
    for name, field in fields.items():
        dotted = f"{key}.{name}".lstrip(".")
        if name in value:
            arguments[name] = _convert(hints[name], value[name], dotted)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{dotted}: missing required value ({_describe(hints[name])})")
    try:
        return cls(**arguments)
    except ValueError as error:
        raise ConfigError(f"{key or cls.__name__}: {error}") from None


def _convert_sequence(hint: Any, value: object, key: str) -> tuple[object, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, typing.Sequence):
        raise ConfigError(
            f"{key}={as_written(value)}: expected a list in brackets ({key}=[...]) of {_describe_items(hint)}"
        )
    args = get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, f"{key}[{index}]") for index, item in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}={list(value)!r}: expected {len(args)} values")
    return tuple(
        _convert(item_hint, item, f"{key}[{index}]")
        for index, (item_hint, item) in enumerate(zip(args, value, strict=True))
    )


def _convert_scalar(hint: Any, value: object, key: str) -> object:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key}={as_written(value)}: expected an int")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key}={as_written(value)}: expected {_describe(hint)}")


def _describe_items(hint: Any) -> str:
    """What a tuple type's items must be: ``items each int`` or ``3 items: int, int, int``."""
    args = get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return f"items each {_describe(args[0])}"
    return f"{len(args)} items: " + ", ".join(_describe(arg) for arg in args)


def _describe(hint: Any) -> str:
    if get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(hint))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def flatten(tree: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Dotted (key, leaf) pairs of nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple) and any(isinstance(item, dict | list) for item in tree):
        for index, value in enumerate(tree):
            yield from flatten(value, f"{prefix}.{index}")
    else:
        yield prefix, tree


def dotted_value(tree: dict[str, object], dotted: str) -> object:
    """The value at ``dotted`` (``a.b.c``) in nested dicts; ``None`` where a level is missing."""
    node: object = tree
    for key in dotted.split(".") if dotted else ():
        node = node.get(key) if isinstance(node, dict) else None
    return node


def check_seed(key: str, seed: int) -> None:
    """Seeds feed numpy's generators, which take non-negative integers only."""
    if seed < 0:
        raise ConfigError(f"{key}={seed}: expected a seed >= 0")
