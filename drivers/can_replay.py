"""``LogReplayPort``: a recorded bus log (candump ``.log``, Vector ``.asc``/``.blf``, PEAK
``.trc``, python-can ``.csv``/``.db``, ASAM ``.mf4`` with the ``mdf`` extra) as a read-only
``CanPort``, and ``replay_to`` which writes a log onto a bus.

Frames come from ``drivers.can_convert.read_log``; reading (file I/O and parsing) runs in a
worker thread one chunk ahead of the consumer, so the event loop never waits on the file.

Pacing: with ``speed=s`` the frame recorded at ``t`` is released at
``start + (t - t0) / s`` on the injected ``Clock`` (``t0``: the first frame replayed,
``start``: when it was released); frames due within ``coalesce`` seconds are released
together. ``speed=None`` replays as fast as the consumer takes frames. Gaps longer than
``max_gap`` recorded seconds are shortened to ``max_gap`` (pacing only: timestamps stay as
recorded). Each frame keeps its recorded ``timestamp`` (shifted by one log duration per
pass when looping, so time keeps increasing) and gets ``monotonic`` = the clock when it was
released.

Channels: ``channel_map`` renames the log's channels to the agent's bus names (dict or
function); ``channel`` keeps only the frames of that *log* channel, renamed to the port's
``name`` unless ``channel_map`` names it. Without either, frames keep the log's channel names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from pathlib import Path

from drivers.can_bus import BusLoadMeter, frame_bus_time
from drivers.can_convert import read_log
from drivers.clock import SystemClock
from hal.errors import DecodeError, DeviceError
from hal.interfaces import CanPort, Clock
from hal.types import CanBusState, CanBusStats, CanFilter, CanFrame

__all__ = ["LogReplayPort", "replay_to"]

log = logging.getLogger(__name__)

TRACE = 5
_SKIP = "\x00skip"  # channel name marking frames of other log channels
_MAX_ERRORS_KEPT = 100


class LogReplayPort(CanPort):
    """Replays ``path`` as a read-only bus; see the module docstring.

    ``frames()`` ends at the end of the file (or on ``close()``), or starts over when
    ``loop=True``. Frames that python-can reads but that are not valid CAN frames are
    counted in ``invalid_frames`` and their messages kept in ``errors``; a malformed record
    ends the replay there (logged, kept in ``read_error``). ``bitrate`` (optional) enables
    the bus-load estimate, on the injected clock.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str = "replay",
        clock: Clock | None = None,
        speed: float | None = 1.0,
        loop: bool = False,
        channel_map: Mapping[str, str] | Callable[[str], str] | None = None,
        channel: str | None = None,
        filters: Sequence[CanFilter] | None = None,
        max_gap: float | None = None,
        coalesce: float = 0.001,
        bitrate: int | None = None,
        data_bitrate: int | None = None,
        chunk_size: int = 512,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive (or None for as fast as possible), not {speed}")
        if max_gap is not None and max_gap < 0:
            raise ValueError(f"max_gap must not be negative, not {max_gap}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.path = Path(path)
        self.name = name
        self.speed = speed
        self.loop = loop
        self.max_gap = max_gap
        self.coalesce = coalesce
        self.bitrate = bitrate
        self.data_bitrate = data_bitrate
        self._clock: Clock = clock or SystemClock()
        self._channel_map = channel_map
        self._only_channel = channel
        self._filters: tuple[CanFilter, ...] = tuple(filters or ())
        self._chunk_size = chunk_size
        self._is_open = False
        self._opened = False
        self._it: Iterator[CanFrame] | None = None
        self._prefetch: asyncio.Future[list[CanFrame]] | None = None
        self._chunk: list[CanFrame] = []
        self._pos = 0
        self._closed: asyncio.Future[None] | None = None
        self._consuming = False
        self._reset()

    def __repr__(self) -> str:
        return f"LogReplayPort({str(self.path)!r}, name={self.name!r}, speed={self.speed!r})"

    def _reset(self) -> None:
        self._rx_frames = 0
        self._rx_bytes = 0
        self._error_frames = 0
        self._load = BusLoadMeter()
        self._eof = False
        #: frames the log holds that are not valid CAN frames (skipped)
        self.invalid_frames = 0
        #: their messages (the first 100)
        self.errors: list[str] = []
        #: the error that ended the replay early, if any
        self.read_error: DecodeError | DeviceError | None = None
        # pacing state
        self._t0: float | None = None
        self._start = 0.0
        self._prev_ts: float | None = None
        self._gap_offset = 0.0
        self._shift = 0.0
        self._first_ts: float | None = None
        self._last_ts: float | None = None
        self._pass_frames = 0

    # ------------------------------------------------------------------ reading

    def _rename(self, ch: str) -> str:
        only = self._only_channel
        if only is not None and ch != only:
            return _SKIP
        cmap = self._channel_map
        if cmap is None:
            return self.name if only is not None else ch
        if callable(cmap):
            return cmap(ch)
        return cmap.get(ch, self.name if only is not None else ch)

    def _on_invalid(self, err: DecodeError) -> None:
        self.invalid_frames += 1
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(str(err))
        log.debug("%s: invalid frame skipped: %s", self.path, err)

    def _read_chunk(self) -> list[CanFrame]:
        """Next frames of this pass (runs in a worker thread); ``[]`` at the end."""
        it = self._it
        if it is None:
            return []
        out: list[CanFrame] = []
        try:
            for frame in it:
                if frame.channel == _SKIP:
                    continue
                out.append(frame)
                if len(out) >= self._chunk_size:
                    break
            else:
                self._it = None
        except (DecodeError, DeviceError) as err:
            self.read_error = err
            self._it = None
        except NotImplementedError as err:
            # python-can's MF4Reader without asammdf; read_log lets this one through
            self.read_error = DeviceError(f"{self.path}: reading this format needs an extra package: {err}")
            self.read_error.__cause__ = err
            self._it = None
        return out

    def _start_prefetch(self) -> None:
        self._prefetch = asyncio.ensure_future(asyncio.to_thread(self._read_chunk))

    async def _next_chunk(self) -> list[CanFrame]:
        if self._prefetch is None:
            self._start_prefetch()
        assert self._prefetch is not None
        chunk = await asyncio.shield(self._prefetch)
        self._prefetch = None
        if chunk and self._it is not None:
            self._start_prefetch()
        return chunk

    async def _rewind(self) -> bool:
        """Start the next pass of a looping replay; false if the last pass was empty."""
        if not self._pass_frames or self._first_ts is None or self._last_ts is None:
            return False
        duration = self._last_ts - self._first_ts
        interval = duration / (self._pass_frames - 1) if self._pass_frames > 1 else 0.0
        self._shift += max(duration + interval, 1e-3)
        self._prev_ts = None
        self._first_ts = self._last_ts = None
        self._pass_frames = 0
        self._it = read_log(self.path, channel_map=self._rename, on_error=self._on_invalid)
        return True

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        if self._is_open:
            return
        self._reset()
        self._it = read_log(self.path, channel_map=self._rename, on_error=self._on_invalid)
        first = await asyncio.to_thread(self._read_chunk)
        if not first and self.read_error is not None:
            err = self.read_error
            self._it = None
            raise DeviceError(f"{self.name}: cannot replay {self.path}: {err}") from err
        self._chunk, self._pos = first, 0
        self._closed = asyncio.get_running_loop().create_future()
        self._is_open = True
        self._opened = True
        if first and self._it is not None:
            self._start_prefetch()
        log.debug("%s: replaying %s", self.name, self.path)

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            # the generator must not be running in the worker thread when it is closed
            with contextlib.suppress(DecodeError, DeviceError, asyncio.CancelledError):
                await asyncio.shield(prefetch)
        it, self._it = self._it, None
        self._chunk, self._pos = [], 0
        close = getattr(it, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

    # ------------------------------------------------------------------ frames

    def _passes(self, frame: CanFrame) -> bool:
        if frame.is_error_frame or not self._filters:
            return True
        return any(f.matches(frame) for f in self._filters)

    async def _sleep_until(self, due: float) -> bool:
        """Sleep on the clock until ``due``; false if the port was closed meanwhile."""
        closed = self._closed
        assert closed is not None
        sleeper = asyncio.ensure_future(self._clock.sleep_until(due))
        try:
            await asyncio.wait((sleeper, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sleeper.done():
                sleeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sleeper
        return not closed.done()

    async def frames(self) -> AsyncGenerator[CanFrame, None]:
        if not self._is_open:
            raise DeviceError(f"{self.name}: replay of {self.path} is not open")
        if self._consuming:
            raise RuntimeError(f"{self.name}: frames() already has a consumer")
        self._consuming = True
        try:
            async with contextlib.aclosing(self._replay()) as frames:
                async for frame in frames:
                    yield frame
        finally:
            self._consuming = False

    async def _replay(self) -> AsyncGenerator[CanFrame, None]:
        # the chunk and the position in it live on the port, and a frame counts as replayed
        # only when it is yielded: a consumer that stops (or is cancelled while the frame is
        # waiting for its time) leaves it for the next frames()
        clock = self._clock
        speed = self.speed
        max_gap = self.max_gap
        trace = log.isEnabledFor(TRACE)
        while self._is_open:
            if self._pos >= len(self._chunk):
                chunk = await self._next_chunk()
                if not self._is_open:
                    return
                self._chunk, self._pos = chunk, 0
                if chunk:
                    continue
                if self.loop and await self._rewind():
                    continue
                self._eof = True
                if self.read_error is not None:
                    log.warning("%s: replay of %s ended early: %s", self.name, self.path, self.read_error)
                return
            frame = self._chunk[self._pos]
            if not self._passes(frame):
                self._pos += 1
                continue
            ts = frame.timestamp
            gap_offset = self._gap_offset
            if max_gap is not None and self._prev_ts is not None and ts - self._prev_ts > max_gap:
                gap_offset -= ts - self._prev_ts - max_gap
            if speed is not None:
                paced = ts + self._shift + gap_offset
                if self._t0 is None:
                    self._t0 = paced
                    self._start = clock.monotonic()
                due = self._start + (paced - self._t0) / speed
                if due - clock.monotonic() > self.coalesce:
                    if not await self._sleep_until(due):
                        return
            # the frame is replayed now
            self._pos += 1
            self._gap_offset = gap_offset
            self._prev_ts = ts
            if self._first_ts is None:
                self._first_ts = ts
            self._last_ts = ts
            self._pass_frames += 1
            now = clock.monotonic()
            out = dataclasses.replace(frame, monotonic=now, timestamp=ts + self._shift)
            if out.is_error_frame:
                self._error_frames += 1
            else:
                self._rx_frames += 1
                self._rx_bytes += len(out.data)
                if self.bitrate:
                    self._load.add(now, frame_bus_time(out, self.bitrate, self.data_bitrate))
            if trace:
                log.log(TRACE, "replay %s", out.candump())
            yield out

    # ------------------------------------------------------------------ the rest of CanPort

    async def send(self, frame: CanFrame) -> None:
        raise DeviceError(f"{self.name}: a log replay ({self.path}) is read-only; cannot send {frame.candump()}")

    def set_filters(self, filters: Sequence[CanFilter] | None) -> None:
        self._filters = tuple(filters or ())

    def stats(self) -> CanBusStats:
        if self._is_open and not self._eof:
            state = CanBusState.ACTIVE
        elif self._opened:
            state = CanBusState.STOPPED
        else:
            state = CanBusState.UNKNOWN
        load = self._load.load(self._clock.monotonic()) if self.bitrate and self._is_open else 0.0
        return CanBusStats(
            channel=self.name,
            rx_frames=self._rx_frames,
            rx_bytes=self._rx_bytes,
            error_frames=self._error_frames,
            bus_load=load,
            state=state,
        )


async def replay_to(
    port: CanPort,
    path: str | Path,
    *,
    clock: Clock | None = None,
    speed: float | None = 1.0,
    loop: bool = False,
    channel_map: Mapping[str, str] | Callable[[str], str] | None = None,
    channel: str | None = None,
    filters: Sequence[CanFilter] | None = None,
    max_gap: float | None = None,
    coalesce: float = 0.001,
    include_error_frames: bool = False,
    limit: int | None = None,
) -> int:
    """Send the frames of the log at ``path`` on ``port`` (open) at recorded pace; returns
    how many were sent.

    Pacing, channel selection and filters as for ``LogReplayPort``. Error frames are skipped
    unless ``include_error_frames``; ``limit`` stops after that many frames (needed to end a
    looping replay other than by cancelling). A failed send raises ``DeviceError``.
    """
    source = LogReplayPort(
        path,
        name=port.name,
        clock=clock,
        speed=speed,
        loop=loop,
        channel_map=channel_map,
        channel=channel,
        filters=filters,
        max_gap=max_gap,
        coalesce=coalesce,
    )
    sent = 0
    if limit is not None and limit <= 0:
        return sent
    async with source, contextlib.aclosing(source.frames()) as frames:
        async for frame in frames:
            if frame.is_error_frame and not include_error_frames:
                continue
            await port.send(frame)
            sent += 1
            if limit is not None and sent >= limit:
                break
    return sent
