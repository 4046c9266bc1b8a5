"""The simulated test vehicle, checked against independent decoders: cantools with the
reference DBCs for its frames, pynmea2 for its NMEA, the route's own curvature integral and
an ellipsoidal-radius distance for its motion, python-can virtual buses for the runner."""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections import defaultdict
from pathlib import Path

import can
import cantools
import pynmea2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from drivers.clock import SimulatedClock
from drivers.simvehicle import (
    KMH,
    Route,
    SimConfig,
    SimVehicle,
    curve,
    run_sim,
    straight,
)

DATA = Path(__file__).resolve().parent.parent / "drivers" / "data"
PT = cantools.database.load_file(str(DATA / "acc_testcar_powertrain.dbc"))
BODY = cantools.database.load_file(str(DATA / "acc_testcar_body.dbc"))
DBS = {"can0": PT, "can1": BODY}
TICK = 0.01
KNOT = 1852 / 3600
# WGS84, for an independent metres <-> degrees conversion
A, F = 6378137.0, 1 / 298.257223563
E2 = F * (2 - F)


def radii(lat: float) -> tuple[float, float]:
    """Meridian and prime-vertical radii of curvature (m) at ``lat`` degrees."""
    s = math.sin(math.radians(lat))
    w = math.sqrt(1 - E2 * s * s)
    return A * (1 - E2) / w**3, A / w


def step_distance(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    m, n = radii((lat1 + lat2) / 2)
    dn = math.radians(lat2 - lat1) * m
    de = math.radians(lon2 - lon1) * n * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dn, de)


def decode(frame):
    return DBS[frame.channel].decode_message(frame.arbitration_id, frame.data, decode_choices=False)


def expected_signals(tr) -> dict[str, tuple[float, float]]:
    """Each signal's value from the truth, in the DBC's units, and the DBC resolution."""
    fl, fr, rl, rr = tr.wheel_speeds
    return {
        "SteeringWheelAngle": (tr.steering_angle, 0.1),
        "SteeringWheelSpeed": (tr.steering_rate, 0.1),
        "EngineSpeed": (tr.engine_rpm, 0.25),
        "AccelPedalPos": (tr.throttle, 0.4),
        "EngineTorque": (tr.engine_torque, 0.5),
        "BrakePedalPos": (tr.brake, 0.4),
        "BrakePressure": (tr.brake_pressure, 0.1),
        "BrakeLightSwitch": (float(tr.brake_light), 1),
        "VehicleSpeed": (tr.speed * 3.6, 0.01),
        "LongitudinalAccel": (tr.accel_longitudinal, 0.01),
        "LateralAccel": (tr.accel_lateral, 0.01),
        "YawRate": (tr.yaw_rate, 0.1),
        "WheelSpeedFL": (fl * 3.6, 0.01),
        "WheelSpeedFR": (fr * 3.6, 0.01),
        "WheelSpeedRL": (rl * 3.6, 0.01),
        "WheelSpeedRR": (rr * 3.6, 0.01),
        "CurrentGear": (tr.gear, 1),
        "GearLever": (3, 1),  # D
        "Odometer": (tr.odometer / 1000, 0.1),
        "FuelLevel": (tr.fuel_level, 0.4),
        "TurnIndicatorLeft": (float(tr.turn_left), 1),
        "TurnIndicatorRight": (float(tr.turn_right), 1),
        "HazardSwitch": (float(tr.hazard), 1),
        "LowBeam": (float(tr.low_beam), 1),
        "BrakeLight": (float(tr.brake_light), 1),
        "DriverSeatBelt": (1, 1),
    }


def left_right_route() -> Route:
    return Route(
        [
            straight(20, 8.0, name="run-up"),
            curve(90, 15, 6.0, transition=5, name="left"),
            straight(20, 8.0),
            curve(-90, 15, 6.0, transition=5, name="right"),
            straight(40, 8.0, stop=2.0, name="to stop"),
            straight(60, 10.0, tunnel=True, name="tunnel"),
            straight(100, 10.0),
        ],
        loop=False,
    )


