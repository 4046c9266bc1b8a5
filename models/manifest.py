"""Model manifests: what a shipped ``.tflite`` is, and the check that it is that file.

A manifest is a JSON file beside the model (``models/data/dbm-1.json`` for
``models/data/dbm-1.tflite``), written by ``tools/build_models.py``. ``load_model`` refuses a
model whose SHA-256 is not the manifest's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DATA_DIR", "Manifest", "ModelHashMismatch", "ManifestError", "default_manifest", "load_model", "model_hash"]

#: where the shipped models and their manifests live
DATA_DIR = Path(__file__).resolve().parent / "data"


class ManifestError(ValueError):
    """The manifest is missing, not JSON, or lacks a required field."""


class ModelHashMismatch(ManifestError):
    """The model file is not the one the manifest describes."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    #: model file name, relative to the manifest's directory
    file: str
    sha256: str
    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    signatures: dict[str, Any] = field(default_factory=dict)
    n_weights: int = 0
    window_s: float = 0.0
    hop_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    #: every field of the JSON, including ones this class does not name
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        missing = [k for k in ("name", "version", "file", "sha256", "classes", "feature_names") if k not in d]
        if missing:
            raise ManifestError(f"manifest lacks {', '.join(missing)}")
        return cls(
            name=str(d["name"]),
            version=str(d["version"]),
            file=str(d["file"]),
            sha256=str(d["sha256"]).lower(),
            classes=tuple(d["classes"]),
            feature_names=tuple(d["feature_names"]),
            input=dict(d.get("input", {})),
            output=dict(d.get("output", {})),
            signatures=dict(d.get("signatures", {})),
            n_weights=int(d.get("n_weights", 0)),
            window_s=float(d.get("window_s", 0.0)),
            hop_s=float(d.get("hop_s", 0.0)),
            metrics=dict(d.get("metrics", {})),
            data=dict(d.get("data", {})),
            training=dict(d.get("training", {})),
            created=str(d.get("created", "")),
            raw=dict(d),
        )

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as err:
            raise ManifestError(f"cannot read manifest {path}: {err}") from err
        except json.JSONDecodeError as err:
            raise ManifestError(f"manifest {path} is not JSON: {err}") from err
        if not isinstance(d, dict):
            raise ManifestError(f"manifest {path} is not a JSON object")
        return cls.from_dict(d)


def model_hash(path: str | Path) -> str:
    """SHA-256 of the file at ``path``, lower-case hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(manifest_path: str | Path) -> tuple[Manifest, Path]:
    """The manifest and the path of its model, after checking the model's SHA-256.

    Raises ``ModelHashMismatch`` (naming both hashes) when the file differs from the manifest,
    ``ManifestError`` when the manifest or the model file cannot be read.
    """
    manifest_path = Path(manifest_path)
    manifest = Manifest.read(manifest_path)
    model_path = manifest_path.parent / manifest.file
    if not model_path.is_file():
        raise ManifestError(f"model file {model_path} named by {manifest_path} does not exist")
    actual = model_hash(model_path)
    if actual != manifest.sha256:
        raise ModelHashMismatch(
            f"refusing model {model_path}: its sha256 is {actual} but manifest {manifest_path} says {manifest.sha256}"
        )
    return manifest, model_path


def default_manifest(name: str = "dbm") -> Path:
    """The newest shipped manifest of model ``name`` (highest numeric version) in ``DATA_DIR``."""
    found = []
    for p in DATA_DIR.glob(f"{name}-*.json"):
        version = p.stem[len(name) + 1 :]
        found.append((int(version) if version.isdigit() else -1, version, p))
    if not found:
        raise ManifestError(f"no manifest {name}-*.json in {DATA_DIR}")
    return max(found)[2]
