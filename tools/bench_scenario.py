"""``acc-bench`` scenarios: the TOML file format, fault injection, expectations and the report.

A scenario is a drive (a route of segments for the simulated vehicle with timed events, or a
recorded log replayed), faults injected on the buses, overrides of the agent's configuration,
and what the agent must (and must not) produce. ``load_scenario`` validates a file and raises
``ScenarioError`` naming the offending field; features the bench cannot produce yet are
refused with ``not supported yet: X``. ``evaluate`` turns what the agent produced (its
``driving_event`` attestations and the health it reported over the diagnostics socket) into a
``Report`` with a text and a JUnit XML rendering. See docs/bench.md.
"""

from __future__ import annotations

import math
import random
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.interfaces import CanPort
from hal.types import CanFrame

__all__ = [
    "DIAG_QUERIES",
    "EVENT_KINDS",
    "BusOff",
    "ClockJump",
    "DiagExpectation",
    "EventExpectation",
    "FaultInjector",
    "Faults",
    "HealthExpectation",
    "Observed",
    "Report",
    "Scenario",
    "ScenarioError",
    "build_vehicle",
    "evaluate",
    "load_scenario",
    "parse_scenario",
    "shift_nmea",
]

KMH = 1 / 3.6
EVENT_KINDS = ("harsh_brake", "harsh_accel", "harsh_corner", "lane_change", "speeding", "fatigue")
HEALTH_STATES = ("ok", "degraded", "failed")
#: timed route events the bench can produce
ROUTE_EVENTS = ("harsh_brake", "gnss_outage", "lane_change", "weaving")
#: diagnostics commands an [[expect.diag]] may query (answers without parameters)
DIAG_QUERIES = ("status", "state", "gnss.fix", "can.stats", "behaviour", "net", "verdicts")
CLOCKS = ("gnss", "system")
#: SocketCAN error classes (linux/can/error.h) of the error frames a bus-off emulation sends
CAN_ERR_CRTL = 0x004
CAN_ERR_PROT = 0x008
CAN_ERR_BUSOFF = 0x040
CAN_ERR_BUSERROR = 0x080
CAN_ERR_RESTARTED = 0x100
CAN_ERR_CRTL_TX_PASSIVE = 0x20


class ScenarioError(ValueError):
    """A scenario file is malformed or asks for something the bench cannot do; the message
    names the field (``route.segment[2].speed_kmh: ...``)."""


# --------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    type: str
    speed_kmh: float
    length: float = 0.0
    turn: float = 0.0
    radius: float = 0.0
    transition: float = 10.0
    speed_limit_kmh: float | None = None
    stop: float = 0.0
    tunnel: bool = False
    name: str = ""


@dataclass(frozen=True, slots=True)
class RouteEvent:
    kind: str
    at: float
    duration: float = 0.0
    decel: float = 6.0
    hold: float = 3.0
    #: lane_change / weaving: lateral offset of each move, metres (left positive)
    offset: float = 0.0
    #: weaving: number of lane moves, alternating sides (a lane change is one)
    swings: int = 1


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    path: Path
    bus: str = "can0"
    channel: str | None = None
    speed: float = 1.0
    #: a DBC (and its VSS mapping) for the agent's bus instead of the reference one
    dbc: Path | None = None
    vss_map: Path | None = None


@dataclass(frozen=True, slots=True)
class SilentEcu:
    id: int
    at: float
    bus: str | None = None


@dataclass(frozen=True, slots=True)
class WrongDlc:
    id: int
    dlc: int
    bus: str | None = None


@dataclass(frozen=True, slots=True)
class ClockJump:
    """At ``at`` the clock steps by ``by`` seconds: the GNSS receiver's time (every NMEA time
    from then on) or, in-process only, the agent's system clock."""

    at: float
    by: float
    clock: str = "gnss"


@dataclass(frozen=True, slots=True)
class BusOff:
    """From ``at`` for ``duration`` seconds the bus is off: an error-passive and a bus-off
    error frame, then nothing (or ``error_frames_per_s`` bus errors), then a restart."""

    at: float
    duration: float
    bus: str | None = None
    error_frames_per_s: float = 0.0

    def covers(self, t: float) -> bool:
        return self.at <= t < self.at + self.duration


@dataclass(frozen=True, slots=True)
class Faults:
    #: fraction of frames dropped (0..1)
    frame_loss: float = 0.0
    #: fraction of frames whose payload is replaced by random bytes (0..1)
    corrupt: float = 0.0
    wrong_dlc: tuple[WrongDlc, ...] = ()
    silent: tuple[SilentEcu, ...] = ()
    #: error frames per second on every bus (0: none)
    error_frames_per_s: float = 0.0
    clock_jumps: tuple[ClockJump, ...] = ()
    bus_off: tuple[BusOff, ...] = ()

    @property
    def any(self) -> bool:
        return bool(
            self.frame_loss
            or self.corrupt
            or self.wrong_dlc
            or self.silent
            or self.error_frames_per_s
            or self.clock_jumps
            or self.bus_off
        )

    def clock_offset(self, clock: str, t: float) -> float:
        """Seconds the ``clock`` (gnss / system) is stepped by at drive time ``t``."""
        return sum(j.by for j in self.clock_jumps if j.clock == clock and t >= j.at)


