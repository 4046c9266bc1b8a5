"""``GpsdSource``: a ``GnssSource`` that is a client of gpsd's JSON protocol over TCP.

On ``open()`` it connects (default ``127.0.0.1:2947``), checks the peer greets with gpsd's
``VERSION`` object (``DeviceError`` otherwise) and sends
``?WATCH={"enable":true,"json":true}``. It then reads one JSON object per line: each ``TPV``
becomes a ``GnssFix`` (gpsd's TPV is already one fused report per receiver cycle); ``SKY``
supplies the DOPs and satellite counts of the fixes that follow it; ``VERSION``,
``DEVICES``, ``WATCH``, ``DEVICE`` and ``ERROR`` are counted. Malformed or over-long lines
are counted, never fatal. When the connection drops, ``fixes()`` reconnects with capped,
jittered exponential backoff until it succeeds or the source is closed.

``GpsdProtocol`` is the sans-IO part (bytes in, fixes out) and is usable on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from drivers.clock import SystemClock, sleep_until_or
from hal.errors import DecodeError, DeviceError
from hal.interfaces import Clock, GnssSource
from hal.types import FixMode, GnssFix

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GpsdProtocol", "GpsdSource", "fix_from_tpv"]

log = logging.getLogger(__name__)
TRAFFIC = 5

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2947
#: gpsd's longest JSON report (a SKY with many satellites) is a few KiB
MAX_LINE = 65536


def _num(obj: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fix_from_tpv(tpv: dict[str, Any], sky: dict[str, Any] | None = None, *, monotonic: float = 0.0) -> GnssFix:
    """Map a gpsd TPV object (and the last SKY) to a ``GnssFix``; ``DecodeError`` if the
    TPV's ``mode`` or ``time`` is malformed."""
    mode_value = tpv.get("mode", 0)
    try:
        mode = FixMode(mode_value)
    except ValueError:
        raise DecodeError(f"mode {mode_value!r} is not 0..3", where="gpsd TPV") from None
    stamp = tpv.get("time")
    when: datetime | None = None
    if stamp is not None:
        try:
            when = datetime.fromisoformat(str(stamp))
        except ValueError:
            raise DecodeError(f"time {stamp!r} is not ISO-8601", where="gpsd TPV") from None
    sky = sky or {}
    sats = sky.get("satellites")
    sats_list = sats if isinstance(sats, list) else None
    sats_used = _int(sky, "uSat")
    if sats_used is None and sats_list is not None:
        sats_used = sum(1 for s in sats_list if isinstance(s, dict) and s.get("used"))
    sats_visible = _int(sky, "nSat")
    if sats_visible is None and sats_list is not None:
        sats_visible = len(sats_list)
    return GnssFix(
        mode=mode,
        time=when,
        lat=_num(tpv, "lat"),
        lon=_num(tpv, "lon"),
        alt_msl=_num(tpv, "altMSL", "alt"),
        alt_hae=_num(tpv, "altHAE"),
        speed=_num(tpv, "speed"),
        track=_num(tpv, "track"),
        climb=_num(tpv, "climb"),
        magvar=_num(tpv, "magvar"),
        eph=_num(tpv, "eph"),
        epv=_num(tpv, "epv"),
        hdop=_num(sky, "hdop"),
        vdop=_num(sky, "vdop"),
        pdop=_num(sky, "pdop"),
        sats_used=sats_used,
        sats_visible=sats_visible,
        status=_int(tpv, "status"),
        monotonic=monotonic,
    )


class GpsdProtocol:
    """Sans-IO gpsd JSON client: ``feed_line(line, now)`` returns a fix for each TPV.

    ``device`` (a path) restricts the TPVs used to that device's. ``counters`` holds
    ``lines``, one counter per message class seen (``tpv``, ``sky``, ``version``, ...),
    ``malformed`` (not a JSON object with a class) and ``bad_tpv``.
    """

    WATCH = b'?WATCH={"enable":true,"json":true}\n'

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.version: dict[str, Any] | None = None
        self.devices: list[Any] = []
        self._sky: dict[str, Any] | None = None
        self.counters: dict[str, int] = {
            "lines": 0,
            "tpv": 0,
            "sky": 0,
            "version": 0,
            "devices": 0,
            "watch": 0,
            "error": 0,
            "other": 0,
            "malformed": 0,
            "bad_tpv": 0,
        }

    def watch_command(self) -> bytes:
        if self.device is None:
            return self.WATCH
        args = {"enable": True, "json": True, "device": self.device}
        return b"?WATCH=" + json.dumps(args, separators=(",", ":")).encode() + b"\n"

    def parse(self, line: bytes) -> dict[str, Any] | None:
        """Decode one line into a JSON object with a ``class``; ``None`` (counted) if not."""
        self.counters["lines"] += 1
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
            self.counters["malformed"] += 1
            log.debug("gpsd: malformed line %r", line[:120])
            return None
        return obj

    def feed_line(self, line: bytes, *, now: float = 0.0) -> GnssFix | None:
        obj = self.parse(line.strip())
        if obj is None:
            return None
        cls = obj["class"]
        log.log(TRAFFIC, "gpsd: %s", line[:200])
        if self.device is not None and "device" in obj and obj["device"] != self.device:
            return None
        if cls == "TPV":
            self.counters["tpv"] += 1
            try:
                return fix_from_tpv(obj, self._sky, monotonic=now)
            except DecodeError as err:
                self.counters["bad_tpv"] += 1
                log.debug("%s", err)
                return None
        key = cls.lower() if cls in ("SKY", "VERSION", "DEVICES", "WATCH", "ERROR") else "other"
        self.counters[key] += 1
        if cls == "SKY":
            self._sky = obj
        elif cls == "VERSION":
            self.version = obj
        elif cls == "DEVICES" and isinstance(obj.get("devices"), list):
            self.devices = obj["devices"]
        elif cls == "ERROR":
            log.warning("gpsd says: %s", obj.get("message", obj))
        return None


