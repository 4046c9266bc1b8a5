"""LogReplayPort and replay_to: pacing on a simulated clock (no sleeping), fast mode, channel
selection and maps, filters, looping, gap compression, errors, and replay onto a real
python-can virtual bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from pathlib import Path

import pytest

from drivers.can_bus import PythonCanPort
from drivers.can_convert import read_log
from drivers.can_replay import LogReplayPort, replay_to
from drivers.clock import SimulatedClock
from hal.errors import DecodeError, DeviceError
from hal.types import CanBusState, CanFilter, CanFrame

CSS = "can/css-electronics-canmod-gps"
CSS_164 = "3BA199E2_00000164_00000005-60FEB5A8.candump.log"
CSS_165 = "3BA199E2_00000165_00000006-60FFE42F.candump.log"

SMALL = """\
(1000.000000) can0 100#01
(1000.010000) can0 101#0202
(1000.010500) can1 200#03
(1000.250000) can0 20000080#0000000000000000
(1003.000000) can0 18DAF110##1AABBCCDDEEFF0011
"""
SMALL_REL = [0.0, 0.010, 0.0105, 0.250, 3.0]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.log"
    path.write_text(SMALL)
    return path


async def drive(clock: SimulatedClock, port: LogReplayPort, limit: int | None = None) -> list[CanFrame]:
    """Iterate ``port.frames()``, moving the simulated clock to each sleeper's deadline."""
    got: list[CanFrame] = []

    async def consume() -> None:
        async with contextlib.aclosing(port.frames()) as frames:
            async for frame in frames:
                got.append(frame)
                if limit is not None and len(got) >= limit:
                    return

    task = asyncio.create_task(consume())
    async with asyncio.timeout(20):
        while not task.done():
            deadline = clock.next_deadline
            if deadline is None:
                await asyncio.sleep(0)  # the next chunk is being read in a worker thread
            else:
                await clock.advance(max(0.0, deadline - clock.monotonic()))
    await task
    return got


# ---------------------------------------------------------------- pacing


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.25])
async def test_frames_come_out_at_recorded_times_over_speed(small: Path, speed: float) -> None:
    clock = SimulatedClock(start_monotonic=50.0)
    port = LogReplayPort(small, clock=clock, speed=speed, coalesce=0.0)
    async with port:
        got = await drive(clock, port)
    assert [f.monotonic - 50.0 for f in got] == pytest.approx([t / speed for t in SMALL_REL], abs=1e-9)
    assert [f.timestamp for f in got] == pytest.approx([1000.0 + t for t in SMALL_REL], abs=1e-9)
    assert clock.monotonic() == pytest.approx(50.0 + 3.0 / speed)
    # python-can's candump reader makes an error frame without a channel (and without its class)
    assert [f.channel for f in got] == ["can0", "can0", "can1", "", "can0"]
    assert got[3].is_error_frame and got[4].is_fd and got[4].bitrate_switch


async def test_frames_due_within_coalesce_are_released_together(small: Path) -> None:
    clock = SimulatedClock()
    port = LogReplayPort(small, clock=clock, coalesce=0.001)
    async with port:
        got = await drive(clock, port)
    monos = [f.monotonic for f in got]
    assert monos[1] == monos[2]  # 0.5 ms apart: one wake-up
    for mono, rel in zip(monos, SMALL_REL, strict=True):
        assert rel - 0.001 - 1e-9 <= mono <= rel + 1e-9


async def test_real_log_paced_at_twenty_times_speed(refdata: Path) -> None:
    clock = SimulatedClock()
    path = refdata / CSS / CSS_164
    recorded = list(read_log(path))
    port = LogReplayPort(path, clock=clock, speed=20.0, coalesce=0.002)
    async with port:
        got = await drive(clock, port)
    assert len(got) == len(recorded) == 5477
    t0 = recorded[0].timestamp
    late = [f for f, r in zip(got, recorded, strict=True) if f.timestamp != r.timestamp]
    assert late == []
    for f in got:
        due = (f.timestamp - t0) / 20.0
        assert due - 0.002 - 1e-9 <= f.monotonic <= due + 1e-9
    end = (recorded[-1].timestamp - t0) / 20.0  # 2.23 s for 44.6 s of recording
    assert end - 0.002 - 1e-9 <= clock.monotonic() <= end + 1e-9