@dataclass(frozen=True, slots=True)
class EventExpectation:
    kind: str
    #: seconds from the start of the drive: the event must start within [lo, hi]
    lo: float
    hi: float
    #: exact count in the window (None: at least ``min_count``)
    count: int | None = None
    min_count: int = 1
    #: False: the agent must NOT produce this event in the window
    present: bool = True

    def describe(self) -> str:
        win = f"t={self.lo:g}..{self.hi:g}s" if math.isfinite(self.hi) else f"t>={self.lo:g}s"
        if not self.present:
            return f"no {self.kind} at {win}"
        n = f"exactly {self.count}" if self.count is not None else f"at least {self.min_count}"
        return f"{n} {self.kind} at {win}"


@dataclass(frozen=True, slots=True)
class HealthExpectation:
    subsystem: str
    status: str
    #: seconds from the start (None: at the end of the run)
    at: float | None = None

    def describe(self) -> str:
        return f"health {self.subsystem} {self.status} " + ("at the end" if self.at is None else f"at t={self.at:g}s")


@dataclass(frozen=True, slots=True)
class DiagExpectation:
    """A value in a diagnostics answer (``query``, then the dotted ``path`` into it) at a time:
    within [lo, hi], or equal to ``equals``."""

    query: str
    path: str
    at: float | None = None
    lo: float | None = None
    hi: float | None = None
    equals: Any = None

    def describe(self) -> str:
        if self.equals is not None:
            cond = f"== {self.equals!r}"
        elif self.lo is not None and self.hi is not None:
            cond = f"in {self.lo:g}..{self.hi:g}"
        elif self.lo is not None:
            cond = f">= {self.lo:g}"
        else:
            cond = f"<= {self.hi:g}"
        return f"diag {self.query} {self.path} {cond} " + ("at the end" if self.at is None else f"at t={self.at:g}s")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration: float
    seed: int = 1
    description: str = ""
    segments: tuple[SegmentSpec, ...] = ()
    events: tuple[RouteEvent, ...] = ()
    nmea_rate: float = 1.0
    replay: ReplaySpec | None = None
    faults: Faults = Faults()
    #: merged into the generated agent configuration (``[agent.behaviour] enabled = false``)
    agent: Mapping[str, Any] = field(default_factory=dict)
    expect_events: tuple[EventExpectation, ...] = ()
    expect_health: tuple[HealthExpectation, ...] = ()
    expect_diag: tuple[DiagExpectation, ...] = ()
    #: seconds the bench waits after the drive for the agent to finish and attest
    settle: float = 2.0
    source: str = ""


# --------------------------------------------------------------------------------------------
# parsing


class _Fields:
    """Typed access to one TOML table that names the field in every error."""

    def __init__(self, table: Any, where: str) -> None:
        if not isinstance(table, dict):
            raise ScenarioError(f"{where}: expected a table, got {type(table).__name__}")
        self.t = table
        self.where = where
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.t:
            if required:
                raise ScenarioError(f"{self.name(key)}: missing (required)")
            return default
        value = self.t[key]
        if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
            raise ScenarioError(f"{self.name(key)}: expected {_kind_name(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise ScenarioError(f"{self.name(key)}: expected {_kind_name(kinds)}, got {value!r}")
        return value

    def number(
        self,
        key: str,
        default: float | None = None,
        *,
        required: bool = False,
        lo: float | None = None,
        hi: float | None = None,
        positive: bool = False,
    ) -> Any:
        value = self.get(key, (int, float), default, required=required)
        if value is None:
            return None
        value = float(value)
        if (
            not math.isfinite(value)
            or (positive and value <= 0)
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            rng = "> 0" if positive else f"within {lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ScenarioError(f"{self.name(key)}: must be {rng}, got {value:g}")
        return value

    def can_id(self, key: str) -> int:
        value = self.get(key, (int, str), required=True)
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise ScenarioError(f"{self.name(key)}: not a CAN id: {value!r}") from None
        if not 0 <= value <= 0x1FFFFFFF:
            raise ScenarioError(f"{self.name(key)}: CAN id out of range: {value}")
        return int(value)

    def tables(self, key: str) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = self.get(key, list, [])
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ScenarioError(f"{self.name(key)}[{i}]: expected a table ([[{self.name(key)}]])")
        return value

    def done(self, ignore: Sequence[str] = ()) -> None:
        extra = sorted(set(self.t) - self.used - set(ignore))
        if extra:
            raise ScenarioError(f"{self.name(extra[0])}: unknown field")


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {int: "a number", float: "a number", str: "a string", bool: "true/false", list: "a list", dict: "a table"}
    ks = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in ks))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (``ScenarioError`` names the offending field)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None
    try:
        return parse_scenario(raw, base_dir=path.parent, source=str(path))
    except ScenarioError as err:
        raise ScenarioError(f"{path}: {err}") from None


