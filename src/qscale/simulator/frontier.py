"""The rule baselines as a frontier, not one tuned point.

A controller's result on a set of windows is a point (SLO-violation minutes, cost). For the
rules a platform team could deploy instead of qscale -- the HPA (target, scale-down window,
scale-up policies) and a KEDA-style request-rate rule (threshold, cooldown) -- we run a whole
grid (:func:`rule_grid`) on the same windows and seeds as the controller.

**The frontier** is the lower convex hull of the settings' points (:func:`lower_hull`): mixing
two settings in time reaches any point on the segment between them, so the hull, not the
Pareto staircase, is what the rules can do. Which settings may be on it is chosen on the
**validation** split (every setting on a family's validation Pareto front,
:func:`pareto_labels`) and the hull of those settings' test points is the yardstick; the hull of
every setting on the evaluated windows themselves (ex post) is reported beside it.

**Frontier ratio** of a controller at (slo, cost): ``cost / hull_cost(slo)``, linear between
the hull's vertices. **Outside the hull's range** no ratio passes: with fewer SLO minutes than
every setting there is none (nothing was run there to compare with); with more, only a ratio
>= 1 against the cheapest setting (which does as well with fewer SLO minutes), so a controller
that saves cost by dropping requests earns no passing number. Adding a setting can only
lower the hull, so it never lowers a ratio. A controller is **dominated** when some setting is
no worse on SLO minutes, cost and dropped requests and better on one; "dominated beyond the
intervals" when one setting does so in at least 97.5 % of the bootstrap resamples
(:func:`verdicts`), which also give the share of resamples and of seeds in which some setting
dominates.

Figures are per **family** (one trace file) and overall (each setting's totals over every
family: one setting for all services, as one model serves all). Intervals resample windows
within each family and then seeds within each window, so a family of one window still gets an
interval.

The predictive peer (:class:`~qscale.simulator.baselines.PredictiveController`) is run on its
own small grid and reported beside the frontier (and in a frontier "with predictive").
"""

from __future__ import annotations

import functools
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
RATE_COOLDOWNS_S = (0.0, 300.0, 900.0, 1800.0)
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

AXES = ("slo_violation_minutes", "cost_replica_hours", "dropped_requests")
"""What dominance compares: a setting dominates a controller when it is no worse on all three
(SLO minutes, cost, dropped requests) and better on one."""


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


def lower_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """The vertices (slo, cost, index) of the lower convex hull of ``points`` from the
    lowest-SLO point to the cheapest, by rising SLO: what mixing settings in time can reach."""
    hull: list[tuple[float, float, int]] = []
    for p in pareto(points):
        while len(hull) >= 2:
            (x0, y0, _), (x1, y1, _) = hull[-2], hull[-1]
            # hull[-1] goes when it lies on or above the segment hull[-2] -> p (collinear
            # within rounding, relative to the terms: an absolute tolerance dropped vertices
            # below the segment when the SLO axis spanned tiny values)
            a, b = (x1 - x0) * (p[1] - y0), (y1 - y0) * (p[0] - x0)
            if a - b > 1e-12 * (abs(a) + abs(b)):
                break
            hull.pop()
        hull.append(p)
    return hull


def frontier_cost(front: Sequence[tuple[float, float, int]], slo: float) -> float:
    """The frontier's cost at ``slo`` SLO minutes: linear between its vertices, its cheapest
    vertex's cost beyond it (that setting does as well with fewer SLO minutes), NaN before its
    first vertex (no setting was run with that few SLO minutes)."""
    if not front or slo < front[0][0]:
        return float("nan")
    for (s0, c0, _), (s1, c1, _) in itertools.pairwise(front):
        if slo <= s1:
            return c0 + (c1 - c0) * (slo - s0) / (s1 - s0) if s1 > s0 else min(c0, c1)
    return front[-1][1]


def dominated(points: Sequence[Sequence[float]], *controller: float) -> bool:
    """Whether some point is no worse than ``controller`` on every axis and better on one
    (points and controller alike: (slo, cost) or (slo, cost, dropped))."""
    c = np.asarray(controller, float)
    if not len(points):
        return False
    p = np.asarray(points, float)[:, : c.size]
    return bool(np.any(np.all(p <= c, axis=1) & np.any(p < c - 1e-9, axis=1)))


@dataclass
class FrontierPoint:
    slo: float
    cost: float
    label: str
    dropped: float = 0.0


@dataclass
class FamilyFrontier:
    """One family's (or ``ALL``'s) rule points, the lower convex hull of them and a
    controller's place against it."""

    family: str
    points: list[FrontierPoint]
    front: list[FrontierPoint]
    """The hull's vertices, by rising SLO minutes."""

    def place(self, slo: float, cost: float, dropped: float = 0.0) -> dict:
        """``ratio`` = cost / the hull's cost at ``slo``. Outside the hull's range there is no
        ratio that passes: with fewer SLO minutes than every setting (``position`` ``left``)
        none at all; with more (``right``) only one >= 1, against the cheapest setting, which
        does as well with fewer SLO minutes. ``dominated`` is the point estimate."""
        hull = [(p.slo, p.cost, i) for i, p in enumerate(self.front)]
        ratio, position, fc = _ratio(hull, slo, cost)
        return {
            "frontier_cost": fc,
            "ratio": ratio,
            "position": position,
            "dominated": dominated([(p.slo, p.cost, p.dropped) for p in self.points],
                                   slo, cost, dropped),
        }  # fmt: skip


