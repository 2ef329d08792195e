"""tox.ini's test command, with tox's substitutions done as tox does them, without tox.

The command of `[testenv]` that runs the tests is turned into a shell line for
the sandbox: `{posargs}` (or `{posargs:DEFAULT}`) becomes the place where test
names go, `{envpython}` is `python`, `{toxinidir}` the repository, `{envdir}`
and `{envtmpdir}` folders under /tmp, `{env:NAME:DEFAULT}` the value from
`setenv` or the sandbox's environment, and `changedir` / `setenv` are applied.
Anything else tox would have to do (another section's value, a factor that
selects lines, a substitution not listed) refuses the line, with the reason,
so the next way to find the tests is tried instead.
"""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

ENVDIR = "/tmp/cwm-agent-tox/env"
ENVTMPDIR = "/tmp/cwm-agent-tox/tmp"
_TEST_RUNNERS = ("pytest", "py.test", "unittest", "nose2", "nosetests")
_BRACES = re.compile(r"\{([^{}]*)\}")
_FACTOR_LINE = re.compile(r"^[\w.!,-]+:\s")


class ToxRefused(Exception):
    """tox.ini's command cannot be run faithfully without tox; the message says why."""


@dataclass(frozen=True)
class ToxCommand:
    """The test command: `before` + test names (default `targets`) + `after`, run in `cwd`."""

    before: list[str]
    targets: list[str]
    after: list[str]
    cwd: str  # relative to the repository ("" for its root)
    setenv: dict[str, str]
    line: str  # as tox.ini writes it

    def shell(self, targets: list[str] | None = None) -> str:
        """The shell line, with these test names in place of {posargs} (None: the default)."""
        words = [*self.before, *(self.targets if targets is None else targets), *self.after]
        exports = [f"export {name}={shlex.quote(value)}" for name, value in self.setenv.items()]
        steps = [*exports, f"mkdir -p {ENVDIR} {ENVTMPDIR}"]
        if self.cwd:
            steps.append(f"cd {shlex.quote(self.cwd)}")
        return " && ".join([*steps, shlex.join(words)])


def read_tox(text: str, root: str, environ: Mapping[str, str]) -> ToxCommand:
    """The `[testenv]` command that runs tests, substituted; `ToxRefused` otherwise."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ToxRefused(f"tox.ini does not parse: {str(exc).splitlines()[0]}") from None
    if not parser.has_option("testenv", "commands"):
        raise ToxRefused("tox.ini has no [testenv] commands")
    section = parser["testenv"]
    lines = _logical_lines(section["commands"])
    if not lines:
        raise ToxRefused("tox.ini's [testenv] commands are empty")
    line = next((line for line in lines if any(r in line for r in _TEST_RUNNERS)), lines[0])
    if _FACTOR_LINE.match(line):
        raise ToxRefused(f"`{line}` runs only in some tox environments (a factor condition)")
    fixed = {"toxinidir": root, "envdir": ENVDIR, "envtmpdir": ENVTMPDIR, "envpython": "python"}
    setenv: dict[str, str] = {}
    for entry in _logical_lines(section.get("setenv", "")):
        if _FACTOR_LINE.match(entry):
            continue  # only for the factor's environments, which we are not
        name, sep, value = entry.partition("=")
        if not sep or entry.startswith("file|"):
            raise ToxRefused(f"setenv entry `{entry}` is not NAME=VALUE")
        setenv[name.strip()] = _substitute(value.strip(), fixed, setenv, environ)
    changedir = section.get("changedir", "").strip()
    cwd = _substitute(changedir, fixed, setenv, environ) if changedir else ""
    if cwd.startswith(root):
        cwd = cwd[len(root) :].lstrip("/")
    if line.startswith("-"):  # tox's "ignore the exit code" mark
        line = line[1:].lstrip()
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ToxRefused(f"`{line}` does not split into words: {exc}") from None
    before: list[str] = []
    targets: list[str] | None = None
    after: list[str] = []
    for word in words:
        posargs = re.fullmatch(r"\{posargs(?::(.*))?\}", word)
        if posargs is not None and targets is None:
            targets = shlex.split(posargs.group(1) or "")
            continue
        (before if targets is None else after).extend(
            shlex.split(_substitute(word, fixed, setenv, environ))
            if word.startswith("{env:")
            else [_substitute(word, fixed, setenv, environ)]
        )
    return ToxCommand(before, targets or [], after, cwd, setenv, line)


def _logical_lines(value: str) -> list[str]:
    """tox's lines: a trailing backslash continues a line; blank lines and comments go."""
    joined = re.sub(r"\\\s*\n\s*", " ", value)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def _substitute(
    word: str, fixed: Mapping[str, str], setenv: Mapping[str, str], environ: Mapping[str, str]
) -> str:
    def one(match: re.Match[str]) -> str:
        key = match.group(1)
        if key in fixed:
            return fixed[key]
        if key.startswith("env:"):
            name, _, default = key[4:].partition(":")
            return setenv.get(name, environ.get(name, default))
        if key.startswith("posargs"):
            raise ToxRefused(f"`{word}`: {{posargs}} inside a word is not supported")
        raise ToxRefused(f"`{word}`: tox substitution {{{key}}} is not supported without tox")

    return _BRACES.sub(one, word)
