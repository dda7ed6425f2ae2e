"""The operator on a real control plane under faults: metrics that lag or break, Prometheus
stopped, a second replica taking over, the operator killed mid-cooldown, the API server
restarted. The same stack as ``test_operator_cluster.py`` (one operator subprocess with a
least-privilege token, the emulator, real Prometheus scraping every second; policies decide
every 2 s), its own instance for this module. The disruptive tests come last.
"""

from __future__ import annotations

import itertools
import time

import pytest
from opstack import (
    FAST,
    LAGGING_RATE,
    SLO,
    ReplicaLog,
    Stack,
    scale_events,
)

from qscale.dev.cluster import wait_for
from qscale.dev.operator import OperatorProcess

pytestmark = pytest.mark.cluster


def test_drift_is_raised_on_pods_that_cannot_start_and_not_on_a_training_like_load(st: Stack):
    from qscale.policy.default import default_model_path

    # The shipped model, with the drift reference it ships, as a ConfigMap model.
    shipped = st.publish(default_model_path(), "shipped")
    window = {"window": "1m"}  # 30 ticks of 2 s: judged with the 20-tick thresholds
    # Training-like: a load that rises and falls every 30 s, the model scaling for it.
    wave = "ramp:" + ",".join(f"{30 * i}:{40 if i % 2 else 90}" for i in range(20))
    st.deployment("drift-like", replicas=2, load=wave)
    st.policy("drift-like", "drift-like", slo=SLO, model=shipped, drift=window)
    # Shifted: a service whose pods mostly cannot start: one per node fits (40 of its 64
    # cores), the other 29 in 30 stay Pending, a start-up far beyond the 15-240 s the model
    # trained with.
    nodes = len(st.cluster.kubectl("get", "nodes", "-o", "name").stdout.split())
    n = 30 * nodes
    st.deployment("drift-stuck", replicas=n, load=20, cpu_request="40", ready=nodes)
    st.policy("drift-stuck", "drift-stuck", slo=SLO, model=shipped, minReplicas=n,
              maxReplicas=n, drift={**window, "action": "Fallback"})  # fmt: skip
    judged = ("Normal", "Drifting")
    stuck = st.wait_status(
        "drift-stuck", lambda s: (s.get("drift") or {}).get("state") in judged, 120, "drift"
    )
    d = stuck["drift"]
    assert d["state"] == "Drifting" and "pending_fraction" in d["drifting"], d
    assert st.condition("drift-stuck", "ModelDrift")["status"] == "True"
    st.wait_status("drift-stuck", lambda s: s.get("reason") == "MODEL_DRIFT", 20, "fallback")
    assert any(e["reason"] == "MODEL_DRIFT" for e in st.events("drift-stuck"))
    like = st.wait_status(
        "drift-like", lambda s: (s.get("drift") or {}).get("state") in judged, 60, "drift"
    )
    # Judged Normal, and still Normal half a window later (another 15 judgements).
    assert like["drift"]["state"] == "Normal", like["drift"]
    time.sleep(30)
    like = st.status("drift-like")
    assert like["drift"]["state"] == "Normal", like["drift"]
    assert st.condition("drift-like", "ModelDrift")["status"] == "False"
    assert not any(e["reason"] == "MODEL_DRIFT" for e in st.events("drift-like"))
    assert st.operator.metric("qscale_drift_policies", {"state": "Drifting"}) >= 1
    wide = st.cluster.kubectl("get", "asp", "drift-stuck", "-n", st.ns, "-o", "wide").stdout
    assert "DRIFT" in wide.splitlines()[0] and "Drifting" in wide


def test_a_rate_from_a_lagging_rule_is_stale_and_holds(st: Stack):
    """A recording rule evaluated every 40 s: its sample is up to 40 s old; past the stack's
    30 s the policy holds with METRICS_STALE, and decides again when a fresh sample lands."""
    st.deployment("lagging", replicas=2, load=180)
    # The recorded series as it is stored (the rule did the aggregation): timestamp() of it is
    # its sample time.
    rate = f'{LAGGING_RATE}{{namespace=~"$namespace", deployment=~"$deployment"}}'
    st.policy("lagging", "lagging", slo=SLO, metrics={**FAST, "requestRate": rate})
    st.prometheus.wait_for_series(LAGGING_RATE, 90)
    s = st.wait_status("lagging", lambda s: s.get("reason") == "METRICS_STALE", 90, "a stale hold")
    assert st.condition("lagging", "MetricsAvailable")["reason"] == "METRICS_STALE"
    assert s["desiredReplicas"] == s["replicas"]  # held
    st.wait_status(
        "lagging", lambda s: s.get("reason") != "METRICS_STALE", 60, "a fresh sample again"
    )