async def test_fast_mode_yields_everything_without_waiting(refdata: Path) -> None:
    clock = SimulatedClock(start_monotonic=7.0)
    port = LogReplayPort(refdata / CSS / CSS_165, clock=clock, speed=None)
    async with port:
        got = [f async for f in port.frames()]
        assert clock.next_deadline is None
    assert len(got) == 7601 and {f.monotonic for f in got} == {7.0}
    stats = port.stats()
    assert stats.rx_frames == 7601 and stats.rx_bytes == sum(len(f.data) for f in got)
    assert stats.state is CanBusState.STOPPED


async def test_max_gap_shortens_pauses_but_keeps_timestamps(small: Path) -> None:
    clock = SimulatedClock()
    port = LogReplayPort(small, clock=clock, max_gap=0.5, coalesce=0.0)
    async with port:
        got = await drive(clock, port)
    assert got[-1].monotonic == pytest.approx(0.25 + 0.5)  # the 2.75 s gap became 0.5 s
    assert got[-1].timestamp == pytest.approx(1003.0)


async def test_looping_continues_pace_and_time(small: Path) -> None:
    clock = SimulatedClock()
    port = LogReplayPort(small, clock=clock, loop=True, coalesce=0.0)
    async with port:
        got = await drive(clock, port, limit=12)
    period = 3.0 + 3.0 / 4  # the log's duration plus its mean frame interval
    stamps = [f.timestamp for f in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == 12
    assert stamps[5:10] == pytest.approx([1000.0 + period + t for t in SMALL_REL])
    assert [f.monotonic for f in got[5:10]] == pytest.approx([period + t for t in SMALL_REL])
    assert [f.arbitration_id for f in got[10:12]] == [0x100, 0x101]


async def test_close_ends_iteration_while_waiting_for_a_frame(small: Path) -> None:
    clock = SimulatedClock()
    port = LogReplayPort(small, clock=clock, coalesce=0.0)
    await port.open()
    got = await drive(clock, port, limit=4)  # the fifth frame is 2.75 s away
    assert len(got) == 4
    seen: list[CanFrame] = []

    async def rest() -> None:
        async for f in port.frames():
            seen.append(f)

    task = asyncio.create_task(rest())
    for _ in range(10_000):  # until rest() waits for the frame due at 3.0
        if clock.next_deadline is not None:
            break
        await asyncio.sleep(0)
    assert clock.next_deadline == pytest.approx(3.0)
    await port.close()
    async with asyncio.timeout(2):
        await task  # ended without the clock moving
    assert seen == [] and clock.monotonic() == pytest.approx(0.25)
    assert port.stats().state is CanBusState.STOPPED
    with pytest.raises(DeviceError, match="not open"):
        await anext(aiter(port.frames()))


# ---------------------------------------------------------------- channels, filters


async def test_one_log_channel_renamed_to_the_port(refdata: Path) -> None:
    path = refdata / CSS / CSS_165
    can2 = [f for f in read_log(path) if f.channel == "can2"]
    port = LogReplayPort(path, name="gnss", channel="can2", speed=None)
    async with port:
        got = [f async for f in port.frames()]
    assert len(got) == len(can2) > 0 and {f.channel for f in got} == {"gnss"}
    assert [(f.arbitration_id, f.data) for f in got] == [(f.arbitration_id, f.data) for f in can2]


async def test_channel_map_renames_every_channel(refdata: Path) -> None:
    path = refdata / CSS / CSS_165
    want = Counter({"obd": 0, "gnss": 0})
    for f in read_log(path):
        want[{"can1": "obd", "can2": "gnss"}[f.channel]] += 1
    port = LogReplayPort(path, channel_map={"can1": "obd", "can2": "gnss"}, speed=None)
    async with port:
        got = Counter([f.channel async for f in port.frames()])
    assert got == want and sum(got.values()) == 7601


async def test_channel_and_map_together(small: Path) -> None:
    port = LogReplayPort(small, channel="can1", channel_map={"can1": "body"}, speed=None)
    async with port:
        got = [f async for f in port.frames()]
    assert [(f.channel, f.arbitration_id) for f in got] == [("body", 0x200)]


async def test_filters_select_frames(refdata: Path) -> None:
    path = refdata / CSS / CSS_165
    obd = [f for f in read_log(path) if f.arbitration_id == 0x7E8 and not f.is_extended_id]
    port = LogReplayPort(path, speed=None)
    port.set_filters([CanFilter(0x7E8, 0x7FF, extended=False)])
    async with port:
        got = [f async for f in port.frames()]
    assert len(got) == len(obd) == 123 + sum(1 for f in obd if f.data[2] != 0x0D)
    assert {f.arbitration_id for f in got} == {0x7E8}


# ---------------------------------------------------------------- errors, read-only


async def test_send_is_refused_and_stats_follow_the_life_cycle(small: Path) -> None:
    port = LogReplayPort(small, speed=None, bitrate=500_000)
    assert port.stats().state is CanBusState.UNKNOWN
    async with port:
        assert port.stats().state is CanBusState.ACTIVE
        with pytest.raises(DeviceError, match="read-only"):
            await port.send(CanFrame(0x1))
        got = [f async for f in port.frames()]
        stats = port.stats()
        assert (stats.rx_frames, stats.rx_bytes, stats.error_frames) == (4, 1 + 2 + 1 + 8, 1)
        assert stats.state is CanBusState.STOPPED and stats.bus_load > 0
    assert len(got) == 5


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("missing.log", None, "no such log file"),
        ("notes.txt", "hello\n", "unknown log format"),
        ("garbage.log", "this is not candump\n", "malformed record"),
    ],
)
async def test_unreadable_logs_fail_at_open(tmp_path: Path, name: str, text: str | None, match: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    port = LogReplayPort(path)
    with pytest.raises(DeviceError, match=match):
        await port.open()
    await port.close()


async def test_a_malformed_record_ends_the_replay_there(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cut.log"
    path.write_text("(1.000000) can0 123#11\n(1.001000) can0 124#22\nthis is garbage\n(1.002000) can0 125#33\n")
    port = LogReplayPort(path, speed=None)
    with caplog.at_level(logging.WARNING, logger="drivers.can_replay"):
        async with port:
            got = [f async for f in port.frames()]
    assert [f.arbitration_id for f in got] == [0x123, 0x124]
    assert isinstance(port.read_error, DecodeError) and "malformed record after frame 2" in str(port.read_error)
    assert any("ended early" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- replay_to onto a bus


async def test_replay_to_writes_a_log_onto_a_virtual_bus(refdata: Path) -> None:
    path = refdata / CSS / CSS_165
    obd = [f for f in read_log(path) if f.channel == "can1"]
    ch = f"replay-{uuid.uuid4().hex}"
    tx = PythonCanPort("can1", interface="virtual", channel=ch)
    rx = PythonCanPort("can1", interface="virtual", channel=ch, rx_buffer_size=len(obd))
    async with tx, rx:
        sent = await replay_to(tx, path, channel="can1", speed=None)
        got: list[CanFrame] = []
        async with asyncio.timeout(5), contextlib.aclosing(rx.batches()) as batches:
            async for batch in batches:
                got.extend(batch)
                if len(got) >= len(obd):
                    break
    assert sent == len(obd)
    assert [(f.arbitration_id, f.is_extended_id, f.data) for f in got] == [
        (f.arbitration_id, f.is_extended_id, f.data) for f in obd
    ]
    assert rx.stats().overruns == 0


async def test_replay_to_keeps_the_recorded_pace(small: Path) -> None:
    clock = SimulatedClock()
    ch = f"replay-{uuid.uuid4().hex}"
    tx = PythonCanPort("can0", interface="virtual", channel=ch, fd=True)
    rx = PythonCanPort("can0", interface="virtual", channel=ch, fd=True)

    async def arrived(n: int) -> None:
        for _ in range(2500):  # the receiving thread is real; only the pacing is simulated
            if rx.stats().rx_frames >= n:
                return
            await asyncio.sleep(0.002)

    async with tx, rx:
        task = asyncio.create_task(replay_to(tx, small, clock=clock, coalesce=0.0))
        for until, count in ((0.0, 1), (0.2, 3), (2.9, 3), (3.0, 4)):
            while (d := clock.next_deadline) is None or d <= until:
                if d is None:
                    await asyncio.sleep(0)
                    if task.done():
                        break
                    continue
                await clock.advance(d - clock.monotonic())
            await arrived(count)
            assert rx.stats().rx_frames == count, f"at t={until}"
        assert await task == 4  # the error frame is not sent
        assert tx.stats().tx_frames == 4