def parse_scenario(raw: Mapping[str, Any], *, base_dir: Path = Path("."), source: str = "") -> Scenario:
    top = _Fields(dict(raw), "")
    name = top.get("name", str, required=True)
    description = top.get("description", str, "")
    duration = top.number("duration", required=True, positive=True)
    seed = top.get("seed", int, 1)
    settle = top.number("settle", 2.0, lo=0.0, hi=60.0)

    replay = None
    segments: list[SegmentSpec] = []
    events: list[RouteEvent] = []
    nmea_rate = 1.0
    if "replay" in raw and "route" in raw:
        raise ScenarioError("replay: a scenario is either a route or a replay, not both")
    if "replay" in raw:
        value = raw["replay"]
        rp = _Fields({"path": value} if isinstance(value, str) else value, "replay")
        rel = Path(rp.get("path", str, required=True))
        log_path = rel if rel.is_absolute() else base_dir / rel
        if not log_path.is_file():
            raise ScenarioError(f"replay.path: no such log file: {log_path}")
        files: dict[str, Path | None] = {}
        for key in ("dbc", "vss_map"):
            rel_file = rp.get(key, str, None)
            files[key] = (
                None
                if rel_file is None
                else (base_dir / rel_file if not Path(rel_file).is_absolute() else Path(rel_file))
            )
            if files[key] is not None and not files[key].is_file():  # type: ignore[union-attr]
                raise ScenarioError(f"replay.{key}: no such file: {files[key]}")
        if files["vss_map"] is not None and files["dbc"] is None:
            raise ScenarioError("replay.vss_map: a VSS mapping needs replay.dbc")
        replay = ReplaySpec(
            log_path,
            bus=rp.get("bus", str, "can0"),
            channel=rp.get("channel", str, None),
            speed=rp.number("speed", 1.0, positive=True),
            dbc=files["dbc"],
            vss_map=files["vss_map"],
        )
        if replay.bus not in ("can0", "can1"):
            raise ScenarioError(f"replay.bus: must be can0 or can1, got {replay.bus!r}")
        rp.done()
        top.used.add("replay")
        if "event" in raw:
            raise ScenarioError("event: timed route events need a route, not a replay")
    else:
        route = _Fields(top.get("route", dict, required=True), "route")
        nmea_rate = route.number("nmea_rate", 1.0, lo=1.0, hi=10.0)
        segs = route.tables("segment")
        if not segs:
            raise ScenarioError("route.segment: at least one [[route.segment]] is required")
        for i, seg in enumerate(segs):
            segments.append(_segment(_Fields(seg, f"route.segment[{i}]")))
        route.done()
        for i, ev in enumerate(top.tables("event")):
            events.append(_route_event(_Fields(ev, f"event[{i}]"), duration))

    faults = _faults(_Fields(top.get("faults", dict, {}), "faults"), duration)
    agent = top.get("agent", dict, {})
    expect = _Fields(top.get("expect", dict, {}), "expect")
    exp_events = [
        _event_expectation(_Fields(t, f"expect.event[{i}]"), True) for i, t in enumerate(expect.tables("event"))
    ]
    exp_events += [
        _event_expectation(_Fields(t, f"expect.no_event[{i}]"), False) for i, t in enumerate(expect.tables("no_event"))
    ]
    exp_health = [
        _health_expectation(_Fields(t, f"expect.health[{i}]"), duration) for i, t in enumerate(expect.tables("health"))
    ]
    exp_diag = [
        _diag_expectation(_Fields(t, f"expect.diag[{i}]"), duration) for i, t in enumerate(expect.tables("diag"))
    ]
    expect.done()
    if not exp_events and not exp_health and not exp_diag:
        raise ScenarioError(
            "expect: a scenario needs at least one [[expect.event]], [[expect.no_event]], [[expect.health]]"
            " or [[expect.diag]]"
        )
    top.done()
    return Scenario(
        name=name,
        description=description,
        duration=duration,
        seed=seed,
        settle=settle,
        segments=tuple(segments),
        events=tuple(events),
        nmea_rate=nmea_rate,
        replay=replay,
        faults=faults,
        agent=agent,
        expect_events=tuple(exp_events),
        expect_health=tuple(exp_health),
        expect_diag=tuple(exp_diag),
        source=source,
    )


