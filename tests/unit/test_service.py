"""The service model's step: a queue carried in drains flat out before the step settles."""

from __future__ import annotations

import torch

from qscale import service

F64 = torch.float64
TIMEOUT = 10.0


def _t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


def _fine_p95(backlog, rate, ready, capacity, stime, dt=15.0, sub=15):
    """p95 over a ``dt`` step played as ``sub`` shorter steps of the same model (every
    request weighed by the sub-step that served it), from a fine histogram."""
    bounds = torch.logspace(-3, 1.05, 4000, dtype=F64)
    h = dt / sub
    b, mass, total = backlog, 0.0, 0.0
    for _ in range(sub):
        f, lat = service.serve(rate * h, b, ready, capacity, stime, h, TIMEOUT)
        mass = mass + service.step_cdf(lat, bounds, TIMEOUT) * f.served[:, None]
        total = total + f.served
        b = f.backlog
    cdf = mass / total[:, None]
    return bounds[(cdf >= 0.95).to(torch.int64).argmax(dim=1)]


def test_a_drained_queue_costs_what_finer_steps_of_the_same_model_say():
    # 8 pods of 50 req/s after an overload: queues of 50-900 requests meet 100-380 req/s
    backlog = _t(300.0, 100.0, 900.0, 50.0, 0.0)
    rate = _t(308.0, 380.0, 200.0, 100.0, 300.0)
    ready, cap, stime = _t(*[8.0] * 5), _t(*[50.0] * 5), _t(*[0.05] * 5)
    f, lat = service.serve(rate * 15.0, backlog, ready, cap, stime, 15.0, TIMEOUT)
    fine = _fine_p95(backlog, rate, ready, cap, stime)
    assert torch.allclose(f.p95_s, fine, rtol=0.05), (f.p95_s, fine)
    # the first three drain for 2-5 s of the 15 with the pods flat out: over a 300 ms SLO,
    # as finer steps say; one utilization for the whole step read them as 0.15-0.29 s
    assert (f.p95_s[:3] > 0.3).all() and (fine[:3] > 0.3).all()
    assert (lat.drain_share[:4] > 0).all() and lat.drain_share[4] == 0
    assert (f.backlog == 0).all() and torch.allclose(f.served, backlog + rate * 15.0)


def test_the_mixture_p95_solves_the_mixture():
    g = torch.Generator().manual_seed(0)
    n = 5000
    ready = torch.randint(1, 30, (n,), generator=g).to(F64)
    cap = 10.0 + 90.0 * torch.rand(n, generator=g, dtype=F64)
    stime = 0.01 + 0.2 * torch.rand(n, generator=g, dtype=F64)
    rate = torch.rand(n, generator=g, dtype=F64) * ready * cap
    backlog = 2000.0 * torch.rand(n, generator=g, dtype=F64)
    f, lat = service.serve(rate * 15.0, backlog, ready, cap, stime, 15.0, TIMEOUT)
    share = lat.drain_share
    kf, ks = service._terms(lat.flat_out), service._terms(lat.steady)

    def survival(y):
        yf = torch.clamp(y - lat.flat_out.drain_s, min=0.0)
        gf, _ = service._survival(yf, kf, density=False)
        gs, _ = service._survival(y, ks, density=False)
        return share * gf + (1.0 - share) * gs

    lo, hi = torch.zeros(n, dtype=F64), torch.full((n,), 50.0, dtype=F64)
    for _ in range(100):  # bisection
        mid = (lo + hi) / 2
        above = survival(mid) > 0.05
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    want = torch.clamp(lat.steady.drain_s + lo, max=TIMEOUT)
    mixed = share > 0
    assert mixed.sum() > 1000
    assert torch.allclose(f.p95_s[mixed], want[mixed], rtol=0.01)


def test_without_a_queue_to_drain_the_step_is_one_phase():
    # no queue carried in, or an overload that ends with one: exactly the single model
    backlog = _t(0.0, 0.0, 500.0, 500.0)
    rate = _t(100.0, 450.0, 420.0, 900.0)
    ready, cap, stime = _t(*[8.0] * 4), _t(*[50.0] * 4), _t(*[0.05] * 4)
    f, lat = service.serve(rate * 15.0, backlog, ready, cap, stime, 15.0, TIMEOUT)
    assert (lat.drain_share == 0).all()
    assert torch.equal(f.p95_s, service.latency_p95(lat.steady, TIMEOUT))
    bounds = torch.tensor(service.DEFAULT_BUCKETS, dtype=F64)
    assert torch.equal(
        service.step_cdf(lat, bounds, TIMEOUT), service.latency_cdf(lat.steady, bounds, TIMEOUT)
    )
    assert (f.backlog[2:] > 0).all() and (f.p95_s[1:] > 1.0).all()


def test_solving_only_the_drained_rows_equals_solving_every_row(monkeypatch):
    # eager solves the mixture on the rows that drain a queue; compiled, on every row (no
    # value-dependent shapes): the same numbers either way
    backlog = _t(300.0, 0.0, 900.0, 500.0, 50.0)
    rate = _t(308.0, 300.0, 200.0, 420.0, 100.0)
    ready, cap, stime = _t(*[8.0] * 5), _t(*[50.0] * 5), _t(*[0.05] * 5)
    bounds = torch.tensor(service.DEFAULT_BUCKETS, dtype=F64)
    f, lat = service.serve(rate * 15.0, backlog, ready, cap, stime, 15.0, TIMEOUT)
    cdf = service.step_cdf(lat, bounds, TIMEOUT)
    assert (lat.drain_share > 0).tolist() == [True, False, True, False, True]
    monkeypatch.setattr(service, "_drained_rows", lambda lat: None)
    f_all, lat_all = service.serve(rate * 15.0, backlog, ready, cap, stime, 15.0, TIMEOUT)
    assert torch.equal(f.p95_s, f_all.p95_s)
    assert torch.equal(cdf, service.step_cdf(lat_all, bounds, TIMEOUT))