# --------------------------------------------------------------------------- route and motion


def test_default_route_is_a_closed_town_loop_with_all_events():
    route = Route.default()
    assert route.closure_error() < 1e-6
    assert 2000 < route.length < 3000
    lat0, lon0, _ = route.origin
    assert abs(lat0 - 48.137) < 0.01 and abs(lon0 - 11.575) < 0.01
    segs = route.segments
    assert sum(s.stop > 0 for s in segs) >= 2
    assert [s.harsh_brake_decel for s in segs if s.harsh_brake_at is not None] == [6.0]
    assert any(s.speed > s.limit + 10 * KMH for s in segs)  # speeding stretch
    assert any(s.tunnel for s in segs)
    assert sum(abs(s.turn) for s in segs) >= 360


def test_one_lap_follows_the_route_geometry_and_events():
    route = Route.default()
    sim = SimVehicle(route, seed=5, nmea_rate_hz=None, emit_can=False)
    prev = sim.truth()
    stops: list[tuple[int, float]] = []
    stop_started = None
    top_speed = defaultdict(float)
    k = 0
    while True:
        k += 1
        sim.advance_to(k * TICK)
        tr = sim.truth()
        top_speed[tr.segment] = max(top_speed[tr.segment], tr.speed)
        # WGS84 positions advance by the distance driven (independent radii-of-curvature metric)
        assert step_distance(prev.lat, prev.lon, tr.lat, tr.lon) == pytest.approx(tr.distance - prev.distance, abs=2e-4)
        # heading (true, clockwise) turns against the counter-clockwise-positive yaw rate
        dh = (tr.heading - prev.heading + 180) % 360 - 180
        assert dh == pytest.approx(-(tr.yaw_rate + prev.yaw_rate) / 2 * TICK, abs=2e-3)
        assert tr.accel_lateral == pytest.approx(tr.speed * math.radians(tr.yaw_rate), abs=1e-9)
        if k % 50 == 0:
            east, north, heading = route.pose_at(tr.distance)
            assert math.hypot(tr.east - east, tr.north - north) < 0.02
            assert abs((tr.heading - heading + 180) % 360 - 180) < 0.05
        if tr.stopped and not prev.stopped:
            stop_started = tr.t
        if prev.stopped and not tr.stopped and stop_started is not None and tr.t > 1:
            stops.append((prev.segment, tr.t - stop_started))
        prev = tr
        if tr.lap == 1 and tr.distance > route.length + 50:
            break
    # back where it started after a lap
    assert tr.lap == 1 and 100 < tr.t < 400
    # each stop line is served for at least its stop time; the emergency brake holds too
    by_segment = dict(stops)
    for i, seg in enumerate(route.segments):
        if seg.stop:
            assert by_segment[i] >= seg.stop - TICK
        if seg.harsh_brake_at is not None:
            assert by_segment[i] >= seg.harsh_brake_hold - TICK
    # the driver speeds where the route says so, and keeps to the limit elsewhere (± variation)
    for i, seg in enumerate(route.segments):
        if seg.speed > seg.limit + 10 * KMH:
            assert top_speed[i] > seg.limit + 10 * KMH
        else:
            assert top_speed[i] < seg.limit * 1.06


# --------------------------------------------------------------------------- CAN frames