def _segment(f: _Fields) -> SegmentSpec:
    kind = f.get("type", str, "straight")
    if kind not in ("straight", "curve"):
        raise ScenarioError(f"{f.name('type')}: must be 'straight' or 'curve', got {kind!r}")
    speed = f.number("speed_kmh", required=True, positive=True)
    limit = f.number("speed_limit_kmh", None, positive=True)
    common = {
        "speed_kmh": speed,
        "speed_limit_kmh": limit,
        "stop": f.number("stop", 0.0, lo=0.0),
        "tunnel": f.get("tunnel", bool, False),
        "name": f.get("name", str, ""),
    }
    if kind == "straight":
        spec = SegmentSpec("straight", length=f.number("length", required=True, positive=True), **common)
    else:
        turn = f.number("turn", required=True)
        if not turn:
            raise ScenarioError(f"{f.name('turn')}: a curve needs a non-zero turn (degrees, left positive)")
        spec = SegmentSpec(
            "curve",
            turn=turn,
            radius=f.number("radius", required=True, positive=True),
            transition=f.number("transition", 10.0, lo=0.0),
            **common,
        )
    f.done()
    return spec


def _route_event(f: _Fields, duration: float) -> RouteEvent:
    kind = f.get("kind", str, required=True)
    if kind not in ROUTE_EVENTS:
        raise ScenarioError(f"{f.name('kind')}: unknown event {kind!r} (known: {', '.join(ROUTE_EVENTS)})")
    at = f.number("at", required=True, lo=0.0, hi=duration)
    if kind == "harsh_brake":
        ev = RouteEvent(kind, at, decel=f.number("decel", 6.0, positive=True), hold=f.number("hold", 3.0, lo=0.0))
    elif kind in ("lane_change", "weaving"):
        weave = kind == "weaving"
        offset = f.number("offset", 1.5 if weave else 3.5, lo=-10.0, hi=10.0)
        if abs(offset) < 0.1:
            raise ScenarioError(
                f"{f.name('offset')}: a lane move needs a lateral offset (metres, left +), got {offset:g}"
            )
        ev = RouteEvent(
            kind,
            at,
            duration=f.number("duration", 2.5 if weave else 4.0, lo=1.0, hi=20.0),
            offset=offset,
            swings=f.get("swings", int, 4) if weave else 1,
        )
        if not 1 <= ev.swings <= 30:
            raise ScenarioError(f"{f.name('swings')}: must be within 1..30, got {ev.swings}")
    else:
        ev = RouteEvent(kind, at, duration=f.number("duration", required=True, positive=True))
    f.done()
    return ev


def _faults(f: _Fields, duration: float = math.inf) -> Faults:
    wrong = []
    for i, t in enumerate(f.tables("wrong_dlc")):
        w = _Fields(t, f"faults.wrong_dlc[{i}]")
        dlc = w.get("dlc", int, required=True)
        if not 0 <= dlc <= 8:
            raise ScenarioError(f"{w.name('dlc')}: must be within 0..8, got {dlc}")
        wrong.append(WrongDlc(w.can_id("id"), dlc, w.get("bus", str, None)))
        w.done()
    silent = []
    for i, t in enumerate(f.tables("silent")):
        s = _Fields(t, f"faults.silent[{i}]")
        silent.append(SilentEcu(s.can_id("id"), s.number("at", required=True, lo=0.0), s.get("bus", str, None)))
        s.done()
    jumps = []
    for i, t in enumerate(f.tables("clock_jump")):
        j = _Fields(t, f"faults.clock_jump[{i}]")
        at = j.number("at", required=True, lo=0.0, hi=duration)
        by = j.number("by", required=True, lo=-86400.0 * 366, hi=86400.0 * 366)
        if not by:
            raise ScenarioError(f"{j.name('by')}: a clock jump needs a non-zero step (seconds, + forward)")
        clock = j.get("clock", str, "gnss")
        if clock not in CLOCKS:
            raise ScenarioError(f"{j.name('clock')}: must be one of {', '.join(CLOCKS)}, got {clock!r}")
        jumps.append(ClockJump(at, by, clock))
        j.done()
    bus_off: list[BusOff] = []
    for i, t in enumerate(f.tables("bus_off")):
        b = _Fields(t, f"faults.bus_off[{i}]")
        bo = BusOff(
            at=b.number("at", required=True, lo=0.0, hi=duration),
            duration=b.number("duration", required=True, positive=True),
            bus=b.get("bus", str, None),
            error_frames_per_s=b.number("error_frames_per_s", 0.0, lo=0.0, hi=1000.0),
        )
        if bo.bus is not None and bo.bus not in ("can0", "can1"):
            raise ScenarioError(f"{b.name('bus')}: must be can0 or can1, got {bo.bus!r}")
        for other in bus_off:
            if other.bus in (None, bo.bus) or bo.bus is None:
                if bo.at < other.at + other.duration and other.at < bo.at + bo.duration:
                    raise ScenarioError(f"{b.name('at')}: overlaps an earlier bus_off on the same bus")
        bus_off.append(bo)
        b.done()
    faults = Faults(
        frame_loss=f.number("frame_loss", 0.0, lo=0.0, hi=1.0),
        corrupt=f.number("corrupt", 0.0, lo=0.0, hi=1.0),
        wrong_dlc=tuple(wrong),
        silent=tuple(silent),
        error_frames_per_s=f.number("error_frames_per_s", 0.0, lo=0.0, hi=1000.0),
        clock_jumps=tuple(sorted(jumps, key=lambda j: j.at)),
        bus_off=tuple(bus_off),
    )
    f.done()
    return faults


