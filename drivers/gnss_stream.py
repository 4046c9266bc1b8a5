"""``NmeaStreamSource``: a ``GnssSource`` reading NMEA 0183 from a byte transport.

The source is *handed* a transport and never opens a device in its constructor; the
composition root picks one with ``open_nmea_source(spec)`` or a ``from_*`` factory:

* ``from_tty(path, baudrate)`` — a serial device or pty (``/dev/ttyACM0``, ``/dev/pts/3``):
  non-blocking fd in raw mode, read through ``loop.add_reader`` (no thread);
* ``from_serial_url(url, baudrate)`` — anything pyserial's ``serial_for_url`` opens
  (``loop://``, ``socket://host:port``, ``rfc2217://``, ...), read in a worker thread;
* ``from_file(path, pace)`` — a recorded log (gpsd's ``#`` header lines are skipped), one
  fix cycle every ``pace`` seconds, or as fast as possible with ``pace=0``;
* ``from_stream(reader)`` — any ``asyncio.StreamReader``.

``fixes()`` yields one ``GnssFix`` per receiver cycle: when the cycle's last timed sentence
arrives (``drivers.nmea.FixTracker`` learns which one that is), not after every sentence, so
consumers see complete, consistent fixes (no mode blinking between RMC and GGA). Iteration
ends at the end of a file or stream and when the source is closed; a device that fails
raises ``hal.errors.DeviceError``. Bad input is counted (``counters()``), never raised.

``open()`` checks the transport carries NMEA: it raises ``DeviceError`` if no checksum-valid
sentence arrives within ``ready_timeout`` seconds (wrong port, wrong baud rate, binary
protocol) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import termios
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from drivers.clock import SystemClock, sleep_until_or
from drivers.nmea import NmeaReader, ReaderEvent
from hal.errors import DeviceError
from hal.interfaces import Clock, GnssSource
from hal.types import GnssFix

__all__ = [
    "ByteTransport",
    "FileTransport",
    "NmeaStreamSource",
    "SerialUrlTransport",
    "StreamTransport",
    "TtyTransport",
    "open_nmea_source",
]

log = logging.getLogger(__name__)

_READ_SIZE = 4096


class ByteTransport(Protocol):
    """Where NMEA bytes come from. ``read()`` returns ``b""`` at the end of the input."""

    description: str

    async def open(self) -> None: ...

    async def read(self) -> bytes: ...

    async def close(self) -> None: ...


class TtyTransport:
    """A tty, pty or FIFO path, read non-blocking through ``loop.add_reader``.

    A tty is put in raw mode (no echo, no line editing) and, if ``baudrate`` is given, set
    to that speed.
    """

    def __init__(self, path: str | os.PathLike[str], baudrate: int | None = None) -> None:
        self.path = os.fspath(path)
        self.baudrate = baudrate
        self.description = f"{self.path}" + (f" at {baudrate} Bd" if baudrate else "")
        self._fd: int | None = None
        self._is_tty = False
        self._waiter: asyncio.Future[None] | None = None

    async def open(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as err:
            raise DeviceError(f"cannot open GNSS device {self.path}: {err.strerror}") from err
        try:
            self._is_tty = os.isatty(fd)
            if self._is_tty:
                self._configure(fd)
        except (OSError, termios.error, ValueError) as err:
            os.close(fd)
            raise DeviceError(f"cannot configure GNSS device {self.description}: {err}") from err
        self._fd = fd

    def _configure(self, fd: int) -> None:
        attrs = termios.tcgetattr(fd)
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
        # cfmakeraw
        iflag &= ~(
            termios.IGNBRK
            | termios.BRKINT
            | termios.PARMRK
            | termios.ISTRIP
            | termios.INLCR
            | termios.IGNCR
            | termios.ICRNL
            | termios.IXON
        )
        oflag &= ~termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        cflag &= ~(termios.CSIZE | termios.PARENB)
        cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
        if self.baudrate:
            speed = getattr(termios, f"B{self.baudrate}", None)
            if speed is None:
                raise ValueError(f"{self.baudrate} is not a baud rate this system supports")
            ispeed = ospeed = speed
        cc[termios.VMIN], cc[termios.VTIME] = 1, 0
        termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])

    async def read(self) -> bytes:
        while True:
            fd = self._fd
            if fd is None:
                return b""
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await self._readable(fd)
                continue
            except OSError as err:
                if err.errno == errno.EIO:
                    raise DeviceError(f"GNSS device {self.path} hung up (EIO)") from err
                raise DeviceError(f"reading GNSS device {self.path}: {err.strerror}") from err
            if not data and self._is_tty:
                # a raw tty (VMIN=1) reads nothing only when the other side has gone
                raise DeviceError(f"GNSS device {self.path} hung up")
            return data

    async def _readable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._waiter = waiter
        loop.add_reader(fd, ready)
        try:
            await waiter
        finally:
            self._waiter = None
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fd)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)


class SerialUrlTransport:
    """A port opened by pyserial's ``serial_for_url``; blocking reads run in a thread."""

    def __init__(self, url: str, baudrate: int = 9600, **options: Any) -> None:
        self.url = url
        self.baudrate = baudrate
        self.options = options
        self.description = f"{url} at {baudrate} Bd"
        self._port: Any = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        if self._port is not None:
            return
        try:
            import serial  # pyserial: imported only when this transport is used
        except ImportError as err:
            raise DeviceError(f"cannot open {self.url}: pyserial is not installed") from err
        try:
            self._port = await asyncio.to_thread(
                serial.serial_for_url, self.url, baudrate=self.baudrate, timeout=0.1, **self.options
            )
        except (serial.SerialException, ValueError, OSError) as err:
            raise DeviceError(f"cannot open GNSS port {self.description}: {err}") from err

    def _blocking_read(self) -> bytes | None:
        import serial

        with self._lock:
            port = self._port
            if port is None:
                return b""
            try:
                return bytes(port.read(max(1, min(port.in_waiting, _READ_SIZE)))) or None
            except (serial.SerialException, OSError) as err:
                raise DeviceError(f"reading GNSS port {self.description}: {err}") from err

    async def read(self) -> bytes:
        while True:
            data = await asyncio.to_thread(self._blocking_read)
            if data is not None:  # None: the 0.1 s read timeout passed without data
                return data

    async def close(self) -> None:
        def close_port() -> None:
            with self._lock:
                port, self._port = self._port, None
            if port is not None:
                port.close()

        await asyncio.to_thread(close_port)


