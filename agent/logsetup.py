"""The one logging setup, called only by entry points. Under systemd (JOURNAL_STREAM set)
lines carry sd-daemon(3) ``<N>`` priority prefixes and no timestamps (journald adds them);
on a terminal they carry local time. TRACE (5) is below DEBUG, for per-frame traffic."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["TRACE", "setup_logging"]

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in sorted(_PRIORITY.items(), reverse=True) if record.levelno >= lvl), 7)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: str | int = "info", *, stream: object = None) -> None:
    lvl = TRACE if str(level).lower() == "trace" else logging.getLevelName(str(level).upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