def test_decoded_frames_give_back_the_truth_with_dbc_signs():
    sim = SimVehicle(left_right_route(), seed=2, nmea_rate_hz=None)
    checked = defaultdict(int)
    states = defaultdict(set)
    seen_left = seen_right = False
    for k in range(0, 4000):
        frames = sim.frames_due(k * TICK)
        tr = sim.truth()
        expect = expected_signals(tr)
        for frame in frames:
            assert frame.monotonic == pytest.approx(tr.monotonic) and frame.timestamp == pytest.approx(tr.timestamp)
            msg = DBS[frame.channel].get_message_by_frame_id(frame.arbitration_id)
            assert len(frame.data) == msg.length
            for name, value in decode(frame).items():
                if name in expect:
                    want, res = expect[name]
                    assert value == pytest.approx(want, abs=res / 2 + 1e-6), (name, tr.t)
                    checked[name] += 1
                    states[name].add(value)
        if tr.segment_name == "left" and tr.curvature > 0.05:
            seen_left = True
            assert tr.steering_angle > 0 and tr.yaw_rate > 0 and tr.accel_lateral > 0 and tr.turn_left
            assert tr.wheel_speeds[2] < tr.wheel_speeds[3]  # inner (left) rear wheel slower
        if tr.segment_name == "right" and tr.curvature < -0.05:
            seen_right = True
            assert tr.steering_angle < 0 and tr.yaw_rate < 0 and tr.accel_lateral < 0 and tr.turn_right
    assert seen_left and seen_right
    assert set(checked) == set(expected_signals(sim.truth()))
    # the run exercised both states of the lights and switches, braking and driving
    for name in ("TurnIndicatorLeft", "TurnIndicatorRight", "LowBeam", "BrakeLightSwitch", "BrakeLight"):
        assert states[name] == {0, 1}, name
    assert min(states["LongitudinalAccel"]) < -1 < 1 < max(states["LongitudinalAccel"])
    assert len(states["CurrentGear"]) >= 2


def test_every_message_at_its_dbc_period_over_10_seconds():
    sim = SimVehicle(seed=1, nmea_rate_hz=None)
    frames = []
    t = 0.0
    while t < 10.0:  # irregular calls: the schedule must not depend on them
        t = min(10.0, t + 0.037)
        frames += sim.frames_due(t)
    times = defaultdict(list)
    for f in frames:
        times[(f.channel, f.arbitration_id)].append(f.monotonic)
    expected = {
        ("can0" if db is PT else "can1", m.frame_id): m.cycle_time / 1000 for db in (PT, BODY) for m in db.messages
    }
    assert set(times) == set(expected)
    for key, period in expected.items():
        stamps = times[key]
        assert len(stamps) == round(10.0 / period) + 1, key
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        assert all(abs(g - period) <= TICK + 1e-9 for g in gaps), key


def test_counters_increment_and_wrap_and_status_pages_cycle():
    sim = SimVehicle(seed=1, nmea_rate_hz=None)
    counters = defaultdict(list)
    pages = []
    for f in sim.frames_due(6.0):
        for name, value in decode(f).items():
            if name.endswith("_Counter"):
                counters[name].append(value)
            if name == "StatusMux":
                pages.append(value)
    assert set(counters) == {"STEERING_1_Counter", "ENGINE_1_Counter", "BRAKE_1_Counter", "ESP_1_Counter"}
    for name, values in counters.items():
        assert values[0] == 0
        assert all(b == (a + 1) % 16 for a, b in zip(values, values[1:], strict=False)), name
        assert (15, 0) in set(zip(values, values[1:], strict=False))
    assert pages == [0, 1, 2, 0, 1, 2, 0]


def test_harsh_brake_reaches_minus_6_in_truth_and_on_the_bus():
    sim = SimVehicle(seed=4, nmea_rate_hz=None)
    min_truth = min_bus = 0.0
    other_max = 0.0
    hazard = False
    for k in range(1, 5000):
        frames = sim.frames_due(k * TICK)
        tr = sim.truth()
        if tr.harsh_brake:
            min_truth = min(min_truth, tr.accel_longitudinal)
            hazard |= tr.hazard
            for f in frames:
                if f.arbitration_id == PT.get_message_by_name("ESP_1").frame_id:
                    min_bus = min(min_bus, decode(f)["LongitudinalAccel"])
        else:
            other_max = max(other_max, abs(tr.accel_longitudinal))
    assert min_truth == pytest.approx(-6.0, abs=0.01)
    assert min_bus == pytest.approx(-6.0, abs=0.01)
    assert hazard
    assert other_max < 3.6  # nothing else comes near an emergency brake


# --------------------------------------------------------------------------- NMEA


