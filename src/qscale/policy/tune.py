"""A model for one service: fine-tune a model on that service's own load, and keep it only if it
beats the model it started from on days it never saw (``qscale tune``, ``qscale train
--from-log``).

1. **The service's load.** A request-rate series from a CSV, from the operator's decision log
   (one policy's ``obs.rate_rps`` per tick) or from Prometheus (the policy's request-rate query
   over the last days, a range query at 60 s). The log also gives the service's per-pod
   capacity, service time and start-up delay, estimated as the shadow score estimates them
   (:func:`qscale.counterfactual.score`); flags give them otherwise.
2. **History and held-back days.** The last ``holdout`` share of the series is held back; the
   model is tuned on the rest only (nothing of the held-back days reaches training, its
   scaling included: the traffic is sized by the history's reference rate).
3. **Fine-tuning.** DQN (:mod:`qscale.policy.train`) starting from the base model's weights,
   with little exploration, on simulated clusters of this service (its capacity and start-up
   delay when known, the training ranges otherwise), with the history as the trace.
4. **The verdict.** The tuned model, the base model and the default HPA rule play the held-back
   days on the same simulated clusters (several seeds); the tuned model *beats* the base when
   the 95 % bootstrap interval (over day-long windows) of its gain in the training reward is
   above 0. Otherwise the tool says so and nothing is published.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from qscale import actions, features
from qscale.counterfactual import Sample, score
from qscale.policy import artifact, train
from qscale.policy.controller import DQNController
from qscale.simulator import evaluate as ev
from qscale.simulator import frontier as fr
from qscale.simulator.tracebank import TraceBank, reference_rate
from qscale.simulator.traces import load_rates

__all__ = [
    "Service",
    "TuneError",
    "TuneReport",
    "from_log",
    "from_prometheus",
    "tune",
]

DAY_STEPS = 5760
"""A day at the 15 s decision interval: the length of a held-back window."""
MIN_HISTORY_STEPS = 960
MIN_HOLDOUT_STEPS = 480


class TuneError(ValueError):
    """The inputs cannot make a tuned model (one line saying why)."""


@dataclass(frozen=True)
class Service:
    """What is known of the service (``None``: not known; the training ranges are used)."""

    capacity_rps: float | None = None
    startup_s: float | None = None
    service_time_s: float | None = None
    source: str = ""


# --- the service's load ---------------------------------------------------------------------


def _points_csv(path: Path, points: Sequence[tuple[float, float]]) -> Path:
    with path.open("w") as f:
        f.write("t,value\n")
        for t, v in points:
            f.write(f"{t:.3f},{v:.6g}\n")
    return path


def from_log(
    records: Sequence[dict[str, Any]], policy: str
) -> tuple[list[tuple[float, float]], Service]:
    """One policy's request rate per tick and its service, estimated from the log."""
    ns, _, name = policy.partition("/")
    recs = [r for r in records if r.get("namespace") == ns and r.get("policy") == name]
    if not recs:
        raise TuneError(f"no records of policy {policy} in the log")
    points, samples = [], []
    for r in recs:
        o = r.get("obs") or {}
        rate = o.get("rate_rps")
        if not isinstance(rate, int | float) or not math.isfinite(rate) or rate < 0:
            continue
        t = float(r["ts"])
        points.append((t, float(rate)))
        feats = r.get("features")
        replicas = float(r.get("replicas") or 0)
        busy = feats[0] * replicas if feats else math.nan
        ready = o.get("ready")
        p95 = o.get("p95_s")
        samples.append(
            Sample(
                t,
                float(rate),
                replicas,
                float(ready) if isinstance(ready, int | float) else math.nan,
                busy,
                float(p95) if isinstance(p95, int | float) else math.nan,
                float(r.get("desired") or replicas),
            )
        )
    if len(points) < 2:
        raise TuneError(f"policy {policy}: fewer than 2 ticks with a request rate in the log")
    last = recs[-1]
    interval = float(last.get("interval_s") or actions.DECISION_INTERVAL_S)
    span = points[-1][0] - points[0][0] + interval
    slo = last.get("slo_s")
    s = score(
        samples,
        now=points[-1][0],
        window_s=span,
        slo_s=float(slo) if isinstance(slo, int | float) else math.inf,
        interval_s=interval,
    )

    def known(x: float) -> float | None:
        return x if math.isfinite(x) and x > 0 else None

    service = Service(
        capacity_rps=known(s.capacity_rps),
        startup_s=known(s.startup_s) if s.startup_observed else None,
        service_time_s=known(s.service_time_s),
        source=f"decision log of {policy} ({len(points)} ticks)",
    )
    return points, service


