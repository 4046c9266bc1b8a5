"""VehicleState fusion: a pure core (no I/O, no asyncio; ``now`` is an argument).

Signals arrive by VSS name (SI units) from the DBC/OBD decoders and fixes from the GNSS
source; ``snapshot(now)`` returns the fused ``VehicleState`` that the rest of the agent sees
at a fixed rate.

Rules:
- Speed: the bus speed while it is fresh, else GNSS speed over ground.
- Longitudinal acceleration: the bus signal while fresh, else derived from the speed signal
  (least-squares slope over the last ``accel_window`` seconds).
- Lateral acceleration: the bus signal while fresh, else speed × yaw rate.
- Position and heading: each GNSS fix with a position re-anchors the estimate; between fixes
  and through GNSS gaps the position is advanced from speed and heading (heading integrated
  from yaw rate), i.e. dead reckoning. ``dead_reckoning`` is set once the last fix is older
  than ``gnss_timeout``; after ``dead_reckoning_max`` seconds without a fix the position is
  dropped (None) rather than guessed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

from hal.types import FixMode, GnssFix, SignalSample, VehicleState

__all__ = ["CAN_GNSS_SIGNALS", "FIELD_OF_SIGNAL", "Fusion"]

EARTH_RADIUS = 6_371_008.8  # mean radius, m

#: which VSS signal feeds which VehicleState field
FIELD_OF_SIGNAL: dict[str, str] = {
    "Vehicle.Speed": "speed",
    "Vehicle.Acceleration.Longitudinal": "accel_longitudinal",
    "Vehicle.Acceleration.Lateral": "accel_lateral",
    "Vehicle.AngularVelocity.Yaw": "yaw_rate",
    "Vehicle.Chassis.SteeringWheel.Angle": "steering_angle",
    "Vehicle.Chassis.Brake.PedalPosition": "brake",
    "Vehicle.Chassis.Accelerator.PedalPosition": "throttle",
    "Vehicle.Powertrain.Transmission.CurrentGear": "gear",
}


#: VSS signals of a GNSS receiver on a CAN bus (CSS CANmod.gps and the like, see
#: drivers/data/canmod-gps.vss.toml) -> the GnssFix field each fills
CAN_GNSS_SIGNALS: dict[str, str] = {
    "Vehicle.CurrentLocation.Latitude": "lat",
    "Vehicle.CurrentLocation.Longitude": "lon",
    "Vehicle.CurrentLocation.Altitude": "alt_hae",  # VSS: above the WGS84 ellipsoid
    "Vehicle.CurrentLocation.Heading": "track",
    "Vehicle.CurrentLocation.SpeedOverGround": "speed",
    "Vehicle.CurrentLocation.HorizontalAccuracy": "eph",
    "Vehicle.CurrentLocation.GNSSReceiver.FixType": "mode",
}
_FIX_TYPES = {"NONE": FixMode.NO_FIX, "TWO_D": FixMode.FIX_2D, "THREE_D": FixMode.FIX_3D}
#: a CAN-borne fix takes the other fields only when they are at most this old, seconds
_CAN_GNSS_PAIRING = 1.0


@dataclass
class _Latest:
    value: float
    monotonic: float


class Fusion:
    def __init__(
        self,
        *,
        stale_after: float = 0.5,
        gnss_timeout: float = 1.5,
        dead_reckoning_max: float = 30.0,
        accel_window: float = 0.3,
    ) -> None:
        self.stale_after = stale_after
        self.gnss_timeout = gnss_timeout
        self.dead_reckoning_max = dead_reckoning_max
        self.accel_window = accel_window
        self._latest: dict[str, _Latest] = {}
        self._speed_hist: deque[tuple[float, float]] = deque(maxlen=512)
        self._fix: GnssFix | None = None
        self._fix_mono: float | None = None
        # dead-reckoned pose
        self._pos: tuple[float, float] | None = None
        self._heading: float | None = None
        self._pose_mono: float | None = None
        self._sequence = 0
        self.signals_seen = 0
        self.signals_ignored = 0
        # a GNSS receiver on the CAN bus: its latest fields, and when the dedicated receiver
        # (NMEA / gpsd, through on_fix) last reported; the dedicated one wins while fresh
        self._can_gnss: dict[str, tuple[float | str, float]] = {}
        self._receiver_mono: float | None = None
        self._fix_from_can = False
        self.can_fixes = 0

    # --- inputs ------------------------------------------------------------------------------

    def on_signal(self, s: SignalSample) -> None:
        if s.name in CAN_GNSS_SIGNALS:
            self._on_can_gnss(CAN_GNSS_SIGNALS[s.name], s)
            return
        name = FIELD_OF_SIGNAL.get(s.name)
        if name is None or isinstance(s.value, str):
            self.signals_ignored += 1
            return
        value = float(s.value)
        if not math.isfinite(value):
            self.signals_ignored += 1
            return
        self.signals_seen += 1
        self._latest[name] = _Latest(value, s.monotonic)
        if name == "speed":
            self._speed_hist.append((s.monotonic, value))

    def on_signals(self, samples: Iterable[SignalSample]) -> None:
        for s in samples:
            self.on_signal(s)

    def _on_can_gnss(self, field: str, s: SignalSample) -> None:
        """A GNSS receiver's value that came over CAN: a position (latitude and longitude within
        ``_CAN_GNSS_PAIRING`` s of each other) makes a fix with the other fields that are fresh,
        unless the dedicated receiver reported within ``gnss_timeout``."""
        if isinstance(s.value, bool) or (field != "mode" and not isinstance(s.value, int | float)):
            self.signals_ignored += 1
            return
        if field != "mode" and not math.isfinite(float(s.value)):
            self.signals_ignored += 1
            return
        self.signals_seen += 1
        self._can_gnss[field] = (s.value if field == "mode" else float(s.value), s.monotonic)
        if field not in ("lat", "lon"):
            fix = self._fix
            if field != "mode" and self._fix_from_can and fix is not None:
                # the module sends speed / heading in messages of their own, after the position
                # of the same epoch: they complete the fix made from it
                if s.monotonic - fix.monotonic <= _CAN_GNSS_PAIRING:
                    value = float(s.value)
                    if field == "speed":
                        fix = replace(fix, speed=value)
                    elif field == "track":
                        fix = replace(fix, track=value)
                    elif field == "alt_hae":
                        fix = replace(fix, alt_hae=value)
                    else:
                        fix = replace(fix, eph=value)
                    self._fix = fix
                    if field == "track" and fix.speed is not None and fix.speed > 1.0:
                        self._heading = value
            return
        lat, lon = self._can_gnss.get("lat"), self._can_gnss.get("lon")
        if lat is None or lon is None or abs(lat[1] - lon[1]) > _CAN_GNSS_PAIRING:
            return
        now = s.monotonic
        if self._receiver_mono is not None and now - self._receiver_mono <= self.gnss_timeout:
            return  # the dedicated receiver is reporting: it wins

        def fresh(name: str) -> float | None:
            item = self._can_gnss.get(name)
            if item is None or now - item[1] > _CAN_GNSS_PAIRING or isinstance(item[0], str):
                return None
            return float(item[0])

        mode_item = self._can_gnss.get("mode")
        mode = FixMode.FIX_2D  # the module sends positions only while they are valid
        if mode_item is not None and now - mode_item[1] <= 2.0:
            mode = _FIX_TYPES.get(str(mode_item[0]), FixMode.FIX_2D)
        if mode < FixMode.FIX_2D:
            return
        self.can_fixes += 1
        self._fix_from_can = True
        self._apply_fix(
            GnssFix(
                mode=mode,
                lat=float(lat[0]),
                lon=float(lon[0]),
                alt_hae=fresh("alt_hae"),
                speed=fresh("speed"),
                track=fresh("track"),
                eph=fresh("eph"),
                monotonic=now,
            )
        )

    def on_fix(self, fix: GnssFix) -> None:
        """A report of the dedicated receiver (NMEA / gpsd)."""
        self._receiver_mono = fix.monotonic
        self._fix_from_can = False
        self._apply_fix(fix)

    def _apply_fix(self, fix: GnssFix) -> None:
        self._fix = fix
        if fix.has_position:
            assert fix.lat is not None and fix.lon is not None
            self._fix_mono = fix.monotonic
            self._pos = (fix.lat, fix.lon)
            self._pose_mono = fix.monotonic
            moving = fix.speed is not None and fix.speed > 1.0
            if fix.track is not None and (moving or self._heading is None):
                self._heading = fix.track

    # --- output ------------------------------------------------------------------------------

    def _fresh(self, name: str, now: float) -> float | None:
        item = self._latest.get(name)
        if item is None or now - item.monotonic > self.stale_after:
            return None
        return item.value

    def _last(self, name: str) -> float | None:
        item = self._latest.get(name)
        return None if item is None else item.value

    def _derived_accel(self, now: float) -> float | None:
        if not self._speed_hist or now - self._speed_hist[-1][0] > self.stale_after:
            return None
        newest = self._speed_hist[-1][0]
        pts = [(t, v) for t, v in self._speed_hist if newest - t <= self.accel_window]
        if len(pts) < 3 or pts[-1][0] - pts[0][0] < self.accel_window / 3:
            return None
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mv = sum(v for _, v in pts) / n
        den = sum((t - mt) ** 2 for t, _ in pts)
        if den <= 0:
            return None
        return sum((t - mt) * (v - mv) for t, v in pts) / den

    def _advance_pose(self, now: float, speed: float | None, yaw_rate: float | None) -> None:
        if self._pos is None or self._pose_mono is None:
            return
        dt = now - self._pose_mono
        if dt <= 0:
            return
        if self._heading is not None and speed is not None:
            heading = self._heading
            if yaw_rate is not None:
                # VSS yaw rate is counter-clockwise positive; heading is clockwise from north
                heading = (heading - yaw_rate * dt / 2) % 360.0
            dist = speed * dt
            north = dist * math.cos(math.radians(heading))
            east = dist * math.sin(math.radians(heading))
            lat, lon = self._pos
            lat2 = lat + math.degrees(north / EARTH_RADIUS)
            lon2 = lon + math.degrees(east / (EARTH_RADIUS * max(1e-6, math.cos(math.radians(lat)))))
            self._pos = (lat2, (lon2 + 180.0) % 360.0 - 180.0)
        if self._heading is not None and yaw_rate is not None:
            self._heading = (self._heading - yaw_rate * dt) % 360.0
        self._pose_mono = now

    def snapshot(self, now: float, utc: float) -> VehicleState:
        """The fused state at monotonic ``now`` (``utc`` is the wall clock to stamp it with)."""
        self._sequence += 1
        derived: set[str] = set()
        fix = self._fix
        gnss_speed = fix.speed if fix is not None and fix.mode >= FixMode.FIX_2D else None
        fix_fresh = self._fix_mono is not None and now - self._fix_mono <= self.gnss_timeout

        speed = self._fresh("speed", now)
        if speed is None and gnss_speed is not None and fix_fresh:
            speed = gnss_speed
            derived.add("speed")
        yaw = self._fresh("yaw_rate", now)
        along = self._fresh("accel_longitudinal", now)
        if along is None:
            along = self._derived_accel(now)
            if along is not None:
                derived.add("accel_longitudinal")
        alat = self._fresh("accel_lateral", now)
        if alat is None and speed is not None and yaw is not None:
            alat = speed * math.radians(yaw)
            derived.add("accel_lateral")

        self._advance_pose(now, speed, yaw)
        dr = False
        lat = lon = None
        if self._pos is not None and self._fix_mono is not None:
            gap = now - self._fix_mono
            if gap <= self.dead_reckoning_max:
                lat, lon = self._pos
                dr = gap > self.gnss_timeout
            else:
                self._pos = None
        if dr:
            derived.update({"lat", "lon", "heading"})

        ages = {name: round(now - item.monotonic, 3) for name, item in self._latest.items()}
        if fix is not None:
            ages["gnss"] = round(now - fix.monotonic, 3)
        gear = self._last("gear")
        return VehicleState(
            monotonic=now,
            timestamp=utc,
            sequence=self._sequence,
            speed=speed,
            accel_longitudinal=along,
            accel_lateral=alat,
            yaw_rate=yaw,
            steering_angle=self._fresh("steering_angle", now),
            brake=self._fresh("brake", now),
            throttle=self._fresh("throttle", now),
            gear=None if gear is None else int(gear),
            lat=lat,
            lon=lon,
            alt=fix.alt_msl if fix is not None and fix.mode >= FixMode.FIX_3D else None,
            heading=self._heading if lat is not None else None,
            gnss_speed=gnss_speed,
            gnss_mode=fix.mode if fix is not None else FixMode.UNKNOWN,
            dead_reckoning=dr,
            ages=ages,
            derived=frozenset(derived),
        )
