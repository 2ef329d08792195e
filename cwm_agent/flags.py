"""The command-line flags several commands share, each declared once.

A flag that fills a config field takes its default from that field, so a default
such as 128 turns is written only where the config defines it. Flags that fill one
config come as a `Group`; a command asks for one with a parameter whose default is
`group(GROUP)` and `expand` gives typer the group's flags in that place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar, cast

import typer
from pydantic import BaseModel

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
