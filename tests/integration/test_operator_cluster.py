"""The operator on a real control plane, with real Prometheus, real kubectl and the emulator.

One operator (``qscale operator`` as a subprocess, with a ServiceAccount token bound to the
RBAC of ``deploy/rbac.yaml``, never as admin) serves every test of this module; the emulator
plays the services behind kwok's pods and real Prometheus scrapes it and the operator every
second. Policies decide every 2 s. Tests that watch a scale-down use queries with 10 s rate
windows (a policy may set its own queries) so that a fall shows within seconds; the others use
the default queries of ``qscale.features.PROMQL``. The faults (metrics that lag or break,
Prometheus stopped, the operator killed, the API server restarted) are in
``test_operator_faults.py``, on a stack of their own, so that the two files can run on two
workers.
"""

from __future__ import annotations

import http.server
import itertools
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from opstack import (
    CAPACITY,
    FAST,
    SLO,
    ReplicaLog,
    Stack,
    constant_policy,
    s_digest,
    scale_events,
)

from qscale import features
from qscale.dev.cluster import deployment_manifest, wait_for
from qscale.dev.operator import DEPLOY

pytestmark = pytest.mark.cluster


def test_examples_apply_with_kubectl_and_tell_the_story(st: Stack):
    for f in sorted((DEPLOY / "examples").glob("*.yaml")):
        st.cluster.kubectl("apply", "-n", st.ns, "-f", str(f))
    st.created += [
        ("deployment", "web"),
        ("autoscalepolicy", "web"),
        ("deployment", "checkout"),
        ("hpa", "checkout"),
        ("autoscalepolicy", "checkout-shadow"),
        ("modelrollout", "model-v7"),  # no policy here carries its label: no member
    ]
    st.wait_status(
        "web", lambda s: s.get("observedGeneration") == 1, 30, "the operator's first status"
    )
    st.wait_status("checkout-shadow", lambda s: s.get("reason"), 30, "the shadow policy's status")
    out = st.cluster.kubectl("get", "asp", "-n", st.ns).stdout
    header = out.splitlines()[0].split()
    assert header == [
        "NAME",
        "TARGET",
        "MODE",
        "REPLICAS",
        "DESIRED",
        "LAST",
        "ACTION",
        "REASON",
        "MODEL",
        "AGE",
    ]
    assert "Shadow" in out and "Enforce" in out and "default" in out
    # No series for these Deployments (nothing emulates them): MetricsAvailable=False, a hold.
    assert st.condition("web", "MetricsAvailable")["reason"] == "METRICS_MISSING"
    assert st.condition("web", "ModelReady")["status"] == "True"
    assert st.replicas("web") == 2
    # kopf's liveness endpoint runs the probe: the model it serves
    health = httpx.get(f"http://127.0.0.1:{st.operator.health_port}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["qscale"]["default_model"] == s_digest(st)
    ready = httpx.get(f"http://127.0.0.1:{st.operator.metrics_port}/readyz", timeout=5).json()
    assert ready["leader"] is True and ready["deployments_synced"] is True


def test_ramp_scales_up_fall_scales_down_after_cooldown_and_stabilization_bounds_hold(st: Stack):
    st.deployment("ramp", replicas=2, load=30)
    behavior = {"scaleDown": {"cooldown": "6s", "stabilizationWindow": "8s", "maxPods": 2}}
    st.policy(
        "ramp", "ramp", minReplicas=2, maxReplicas=5, slo=SLO, metrics=FAST, behavior=behavior
    )
    log = ReplicaLog(st, "ramp")
    try:
        st.wait_status(
            "ramp", lambda s: s.get("reason") in ("AT_MIN", "OK"), 30, "a first decision at min"
        )
        assert st.replicas("ramp") == 2
        st.load("ramp", 180)  # 2 pods serve 100 req/s: p95 over the SLO
        st.wait_status("ramp", lambda s: s.get("replicas") == 5, 60, "scale-up to maxReplicas")
        up_at = time.time()
        time.sleep(6)
        assert st.replicas("ramp") == 5  # 5 pods serve 250 req/s: enough; never above max
        st.load("ramp", 10)
        st.wait_status("ramp", lambda s: s.get("replicas") == 2, 90, "scale-down to minReplicas")
        time.sleep(4)
        assert st.replicas("ramp") == 2  # never below min
    finally:
        changes = log.stop()
    counts = [r for _, r in changes]
    assert max(counts) == 5 and min(counts) == 2
    ups = [(t, r) for (t, r), (_, p) in zip(changes[1:], changes, strict=False) if r > p]
    downs = [(t, r) for (t, r), (_, p) in zip(changes[1:], changes, strict=False) if r < p]
    assert len(ups) >= 2 and len(downs) >= 1  # 2 -> 3 -> 5 (x1.5 steps), then down by <= 2 pods
    assert all(t - up_at >= 6.0 - 0.5 for t, _ in downs)  # never within the cooldown of a scale
    for (t0, _), (t1, _) in itertools.pairwise(downs):
        assert t1 - t0 >= 6.0 - 0.5
    reasons = {e["reason"] for e in scale_events(st, "ramp")}
    assert reasons <= {"OK", "AT_MAX", "AT_MIN", "STEP_LIMIT_DOWN", "STEP_LIMIT_UP", "STABILIZED"}
    status = st.status("ramp")
    assert status["lastAction"]["applied"] is True and "qValues" in status["lastAction"]


def test_shadow_and_off_never_write_and_an_outside_scale_is_noticed(st: Stack):
    st.deployment("shadowed", replicas=2, load=180)
    st.deployment("off", replicas=2, load=180)
    st.policy("shadowed", "shadowed", mode="Shadow", slo=SLO)
    st.policy("off", "off", mode="Off", slo=SLO)
    s = st.wait_status(
        "shadowed", lambda s: (s.get("wouldScaleTo") or 0) > 2, 40, "a would-be scale-up"
    )
    assert s["lastAction"]["applied"] is False and s["replicas"] == 2
    assert st.condition("shadowed", "ScalingActive")["reason"] == "MODE_SHADOW"
    # "off" is indexed on its own watch event: it may tick after "shadowed" already decided
    off = st.wait_status("off", lambda s: "reason" in s, 20, "Off's first status")
    assert off["reason"] == "MODE_OFF" and "desiredReplicas" not in off
    time.sleep(4)
    assert st.replicas("shadowed") == 2 and st.replicas("off") == 2
    assert scale_events(st, "shadowed") == [] and scale_events(st, "off") == []
    st.cluster.kubectl("scale", "deploy/shadowed", "-n", st.ns, "--replicas=4")
    s = st.wait_status(
        "shadowed",
        lambda s: (s.get("lastOutsideScale") or {}).get("to") == 4,
        20,
        "the outside scale in status",
    )
    assert s["lastOutsideScale"]["from"] == 2
    assert any(e["reason"] == "OUTSIDE_SCALE" for e in st.events("shadowed"))
    assert st.replicas("shadowed") == 4


def test_the_kill_switch_takes_over_within_a_tick_and_lets_go(st: Stack):
    """A namespace's switch to Off, then the operator-wide one to HPA, then none: each within a
    tick or two of the ConfigMap's change, nothing deleted, the model back at the end."""

    def switch(ns: str, mode: str | None) -> float:
        if mode is None:
            st.cluster.kubectl("delete", "configmap", "qscale-kill-switch", "-n", ns)
        else:
            st.cluster.apply(
                f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: qscale-kill-switch, "
                f"namespace: {ns}}}\ndata: {{mode: '{mode}'}}\n"  # YAML reads a bare Off as false
            )
        return time.time()

    def active(s: dict) -> dict:
        return next((c for c in s.get("conditions") or [] if c["type"] == "ScalingActive"), {})

    st.deployment("killed", replicas=2, load=180)  # 2 pods serve 100 req/s: the model scales up
    switch(st.ns, "Off")
    st.policy("killed", "killed", slo=SLO, metrics=FAST)
    s = st.wait_status("killed", lambda s: s.get("reason") == "KILL_SWITCH", 30, "switched off")
    assert active(s)["status"] == "False" and f"{st.ns}/qscale-kill-switch" in active(s)["message"]
    time.sleep(4)
    assert st.replicas("killed") == 2 and scale_events(st, "killed") == []
    try:
        switch(st.ns, None)
        t = switch(st.op_ns, "HPA")
        s = st.wait_status(
            "killed", lambda s: "HPA" in active(s).get("message", ""), 15, "the HPA rule in charge"
        )
        assert time.time() - t < 8  # within a tick or two (interval 2 s, tick 1 s, kubectl)
        assert active(s)["reason"] == "KILL_SWITCH" and s["fallback"]["reason"] == "KILL_SWITCH"
        assert f"{st.op_ns}/qscale-kill-switch" in active(s)["message"]
        assert st.condition("killed", "ModelReady")["status"] == "True"
    finally:
        switch(st.op_ns, None)
    st.wait_status("killed", lambda s: active(s).get("reason") == "OK", 20, "the model back")
    assert any(e["reason"] == "KILL_SWITCH_RELEASED" for e in st.events("killed"))
    assert st.get("asp", "killed")["metadata"]["name"] == "killed"  # nothing was deleted


def test_a_shadow_policy_is_scored_against_what_runs_with_the_service_found_live(st: Stack):
    # 2 fixed pods of 50 req/s at 80 req/s: the window's ticks estimate the emulator's service.
    st.deployment("scored", replicas=2, load=80)
    st.policy("scored", "scored", mode="Shadow", slo=SLO, shadow={"window": "1m"})
    s = st.wait_status(
        "scored",
        lambda s: (s.get("shadow") or {}).get("verdict") not in (None, "INSUFFICIENT_DATA"),
        90,
        "a shadow score",
    )["shadow"]
    assert st.replicas("scored") == 2 and scale_events(st, "scored") == []
    assert s["service"]["capacityPerPod"] == pytest.approx(CAPACITY, rel=0.3), s
    assert s["coveredSeconds"] >= 30 and s["samples"] >= 10
    covered_h = s["coveredSeconds"] / 3600
    assert s["incumbent"]["replicaHours"] == pytest.approx(2 * covered_h, rel=0.1)
    assert "measuredSloMinutes" in s["incumbent"] and len(s["difference"]["sloMinutes"]) == 2
    wide = st.cluster.kubectl("get", "asp", "scored", "-n", st.ns, "-o", "wide").stdout
    assert "SHADOW" in wide.splitlines()[0] and s["verdict"] in wide
    assert st.operator.metric("qscale_shadow_policies", {"verdict": s["verdict"]}) >= 1


def test_the_cpu_peak_is_read_from_its_points_as_prometheus_takes_their_max(st: Stack):
    """The operator asks the points behind ``max_over_time(...)`` (the default ``cpu_peak``'s
    form) instead of their max: real Prometheus answers that subquery with its points, their
    highest is the value Prometheus' own ``max_over_time`` gives at the same instant, and the
    request rate's points come with them (the capacity estimate's inputs)."""
    import asyncio

    from qscale.operator.prom import PromClient, QueryGroup

    st.deployment("peaky", replicas=2, load=60)
    url = st.prometheus.url
    fast = QueryGroup(
        url, FAST["requestRate"], FAST["latencyP95"], FAST["cpuUtilization"], FAST["cpuPeak"],
        ((st.ns, "peaky"),),
    )  # fmt: skip
    default = QueryGroup(url, *(features.PROMQL[k] for k in (
        "request_rate", "latency_p95", "cpu_utilization", "cpu_peak")), ((st.ns, "peaky"),),
    )  # fmt: skip

    async def fetch(now: float):
        client = PromClient(timeout_s=10.0)
        try:
            return await client.fetch([fast, default], now)
        finally:
            await client.close()

    deadline = time.time() + 60
    while True:
        now = float(int(time.time()))
        out = asyncio.run(fetch(now))
        x = out[fast][(st.ns, "peaky")]
        if (len(x.cpu_points) >= 3 and x.rate_points) or time.time() > deadline:
            break
        time.sleep(2)
    assert len(x.cpu_points) >= 3 and x.rate_points and not x.errors, x
    filled = features.fill_template(FAST["cpuPeak"], [st.ns], ["peaky"])
    r = httpx.post(f"{url}/api/v1/query", data={"query": filled, "time": f"{now:.3f}"})
    ((series,),) = [r.json()["data"]["result"]]
    assert x.has_cpu_peak and x.cpu_peak_cores == pytest.approx(float(series["value"][1]))
    # The default template's points: a subquery Prometheus accepts as a query of its own.
    d = out[default][(st.ns, "peaky")]
    assert not [e for e in d.errors if e.startswith("cpu_peak")], d.errors


CANARY_DOWN = {"scaleDown": {"cooldown": "0s", "stabilizationWindow": "0s", "maxPercent": 100}}


def test_an_under_provisioning_candidate_is_rolled_back_and_the_incumbent_keeps_the_slo(
    st: Stack,
):
    hold = st.publish(constant_policy(st.workdir / "hold", "hold"), "cand-hold")
    st.deployment("canary-bad", replicas=2, load=180)  # 2 pods of 50 req/s: overloaded
    canary = {"model": hold, "period": "8s", "window": "40s",
              "rollback": {"maxSloViolationPercent": 20}}  # fmt: skip
    st.policy("canary-bad", "canary-bad", slo=SLO, metrics=FAST, behavior=CANARY_DOWN,
              canary=canary)  # fmt: skip
    s = st.wait_status(
        "canary-bad",
        lambda s: (s.get("canary") or {}).get("state") == "RolledBack",
        60,
        "the rollback",
    )["canary"]
    assert s["reason"] == "SLO_VIOLATION" and s["candidate"]["sloViolationPercent"] > 20, s
    events = [e for e in st.events("canary-bad") if e["reason"] == "CANARY_ROLLED_BACK"]
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert st.operator.metric("qscale_canary_rollbacks_total") >= 1
    # The incumbent (the stack's model) decides from then on and serves the load: >= 4 pods,
    # p95 back under the SLO; the canary does not come back.
    st.wait_status(
        "canary-bad",
        lambda s: s.get("replicas", 0) >= 4 and s.get("reason") in ("OK", "AT_MAX", "STABILIZED"),
        60,
        "the incumbent scaling up",
    )
    s = st.wait_status(
        "canary-bad",
        lambda s: any(
            c["type"] == "MetricsAvailable" and c["status"] == "True"
            for c in s.get("conditions", [])
        ),
        30,
        "metrics",
    )
    assert s["canary"]["state"] == "RolledBack" and s["canary"]["arm"] == "incumbent"
    wide = st.cluster.kubectl("get", "asp", "canary-bad", "-n", st.ns, "-o", "wide").stdout
    assert "CANARY" in wide.splitlines()[0] and "RolledBack" in wide


def test_a_group_canary_is_rolled_back_on_its_targets_and_the_api_refuses_bad_rollouts(
    st: Stack,
):
    hold = st.publish(constant_policy(st.workdir / "ghold", "hold"), "grp-hold")
    names = ["grp-a", "grp-b", "grp-c"]
    for n in names:  # 2 pods of 50 req/s each for 180 req/s: overloaded until scaled up
        st.deployment(n, replicas=2, load=180)
    for n in names:
        st.policy(n, n, labels={"canary-group": "grp"}, slo=SLO, metrics=FAST,
                  behavior=CANARY_DOWN)  # fmt: skip
    # A selector that takes the whole namespace, and In without values: refused by the API.
    out = st.rollout("bad", selector={}, model=hold)
    assert out.returncode != 0 and "must not be empty" in out.stderr, out.stderr
    bad_expr = {"matchExpressions": [{"key": "a", "operator": "In"}]}
    out = st.rollout("bad", selector=bad_expr, model=hold)
    assert out.returncode != 0 and "need values" in out.stderr, out.stderr
    out = st.rollout("grp", selector={"matchLabels": {"canary-group": "grp"}}, model=hold,
                     percent=34, window="40s", rollback={"maxSloViolationPercent": 20})  # fmt: skip
    assert out.returncode == 0, out.stderr

    def rollout_status() -> dict:
        return st.get("modelrollout", "grp").get("status") or {}

    running = wait_for(lambda: rollout_status().get("members") == 3 or None, 60, 0.5, "members")
    (cand,) = st.get("modelrollout", "grp")["status"]["candidate"]["policies"]
    # the policy's own status is written in the background, after the rollout's may be
    canary = st.wait_status(cand, lambda s: "canary" in s, 30, "the candidate's canary status")[
        "canary"
    ]
    assert running and canary == {**canary, "rollout": "grp", "arm": "candidate"}
    s = wait_for(
        lambda: (lambda s: s if s.get("state") == "RolledBack" else None)(rollout_status()),
        90,
        0.5,
        "the group's rollback",
    )
    assert s["reason"] == "SLO_VIOLATION" and s["candidate"]["sloViolationPercent"] > 20, s
    assert s["candidate"]["targets"] == 1 and len(s["incumbent"]["policies"]) == 3
    events = [e for e in st.events("grp", "ModelRollout") if e["reason"] == "CANARY_ROLLED_BACK"]
    assert len(events) == 1 and events[0]["type"] == "Warning"
    assert any(e["reason"] == "CANARY_ROLLED_BACK" for e in st.events(cand))
    assert st.operator.metric("qscale_rollouts", {"state": "RolledBack"}) >= 1
    # The incumbent (each policy's model) decides the candidate's target from then on.
    st.wait_status(cand, lambda s: s.get("replicas", 0) >= 4, 60, "the incumbent scaling up")
    assert st.status(cand)["canary"]["arm"] == "incumbent"
    listed = st.cluster.kubectl("get", "mro", "grp", "-n", st.ns).stdout
    assert "RolledBack" in listed and "SLO_VIOLATION" in listed


def test_a_cheaper_candidate_that_keeps_the_slo_is_promoted(st: Stack):
    over = st.publish(constant_policy(st.workdir / "x2", "times_2"), "inc-x2")
    # The candidate gives back a pod a tick, down to minReplicas 5 (150 req/s at 60 %), the
    # incumbent doubles to maxReplicas 10: the candidate is cheaper and holds the SLO. (The
    # stack's model, which sizes by a 10 s CPU rate, misreads it right after a step and was
    # rightly rolled back when tried here.)
    good = st.publish(constant_policy(st.workdir / "m1", "minus_1"), "cand-m1")
    st.deployment("canary-good", replicas=10, load=150)
    # A service that is up: its pods ready and its 10 s latency window past their start.
    wait_for(lambda: st.ready("canary-good") == 10, 60, what="10 ready pods")
    time.sleep(12)
    canary = {"model": good, "period": "20s", "window": "40s",
              "promotion": {"enabled": True, "minCostSavingPercent": 10}}  # fmt: skip
    st.policy("canary-good", "canary-good", slo=SLO, metrics=FAST, behavior=CANARY_DOWN,
              model=over, canary=canary, minReplicas=5)  # fmt: skip
    try:
        s = st.wait_status(
            "canary-good",
            lambda s: (s.get("canary") or {}).get("state") == "Promoted",
            120,
            "the promotion",
        )["canary"]
    except TimeoutError:
        print("STATUS", json.dumps(st.status("canary-good"), indent=1))
        print("EVENTS", [(e["reason"], e["message"]) for e in st.events("canary-good")])
        raise
    assert s["reason"] == "PROMOTED" and "fewer replica-seconds per request" in s["message"]
    assert s["candidate"]["replicaHours"] < s["incumbent"]["replicaHours"]
    assert any(e["reason"] == "CANARY_PROMOTED" for e in st.events("canary-good"))
    assert st.operator.metric("qscale_canary_promotions_total") >= 1
    st.wait_status(
        "canary-good", lambda s: s.get("replicas", 10) < 10, 30, "the candidate in charge"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas must be <= maxReplicas"),
        ({"minReplicas": -1}, "should be greater than or equal to 1"),
        ({"replicasMax": 3}, 'unknown field "spec.replicasMax"'),
        (
            {"targetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "x"}},
            "targetRef must be an apps/v1 Deployment",
        ),
        ({"interval": "0.5s"}, "interval must be between 1s and 10m"),
        ({"model": {"configMapRef": {"name": "m"}}}, "needs both configMapRef and its sha256 pin"),
        ({"shadow": {"window": "30s"}}, "shadow.window must be between 1m and 24h"),
        ({"drift": {"window": "2d"}}, "spec.drift.window"),
        ({"drift": {"action": "Delete"}}, 'Unsupported value: "Delete"'),
        (
            {"capacity": {"requestsPerSecondPerPod": 0}},
            "requestsPerSecondPerPod in body should be greater than 0",
        ),
    ],
)
def test_bad_policies_are_rejected_by_schema_and_cel(st: Stack, change, message):
    doc = json.loads(
        json.dumps(
            {
                "apiVersion": "qscale.io/v1alpha1",
                "kind": "AutoscalePolicy",
                "metadata": {"name": "bad", "namespace": st.ns},
                "spec": {
                    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "slo": SLO,
                    **change,
                },
            }
        )
    )
    out = st.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_a_missing_target_is_a_condition_not_a_crash_loop(st: Stack):
    st.policy("orphan", "does-not-exist")
    s = st.wait_status(
        "orphan", lambda s: s.get("reason") == "TARGET_MISSING", 20, "TARGET_MISSING"
    )
    ready = next(c for c in s["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "does-not-exist" in ready["message"]
    ticks = st.operator.metric("qscale_ticks_total")
    time.sleep(3)
    assert st.operator.metric("qscale_ticks_total") > ticks  # still ticking, same process
    assert sum(e["reason"] == "TARGET_MISSING" for e in st.events("orphan")) == 1


def test_a_model_configmap_with_a_sha256_mismatch_is_refused_and_the_fallback_acts(st: Stack):
    pub = subprocess.run(
        [
            sys.executable,
            "-m",
            "qscale.entry",
            "model",
            "publish",
            str(st.model),
            "--name",
            "pinned",
            "--namespace",
            st.ns,
            "--kubeconfig",
            str(st.cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pub.returncode == 0, pub.stderr
    digest = pub.stdout.split("sha256 ")[1].split()[0]
    st.created.append(("configmap", "pinned"))
    st.deployment("pinned", replicas=2, load=140)  # 100 % CPU at 70 % target: the HPA scales up
    wrong = "0" * 64 if digest != "0" * 64 else "1" * 64
    st.policy(
        "pinned",
        "pinned",
        slo=SLO,
        metrics=FAST,
        model={"configMapRef": {"name": "pinned"}, "sha256": wrong},
        fallback={"targetUtilization": 70, "afterFailedTicks": 2},
    )
    s = st.wait_status("pinned", lambda s: s.get("reason") == "FALLBACK_ACTIVE", 30, "the fallback")
    model_ready = next(c for c in s["conditions"] if c["type"] == "ModelReady")
    assert model_ready["status"] == "False" and "sha256 mismatch" in model_ready["message"]
    st.wait_status("pinned", lambda s: s.get("replicas", 2) > 2, 60, "the HPA rule scaling up")
    assert st.status("pinned")["lastAction"]["action"] == "hpa"
    reasons = [e["reason"] for e in st.events("pinned")]
    assert "MODEL_REFUSED" in reasons and "FALLBACK_ACTIVE" in reasons
    # the right pin: the ConfigMap's model is served and the fallback ends
    st.policy(
        "pinned",
        "pinned",
        slo=SLO,
        metrics=FAST,
        model={"configMapRef": {"name": "pinned"}, "sha256": digest},
        fallback={"targetUtilization": 70, "afterFailedTicks": 2},
    )
    s = st.wait_status(
        "pinned",
        lambda s: "fallback" not in s and s.get("model", {}).get("sha256") == digest,
        30,
        "the pinned model served",
    )
    assert next(c for c in s["conditions"] if c["type"] == "ModelReady")["status"] == "True"


def test_rbac_the_operator_cannot_read_secrets_or_touch_other_namespaces(st: Stack):
    def as_operator(*args: str) -> subprocess.CompletedProcess:
        # the operator's own kubeconfig: its ServiceAccount token and nothing else
        return subprocess.run(
            [str(st.cluster.bin_dir / "kubectl"), "--kubeconfig", str(st.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def can(*args: str) -> bool:
        return as_operator("auth", "can-i", *args).stdout.strip() == "yes"

    assert as_operator("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == (
        f"system:serviceaccount:{st.op_ns}:qscale-operator"
    )
    assert can("patch", "deployments", "--subresource=scale", "-n", st.ns)
    assert can("patch", "autoscalepolicies.qscale.io", "--subresource=status", "-n", st.ns)
    assert can("create", "leases", "-n", st.op_ns)
    assert not can("get", "secrets", "-n", st.ns)
    assert not can("list", "secrets", "--all-namespaces")
    assert not can("patch", "deployments", "-n", st.ns)  # only the scale subresource
    assert not can("delete", "autoscalepolicies.qscale.io", "-n", st.ns)
    assert not can("patch", "deployments", "--subresource=scale", "-n", st.other_ns)
    assert not can("get", "deployments", "-n", st.other_ns)
    assert not can("list", "customresourcedefinitions")
    assert not can("create", "leases", "-n", st.ns)
    st.cluster.apply(deployment_manifest("elsewhere", st.other_ns, replicas=1))
    out = as_operator("scale", "deploy/elsewhere", "-n", st.other_ns, "--replicas=3")
    assert out.returncode != 0 and "forbidden" in out.stderr.lower()
    out = as_operator("get", "secrets", "-n", st.ns)
    assert out.returncode != 0 and "forbidden" in out.stderr.lower()
    assert "forbidden" not in st.operator.log_tail(10**7).lower()  # the operator never hit a wall


def test_a_second_enforce_policy_is_refused_and_shadow_beside_it_still_decides(st: Stack):
    """Two writers on one Deployment would flap it; the newer Enforce policy is refused."""
    st.deployment("dup", replicas=2, load=180)
    st.policy("dup-first", "dup", slo=SLO)
    st.wait_status("dup-first", lambda s: s.get("desiredReplicas"), 30, "the first decision")
    log = ReplicaLog(st, "dup")
    try:
        st.policy("dup-second", "dup", slo=SLO)
        st.policy("dup-trial", "dup", mode="Shadow", slo=SLO)
        s = st.wait_status(
            "dup-second", lambda s: s.get("reason") == "TARGET_CONFLICT", 30, "the refusal"
        )
        assert "AutoscalePolicy dup-first" in st.condition("dup-second", "Ready")["message"]
        assert "desiredReplicas" not in s
        st.wait_status("dup-trial", lambda s: s.get("wouldScaleTo"), 30, "the shadow's verdict")
        time.sleep(6)
    finally:
        changes = log.stop()
    assert scale_events(st, "dup-second") == [] and scale_events(st, "dup-trial") == []
    # every change of the Deployment while all three ran is one of the first policy's scales
    assert len(changes) - 1 <= len(scale_events(st, "dup-first")), changes
    assert [e["reason"] for e in st.events("dup-second")].count("TARGET_CONFLICT") == 1


def test_a_hostile_tenant_reaches_no_url_and_reads_no_other_namespace(st: Stack):
    """An address outside the allow-list is never fetched (nor echoed); a query that would
    escape its namespace is refused; a policy's own failing query stays its own even next to
    a policy with the default queries on the same Deployment."""
    hits: list[str] = []

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status":"error","error":"SECRET-REPLY"}')

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        st.deployment("tenant", replicas=2, load=40)
        address = f"http://127.0.0.1:{server.server_address[1]}"
        st.policy("tenant-url", "tenant", mode="Shadow", slo=SLO,
                  metrics={"prometheus": {"address": address}})  # fmt: skip
        escape = features.PROMQL["request_rate"] + " or sum(rate(http_requests_total[1m]))"
        st.policy("tenant-escape", "tenant", mode="Shadow", slo=SLO,
                  metrics={"requestRate": escape})  # fmt: skip
        broken = FAST["requestRate"].replace("http_requests_total", "no_such_metric_total")
        st.policy(
            "tenant-own", "tenant", mode="Shadow", slo=SLO, metrics={**FAST, "requestRate": broken}
        )
        st.policy("tenant-default", "tenant", slo=SLO, metrics=FAST)
        st.wait_status(
            "tenant-url", lambda s: s.get("conditions"), 30, "the refused address's status"
        )
        c = st.condition("tenant-url", "MetricsAvailable")
        assert c["reason"] == "PROMETHEUS_NOT_ALLOWED" and "SECRET" not in json.dumps(
            st.status("tenant-url")
        )
        st.wait_status("tenant-escape", lambda s: s.get("reason") == "INVALID_SPEC", 30, "refusal")
        assert "namespace" in st.condition("tenant-escape", "Ready")["message"]
        st.wait_status("tenant-default", lambda s: s.get("desiredReplicas"), 30, "a decision")
        own = st.wait_status(
            "tenant-own",
            lambda s: any(c["type"] == "MetricsAvailable" for c in s.get("conditions") or []),
            30,
            "the own query's condition",
        )
        assert st.condition("tenant-own", "MetricsAvailable")["status"] == "False", own
        assert st.condition("tenant-default", "MetricsAvailable")["reason"] == "METRICS_OK"
        assert hits == []  # the operator never connected to the tenant's address
    finally:
        server.shutdown()
