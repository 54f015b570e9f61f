"""What every utility command does with its arguments: overrides apart from paths, and the config they compose."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(hydra overrides, other arguments): an override is ``key=value`` that is not an existing path."""
    overrides = [argument for argument in arguments if "=" in argument and not Path(argument).exists()]
    return overrides, [argument for argument in arguments if argument not in overrides]


def config_or_exit(
    reads: type[Any], overrides: list[str], config_name: str = "run", *, overlays: tuple[str, ...] = ()
) -> Any:
    """What a command reads of the config (``harness.config.store.command_config``); one that does not resolve
    exits 2 with its one-line error, as for ``run``."""
    from harness.config.store import command_config
    from harness.errors import ConfigError

    try:
        return command_config(reads, overrides, config_name, overlays=overlays)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
