"""The shipped driving-behaviour model: manifest hash check, LiteRT inference and on-device
training through ``models.tflite_model.TfliteModel`` (no TensorFlow needed)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from models.features import CLASSES, FEATURE_NAMES, N_CLASSES, N_FEATURES, features_from_arrays
from models.manifest import Manifest, ManifestError, ModelHashMismatch, default_manifest, load_model, model_hash
from models.tflite_model import TfliteModel

MANIFEST = default_manifest("dbm")


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_model(MANIFEST)[0]


@pytest.fixture()
def model() -> TfliteModel:
    return TfliteModel.from_manifest(MANIFEST, runtime="litert")


def _window(rng: np.random.Generator, ax: float, v0: float) -> np.ndarray:
    """Features of a 4 s, 10 Hz window at constant longitudinal acceleration ``ax`` (+ noise)."""
    t = np.arange(40) * 0.1
    speed = np.maximum(v0 + ax * t, 0.0)
    return features_from_arrays(
        t, speed, ax + rng.normal(0, 0.2, 40), rng.normal(0, 0.2, 40), rng.normal(0, 0.5, 40), start=0.0
    )


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A labelled batch: 16 hard brakes (-6.5 m/s² from 25 m/s), 8 hard launches (+4.5 m/s²
    from 2 m/s), 8 gentle cruising windows."""
    rng = np.random.default_rng(seed)
    x = np.stack(
        [_window(rng, -6.5, 25.0) for _ in range(16)]
        + [_window(rng, 4.5, 2.0) for _ in range(8)]
        + [_window(rng, rng.uniform(-0.3, 0.3), rng.uniform(8, 20)) for _ in range(8)]
    )
    y = np.array([1] * 16 + [2] * 8 + [0] * 8, np.int32)
    return x.astype(np.float32), y


def test_the_shipped_manifest_describes_the_model(manifest: Manifest) -> None:
    assert manifest.name == "dbm"
    assert manifest.classes == CLASSES
    assert manifest.feature_names == FEATURE_NAMES
    assert manifest.sha256 == model_hash(MANIFEST.parent / manifest.file)
    assert (MANIFEST.parent / manifest.file).stat().st_size < 100_000
    per_class = manifest.metrics["held_apart_drives"]["per_class"]
    assert set(per_class) == set(CLASSES)
    assert set(manifest.signatures) == {"infer", "train", "get_weights", "set_weights"}


def test_a_tampered_model_is_refused_naming_both_hashes(tmp_path: Path, manifest: Manifest) -> None:
    shutil.copy(MANIFEST, tmp_path / MANIFEST.name)
    blob = bytearray((MANIFEST.parent / manifest.file).read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / manifest.file).write_bytes(bytes(blob))
    actual = model_hash(tmp_path / manifest.file)
    with pytest.raises(ModelHashMismatch) as err:
        load_model(tmp_path / MANIFEST.name)
    assert actual in str(err.value) and manifest.sha256 in str(err.value)
    with pytest.raises(ModelHashMismatch):
        TfliteModel(manifest=tmp_path / MANIFEST.name)


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_model(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ManifestError, match="not JSON"):
        load_model(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ManifestError, match="lacks version"):
        load_model(tmp_path / "short.json")
    (tmp_path / "nofile.json").write_text(
        json.dumps(
            {"name": "x", "version": "1", "file": "x.tflite", "sha256": "00", "classes": [], "feature_names": []}
        )
    )
    with pytest.raises(ManifestError, match="does not exist"):
        load_model(tmp_path / "nofile.json")


def test_infer_shapes(model: TfliteModel) -> None:
    assert model.runtime == "litert"
    assert model.classes == CLASSES
    for n in (1, 7, 64):
        out = model.infer(np.zeros((n, N_FEATURES), np.float32))
        assert out.shape == (n, N_CLASSES) and out.dtype == np.float32
        assert np.isfinite(out).all()
    assert model.infer(np.zeros(N_FEATURES)).shape == (1, N_CLASSES)
    with pytest.raises(ValueError, match="infer wants"):
        model.infer(np.zeros((2, 3)))


def test_the_model_separates_obvious_windows(model: TfliteModel) -> None:
    x, y = _batch()
    pred = model.predict(x)
    assert (pred == y).mean() >= 0.9, pred


def test_a_train_step_lowers_the_loss(model: TfliteModel) -> None:
    x, y = _batch(1)
    # relabel so that the shipped model is wrong: there is something to learn
    y = np.full(32, CLASSES.index("weaving"), np.int32)
    losses = [model.train_step(x, y) for _ in range(20)]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="train_step wants"):
        model.train_step(x[:, :8], y)
    with pytest.raises(ValueError, match="train_step wants"):
        model.train_step(x[:8], y[:9])
    stats = model.latency()
    assert stats.train_count == 20 and 0 < stats.train_p50 <= stats.train_p99
    # other batch sizes: whole model batches, the last one wrapped around
    assert np.isfinite(model.train_step(x[:8], y[:8]))
    assert np.isfinite(model.train_step(np.concatenate([x, x[:5]]), np.concatenate([y, y[:5]])))
    assert model.latency().train_count == 20 + 1 + 2


def test_weights_round_trip_and_set_weights_changes_inference(model: TfliteModel, manifest: Manifest) -> None:
    w = model.get_weights()
    assert w.shape == (manifest.n_weights,) == (model.n_weights,) and w.dtype == np.float32
    x, _ = _batch(2)
    before = model.infer(x)
    model.set_weights(w)
    np.testing.assert_array_equal(model.get_weights(), w)
    np.testing.assert_allclose(model.infer(x), before, rtol=1e-6, atol=1e-6)
    w2 = w.copy()
    w2[-N_CLASSES:] += np.arange(N_CLASSES, dtype=np.float32)  # the output biases
    model.set_weights(w2)
    np.testing.assert_array_equal(model.get_weights(), w2)
    assert not np.allclose(model.infer(x), before)
    np.testing.assert_allclose(model.infer(x) - before, np.broadcast_to(np.arange(N_CLASSES), before.shape), atol=1e-4)
    with pytest.raises(ValueError, match="set_weights wants"):
        model.set_weights(w[:-1])
    bad = w.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.set_weights(bad)


def test_weights_move_from_one_instance_to_another(model: TfliteModel) -> None:
    other = TfliteModel.from_manifest(MANIFEST)
    x, _ = _batch(3)
    y = np.full(32, CLASSES.index("weaving"), np.int32)  # a lesson the shipped model has not learnt
    for _ in range(5):
        model.train_step(x, y)
    assert not np.allclose(model.infer(x), other.infer(x))
    other.set_weights(model.get_weights())
    np.testing.assert_allclose(model.infer(x), other.infer(x), rtol=1e-6, atol=1e-6)


def test_concurrent_calls_are_serialised(model: TfliteModel) -> None:
    x, y = _batch(4)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(50):
                if i % 2:
                    model.train_step(x, y)
                else:
                    assert model.infer(x).shape == (32, N_CLASSES)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = model.latency()
    assert stats.infer_count == 100 and stats.train_count == 100


def test_a_bare_path_works_without_manifest(manifest: Manifest) -> None:
    m = TfliteModel(MANIFEST.parent / manifest.file)
    assert m.manifest is None and m.infer(np.zeros((2, N_FEATURES))).shape == (2, N_CLASSES)
    with pytest.raises(ValueError, match="needs a model path"):
        TfliteModel()
