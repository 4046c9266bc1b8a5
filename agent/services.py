"""The OBU's data-path services: one per CAN bus, one for GNSS, one producing VehicleState
snapshots, and the health/watchdog loop. Each is a small class with ``async run()`` that the
supervisor keeps alive; each reports its own health and counters."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from hal.errors import DecodeError, HalError
from hal.interfaces import Camera, CanPort, Clock, GnssSource
from hal.types import CanBusState, CanBusStats, FixMode, Frame, GnssFix, SignalSample, VehicleState

from .fusion import Fusion
from .health import HealthRegistry
from .sdnotify import Notifier

__all__ = ["CameraService", "CanService", "GnssService", "HealthService", "StateService"]

log = logging.getLogger(__name__)

StateSink = Callable[[VehicleState], None]

#: one sequence over every bus of the process: a single cursor orders the frames of all buses
_frame_seq = itertools.count(1)
#: bounds of the diagnostics history kept per bus
RECENT_FRAMES = 2000
ERROR_HISTORY = 64
STATE_HISTORY = 64
#: a GNSS time that steps by more than this against the monotonic clock has jumped, seconds
TIME_STEP_S = 2.0
#: reports in a row at a jumped time (away from the system clock) before it is believed
TIME_RELOCK_REPORTS = 30


class FrameDecoder(Protocol):
    def decode(self, frame: Any) -> list[SignalSample]: ...


class CanService:
    """Receive one bus, decode each frame to VSS signals, feed the fusion core.

    A frame that does not decode is counted (by reason) and skipped; the last such error is
    kept for diagnostics. Error frames are counted by the port's statistics.
    """

    def __init__(
        self,
        port: CanPort,
        decoders: Sequence[FrameDecoder],
        fusion: Fusion,
        health: HealthRegistry,
        clock: Clock,
        *,
        silent_after: float = 2.0,
        obd: Any = None,
        recent_frames: int = RECENT_FRAMES,
    ) -> None:
        self.port = port
        #: an ``ObdPoller`` whose responses arrive on this bus (it only sends requests itself)
        self.obd = obd
        self.opened = asyncio.Event()
        self.decoders = list(decoders)
        self.fusion = fusion
        self.health = health
        self.clock = clock
        self.silent_after = silent_after
        self.name = f"can.{port.name}"
        self.frames = 0
        self.signals = 0
        self.decode_errors = 0
        self.last_error = ""
        self.last_frame_mono: float | None = None
        self.opened_mono: float | None = None
        #: the newest frames (error frames too) with their decoded VSS signals, oldest first,
        #: for ``acc can dump``: dicts with ``seq`` from one process-wide sequence
        self.recent: deque[dict[str, Any]] = deque(maxlen=max(1, recent_frames))
        #: the ``seq`` of the newest frame pushed out of ``recent`` (0: none yet)
        self.evicted_seq = 0
        #: error frames seen on the bus (the port's statistics count those it drops itself)
        self.error_frames_seen = 0
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERROR_HISTORY)
        #: bus state changes (error-active / -passive / bus-off) with wall and monotonic times
        self.state_history: deque[dict[str, Any]] = deque(maxlen=STATE_HISTORY)
        self._state: CanBusState | None = None
        self._rate_mark: tuple[float, int] | None = None
        self.rate = 0.0

    async def run(self) -> None:
        await self.port.open()
        self.opened_mono = self.clock.monotonic()
        self.track_state()
        self.opened.set()
        self.health.ok(self.name, "open, waiting for frames")
        try:
            batches = getattr(self.port, "batches", None)
            if batches is not None:
                async for batch in batches():
                    self._handle(batch)
                    if self.obd is not None:
                        await self._to_obd(batch)
            else:
                async for frame in self.port.frames():
                    self._handle((frame,))
                    if self.obd is not None:
                        await self._to_obd((frame,))
        finally:
            self.opened.clear()
            await self.port.close()

    async def _to_obd(self, batch: Sequence[Any]) -> None:
        responder = self.obd.config.addressing.ecu_of_response
        for frame in batch:
            if responder(frame) is not None:
                try:
                    await self.obd.on_frame(frame)
                except HalError as err:  # flow control could not be sent
                    log.debug("%s: OBD: %s", self.name, err)

    async def run_obd(self) -> None:
        """The OBD poller's request side; waits until the bus is open."""
        await self.opened.wait()
        await self.obd.poll_forever()

    def _handle(self, batch: Sequence[Any]) -> None:
        fusion_on = self.fusion.on_signal
        for frame in batch:
            if frame.is_error_frame:
                self._remember(frame, ())
                continue
            if frame.is_remote_frame:
                continue
            self.frames += 1
            decoded: list[SignalSample] = []
            for decoder in self.decoders:
                try:
                    samples = decoder.decode(frame)
                except DecodeError as err:
                    self.decode_errors += 1
                    self.last_error = str(err)
                    log.log(5, "%s: %s", self.name, err)
                    continue
                self.signals += len(samples)
                decoded += samples
                for s in samples:
                    fusion_on(s)
            self._remember(frame, decoded)
        if batch:
            self.last_frame_mono = batch[-1].monotonic or self.clock.monotonic()

    def _remember(self, frame: Any, samples: Iterable[SignalSample]) -> None:
        """Keep ``frame`` (and its decoded signals) in the bounded ring of recent frames."""
        ring = self.recent
        if len(ring) == ring.maxlen:
            self.evicted_seq = ring[0]["seq"]
        entry = {
            "seq": next(_frame_seq),
            "bus": self.port.name,
            "timestamp": frame.timestamp or self.clock.time(),
            "monotonic": frame.monotonic or self.clock.monotonic(),
            "id": frame.arbitration_id,
            "extended": frame.is_extended_id,
            "fd": frame.is_fd,
            "error": frame.is_error_frame,
            "data": bytes(frame.data).hex(),
            "signals": [{"name": s.name, "value": s.value, "unit": s.unit} for s in samples],
        }
        ring.append(entry)
        if frame.is_error_frame:
            self.error_frames_seen += 1
            self.errors.append({k: entry[k] for k in ("timestamp", "id", "data")})

    def recent_since(self, cursor: int, ids: Iterable[int] | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """The remembered frames after ``cursor`` (a ``seq``), oldest first, at most ``limit``;
        only those with an arbitration id in ``ids`` when given."""
        wanted = None if ids is None else frozenset(ids)
        out: list[dict[str, Any]] = []
        for entry in reversed(self.recent):  # the newest are the likeliest to be asked for
            if entry["seq"] <= cursor:
                break
            if wanted is None or entry["id"] in wanted:
                out.append(entry)
        out.reverse()
        return out[:limit]

    @property
    def last_seq(self) -> int:
        return self.recent[-1]["seq"] if self.recent else 0

    def track_state(self, stats: CanBusStats | None = None) -> CanBusState:
        """Note a change of the bus state (with the time) in ``state_history``."""
        state = (stats or self.port.stats()).state
        if state is CanBusState.UNKNOWN and self._state is None:
            return state  # the adapter has not said yet: not a change worth a line
        if state is not self._state:
            self.state_history.append(
                {
                    "time": self.clock.time(),
                    "monotonic": self.clock.monotonic(),
                    "from": None if self._state is None else str(self._state),
                    "to": str(state),
                }
            )
            self._state = state
        return state

    def _track_rate(self, now: float) -> None:
        mark = self._rate_mark
        if mark is not None and now - mark[0] >= 0.5:
            self.rate = (self.frames - mark[1]) / (now - mark[0])
        if mark is None or now - mark[0] >= 0.5:
            self._rate_mark = (now, self.frames)

    def stats(self) -> dict[str, Any]:
        """Diagnostics ``can.stats``: counters, rate, load, state and its history, error frames."""
        s = self.port.stats()
        self.track_state(s)
        now = self.clock.monotonic()
        return {
            **self.status(),
            "rate": round(self.rate, 1),
            "error_frames_seen": self.error_frames_seen,
            "recent_errors": list(self.errors),
            "state_history": list(self.state_history),
            "last_frame_age": None if self.last_frame_mono is None else round(now - self.last_frame_mono, 3),
            "ring": {"size": len(self.recent), "capacity": self.recent.maxlen, "last_seq": self.last_seq},
        }

    def check(self, now: float) -> None:
        stats = self.port.stats()
        self.track_state(stats)
        self._track_rate(now)
        if stats.state is CanBusState.BUS_OFF:
            self.health.failed(self.name, "bus-off")
            return
        since = self.last_frame_mono if self.last_frame_mono is not None else self.opened_mono
        if since is not None and now - since > self.silent_after:
            self.health.degraded(self.name, f"no frames for {now - since:.0f}s")
        elif stats.state is CanBusState.PASSIVE:
            self.health.degraded(self.name, "error-passive")
        elif self.frames and self.decode_errors > 0.05 * self.frames:
            self.health.degraded(self.name, f"{self.decode_errors} of {self.frames} frames did not decode")
        elif self.last_frame_mono is not None:
            self.health.ok(self.name)

    def status(self) -> dict[str, Any]:
        s = self.port.stats()
        return {
            "frames": self.frames,
            "signals": self.signals,
            "decode_errors": self.decode_errors,
            "last_error": self.last_error,
            "rx_frames": s.rx_frames,
            "tx_frames": s.tx_frames,
            "error_frames": s.error_frames,
            "overruns": s.overruns,
            "bus_off_count": s.bus_off_count,
            "bus_load": round(s.bus_load, 4),
            "state": str(s.state),
        }


class GnssService:
    def __init__(self, source: GnssSource, fusion: Fusion, health: HealthRegistry, clock: Clock) -> None:
        self.source = source
        self.fusion = fusion
        self.health = health
        self.clock = clock
        self.name = "gnss"
        self.fixes = 0
        self.last: GnssFix | None = None
        self.opened_mono: float | None = None
        #: the newest report with a position (2D/3D fix)
        self.last_fix: GnssFix | None = None
        #: GNSS UTC minus the system clock when the report arrived, ms (positive: GNSS ahead)
        self.time_offset_ms: float | None = None
        #: GNSS UTC minus the monotonic clock of the last report whose time was consistent
        self.time_anchor: float | None = None
        #: a report's time stepped away from the anchor and from the system clock: GNSS time is
        #: not trusted (attestations hold over from the anchor) until it comes back or holds
        self.time_suspect = False
        self.time_jumps = 0
        self.last_time_jump_s: float | None = None
        self._new_anchor: tuple[float, int] | None = None  # a stepped time seen this many times

    async def run(self) -> None:
        await self.source.open()
        self.opened_mono = self.clock.monotonic()
        self.health.ok(self.name, "open, waiting for data")
        try:
            async for fix in self.source.fixes():
                self.fixes += 1
                self.last = fix
                self._note(fix)
                self.fusion.on_fix(fix)
        finally:
            await self.source.close()

    def _note(self, fix: GnssFix) -> None:
        if fix.has_position:
            self.last_fix = fix
        if fix.time is not None:
            # the system clock at the report's arrival (its monotonic receive time)
            wall = self.clock.time() - (self.clock.monotonic() - fix.monotonic if fix.monotonic else 0.0)
            self.time_offset_ms = (fix.time.timestamp() - wall) * 1000.0
            if fix.monotonic:
                self._check_time(fix.time.timestamp() - fix.monotonic, fix.time.timestamp() - wall)

    def _check_time(self, anchor: float, offset_s: float) -> None:
        """Is the receiver's time consistent? Against the monotonic clock it only drifts (ppm);
        a step of more than ``TIME_STEP_S`` is a jump (receiver reset, week rollover, a rig's
        injected fault, spoofing). A jump toward the system clock is a correction and is taken;
        one away from it makes GNSS time suspect until the time comes back to the anchor or the
        new time holds for ``TIME_RELOCK_REPORTS`` reports in a row."""
        if self.time_anchor is None or abs(anchor - self.time_anchor) <= TIME_STEP_S:
            self.time_anchor = anchor
            self.time_suspect = False
            self._new_anchor = None
            return
        step = anchor - self.time_anchor
        if self._new_anchor is None or abs(anchor - self._new_anchor[0]) > TIME_STEP_S:
            self.time_jumps += 1
            self.last_time_jump_s = step
            log.warning("gnss: the receiver's time stepped by %+.1f s (system clock offset %+.1f s)", step, offset_s)
            self._new_anchor = (anchor, 0)
        seen = self._new_anchor[1] + 1
        self._new_anchor = (anchor, seen)
        if abs(offset_s) <= TIME_STEP_S or seen >= TIME_RELOCK_REPORTS:
            self.time_anchor = anchor  # agrees with the system clock, or has held long enough
            self.time_suspect = False
            self._new_anchor = None
        else:
            self.time_suspect = True

    def held_time_anchor(self) -> float | None:
        """The last consistent GNSS-minus-monotonic anchor while GNSS time is suspect, else None:
        what the attestor holds over from (``agent.attestor.gnss_time``)."""
        return self.time_anchor if self.time_suspect else None

    def fix_status(self) -> dict[str, Any]:
        """Diagnostics ``gnss.fix``: the last report and the last fix, satellites, DOP, clock offset."""
        now = self.clock.monotonic()

        def one(f: GnssFix | None) -> dict[str, Any] | None:
            if f is None:
                return None
            return {
                "mode": int(f.mode),
                "time": f.time.isoformat() if f.time else None,
                "lat": f.lat,
                "lon": f.lon,
                "alt": f.alt_msl,
                "speed": f.speed,
                "track": f.track,
                "sats_used": f.sats_used,
                "sats_visible": f.sats_visible,
                "hdop": f.hdop,
                "vdop": f.vdop,
                "pdop": f.pdop,
                "eph": f.eph,
                "age": round(now - f.monotonic, 3) if f.monotonic else None,
            }

        return {
            "fixes": self.fixes,
            "last": one(self.last),
            "fix": one(self.last_fix),
            "time_offset_ms": None if self.time_offset_ms is None else round(self.time_offset_ms, 1),
            "time_suspect": self.time_suspect,
            "time_jumps": self.time_jumps,
            "last_time_jump_s": None if self.last_time_jump_s is None else round(self.last_time_jump_s, 3),
            "system_time": self.clock.time(),
            "counters": self.source.counters(),
        }

    def check(self, now: float) -> None:
        last = self.last
        since = last.monotonic if last is not None else self.opened_mono
        if since is None:
            return
        if now - since > 5.0:
            self.health.degraded(self.name, f"no data from the receiver for {now - since:.0f}s")
        elif last is not None and last.mode < FixMode.FIX_2D:
            self.health.degraded(self.name, f"no fix (mode {int(last.mode)})")
        elif self.time_suspect:
            self.health.degraded(
                self.name,
                f"receiver time jumped by {self.last_time_jump_s or 0.0:+.1f} s and disagrees with the system clock: "
                "attestations use holdover time",
            )
        elif last is not None:
            self.health.ok(self.name, f"{last.mode.name.lower().replace('fix_', '')} fix")

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "fixes": self.fixes,
            "counters": self.source.counters(),
            "mode": int(last.mode) if last else 0,
            "time": last.time.isoformat() if last and last.time else None,
            "lat": last.lat if last else None,
            "lon": last.lon if last else None,
        }


