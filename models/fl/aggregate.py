"""Server-side aggregation of federated-learning updates (pure numpy).

An *update* is a flat float vector (the client's model-weight delta). Every aggregator validates its
inputs first -- a non-vector, a vector of the wrong length or one holding NaN/inf is rejected with a
reason rather than poisoning the aggregate -- and returns an :class:`AggregateResult` that names the
clients used and the clients rejected and why (what the RSU records in the ledger).

Aggregators:

* :func:`fedavg` -- weighted mean (McMahan et al. 2017).
* :func:`coordinate_median`, :func:`trimmed_mean` -- coordinate-wise robust statistics (Yin et al. 2018).
* :func:`krum`, :func:`multi_krum` -- Blanchard et al. 2017, "Machine learning with adversaries".
* :func:`bucketing` -- Karimireddy, He, Jaggi 2022, "Byzantine-robust learning on heterogeneous datasets
  via bucketing": average random buckets of ``s`` updates, then run a robust aggregator on the bucket means.
* :func:`norm_bound` -- L2 clipping of each update to ``max_norm`` then the mean (Sun et al. 2019).

Client identities are the indices of ``updates``; the caller maps them to OBU pseudonyms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Update = npt.ArrayLike
Aggregator = Callable[[Sequence[Update]], "AggregateResult"]

__all__ = [
    "AggregateResult",
    "Aggregator",
    "AggregationError",
    "bucketing",
    "clip_l2",
    "coordinate_median",
    "fedavg",
    "krum",
    "krum_scores",
    "multi_krum",
    "norm_bound",
    "trimmed_mean",
    "validate_updates",
]


class AggregationError(ValueError):
    """Too few valid updates for the requested aggregator (or bad parameters)."""


@dataclass(frozen=True)
class AggregateResult:
    """The aggregate plus an account of each client: ``used`` and ``rejected`` (index -> reason)."""

    aggregate: FloatArray
    method: str
    used: tuple[int, ...]
    rejected: dict[int, str] = field(default_factory=dict)
    clipped: tuple[int, ...] = ()

    def record(self) -> dict[str, object]:
        """A plain (CBOR/JSON-able) summary for the ledger: no update values, only who and why."""
        return {
            "method": self.method,
            "used": list(self.used),
            "rejected": [{"client": i, "reason": r} for i, r in sorted(self.rejected.items())],
            "clipped": list(self.clipped),
        }


@dataclass(frozen=True)
class _Valid:
    matrix: FloatArray  # (k, d), one row per valid update
    index: tuple[int, ...]  # original client index of each row
    rejected: dict[int, str]


def validate_updates(
    updates: Sequence[Update], dim: int | None = None
) -> tuple[FloatArray, tuple[int, ...], dict[int, str]]:
    """Stack the valid updates; reject non-vectors, wrong lengths and non-finite values with a reason.

    ``dim`` is the expected length; without it, the most common length among the vectors (ties: the
    first seen) is taken as the model size.
    """
    v = _validate(updates, dim)
    return v.matrix, v.index, v.rejected


def _validate(updates: Sequence[Update], dim: int | None = None) -> _Valid:
    if len(updates) == 0:
        raise AggregationError("no updates to aggregate")
    arrays: list[FloatArray | None] = []
    rejected: dict[int, str] = {}
    for i, u in enumerate(updates):
        try:
            a = np.asarray(u, dtype=np.float64)
        except (TypeError, ValueError) as err:
            rejected[i] = f"not numeric: {err}"
            arrays.append(None)
            continue
        if a.ndim != 1:
            rejected[i] = f"not a flat vector (shape {a.shape})"
            arrays.append(None)
            continue
        arrays.append(a)
    if dim is None:
        lengths = Counter(a.shape[0] for a in arrays if a is not None)
        if not lengths:
            raise AggregationError(f"no valid updates ({len(rejected)} rejected)")
        dim = max(lengths, key=lambda n: lengths[n])  # Counter keeps first-seen order for ties
    rows: list[FloatArray] = []
    index: list[int] = []
    for i, vec in enumerate(arrays):
        if vec is None:
            continue
        if vec.shape[0] != dim:
            rejected[i] = f"wrong length {vec.shape[0]} (expected {dim})"
        elif dim == 0:
            rejected[i] = "empty update"
        elif not np.all(np.isfinite(vec)):
            bad = int(np.count_nonzero(~np.isfinite(vec)))
            rejected[i] = f"non-finite values ({bad} of {dim} NaN/inf)"
        else:
            rows.append(vec)
            index.append(i)
    if not rows:
        raise AggregationError(f"no valid updates ({len(rejected)} rejected)")
    return _Valid(np.stack(rows), tuple(index), rejected)


def fedavg(updates: Sequence[Update], weights: Sequence[float] | None = None) -> AggregateResult:
    """Weighted mean (weights e.g. local sample counts; default equal). A weight that is not a finite
    number > 0 rejects that client."""
    if weights is not None and len(weights) != len(updates):
        raise AggregationError(f"{len(weights)} weights for {len(updates)} updates")
    v = _validate(updates)
    agg, used, rejected = _weighted_mean(v.matrix, v.index, v.rejected, weights)
    return AggregateResult(agg, "fedavg", used, rejected)


def _weighted_mean(
    matrix: FloatArray, index: tuple[int, ...], rejected_in: dict[int, str], weights: Sequence[float] | None
) -> tuple[FloatArray, tuple[int, ...], dict[int, str]]:
    rejected = dict(rejected_in)
    rows: list[int] = []
    w: list[float] = []
    for r, i in enumerate(index):
        wi = 1.0 if weights is None else float(weights[i])
        if not np.isfinite(wi) or wi <= 0.0:
            rejected[i] = f"invalid weight {wi!r}"
            continue
        rows.append(r)
        w.append(wi)
    if not rows:
        raise AggregationError("no valid updates with a positive weight")
    wa = np.asarray(w)
    agg: FloatArray = (wa / wa.sum()) @ matrix[rows]
    return agg, tuple(index[r] for r in rows), rejected


def coordinate_median(updates: Sequence[Update]) -> AggregateResult:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    v = _validate(updates)
    return AggregateResult(np.median(v.matrix, axis=0), "median", v.index, v.rejected)


def trimmed_mean(updates: Sequence[Update], beta: float = 0.1) -> AggregateResult:
    """Coordinate-wise beta-trimmed mean: per coordinate drop the ``floor(beta*n)`` largest and smallest
    values of the ``n`` valid updates and average the rest (0 <= beta < 0.5)."""
    if not 0.0 <= beta < 0.5:
        raise AggregationError(f"trimmed mean needs 0 <= beta < 0.5, got {beta}")
    v = _validate(updates)
    n = v.matrix.shape[0]
    k = int(np.floor(beta * n))
    if n - 2 * k < 1:
        raise AggregationError(f"trimming {k} from each end leaves nothing of {n} updates")
    s = np.sort(v.matrix, axis=0)
    return AggregateResult(s[k : n - k].mean(axis=0), f"trimmed_mean(beta={beta})", v.index, v.rejected)


def krum_scores(matrix: FloatArray, f: int) -> FloatArray:
    """Krum score of each row: the sum of squared L2 distances to its ``n - f - 2`` nearest other rows."""
    n = matrix.shape[0]
    k = n - f - 2
    if f < 0 or k < 1:
        raise AggregationError(f"Krum needs n >= f + 3 (n={n}, f={f}); its guarantee needs n >= 2f + 3")
    sq = np.einsum("ij,ij->i", matrix, matrix)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (matrix @ matrix.T), 0.0)
    np.fill_diagonal(d2, np.inf)
    nearest = np.sort(d2, axis=1)[:, :k]
    scores: FloatArray = nearest.sum(axis=1)
    return scores


def multi_krum(updates: Sequence[Update], f: int, m: int | None = None) -> AggregateResult:
    """Multi-Krum: average the ``m`` updates with the lowest Krum scores (default ``m = n - f``).

    ``m = 1`` is Krum. Scores are computed once over the valid updates (Blanchard et al. 2017, sec. 5);
    ties go to the lower index.
    """
    v = _validate(updates)
    n = v.matrix.shape[0]
    if m is None:
        m = n - f
    if not 1 <= m <= n:
        raise AggregationError(f"multi-Krum needs 1 <= m <= n (m={m}, n={n})")
    scores = krum_scores(v.matrix, f)
    order = np.argsort(scores, kind="stable")
    chosen = np.sort(order[:m])
    rejected = dict(v.rejected)
    for rank, r in enumerate(order):
        if rank >= m:
            rejected[v.index[int(r)]] = f"Krum score rank {rank + 1} of {n} > m={m} (score {scores[r]:.4g})"
    method = "krum" if m == 1 else f"multi_krum(f={f}, m={m})"
    return AggregateResult(v.matrix[chosen].mean(axis=0), method, tuple(v.index[int(r)] for r in chosen), rejected)


def krum(updates: Sequence[Update], f: int) -> AggregateResult:
    """Krum: the single update with the lowest score (``multi_krum(..., m=1)``)."""
    return multi_krum(updates, f, 1)


def bucketing(
    updates: Sequence[Update],
    s: int,
    aggregator: Aggregator,
    rng: np.random.Generator | int | None = None,
) -> AggregateResult:
    """Shuffle the valid updates into buckets of ``s`` (the last may be smaller), average each bucket,
    and aggregate the bucket means with ``aggregator`` (e.g. ``functools.partial(multi_krum, f=2)``).

    A client is rejected when its bucket was; the reason names the bucket. Note that ``f`` Byzantine
    clients can spoil up to ``f`` buckets, so an inner ``f`` should count buckets, not clients.
    """
    if s < 1:
        raise AggregationError(f"bucket size must be >= 1, got {s}")
    v = _validate(updates)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    perm = gen.permutation(v.matrix.shape[0])
    buckets = [perm[j : j + s] for j in range(0, len(perm), s)]
    means = [v.matrix[b].mean(axis=0) for b in buckets]
    inner = aggregator(means)
    rejected = dict(v.rejected)
    used: list[int] = []
    for j, b in enumerate(buckets):
        members = [v.index[int(r)] for r in b]
        if j in inner.rejected:
            for i in members:
                rejected[i] = f"bucket {j} rejected: {inner.rejected[j]}"
        else:
            used.extend(members)
    return AggregateResult(inner.aggregate, f"bucketing(s={s}, {inner.method})", tuple(sorted(used)), rejected)


def clip_l2(update: npt.ArrayLike, max_norm: float) -> FloatArray:
    """``update * min(1, max_norm / ||update||_2)``."""
    a = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(a))
    if norm > max_norm:
        return a * (max_norm / norm)
    return a.copy()


def norm_bound(updates: Sequence[Update], max_norm: float, weights: Sequence[float] | None = None) -> AggregateResult:
    """Clip each valid update to L2 norm ``max_norm``, then :func:`fedavg`. ``clipped`` lists the
    clients whose update was scaled down."""
    if not max_norm > 0:
        raise AggregationError(f"max_norm must be > 0, got {max_norm}")
    if weights is not None and len(weights) != len(updates):
        raise AggregationError(f"{len(weights)} weights for {len(updates)} updates")
    v = _validate(updates)
    norms = np.linalg.norm(v.matrix, axis=1)
    scale = np.minimum(1.0, max_norm / np.maximum(norms, 1e-300))
    agg, used, rejected = _weighted_mean(v.matrix * scale[:, None], v.index, v.rejected, weights)
    clipped = tuple(i for r, i in enumerate(v.index) if norms[r] > max_norm and i in used)
    return AggregateResult(agg, f"norm_bound({max_norm:g})", used, rejected, clipped)
