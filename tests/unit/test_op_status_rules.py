"""The status's rules as tables (HPA controller style): what a tick's verdict, observation and
model make of a policy's conditions, status fields, last action and Events."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from opfakes import SPEC

from qscale import actions
from qscale.operator.models import Model
from qscale.operator.prom import Observation
from qscale.operator.spec import parse_spec
from qscale.operator.status import (
    FALLBACK_ENDED,
    Notice,
    OpReason,
    Verdict,
    base_status,
    decided_status,
    failure_code,
    failure_message,
    fallback_notice,
    iso,
    last_action,
    metrics_condition,
    model_conditions,
    model_problem,
    model_status,
    outside_notice,
    problem_status,
    scale_failed_notice,
    scaled_notice,
    scaling_conditions,
    shadow_action,
)

NOW = 1_800_000_000.0
G = 3
DIGEST = "ab" * 32
MODEL = Model("busy", DIGEST, "spec1", lambda x: x, {})
TRAINED = Model("busy", DIGEST, "spec1", lambda x: x, {"serving": {"interval_s": 15.0}})
TRAINED_5S = Model("busy", DIGEST, "spec1", lambda x: x, {"serving": {"interval_s": 5.0}})


def spec(**over):
    return parse_spec({**SPEC, **over})


def obs(rate=True, latency=True, cpu=True, errors=(), cpu_utilization=0.5, cpu_peak=True):
    return Observation(
        rate_now=1.0,
        p95_s=0.1,
        cpu_utilization=cpu_utilization,
        cpu_peak_cores=2.0,
        has_rate=rate,
        has_latency=latency,
        has_cpu=cpu,
        has_cpu_peak=cpu_peak,
        errors=list(errors),
    )


def by_type(conds):
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds}


@pytest.mark.parametrize(
    ("o", "want"),
    [
        (obs(), ("True", "METRICS_OK", "")),
        (
            obs(rate=False, errors=["b: down", "a: down", "b: down"]),
            ("False", "QUERY_FAILED", "a: down; b: down"),
        ),
        (obs(cpu=False), ("False", "METRICS_MISSING", "no series for cpu_utilization")),
        (
            obs(rate=False, latency=False, cpu=False),
            (
                "False",
                "METRICS_MISSING",
                "no series for request_rate, latency_p95, cpu_utilization",
            ),
        ),
        (replace(obs(), age_s=90.0), ("True", "METRICS_OK", "")),
        (
            replace(obs(), age_s=180.0),
            ("False", "METRICS_STALE", "the newest request-rate point is 180s old "
             "(the operator holds past 120s)"),
        ),
        (
            replace(obs(rate=False), gaps=["request_rate: gap in the range (no point 60s "
                                           "before the newest)"]),
            ("False", "METRICS_MISSING", "request_rate: gap in the range (no point 60s before "
             "the newest)"),
        ),
        (
            replace(obs(latency=False), gaps=["latency_p95: no value while requests flow"]),
            ("False", "METRICS_MISSING", "latency_p95: no value while requests flow"),
        ),
        (
            replace(obs(rate=False, latency=False, cpu=False), refused="not allowed"),
            ("False", "PROMETHEUS_NOT_ALLOWED", "not allowed"),
        ),
    ],
    ids=["present", "query-failed", "cpu-missing", "all-missing", "fresh-enough", "stale",
         "gap", "nan-p95-with-traffic", "address-refused"],
)  # fmt: skip
def test_metrics_condition(o, want):
    assert by_type(metrics_condition(None, o, NOW, G, 120.0))["MetricsAvailable"] == want


@pytest.mark.parametrize(
    ("mode", "model", "error", "want"),
    [
        (
            "Enforce",
            None,
            "sha256 mismatch",
            {
                "Ready": ("False", "MODEL_REFUSED", "sha256 mismatch"),
                "ModelReady": ("False", "MODEL_REFUSED", "sha256 mismatch"),
            },
        ),
        (
            "Off",
            None,
            "not read yet",
            {
                "Ready": ("True", "OK", ""),
                "ModelReady": ("False", "MODEL_REFUSED", "not read yet"),
            },
        ),
        (
            "Enforce",
            MODEL,
            "",
            {
                "Ready": ("True", "OK", ""),
                "ModelReady": ("True", "MODEL_LOADED", f"busy sha256 {DIGEST[:12]} spec spec1"),
                "MatchesTraining": (
                    "Unknown",
                    "TRAINING_UNKNOWN",
                    "the model's manifest does not record its serving settings",
                ),
            },
        ),
        (
            "Shadow",
            TRAINED,
            "",
            {
                "Ready": ("True", "OK", ""),
                "ModelReady": ("True", "MODEL_LOADED", f"busy sha256 {DIGEST[:12]} spec spec1"),
                "MatchesTraining": ("True", "OK", ""),
            },
        ),
        (
            "Enforce",
            TRAINED_5S,
            "",
            {
                "Ready": ("True", "OK", ""),
                "ModelReady": ("True", "MODEL_LOADED", f"busy sha256 {DIGEST[:12]} spec spec1"),
                "MatchesTraining": ("False", "TRAINING_MISMATCH", "interval 15s (trained 5s)"),
            },
        ),
    ],
    ids=["refused", "refused-but-off", "no-serving-record", "matches", "mismatch"],
)
def test_model_conditions(mode, model, error, want):
    got = model_conditions(None, spec(mode=mode), model, error, NOW, G)
    assert by_type(got) == want


@pytest.mark.parametrize(
    ("mode", "verdict", "reason", "active", "limited"),
    [
        (
            "Shadow",
            Verdict(desired=4, reason="OK", model_decided=True),
            "OK",
            ("False", "MODE_SHADOW", "Shadow: decisions are recorded, never written"),
            ("False", "OK", ""),
        ),
        (
            "Enforce",
            Verdict(desired=4, reason="OK", model_decided=True),
            "OK",
            ("True", "OK", "the model decides"),
            ("False", "OK", ""),
        ),
        (
            "Enforce",
            Verdict(desired=4, reason="STEP_LIMIT_UP", model_decided=True),
            "STEP_LIMIT_UP",
            ("True", "OK", "the model decides"),
            ("True", "STEP_LIMIT_UP", ""),
        ),
        (
            "Enforce",
            Verdict(desired=10, reason="AT_MAX"),
            "AT_MAX",
            ("False", "AT_MAX", "holding: no decision this tick"),
            ("True", "AT_MAX", ""),
        ),
        (
            "Enforce",
            Verdict(desired=None, reason="METRICS_MISSING"),
            "METRICS_MISSING",
            ("False", "METRICS_MISSING", "holding: no decision this tick"),
            ("False", "METRICS_MISSING", ""),
        ),
        (
            "Enforce",
            Verdict(
                desired=6, reason="FALLBACK_ACTIVE", by_fallback=True, hpa_reason="ScaleUpLimit"
            ),
            "FALLBACK_ACTIVE",
            ("True", "FALLBACK_ACTIVE", "the HPA rule at 70% CPU decides"),
            ("True", "ScaleUpLimit", ""),
        ),
        (
            "Enforce",
            Verdict(
                desired=3,
                reason="FALLBACK_ACTIVE",
                by_fallback=True,
                hpa_reason="DesiredWithinRange",
            ),
            "FALLBACK_ACTIVE",
            ("True", "FALLBACK_ACTIVE", "the HPA rule at 70% CPU decides"),
            ("False", "DesiredWithinRange", ""),
        ),
    ],
    ids=[
        "shadow",
        "model",
        "model-step-limited",
        "bound-without-metrics",
        "no-metrics",
        "hpa-limited",
        "hpa-within-range",
    ],
)
def test_scaling_conditions(mode, verdict, reason, active, limited):
    got = by_type(scaling_conditions(None, spec(mode=mode), verdict, reason, NOW, G))
    assert got == {"ScalingActive": active, "ScalingLimited": limited}


OLD = {
    "observedGeneration": 2,
    "replicas": 2,
    "desiredReplicas": 5,
    "wouldScaleTo": 5,
    "fallback": {"active": True, "since": iso(NOW - 60), "reason": "METRICS_MISSING"},
    "reason": "OK",
    "lastAction": {"to": 5, "action": "times_2", "applied": False},
}


DECIDED = [
    (
        "off",
        "Off",
        Verdict(),
        {},
        {"reason": "MODE_OFF", "replicas": 4},
        # an older mode's last action (a Shadow line) is gone with mode Off
        ("desiredReplicas", "wouldScaleTo", "fallback", "shield", "lastAction"),
    ),
    (
        "shadow",
        "Shadow",
        Verdict(desired=6, action="plus_2", reason="OK", model_decided=True),
        {"shield_record": {"lastApplied": 4, "proposals": [[NOW, 6]]}},
        {"reason": "OK", "desiredReplicas": 6, "wouldScaleTo": 6, "shield": {"lastApplied": 4}},
        ("fallback",),
    ),
    (
        "shadow-nothing-to-keep",
        "Shadow",
        Verdict(desired=6, action="plus_2", reason="OK", model_decided=True),
        {"shield_record": {"proposals": [[NOW, 6]]}},
        {"wouldScaleTo": 6},
        ("shield", "fallback"),
    ),
    (
        "enforce",
        "Enforce",
        Verdict(desired=4, action="hold", reason="OK", model_decided=True),
        {"shield_record": {"lastApplied": 4, "proposals": [[NOW, 6]]}},
        {
            "reason": "OK",
            "desiredReplicas": 4,
            "shield": {"lastApplied": 4, "proposals": [[NOW, 6]]},
        },
        ("wouldScaleTo", "fallback"),
    ),
    (
        "no-count",
        "Enforce",
        Verdict(desired=None, action="hold", reason="METRICS_MISSING"),
        {"o": obs(cpu=False)},
        {"reason": "METRICS_MISSING", "desiredReplicas": 5},  # the last count stays
        ("wouldScaleTo", "fallback", "shield"),
    ),
    (
        "fallback",
        "Enforce",
        Verdict(
            desired=6, action="hpa", reason="FALLBACK_ACTIVE", by_fallback=True, hpa_reason="X"
        ),
        {"fallback_since": NOW - 30, "o": obs(cpu=False)},
        {
            "reason": "FALLBACK_ACTIVE",
            "fallback": {"active": True, "since": iso(NOW - 30), "reason": "METRICS_MISSING"},
        },
        ("wouldScaleTo",),
    ),
    (
        "model-refused",
        "Enforce",
        Verdict(desired=4, action="hold", reason=""),
        {"model": None, "fallback_since": NOW},
        {
            "reason": "MODEL_REFUSED",
            "model": {"name": "default"},
            "fallback": {"active": True, "since": iso(NOW), "reason": "MODEL_REFUSED"},
        },
        (),
    ),
    (
        "stale",
        "Enforce",
        Verdict(desired=4, action="hold", reason="METRICS_STALE"),
        {"fallback_since": NOW},
        {"fallback": {"active": True, "since": iso(NOW), "reason": "METRICS_STALE"}},
        (),
    ),
    (
        "outside-scale-and-action",
        "Enforce",
        Verdict(desired=5, action="plus_1", reason="OK", model_decided=True),
        {"outside": (2, 4), "last": {"to": 5}},
        {
            "lastOutsideScale": {"from": 2, "to": 4, "time": iso(NOW)},
            "lastAction": {"to": 5},
            "model": {"name": "busy", "sha256": DIGEST, "specHash": "spec1"},
        },
        (),
    ),
]


@pytest.mark.parametrize(
    ("case", "mode", "verdict", "extra", "want", "gone"), DECIDED, ids=[c[0] for c in DECIDED]
)
def test_decided_status(case, mode, verdict, extra, want, gone):
    kw = {
        "model": MODEL,
        "o": obs(),
        "last": None,
        "outside": None,
        "fallback_since": None,
        "shield_record": None,
    } | extra
    st = decided_status(
        base_status(OLD, G),
        spec=spec(mode=mode),
        generation=G,
        replicas=4,
        model=kw["model"],
        model_error="",
        obs=kw["o"],
        verdict=verdict,
        last=kw["last"],
        outside=kw["outside"],
        fallback_since=kw["fallback_since"],
        shield_record=kw["shield_record"],
        now=NOW,
    )
    assert {k: st.get(k) for k in want} == want
    assert [k for k in gone if k in st] == []
    assert st["observedGeneration"] == G and st["replicas"] == 4
    types = {c["type"] for c in st["conditions"]}
    assert {"Ready", "ModelReady", "MetricsAvailable", "ScalingActive", "ScalingLimited"} <= types
    assert all(c["observedGeneration"] == G for c in st["conditions"])


def test_decided_status_leaves_its_input_alone():
    old = base_status(OLD, G)
    before = repr(old)
    decided_status(
        old,
        spec=spec(mode="Off"),
        generation=G,
        replicas=4,
        model=MODEL,
        model_error="",
        obs=obs(),
        verdict=Verdict(),
        last=None,
        outside=None,
        fallback_since=None,
        shield_record={"proposals": [[NOW, 6]]},
        now=NOW,
    )
    assert repr(old) == before


@pytest.mark.parametrize("reason", [OpReason.INVALID_SPEC, OpReason.TARGET_MISSING])
def test_problem_status(reason):
    st = problem_status(base_status(OLD, G), G, reason, "why", NOW)
    assert st["reason"] == reason.value
    # nothing decided, and no replica count from a target that is not observed
    assert [k for k in ("desiredReplicas", "wouldScaleTo", "fallback", "replicas") if k in st] == []
    assert by_type(st["conditions"]) == {
        "Ready": ("False", reason.value, "why"),
        "MetricsAvailable": ("Unknown", reason.value, "no target to observe"),
        "ScalingActive": ("False", reason.value, "why"),
    }


@pytest.mark.parametrize(
    ("model", "ref", "want"),
    [
        (MODEL, {}, {"name": "busy", "sha256": DIGEST, "specHash": "spec1"}),
        (None, {}, {"name": "default"}),
        (
            None,
            {"model": {"configMapRef": {"name": "m"}, "sha256": "0" * 64}},
            {"name": "m", "sha256": "0" * 64},
        ),
    ],
)
def test_model_status(model, ref, want):
    assert model_status(spec(**ref), model) == want


@pytest.mark.parametrize(
    ("mode", "model", "want"),
    [("Enforce", None, "MODEL_REFUSED"), ("Off", None, ""), ("Shadow", MODEL, "")],
)
def test_model_problem(mode, model, want):
    assert model_problem(spec(mode=mode), model) == want


Q = [float(i) for i in range(actions.N_ACTIONS)]


@pytest.mark.parametrize(
    ("verdict", "applied", "want"),
    [
        (
            Verdict(desired=4, action="busy_at_65", reason="OK", q_values=Q, model_decided=True),
            True,
            {"summary": "2->4 busy_at_65", "applied": True, "q": True},
        ),
        (
            Verdict(desired=4, action="busy_at_65", reason="OK", q_values=Q, model_decided=True),
            False,
            {"summary": "2->4 busy_at_65 (shadow)", "applied": False, "q": True},
        ),
        (
            Verdict(
                desired=3, action="hpa", reason="FALLBACK_ACTIVE", by_fallback=True, q_values=Q
            ),
            True,
            {"summary": "2->3 hpa", "applied": True, "q": False},
        ),
    ],
    ids=["applied", "shadow", "fallback-has-no-q-values"],
)
def test_last_action(verdict, applied, want):
    a = last_action(2, verdict, NOW, applied)
    assert a["from"] == 2 and a["to"] == verdict.desired and a["time"] == iso(NOW)
    assert (a["summary"], a["applied"], "qValues" in a) == (
        want["summary"],
        want["applied"],
        want["q"],
    )
    assert a["action"] == verdict.action and a["reason"] == verdict.reason
    if want["q"]:
        assert a["qValues"] == dict(zip(actions.ACTION_NAMES, Q, strict=True))


@pytest.mark.parametrize(
    ("prev", "recorded"),
    [
        (None, True),
        ({"from": 2, "to": 4, "action": "plus_2", "applied": False}, False),
        ({"from": 2, "to": 4, "action": "plus_2", "applied": True}, True),
        ({"from": 2, "to": 5, "action": "plus_2", "applied": False}, True),
        ({"from": 3, "to": 4, "action": "plus_2", "applied": False}, True),
    ],
    ids=["first", "same-again", "was-applied", "other-count", "other-start"],
)
def test_a_shadow_step_is_recorded_once(prev, recorded):
    status = {"lastAction": prev} if prev else {}
    got = shadow_action(status, 2, Verdict(desired=4, action="plus_2", reason="OK"), NOW)
    assert (got is not None) == recorded


@pytest.mark.parametrize(
    ("verdict", "model", "cpu", "want"),
    [
        (
            Verdict(desired=4, action="busy_at_65", reason="OK", model_decided=True),
            MODEL,
            0.9,
            Notice("Normal", "OK", f"scaled web 2 -> 4 (busy_at_65, model busy {DIGEST[:8]})"),
        ),
        (
            Verdict(
                desired=4, action="hpa", reason="FALLBACK_ACTIVE", by_fallback=True, hpa_reason="Up"
            ),
            MODEL,
            0.9,
            Notice(
                "Normal",
                "FALLBACK_ACTIVE",
                "scaled web 2 -> 4 by the HPA rule (Up, CPU 90% of 70%)",
            ),
        ),
        (
            Verdict(
                desired=4, action="hpa", reason="FALLBACK_ACTIVE", by_fallback=True, hpa_reason="Up"
            ),
            None,
            math.nan,
            Notice(
                "Normal",
                "FALLBACK_ACTIVE",
                "scaled web 2 -> 4 by the HPA rule (Up, CPU unknown of 70%)",
            ),
        ),
        (
            Verdict(desired=1, action="hold", reason="MODEL_REFUSED"),
            None,
            0.1,
            Notice("Normal", "MODEL_REFUSED", "scaled web 2 -> 1 (MODEL_REFUSED)"),
        ),
    ],
    ids=["model", "hpa", "hpa-no-cpu", "bound-without-model"],
)
def test_scaled_notice(verdict, model, cpu, want):
    assert scaled_notice(spec(), model, obs(cpu_utilization=cpu), verdict, 2) == want


@pytest.mark.parametrize(
    ("model", "o", "reason", "code", "message"),
    [
        (None, obs(), "", "MODEL_REFUSED", "MODEL_REFUSED: bad pin"),
        (MODEL, obs(cpu=False), "", "METRICS_MISSING", "METRICS_MISSING"),
        (MODEL, obs(cpu=False), "AT_MAX", "METRICS_MISSING", "AT_MAX"),
        (MODEL, obs(), "METRICS_STALE", "METRICS_STALE", "METRICS_STALE"),
    ],
    ids=["refused", "missing", "bound-without-metrics", "stale"],
)
def test_failure(model, o, reason, code, message):
    assert failure_code(model, o) == code
    assert failure_message(model, "bad pin", reason) == message


def test_the_other_notices():
    s = spec(fallback={"targetUtilization": 80})
    assert outside_notice(s, (4, 9)) == Notice(
        "Normal",
        "OUTSIDE_SCALE",
        "web was scaled 4 -> 9 by someone else (a scale event for the cooldowns)",
    )
    assert fallback_notice(s, 3, "METRICS_MISSING") == Notice(
        "Warning",
        "FALLBACK_ACTIVE",
        "3 ticks without a model decision (METRICS_MISSING): the HPA rule at 80% CPU takes over",
    )
    assert scale_failed_notice(s, 5, "500 boom") == Notice(
        "Warning", "SCALE_FAILED", "scale web to 5: 500 boom"
    )
    assert Notice("Normal", "FALLBACK_ENDED", "the model decides again") == FALLBACK_ENDED
