"""A trainable TFLite model behind one lock: infer, train step, weights, latency stats.

The model must have the signatures ``tools/build_models.py`` exports: ``infer(x)``,
``train(x, y)``, ``get_weights()``, ``set_weights(weights)``. Every call holds the instance's
lock (the interpreter is not thread-safe), so the agent may call it from
``asyncio.to_thread`` workers. Latencies are kept for the last ``LATENCY_WINDOW`` calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .manifest import Manifest, load_model
from .runtime import load_interpreter

__all__ = ["LATENCY_WINDOW", "LatencyStats", "TfliteModel"]

LATENCY_WINDOW = 1000


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Call counts and latencies (seconds) over the last ``LATENCY_WINDOW`` calls of each kind."""

    infer_count: int
    infer_p50: float
    infer_p99: float
    train_count: int
    train_p50: float
    train_p99: float


def _pct(samples: deque[float], q: float) -> float:
    return float(np.percentile(np.fromiter(samples, dtype=np.float64), q)) if samples else 0.0


class TfliteModel:
    """``TfliteModel(path)`` for a bare ``.tflite``; ``TfliteModel(manifest=...)`` or
    ``TfliteModel.from_manifest(path)`` checks the model's hash first."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        manifest: Manifest | str | Path | None = None,
        runtime: str | None = None,
        num_threads: int = 1,
    ) -> None:
        self.manifest: Manifest | None = None
        if manifest is not None:
            if isinstance(manifest, Manifest):
                if path is None:
                    raise ValueError("a Manifest object needs the model path too (or pass the manifest's path)")
                self.manifest = manifest
            else:
                self.manifest, path = load_model(manifest)
        if path is None:
            raise ValueError("TfliteModel needs a model path or a manifest")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._interp, self.runtime = load_interpreter(self.path, runtime=runtime, num_threads=num_threads)
        sigs = self._interp.get_signature_list()
        missing = [s for s in ("infer", "train", "get_weights", "set_weights") if s not in sigs]
        if missing:
            from .runtime import ModelLoadError

            raise ModelLoadError(f"{self.path}: model lacks signature(s) {', '.join(missing)}")
        self._infer = self._interp.get_signature_runner("infer")
        self._train = self._interp.get_signature_runner("train")
        self._get = self._interp.get_signature_runner("get_weights")
        self._set = self._interp.get_signature_runner("set_weights")
        train_in = self._train.get_input_details()
        self.train_batch = int(train_in["x"]["shape"][0])
        self.n_features = int(train_in["x"]["shape"][1])
        self.n_weights = int(self._set.get_input_details()["weights"]["shape"][0])
        self._infer_lat: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._train_lat: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._infer_count = 0
        self._train_count = 0

    @classmethod
    def from_manifest(cls, manifest_path: str | Path, **kwargs: Any) -> TfliteModel:
        return cls(manifest=manifest_path, **kwargs)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.manifest.classes if self.manifest else ()

    def infer(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Logits ``[n, n_classes]`` for features ``[n, n_features]`` (a single row is allowed)."""
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"infer wants [n, {self.n_features}] features, got shape {arr.shape}")
        with self._lock:
            t0 = time.perf_counter()
            out = self._infer(x=np.ascontiguousarray(arr))["logits"]
            self._infer_lat.append(time.perf_counter() - t0)
            self._infer_count += 1
        return np.array(out, dtype=np.float32, copy=True)

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Class indices of ``infer(x)``."""
        return np.asarray(np.argmax(self.infer(x), axis=1), dtype=np.int64)

    def train_step(self, x: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """On-device SGD on ``n`` labelled rows; the mean batch loss.

        The model's train signature takes exactly ``train_batch`` rows: ``n`` rows make
        ``ceil(n / train_batch)`` steps, the last batch filled up by wrapping around to the first
        rows (so rows there count twice).
        """
        xa = np.asarray(x, dtype=np.float32)
        ya = np.asarray(y, dtype=np.int32).reshape(-1)
        if xa.ndim != 2 or xa.shape[1] != self.n_features or xa.shape[0] != ya.shape[0] or not len(ya):
            raise ValueError(
                f"train_step wants x [n, {self.n_features}] and y [n] with n >= 1, got {xa.shape} and {ya.shape}"
            )
        n, b = len(ya), self.train_batch
        losses = []
        with self._lock:
            for start in range(0, n, b):
                idx = np.arange(start, start + b) % n
                t0 = time.perf_counter()
                losses.append(
                    float(self._train(x=np.ascontiguousarray(xa[idx]), y=np.ascontiguousarray(ya[idx]))["loss"])
                )
                self._train_lat.append(time.perf_counter() - t0)
                self._train_count += 1
        return float(np.mean(losses))

    def get_weights(self) -> npt.NDArray[np.float32]:
        """Every trainable weight as one flat float32 vector (layout in the manifest)."""
        with self._lock:
            out = self._get()["weights"]
        return np.array(out, dtype=np.float32, copy=True)

    def set_weights(self, weights: npt.ArrayLike) -> None:
        w = np.ascontiguousarray(np.asarray(weights, dtype=np.float32))
        if w.shape != (self.n_weights,):
            raise ValueError(f"set_weights wants a vector of {self.n_weights} floats, got shape {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError("set_weights: weights contain NaN or infinity")
        with self._lock:
            self._set(weights=w)

    def latency(self) -> LatencyStats:
        with self._lock:
            return LatencyStats(
                infer_count=self._infer_count,
                infer_p50=_pct(self._infer_lat, 50),
                infer_p99=_pct(self._infer_lat, 99),
                train_count=self._train_count,
                train_p50=_pct(self._train_lat, 50),
                train_p99=_pct(self._train_lat, 99),
            )
