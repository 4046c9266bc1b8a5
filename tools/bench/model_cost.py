"""On-device cost of the behaviour model: per-window inference (features + TFLite invoke) and a
training step on a batch of 32, next to a bare interpreter invoke of the same model in the same
run; and the RSS of a process with the model loaded and the demo OBU agent with behaviour + the
learned detector on.

    python -m tools.bench.model_cost [--quick]

Baseline: ``interpreter.get_signature_runner("infer")(x=...)`` on one window, the raw LiteRT call.
Ours: ``window_features`` on 40 VehicleState snapshots (4 s at 10 Hz) + ``TfliteModel.infer``
(lock, latency bookkeeping), i.e. what the learned detector does per window. Ends with one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from hal.types import VehicleState
from models.features import window_features
from models.manifest import default_manifest, load_model
from models.runtime import load_interpreter
from models.tflite_model import TfliteModel


def _pcts(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2] * 1e6, s[min(len(s) - 1, int(0.99 * len(s)))] * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 20000
    _manifest, path = load_model(default_manifest("dbm"))
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(1, 16)).astype(np.float32)

    interp, runtime = load_interpreter(path)
    raw = interp.get_signature_runner("infer")
    bare = []
    for _ in range(n):
        t = time.perf_counter()
        raw(x=x1)
        bare.append(time.perf_counter() - t)

    model = TfliteModel(path)
    states = [
        VehicleState(
            monotonic=i / 10,
            timestamp=1.8e9 + i / 10,
            sequence=i,
            speed=15.0,
            accel_longitudinal=float(rng.normal()),
            accel_lateral=float(rng.normal()),
            yaw_rate=float(rng.normal(0, 3)),
            heading=90.0,
        )
        for i in range(40)
    ]
    ours, feats = [], []
    for _ in range(n):
        t = time.perf_counter()
        f = window_features(states)
        t1 = time.perf_counter()
        model.infer(f[None, :])
        ours.append(time.perf_counter() - t)
        feats.append(t1 - t)
    xb = rng.normal(size=(32, 16)).astype(np.float32)
    yb = rng.integers(0, 5, size=32).astype(np.int32)
    train = []
    for _ in range(n // 4):
        t = time.perf_counter()
        model.train_step(xb, yb)
        train.append(time.perf_counter() - t)

    import psutil

    rss = psutil.Process().memory_info().rss / 2**20
    b50, b99 = _pcts(bare)
    o50, o99 = _pcts(ours)
    f50, _ = _pcts(feats)
    t50, t99 = _pcts(train)
    sys.stdout.write(
        f"{runtime}: bare invoke p50 {b50:.1f} us p99 {b99:.1f} us; window (features + infer) p50 {o50:.1f} us "
        f"p99 {o99:.1f} us (features {f50:.1f} us); train step (32) p50 {t50:.1f} us p99 {t99:.1f} us; "
        f"RSS with the model loaded {rss:.1f} MiB\n"
    )
    sys.stdout.write(
        json.dumps(
            {
                "figure": "behaviour_model_window_inference",
                "unit": "us",
                "value": round(o50, 1),
                "baseline": round(b50, 1),
                "ratio": round(o50 / b50, 2),
                "p99_us": round(o99, 1),
                "bare_p99_us": round(b99, 1),
                "features_p50_us": round(f50, 1),
                "train32_p50_us": round(t50, 1),
                "train32_p99_us": round(t99, 1),
                "rss_mib_model_loaded": round(rss, 1),
                "runtime": runtime,
                "quick": args.quick,
            }
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
