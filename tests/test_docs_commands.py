"""Every `cwm-agent ...` line the README and docs/ show parses against the real CLI.

Runnable examples (```bash blocks) are parsed whole by click, as the shell would
hand them over, without running the command; synopses (other code blocks, with
`[--flag N]` and `…`) name only options their command has. So a renamed or
removed flag fails here, not in a reader's terminal.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command

from cwm_agent.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Shown:
    """One command line as a page shows it."""

    page: str
    language: str
    text: str

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def shell_commands(block: str) -> list[list[str]]:
    """The `cwm-agent` invocations of a shell snippet, as argument lists."""
    joined = re.sub(r"\\\n", " ", block)
    found = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                while words and ENV_ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words and words[0] == "cwm-agent":
                    found.append(words[1:])
                words = []
            else:
                words.append(token)
    return found


def shown_commands() -> list[Shown]:
    shown = []
    for page in PAGES:
        name = str(page.relative_to(ROOT))
        for language, block in FENCE.findall(page.read_text(encoding="utf-8")):
            if language in ("bash", "sh", "shell"):
                shown += [Shown(name, "bash", shlex.join(args)) for args in shell_commands(block)]
            else:  # a synopsis: each `cwm-agent` line with the indented lines under it
                for synopsis in re.findall(r"^ *cwm-agent .*(?:\n {4,}[^\n]*)*", block, re.M):
                    shown.append(Shown(name, "synopsis", synopsis))
    return shown


def resolve(args: list[str]) -> tuple[Any, typer.Context, list[str]]:
    """The command `args` name, its parent context and the arguments left for it.
    (Typer carries its own copy of click, so its classes are reached through it.)"""
    command = get_command(app)
    context = typer.Context(command, info_name="cwm-agent")
    while hasattr(command, "resolve_command"):  # a group: the next word names its command
        name, command, args = command.resolve_command(context, args)
        context = typer.Context(command, info_name=name, parent=context)
    assert context.parent is not None
    return command, context.parent, args


SHOWN = shown_commands()


def test_the_pages_show_commands_of_every_kind() -> None:
    names = {shlex.split(s.text)[0] if s.language == "bash" else s.text.split()[1] for s in SHOWN}
    assert {"fix", "swebench", "ci", "view", "trace", "serve", "eval"} <= names
    assert {s.language for s in SHOWN} == {"bash", "synopsis"}


def test_a_wrong_flag_is_caught() -> None:
    with pytest.raises(Exception, match="No such option: --no-such-flag"):
        parse(Shown("x", "bash", "fix --repo . --issue x --no-such-flag"))
    with pytest.raises(AssertionError, match="--no-such-flag"):
        parse(Shown("x", "synopsis", "cwm-agent fix --repo PATH [--no-such-flag N]"))


def parse(shown: Shown) -> None:
    if shown.language == "bash":
        command, parent, rest = resolve(shlex.split(shown.text))
        command.make_context(command.name, rest, parent=parent)
        return
    words = shown.text.replace("\n", " ").split()[1:]
    subcommand = [w for w in words[:3] if re.fullmatch(r"[a-z]+", w)]
    command, _, _ = resolve(subcommand)
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    named = {m for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", shown.text)}
    unknown = sorted(named - known)
    assert not unknown, f"{' '.join(subcommand)} has no {', '.join(unknown)}"


@pytest.mark.parametrize("shown", SHOWN, ids=str)
def test_a_command_the_docs_show_parses(shown: Shown, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the pages' paths are the checkout's (`--config` reads its file)
    parse(shown)
