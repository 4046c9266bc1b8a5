"""Federated-learning simulator: non-IID clients, a numpy MLP, Byzantine attacks, robust and DP aggregation.

The experiment harness behind ``python -m tools.fl_experiments``. The local trainer is pluggable
(:class:`Trainer`); :class:`MlpTrainer` is a 16-32-32-5 ReLU MLP trained by plain SGD on softmax
cross-entropy, and :func:`load_tflite_trainer` wraps ``models.tflite_model.TfliteModel`` when it exists.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from models.fl import aggregate as agg
from models.fl.dp import dp_aggregate, noise_for_epsilon, rdp_epsilon

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ATTACKS = ("none", "sign_flip", "scaling", "gaussian", "label_flip")
AGGREGATORS = ("fedavg", "median", "trimmed_mean", "multi_krum", "bucketing_multi_krum", "bucketing_median")


@runtime_checkable
class Trainer(Protocol):
    """A local model: flat weights in and out, one SGD step on a batch, logits for evaluation."""

    def get_weights(self) -> FloatArray: ...

    def set_weights(self, weights: FloatArray) -> None: ...

    def train_step(self, x: FloatArray, y: IntArray) -> float: ...

    def predict(self, x: FloatArray) -> FloatArray: ...


class MlpTrainer:
    """A ReLU MLP (default 16-32-32-5) with SGD on softmax cross-entropy, all weights in one flat buffer."""

    def __init__(
        self, sizes: Sequence[int] = (16, 32, 32, 5), lr: float = 0.3, seed: int = 0, grad_clip: float | None = 10.0
    ) -> None:
        self.sizes = tuple(sizes)
        self.lr = lr
        self.grad_clip = grad_clip
        shapes: list[tuple[int, ...]] = []
        for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            shapes += [(a, b), (b,)]
        self._shapes = shapes
        self.n_params = sum(math.prod(s) for s in shapes)
        self._w = np.zeros(self.n_params)
        self._views = self._split(self._w)
        rng = np.random.default_rng(seed)
        for k in range(0, len(self._views), 2):
            fan_in = self._views[k].shape[0]
            self._views[k][...] = rng.normal(0.0, math.sqrt(2.0 / fan_in), self._views[k].shape)  # He init

    def _split(self, flat: FloatArray) -> list[FloatArray]:
        out: list[FloatArray] = []
        pos = 0
        for s in self._shapes:
            n = math.prod(s)
            out.append(flat[pos : pos + n].reshape(s))
            pos += n
        return out

    def get_weights(self) -> FloatArray:
        return self._w.copy()

    def set_weights(self, weights: FloatArray) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != self._w.shape:
            raise ValueError(f"weights of shape {w.shape}, expected {self._w.shape}")
        self._w[...] = w

    def _forward(self, x: FloatArray) -> list[FloatArray]:
        acts = [x]
        h = x
        n_layers = len(self._views) // 2
        for k in range(n_layers):
            z = h @ self._views[2 * k] + self._views[2 * k + 1]
            h = np.maximum(z, 0.0) if k < n_layers - 1 else z
            acts.append(h)
        return acts

    def predict(self, x: FloatArray) -> FloatArray:
        return self._forward(np.asarray(x, dtype=np.float64))[-1]

    def train_step(self, x: FloatArray, y: IntArray) -> float:
        acts = self._forward(np.asarray(x, dtype=np.float64))
        logits = acts[-1]
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        n = x.shape[0]
        loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
        g = p
        g[np.arange(n), y] -= 1.0
        g /= n
        grads = [np.empty(0)] * len(self._views)
        for k in range(len(self._views) // 2 - 1, -1, -1):
            grads[2 * k] = acts[k].T @ g
            grads[2 * k + 1] = g.sum(axis=0)
            if k > 0:
                g = (g @ self._views[2 * k].T) * (acts[k] > 0)
        step = self.lr
        if self.grad_clip is not None:
            norm = math.sqrt(sum(float(np.vdot(gr, gr)) for gr in grads))
            if norm > self.grad_clip:
                step *= self.grad_clip / norm
        for v, gr in zip(self._views, grads, strict=True):
            v -= step * gr
        return loss


class _FlatAdapter:
    """Wraps a model whose ``get_weights`` gives an array, a list of arrays or a dict of arrays."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._template = model.get_weights()

    def get_weights(self) -> FloatArray:
        w = self.model.get_weights()
        parts = list(w.values()) if isinstance(w, dict) else (w if isinstance(w, list | tuple) else [w])
        return np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])

    def set_weights(self, weights: FloatArray) -> None:
        t = self._template
        parts = list(t.values()) if isinstance(t, dict) else (t if isinstance(t, list | tuple) else [t])
        out: list[Any] = []
        pos = 0
        for p in parts:
            a = np.asarray(p)
            out.append(np.asarray(weights[pos : pos + a.size], dtype=a.dtype).reshape(a.shape))
            pos += a.size
        if isinstance(t, dict):
            self.model.set_weights(dict(zip(t.keys(), out, strict=True)))
        elif isinstance(t, list | tuple):
            self.model.set_weights(out)
        else:
            self.model.set_weights(out[0])

    def train_step(self, x: FloatArray, y: IntArray) -> float:
        return float(self.model.train_step(x.astype(np.float32), y))

    def predict(self, x: FloatArray) -> FloatArray:
        return np.asarray(self.model.infer(x.astype(np.float32)), dtype=np.float64)


