from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.fusion import EARTH_RADIUS, Fusion
from hal.types import FixMode, GnssFix, SignalSample
from tests.test_css_logs import REFS, decoded


def sig(name: str, value: float, t: float) -> SignalSample:
    return SignalSample(name, value, "", timestamp=t, monotonic=t)


def fix(
    t: float, lat: float, lon: float, speed: float = 10.0, track: float = 0.0, mode: FixMode = FixMode.FIX_3D
) -> GnssFix:
    return GnssFix(mode=mode, lat=lat, lon=lon, speed=speed, track=track, alt_msl=500.0, monotonic=t)


def test_bus_signals_map_to_fields_with_ages() -> None:
    f = Fusion()
    f.on_signals(
        [
            sig("Vehicle.Speed", 12.5, 1.0),
            sig("Vehicle.Acceleration.Longitudinal", -2.0, 1.0),
            sig("Vehicle.Acceleration.Lateral", 0.4, 1.0),
            sig("Vehicle.AngularVelocity.Yaw", 3.0, 1.0),
            sig("Vehicle.Chassis.SteeringWheel.Angle", -45.0, 0.9),
            sig("Vehicle.Chassis.Brake.PedalPosition", 30.0, 1.0),
            sig("Vehicle.Chassis.Accelerator.PedalPosition", 0.0, 1.0),
            sig("Vehicle.Powertrain.Transmission.CurrentGear", 3, 1.0),
            sig("Vehicle.Unknown.Thing", 1.0, 1.0),
        ]
    )
    s = f.snapshot(1.1, 1e9)
    assert (s.speed, s.accel_longitudinal, s.accel_lateral, s.yaw_rate) == (12.5, -2.0, 0.4, 3.0)
    assert (s.steering_angle, s.brake, s.throttle, s.gear) == (-45.0, 30.0, 0.0, 3)
    assert s.ages["steering_angle"] == pytest.approx(0.2)
    assert not s.derived
    assert f.signals_ignored == 1
    # stale after stale_after: values disappear instead of being held forever
    assert f.snapshot(5.0, 1e9).speed is None


def test_longitudinal_accel_derived_from_speed_when_not_on_bus() -> None:
    f = Fusion(accel_window=0.3)
    for i in range(50):  # 100 Hz, decelerating at 6 m/s^2
        t = i * 0.01
        f.on_signal(sig("Vehicle.Speed", 20.0 - 6.0 * t, t))
    s = f.snapshot(0.5, 0)
    assert s.accel_longitudinal == pytest.approx(-6.0, abs=1e-6)
    assert "accel_longitudinal" in s.derived


def test_lateral_accel_derived_from_speed_and_yaw() -> None:
    f = Fusion()
    f.on_signals([sig("Vehicle.Speed", 10.0, 1.0), sig("Vehicle.AngularVelocity.Yaw", 10.0, 1.0)])
    s = f.snapshot(1.0, 0)
    assert s.accel_lateral == pytest.approx(10.0 * math.radians(10.0))
    assert "accel_lateral" in s.derived


def test_gnss_speed_used_when_bus_is_silent() -> None:
    f = Fusion()
    f.on_fix(fix(1.0, 48.0, 11.0, speed=7.0))
    s = f.snapshot(1.2, 0)
    assert s.speed == 7.0 and "speed" in s.derived
    assert s.gnss_mode is FixMode.FIX_3D and s.alt == 500.0


def test_dead_reckoning_through_a_gap_then_reanchor_then_give_up() -> None:
    f = Fusion(gnss_timeout=1.5, dead_reckoning_max=10.0)
    f.on_fix(fix(0.0, 48.0, 11.0, speed=10.0, track=90.0))  # due east at 10 m/s
    t = 0.0
    while t < 5.0 - 1e-9:  # bus speed keeps coming, GNSS is gone (tunnel)
        t += 0.1
        f.on_signal(sig("Vehicle.Speed", 10.0, t))
        s = f.snapshot(t, 0)
    assert s.dead_reckoning
    assert {"lat", "lon"} <= s.derived
    east = math.radians(s.lon - 11.0) * EARTH_RADIUS * math.cos(math.radians(48.0))
    assert east == pytest.approx(50.0, rel=0.01)  # 5 s at 10 m/s
    assert s.lat == pytest.approx(48.0, abs=1e-7)
    # a fix re-anchors and clears the flag
    f.on_fix(fix(5.0, 48.001, 11.001, track=90.0))
    s = f.snapshot(5.05, 0)
    assert not s.dead_reckoning and s.lat == pytest.approx(48.001, abs=1e-6)
    # beyond dead_reckoning_max the position is dropped, not guessed
    t = 5.05
    while t < 16.0:
        t += 0.1
        f.on_signal(sig("Vehicle.Speed", 10.0, t))
        s = f.snapshot(t, 0)
    assert s.lat is None and s.lon is None