class GpsdSource(GnssSource):
    """Fixes from a gpsd daemon (see the module docstring).

    ``connect_timeout`` bounds the connection and the wait for gpsd's greeting;
    ``backoff_initial``/``backoff_max`` shape the reconnect delays (doubling, capped, each
    drawn uniformly from [d/2, d] with ``rng``). ``clock`` stamps fixes and times the
    backoff sleeps.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        name: str = "gnss",
        device: str | None = None,
        clock: Clock | None = None,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.clock = clock or SystemClock()
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.protocol = GpsdProtocol(device)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._opened = False
        self._closed = asyncio.Event()
        self._counters = {"connects": 0, "reconnects": 0, "disconnects": 0, "too_long": 0, "fixes": 0}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def counters(self) -> dict[str, int]:
        return {**self.protocol.counters, **self._counters}

    def backoff(self, attempt: int) -> float:
        """The delay before reconnect ``attempt`` (0-based): capped exponential, jittered."""
        ceiling = min(self.backoff_max, self.backoff_initial * (2.0 ** min(attempt, 30)))
        return self.rng.uniform(ceiling / 2.0, ceiling)

    async def open(self) -> None:
        if self._opened:
            return
        self._closed.clear()
        await self._connect()
        self._opened = True

    async def close(self) -> None:
        self._closed.set()
        self._opened = False
        await self._disconnect()

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
        except (OSError, TimeoutError) as err:
            why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
            raise DeviceError(f"{self.name}: cannot connect to gpsd at {self.address}: {why}") from err
        try:
            async with asyncio.timeout(self.connect_timeout):
                greeting = await reader.readline()
        except (OSError, TimeoutError, ValueError) as err:
            writer.close()
            raise DeviceError(f"{self.name}: no greeting from gpsd at {self.address}: {err!r}") from err
        obj = self.protocol.parse(greeting.strip())
        if obj is None or obj.get("class") != "VERSION":
            writer.close()
            raise DeviceError(
                f"{self.name}: {self.address} is not gpsd: it greeted with {greeting[:80]!r}, "
                'expected {"class":"VERSION",...}'
            )
        self.protocol.counters["version"] += 1
        self.protocol.version = obj
        try:
            writer.write(self.protocol.watch_command())
            await writer.drain()
        except OSError as err:
            writer.close()
            raise DeviceError(f"{self.name}: gpsd at {self.address} closed on WATCH: {err}") from err
        self._reader, self._writer = reader, writer
        self._counters["connects"] += 1
        log.info("%s: connected to gpsd %s at %s", self.name, obj.get("release", "?"), self.address)

    async def _disconnect(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _readline(self) -> bytes | None:
        """One line; ``b""`` when the connection ended, ``None`` when the source closed.
        Lines longer than ``MAX_LINE`` are counted and skipped."""
        while True:
            line = await self._readline_once()
            if line != b"\n":
                return line

    async def _readline_once(self) -> bytes | None:
        reader = self._reader
        if reader is None:
            return b""
        read = asyncio.ensure_future(reader.readline())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError, ValueError):
                    await read
        if self._closed.is_set() or read.cancelled():
            return None
        try:
            return read.result()
        except ValueError:  # longer than MAX_LINE: asyncio dropped it
            self._counters["too_long"] += 1
            return b"\n"
        except OSError as err:
            log.warning("%s: gpsd connection %s failed: %s", self.name, self.address, err)
            return b""

    async def fixes(self) -> AsyncIterator[GnssFix]:
        if not self._opened and not self._closed.is_set():
            raise DeviceError(f"{self.name}: fixes() before open()")
        while not self._closed.is_set():
            line = await self._readline()
            if line is None:
                return
            if not line:
                self._counters["disconnects"] += 1
                log.warning("%s: gpsd at %s closed the connection; reconnecting", self.name, self.address)
                await self._disconnect()
                if not await self._reconnect():
                    return
                continue
            fix = self.protocol.feed_line(line, now=self.clock.monotonic())
            if fix is not None:
                self._counters["fixes"] += 1
                yield fix

    async def _reconnect(self) -> bool:
        """Reconnect with backoff; ``False`` if the source was closed meanwhile."""
        attempt = 0
        while not self._closed.is_set():
            delay = self.backoff(attempt)
            if not await sleep_until_or(self.clock, self.clock.monotonic() + delay, self._closed):
                return False
            try:
                await self._connect()
            except DeviceError as err:
                attempt += 1
                log.warning("%s: %s (reconnect attempt %d failed)", self.name, err, attempt)
                continue
            self._counters["reconnects"] += 1
            return True
        return False