def run_nmea(sim: SimVehicle, seconds: float):
    """(truth, sentence lines) at each tick that produced NMEA."""
    out = []
    for k in range(0, round(seconds / TICK) + 1):
        data = sim.nmea_due(k * TICK)
        if data:
            out.append((sim.truth(), data.decode("ascii").split("\r\n")[:-1]))
    return out


def xor_checksum(line: str) -> str:
    body = line[1 : line.index("*")]
    return f"{functools.reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


def test_nmea_parses_with_pynmea2_and_matches_truth_within_noise():
    sim = SimVehicle(seed=9, nmea_rate_hz=5)
    epochs = run_nmea(sim, 40.0)
    assert len(epochs) == 40 * 5 + 1
    history = {round(e.monotonic, 3): e for e in sim.gnss_history}
    zda_seconds = set()
    moving = 0
    for tr, lines in epochs:
        epoch = history[round(tr.monotonic, 3)]
        kinds = [line[3:6] for line in lines]
        assert kinds[:4] == ["GGA", "RMC", "GSA", "VTG"]
        for line in lines:
            assert line[-2:] == xor_checksum(line)
            msg = pynmea2.parse(line, check=True)
            if isinstance(msg, pynmea2.types.talker.ZDA):
                zda_seconds.add(int(tr.timestamp))
                assert msg.datetime.timestamp() == pytest.approx(tr.timestamp, abs=0.01)
        gga, rmc, gsa, vtg = (pynmea2.parse(line) for line in lines[:4])
        assert gga.gps_qual == 1 and int(gga.num_sats) == 10 and rmc.status == "A" and gsa.mode_fix_type == "3"
        assert rmc.datetime.timestamp() == pytest.approx(tr.timestamp, abs=0.006)
        # reported position minus the noise the simulator says it added = truth
        m, n = radii(tr.lat)
        lat = gga.latitude - math.degrees(epoch.noise_north / m)
        lon = gga.longitude - math.degrees(epoch.noise_east / (n * math.cos(math.radians(tr.lat))))
        assert abs(lat - tr.lat) < 1e-5 and abs(lon - tr.lon) < 1e-5
        assert (rmc.latitude, rmc.longitude) == (gga.latitude, gga.longitude)
        assert math.hypot(epoch.noise_east, epoch.noise_north) < 3.0
        assert rmc.spd_over_grnd * KNOT == pytest.approx(tr.speed, abs=0.1)
        assert vtg.spd_over_grnd_kmph / 3.6 == pytest.approx(tr.speed, abs=0.1)
        if tr.speed > 1:
            moving += 1
            assert abs((rmc.true_course - tr.heading + 180) % 360 - 180) < 0.01
    assert moving > 100
    assert len(zda_seconds) == 41  # ZDA once per second at 5 Hz
    assert len({round(e.noise_east, 6) for e in sim.gnss_history}) > 100  # noise is there


@settings(max_examples=40, deadline=None)
@given(lat=st.floats(-80, 80), lon=st.floats(-179.99, 179.99))
@example(lat=47.999999999, lon=-0.0000000001)
@example(lat=-33.8568, lon=151.2153)
def test_nmea_positions_anywhere_on_earth_parse_back(lat, lon):
    route = Route([straight(100, 5.0)], origin=(lat, lon, 0.0), loop=False)
    sim = SimVehicle(route, config=SimConfig(gnss_noise=0.0), emit_can=False)
    lines = sim.nmea_due(0.0).decode().split("\r\n")
    gga = pynmea2.parse(lines[0], check=True)
    assert gga.latitude == pytest.approx(lat, abs=2e-7)
    assert gga.longitude == pytest.approx(lon, abs=2e-7)


