"""The agent's attestations: GNSS time sources, a durable chain that resumes after a restart,
and the periodic sensor summary — with real files and a receiver checking the chain."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.attestor import Attestor, SummaryService, chain_dir, gnss_time
from agent.keystore import init_device_key, load_identity
from drivers.clock import SimulatedClock
from hal.types import FixMode, GnssFix, VehicleState
from ledger_lite.attestation import AttestationReceiver, TimeSource, attestation_id
from ledger_lite.errors import ReplayError

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def fix(mono: float, mode: FixMode = FixMode.FIX_3D) -> GnssFix:
    return GnssFix(mode=mode, time=T0, lat=48.1, lon=11.5, monotonic=mono)


def test_time_comes_from_gnss_then_holdover_then_system() -> None:
    clock = SimulatedClock(start_utc=1_000_000.0, start_monotonic=100.0)
    r = gnss_time(fix(99.5), clock)  # a fix half a second old
    assert r.source is TimeSource.GNSS and r.utc == pytest.approx(T0.timestamp() + 0.5)
    held = gnss_time(fix(40.0), clock)  # fix 60 s old
    assert held.source is TimeSource.HOLDOVER and held.utc == pytest.approx(T0.timestamp() + 60.0)
    no_fix = gnss_time(fix(99.9, FixMode.NO_FIX), clock)  # receiver has time, no position fix
    assert no_fix.source is TimeSource.HOLDOVER
    assert gnss_time(fix(-1000.0), clock).source is TimeSource.SYSTEM  # holdover ran out
    assert gnss_time(None, clock).utc == 1_000_000.0  # the clock was started at that UTC


def _state(mono: float, speed: float, lat: float | None = 48.1) -> VehicleState:
    return VehicleState(
        monotonic=mono,
        timestamp=0.0,
        sequence=0,
        speed=speed,
        accel_longitudinal=-1.0,
        accel_lateral=0.5,
        lat=lat,
        lon=11.5 if lat is not None else None,
        gnss_mode=FixMode.FIX_3D if lat is not None else FixMode.NO_FIX,
    )


async def test_chain_is_durable_and_resumes_after_a_restart(tmp_path: Path) -> None:
    init_device_key(tmp_path)
    identity = load_identity(tmp_path)
    clock = SimulatedClock(start_utc=T0.timestamp())
    state = _state(0.0, 10.0)
    a = Attestor(identity, tmp_path, clock, fix=lambda: fix(clock.monotonic()), state=lambda: state)
    body = {"event": "harsh_brake", "severity": 0.5, "duration": 1.2, "speed": 12.0, "accel_long": -6.1}
    first = [await a.attest("driving_event", body, model="rules-1") for _ in range(3)]
    files = sorted(p.name for p in chain_dir(tmp_path).iterdir())
    assert files == ["000000000001.cose", "000000000002.cose", "000000000003.cose"]
    assert (chain_dir(tmp_path) / files[-1]).read_bytes() == first[-1]
    # a crash mid-write leaves a .tmp: it never happened
    (chain_dir(tmp_path) / "000000000004.tmp").write_bytes(b"half")
    b = Attestor(identity, tmp_path, clock, state=lambda: state)  # the restarted agent
    later = await b.attest("driving_event", body)
    assert not list(chain_dir(tmp_path).glob("*.tmp"))

    rx = AttestationReceiver(from_start=True)
    got = [rx.accept(d, now=T0.timestamp()) for d in [*first, later]]
    assert [g.attestation.seq for g in got] == [1, 2, 3, 4]
    assert got[3].attestation.prev == attestation_id(first[2])  # the chain is unbroken across the restart
    assert rx.gaps == [] and rx.broken_links == []
    assert got[0].attestation.time_source == TimeSource.GNSS and got[3].attestation.time_source == TimeSource.SYSTEM
    assert got[0].attestation.position is not None and got[0].attestation.position.lat == pytest.approx(48.1)
    with pytest.raises(ReplayError):
        rx.accept(first[1], now=T0.timestamp())


async def test_sensor_summary_every_interval(tmp_path: Path) -> None:
    init_device_key(tmp_path)
    clock = SimulatedClock(start_utc=T0.timestamp())
    frames = [0, 0]
    attestor = Attestor(load_identity(tmp_path), tmp_path, clock)
    summary = SummaryService(attestor, clock, 10.0, lambda: (frames[0], frames[1]))
    task = asyncio.create_task(summary.run())
    await asyncio.sleep(0)  # the service starts its first 10 s window now
    for i in range(1, 101):  # 10 s of 10 Hz state at 10 m/s, 400 CAN frames/s
        await clock.advance(0.1)
        frames[0] += 40
        summary(_state(clock.monotonic(), 10.0 if i > 50 else 5.0, lat=None if i < 20 else 48.1))
    await clock.advance(0.05)
    for _ in range(200):  # the durable write runs in a thread, on real time
        if attestor.count:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stored = sorted(chain_dir(tmp_path).glob("*.cose"))
    assert len(stored) == 1
    att = AttestationReceiver().accept(stored[0].read_bytes(), now=T0.timestamp() + 20)
    b = att.attestation.body
    assert att.attestation.kind == "sensor_summary"
    assert b["samples"] == 100 and b["speed_max"] == 10.0 and b["speed_mean"] == pytest.approx(7.5)
    assert b["distance"] == pytest.approx(74.5, abs=0.6)  # 49 x 0.5 m + 50 x 1.0 m
    assert b["gnss_fix_ratio"] == pytest.approx(0.81) and b["can_frames"] == 4000
    assert b["accel_long_min"] == -1.0 and b["accel_lat_max"] == 0.5


async def test_without_a_cell_attestations_stay_in_the_chain_and_are_not_queued(tmp_path: Path) -> None:
    """No cell configured or joined yet: the outbox would refuse an entry without a destination;
    the attestation is in the chain files and counted as not queued (the service does not crash)."""
    from agent.outbox import AsyncOutbox

    init_device_key(tmp_path)
    identity = load_identity(tmp_path)
    clock = SimulatedClock(start_utc=T0.timestamp())
    outbox = await AsyncOutbox.open(tmp_path / "outbox.db", budget_bytes=1 << 20, clock=clock)
    cell = [""]
    a = Attestor(identity, tmp_path, clock, outbox=outbox, cell=lambda: cell[0])
    body = {"event": "harsh_brake", "severity": 0.5, "duration": 1.2, "speed": 12.0}
    await a.attest("driving_event", body)
    assert a.unqueued == 1 and (await outbox.stats()).pending == 0
    cell[0] = "cell-7"
    await a.attest("driving_event", body)
    assert a.unqueued == 1 and (await outbox.stats()).pending == 1
    assert len(list(chain_dir(tmp_path).iterdir())) >= 2
    await outbox.close()
