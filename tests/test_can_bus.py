"""PythonCanPort beyond the contract: overruns and bounded memory, SocketCAN error classes
and bus state, the bus-load formula, several buses in one loop, filters changing under
traffic, errors. Real python-can virtual buses throughout."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tracemalloc
import uuid
from collections.abc import Callable

import can
import pytest

from drivers.can_bus import (
    CAN_ERR_BUSOFF,
    CAN_ERR_CRTL,
    CAN_ERR_RESTARTED,
    BusLoadMeter,
    PythonCanPort,
    frame_bus_time,
)
from drivers.clock import SimulatedClock
from hal.errors import DeviceError
from hal.types import CanBusState, CanFilter, CanFrame


def channel() -> str:
    return f"test-{uuid.uuid4().hex}"


async def receive(port: PythonCanPort, n: int, within: float = 5.0) -> list[CanFrame]:
    got: list[CanFrame] = []
    async with asyncio.timeout(within), contextlib.aclosing(port.frames()) as frames:
        async for frame in frames:
            got.append(frame)
            if len(got) >= n:
                break
    return got


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Poll ``cond`` (it reads counters the reader thread moves)."""
    for _ in range(int(within / 0.002)):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise TimeoutError(f"condition not met within {within} s")


async def flood(bus: can.BusABC, first: int, count: int) -> None:
    """Send frames numbered first..first+count-1 straight through python-can."""
    for i in range(first, first + count):
        bus.send(can.Message(arbitration_id=0x123, is_extended_id=False, data=i.to_bytes(4, "big")))
        if i % 200 == 0:
            await asyncio.sleep(0)  # let the loop (and the reader thread) run


# ---------------------------------------------------------------- overruns, bounded memory


async def test_slow_consumer_overruns_drop_oldest_and_memory_stays_bounded() -> None:
    ch = channel()
    tx = can.Bus(interface="virtual", channel=ch)
    port = PythonCanPort("can0", interface="virtual", channel=ch, rx_buffer_size=1000, rx_batch_size=100)
    try:
        await port.open()
        await flood(tx, 0, 20_000)  # nobody reads frames() meanwhile
        await until(lambda: port.stats().rx_frames == 20_000)
        stats = port.stats()
        assert stats.overruns == 19_000 and port.pending == 1000
        # the newest 1000 were kept, in order; the oldest were dropped
        got = await receive(port, 1000)
        assert [int.from_bytes(f.data, "big") for f in got] == list(range(19_000, 20_000))
        assert port.pending == 0

        # memory: another 25,000 frames into the full buffer grow nothing but counters
        await flood(tx, 20_000, 1000)
        await until(lambda: port.stats().rx_frames == 21_000)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await flood(tx, 21_000, 25_000)
            await until(lambda: port.stats().rx_frames == 46_000)
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert port.pending == 1000
        assert port.stats().overruns == 19_000 + 26_000 - 1000
        # 25,000 kept frames would take > 4 MB; allow 0.5 MB of noise
        assert growth < 512 * 1024, f"memory grew by {growth} bytes"
    finally:
        await port.close()
        tx.shutdown()


async def test_batches_are_bounded_by_the_buffer_too() -> None:
    ch = channel()
    tx = can.Bus(interface="virtual", channel=ch)
    port = PythonCanPort("can0", interface="virtual", channel=ch, rx_buffer_size=64, rx_batch_size=16)
    try:
        await port.open()
        await flood(tx, 0, 500)
        await until(lambda: port.stats().rx_frames == 500)
        async with asyncio.timeout(2), contextlib.aclosing(port.batches()) as batches:
            batch = await anext(batches)
        assert [int.from_bytes(f.data, "big") for f in batch] == list(range(436, 500))
        assert port.stats().overruns == 436
    finally:
        await port.close()
        tx.shutdown()


# ---------------------------------------------------------------- error frames and bus state