class CameraService:
    """Reads a camera, keeps the newest frame and a frame count (models on frames come later)."""

    def __init__(self, camera: Camera, health: HealthRegistry, clock: Clock, *, fps: float) -> None:
        self.camera = camera
        self.health = health
        self.clock = clock
        self.name = f"camera.{camera.name}"
        self.expected_period = 1.0 / fps
        self.frames = 0
        self.last: Frame | None = None
        self.opened_mono: float | None = None

    async def run(self) -> None:
        await self.camera.open()
        self.opened_mono = self.clock.monotonic()
        self.health.ok(self.name, "open, waiting for frames")
        try:
            async for frame in self.camera.frames():
                self.frames += 1
                self.last = frame
        finally:
            await self.camera.close()

    def check(self, now: float) -> None:
        since = self.last.monotonic if self.last is not None else self.opened_mono
        if since is None:
            return
        if now - since > max(2.0, 5 * self.expected_period):
            self.health.degraded(self.name, f"no frames for {now - since:.0f}s")
        elif self.last is not None:
            self.health.ok(self.name, f"{self.last.width}x{self.last.height} {self.last.pixel_format}")

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "frames": self.frames,
            "last": None
            if last is None
            else {"sequence": last.sequence, "timestamp": last.timestamp, "width": last.width, "height": last.height},
        }