def _event_expectation(f: _Fields, present: bool) -> EventExpectation:
    kind = f.get("kind", str, required=True)
    if kind not in EVENT_KINDS:
        raise ScenarioError(f"{f.name('kind')}: unknown driving event {kind!r} (known: {', '.join(EVENT_KINDS)})")
    if "window" in f.t and "at" in f.t:
        raise ScenarioError(f"{f.name('window')}: give either window or at (+ tolerance), not both")
    if "window" in f.t:
        win = f.get("window", list)
        if len(win) != 2 or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in win):
            raise ScenarioError(f"{f.name('window')}: expected [from, to] seconds, got {win!r}")
        lo, hi = float(win[0]), float(win[1])
        if hi < lo:
            raise ScenarioError(f"{f.name('window')}: ends before it starts: {win!r}")
    elif "at" in f.t:
        at = f.number("at", lo=0.0)
        tol = f.number("tolerance", 3.0, lo=0.0)
        lo, hi = max(0.0, at - tol), at + tol
    else:
        lo, hi = 0.0, math.inf
    count = f.get("count", int, None)
    if count is not None and count < 0:
        raise ScenarioError(f"{f.name('count')}: must be >= 0, got {count}")
    min_count = f.get("min_count", int, 1)
    if not present and (count is not None or "min_count" in f.t):
        raise ScenarioError(f"{f.name('count')}: not allowed in expect.no_event (it means count = 0)")
    f.done(ignore=("tolerance",))
    return EventExpectation(kind, lo, hi, count=count, min_count=min_count, present=present)


def _health_expectation(f: _Fields, duration: float) -> HealthExpectation:
    sub = f.get("subsystem", str, required=True)
    status = f.get("status", str, required=True)
    if status not in HEALTH_STATES:
        raise ScenarioError(f"{f.name('status')}: must be one of {', '.join(HEALTH_STATES)}, got {status!r}")
    at = f.number("at", None, lo=0.0, hi=duration)
    f.done()
    return HealthExpectation(sub, status, at)


def _diag_expectation(f: _Fields, duration: float) -> DiagExpectation:
    query = f.get("query", str, required=True)
    if query not in DIAG_QUERIES:
        raise ScenarioError(f"{f.name('query')}: must be one of {', '.join(DIAG_QUERIES)}, got {query!r}")
    path = f.get("path", str, required=True)
    if not path or any(not part for part in path.split(".")):
        raise ScenarioError(f"{f.name('path')}: expected a dotted path into the answer (can0.signals), got {path!r}")
    at = f.number("at", None, lo=0.0, hi=duration)
    lo, hi = f.number("min", None), f.number("max", None)
    equals = f.get("equals", (str, int, float, bool), None)
    if equals is None and lo is None and hi is None:
        raise ScenarioError(f"{f.name('min')}: give min and/or max, or equals")
    if equals is not None and (lo is not None or hi is not None):
        raise ScenarioError(f"{f.name('equals')}: give either equals or min/max, not both")
    if lo is not None and hi is not None and hi < lo:
        raise ScenarioError(f"{f.name('max')}: is below min ({hi:g} < {lo:g})")
    f.done()
    return DiagExpectation(query, path, at, lo, hi, equals)


# --------------------------------------------------------------------------------------------
# the drive


def lane_move(speed: float, duration: float, offset: float, **kw: Any) -> list[Any]:
    """A lane move as route geometry: two opposite curves (an S-bend) of ``speed * duration``
    metres together whose curvature rises and falls linearly (a triangle each), turning just
    enough that the path ends ``offset`` metres to the side (left positive), parallel to where
    it started. Keywords go to both ``Segment``\\ s (speed_limit, tunnel, name)."""
    from drivers.simvehicle import Segment

    half = speed * duration / 2
    ramp = 0.49 * half  # a curve's transitions must be shorter than half of it

    def lateral(turn_deg: float) -> float:
        first = Segment(half, speed, turn=turn_deg, transition=ramp)
        second = Segment(half, speed, turn=-turn_deg, transition=ramp)
        n = 200
        h = half / n
        total = 0.0
        for seg, psi0 in ((first, 0.0), (second, math.radians(turn_deg))):
            for i in range(n + 1):
                w = 1 if i in (0, n) else (4 if i % 2 else 2)
                total += w * math.sin(psi0 + seg.heading_change(i * h)) * h / 3
        return total

    lo, hi = 0.0, 60.0
    for _ in range(50):  # bisection: the offset grows with the turn
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if lateral(mid) < abs(offset) else (lo, mid)
    turn = math.copysign((lo + hi) / 2, offset)
    return [
        Segment(half, speed, turn=turn, transition=ramp, **kw),
        Segment(half, speed, turn=-turn, transition=ramp, **kw),
    ]