def _ratio(
    hull: Sequence[tuple[float, float, int]], slo: float, cost: float
) -> tuple[float | None, str, float | None]:
    """(ratio or ``None``, position, the hull's cost there) of :meth:`FamilyFrontier.place`."""
    if not hull:
        return None, "none", None
    if slo < hull[0][0]:
        return None, "left", None
    fc = frontier_cost(hull, slo)
    position = "right" if slo > hull[-1][0] else "inside"
    if fc <= 0 or (position == "right" and cost < fc):
        return None, position, fc
    return cost / fc, position, fc


def unit_totals(
    metrics: dict[str, np.ndarray], unit: np.ndarray, n_units: int, n_seeds: int
) -> dict[str, np.ndarray]:
    """Per-unit (window) sums of per-env metrics, divided by the seeds: each unit's value is
    the mean over seeds of that window's total."""
    return {
        k: np.bincount(unit, weights=metrics[k], minlength=n_units) / n_seeds for k in METRIC_KEYS
    }


def _point(label: str, v: dict[str, np.ndarray], sel: np.ndarray) -> FrontierPoint:
    slo, cost, dropped = (float(v[k] @ sel) for k in AXES)
    return FrontierPoint(slo, cost, label, dropped)


def family_frontiers(
    per_rule: dict[str, dict[str, np.ndarray]],
    family_of_unit: np.ndarray,
    families: Sequence[str],
    chosen: dict[str, Sequence[str]] | None = None,
) -> dict[str, FamilyFrontier]:
    """Frontiers per family and ``ALL`` from per-unit totals; ``chosen``: per family the
    settings that may be on it (those chosen on the validation split), else every setting."""
    out = {}
    for fam in [*families, "ALL"]:
        sel = np.ones(len(family_of_unit)) if fam == "ALL" else (
            family_of_unit == families.index(fam)).astype(float)  # fmt: skip
        allowed = None if chosen is None else set(chosen.get(fam, ()))
        pts = [_point(label, v, sel) for label, v in per_rule.items()]
        pts = [p for p in pts if allowed is None or p.label in allowed]
        hull = lower_hull([(p.slo, p.cost) for p in pts])
        out[fam] = FamilyFrontier(fam, pts, [pts[i] for _, _, i in hull])
    return out


def pareto_labels(fronts: dict[str, FamilyFrontier]) -> dict[str, list[str]]:
    """Per family the settings on the Pareto front (how the validation split chooses the
    settings the test split's frontier may use: every Pareto point, a superset of the hull)."""
    out = {}
    for fam, ff in fronts.items():
        out[fam] = [ff.points[i].label for *_, i in pareto([(p.slo, p.cost) for p in ff.points])]
    return out


def cells(
    metrics: dict[str, np.ndarray], env_unit: np.ndarray, env_seed: np.ndarray, n_units: int
) -> np.ndarray:
    """``[3, U, S]``: each (window, seed)'s total of the :data:`AXES`."""
    seeds = np.unique(env_seed)
    s_idx = np.searchsorted(seeds, env_seed)
    out = np.zeros((len(AXES), n_units, seeds.size))
    for a, k in enumerate(AXES):
        np.add.at(out[a], (env_unit, s_idx), metrics[k])
    return out


@dataclass
class Verdict:
    """How sure a controller's place against a family's frontier is (see :func:`verdicts`)."""

    ratio_ci: tuple[float, float] | None
    """95 % interval of the frontier ratio over the resamples where it is inside the hull."""
    outside_share: float
    """Share of resamples where the controller lies outside the hull's range."""
    dominated_share: float
    """Share of resamples in which some setting dominates it (SLO minutes, cost, dropped)."""
    dominated_seeds: tuple[int, int]
    """(seeds in which some setting dominates it, seeds)."""
    dominated_by: str | None
    """A setting that dominates it in at least 97.5 % of the resamples: dominated beyond the
    intervals (``None``: no such setting)."""


