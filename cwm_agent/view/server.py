"""`cwm-agent view --serve`: a run folder on localhost, each page rendered when asked for.

Made for large batches: the index reads only the small per-instance results, and
an instance's trajectory is read when its page is opened, never before.
"""

from __future__ import annotations

from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from cwm_agent.view.render import batch_page, instance_page, rollout_page, tts_page
from cwm_agent.view.runs import BatchRun, ViewError, kind_of, load_rollout, load_tts

HOST = "127.0.0.1"  # never another interface: the folder may hold private code
HOST_NAMES = {HOST, "localhost", "[::1]"}  # what a browser on this machine may call it
INSTANCE = "/instance/"


def instance_link(instance_id: str) -> str:
    return INSTANCE + quote(instance_id)


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.kind = kind_of(folder)
        self.batch = BatchRun(folder) if self.kind == "batch" else None
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def serves(self, host: str | None) -> bool:
        """Whether a request's Host header names this server. A page elsewhere can make
        its own name resolve to 127.0.0.1 (DNS rebinding); its requests still carry
        that name, and are refused."""
        port = f":{self.server_address[1]}"
        return (host or "").lower().removesuffix(port) in HOST_NAMES

    def page(self, path: str) -> str | None:
        """The HTML for a path, or None when there is no such page."""
        if path == "/":
            if self.batch is not None:
                self.batch = BatchRun(self.folder)  # read again: a run may still be going
                return batch_page(self.batch, instance_link)
            if self.kind == "tts":
                return tts_page(load_tts(self.folder))
            return rollout_page(load_rollout(self.folder))
        if self.batch is not None and path.startswith(INSTANCE):
            return instance_page(self.batch, unquote(path[len(INSTANCE) :]))
        return None


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer

    def do_GET(self) -> None:
        if not self.server.serves(self.headers["Host"]):
            why = f"Host {self.headers['Host']!r} is not this server: open {self.server.url}"
            self._send(HTTPStatus.MISDIRECTED_REQUEST, why)
            return
        try:
            html = self.server.page(urlsplit(self.path).path)
        except ViewError as exc:
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
            return
        if html is None:
            self._send(HTTPStatus.NOT_FOUND, f"no page at {self.path}")
            return
        self._send(HTTPStatus.OK, html, "text/html")

    def _send(self, status: HTTPStatus, body: str, kind: str = "text/plain") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet: one line per page
        return