def build_vehicle(sc: Scenario, *, emit_can: bool = True) -> Any:
    """The ``SimVehicle`` of a route scenario: its segments (not looped), the GNSS outages,
    and each ``harsh_brake at t`` placed where a dry run of the same vehicle is at ``t``."""
    from drivers.simvehicle import Route, SimVehicle, curve, straight

    segs = []
    for i, s in enumerate(sc.segments):
        kw: dict[str, Any] = {
            "speed_limit": None if s.speed_limit_kmh is None else s.speed_limit_kmh * KMH,
            "stop": s.stop,
            "tunnel": s.tunnel,
            "name": s.name or f"segment {i}",
        }
        if s.type == "straight":
            segs.append(straight(s.length, s.speed_kmh * KMH, **kw))
        else:
            segs.append(curve(s.turn, s.radius, s.speed_kmh * KMH, transition=s.transition, **kw))
    outages = [(e.at, e.at + e.duration) for e in sc.events if e.kind == "gnss_outage"]

    def make(segments: list[Any], can: bool) -> Any:
        route = Route(segments, loop=False, name=sc.name)
        return SimVehicle(route, seed=sc.seed, nmea_rate_hz=sc.nmea_rate, gnss_outages=outages, emit_can=can)

    import dataclasses

    # lane changes and weaving first: they split straights, which moves later segments' indices
    for ev in sorted((e for e in sc.events if e.kind in ("lane_change", "weaving")), key=lambda e: e.at):
        dry = make(segs, False)
        dry.step(ev.at)
        truth = dry.truth()
        where = f"event {ev.kind} at {ev.at:g}"
        if truth.speed < 2.0:
            raise ScenarioError(
                f"{where}: the vehicle is (nearly) standing at t={ev.at:g}s; change lanes while it moves"
            )
        idx, u = dry.route.locate(truth.distance)
        seg = segs[idx]
        if seg.turn:
            raise ScenarioError(
                f"{where}: not supported yet: a lane change on a curve ({seg.name}); put it on a straight"
            )
        moves: list[Any] = []
        name = f"{seg.name} ({ev.kind.replace('_', ' ')})"
        for k in range(ev.swings):
            side = ev.offset if k % 2 == 0 else -ev.offset
            moves += lane_move(seg.speed, ev.duration, side, speed_limit=seg.speed_limit, tunnel=seg.tunnel, name=name)
        need = sum(m.length for m in moves)
        rest = seg.length - u - need
        if rest < 0:
            raise ScenarioError(
                f"{where}: {seg.name} has {seg.length - u:.0f} m left at t={ev.at:g}s, "
                f"the {ev.kind} needs {need:.0f} m; lengthen the segment"
            )
        pieces = []
        if u > 0.5:
            pieces.append(dataclasses.replace(seg, length=u, stop=0.0))
        if rest > 0.5:
            pieces += moves + [dataclasses.replace(seg, length=rest)]
        else:
            pieces += moves[:-1] + [dataclasses.replace(moves[-1], stop=seg.stop)]
        segs[idx : idx + 1] = pieces

    for i, ev in enumerate(sorted((e for e in sc.events if e.kind == "harsh_brake"), key=lambda e: e.at)):
        dry = make(segs, False)
        dry.step(ev.at)
        truth = dry.truth()
        where = f"event harsh_brake at {ev.at:g}"
        if truth.speed < 2.0:
            raise ScenarioError(f"{where}: the vehicle is (nearly) standing at t={ev.at:g}s; brake while it moves")
        idx, u = dry.route.locate(truth.distance)
        seg = segs[idx]
        if seg.harsh_brake_at is not None:
            raise ScenarioError(f"{where}: not supported yet: two harsh brakes on one segment ({seg.name})")
        segs[idx] = dataclasses.replace(
            seg, harsh_brake_at=min(u, seg.length - 0.01), harsh_brake_decel=ev.decel, harsh_brake_hold=ev.hold
        )
        del i
    return make(segs, emit_can)


