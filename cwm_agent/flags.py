"""Command-line flags of a local model, shared by every command that can load one
(`fix`, `serve`, `swebench run`), so their names, defaults and help stay one."""

from __future__ import annotations

from typing import Annotated

import typer

Dtype = Annotated[str, typer.Option(help="local model: auto, bfloat16 or float32")]
Quantization = Annotated[
    str | None, typer.Option(help="local model: fp8 (torchao), int8 or int4 (bitsandbytes)")
]
DeviceMap = Annotated[
    str | None, typer.Option(help='local model: default "auto" (the GPUs) when there are GPUs')
]
AttnImplementation = Annotated[
    str | None, typer.Option(help="local model: sdpa, eager, flash_attention_2, ...")
]
Offline = Annotated[
    bool, typer.Option("--offline", help="local model: never download from the Hub")
]
Compile = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile", help="local model: compiled decoding (default: on a GPU)"
    ),
]
Greedy = Annotated[bool, typer.Option("--greedy", help="greedy decoding, not sampling")]
Seed = Annotated[int | None, typer.Option(help="sampling seed")]
