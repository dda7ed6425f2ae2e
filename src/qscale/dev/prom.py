"""A real Prometheus on loopback for tests, benchmarks and ``make demo``.

Starts the ``prometheus`` binary (``$QSCALE_PROMETHEUS_BIN``, else ``PATH``, where the Debian
package ``prometheus`` installs one, else the pinned upstream release in the cache, downloaded
when asked: ``fetch=True``, :mod:`qscale.dev.fetch`) on 127.0.0.1 with a generated config and
its own temporary data directory, scraping the given loopback targets at a short interval. It
can be stopped and started again on the same port and data (to play a Prometheus outage).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qscale.dev import fetch as _fetch

__all__ = [
    "PROMETHEUS_ENV",
    "LocalPrometheus",
    "PrometheusUnavailable",
    "find_prometheus",
    "free_port",
]

PROMETHEUS_ENV = "QSCALE_PROMETHEUS_BIN"


class PrometheusUnavailable(RuntimeError):
    """No Prometheus binary here, or it did not start; the message says what to do."""


def find_prometheus(
    environ: Mapping[str, str] | None = None,
    *,
    fetch: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The prometheus binary (see the module docstring for the order). With ``fetch``, a
    download that cannot be had is :class:`PrometheusUnavailable`, but one that fails its check
    raises :class:`qscale.dev.fetch.FetchError`: that must stop the caller."""
    env = os.environ if environ is None else environ
    explicit = env.get(PROMETHEUS_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise PrometheusUnavailable(f"{PROMETHEUS_ENV}={p} is not an executable")
        return p
    found = shutil.which("prometheus", path=env.get("PATH"))
    if found:
        return Path(found)
    cached = _fetch.cached_prometheus(env)
    if cached is not None:
        return cached
    if fetch:
        try:
            return _fetch.fetch_prometheus(env, say=say)
        except _fetch.FetchUnavailable as e:
            raise PrometheusUnavailable(f"could not download the pinned Prometheus: {e}") from None
    raise PrometheusUnavailable(
        "no prometheus binary: install it (Debian: apt-get install -y --no-install-recommends "
        f"prometheus), set {PROMETHEUS_ENV}, or let `qscale demo` download it (online)"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _duration(seconds: float) -> str:
    """A Prometheus duration (whole milliseconds: it refuses ``0.8s``)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _config(jobs: Mapping[str, Sequence[str]], interval_s: float, rules: bool = False) -> str:
    lines = [
        "global:",
        f"  scrape_interval: {_duration(interval_s)}",
        f"  scrape_timeout: {_duration(max(0.5, interval_s * 0.8))}",
        f"  evaluation_interval: {_duration(interval_s)}",
        *(["rule_files: [rules.yml]"] if rules else []),
        "scrape_configs:",
    ]
    for job, targets in jobs.items():
        for t in targets:
            if not t.startswith(("127.0.0.1:", "localhost:")):
                raise ValueError(f"scrape target {t!r} is not on loopback")
        listed = ", ".join(f'"{t}"' for t in targets)
        lines += [
            f"- job_name: {job}",
            "  honor_labels: true",
            f"  static_configs: [{{targets: [{listed}]}}]",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class LocalPrometheus:
    """A Prometheus process; ``url`` is ``http://127.0.0.1:<port>``."""

    jobs: Mapping[str, Sequence[str]]
    scrape_interval_s: float = 1.0
    rules: str = ""
    """Recording/alerting rule groups (a rules file's YAML text); empty: none."""
    retention: str = "1d"
    """``--storage.tsdb.retention.time`` (longer for a data directory filled by backfilling)."""
    port: int = field(default_factory=free_port)
    binary: Path | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qscale-prom-")))
    _proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait_s: float = 30.0) -> LocalPrometheus:
        binary = self.binary or find_prometheus()
        cfg = self.workdir / "prometheus.yml"
        if self.rules:
            (self.workdir / "rules.yml").write_text(self.rules)
        cfg.write_text(_config(self.jobs, self.scrape_interval_s, bool(self.rules)))
        log = (self.workdir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.retention.time={self.retention}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait_s
        while True:
            if self._proc.poll() is not None:
                tail = (self.workdir / "prometheus.log").read_text(errors="replace")[-400:]
                raise PrometheusUnavailable(f"prometheus exited: {tail.strip()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise PrometheusUnavailable(
                    f"prometheus not ready on {self.url} after {wait_s:g} s"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def query(self, promql: str) -> list[dict]:
        """An instant query's result vector (for tests and the demo's summary)."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10.0)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def wait_for_series(self, promql: str, wait_s: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + wait_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                res = self.query(promql)
                if res:
                    return res
            if time.monotonic() > deadline:
                raise TimeoutError(f"no series for {promql!r} after {wait_s:g} s")
            time.sleep(0.5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalPrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