def shift_nmea(data: bytes, by: float) -> bytes:
    """NMEA 0183 sentences with every UTC time (and date) moved by ``by`` seconds: the time of
    day of GGA/RMC/GLL/GNS/ZDA, RMC's date and ZDA's day/month/year; checksums recomputed.
    What a receiver whose clock jumped would send (the bench's ``clock_jump`` fault)."""
    from datetime import UTC, datetime, timedelta

    if not by:
        return data
    out = []
    for line in data.decode("ascii", "replace").split("\r\n"):
        if not line.startswith("$") or "*" not in line:
            out.append(line)
            continue
        body = line[1 : line.rindex("*")]
        f = body.split(",")
        kind = f[0][-3:]
        tpos = {"GGA": 1, "RMC": 1, "GLL": 5, "GNS": 1, "ZDA": 1}.get(kind)
        if tpos is None or len(f) <= tpos or len(f[tpos]) < 6:
            out.append(line)
            continue
        hms = f[tpos]
        frac = hms[6:] if len(hms) > 6 else ""
        secs = int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:6])
        if kind == "RMC" and len(f) > 9 and len(f[9]) == 6:
            day = datetime(2000 + int(f[9][4:6]), int(f[9][2:4]), int(f[9][:2]), tzinfo=UTC)
        elif kind == "ZDA" and len(f) > 4 and f[4]:
            day = datetime(int(f[4]), int(f[3]), int(f[2]), tzinfo=UTC)
        else:
            day = datetime(2000, 1, 1, tzinfo=UTC)  # time of day only
        when = day + timedelta(seconds=secs + by)
        f[tpos] = f"{when:%H%M%S}{frac}"
        if kind == "RMC" and len(f) > 9 and len(f[9]) == 6:
            f[9] = f"{when:%d%m%y}"
        elif kind == "ZDA" and len(f) > 4 and f[4]:
            f[2], f[3], f[4] = f"{when:%d}", f"{when:%m}", f"{when:%Y}"
        body = ",".join(f)
        check = 0
        for ch in body.encode("ascii"):
            check ^= ch
        out.append(f"${body}*{check:02X}")
    return "\r\n".join(out).encode("ascii")


class FaultInjector:
    """A ``CanPort`` wrapper that applies a scenario's faults to what is sent through it:
    seeded frame loss and corruption, wrong DLCs for given ids, ids that fall silent at a
    time, nothing at all while the bus is off. ``now()`` gives seconds since the start of the
    drive. (The bus-off error frames themselves are sent by the bench.)"""

    def __init__(
        self, port: CanPort, faults: Faults, now: Callable[[], float], seed: int, *, bus: str | None = None
    ) -> None:
        self.port = port
        #: the bus name faults refer to (``can0``), by default the port's
        self.name = bus or port.name
        self.faults = faults
        self.now = now
        self.rng = random.Random(f"acc-bench-faults-{seed}-{self.name}")
        self.counts: dict[str, int] = {"sent": 0, "lost": 0, "corrupted": 0, "wrong_dlc": 0, "silenced": 0}
        self._off = [b for b in faults.bus_off if b.bus in (None, self.name)]
        if self._off:
            self.counts["bus_off"] = 0
        self._dlc = {w.id: w.dlc for w in faults.wrong_dlc if w.bus in (None, self.name)}
        self._silent = {s.id: s.at for s in faults.silent if s.bus in (None, self.name)}

    async def send(self, frame: CanFrame) -> None:
        import dataclasses

        f = self.faults
        if self._off:
            t = self.now()
            if any(b.covers(t) for b in self._off):
                self.counts["bus_off"] += 1
                return
        at = self._silent.get(frame.arbitration_id)
        if at is not None and self.now() >= at:
            self.counts["silenced"] += 1
            return
        if f.frame_loss and self.rng.random() < f.frame_loss:
            self.counts["lost"] += 1
            return
        data = frame.data
        if f.corrupt and self.rng.random() < f.corrupt:
            data = bytes(self.rng.randrange(256) for _ in data)
            self.counts["corrupted"] += 1
        dlc = self._dlc.get(frame.arbitration_id)
        if dlc is not None and dlc != len(data):
            data = (data + bytes(8))[:dlc]
            self.counts["wrong_dlc"] += 1
        if data is not frame.data:
            frame = dataclasses.replace(frame, data=data)
        await self.port.send(frame)
        self.counts["sent"] += 1


# --------------------------------------------------------------------------------------------
# evaluation and the report


@dataclass(frozen=True, slots=True)
class ObservedEvent:
    kind: str
    #: seconds from the start of the drive (the event's start: attestation time - duration)
    t: float
    severity: float
    duration: float
    seq: int
    #: where the attestation's time came from (gnss / holdover / system)
    tsrc: str = ""


@dataclass
class Observed:
    """What the agent produced: its driving events, the health it reported over time
    ((t, {subsystem: status})), and free-form notes (counters) for the report."""

    events: list[ObservedEvent] = field(default_factory=list)
    health: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    #: diagnostics answers over time, per query: {"gnss.fix": [(t, answer), ...]}
    diag: dict[str, list[tuple[float, Any]]] = field(default_factory=dict)
    #: UTC seconds at the start of the drive
    t0_utc: float = 0.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    message: str


