"""Trace loading, resampling and the fixed data split.

Bad-file fixtures are written inline via ``tmp_path`` so each case shows the exact bytes it tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qscale.simulator import splits
from qscale.simulator.splits import (
    HELDOUT_SERIES,
    SPLIT_NAMES,
    SPLITS,
    packaged_trace,
    shared_trace_dir,
    shared_trace_files,
    split_bounds,
    split_rates,
)
from qscale.simulator.traces import (
    Trace,
    TraceError,
    load_rates,
    load_trace,
    resample,
    segments,
)


def write(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    """Write ``text`` verbatim (no newline translation) so line numbers are what we wrote."""
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def make_trace(t: list[float], value: list[float], interval: float) -> Trace:
    """Build a Trace directly, for resampling tests that do not need a file."""
    return Trace(
        name="synthetic",
        path="synthetic.csv",
        t=np.asarray(t, dtype=np.float64),
        value=np.asarray(value, dtype=np.float64),
        interval=interval,
    )


# --------------------------------------------------------------------------- loading: errors


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        pytest.param("t,rate\n0,1\n", 1, "no 'value' column", id="header-missing-value"),
        pytest.param("time,value\n0,1\n", 1, "no 't' column", id="header-missing-t"),
        pytest.param("0,1\n60,2\n", 1, "no 't' column", id="no-header"),
        pytest.param("t,value,t\n0,1,0\n", 1, "repeats", id="header-duplicate-column"),
        pytest.param("t,value\n0,1\n60,2,3\n", 3, "expected 2 fields", id="too-many-fields"),
        pytest.param("t,value\n0,1\n60\n", 3, "got 1", id="too-few-fields"),
        pytest.param(
            "t,value\n0,1\n60,2\n120,abc\n", 4, "value 'abc' is not a number", id="nonnum-v"
        ),
        pytest.param("t,value\n0,1\nx,2\n", 3, "t 'x' is not a number", id="nonnum-t"),
        pytest.param("t,value\n0,1\n60,\n", 3, "value '' is not a number", id="empty-field"),
        pytest.param("t,value\n0,1\n60,nan\n", 3, "not finite", id="nan-value"),
        pytest.param("t,value\n0,1\n60,inf\n", 3, "not finite", id="inf-value"),
        pytest.param("t,value\n0,1\n60,1e999\n", 3, "not finite", id="overflow-value"),
        pytest.param("t,value\n0,1\nnan,2\n", 3, "t nan is not finite", id="nan-t"),
        pytest.param("t,value\n0,1\n60,2\n120,-0.5\n", 4, "negative", id="negative"),
        pytest.param("t,value\n0,1\n120,2\n60,3\n", 4, "not after", id="unsorted"),
        pytest.param("t,value\n0,1\n60,2\n60,3\n", 4, "duplicates", id="duplicate-t"),
        pytest.param("t,value\n", None, "no data rows", id="header-only"),
        pytest.param("t,value\n\n\n", None, "no data rows", id="header-and-blank-lines"),
        pytest.param("", None, "empty", id="empty-file"),
        pytest.param("\n\n", None, "empty", id="blank-file"),
    ],
)
def test_bad_file_names_file_and_line(
    tmp_path: Path, text: str, line: int | None, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    msg = str(info.value)
    assert fragment in msg
    assert "bad.csv" in msg
    if line is not None:
        assert f"bad.csv:{line}: " in msg
        assert info.value.line == line
    else:
        assert info.value.line is None


def test_error_line_counts_blank_lines(tmp_path: Path) -> None:
    """Line numbers are physical lines, so an editor's "go to line" lands on the bad row."""
    path = write(tmp_path, "t,value\n0,1\n\n60,2\n\n120,oops\n")
    with pytest.raises(TraceError, match=r"bad\.csv:6: value 'oops' is not a number"):
        load_trace(path)


