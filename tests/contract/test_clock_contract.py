"""Clock contract: every Clock backend (system, simulated, scaled) keeps the same promises."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from drivers.clock import ScaledClock, SimulatedClock, SystemClock
from hal.interfaces import Clock
from hal.registry import load_backend

Advance = Callable[[float], Awaitable[None]]


@pytest.fixture(params=["system", "simulated", "scaled"])
def clock_and_advance(request: pytest.FixtureRequest) -> tuple[Clock, Advance]:
    if request.param == "scaled":  # 4x real time: advancing 1 s of its time takes 0.25 s
        scaled = ScaledClock(4.0)

        async def quick(seconds: float) -> None:
            await asyncio.sleep(seconds / scaled.speed)

        return scaled, quick
    cls = load_backend("clock", request.param)
    clock = cls()
    if isinstance(clock, SimulatedClock):
        return clock, clock.advance

    async def real(seconds: float) -> None:
        await asyncio.sleep(seconds)

    return clock, real


async def test_monotonic_never_goes_back_and_sleep_waits(clock_and_advance: tuple[Clock, Advance]) -> None:
    clock, advance = clock_and_advance
    t0 = clock.monotonic()
    task = asyncio.create_task(clock.sleep(0.05))
    await advance(0.02)
    assert not task.done()
    await advance(0.06)
    await asyncio.wait_for(task, 1.0)
    t1 = clock.monotonic()
    assert t1 - t0 >= 0.05


async def test_sleep_until_a_deadline(clock_and_advance: tuple[Clock, Advance]) -> None:
    clock, advance = clock_and_advance
    deadline = clock.monotonic() + 0.03
    task = asyncio.create_task(clock.sleep_until(deadline))
    await advance(0.05)
    await asyncio.wait_for(task, 1.0)
    assert clock.monotonic() >= deadline
    await asyncio.wait_for(clock.sleep_until(deadline - 1.0), 1.0)  # a past deadline returns at once


async def test_wall_clock_is_utc_epoch_seconds(clock_and_advance: tuple[Clock, Advance]) -> None:
    clock, advance = clock_and_advance
    before = clock.time()
    await advance(0.01)
    assert 1.5e9 < before <= clock.time()


async def test_simulated_sleepers_wake_in_deadline_order() -> None:
    clock = SimulatedClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.0))]
    await asyncio.sleep(0)
    started = time.monotonic()
    await clock.advance(10.0)
    await asyncio.gather(*tasks)
    assert woke == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert time.monotonic() - started < 0.5  # simulated time costs no real time
    clock.jump_wall_clock(-3600)
    assert clock.monotonic() == 10.0  # a wall-clock jump leaves monotonic time alone


def test_system_clock_is_the_default_backend() -> None:
    assert isinstance(load_backend("clock", "system")(), SystemClock)


async def test_a_scaled_clock_runs_its_speed_times_faster() -> None:
    clock = ScaledClock(5.0)
    m0, u0, r0 = clock.monotonic(), clock.time(), time.monotonic()
    await clock.sleep(0.5)  # 0.1 s of real time
    real = time.monotonic() - r0
    assert 0.09 <= real < 0.4
    assert clock.monotonic() - m0 == pytest.approx(5.0 * real, rel=0.05)
    assert clock.time() - u0 == pytest.approx(clock.monotonic() - m0, abs=0.01)
    with pytest.raises(ValueError, match="speed"):
        ScaledClock(0)
