"""Central differential privacy on the aggregate (DP-FedAvg, McMahan et al. 2018) and its accountant.

Mechanism, per round: clip every client update to L2 norm ``C``, sum, add ``N(0, (sigma*C)^2 I)``, and
divide by the (public, fixed) number of clients. Neighbouring campaigns differ by adding or removing one
client's whole contribution (user-level DP), so the L2 sensitivity of the sum is ``C`` and each round is
the Gaussian mechanism with noise multiplier ``sigma``.

Accounting: Renyi DP of the Gaussian mechanism, ``RDP(alpha) = alpha / (2 sigma^2)`` per round (Mironov
2017), composed additively over ``R`` rounds, converted to (epsilon, delta) by minimising over alpha.
**No subsampling amplification** is claimed: every registered client takes part in every round. If the
RSU samples clients, these bounds stay valid (just loose). Two conversions are offered:

* ``"mironov"``: ``eps = RDP(alpha) + log(1/delta) / (alpha - 1)`` (Mironov 2017, Prop. 3); its minimum
  over real alpha is the closed form ``rho + 2 sqrt(rho log(1/delta))`` with ``rho = R / (2 sigma^2)``.
* ``"improved"`` (default): ``eps = RDP(alpha) + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha-1)``
  (Balle et al. 2020; Canonne, Kamath, Steinke 2020) -- never worse.

Without subsampling the R-fold composition is exactly a Gaussian mechanism with ``mu = sqrt(R)/sigma``, so
the tight epsilon is also available (:func:`gaussian_epsilon_exact`, Balle & Wang 2018, Thm. 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# real orders; the Gaussian's RDP is closed form so a dense grid is cheap
DEFAULT_ORDERS: FloatArray = np.concatenate([1.0 + np.logspace(-3, 0, 400)[:-1], np.logspace(np.log10(2.0), 5, 2000)])

__all__ = [
    "DEFAULT_ORDERS",
    "DpResult",
    "dp_aggregate",
    "gaussian_epsilon_exact",
    "gaussian_rdp",
    "noise_for_epsilon",
    "rdp_epsilon",
]


@dataclass(frozen=True)
class DpResult:
    aggregate: FloatArray  # noisy mean
    clipped: tuple[int, ...]  # clients whose update was scaled down to the bound
    noise_std: float  # std of the noise on the sum (sigma * C)


def dp_aggregate(
    updates: Sequence[npt.ArrayLike],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | int | None = None,
    n_expected: int | None = None,
) -> DpResult:
    """Clip each update to ``clip_norm``, sum, add Gaussian noise of std ``noise_multiplier * clip_norm``,
    and divide by ``n_expected`` (default ``len(updates)``; use a fixed public count so dividing leaks
    nothing). The updates must be valid (use ``aggregate.validate_updates`` first)."""
    if clip_norm <= 0 or noise_multiplier < 0:
        raise ValueError("clip_norm must be > 0 and noise_multiplier >= 0")
    m = np.stack([np.asarray(u, dtype=np.float64) for u in updates])
    if m.ndim != 2 or not np.all(np.isfinite(m)):
        raise ValueError("updates must be finite flat vectors of one length")
    norms = np.linalg.norm(m, axis=1)
    scale = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
    total = (m * scale[:, None]).sum(axis=0)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    std = noise_multiplier * clip_norm
    noisy = total + gen.normal(0.0, std, size=total.shape) if std > 0 else total
    n = n_expected if n_expected is not None else m.shape[0]
    clipped = tuple(int(i) for i in np.flatnonzero(norms > clip_norm))
    return DpResult(noisy / n, clipped, std)


def gaussian_rdp(noise_multiplier: float, rounds: int = 1, orders: npt.ArrayLike = DEFAULT_ORDERS) -> FloatArray:
    """RDP of ``rounds`` compositions of the Gaussian mechanism (sensitivity 1, std ``noise_multiplier``)."""
    a = np.asarray(orders, dtype=np.float64)
    out: FloatArray = rounds * a / (2.0 * noise_multiplier**2)
    return out


def rdp_epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    conversion: str = "improved",
    orders: npt.ArrayLike = DEFAULT_ORDERS,
) -> tuple[float, float]:
    """``(epsilon, best alpha)`` at ``delta`` after ``rounds`` rounds (no subsampling amplification)."""
    if noise_multiplier <= 0:
        return math.inf, math.nan
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    a = np.asarray(orders, dtype=np.float64)
    a = a[a > 1.0]
    rdp = gaussian_rdp(noise_multiplier, rounds, a)
    if conversion == "mironov":
        eps = rdp + math.log(1.0 / delta) / (a - 1.0)
    elif conversion == "improved":
        eps = rdp + np.log((a - 1.0) / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
    else:
        raise ValueError(f"unknown conversion {conversion!r}")
    k = int(np.argmin(eps))
    return max(float(eps[k]), 0.0), float(a[k])


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_epsilon_exact(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The tight epsilon of ``rounds`` Gaussian mechanisms (= one with ``mu = sqrt(rounds)/sigma``):
    the root of ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) = delta`` (Balle & Wang 2018)."""
    if noise_multiplier <= 0:
        return math.inf
    mu = math.sqrt(rounds) / noise_multiplier

    def d(eps: float) -> float:
        return _phi(-eps / mu + mu / 2) - math.exp(eps) * _phi(-eps / mu - mu / 2)

    if d(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while d(hi) > delta:
        hi *= 2.0
        if hi > 1e4:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if d(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def noise_for_epsilon(epsilon: float, delta: float, rounds: int, conversion: str = "improved") -> float:
    """The smallest noise multiplier (to 1e-4 relative) whose RDP epsilon after ``rounds`` is <= ``epsilon``."""
    if epsilon <= 0:
        raise ValueError("epsilon must be > 0")
    lo, hi = 1e-3, 1.0
    while rdp_epsilon(hi, rounds, delta, conversion)[0] > epsilon:
        hi *= 2.0
    while hi - lo > 1e-4 * hi:
        mid = 0.5 * (lo + hi)
        if rdp_epsilon(mid, rounds, delta, conversion)[0] > epsilon:
            lo = mid
        else:
            hi = mid
    return hi
