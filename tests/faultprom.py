"""A Prometheus that misbehaves on demand, for the fault-matrix tests (docs/faults.md).

:class:`FaultProm` is a small HTTP server on 127.0.0.1 that answers Prometheus' query API by
asking an upstream -- a real Prometheus (the cluster tests put it in front of the stack's) or
:func:`synthetic` (the unit tests) -- and then breaks the answer the way its current ``mode``
says; the test switches the mode while the operator runs. Real Prometheus produces none of
these on demand:

``pass``         the upstream's answer, untouched
``delay``        headers only after ``delay_s`` (past the operator's query timeout)
``trickle``      headers at once, then the body a byte at a time over ``delay_s``
``malformed``    HTTP 200 with half of the JSON body (it does not parse)
``unavailable``  HTTP 503 with an HTML page
``nan``/``inf``  every sample value replaced by ``NaN`` / ``+Inf``
``empty``        a successful query with an empty result vector
``drop``         the series of the Deployments named in ``drop`` removed (a partial result)
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

MODES = ("pass", "delay", "trickle", "malformed", "unavailable", "nan", "inf", "empty", "drop")

Upstream = str | Callable[[str, Mapping[str, str]], dict[str, Any]]
"""A Prometheus base URL, or ``f(path, form) -> payload``."""


def synthetic(
    series: Mapping[tuple[str, str], tuple[float, float, float]],
) -> Callable[[str, Mapping[str, str]], dict[str, Any]]:
    """A Prometheus that knows ``(namespace, deployment) -> (rate, p95_s, cpu)``, flat over the
    last 30 minutes and sampled just now, for any query (the operator keeps only the series of
    the targets it asked about). The template is told by its text (the default queries'); the
    30-minute CPU peak reads 0 cores (never above the CPU now)."""

    def answer(path: str, form: Mapping[str, str]) -> dict[str, Any]:
        q = form.get("query", "")
        out = []
        for (ns, name), (rate, p95, cpu) in series.items():
            metric = {"namespace": ns, "deployment": name}
            if path.endswith("query_range"):
                end, step = float(form["end"]), float(form["step"])
                values = [[end - step * k, str(rate)] for k in range(30, -1, -1)]
                out.append({"metric": metric, "values": values})
                continue
            if q.startswith("timestamp("):
                v = float(form["time"])
            elif "http_request_duration" in q:
                v = p95
            elif q.startswith("max_over_time("):
                v = 0.0
            else:
                v = cpu
            out.append({"metric": metric, "value": [float(form["time"]), str(v)]})
        return {"status": "success", "data": {"resultType": "matrix", "result": out}}

    return answer


def _rewrite(payload: Any, mode: str, drop: frozenset[str]) -> Any:
    """The payload with its samples broken as ``mode`` says."""
    result = (payload.get("data") or {}).get("result") if isinstance(payload, dict) else None
    if not isinstance(result, list):
        return payload
    if mode == "empty":
        result = []
    elif mode == "drop":
        result = [s for s in result if (s.get("metric") or {}).get("deployment") not in drop]
    elif mode in ("nan", "inf"):
        bad = "NaN" if mode == "nan" else "+Inf"
        for s in result:
            if "value" in s:
                s["value"] = [s["value"][0], bad]
            if "values" in s:
                s["values"] = [[t, bad] for t, _ in s["values"]]
    return {**payload, "data": {**payload["data"], "result": result}}


class FaultProm:
    """The server; ``url`` is its base URL. Use as a context manager, or start()/close()."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.delay_s = 5.0
        self.drop: frozenset[str] = frozenset()
        self.served: dict[str, int] = {}
        """Queries answered, by the mode they were answered in."""
        self._stop = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set(self, mode: str, *, delay_s: float | None = None, drop: Iterable[str] = ()) -> None:
        assert mode in MODES, mode
        if delay_s is not None:
            self.delay_s = delay_s
        self.drop = frozenset(drop)
        self.mode = mode

    def start(self) -> FaultProm:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, path: str, form: dict[str, str]) -> tuple[int, bytes]:
        if callable(self.upstream):
            return 200, json.dumps(self.upstream(path, form)).encode()
        try:
            r = httpx.post(f"{self.upstream}{path}", data=form, timeout=30.0, trust_env=False)
        except httpx.HTTPError:
            return 502, b"<html>Bad Gateway</html>"
        return r.status_code, r.content

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, bytes, float]:
        """Status, body and how long to wait before the headers (delay) or over the body
        (trickle)."""
        mode = self.mode
        self.served[mode] = self.served.get(mode, 0) + 1
        if mode == "unavailable":
            return 503, b"<html>Service Unavailable</html>", 0.0
        status, body = self._ask(path, form)
        if mode in ("nan", "inf", "empty", "drop") and status == 200:
            body = json.dumps(_rewrite(json.loads(body), mode, self.drop)).encode()
        elif mode == "malformed":
            body = body[: len(body) // 2]
        return status, body, self.delay_s if mode in ("delay", "trickle") else 0.0

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = {k: v[0] for k, v in parse_qs(raw).items()}
                self._reply(form)

            def do_GET(self) -> None:
                form = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                self._reply(form)

            def _reply(self, form: dict[str, str]) -> None:
                path = urlsplit(self.path).path
                mode = proxy.mode
                status, body, wait = proxy._answer(path, form)
                with contextlib.suppress(OSError):
                    if mode == "delay" and proxy._stop.wait(wait):
                        return
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if mode != "trickle":
                        self.wfile.write(body)
                        return
                    per_byte = wait / max(1, len(body))
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        if proxy._stop.wait(max(per_byte, 0.05)):
                            return

            def log_message(self, *_: object) -> None:
                pass

        return Handler


def wait_until(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``pred`` until it returns something truthy (then that), or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.2)