def load_tflite_trainer(path: str | Path) -> Callable[[int], Trainer] | None:
    """A factory of trainers backed by ``models.tflite_model.TfliteModel(path)``, or None when the file or
    the module is absent. The factory's argument (a seed) is ignored: the server sets the weights."""
    if not Path(path).is_file():
        return None
    try:
        mod = importlib.import_module("models.tflite_model")
    except ImportError:
        return None
    cls = getattr(mod, "TfliteModel", None)
    if cls is None:
        return None

    def make(seed: int) -> Trainer:
        loader = getattr(cls, "from_file", None) or getattr(cls, "load", None)
        model = loader(str(path)) if loader is not None else cls(str(path))
        return _FlatAdapter(model)

    return make


# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray
    n_classes: int


def synthetic_data(
    n_train: int = 6000,
    n_test: int = 2000,
    n_features: int = 16,
    n_classes: int = 5,
    separation: float = 0.8,
    components: int = 2,
    seed: int = 0,
) -> Dataset:
    """Class-conditional Gaussian "feature windows": each class is a mixture of ``components`` unit
    Gaussians whose means are drawn ``N(0, separation^2 I)`` (so not linearly separable)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, separation, (n_classes, components, n_features))
    mix = rng.normal(0.0, 1.0, (n_features, n_features)) / math.sqrt(n_features) + np.eye(n_features)

    def draw(n: int) -> tuple[FloatArray, IntArray]:
        y = rng.integers(0, n_classes, n)
        c = rng.integers(0, components, n)
        x = means[y, c] + rng.normal(0.0, 1.0, (n, n_features)) @ mix
        return x, y.astype(np.int64)

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    mu, sd = xtr.mean(axis=0), xtr.std(axis=0)
    return Dataset((xtr - mu) / sd, ytr, (xte - mu) / sd, yte, n_classes)


def real_data(seed: int = 0, test_fraction: float = 0.25, standardize: bool = True) -> Dataset:
    """``models.dataset.load_dataset() -> (X, y, drive_ids)``, split by drive (whole drives held out).

    ``standardize=False`` keeps the raw features (for a model that normalises inside, like the TFLite one).
    """
    mod = importlib.import_module("models.dataset")
    x, y, drives = mod.load_dataset()
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y, dtype=np.int64)
    ids = [str(d) for d in drives]
    # the same held-out drives as the model builder (so a pretrained model is not tested on its training drives)
    _, test_ids = mod.split_drives(ids, test_fraction=test_fraction, seed=seed)
    te = np.isin(np.asarray(ids), np.asarray(test_ids))
    mu, sd = (x[~te].mean(axis=0), x[~te].std(axis=0) + 1e-9) if standardize else (0.0, 1.0)
    return Dataset((x[~te] - mu) / sd, y[~te], (x[te] - mu) / sd, y[te], int(y.max()) + 1)


def dirichlet_partition(
    y: IntArray, n_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[IntArray]:
    """Label-skew non-IID split: for each class, its samples go to clients in ``Dirichlet(alpha)``
    proportions; redrawn until every client has at least ``min_size`` samples."""
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_clients, alpha))) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give {n_clients} clients >= {min_size} samples each")


# ------------------------------------------------------------------------------------------ training


def accuracy(trainer: Trainer, x: FloatArray, y: IntArray) -> float:
    return float((trainer.predict(x).argmax(axis=1) == y).mean())


def local_train(
    trainer: Trainer, x: FloatArray, y: IntArray, epochs: int, batch_size: int, rng: np.random.Generator
) -> None:
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch_size):
            b = order[s : s + batch_size]
            trainer.train_step(x[b], y[b])


@dataclass
class FlConfig:
    n_clients: int = 20
    alpha: float = 0.5
    rounds: int = 30
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 0.3
    byzantine_frac: float = 0.0
    attack: str = "none"
    aggregator: str = "fedavg"
    assumed_f: int | None = None  # the server's f for trimmed mean / Krum (default: the true count, >= 1)
    bucket_size: int = 2
    dp_epsilon: float | None = None  # None: no DP
    dp_delta: float = 1e-5
    clip_norm: float = 1.0
    scale_factor: float = 10.0
    noise_std: float = 1.0
    seed: int = 0


@dataclass
class FlRun:
    config: FlConfig
    accuracy: list[float] = field(default_factory=list)  # test accuracy after each round
    rejected_byzantine: int = 0  # Byzantine updates rejected, summed over rounds (Krum-type only)
    rejected_honest: int = 0
    noise_multiplier: float = 0.0
    epsilon: float = 0.0


def _attack(update: FloatArray, cfg: FlConfig, rng: np.random.Generator) -> FloatArray:
    if cfg.attack == "sign_flip":
        return -update
    if cfg.attack == "scaling":
        return cfg.scale_factor * update
    if cfg.attack == "gaussian":
        return rng.normal(0.0, cfg.noise_std, update.shape)
    return update  # label_flip acts on the data; none


def _aggregator(cfg: FlConfig, f: int, rng: np.random.Generator) -> agg.Aggregator:
    n = cfg.n_clients
    if cfg.aggregator == "fedavg":
        return agg.fedavg
    if cfg.aggregator == "median":
        return agg.coordinate_median
    if cfg.aggregator == "trimmed_mean":
        return partial(agg.trimmed_mean, beta=min(f / n, 0.49))
    if cfg.aggregator == "multi_krum":
        return partial(agg.multi_krum, f=f, m=n - f)
    n_b = math.ceil(n / cfg.bucket_size)
    # f bad clients spoil up to f buckets. Krum's guarantee needs n_b >= 2 f_b + 3, which 10 buckets of 2 with
    # f = 4..6 do not meet; use f_b = f anyway (as long as Krum can score: n_b - f_b - 2 >= 1)
    f_b = max(0, min(f, n_b - 3))
    inner: agg.Aggregator
    if cfg.aggregator == "bucketing_multi_krum":
        inner = partial(agg.multi_krum, f=f_b, m=n_b - f_b)
    elif cfg.aggregator == "bucketing_median":
        inner = agg.coordinate_median
    else:
        raise ValueError(f"unknown aggregator {cfg.aggregator!r} (known: {', '.join(AGGREGATORS)})")
    return partial(agg.bucketing, s=cfg.bucket_size, aggregator=inner, rng=rng)


def run_fl(data: Dataset, cfg: FlConfig, trainer_factory: Callable[[int], Trainer] | None = None) -> FlRun:
    """Simulate ``cfg.rounds`` rounds of FL and record the global model's test accuracy after each."""
    if cfg.attack not in ATTACKS:
        raise ValueError(f"unknown attack {cfg.attack!r} (known: {', '.join(ATTACKS)})")
    factory = trainer_factory or (lambda seed: MlpTrainer(lr=cfg.lr, seed=seed))
    rng = np.random.default_rng(cfg.seed)
    min_size = max(1, min(10, len(data.y_train) // (10 * cfg.n_clients)))
    parts = dirichlet_partition(data.y_train, cfg.n_clients, cfg.alpha, rng, min_size)
    n_byz = int(round(cfg.byzantine_frac * cfg.n_clients)) if cfg.attack != "none" else 0
    byz = set(int(i) for i in rng.permutation(cfg.n_clients)[:n_byz])
    f = cfg.assumed_f if cfg.assumed_f is not None else max(1, n_byz)
    aggregator = _aggregator(cfg, f, rng)
    model = factory(cfg.seed)
    local = factory(cfg.seed)
    run = FlRun(cfg)
    if cfg.dp_epsilon is not None and math.isinf(cfg.dp_epsilon):
        run.epsilon = math.inf  # clipping only, no noise
    elif cfg.dp_epsilon is not None:
        run.noise_multiplier = noise_for_epsilon(cfg.dp_epsilon, cfg.dp_delta, cfg.rounds)
        run.epsilon = rdp_epsilon(run.noise_multiplier, cfg.rounds, cfg.dp_delta)[0]
    sizes = [float(len(p)) for p in parts]
    for _ in range(cfg.rounds):
        w = model.get_weights()
        updates: list[FloatArray] = []
        for k, idx in enumerate(parts):
            local.set_weights(w)
            y = data.y_train[idx]
            if k in byz and cfg.attack == "label_flip":
                y = data.n_classes - 1 - y
            local_train(local, data.x_train[idx], y, cfg.local_epochs, cfg.batch_size, rng)
            u = local.get_weights() - w
            updates.append(_attack(u, cfg, rng) if k in byz else u)
        if cfg.dp_epsilon is not None:
            # a client whose local training diverged sends nothing: a zero contribution keeps n fixed
            safe = [u if np.all(np.isfinite(u)) else np.zeros_like(u) for u in updates]
            delta = dp_aggregate(safe, cfg.clip_norm, run.noise_multiplier, rng).aggregate
        else:
            res = agg.fedavg(updates, sizes) if cfg.aggregator == "fedavg" else aggregator(updates)
            delta = res.aggregate
            run.rejected_byzantine += sum(1 for i in res.rejected if i in byz)
            run.rejected_honest += sum(1 for i in res.rejected if i not in byz)
        model.set_weights(w + delta)
        run.accuracy.append(accuracy(model, data.x_test, data.y_test))
    return run


def run_centralised(
    data: Dataset,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    trainer_factory: Callable[[int], Trainer] | None = None,
) -> list[float]:
    """Train one model on the pooled data; test accuracy after each epoch."""
    model = (trainer_factory or (lambda s: MlpTrainer(lr=lr, seed=s)))(seed)
    rng = np.random.default_rng(seed)
    out: list[float] = []
    for _ in range(epochs):
        local_train(model, data.x_train, data.y_train, 1, batch_size, rng)
        out.append(accuracy(model, data.x_test, data.y_test))
    return out