def test_heading_follows_yaw_rate_in_a_gap() -> None:
    f = Fusion(gnss_timeout=1.5)
    f.on_fix(fix(0.0, 48.0, 11.0, speed=10.0, track=0.0))
    t = 0.0
    for _ in range(30):  # 3 s of a left turn at 10 deg/s
        t += 0.1
        f.on_signals([sig("Vehicle.Speed", 10.0, t), sig("Vehicle.AngularVelocity.Yaw", 10.0, t)])
        s = f.snapshot(t, 0)
    assert s.heading == pytest.approx(330.0, abs=0.5)  # counter-clockwise yaw turns heading left


def test_no_fix_mode_keeps_no_position() -> None:
    f = Fusion()
    f.on_fix(GnssFix(mode=FixMode.NO_FIX, monotonic=1.0))
    s = f.snapshot(1.0, 0)
    assert s.lat is None and s.gnss_mode is FixMode.NO_FIX
    assert s.sequence == 1 and f.snapshot(1.1, 0).sequence == 2


def test_a_gnss_receiver_on_the_can_bus_gives_position_and_speed() -> None:
    """CANmod.gps-style signals (VSS Vehicle.CurrentLocation.*) make fixes when there is no
    dedicated receiver: position, speed over ground (no wheel speed on the bus) and heading."""
    f = Fusion()
    f.on_signals(
        [
            SignalSample("Vehicle.CurrentLocation.GNSSReceiver.FixType", "THREE_D", "", 1.0, 1.0),
            sig("Vehicle.CurrentLocation.SpeedOverGround", 8.0, 1.0),
            sig("Vehicle.CurrentLocation.Heading", 90.0, 1.0),
            sig("Vehicle.CurrentLocation.Latitude", 55.87, 1.0),
            sig("Vehicle.CurrentLocation.Longitude", 9.85, 1.02),
        ]
    )
    s = f.snapshot(1.05, 1e9)
    assert (s.gnss_mode, s.heading) == (FixMode.FIX_3D, 90.0)
    assert (s.lat, s.lon) == pytest.approx((55.87, 9.85), abs=1e-4)  # dead-reckoned 50 ms on
    assert s.speed == 8.0 and "speed" in s.derived and f.can_fixes == 1
    # a latitude alone (its longitude more than a second old) is no fix
    f.on_signal(sig("Vehicle.CurrentLocation.Latitude", 55.9, 3.0))
    assert f.can_fixes == 1
    # "no fix" from the module: no position from it
    f.on_signals(
        [
            SignalSample("Vehicle.CurrentLocation.GNSSReceiver.FixType", "NONE", "", 4.0, 4.0),
            sig("Vehicle.CurrentLocation.Latitude", 55.9, 4.0),
            sig("Vehicle.CurrentLocation.Longitude", 9.9, 4.0),
        ]
    )
    assert f.can_fixes == 1


def test_the_dedicated_receiver_wins_over_the_can_one_while_it_reports() -> None:
    f = Fusion()
    f.on_fix(fix(1.0, 48.0, 11.0))
    f.on_signals(
        [sig("Vehicle.CurrentLocation.Latitude", 55.0, 1.5), sig("Vehicle.CurrentLocation.Longitude", 9.0, 1.5)]
    )
    assert f.can_fixes == 0 and f.snapshot(1.6, 1e9).lat == pytest.approx(48.0, abs=1e-3)
    # the receiver silent for longer than gnss_timeout: the CAN one takes over
    f.on_signals(
        [sig("Vehicle.CurrentLocation.Latitude", 55.0, 3.0), sig("Vehicle.CurrentLocation.Longitude", 9.0, 3.0)]
    )
    assert f.can_fixes == 1 and f.snapshot(3.1, 1e9).lat == pytest.approx(55.0, abs=1e-3)


@pytest.mark.parametrize("stem", [r.stem for r in REFS])
def test_a_real_canmod_gps_drive_fuses_into_positions_and_speeds(stem: str, refdata: Path) -> None:
    """The real CSS Electronics CANmod.gps recordings decoded with their DBC and our VSS
    mapping, fed to the fusion in log time: positions inside the recording's latitude band,
    speed over ground as speed, within the module's own reported range."""
    ref = next(r for r in REFS if r.stem == stem)
    d = decoded(ref)
    f = Fusion()
    states = []
    samples = sorted(d.samples, key=lambda s: s.monotonic)
    t = samples[0].monotonic
    i = 0
    while i < len(samples):
        t += 0.1
        while i < len(samples) and samples[i].monotonic <= t:
            f.on_signal(samples[i])
            i += 1
        states.append(f.snapshot(t, 0.0))
    located = [s for s in states if s.lat is not None]
    assert f.can_fixes > 50 and len(located) > 0.8 * len(states), (f.can_fixes, len(located), len(states))
    assert all(ref.lat[0] <= s.lat <= ref.lat[1] for s in located if s.lat is not None)
    speeds = [s.speed for s in states if s.speed is not None]
    assert speeds and ref.gnss_speed[0] - 0.01 <= min(speeds) and max(speeds) <= ref.gnss_speed[1] + 0.01
