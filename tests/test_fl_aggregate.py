"""models.fl.aggregate: hand-computed examples, robustness properties, and a cross-check against an
independent loop-based implementation written from the papers (flwr was not added: it pulls ~35 packages
incl. fastapi/sqlalchemy/grpcio and downgrades protobuf 7 -> 6)."""

from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.fl.aggregate import (
    AggregateResult,
    AggregationError,
    bucketing,
    clip_l2,
    coordinate_median,
    fedavg,
    krum,
    krum_scores,
    multi_krum,
    norm_bound,
    trimmed_mean,
    validate_updates,
)

# ------------------------------------------------------------------ independent reference (plain loops)


def ref_median(rows: list[list[float]]) -> list[float]:
    out = []
    for j in range(len(rows[0])):
        col = sorted(r[j] for r in rows)
        n = len(col)
        out.append(col[n // 2] if n % 2 else (col[n // 2 - 1] + col[n // 2]) / 2)
    return out


def ref_trimmed(rows: list[list[float]], beta: float) -> list[float]:
    n = len(rows)
    k = math.floor(beta * n)
    out = []
    for j in range(len(rows[0])):
        col = sorted(r[j] for r in rows)[k : n - k]
        out.append(sum(col) / len(col))
    return out


def ref_krum_scores(rows: list[list[float]], f: int) -> list[float]:
    n = len(rows)
    scores = []
    for i in range(n):
        d = sorted(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j], strict=True)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return scores


def ref_multi_krum(rows: list[list[float]], f: int, m: int) -> list[float]:
    scores = ref_krum_scores(rows, f)
    chosen = sorted(range(len(rows)), key=lambda i: (scores[i], i))[:m]
    return [sum(rows[i][j] for i in chosen) / m for j in range(len(rows[0]))]


# ------------------------------------------------------------------------------ hand-computed examples


def test_fedavg_weighted_by_hand() -> None:
    r = fedavg([[1.0, 2.0], [3.0, 6.0]], weights=[1, 3])
    assert r.aggregate.tolist() == [2.5, 5.0]  # (1*1 + 3*3)/4, (2 + 18)/4
    assert r.used == (0, 1) and r.rejected == {}


def test_fedavg_default_equal_weights_and_bad_weight_rejected() -> None:
    r = fedavg([[0.0], [2.0], [100.0]], weights=[1, 1, 0])
    assert r.aggregate.tolist() == [1.0]
    assert r.rejected == {2: "invalid weight 0.0"}


def test_median_odd_and_even_by_hand() -> None:
    assert coordinate_median([[1, 10], [2, 30], [100, 20]]).aggregate.tolist() == [2.0, 20.0]
    assert coordinate_median([[1.0], [2.0], [4.0], [100.0]]).aggregate.tolist() == [3.0]


def test_trimmed_mean_by_hand() -> None:
    # n=5, beta=0.2 -> drop 1 from each end per coordinate: mean of the middle three
    ups = [[1.0, -5.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [1000.0, 3.0]]
    assert trimmed_mean(ups, beta=0.2).aggregate.tolist() == [3.0, 1.0]
    assert trimmed_mean(ups, beta=0.0).aggregate.tolist() == pytest.approx([202.0, 0.2])


def test_krum_by_hand() -> None:
    # n=5, f=1: score = sum of the n-f-2=2 smallest squared distances
    ups = [[0.0], [1.0], [2.0], [3.0], [10.0]]
    scores = krum_scores(np.array(ups), 1)
    # 0: {1,4} -> 1+4=5; 1: {1,1} -> 2; 2: {1,1} -> 2; 3: {1,4} -> 5; 10: {49,64} -> 113
    assert scores.tolist() == [5.0, 2.0, 2.0, 5.0, 113.0]
    r = krum(ups, f=1)
    assert r.aggregate.tolist() == [1.0] and r.used == (1,)  # tie 1 vs 2: lower index
    assert set(r.rejected) == {0, 2, 3, 4}
    mk = multi_krum(ups, f=1, m=3)
    assert mk.used == (0, 1, 2) or mk.used == (1, 2, 3)
    assert mk.used == (0, 1, 2)  # stable: score 5 at index 0 before index 3
    assert mk.aggregate.tolist() == [1.0]
    assert "Krum score rank 5 of 5" in mk.rejected[4]


def test_krum_needs_enough_clients() -> None:
    with pytest.raises(AggregationError):
        krum([[0.0], [1.0], [2.0]], f=1)


def test_norm_bound_by_hand() -> None:
    r = norm_bound([[3.0, 4.0], [0.3, 0.4]], max_norm=1.0)
    assert r.aggregate.tolist() == pytest.approx([(0.6 + 0.3) / 2, (0.8 + 0.4) / 2])
    assert r.clipped == (0,)
    assert clip_l2([3.0, 4.0], 10.0).tolist() == [3.0, 4.0]
    assert clip_l2([3.0, 4.0], 2.5).tolist() == pytest.approx([1.5, 2.0])


def test_bucketing_s1_is_the_inner_aggregator() -> None:
    rng = np.random.default_rng(1)
    ups = list(rng.normal(size=(7, 4)))
    assert np.allclose(bucketing(ups, 1, coordinate_median, rng=0).aggregate, coordinate_median(ups).aggregate)


def test_bucketing_averages_buckets_then_aggregates() -> None:
    ups = [[float(i)] for i in range(6)]
    r = bucketing(ups, 2, fedavg, rng=3)
    assert r.aggregate.tolist() == pytest.approx([2.5])  # the mean of bucket means is the mean when buckets are equal
    # with Krum inside, a rejected bucket rejects both its members, naming the bucket
    ups = [[0.0], [0.1], [0.2], [0.3], [0.4], [0.5], [0.6], [0.7], [50.0], [60.0]]
    r = bucketing(ups, 2, partial(multi_krum, f=1, m=3), rng=0)
    assert len(r.used) == 6 and len(r.rejected) == 4
    assert all(reason.startswith("bucket ") for reason in r.rejected.values())


# ------------------------------------------------------------------------------------------ validation


def test_invalid_updates_rejected_with_reasons() -> None:
    ups = [[1.0, 2.0], [np.nan, 0.0], [1.0, np.inf], [1.0, 2.0, 3.0], [[1.0, 2.0]], [3.0, 4.0], "x"]
    for fn in (fedavg, coordinate_median, partial(trimmed_mean, beta=0.0), partial(norm_bound, max_norm=10)):
        r: AggregateResult = fn(ups)
        assert r.used == (0, 5)
        assert r.aggregate.tolist() == [2.0, 3.0]
        assert "non-finite" in r.rejected[1] and "non-finite" in r.rejected[2]
        assert "wrong length 3" in r.rejected[3]
        assert "not a flat vector" in r.rejected[4]
        assert 6 in r.rejected
    rec = fedavg(ups).record()
    assert rec["used"] == [0, 5] and {"client": 1, "reason": "non-finite values (1 of 2 NaN/inf)"} in rec["rejected"]


def test_validate_majority_length_and_all_invalid() -> None:
    m, idx, rej = validate_updates([[1.0], [1.0, 2.0], [3.0, 4.0]])
    assert idx == (1, 2) and m.shape == (2, 2) and 0 in rej
    with pytest.raises(AggregationError):
        fedavg([[np.nan]])
    with pytest.raises(AggregationError):
        fedavg([])


# ----------------------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("f", [1, 2, 3])
def test_robust_aggregators_ignore_f_outliers(f: int) -> None:
    rng = np.random.default_rng(f)
    n, d = 11, 6
    honest = rng.normal(0.0, 0.1, size=(n - f, d))
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    for attack in (1e6, -1e6):
        ups = list(honest) + [np.full(d, attack)] * f
        # coordinate-wise: the result stays inside the honest range whatever the outliers are
        for r in (coordinate_median(ups), trimmed_mean(ups, beta=f / n)):
            assert np.all(r.aggregate >= lo - 1e-12) and np.all(r.aggregate <= hi + 1e-12)
        # Krum-type: the outliers are never selected
        for r in (krum(ups, f), multi_krum(ups, f, n - f)):
            assert all(i < n - f for i in r.used)
            assert all(i in r.rejected for i in range(n - f, n))
        assert np.abs(fedavg(ups).aggregate).max() > 1e4  # the plain mean is dragged away


# -------------------------------------------------------------------------- cross-check vs reference

_matrix = st.integers(min_value=5, max_value=9).flatmap(
    lambda n: arrays(np.float64, (n, 3), elements=st.floats(-100, 100, allow_nan=False, width=32))
)


@settings(max_examples=60, deadline=None)
@given(_matrix, st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.45]))
def test_coordinatewise_match_reference(m: np.ndarray, beta: float) -> None:
    rows = m.tolist()
    assert np.allclose(coordinate_median(rows).aggregate, ref_median(rows))
    assert np.allclose(trimmed_mean(rows, beta).aggregate, ref_trimmed(rows, beta))


