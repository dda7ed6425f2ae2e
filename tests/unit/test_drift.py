"""The drift reference and PSI (qscale.drift): binning, calibration, what a reference refuses."""

from __future__ import annotations

import numpy as np
import pytest

from qscale import drift, features

F = features.N_FEATURES


def training(n: int, seed: int = 0) -> np.ndarray:
    """Observations inside every feature's range: uniform over its middle half."""
    rng = np.random.default_rng(seed)
    lo = np.array([f.lo for f in features.FEATURES])
    hi = np.array([f.hi for f in features.FEATURES])
    span = hi - lo
    return (lo + span * (0.25 + 0.5 * rng.random((n, F)))).astype(np.float32)


def fitted() -> tuple[drift.Reference, dict]:
    return drift.fit(training(20_000), [training(2_000, s) for s in range(1, 21)], 15.0, {})


def test_psi_is_zero_on_the_training_shares_and_grows_with_the_shift():
    e = np.array([0.25, 0.25, 0.25, 0.25])
    assert drift.psi(e, np.array([25, 25, 25, 25])) == pytest.approx(0.0)
    mild = drift.psi(e, np.array([40, 20, 20, 20]))
    strong = drift.psi(e, np.array([97, 1, 1, 1]))
    assert 0 < mild < strong
    # The same shares over more ticks are the same PSI (no smoothing by the count).
    assert drift.psi(e, np.array([400, 200, 200, 200])) == pytest.approx(mild)


def test_the_bins_are_deciles_with_tails_for_what_training_never_showed():
    ref, report = fitted()
    for edges, shares in zip(ref.edges, ref.expected, strict=True):
        assert len(shares) == len(edges) + 1 == 12  # 9 deciles + 2 tails -> 12 bins
        assert shares[0] == pytest.approx(0.001, abs=5e-4)
        assert shares[-1] == pytest.approx(0.001, abs=5e-4)
        assert sum(shares[1:-1]) == pytest.approx(0.998, abs=1e-3)
    # Calibrated on windows of the same distribution: about the asked-for false alarm rate.
    for n, r in report.items():
        assert r["false_alarms"] <= drift.FALSE_ALARM_RATE + 1e-9, (n, r)
    longest = ref.threshold(10**9)
    shortest = ref.threshold(20)
    assert longest is not None and shortest is not None and shortest.ticks == 20
    assert all(a < b for a, b in zip(longest.psi, shortest.psi, strict=True))  # less noise
    assert ref.threshold(19) is None


def test_a_point_mass_merges_deciles_and_never_leaves_an_empty_bin():
    x = training(5_000)
    x[: int(0.7 * len(x)), 9] = 1.0  # since_scale_up mostly at its horizon, as in serving
    ref, _ = drift.fit(x, [x[i : i + 500] for i in range(0, 5_000, 500)] * 3, 15.0, {})
    assert min(ref.expected[9][1:-1]) >= 0.02
    assert 1.0 not in ref.edges[9] or ref.edges[9][-1] == 1.0


def test_a_shifted_window_crosses_its_thresholds_and_a_training_like_one_does_not():
    ref, _ = fitted()
    like = training(240, seed=99)
    shifted = like.copy()
    shifted[:, 1] = 3.9  # p95 at 15x the SLO throughout: beyond anything training showed
    limit = ref.threshold(240)
    assert limit is not None

    def psi_of(obs):
        b = ref.bin_many(obs)
        return ref.psi([np.bincount(b[:, f], minlength=k) for f, k in enumerate(ref.n_bins)])

    assert (psi_of(like) <= np.array(limit.psi)).all()
    over = psi_of(shifted) > np.array(limit.psi)
    assert over[1] and over.sum() == 1


def test_the_manifest_round_trip_and_what_a_reference_refuses():
    ref, _ = fitted()
    doc = ref.as_manifest()
    back = drift.Reference.from_manifest({"drift": doc})
    assert back is not None and back.edges == ref.edges and back.thresholds == ref.thresholds
    assert drift.Reference.from_manifest({}) is None
    bad = [
        ({**doc, "version": 9}, "version"),
        ({**doc, "feature_names": ["x"] * F}, "other features"),
        ({**doc, "edges": doc["edges"][:-1]}, "wrong number"),
        ({**doc, "expected": [[0.5, 0.6], *doc["expected"][1:]]}, "malformed"),
        ({**doc, "thresholds": [{"ticks": 20, "psi": [0.0] * F, "windows": 3}]}, "thresholds"),
        ({**doc, "edges": "no"}, "unreadable"),
    ]
    for d, words in bad:
        with pytest.raises(drift.DriftError, match=words):
            drift.Reference.from_manifest({"drift": d})


def test_too_little_data_is_refused_with_a_reason():
    with pytest.raises(drift.DriftError, match="100 observations"):
        drift.fit(training(50), [training(500)], 15.0, {})
    with pytest.raises(drift.DriftError, match="calibration"):
        drift.fit(training(1_000), [training(100)], 15.0, {})


def test_the_shipped_model_carries_a_calibrated_reference():
    from qscale.policy.artifact import read_manifest
    from qscale.policy.default import default_model_path

    ref = drift.Reference.from_manifest(read_manifest(default_model_path()))
    assert ref is not None and ref.interval_s == 15.0
    assert [t.ticks for t in ref.thresholds] == list(drift.CALIBRATED_TICKS)
    assert ref.source["split"] == "train" and len(ref.source["traces"]) == 12


def test_one_observation_bins_as_searchsorted_does_on_edges_nan_and_tails():
    # Reference.bins (bisect, the tick's path) against bin_many (numpy's searchsorted).
    ref, _ = fitted()
    rng = np.random.default_rng(3)
    rows = [
        training(1, 7)[0],
        np.array([e[0] for e in ref.edges]),
        np.array([e[-1] for e in ref.edges]),
    ]
    rows += [np.full(F, np.nan), np.full(F, -1e9), np.full(F, 1e9)]
    rows += list(rng.normal(0.5, 2.0, (50, F)))
    for x in rows:
        x = np.asarray(x, dtype=np.float64)
        assert ref.bins(x).tolist() == ref.bin_many(x[None, :])[0].tolist(), x
