"""Rule-based driving-event detectors on a stream of ``VehicleState`` (pure; no clocks, no I/O).

Every detector is fed one snapshot at a time (``update(state) -> list[Event]``; 10 Hz in the
agent, 1 Hz works too) and returns the events that *ended* with that snapshot. Times are the
snapshots' ``monotonic`` seconds; missing values (``None``) are gaps: an event survives a gap of
up to ``max_gap`` seconds, a longer one ends it at its last valid sample.

Detectors and their default thresholds (all configurable, ``[behaviour]`` in the agent config):

* **harsh braking / acceleration / cornering**: |longitudinal| or |lateral| acceleration at or
  above **0.35 g = 3.43 m/s^2** -- the threshold of the DrivePlotR naturalistic data set's labels
  (Hardt 2024, ``accel_event``), in the 0.3-0.45 g band that insurance telematics programmes use
  for "hard braking" (e.g. Progressive Snapshot counts >= 7 mph/s = 0.32 g; NHTSA's naturalistic
  studies flag longitudinal decelerations from 0.3-0.5 g). Hysteresis: once started, an event
  lasts while the value stays above ``threshold - hysteresis`` (default 0.5 m/s^2), so noise
  around the threshold gives one event, not many; it counts only if it lasted ``min_duration``
  (default 0.5 s; the duration of an event is from its first to its last sample above the off
  level, plus one sample period). Severity is 0 at the threshold and 1 at ``full_scale``
  (default 0.8 g, near the friction limit of a dry road).
* **speeding**: speed above the limit of the current zone (circles or polygons with a limit in
  km/h; else a default limit; none when neither applies or the position is unknown while zones
  exist) by more than ``tolerance_kmh`` for at least ``min_duration`` seconds; it ends when the
  speed falls below ``limit + tolerance - hysteresis_kmh`` or the limit changes. Severity is 0
  at the tolerance and 1 at ``full_scale_kmh`` (default 30 km/h) above it.
* **continuous driving time**: EU regulation 561/2006 art. 7: after 4.5 h of driving a break of
  at least 45 min (standing still: speed below 1 m/s). Split breaks (15 + 30 min) are not
  modelled. The rule emits a ``fatigue`` event when the driving time exceeds the limit by
  ``grace`` seconds, then again every ``repeat`` seconds while no break was taken; ``duration``
  is the time driven beyond the limit (capped at the schema's 3600 s).

Events map onto the ``driving_event`` attestation kind (``ledger_lite.attestation.KINDS``):
``harsh_brake``, ``harsh_accel``, ``harsh_corner``, ``speeding`` and ``fatigue`` (the
driving-time rule has no event name of its own and uses ``fatigue``).

``python -m models.rules --evaluate nds_data.csv.gz`` compares the harsh-event detector with the
DrivePlotR labels (see docs/behaviour.md).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from hal.types import VehicleState

__all__ = [
    "EVENT_KINDS",
    "G",
    "RULES_MODEL",
    "RULES_VERSION",
    "Detector",
    "DrivingTimeRule",
    "DrivingTimeTracker",
    "Event",
    "HarshEventDetector",
    "SpeedZone",
    "SpeedingDetector",
    "ThresholdRule",
    "default_detectors",
    "driveplotr_category",
    "evaluate_driveplotr",
]

RULES_VERSION: Final = "1.0.0"
#: the ``model`` field of attestations these rules make
RULES_MODEL: Final = f"rules-{RULES_VERSION}"
#: standard gravity, m/s^2
G: Final = 9.80665
KMH: Final = 1 / 3.6
#: the event names of the ``driving_event`` attestation kind
EVENT_KINDS: Final = ("harsh_brake", "harsh_accel", "harsh_corner", "lane_change", "speeding", "fatigue")

# schema ranges of the driving_event body (ledger_lite/attestation.py)
_ACCEL_MAX = 30.0
_SPEED_MAX = 150.0
_YAW_MAX = 720.0
_DURATION_MAX = 3600.0


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


@dataclass(frozen=True, slots=True)
class Event:
    """One detected driving event; ``body()`` is its ``driving_event`` attestation body."""

    kind: str
    #: monotonic seconds of the first and the last sample of the event
    start: float
    end: float
    #: 0 = barely over the threshold, 1 = the worst the detector rates
    severity: float
    #: m/s at the start (None: the detector did not see a speed; the service fills it in)
    speed: float | None = None
    #: peaks, signed: m/s^2 forward positive, m/s^2 left positive, deg/s counter-clockwise
    accel_long: float | None = None
    accel_lat: float | None = None
    yaw_rate: float | None = None
    #: m/s, for speeding
    speed_limit: float | None = None
    confidence: float | None = None
    #: position at the start, WGS84 degrees
    lat: float | None = None
    lon: float | None = None
    #: UTC of the start, seconds since the epoch (0: unknown)
    timestamp: float = 0.0
    #: the version of what made it: ``rules-1.0.0``, a learned model's version, or None
    model: str | None = None
    #: the duration to report when it is not end - start (e.g. the driving-time overrun)
    reported_duration: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown driving event {self.kind!r} (known: {', '.join(EVENT_KINDS)})")

    @property
    def duration(self) -> float:
        return self.reported_duration if self.reported_duration is not None else max(0.0, self.end - self.start)

    def body(self, *, speed: float | None = None) -> dict[str, Any]:
        """The attestation body, clamped into the schema's ranges (a sensor glitch must not make
        an event unsignable). ``speed`` stands in when the event carries none."""
        v = self.speed if self.speed is not None else speed if speed is not None else 0.0
        out: dict[str, Any] = {
            "event": self.kind,
            "severity": _clamp(self.severity, 0.0, 1.0),
            "duration": _clamp(self.duration, 0.0, _DURATION_MAX),
            "speed": _clamp(v, 0.0, _SPEED_MAX),
        }
        if self.accel_long is not None:
            out["accel_long"] = _clamp(self.accel_long, -_ACCEL_MAX, _ACCEL_MAX)
        if self.accel_lat is not None:
            out["accel_lat"] = _clamp(self.accel_lat, -_ACCEL_MAX, _ACCEL_MAX)
        if self.yaw_rate is not None:
            out["yaw_rate"] = _clamp(self.yaw_rate, -_YAW_MAX, _YAW_MAX)
        if self.speed_limit is not None:
            out["speed_limit"] = _clamp(self.speed_limit, 0.0, _SPEED_MAX)
        if self.confidence is not None:
            out["confidence"] = _clamp(self.confidence, 0.0, 1.0)
        return out


def point_in_polygon(lat: float, lon: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Even-odd ray casting, planar in (lon, lat) -- fine for zones and cells of a few km; a point
    on a shared edge belongs to exactly one side. ``polygon`` is ``[(lat, lon), ...]``."""
    inside = False
    j = len(polygon) - 1
    for i in range(len(polygon)):
        yi, xi = polygon[i]
        yj, xj = polygon[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


class Detector(Protocol):
    """Anything that turns VehicleState snapshots into events (rules, a learned model)."""

    name: str

    def update(self, state: VehicleState) -> list[Event]: ...


# --------------------------------------------------------------------------------------------
# threshold with hysteresis


@dataclass
class _Open:
    start: float
    last: float
    speed: float | None
    lat: float | None
    lon: float | None
    timestamp: float
    peak: float
    peak_state: VehicleState
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ThresholdRule:
    """One signal against a threshold with hysteresis, minimum duration and gap tolerance.

    ``signal(state)`` is the value (None when missing); an event starts at ``>= on`` and lasts
    while the value is ``>= off``. ``make(open_event, duration)`` builds the event.
    """

    signal: Callable[[VehicleState], float | None]
    on: float
    off: float
    min_duration: float
    max_gap: float
    make: Callable[[_Open, float], Event]
    _open: _Open | None = None
    _period: float = 0.0
    _prev_t: float | None = None

    def __post_init__(self) -> None:
        if self.off > self.on:
            raise ValueError("the off level must not be above the on level")

    def update(self, s: VehicleState) -> list[Event]:
        t = s.monotonic
        if self._prev_t is not None and t > self._prev_t:
            dt = t - self._prev_t
            self._period = dt if self._period <= 0 else 0.8 * self._period + 0.2 * min(dt, 2 * self._period)
        self._prev_t = t
        value = self.signal(s)
        out: list[Event] = []
        ev = self._open
        if ev is not None and t - ev.last > self.max_gap:  # the data went away: end at the last sample
            out += self._close()
            ev = None
        if value is None or not math.isfinite(value):
            return out
        if ev is not None:
            if value >= self.off:
                ev.last = t
                if value > ev.peak:
                    ev.peak, ev.peak_state = value, s
                return out
            out += self._close()
        if value >= self.on:
            self._open = _Open(t, t, s.speed, s.lat, s.lon, s.timestamp, value, s)
        return out

    def _close(self) -> list[Event]:
        ev, self._open = self._open, None
        if ev is None:
            return []
        duration = ev.last - ev.start + self._period
        if duration + 1e-9 < self.min_duration:
            return []
        return [self.make(ev, duration)]

    def flush(self) -> list[Event]:
        """End an open event now (end of a drive or a log)."""
        return self._close()


def _severity(peak: float, on: float, full: float) -> float:
    return _clamp((peak - on) / (full - on), 0.0, 1.0) if full > on else 1.0


class HarshEventDetector:
    """Harsh braking, acceleration and cornering from the acceleration signals."""

    name = "harsh"

    def __init__(
        self,
        *,
        brake: float = 0.35 * G,
        accel: float = 0.35 * G,
        corner: float = 0.35 * G,
        hysteresis: float = 0.5,
        min_duration: float = 0.5,
        max_gap: float = 1.5,
        full_scale: float = 0.8 * G,
        model: str | None = RULES_MODEL,
    ) -> None:
        self.model = model
        self.full_scale = full_scale

        def along(s: VehicleState) -> float | None:
            return s.accel_longitudinal

        def neg_along(s: VehicleState) -> float | None:
            return None if s.accel_longitudinal is None else -s.accel_longitudinal

        def alat(s: VehicleState) -> float | None:
            return None if s.accel_lateral is None else abs(s.accel_lateral)

        signals = {"harsh_brake": (neg_along, brake), "harsh_accel": (along, accel), "harsh_corner": (alat, corner)}
        self.rules = {
            kind: ThresholdRule(sig, on, on - hysteresis, min_duration, max_gap, self._maker(kind, on))
            for kind, (sig, on) in signals.items()
        }

    def _maker(self, kind: str, on: float) -> Callable[[_Open, float], Event]:
        def make(ev: _Open, duration: float) -> Event:
            p = ev.peak_state
            return Event(
                kind,
                ev.start,
                ev.last,
                _severity(ev.peak, on, self.full_scale),
                speed=ev.speed,
                accel_long=p.accel_longitudinal,
                accel_lat=p.accel_lateral,
                yaw_rate=p.yaw_rate,
                lat=ev.lat,
                lon=ev.lon,
                timestamp=ev.timestamp,
                model=self.model,
                reported_duration=duration,
            )

        return make

    def update(self, state: VehicleState) -> list[Event]:
        out: list[Event] = []
        for rule in self.rules.values():
            out += rule.update(state)
        return out

    def flush(self) -> list[Event]:
        return [e for rule in self.rules.values() for e in rule.flush()]


# --------------------------------------------------------------------------------------------
# speeding


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6_371_008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class SpeedZone:
    """A zone with a speed limit: a circle (``lat``, ``lon``, ``radius_m``) or a polygon of
    ``(lat, lon)`` corners. Where zones overlap, the first listed wins."""

    limit_kmh: float
    lat: float = 0.0
    lon: float = 0.0
    radius_m: float = 0.0
    polygon: tuple[tuple[float, float], ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.limit_kmh <= 0:
            raise ValueError("a zone's limit must be > 0 km/h")
        if self.radius_m <= 0 and len(self.polygon) < 3:
            raise ValueError("a zone needs radius_m > 0 or a polygon of at least 3 corners")

    def contains(self, lat: float, lon: float) -> bool:
        if self.radius_m > 0:
            return haversine_m(self.lat, self.lon, lat, lon) <= self.radius_m
        return point_in_polygon(lat, lon, self.polygon)


class SpeedingDetector:
    name = "speeding"

    def __init__(
        self,
        zones: Sequence[SpeedZone] = (),
        *,
        default_limit_kmh: float | None = None,
        tolerance_kmh: float = 5.0,
        hysteresis_kmh: float = 2.0,
        min_duration: float = 10.0,
        max_gap: float = 2.0,
        full_scale_kmh: float = 30.0,
        model: str | None = RULES_MODEL,
    ) -> None:
        self.zones = list(zones)
        self.default_limit = default_limit_kmh if default_limit_kmh else None
        self.tolerance = tolerance_kmh
        self.hysteresis = hysteresis_kmh
        self.min_duration = min_duration
        self.max_gap = max_gap
        self.full_scale = full_scale_kmh
        self.model = model
        self._limit: float | None = None
        self._rule: ThresholdRule | None = None

    def limit_at(self, lat: float | None, lon: float | None) -> float | None:
        """The limit in km/h at a position (None: no limit known)."""
        if lat is None or lon is None:
            return None if self.zones else self.default_limit
        for z in self.zones:
            if z.contains(lat, lon):
                return z.limit_kmh
        return self.default_limit

    def _new_rule(self, limit: float) -> ThresholdRule:
        on = (limit + self.tolerance) * KMH
        off = max(limit * KMH, on - self.hysteresis * KMH)

        def make(ev: _Open, duration: float) -> Event:
            start_speed = ev.speed if ev.speed is not None else ev.peak
            return Event(
                "speeding",
                ev.start,
                ev.last,
                _severity(ev.peak, on, on + self.full_scale * KMH),
                speed=max(start_speed, limit * KMH + 0.01),  # above the limit by construction
                speed_limit=limit * KMH,
                lat=ev.lat,
                lon=ev.lon,
                timestamp=ev.timestamp,
                model=self.model,
                reported_duration=duration,
            )

        return ThresholdRule(lambda s: s.speed, on, off, self.min_duration, self.max_gap, make)

    def update(self, state: VehicleState) -> list[Event]:
        limit = self.limit_at(state.lat, state.lon)
        out: list[Event] = []
        if limit != self._limit:
            if self._rule is not None:
                out += self._rule.flush()
            self._limit = limit
            self._rule = self._new_rule(limit) if limit is not None else None
        if self._rule is not None:
            out += self._rule.update(state)
        return out

    def flush(self) -> list[Event]:
        return self._rule.flush() if self._rule is not None else []


# --------------------------------------------------------------------------------------------
# continuous driving time


class DrivingTimeTracker:
    """Continuous driving time with breaks: moving (speed >= ``moving_speed``) adds to the
    driving time, standing still for ``break_min`` seconds resets it. Gaps in the data longer
    than ``max_gap`` count as standing still (ignition off)."""

    def __init__(self, *, break_min: float = 45 * 60, moving_speed: float = 1.0, max_gap: float = 5.0) -> None:
        self.break_min = break_min
        self.moving_speed = moving_speed
        self.max_gap = max_gap
        self.driving = 0.0
        self.standing = 0.0
        self._prev: float | None = None

    def update(self, s: VehicleState) -> float:
        """Add a snapshot; the continuous driving time, seconds."""
        t = s.monotonic
        dt = 0.0 if self._prev is None else t - self._prev
        self._prev = t
        if dt <= 0:
            return self.driving
        if dt > self.max_gap:
            self.standing += dt
        elif s.speed is not None and s.speed >= self.moving_speed:
            self.driving += dt
            self.standing = 0.0
        else:  # stopped or no speed: not driving
            self.standing += dt
        if self.standing >= self.break_min:
            self.driving = 0.0
        return self.driving


class DrivingTimeRule:
    """EU 561/2006-style break rule: a ``fatigue`` event once the driving time passes
    ``limit + grace``, again every ``repeat`` seconds until a break."""

    name = "driving_time"

    def __init__(
        self,
        *,
        limit: float = 4.5 * 3600,
        break_min: float = 45 * 60,
        grace: float = 60.0,
        repeat: float = 1800.0,
        model: str | None = RULES_MODEL,
    ) -> None:
        self.limit = limit
        self.grace = grace
        self.repeat = repeat
        self.model = model
        self.tracker = DrivingTimeTracker(break_min=break_min)
        self._next = limit + grace

    def update(self, state: VehicleState) -> list[Event]:
        driving = self.tracker.update(state)
        if driving < self.limit:
            self._next = self.limit + self.grace
            return []
        if driving < self._next:
            return []
        self._next = driving + self.repeat
        over = driving - self.limit
        return [
            Event(
                "fatigue",
                state.monotonic - over,
                state.monotonic,
                _clamp(over / 3600.0, 0.0, 1.0),
                speed=state.speed,
                lat=state.lat,
                lon=state.lon,
                timestamp=state.timestamp,
                model=self.model,
                reported_duration=over,
            )
        ]


def default_detectors(model: str | None = RULES_MODEL) -> list[Detector]:
    return [HarshEventDetector(model=model), DrivingTimeRule(model=model)]


# --------------------------------------------------------------------------------------------
# evaluation on the DrivePlotR naturalistic drives (1 Hz, labels at 0.35 g)


def driveplotr_category(peak_g: float) -> str:
    """DrivePlotR's severity classes of a harsh event by its peak |acceleration| in g."""
    return "high" if peak_g >= 0.6 else "med" if peak_g >= 0.45 else "low"


@dataclass
class _Labelled:
    drive: str
    start: int
    end: int
    cat: str


def _read_drives(path: str) -> dict[str, list[dict[str, str]]]:
    opener: Any = gzip.open if path.endswith(".gz") else open
    drives: dict[str, list[dict[str, str]]] = {}
    with opener(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            drives.setdefault(row["drive"], []).append(row)
    return drives


def _f(text: str) -> float | None:
    return float(text) if text not in ("", "NA") else None


def evaluate_driveplotr(path: str, *, hysteresis: float = 0.0, min_duration: float = 1.0) -> dict[str, Any]:
    """Run the harsh-event detector (0.35 g) over every drive; match detected events with the
    labelled ones (overlap in time); precision/recall overall, per class and per drive."""
    drives = _read_drives(path)
    per_drive: dict[str, dict[str, int]] = {}
    labels_all: list[_Labelled] = []
    detected_all: list[tuple[str, int, int, str]] = []
    for drive, rows in drives.items():
        det = HarshEventDetector(hysteresis=hysteresis, min_duration=min_duration)
        events: list[Event] = []
        labelled: dict[str, _Labelled] = {}
        for i, row in enumerate(rows):
            ax, ay = _f(row["accel_x"]), _f(row["accel_y"])
            mph = _f(row["speed_mph"])
            s = VehicleState(
                monotonic=float(i),
                timestamp=0.0,
                sequence=i,
                speed=None if mph is None else mph * 0.44704,
                accel_longitudinal=None if ax is None else ax * G,
                accel_lateral=None if ay is None else ay * G,
                yaw_rate=_f(row["gyro_z"]),
            )
            events += det.update(s)
            if row["accel_event"] not in ("", "NA"):
                lab = labelled.setdefault(row["accel_event"], _Labelled(drive, i, i, row["accel_event_cat"]))
                lab.end = i
        events += det.flush()
        # one detection per episode: braking and cornering at the same time are one labelled event
        episodes = _merge_overlapping([(round(e.start), round(e.end), _peak_g(e)) for e in events])
        labs = list(labelled.values())
        tp_d = sum(any(a <= lab.end and lab.start <= b for lab in labs) for a, b, _ in episodes)
        tp_l = sum(any(a <= lab.end and lab.start <= b for a, b, _ in episodes) for lab in labs)
        per_drive[drive] = {
            "rows": len(rows),
            "labelled": len(labs),
            "detected": len(episodes),
            "tp_detected": tp_d,
            "tp_labelled": tp_l,
        }
        labels_all += labs
        detected_all += [(drive, a, b, driveplotr_category(p)) for a, b, p in episodes]
    per_class: dict[str, dict[str, int]] = {}
    for cat in ("low", "med", "high"):
        labs = [lab for lab in labels_all if lab.cat == cat]
        dets = [d for d in detected_all if d[3] == cat]
        per_class[cat] = {
            "labelled": len(labs),
            "detected": len(dets),
            # a hit of the right class: a labelled event of this class overlapped by a detection of this class
            "recall_hits": sum(any(_overlaps(d, lab) for d in dets) for lab in labs),
            "precision_hits": sum(any(_overlaps(d, lab) for lab in labs) for d in dets),
        }
    n_lab = sum(d["labelled"] for d in per_drive.values())
    n_det = sum(d["detected"] for d in per_drive.values())
    return {
        "per_drive": per_drive,
        "per_class": per_class,
        "labelled": n_lab,
        "detected": n_det,
        "precision": sum(d["tp_detected"] for d in per_drive.values()) / n_det if n_det else float("nan"),
        "recall": sum(d["tp_labelled"] for d in per_drive.values()) / n_lab if n_lab else float("nan"),
    }


def _overlaps(d: tuple[str, int, int, str], lab: _Labelled) -> bool:
    return d[0] == lab.drive and d[1] <= lab.end and lab.start <= d[2]


def _peak_g(e: Event) -> float:
    return max(abs(e.accel_long or 0.0), abs(e.accel_lat or 0.0)) / G


def _merge_overlapping(spans: Iterable[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    out: list[tuple[int, int, float]] = []
    for a, b, p in sorted(spans):
        if out and a <= out[-1][1]:
            pa, pb, pp = out[-1]
            out[-1] = (pa, max(pb, b), max(pp, p))
        else:
            out.append((a, b, p))
    return out


def _report(result: dict[str, Any], title: str) -> str:
    lines = [f"### {title}", ""]
    lines.append(
        f"events: labelled {result['labelled']}, detected {result['detected']}; "
        f"precision {result['precision']:.3f}, recall {result['recall']:.3f}"
    )
    lines += [
        "",
        "| class | labelled | detected | recall (same class) | precision (same class) |",
        "|---|---|---|---|---|",
    ]
    for cat, c in result["per_class"].items():
        rec = c["recall_hits"] / c["labelled"] if c["labelled"] else float("nan")
        prec = c["precision_hits"] / c["detected"] if c["detected"] else float("nan")
        lines.append(f"| {cat} | {c['labelled']} | {c['detected']} | {rec:.3f} | {prec:.3f} |")
    lines += ["", "| drive | rows (s) | labelled | detected | precision | recall |", "|---|---|---|---|---|---|"]
    for drive, d in sorted(result["per_drive"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        if not d["labelled"] and not d["detected"]:
            continue
        prec = d["tp_detected"] / d["detected"] if d["detected"] else float("nan")
        rec = d["tp_labelled"] / d["labelled"] if d["labelled"] else float("nan")
        lines.append(f"| {drive} | {d['rows']} | {d['labelled']} | {d['detected']} | {prec:.2f} | {rec:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.rules", description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", metavar="CSV", required=True, help="DrivePlotR nds_data.csv(.gz)")
    args = parser.parse_args(argv)
    out = sys.stdout
    out.write(_report(evaluate_driveplotr(args.evaluate), "upstream settings: 0.35 g, no hysteresis, 1 sample"))
    out.write("\n")
    agent = evaluate_driveplotr(args.evaluate, hysteresis=0.5, min_duration=0.5)
    out.write(_report(agent, "agent defaults: 0.35 g, hysteresis 0.5 m/s^2, min 0.5 s"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