async def test_socketcan_error_classes_drive_bus_state_and_bus_off_count() -> None:
    ch = channel()
    a = PythonCanPort("a", interface="virtual", channel=ch)
    b = PythonCanPort("b", interface="virtual", channel=ch)
    async with a, b:

        async def error(cls: int, data: bytes = bytes(8)) -> CanFrame:
            await a.send(CanFrame(cls, data, is_error_frame=True))
            (got,) = await receive(b, 1)
            return got

        passive = bytes([0, 0x10, 0, 0, 0, 0, 0, 0])  # CAN_ERR_CRTL_RX_PASSIVE in data[1]
        got = await error(CAN_ERR_CRTL, passive)
        assert got.is_error_frame and got.channel == "b"
        assert b.stats().state is CanBusState.PASSIVE
        await error(CAN_ERR_BUSOFF)
        await error(CAN_ERR_BUSOFF)  # still the same bus-off
        assert (b.stats().state, b.stats().bus_off_count) == (CanBusState.BUS_OFF, 1)
        await error(CAN_ERR_RESTARTED)
        assert b.stats().state is CanBusState.ACTIVE
        await error(CAN_ERR_CRTL, bytes([0, 0x40, 0, 0, 0, 0, 0, 0]))  # back to error-active
        assert b.stats().state is CanBusState.ACTIVE
        await error(CAN_ERR_BUSOFF)
        assert (b.stats().state, b.stats().bus_off_count) == (CanBusState.BUS_OFF, 2)
        # a data frame received while bus-off: the controller is back
        await a.send(CanFrame(0x10, b"\x01"))
        await receive(b, 1)
        stats = b.stats()
        assert stats.state is CanBusState.ACTIVE
        assert (stats.error_frames, stats.rx_frames, stats.rx_bytes) == (6, 1, 1)


async def test_error_classes_are_not_read_from_other_interfaces_error_frames() -> None:
    # an interface whose error frames do not carry SocketCAN classes: counted, state untouched
    ch = channel()
    a = PythonCanPort("a", interface="virtual", channel=ch)
    b = PythonCanPort("b", interface="virtual", channel=ch, socketcan_error_frames=False)
    async with a, b:
        await a.send(CanFrame(CAN_ERR_BUSOFF, is_error_frame=True))
        await receive(b, 1)
        assert (b.stats().error_frames, b.stats().bus_off_count) == (1, 0)
        assert b.stats().state is CanBusState.UNKNOWN


# ---------------------------------------------------------------- bus load


def test_frame_bus_time_formula() -> None:
    assert frame_bus_time(CanFrame(0x1, bytes(8)), 500_000) == pytest.approx(111 / 500_000)
    assert frame_bus_time(CanFrame(0x1, bytes(8), is_extended_id=True), 500_000) == pytest.approx(131 / 500_000)
    assert frame_bus_time(CanFrame(0x1, is_remote_frame=True, remote_dlc=8), 1_000_000) == pytest.approx(47e-6)
    fd = CanFrame(0x1, bytes(64), is_fd=True, bitrate_switch=True)
    assert frame_bus_time(fd, 500_000, 2_000_000) == pytest.approx(30 / 500_000 + (37 + 512) / 2_000_000)
    no_brs = CanFrame(0x1, bytes(12), is_fd=True, is_extended_id=True)
    assert frame_bus_time(no_brs, 500_000, 2_000_000) == pytest.approx((49 + 32 + 96) / 500_000)


def test_bus_load_meter_window() -> None:
    meter = BusLoadMeter()
    meter.add(10.00, 0.25)
    meter.add(10.55, 0.25)
    # window: the 10 slots of 100 ms before the current one, and the current one
    assert meter.load(10.55) == pytest.approx(0.5 / (10.55 - 9.5))
    assert meter.load(11.05) == pytest.approx(0.5 / (11.05 - 10.0))
    assert meter.load(11.55) == pytest.approx(0.25 / (11.55 - 10.5))  # the first slot left the window
    assert meter.load(20.0) == 0.0


