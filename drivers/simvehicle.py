"""The simulated test vehicle: a sans-IO core that drives a route and emits the reference
DBC frames and NMEA 0183 sentences, plus a thin async runner that paces it by a ``Clock``.

The core (``SimVehicle``) never sleeps and does no I/O after construction (which loads the
two reference DBCs). It advances on a fixed 10 ms tick grid from ``start_monotonic``; every
output is produced at a tick from the state of that tick, so the frames and sentences are a
pure function of (route, config, seed, outage windows, NMEA rate) and do not depend on how
often the caller asks for them::

    sim = SimVehicle(seed=1)
    frames = sim.frames_due(now)      # every CanFrame that fell due up to ``now``
    nmea = sim.nmea_due(now)          # every NMEA epoch that fell due, as bytes
    truth = sim.truth()               # the true state at the last tick

Route: a sequence of ``Segment`` (straight, or a curve with linear-curvature transitions) —
segments rather than waypoints, because curvature, speeds, stops and events then follow the
road exactly and a loop can be made to close by construction. The vehicle follows the path
with a kinematic bicycle model (rear-axle reference point) steered by path-curvature
feedforward, ``delta = atan(wheelbase * curvature)``, with a longitudinal controller that
brakes at a constant rate for slower segments and stop lines, limited in acceleration and
jerk. Positions are metres east/north in the tangent plane at the route origin, converted to
WGS84 through ECEF (exact, not a flat-earth scale).

Sign conventions (as the reference DBC comments): steering wheel angle left positive, yaw
rate counter-clockwise positive, lateral acceleration left positive (ISO 8855), longitudinal
acceleration forward positive; heading in degrees true (clockwise from north).
"""

from __future__ import annotations

import bisect
import inspect
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cantools
from cantools.database.can import Database as CanDatabase
from cantools.database.errors import UnsupportedDatabaseFormatError

from hal.errors import DecodeError
from hal.interfaces import CanPort, Clock
from hal.types import CanFrame

__all__ = [
    "GnssEpoch",
    "Route",
    "Segment",
    "SimConfig",
    "SimRunResult",
    "SimVehicle",
    "VehicleTruth",
    "curve",
    "nmea_checksum",
    "run_sim",
    "straight",
]

log = logging.getLogger(__name__)
#: per-frame traffic is logged below DEBUG
TRACE = 5

DATA_DIR = Path(__file__).resolve().parent / "data"
POWERTRAIN_DBC = DATA_DIR / "acc_testcar_powertrain.dbc"
BODY_DBC = DATA_DIR / "acc_testcar_body.dbc"

KMH = 1 / 3.6
KNOT = 1852.0 / 3600.0
_G = 9.80665
# WGS84
_A = 6378137.0
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)