def test_prometheus_faults_hold_only_their_own_policies_and_heal(st: Stack):
    """The Prometheus rows of docs/faults.md on the real stack, one after the other, through
    the fault-injecting proxy in front of the real Prometheus: a reply trickled past the
    operator's query timeout (5 s), malformed JSON, NaN values, a partial result (fp-a's series
    dropped, fp-b's kept: same query). fp-a holds, falls back, reports each fault and recovers
    when the proxy passes through again, in the same process; fp-c, on Prometheus directly,
    decides all along (its load rises during the slowest fault and it reacts)."""
    for name in ("fp-a", "fp-b", "fp-c"):
        st.deployment(name, replicas=2, load=40)
    via = {**FAST, "prometheus": {"address": st.faulty.url}}
    st.policy("fp-a", "fp-a", slo=SLO, metrics=via, fallback={"afterFailedTicks": 2})
    st.policy("fp-b", "fp-b", slo=SLO, metrics=via)
    st.policy("fp-c", "fp-c", mode="Shadow", slo=SLO, metrics=FAST)
    pid = st.operator.pid

    def metrics(name: str) -> dict:
        return st.condition(name, "MetricsAvailable")

    def shows(c: dict, reason: str, message: str) -> bool:
        return c.get("reason") == reason and message in c.get("message", "")

    for name in ("fp-a", "fp-b", "fp-c"):
        wait_for(lambda n=name: metrics(n).get("status") == "True", 40, what=f"{name} metrics")
    log = ReplicaLog(st, "fp-a")
    errors = st.operator.metric("qscale_prometheus_query_errors_total")
    try:
        st.faulty.set("trickle", delay_s=60)
        st.load("fp-c", 180)
        st.wait_status(
            "fp-a", lambda s: (s.get("fallback") or {}).get("active"), 40, "fp-a's fallback"
        )
        c = metrics("fp-a")
        assert c["reason"] == "QUERY_FAILED" and "no answer within 5s" in c.get("message", ""), c
        st.wait_status("fp-c", lambda s: (s.get("wouldScaleTo") or 0) > 2, 40, "fp-c deciding")
        assert metrics("fp-c")["status"] == "True"
        assert st.operator.metric("qscale_prometheus_query_errors_total") > errors
        for mode, reason, says in (
            ("malformed", "QUERY_FAILED", "request_rate: HTTP 200"),
            ("nan", "METRICS_MISSING", "no series for request_rate, cpu_utilization"),
            ("drop", "METRICS_MISSING", "no series for request_rate, latency_p95, cpu_util"),
        ):
            st.faulty.set(mode, drop={"fp-a"})
            wait_for(
                lambda r=reason, m=says: shows(metrics("fp-a"), r, m),
                20,
                what=f"fp-a's condition in mode {mode}",
            )
        # partial: fp-b, in the same query, has its data again while fp-a's is missing
        wait_for(lambda: metrics("fp-b").get("status") == "True", 20, what="fp-b's data")
        assert metrics("fp-a")["status"] == "False"
        st.faulty.set("pass")
        s = st.wait_status(
            "fp-a",
            lambda s: "fallback" not in s and s.get("reason") not in ("FALLBACK_ACTIVE", None),
            30,
            "fp-a's recovery",
        )
        assert metrics("fp-a")["status"] == "True", s
    finally:
        st.faulty.set("pass")
        changes = log.stop()
    assert [r for _, r in changes] == [2]  # held throughout: nothing written, within bounds
    assert scale_events(st, "fp-a") == [] and st.operator.pid == pid
    reasons = [e["reason"] for e in st.events("fp-a")]
    assert reasons.count("FALLBACK_ACTIVE") == 1 and "FALLBACK_ENDED" in reasons


def test_prometheus_stopped_holds_falls_back_and_recovers(st: Stack):
    st.deployment("outage", replicas=3, load=60)
    st.policy("outage", "outage", slo=SLO, fallback={"afterFailedTicks": 2})
    st.wait_status(
        "outage",
        lambda s: (
            s.get("reason")
            and "fallback" not in s
            and any(
                c["type"] == "MetricsAvailable" and c["status"] == "True"
                for c in s.get("conditions", [])
            )
        ),
        40,
        "metrics available",
    )
    # the model may still be scaling on its first decisions: wait until a tick passes without
    # a change, then count what was written before the outage
    before, deadline = st.replicas("outage"), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(2.5)
        now = st.replicas("outage")
        if now == before:
            break
        before = now
    written = len(scale_events(st, "outage"))
    st.prometheus.stop()
    try:
        s = st.wait_status(
            "outage", lambda s: (s.get("fallback") or {}).get("active"), 30, "the fallback"
        )
        cond = next(c for c in s["conditions"] if c["type"] == "MetricsAvailable")
        assert cond["status"] == "False" and cond["reason"] == "QUERY_FAILED"
        time.sleep(4)
        # the HPA rule without metrics holds; nothing was written
        assert st.replicas("outage") == before and len(scale_events(st, "outage")) == written
        assert st.status("outage")["reason"] == "FALLBACK_ACTIVE"
    finally:
        st.prometheus.start()
    s = st.wait_status(
        "outage",
        lambda s: (
            "fallback" not in s
            and any(
                c["type"] == "MetricsAvailable" and c["status"] == "True"
                for c in s.get("conditions", [])
            )
        ),
        60,
        "recovery",
    )
    reasons = [e["reason"] for e in st.events("outage")]
    assert "FALLBACK_ACTIVE" in reasons and "FALLBACK_ENDED" in reasons
    assert st.operator.metric("qscale_prometheus_query_errors_total") > 0


