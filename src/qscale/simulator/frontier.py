"""The rule baselines as a frontier, not one tuned point.

A controller's result on a set of windows is a point (SLO-violation minutes, cost). For the
rules a platform team could deploy instead of qscale -- the HPA (target, scale-down window,
scale-up policies) and a KEDA-style request-rate rule (threshold, cooldown) -- we run a whole
grid (:func:`rule_grid`) on the very windows and seeds the policy is evaluated on and keep the
points no other point beats on both axes: the **Pareto frontier**. Tuning the rules on the test
windows themselves is generous to them, on purpose: the yardstick is the best any setting
could have done.

**Frontier ratio** of a policy at (slo, cost): ``cost / frontier_cost(slo)``, where
``frontier_cost`` interpolates linearly between neighbouring frontier points (mixing two
settings in time reaches any point between them) and is flat beyond the frontier's ends (no
rule setting does better than its lowest-SLO point or cheaper than its cheapest). Ratio < 1:
cheaper than any rule at the same SLO minutes. A policy is **dominated** when some rule setting
is no worse on both axes and better on one; to the left of the frontier (fewer SLO minutes
than any rule) a policy is never dominated, whatever its ratio.

Figures are per **family** (one trace file) and overall (each setting's totals over every
family: one setting for all services, as one model serves all). The unit of resampling is a
window (all its seeds together): :func:`bootstrap_ratio` gives a confidence interval across
windows.

The predictive peer (:class:`~qscale.simulator.baselines.PredictiveController`) is run on its
own small grid and reported beside the frontier (and in a frontier "with predictive").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from qscale import batching
from qscale.hpa import HPAConfig
from qscale.simulator import env as sim
from qscale.simulator.baselines import HPAController, KedaController, PredictiveController
from qscale.simulator.rollout import Controller, rollout

FRONTIER_VERSION = 1
"""Bumped whenever the simulator or a rule changes what a cached grid result means."""

HPA_TARGETS = (0.30, 0.45, 0.60, 0.70, 0.80, 0.90, 0.95)
"""CPU targets, as fractions of the pods' CPU limit (see :mod:`qscale.simulator.baselines`)."""
HPA_WINDOWS_S = (0.0, 120.0, 600.0, 1800.0)
"""Scale-down stabilization windows."""
HPA_SCALE_UP: dict[str, HPAConfig] = {
    "legacy": HPAConfig(),
    "fast": HPAConfig(behavior=True, scale_up_policies=(("Percent", 300, 15.0),)),
}
"""Scale-up paths: no ``behavior`` (x2 or +4 per sync, what ``kubectl autoscale`` gives; the
API's default ``behavior``, +100 % or +4 pods per 15 s, is within a pod of it at every size),
and a fast one (+300 % per 15 s)."""
RATE_TARGETS = HPA_TARGETS
"""Request-rate thresholds as fractions of a pod's capacity."""
RATE_COOLDOWNS_S = (0.0, 300.0, 900.0)
PREDICTIVE_TARGETS = (0.5, 0.65, 0.8, 0.9)

METRIC_KEYS = (
    "cost_replica_hours",
    "slo_violation_minutes",
    "scaling_actions",
    "dropped_requests",
    "arrivals",
    "episode_return",
)


@dataclass(frozen=True)
class Rule:
    """One setting of one rule family."""

    kind: str
    """``hpa``, ``rate`` or ``predictive``."""
    target: float
    window_s: float
    """Scale-down stabilization (HPA, predictive) or cooldown (rate rule)."""
    variant: str = ""
    """The HPA's scale-up path (a key of :data:`HPA_SCALE_UP`)."""

    @property
    def label(self) -> str:
        v = f" {self.variant}" if self.variant else ""
        return f"{self.kind}{v} {round(self.target * 100)}% w{int(self.window_s)}"


DEFAULT_RULES = {
    "hpa": Rule("hpa", 0.7, 300.0, "legacy"),
    "keda": Rule("rate", 0.7, 300.0),
    "predictive": Rule("predictive", 0.7, 300.0),
}
"""The baselines' default settings, each a setting of the rule grid (so its row costs no extra
rollout): the HPA as ``kubectl autoscale`` makes it, a KEDA-style rate rule, the predictive peer."""
DEFAULT_HPA = DEFAULT_RULES["hpa"]


def rule_grid(predictive: bool = True) -> list[Rule]:
    rules = [Rule("hpa", t, w, v) for v in HPA_SCALE_UP for w in HPA_WINDOWS_S for t in HPA_TARGETS]
    rules += [Rule("rate", t, w) for w in RATE_COOLDOWNS_S for t in RATE_TARGETS]
    if predictive:
        rules += [Rule("predictive", t, 300.0) for t in PREDICTIVE_TARGETS]
    return rules


def hpa_grid() -> list[Rule]:
    return [r for r in rule_grid(predictive=False) if r.kind == "hpa"]