async def test_full_1mbit_bus_load_from_frames_on_a_simulated_clock() -> None:
    ch = channel()
    clock = SimulatedClock(start_monotonic=100.0)
    tx = can.Bus(interface="virtual", channel=ch)
    port = PythonCanPort(
        "can0", interface="virtual", channel=ch, bitrate=1_000_000, fd=True, data_bitrate=4_000_000, clock=clock
    )
    async with port:
        # 7,000 classic 8-byte frames (0.777 s of bus time) and 200 FD 64-byte frames with BRS
        for _ in range(7000):
            tx.send(can.Message(arbitration_id=0x100, is_extended_id=False, data=bytes(8)))
        for _ in range(200):
            tx.send(
                can.Message(arbitration_id=0x200, is_extended_id=False, data=bytes(64), is_fd=True, bitrate_switch=True)
            )
        await until(lambda: port.stats().rx_frames == 7200)
        busy = 7000 * 111e-6 + 200 * (30e-6 + (37 + 512) / 4e6)
        # all stamped at simulated time 100.0; the window starts 10 slots of 100 ms before
        # the current slot: at 100.0 it spans 99.0..100.0, at 100.55 99.5..100.55
        assert port.stats().bus_load == pytest.approx(busy / 1.0)
        await clock.advance(0.55)
        assert port.stats().bus_load == pytest.approx(busy / 1.05)
        await clock.advance(1.0)
        assert port.stats().bus_load == 0.0
    tx.shutdown()


async def test_own_frames_count_as_tx_not_rx() -> None:
    ch = channel()
    a = PythonCanPort("a", interface="virtual", channel=ch, receive_own_messages=True)
    b = PythonCanPort("b", interface="virtual", channel=ch)
    async with a, b:
        await a.send(CanFrame(0x5, b"12345678"))
        (echo,) = await receive(a, 1)
        (heard,) = await receive(b, 1)
        assert (echo.is_rx, heard.is_rx) == (False, True)
        sa, sb = a.stats(), b.stats()
        assert (sa.tx_frames, sa.rx_frames, sb.rx_frames) == (1, 0, 1)
        # the echo carries the frame's bus time once (not again for the send); the two
        # windows end a moment apart
        assert sa.bus_load == pytest.approx(sb.bus_load, rel=0.02)
        assert sb.bus_load == pytest.approx(111 / 500_000, rel=0.1)


# ---------------------------------------------------------------- several buses, filters, errors


async def test_several_ports_in_one_loop_keep_their_buses_apart() -> None:
    pt, body = channel(), channel()
    ports = {
        "can0": PythonCanPort("can0", interface="virtual", channel=pt),
        "can1": PythonCanPort("can1", interface="virtual", channel=body),
    }
    senders = {"can0": can.Bus(interface="virtual", channel=pt), "can1": can.Bus(interface="virtual", channel=body)}
    try:
        for p in ports.values():
            await p.open()

        async def collect(port: PythonCanPort) -> list[CanFrame]:
            return await receive(port, 300)

        tasks = {name: asyncio.create_task(collect(p)) for name, p in ports.items()}
        for i in range(300):
            senders["can0"].send(can.Message(arbitration_id=0x0C0, is_extended_id=False, data=i.to_bytes(2, "big")))
            senders["can1"].send(can.Message(arbitration_id=0x3B0, is_extended_id=False, data=i.to_bytes(2, "big")))
            if i % 50 == 0:
                await asyncio.sleep(0)
        got = {name: await t for name, t in tasks.items()}
        for name, arb in (("can0", 0x0C0), ("can1", 0x3B0)):
            assert {(f.channel, f.arbitration_id) for f in got[name]} == {(name, arb)}
            assert [int.from_bytes(f.data, "big") for f in got[name]] == list(range(300))
    finally:
        for p in ports.values():
            await p.close()
        for bus in senders.values():
            bus.shutdown()


