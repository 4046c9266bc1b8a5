"""acc-bench scenarios: the file format and its errors, fault injection, and runs of the real
agent (in this process, on python-can virtual buses): a harsh brake that it must attest, and the
same drive with behaviour turned off, which must fail naming the missing event; weaving that the
learned model must report as lane_change (and the same road without it, which must fail); GNSS
and system clock jumps; a bus-off; the real CANmod.gps drive decoded with its own DBC."""

from __future__ import annotations

import asyncio
import math
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from hal.types import CanFrame
from tests.mqtt_broker import MOSQUITTO
from tools import acc_bench
from tools.bench_scenario import (
    BusOff,
    ClockJump,
    FaultInjector,
    Faults,
    Observed,
    ObservedEvent,
    ScenarioError,
    SilentEcu,
    WrongDlc,
    build_vehicle,
    evaluate,
    load_scenario,
    parse_scenario,
    shift_nmea,
)

SCENARIOS = Path(__file__).resolve().parent / "data" / "scenarios"
HARSH = SCENARIOS / "harsh_brake.toml"
WEAVING = SCENARIOS / "weaving.toml"
CLOCK_JUMP = SCENARIOS / "clock_jump.toml"
BUS_OFF = SCENARIOS / "bus_off.toml"
CSS = "can/css-electronics-canmod-gps"
CSS_LOG = f"{CSS}/3BA199E2_00000164_00000005-60FEB5A8.candump.log"
CANMOD_VSS = Path(__file__).resolve().parent.parent / "drivers" / "data" / "canmod-gps.vss.toml"


def _raw() -> dict[str, Any]:
    return tomllib.loads(HARSH.read_text())


# --- the format ---------------------------------------------------------------------------


def test_every_shipped_scenario_loads() -> None:
    for path in sorted(SCENARIOS.glob("*.toml")):
        sc = load_scenario(path)
        assert sc.expect_events or sc.expect_health, path


def test_harsh_brake_scenario_parses() -> None:
    sc = load_scenario(HARSH)
    assert sc.name == "harsh-brake"
    assert [e.kind for e in sc.events] == ["harsh_brake"]
    exp = sc.expect_events[0]
    assert (exp.kind, exp.lo, exp.hi, exp.count) == ("harsh_brake", 3.0, 7.0, 1)
    assert not sc.expect_events[1].present and math.isinf(sc.expect_events[1].hi)
    assert sc.faults.frame_loss == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("edit", "field", "text"),
    [
        (lambda r: r["route"]["segment"][0].__setitem__("speed_kmh", "fast"), "route.segment[0].speed_kmh", "number"),
        (lambda r: r["route"]["segment"][0].__setitem__("speed_kmh", -3), "route.segment[0].speed_kmh", "> 0"),
        (lambda r: r["route"]["segment"][0].pop("length"), "route.segment[0].length", "missing"),
        (lambda r: r["route"]["segment"][0].__setitem__("type", "spiral"), "route.segment[0].type", "spiral"),
        (lambda r: r["route"]["segment"][0].__setitem__("lenght", 3), "route.segment[0].lenght", "unknown field"),
        (lambda r: r.pop("duration"), "duration", "missing"),
        (lambda r: r["event"][0].__setitem__("at", 99), "event[0].at", "within"),
        (lambda r: r["expect"]["event"][0].__setitem__("kind", "harsh_break"), "expect.event[0].kind", "harsh_break"),
        (lambda r: r["expect"]["health"][0].__setitem__("status", "fine"), "expect.health[0].status", "fine"),
        (lambda r: r["faults"].__setitem__("frame_loss", 5), "faults.frame_loss", "within 0.0..1.0"),
        (lambda r: r["expect"]["no_event"][0].__setitem__("count", 2), "expect.no_event[0].count", "not allowed"),
        (lambda r: r.__setitem__("expect", {}), "expect", "at least one"),
        (lambda r: r["event"].append({"kind": "lane_change", "at": 2, "offset": 0}), "event[1].offset", "lateral"),
        (lambda r: r["event"].append({"kind": "weaving", "at": 2, "swings": 0}), "event[1].swings", "1..30"),
        (lambda r: r["event"].append({"kind": "weaving", "at": 2, "period": 2}), "event[1].period", "unknown"),
        (
            lambda r: r["faults"].__setitem__("clock_jump", [{"at": 3, "by": 60, "clock": "ntp"}]),
            "faults.clock_jump[0].clock",
            "gnss, system",
        ),
        (lambda r: r["faults"].__setitem__("clock_jump", [{"at": 3, "by": 0}]), "faults.clock_jump[0].by", "non-zero"),
        (
            lambda r: r["faults"].__setitem__("bus_off", [{"at": 3, "duration": 2, "bus": "can7"}]),
            "faults.bus_off[0].bus",
            "can7",
        ),
        (
            lambda r: r["faults"].__setitem__("bus_off", [{"at": 3, "duration": 2}, {"at": 4, "duration": 1}]),
            "faults.bus_off[1].at",
            "overlaps",
        ),
        (
            lambda r: r["expect"].__setitem__("diag", [{"query": "gnss", "path": "x", "min": 1}]),
            "expect.diag[0].query",
            "gnss.fix",
        ),
        (
            lambda r: r["expect"].__setitem__("diag", [{"query": "state", "path": "speed"}]),
            "expect.diag[0].min",
            "equals",
        ),
    ],
)
def test_malformed_scenario_names_the_field(edit: Any, field: str, text: str) -> None:
    raw = _raw()
    edit(raw)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw, base_dir=SCENARIOS)
    msg = str(info.value)
    assert msg.startswith(field + ":"), msg
    assert text in msg


