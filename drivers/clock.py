"""Clocks: the real one, and a simulated one that tests and benches advance by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

from hal.interfaces import Clock

__all__ = ["ScaledClock", "SimulatedClock", "SystemClock", "sleep_until_or"]


class SystemClock(Clock):
    """``time.monotonic`` / ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock(Clock):
    """Real time run ``speed`` times faster: from its creation, monotonic and UTC time advance
    ``speed`` seconds per real second and a sleep lasts ``1/speed`` of its length. Everything
    timed by one ``ScaledClock`` keeps its proportions, so a bench can drive an agent through a
    scripted drive faster than real time as long as the CPU keeps up (what still runs on real
    time -- thread hand-offs, socket I/O -- only adds latency, ``speed`` times larger in
    scaled seconds). ``speed`` 1 is the system clock (from its own start)."""

    def __init__(self, speed: float, *, start_utc: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0 (got {speed})")
        self.speed = float(speed)
        self._r0 = time.monotonic()
        self._utc0 = time.time() if start_utc is None else start_utc

    def monotonic(self) -> float:
        return self._r0 + (time.monotonic() - self._r0) * self.speed

    def time(self) -> float:
        return self._utc0 + (time.monotonic() - self._r0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class SimulatedClock(Clock):
    """A clock that moves only when ``advance()`` is called.

    Sleepers wake in deadline order as time passes them. ``start_utc`` sets what ``time()``
    returns at monotonic 0.
    """

    def __init__(self, start_utc: float = 1_700_000_000.0, start_monotonic: float = 0.0) -> None:
        self._now = start_monotonic
        self._offset = start_utc - start_monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its deadline in order."""
        target = self._now + seconds
        while (deadline := self.next_deadline) is not None and deadline <= target:
            _, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            fut.set_result(None)
            # let the woken task (and whatever it schedules) run before the next deadline
            for _ in range(5):
                await asyncio.sleep(0)
        self._now = target
        await asyncio.sleep(0)

    def jump_wall_clock(self, seconds: float) -> None:
        """Step UTC time (a clock jump) without moving monotonic time."""
        self._offset += seconds


async def sleep_until_or(clock: Clock, deadline: float, event: asyncio.Event) -> bool:
    """Sleep on ``clock`` until monotonic ``deadline`` or until ``event`` is set, whichever comes
    first. True when the deadline came with the event still clear (a close, a wake-up, ...)."""
    if event.is_set():
        return False
    if clock.monotonic() >= deadline:
        return True
    sleeper = asyncio.ensure_future(clock.sleep_until(deadline))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waiter):
            task.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)
    return not event.is_set()
