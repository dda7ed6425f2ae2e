"""The demo's stretch in the simulator: what training's world says the live run should do.

The live demo and its twin meet the same traffic with the same service: the emulator steps the
simulator's own service model (:mod:`qscale.emulator.workload`) every second with the stretch's
load and no arrival noise, so the twin plays the stretch at the *demo's* pace (real seconds, not
trace seconds) in 15-s bins of what the emulator serves, with the demo's pods, per-pod capacity,
service time, SLO, bounds, start-up delay, and the metric pipeline the operator reads there
(the app's served-request counter, 1 m windows, 1 s scrapes, no CPU lag or noise, CPU limit =
request). It starts where the live run starts: a service that has run at the stretch's first
load with the demo's initial pods.

:func:`compare` then puts the live operator's decision log (its network inputs, the count it
had and the count it wanted) next to the twin's decisions at the same play time: the share of
decisions within one pod, the SLO minutes of both, and per feature the largest difference, so
that a disagreement says which side sees another world.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qscale import features
from qscale.actions import ACTION_NAMES, DECISION_INTERVAL_S
from qscale.demo.stretch import Stretch

__all__ = ["TWIN_DOC", "Twin", "compare", "live_counts", "read_decision_log", "simulate"]

TWIN_DOC = (
    "the simulator on the demo's stretch at the demo's pace (15-s bins of what the emulator "
    "serves), with its pods, capacity, service time, SLO, bounds, start-up delay and metric "
    "pipeline (served-request counter, 1 m windows, no lag or noise), the same model and shield"
)


@dataclass
class Twin:
    """The simulator's run of the demo: one row per decision (every 15 s of play)."""

    t: np.ndarray
    """Play seconds of each decision."""
    rate: np.ndarray
    """Requests/s offered over the 15 s that follow the decision."""
    replicas_before: np.ndarray
    desired: np.ndarray
    """Replicas after the decision (the shield's answer)."""
    ready: np.ndarray
    p95_s: np.ndarray
    """True p95 latency over the 15 s that follow the decision."""
    features: np.ndarray
    """``[T, F]`` the network's input at each decision."""
    action: list[str]
    slo_violation_minutes: float
    pod_minutes: float


def _bins(stretch: Stretch, dt: float) -> np.ndarray:
    """Requests/s of each ``dt`` of play as the emulator serves it (1-s steps, each at the load
    of its end)."""
    n = max(1, math.ceil(stretch.play_s / dt - 1e-9))
    per = max(1, round(dt))
    out = np.empty(n)
    for k in range(n):
        out[k] = np.mean([stretch.rps(k * dt + j + 1.0) for j in range(per)])
    return out


