"""``harness <command> [hydra overrides]``: one Hydra app per command over the shared ``conf/`` tree.

``harness --help`` lists the commands; ``harness <command> --help`` shows Hydra's help for its config.
Each command names its primary config in ``conf/`` and a task function; adding a command is one entry in
``COMMANDS``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class Command:
    """A CLI command: its primary config in ``conf/``, its one-line help, and the task run per Hydra job."""

    config_name: str
    help: str
    task: Callable[[object], None]


_failed_jobs: list[str] = []


def _pipeline_task(cfg: object) -> None:
    """Run the pipeline for one composed config; print the summary and, last, the path of result.json."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from harness.pipeline import run
    from harness.summary import format_summary

    hydra_config = HydraConfig.get()
    composed = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[arg-type]
    result = run(composed, run_dir=Path(hydra_config.runtime.output_dir))  # type: ignore[arg-type]
    print(format_summary(result), flush=True)
    if result.error:
        print(f"error: {result.error.message}", file=sys.stderr, flush=True)
        _failed_jobs.append(result.run_dir)
    print(Path(result.run_dir) / "result.json", flush=True)
    if result.error and hydra_config.mode != RunMode.MULTIRUN:
        raise SystemExit(1)


COMMANDS: dict[str, Command] = {
    "run": Command("run", "run the configured stages (build, ...) for one config, or a sweep with -m", _pipeline_task),
    "build": Command("build", "build and parity-check the deployable artifact only", _pipeline_task),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: harness <command> [hydra overrides] [-m]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "`harness <command> --help` shows the config groups and options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the Hydra app of the command named by the first argument."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = arguments[0], arguments[1:]
    if name not in COMMANDS:
        from harness.errors import unknown_name_message

        print(f"error: {unknown_name_message('command', name, COMMANDS)}", file=sys.stderr)
        return 2
    import hydra

    command = COMMANDS[name]
    app = hydra.main(config_path=str(CONF_DIR), config_name=command.config_name, version_base="1.3")(command.task)
    sys.argv = [f"harness {name}", *rest]
    _failed_jobs.clear()
    app()
    if _failed_jobs:
        print(f"error: {len(_failed_jobs)} job(s) failed: {', '.join(_failed_jobs)}", file=sys.stderr)
        return 1
    return 0


def entry_point() -> None:
    sys.exit(main())
