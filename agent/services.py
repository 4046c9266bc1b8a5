"""The OBU's data-path services: one per CAN bus, one for GNSS, one producing VehicleState
snapshots, and the health/watchdog loop. Each is a small class with ``async run()`` that the
supervisor keeps alive; each reports its own health and counters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from hal.errors import DecodeError, HalError
from hal.interfaces import Camera, CanPort, Clock, GnssSource
from hal.types import CanBusState, FixMode, Frame, GnssFix, SignalSample, VehicleState

from .fusion import Fusion
from .health import HealthRegistry
from .sdnotify import Notifier

__all__ = ["CameraService", "CanService", "GnssService", "HealthService", "StateService"]

log = logging.getLogger(__name__)

StateSink = Callable[[VehicleState], None]


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

    async def run(self) -> None:
        await self.port.open()
        self.opened_mono = self.clock.monotonic()
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
            if frame.is_error_frame or frame.is_remote_frame:
                continue
            self.frames += 1
            for decoder in self.decoders:
                try:
                    samples = decoder.decode(frame)
                except DecodeError as err:
                    self.decode_errors += 1
                    self.last_error = str(err)
                    log.log(5, "%s: %s", self.name, err)
                    continue
                self.signals += len(samples)
                for s in samples:
                    fusion_on(s)
        if batch:
            self.last_frame_mono = batch[-1].monotonic or self.clock.monotonic()

    def check(self, now: float) -> None:
        stats = self.port.stats()
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

    async def run(self) -> None:
        await self.source.open()
        self.opened_mono = self.clock.monotonic()
        self.health.ok(self.name, "open, waiting for data")
        try:
            async for fix in self.source.fixes():
                self.fixes += 1
                self.last = fix
                self.fusion.on_fix(fix)
        finally:
            await self.source.close()

    def check(self, now: float) -> None:
        last = self.last
        since = last.monotonic if last is not None else self.opened_mono
        if since is None:
            return
        if now - since > 5.0:
            self.health.degraded(self.name, f"no data from the receiver for {now - since:.0f}s")
        elif last is not None and last.mode < FixMode.FIX_2D:
            self.health.degraded(self.name, f"no fix (mode {int(last.mode)})")
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
