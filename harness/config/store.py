"""The schema of ``harness.config.schema`` as Hydra structured configs, and composing ``conf/`` against it.

Hydra's schema pattern: a structured config registered in the ``ConfigStore`` types the tree that the YAML
files fill in, so a wrong type (``perf.batch=abc``), a value outside a closed set or an unknown key is
refused while composing, before any run folder exists. OmegaConf 2.3 knows neither ``Literal`` nor
frozen nodes that can be overridden, so the registered classes are generated from the frozen dataclasses
(``Literal`` -> an ``Enum`` of the same values, tuples -> lists); the dataclasses stay the one definition.
Defaults are not copied: every field is ``MISSING`` in the schema and the YAML files give the values, so a
YAML file that forgets a key fails composition. The ``backend`` node is validated by ``harness.resolve``
instead, so that composing imports no backend plugin.

Hydra's composition errors are translated into ``ConfigError`` messages of the same shape as every other
config error: the dotted key, the value, what is allowed and the closest match.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from harness.config.convert import T, convert_value, from_mapping, hint_at
from harness.config.schema import RunConfig
from harness.errors import ConfigError, unknown_key_message, unknown_name_message

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
SCHEMA_NAME = "run_schema"
# Groups that add to a config rather than fill one of its fields: `debug=tiny`, `+experiment=demo`.
OVERLAY_GROUPS = ("debug", "experiment")


def _omegaconf_type(hint: Any) -> Any:
    """The type OmegaConf 2.3 can check for ``hint``."""
    origin = get_origin(hint)
    if origin is typing.Literal:
        values = [str(value) for value in get_args(hint)]
        return enum.Enum("_".join(["Choice", *values]), {value: value for value in values})  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        options = [option for option in get_args(hint) if option is not type(None)]
        (option,) = options  # OmegaConf supports Optional[X] only; the schema uses nothing wider
        return typing.Optional[_omegaconf_type(option)]  # noqa: UP045 - OmegaConf reads typing.Optional
    if origin is tuple:
        return list[_omegaconf_type(get_args(hint)[0])]  # type: ignore[misc]
    if origin is dict:
        # A free-form mapping (vdsp params) is Any to OmegaConf: set on the command line (`vdsp.params={...}`) over
        # a typed null mapping, OmegaConf 2.3's merge fails ("'NoneType' object has no attribute 'get'"). Its type
        # is still checked, when the config is resolved.
        return Any
    if dataclasses.is_dataclass(hint):
        return _schema_class(typing.cast(type, hint))
    return hint


@functools.cache
def _schema_class(cls: type) -> type:
    from omegaconf import MISSING

    hints = typing.get_type_hints(cls)
    # omegaconf's MISSING ("???") as every default: each value must come from the YAML files.
    fields = [
        (item.name, _omegaconf_type(hints[item.name]), dataclasses.field(default=MISSING))
        for item in dataclasses.fields(cls)
        if not item.metadata.get("resolved")
    ]
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


@functools.cache
def register_schema() -> None:
    """Register the run schema as ``run_schema`` (``conf/run.yaml`` puts it first in its defaults)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(_schema_class(RunConfig))
    ConfigStore.instance().store(name=SCHEMA_NAME, node=node)
    OmegaConf.register_new_resolver("harness_config_groups", run_config_groups)


def run_config_groups() -> str:
    """``group: option, ...`` for each group ``harness run`` and ``harness build`` compose, for their ``--help``
    (Hydra's own list names every folder in ``conf/``, the gate command's groups too)."""
    return "\n".join(
        f"{group}: {', '.join(sorted(path.stem for path in (CONF_DIR / group).glob('*.yaml')))}"
        for group in sorted({*_config_groups(RunConfig), *OVERLAY_GROUPS})
    )