# --------------------------------------------------------------------------------------------
# Route


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of road. Build them with ``straight()`` and ``curve()``."""

    #: length along the path, metres
    length: float
    #: speed the driver aims for on this segment, m/s (above ``speed_limit`` on a speeding stretch)
    speed: float
    #: legal limit, m/s (``None``: same as ``speed``)
    speed_limit: float | None = None
    #: heading change over the segment, degrees, left (counter-clockwise) positive; 0 = straight
    turn: float = 0.0
    #: metres of linear curvature ramp (clothoid) at each end of a curve
    transition: float = 0.0
    #: seconds stopped at the end of the segment (traffic light, stop sign); 0 = no stop
    stop: float = 0.0
    #: metres into the segment where an emergency brake starts (``None``: none)
    harsh_brake_at: float | None = None
    #: deceleration of that emergency brake, m/s² (positive)
    harsh_brake_decel: float = 6.0
    #: seconds standing still after it, hazard lights on
    harsh_brake_hold: float = 3.0
    #: no GNSS reception on this segment
    tunnel: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if not self.length > 0:
            raise ValueError(f"segment {self.name!r}: length must be > 0, got {self.length}")
        if not self.speed > 0:
            raise ValueError(f"segment {self.name!r}: speed must be > 0, got {self.speed}")
        if self.turn and not 0 <= 2 * self.transition < self.length:
            raise ValueError(
                f"segment {self.name!r}: transitions of {self.transition} m do not fit a curve of {self.length} m"
            )
        if self.harsh_brake_at is not None and not 0 <= self.harsh_brake_at < self.length:
            raise ValueError(f"segment {self.name!r}: harsh_brake_at outside the segment")
        if self.harsh_brake_decel <= 0 or self.stop < 0 or self.harsh_brake_hold < 0:
            raise ValueError(f"segment {self.name!r}: decelerations and durations must be positive")

    @property
    def limit(self) -> float:
        return self.speed if self.speed_limit is None else self.speed_limit

    @property
    def peak_curvature(self) -> float:
        """Curvature (1/m, left positive) of the constant part of a curve."""
        if not self.turn:
            return 0.0
        return math.radians(self.turn) / (self.length - self.transition)

    def curvature(self, u: float) -> tuple[float, float]:
        """Curvature and its derivative d(kappa)/ds at ``u`` metres into the segment."""
        k = self.peak_curvature
        if not k:
            return 0.0, 0.0
        t = self.transition
        if t > 0 and u < t:
            return k * u / t, k / t
        if t > 0 and u > self.length - t:
            return k * (self.length - u) / t, -k / t
        return k, 0.0

    def heading_change(self, u: float) -> float:
        """Integral of the curvature from 0 to ``u``, radians."""
        k = self.peak_curvature
        if not k:
            return 0.0
        t, length = self.transition, self.length
        u = min(max(u, 0.0), length)
        if t <= 0:
            return k * u
        if u <= t:
            return k * u * u / (2 * t)
        if u <= length - t:
            return k * t / 2 + k * (u - t)
        rest = length - u
        return k * (length - t) - k * rest * rest / (2 * t)


def straight(length: float, speed: float, **kwargs: Any) -> Segment:
    """A straight of ``length`` m driven at ``speed`` m/s (other ``Segment`` fields as keywords)."""
    return Segment(length=length, speed=speed, **kwargs)


def curve(turn: float, radius: float, speed: float, *, transition: float = 10.0, **kwargs: Any) -> Segment:
    """A curve turning ``turn`` degrees (left positive) at ``radius`` m, with ``transition`` m of
    linearly rising curvature at each end (length ``radians(|turn|) * radius + transition``)."""
    if radius <= 0 or not turn:
        raise ValueError(f"a curve needs a radius > 0 and a non-zero turn (got {radius}, {turn})")
    length = math.radians(abs(turn)) * radius + transition
    return Segment(length=length, speed=speed, turn=turn, transition=transition, **kwargs)


class Route:
    """Segments driven in order from ``origin`` (lat, lon degrees WGS84, height above the
    ellipsoid in metres; 566 m is 519 m above sea level in Munich) with initial ``heading``
    (degrees true).

    A ``loop`` route starts again at its first segment after its last; otherwise the vehicle
    stops at the end and stays there.
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        *,
        origin: tuple[float, float, float] = (48.1350, 11.5705, 566.0),
        heading: float = 90.0,
        loop: bool = True,
        name: str = "",
    ) -> None:
        if not segments:
            raise ValueError("a route needs at least one segment")
        self.segments = tuple(segments)
        self.origin = origin
        self.heading = heading
        self.loop = loop
        self.name = name
        self.starts: list[float] = []
        total = 0.0
        for seg in self.segments:
            self.starts.append(total)
            total += seg.length
        self.length = total
        # start pose (x east, y north, psi = math angle from east, CCW) of every segment
        self._poses: list[tuple[float, float, float]] = []
        pose = (0.0, 0.0, math.radians(90.0 - heading))
        for seg in self.segments:
            self._poses.append(pose)
            pose = self._integrate(seg, pose, seg.length)
        self._end_pose = pose

    @staticmethod
    def _integrate(
        seg: Segment, pose: tuple[float, float, float], u: float, step: float = 0.5
    ) -> tuple[float, float, float]:
        """Pose after ``u`` metres of ``seg`` from ``pose`` (Simpson's rule on cos/sin psi)."""
        x0, y0, psi0 = pose
        if not seg.turn:
            return x0 + u * math.cos(psi0), y0 + u * math.sin(psi0), psi0
        n = max(2, 2 * math.ceil(u / (2 * step)))
        h = u / n
        sx = sy = 0.0
        for i in range(n + 1):
            w = 1 if i in (0, n) else (4 if i % 2 else 2)
            psi = psi0 + seg.heading_change(i * h)
            sx += w * math.cos(psi)
            sy += w * math.sin(psi)
        return x0 + sx * h / 3, y0 + sy * h / 3, psi0 + seg.heading_change(u)

    def locate(self, s: float) -> tuple[int, float]:
        """Segment index and metres into it at path position ``s`` (wrapped on a loop)."""
        if self.loop:
            s %= self.length
        s = min(max(s, 0.0), self.length)
        i = max(0, bisect.bisect_right(self.starts, s) - 1)
        return i, s - self.starts[i]

    def pose_at(self, s: float) -> tuple[float, float, float]:
        """(east m, north m, heading degrees true) of the path at ``s``, by integrating the
        route's curvature (independent of the vehicle model's own integration)."""
        i, u = self.locate(s)
        x, y, psi = self._integrate(self.segments[i], self._poses[i], u, step=0.05)
        return x, y, (90.0 - math.degrees(psi)) % 360.0

    def starting_at(self, index: int) -> Route:
        """The same loop entered at the start of segment ``index`` (a fleet spread along one
        route). Only for loops: an open route has one start."""
        if not self.loop:
            raise ValueError("only a loop route can start at another segment")
        i = index % len(self.segments)
        if i == 0:
            return self
        x, y, psi = self._poses[i]
        lat, lon, h = _TangentPlane(*self.origin).to_geodetic(x, y, 0.0)
        return Route(
            [*self.segments[i:], *self.segments[:i]],
            origin=(lat, lon, h),
            heading=(90.0 - math.degrees(psi)) % 360.0,
            loop=True,
            name=f"{self.name}@{self.segments[i].name or i}",
        )

    def closure_error(self) -> float:
        """Distance in metres between the end and the start of the path."""
        x, y, _ = self._end_pose
        return math.hypot(x, y)

    @classmethod
    def default(cls) -> Route:
        """A ~2.3 km town loop south-west of Marienplatz, Munich, counter-clockwise: a traffic
        light, an emergency brake for a pedestrian (~ -6 m/s²), two S-bends, four 90° corners, a
        stop sign, a 68 km/h stretch in a 50 zone, and a 180 m underpass without GNSS.

        The four corners are alike and the two S-bends are alike, and opposite legs have equal
        straight lengths, so the loop closes exactly."""

        def corner(name: str, speed_kmh: float) -> Segment:
            return curve(90.0, 20.0, speed_kmh * KMH, transition=10.0, name=name)

        def s_bend(name: str, speed_kmh: float) -> list[Segment]:
            return [
                curve(15.0, 120.0, speed_kmh * KMH, transition=8.0, name=f"{name} left"),
                curve(-15.0, 120.0, speed_kmh * KMH, transition=8.0, name=f"{name} right"),
            ]

        lim50 = 50 * KMH
        segments = [
            straight(120, 40 * KMH, speed_limit=lim50, stop=6.0, name="Sonnenstrasse to traffic light"),
            straight(200, 48 * KMH, speed_limit=lim50, harsh_brake_at=140.0, name="Sonnenstrasse (pedestrian)"),
            *s_bend("Sendlinger Tor S-bend", 45),
            straight(300, 48 * KMH, speed_limit=lim50, name="Blumenstrasse"),
            corner("corner Viktualienmarkt", 20),
            straight(200, 45 * KMH, speed_limit=lim50, name="Frauenstrasse"),
            straight(150, 30 * KMH, speed_limit=30 * KMH, stop=3.0, name="Rosental (stop sign)"),
            corner("corner Marienplatz", 20),
            straight(100, 50 * KMH, speed_limit=lim50, name="Rindermarkt"),
            straight(380, 68 * KMH, speed_limit=lim50, name="Oberanger (speeding)"),
            *s_bend("Sendlinger Strasse S-bend", 45),
            straight(140, 45 * KMH, speed_limit=lim50, name="Hackenstrasse"),
            corner("corner Hackenviertel", 20),
            straight(100, 45 * KMH, speed_limit=lim50, name="Herzog-Wilhelm-Strasse"),
            straight(180, 50 * KMH, speed_limit=60 * KMH, tunnel=True, name="Altstadtring underpass"),
            straight(70, 40 * KMH, speed_limit=lim50, stop=8.0, name="to traffic light Sendlinger Tor"),
            corner("corner Sonnenstrasse", 20),
        ]
        return cls(segments, origin=(48.1350, 11.5705, 566.0), heading=90.0, loop=True, name="munich-town")


# --------------------------------------------------------------------------------------------
# Geodesy


def _geodetic_to_ecef(lat: float, lon: float, h: float) -> tuple[float, float, float]:
    la, lo = math.radians(lat), math.radians(lon)
    n = _A / math.sqrt(1 - _E2 * math.sin(la) ** 2)
    return (
        (n + h) * math.cos(la) * math.cos(lo),
        (n + h) * math.cos(la) * math.sin(lo),
        (n * (1 - _E2) + h) * math.sin(la),
    )


