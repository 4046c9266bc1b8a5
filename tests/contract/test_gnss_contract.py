"""The GnssSource contract, run against every backend we have, each on real I/O:

* ``nmea-pty``: NmeaStreamSource reading a pty that a writer feeds with a gpsd log;
* ``nmea-file``: NmeaStreamSource replaying a gpsd log file;
* ``gpsd``: GpsdSource talking to a real gpsd (started here on a free loopback port) that
  reads a pty fed with the same log. Skipped only when the gpsd binary is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.gnss_stream import NmeaStreamSource
from drivers.gpsd import GpsdSource
from hal.interfaces import GnssSource
from hal.types import GnssFix
from tools.acc_bench import GPSD, GpsdProcess

pytestmark = pytest.mark.timeout(30)

LOG = "nmea/gpsd/haicom-305N.log"  # stationary, then moving: fixes with positions


@dataclass
class Backend:
    make: Callable[[], GnssSource]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def nmea_lines(refdata: Path) -> list[bytes]:
    data = (refdata / LOG).read_bytes()
    return [line for line in data.splitlines(keepends=True) if not line.startswith(b"#")]


async def feed_pty_forever(master: int, lines: list[bytes], pause: float) -> None:
    """Write the log line by line into the pty, over and over, as a receiver would."""
    while True:
        for line in lines:
            pos = 0
            while pos < len(line):
                try:
                    pos += os.write(master, line[pos:])
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                except OSError:
                    return
            await asyncio.sleep(pause)


@contextlib.contextmanager
def pty_pair() -> contextlib.AbstractContextManager[tuple[int, str]]:  # type: ignore[misc]
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture(params=["nmea-pty", "nmea-file", "gpsd"])
async def backend(request: pytest.FixtureRequest, refdata: Path, tmp_path: Path) -> AsyncIterator[Backend]:
    kind = request.param
    lines = nmea_lines(refdata)
    if kind == "nmea-file":
        yield Backend(lambda: NmeaStreamSource.from_file(refdata / LOG, pace=0.001))
        return
    with pty_pair() as (master, path):
        writer = asyncio.create_task(feed_pty_forever(master, lines, pause=0.0005))
        try:
            if kind == "nmea-pty":
                yield Backend(lambda: NmeaStreamSource.from_tty(path, 9600))
                return
            if GPSD is None:
                pytest.skip("gpsd binary not installed (apt-get install gpsd); CI installs it")
            gpsd = await GpsdProcess.start(path, tmp_path)  # the bench's: gpsd -N -n -b on 127.0.0.1
            try:
                yield Backend(lambda: GpsdSource("127.0.0.1", gpsd.port, connect_timeout=3.0))
            finally:
                await gpsd.stop()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer


async def collect(source: GnssSource, until: Callable[[list[GnssFix]], bool], limit: float = 10.0) -> list[GnssFix]:
    got: list[GnssFix] = []

    async def run() -> None:
        async with contextlib.aclosing(source.fixes()) as fixes:  # type: ignore[type-var]
            async for fix in fixes:
                got.append(fix)
                if until(got):
                    return

    await asyncio.wait_for(run(), limit)
    return got


async def test_open_and_close_are_idempotent(backend: Backend) -> None:
    source = backend.make()
    await source.open()
    await source.open()
    await source.close()
    await source.close()
    # and it can be used as an async context manager
    async with backend.make() as again:
        assert isinstance(again, GnssSource)


async def test_fixes_are_gnss_fixes_in_time_order_with_a_position(backend: Backend) -> None:
    async with backend.make() as source:
        fixes = await collect(source, lambda got: len(got) >= 5 and any(f.has_position for f in got))
        counters = source.counters()
    assert all(isinstance(f, GnssFix) for f in fixes)
    monos = [f.monotonic for f in fixes]
    assert all(b >= a for a, b in zip(monos, monos[1:], strict=False)), monos
    assert monos[-1] > monos[0]
    positioned = [f for f in fixes if f.has_position]
    assert positioned and all(-90 <= f.lat <= 90 and -180 <= f.lon <= 180 for f in positioned)  # type: ignore[operator]
    assert any(-28 < f.lat < -27 and 153 < f.lon < 154 for f in positioned)  # type: ignore[operator]  # Brisbane
    assert counters and all(isinstance(k, str) and isinstance(v, int) for k, v in counters.items())
    assert any(v > 0 for v in counters.values())


async def test_close_ends_iteration(backend: Backend) -> None:
    source = backend.make()
    await source.open()
    first = asyncio.Event()
    got: list[GnssFix] = []

    async def consume() -> None:
        async for fix in source.fixes():
            got.append(fix)
            first.set()
            await asyncio.sleep(0.01)  # a slow consumer: the source must not run ahead

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10.0)
    await source.close()
    await asyncio.wait_for(task, 3.0)  # ended, without an exception
    count = len(got)
    assert [f async for f in source.fixes()] == []
    assert len(got) == count
