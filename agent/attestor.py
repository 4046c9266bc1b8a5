"""The device's attestations: signing with the device key, time and position from the vehicle,
and a chain that survives restarts.

``Attestor.attest(kind, body)`` builds and signs one attestation (``ledger_lite.attestation``)
and stores it in ``<data_dir>/attest/chain/<seq>.cose`` (write to a temporary file, fsync,
rename, fsync the directory) *before* returning it, so a restart (kill -9 included) resumes the
chain after the newest stored attestation and never reuses a sequence number. The outbox of the
networking issue will send them from there.

Time: UTC from the GNSS receiver while it has a fix (the fix's time advanced by its age),
``holdover`` (the last fix's time advanced on the monotonic clock) for ``holdover_max`` seconds
after the fix is lost, then the system clock. Position: the fused ``VehicleState`` position
(dead-reckoned through short gaps), when there is one.

``SummaryService`` is a VehicleState sink that attests a ``sensor_summary`` every
``interval`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.interfaces import Clock
from hal.types import FixMode, GnssFix, VehicleState
from ledger_lite.attestation import AttestationBuilder, Position, TimeSource, attestation_id

from .keystore import DeviceIdentity
from .outbox import AsyncOutbox, OutboxError

__all__ = ["Attestor", "SummaryService", "TimeReading", "chain_dir"]

log = logging.getLogger(__name__)

HOLDOVER_MAX = 600.0


def chain_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "attest" / "chain"


@dataclass(frozen=True, slots=True)
class TimeReading:
    utc: float
    source: TimeSource


def gnss_time(
    fix: GnssFix | None, clock: Clock, *, holdover_max: float = HOLDOVER_MAX, held_anchor: float | None = None
) -> TimeReading:
    """UTC for an attestation: GNSS while fixed, holdover after, else the system clock.
    ``held_anchor`` (GNSS UTC minus monotonic of the last consistent report, given while the
    receiver's time is suspect after a jump): hold over from it instead of the jumped time."""
    now = clock.monotonic()
    if held_anchor is not None:
        return TimeReading(held_anchor + now, TimeSource.HOLDOVER)
    if fix is not None and fix.time is not None:
        age = now - fix.monotonic
        utc = fix.time.timestamp() + age
        if fix.mode >= FixMode.FIX_2D and age <= 2.0:
            return TimeReading(utc, TimeSource.GNSS)
        if age <= holdover_max:
            return TimeReading(utc, TimeSource.HOLDOVER)
    return TimeReading(clock.time(), TimeSource.SYSTEM)


class Attestor:
    def __init__(
        self,
        identity: DeviceIdentity,
        data_dir: str | os.PathLike[str],
        clock: Clock,
        *,
        fix: Callable[[], GnssFix | None] = lambda: None,
        state: Callable[[], VehicleState | None] = lambda: None,
        outbox: AsyncOutbox | None = None,
        cell: Callable[[], str] = lambda: "",
        held_time: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.identity = identity
        self.dir = chain_dir(data_dir)
        self.clock = clock
        self._fix = fix
        #: the GNSS service's held anchor while the receiver's time is suspect (after a jump)
        self._held_time = held_time
        self._state = state
        self._builder: AttestationBuilder | None = None
        #: where attestations go to be sent (to the current cell) once they are in the chain
        self.outbox = outbox
        self._cell = cell
        self._lock = asyncio.Lock()
        self.count = 0
        #: attestations not put in the outbox because no cell was known (they stay in the chain files)
        self.unqueued = 0
        self.last_id: bytes | None = None

    def _open(self) -> AttestationBuilder:
        """Resume after the newest stored attestation (blocking file I/O: called in a thread)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.dir.glob("*.tmp"):  # a write that a crash interrupted never happened
            stale.unlink()
        stored = sorted(p for p in self.dir.glob("*.cose") if p.stem.isdigit())
        if not stored:
            return AttestationBuilder(self.identity.key, self.identity.did)
        last = stored[-1].read_bytes()
        builder = AttestationBuilder.resume(self.identity.key, self.identity.did, last)
        log.info("attestation chain resumes at seq %d (%s)", builder.state.next_seq, stored[-1].name)
        return builder

    def _store(self, seq: int, data: bytes) -> Path:
        path = self.dir / f"{seq:012d}.cose"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def position(self) -> Position | None:
        s = self._state()
        if s is None or s.lat is None or s.lon is None:
            return None
        return Position(s.lat, s.lon, s.alt if s.alt is not None and math.isfinite(s.alt) else None)

    async def attest(self, kind: str, body: dict[str, Any], *, model: str | None = None) -> bytes:
        """Sign, store durably, then return the attestation (its id is SHA-256 of the bytes)."""
        async with self._lock:
            if self._builder is None:
                self._builder = await asyncio.to_thread(self._open)
            builder = self._builder
            seq = builder.state.next_seq
            reading = gnss_time(self._fix(), self.clock, held_anchor=self._held_time())
            data = builder.build(
                kind, body, time=reading.utc, time_source=reading.source, position=self.position(), model=model
            )
            try:
                await asyncio.to_thread(self._store, seq, data)
            except OSError:
                self._builder = None  # re-read the chain from disk before the next one
                raise
            self.count += 1
            self.last_id = attestation_id(data)
        log.debug("attested %s seq %d (%s)", kind, seq, reading.source)
        cell = self._cell()
        if self.outbox is not None and cell:  # in the chain already: a failed enqueue loses nothing
            await self.outbox.enqueue(data, cell=cell, kind=kind)
        elif self.outbox is not None:
            self.unqueued += 1  # no cell configured or joined yet: kept in the chain files only
        return data

    def status(self) -> dict[str, Any]:
        state = self._builder.state if self._builder is not None else None
        return {
            "did": self.identity.did,
            "attested": self.count,
            "unqueued_no_cell": self.unqueued,
            "next_seq": state.next_seq if state else None,
            "last_id": self.last_id.hex() if self.last_id else None,
            "dir": str(self.dir),
        }


def _clamp_accel(value: float) -> float:
    """Into the schema's range (a sensor glitch must not make the summary unsignable)."""
    return max(-30.0, min(30.0, value))


class SummaryService:
    """Accumulates VehicleState snapshots; every ``interval`` s attests a ``sensor_summary``."""

    def __init__(
        self, attestor: Attestor, clock: Clock, interval: float, counters: Callable[[], tuple[int, int]]
    ) -> None:
        self.attestor = attestor
        self.clock = clock
        self.interval = interval
        self.counters = counters  # (CAN frames, CAN decode errors) so far
        self.failures = 0
        self._reset(None)

    def _reset(self, last: VehicleState | None) -> None:
        self.samples = 0
        self.distance = 0.0
        self.speed_sum = 0.0
        self.speed_n = 0
        self.speed_max = 0.0
        self.along_min: float | None = None
        self.along_max: float | None = None
        self.alat_max: float | None = None
        self.fixed = 0
        self.dr_time = 0.0
        self.last = last
        self.start = self.clock.monotonic()
        self.frames0, self.errors0 = self.counters()

    def __call__(self, s: VehicleState) -> None:
        dt = s.monotonic - self.last.monotonic if self.last is not None else 0.0
        self.samples += 1
        if s.speed is not None:
            self.speed_sum += s.speed
            self.speed_n += 1
            self.speed_max = max(self.speed_max, s.speed)
            self.distance += s.speed * max(0.0, dt)
        if s.accel_longitudinal is not None:
            a = s.accel_longitudinal
            self.along_min = a if self.along_min is None else min(self.along_min, a)
            self.along_max = a if self.along_max is None else max(self.along_max, a)
        if s.accel_lateral is not None:
            self.alat_max = max(self.alat_max or 0.0, abs(s.accel_lateral))
        self.fixed += s.gnss_mode >= FixMode.FIX_2D
        if s.dead_reckoning:
            self.dr_time += max(0.0, dt)
        self.last = s

    def body(self) -> dict[str, Any] | None:
        if not self.samples or not self.speed_n:
            return None
        frames, errors = self.counters()
        body: dict[str, Any] = {
            "duration": max(0.001, self.clock.monotonic() - self.start),
            "samples": self.samples,
            "distance": self.distance,
            "speed_mean": min(150.0, self.speed_sum / self.speed_n),
            "speed_max": min(150.0, self.speed_max),
            "gnss_fix_ratio": self.fixed / self.samples,
            "dead_reckoning": self.dr_time,
            "can_frames": frames - self.frames0,
            "can_errors": errors - self.errors0,
        }
        if self.along_min is not None and self.along_max is not None:
            body["accel_long_min"] = _clamp_accel(self.along_min)
            body["accel_long_max"] = _clamp_accel(self.along_max)
        if self.alat_max is not None:
            body["accel_lat_max"] = min(30.0, self.alat_max)
        return body

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            body = self.body()
            self._reset(self.last)
            if body is None:
                continue
            try:
                await self.attestor.attest("sensor_summary", body)
            except (OSError, OutboxError) as err:  # disk full, read-only, outbox full: say so, keep driving
                self.failures += 1
                log.error("could not store the sensor summary attestation: %s", err)
