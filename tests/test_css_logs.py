"""Real CAN recordings (CSS Electronics CANmod.gps + OBD-II, refdata/can/css-electronics-canmod-gps):
the GNSS/IMU bus through canmod-gps.dbc and our VSS mapping, the OBD-II responses through
drivers.obd, and the two speed sources against each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from drivers.can_convert import read_log
from drivers.candump import CandumpParser
from drivers.dbc import DbcDecoder
from drivers.isotp import IsoTpConfig, IsoTpReceiver
from drivers.obd import ObdAddressing, decode_response
from hal.types import CanFrame, SignalSample
from tests.conftest import REFDATA

CSS = REFDATA / "can" / "css-electronics-canmod-gps"
MAPPING = Path(__file__).resolve().parent.parent / "drivers" / "data" / "canmod-gps.vss.toml"


@dataclass(frozen=True)
class Ref:
    stem: str
    lat: tuple[float, float]
    obd_responses: int
    rpm: tuple[float, float]
    obd_speed_max: int
    gnss_speed: tuple[float, float]
    accel_x: tuple[float, float]


REFS = [
    Ref(
        "3BA199E2_00000164_00000005-60FEB5A8", (55.869, 55.871), 89, (929.5, 1785), 53, (0.178, 14.592), (5.875, 13.125)
    ),
    Ref("3BA199E2_00000165_00000006-60FFE42F", (56.097, 56.099), 123, (827, 2755), 28, (0.032, 7.638), (3.875, 16.375)),
]


@dataclass
class Decoded:
    frames: list[CanFrame]
    samples: list[SignalSample]
    gnss: DbcDecoder
    obd: list[tuple[float, int, float | int]]  # (timestamp, pid, value in J1979 unit)
    fix_types: set[int]
    satellites: set[int]
    accel_x: list[float]


_CACHE: dict[str, Decoded] = {}


def decoded(ref: Ref) -> Decoded:
    if ref.stem in _CACHE:
        return _CACHE[ref.stem]
    parser = CandumpParser()
    text = (CSS / f"{ref.stem}.candump.log").read_text()
    frames = parser.feed(text) + parser.close()
    assert parser.error_count == 0
    gnss = DbcDecoder(CSS / "canmod-gps.dbc", bus="can2", mapping=MAPPING)
    samples: list[SignalSample] = []
    obd: list[tuple[float, int, float | int]] = []
    fix_types: set[int] = set()
    sats: set[int] = set()
    accel_x: list[float] = []
    rx = IsoTpReceiver(IsoTpConfig(padding=None))
    addressing = ObdAddressing()
    for frame in frames:
        if frame.channel == "can2":
            samples += gnss.decode(frame)
            msg = gnss.decode_message(frame, decode_choices=False)
            assert msg is not None
            values = msg.values()
            if msg.name == "gnss_status":
                fix_types.add(int(values["FixType"]))
                sats.add(int(values["Satellites"]))
            elif msg.name == "gnss_imu":
                accel_x.append(float(values["AccelerationX"]))
        elif addressing.ecu_of_response(frame) == 0:
            payload = rx.on_frame(frame.data, now=frame.timestamp).payload
            assert payload is not None  # all single frames
            for value in decode_response(payload):
                assert isinstance(value.value, int | float)
                obd.append((frame.timestamp, value.pid, value.value))
    _CACHE[ref.stem] = Decoded(frames, samples, gnss, obd, fix_types, sats, accel_x)
    return _CACHE[ref.stem]


def series(samples: list[SignalSample], name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(s.timestamp, float(s.value)) for s in samples if s.name == name]
    assert rows, name
    arr = np.array(rows)
    return arr[:, 0], arr[:, 1]


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.stem[:17])
def test_gnss_bus_decodes_within_reference_bounds(ref: Ref, refdata: Path) -> None:
    d = decoded(ref)
    counters = d.gnss.counters
    assert counters["errors"] == 0 and counters["unknown_id"] == 0 and counters["invalid"] == 0
    assert counters["decoded"] == 2 * sum(f.channel == "can2" for f in d.frames)  # decode + decode_message
    _, lat = series(d.samples, "Vehicle.CurrentLocation.Latitude")
    assert ref.lat[0] <= lat.min() and lat.max() <= ref.lat[1]
    _, lon = series(d.samples, "Vehicle.CurrentLocation.Longitude")
    assert 9.8 < lon.min() and lon.max() < 10.3  # Denmark
    _, speed = series(d.samples, "Vehicle.CurrentLocation.SpeedOverGround")
    assert speed.min() == pytest.approx(ref.gnss_speed[0]) and speed.max() == pytest.approx(ref.gnss_speed[1])
    assert d.fix_types == {3}
    assert min(d.satellites) >= 9 and max(d.satellites) <= 13
    assert min(d.accel_x) == ref.accel_x[0] and max(d.accel_x) == ref.accel_x[1]
    fix = {s.value for s in d.samples if s.name == "Vehicle.CurrentLocation.GNSSReceiver.FixType"}
    assert fix == {"THREE_D"}


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.stem[:17])
def test_obd_responses_match_reference(ref: Ref, refdata: Path) -> None:
    d = decoded(ref)
    assert len(d.obd) == sum(f.arbitration_id == 0x7E8 for f in d.frames)  # one PID per response
    speeds = [v for _, pid, v in d.obd if pid == 0x0D]
    rpm = [v for _, pid, v in d.obd if pid == 0x0C]
    assert len(speeds) == ref.obd_responses
    assert min(speeds) == 0 and max(speeds) == ref.obd_speed_max
    assert min(rpm) == ref.rpm[0] and max(rpm) == ref.rpm[1]
    pids = {pid for _, pid, _ in d.obd}
    assert pids == {0x04, 0x05, 0x0B, 0x0C, 0x0D, 0x11, 0x2F, 0x33, 0x42, 0x62}


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.stem[:17])
def test_obd_speed_agrees_with_gnss_speed(ref: Ref, refdata: Path) -> None:
    d = decoded(ref)
    t_gnss, v_gnss = series(d.samples, "Vehicle.CurrentLocation.SpeedOverGround")
    obd = np.array([(t, v) for t, pid, v in d.obd if pid == 0x0D])
    inside = (obd[:, 0] >= t_gnss[0]) & (obd[:, 0] <= t_gnss[-1])
    gnss_kmh = np.interp(obd[inside, 0], t_gnss, v_gnss) * 3.6
    mean_abs = float(np.mean(np.abs(obd[inside, 1] - gnss_kmh)))
    assert inside.sum() > 0.8 * len(obd)
    assert mean_abs < 1.5, mean_abs


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.stem[:17])
def test_imu_axes_in_the_mapping_are_the_vehicle_axes(ref: Ref, refdata: Path) -> None:
    """The mapping's IMU axes agree with the GNSS speed and heading (see canmod-gps.vss.toml)."""
    d = decoded(ref)
    t_v, v = series(d.samples, "Vehicle.CurrentLocation.SpeedOverGround")
    t_a, a_long = series(d.samples, "Vehicle.Acceleration.Longitudinal")
    _, a_lat = series(d.samples, "Vehicle.Acceleration.Lateral")
    _, a_vert = series(d.samples, "Vehicle.Acceleration.Vertical")
    t_y, yaw = series(d.samples, "Vehicle.AngularVelocity.Yaw")
    # forward acceleration (1 s means) follows the change of speed
    dvdt = np.gradient(v, t_v)
    mean_long = np.array([a_long[(t_a >= t - 0.5) & (t_a < t + 0.5)].mean() for t in t_v])
    assert np.corrcoef(mean_long, dvdt)[0, 1] > 0.6
    # lateral acceleration (left positive) is the centripetal v * yaw rate (CCW positive)
    centripetal = np.interp(t_y, t_v, v) * np.radians(yaw)
    k = 50
    smooth = np.ones(k) / k
    assert np.corrcoef(np.convolve(a_lat, smooth, "valid"), np.convolve(centripetal, smooth, "valid"))[0, 1] > 0.8
    # yaw rate (CCW) is minus the heading rate (heading is clockwise from north)
    t_h, heading = series(d.samples, "Vehicle.CurrentLocation.Heading")
    heading_rate = np.degrees(np.gradient(np.unwrap(np.radians(heading)), t_h))
    mean_yaw = np.array([yaw[(t_y >= t - 0.5) & (t_y < t + 0.5)].mean() for t in t_h])
    assert np.corrcoef(mean_yaw, -heading_rate)[0, 1] > 0.8
    assert abs(float(a_vert.mean())) < 0.5  # gravity removed


@pytest.mark.parametrize("ref", REFS, ids=lambda r: r.stem[:17])
def test_our_candump_parser_reads_what_python_can_reads(ref: Ref, refdata: Path) -> None:
    ours = decoded(ref).frames
    theirs = list(read_log(CSS / f"{ref.stem}.candump.log"))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.arbitration_id, a.is_extended_id, a.data, a.channel) == (
            b.arbitration_id,
            b.is_extended_id,
            b.data,
            b.channel,
        )
        assert a.timestamp == pytest.approx(b.timestamp, abs=1e-6)
