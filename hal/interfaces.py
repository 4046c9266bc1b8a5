"""The hardware boundary: what the agent needs from a CAN bus, a GNSS receiver, a camera
and a clock. Backends in ``drivers/`` implement these; nothing here does I/O.

Every interface is async and follows one life cycle: construct (no I/O), ``await open()``
(checks it talks to the right device and raises ``hal.errors.DeviceError`` if not), use,
``await close()`` (idempotent). All are async context managers through ``HalDevice``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

from .types import CanBusStats, CanFilter, CanFrame, Frame, GnssFix

__all__ = ["Camera", "CanPort", "Clock", "GnssSource", "HalDevice"]


class HalDevice(abc.ABC):
    """Open/close life cycle shared by all devices."""

    #: the agent's name for this device (``can0``, ``gnss``, ``cabin``)
    name: str

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class CanPort(HalDevice):
    """One CAN (or CAN FD) bus.

    ``frames()`` yields received frames in order; iteration ends when the port is closed or a
    finite source (a log replay) is exhausted. The receive path never blocks the event loop.
    """

    @abc.abstractmethod
    def frames(self) -> AsyncIterator[CanFrame]: ...

    @abc.abstractmethod
    async def send(self, frame: CanFrame) -> None: ...

    @abc.abstractmethod
    def set_filters(self, filters: Sequence[CanFilter] | None) -> None:
        """Replace the acceptance filters (``None``: accept everything)."""

    @abc.abstractmethod
    def stats(self) -> CanBusStats: ...


class GnssSource(HalDevice):
    """A GNSS receiver. ``fixes()`` yields the fused fix after each update of it."""

    @abc.abstractmethod
    def fixes(self) -> AsyncIterator[GnssFix]: ...

    @abc.abstractmethod
    def counters(self) -> dict[str, int]:
        """Named counters (sentences accepted, checksum errors, ...) for health."""


class Camera(HalDevice):
    """A camera or a recorded stream of frames; ``frames()`` yields them as captured."""

    @abc.abstractmethod
    def frames(self) -> AsyncIterator[Frame]: ...


class Clock(abc.ABC):
    """Time as the agent sees it; injected so tests and benches can run on simulated time."""

    @abc.abstractmethod
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""

    @abc.abstractmethod
    def time(self) -> float:
        """UTC wall-clock seconds since the Unix epoch."""

    @abc.abstractmethod
    async def sleep(self, seconds: float) -> None: ...

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``monotonic() >= deadline``."""
        delay = deadline - self.monotonic()
        if delay > 0:
            await self.sleep(delay)
