"""The CanPort contract, run against every backend this machine has.

* ``virtual``: two ``PythonCanPort`` on one python-can virtual channel (always).
* ``socketcan``: two ports on ``vcan0`` (marked ``vcan``; skipped when vcan0 is absent).
* ``udp_multicast``: two ports on one IPv4 group (marked ``netns``); it runs only inside a
  private network namespace with loopback alone, where ``tests/test_can_udp_multicast.py``
  starts this file with ``ACC_CAN_NETNS=1``. Elsewhere it is skipped (and the port itself
  would refuse to open).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from drivers.can_bus import PythonCanPort, non_loopback_interfaces_up
from hal.errors import DeviceError
from hal.types import CAN_FD_DLC, CanBusState, CanFilter, CanFrame

UDP_GROUP = "239.74.163.2"


@dataclass
class Backend:
    name: str
    make: Callable[..., PythonCanPort]
    bad: Callable[[], PythonCanPort]
    fd: bool = True
    #: every port of this backend also receives the frames it sends itself
    echoes_own: bool = False


def _virtual() -> Backend:
    channel = f"contract-{uuid.uuid4().hex}"

    def make(name: str, **kw: object) -> PythonCanPort:
        return PythonCanPort(name, interface="virtual", channel=channel, fd=True, rx_poll_interval=0.02, **kw)

    return Backend("virtual", make, lambda: PythonCanPort("bad", interface="no_such_interface", channel="x"))


def _socketcan() -> Backend:
    names = {n for _, n in socket.if_nameindex()}
    if "vcan0" not in names:
        pytest.skip("no vcan0 interface here (ip link add dev vcan0 type vcan; ip link set vcan0 up)")

    def make(name: str, **kw: object) -> PythonCanPort:
        return PythonCanPort(name, interface="socketcan", channel="vcan0", fd=True, **kw)

    return Backend("socketcan", make, lambda: PythonCanPort("bad", interface="socketcan", channel="nosuchcan9"))


def _udp_multicast() -> Backend:
    if os.environ.get("ACC_CAN_NETNS") != "1":
        pytest.skip("udp_multicast runs only in a private network namespace (see test_can_udp_multicast.py)")
    if non_loopback_interfaces_up():
        pytest.fail("ACC_CAN_NETNS=1 but interfaces other than lo are up: not a private namespace")
    port = 40000 + uuid.uuid4().int % 20000

    def make(name: str, **kw: object) -> PythonCanPort:
        return PythonCanPort(name, interface="udp_multicast", channel=UDP_GROUP, port=port, fd=True, **kw)

    return Backend(
        "udp_multicast",
        make,
        lambda: PythonCanPort("bad", interface="udp_multicast", channel="not-a-group", port=port),
        echoes_own=True,
    )


@pytest.fixture(
    params=[
        pytest.param(_virtual, id="virtual"),
        pytest.param(_socketcan, id="socketcan", marks=pytest.mark.vcan),
        pytest.param(_udp_multicast, id="udp_multicast", marks=pytest.mark.netns),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param()


@pytest.fixture
async def pair(backend: Backend) -> AsyncIterator[tuple[PythonCanPort, PythonCanPort]]:
    a = backend.make("bus_a")
    b = backend.make("bus_b")
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def receive(port: PythonCanPort, n: int, within: float = 3.0) -> list[CanFrame]:
    got: list[CanFrame] = []
    if n == 0:
        return got
    async with asyncio.timeout(within):
        async with contextlib.aclosing(port.frames()) as frames:
            async for frame in frames:
                got.append(frame)
                if len(got) >= n:
                    break
    return got


async def nothing_more(port: PythonCanPort, wait: float = 0.2) -> list[CanFrame]:
    """Frames that arrive within ``wait`` seconds (expected: none)."""
    with contextlib.suppress(TimeoutError):
        return await receive(port, 1, within=wait)
    return []


async def send_all(port: PythonCanPort, frames: list[CanFrame]) -> None:
    for f in frames:
        await port.send(f)
        await asyncio.sleep(0.001)  # udp_multicast loses frames of an unpaced sender


def same_frame(got: CanFrame, sent: CanFrame) -> bool:
    keys = ("arbitration_id", "data", "is_extended_id", "is_fd", "is_remote_frame", "is_error_frame")
    if sent.is_fd:
        keys += ("bitrate_switch", "error_state_indicator")
    return all(getattr(got, k) == getattr(sent, k) for k in keys) and got.dlc == sent.dlc


async def test_classic_frames_back_to_back(pair: tuple[PythonCanPort, PythonCanPort]) -> None:
    a, b = pair
    sent = [CanFrame(0x000), CanFrame(0x7FF, b"\xff" * 8)]
    sent += [CanFrame(0x100 + n, bytes(range(n))) for n in range(9)]
    sent += [CanFrame(0x0, b"\x01", is_extended_id=True), CanFrame(0x1FFFFFFF, b"ext", is_extended_id=True)]
    await send_all(a, sent)
    got = await receive(b, len(sent))
    assert [same_frame(g, s) for g, s in zip(got, sent, strict=True)] == [True] * len(sent)
    assert {g.channel for g in got} == {"bus_b"}
    assert all(g.is_rx for g in got)
    assert all(g.timestamp > 0 and g.monotonic > 0 for g in got)
    assert await nothing_more(b) == []


async def test_fd_frames_back_to_back(backend: Backend, pair: tuple[PythonCanPort, PythonCanPort]) -> None:
    if not backend.fd:
        pytest.skip(f"{backend.name} has no CAN FD")
    a, b = pair
    sent = [
        CanFrame(0x123, bytes(range(n)), is_fd=True, bitrate_switch=n % 2 == 0, error_state_indicator=n == 64)
        for n in CAN_FD_DLC
    ]
    sent.append(CanFrame(0x1ABCDEF0, bytes(48), is_extended_id=True, is_fd=True, bitrate_switch=True))
    await send_all(a, sent)
    got = await receive(b, len(sent))
    assert [same_frame(g, s) for g, s in zip(got, sent, strict=True)] == [True] * len(sent)
    assert [g.dlc for g in got[:16]] == list(range(16))


async def test_remote_frames(pair: tuple[PythonCanPort, PythonCanPort]) -> None:
    a, b = pair
    sent = [
        CanFrame(0x7DF, is_remote_frame=True, remote_dlc=0),
        CanFrame(0x321, is_remote_frame=True, remote_dlc=4),
        CanFrame(0x18DAF110, is_extended_id=True, is_remote_frame=True, remote_dlc=8),
    ]
    await send_all(a, sent)
    got = await receive(b, len(sent))
    assert [(g.arbitration_id, g.is_remote_frame, g.dlc, g.data) for g in got] == [
        (0x7DF, True, 0, b""),
        (0x321, True, 4, b""),
        (0x18DAF110, True, 8, b""),
    ]


async def test_filters_at_open_and_replaced(backend: Backend) -> None:
    a = backend.make("bus_a")
    b = backend.make("bus_b", filters=[CanFilter(0x100, 0x7F0)])  # 0x100..0x10F
    async with a, b:
        await send_all(a, [CanFrame(0x0FF), CanFrame(0x105), CanFrame(0x110), CanFrame(0x10F)])
        assert [f.arbitration_id for f in await receive(b, 2)] == [0x105, 0x10F]
        assert await nothing_more(b) == []

        # extended only, exact id
        b.set_filters([CanFilter(0x18DAF110, 0x1FFFFFFF, extended=True)])
        await send_all(
            a,
            [CanFrame(0x110), CanFrame(0x18DAF110, is_extended_id=True), CanFrame(0x18DAF111, is_extended_id=True)],
        )
        got = await receive(b, 1)
        assert [(f.arbitration_id, f.is_extended_id) for f in got] == [(0x18DAF110, True)]
        assert await nothing_more(b) == []

        b.set_filters(None)
        await send_all(a, [CanFrame(0x001), CanFrame(0x7FF)])
        assert [f.arbitration_id for f in await receive(b, 2)] == [0x001, 0x7FF]


async def test_stats_count_frames_bytes_and_load(backend: Backend, pair: tuple[PythonCanPort, PythonCanPort]) -> None:
    a, b = pair
    assert b.stats().state is CanBusState.UNKNOWN  # no traffic seen yet
    sent = [CanFrame(0x200 + i, bytes(i % 9)) for i in range(40)]
    await send_all(a, sent)
    await receive(b, len(sent))
    sa, sb = a.stats(), b.stats()
    assert (sa.tx_frames, sa.tx_errors) == (40, 0)
    assert (sb.rx_frames, sb.rx_bytes, sb.overruns, sb.error_frames) == (40, sum(len(f.data) for f in sent), 0, 0)
    assert sb.channel == "bus_b" and sb.state is CanBusState.ACTIVE
    # 40 classic standard frames of 47 + 8n bits at 500 kbit/s, over a window of 1.0..1.1 s
    busy = sum(47 + 8 * len(f.data) for f in sent) / 500_000
    assert busy / 1.1 - 1e-9 <= sb.bus_load <= busy / 1.0 + 1e-9
    if not backend.echoes_own:
        assert sa.rx_frames == 0


async def test_batches_deliver_everything_in_order(pair: tuple[PythonCanPort, PythonCanPort]) -> None:
    a, b = pair
    sent = [CanFrame(0x300, i.to_bytes(2, "big")) for i in range(50)]
    await send_all(a, sent)
    got: list[CanFrame] = []
    async with asyncio.timeout(3.0), contextlib.aclosing(b.batches()) as batches:
        async for batch in batches:
            assert isinstance(batch, list) and batch
            got.extend(batch)
            if len(got) >= len(sent):
                break
    assert [f.data for f in got] == [f.data for f in sent]


async def test_close_ends_iteration(pair: tuple[PythonCanPort, PythonCanPort]) -> None:
    a, b = pair
    seen: list[CanFrame] = []

    async def consume(port: PythonCanPort) -> str:
        async for f in port.frames():
            seen.append(f)
        return "ended"

    async def consume_batches(port: PythonCanPort) -> str:
        async for _ in port.batches():
            pass
        return "ended"

    t1 = asyncio.create_task(consume(b))
    t2 = asyncio.create_task(consume_batches(a))
    await a.send(CanFrame(0x1))
    await receive_until(lambda: len(seen) == 1)
    await b.close()
    await a.close()
    async with asyncio.timeout(2.0):
        assert await asyncio.gather(t1, t2) == ["ended", "ended"]
    with pytest.raises(DeviceError, match="not open"):
        await anext(aiter(b.frames()))
    with pytest.raises(DeviceError, match="not open"):
        await a.send(CanFrame(0x1))


async def receive_until(cond: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``cond`` (it reads counters that another thread or process moves)."""
    for _ in range(int(within / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"condition not met within {within} s")


async def test_open_close_idempotent_and_reopen(backend: Backend) -> None:
    a = backend.make("bus_a")
    b = backend.make("bus_b")
    assert b.stats().state is CanBusState.UNKNOWN
    for _ in range(2):  # open, use, close twice over; each open twice, each close twice
        await a.open()
        await a.open()
        await b.open()
        await b.open()
        assert b.stats().rx_frames == 0  # counters start again at each open
        await send_all(a, [CanFrame(0x42, b"x")])
        assert [f.data for f in await receive(b, 1)] == [b"x"]
        assert b.stats().rx_frames == 1
        await a.close()
        await a.close()
        await b.close()
        await b.close()
        assert b.stats().state is CanBusState.STOPPED
        assert b.stats().rx_frames == 1  # kept after close


async def test_bad_interface_or_channel_is_a_device_error(backend: Backend) -> None:
    port = backend.bad()
    with pytest.raises(DeviceError) as info:
        await port.open()
    assert port.interface in str(info.value) and str(port.channel) in str(info.value)
    assert not port.is_open
    await port.close()  # closing a port that never opened is fine


async def test_send_before_open_is_a_device_error(backend: Backend) -> None:
    port = backend.make("bus_a")
    with pytest.raises(DeviceError, match="not open"):
        await port.send(CanFrame(0x1))
    assert port.stats().tx_frames == 0