@settings(max_examples=60, deadline=None)
@given(_matrix, st.integers(0, 2), st.data())
def test_krum_matches_reference(m: np.ndarray, f: int, data: st.DataObject) -> None:
    n = m.shape[0]
    if n - f - 2 < 1:
        return
    rows = m.tolist()
    got = krum_scores(m, f)
    want = ref_krum_scores(rows, f)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-6 * max(1.0, max(want)))
    # with near-ties the selection may legitimately differ by rounding; compare when the order is clear
    mm = data.draw(st.integers(1, n))
    s = sorted(want)
    if all(b - a > 1e-6 * max(1.0, s[-1]) for a, b in itertools.pairwise(s)):
        assert np.allclose(multi_krum(rows, f, mm).aggregate, ref_multi_krum(rows, f, mm))


@settings(max_examples=40, deadline=None)
@given(_matrix, st.lists(st.floats(0.1, 10.0), min_size=9, max_size=9))
def test_fedavg_matches_reference(m: np.ndarray, w: list[float]) -> None:
    rows = m.tolist()
    w = w[: len(rows)]
    want = [sum(wi * r[j] for wi, r in zip(w, rows, strict=True)) / sum(w) for j in range(3)]
    assert np.allclose(fedavg(rows, w).aggregate, want, atol=1e-9)