def make_controller(
    rule: Rule, targets: torch.Tensor | float | None = None, cool=None
) -> Controller:
    """The controller of ``rule`` (``targets``/``cool``: per-env overrides for a batch)."""
    target = rule.target if targets is None else targets
    window = rule.window_s if cool is None else cool
    if rule.kind == "hpa":
        cfg = replace(HPA_SCALE_UP[rule.variant], scale_down_stabilization_s=float(rule.window_s))
        return HPAController(cfg, name=rule.label, target=target)
    if rule.kind == "rate":
        return KedaController(target_fraction=target, cooldown_s=window, name=rule.label)
    if rule.kind == "predictive":
        return PredictiveController(
            target_fraction=target, stabilization_s=rule.window_s, name=rule.label
        )
    raise ValueError(f"unknown rule kind {rule.kind!r}")


STORED_KEYS = (*METRIC_KEYS, "latency_counts")
"""What a rollout keeps per env: the metrics and the ``[K + 1]`` latency histogram."""


def _metrics_of(m) -> dict[str, np.ndarray]:
    return {k: getattr(m, k).detach().double().cpu().numpy() for k in STORED_KEYS}


def run_rules(
    rules: Sequence[Rule],
    params: sim.EnvParams,
    windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    progress: Callable[[str], None] | None = None,
) -> dict[Rule, dict[str, np.ndarray]]:
    """Per-env metrics of every rule on the windows ``reset_fixed(params, *windows)`` starts.

    Settings that differ only in per-env numbers (targets; the rate rule's cooldown) share one
    batched rollout, so the grid costs a handful of rollouts of a few thousand envs each.
    """
    groups: dict[tuple, list[Rule]] = {}
    for r in rules:
        key = (r.kind, r.variant, r.window_s) if r.kind in ("hpa", "predictive") else (r.kind,)
        groups.setdefault(key, []).append(r)
    n = params.n_envs
    out: dict[Rule, dict[str, np.ndarray]] = {}
    for key, members in groups.items():
        k = len(members)
        big = batching.cat([params] * k)
        dev = params.device
        targets = torch.tensor([r.target for r in members], device=dev).repeat_interleave(n)
        cool = torch.tensor([r.window_s for r in members], device=dev).repeat_interleave(n)
        ctrl = make_controller(members[0], targets=targets, cool=cool)
        state, obs = sim.reset_fixed(big, *(w.repeat(k) for w in windows))
        if progress is not None:
            progress(f"{' '.join(str(x) for x in key if x != '')}: {k} settings x {n} windows")
        m = _metrics_of(rollout(ctrl, big, state, obs))
        for i, r in enumerate(members):
            out[r] = {name: v[i * n : (i + 1) * n] for name, v in m.items()}
    return out


# --- the frontier ----------------------------------------------------------------------------


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """The (slo, cost, index) of points no other point beats on both axes, by rising SLO."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[tuple[float, float, int]] = []
    best = float("inf")
    for i in order:
        slo, cost = points[i]
        if cost < best - 1e-12:
            front.append((slo, cost, i))
            best = cost
    return front


def frontier_cost(front: Sequence[tuple[float, float, int]], slo: float) -> float:
    """The frontier's cost at ``slo`` SLO minutes (linear between points, flat beyond)."""
    if not front:
        return float("nan")
    if slo <= front[0][0]:
        return front[0][1]
    for (s0, c0, _), (s1, c1, _) in itertools.pairwise(front):
        if slo <= s1:
            return c0 + (c1 - c0) * (slo - s0) / (s1 - s0) if s1 > s0 else min(c0, c1)
    return front[-1][1]


def dominated(points: Sequence[tuple[float, float]], slo: float, cost: float) -> bool:
    """Whether some point is no worse on both axes and better on one."""
    return any((s <= slo and c <= cost) and (s < slo - 1e-9 or c < cost - 1e-9) for s, c in points)


@dataclass
class FrontierPoint:
    slo: float
    cost: float
    label: str


@dataclass
class FamilyFrontier:
    """One family's (or ``ALL``'s) rule points, its frontier and a policy's place against it."""

    family: str
    points: list[FrontierPoint]
    front: list[FrontierPoint]

    def ratio(self, slo: float, cost: float) -> dict:
        pts = [(p.slo, p.cost) for p in self.points]
        raw = pareto(pts)
        fc = frontier_cost(raw, slo)
        return {
            "frontier_cost": fc,
            "ratio": cost / fc if fc > 0 else float("nan"),
            "dominated": dominated(pts, slo, cost),
            "left_of_frontier": bool(raw) and slo < raw[0][0],
        }


def unit_totals(
    metrics: dict[str, np.ndarray], unit: np.ndarray, n_units: int, n_seeds: int
) -> dict[str, np.ndarray]:
    """Per-unit (window) sums of per-env metrics, divided by the seeds: each unit's value is
    the mean over seeds of that window's total."""
    return {
        k: np.bincount(unit, weights=metrics[k], minlength=n_units) / n_seeds for k in METRIC_KEYS
    }