def from_prometheus(
    url: str,
    target: str,
    days: float,
    *,
    query: str = features.PROMQL["request_rate"],
    step_s: float = 60.0,
    now: float | None = None,
    client: httpx.Client | None = None,
) -> list[tuple[float, float]]:
    """The request rate of Deployment ``target`` (``namespace/name``) over the last ``days``,
    from Prometheus at ``url`` (a range query per chunk of at most 10,000 points)."""
    ns, _, name = target.partition("/")
    if not ns or not name:
        raise TuneError(f"--target must be NAMESPACE/DEPLOYMENT, got {target!r}")
    if not days > 0:
        raise TuneError(f"--days must be > 0, got {days}")
    q = features.fill_template(query, [ns], [name])
    end = time.time() if now is None else now
    start = end - days * 86400.0
    own = client is None
    c = client or httpx.Client(timeout=30.0)
    points: dict[float, float] = {}
    try:
        t0 = start
        while t0 < end:
            t1 = min(end, t0 + 9_999 * step_s)
            try:
                resp = c.get(
                    f"{url.rstrip('/')}/api/v1/query_range",
                    params={"query": q, "start": t0, "end": t1, "step": step_s},
                )
            except httpx.HTTPError as e:
                raise TuneError(f"Prometheus at {url}: {type(e).__name__}: {e}") from None
            if resp.status_code != 200:
                raise TuneError(f"Prometheus at {url}: HTTP {resp.status_code} on the range query")
            try:
                result = resp.json()["data"]["result"]
            except (ValueError, KeyError, TypeError):
                raise TuneError(f"Prometheus at {url}: not a query_range answer") from None
            for series in result:
                for t, v in series.get("values") or []:
                    x = float(v)
                    if math.isfinite(x):
                        points[float(t)] = points.get(float(t), 0.0) + x
            t0 = t1 + step_s
    finally:
        if own:
            c.close()
    if len(points) < 2:
        raise TuneError(
            f"Prometheus at {url} has no request rate of {target} in the last {days:g} days"
        )
    return sorted(points.items())


# --- tuning and the verdict ----------------------------------------------------------------------


