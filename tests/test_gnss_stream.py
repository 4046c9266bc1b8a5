"""NmeaStreamSource over real transports: a pty, a file, a pyserial socket URL, a StreamReader."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from drivers.clock import SimulatedClock
from drivers.gnss_stream import (
    FileTransport,
    NmeaStreamSource,
    SerialUrlTransport,
    TtyTransport,
    open_nmea_source,
)
from drivers.nmea import NmeaReader
from hal.errors import DeviceError
from hal.types import GnssFix

pytestmark = pytest.mark.timeout(30)


def key(fix: GnssFix) -> tuple[object, ...]:
    return (int(fix.mode), fix.time, fix.lat, fix.lon, fix.alt_msl, fix.speed, fix.track, fix.sats_used)


def offline_reports(data: bytes, *, final: bool) -> list[GnssFix]:
    reader = NmeaReader(comments=True)
    reports = [r for ev in reader.feed(data) + reader.flush() for r in ev.reports]
    return reports + list(reader.finish()) if final else reports


def nmea_only(data: bytes) -> bytes:
    """A log without its '#' header, as a receiver would send it."""
    return b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"#"))


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str, int]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    try:
        yield master, os.ttyname(slave), slave
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def write_slowly(fd: int, data: bytes, chunk: int = 200, pause: float = 0.001) -> None:
    pos = 0
    while pos < len(data):
        try:
            pos += os.write(fd, data[pos : pos + chunk])
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        await asyncio.sleep(pause)


async def take(source: NmeaStreamSource, n: int, limit: float = 10.0) -> list[GnssFix]:
    out: list[GnssFix] = []

    async def run() -> None:
        async for fix in source.fixes():
            out.append(fix)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), limit)
    return out


async def test_pty_source_yields_what_the_codec_reports(refdata: Path, pty_pair: tuple[int, str, int]) -> None:
    master, path, _ = pty_pair
    data = nmea_only((refdata / "nmea/gpsd/haicom-305N.log").read_bytes())
    expected = offline_reports(data, final=False)
    assert len(expected) > 50
    source = NmeaStreamSource.from_tty(path, ready_timeout=5.0)
    writer = asyncio.create_task(write_slowly(master, data))
    try:
        await source.open()
        got = await take(source, len(expected))
    finally:
        await source.close()
        writer.cancel()
    assert [key(f) for f in got] == [key(f) for f in expected]
    monos = [f.monotonic for f in got]
    assert monos == sorted(monos) and monos[-1] > monos[0]
    c = source.counters()
    assert c["sentences"] == data.count(b"$") and c["fixes"] == len(expected) and c["checksum"] == 0


async def test_tty_read_does_not_block_the_event_loop(pty_pair: tuple[int, str, int]) -> None:
    _, path, _ = pty_pair
    source = NmeaStreamSource.from_tty(path, ready_timeout=None)
    await source.open()
    consumer = asyncio.create_task(take(source, 1))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(20):
        await asyncio.sleep(0.005)
    assert loop.time() - start < 1.0 and not consumer.done()
    await source.close()
    assert await asyncio.wait_for(consumer, 2.0) == []  # close ended the iteration


async def test_open_fails_clearly_when_the_device_speaks_no_nmea(pty_pair: tuple[int, str, int]) -> None:
    master, path, _ = pty_pair
    ubx = bytes.fromhex("b562010714005c") * 40  # a u-blox binary protocol receiver
    writer = asyncio.create_task(write_slowly(master, ubx * 10, chunk=64, pause=0.01))
    source = NmeaStreamSource.from_tty(path, ready_timeout=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeviceError, match="no valid NMEA sentence") as info:
        await source.open()
    writer.cancel()
    assert loop.time() - start < 2.0
    assert path in str(info.value) and "garbage" in str(info.value)


async def test_tty_baud_rate_and_raw_mode_applied(pty_pair: tuple[int, str, int]) -> None:
    _, path, slave = pty_pair
    source = NmeaStreamSource.from_tty(path, 4800, ready_timeout=None)
    await source.open()
    try:
        attrs = termios.tcgetattr(slave)
        assert attrs[4] == attrs[5] == termios.B4800
        assert not attrs[3] & (termios.ECHO | termios.ICANON)
    finally:
        await source.close()


async def test_hangup_is_a_device_error(pty_pair: tuple[int, str, int], refdata: Path) -> None:
    master, path, slave = pty_pair
    os.write(master, nmea_only((refdata / "nmea/gpsd/garmin17n.log").read_bytes()))
    source = NmeaStreamSource.from_tty(path)
    await source.open()
    os.close(slave)
    os.close(master)
    with pytest.raises(DeviceError, match="hung up"):
        await take(source, 100, limit=5.0)
    await source.close()


async def test_file_source_as_fast_as_possible(refdata: Path) -> None:
    path = refdata / "nmea/gpsd/bt451.log"
    expected = offline_reports(path.read_bytes(), final=True)
    source = NmeaStreamSource.from_file(path, pace=0)
    async with source:
        got = [fix async for fix in source.fixes()]  # ends at the end of the file
    assert [key(f) for f in got] == [key(f) for f in expected]
    assert source.counters()["comments"] > 0 and source.counters()["garbage"] == 0


async def test_file_source_paced_one_cycle_per_period(refdata: Path) -> None:
    clock = SimulatedClock(start_monotonic=100.0)
    source = NmeaStreamSource.from_file(refdata / "nmea/gpsd/ublox-lea-5q.log", pace=1.0, clock=clock)
    await source.open()
    got: list[GnssFix] = []

    async def consume() -> None:
        async for fix in source.fixes():
            got.append(fix)

    task = asyncio.create_task(consume())
    for step in range(4):
        for _ in range(500):  # let the reader thread deliver and the consumer go to sleep
            if clock.next_deadline is not None:
                break
            await asyncio.sleep(0.002)
        assert len(got) == step + 1
        await clock.advance(1.0)
    await source.close()
    await asyncio.wait_for(task, 2.0)
    assert [f.monotonic for f in got[:4]] == [100.0, 101.0, 102.0, 103.0]


async def test_file_without_nmea_fails_open(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(3000).replace(b"$", b"#"))
    source = NmeaStreamSource.from_file(junk, pace=0)
    with pytest.raises(DeviceError, match="before the input ended"):
        await source.open()


async def test_stream_reader_source(refdata: Path) -> None:
    data = (refdata / "nmea/gpsd/neo-m8n.log").read_bytes()
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    source = NmeaStreamSource.from_stream(reader, comments=True)
    async with source:
        got = [fix async for fix in source.fixes()]
    assert [key(f) for f in got] == [key(f) for f in offline_reports(data, final=True)]


@pytest.fixture
async def nmea_tcp_server(refdata: Path) -> AsyncIterator[tuple[int, bytes]]:
    data = nmea_only((refdata / "nmea/gpsd/quectel-L70.log").read_bytes())

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # pyserial's socket:// open() flushes its input buffer right after connecting: data sent
        # before that would be thrown away (a real receiver streams on; this one sends once)
        await asyncio.sleep(1.0)
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], data
        server.close()


async def test_pyserial_url_transport(nmea_tcp_server: tuple[int, bytes]) -> None:
    port, data = nmea_tcp_server
    expected = offline_reports(data, final=False)
    source = NmeaStreamSource.from_serial_url(f"socket://127.0.0.1:{port}", 115200)
    await source.open()
    try:
        got = await take(source, len(expected))
    finally:
        await source.close()
    assert [key(f) for f in got] == [key(f) for f in expected]


def test_open_nmea_source_chooses_without_io(tmp_path: Path, pty_pair: tuple[int, str, int]) -> None:
    log = tmp_path / "drive.nmea"
    log.write_bytes(b"")
    assert isinstance(open_nmea_source(str(log)).transport, FileTransport)
    assert isinstance(open_nmea_source(pty_pair[1]).transport, TtyTransport)
    url = open_nmea_source("socket://127.0.0.1:1", baudrate=38400).transport
    assert isinstance(url, SerialUrlTransport) and url.baudrate == 38400
    assert isinstance(open_nmea_source("/dev/ttyNOPE0").transport, TtyTransport)


async def test_missing_device_is_a_clear_device_error() -> None:
    source = open_nmea_source("/dev/ttyNOPE0")
    with pytest.raises(DeviceError, match=r"cannot open GNSS device /dev/ttyNOPE0"):
        await source.open()
    with pytest.raises(DeviceError, match="before open"):
        await take(source, 1)
