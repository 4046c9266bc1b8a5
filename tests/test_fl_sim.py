"""models.fl.sim: the numpy MLP's gradients, the non-IID split, a tiny FL run that learns, attacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.fl.sim import (
    FlConfig,
    MlpTrainer,
    Trainer,
    _FlatAdapter,
    accuracy,
    dirichlet_partition,
    run_fl,
    synthetic_data,
)
from tools import fl_experiments


def _loss(m: MlpTrainer, x: np.ndarray, y: np.ndarray) -> float:
    z = m.predict(x)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def test_mlp_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 16)), rng.integers(0, 5, 8)
    m = MlpTrainer(lr=1e-3, grad_clip=None)
    assert m.n_params == 16 * 32 + 32 + 32 * 32 + 32 + 32 * 5 + 5
    w0 = m.get_weights()
    m.train_step(x, y)
    grad = (w0 - m.get_weights()) / 1e-3  # one SGD step recovers the gradient
    m.set_weights(w0)
    for k in rng.choice(m.n_params, 25, replace=False):
        e = np.zeros(m.n_params)
        e[k] = 1e-6
        m.set_weights(w0 + e)
        up = _loss(m, x, y)
        m.set_weights(w0 - e)
        down = _loss(m, x, y)
        assert (up - down) / 2e-6 == pytest.approx(grad[k], abs=1e-5, rel=1e-3)
    assert isinstance(m, Trainer)


def test_dirichlet_partition_covers_everything_and_is_skewed() -> None:
    y = np.repeat(np.arange(5), 400)
    parts = dirichlet_partition(y, 20, 0.5, np.random.default_rng(0))
    allidx = np.sort(np.concatenate(parts))
    assert np.array_equal(allidx, np.arange(len(y))) and min(len(p) for p in parts) >= 10
    shares = np.array([np.bincount(y[p], minlength=5) / len(p) for p in parts])
    assert shares.max(axis=1).mean() > 0.4  # label skew: the top class holds > 40% on average (IID: 20%)


def test_tiny_fl_run_improves_accuracy() -> None:
    data = synthetic_data(n_train=1000, n_test=500, seed=1)
    init = accuracy(MlpTrainer(seed=0), data.x_test, data.y_test)
    run = run_fl(data, FlConfig(n_clients=5, rounds=5, seed=0))
    assert len(run.accuracy) == 5
    assert run.accuracy[-1] > init + 0.25 and run.accuracy[-1] > 0.6


def test_multi_krum_beats_fedavg_under_gaussian_attack() -> None:
    data = synthetic_data(n_train=1500, n_test=500, seed=2)
    base = FlConfig(n_clients=10, rounds=6, byzantine_frac=0.2, attack="gaussian", seed=0)
    avg = run_fl(data, base)
    med = run_fl(data, FlConfig(**{**base.__dict__, "aggregator": "multi_krum"}))
    assert med.accuracy[-1] > avg.accuracy[-1] + 0.1
    assert med.rejected_byzantine == 6 * 2  # both Gaussian attackers rejected every round


def test_dp_run_reports_its_budget() -> None:
    data = synthetic_data(n_train=600, n_test=200, seed=3)
    run = run_fl(data, FlConfig(n_clients=5, rounds=3, dp_epsilon=8.0, seed=0))
    assert run.epsilon <= 8.0 and run.noise_multiplier > 0 and len(run.accuracy) == 3


class _FakeTflite:
    """The duck type of models.tflite_model.TfliteModel: list-of-arrays weights, float32 I/O."""

    def __init__(self) -> None:
        self.inner = MlpTrainer(seed=0)

    def get_weights(self) -> list[np.ndarray]:
        w = self.inner.get_weights().astype(np.float32)
        return [w[:100].reshape(10, 10), w[100:]]

    def set_weights(self, ws: list[np.ndarray]) -> None:
        self.inner.set_weights(np.concatenate([a.ravel() for a in ws]).astype(np.float64))

    def train_step(self, x: Any, y: Any) -> float:
        assert x.dtype == np.float32
        return self.inner.train_step(x, y)

    def infer(self, x: Any) -> Any:
        return self.inner.predict(x)


def test_flat_adapter_round_trips_structured_weights() -> None:
    a = _FlatAdapter(_FakeTflite())
    w = a.get_weights()
    assert w.shape == (MlpTrainer().n_params,)
    a.set_weights(w + 1.0)
    assert np.allclose(a.get_weights(), w + 1.0, atol=1e-5)
    data = synthetic_data(n_train=500, n_test=200, seed=4)
    run = run_fl(data, FlConfig(n_clients=4, rounds=3, seed=0), lambda seed: _FlatAdapter(_FakeTflite()))
    assert run.accuracy[-1] > 0.4


def test_experiments_cli_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    args = ["--quick", "--only", "a", "--rounds", "3", "--out", str(out), "--tflite", str(tmp_path / "none")]
    assert fl_experiments.main(args) == 0
    rec = json.loads(out.read_text().splitlines()[-1])
    assert rec["experiment"] == "a" and len(rec["fedavg"]) == 3
    assert "using the numpy MLP" in capsys.readouterr().out