def test_outage_window_gives_no_fix_sentences():
    sim = SimVehicle(seed=3, nmea_rate_hz=1, gnss_outages=[(3.0, 6.0)])
    for tr, lines in run_nmea(sim, 9.0):
        gga, rmc, gsa, vtg = (pynmea2.parse(line, check=True) for line in lines[:4])
        if 3.0 <= tr.t < 6.0:
            assert tr.gnss_outage
            assert gga.gps_qual == 0 and rmc.status == "V" and gsa.mode_fix_type == "1"
            assert gga.lat == "" and rmc.lat == "" and vtg.faa_mode == "N"
        else:
            assert gga.gps_qual == 1 and rmc.status == "A" and gsa.mode_fix_type == "3"


def test_tunnel_segment_gives_no_fix_while_inside():
    sim = SimVehicle(left_right_route(), seed=3, nmea_rate_hz=2)
    no_fix = in_tunnel = 0
    for tr, lines in run_nmea(sim, 40.0):
        rmc = pynmea2.parse(lines[1], check=True)
        inside = tr.segment_name == "tunnel"
        assert (rmc.status == "V") == inside
        in_tunnel += inside
        no_fix += rmc.status == "V"
    assert no_fix >= 4 and no_fix == in_tunnel


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_output_whatever_the_call_pattern():
    def run(seed: int, step: float):
        sim = SimVehicle(seed=seed, nmea_rate_hz=10)
        frames, nmea, t = [], b"", 0.0
        while t < 20.0:
            t = min(20.0, t + step)
            frames += sim.frames_due(t)
            nmea += sim.nmea_due(t)
        return frames, nmea, sim.truth()

    a = run(7, TICK)
    b = run(7, 0.73)
    assert a == b
    c = run(8, 0.5)
    assert c[1] != a[1]  # another seed: other GNSS noise


# --------------------------------------------------------------------------- async runner


async def advance_until_done(clock: SimulatedClock, task: asyncio.Task, limit: float = 60.0):
    await asyncio.sleep(0)  # let run_sim start (and take its start time) at clock time 0
    while not task.done() and clock.monotonic() < limit:
        await clock.advance(TICK)
    assert task.done(), "run_sim did not stop after its duration"
    return task.result()


async def test_run_sim_delivers_frames_and_nmea_over_virtual_buses():
    from drivers.can_bus import PythonCanPort

    tag = uuid.uuid4().hex
    clock = SimulatedClock()
    ports = {
        name: PythonCanPort(name, interface="virtual", channel=f"sim-{tag}-{name}", bitrate=None, clock=clock)
        for name in ("can0", "can1")
    }
    listeners = {name: can.Bus(interface="virtual", channel=f"sim-{tag}-{name}") for name in ports}
    nmea: list[bytes] = []
    try:
        for port in ports.values():
            await port.open()
        task = asyncio.create_task(run_sim(SimVehicle(seed=11), ports, nmea.append, clock, duration=2.0))
        result = await advance_until_done(clock, task)
        received = {}
        for name, bus in listeners.items():
            received[name] = []
            while (msg := bus.recv(0)) is not None:
                received[name].append((msg.arbitration_id, bytes(msg.data)))
    finally:
        for port in ports.values():
            await port.close()
        for bus in listeners.values():
            bus.shutdown()

    twin = SimVehicle(seed=11)
    want = twin.frames_due(2.0)
    for name in ports:
        assert received[name] == [(f.arbitration_id, f.data) for f in want if f.channel == name]
    assert result.frames_sent == len(want) and result.frames_unrouted == 0
    assert b"".join(nmea) == twin.nmea_due(2.0)
    assert result.sim_time == pytest.approx(2.0)


async def test_run_sim_counts_frames_of_buses_without_a_port():
    sent = []

    class ListPort:  # the smallest CanPort-like sink: run_sim only calls send()
        async def send(self, frame):
            sent.append(frame)

    clock = SimulatedClock()
    task = asyncio.create_task(run_sim(SimVehicle(seed=1), {"can0": ListPort()}, None, clock, duration=1.0))
    result = await advance_until_done(clock, task)
    want = SimVehicle(seed=1).frames_due(1.0)
    assert sent == [f for f in want if f.channel == "can0"]
    assert result.frames_unrouted == sum(f.channel == "can1" for f in want) > 0
