"""GpsdSource / GpsdProtocol: gpsd's JSON mapped to GnssFix, bad lines counted, reconnects.

gpsd's own output comes from the .chk files of the refdata; the connection behaviour is
checked against a small TCP server on 127.0.0.1 that speaks the protocol (greeting, WATCH,
reports, then it hangs up). The contract suite runs the source against a real gpsd.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.gpsd import GpsdProtocol, GpsdSource, fix_from_tpv
from hal.errors import DecodeError, DeviceError
from hal.types import FixMode, GnssFix

pytestmark = pytest.mark.timeout(30)

VERSION = b'{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}\n'
TPV = {
    "class": "TPV",
    "device": "/dev/pts/1",
    "mode": 3,
    "status": 2,
    "time": "2005-03-16T09:38:02.000Z",
    "lat": 52.219065,
    "lon": 21.010851667,
    "altHAE": 173.4,
    "altMSL": 137.2,
    "track": 226.0,
    "speed": 0.5,
    "climb": 0.1,
    "eph": 4.275,
    "epv": 7.475,
}
SKY = {"class": "SKY", "hdop": 0.9, "vdop": 1.3, "pdop": 1.6, "nSat": 12, "uSat": 10}


def test_tpv_and_sky_mapping() -> None:
    fix = fix_from_tpv(TPV, SKY, monotonic=7.0)
    assert fix == GnssFix(
        mode=FixMode.FIX_3D,
        time=datetime(2005, 3, 16, 9, 38, 2, tzinfo=UTC),
        lat=52.219065,
        lon=21.010851667,
        alt_msl=137.2,
        alt_hae=173.4,
        speed=0.5,
        track=226.0,
        climb=0.1,
        eph=4.275,
        epv=7.475,
        hdop=0.9,
        vdop=1.3,
        pdop=1.6,
        sats_used=10,
        sats_visible=12,
        status=2,
        monotonic=7.0,
    )
    # gpsd < 3.20 has "alt" only; a SKY without counts gives them from satellites[]
    old = fix_from_tpv({"class": "TPV", "mode": 2, "alt": 5.0}, {"satellites": [{"used": True}, {"used": False}]})
    assert (old.alt_msl, old.sats_used, old.sats_visible) == (5.0, 1, 2)
    with pytest.raises(DecodeError, match="mode"):
        fix_from_tpv({"class": "TPV", "mode": 7})
    with pytest.raises(DecodeError, match="time"):
        fix_from_tpv({"class": "TPV", "mode": 1, "time": "yesterday"})


def test_protocol_on_gpsd_chk_output(refdata: Path) -> None:
    """Every TPV line gpsd printed for the refdata logs becomes one fix, with its values."""
    total = 0
    for chk in sorted((refdata / "nmea/gpsd").glob("*.chk")):
        proto = GpsdProtocol()
        for line in chk.read_bytes().splitlines():
            if not line.startswith(b"{"):
                continue
            fix = proto.feed_line(line)
            obj = json.loads(line)
            if obj["class"] != "TPV":
                assert fix is None
                continue
            assert fix is not None and int(fix.mode) == obj.get("mode", 0)
            assert (fix.lat, fix.lon, fix.speed, fix.alt_hae) == tuple(
                obj.get(k) for k in ("lat", "lon", "speed", "altHAE")
            )
            total += 1
        assert proto.counters["malformed"] == 0 and proto.counters["tpv"] > 0
    assert total > 500


def test_malformed_lines_are_counted_not_fatal() -> None:
    proto = GpsdProtocol()
    for line in (b"not json", b"[1,2]", b'{"no":"class"}', b"\xff\xfe{", b'{"class":"TPV","mode":"x"}'):
        assert proto.feed_line(line) is None
    assert proto.counters["malformed"] == 4 and proto.counters["bad_tpv"] == 1
    assert proto.feed_line(json.dumps(TPV).encode()) is not None


def test_device_filter_and_watch_command() -> None:
    assert GpsdProtocol().watch_command() == b'?WATCH={"enable":true,"json":true}\n'
    proto = GpsdProtocol(device="/dev/pts/9")
    assert json.loads(proto.watch_command()[7:]) == {"enable": True, "json": True, "device": "/dev/pts/9"}
    assert proto.feed_line(json.dumps(TPV).encode()) is None  # another device's report
    assert proto.feed_line(json.dumps({**TPV, "device": "/dev/pts/9"}).encode()) is not None


def test_backoff_is_capped_and_jittered() -> None:
    source = GpsdSource(backoff_initial=0.5, backoff_max=8.0, rng=random.Random(1))
    delays = [source.backoff(n) for n in range(12)]
    ceilings = [min(8.0, 0.5 * 2**n) for n in range(12)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 8.0 and len({round(d, 6) for d in delays[5:]}) > 1  # jittered at the cap


@dataclass
class FakeGpsd:
    """A gpsd look-alike on 127.0.0.1: greets, records the WATCH, sends scripted lines."""

    scripts: list[list[bytes]]
    greeting: bytes = VERSION
    watches: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        writer.write(self.greeting)
        self.watches.append(await reader.readline())
        lines = self.scripts[index] if index < len(self.scripts) else []
        for line in lines:
            writer.write(line)
            await writer.drain()
        if index + 1 < len(self.scripts):
            writer.close()  # hang up: the client must reconnect
            return
        try:
            await reader.read()  # stay connected until the client goes
        finally:
            writer.close()


@pytest.fixture
async def fake_gpsd() -> AsyncIterator[FakeGpsd]:
    tpv = json.dumps(TPV).encode() + b"\n"
    fake = FakeGpsd(
        scripts=[
            [b'{"class":"DEVICES","devices":[]}\n', b"garbage{\n", json.dumps(SKY).encode() + b"\n", tpv],
            [b"x" * 70000 + b"\n", tpv, tpv],
        ]
    )
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    async with server:
        yield fake
        server.close()


async def test_reports_then_reconnects_after_hangup(fake_gpsd: FakeGpsd) -> None:
    source = GpsdSource("127.0.0.1", fake_gpsd.port, backoff_initial=0.01, backoff_max=0.05)
    fixes: list[GnssFix] = []
    async with source:

        async def collect() -> None:
            async for fix in source.fixes():
                fixes.append(fix)
                if len(fixes) == 3:
                    return

        await asyncio.wait_for(collect(), 5.0)
    assert fake_gpsd.watches[0] == b'?WATCH={"enable":true,"json":true}\n'
    assert fake_gpsd.connections == 2
    assert fixes[0].sats_used == 10 and fixes[0].hdop == 0.9 and fixes[0].lat == TPV["lat"]
    c = source.counters()
    assert c["reconnects"] == 1 and c["disconnects"] == 1 and c["malformed"] == 1
    assert c["too_long"] == 1 and c["tpv"] == 3 and c["devices"] == 1 and c["fixes"] == 3


async def test_close_ends_iteration_while_waiting(fake_gpsd: FakeGpsd) -> None:
    fake_gpsd.scripts = [[]]  # connected, silent
    source = GpsdSource("127.0.0.1", fake_gpsd.port)
    await source.open()

    async def drain() -> list[GnssFix]:
        return [fix async for fix in source.fixes()]

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    assert not task.done()
    await source.close()
    assert await asyncio.wait_for(task, 2.0) == []
    await source.close()  # idempotent


async def test_not_gpsd_and_not_listening_are_device_errors(fake_gpsd: FakeGpsd) -> None:
    fake_gpsd.greeting = b"HTTP/1.0 400 Bad Request\r\n"
    with pytest.raises(DeviceError, match="is not gpsd"):
        await GpsdSource("127.0.0.1", fake_gpsd.port).open()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(DeviceError, match=f"cannot connect to gpsd at 127.0.0.1:{port}"):
        await GpsdSource("127.0.0.1", port, connect_timeout=2.0).open()
