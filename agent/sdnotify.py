"""sd_notify(3): READY=1, STATUS=..., WATCHDOG=1, STOPPING=1 to systemd when it asks for them
through NOTIFY_SOCKET. Without NOTIFY_SOCKET every call is a no-op."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self._addr = addr
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines; returns whether they were sent. Never raises."""
        if not self._addr:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._addr)
            return True
        except OSError as err:
            log.warning("sd_notify to %r failed: %s", self._addr, err)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, **({"status": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(status=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify(watchdog=1)

    def stopping(self) -> bool:
        return self.notify(stopping=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 1e6 / 2)
    except ValueError:
        return None