def _hydra_compose(overrides: list[str], config_name: str, *, with_hydra: bool = False, reads: type = RunConfig) -> Any:
    """Hydra's compose API on ``conf/`` with the schema registered; errors are ``ConfigError`` naming keys of
    ``reads``, the dataclass of what the command reads."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
        except Exception as error:  # Hydra and OmegaConf raise many types; each becomes one named message
            named = _named_error(error, reads) or _unreadable_config_file(error)
            if named is not None:
                raise named from None
            culprit = _first_failing_override(overrides, config_name)
            if culprit and "No match in the defaults list" in str(error):
                # A group of another command (`harness run gate=default`): conf/ holds every command's groups.
                group = _override_group(culprit)
                groups = sorted({*_config_groups(reads), *OVERLAY_GROUPS})
                raise ConfigError(
                    f"{culprit}: {group!r} is not a config group of this command (its groups: {groups})"
                ) from None
            key = _override_key(culprit or "").split("@", 1)[0]
            if "Config group override must be" in str(error) and "/" not in key and (CONF_DIR / key).is_dir():
                # `model=null`: Hydra's "must be a string or a list. Got NoneType" names none of the group's options.
                options = [path.stem for path in (CONF_DIR / key).glob("*.yaml")]
                raise ConfigError(unknown_name_message(key, None, options)) from None
            null = _null_parent(overrides, culprit, config_name) if culprit else None
            if null is not None:
                # OmegaConf's "Unexpected type for root: NoneType": a key set inside a node that is null here.
                raise ConfigError(f"{culprit}: {null} is null in this config, so it has no keys to set") from None
            raise ConfigError(f"{culprit}: {_first_line(error)}" if culprit else _first_line(error)) from None


def _null_parent(overrides: list[str], culprit: str, config_name: str) -> str | None:
    """The null node (``precision.quantization`` of fp32) inside which ``culprit`` sets a key, composed with the
    overrides before it; ``None`` when it sets no key inside a null node."""
    from hydra import compose as hydra_compose
    from omegaconf import OmegaConf

    parts = _override_key(culprit).split(".")
    composed = hydra_compose(config_name=config_name, overrides=overrides[: overrides.index(culprit)])
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth])
        if OmegaConf.select(composed, prefix, default="absent") is None:
            return prefix
    return None


def _override_key(override: str) -> str:
    """The key an override sets, without its ``+`` / ``~``: ``precision.quantization.mode`` of
    ``+precision.quantization.mode=static``."""
    return override.split("=", 1)[0].lstrip("+~")


def _override_group(override: str) -> str:
    """The top-level group or key an override sets: ``perf`` for ``perf.batch=2``, ``hydra`` for
    ``hydra/launcher=parallel``, ``model`` for ``+model@x=y``."""
    return re.split(r"[./=@]", override.lstrip("+~"), maxsplit=1)[0]


def _config_groups(reads: type) -> list[str]:
    """The config groups a command composes: the fields of ``reads`` that have a folder in ``conf/``."""
    return [item.name for item in dataclasses.fields(typing.cast(Any, reads)) if (CONF_DIR / item.name).is_dir()]


def _unreadable_config_file(error: BaseException) -> ConfigError | None:
    """A YAML file under ``conf/`` (``local/default.yaml``, written by hand, most likely) that is not YAML or not
    UTF-8 text, named: Hydra's message does not name it, and every composition fails on it, so the first
    override would otherwise be blamed."""
    import yaml

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
            mark = cause.problem_mark
            return ConfigError(f"{mark.name}, line {mark.line + 1}: not YAML ({cause.problem or cause.context})")
        if isinstance(cause, UnicodeDecodeError):
            for path in sorted(CONF_DIR.rglob("*.yaml")):
                try:
                    path.read_text(encoding="utf-8")
                except UnicodeDecodeError as undecodable:
                    return ConfigError(f"{path}: not UTF-8 text ({undecodable})")
        cause = cause.__cause__ or cause.__context__
    return None


def _first_failing_override(overrides: list[str], config_name: str) -> str | None:
    """The override at which composition first fails, for an error that names no key (an override reaching into
    a list by name, say): composed again with one more override at a time, only on this error path."""
    from hydra import compose as hydra_compose

    for count in range(1, len(overrides) + 1):
        try:
            hydra_compose(config_name=config_name, overrides=overrides[:count])
        except Exception:
            return overrides[count - 1]
    return None


def compose(overrides: list[str], config_name: str = "run") -> dict[str, Any]:
    """The composed config as plain data (no run folder, no logging set-up); errors are ``ConfigError``."""
    return plain(_hydra_compose(overrides, config_name))


def compose_with_hydra(overrides: list[str], config_name: str = "run") -> tuple[dict[str, Any], Any]:
    """``compose``'s plain config and the ``hydra`` node (run and sweep folders...) Hydra will use, from one
    composition."""
    from omegaconf import OmegaConf

    composed = _hydra_compose(overrides, config_name, with_hydra=True)
    own = OmegaConf.masked_copy(composed, [key for key in composed if key != "hydra"])
    return plain(own), composed.hydra


def command_config(
    reads: type[T], overrides: list[str], config_name: str = "run", *, overlays: tuple[str, ...] = ()
) -> T:
    """The groups a command reads (the fields of dataclass ``reads``), composed from ``config_name`` and checked.

    An override of any other group is refused as an unknown key: the command would ignore it, and a user who
    wrote ``perf.batch=2`` after ``harness report`` expects it to mean something. ``overlays`` are groups that
    set keys of other groups (``debug=tiny`` sets the dataset's size), accepted where what they set is read.
    Groups that ``conf/local`` adds beside them are left alone, since that file serves every command.
    """
    groups = [item.name for item in dataclasses.fields(typing.cast(Any, reads))]
    for override in overrides:
        group = _override_group(override)
        if group not in groups and group not in overlays:
            raise ConfigError(unknown_key_message(group, group, [*groups, *overlays]))
    composed = plain(_hydra_compose(overrides, config_name, reads=reads), reads)
    return from_mapping(reads, {name: composed.get(name) for name in groups})


def plain(composed: Any, reads: type = RunConfig) -> dict[str, Any]:
    """A composed ``DictConfig`` as plain data (interpolations resolved, enums as strings, unset keys refused)."""
    from omegaconf import OmegaConf

    try:
        container = OmegaConf.to_container(composed, resolve=True, enum_to_str=True, throw_on_missing=True)
    except Exception as error:  # an unset key or a failing interpolation, named by composition_error
        raise composition_error(error, reads) from None
    return typing.cast(dict[str, Any], container)


def compose_sweep_settings(overrides: list[str], config_name: str = "run") -> tuple[str, list[str]]:
    """The sweeper's ``_target_`` and the sweep in ``hydra.sweeper.params`` as overrides (``key=v1,v2``)."""
    return sweeper_settings(_hydra_compose(overrides, config_name, with_hydra=True).hydra.sweeper)


def sweeper_settings(sweeper: Any) -> tuple[str, list[str]]:
    """``hydra.sweeper`` of a composed config -> (its ``_target_``, its ``params`` as ``key=v1,v2`` overrides)."""
    params = sweeper.get("params") or {}
    return str(sweeper.get("_target_")), [f"{key}={value}" for key, value in params.items()]


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """The jobs of a ``-m`` sweep as Hydra's basic sweeper will number them, and the keys that vary."""

    jobs: tuple[tuple[str, ...], ...]
    swept: frozenset[str]

    def varying(self, job: int) -> str:
        """The overrides that make job ``job`` differ from the others (``model=tiny14 precision=fp16``)."""
        return " ".join(item for item in self.jobs[job] if item.split("=", 1)[0].lstrip("+~") in self.swept)


def _overrides_parser() -> Any:
    """Hydra's override parser as its basic sweeper makes it: with a config loader on ``conf/``, which
    ``glob(...)`` over a group's options (``model=glob(vit*)``) needs."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    return OverridesParser.create(config_loader=loader)


def sweep_plan(overrides: list[str], config_name: str = "run") -> SweepPlan | None:
    """Expand a sweep's command-line overrides (``hydra.sweeper.params`` included) into its jobs, exactly as
    the basic sweeper does; ``None`` when another sweeper (e.g. an optimiser) decides the jobs as it goes."""
    try:
        parsed = _overrides_parser().parse_overrides(overrides)
    except Exception as error:  # Hydra's override grammar errors
        raise ConfigError(str(error).strip().splitlines()[0]) from None
    fixed = [str(item.input_line) for item in parsed if not item.is_sweep_override()]
    try:
        sweeper, params = compose_sweep_settings(fixed, config_name)
    except ConfigError as error:
        swept_groups = [
            str(item.input_line) for item in parsed if item.is_sweep_override() and "." not in item.key_or_group
        ]
        if not swept_groups:
            raise
        # Hydra composes a sweep's fixed overrides with the defaults, before any job's swept groups.
        culprit = next((item for item in fixed if str(error).startswith(f"{item}:")), "KEY=VALUE")
        key, _, value = culprit.partition("=")
        raise ConfigError(
            f"{error} (a sweep's fixed overrides are applied before its swept groups ({', '.join(swept_groups)}): to "
            f"set it in each job instead, sweep it with its one value: '{key}=choice({value})')"
        ) from None
    return expand_sweep(overrides, sweeper=sweeper, params=params)


def expand_sweep(overrides: list[str], *, sweeper: str, params: list[str]) -> SweepPlan | None:
    """The jobs of a sweep given its composed sweeper settings (``_target_``, ``params`` as ``key=v1,v2``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if sweeper != BASIC_SWEEPER:
        return None
    try:
        parsed = _overrides_parser().parse_overrides([*params, *overrides])
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
    except Exception as error:  # Hydra's override grammar errors
        raise ConfigError(str(error).strip().splitlines()[0]) from None
    swept = frozenset(item.get_key_element().lstrip("+~") for item in parsed if item.is_sweep_override())
    return SweepPlan(jobs=tuple(tuple(job) for job in jobs), swept=swept)


def composition_error(error: BaseException, reads: type = RunConfig) -> ConfigError:
    """Hydra's or OmegaConf's error as a one-line ``ConfigError`` naming the key (a field of ``reads``)."""
    return _named_error(error, reads) or _unreadable_config_file(error) or ConfigError(_first_line(error))


# Hydra's message for an override it could not merge, followed by the override.
MERGING = "Error merging override "
# OmegaConf's message for null set on a key whose type has no null ("field 'perf.batch' is not Optional").
NOT_OPTIONAL = "is not Optional"


def _named_error(error: BaseException, reads: type) -> ConfigError | None:
    """``composition_error``'s message where the error names a key or a config option, else ``None``."""
    from hydra.errors import MissingConfigException
    from omegaconf import ListConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for item in chain:
        if isinstance(item, MissingConfigException) and item.missing_cfg_file and item.options:
            group, _, option = item.missing_cfg_file.rpartition("/")
            return ConfigError(unknown_name_message(group or "config", option, item.options))
        key = getattr(item, "full_key", None) if isinstance(item, OmegaConfBaseException) else None
        if not key:
            continue
        if isinstance(item, MissingMandatoryValue):
            return ConfigError(f"{key}: no value: set it in the group's YAML file in conf/ or as an override")
        if isinstance(item, ConfigKeyError | ConfigAttributeError):
            parent, _, name = str(key).rpartition(".")
            known = _known_keys(reads, parent) or _node_keys(item)
            if known is not None:
                return ConfigError(unknown_key_message(str(key), name, known))
        hint = hint_at(reads, str(key))
        value = _offending_value(item)
        # A mapping given for a list (or a list for a mapping) has no value in OmegaConf's error: the override has.
        given = next(
            (str(cause)[len(MERGING) :].split("=", 1)[1] for cause in chain if str(cause).startswith(MERGING)), None
        )
        if NOT_OPTIONAL in _first_line(item):  # null for a key that takes none: the value quoted is the key's name
            value = given = None
        if hint is not None:
            try:
                convert_value(hint, given if value is None and given is not None else value, str(key))
            except ConfigError as converted:
                return converted
        if "Cannot merge" in str(item) and given is not None:  # a plugin's key, typed by its YAML default only
            listed = isinstance(getattr(item, "parent_node", None), ListConfig)
            expected = "a list in brackets ([...])" if listed else "a mapping ({k: v})"
            return ConfigError(f"{key}={given}: expected {expected}")
        return ConfigError(f"{key}: {_first_line(item)}")
    return None


def _offending_value(error: BaseException) -> object:
    value = getattr(error, "value", None)
    if value is not None:
        return value
    message = _first_line(error)
    # "Value 'abc' of type 'str' could not be converted to Integer", "Invalid value 'x', expected one of ..."
    if "'" in message:
        return message.split("'")[1]
    return None


def _known_keys(reads: type, dotted_parent: str) -> list[str] | None:
    hint = reads if not dotted_parent else hint_at(reads, dotted_parent)
    if hint is not None and dataclasses.is_dataclass(hint):
        return [item.name for item in dataclasses.fields(hint) if not item.metadata.get("resolved")]
    return None


def _node_keys(error: BaseException) -> list[str] | None:
    """The keys of the node an unknown key was set in, where no dataclass types it: a backend group is typed by
    its plugin's dataclass, which the composition cannot know, but its YAML lists every key."""
    from omegaconf import DictConfig

    node = getattr(error, "parent_node", None)
    return sorted(str(name) for name in node) if isinstance(node, DictConfig) else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
