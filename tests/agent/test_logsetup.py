from __future__ import annotations

import io
import logging

import pytest

from agent.logsetup import TRACE, setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_under_systemd_lines_carry_syslog_priorities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    out = io.StringIO()
    setup_logging("debug", stream=out)
    log = logging.getLogger("agent.test")
    log.error("bus-off on can0")
    log.warning("no fix\nsecond line")
    log.info("started")
    log.debug("detail")
    assert out.getvalue().splitlines() == [
        "<3>agent.test: bus-off on can0",
        "<4>agent.test: no fix",
        "<4>second line",
        "<6>agent.test: started",
        "<7>agent.test: detail",
    ]


def test_on_a_terminal_lines_carry_time_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    setup_logging("trace", stream=out)
    logging.getLogger("drivers.can_bus").log(TRACE, "frame 0x1A0")
    line = out.getvalue().strip()
    assert line.endswith("TRACE   drivers.can_bus: frame 0x1A0")
    assert logging.getLogger().level == TRACE