def simulate(
    stretch: Stretch,
    module: Any,
    *,
    capacity_rps: float,
    service_time_s: float,
    slo_s: float,
    startup_delay_s: float,
    min_replicas: int,
    max_replicas: int,
    initial_replicas: int,
    slo_priority: float = 1.0,
    shield: Any = None,
    follow: Sequence[float] | None = None,
) -> Twin:
    """Play ``stretch`` at the demo's pace through the simulator with ``module`` (obs -> Q).

    ``follow`` (one count per decision) makes the world move as the live run did instead
    (teacher forcing): at each decision the twin records what the model decides in the
    simulator's world *given the live run's past*, then scales to the live count. Closed-loop,
    one different rounding early on is carried by every later decision; followed, each decision
    is compared on its own."""
    from qscale import decision
    from qscale.guardrails import ShieldConfig
    from qscale.simulator import env as sim
    from qscale.simulator.tracebank import TraceBank

    dt = DECISION_INTERVAL_S
    rates = _bins(stretch, dt)
    # the service has run at the first bin's load (live: the warm-up holds the stretch's first
    # value) with the demo's initial pods
    bank = TraceBank.from_arrays(
        ["demo"], [rates.astype(np.float32)], dt=dt, ref_rates=[capacity_rps]
    )
    warm = float(rates[0])
    unloaded_p95 = service_time_s * math.log(20.0)
    dom = sim.DomainConfig(
        capacity_rps=(capacity_rps, capacity_rps),
        service_time_s=(service_time_s, service_time_s),
        startup_delay_s=(startup_delay_s, startup_delay_s),
        slo_factor=(slo_s / unloaded_p95, slo_s / unloaded_p95),
        peak_replicas=(1.0, 1.0),  # with ref_rate = capacity: the bank's rates are req/s as is
        amplitude_jitter=0.0,
        max_replicas_factor=(1.0, 1.0),
        min_replicas=min_replicas,
        cpu_limit_ratio=(1.0, 1.0),
        cpu_window_s=(features.RATE_WINDOW_S, features.RATE_WINDOW_S),
        cpu_lag_s=(0.0, 0.0),
        cpu_noise=(0.0, 0.0),
        scrape_lag_s=(0.0, 0.0),
        ingress_probability=0.0,
        capacity_declared_probability=1.0,  # the demo's policy declares its pods' capacity
        slo_priority=(slo_priority, slo_priority),
    )
    base = sim.SimConfig()
    init_u = warm / (capacity_rps * initial_replicas) if warm > 0 else base.init_utilization
    cfg = replace(
        base,
        dt=dt,
        noise=False,
        episode_steps=len(rates),
        init_utilization=max(init_u, 1e-6),  # above 1: the warm-up was already overloaded
        shield=shield if shield is not None else ShieldConfig(),
        domain=dom,
    )
    params = sim.make_params(bank, 1, seed=0, config=cfg)
    params = replace(params, max_replicas=torch.full((1,), float(max_replicas)))
    state, obs = sim.reset_fixed(
        params, torch.tensor([0]), torch.tensor([0]), torch.tensor([len(rates)])
    )
    rows: dict[str, list] = {k: [] for k in ("before", "desired", "ready", "p95", "obs", "act")}
    viol = cost = 0.0
    for k in range(len(rates)):
        with torch.no_grad():
            q = module(obs).float()
        rows["before"].append(float(state.replicas[0]))
        rows["obs"].append(obs[0].tolist())
        if follow is None:
            state, obs, _r, _te, _tr, info = sim.step_greedy(state, q, params)
            desired, action = info["replicas"], info["action"]
        else:  # decide (remembering the proposal, not a scale), then move as live did
            now = float(k) * dt
            d = decision.decide(
                sim.signals(state, params), state.shield, now, cfg.shield, q_values=q, commit=False
            )
            desired, action = d.replicas, d.action
            live = torch.tensor([float(follow[k])], dtype=state.replicas.dtype)
            state = replace(state, shield=d.shield_state)
            state, obs, _r, _te, _tr, info = sim.step_replicas(state, live, params)
        rows["desired"].append(float(desired[0]))
        rows["ready"].append(float(info["ready"][0]))
        rows["p95"].append(float(info["p95_s"][0]))
        rows["act"].append(ACTION_NAMES[int(action[0])])
        viol += dt / 60.0 if bool(info["violation"][0]) else 0.0
        cost += float(info["cost_pod_s"][0]) / 60.0
    return Twin(
        t=np.arange(len(rates)) * dt,
        rate=rates,
        replicas_before=np.array(rows["before"]),
        desired=np.array(rows["desired"]),
        ready=np.array(rows["ready"]),
        p95_s=np.array(rows["p95"]),
        features=np.array(rows["obs"]),
        action=rows["act"],
        slo_violation_minutes=viol,
        pod_minutes=cost,
    )


