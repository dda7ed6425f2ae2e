"""Every setting of the operator, in one place, read from ``QSCALE_*`` environment variables.

The chart sets these; ``qscale operator --help`` lists them. Nothing else in the operator reads
the environment (kopf's own settings are derived from these in :mod:`qscale.operator.handlers`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["Settings", "SettingsError"]

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class SettingsError(ValueError):
    """A setting that does not parse; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Operator settings; each field is fed by ``QSCALE_<FIELD NAME IN CAPITALS>``."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (comma-separated); empty: the whole cluster (needs a
    ClusterRoleBinding). Namespaced mode needs one RoleBinding per namespace."""
    prometheus_url: str = "http://prometheus-server.monitoring.svc:80"
    """Prometheus base URL for policies that do not name one (``spec.metrics.prometheus``)."""
    prometheus_allowed_urls: tuple[str, ...] = ()
    """Other Prometheus base URLs a policy may name (comma-separated); ``prometheus_url`` is
    always allowed. Any other address a policy names is refused, never connected to."""
    default_model: str = ""
    """Directory of the model used for ``model: {}``; empty: the model shipped in the package."""
    torch_threads: int = 1
    """Threads torch may use for inference (the forward pass of 1,000 rows needs one)."""
    tick_s: float = 1.0
    """How often the loop looks for policies that are due (their ``interval`` is rounded up to
    whole ticks; policies with the same interval are decided together)."""
    stale_after_s: float = 120.0
    """Metrics older than this hold the count (``METRICS_STALE``)."""
    query_timeout_s: float = 5.0
    """Timeout of one Prometheus query."""
    api_timeout_s: float = 10.0
    """Timeout of one Kubernetes API request."""
    scale_concurrency: int = 32
    """Concurrent scale writes: a tick writes every scale it owes first, this many at a time,
    before any status patch or Event."""
    write_concurrency: int = 16
    """Concurrent status patches, written behind the scale writes (never two for one policy)."""
    model_refresh_s: float = 30.0
    """How often a ConfigMap model is re-read (a changed ConfigMap is verified again)."""
    policy_resync_s: float = 60.0
    """How often the policies kopf has indexed are checked against a listing: one deleted while
    kopf's watch was broken (kopf relists, but reports no deletion it missed) is dropped."""
    metrics_address: str = "0.0.0.0"
    """Address of the /metrics and /readyz endpoint."""
    metrics_port: int = 8080
    """Port of /metrics and /readyz (0: do not serve)."""
    health_address: str = "0.0.0.0"
    """Address of kopf's liveness endpoint (/healthz), which runs the probes."""
    health_port: int = 8081
    """Port of /healthz (0: do not serve)."""
    lease_name: str = "qscale-operator"
    """The Lease that elects the one replica that acts."""
    lease_namespace: str = ""
    """Namespace of the Lease; empty: the ServiceAccount's namespace, else ``default``."""
    lease_duration_s: float = 15.0
    """A leader that has not renewed for this long is replaced."""
    identity: str = ""
    """This replica's name in the Lease; empty: ``$POD_NAME`` or the host name plus the pid."""
    kopf_worker_limit: int = 64
    """kopf's ``settings.queueing.worker_limit``: per-object workers alive at once (0: no
    limit, kopf's default)."""
    kopf_idle_timeout_s: float = 0.1
    """kopf's ``settings.queueing.idle_timeout``: how long an idle per-object worker lingers."""
    kill_switch: str = ""
    """``HPA`` or ``Off``: every policy to the HPA rule, or to reporting only (empty: none).
    The ConfigMap below does the same without a restart (:mod:`qscale.operator.killswitch`)."""
    kill_switch_configmap: str = "qscale-kill-switch"
    """Name of the kill switch ConfigMap (``data.mode``: ``HPA`` or ``Off``), read every tick
    in the operator's namespace (operator-wide) and in each policy's namespace."""
    decision_log: str = ""
    """A file (on a volume) to append every decision to as JSON lines; empty: no log
    (:mod:`qscale.operator.decisionlog`)."""
    decision_log_max_mb: float = 64.0
    """Size at which the decision log is rotated."""
    decision_log_files: int = 5
    """Rotated decision log files kept besides the current one."""
    log_level: str = "INFO"
    """Log level of the operator (kopf's own logs are one level quieter)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            key = f"QSCALE_{f.name.upper()}"
            raw = env.get(key)
            if raw is None or raw == "":
                continue
            default = getattr(cls, f.name)
            try:
                if isinstance(default, tuple):
                    values[f.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
                elif isinstance(default, bool):
                    values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw.strip()
            except ValueError:
                raise SettingsError(
                    f"{key}={raw!r} is not a valid {type(default).__name__}"
                ) from None
        s = cls(**values)  # type: ignore[arg-type]
        s.check()
        return s

    def check(self) -> None:
        positive = (
            "tick_s",
            "stale_after_s",
            "query_timeout_s",
            "api_timeout_s",
            "lease_duration_s",
            "policy_resync_s",
            "decision_log_max_mb",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise SettingsError(f"QSCALE_{name.upper()} must be > 0, got {getattr(self, name)}")
        if self.kopf_worker_limit < 0:
            raise SettingsError(
                f"QSCALE_KOPF_WORKER_LIMIT must be >= 0, got {self.kopf_worker_limit}"
            )
        for name in (
            "torch_threads",
            "scale_concurrency",
            "write_concurrency",
            "decision_log_files",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(
                    f"QSCALE_{name.upper()} must be >= 1, got {getattr(self, name)}"
                )
        if not self.prometheus_url.startswith(("http://", "https://")):
            raise SettingsError(
                f"QSCALE_PROMETHEUS_URL must be an http(s) URL, got {self.prometheus_url!r}"
            )
        for url in self.prometheus_allowed_urls:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(
                    f"QSCALE_PROMETHEUS_ALLOWED_URLS: {url!r} is not an http(s) URL"
                )

    def prometheus_address(self, requested: str) -> str | None:
        """The Prometheus a policy's ``spec.metrics.prometheus.address`` resolves to: the
        default for an empty one, the address itself when it is allowed, else ``None``."""
        default = self.prometheus_url.rstrip("/")
        want = requested.rstrip("/")
        if not want or want == default:
            return default
        allowed = {u.rstrip("/") for u in self.prometheus_allowed_urls}
        return want if want in allowed else None

    def lease_ns(self) -> str:
        if self.lease_namespace:
            return self.lease_namespace
        if _SA_NAMESPACE.is_file():
            return _SA_NAMESPACE.read_text().strip()
        return "default"

    def me(self) -> str:
        return (
            self.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        )

    @classmethod
    def describe(cls) -> str:
        """The variables and their defaults, for ``qscale operator --help``."""
        lines = []
        for f in fields(cls):
            default = getattr(cls, f.name)
            shown = ",".join(default) if isinstance(default, tuple) else default
            lines.append(f"  QSCALE_{f.name.upper():<22} (default: {shown!s})")
        return "\n".join(lines)