def test_earliest_problem_is_reported(tmp_path: Path) -> None:
    """Several problems: the one on the earliest line wins, whatever kind it is."""
    path = write(tmp_path, "t,value\n0,1\n60,-1\n30,nan\n")
    with pytest.raises(TraceError, match=r"bad\.csv:3: .*negative"):
        load_trace(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.csv: file not found"):
        load_trace(tmp_path / "nope.csv")


def test_directory_is_unreadable(tmp_path: Path) -> None:
    d = tmp_path / "dir.csv"
    d.mkdir()
    with pytest.raises(TraceError, match=r"dir\.csv: cannot read file"):
        load_trace(d)


def test_undecodable_file(tmp_path: Path) -> None:
    p = tmp_path / "binary.csv"
    p.write_bytes(b"t,value\n0,1\n\xff\xfe\x00\x01,2\n")
    with pytest.raises(TraceError, match=r"binary\.csv: cannot read file"):
        load_trace(p)


def test_trace_error_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_trace(write(tmp_path, "t,value\n0,-1\n"))


# --------------------------------------------------------------------------- loading: good


def test_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, "t,value\n0,0.5\n60,1.25\n120,0\n300,2\n", name="good_one.csv")
    tr = load_trace(path)
    assert tr.name == "good_one"
    assert tr.path == str(path)
    assert tr.t.dtype == np.float64 and tr.value.dtype == np.float64
    np.testing.assert_array_equal(tr.t, [0, 60, 120, 300])
    np.testing.assert_array_equal(tr.value, [0.5, 1.25, 0, 2])
    assert tr.interval == 60.0  # median of [60, 60, 180]: a gap does not skew it
    assert len(tr) == 4
    assert tr.duration == 360.0
    with pytest.raises(ValueError):
        tr.value[0] = 3.0  # arrays are read-only: frozen means frozen


def test_extra_columns_and_order_are_free(tmp_path: Path) -> None:
    text = '\ufeffnote, value ,t\r\nfirst,1.5,0\r\n"a, quoted",2.5,300\r\n\r\n'
    tr = load_trace(write(tmp_path, text, name="extra.csv"))
    np.testing.assert_array_equal(tr.t, [0, 300])
    np.testing.assert_array_equal(tr.value, [1.5, 2.5])
    assert tr.interval == 300.0


def test_a_single_row_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="at least 2 rows"):
        load_trace(write(tmp_path, "t,value\n0.5,3\n", name="one.csv"))


def test_an_absurd_value_is_refused_on_its_line(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"big.csv:3: value 1e\+30 is implausibly large"):
        load_trace(write(tmp_path, "t,value\n0,1\n60,1e30\n120,2\n", name="big.csv"))


def test_float_t(tmp_path: Path) -> None:
    tr = load_trace(write(tmp_path, "t,value\n0.5,3\n60.5,4\n", name="f.csv"))
    np.testing.assert_array_equal(tr.t, [0.5, 60.5])


def test_load_rates_is_resample_of_load(tmp_path: Path) -> None:
    path = write(tmp_path, "t,value\n0,1\n60,2\n120,4\n", name="r.csv")
    np.testing.assert_array_equal(load_rates(path, dt=20.0), resample(load_trace(path), 20.0))


# --------------------------------------------------------------------------- resampling


def test_upsample_holds_each_bin_piecewise_constant() -> None:
    tr = make_trace([0, 60], [1.0, 3.0], interval=60.0)
    r = resample(tr, dt=15.0)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, np.asarray([1.0] * 4 + [3.0] * 4, dtype=np.float32))


