"""The README's `harness run` / `harness build` commands are configs that resolve: every key, group option and
value they set exists and validates, for every job of their sweeps (a renamed key fails here, not for a
reader)."""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

from harness.backends import backend_names, get_backend
from harness.config.schema import RunConfig
from harness.config.store import compose, compose_sweep_settings, sweep_plan
from harness.environment import capture as capture_environment
from harness.resolve import resolve_config
from harness.result import RunResult

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = re.compile(r"^harness (run|build) (.*)$")


def readme_commands() -> list[tuple[int, str, list[str]]]:
    """(line number, entry config, overrides) of each `harness run` / `harness build` line in the README's code blocks,
    continuation lines joined and comments dropped."""
    found, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        text = pending + line.split(" #", 1)[0].strip()
        if text.endswith("\\"):
            pending = text[:-1].rstrip() + " "
            continue
        pending = ""
        matched = COMMAND.match(text)
        if matched:
            found.append((start, matched.group(1), [word for word in shlex.split(matched.group(2)) if word != "-m"]))
    return found


COMMANDS = readme_commands()


def test_the_readme_has_the_commands_this_test_checks() -> None:
    # The quick-reference block alone has nine; a parser that finds few has stopped reading the README.
    assert len(COMMANDS) >= 20, COMMANDS


@pytest.mark.parametrize(("line", "entry", "overrides"), COMMANDS, ids=[f"README:{item[0]}" for item in COMMANDS])
def test_each_readme_command_resolves_for_every_job_of_its_sweep(line: int, entry: str, overrides: list[str]) -> None:
    plan = sweep_plan(overrides, entry)
    assert plan is not None, f"README:{line}: not a basic sweep"
    for job in plan.jobs:
        run_overrides = [item for item in job if not item.lstrip("+~").startswith("hydra")]
        if len(run_overrides) < len(job):
            compose_sweep_settings(list(job), entry)  # the hydra.* overrides (launchers) compose with the run's
        resolve_config(compose(run_overrides, entry))


def readme_python_blocks() -> list[tuple[int, str]]:
    """(line number, source) of each ```python block of the README."""
    blocks, source, start = [], None, 0
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if source is None and line == "```python":
            source, start = [], number + 1
        elif source is not None and line.startswith("```"):
            blocks.append((start, "\n".join(source) + "\n"))
            source = None
        elif source is not None:
            source.append(line)
    return blocks


def test_the_readme_python_example_compiles_and_composes_a_config_that_resolves() -> None:
    blocks = readme_python_blocks()
    assert blocks, "the README's Python API example is gone"
    for line, source in blocks:
        tree = ast.parse(source, filename=f"README:{line}")
        calls = [
            node.args[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "harness.compose"
        ]
        assert calls, f"README:{line}: no harness.compose call"
        for overrides in calls:
            resolve_config(compose(ast.literal_eval(overrides)))


def result_json_section() -> set[str]:
    """Every identifier inside backticks in the README's `result.json` and `build.json` (its `build.manifest`) schemas."""
    text = README.read_text()
    section = text[text.index("## `result.json`") : text.index("## Development")]
    return {word for quoted in re.findall(r"`([^`]+)`", section) for word in re.findall(r"\w+", quoted)}


def result_fields(kind: type, prefix: str, seen: set[type], *, config: bool = False) -> list[str]:
    """Dotted names of every field of ``kind`` and of the dataclasses it holds; the resolved config's only when
    ``config`` (a result's schema points at `conf/` for it)."""
    if not dataclasses.is_dataclass(kind) or kind in seen or (kind is RunConfig and not config):
        return [name for arg in typing.get_args(kind) for name in result_fields(arg, prefix, seen, config=config)]
    seen.add(kind)
    hints = typing.get_type_hints(kind)
    return [
        name
        for field in dataclasses.fields(kind)
        for name in (
            f"{prefix}{field.name}",
            *result_fields(hints[field.name], f"{prefix}{field.name}.", seen, config=config),
        )
    ]


def test_every_result_json_field_is_in_the_readme_schema() -> None:
    documented = result_json_section()
    fields = result_fields(RunResult, "", set()) + [f"environment.{key}" for key in capture_environment()]
    assert len(fields) > 100, fields  # the walk reached the nested results
    assert [name for name in fields if name.rsplit(".", 1)[-1] not in documented] == []


def test_every_config_key_is_in_the_readme_configuration_table() -> None:
    text = README.read_text()
    section = text[text.index("## Configuration") : text.index("## The pipeline")]
    documented = {word for quoted in re.findall(r"`([^`]+)`", section) for word in re.findall(r"\w+", quoted)}
    # `task` is the entry config's own name; `preprocessing` is what the vdsp group resolves to (documented there).
    derived = {"task", "preprocessing"}
    keys = [name for name in result_fields(RunConfig, "", set(), config=True) if name.split(".")[0] not in derived]
    assert len(keys) > 80, keys
    assert [name for name in keys if name.rsplit(".", 1)[-1] not in documented] == []


def test_every_backend_and_its_keys_are_in_the_readme() -> None:
    text = README.read_text()
    options = re.search(r"^\| `backend/` \| (.*?) \|", text, flags=re.MULTILINE)
    assert options is not None, "the configuration table has no backend/ row"
    section = text[text.index("## Backends") : text.index("## Performance measurement")]
    documented = {word for quoted in re.findall(r"`([^`]+)`", section) for word in re.findall(r"\w+", quoted)}
    assert sorted(set(backend_names()) - set(re.findall(r"`(\w+)`", options.group(1)))) == []
    undocumented = [
        f"{name}.{field.name}"
        for name in backend_names()
        for field in dataclasses.fields(get_backend(name).config_type)
        if field.name not in documented
    ]
    assert undocumented == []
