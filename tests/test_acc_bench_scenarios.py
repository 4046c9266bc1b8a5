"""acc-bench scenarios: the file format and its errors, fault injection, and two runs of the
real agent (in this process, on python-can virtual buses): a harsh brake that it must attest,
and the same drive with behaviour turned off, which must fail naming the missing event."""

from __future__ import annotations

import math
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from hal.types import CanFrame
from tools import acc_bench
from tools.bench_scenario import (
    FaultInjector,
    Faults,
    ScenarioError,
    SilentEcu,
    WrongDlc,
    build_vehicle,
    load_scenario,
    parse_scenario,
)

SCENARIOS = Path(__file__).resolve().parent / "data" / "scenarios"
HARSH = SCENARIOS / "harsh_brake.toml"


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


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (
            lambda r: r["event"].append({"kind": "lane_change", "at": 3.0}),
            "event[1].kind: not supported yet: lane_change",
        ),
        (lambda r: r["faults"].__setitem__("clock_jump", {"at": 3, "by": 60}), "faults.clock_jump: not supported yet"),
    ],
)
def test_unsupported_features_are_refused(edit: Any, what: str) -> None:
    raw = _raw()
    edit(raw)
    with pytest.raises(ScenarioError, match="not supported yet") as info:
        parse_scenario(raw)
    assert str(info.value).startswith(what)


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


@pytest.mark.netns
def test_harsh_brake_against_the_agent_process_in_a_netns(tmp_path: Path) -> None:
    """``python -m agent.main`` as a child process on udp_multicast buses, bench and agent in a
    new network namespace with only loopback."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    if subprocess.run(["unshare", "-n", "true"], check=False).returncode != 0:
        pytest.skip("unshare -n is not allowed here")
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
