"""The command-line flags several commands share, each declared once.

A flag that fills a config field takes its default from that field, so a default
such as 128 turns is written only where the config defines it. Flags that fill one
config come as a `Group`; a command asks for one with a parameter whose default is
`group(GROUP)` and `expand` gives typer the group's flags in that place;
`configurable` adds `--config FILE.toml`, whose keys are checked by the same
fields (docs/configuration.md).
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar, Union, cast

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from typer.core import TyperOption

from cwm_agent import toml_config
from cwm_agent.agent import RolloutConfig
from cwm_agent.model import LoadConfig, SamplingConfig

C = TypeVar("C", bound=BaseModel)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Group(Generic[C]):
    """Flags named like the fields of `config` they fill; each default is the field's."""

    def __init__(self, config: type[C], **flags: Any) -> None:
        self.config = config
        self.flags = flags
        fields = config.model_fields
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter(
                    name,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=flag,
                    default=fields[name].get_default(call_default_factory=True),
                )
                for name, flag in flags.items()
            ]
        )

    def __call__(self, **values: Any) -> C:
        return self.config(**values)

    def pick(self, *names: str) -> Group[C]:
        """Only the flags `names`, in that order (the others keep their defaults)."""
        return Group(self.config, **{name: self.flags[name] for name in names})


@dataclass(frozen=True)
class _Spliced:
    build: Callable[..., Any]


def group(build: Callable[..., T]) -> T:
    """A parameter's default: `build`'s flags stand in its place, it gets what `build` makes."""
    return cast(T, _Spliced(build))


def expand(command: F) -> F:
    """`command` as typer should see it: each `group(...)` parameter replaced by its flags."""
    signature = inspect.signature(command, eval_str=True)
    builds = {
        name: parameter.default.build
        for name, parameter in signature.parameters.items()
        if isinstance(parameter.default, _Spliced)
    }
    flags = {name: inspect.signature(build, eval_str=True) for name, build in builds.items()}
    parameters = [
        flag
        for name, parameter in signature.parameters.items()
        for flag in (flags[name].parameters.values() if name in flags else [parameter])
    ]

    @functools.wraps(command)
    def with_groups(**values: Any) -> Any:
        for name, build in builds.items():
            values[name] = build(**{flag: values.pop(flag) for flag in flags[name].parameters})
        return command(**values)

    with_groups.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return cast(F, with_groups)


@dataclass(frozen=True)
class _Resolved:
    pass


def resolved() -> dict[str, object]:
    """A parameter's default in a `configurable` command: it gets the command's settings
    as resolved from the flags and the config file, keyed as a config file keys them."""
    return cast(dict[str, object], _Resolved())


def configurable(command: F) -> F:
    """`expand(command)` with `--config FILE.toml`: flat keys spelled like the long flags
    with underscores stand in for flags not given on the command line.

    A key is checked as its flag's value is: against the pydantic field behind a
    group's flag (its type and constraints), else the parameter's type, strictly
    (TOML has types: `max_turns = "64"` is a mistake). The file's values become
    click's defaults (`default_map`), so a flag given on the command line wins."""
    expanded = expand(command)
    signature = inspect.signature(expanded, eval_str=True)
    types_ = {name: _as_toml(p.annotation) for name, p in signature.parameters.items()}
    for parameter in inspect.signature(command, eval_str=True).parameters.values():
        built = parameter.default.build if isinstance(parameter.default, _Spliced) else None
        if isinstance(built, Group):
            for flag in built.flags:
                field = built.config.model_fields[flag]
                plain = _as_toml(field.annotation)
                types_[flag] = Annotated[plain, *field.metadata] if field.metadata else plain
    settings = [n for n, p in signature.parameters.items() if isinstance(p.default, _Resolved)]

    def load(ctx: typer.Context, value: Path | None) -> Path | None:
        if value is not None:
            try:
                found = _read_config(ctx, value, types_)
            except toml_config.ConfigError as exc:  # while parsing: no command to catch it
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
            ctx.default_map = {**(ctx.default_map or {}), **found}
        return value

    config = inspect.Parameter(
        "config",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[
            Path | None,
            typer.Option(
                "--config",
                is_eager=True,
                callback=load,
                help="TOML file of settings: keys are the long flags with underscores",
            ),
        ],
        default=None,
    )

    context = inspect.Parameter(  # typer hands the command its context here
        "config_context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
    )

    @functools.wraps(expanded)
    def with_config(**values: Any) -> Any:
        values.pop("config")
        command = values.pop("config_context").command
        shown = {
            _key(option): _plain(values[option.name])
            for option in _options(command)
            if option.name in values
        }
        for name in settings:
            values[name] = shown
        return expanded(**values)

    flags = [p for name, p in signature.parameters.items() if name not in settings]
    with_config.__signature__ = signature.replace(parameters=[context, *flags, config])  # type: ignore[attr-defined]
    return cast(F, with_config)


