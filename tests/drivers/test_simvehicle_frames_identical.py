"""The simulated vehicle's CAN frames are byte-for-byte what they were before its frame
emission was optimised (per-message layouts worked out once, cantools' strict re-validation
skipped after clamping to the DBC ranges ourselves).

The digests below were produced with ``drivers/simvehicle.py`` as it was before that change
(2026-11-26: the ``_emit_frames`` that rebuilt each message's layout for every frame and
encoded with ``strict=True``), by exactly the ``digest()`` and ``CASES`` of this file, and are
hard-coded: any change to what the simulator sends (identifiers, flags, payload bytes,
timestamps, channels, order) fails here. If the output is changed on purpose, recompute them
and say why in the commit.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest

from drivers.simvehicle import Route, SimConfig, SimVehicle


def digest(vehicle: SimVehicle, start_monotonic: float, seconds: float) -> tuple[int, str]:
    """(frames, sha256 over every frame) of the first ``seconds``, fetched in an odd call
    pattern (the frames do not depend on it)."""
    h = hashlib.sha256()
    n = 0
    t = 0.0
    while t < seconds:
        t = min(seconds, t + 0.037)
        for f in vehicle.frames_due(start_monotonic + t):
            h.update(f.channel.encode() + b"|" + struct.pack(">I??", f.arbitration_id, f.is_extended_id, f.is_fd))
            h.update(bytes(f.data) + b"|" + repr(f.timestamp).encode() + b"|" + repr(f.monotonic).encode() + b"\n")
            n += 1
    return n, h.hexdigest()


# extreme configuration values: every clamp to a DBC signal range is exercised
CLAMPED = SimConfig(
    coolant_temp=900.0,
    ambient_temp=-300.0,
    battery_voltage=99.0,
    tire_pressures=(-1.0, 9999.0, 240.0, 0.0),
    fuel_level=500.0,
    start_odometer=1e12,
    transmission_temp=-1e6,
)

CASES: dict[str, tuple[Callable[[], SimVehicle], float, float, int, str]] = {
    # name: (vehicle, start_monotonic, seconds, frames, sha256)
    "default route, seed 7, 90 s (traffic light, emergency brake, S-bend)": (
        lambda: SimVehicle(seed=7, start_monotonic=1000.0, start_utc=1_700_000_000.0),
        1000.0,
        90.0,
        38079,
        "de9c74e302007344d99cdd580aa0a68010ee1ac2fd86178fe1a684996806ad25",
    ),
    "loop entered at segment 7, seed 101, 30 s": (
        lambda: SimVehicle(Route.default().starting_at(7), seed=101, start_monotonic=5.0),
        5.0,
        30.0,
        12699,
        "53bf9b1e19084b44b384698c90a9f11722dd98cedc57c1dbbecd2778ea22f324",
    ),
    "values outside the DBC ranges, seed 3, 20 s": (
        lambda: SimVehicle(seed=3, config=CLAMPED),
        0.0,
        20.0,
        8469,
        "17c7d8c93135d11188df27f1190fbaf18802f48b788473ee16647491254ba2df",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_simvehicle_frames_are_byte_identical_to_before_the_optimisation(name: str) -> None:
    make, start, seconds, frames, sha = CASES[name]
    assert digest(make(), start, seconds) == (frames, sha)
