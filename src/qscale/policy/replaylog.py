"""``qscale replay-log``: what another model would have chosen on the states an operator logged,
and its counterfactual cost and SLO minutes by the same estimate as a Shadow policy's score.

The decision log (``QSCALE_DECISION_LOG``, one JSON line per decision) keeps the network's
input of every tick the model was asked, what the tick observed (request rate, p95, CPU, ready
pods), the count there was and what the policy asked for (SLO, interval, bounds, shield
settings). Per policy, in time order, the candidate model ``M`` is asked on each logged
feature vector; its greedy action (:func:`qscale.decision.greedy`) becomes a count the way
serving makes it (:func:`qscale.actions.apply` on the busy pods the features carry, then the
policy's own :func:`qscale.guardrails.shield`, whose memory follows M's own steps where the
log's policy was in Enforce, and records none in Shadow, as serving does); and the
window's samples go to :func:`qscale.counterfactual.score` against the counts that were there.

It is an open-loop replay: M is asked on the states the logged controller made (as in Shadow
mode), so the estimate says what M's choices would have cost on that load, not what M would
have seen had it been in charge (see ``docs/shadow.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qscale import actions, features
from qscale.counterfactual import Sample, Score, score
from qscale.decision import greedy
from qscale.guardrails import ShieldConfig, ShieldState, shield

__all__ = ["LogError", "PolicyReplay", "read_log", "replay"]

_BUSY = features.FEATURE_NAMES.index("cpu_busy")
_PEAK = features.FEATURE_NAMES.index("rate_peak_15m")
_PEAK30 = features.FEATURE_NAMES.index("rate_peak_30m")
_BUSY30 = features.FEATURE_NAMES.index("busy_peak_30m")
_FORECAST = features.FEATURE_NAMES.index("rate_forecast")


class LogError(ValueError):
    """A decision log that cannot be replayed; the message names the file and line."""


@dataclass(frozen=True)
class PolicyReplay:
    namespace: str
    policy: str
    records: int
    """Records of this policy in the log."""
    replayed: int
    """Those the logged model was asked on (the ones with features)."""
    agreement: float
    """Share of replayed ticks where M chose the count the log's decision chose."""
    score: Score

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "policy": self.policy,
            "records": self.records,
            "replayed": self.replayed,
            "agreement": round(self.agreement, 4) if math.isfinite(self.agreement) else None,
            "score": self.score.as_status(),
        }


def read_log(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every record of ``paths`` (rotated files in any order), sorted by time."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise LogError(f"{path}: no such file")
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LogError(f"{path}:{n}: not JSON ({e.msg})") from None
                if not isinstance(rec, dict) or "ts" not in rec or "uid" not in rec:
                    raise LogError(f"{path}:{n}: not a decision record (no ts/uid)")
                out.append(rec)
    out.sort(key=lambda r: r["ts"])
    return out


def _f(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else math.nan


def _replay_one(
    recs: list[dict[str, Any]], model: Any, window_s: float | None, startup_s: float
) -> PolicyReplay:
    first = recs[0]
    asked = [r for r in recs if r.get("features") and r.get("shield") and r.get("bounds")]
    samples, agree = [], 0
    state: ShieldState | None = None
    config: ShieldConfig | None = None
    for r in asked:
        cfg = ShieldConfig(**r["shield"])
        if cfg != config:  # a changed policy: its shield starts again
            config, state = cfg, ShieldState.init(1)
        assert state is not None
        obs = torch.tensor([[_f(x) if x is not None else 0.0 for x in r["features"]]])
        if obs.shape[1] != features.N_FEATURES:
            raise LogError(
                f"record at {r['ts']}: {obs.shape[1]} features, this build has "
                f"{features.N_FEATURES} (a log of another feature spec)"
            )
        with torch.no_grad():
            q = model(obs).float()
        declared = features.capacity_declared(obs)
        act = greedy(q, actions.available(declared))
        cur = torch.tensor([_f(r.get("replicas"))], dtype=torch.float64)
        busy = obs[:, _BUSY].double() * cur
        to_peak, to_peak30, busy_to_peak30, to_forecast = (
            torch.exp(obs[:, i].double()) for i in (_PEAK, _PEAK30, _BUSY30, _FORECAST)
        )
        # the pods the rate needs at the declared capacity, from load_per_pod (clipped at 4x)
        rate_pods = torch.where(declared, obs[:, features.LOAD_PER_POD].double() * cur, math.nan)
        proposal = actions.apply(
            cur,
            act,
            busy,
            busy * to_peak,
            rate_pods,
            rate_pods * to_peak,
            busy * busy_to_peak30,
            rate_pods * to_peak30,
            rate_pods * torch.maximum(to_peak30, to_forecast),
        )
        lo, hi = r["bounds"]
        commit = r.get("mode") == "Enforce"  # Shadow's shield records no step, as served
        res = shield(cur, proposal, state, float(r["ts"]), config, float(lo), float(hi), commit)
        state = res.state
        desired = float(res.replicas[0])
        agree += int(desired == _f(r.get("desired")))
        o = r.get("obs") or {}
        samples.append(
            Sample(
                float(r["ts"]),
                _f(o.get("rate_rps")),
                _f(r.get("replicas")),
                _f(o.get("ready")),
                float(busy[0]),
                _f(o.get("p95_s")),
                desired,
            )
        )
    last = asked[-1] if asked else first
    now = float(recs[-1]["ts"])
    interval = _f(last.get("interval_s"))
    interval = interval if math.isfinite(interval) and interval > 0 else actions.DECISION_INTERVAL_S
    span = now - float(recs[0]["ts"]) + interval
    s = score(
        samples,
        now=now,
        window_s=window_s or span,
        slo_s=_f(last.get("slo_s")) if math.isfinite(_f(last.get("slo_s"))) else math.inf,
        interval_s=interval,
        startup_s=startup_s,
    )
    return PolicyReplay(
        first.get("namespace", ""),
        first.get("policy", ""),
        len(recs),
        len(asked),
        agree / len(asked) if asked else math.nan,
        s,
    )


def replay(
    records: Iterable[dict[str, Any]],
    model: Any,
    *,
    policy: str | None = None,
    window_s: float | None = None,
    startup_s: float = 30.0,
) -> list[PolicyReplay]:
    """Replay ``model`` (``obs [B, F] -> Q [B, A]``) on each policy of the log (``policy``:
    only ``namespace/name``); ``window_s``: score the last this-many seconds (default: all)."""
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if policy and f"{r.get('namespace')}/{r.get('policy')}" != policy:
            continue
        by_uid.setdefault(r["uid"], []).append(r)
    if policy and not by_uid:
        raise LogError(f"no records of policy {policy} in the log")
    return [_replay_one(recs, model, window_s, startup_s) for recs in by_uid.values()]