def _options(command: Any) -> list[TyperOption]:
    """The command's options but --config (typer's own click underneath)."""
    return [o for o in command.params if isinstance(o, TyperOption) and o.name != "config"]


def _read_config(ctx: typer.Context, path: Path, types_: dict[str, Any]) -> dict[str, object]:
    """The file's settings by parameter name, each checked; a bad one is a ConfigError."""
    options = {_key(option): option for option in _options(ctx.command)}
    found: dict[str, object] = {}
    for key, value in toml_config.read(path).items():
        option = options.get(key)
        if option is None:
            raise toml_config.ConfigError(
                f"{path}: unknown key {key!r}: the keys are the long flags of "
                f"`{ctx.command_path}` with underscores (e.g. {next(iter(options))})"
            )
        try:
            TypeAdapter(types_[option.name]).validate_python(value, strict=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise toml_config.ConfigError(f"{path}: {key} = {value!r}: {error['msg']}") from None
        found[option.name] = value
    return found


def _key(option: TyperOption) -> str:
    """The config file's key for a flag: its long name with underscores."""
    longest = max(option.opts, key=len)
    return longest.lstrip("-").replace("-", "_")


def _as_toml(annotation: Any) -> Any:
    """`annotation` as a TOML value has it: a path is a string."""
    if typing.get_origin(annotation) is Annotated:
        return _as_toml(typing.get_args(annotation)[0])
    if annotation is Path:
        return str
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return Union[tuple(_as_toml(arg) for arg in typing.get_args(annotation))]  # noqa: UP007
    return annotation


def _plain(value: object) -> object:
    """A flag's value as TOML can hold it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


ROLLOUT = Group(
    RolloutConfig,
    max_turns=Annotated[int, typer.Option(help="turn budget")],
    max_reply_tokens=Annotated[int, typer.Option(help="tokens one reply may have")],
    context_size=Annotated[int, typer.Option(help="context budget in tokens")],
    session_timeout=Annotated[float, typer.Option(help="seconds per bash call")],
)
LOAD = Group(
    LoadConfig,
    dtype=Annotated[str, typer.Option(help="local model: auto, bfloat16 or float32")],
    quantization=Annotated[
        str | None, typer.Option(help="local model: fp8 (torchao), int8 or int4 (bitsandbytes)")
    ],
    device_map=Annotated[
        str | None, typer.Option(help='local model: default "auto" (the GPUs) when there are GPUs')
    ],
    attn_implementation=Annotated[
        str | None, typer.Option(help="local model: sdpa, eager, flash_attention_2, ...")
    ],
    offline=Annotated[
        bool, typer.Option("--offline", help="local model: never download from the Hub")
    ],
    compile=Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile", help="local model: compiled decoding (default: on a GPU)"
        ),
    ],
)
Greedy = Annotated[bool, typer.Option("--greedy", help="greedy decoding, not sampling")]
SAMPLING = Group(
    SamplingConfig, greedy=Greedy, seed=Annotated[int | None, typer.Option(help="sampling seed")]
)

Model = Annotated[str, typer.Option(help="replay:PATH, openai:URL, or a model id / directory")]
Image = Annotated[str, typer.Option(help="sandbox image")]
Workdir = Annotated[str, typer.Option(help="repository path inside the sandbox")]
Output = Annotated[Path | None, typer.Option(help="new folder for the outputs")]
