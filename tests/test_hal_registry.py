"""The lazy backend registry: names resolve to classes only when chosen; errors say why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hal import BackendNotFound, available, load_backend, register
from hal.interfaces import Camera, CanPort, Clock, GnssSource


@pytest.mark.parametrize(
    ("kind", "base"), [("can", CanPort), ("gnss", GnssSource), ("camera", Camera), ("clock", Clock)]
)
def test_every_builtin_backend_loads_and_implements_its_interface(kind: str, base: type) -> None:
    for name in available(kind):
        cls = load_backend(kind, name)
        assert issubclass(cls, base), f"{kind}:{name} is not a {base.__name__}"


def test_importing_hal_imports_no_backend() -> None:
    code = (
        "import sys, hal; hal.available('can'); "
        "mods = ('can', 'cantools', 'serial', 'cv2', 'drivers.can_bus', 'drivers.nmea'); "
        "bad = [m for m in mods if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_unknown_names_and_kinds_are_explained() -> None:
    with pytest.raises(BackendNotFound, match=r"no can backend named 'kvaser9' \(known: python-can, replay\)"):
        load_backend("can", "kvaser9")
    with pytest.raises(BackendNotFound, match="unknown backend kind 'lidar'"):
        available("lidar")


def test_registered_backend_and_broken_target() -> None:
    register("clock", "test-system", "drivers.clock:SystemClock")
    assert load_backend("clock", "test-system").__name__ == "SystemClock"
    register("clock", "test-missing", "no_such_module_x:Thing")
    with pytest.raises(BackendNotFound, match="cannot be imported"):
        load_backend("clock", "test-missing")
    with pytest.raises(ValueError, match="module:attribute"):
        register("clock", "bad", "no-colon")
