"""Syntax and diff highlighting with Pygments, as markup the templates embed."""

from __future__ import annotations

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import BashLexer, DiffLexer, PythonLexer, TextLexer

from cwm_agent.terminal import plain

_FORMATTER = HtmlFormatter(nowrap=True)
_TOOLS: dict[str, type[Lexer]] = {"bash": BashLexer, "create": PythonLexer}


def code(text: str, lexer: Lexer) -> Markup:
    """`text` as highlighted HTML spans (without the wrapping <pre>, which templates own),
    its escape sequences dropped as everywhere in the view."""
    return Markup(highlight(plain(text), lexer, _FORMATTER))


def diff(text: str) -> Markup:
    return code(text, DiffLexer())


def tool_argument(tool: str, argument: str) -> Markup:
    """A tool call's argument: bash as shell, a created Python file as Python."""
    lexer = _TOOLS.get(tool, TextLexer)
    if tool == "create" and not argument.split("\n", 1)[0].strip().endswith(".py"):
        lexer = TextLexer
    return code(argument, lexer())


def stylesheet() -> str:
    """The token colours, scoped to `.hl` blocks."""
    return HtmlFormatter(style="default").get_style_defs(".hl")