@dataclass
class TuneReport:
    better: bool
    message: str
    model: Path
    service: dict[str, Any]
    history_steps: int
    holdout_steps: int
    windows: int
    seeds: list[int]
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per controller (tuned, base, hpa): means per held-back window."""
    gain: dict[str, list[float]] = field(default_factory=dict)
    """Tuned minus base, 95 % intervals: ``return``, ``cost_replica_hours``,
    ``slo_violation_minutes``."""

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = str(self.model)
        return d


def _interval(x: np.ndarray, rng: np.random.Generator, n: int = 2000) -> list[float]:
    idx = rng.integers(0, len(x), size=(n, len(x)))
    means = x[idx].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _profile(service: Service, peak: float) -> ev.EvalProfile:
    base = ev.EvalProfile()
    kw: dict[str, Any] = {"peak_replicas": peak}
    if service.capacity_rps:
        kw["capacity_rps"] = service.capacity_rps
    if service.startup_s:
        kw["startup_delay_s"] = (0.75 * service.startup_s, 1.25 * service.startup_s)
    if service.service_time_s:
        kw["service_time_s"] = service.service_time_s
    return dataclasses.replace(base, **kw)


def tune(
    rates: np.ndarray,
    service: Service,
    out: Path,
    *,
    base_model: Path,
    steps: int = 1_000_000,
    holdout: float = 0.25,
    seeds: Sequence[int] = (0, 1, 2),
    threads: int = 1,
    dt: float = actions.DECISION_INTERVAL_S,
    n_envs: int = 64,
) -> TuneReport:
    """Fine-tune ``base_model`` on the history of ``rates`` (at ``dt``) and judge it on the
    held-back last ``holdout`` share; the tuned artifact is ``out/model``."""
    n = len(rates)
    if not 0.05 <= holdout <= 0.5:
        raise TuneError(f"--holdout must be between 0.05 and 0.5, got {holdout}")
    cut = n - max(round(holdout * n), 1)
    hist, held = rates[:cut], rates[cut:]
    if len(hist) < MIN_HISTORY_STEPS or len(held) < MIN_HOLDOUT_STEPS:
        raise TuneError(
            f"the series covers {n * dt / 3600:.1f} h: tuning needs at least "
            f"{MIN_HISTORY_STEPS * dt / 3600:g} h of history and "
            f"{MIN_HOLDOUT_STEPS * dt / 3600:g} h held back"
        )
    out.mkdir(parents=True, exist_ok=True)
    history = _points_csv(out / "history.csv", [(i * dt, float(v)) for i, v in enumerate(hist)])
    ref = reference_rate(hist)
    base = artifact.load_policy(base_model)
    cap = service.capacity_rps
    peak = max(ref / cap, 1.0) if cap else ev.EvalProfile().peak_replicas
    cfg = train.TrainConfig(
        traces=[str(history)],
        train_split="all",
        val_split="all",
        output_dir=str(out / "run"),
        init_model=str(base_model),
        hidden_sizes=tuple(base.manifest.get("network", {}).get("hidden_sizes", (128, 128))),
        total_env_steps=steps,
        n_envs=n_envs,
        buffer_size=max(n_envs, min(500_000, steps)),
        learning_starts=min(50_000, steps // 5),
        eps_start=0.1,
        eps_end=0.02,
        eps_fraction=0.5,
        lr=5e-5,
        demo_action="none",  # the base model already starts from the rules; fine-tune by TD
        eval_every=0,
        eval_envs=32,
        eval_steps=min(480, len(hist)),
        checkpoint_every=0,
        baseline="none",
        num_threads=threads,
        capacity_rps=cap,
        startup_delay_s=service.startup_s,
        peak_replicas=peak if cap else None,
    )
    result = train.train(cfg)
    model = out / "model"
    if model.exists():
        shutil.rmtree(model)
    Path(result.final_model).rename(model)
    tuned = artifact.load_policy(model)

    # The held-back days, sized by the history (no look-ahead), on the same clusters for all.
    bank = TraceBank.from_arrays(["holdout"], [held], dt=dt, ref_rates=[ref])
    profile = _profile(service, peak)
    params, win = ev.build(bank, profile, list(seeds), min(DAY_STEPS, len(held)))
    controllers = {
        "tuned": DQNController(tuned.module, name="tuned"),
        "base": DQNController(base.module, name="base"),
        "hpa": ev._rule_controller(fr.DEFAULT_HPA, "hpa"),
    }
    metrics = {k: ev.run(c, params, win) for k, c in controllers.items()}

    def per_env(name: str, key: str) -> np.ndarray:
        m = metrics[name]
        x = {"return": m.episode_return}.get(key, getattr(m, key, None))
        return x.double().cpu().numpy()

    keys = ("return", "cost_replica_hours", "slo_violation_minutes")
    results = {
        name: {k: round(float(per_env(name, k).mean()), 4) for k in keys} for name in metrics
    }
    rng = np.random.default_rng(0)
    gain = {k: _interval(per_env("tuned", k) - per_env("base", k), rng) for k in keys}
    better = gain["return"][0] > 0
    t, b = results["tuned"], results["base"]
    what = (
        f"tuned {t['cost_replica_hours']:.2f} replica-h, {t['slo_violation_minutes']:.1f} SLO min, "
        f"return {t['return']:.1f}; base {b['cost_replica_hours']:.2f} replica-h, "
        f"{b['slo_violation_minutes']:.1f} SLO min, return {b['return']:.1f} per held-back window"
    )
    lo, hi = gain["return"]
    message = (
        f"the tuned model beats the base model on the held-back days (return gain {lo:.1f} to "
        f"{hi:.1f}, 95 %): {what}"
        if better
        else f"the tuned model does not beat the base model on the held-back days (return gain "
        f"{lo:.1f} to {hi:.1f}, 95 %): {what}"
    )
    report = TuneReport(
        better=better,
        message=message,
        model=model,
        service={**dataclasses.asdict(service), "peak_replicas": round(peak, 2)},
        history_steps=len(hist),
        holdout_steps=len(held),
        windows=int(win.n_units),
        seeds=list(seeds),
        results=results,
        gain={k: [round(x, 4) for x in v] for k, v in gain.items()},
    )
    artifact.update_manifest(model, {"tuning": report.as_json()})
    (out / "report.json").write_text(json.dumps(report.as_json(), indent=2) + "\n")
    return report


def rates_from_points(points: Sequence[tuple[float, float]], out: Path, dt: float) -> np.ndarray:
    """A (time, rate) series resampled to the decision interval (gaps dropped, as for traces)."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = points[0][0]
    path = _points_csv(out / "series.csv", [(t - t0, v) for t, v in points])
    return load_rates(path, dt)
