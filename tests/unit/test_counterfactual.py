"""Shadow scoring (qscale.counterfactual): a cluster played by the service model itself, so the
estimate must find that service again and tell the arms apart the way the model says."""

from __future__ import annotations

import math

import pytest
import torch

from qscale import service
from qscale.counterfactual import Sample, score

MU, SVC, SLO, DT = 50.0, 0.05, 0.3, 15.0
HOUR = 3600.0


def p95(rate: float, ready: float, mu: float = MU, svc: float = SVC) -> float:
    v = float(
        service.p95_no_backlog(
            torch.tensor([rate], dtype=torch.float64),
            torch.tensor([ready], dtype=torch.float64),
            torch.tensor([mu], dtype=torch.float64),
            torch.tensor([svc], dtype=torch.float64),
        )[0]
    )
    return 10.0 if math.isinf(v) else v


def sized(rate: float, target: float = 0.7) -> float:
    return float(max(1, math.ceil(rate / (MU * target))))


def play(load, incumbent, candidate, ready_lag: int = 0, t0: float = 1000.0):
    """Samples of a window: ``load(i)`` req/s, the arms' counts by tick; the incumbent's pods
    turn ready ``ready_lag`` ticks after it adds them; its p95 measured by the same model."""
    out, counts = [], []
    for i in range(int(HOUR / DT)):
        rate, n = load(i), incumbent(i)
        counts.append(n)
        ready = min(counts[max(0, i - ready_lag) :]) if ready_lag else n
        busy = min(rate, ready * MU) / MU
        out.append(Sample(t0 + i * DT, rate, n, ready, busy, p95(rate, ready), candidate(i)))
    return out


def run(samples, **kw):
    now = samples[-1].t
    return score(samples, now=now, window_s=HOUR, slo_s=SLO, interval_s=DT, **kw)


def ramp(i: int) -> float:
    return 100.0 + 300.0 * i / 240


def test_the_service_is_found_again_and_more_pods_trade_cost_for_slo():
    s = run(play(ramp, lambda i: 4.0, lambda i: sized(ramp(i))))
    assert s.capacity_rps == pytest.approx(MU, rel=1e-6)
    assert s.service_time_s == pytest.approx(SVC, rel=0.05)  # p95 at low load: ~ s ln 20
    # The incumbent's estimated SLO minutes are its measured ones: the same model played it.
    assert s.incumbent.slo_minutes == pytest.approx(s.incumbent_measured_slo_minutes, abs=0.3)
    assert s.incumbent.slo_minutes > 20 and s.candidate.slo_minutes == 0
    assert s.candidate.replica_hours > s.incumbent.replica_hours == pytest.approx(4.0, rel=0.01)
    assert s.d_slo_minutes[1] < 0 < s.d_replica_hours[0]
    assert s.verdict == "TRADE_OFF"


def test_the_same_choices_are_no_difference():
    s = run(play(ramp, lambda i: sized(ramp(i)), lambda i: sized(ramp(i))))
    assert s.verdict == "NO_DIFFERENCE"
    assert s.d_replica_hours == (0.0, 0.0) and s.d_slo_minutes == (0.0, 0.0)


def test_fewer_pods_that_still_hold_the_slo_are_better():
    s = run(play(ramp, lambda i: 12.0, lambda i: sized(ramp(i))))
    assert s.candidate.slo_minutes == s.incumbent.slo_minutes == 0
    assert s.d_replica_hours[1] < 0
    assert s.verdict == "CANDIDATE_BETTER"


def test_more_pods_that_miss_the_peak_are_worse():
    def spiky(i: int) -> float:  # a peak of 30 s every 2 minutes
        return 600.0 if i % 8 < 2 else 60.0

    s = run(play(spiky, lambda i: sized(spiky(i)), lambda i: 11.0))
    assert s.candidate.slo_minutes > 5 and s.incumbent.slo_minutes == 0
    assert s.candidate.replica_hours > s.incumbent.replica_hours
    assert s.verdict == "INCUMBENT_BETTER"


def test_the_start_up_delay_is_the_incumbents_pending_time_per_pod_added():
    samples = play(ramp, lambda i: sized(ramp(i)), lambda i: sized(ramp(i)) + 1, ready_lag=4)
    s = run(samples)
    assert s.startup_observed
    assert s.startup_s == pytest.approx(4 * DT, rel=0.35)
    # A candidate's added pod counts only after that delay: adding late costs SLO minutes.
    s0 = run(play(ramp, lambda i: 8.0, lambda i: sized(ramp(i))))
    assert not s0.startup_observed and s0.startup_s == 30.0
    s1 = run(play(ramp, lambda i: sized(ramp(i)), lambda i: 8.0))
    assert s1.startup_observed and s1.startup_s == 0.0  # it added pods, ready at once


def test_a_model_that_misses_the_measurement_widens_the_slo_interval():
    samples = play(ramp, lambda i: 10.0, lambda i: sized(ramp(i)))
    # The service is slower than the model thinks late in the window (a dependency slowed):
    # the incumbent measured misses the estimate does not see.
    slowed = [
        Sample(
            s.t, s.rate, s.replicas, s.ready, s.busy, s.p95_s * (3 if k > 200 else 1), s.candidate
        )
        for k, s in enumerate(samples)
    ]
    a, b = run(samples), run(slowed)
    assert b.model_error_minutes > 5
    assert b.d_slo_minutes[0] <= a.d_slo_minutes[0] - 5
    assert b.d_slo_minutes[1] >= a.d_slo_minutes[1] + 5


def test_too_little_to_go_on_is_insufficient_data():
    samples = play(ramp, lambda i: 4.0, lambda i: 5.0)
    half = samples[: len(samples) // 3]
    s = score(half, now=half[-1].t, window_s=HOUR, slo_s=SLO, interval_s=DT)
    assert s.verdict == "INSUFFICIENT_DATA" and "window" in s.message
    idle = [Sample(s.t, 0.0, 2, 2, 0.0, 0.01, 2) for s in samples]
    assert "capacity" in run(idle).message and run(idle).verdict == "INSUFFICIENT_DATA"
    blind = [Sample(s.t, s.rate, s.replicas, s.ready, s.busy, math.nan, 5) for s in samples]
    assert "latency" in run(blind).message
    # A gap in the samples is not time: two halves 20 minutes apart cover 40 minutes.
    gap = samples[:80] + samples[160:]
    assert run(gap).covered_s == pytest.approx(160 * DT + 2 * DT, abs=DT)


def test_the_status_carries_both_arms_and_the_intervals():
    st = run(play(ramp, lambda i: 4.0, lambda i: sized(ramp(i)))).as_status()
    assert st["verdict"] == "TRADE_OFF" and st["samples"] == 240
    assert set(st) >= {"candidate", "incumbent", "difference", "service", "message"}
    assert st["incumbent"]["measuredSloMinutes"] > 0
    lo, hi = st["difference"]["sloMinutes"]
    assert lo <= hi < 0
    assert run(play(ramp, lambda i: 4.0, lambda i: 5.0)[:10]).as_status().keys() == {
        "verdict",
        "message",
        "windowSeconds",
        "coveredSeconds",
        "samples",
        "service",
    }
