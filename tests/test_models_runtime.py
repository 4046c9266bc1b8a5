from __future__ import annotations

from pathlib import Path

import pytest

from models.runtime import ModelLoadError, RuntimeNotAvailable, available_runtimes, load_interpreter


def test_the_default_runtime_is_installed() -> None:
    assert "litert" in available_runtimes()


def test_garbage_model_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00not a flatbuffer" * 10)
    with pytest.raises(ModelLoadError, match="model.tflite: not a loadable TFLite model"):
        load_interpreter(bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_interpreter(tmp_path / "absent.tflite")


def test_forcing_a_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(RuntimeNotAvailable, match="unknown TFLite runtime 'onnx'"):
        load_interpreter(tmp_path / "x.tflite", runtime="onnx")
    if "tflite" not in available_runtimes():
        monkeypatch.setenv("ACC_TFLITE_RUNTIME", "tflite")
        with pytest.raises(RuntimeNotAvailable, match="tflite_runtime"):
            load_interpreter(tmp_path / "x.tflite")
