"""Which TFLite interpreter runs the on-device models.

Two runtimes are supported at run time, both exposing the same ``Interpreter`` API:

- ``litert``: ``ai_edge_litert.interpreter`` (Google's LiteRT, the successor of
  tflite-runtime). The default dependency: maintained, wheels for current Pythons on
  x86_64 and aarch64 (Raspberry Pi OS / Jetson), works with numpy 2. About 59 MB installed.
- ``tflite``: ``tflite_runtime.interpreter`` (tflite-runtime 2.14, the last release). 6.7 MB,
  useful on small images, but needs numpy < 2 (install the ``tflite`` extra).

``ACC_TFLITE_RUNTIME=litert|tflite`` forces one; otherwise LiteRT is preferred and
tflite-runtime is the fallback. Nothing is imported until a model is loaded.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

__all__ = ["RUNTIMES", "ModelLoadError", "RuntimeNotAvailable", "available_runtimes", "load_interpreter"]

#: runtime name -> module holding ``Interpreter``, in order of preference
RUNTIMES: dict[str, str] = {
    "litert": "ai_edge_litert.interpreter",
    "tflite": "tflite_runtime.interpreter",
}


class RuntimeNotAvailable(ImportError):
    """No usable TFLite runtime is installed (or the forced one is not)."""


class ModelLoadError(ValueError):
    """The model file is missing or is not a model this runtime can load."""


def _import(name: str) -> Any:
    try:
        return importlib.import_module(RUNTIMES[name])
    except ImportError as err:
        raise RuntimeNotAvailable(f"TFLite runtime {name!r} ({RUNTIMES[name]}) cannot be imported: {err}") from err
    except SystemError as err:  # tflite-runtime 2.14 built against numpy 1.x under numpy 2
        raise RuntimeNotAvailable(f"TFLite runtime {name!r} is installed but broken: {err}") from err


def available_runtimes() -> list[str]:
    """Names of the runtimes that import here, in order of preference."""
    out = []
    for name in RUNTIMES:
        try:
            _import(name)
        except RuntimeNotAvailable:
            continue
        out.append(name)
    return out


def load_interpreter(path: str | Path, *, runtime: str | None = None, num_threads: int = 1) -> tuple[Any, str]:
    """Load ``path`` and allocate its tensors; returns ``(interpreter, runtime name)``."""
    forced = runtime or os.environ.get("ACC_TFLITE_RUNTIME") or None
    if forced is not None and forced not in RUNTIMES:
        raise RuntimeNotAvailable(f"unknown TFLite runtime {forced!r} (known: {', '.join(RUNTIMES)})")
    candidates = [forced] if forced else list(RUNTIMES)
    errors = []
    module = None
    chosen = ""
    for name in candidates:
        try:
            module = _import(name)
            chosen = name
            break
        except RuntimeNotAvailable as err:
            errors.append(str(err))
    if module is None:
        raise RuntimeNotAvailable("no TFLite runtime: " + "; ".join(errors))
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        interpreter = module.Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{path}: not a loadable TFLite model ({chosen}): {err}") from err
    return interpreter, chosen
