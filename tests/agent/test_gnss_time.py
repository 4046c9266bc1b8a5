"""GNSS time jumps: the receiver's time is checked against the monotonic clock; a step away from
the system clock makes it suspect (health degraded, attestations in holdover time) until it
comes back or holds; a step toward the system clock is a correction."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from agent.attestor import gnss_time
from agent.health import HealthRegistry, Status
from agent.services import TIME_RELOCK_REPORTS, GnssService
from drivers.clock import SimulatedClock
from hal.types import FixMode, GnssFix
from ledger_lite.attestation import TimeSource

START = 1_700_000_000.0


class _Fusion:
    def on_fix(self, fix: GnssFix) -> None:
        pass


def _service(clock: SimulatedClock) -> tuple[GnssService, HealthRegistry]:
    health = HealthRegistry(clock.monotonic)
    svc = GnssService(SimpleNamespace(counters=dict), _Fusion(), health, clock)  # type: ignore[arg-type]
    svc.opened_mono = clock.monotonic()
    return svc, health


def _report(svc: GnssService, clock: SimulatedClock, step: float = 0.0) -> GnssFix:
    """One 1 Hz report whose time is the true time plus ``step`` seconds."""
    clock._now += 1.0  # noqa: SLF001 - a second passes (no sleepers here)
    fix = GnssFix(
        mode=FixMode.FIX_3D,
        time=datetime.fromtimestamp(clock.time() + step, UTC),
        lat=48.1,
        lon=11.5,
        monotonic=clock.monotonic(),
    )
    svc.last = fix
    svc._note(fix)  # noqa: SLF001 - what run() does per report
    svc.check(clock.monotonic())
    return fix


def _status(health: HealthRegistry) -> Any:
    return health.snapshot()["gnss"]


def test_a_jump_away_from_the_system_clock_is_suspect_until_the_time_comes_back() -> None:
    clock = SimulatedClock(START)
    svc, health = _service(clock)
    for _ in range(3):
        fix = _report(svc, clock)
    assert not svc.time_suspect and _status(health).status is Status.OK
    assert gnss_time(fix, clock, held_anchor=svc.held_time_anchor()).source is TimeSource.GNSS
    for _ in range(5):
        fix = _report(svc, clock, step=30.0)
    assert svc.time_suspect and svc.time_jumps == 1 and svc.last_time_jump_s == pytest.approx(30.0)
    st = _status(health)
    assert st.status is Status.DEGRADED and "jumped by +30.0 s" in st.reason
    # attestations hold over from the last consistent time: the true time, not 30 s ahead
    reading = gnss_time(fix, clock, held_anchor=svc.held_time_anchor())
    assert reading.source is TimeSource.HOLDOVER and reading.utc == pytest.approx(clock.time())
    assert svc.fix_status()["time_suspect"] is True and svc.fix_status()["time_offset_ms"] == pytest.approx(30_000)
    _report(svc, clock)  # back to the true time
    assert not svc.time_suspect and _status(health).status is Status.OK
    assert svc.time_jumps == 1  # coming back is not another jump


def test_a_jumped_time_that_holds_is_believed_after_enough_reports() -> None:
    clock = SimulatedClock(START)
    svc, _health = _service(clock)
    _report(svc, clock)
    for i in range(TIME_RELOCK_REPORTS):
        _report(svc, clock, step=-3600.0)
        assert svc.time_suspect is (i < TIME_RELOCK_REPORTS - 1)
    assert svc.time_jumps == 1
    assert svc.held_time_anchor() is None


def test_a_jump_toward_the_system_clock_is_a_correction() -> None:
    """A receiver 20 s off (e.g. before its leap-second almanac) that corrects itself to agree
    with the system clock: counted as a jump, taken at once."""
    clock = SimulatedClock(START)
    svc, health = _service(clock)
    for _ in range(3):
        _report(svc, clock, step=20.0)
    assert not svc.time_suspect  # the first report sets the anchor
    _report(svc, clock, step=0.0)
    assert svc.time_jumps == 1 and not svc.time_suspect and _status(health).status is Status.OK


def test_drift_below_the_step_is_not_a_jump() -> None:
    clock = SimulatedClock(START)
    svc, _health = _service(clock)
    for i in range(20):
        _report(svc, clock, step=0.05 * i)  # 50 ms/s: a bad oscillator, not a jump
    assert svc.time_jumps == 0 and not svc.time_suspect
