"""The rule floor (issue #15 §2.1): every single action, the KEDA rule settings and a trained
model on the training run's own validation clusters, split by whether the policy declares its
pods' capacity -- what the demonstrations were chosen from, and how far a model sits from them.

How the figures are computed: ``qscale.policy.train.validate`` on ``validation_set`` of the
default ``TrainConfig`` (256 clusters drawn with seed 12345 on the validation split, 2 h windows;
``score`` = mean episode return, the quantity training maximizes), once with every cluster
declaring its capacity and once with none declaring it. A "constant" row is a network that
always prefers one action (``decide()`` and the training shield as served); the ``rate``
rows are the KEDA rule (``KedaController``: true capacity x target, scale-down window). For a
model, the share of its decisions whose greedy action is not the demonstrated floor
(``TrainConfig.demo_action`` where declared, ``demo_action_cpu`` where not).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_rule_floor.py [--model DIR|CHECKPOINT.pt]``
(about 2 min on one core).

``--eval-profile``: the single actions instead on ``qscale evaluate``'s profile, its validation
split (24 h windows, seed 0): every sizing action with the policy declaring the pods' capacity,
the CPU-only ones declaring none; each played constantly through ``decide()`` and the shield,
with its return (the model's reward summed over the windows) and its hull ratio against the
rule grid on the same windows (ex post, as ``qscale evaluate --split val`` shows it) -- what
``demo_action`` and ``demo_action_cpu`` are chosen on (``--groups``, ``--actions``: some of them;
``--down-stabilization S``: through a shield with that scale-down stabilization window).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

import torch

from qscale import actions, decision, features
from qscale.policy.controller import DQNController
from qscale.policy.train import TrainConfig, validate, validation_set
from qscale.simulator.baselines.keda import KedaController
from qscale.simulator.evaluate import EvalPlan, EvalProfile, compare, evaluate
from qscale.simulator.splits import shared_trace_files
from qscale.simulator.tracebank import TraceBank


def _constant(obs: torch.Tensor, i: int) -> torch.Tensor:
    q = torch.zeros(obs.shape[0], actions.N_ACTIONS)
    q[:, i] = 1.0
    return q


class _Constant(torch.nn.Module):
    """A network that always prefers action ``i``."""

    def __init__(self, i: int) -> None:
        super().__init__()
        self.i = i

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return _constant(obs, self.i)


def eval_profile_floors(
    groups: tuple[bool, ...] = (True, False), only: tuple[str, ...] = ()
) -> int:
    """The single sizing actions on the evaluation profile's validation split: all of them
    with a capacity declared, the CPU-only ones without (``only``: just these)."""
    paths = shared_trace_files()
    if not paths:
        raise SystemExit("no shared traces (set QSCALE_TRACES_DIR)")
    print("| constant action | capacity | return | cost (rh) | SLO min | hull ratio |")
    print("|---|---|---|---|---|---|")
    for declared in groups:
        profile = EvalProfile(capacity_declared=declared)
        bank = TraceBank.from_files(paths, split="val", dt=profile.dt)
        plan = EvalPlan(
            traces=tuple(paths), split="val", seeds=(0,), controllers=("dqn",), profile=profile,
            bootstrap=0,
        )  # fmt: skip
        for i, a in enumerate(actions.ACTIONS):
            if a.kind == "step" or (not declared and a.kind in actions.RATE_KINDS):
                continue
            if only and a.name not in only:
                continue
            make = partial(DQNController, _Constant(i), name="dqn")
            cpu = torch.device("cpu")
            rep = compare(plan, bank, cpu, make, {"constant": a.name}, progress=False)
            r = next(r for r in rep.rows if r["family"] == "ALL" and r["controller"] == "dqn")
            print(
                f"| {a.name} | {'declared' if declared else 'none'} | {r['return']:,.0f} | "
                f"{r['cost']:,.1f} | {r['slo']:,.1f} | {r['ratio']:.3f} |",
                flush=True,
            )
    return 0


def _with_down_stabilization(seconds: float) -> None:
    """Every evaluation of this process plays the policy through a shield with this scale-down
    stabilization window (the rules bring their own windows and are not affected)."""
    from qscale.guardrails import ShieldConfig

    shield = replace(ShieldConfig(), down_stabilization_s=seconds)
    made = EvalProfile.sim_config

    def sim_config(self, base=None):
        return replace(made(self, base), shield=shield)

    EvalProfile.sim_config = sim_config


def _network(src: str):
    if src.endswith(".pt"):
        from qscale.policy.network import QNetwork

        ck = torch.load(src, map_location="cpu", weights_only=False)
        sizes = tuple(ck["config"]["hidden_sizes"])
        net = QNetwork(features.N_FEATURES, actions.N_ACTIONS, sizes)
        net.load_state_dict(ck["q_network"])
        return net.eval(), f"checkpoint at step {ck['global_step']}"
    from qscale.policy.artifact import load_policy
    from qscale.policy.default import default_model_path

    path = default_model_path() if src == "default" else src
    return load_policy(path).module, str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="default", help="artifact dir, checkpoint .pt, default or none"
    )
    ap.add_argument("--no-rules", action="store_true", help="the model's rows only")
    ap.add_argument(
        "--eval-profile", action="store_true",
        help="the single actions on qscale evaluate's validation windows, with and without a "
        "declared capacity",
    )  # fmt: skip
    ap.add_argument(
        "--groups", choices=("both", "declared", "none"), default="both",
        help="--eval-profile: with a declared capacity, without, or both",
    )  # fmt: skip
    ap.add_argument(
        "--actions", default="", help="--eval-profile: only these actions (comma-separated)"
    )
    ap.add_argument(
        "--down-stabilization", type=float, default=None, metavar="S",
        help="--eval-profile: the shield's scale-down stabilization window, s (default: the "
        "ShieldConfig default the models train with)",
    )  # fmt: skip
    args = ap.parse_args()
    if args.down_stabilization is not None:
        _with_down_stabilization(args.down_stabilization)
    only = tuple(a for a in args.actions.split(",") if a)
    unknown = [a for a in only if a not in actions.ACTION_NAMES]
    if unknown:
        ap.error(f"--actions: unknown {', '.join(unknown)}")
    torch.set_num_threads(1)
    if args.eval_profile:
        return eval_profile_floors(
            {"both": (True, False), "declared": (True,), "none": (False,)}[args.groups],
            only,
        )
    params, win = validation_set(TrainConfig())
    groups = {
        "declared": replace(params, capacity_declared=torch.ones_like(params.ingress)),
        "none declared": replace(params, capacity_declared=torch.zeros_like(params.ingress)),
    }
    print("| row | capacity | score | cost (rh) | SLO min |")
    print("|---|---|---|---|---|")

    def row(name: str, group: str, m: dict) -> None:
        cost, slo = m["cost_replica_hours"], m["slo_violation_minutes"]
        print(f"| {name} | {group} | {m['score']:.1f} | {cost:.2f} | {slo:.2f} |", flush=True)

    if args.model != "none":
        net, label = _network(args.model)
        cfg = TrainConfig()
        # -1: no floor there (demo_action_cpu none), every decision counts as its own
        floors = [
            actions.ACTION_NAMES.index(a) if a != "none" else -1
            for a in (cfg.demo_action_cpu, cfg.demo_action)
        ]
        seen = {"decisions": 0, "departures": 0}

        def q(obs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = net(obs)
            declared = features.capacity_declared(obs)
            chosen = decision.greedy(out, actions.available(declared))
            floor = torch.where(declared, floors[1], floors[0])
            seen["decisions"] += obs.shape[0]
            seen["departures"] += int((chosen != floor).sum())
            return out

        for (group, p), floor in zip(groups.items(), reversed(floors), strict=True):
            seen.update(decisions=0, departures=0)
            row(f"model ({label})", group, validate(q, p, win))
            share = seen["departures"] / max(seen["decisions"], 1)
            if floor >= 0:
                print(f"|  | departs from its floor on {share:.2%} of decisions | | | |")
    if args.no_rules:
        return 0
    for i, a in enumerate(actions.ACTIONS):
        needs = a.kind in actions.RATE_KINDS
        group = "declared" if needs else "none declared"
        row(f"constant {a.name}", group, validate(partial(_constant, i=i), groups[group], win))
    for frac in (0.6, 0.7, 0.8):
        for w in (300.0, 900.0, 1800.0):
            ctrl = {"k": partial(KedaController, frac, w)}
            ev = evaluate(ctrl, groups["declared"], win, timelines=False)
            row(f"rate {frac:.0%} w{w:.0f}", "(rule)", ev.means("k"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
