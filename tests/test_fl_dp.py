"""models.fl.dp: the accountant against closed forms and the exact Gaussian curve; the mechanism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.fl.dp import dp_aggregate, gaussian_epsilon_exact, gaussian_rdp, noise_for_epsilon, rdp_epsilon


def _closed_form(sigma: float, rounds: int, delta: float) -> float:
    rho = rounds / (2 * sigma**2)  # min over real alpha of rho*alpha + log(1/delta)/(alpha-1)
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 1), (2.0, 10), (5.0, 30), (0.8, 3)])
def test_mironov_conversion_matches_closed_form(sigma: float, rounds: int) -> None:
    eps, alpha = rdp_epsilon(sigma, rounds, 1e-5, conversion="mironov")
    want = _closed_form(sigma, rounds, 1e-5)
    assert eps == pytest.approx(want, rel=2e-3) and eps >= want - 1e-9
    assert alpha == pytest.approx(1 + math.sqrt(math.log(1e5) / (rounds / (2 * sigma**2))), rel=0.02)


def test_sigma_one_one_round_known_values() -> None:
    # sigma = 1, one round, delta = 1e-5: 0.5 + 2 sqrt(0.5 ln 1e5) = 5.2985 (Mironov's conversion)
    assert rdp_epsilon(1.0, 1, 1e-5, "mironov")[0] == pytest.approx(5.2985, abs=1e-3)
    # the exact (tight) epsilon of the Gaussian mechanism with mu = 1 (Balle & Wang 2018), and delta(eps) at it
    exact = gaussian_epsilon_exact(1.0, 1, 1e-5)
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    assert phi(-exact + 0.5) - math.exp(exact) * phi(-exact - 0.5) == pytest.approx(1e-5, rel=1e-6)
    assert 4.3 < exact < 4.45
    improved = rdp_epsilon(1.0, 1, 1e-5)[0]
    assert exact < improved < 5.2985  # both RDP conversions are upper bounds on the tight value


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 1), (3.0, 30), (20.0, 30), (0.5, 5)])
def test_rdp_bounds_the_exact_value(sigma: float, rounds: int) -> None:
    exact = gaussian_epsilon_exact(sigma, rounds, 1e-5)
    improved = rdp_epsilon(sigma, rounds, 1e-5)[0]
    mironov = rdp_epsilon(sigma, rounds, 1e-5, "mironov")[0]
    assert exact <= improved <= mironov
    assert improved < 1.3 * exact + 0.1  # and not absurdly loose


def test_composition_is_linear_in_rdp() -> None:
    a = np.array([2.0, 8.0, 32.0])
    assert np.allclose(gaussian_rdp(2.0, 10, a), 10 * gaussian_rdp(2.0, 1, a))
    assert np.allclose(gaussian_rdp(2.0, 1, a), a / 8.0)
    # R rounds at sigma = one round at sigma / sqrt(R)
    assert rdp_epsilon(4.0, 16, 1e-5)[0] == pytest.approx(rdp_epsilon(1.0, 1, 1e-5)[0], rel=1e-9)


def test_noise_for_epsilon_inverts() -> None:
    for eps in (1.0, 3.0, 8.0):
        sigma = noise_for_epsilon(eps, 1e-5, 30)
        assert rdp_epsilon(sigma, 30, 1e-5)[0] <= eps
        assert rdp_epsilon(sigma * 0.99, 30, 1e-5)[0] > eps


def test_dp_aggregate_clips_and_adds_noise_of_the_right_scale() -> None:
    ups = [np.array([3.0, 4.0]), np.array([0.3, 0.4])]
    r = dp_aggregate(ups, clip_norm=1.0, noise_multiplier=0.0)
    assert r.aggregate.tolist() == pytest.approx([0.45, 0.6]) and r.clipped == (0,)
    d = 200_000
    r = dp_aggregate([np.zeros(d)] * 4, clip_norm=2.0, noise_multiplier=1.5, rng=0, n_expected=4)
    assert r.noise_std == 3.0
    assert float(np.std(r.aggregate * 4)) == pytest.approx(3.0, rel=0.01)