@pytest.mark.parametrize(
    ("interval", "dt"), [(300.0, 15.0), (1800.0, 15.0), (60.0, 15.0), (300.0, 20.0)]
)
def test_resampling_is_causal(interval, dt) -> None:
    """A step's rate never depends on a later row: changing the trace after a time changes no
    resampled step that ends before it (the old midpoint interpolation ramped ~interval/2 early)."""
    rng = np.random.default_rng(1)
    n = 40
    values = rng.exponential(2.0, size=n)
    t = list(interval * np.arange(n))
    base = resample(make_trace(t, list(values), interval=interval), dt=dt)
    for cut in (5, 17, 33):
        changed = values.copy()
        changed[cut:] *= 10.0
        other = resample(make_trace(t, list(changed), interval=interval), dt=dt)
        ends = dt * (np.arange(len(base)) + 1)
        before = ends <= cut * interval + 1e-9
        np.testing.assert_array_equal(base[before], other[before])
        assert not np.array_equal(base, other)


def test_interval_equal_to_dt_is_identity() -> None:
    values = [0.0, 1.5, 2.25, 0.125]
    r = resample(make_trace([0, 15, 30, 45], values, interval=15.0), dt=15.0)
    np.testing.assert_array_equal(r, np.asarray(values, dtype=np.float32))


def test_downsample_preserves_total_count() -> None:
    rng = np.random.default_rng(0)
    values = rng.exponential(2.0, size=240)
    tr = make_trace(list(60.0 * np.arange(240)), list(values), interval=60.0)
    r = resample(tr, dt=300.0)  # 240 min = 48 steps of 5 min exactly
    assert r.shape == (48,)
    assert float(r.astype(np.float64).sum()) * 300.0 == pytest.approx(values.sum() * 60.0, rel=1e-6)
    np.testing.assert_allclose(r, values.reshape(48, 5).mean(axis=1), rtol=1e-6)


