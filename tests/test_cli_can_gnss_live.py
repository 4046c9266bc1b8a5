"""Live bus and GNSS diagnostics: ``acc can stats`` / ``acc can dump`` / ``acc gnss fix`` against a
real demo agent process, and the CanService / GnssService additions behind them (ring buffer,
bus-state history, GNSS clock offset) as units."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.health import HealthRegistry
from agent.services import CanService, GnssService
from drivers.clock import SimulatedClock
from hal.types import CanBusState, CanBusStats, CanFrame, FixMode, GnssFix, SignalSample
from tools.cli_can import dump_line, render_stats

REPO = Path(__file__).resolve().parents[1]
DUMP_LINE = re.compile(r"^  (can[01])  ([0-9A-F]{3}|[0-9A-F]{8})   \[(\d)\]  ((?:[0-9A-F]{2} ?)*)$")
SIGNAL_LINE = re.compile(r"^        (\S+) = (\S+)(?: (\S+))?$")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ACC_") and k != "RUNTIME_DIRECTORY"}


def acc(*argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.acc", *map(str, argv)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- units ---------------------------------------------------------------------------------------


class FakePort:
    name = "can9"

    def __init__(self) -> None:
        self.state = CanBusState.ACTIVE

    def stats(self) -> CanBusStats:
        return CanBusStats(channel=self.name, state=self.state, bus_off_count=int(self.state is CanBusState.BUS_OFF))


class FakeDecoder:
    def decode(self, frame: Any) -> list[SignalSample]:
        if frame.arbitration_id != 0x1A0:
            return []
        return [SignalSample("Vehicle.Speed", frame.data[0] / 10, "m/s", 0.0, 0.0, "can9.SPEED")]


class FakeFusion:
    def __init__(self) -> None:
        self.samples: list[SignalSample] = []

    def on_signal(self, s: SignalSample) -> None:
        self.samples.append(s)


def _service(capacity: int) -> tuple[CanService, FakePort, SimulatedClock]:
    port, clock = FakePort(), SimulatedClock()
    svc = CanService(
        port,  # type: ignore[arg-type]
        [FakeDecoder()],
        FakeFusion(),  # type: ignore[arg-type]
        HealthRegistry(clock.monotonic),
        clock,
        recent_frames=capacity,
    )
    return svc, port, clock


def test_ring_buffer_is_bounded_and_keeps_decoded_signals() -> None:
    svc, _port, _clock = _service(10)
    frames = [CanFrame(0x1A0 if i % 2 else 0x0C2, bytes([i, 2, 3]), monotonic=float(i + 1)) for i in range(25)]
    svc._handle(frames)
    svc._handle([CanFrame(0x80, b"\x00" * 8, is_extended_id=True, is_error_frame=True)])
    assert len(svc.recent) == 10 and svc.recent.maxlen == 10
    assert svc.frames == 25 and svc.error_frames_seen == 1 and len(svc.errors) == 1
    assert svc.evicted_seq > 0
    seqs = [f["seq"] for f in svc.recent]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    # everything after a cursor older than the ring: the 10 kept, oldest first
    assert [f["seq"] for f in svc.recent_since(0)] == seqs
    assert svc.recent_since(seqs[-1]) == []
    assert len(svc.recent_since(seqs[4])) == 5
    assert len(svc.recent_since(0, limit=3)) == 3
    speed = svc.recent_since(0, ids=[0x1A0])
    assert speed and all(f["id"] == 0x1A0 for f in speed)
    assert speed[-1]["signals"] == [{"name": "Vehicle.Speed", "value": 2.3, "unit": "m/s"}]
    assert svc.recent[-1]["error"] and svc.recent[-1]["id"] == 0x80
    # the memory stays bounded however many frames pass
    for _ in range(50):
        svc._handle(frames)
    assert len(svc.recent) == 10


def test_bus_state_history_with_times() -> None:
    svc, port, clock = _service(4)
    svc.check(clock.monotonic())
    for state in (CanBusState.PASSIVE, CanBusState.BUS_OFF, CanBusState.ACTIVE):
        asyncio.run(clock.advance(1.5))
        port.state = state
        svc.check(clock.monotonic())
    history = svc.stats()["state_history"]
    assert [(h["from"], h["to"]) for h in history] == [
        (None, "active"),
        ("active", "passive"),
        ("passive", "bus_off"),
        ("bus_off", "active"),
    ]
    assert [h["time"] for h in history] == sorted(h["time"] for h in history)
    port.state = CanBusState.BUS_OFF
    st = svc.stats()
    assert st["state"] == "bus_off"
    text = render_stats({"can9": st})
    assert "BUS-OFF" in text and "error-passive -> bus-off" in text
    assert max(map(len, text.splitlines())) <= 80


def test_dump_line_is_candump_style() -> None:
    f = {"bus": "can0", "id": 0x123, "extended": False, "fd": False, "error": False, "data": "1122334455667788"}
    assert dump_line(f) == "  can0  123   [8]  11 22 33 44 55 66 77 88"
    ext = {**f, "id": 0x18DAF110, "extended": True, "data": "0241"}
    assert dump_line(ext) == "  can0  18DAF110   [2]  02 41"
    fd = {**f, "fd": True, "data": "00" * 64}
    assert max(map(len, dump_line(fd).splitlines())) <= 80


def test_gnss_clock_offset_and_last_fix() -> None:
    clock = SimulatedClock(start_utc=1_700_000_000.0, start_monotonic=100.0)
    svc = GnssService(object(), FakeFusion(), HealthRegistry(clock.monotonic), clock)  # type: ignore[arg-type]
    t = datetime.fromtimestamp(1_700_000_000.25, UTC)  # the receiver is 250 ms ahead
    svc._note(GnssFix(mode=FixMode.FIX_3D, time=t, lat=48.1, lon=11.5, sats_used=9, hdop=0.8, monotonic=100.0))
    assert svc.time_offset_ms == pytest.approx(250.0, abs=0.01)
    svc._note(GnssFix(mode=FixMode.NO_FIX, monotonic=100.5))
    assert svc.last_fix is not None and svc.last_fix.sats_used == 9


# --- against a running demo agent --------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("live")
    sock = tmp / "diag.sock"
    log = tmp / "agent.log"
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--demo", "--data-dir", str(tmp / "data")]
            + ["--set", f"agent.diag_socket={sock}", "--duration", "120"],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=log_fh,
        )
    try:
        end = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, "the demo agent did not come up"
            time.sleep(0.05)
        yield sock
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_stats_shows_both_buses(agent: Path) -> None:
    time.sleep(2.5)  # a rate needs two health ticks
    out = acc("can", "stats", "--socket", agent, "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert set(stats) == {"can0", "can1"}
    for st in stats.values():
        assert st["rx_frames"] > 0 and st["state"] == "active" and st["rate"] > 0
        assert st["state_history"][-1]["to"] == "active"
    human = acc("can", "stats", "--socket", agent)
    assert human.returncode == 0 and "can0" in human.stdout and "can1" in human.stdout
    assert "ERROR-ACTIVE" in human.stdout and max(map(len, human.stdout.splitlines())) <= 80
    one = acc("can", "stats", "--socket", agent, "--bus", "can1", "--json")
    assert one.returncode == 0 and set(json.loads(one.stdout)) == {"can1"}
    assert acc("can", "stats", "--socket", agent, "--bus", "nope").returncode == 2


def test_dump_n_frames_decoded(agent: Path) -> None:
    out = acc("can", "dump", "--socket", agent, "-n", "12", "--decode")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    frames = [m for m in map(DUMP_LINE.match, lines) if m]
    assert len(frames) == 12
    for m in frames:
        assert len(m.group(4).split()) == int(m.group(3))
    signals = [m for m in map(SIGNAL_LINE.match, lines) if m]
    assert len(frames) + len(signals) == len(lines)
    assert any(m.group(1).startswith("Vehicle.") for m in signals)
    assert max(map(len, lines)) <= 80


def test_dump_filters_by_id_and_bus(agent: Path) -> None:
    out = acc("can", "dump", "--socket", agent, "-n", "5", "--id", "0x1a0", "--json", "--decode")
    assert out.returncode == 0, out.stderr
    frames = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(frames) == 5 and {f["id"] for f in frames} == {0x1A0}
    assert all("Vehicle.Speed" in {s["name"] for s in f["signals"]} for f in frames)
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    one_bus = acc("can", "dump", "--socket", agent, "-n", "3", "--bus", "can1", "--json")
    assert one_bus.returncode == 0 and {json.loads(x)["bus"] for x in one_bus.stdout.splitlines()} == {"can1"}
    assert acc("can", "dump", "--socket", agent, "--id", "zz", "-n", "1").returncode == 2


def test_dump_follow_stops_on_ctrl_c(agent: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.acc", "can", "dump", "--socket", str(agent), "--follow"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and DUMP_LINE.match(out.splitlines()[0])


def test_gnss_fix(agent: Path) -> None:
    end = time.monotonic() + 20
    while True:
        out = acc("gnss", "fix", "--socket", agent, "--json")
        fix = json.loads(out.stdout) if out.stdout else None
        if out.returncode == 0 and fix and fix["last"]["mode"] == 3:
            break
        assert time.monotonic() < end, (out.stdout, out.stderr)
        time.sleep(0.5)
    last = fix["last"]
    assert last["sats_used"] and last["sats_used"] > 3 and 0 < last["hdop"] < 5
    assert fix["fix"]["lat"] is not None and last["age"] < 5
    assert abs(fix["time_offset_ms"]) < 2000
    human = acc("gnss", "fix", "--socket", agent)
    assert human.returncode == 0 and "3D" in human.stdout and "HDOP" in human.stdout
    assert "used" in human.stdout and " ms" in human.stdout
    assert max(map(len, human.stdout.splitlines())) <= 80


def test_no_agent_is_69(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    for argv in (["can", "stats"], ["can", "dump", "-n", "1"], ["gnss", "fix"]):
        out = acc(*argv, "--socket", missing)
        assert out.returncode == 69, (argv, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
