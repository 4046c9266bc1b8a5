"""A simulated OBD-II ECU: answers mode 01 requests from a table of PID values.

``ObdEcu`` is sans-IO (``on_frame(frame, now=)`` -> frames to send, ``poll(now=)`` for paced
consecutive frames); ``ObdEcuService`` runs one on a ``CanPort`` with a ``Clock``. Used by the
tests and the test bench.

Behaviour (ISO 15031-5 / J1979 as ECUs implement it): PID 0x00 is always answered; the
bitmaps 0x20, 0x40, ... are answered when the previous one advertises them; a request for
several PIDs is answered with the supported ones in one (multi-frame, when long) response; a
request with no supported PID gets no answer; another service gets 0x7F ``serviceNotSupported``
on physical requests only. Knobs for tests: ``negative`` (PID -> NRC to answer with),
``silent`` (PIDs advertised but never answered), and raw ``bytes`` values, sent as they are
(which lets a test send malformed data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping

from hal.interfaces import CanPort, Clock
from hal.types import CanFrame

from .clock import sleep_until_or
from .isotp import IsoTpConfig, IsoTpError, IsoTpReceiver, IsoTpSender
from .obd import (
    BITMAP_PIDS,
    MODE_CURRENT_DATA,
    NEGATIVE_RESPONSE,
    ObdAddressing,
    bitmap,
    encode_pid,
)

__all__ = ["ObdEcu", "ObdEcuService"]

log = logging.getLogger(__name__)
#: level of per-frame logs (below DEBUG)
TRACE = 5


class ObdEcu:
    """One ECU. ``values``: PID -> value in J1979's unit (encoded with the J1979 formula), or
    ``bytes`` sent as the PID's data as they are."""

    def __init__(
        self,
        values: Mapping[int, float | bytes],
        *,
        ecu: int = 0,
        addressing: ObdAddressing = ObdAddressing(),  # noqa: B008 (frozen, immutable)
        padding: int | None = 0x00,
        isotp: IsoTpConfig | None = None,
        negative: Mapping[int, int] | None = None,
        silent: Collection[int] = (),
        channel: str = "",
    ) -> None:
        self.ecu = ecu
        self.addressing = addressing
        self.channel = channel
        self.negative = dict(negative or {})
        self.silent = set(silent)
        self._data: dict[int, bytes] = {}
        for pid, value in values.items():
            self.set_value(pid, value)
        cfg = isotp or IsoTpConfig(padding=padding)
        self._sender = IsoTpSender(cfg)
        self._receiver = IsoTpReceiver(cfg)
        self.requests = 0

    def set_value(self, pid: int, value: float | bytes) -> None:
        self._data[pid] = value if isinstance(value, bytes) else encode_pid(pid, value)

    @property
    def supported(self) -> set[int]:
        """The PIDs this ECU advertises (values, negative and silent ones)."""
        return set(self._data) | set(self.negative) | self.silent

    @property
    def deadline(self) -> float | None:
        return self._sender.deadline

    def poll(self, *, now: float) -> list[CanFrame]:
        """Consecutive frames of a long response that are due."""
        try:
            return [self._frame(d, now) for d in self._sender.poll(now=now)]
        except IsoTpError as err:
            log.log(TRACE, "ecu %d: %s", self.ecu, err)
            return []

    def on_frame(self, frame: CanFrame, *, now: float) -> list[CanFrame]:
        """Frames to send in answer to one received frame."""
        target = self.addressing.ecu_of_request(frame)
        if target is None or (target != -1 and target != self.ecu) or frame.is_remote_frame:
            return []
        physical = target != -1
        data = frame.data
        if data and data[0] >> 4 == 3:  # flow control for our multi-frame response
            if not physical:
                return []
            try:
                return [self._frame(d, now) for d in self._sender.on_frame(data, now=now)]
            except IsoTpError as err:
                log.log(TRACE, "ecu %d: %s", self.ecu, err)
                return []
        try:
            payload = self._receiver.on_frame(data, now=now).payload
        except IsoTpError as err:
            log.log(TRACE, "ecu %d: bad request: %s", self.ecu, err)
            return []
        if payload is None:
            return []
        self.requests += 1
        response = self.answer(payload, physical=physical)
        if response is None:
            return []
        if not self._sender.idle:
            self._sender.abort()
        return [self._frame(d, now) for d in self._sender.send(response, now=now)]

    def answer(self, request: bytes, *, physical: bool) -> bytes | None:
        """The response payload to a request payload, or ``None`` for no answer."""
        service = request[0]
        if service != MODE_CURRENT_DATA:
            return bytes([NEGATIVE_RESPONSE, service, 0x11]) if physical else None
        pids = request[1:]
        if not 1 <= len(pids) <= 6:
            return bytes([NEGATIVE_RESPONSE, service, 0x13]) if physical else None
        body = bytearray([MODE_CURRENT_DATA | 0x40])
        for pid in pids:
            if pid in self.negative:
                return bytes([NEGATIVE_RESPONSE, service, self.negative[pid]])
            data = self._pid_data(pid)
            if data is not None:
                body += bytes([pid]) + data
        return bytes(body) if len(body) > 1 else None

    def _pid_data(self, pid: int) -> bytes | None:
        if pid in BITMAP_PIDS:
            supported = self.supported
            if pid != 0x00 and not any(p > pid for p in supported):
                return None  # the previous bitmap did not advertise this one
            pids = set(supported)
            # advertise the next bitmap when there are PIDs beyond this one's range
            if any(p > pid + 0x20 for p in supported):
                pids.add(pid + 0x20)
            return bitmap(pid, pids)
        if pid in self.silent:
            return None
        return self._data.get(pid)

    def _frame(self, data: bytes, now: float) -> CanFrame:
        return CanFrame(
            arbitration_id=self.addressing.response_id(self.ecu),
            data=data,
            is_extended_id=self.addressing.extended,
            channel=self.channel,
            timestamp=now,
            is_rx=False,
        )


class ObdEcuService:
    """Runs ``ObdEcu``s on a port: answers requests, paces long responses."""

    def __init__(self, port: CanPort, clock: Clock, *ecus: ObdEcu) -> None:
        self.port = port
        self.clock = clock
        self.ecus = ecus
        self._wake = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(self._receive(), name="obd-ecu-rx")
            pacer = tg.create_task(self._pace(), name="obd-ecu-pace")
            await receiver
            pacer.cancel()

    async def _receive(self) -> None:
        async for frame in self.port.frames():
            for ecu in self.ecus:
                for out in ecu.on_frame(frame, now=self.clock.monotonic()):
                    await self.port.send(out)
            self._wake.set()

    async def _pace(self) -> None:
        while True:
            deadlines = [d for e in self.ecus if (d := e.deadline) is not None]
            if not deadlines:
                await self._wake.wait()
                self._wake.clear()
                continue
            self._wake.clear()
            await sleep_until_or(self.clock, min(deadlines), self._wake)
            now = self.clock.monotonic()
            for ecu in self.ecus:
                for out in ecu.poll(now=now):
                    await self.port.send(out)