def test_lane_change_on_a_curve_is_refused() -> None:
    raw = _raw()
    raw["route"]["segment"][0] = {"type": "curve", "turn": 90, "radius": 300, "speed_kmh": 40, "name": "Ring"}
    raw["event"] = [{"kind": "lane_change", "at": 5.0}]
    with pytest.raises(ScenarioError, match="not supported yet: a lane change on a curve") as info:
        build_vehicle(parse_scenario(raw))
    assert str(info.value).startswith("event lane_change at 5: not supported yet: a lane change on a curve (Ring)")


def test_lane_change_needs_room_on_its_straight() -> None:
    raw = _raw()
    raw["event"] = [{"kind": "weaving", "at": 5.0, "swings": 30}]
    with pytest.raises(ScenarioError, match="lengthen the segment"):
        build_vehicle(parse_scenario(raw))


def test_system_clock_jump_is_refused_for_an_agent_process(tmp_path: Path) -> None:
    raw = _raw()
    raw["faults"]["clock_jump"] = [{"at": 3, "by": 60, "clock": "system"}]
    sc = parse_scenario(raw)
    assert sc.faults.clock_jumps == (ClockJump(3.0, 60.0, "system"),)
    with pytest.raises(ScenarioError, match="not supported yet: clock = 'system' with --agent process"):
        asyncio.run(acc_bench.run_scenario(sc, tmp_path / "run", mode="process"))
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_cli_refuses_a_malformed_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(HARSH.read_text().replace("speed_kmh = 40", 'speed_kmh = "forty"'))
    assert acc_bench.main(["scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "route.segment[0].speed_kmh: expected a number" in err and str(bad) in err


def test_replay_scenario_needs_its_log(tmp_path: Path) -> None:
    raw = {k: v for k, v in _raw().items() if k not in ("route", "event")}
    raw["replay"] = "missing.log"
    with pytest.raises(ScenarioError, match=r"^replay.path: no such log file"):
        parse_scenario(raw, base_dir=tmp_path)
    (tmp_path / "drive.log").write_text("(1700000000.000000) can0 123#00\n")
    raw["replay"] = {"path": "drive.log", "bus": "can1"}
    sc = parse_scenario(raw, base_dir=tmp_path)
    assert sc.replay is not None and sc.replay.bus == "can1" and not sc.segments


# --- the drive and the faults ---------------------------------------------------------------


def test_harsh_brake_is_placed_at_its_time() -> None:
    sc = load_scenario(HARSH)
    vehicle = build_vehicle(sc, emit_can=False)
    vehicle.step(4.9)
    assert not vehicle.truth().harsh_brake
    vehicle.step(0.2)
    assert vehicle.truth().harsh_brake
    vehicle.step(0.8)
    assert vehicle.truth().accel_longitudinal < -3.43


def test_lane_change_is_an_s_bend_of_its_offset() -> None:
    """A lane change is ~3.5 m to the left over 4 s, back parallel to the road; the vehicle's
    yaw rate swings one way and back, its lateral acceleration stays far below a harsh corner."""
    raw = _raw()
    raw["event"] = [{"kind": "lane_change", "at": 5.0, "offset": 3.5, "duration": 4.0}]
    vehicle = build_vehicle(parse_scenario(raw), emit_can=False)
    names = [s.name for s in vehicle.route.segments]
    assert names == ["Sonnenstrasse", *["Sonnenstrasse (lane change)"] * 2, "Sonnenstrasse"]
    yaw, ay = [], []
    for _ in range(120):
        vehicle.step(0.1)
        yaw.append(vehicle.truth().yaw_rate)
        ay.append(vehicle.truth().accel_lateral)
    truth = vehicle.truth()
    assert truth.north == pytest.approx(3.5, abs=0.25)  # the route heads east: north is left
    assert truth.heading == pytest.approx(90.0, abs=0.5)
    assert max(yaw) > 2.0 and min(yaw) < -2.0
    assert max(abs(a) for a in ay) < 2.5


def test_weaving_swings_about_the_lane() -> None:
    sc = load_scenario(WEAVING)
    (ev,) = sc.events
    assert (ev.kind, ev.at, ev.offset, ev.duration, ev.swings) == ("weaving", 5.0, 1.5, 2.5, 4)
    vehicle = build_vehicle(sc, emit_can=False)
    assert sum("(weaving)" in s.name for s in vehicle.route.segments) == 8
    north, ay = [], []
    for _ in range(160):
        vehicle.step(0.1)
        north.append(vehicle.truth().north)
        ay.append(vehicle.truth().accel_lateral)
    assert max(north) == pytest.approx(1.5, abs=0.2)
    assert abs(north[-1]) < 0.2  # four moves: back in the lane it started in
    assert max(abs(a) for a in ay) < 3.43  # not a harsh corner for the rules


def test_brake_while_standing_is_refused() -> None:
    raw = _raw()
    raw["event"][0]["at"] = 0.2
    with pytest.raises(ScenarioError, match="standing"):
        build_vehicle(parse_scenario(raw))


class _Port:
    name = "can0"

    def __init__(self) -> None:
        self.sent: list[CanFrame] = []

    async def send(self, frame: CanFrame) -> None:
        self.sent.append(frame)


async def test_fault_injector() -> None:
    port = _Port()
    t = [0.0]
    faults = Faults(frame_loss=0.5, wrong_dlc=(WrongDlc(0x100, 3),), silent=(SilentEcu(0x200, at=1.0, bus="can0"),))
    inj = FaultInjector(port, faults, lambda: t[0], seed=1)  # type: ignore[arg-type]
    for i in range(400):
        t[0] = i / 200
        await inj.send(CanFrame(0x100 if i % 2 else 0x200, data=bytes(8), is_rx=False))
    c = inj.counts
    assert c["silenced"] == 100  # 0x200 from t = 1 s on
    assert 70 < c["lost"] < 230 and c["sent"] == len(port.sent) == 300 - c["lost"]
    assert all(len(f.data) == 3 for f in port.sent if f.arbitration_id == 0x100)
    assert all(f.arbitration_id == 0x100 for f in port.sent[-20:])


async def test_fault_injector_drops_everything_while_the_bus_is_off() -> None:
    port = _Port()
    t = [0.0]
    faults = Faults(bus_off=(BusOff(at=1.0, duration=0.5, bus="can0"),))
    inj = FaultInjector(port, faults, lambda: t[0], seed=1)  # type: ignore[arg-type]
    other = FaultInjector(_Port(), faults, lambda: t[0], seed=1, bus="can1")  # type: ignore[arg-type]
    for i in range(200):
        t[0] = i / 100
        await inj.send(CanFrame(0x100, data=bytes(8), is_rx=False))
        await other.send(CanFrame(0x100, data=bytes(8), is_rx=False))
    assert inj.counts["bus_off"] == 50 and inj.counts["sent"] == 150
    assert other.counts["sent"] == 200 and "bus_off" not in other.counts


def test_shift_nmea_moves_time_and_date() -> None:
    from drivers import nmea

    data = (
        b"$GPGGA,235959.50,4808.1000,N,01134.2300,E,1,08,0.9,519.0,M,47.0,M,,*45\r\n"
        b"$GPRMC,235959.50,A,4808.1000,N,01134.2300,E,10.000,90.00,311226,,,A*60\r\n"
        b"$GPVTG,90.00,T,,M,10.000,N,18.520,K,A*0B\r\n"
        b"$GPZDA,235959.50,31,12,2026,00,00*6A\r\n"
    )
    ahead = [nmea.parse(line) for line in shift_nmea(data, 30.0).decode().split("\r\n") if line]
    gga, rmc, vtg, zda = ahead
    assert str(gga.time) == "00:00:29.500000+00:00" and vtg.kind == "VTG"  # type: ignore[union-attr]
    assert str(rmc.datetime) == str(zda.datetime) == "2027-01-01 00:00:29.500000+00:00"  # type: ignore[union-attr]
    back = [nmea.parse(line) for line in shift_nmea(data, -3600).decode().split("\r\n") if line]
    assert str(back[1].datetime) == "2026-12-31 22:59:59.500000+00:00"  # type: ignore[union-attr]
    assert shift_nmea(data, 0.0) == data


def test_diag_expectations_are_evaluated() -> None:
    raw = {
        "name": "diag",
        "duration": 5.0,
        "route": {"segment": [{"length": 100, "speed_kmh": 30}]},
        "expect": {
            "diag": [
                {"query": "gnss.fix", "path": "time_offset_ms", "at": 2.0, "min": 29000, "max": 31000},
                {"query": "can.stats", "path": "can0.bus_off_count", "equals": 1},
                {"query": "can.stats", "path": "can0.nope", "min": 1},
                {"query": "state", "path": "speed", "max": 20},
            ]
        },
    }
    sc = parse_scenario(raw)
    obs = Observed(
        diag={
            "gnss.fix": [(1.0, {"time_offset_ms": 3.0}), (2.0, {"time_offset_ms": 30012.5}), (5.0, {})],
            "can.stats": [(5.0, {"can0": {"bus_off_count": 2}})],
            "state": [(5.0, {"speed": None})],
        },
        events=[ObservedEvent("harsh_brake", 37.0, 0.5, 1.0, 1, "gnss")],
    )
    report = evaluate(sc, obs)
    results = [(c.passed, c.message) for c in report.checks]
    assert results[0] == (True, "")
    assert results[1] == (False, "can0.bus_off_count was 2 at t=5.0s")
    assert results[2][0] is False and "has no can0.nope" in results[2][1] and "bus_off_count" in results[2][1]
    assert results[3] == (False, "speed was None at t=5.0s, not a number")
    assert "diag gnss.fix time_offset_ms in 29000..31000 at t=2s" in report.text()


def test_dump_toml_round_trips() -> None:
    data = {"a": 1, "b": {"c": 'x"y', "d": [1.5, 2]}, "can": [{"name": "can0", "options": {"k": True}}, {"name": "n"}]}
    assert tomllib.loads("\n".join(acc_bench.dump_toml(data))) == data


# --- against the real agent -----------------------------------------------------------------


def test_harsh_brake_scenario_passes_against_the_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "report.xml"
    rc = acc_bench.main(["scenario", str(HARSH), "--workdir", str(tmp_path / "run"), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS  exactly 1 harsh_brake at t=3..7s" in out
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "0" and int(suite.get("tests", 0)) == 5
    # the agent's own record: the attestation is in its chain directory
    assert any((tmp_path / "run" / "agent" / "attest" / "chain").glob("*.cose"))
    assert "[behaviour]" in (tmp_path / "run" / "agent.toml").read_text()


def _write_candump(path: Path, frames: list[CanFrame]) -> None:
    path.write_text(
        "".join(f"({f.timestamp:.6f}) {f.channel} {f.arbitration_id:03X}#{f.data.hex().upper()}\n" for f in frames)
    )


def test_replay_scenario_with_faults_against_the_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A recorded drive (here: the simulated vehicle's powertrain bus written as a candump
    log) replayed onto can0 with frame loss and a silent body ECU on top."""
    vehicle = build_vehicle(load_scenario(HARSH))
    _write_candump(tmp_path / "drive.log", [f for f in vehicle.frames_due(8.0) if f.channel == "can0"])
    scenario = tmp_path / "replay.toml"
    scenario.write_text(
        """
name = "replayed-brake"
duration = 8.0
settle = 1.5
replay = { path = "drive.log", bus = "can0" }
[faults]
frame_loss = 0.02
[[faults.wrong_dlc]]
id = 0x3C0
dlc = 2
[[expect.event]]
kind = "harsh_brake"
window = [3.0, 7.5]
count = 1
[[expect.health]]
subsystem = "can.can0"
status = "ok"
[[expect.health]]
subsystem = "can.can1"
status = "degraded"
"""
    )
    rc = acc_bench.main(["scenario", str(scenario), "--workdir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "'wrong_dlc': " in out and "replay of" in out


def test_same_drive_without_behaviour_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "report.xml"
    argv = ["scenario", str(HARSH), "--set", "behaviour.enabled=false", "--junit", str(junit)]
    rc = acc_bench.main([*argv, "--workdir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "FAIL  exactly 1 harsh_brake at t=3..7s: expected 1 harsh_brake event(s), got 0 (seen: none)" in out
    assert "FAIL  health behaviour ok at the end: behaviour was not reported" in out
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "2"
    failed = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    fail = failed["exactly 1 harsh_brake at t=3..7s"]
    assert fail is not None and "harsh_brake" in (fail.get("message") or "")
    assert failed["no harsh_accel at t>=0s"] is None


def test_process_mode_refuses_multicast_outside_a_private_netns(capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.can_bus import non_loopback_interfaces_up

    if not non_loopback_interfaces_up():
        pytest.skip("already in a namespace with only loopback")
    assert acc_bench.main(["scenario", str(HARSH), "--agent", "process"]) == 69
    assert "private network namespace" in capsys.readouterr().err


def _needs_netns() -> None:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    if subprocess.run(["unshare", "-n", "true"], check=False).returncode != 0:
        pytest.skip("unshare -n is not allowed here")


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("scenario", [BUS_OFF, CLOCK_JUMP], ids=["bus-off", "clock-jump"])
def test_faults_against_the_agent_process_in_a_netns(scenario: Path, tmp_path: Path) -> None:
    """Bus-off (error frames over udp_multicast) and a GNSS clock jump against ``python -m
    agent.main`` as a child process in a private network namespace: the same verdicts as
    in-process."""
    import subprocess
    import sys

    _needs_netns()
    argv = ["scenario", str(scenario), "--agent", "process", "--netns", "--workdir", str(tmp_path / "run")]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.acc_bench", *argv],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: " in proc.stdout


@pytest.mark.netns
def test_harsh_brake_against_the_agent_process_in_a_netns(tmp_path: Path) -> None:
    """``python -m agent.main`` as a child process on udp_multicast buses, bench and agent in a
    new network namespace with only loopback."""
    import subprocess
    import sys

    _needs_netns()
    junit = tmp_path / "report.xml"
    argv = ["scenario", str(HARSH), "--agent", "process", "--netns", "--junit", str(junit)]
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "tools.acc_bench", *argv, "--workdir", str(tmp_path / "run")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ET.parse(junit).getroot().get("failures") == "0"
    assert "udp_multicast" in (tmp_path / "run" / "agent.toml").read_text()


def test_replay_of_a_real_css_electronics_drive_with_expectations(
    refdata: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real recording (../shared/refdata/can/css-electronics-canmod-gps, a car in Denmark,
    2021): the CANmod.gps GNSS/IMU channel (can2, ~100 Hz IMU) replayed with its timing onto the
    agent's can0 with 1 % frame loss. The agent's powertrain DBC does not describe these frames:
    the expectations are that the bus is healthy, nothing crashes, and no driving event is
    claimed from traffic the agent cannot decode."""
    log = refdata / "can" / "css-electronics-canmod-gps" / "3BA199E2_00000164_00000005-60FEB5A8.candump.log"
    scenario = tmp_path / "css.toml"
    scenario.write_text(
        f"""
name = "css-canmod-replay"
duration = 6.0
settle = 1.0
replay = {{ path = "{log}", bus = "can0", channel = "can2" }}
[faults]
frame_loss = 0.01
[[expect.health]]
subsystem = "can.can0"
status = "ok"
[[expect.no_event]]
kind = "harsh_brake"
[[expect.no_event]]
kind = "harsh_accel"
[[expect.no_event]]
kind = "harsh_corner"
"""
    )
    rc = acc_bench.main(["scenario", str(scenario), "--workdir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "replay of" in out and "'lost': " in out


# --- more runs against the real agent, side by side in one event loop ------------------------


def _system_jump_scenario() -> Any:
    """The agent's own wall clock (not GNSS) stepped an hour ahead mid-drive (in-process only)."""
    raw = tomllib.loads(HARSH.read_text())
    raw["name"] = "system-clock-jump"
    raw["faults"] = {"clock_jump": [{"at": 3.0, "by": 3600.0, "clock": "system"}]}
    raw["expect"] = {
        "event": [{"kind": "harsh_brake", "at": 5.0, "tolerance": 2.0, "count": 1}],
        "diag": [{"query": "gnss.fix", "path": "time_offset_ms", "min": -3_601_000, "max": -3_599_000}],
        "health": [{"subsystem": "gnss", "status": "ok"}],
    }
    return parse_scenario(raw, base_dir=SCENARIOS)


def _css_decoded_scenario(refdata: Path) -> Any:
    """The real CANmod.gps drive (can2 of the CSS Electronics log) on the agent's can0, decoded
    with the module's own DBC and drivers/data/canmod-gps.vss.toml."""
    raw = {
        "name": "css-canmod-decoded",
        "duration": 7.0,
        "settle": 1.0,
        "replay": {
            "path": str(refdata / CSS_LOG),
            "bus": "can0",
            "channel": "can2",
            "dbc": str(refdata / CSS / "canmod-gps.dbc"),
            "vss_map": str(CANMOD_VSS),
        },
        "faults": {"frame_loss": 0.01},
        "expect": {
            "health": [{"subsystem": "can.can0", "status": "ok", "at": 5.0}],
            "no_event": [{"kind": k} for k in ("harsh_brake", "harsh_accel", "harsh_corner")],
            "diag": [
                # ~100 Hz IMU (6 signals) + 1 Hz GNSS messages: ~700 signals a second
                {"query": "can.stats", "path": "can0.signals", "at": 5.0, "min": 1500},
                {"query": "can.stats", "path": "can0.decode_errors", "equals": 0},
                # the IMU reaches the fused VehicleState: a calm town drive, gravity removed
                {"query": "state", "path": "accel_longitudinal", "at": 5.0, "min": -3.0, "max": 3.0},
                {"query": "state", "path": "accel_lateral", "at": 5.0, "min": -3.0, "max": 3.0},
                {"query": "state", "path": "yaw_rate", "at": 5.0, "min": -40.0, "max": 40.0},
                # the module's GNSS over CAN is the agent's receiver here: position and speed
                # (inside the recording's latitude band and speed range, tests/test_css_logs.py)
                {"query": "state", "path": "lat", "at": 5.0, "min": 55.869, "max": 55.871},
                {"query": "state", "path": "speed", "at": 5.0, "min": 0.0, "max": 14.6},
            ],
        },
    }
    return parse_scenario(raw)


@pytest.fixture(scope="module")
def side_by_side(refdata: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Reports of several scenarios run concurrently (each its own in-process agent, buses,
    pty and diagnostics socket), which keeps this file's wall time down."""
    base = tmp_path_factory.mktemp("bench")
    weaving = load_scenario(WEAVING)
    raw = tomllib.loads(WEAVING.read_text())
    del raw["event"]
    raw["name"] = "no-weaving"
    scenarios = {
        "weaving": weaving,
        "lane-change": load_scenario(SCENARIOS / "lane_change.toml"),
        "no-weaving": parse_scenario(raw),
        "clock-jump": load_scenario(CLOCK_JUMP),
        "system-clock-jump": _system_jump_scenario(),
        "bus-off": load_scenario(BUS_OFF),
        "css-decoded": _css_decoded_scenario(refdata),
    }
    gnss = {}
    if acc_bench.GPSD is not None:  # CI installs gpsd; without it that test skips
        scenarios["gpsd"] = _gpsd_scenario()
        gnss["gpsd"] = "gpsd"

    async def run_all() -> list[Any]:
        return await asyncio.gather(
            *(acc_bench.run_scenario(sc, base / name, gnss=gnss.get(name, "pty")) for name, sc in scenarios.items())
        )

    return dict(zip(scenarios, asyncio.run(run_all()), strict=True))


def _gpsd_scenario() -> Any:
    """The harsh brake, with the agent reading GNSS from a real gpsd (``--gnss gpsd``)."""
    raw = tomllib.loads(HARSH.read_text())
    raw["name"] = "harsh-brake-gpsd"
    raw["expect"].setdefault("health", []).append({"subsystem": "gnss", "status": "ok"})
    raw["expect"].setdefault("diag", []).append({"query": "gnss.fix", "path": "fixes", "min": 4})
    raw["expect"]["diag"].append({"query": "gnss.fix", "path": "fix.lat", "min": 48.0, "max": 48.3})
    return parse_scenario(raw)


def test_gnss_through_a_real_gpsd(side_by_side: dict[str, Any]) -> None:
    if "gpsd" not in side_by_side:
        pytest.skip("gpsd not installed (apt-get install gpsd); CI installs it")
    report = side_by_side["gpsd"]
    _passed(report)
    assert report.observed.notes["gnss"].startswith("gpsd ")
    assert [e.kind for e in report.observed.events] == ["harsh_brake"]
    assert "PASS  diag gnss.fix fixes" in report.text()


def _passed(report: Any) -> None:
    assert report.passed, report.text()


def test_weaving_is_reported_as_lane_change(side_by_side: dict[str, Any]) -> None:
    report = side_by_side["weaving"]
    _passed(report)
    (event,) = [e for e in report.observed.events if e.kind == "lane_change"]
    assert 1.0 <= event.t <= 13.0 and event.tsrc == "gnss"
    assert "PASS  at least 1 lane_change at t=1..13s" in report.text()


def test_one_ordinary_lane_change_is_reported_too(side_by_side: dict[str, Any]) -> None:
    """Honest outcome, not a wish: the model (trained on weaving) fires on a single 3.5 m lane
    change in 4 s at 50 km/h, so the agent attests exactly one lane_change for it."""
    report = side_by_side["lane-change"]
    _passed(report)
    assert [e.kind for e in report.observed.events] == ["lane_change"]


def test_same_road_without_weaving_fails(side_by_side: dict[str, Any]) -> None:
    report = side_by_side["no-weaving"]
    assert not report.passed
    (fail,) = report.failures
    assert fail.name == "at least 1 lane_change at t=1..13s"
    assert fail.message == "missing lane_change event: 0 in the window (seen: none)"
    assert "FAIL: 2 of 3 expectation(s) met" in report.text()


def test_gnss_clock_jump(side_by_side: dict[str, Any]) -> None:
    """GNSS time +30 s at 4 s: the agent sees the jump (gnss degraded, time suspect), reports the
    offset, and signs the brake at 7 s in holdover time from the last consistent GNSS time; after
    the jump back the offset is ~0 and gnss ok again."""
    report = side_by_side["clock-jump"]
    _passed(report)
    (brake,) = report.observed.events
    assert brake.kind == "harsh_brake" and 5.0 <= brake.t <= 9.0 and brake.tsrc == "holdover"
    suspect = [a["time_suspect"] for t, a in report.observed.diag["gnss.fix"] if 5.5 <= t <= 10.5]
    assert suspect and all(suspect)
    offsets = [a["time_offset_ms"] for t, a in report.observed.diag["gnss.fix"] if 5.5 <= t <= 10.5]
    assert offsets and all(29_000 < o < 31_000 for o in offsets)
    assert "clock jumps: gnss +30 s at t=4s, gnss -30 s at t=11s" in report.text()


def test_system_clock_jump(side_by_side: dict[str, Any]) -> None:
    """The agent's wall clock an hour ahead: GNSS minus system is -1 h, and the brake is still
    attested at its GNSS time."""
    report = side_by_side["system-clock-jump"]
    _passed(report)
    assert [e.tsrc for e in report.observed.events] == ["gnss"]


def test_bus_off_and_recovery(side_by_side: dict[str, Any]) -> None:
    report = side_by_side["bus-off"]
    _passed(report)
    states = [(t, h.get("can.can0")) for t, h in report.observed.health]
    assert all(s == "ok" for t, s in states if 1.5 <= t < 4.0), states
    assert all(s == "failed" for t, s in states if 5.0 <= t < 7.0), states
    assert states[-1][1] == "ok"
    assert report.observed.notes["bus-off error frames sent"] == {"can0": 3}
    assert report.observed.notes["faults"]["can0"]["bus_off"] > 1000  # 3 s of ~400 frames/s dropped


def test_css_canmod_drive_decoded_with_its_dbc(side_by_side: dict[str, Any]) -> None:
    report = side_by_side["css-decoded"]
    _passed(report)
    signals = [a["can0"]["signals"] for t, a in report.observed.diag["can.stats"]]
    assert signals == sorted(signals) and signals[-1] > 3000


def test_faster_than_real_time_gives_the_same_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--speed 4: the in-process agent, the vehicle and the bench share a scaled clock; the
    9 s harsh-brake drive takes about a quarter of its time, passes with the brake at its time,
    and still fails with the behaviour model off."""
    t0 = time.monotonic()
    rc = acc_bench.main(["scenario", str(HARSH), "--speed", "4", "--workdir", str(tmp_path / "fast")])
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "speed: 4x real time" in out and "PASS  exactly 1 harsh_brake at t=3..7s" in out
    assert took < 9.0  # the drive alone is 9 s + 1.5 s settle at real time
    argv = ["scenario", str(HARSH), "--speed", "4", "--set", "behaviour.enabled=false"]
    rc = acc_bench.main([*argv, "--workdir", str(tmp_path / "off")])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL  exactly 1 harsh_brake at t=3..7s" in out, out


def test_speed_is_refused_for_an_agent_process(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="--speed: not supported with --agent process"):
        asyncio.run(acc_bench.run_scenario(load_scenario(HARSH), tmp_path, mode="process", speed=4.0))


def test_events_judged_from_what_the_bench_hears_over_mqtt(tmp_path: Path) -> None:
    """--mqtt: a Mosquitto on 127.0.0.1, the agent publishing to it, the bench subscribed to the
    cell's attestation topic. The brake arrives there signed (and verified); with the agent's
    MQTT off the brake is only in its chain, and the scenario fails."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto not installed at {MOSQUITTO}")
    sc = load_scenario(HARSH)

    async def both() -> list[Any]:
        return await asyncio.gather(
            acc_bench.run_scenario(sc, tmp_path / "on", mqtt="embedded", speed=2.0),
            acc_bench.run_scenario(sc, tmp_path / "off", mqtt="embedded", speed=2.0, overrides=["mqtt.enabled=false"]),
        )

    on, off = asyncio.run(both())
    _passed(on)
    heard = on.observed.notes["mqtt"]
    assert heard["attestations"] >= 1 and heard["not verified"] == 0 and heard["driving events"] == 1
    assert heard["topic"] == "acc/v1/cell/bench-cell/tx"
    assert not off.passed
    assert off.observed.notes["mqtt"]["driving events"] == 0
    assert off.observed.notes["mqtt"]["driving events in the agent's chain"] == 1
    assert "expected 1 harsh_brake event(s), got 0" in off.text()