@dataclass
class Report:
    scenario: Scenario
    checks: list[CheckResult]
    observed: Observed
    elapsed: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def text(self) -> str:
        sc = self.scenario
        lines = [
            f"scenario {sc.name!r}" + (f" ({sc.source})" if sc.source else "") + f": {sc.duration:g} s drive, "
            f"{'replay of ' + str(sc.replay.path) if sc.replay else f'{len(sc.segments)} segment(s)'}",
        ]
        for c in self.checks:
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}" + (f": {c.message}" if c.message else ""))
        evs = (
            ", ".join(
                f"{e.kind}@{e.t:.1f}s" + (f" ({e.tsrc} time)" if e.tsrc not in ("", "gnss") else "")
                for e in self.observed.events
            )
            or "none"
        )
        lines.append(f"  driving events seen: {evs}")
        if self.observed.health:
            t, last = self.observed.health[-1]
            lines.append("  health at the end: " + ", ".join(f"{k} {v}" for k, v in sorted(last.items())))
        for k, v in self.observed.notes.items():
            lines.append(f"  {k}: {v}")
        n_fail = len(self.failures)
        lines.append(
            f"{'PASS' if self.passed else 'FAIL'}: {len(self.checks) - n_fail} of {len(self.checks)} expectation(s) met"
            + (f" in {self.elapsed:.1f} s" if self.elapsed else "")
        )
        return "\n".join(lines)

    def junit(self) -> bytes:
        sc = self.scenario
        suite = ET.Element(
            "testsuite",
            name=f"acc-bench.{sc.name}",
            tests=str(len(self.checks)),
            failures=str(len(self.failures)),
            errors="0",
            time=f"{self.elapsed:.3f}",
        )
        for c in self.checks:
            case = ET.SubElement(suite, "testcase", classname=f"acc-bench.{sc.name}", name=c.name, time="0")
            if not c.passed:
                fail = ET.SubElement(case, "failure", message=c.message, type="ExpectationFailed")
                fail.text = c.message
        out = ET.SubElement(suite, "system-out")
        out.text = self.text()
        ET.indent(suite)
        data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
        return data


def evaluate(sc: Scenario, observed: Observed, elapsed: float = 0.0) -> Report:
    checks: list[CheckResult] = []
    for exp in sc.expect_events:
        hits = [e for e in observed.events if e.kind == exp.kind and exp.lo <= e.t <= exp.hi]
        seen = ", ".join(f"{e.kind}@{e.t:.1f}s" for e in observed.events if e.kind == exp.kind) or "none"
        if not exp.present:
            ok = not hits
            msg = "" if ok else f"unexpected {exp.kind} event(s) at " + ", ".join(f"{e.t:.1f}s" for e in hits)
        elif exp.count is not None:
            ok = len(hits) == exp.count
            msg = "" if ok else f"expected {exp.count} {exp.kind} event(s), got {len(hits)} (seen: {seen})"
        else:
            ok = len(hits) >= exp.min_count
            msg = "" if ok else f"missing {exp.kind} event: {len(hits)} in the window (seen: {seen})"
        checks.append(CheckResult(exp.describe(), ok, msg))
    for h in sc.expect_health:
        sample = _health_at(observed.health, h.at)
        if sample is None:
            checks.append(CheckResult(h.describe(), False, "no health report from the agent (diagnostics socket)"))
            continue
        t, states = sample
        got = states.get(h.subsystem)
        ok = got == h.status
        msg = "" if ok else f"{h.subsystem} was {got or 'not reported'} at t={t:.1f}s"
        checks.append(CheckResult(h.describe(), ok, msg))
    for d in sc.expect_diag:
        checks.append(_check_diag(d, observed.diag.get(d.query, [])))
    return Report(sc, checks, observed, elapsed)


def _lookup(answer: Any, path: str) -> tuple[bool, Any]:
    value = answer
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return False, value
    return True, value


def _check_diag(d: DiagExpectation, samples: list[tuple[float, Any]]) -> CheckResult:
    if not samples:
        return CheckResult(d.describe(), False, f"no {d.query} answer from the agent (diagnostics socket)")
    if d.at is None:
        t, answer = samples[-1]
    else:
        after = [s for s in samples if s[0] >= d.at]
        t, answer = after[0] if after else samples[-1]
    found, value = _lookup(answer, d.path)
    if not found:
        keys = ", ".join(sorted(map(str, value))[:12]) if isinstance(value, dict) else type(value).__name__
        return CheckResult(d.describe(), False, f"{d.query} has no {d.path} at t={t:.1f}s (there: {keys})")
    if d.equals is not None:
        ok = value == d.equals
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return CheckResult(d.describe(), False, f"{d.path} was {value!r} at t={t:.1f}s, not a number")
    else:
        ok = (d.lo is None or value >= d.lo) and (d.hi is None or value <= d.hi)
    shown = f"{value:.6g}" if isinstance(value, float) else repr(value)
    return CheckResult(d.describe(), ok, "" if ok else f"{d.path} was {shown} at t={t:.1f}s")


def _health_at(samples: list[tuple[float, dict[str, str]]], at: float | None) -> tuple[float, dict[str, str]] | None:
    if not samples:
        return None
    if at is None:
        return samples[-1]
    after = [s for s in samples if s[0] >= at]
    return after[0] if after else samples[-1]