class StateService:
    """Snapshot the fusion core at a fixed rate and hand each VehicleState to the sinks."""

    def __init__(self, fusion: Fusion, clock: Clock, rate_hz: float, sinks: Sequence[StateSink] = ()) -> None:
        self.fusion = fusion
        self.clock = clock
        self.period = 1.0 / rate_hz
        self.sinks = list(sinks)
        self.last: VehicleState | None = None
        self.snapshots = 0
        self.late = 0

    async def run(self) -> None:
        deadline = self.clock.monotonic()
        while True:
            deadline += self.period
            await self.clock.sleep_until(deadline)
            now = self.clock.monotonic()
            if now - deadline > self.period:  # we fell behind: skip, do not burst
                self.late += 1
                deadline = now
            state = self.fusion.snapshot(now, self.clock.time())
            self.last = state
            self.snapshots += 1
            for sink in self.sinks:
                try:
                    sink(state)
                except Exception as err:  # noqa: BLE001 - one bad consumer must not stop the state
                    log.error("state sink %r failed: %s", sink, err, exc_info=err)


class HealthService:
    """Once per ``interval``: evaluate every checker, push STATUS/WATCHDOG to systemd."""

    def __init__(
        self,
        health: HealthRegistry,
        clock: Clock,
        checkers: Sequence[Callable[[float], None]],
        notifier: Notifier,
        *,
        interval: float = 1.0,
        watchdog: float | None = None,
    ) -> None:
        self.health = health
        self.clock = clock
        self.checkers = list(checkers)
        self.notifier = notifier
        self.interval = min(interval, watchdog) if watchdog else interval
        self.watchdog = watchdog is not None
        self.ready_sent = False

    async def run(self) -> None:
        last_status = ""
        while True:
            now = self.clock.monotonic()
            for check in self.checkers:
                try:
                    check(now)
                except Exception as err:  # noqa: BLE001 - a broken check is itself a health problem
                    log.error("health check %r failed: %s", check, err, exc_info=err)
            summary = self.health.summary()
            if not self.ready_sent:
                self.notifier.ready(summary)
                self.ready_sent = True
            elif summary != last_status:
                self.notifier.status(summary)
            last_status = summary
            if self.watchdog:
                self.notifier.watchdog()
            await self.clock.sleep(self.interval)