def test_a_second_replica_waits_and_takes_over(st: Stack):
    second = OperatorProcess(
        st.operator.kubeconfig,
        env={**st.operator.env, "QSCALE_IDENTITY": "second"},
        workdir=st.workdir / "second",
    )
    second.workdir.mkdir(exist_ok=True)
    try:
        second.start()
        st.deployment("ha", replicas=2, load=20)
        st.policy("ha", "ha", slo=SLO)
        st.wait_status("ha", lambda s: s.get("reason"), 40, "a decision")
        assert st.operator.metric("qscale_leader") == 1 and second.metric("qscale_leader") == 0
        assert second.metric("qscale_ticks_total") == 0
        st.operator.kill()  # a crash: the Lease is not given up, it expires (6 s)
        killed = time.monotonic()
        wait_for(lambda: second.metric("qscale_leader") == 1, 30, 0.2, "the second replica leading")
        # Hand-over within the Lease's duration of its last renewal (at most when it was
        # killed), plus the candidate's polls (duration / 5, up to two of them) and ours.
        assert time.monotonic() - killed <= 6.0 + 2 * 6.0 / 5 + 1.0
        wait_for(
            lambda: second.metric("qscale_ticks_total") > 0, 10, what="the second replica ticking"
        )
        st.load("ha", 180)
        st.wait_status("ha", lambda s: s.get("replicas", 2) > 2, 40, "a scale-up by the new leader")
        assert second.metric("qscale_api_writes_total", {"kind": "scale"}) >= 1
    finally:
        second.close()
        if st.operator.pid is None:
            st.operator.start()
            st.wait_leading()


def test_an_operator_restarted_mid_cooldown_keeps_its_cooldown(st: Stack):
    behavior = {"scaleDown": {"cooldown": "40s", "stabilizationWindow": "0s", "maxPods": 4}}
    st.deployment("cool", replicas=2, load=30)
    st.policy(
        "cool", "cool", minReplicas=2, maxReplicas=3, slo=SLO, metrics=FAST, behavior=behavior
    )
    st.wait_status("cool", lambda s: s.get("reason"), 40, "a first decision")
    st.load("cool", 120)
    st.wait_status("cool", lambda s: s.get("replicas") == 3, 40, "scale-up")
    up_at = st.status("cool")["shield"]["lastScaleUp"]
    st.load("cool", 5)
    st.restart_operator(crash=True)
    # The fall is visible within ~15 s; without the restored cooldown it would scale down then.
    s = st.wait_status(
        "cool",
        lambda s: s.get("reason") == "COOLDOWN_DOWN",
        40,
        "a scale-down held by the cooldown",
    )
    assert s["replicas"] == 3 and s["shield"]["lastScaleUp"] == up_at
    s = st.wait_status(
        "cool", lambda s: s.get("replicas") == 2, 60, "the scale-down after the cooldown"
    )
    changed_at = wait_for(
        lambda: next(
            (e for e in reversed(scale_events(st, "cool")) if "3 -> 2" in e["message"]), None
        ),
        10,
        what="the scale-down event",
    )
    from datetime import datetime

    t = datetime.strptime(changed_at["lastTimestamp"], "%Y-%m-%dT%H:%M:%SZ").timestamp()
    assert t >= up_at + 40 - 1.5


def test_an_api_server_restart_mid_run_is_survived_without_double_scaling(st: Stack):
    behavior = {"scaleUp": {"maxPods": 1, "maxPercent": 0, "cooldown": "6s"}}
    st.deployment("apirestart", replicas=2, load=30)
    st.policy("apirestart", "apirestart", maxReplicas=6, slo=SLO, behavior=behavior)
    st.wait_status("apirestart", lambda s: s.get("reason"), 40, "a first decision")
    log = ReplicaLog(st, "apirestart")
    st.load("apirestart", 400)  # overloaded at every size up to 6: +1 pod per 6 s
    st.wait_status("apirestart", lambda s: s.get("replicas", 2) >= 3, 30, "the first step")
    pid = st.operator.pid
    st.cluster.restart_component("kube-apiserver")
    try:
        st.wait_status(
            "apirestart",
            lambda s: s.get("replicas", 0) >= 5,
            90,
            "scaling resumed after the restart",
        )
    finally:
        changes = log.stop()
    assert st.operator.pid == pid  # the same process, recovered
    steps = [(t, r - p) for (t, r), (_, p) in zip(changes[1:], changes, strict=False)]
    assert all(d == 1 for _, d in steps), changes  # +1 each time: no step applied twice
    # The cooldown held: even the longest gap the polls allow between two steps is >= 6 s - 1 s.
    bounds = log.bounds[1:]
    assert all(b[1] - a[0] >= 6.0 - 1.0 for a, b in itertools.pairwise(bounds)), (changes, bounds)
