"""Headless Chromium (Debian's `chromium`) for the view's tests: the DOM a page has once
its script ran, and screenshots. Skipped where Chromium is missing, except under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
    "--virtual-time-budget=3000",  # let the page's script finish before the dump
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "chromium is missing: scripts/setup.sh installs it (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    return found


def _run(*args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="cwm-agent-chromium-") as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    return done.stdout


def dump_dom(url: str, *flags: str) -> Dom:
    """The page's DOM after its script ran, parsed; `flags` are Chromium's own."""
    return Dom.parse(_run(*flags, "--dump-dom", url))


def screenshot(url: str, path: Path, width: int = 1280, height: int = 1400) -> Path:
    _run(f"--window-size={width},{height}", f"--screenshot={path}", url)
    return path


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parent: Element | None = None
    content: list[Element | str] = field(default_factory=list)  # in document order

    @property
    def children(self) -> list[Element]:
        return [part for part in self.content if isinstance(part, Element)]

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    @property
    def text(self) -> str:
        return "".join(part if isinstance(part, str) else part.text for part in self.content)

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with this tag, class and attributes (`data_x` for `data-x`)."""
        found = []
        for child in self.children:
            wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
            if (
                (tag is None or child.tag == tag)
                and (cls is None or cls in child.classes)
                and all(child.attrs.get(k) == v for k, v in wanted.items())
            ):
                found.append(child)
            found.extend(child.all(tag, cls, **attrs))
        return found

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Element:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"{len(found)} matches for {tag} {cls} {attrs}"
        return found[0]

    @property
    def shown(self) -> bool:
        """Not hidden by the page's filters, search or views, nor inside something hidden."""
        node: Element | None = self
        while node is not None:
            if "hidden" in node.attrs or node.classes & {"hidden-by-filter", "hidden-by-search"}:
                return False
            node = node.parent
        return True


VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}


class Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.at = self.root

    @classmethod
    def parse(cls, html: str) -> Element:
        dom = cls()
        dom.feed(html)
        return dom.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, parent=self.at)
        self.at.content.append(element)
        if tag not in VOID:
            self.at = element

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.at
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.at = node.parent

    def handle_data(self, data: str) -> None:
        self.at.content.append(data)