def verdicts(
    rule_cells: dict[str, np.ndarray],
    policy_cells: np.ndarray,
    family_of_unit: np.ndarray,
    families: Sequence[str],
    chosen: dict[str, Sequence[str]] | None = None,
    n: int = 200,
    seed: int = 0,
) -> dict[str, Verdict]:
    """A two-stage bootstrap (windows with replacement within each family, then seeds with
    replacement within each window; rules and controller resampled together) and a per-seed
    look: per family and ``ALL``, the ratio's interval and how often some setting dominates."""
    labels = list(rule_cells)
    x = np.stack([rule_cells[k] for k in labels] + [policy_cells])  # [K+1, 3, U, S]
    n_units, n_seeds = x.shape[2], x.shape[3]
    fam_sel = {f: family_of_unit == i for i, f in enumerate(families)}
    fam_sel["ALL"] = np.ones(n_units, bool)
    allowed = {
        f: np.array([chosen is None or lab in set(chosen.get(f, ())) for lab in labels])
        for f in fam_sel
    }
    rng = np.random.default_rng(seed)
    ratios: dict[str, list[float]] = {f: [] for f in fam_sel}
    outside = dict.fromkeys(fam_sel, 0)
    dom_any = dict.fromkeys(fam_sel, 0)
    dom_each = {f: np.zeros(len(labels)) for f in fam_sel}
    for _ in range(n):
        w = np.zeros(n_units)
        for i in range(len(families)):
            idx = np.flatnonzero(family_of_unit == i)
            if idx.size:
                w += np.bincount(rng.choice(idx, size=idx.size), minlength=n_units)
        v = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_units)
        per_unit = np.einsum("kcus,us->kcu", x, v) / n_seeds * w
        for f, sel in fam_sel.items():
            tot = per_unit[:, :, sel].sum(axis=2)  # [K+1, 3]
            r, doms = _judge(tot[:-1][allowed[f]], tot[-1])
            if r is None:
                outside[f] += 1
            else:
                ratios[f].append(r)
            dom_each[f][allowed[f]] += doms
            dom_any[f] += bool(doms.any())
    seed_dom = {}
    for f, sel in fam_sel.items():
        hits = 0
        for s in range(n_seeds):
            tot = x[:, :, sel, s].sum(axis=2)
            hits += bool(_judge(tot[:-1][allowed[f]], tot[-1])[1].any())
        seed_dom[f] = (hits, n_seeds)
    out = {}
    for f in fam_sel:
        vals = np.asarray(ratios[f])
        best = int(np.argmax(dom_each[f])) if labels else 0
        out[f] = Verdict(
            ratio_ci=(float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))
            if vals.size
            else None,
            outside_share=outside[f] / n,
            dominated_share=dom_any[f] / n,
            dominated_seeds=seed_dom[f],
            dominated_by=labels[best] if labels and dom_each[f][best] >= 0.975 * n else None,
        )
    return out


def _judge(rules: np.ndarray, ctrl: np.ndarray) -> tuple[float | None, np.ndarray]:
    """(the controller's ratio against the hull of ``rules`` [K, 3], ``None`` where
    :meth:`FamilyFrontier.place` gives none; which rules dominate it)."""
    doms = np.all(rules <= ctrl, axis=1) & np.any(rules < ctrl - 1e-9, axis=1)
    hull = lower_hull([(float(a), float(b)) for a, b in rules[:, :2]])
    return _ratio(hull, float(ctrl[0]), float(ctrl[1]))[0], doms


# --- caching ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$QSCALE_CACHE_DIR`` or ``~/.cache/qscale``: grid results, keyed by what they depend on."""
    root = os.environ.get("QSCALE_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "qscale"


CORE_MODULES = ("actions", "batching", "decision", "features", "guardrails", "hpa", "service")
"""The core modules the simulator and its rules run on (the service model, the decision and its
shield, the rules' pod counts in ``features``): part of every grid result."""


def fingerprint_files() -> list[Path]:
    """The source files a grid result depends on: the simulator (not its plots or gymnasium
    wrapper), its rules, and the core modules they import (:data:`CORE_MODULES`; a test holds
    that list to the simulator's imports)."""
    import qscale

    root = Path(qscale.__file__).parent
    sim_dir = root / "simulator"
    files = [root / f"{m}.py" for m in CORE_MODULES]
    files += [*(sim_dir / "baselines").glob("*.py")]
    files += [p for p in sim_dir.glob("*.py") if p.name not in ("plots.py", "gym_env.py")]
    return sorted(files)


@functools.cache
def code_fingerprint() -> str:
    """sha256 over :func:`fingerprint_files`, read once per process (the code this process
    runs, not what an editor saved since), so a cached result never outlives a change to the
    code that made it."""
    h = hashlib.sha256()
    for f in fingerprint_files():
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


REWARD_BEST_RULE = (
    "the HPA or request-rate setting of the frontier grid with the highest mean episode return "
    "(the DQN's own training objective) on the validation split of the evaluated traces, same "
    "profile, windows and seeds: the rule a team would deploy after tuning it"
)


def pick_reward_best(results: dict[Rule, dict[str, np.ndarray]]) -> Rule:
    """The deployable tuned rule of :data:`REWARD_BEST_RULE` from grid results on validation."""
    ok = {r: v for r, v in results.items() if r.kind in ("hpa", "rate")}
    return max(ok, key=lambda r: (float(ok[r]["episode_return"].mean()), -r.target, r.label))