def family_frontiers(
    per_rule: dict[str, dict[str, np.ndarray]],
    family_of_unit: np.ndarray,
    families: Sequence[str],
    weights: np.ndarray | None = None,
) -> dict[str, FamilyFrontier]:
    """Frontiers per family and ``ALL`` from per-unit totals (``weights``: unit multiplicities,
    for a bootstrap resample)."""
    w = np.ones(len(family_of_unit)) if weights is None else weights
    out = {}
    for fam in [*families, "ALL"]:
        sel = w * (1.0 if fam == "ALL" else (family_of_unit == families.index(fam)))
        pts = [
            FrontierPoint(
                float(v["slo_violation_minutes"] @ sel), float(v["cost_replica_hours"] @ sel), label
            )
            for label, v in per_rule.items()
        ]
        raw = pareto([(p.slo, p.cost) for p in pts])
        out[fam] = FamilyFrontier(fam, pts, [pts[i] for _, _, i in raw])
    return out


def bootstrap_ratio(
    per_rule: dict[str, dict[str, np.ndarray]],
    policy: dict[str, np.ndarray],
    family_of_unit: np.ndarray,
    families: Sequence[str],
    n: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95 % interval of the frontier ratio per family and overall, resampling windows (with
    replacement, within each family) together for the rules and the policy."""
    rng = np.random.default_rng(seed)
    ratios: dict[str, list[float]] = {f: [] for f in [*families, "ALL"]}
    for _ in range(n):
        w = np.zeros(len(family_of_unit))
        for fi in range(len(families)):
            idx = np.flatnonzero(family_of_unit == fi)
            if idx.size:
                w += np.bincount(rng.choice(idx, size=idx.size), minlength=len(w))
        fr = family_frontiers(per_rule, family_of_unit, families, w)
        for fam, ff in fr.items():
            sel = w * (1.0 if fam == "ALL" else (family_of_unit == families.index(fam)))
            r = ff.ratio(
                float(policy["slo_violation_minutes"] @ sel),
                float(policy["cost_replica_hours"] @ sel),
            )
            ratios[fam].append(r["ratio"])
    return {
        f: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
        for f, v in ratios.items()
    }


# --- caching ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$QSCALE_CACHE_DIR`` or ``~/.cache/qscale``: grid results, keyed by what they depend on."""
    root = os.environ.get("QSCALE_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "qscale"


def code_fingerprint() -> str:
    """sha256 over the source of everything a grid result depends on (the simulator, the rules,
    the HPA, the shield; not the policy's features, the CLI or the plots), so a cached result
    never outlives a change to the code that made it."""
    import qscale

    root = Path(qscale.__file__).parent
    sim_dir = root / "simulator"
    files = [root / "hpa.py", root / "guardrails.py", *(sim_dir / "baselines").glob("*.py")]
    files += [p for p in sim_dir.glob("*.py") if p.name not in ("plots.py", "gym_env.py")]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_key(parts: dict) -> str:
    blob = json.dumps(
        {"version": FRONTIER_VERSION, "code": code_fingerprint(), **parts},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_cached(key: str, rules: Sequence[Rule]) -> dict[Rule, dict[str, np.ndarray]] | None:
    path = cache_dir() / "frontier" / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        data = np.load(path)
        out = {}
        for i, r in enumerate(rules):
            out[r] = {k: data[f"{i}:{k}"] for k in STORED_KEYS}
        return out
    except (OSError, KeyError, ValueError):
        return None


def save_cached(
    key: str, rules: Sequence[Rule], results: dict[Rule, dict[str, np.ndarray]]
) -> Path | None:
    path = cache_dir() / "frontier" / f"{key}.npz"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{i}:{k}": results[r][k] for i, r in enumerate(rules) for k in STORED_KEYS}
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path
    except OSError:
        return None  # a read-only home is no reason to fail an evaluation


def cached_rules(
    rules: Sequence[Rule],
    params: sim.EnvParams,
    windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    key_parts: dict,
    progress: Callable[[str], None] | None = None,
    use_cache: bool = True,
) -> tuple[dict[Rule, dict[str, np.ndarray]], bool]:
    """:func:`run_rules`, through the cache. Returns (results, came from the cache)."""
    key = cache_key({**key_parts, "rules": [asdict(r) for r in rules]})
    if use_cache:
        hit = load_cached(key, rules)
        if hit is not None:
            return hit, True
    res = run_rules(rules, params, windows, progress)
    if use_cache:
        save_cached(key, rules, res)
    return res, False


# --- the tuned HPA: one setting, chosen by a rule fixed before any test number ----------------

TUNED_RULE = (
    "the HPA setting of the frontier grid (target x scale-down window x scale-up path) with the "
    "highest mean episode return -- the DQN's own training objective -- on the training split "
    "(24 h windows, 4 per trace, 2 seeds); fixed before any test number was computed"
)


def pick_tuned(results: dict[Rule, dict[str, np.ndarray]]) -> Rule:
    """The tuned HPA of :data:`TUNED_RULE` from grid results on the tuning windows."""
    hpa = {r: v for r, v in results.items() if r.kind == "hpa"}
    return max(hpa, key=lambda r: (float(hpa[r]["episode_return"].mean()), -r.target, r.label))