def _ecef_to_geodetic(x: float, y: float, z: float) -> tuple[float, float, float]:
    lon = math.atan2(y, x)
    p = math.hypot(x, y)
    lat = math.atan2(z, p * (1 - _E2))
    h = 0.0
    for _ in range(6):
        n = _A / math.sqrt(1 - _E2 * math.sin(lat) ** 2)
        h = p / math.cos(lat) - n
        lat = math.atan2(z, p * (1 - _E2 * n / (n + h)))
    return math.degrees(lat), math.degrees(lon), h


class _TangentPlane:
    """East/north/up metres around an origin <-> WGS84 degrees, through ECEF."""

    def __init__(self, lat0: float, lon0: float, h0: float) -> None:
        self.origin = _geodetic_to_ecef(lat0, lon0, h0)
        la, lo = math.radians(lat0), math.radians(lon0)
        self.sla, self.cla, self.slo, self.clo = math.sin(la), math.cos(la), math.sin(lo), math.cos(lo)

    def to_geodetic(self, e: float, n: float, u: float = 0.0) -> tuple[float, float, float]:
        x0, y0, z0 = self.origin
        x = x0 - self.slo * e - self.sla * self.clo * n + self.cla * self.clo * u
        y = y0 + self.clo * e - self.sla * self.slo * n + self.cla * self.slo * u
        z = z0 + self.cla * n + self.sla * u
        return _ecef_to_geodetic(x, y, z)


