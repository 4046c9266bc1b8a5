"""Health per subsystem (ok / degraded / failed, each with a reason), rolled up for
systemd's STATUS= line and the diagnostics socket."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Health", "HealthRegistry", "Status"]

log = logging.getLogger(__name__)


class Status(enum.IntEnum):
    OK = 0
    DEGRADED = 1
    FAILED = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Health:
    status: Status
    reason: str = ""
    since: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"status": str(self.status), "reason": self.reason, "since": self.since}


class HealthRegistry:
    """Subsystems report with ``set()``; state changes are logged once, not every report."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._items: dict[str, Health] = {}

    def set(self, name: str, status: Status, reason: str = "") -> None:
        old = self._items.get(name)
        if old is not None and old.status == status and old.reason == reason:
            return
        since = old.since if old is not None and old.status == status else self._now()
        self._items[name] = Health(status, reason, since)
        if old is None or old.status != status:
            level = logging.INFO if status is Status.OK else logging.WARNING
            log.log(level, "%s: %s%s", name, status, f" ({reason})" if reason else "")

    def ok(self, name: str, reason: str = "") -> None:
        self.set(name, Status.OK, reason)

    def degraded(self, name: str, reason: str) -> None:
        self.set(name, Status.DEGRADED, reason)

    def failed(self, name: str, reason: str) -> None:
        self.set(name, Status.FAILED, reason)

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> Health | None:
        return self._items.get(name)

    def snapshot(self) -> dict[str, Health]:
        return dict(sorted(self._items.items()))

    def overall(self) -> Status:
        return max((h.status for h in self._items.values()), default=Status.OK)

    def summary(self) -> str:
        """One line for systemd STATUS=: overall state and the subsystems that are not ok."""
        bad = [f"{n} {h.status}: {h.reason}" for n, h in self.snapshot().items() if h.status is not Status.OK]
        return f"{self.overall()}" + (f"; {'; '.join(bad)}" if bad else f" ({len(self._items)} subsystems)")
