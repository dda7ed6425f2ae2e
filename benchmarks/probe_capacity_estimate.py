"""How close the per-pod capacity estimate is (issue #15 §2.3), in the simulator and live.

``--sim``: the shipped model deciding on the evaluation profile's windows with no capacity
declared and the estimate on (``EvalProfile(capacity_declared=False, capacity_estimated=True)``,
one seed); every 4th decision, the estimate over the true capacity, and the share of decisions
with an estimate.

``--live``: the operator (``qscale operator``, the shipped model, its decision log) on the bench
stack of ``benchstack.py`` (a local control plane, the emulator at 50 req/s per pod, real
Prometheus): three Deployments whose policies declare no capacity, under a constant load, a
ramp and a step, for ``--minutes``; per Deployment, from the decision log, the share of its
decisions with an estimate after the first ten minutes (the estimate needs ten points of the
30-minute range, a minute apart) and the estimate over the emulator's capacity.

Usage: ``python benchmarks/probe_capacity_estimate.py --sim [--split val]`` (about 5 minutes on
2 cores) or ``--live [--minutes 16]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def sim(split: str) -> None:
    from qscale import cli
    from qscale.policy.artifact import load_policy
    from qscale.policy.controller import DQNController
    from qscale.policy.default import default_model_path
    from qscale.simulator import env as sim_env
    from qscale.simulator import evaluate as ev
    from qscale.simulator.tracebank import TraceBank

    paths, _ = cli._resolve_traces(["shared"])
    prof = ev.EvalProfile(capacity_declared=False, capacity_estimated=True)
    bank = TraceBank.from_files(paths, split=split, dt=prof.dt)
    params, win = ev.build(bank, prof, [0], window_steps=int(24 * 3600 / prof.dt))
    ctrl = DQNController(load_policy(default_model_path()).module)
    state, obs = sim_env.reset_fixed(params, *win.triple())
    ratios, have = [], []
    for t in range(int(state.ep_len.max())):
        live = t < state.ep_len
        state, obs, *_ = sim_env.step_greedy(state, ctrl.act(state, obs, params), params)
        cap = state.seen.capacity_rps[live]
        have.append(torch.isfinite(cap).float().mean().item())
        if t % 4 == 0:
            r = (cap / params.capacity[live])[torch.isfinite(cap)]
            ratios.append(r.numpy())
    r = np.concatenate(ratios)
    q = np.quantile(r, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    print(f"{split}: {params.n_envs} windows; decisions with an estimate {np.mean(have):.1%}")
    print("estimate / true, quantiles 1 5 25 50 75 95 99 %:", " / ".join(f"{x:.3f}" for x in q))


def live(minutes: float) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from benchstack import policy_body, start_stack

    loads = {
        "svc-0000": "80",
        "svc-0001": "ramp:0:40,600:160,1200:60",
        "svc-0002": "0:60,480:200",
    }
    work = Path(tempfile.mkdtemp(prefix="capest-"))
    st = start_stack(
        3,
        work,
        lambda n: policy_body(n, 15, 1, 10),
        lambda n: loads[n],
        pods_per_deployment=12,
    )
    log = work / "decisions.jsonl"
    try:
        t0 = time.time()
        st.start_operator({"QSCALE_DECISION_LOG": str(log)})
        time.sleep(60 * minutes)
    finally:
        st.close(keep=work / "logs")
    recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    for name in loads:
        mine = [r for r in recs if r["target"] == name and r["ts"] > t0 + 600]
        caps = [r["obs"]["capacity_rps"] for r in mine if r["obs"].get("capacity_rps")]
        share = len(caps) / max(1, len(mine))
        print(f"{name} ({loads[name]}): {len(mine)} decisions after 10 min, ", end="")
        print(f"{share:.0%} with an estimate", end="")
        if caps:
            rel = sorted(c / 50.0 for c in caps)
            print(
                f"; estimate / 50 req/s: median {statistics.median(rel):.3f}, "
                f"range {rel[0]:.3f}-{rel[-1]:.3f}"
            )
        else:
            print()
    print(f"logs: {work}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--live", action="store_true")
    ap.add_argument("--split", default="val")
    ap.add_argument("--minutes", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.sim:
        sim(args.split)
    if args.live:
        live(args.minutes)


if __name__ == "__main__":
    main()
