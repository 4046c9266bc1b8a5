"""Runs the agent's long-lived services in one TaskGroup, each named, each restarted with
capped, jittered exponential backoff when it fails. A failing service never takes the others
down; its health says why it failed and when it will be retried."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from hal.interfaces import Clock

from .health import HealthRegistry

__all__ = ["ServiceSpec", "Supervisor"]

log = logging.getLogger(__name__)

Restart = Literal["on-failure", "always", "never"]


@dataclass
class ServiceSpec:
    name: str
    run: Callable[[], Awaitable[None]]
    restart: Restart = "on-failure"
    #: seconds a run must last before its failure count is forgotten
    stable_after: float = 60.0
    restarts: int = field(default=0, init=False)
    finished: bool = field(default=False, init=False)


class Supervisor:
    def __init__(
        self,
        health: HealthRegistry,
        clock: Clock,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.health = health
        self.clock = clock
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._rng = rng or random.Random()
        self.services: dict[str, ServiceSpec] = {}

    def add(self, name: str, run: Callable[[], Awaitable[None]], restart: Restart = "on-failure") -> ServiceSpec:
        if name in self.services:
            raise ValueError(f"service {name!r} added twice")
        spec = ServiceSpec(name, run, restart)
        self.services[name] = spec
        return spec

    def backoff(self, failures: int) -> float:
        """Delay before restart number ``failures`` (1-based): full jitter in [d/2, d]."""
        delay: float = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, failures - 1))
        return delay * self._rng.uniform(0.5, 1.0)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for spec in self.services.values():
                tg.create_task(self._supervise(spec), name=spec.name)

    async def _supervise(self, spec: ServiceSpec) -> None:
        failures = 0
        while True:
            started = self.clock.monotonic()
            try:
                await spec.run()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a service's failure must not kill the agent
                if self.clock.monotonic() - started >= spec.stable_after:
                    failures = 0
                failures += 1
                spec.restarts += 1
                log.error("service %s failed: %s", spec.name, err, exc_info=err)
                if spec.restart == "never":
                    self.health.failed(spec.name, f"{type(err).__name__}: {err}; not restarted")
                    spec.finished = True
                    return
                delay = self.backoff(failures)
                self.health.failed(spec.name, f"{type(err).__name__}: {err}; restart {failures} in {delay:.1f}s")
                await self.clock.sleep(delay)
                continue
            if spec.restart != "always":
                log.info("service %s finished", spec.name)
                spec.finished = True
                return
            await self.clock.sleep(self.backoff_initial)