class FileTransport:
    """A recorded NMEA file, read in blocks in a worker thread."""

    def __init__(self, path: str | os.PathLike[str], block_size: int = 65536) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self.description = f"file {self.path}"
        self._file: Any = None

    async def open(self) -> None:
        if self._file is not None:
            return
        try:
            self._file = await asyncio.to_thread(open, self.path, "rb")
        except OSError as err:
            raise DeviceError(f"cannot open NMEA file {self.path}: {err.strerror}") from err

    async def read(self) -> bytes:
        file = self._file
        if file is None:
            return b""
        try:
            return bytes(await asyncio.to_thread(file.read, self.block_size))
        except (OSError, ValueError) as err:  # ValueError: closed meanwhile
            if self._file is None:
                return b""
            raise DeviceError(f"reading NMEA file {self.path}: {err}") from err

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


class StreamTransport:
    """Any ``asyncio.StreamReader`` (a socket, a subprocess pipe, a test's feed)."""

    def __init__(self, reader: asyncio.StreamReader, description: str = "stream") -> None:
        self.reader = reader
        self.description = description
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def read(self) -> bytes:
        if not self._open:
            return b""
        return await self.reader.read(_READ_SIZE)

    async def close(self) -> None:
        self._open = False


class NmeaStreamSource(GnssSource):
    """GNSS fixes from NMEA bytes on a transport (see the module docstring).

    ``pace`` (seconds) spaces the reported fixes of a replay: one per cycle every ``pace``
    seconds; ``None`` or 0 hands them out as read. Fixes are stamped (``monotonic``) when
    their bytes were read, or, for a paced source or with ``stamp_on_yield`` (files), when
    they are handed out. ``ready_timeout`` bounds the wait for the first valid sentence in
    ``open()`` (``None``: do not check). ``comments`` skips ``#`` lines (log files). Only
    one task may iterate ``fixes()`` at a time.
    """

    def __init__(
        self,
        transport: ByteTransport,
        *,
        name: str = "gnss",
        clock: Clock | None = None,
        ready_timeout: float | None = 5.0,
        pace: float | None = None,
        comments: bool = False,
        stamp_on_yield: bool = False,
    ) -> None:
        self.name = name
        self.transport = transport
        self.clock = clock or SystemClock()
        self.ready_timeout = ready_timeout
        self.pace = pace or None
        self.stamp_on_yield = stamp_on_yield or self.pace is not None
        self._reader = NmeaReader(comments=comments)
        self._pending: deque[GnssFix] = deque()
        self._eof = False
        self._opened = False
        self._closed = asyncio.Event()
        self._yielded = 0

    # -- factories -------------------------------------------------------------------------

    @classmethod
    def from_tty(cls, path: str | os.PathLike[str], baudrate: int | None = None, **kw: Any) -> NmeaStreamSource:
        return cls(TtyTransport(path, baudrate), **kw)

    @classmethod
    def from_serial_url(cls, url: str, baudrate: int = 9600, **kw: Any) -> NmeaStreamSource:
        return cls(SerialUrlTransport(url, baudrate), **kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], pace: float | None = 1.0, **kw: Any) -> NmeaStreamSource:
        kw.setdefault("comments", True)
        kw.setdefault("stamp_on_yield", True)
        return cls(FileTransport(path), pace=pace, **kw)

    @classmethod
    def from_stream(cls, reader: asyncio.StreamReader, description: str = "stream", **kw: Any) -> NmeaStreamSource:
        return cls(StreamTransport(reader, description), **kw)

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        self._closed.clear()
        self._eof = False
        self._pending.clear()
        await self.transport.open()
        self._opened = True
        log.info("%s: reading NMEA from %s", self.name, self.transport.description)
        if self.ready_timeout is not None:
            try:
                await self.wait_ready(self.ready_timeout)
            except BaseException:
                await self.close()
                raise

    async def wait_ready(self, seconds: float) -> None:
        """Read until one checksum-valid sentence has arrived; ``DeviceError`` if none does
        within ``seconds`` or before the input ends. Nothing read is lost."""
        before = self._reader.counters["sentences"]
        try:
            async with asyncio.timeout(seconds):
                while self._reader.counters["sentences"] == before:
                    if self._eof or self._closed.is_set():
                        break
                    await self._fill()
        except TimeoutError:
            pass
        if self._reader.counters["sentences"] == before:
            counters = self._reader.counters
            seen = ", ".join(f"{k} {v}" for k, v in counters.items() if v and k != "bytes")
            why = "before the input ended" if self._eof else f"within {seconds:g} s"
            raise DeviceError(
                f"{self.name}: no valid NMEA sentence from {self.transport.description} {why} "
                f"({counters['bytes']} bytes read{': ' + seen if seen else ''}); "
                "wrong port, baud rate or protocol?"
            )

    async def close(self) -> None:
        self._closed.set()
        if self._opened:
            self._opened = False
            await self.transport.close()

    # -- data ------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        out = self._reader.counters
        out["fixes"] = self._yielded
        return out

    @property
    def last_fix(self) -> GnssFix:
        """The merged fix after the last sentence read (also between reports)."""
        return self._reader.fix

    async def fixes(self) -> AsyncIterator[GnssFix]:
        if not self._opened and not self._closed.is_set():
            raise DeviceError(f"{self.name}: fixes() before open()")
        first = True
        while not self._closed.is_set():
            if not self._pending:
                if self._eof:
                    return
                await self._fill()
                continue
            fix = self._pending.popleft()
            if self.pace is not None and not first and not await self._sleep(self.pace):
                return
            if self.stamp_on_yield:
                fix = replace(fix, monotonic=self.clock.monotonic())
            first = False
            self._yielded += 1
            yield fix

    async def _fill(self) -> None:
        """Read one chunk (or learn the input ended) and queue the fixes it completes."""
        data = await self._read()
        now = self.clock.monotonic()
        if data:
            events = self._reader.feed(data, now=now)
        else:
            self._eof = True
            events = self._reader.flush(now=now)
            self._queue(events)
            self._pending.extend(self._reader.finish())
            events = []
            if not self._closed.is_set():
                log.info("%s: end of input from %s", self.name, self.transport.description)
        self._queue(events)

    def _queue(self, events: list[ReaderEvent]) -> None:
        for ev in events:
            self._pending.extend(ev.reports)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep on the clock; ``False`` if the source was closed meanwhile."""
        return await sleep_until_or(self.clock, self.clock.monotonic() + seconds, self._closed)

    async def _read(self) -> bytes:
        """One transport read that returns ``b""`` as soon as the source is closed."""
        if self._closed.is_set():
            return b""
        read = asyncio.ensure_future(self.transport.read())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, DeviceError):
                    await read
        if read.cancelled():
            return b""
        if self._closed.is_set() and read.exception() is not None:
            return b""  # the transport was closed under the read
        return read.result()


def open_nmea_source(
    spec: str,
    *,
    baudrate: int = 9600,
    name: str = "gnss",
    pace: float | None = 1.0,
    ready_timeout: float | None = 5.0,
    clock: Clock | None = None,
) -> NmeaStreamSource:
    """Choose a transport for ``spec`` without opening it (no I/O beyond a ``stat``).

    A pyserial URL (``scheme://...``) goes through ``serial_for_url``; a regular file is
    replayed with one fix cycle every ``pace`` seconds (0: as fast as possible); anything
    else (``/dev/ttyACM0``, a pty, a FIFO) is read as a tty at ``baudrate``.
    """
    kw: dict[str, Any] = {"name": name, "ready_timeout": ready_timeout, "clock": clock}
    if "://" in spec:
        return NmeaStreamSource.from_serial_url(spec, baudrate, **kw)
    try:
        is_file = stat.S_ISREG(os.stat(spec).st_mode)
    except OSError:
        is_file = False  # a device that is not plugged in yet: open() will say so
    if is_file:
        return NmeaStreamSource.from_file(spec, pace=pace, **kw)
    return NmeaStreamSource.from_tty(spec, baudrate, **kw)