def read_decision_log(path: Path, policy: str) -> list[dict[str, Any]]:
    """The records of ``policy`` in a decision log (JSONL; unreadable lines are skipped)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("policy") == policy:
            out.append(rec)
    return out


def _pairs(
    records: Sequence[dict[str, Any]], play_t0: float, n: int
) -> list[tuple[int, float, dict[str, Any]]]:
    """``(k, play seconds, record)`` of each live decision, ``k`` the twin's decision at the
    nearest multiple of the interval (decisions before the play or after its end left out)."""
    dt = DECISION_INTERVAL_S
    out = []
    for rec in records:
        t = float(rec["ts"]) - play_t0
        k = math.floor(t / dt + 0.5)
        if 0 <= k < n and rec.get("desired") is not None:
            out.append((k, t, rec))
    return out


def live_counts(twin: Twin, records: Sequence[dict[str, Any]], play_t0: float) -> list[float]:
    """The live run's count after each of the twin's decisions (the last live decision of that
    slot; a slot without one keeps the count before it): what :func:`simulate` ``follow``s."""
    by_k = {k: float(r["desired"]) for k, _, r in _pairs(records, play_t0, len(twin.t))}
    out, cur = [], float(twin.replicas_before[0])
    for k in range(len(twin.t)):
        cur = by_k.get(k, cur)
        out.append(cur)
    return out


def compare(
    twin: Twin,
    records: Sequence[dict[str, Any]],
    play_t0: float,
    live_slo_minutes: float | None = None,
    followed: Twin | None = None,
) -> dict[str, Any]:
    """The live decisions (records of the decision log, ``ts`` on the epoch clock, the play
    starting at ``play_t0``) against the twin's decision at the same play time (the twin's
    decision ``k`` is at ``15 k`` s; a live decision is paired with the nearest). ``followed``
    (the twin run with ``follow``) adds the share within one pod decision by decision."""
    dt = DECISION_INTERVAL_S
    pairs = _pairs(records, play_t0, len(twin.t))
    if not pairs:
        return {"decisions": 0}
    live = np.array([float(r["desired"]) for _, _, r in pairs])
    simd = np.array([twin.desired[k] for k, _, _ in pairs])
    gap = live - simd
    within = float(np.mean(np.abs(gap) <= 1.0))
    feats: dict[str, dict[str, float]] = {}
    have = [(k, r) for k, _, r in pairs if r.get("features") is not None]
    if have:
        lf = np.array([[np.nan if x is None else x for x in r["features"]] for _, r in have])
        sf = np.array([twin.features[k] for k, _ in have])
        for j, name in enumerate(features.FEATURE_NAMES):
            d = lf[:, j] - sf[:, j]
            feats[name] = {
                "mean_abs_diff": round(float(np.nanmean(np.abs(d))), 4),
                "max_abs_diff": round(float(np.nanmax(np.abs(d))), 4),
                "mean_live": round(float(np.nanmean(lf[:, j])), 4),
                "mean_twin": round(float(np.nanmean(sf[:, j])), 4),
            }
    out: dict[str, Any] = {
        "decisions": len(pairs),
        "within_one_pod": round(within, 3),
        "mean_replicas_live": round(float(live.mean()), 2),
        "mean_replicas_twin": round(float(simd.mean()), 2),
        "max_replicas_live": int(live.max()),
        "max_replicas_twin": int(simd.max()),
        "interval_s": dt,
        "replicas": [int(x) for x in twin.desired],
        "slo_minutes_twin": round(twin.slo_violation_minutes, 2),
        "pod_minutes_twin": round(twin.pod_minutes, 1),
        "features": feats,
        "timeline": [
            {
                "t": round(t, 1),
                "k": k,
                "live": int(r["desired"]),
                "twin": int(twin.desired[k]),
                "live_action": r.get("action"),
                "twin_action": twin.action[k],
            }
            for k, t, r in pairs
        ],
    }
    if followed is not None:
        fd = np.array([followed.desired[k] for k, _, _ in pairs])
        out["within_one_pod_followed"] = round(float(np.mean(np.abs(live - fd) <= 1.0)), 3)
        for row, (k, _, _) in zip(out["timeline"], pairs, strict=True):
            row["followed"] = int(followed.desired[k])
            row["followed_action"] = followed.action[k]
    if live_slo_minutes is not None:
        out["slo_minutes_live"] = round(live_slo_minutes, 2)
    return out