async def test_set_filters_also_filters_frames_already_buffered() -> None:
    ch = channel()
    tx = can.Bus(interface="virtual", channel=ch)
    port = PythonCanPort("can0", interface="virtual", channel=ch)
    async with port:
        for arb in (0x100, 0x200, 0x100, 0x300):
            tx.send(can.Message(arbitration_id=arb, is_extended_id=False))
        await until(lambda: port.pending == 4)
        port.set_filters([CanFilter(0x100)])
        tx.send(can.Message(arbitration_id=0x200, is_extended_id=False))
        tx.send(can.Message(arbitration_id=0x100, is_extended_id=False, data=b"new"))
        got = await receive(port, 3)
        assert [(f.arbitration_id, f.data) for f in got] == [(0x100, b""), (0x100, b""), (0x100, b"new")]
    tx.shutdown()


async def test_fd_frame_on_a_classic_port_is_a_tx_error() -> None:
    port = PythonCanPort("can0", interface="virtual", channel=channel())
    async with port:
        with pytest.raises(DeviceError, match="CAN FD frame on a classic CAN port"):
            await port.send(CanFrame(0x1, bytes(12), is_fd=True))
        assert (port.stats().tx_errors, port.stats().tx_frames) == (1, 0)


async def test_failed_send_is_counted_and_raised() -> None:
    # a receiver whose python-can queue holds one frame: the second send cannot be delivered
    ch = channel()
    rx = can.Bus(interface="virtual", channel=ch, rx_queue_size=1)
    port = PythonCanPort("can0", interface="virtual", channel=ch, tx_timeout=0.05)
    try:
        async with port:
            await port.send(CanFrame(0x1))
            with pytest.raises(DeviceError, match="sending .*001#") as info:
                await port.send(CanFrame(0x1))
            assert isinstance(info.value.__cause__, can.CanError)
            assert (port.stats().tx_frames, port.stats().tx_errors) == (1, 1)
    finally:
        rx.shutdown()


async def test_open_errors_name_interface_and_channel() -> None:
    port = PythonCanPort("body", interface="slcan", channel="/dev/ttyNOPE0@115200")
    with pytest.raises(DeviceError, match=r"body .*'slcan'.*/dev/ttyNOPE0@115200.*cannot open") as info:
        await port.open()
    assert isinstance(info.value.__cause__, can.CanError | OSError)


async def test_one_consumer_at_a_time_and_frames_need_an_open_port() -> None:
    port = PythonCanPort("can0", interface="virtual", channel=channel())
    with pytest.raises(DeviceError, match="not open"):
        await anext(aiter(port.frames()))
    async with port:
        first = asyncio.create_task(anext(aiter(port.frames())))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="already has a consumer"):
            await anext(aiter(port.batches()))
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first


async def test_thread_and_loop_readers_are_chosen_by_interface() -> None:
    port = PythonCanPort("can0", interface="virtual", channel=channel())
    assert port.rx_path is None
    async with port:
        assert port.rx_path == "thread"  # virtual has no socket
    with pytest.raises(DeviceError, match="no selectable fileno"):
        await PythonCanPort("can0", interface="virtual", channel=channel(), rx_mode="fileno").open()


async def test_per_frame_logs_are_below_debug(caplog: pytest.LogCaptureFixture) -> None:
    ch = channel()
    a = PythonCanPort("a", interface="virtual", channel=ch)
    b = PythonCanPort("b", interface="virtual", channel=ch)
    async with a, b:
        with caplog.at_level(logging.DEBUG, logger="drivers.can_bus"):
            await a.send(CanFrame(0x7E8, b"\x03\x41\x0d\x32"))
            await receive(b, 1)
        assert not [r for r in caplog.records if "7E8" in r.getMessage()]
        caplog.clear()
        with caplog.at_level(5, logger="drivers.can_bus"):
            await a.send(CanFrame(0x7E8, b"\x03\x41\x0d\x32"))
            await receive(b, 1)
        traffic = [r.getMessage() for r in caplog.records if r.levelno == 5]
        assert any(m.startswith("tx ") and "7E8#03410D32" in m for m in traffic)
        assert any(m.startswith("rx ") and " b 7E8#03410D32" in m for m in traffic)
