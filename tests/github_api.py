"""A local stand-in for the GitHub REST API: a real HTTP server that keeps a little
state (issues, pull requests, comments) and records every request it gets, so
tests can assert the exact calls the bot made. `failures` makes it fail the next
calls the way GitHub does in its bad moments."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    """How the next call (the next `on`, as "METHOD PATH", when given) fails: `status`
    with `headers`; after doing the work when `acted` (the answer is lost, not the
    request); after `delay_s` without an answer."""

    status: int = 502
    headers: dict[str, str] = field(default_factory=dict)
    acted: bool = False
    delay_s: float = 0.0
    on: str = ""


@dataclass
class FakeGitHub:
    slug: str
    token: str
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    timeline: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    comments: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    url: str = ""

    def add_issue(self, number: int, title: str, body: str, **extra: Any) -> None:
        self.issues[number] = {
            "number": number,
            "title": title,
            "body": body,
            "state": "open",
            "locked": False,
            "labels": [{"name": "cwm-agent"}],
            "html_url": f"https://github.test/{self.slug}/issues/{number}",
            **extra,
        }

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path + _query(r.query)) for r in self.requests]

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        repo = f"/repos/{self.slug}"
        if not path.startswith(repo):
            return 404, {"message": "Not Found"}
        rest = path[len(repo) :]
        if method == "GET" and rest == "":
            return 200, {"full_name": self.slug, "default_branch": "main"}
        if match := re.fullmatch(r"/issues/(\d+)", rest):
            issue = self.issues.get(int(match[1]))
            return (200, issue) if issue else (404, {"message": "Not Found"})
        if match := re.fullmatch(r"/issues/(\d+)/timeline", rest):
            return 200, self.timeline.get(int(match[1]), [])
        if match := re.fullmatch(r"/issues/(\d+)/comments", rest):
            number = len(self.comments) + 1
            url = f"https://github.test/{self.slug}/issues/{match[1]}#comment-{number}"
            self.comments.append({"issue": int(match[1]), "body": body["body"]})
            return 201, {"id": number, "html_url": url}
        if method == "GET" and rest == "/pulls":
            head = query.get("head", "")
            found = [p for p in self.pulls if f"{self.slug.split('/')[0]}:{p['head']}" == head]
            return 200, [p for p in found if p["state"] == query.get("state", "open")]
        if method == "POST" and rest == "/pulls":
            if any(p["head"] == body["head"] and p["state"] == "open" for p in self.pulls):
                owner = self.slug.split("/")[0]
                message = f"A pull request already exists for {owner}:{body['head']}."
                return 422, {"message": "Validation Failed", "errors": [{"message": message}]}
            number = 100 + len(self.pulls)
            pull = {
                **body,
                "number": number,
                "state": "open",
                "html_url": f"https://github.test/{self.slug}/pull/{number}",
            }
            self.pulls.append(pull)
            return 201, pull
        if method == "PATCH" and (match := re.fullmatch(r"/pulls/(\d+)", rest)):
            pull = next(p for p in self.pulls if p["number"] == int(match[1]))
            pull.update(body)
            return 200, pull
        return 404, {"message": "Not Found"}


def _query(query: dict[str, str]) -> str:
    return ("?" + "&".join(f"{k}={v}" for k, v in sorted(query.items()))) if query else ""


@contextmanager
def serve(api: FakeGitHub) -> Iterator[FakeGitHub]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            query = dict(parse_qsl(parts.query))
            auth = self.headers.get("Authorization")
            api.requests.append(Recorded(self.command, parts.path, query, body, auth))
            call = f"{self.command} {parts.path}"
            failure = next((f for f in api.failures if f.on in ("", call)), None)
            if failure is not None:
                api.failures.remove(failure)
            headers: dict[str, str] = {}
            if auth != f"Bearer {api.token}":
                status, answer = 401, {"message": "Bad credentials"}
            elif failure is None or failure.acted:
                status, answer = api.handle(self.command, parts.path, query, body)
            if failure is not None:
                time.sleep(failure.delay_s)
                status, answer, headers = failure.status, {"message": "failed"}, failure.headers
            data = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