def test_downsample_non_multiple_step_splits_rows_exactly() -> None:
    """dt not a multiple of the interval: a row straddling a step edge is split by time."""
    r = resample(make_trace([0, 60, 120], [1.0, 2.0, 4.0], interval=60.0), dt=90.0)
    assert r.shape == (2,)
    np.testing.assert_allclose(r, [(60 * 1 + 30 * 2) / 90, (30 * 2 + 60 * 4) / 90], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=200),
    factor=st.integers(1, 12),
)
def test_downsample_count_preserved_property(values: list[float], factor: int) -> None:
    values = values * factor  # length a multiple of factor
    n = len(values)
    tr = make_trace(list(60.0 * np.arange(n)), values, interval=60.0)
    r = resample(tr, dt=60.0 * factor)
    assert r.shape == (n // factor,)
    total = float(np.sum(values)) * 60.0
    assert float(r.astype(np.float64).sum()) * 60.0 * factor == pytest.approx(
        total, rel=1e-6, abs=1e-6
    )


def test_gaps_are_dropped_and_segments_resampled_separately() -> None:
    # Segment 1: t=0..120 (3 rows, 180 s). Gap. Segment 2: t=1000..1060 (2 rows, 120 s).
    tr = make_trace([0, 60, 120, 1000, 1060], [1, 1, 1, 5, 5], interval=60.0)
    assert segments(tr) == [(0, 3), (3, 5)]
    r = resample(tr, dt=15.0)
    assert r.shape == (180 // 15 + 120 // 15,)
    np.testing.assert_array_equal(r[:12], 1.0)  # no ramp towards the far side of the gap
    np.testing.assert_array_equal(r[12:], 5.0)


def test_small_jitter_is_not_a_gap() -> None:
    tr = make_trace([0, 60, 150, 210], [1, 1, 1, 1], interval=60.0)  # 90 = 1.5 * interval
    assert segments(tr) == [(0, 4)]


def test_partial_last_step_is_dropped() -> None:
    r = resample(make_trace([0, 60], [1.0, 1.0], interval=60.0), dt=50.0)
    assert r.shape == (2,)  # floor(120 / 50)


def test_too_short_trace_raises() -> None:
    with pytest.raises(TraceError, match=r"synthetic\.csv: .*shorter than one step"):
        resample(make_trace([0], [1.0], interval=60.0), dt=61.0)


@pytest.mark.parametrize("dt", [0.0, -15.0, float("nan"), float("inf")])
def test_bad_dt(dt: float) -> None:
    with pytest.raises(ValueError, match="dt must be"):
        resample(make_trace([0, 60], [1.0, 1.0], interval=60.0), dt=dt)


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 10, 99, 100, 101, 12345, 328268])
@pytest.mark.parametrize("name", ["nasa_http_1995", "my_own_trace", "twitter_volume_GOOG"])
def test_splits_partition_the_series(name: str, n: int) -> None:
    rates = np.arange(n, dtype=np.float32)
    parts = [split_rates(name, rates, s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == len(split_rates(name, rates, "all")) == n
    np.testing.assert_array_equal(np.concatenate(parts), rates)  # in order, no overlap


def test_time_split_fractions() -> None:
    rates = np.arange(1000, dtype=np.float32)
    assert split_bounds("nyc_taxi", 1000, "train") == (0, 600)
    assert split_bounds("nyc_taxi", 1000, "val") == (600, 800)
    assert split_bounds("nyc_taxi", 1000, "test") == (800, 1000)
    assert split_rates("nyc_taxi", rates, "val")[0] == 600
    assert set(SPLITS) | {"all"} == set(SPLIT_NAMES)


@pytest.mark.parametrize("name", sorted(HELDOUT_SERIES))
def test_heldout_series_only_in_test(name: str) -> None:
    rates = np.ones(500, dtype=np.float32)
    assert len(split_rates(name, rates, "train")) == 0
    assert len(split_rates(name, rates, "val")) == 0
    assert len(split_rates(name, rates, "test")) == 500
    assert len(split_rates(name + ".csv", rates, "train")) == 0  # file names match too


def test_unknown_split_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="train, val, test, all"):
        split_rates("nyc_taxi", np.ones(10), "validation")


def test_shared_trace_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.csv").write_text("t,value\n0,1\n")
    (tmp_path / "b.csv").write_text("t,value\n0,1\n")
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.setenv(splits.TRACES_DIR_ENV, str(tmp_path))
    assert shared_trace_dir() == tmp_path
    assert [p.name for p in shared_trace_files()] == ["a.csv", "b.csv"]
    monkeypatch.setenv(splits.TRACES_DIR_ENV, str(tmp_path / "missing"))
    assert shared_trace_files() == []


def test_packaged_trace_exists_and_loads() -> None:
    path = packaged_trace()
    assert path.is_file()
    assert path.stat().st_size < 120_000
    tr = load_trace(path)
    assert tr.name == "nasa_excerpt"
    assert tr.interval == 60.0
    assert len(tr) == 3 * 24 * 60  # three full days, no gaps
    assert tr.t[0] == 0.0
    assert segments(tr) == [(0, len(tr))]
    r = resample(tr)
    assert r.shape == (3 * 86400 // 15,)
    # Jul 13 (STS-70 launch) is the middle day: 134,203 requests, per CATALOG.md.
    day2 = (tr.t >= 86400) & (tr.t < 2 * 86400)
    assert round(float(tr.value[day2].sum() * 60.0)) == 134_203
    with pytest.raises(FileNotFoundError, match="nasa_excerpt"):
        packaged_trace("no_such_trace")


def test_every_shared_trace_loads_and_resamples() -> None:
    files = shared_trace_files()
    if not files:
        pytest.skip("shared trace directory not found (set QSCALE_TRACES_DIR)")
    for path in files:
        tr = load_trace(path)
        rates = resample(tr)
        assert rates.dtype == np.float32
        assert rates.size > 0
        assert np.isfinite(rates).all(), path.name
        assert (rates >= 0).all(), path.name
        # Resampling keeps the series' mean rate to within a few percent (gaps dropped, ends
        # held flat): catches a unit slip (per-minute vs per-second) or a wrong interval.
        assert float(rates.mean()) == pytest.approx(float(tr.value.mean()), rel=0.02), path.name
        parts = [split_rates(tr.name, rates, s) for s in ("train", "val", "test")]
        assert sum(len(p) for p in parts) == rates.size
