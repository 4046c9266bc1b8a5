"""Every gpsd regression log: what we accept and the fix we build must match gpsd's .chk.

The .chk holds, in stream order, the sentences gpsd accepted (``$`` lines) and its fused
TPV report after some of them. We compare our merged fix after the same sentence with each
TPV: mode, lat/lon (1e-6 deg), time, track, altMSL/altHAE exactly as gpsd prints them, and
present/absent alike. Two documented differences:

* gpsd moves dates it believes hit the GPS week rollover forward by 1024 weeks (neo-m8n's
  2015 dates come out as 2034); we keep the receiver's date.
* gpsd derives a speed from successive positions while a cycle has not yet carried one
  (the GGA that opens a haicom cycle); we report only the receiver's speed, so where we
  have a speed it must be gpsd's, and where we have none the cycle has seen no RMC/VTG yet.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drivers.nmea import NmeaReader, ReaderEvent
from hal.types import FixMode, GnssFix

REFDATA_LOGS = (
    "GPSmap-76S.log",
    "bt451.log",
    "bu353-glonass.log",
    "garmin17n.log",
    "haicom-305N.log",
    "mt3339.log",
    "neo-m8n.log",
    "quectel-L70.log",
    "sirfstarv-nmea.log",
    "ublox-lea-5q.log",
)
WEEK_ROLLOVER = timedelta(weeks=1024)


def test_every_refdata_log_is_checked(refdata: Path) -> None:
    assert sorted(p.name for p in (refdata / "nmea/gpsd").glob("*.log")) == sorted(REFDATA_LOGS)


def read_log(path: Path, chunks: list[int] | None = None) -> tuple[NmeaReader, list[ReaderEvent]]:
    reader = NmeaReader(comments=True)
    data = path.read_bytes()
    events: list[ReaderEvent] = []
    if chunks is None:
        events = reader.feed(data)
    else:
        pos = 0
        for size in chunks:
            events += reader.feed(data[pos : pos + size])
            pos += size
        events += reader.feed(data[pos:])
    return reader, events + reader.flush()


def chk_lines(path: Path) -> list[str]:
    return path.with_name(path.name + ".chk").read_text(encoding="latin-1").splitlines()


def gpsd_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@pytest.fixture(params=REFDATA_LOGS)
def log(request: pytest.FixtureRequest, refdata: Path) -> Path:
    return refdata / "nmea/gpsd" / request.param


def test_accepted_sentences_are_the_chk_sentences(log: Path) -> None:
    expected = [line for line in chk_lines(log) if line.startswith("$")]
    reader, events = read_log(log)
    assert [e.raw.text for e in events] == expected
    assert reader.counters["sentences"] == len(expected)
    # and the same, fed in random pieces as a serial port delivers them
    rng = random.Random(log.name)
    sizes = [rng.randint(1, 40) for _ in range(2000)]
    _, events = read_log(log, sizes)
    assert [e.raw.text for e in events] == expected


def tpv_pairs(log: Path) -> list[tuple[ReaderEvent, dict[str, Any], int]]:
    """(our event for the sentence before the TPV, the TPV, index of that sentence)."""
    _, events = read_log(log)
    pairs = []
    index = -1
    for line in chk_lines(log):
        if line.startswith("$"):
            index += 1
        elif line.startswith('{"class":"TPV"'):
            assert index >= 0
            pairs.append((events[index], json.loads(line), index))
    assert pairs, f"{log.name}.chk has no TPV"
    return pairs


def _close(ours: float | None, theirs: float | None, tol: float) -> bool:
    if ours is None or theirs is None:
        return ours is None and theirs is None
    return abs(ours - theirs) <= tol


def test_fix_matches_every_tpv(log: Path) -> None:
    problems: list[str] = []
    for event, tpv, _ in tpv_pairs(log):
        fix: GnssFix = event.fix
        at = f"{log.name} after {event.raw.text[:40]} (line {event.raw.line})"
        if int(fix.mode) != tpv.get("mode", 0):
            problems.append(f"{at}: mode {int(fix.mode)} != {tpv.get('mode')}")
        for ours, key, tol in (
            (fix.lat, "lat", 1e-6),
            (fix.lon, "lon", 1e-6),
            (fix.track, "track", 5e-5),
            (fix.alt_msl, "altMSL", 5e-5),
            (fix.alt_hae, "altHAE", 5e-5),
        ):
            if not _close(ours, tpv.get(key), tol):
                problems.append(f"{at}: {key} {ours} != {tpv.get(key)}")
        theirs_time = tpv.get("time")
        if fix.time is None:
            if theirs_time is not None:
                problems.append(f"{at}: no time, gpsd {theirs_time}")
        elif theirs_time not in (gpsd_time(fix.time), gpsd_time(fix.time + WEEK_ROLLOVER)):
            problems.append(f"{at}: time {gpsd_time(fix.time)} != {theirs_time}")
        if fix.speed is not None:
            if not _close(fix.speed, tpv.get("speed"), 5e-4):
                problems.append(f"{at}: speed {fix.speed} != {tpv.get('speed')}")
        elif "speed" in tpv and event.raw.kind in ("RMC", "VTG"):
            problems.append(f"{at}: no speed after {event.raw.kind}, gpsd {tpv['speed']}")
    assert problems == []


def test_mode_transitions(log: Path) -> None:
    def runs(modes: list[int]) -> list[int]:
        return [m for i, m in enumerate(modes) if i == 0 or modes[i - 1] != m]

    pairs = tpv_pairs(log)
    ours = runs([int(event.fix.mode) for event, _, _ in pairs])
    theirs = runs([tpv.get("mode", 0) for _, tpv, _ in pairs])
    assert ours == theirs


def test_known_transitions_are_nontrivial(refdata: Path) -> None:
    """Guard: the logs do exercise fix loss and regain, so the mode test means something."""
    expect = {
        "bt451.log": [1, 2, 3],
        "GPSmap-76S.log": [1, 3, 1],
        "bu353-glonass.log": [3, 1],
        "haicom-305N.log": [1, 2, 3],
    }
    for name, transitions in expect.items():
        modes = [int(event.fix.mode) for event, _, _ in tpv_pairs(refdata / "nmea/gpsd" / name)]
        assert [m for i, m in enumerate(modes) if i == 0 or modes[i - 1] != m] == transitions, name


def test_reports_are_one_per_cycle(log: Path) -> None:
    """Each reported fix is a distinct cycle (time or no time), in time order."""
    reader, events = read_log(log)
    reports = [r for e in events for r in e.reports] + list(reader.finish())
    assert reports, log.name
    timed = [r.time for r in reports if r.time is not None]
    assert len(timed) == len(set(timed)), "a cycle was reported twice"
    positioned = [r for r in reports if r.mode >= FixMode.FIX_2D]
    assert all(r.has_position for r in positioned)
    # the last cycle's report is gpsd's last word on the log
    last_tpv = tpv_pairs(log)[-1][1]
    assert int(reports[-1].mode) == last_tpv["mode"]
    assert reports[-1].has_position == ("lat" in last_tpv)
