"""The command line that composes a saved run's config again: ``harness rerun`` runs it, and prints it first.

A run's ``result.json`` holds its whole config, resolved. Its group choices (model, precision, backend, dataset)
are read from the keys that name them, and every setting that differs from what those choices compose to
today becomes a ``key=value`` override. Composing those overrides is then checked to give the saved config
back, setting by setting, so a rerun measures what the run measured or does not start. Where a run ran (paths,
the tracking store, progress bars) is this machine's, never the saved run's.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from typing import Any

from harness.config.store import compose
from harness.errors import ConfigError

# Groups chosen by a setting of their own: the option file is named by its value (conf/model/vits14.yaml has
# variant: vits14).
CHOSEN_BY = {"model": "variant", "precision": "name", "backend": "name", "dataset": "name"}
# Where and how a run ran on its machine, not what it measured; ``preprocessing`` is made from ``vdsp``.
NOT_REPRODUCED = ("paths", "tracking", "progress", "task", "preprocessing", "rerun_of")
# What ``_at`` finds where a config has no such key.
NOT_SET = object()
# Written without quotes where Hydra reads them back as the same string.
PLAIN_STRING = re.compile(r"[\w./:+-]+")


def reproducing_overrides(saved: dict[str, Any], config_name: str) -> list[str]:
    """Overrides that compose ``saved`` (a ``result.json`` config) again with ``config_name``: its group choices,
    then each setting that differs from their composition. ``ConfigError`` where a group or setting no longer
    exists, or where the composition does not give every saved setting back."""
    choices = []
    for group, key in CHOSEN_BY.items():
        choice = (saved.get(group) or {}).get(key)
        if not isinstance(choice, str):
            raise ConfigError(f"{group}.{key}={choice!r}: the saved config names no {group} to compose")
        choices.append(f"{group}={choice}")
    wanted = _reproduced(saved)
    overrides = [
        *choices,
        *(_override(key, value) for key, value in _differences(compose(choices, config_name), wanted)),
    ]
    composed = _reproduced(compose(overrides, config_name))
    lost = [
        f"{'.'.join(path)} (saved {_shown(value)}, composes to {_shown(_at(composed, path))})"
        for path, value in _leaves(wanted)
        if not _same(_at(composed, path), value)
    ]
    # Hydra merges a mapping into the one a group composes: keys the saved mapping lacks stay there.
    lost += [
        f"{'.'.join(path)} (not saved, composes to {_shown(value)})"
        for path, value in _leaves(composed)
        if _at(wanted, path) is NOT_SET
    ]
    if lost:
        raise ConfigError(f"the saved config cannot be composed again with this harness's conf/: {'; '.join(lost)}")
    return overrides


def with_own_overrides(saved: list[str], own: list[str]) -> list[str]:
    """``saved`` (``reproducing_overrides``) less what ``own`` sets again, then ``own``: a group chosen anew
    (``precision=fp16``) takes its own settings, not those the saved choice's overrides gave it."""
    from harness.config.store import _override_key

    mine = {_override_key(override) for override in own}

    def set_again(override: str) -> bool:
        key = _override_key(override)
        return any(key == set_key or key.startswith(f"{set_key}.") for set_key in mine)

    return [*(override for override in saved if not set_again(override)), *own]


def _reproduced(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in NOT_REPRODUCED}


def _differences(base: dict[str, Any], saved: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, saved value) where ``saved`` differs from ``base``; mappings with the same keys (the schema's
    groups) compared key by key, anything else (a list, a free-form mapping such as vdsp params) as a whole."""
    for key, value in saved.items():
        dotted, known = f"{prefix}{key}", base.get(key, NOT_SET)
        if isinstance(value, dict) and isinstance(known, dict) and value.keys() == known.keys():
            yield from _differences(known, value, f"{dotted}.")
        elif not _same(known, value):
            yield dotted, value


def _leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(keys from the top, value) of every leaf: keys, not a dotted string, since a mapping's own keys may hold
    dots (``session.intra_op.allow_spinning``)."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


def _at(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return NOT_SET
        node = node[key]
    return node


def _shown(value: Any) -> str:
    return "nothing" if value is NOT_SET else repr(value)


def _same(left: Any, right: Any) -> bool:
    """Equal as JSON values (1 and 1.0 alike, a tuple as its list), NaN equal to NaN, and null equal to an empty
    mapping: a conf file writes an empty mapping setting as null, which resolving makes ``{}``."""
    if {type(left), type(right)} == {type(None), dict} and not (left or right):
        return True
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    return bool(left == right)


def _override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override grammar, checked to parse back to ``value``."""
    override = f"{key}={override_value(value)}"
    try:
        parsed = _parser().parse_overrides([override])[0].value()
    except Exception as error:  # Hydra's grammar errors: one class per parser stage
        raise ConfigError(f"{key}={value!r}: cannot be written as an override ({error})") from None
    if not _same(parsed, value):
        raise ConfigError(f"{key}={value!r}: cannot be written as an override (it reads back as {parsed!r})")
    return override


def override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: null, true/false, numbers, strings (quoted unless plain), lists
    and mappings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if PLAIN_STRING.fullmatch(value) and not _reads_as_other_type(value):
            return value
        # Hydra's quoted strings: a quote is escaped, and so are the backslashes before a quote or the end.
        escaped = re.sub(r"(\\*)'", lambda match: match.group(1) * 2 + "\\'", value)
        return "'" + re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped) + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{override_value(item)}" for key, item in value.items()) + "}"
    raise ConfigError(f"{value!r}: a {type(value).__name__} has no override syntax")


def _reads_as_other_type(text: str) -> bool:
    """Whether Hydra reads ``text`` unquoted as something other than that string (``true``, ``null``, ``1e3``)."""
    return _parser().parse_overrides([f"key={text}"])[0].value() != text


@functools.cache
def _parser() -> Any:
    """Hydra's override parser, made once: each value written is parsed back, strings twice."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()
