"""Rule detectors on synthetic VehicleState streams: harsh events with hysteresis and minimum
duration, speeding in zones, the driving-time rule, missing values; and the DrivePlotR check."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from hal.types import VehicleState
from ledger_lite.attestation import KINDS
from models.rules import (
    RULES_MODEL,
    DrivingTimeRule,
    Event,
    G,
    HarshEventDetector,
    SpeedingDetector,
    SpeedZone,
    evaluate_driveplotr,
)

NDS = Path(__file__).resolve().parents[2] / "shared/refdata/driving/driveplotr-nds/nds_data.csv.gz"


def st(t: float, **kw: object) -> VehicleState:
    return VehicleState(monotonic=t, timestamp=1_700_000_000.0 + t, sequence=int(t * 10), **kw)  # type: ignore[arg-type]


def run(det: object, states: Iterable[VehicleState]) -> list[Event]:
    update: Callable[[VehicleState], list[Event]] = det.update  # type: ignore[attr-defined]
    out: list[Event] = []
    for s in states:
        out += update(s)
    return out


def brake_profile(t: float) -> float:
    """Cruise, a 1.5 s brake at -5 m/s^2 from t = 2.0 to 3.4, cruise."""
    return -5.0 if 2.0 <= t < 3.45 else -0.2


def test_a_hard_brake_is_detected_once_with_duration_and_severity() -> None:
    det = HarshEventDetector()
    events = run(det, (st(i / 10, speed=20.0, accel_longitudinal=brake_profile(i / 10)) for i in range(60)))
    assert len(events) == 1
    e = events[0]
    assert e.kind == "harsh_brake" and e.model == RULES_MODEL
    assert e.start == pytest.approx(2.0) and e.end == pytest.approx(3.4)
    assert e.duration == pytest.approx(1.5, abs=0.01)  # 15 samples of 0.1 s
    assert e.severity == pytest.approx((5.0 - 0.35 * G) / (0.8 * G - 0.35 * G), abs=1e-6)
    assert e.accel_long == -5.0 and e.speed == 20.0
    body = e.body()
    KINDS["driving_event"].encode(body)  # valid against the attestation schema
    assert body["event"] == "harsh_brake" and body["accel_long"] == -5.0


def test_hysteresis_prevents_chatter_around_the_threshold() -> None:
    # noise around 0.35 g: 3.3 .. 3.6 m/s^2 alternating for 3 s
    values = [3.6 if i % 2 else 3.3 for i in range(30)]
    states = [st(i / 10, speed=15.0, accel_longitudinal=-v) for i, v in enumerate(values)]
    states += [st(3.0 + i / 10, speed=15.0, accel_longitudinal=0.0) for i in range(10)]
    assert len(run(HarshEventDetector(), states)) == 1
    no_hyst = run(HarshEventDetector(hysteresis=0.0, min_duration=0.0), states)
    assert len(no_hyst) == 15  # what hysteresis saves us from


def test_short_spikes_are_not_events_and_cornering_and_accel_are_separate() -> None:
    spike = [st(i / 10, speed=10.0, accel_longitudinal=-6.0 if i == 5 else 0.0) for i in range(20)]
    assert run(HarshEventDetector(), spike) == []  # 0.1 s < 0.5 s
    states = [st(i / 10, speed=10.0, accel_longitudinal=4.0 if 5 <= i < 15 else 0.0) for i in range(20)]
    states += [st(2 + i / 10, speed=10.0, accel_lateral=-4.5 if i < 8 else 0.1, yaw_rate=-20.0) for i in range(20)]
    kinds = [e.kind for e in run(HarshEventDetector(), states)]
    assert kinds == ["harsh_accel", "harsh_corner"]
    corner = run(HarshEventDetector(), states)[1]
    assert corner.accel_lat == -4.5 and corner.yaw_rate == -20.0


def test_missing_values_bridge_short_gaps_and_end_events_on_long_ones() -> None:
    def seq(gap: range) -> list[VehicleState]:
        return [
            st(i / 10, speed=20.0, accel_longitudinal=None if i in gap else (-5.0 if 10 <= i < 40 else 0.0))
            for i in range(60)
        ]

    short = run(HarshEventDetector(), seq(range(20, 25)))  # 0.5 s without data inside the brake
    assert len(short) == 1 and short[0].duration == pytest.approx(3.0, abs=0.05)
    long = run(HarshEventDetector(max_gap=1.0), seq(range(20, 35)))  # 1.5 s gap: two events
    assert len(long) == 2
    assert long[0].end == pytest.approx(1.9)
    assert run(HarshEventDetector(), [st(i / 10) for i in range(50)]) == []  # no signal at all


def test_speeding_only_above_tolerance_for_long_enough_inside_a_zone() -> None:
    zone = SpeedZone(50.0, lat=48.0, lon=11.0, radius_m=500.0, name="town")
    det = SpeedingDetector([zone], default_limit_kmh=100.0, tolerance_kmh=5.0, min_duration=5.0)

    def drive(kmh: float, seconds: float, t0: float, lat: float = 48.0) -> list[VehicleState]:
        return [st(t0 + i / 10, speed=kmh / 3.6, lat=lat, lon=11.0) for i in range(int(seconds * 10))]

    assert run(det, drive(54.0, 20, 0)) == []  # within tolerance
    assert run(det, drive(60.0, 3, 20) + drive(50.0, 2, 23)) == []  # too short
    events = run(det, drive(62.0, 8, 25) + drive(45.0, 2, 33))
    assert len(events) == 1
    e = events[0]
    assert e.kind == "speeding" and e.speed_limit == pytest.approx(50 / 3.6)
    assert e.duration == pytest.approx(8.0, abs=0.05) and e.speed == pytest.approx(62 / 3.6)
    KINDS["driving_event"].encode(e.body())
    # outside the zone (about 5.5 km north) the default limit of 100 km/h applies
    assert run(det, drive(90.0, 20, 40, lat=48.05)) == []
    assert len(run(det, drive(110.0, 10, 60, lat=48.05) + drive(80.0, 1, 70, lat=48.05))) == 1
    # no position while zones exist: no limit known, nothing claimed
    assert run(det, [st(80 + i / 10, speed=40.0) for i in range(200)]) == []


def test_polygon_zone_and_limit_change_ends_the_event() -> None:
    square = SpeedZone(30.0, polygon=((48.0, 11.0), (48.0, 11.01), (48.01, 11.01), (48.01, 11.0)))
    assert square.contains(48.005, 11.005) and not square.contains(48.02, 11.005)
    det = SpeedingDetector([square], default_limit_kmh=50.0, min_duration=2.0)
    inside = [st(i / 10, speed=45 / 3.6, lat=48.005, lon=11.005) for i in range(50)]
    outside = [st(5 + i / 10, speed=45 / 3.6, lat=48.02, lon=11.005) for i in range(50)]
    events = run(det, inside + outside)
    assert len(events) == 1 and events[0].speed_limit == pytest.approx(30 / 3.6)  # 45 is fine at 50
    with pytest.raises(ValueError):
        SpeedZone(30.0)


def test_driving_time_rule_after_the_limit_and_reset_by_a_break() -> None:
    rule = DrivingTimeRule(limit=600.0, break_min=120.0, grace=10.0, repeat=100.0)
    moving = [st(float(t), speed=20.0) for t in range(0, 900)]  # 1 Hz, 15 min
    events = run(rule, moving)
    assert [round(e.duration) for e in events] == [10, 110, 210]
    assert all(e.kind == "fatigue" and 0 < e.severity < 1 for e in events)
    stop = [st(float(t), speed=0.0) for t in range(900, 1030)]  # a 130 s break
    again = [st(float(t), speed=20.0) for t in range(1030, 1500)]  # 470 s: under the limit
    assert run(rule, stop + again) == []
    short_stop = [st(float(t), speed=0.0) for t in range(1500, 1560)]  # 60 s: no break
    assert len(run(rule, short_stop + [st(float(t), speed=20.0) for t in range(1560, 1790)])) == 1


def test_event_rejects_unknown_kinds_and_clamps_into_the_schema() -> None:
    with pytest.raises(ValueError):
        Event("tailgating", 0, 1, 0.5)
    e = Event("harsh_brake", 0.0, 1.0, 1.7, speed=200.0, accel_long=-45.0, reported_duration=5000.0)
    body = e.body()
    assert body["severity"] == 1.0 and body["speed"] == 150.0 and body["accel_long"] == -30.0
    assert body["duration"] == 3600.0
    KINDS["driving_event"].encode(body)
    assert Event("fatigue", 0, 1, 0.2).body(speed=12.0)["speed"] == 12.0


@pytest.mark.skipif(not NDS.is_file(), reason="DrivePlotR reference data not present")
def test_upstream_settings_reproduce_the_driveplotr_labels() -> None:
    result = evaluate_driveplotr(str(NDS))
    assert result["labelled"] == 107
    assert result["recall"] == 1.0 and result["precision"] == 1.0
    assert result["per_class"]["high"]["recall_hits"] == 1
