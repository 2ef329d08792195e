"""`--config FILE.toml`: a command's settings as flat keys, read and written.

The keys are the command's long flags with underscores (`max_turns = 64` for
`--max-turns 64`); `flags.configurable` checks them against the command and
the pydantic configs its flags fill, so this module only reads and writes TOML.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

from cwm_agent.errors import UserError, read_text


class ConfigError(UserError):
    """A config file that cannot be used; the message names the file."""


def read(path: Path) -> dict[str, object]:
    """The file's table of settings."""
    text = read_text(path, "--config", ConfigError)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}") from None


def dumps(settings: Mapping[str, object]) -> str:
    """`settings` as a TOML file `read` gives back (a None value is left out: the default)."""
    return "".join(
        f"{key} = {_value(value)}\n" for key, value in settings.items() if value is not None
    )


def _value(value: object) -> str:
    # A JSON string, number, boolean or list of them is TOML too, but for DEL,
    # which TOML wants escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
