"""Lazy registry of hardware backends.

Backends are named by ``"module:attribute"`` strings and imported only when chosen (as
python-can does with its interface map), so a box without OpenCV or pyserial still starts.
Third-party packages add backends through entry points in the groups
``autochain.can``, ``autochain.gnss`` and ``autochain.camera``::

    [project.entry-points."autochain.can"]
    mybox = "mybox_can:MyBoxPort"
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from .errors import BackendNotFound

__all__ = ["KINDS", "available", "load_backend", "register"]

KINDS = ("can", "gnss", "camera", "clock")

_BUILTIN: dict[str, dict[str, str]] = {
    "can": {
        "python-can": "drivers.can_bus:PythonCanPort",
        "replay": "drivers.can_replay:LogReplayPort",
    },
    "gnss": {
        "nmea": "drivers.gnss_stream:NmeaStreamSource",
        "gpsd": "drivers.gpsd:GpsdSource",
    },
    "camera": {
        "folder": "drivers.camera_replay:ImageFolderCamera",
        "video": "drivers.camera_replay:VideoFileCamera",
        "v4l2": "drivers.camera_v4l2:V4l2Camera",
    },
    "clock": {
        "system": "drivers.clock:SystemClock",
        "simulated": "drivers.clock:SimulatedClock",
    },
}
_EXTRA: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, target: str) -> None:
    """Register ``target`` (``"module:attribute"``) as backend ``name`` of ``kind``."""
    _check_kind(kind)
    if ":" not in target:
        raise ValueError(f"backend target {target!r} must look like 'module:attribute'")
    _EXTRA[kind][name] = target


def available(kind: str) -> dict[str, str]:
    """All backends of ``kind`` by name (built-in, registered, entry points); imports nothing."""
    _check_kind(kind)
    found = dict(_BUILTIN[kind])
    for ep in entry_points(group=f"autochain.{kind}"):
        found.setdefault(ep.name, ep.value)
    found.update(_EXTRA[kind])
    return found


def load_backend(kind: str, name: str) -> Any:
    """Import and return the backend class ``name`` of ``kind``."""
    backends = available(kind)
    try:
        target = backends[name]
    except KeyError:
        known = ", ".join(sorted(backends)) or "none"
        raise BackendNotFound(f"no {kind} backend named {name!r} (known: {known})") from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendNotFound(
            f"{kind} backend {name!r} ({target}) cannot be imported: {err}; is its extra installed?"
        ) from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendNotFound(f"{kind} backend {name!r}: {module_name} has no {attr!r}") from None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise BackendNotFound(f"unknown backend kind {kind!r} (kinds: {', '.join(KINDS)})")