# --------------------------------------------------------------------------------------------
# Configuration and state


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Parameters of the simulated vehicle (SI units)."""

    #: seconds between simulation steps; every DBC cycle time must be a multiple of it
    tick: float = 0.01
    #: metres between front and rear axle
    wheelbase: float = 2.8
    #: metres between left and right wheels
    track: float = 1.6
    #: steering wheel angle / road-wheel angle
    steering_ratio: float = 15.0
    #: kg
    mass: float = 1500.0
    #: m, dynamic rolling radius
    wheel_radius: float = 0.31
    drag_area: float = 0.65  # Cd * A, m²
    rolling_resistance: float = 0.012
    gear_ratios: tuple[float, ...] = (3.6, 2.1, 1.4, 1.0, 0.8, 0.66)
    final_drive: float = 3.9
    #: upshift speeds, m/s, into gear 2..n; downshift 1 m/s below
    upshift_speeds: tuple[float, ...] = (12 * KMH, 27 * KMH, 42 * KMH, 57 * KMH, 75 * KMH)
    idle_rpm: float = 750.0
    max_torque: float = 250.0  # Nm
    #: comfortable deceleration the driver plans with for slower segments and stops, m/s²
    comfort_decel: float = 1.6
    #: deceleration limit outside an emergency, m/s²
    max_decel: float = 3.5
    #: acceleration limit at standstill, falling linearly with speed by ``accel_falloff``
    max_accel: float = 2.2
    accel_falloff: float = 0.03
    #: jerk limit, m/s³, normal driving and emergency braking
    max_jerk: float = 3.0
    emergency_jerk: float = 30.0
    #: gain of the speed controller, 1/s
    speed_gain: float = 1.2
    #: relative standard deviation of the driver's per-lap target speed of each segment
    speed_variation: float = 0.02
    #: seconds of random extra wait at each stop (uniform 0..this)
    stop_variation: float = 2.0
    #: standard deviation of the GNSS position error per axis, metres (Gauss-Markov process)
    gnss_noise: float = 0.5
    #: correlation time of that error, seconds
    gnss_noise_tau: float = 30.0
    #: satellites used / HDOP / VDOP / PDOP reported while there is a fix
    gnss_satellites: tuple[int, ...] = (2, 5, 7, 9, 13, 15, 18, 20, 24, 29)
    hdop: float = 0.9
    vdop: float = 1.3
    pdop: float = 1.6
    #: geoid height (N) at the route, metres; GGA altitude is above mean sea level
    geoid_separation: float = 47.0
    talker: str = "GP"
    #: odometer at the start, metres
    start_odometer: float = 12_345_600.0
    fuel_level: float = 62.0  # % at the start
    fuel_per_metre: float = 0.00014  # % of tank per metre driven
    coolant_temp: float = 90.0
    transmission_temp: float = 80.0
    ambient_temp: float = 18.5
    battery_voltage: float = 14.1
    tire_pressures: tuple[float, float, float, float] = (240.0, 240.0, 232.0, 232.0)  # kPa FL FR RL RR
    #: frames kept for a caller that does not drain ``frames_due`` (oldest dropped beyond)
    max_pending_frames: int = 200_000
    max_pending_nmea: int = 2_000


@dataclass(frozen=True, slots=True)
class VehicleTruth:
    """The true state of the simulated vehicle at one tick. Field names follow
    ``hal.types.VehicleState`` where they overlap."""

    #: seconds since the start of the simulation
    t: float
    monotonic: float
    #: UTC seconds since the epoch
    timestamp: float
    #: m/s (rear axle centre)
    speed: float
    #: m/s², forward positive
    accel_longitudinal: float
    #: m/s², left positive (ISO 8855)
    accel_lateral: float
    #: deg/s, counter-clockwise positive
    yaw_rate: float
    #: steering wheel angle, degrees, left positive
    steering_angle: float
    #: deg/s
    steering_rate: float
    #: road-wheel angle, degrees, left positive
    wheel_angle: float
    #: pedal positions 0..100 %
    brake: float
    throttle: float
    #: bar
    brake_pressure: float
    #: -1 reverse, 0 neutral, 1..n, 126 park (VSS)
    gear: int
    engine_rpm: float
    #: Nm at the crankshaft, negative while engine braking
    engine_torque: float
    lat: float
    lon: float
    #: height above the WGS84 ellipsoid, metres
    alt: float
    #: degrees true, clockwise from north
    heading: float
    #: metres east / north of the route origin
    east: float
    north: float
    #: metres, total
    odometer: float
    #: metres along the path since the start (all laps)
    distance: float
    #: 1/m, left positive
    curvature: float
    #: m/s, FL FR RL RR
    wheel_speeds: tuple[float, float, float, float]
    #: m/s, the legal limit where the vehicle is
    speed_limit: float
    segment: int
    segment_name: str
    lap: int
    #: no GNSS here (tunnel or an outage window)
    gnss_outage: bool
    #: emergency braking or standing after it
    harsh_brake: bool
    stopped: bool
    turn_left: bool
    turn_right: bool
    hazard: bool
    low_beam: bool
    brake_light: bool
    fuel_level: float


@dataclass(frozen=True, slots=True)
class GnssEpoch:
    """What the simulated receiver reported at one NMEA epoch, and the truth behind it."""

    monotonic: float
    timestamp: float
    fix: bool
    #: reported position (truth + noise), ``None`` without a fix
    lat: float | None
    lon: float | None
    true_lat: float
    true_lon: float
    #: the noise added, metres east / north
    noise_east: float
    noise_north: float
    speed: float
    course: float
    sentences: tuple[str, ...] = field(default=(), repr=False)


def nmea_checksum(body: str) -> str:
    """XOR of the characters between ``$`` and ``*``, as two upper-case hex digits."""
    value = 0
    for ch in body.encode("ascii"):
        value ^= ch
    return f"{value:02X}"


def _sentence(body: str) -> str:
    return f"${body}*{nmea_checksum(body)}\r\n"


def _nmea_lat(lat: float) -> tuple[str, str]:
    return _nmea_angle(abs(lat), 2), "N" if lat >= 0 else "S"


def _nmea_lon(lon: float) -> tuple[str, str]:
    return _nmea_angle(abs(lon), 3), "E" if lon >= 0 else "W"


def _nmea_angle(value: float, width: int) -> str:
    # integer 1e-5 minutes so rounding never prints 60.00000 minutes
    total = round(value * 60 * 100_000)
    deg, minutes = divmod(total, 60 * 100_000)
    whole, frac = divmod(minutes, 100_000)
    return f"{deg:0{width}d}{whole:02d}.{frac:05d}"


# --------------------------------------------------------------------------------------------
# The core


_DRIVE, _STOP_HOLD, _EMERGENCY, _EMERGENCY_HOLD, _FINISHED = range(5)


_SIG_VALUE, _SIG_MUX, _SIG_COUNTER = range(3)


@dataclass(frozen=True, slots=True)
class _FramePlan:
    """How one cyclic DBC message is filled, worked out once per vehicle: for every page of
    a multiplexed message (``None`` for a plain one) the signals it carries, in DBC order,
    as (name, kind, lower clamp, upper clamp)."""

    message: Any
    name: str
    channel: str
    period: int
    frame_id: int
    is_extended_id: bool
    is_fd: bool
    #: multiplexer values cycled through, in order (empty: not multiplexed)
    pages: tuple[int, ...]
    fields: dict[int | None, tuple[tuple[str, int, float, float], ...]]
    #: the rolling counter wraps at this (0: the message has no ``*_Counter`` signal)
    counter_modulus: int

    @classmethod
    def build(cls, msg: Any, channel: str, period: int) -> _FramePlan:
        pages: tuple[int, ...] = ()
        if msg.is_multiplexed():
            pages = tuple(sorted({mid for s in msg.signals for mid in (s.multiplexer_ids or ())}))
        fields: dict[int | None, tuple[tuple[str, int, float, float], ...]] = {}
        for page in pages or (None,):
            rows: list[tuple[str, int, float, float]] = []
            for sig in msg.signals:
                if sig.is_multiplexer:
                    rows.append((sig.name, _SIG_MUX, -math.inf, math.inf))
                    continue
                if sig.multiplexer_ids is not None and page not in sig.multiplexer_ids:
                    continue
                if sig.name.endswith("_Counter"):
                    rows.append((sig.name, _SIG_COUNTER, -math.inf, math.inf))
                    continue
                lo = sig.minimum if sig.minimum is not None else -math.inf
                hi = sig.maximum if sig.maximum is not None else math.inf
                rows.append((sig.name, _SIG_VALUE, lo, hi))
            fields[page] = tuple(rows)
        counter = next((s for s in msg.signals if s.name.endswith("_Counter")), None)
        return cls(
            message=msg,
            name=msg.name,
            channel=channel,
            period=period,
            frame_id=msg.frame_id,
            is_extended_id=msg.is_extended_frame,
            is_fd=msg.is_fd,
            pages=pages,
            fields=fields,
            counter_modulus=0 if counter is None else int(counter.maximum or 15) + 1,
        )


class SimVehicle:
    """The simulated test vehicle (sans-IO, deterministic for a given seed).

    ``start_monotonic``/``start_utc`` map simulation time 0 onto a clock; ``run_sim`` sets them
    from its clock unless the vehicle has already started. ``gnss_outages`` are extra windows
    (seconds of simulation time, ``[start, end)``) without GNSS, on top of tunnel segments.
    ``nmea_rate_hz`` is 1..10, or ``None`` for no NMEA; ``emit_can=False`` skips encoding
    frames (fast dynamics-only runs).
    """

    def __init__(
        self,
        route: Route | None = None,
        *,
        seed: int = 0,
        config: SimConfig | None = None,
        nmea_rate_hz: float | None = 1.0,
        gnss_outages: Sequence[tuple[float, float]] = (),
        start_monotonic: float = 0.0,
        start_utc: float = 1_700_000_000.0,
        emit_can: bool = True,
    ) -> None:
        self.route = route if route is not None else Route.default()
        self.config = cfg = config if config is not None else SimConfig()
        self.seed = seed
        if nmea_rate_hz is not None and not 1.0 <= nmea_rate_hz <= 10.0:
            raise ValueError(f"nmea_rate_hz must be within 1..10 (got {nmea_rate_hz})")
        self.nmea_rate_hz = nmea_rate_hz
        for start, end in gnss_outages:
            if not end > start:
                raise ValueError(f"GNSS outage window ({start}, {end}) must end after it starts")
        self.gnss_outages = tuple((float(a), float(b)) for a, b in gnss_outages)
        self.emit_can = emit_can
        self._tick_ms = round(cfg.tick * 1000)
        if self._tick_ms <= 0 or abs(self._tick_ms - cfg.tick * 1000) > 1e-9:
            raise ValueError(f"tick must be a whole number of milliseconds (got {cfg.tick})")

        self._plane = _TangentPlane(*self.route.origin)
        self._rng_drive = random.Random(f"simvehicle-drive-{seed}")
        self._rng_gnss = random.Random(f"simvehicle-gnss-{seed}")
        self._lap_factors: dict[int, tuple[list[float], list[float]]] = {}

        self._messages = self._load_dbcs()
        self._counters: dict[str, int] = {m.name: 0 for m, _, _ in self._messages}
        self._pages: dict[str, int] = {m.name: 0 for m, _, _ in self._messages}
        self._plans = [_FramePlan.build(m, channel, period) for m, channel, period in self._messages]

        self._start_monotonic = start_monotonic
        self._start_utc = start_utc
        self._started = False
        self._k = -1  # last processed tick
        # dynamics state
        self._s = 0.0  # path position, all laps
        self._v = 0.0
        self._a = 0.0
        self._x = 0.0
        self._y = 0.0
        self._psi = math.radians(90.0 - self.route.heading)
        self._gear = 1
        self._mode = _DRIVE
        self._hold_until = 0.0
        self._served_stops: set[tuple[int, int]] = set()  # (lap, segment)
        self._served_brakes: set[tuple[int, int]] = set()
        self._pending_stop: tuple[int, int] | None = None
        self._gnss_noise = [0.0, 0.0]
        self._next_epoch = 0
        self._last_zda_second: int | None = None
        self._last_course = self.route.heading % 360.0
        self._steer_rate = 0.0

        self._frames: deque[CanFrame] = deque()
        self._nmea: deque[bytes] = deque()
        self.dropped_frames = 0
        self.dropped_nmea = 0
        self._gnss_history: deque[GnssEpoch] = deque(maxlen=3600)
        self._truth = self._make_truth(0.0, 0.0, 0.0)
        self._check_signals()

    # -- setup ----------------------------------------------------------------------------

    def _load_dbcs(self) -> list[tuple[Any, str, int]]:
        """(cantools message, channel, period in ticks) of every cyclic message, bus order."""
        out: list[tuple[Any, str, int]] = []
        for path, channel in ((POWERTRAIN_DBC, "can0"), (BODY_DBC, "can1")):
            try:
                db = cantools.database.load_file(str(path), database_format="dbc")
            except (OSError, UnsupportedDatabaseFormatError) as err:
                raise DecodeError(f"cannot load the reference DBC: {err}", where=str(path)) from err
            if not isinstance(db, CanDatabase):
                raise DecodeError("not a CAN database", where=str(path))
            for msg in sorted(db.messages, key=lambda m: m.frame_id):
                if not msg.cycle_time:
                    log.debug("%s: %s has no GenMsgCycleTime, not sent", path.name, msg.name)
                    continue
                if msg.cycle_time % self._tick_ms:
                    raise ValueError(
                        f"{msg.name}: cycle time {msg.cycle_time} ms is not a multiple of the {self._tick_ms} ms tick"
                    )
                out.append((msg, channel, msg.cycle_time // self._tick_ms))
        return out

    def _check_signals(self) -> None:
        values = self._signal_values(self._truth)
        missing = [
            f"{m.name}.{s.name}"
            for m, _, _ in self._messages
            for s in m.signals
            if s.name not in values and not s.is_multiplexer and not s.name.endswith("_Counter")
        ]
        if missing:
            raise ValueError(f"the simulator has no value for DBC signals: {', '.join(missing)}")

    # -- time -----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started or self._k >= 0

    def start(self, monotonic: float, utc: float) -> None:
        """Map simulation time 0 onto ``monotonic`` / ``utc``; only before the first tick."""
        if self._k >= 0:
            raise RuntimeError("the simulation has already started")
        self._start_monotonic = monotonic
        self._start_utc = utc
        self._started = True
        self._truth = self._make_truth(0.0, 0.0, 0.0)

    @property
    def sim_time(self) -> float:
        """Simulation seconds of the last processed tick (0 before the first)."""
        return max(self._k, 0) * self._tick_ms / 1000

    @property
    def next_tick_monotonic(self) -> float:
        return self._start_monotonic + (self._k + 1) * self._tick_ms / 1000

    def advance_to(self, now: float) -> None:
        """Process every tick at or before monotonic time ``now`` (a no-op for the past)."""
        last = math.floor((now - self._start_monotonic) * 1000 / self._tick_ms + 1e-6)
        while self._k < last:
            self._k += 1
            self._tick()

    def step(self, dt: float) -> None:
        """Advance by ``dt`` seconds from the last processed tick."""
        self.advance_to(self._start_monotonic + self.sim_time + dt)

    def frames_due(self, now: float) -> list[CanFrame]:
        """Advance to ``now`` and return every frame that fell due since the last call, in
        time order (bus can0 before can1 and by identifier within one tick)."""
        self.advance_to(now)
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def nmea_due(self, now: float) -> bytes:
        """Advance to ``now`` and return the NMEA sentences of every epoch that fell due."""
        self.advance_to(now)
        data = b"".join(self._nmea)
        self._nmea.clear()
        return data

    def truth(self) -> VehicleTruth:
        """The true state at the last processed tick."""
        return self._truth

    @property
    def gnss_history(self) -> Sequence[GnssEpoch]:
        """The last hour of NMEA epochs (what was reported and the truth behind it)."""
        return tuple(self._gnss_history)

    # -- one tick -------------------------------------------------------------------------

    def _tick(self) -> None:
        k = self._k
        t = k * self._tick_ms / 1000
        if k > 0:
            self._dynamics(t, self._tick_ms / 1000)
        accel_used = self._a if k > 0 else 0.0
        self._truth = truth = self._make_truth(t, accel_used, self._steer_rate)
        if self.emit_can:
            self._emit_frames(k, truth)
        if self.nmea_rate_hz is not None and t + 1e-9 >= self._next_epoch / self.nmea_rate_hz:
            while t + 1e-9 >= self._next_epoch / self.nmea_rate_hz:
                self._next_epoch += 1
            self._emit_nmea(truth)

    def _lap_factors_for(self, lap: int) -> tuple[list[float], list[float]]:
        # generated in lap order from one RNG stream: the same seed gives the same driver
        while lap not in self._lap_factors:
            n = len(self._lap_factors)
            cfg = self.config
            speeds = [
                1.0 + max(-2.0, min(2.0, self._rng_drive.gauss(0.0, 1.0))) * cfg.speed_variation
                for _ in self.route.segments
            ]
            waits = [self._rng_drive.uniform(0.0, cfg.stop_variation) for _ in self.route.segments]
            self._lap_factors[n] = (speeds, waits)
        return self._lap_factors[lap]

    def _target_speed(self, lap: int, index: int) -> float:
        return self.route.segments[index].speed * self._lap_factors_for(lap)[0][index]

    def _where(self, s: float) -> tuple[int, int, float]:
        """(lap, segment, metres into it) at path position ``s``."""
        route = self.route
        lap = int(s // route.length) if route.loop else 0
        i, u = route.locate(s)
        return lap, i, u

    def _dynamics(self, t: float, dt: float) -> None:
        cfg = self.config
        route = self.route
        v, a = self._v, self._a
        lap, i, u = self._where(self._s)
        seg = route.segments[i]
        seg_start = lap * route.length + route.starts[i] if route.loop else route.starts[i]

        # emergency brake when the path passes its point (once per lap)
        if (
            self._mode == _DRIVE
            and seg.harsh_brake_at is not None
            and u >= seg.harsh_brake_at
            and (lap, i) not in self._served_brakes
        ):
            self._served_brakes.add((lap, i))
            self._mode = _EMERGENCY
            log.debug("t=%.2f emergency brake on %s", t, seg.name)

        jerk = cfg.max_jerk
        if self._mode in (_STOP_HOLD, _EMERGENCY_HOLD, _FINISHED):
            if self._mode != _FINISHED and t >= self._hold_until - 1e-9:
                self._mode = _DRIVE
            else:
                self._a = 0.0
                self._steer_rate = 0.0
                return
        if self._mode == _EMERGENCY:
            a_des = -seg.harsh_brake_decel
            jerk = cfg.emergency_jerk
        else:
            a_des = cfg.speed_gain * (self._target_speed(lap, i) - v)
            a_des = min(a_des, self._constraint_decel(lap, i, seg_start, v))
            a_des = max(-cfg.max_decel, min(a_des, cfg.max_accel - cfg.accel_falloff * v))
        a = a + max(-jerk * dt, min(jerk * dt, a_des - a))
        v_new = v + a * dt
        stopping = self._pending_stop is not None or self._mode == _EMERGENCY
        if v_new <= 0.0 or (stopping and v_new < 0.05 and a < 0):
            # standing still: the distance covered while decelerating to zero in this step
            ds = v * v / (2 * -a) if a < 0 else 0.0
            ds = min(ds, v * dt)
            v_new = 0.0
            self._on_standstill(t, lap)
            a = 0.0 if self._mode != _DRIVE else a
        else:
            ds = (v + v_new) / 2 * dt
        self._v = max(v_new, 0.0)
        self._a = a
        self._move(ds, dt)

    def _constraint_decel(self, lap: int, i: int, seg_start: float, v: float) -> float:
        """Acceleration (<= 0) needed to meet the slower segments and stop lines ahead; +inf
        when none needs braking yet. Braking starts when the constant deceleration needed
        reaches ``comfort_decel``; from then on the vehicle brakes exactly as much as needed."""
        cfg = self.config
        route = self.route
        n = len(route.segments)
        best = math.inf
        horizon = v * v / (2 * 0.8) + 5.0
        # a stop line already passed (by a few cm) but not yet stopped at
        if self._pending_stop is not None:
            p_lap, p_i = self._pending_stop
            end = p_lap * route.length + route.starts[p_i] + route.segments[p_i].length
            d = end - self._s
            if d <= 0.05:
                return -cfg.max_decel
        d_end = seg_start + route.segments[i].length - self._s  # distance to the end of segment i
        j_lap, j = lap, i
        dist = d_end
        for _ in range(n + 1):
            seg = route.segments[j]
            if seg.stop > 0 and (j_lap, j) not in self._served_stops:
                need = v * v / (2 * max(dist, 0.01))
                if need >= cfg.comfort_decel or self._pending_stop == (j_lap, j):
                    self._pending_stop = (j_lap, j)
                    best = min(best, -need)
                break  # nothing beyond a stop matters yet
            # next segment
            j += 1
            if j >= n:
                if not route.loop:
                    need = v * v / (2 * max(dist, 0.01))
                    if need >= cfg.comfort_decel or self._pending_stop == (j_lap, n - 1):
                        self._pending_stop = (j_lap, n - 1)
                        best = min(best, -need)
                    break
                j, j_lap = 0, j_lap + 1
            vt = self._target_speed(j_lap, j)
            if vt < v and dist > 0:
                need = (v * v - vt * vt) / (2 * dist)
                if need >= cfg.comfort_decel:
                    best = min(best, -need)
            if dist > horizon:
                break
            dist += route.segments[j].length
        return best

    def _on_standstill(self, t: float, lap: int) -> None:
        if self._mode == _EMERGENCY:
            _, i = max(self._served_brakes)  # the brake just served
            hold = self.route.segments[i].harsh_brake_hold
            self._mode = _EMERGENCY_HOLD
            self._hold_until = t + hold
            return
        if self._pending_stop is not None:
            p_lap, p_i = self._pending_stop
            self._served_stops.add(self._pending_stop)
            self._pending_stop = None
            seg = self.route.segments[p_i]
            if not self.route.loop and p_i == len(self.route.segments) - 1 and not seg.stop:
                self._mode = _FINISHED
                return
            wait = seg.stop + self._lap_factors_for(p_lap)[1][p_i]
            self._mode = _STOP_HOLD
            self._hold_until = t + wait
            if not self.route.loop and p_i == len(self.route.segments) - 1:
                self._mode = _FINISHED

    def _curvature(self, s: float) -> tuple[float, float]:
        i, u = self.route.locate(s)
        return self.route.segments[i].curvature(u)

    def _move(self, ds: float, dt: float) -> None:
        """Kinematic bicycle model over one step: steering from path-curvature feedforward."""
        cfg = self.config
        if not self.route.loop:
            ds = min(ds, self.route.length - self._s)
        k_mid, _ = self._curvature(self._s + ds / 2)
        delta = math.atan(cfg.wheelbase * k_mid)
        dpsi = ds * math.tan(delta) / cfg.wheelbase  # = v dt tan(delta) / L
        psi_mid = self._psi + dpsi / 2
        self._x += ds * math.cos(psi_mid)
        self._y += ds * math.sin(psi_mid)
        self._psi += dpsi
        self._s += ds
        k, dk = self._curvature(self._s)
        lk = cfg.wheelbase * k
        # d(delta)/dt = L dk/ds v / (1 + (L k)^2)
        self._steer_rate = math.degrees(cfg.wheelbase * dk * self._v / (1 + lk * lk)) * cfg.steering_ratio

    # -- derived state --------------------------------------------------------------------

    def _select_gear(self, v: float) -> int:
        cfg = self.config
        gear = self._gear
        while gear < len(cfg.gear_ratios) and v >= cfg.upshift_speeds[gear - 1]:
            gear += 1
        while gear > 1 and v < cfg.upshift_speeds[gear - 2] - 1.0:
            gear -= 1
        self._gear = gear
        return gear

    def _make_truth(self, t: float, accel: float, steer_rate: float) -> VehicleTruth:
        cfg = self.config
        route = self.route
        v = self._v
        s = self._s
        lap, i, u = self._where(s)
        seg = route.segments[i]
        k, _ = seg.curvature(u)
        delta = math.atan(cfg.wheelbase * k)
        yaw_rate = v * math.tan(delta) / cfg.wheelbase  # rad/s
        lat, lon, alt = self._plane.to_geodetic(self._x, self._y)

        gear = self._select_gear(v)
        ratio = cfg.gear_ratios[gear - 1] * cfg.final_drive
        rpm = max(cfg.idle_rpm, v / cfg.wheel_radius * ratio * 60 / (2 * math.pi))
        holding = self._mode in (_STOP_HOLD, _EMERGENCY_HOLD, _FINISHED) or (v == 0 and accel <= 0)
        resist = 0.5 * 1.2 * cfg.drag_area * v * v + (cfg.rolling_resistance * cfg.mass * _G if v > 0 else 0)
        force = cfg.mass * accel + resist
        drag_torque = -(10.0 + 0.004 * rpm) if v > 1.0 else 0.0
        eff = 0.9
        if holding:
            torque, throttle, pressure = 0.0, 0.0, 12.0
        elif force >= 0:
            torque = force * cfg.wheel_radius / (ratio * eff)
            throttle, pressure = min(100.0, torque / cfg.max_torque * 100.0), 0.0
        else:
            engine_force = drag_torque * ratio * eff / cfg.wheel_radius
            if force >= engine_force:
                torque, pressure = force * cfg.wheel_radius / (ratio * eff), 0.0
            else:
                torque = drag_torque
                pressure = (engine_force - force) / cfg.mass * 12.0  # ~12 bar per m/s²
            throttle = 0.0
        brake = min(100.0, pressure / 0.9)  # 90 bar = pedal floored
        if pressure < 0.05:
            pressure, brake = 0.0, 0.0

        w2 = cfg.track / 2
        kl = k * cfg.wheelbase
        wheel_speeds = (
            v * math.hypot(kl, 1 - k * w2),
            v * math.hypot(kl, 1 + k * w2),
            v * abs(1 - k * w2),
            v * abs(1 + k * w2),
        )
        outage = seg.tunnel or any(a <= t < b for a, b in self.gnss_outages)
        harsh = self._mode in (_EMERGENCY, _EMERGENCY_HOLD)
        turn = self._indicated_turn(s)
        return VehicleTruth(
            t=t,
            monotonic=self._start_monotonic + t,
            timestamp=self._start_utc + t,
            speed=v,
            accel_longitudinal=accel,
            accel_lateral=v * yaw_rate,
            yaw_rate=math.degrees(yaw_rate),
            steering_angle=math.degrees(delta) * cfg.steering_ratio,
            steering_rate=steer_rate,
            wheel_angle=math.degrees(delta),
            brake=brake,
            throttle=max(0.0, throttle),
            brake_pressure=pressure,
            gear=gear,
            engine_rpm=rpm,
            engine_torque=torque,
            lat=lat,
            lon=lon,
            alt=alt,
            heading=(90.0 - math.degrees(self._psi)) % 360.0,
            east=self._x,
            north=self._y,
            odometer=cfg.start_odometer + s,
            distance=s,
            curvature=k,
            wheel_speeds=wheel_speeds,
            speed_limit=seg.limit,
            segment=i,
            segment_name=seg.name,
            lap=lap,
            gnss_outage=outage,
            harsh_brake=harsh,
            stopped=v == 0.0,
            turn_left=turn > 0,
            turn_right=turn < 0,
            hazard=self._mode == _EMERGENCY_HOLD,
            low_beam=seg.tunnel,
            brake_light=pressure > 1.0,
            fuel_level=max(0.0, cfg.fuel_level - cfg.fuel_per_metre * s),
        )

    def _indicated_turn(self, s: float) -> int:
        """+1 / -1 while within 30 m before or inside a turn of 45 degrees or more."""
        for probe in (s, s + 15.0, s + 30.0):
            i, _ = self.route.locate(probe)
            turn = self.route.segments[i].turn
            if abs(turn) >= 45.0:
                return 1 if turn > 0 else -1
        return 0

    def _signal_values(self, tr: VehicleTruth) -> dict[str, float]:
        cfg = self.config
        fl, fr, rl, rr = tr.wheel_speeds
        return {
            # STEERING_1
            "SteeringWheelAngle": tr.steering_angle,
            "SteeringWheelSpeed": tr.steering_rate,
            # ENGINE_1
            "EngineSpeed": tr.engine_rpm,
            "AccelPedalPos": tr.throttle,
            "EngineCoolantTemp": cfg.coolant_temp,
            "EngineTorque": tr.engine_torque,
            # BRAKE_1
            "BrakePedalPos": tr.brake,
            "BrakePressure": tr.brake_pressure,
            "BrakeLightSwitch": int(tr.brake_light),
            # ESP_1
            "VehicleSpeed": tr.speed * 3.6,
            "LongitudinalAccel": tr.accel_longitudinal,
            "LateralAccel": tr.accel_lateral,
            "YawRate": tr.yaw_rate,
            # WHEEL_SPEEDS
            "WheelSpeedFL": fl * 3.6,
            "WheelSpeedFR": fr * 3.6,
            "WheelSpeedRL": rl * 3.6,
            "WheelSpeedRR": rr * 3.6,
            # GEARBOX_1: lever D
            "GearLever": 3,
            "CurrentGear": tr.gear,
            "TransmissionOilTemp": cfg.transmission_temp,
            # VEHICLE_STATUS pages
            "Odometer": tr.odometer / 1000.0,
            "FuelLevel": tr.fuel_level,
            "AmbientAirTemp": cfg.ambient_temp,
            "BatteryVoltage": cfg.battery_voltage,
            "TirePressureFL": cfg.tire_pressures[0],
            "TirePressureFR": cfg.tire_pressures[1],
            "TirePressureRL": cfg.tire_pressures[2],
            "TirePressureRR": cfg.tire_pressures[3],
            # BODY_LIGHTS
            "TurnIndicatorLeft": int(tr.turn_left),
            "TurnIndicatorRight": int(tr.turn_right),
            "HazardSwitch": int(tr.hazard),
            "LowBeam": int(tr.low_beam),
            "HighBeam": 0,
            "BrakeLight": int(tr.brake_light),
            "WiperMode": 0,
            # DOORS: all shut, driver belted
            "DoorOpenFL": 0,
            "DoorOpenFR": 0,
            "DoorOpenRL": 0,
            "DoorOpenRR": 0,
            "TrunkOpen": 0,
            "DriverSeatBelt": 1,
        }

    # -- outputs --------------------------------------------------------------------------

    def _emit_frames(self, k: int, truth: VehicleTruth) -> None:
        # the hot path (~420 frames/s per car, hundreds of cars in one acc-sim process): the
        # per-message layout is precomputed (_FramePlan), values are clamped to the DBC ranges
        # here, so cantools' strict re-validation of every frame is skipped (same bytes)
        values: dict[str, float] | None = None
        frames = self._frames
        max_pending = self.config.max_pending_frames
        trace = log.isEnabledFor(TRACE)
        counters = self._counters
        for plan in self._plans:
            if k % plan.period:
                continue
            if values is None:
                values = self._signal_values(truth)
            name = plan.name
            page: int | None = None
            if plan.pages:
                n = self._pages[name]
                page = plan.pages[n % len(plan.pages)]
                self._pages[name] = n + 1
            counter = counters[name]
            data: dict[str, float] = {}
            for sig, kind, lo, hi in plan.fields[page]:
                if kind == _SIG_VALUE:
                    data[sig] = min(max(values[sig], lo), hi)
                elif kind == _SIG_MUX:
                    data[sig] = page if page is not None else 0
                else:
                    data[sig] = counter
            if plan.counter_modulus:
                counters[name] = (counter + 1) % plan.counter_modulus
            frame = CanFrame(
                arbitration_id=plan.frame_id,
                data=bytes(plan.message.encode(data, scaling=True, strict=False)),
                is_extended_id=plan.is_extended_id,
                is_fd=plan.is_fd,
                is_rx=False,
                channel=plan.channel,
                timestamp=truth.timestamp,
                monotonic=truth.monotonic,
            )
            if len(frames) >= max_pending:
                frames.popleft()
                if not self.dropped_frames:
                    log.warning("frames_due is not drained; dropping the oldest simulated frames")
                self.dropped_frames += 1
            frames.append(frame)
            if trace:
                log.log(TRACE, "sim frame %s", frame.candump())

    def _emit_nmea(self, tr: VehicleTruth) -> None:
        cfg = self.config
        # Gauss-Markov position error, advanced every epoch (also without a fix)
        dt = 1.0 / (self.nmea_rate_hz or 1.0)
        phi = math.exp(-dt / cfg.gnss_noise_tau) if cfg.gnss_noise_tau > 0 else 0.0
        q = cfg.gnss_noise * math.sqrt(1 - phi * phi)
        self._gnss_noise = [phi * e + q * self._rng_gnss.gauss(0.0, 1.0) for e in self._gnss_noise]
        ne, nn = self._gnss_noise

        fix = not tr.gnss_outage
        centis = round(tr.timestamp * 100)
        when = datetime.fromtimestamp(centis // 100, UTC)
        hms = f"{when:%H%M%S}.{centis % 100:02d}"
        ddmmyy = f"{when:%d%m%y}"
        talker = cfg.talker
        speed_kn = tr.speed / KNOT
        if tr.speed > 0.05:
            self._last_course = tr.heading
        course = self._last_course

        if fix:
            lat, lon, alt = self._plane.to_geodetic(tr.east + ne, tr.north + nn)
            la, la_h = _nmea_lat(lat)
            lo, lo_h = _nmea_lon(lon)
            msl = alt - cfg.geoid_separation
            sats = list(cfg.gnss_satellites[:12])
            sv = ",".join([f"{p:02d}" for p in sats] + [""] * (12 - len(sats)))
            bodies = [
                f"{talker}GGA,{hms},{la},{la_h},{lo},{lo_h},1,{len(sats):02d},{cfg.hdop:.1f},"
                f"{msl:.1f},M,{cfg.geoid_separation:.1f},M,,",
                f"{talker}RMC,{hms},A,{la},{la_h},{lo},{lo_h},{speed_kn:.3f},{course:.2f},{ddmmyy},,,A",
                f"{talker}GSA,A,3,{sv},{cfg.pdop:.1f},{cfg.hdop:.1f},{cfg.vdop:.1f}",
                f"{talker}VTG,{course:.2f},T,,M,{speed_kn:.3f},N,{tr.speed * 3.6:.3f},K,A",
            ]
            rep_lat: float | None = lat
            rep_lon: float | None = lon
        else:
            bodies = [
                f"{talker}GGA,{hms},,,,,0,00,99.99,,,,,,",
                f"{talker}RMC,{hms},V,,,,,,,{ddmmyy},,,N",
                f"{talker}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99",
                f"{talker}VTG,,T,,M,,N,,K,N",
            ]
            rep_lat = rep_lon = None
        second = centis // 100
        if second != self._last_zda_second:  # once per second, at its first epoch
            self._last_zda_second = second
            bodies.append(f"{talker}ZDA,{hms},{when:%d},{when:%m},{when:%Y},00,00")
        sentences = tuple(_sentence(b) for b in bodies)
        epoch = GnssEpoch(
            monotonic=tr.monotonic,
            timestamp=tr.timestamp,
            fix=fix,
            lat=rep_lat,
            lon=rep_lon,
            true_lat=tr.lat,
            true_lon=tr.lon,
            noise_east=ne,
            noise_north=nn,
            speed=tr.speed,
            course=course,
            sentences=sentences,
        )
        self._gnss_history.append(epoch)
        if len(self._nmea) >= self.config.max_pending_nmea:
            self._nmea.popleft()
            if not self.dropped_nmea:
                log.warning("nmea_due is not drained; dropping the oldest simulated NMEA epochs")
            self.dropped_nmea += 1
        self._nmea.append("".join(sentences).encode("ascii"))


# --------------------------------------------------------------------------------------------
# Async runner


@dataclass(frozen=True, slots=True)
class SimRunResult:
    frames_sent: int
    #: frames whose channel had no port in ``can_ports``
    frames_unrouted: int
    nmea_bytes: int
    #: simulation seconds at the end
    sim_time: float


async def run_sim(
    vehicle: SimVehicle,
    can_ports: Mapping[str, CanPort],
    nmea_sink: Callable[[bytes], Awaitable[None] | None] | None,
    clock: Clock,
    duration: float | None = None,
) -> SimRunResult:
    """Drive ``vehicle`` on ``clock``: every tick, send the due frames to the port of their
    channel (``can0``/``can1``; channels without a port are counted and skipped) and hand the
    due NMEA bytes to ``nmea_sink`` (sync or async; ``None`` to drop them). Stops after
    ``duration`` seconds of clock time (``None``: runs until cancelled).

    A vehicle that has not started yet is started at the clock's current time.
    """
    if not vehicle.started:
        vehicle.start(clock.monotonic(), clock.time())
    begin = clock.monotonic()
    end = None if duration is None else begin + duration
    sent = unrouted = nmea_bytes = 0
    while True:
        now = clock.monotonic() if end is None else min(clock.monotonic(), end)
        for frame in vehicle.frames_due(now):
            port = can_ports.get(frame.channel)
            if port is None:
                unrouted += 1
                continue
            await port.send(frame)
            sent += 1
        data = vehicle.nmea_due(now)
        if data and nmea_sink is not None:
            nmea_bytes += len(data)
            result = nmea_sink(data)
            if inspect.isawaitable(result):
                await result
        wake = vehicle.next_tick_monotonic
        if end is not None and wake > end + 1e-9:
            break
        await clock.sleep_until(wake)
    log.debug("run_sim done: %d frames sent, %d unrouted, %d NMEA bytes", sent, unrouted, nmea_bytes)
    return SimRunResult(sent, unrouted, nmea_bytes, vehicle.sim_time)
