"""Build the driving-behaviour model (dbm): dataset, central training, TFLite export, manifest.

Run in the ``train`` environment (TensorFlow; not needed by the agent)::

    python -m venv .venv-train && .venv-train/bin/pip install -e '.[train]'
    .venv-train/bin/python -m tools.build_models [--refdata ../shared/refdata] [--version 1]

Writes ``models/data/dbm-<version>.tflite`` and ``models/data/dbm-<version>.json``. The model is
an MLP 16-32-32-5 (ReLU) whose input standardisation (train-set mean/std) is baked in as
constants. It has four signatures, builtin ops only, so that LiteRT and tflite-runtime can both
run and train it on the device:

- ``infer(x: float32[None,16]) -> {"logits": float32[None,5]}``
- ``train(x: float32[32,16], y: int32[32]) -> {"loss": float32[]}``: one plain SGD step,
  learning rate ``ON_DEVICE_LR``, class-weighted cross-entropy (the central class weights)
- ``get_weights() -> {"weights": float32[N_WEIGHTS]}``: every trainable variable, flattened
  and concatenated in the order W1, b1, W2, b2, W3, b3
- ``set_weights(weights: float32[N_WEIGHTS]) -> {"ok": int32[]}``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import NDS_RELATIVE, SIM_SEEDS, build_dataset
from models.features import CLASSES, FEATURE_NAMES, HOP_S, N_CLASSES, N_FEATURES, WINDOW_S

log = logging.getLogger("build_models")

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "models" / "data"
HIDDEN = (32, 32)
BATCH = 32
ON_DEVICE_LR = 0.01
CENTRAL_LR = 0.003
EPOCHS = 60
SEED = 7
NDS_COMMIT = "f4c44bc7d0cbc3c4af22a81060523154345b829f"


def class_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    cm = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    for a, b in zip(y_true, y_pred, strict=True):
        cm[a, b] += 1
    per: dict[str, dict[str, float | int]] = {}
    for k, name in enumerate(CLASSES):
        tp = int(cm[k, k])
        p = tp / cm[:, k].sum() if cm[:, k].sum() else 0.0
        r = tp / cm[k, :].sum() if cm[k, :].sum() else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per[name] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4), "support": int(cm[k].sum())}
    return {
        "per_class": per,
        "accuracy": round(float(np.trace(cm) / max(cm.sum(), 1)), 4),
        # over the classes present in y_true (the real drives have no weaving)
        "macro_f1": round(float(np.mean([v["f1"] for v in per.values() if v["support"]])), 4),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_axes": "rows true class, columns predicted class, order as classes",
    }


def build(refdata: Path, version: str, out_dir: Path, epochs: int) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.random.set_seed(SEED)
    nds = refdata / NDS_RELATIVE
    t0 = time.monotonic()
    ds = build_dataset(nds if nds.is_file() else None, SIM_SEEDS, test_fraction=0.25, seed=SEED)
    log.info(
        "dataset: %d train / %d test windows (%.1f s); test drives %s",
        len(ds.y_train),
        len(ds.y_test),
        time.monotonic() - t0,
        ds.test_drives,
    )
    mean = ds.x_train.mean(axis=0)
    std = ds.x_train.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    counts = np.bincount(ds.y_train, minlength=N_CLASSES).astype(np.float64)
    # inverse-frequency class weights, square-rooted to temper the rare classes, mean 1 over samples
    cw = np.sqrt(counts.sum() / np.maximum(counts, 1.0) / N_CLASSES)
    cw = cw / (cw[ds.y_train].mean())
    log.info("train class counts %s, weights %s", counts.tolist(), cw.round(3).tolist())

    sum_sizes = [
        int(np.prod(s))
        for a, b in zip((N_FEATURES, *HIDDEN), (*HIDDEN, N_CLASSES), strict=True)
        for s in ((a, b), (b,))
    ]

    class DBM(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            rng = np.random.default_rng(SEED)
            sizes = (N_FEATURES, *HIDDEN, N_CLASSES)
            self.vars: list[Any] = []
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                w = rng.normal(0, np.sqrt(2.0 / a), (a, b)).astype(np.float32)
                self.vars.append(tf.Variable(w, name=f"W{i + 1}"))
                self.vars.append(tf.Variable(np.zeros(b, np.float32), name=f"b{i + 1}"))
            self.sizes = [int(np.prod(v.shape)) for v in self.vars]
            self.mean = tf.constant(mean.astype(np.float32))
            self.inv_std = tf.constant((1.0 / std).astype(np.float32))
            self.cw = tf.constant(cw.astype(np.float32))

        def logits(self, x: Any) -> Any:
            h = (x - self.mean) * self.inv_std
            w1, b1, w2, b2, w3, b3 = self.vars
            h = tf.maximum(tf.matmul(h, w1) + b1, 0.0)  # not relu: its gradient (ReluGrad) is no builtin
            h = tf.maximum(tf.matmul(h, w2) + b2, 0.0)
            return tf.matmul(h, w3) + b3

        def loss(self, x: Any, y: Any) -> Any:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=self.logits(x))
            w = tf.gather(self.cw, y)
            return tf.reduce_sum(ce * w) / tf.reduce_sum(w)

        @tf.function(input_signature=[tf.TensorSpec([None, N_FEATURES], tf.float32)])
        def infer(self, x: Any) -> Any:
            return {"logits": self.logits(x)}

        @tf.function(input_signature=[tf.TensorSpec([BATCH, N_FEATURES], tf.float32), tf.TensorSpec([BATCH], tf.int32)])
        def train(self, x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = self.loss(x, y)
            grads = tape.gradient(loss, self.vars)
            for v, g in zip(self.vars, grads, strict=True):
                v.assign_sub(ON_DEVICE_LR * g)
            return {"loss": loss}

        @tf.function(input_signature=[])
        def get_weights(self) -> Any:
            return {"weights": tf.concat([tf.reshape(v, [-1]) for v in self.vars], axis=0)}

        @tf.function(input_signature=[tf.TensorSpec([sum(sum_sizes)], tf.float32)])
        def set_weights(self, weights: Any) -> Any:
            parts = tf.split(weights, self.sizes)
            for v, p in zip(self.vars, parts, strict=True):
                v.assign(tf.reshape(p, v.shape))
            return {"ok": tf.constant(1, tf.int32)}

    model = DBM()
    opt = tf.keras.optimizers.Adam(CENTRAL_LR)
    x_tr = tf.constant(ds.x_train)
    y_tr = tf.constant(ds.y_train)
    n = len(ds.y_train)
    rng = np.random.default_rng(SEED)

    @tf.function
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = model.loss(x, y)
        opt.apply_gradients(zip(tape.gradient(loss, model.vars), model.vars, strict=True))
        return loss

    for epoch in range(epochs):
        perm = rng.permutation(n)
        losses = []
        for k in range(0, n - 255, 256):
            idx = perm[k : k + 256]
            losses.append(float(step(tf.gather(x_tr, idx), tf.gather(y_tr, idx))))
        if epoch % 10 == 0 or epoch == epochs - 1:
            log.info("epoch %d loss %.4f", epoch, np.mean(losses))

    pred_test = np.argmax(model.infer(tf.constant(ds.x_test))["logits"].numpy(), axis=1)
    pred_train = np.argmax(model.infer(x_tr)["logits"].numpy(), axis=1)
    metrics_test = class_metrics(ds.y_test, pred_test)
    per_source: dict[str, Any] = {}
    d_test = np.array(ds.d_test)
    for source in ("nds", "sim"):
        sel = np.char.startswith(d_test, source + "-")
        if sel.any():
            per_source[source] = class_metrics(ds.y_test[sel], pred_test[sel])

    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(
            model,
            tmp,
            signatures={
                "infer": model.infer.get_concrete_function(),
                "train": model.train.get_concrete_function(),
                "get_weights": model.get_weights.get_concrete_function(),
                "set_weights": model.set_weights.get_concrete_function(),
            },
        )
        converter = tf.lite.TFLiteConverter.from_saved_model(
            tmp, signature_keys=["infer", "train", "get_weights", "set_weights"]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        blob = converter.convert()

    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"dbm-{version}"
    tfl = out_dir / f"{name}.tflite"
    tfl.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    n_weights = sum(sum_sizes)
    manifest = {
        "name": "dbm",
        "version": version,
        "file": tfl.name,
        "sha256": sha,
        "size_bytes": len(blob),
        "task": "driving-behaviour classification of 4 s windows",
        "classes": list(CLASSES),
        "feature_names": list(FEATURE_NAMES),
        "window_s": WINDOW_S,
        "hop_s": HOP_S,
        "input": {"name": "x", "dtype": "float32", "shape": [None, N_FEATURES], "standardised_inside": True},
        "output": {"name": "logits", "dtype": "float32", "shape": [None, N_CLASSES]},
        "signatures": {
            "infer": {
                "inputs": {"x": ["float32", [-1, N_FEATURES]]},
                "outputs": {"logits": ["float32", [-1, N_CLASSES]]},
            },
            "train": {
                "inputs": {"x": ["float32", [BATCH, N_FEATURES]], "y": ["int32", [BATCH]]},
                "outputs": {"loss": ["float32", []]},
            },
            "get_weights": {"inputs": {}, "outputs": {"weights": ["float32", [n_weights]]}},
            "set_weights": {"inputs": {"weights": ["float32", [n_weights]]}, "outputs": {"ok": ["int32", []]}},
        },
        "architecture": f"MLP {N_FEATURES}-{HIDDEN[0]}-{HIDDEN[1]}-{N_CLASSES}, ReLU, standardisation baked in",
        "n_weights": n_weights,
        "weight_layout": [{"name": v.name.split(":")[0], "shape": list(v.shape)} for v in model.vars],
        "training": {
            "central_optimizer": f"Adam lr={CENTRAL_LR}, batch 256, {epochs} epochs, seed {SEED}",
            "on_device_optimizer": f"SGD lr={ON_DEVICE_LR}, batch {BATCH}",
            "loss": "class-weighted sparse softmax cross-entropy",
            "class_weights": dict(zip(CLASSES, [round(float(c), 4) for c in cw], strict=True)),
            "standardisation": {"mean": mean.round(6).tolist(), "std": std.round(6).tolist()},
            "train_class_counts": dict(zip(CLASSES, counts.astype(int).tolist(), strict=True)),
            "tensorflow": tf.__version__,
        },
        "data": {
            "real": {
                "dataset": "DrivePlotR naturalistic driving data (1 Hz)",
                "file": f"refdata/{NDS_RELATIVE}" if nds.is_file() else None,
                "source": f"hardtme/DrivePlotR data/nds_data.rda @ {NDS_COMMIT}",
                "licence": "MIT",
            },
            "simulated": {
                "generator": "drivers.simvehicle.SimVehicle on models.dataset random routes",
                "seeds": list(SIM_SEEDS),
            },
            "split": {"by": "drive", "test_fraction": 0.25, "seed": SEED, "test_drives": ds.test_drives},
            "windows": {"train": int(len(ds.y_train)), "test": int(len(ds.y_test))},
        },
        "metrics": {
            "held_apart_drives": metrics_test,
            "held_apart_by_source": per_source,
            "train": {"accuracy": class_metrics(ds.y_train, pred_train)["accuracy"]},
        },
        "built_from_commit": commit,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--refdata", type=Path, default=Path(os.environ.get("ACC_REFDATA", REPO.parent / "shared" / "refdata"))
    )
    ap.add_argument("--version", default="1")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    m = build(args.refdata, args.version, args.out, args.epochs)
    sys.stdout.write(
        json.dumps({"file": m["file"], "sha256": m["sha256"], "metrics": m["metrics"]["held_apart_drives"]}, indent=2)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
