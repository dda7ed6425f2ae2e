"""A file server on 127.0.0.1 for the fetch tests: serves a directory, and answers chosen paths
with a redirect instead; ``url`` is its base URL. Nothing here leaves the machine."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    redirects: Mapping[str, str] = {}

    def do_GET(self) -> None:
        to = self.redirects.get(self.path)
        if to is not None:
            self.send_response(302)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


class Server:
    """A running server; :meth:`stop` it to play "the network is gone"."""

    def __init__(self, directory: Path, redirects: Mapping[str, str] | None = None) -> None:
        handler = type("Handler", (_Handler,), {"redirects": dict(redirects or {})})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=directory))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


@contextlib.contextmanager
def serve(directory: Path, redirects: Mapping[str, str] | None = None) -> Iterator[Server]:
    s = Server(directory, redirects)
    try:
        yield s
    finally:
        s.stop()


def dead_url() -> str:
    """A loopback base URL nothing listens on (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
