"""Driver fatigue from driving signals: steering reversal rate plus continuous driving time (pure).

**Steering reversal rate** (Markkula & Engström 2006, "A steering wheel reversal rate metric for
assessing effects of visual and cognitive secondary task load"): the steering-wheel angle is
low-pass filtered (first order, 0.6 Hz), its stationary points are tracked, and a *reversal* is
counted each time the angle moves away from the last extremum by at least ``gap`` degrees in the
opposite direction (default 2.5 deg, in the 2-3 deg band of the "large reversals" that grow with
drowsiness in e.g. Friedrichs & Yang 2010). The rate is reversals per minute of driving above
``min_speed`` (default 60 km/h: in town, turning dominates the steering) over a rolling window
(default 120 s).

``VehicleState.steering_angle`` (VSS ``Vehicle.Chassis.SteeringWheel.Angle``, degrees) is used
when present. Without it the yaw rate stands in: with the single-track (bicycle) model the
steering-wheel angle equivalent is ``ratio * wheelbase * yaw_rate / speed`` (defaults: steering
ratio 15, wheelbase 2.7 m), so the same gap threshold applies; the lateral acceleration is the
last resort (``ratio * wheelbase * a_lat / speed^2``). A proxy is noisier (the yaw rate also
follows the road's curvature) and every event made from it says so with a lower ``confidence``.

**Score**: ``w_srr * clip((srr - srr_low) / (srr_high - srr_low)) + w_time * clip(driving / limit)``
in 0..1. The defaults (srr_low 10/min, srr_high 30/min, weights 0.6 / 0.4, limit 4.5 h) are
**not calibrated**: there is no labelled fatigue data in this project (docs/behaviour.md). A
``fatigue`` event is made when the score stays at or above ``threshold`` for ``min_duration``
seconds; then not again for ``cooldown`` seconds.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from hal.types import VehicleState

from .rules import RULES_MODEL, DrivingTimeTracker, Event

__all__ = ["FatigueDetector", "SteeringReversals", "steering_equivalent"]

FATIGUE_MODEL: Final = RULES_MODEL


def steering_equivalent(s: VehicleState, *, ratio: float = 15.0, wheelbase: float = 2.7) -> tuple[float | None, str]:
    """The steering-wheel angle (degrees) and where it came from: ``steering``, ``yaw`` or ``lateral``."""
    if s.steering_angle is not None:
        return s.steering_angle, "steering"
    v = s.speed
    if v is None or v < 3.0:
        return None, ""
    if s.yaw_rate is not None:
        return ratio * wheelbase * s.yaw_rate / v, "yaw"  # deg/s * m / (m/s) = deg
    if s.accel_lateral is not None:
        return math.degrees(ratio * wheelbase * s.accel_lateral / (v * v)), "lateral"
    return None, ""


class SteeringReversals:
    """Counts steering reversals larger than ``gap`` degrees (online, one sample at a time)."""

    def __init__(self, *, gap: float = 2.5, cutoff_hz: float = 0.6) -> None:
        self.gap = gap
        self.cutoff = cutoff_hz
        self._y: float | None = None
        self._t: float | None = None
        self._ext: float | None = None  # the current extremum of the filtered signal
        self._dir = 0  # +1 rising, -1 falling, 0 unknown
        self._lo = self._hi = 0.0
        self.count = 0

    def reset(self) -> None:
        self._y = self._t = self._ext = None
        self._dir = 0

    def update(self, t: float, angle: float) -> bool:
        """Add a sample; True when it completed a reversal."""
        if self._y is None or self._t is None or t - self._t > 1.0:
            self._y, self._t, self._ext, self._dir = angle, t, angle, 0
            self._lo = self._hi = angle
            return False
        dt = max(1e-6, t - self._t)
        alpha = dt / (dt + 1.0 / (2 * math.pi * self.cutoff))
        y = self._y + alpha * (angle - self._y)
        self._y, self._t = y, t
        if self._dir == 0:  # no direction yet: wait for a first move of gap degrees
            self._lo, self._hi = min(self._lo, y), max(self._hi, y)
            if y - self._lo >= self.gap:
                self._dir, self._ext = 1, y
            elif self._hi - y >= self.gap:
                self._dir, self._ext = -1, y
            return False
        ext = self._ext if self._ext is not None else y
        if (y - ext) * self._dir > 0:
            self._ext = y  # still moving the same way: the extremum moves along
            return False
        if abs(y - ext) >= self.gap:  # moved back by the gap: a reversal at the extremum
            self._dir = -self._dir
            self._ext = y
            self.count += 1
            return True
        return False


class FatigueDetector:
    name = "fatigue"

    def __init__(
        self,
        *,
        gap: float = 2.5,
        window: float = 120.0,
        min_speed: float = 60 / 3.6,
        srr_low: float = 10.0,
        srr_high: float = 30.0,
        w_srr: float = 0.6,
        w_time: float = 0.4,
        driving_limit: float = 4.5 * 3600,
        break_min: float = 45 * 60,
        threshold: float = 0.7,
        min_duration: float = 60.0,
        cooldown: float = 900.0,
        model: str | None = FATIGUE_MODEL,
    ) -> None:
        self.reversals = SteeringReversals(gap=gap)
        self.window = window
        self.min_speed = min_speed
        self.srr_low, self.srr_high = srr_low, srr_high
        self.w_srr, self.w_time = w_srr, w_time
        self.driving_limit = driving_limit
        self.threshold = threshold
        self.min_duration = min_duration
        self.cooldown = cooldown
        self.model = model
        self.driving = DrivingTimeTracker(break_min=break_min)
        self._events: deque[float] = deque()  # times of reversals
        self._at_speed: deque[tuple[float, float]] = deque()  # (t, dt) of samples at speed
        self._covered = 0.0  # sum of the dt in _at_speed
        self._prev_t: float | None = None
        self.score = 0.0
        self.srr_part = self.time_part = 0.0
        self.srr: float | None = None
        self.source = ""
        self._above_since: float | None = None
        self._peak = 0.0
        self._quiet_until = -math.inf

    def srr_per_minute(self) -> float | None:
        covered = self._covered
        if covered < min(30.0, self.window / 2):  # too little steady driving to say
            return None
        return len(self._events) * 60.0 / covered

    def update(self, s: VehicleState) -> list[Event]:
        t = s.monotonic
        dt = 0.0 if self._prev_t is None else min(max(0.0, t - self._prev_t), 1.0)
        self._prev_t = t
        driving = self.driving.update(s)
        angle, source = steering_equivalent(s)
        if angle is not None and s.speed is not None and s.speed >= self.min_speed:
            self.source = source
            self._at_speed.append((t, dt))
            self._covered += dt
            if self.reversals.update(t, angle):
                self._events.append(t)
        else:
            self.reversals.reset()
        while self._at_speed and self._at_speed[0][0] < t - self.window:
            self._covered -= self._at_speed.popleft()[1]
        if not self._at_speed:
            self._covered = 0.0  # no drift of the running sum
        while self._events and self._events[0] < t - self.window:
            self._events.popleft()
        self.srr = self.srr_per_minute()
        span = self.srr_high - self.srr_low
        srr_part = 0.0 if self.srr is None else min(1.0, max(0.0, (self.srr - self.srr_low) / span))
        time_part = min(1.0, driving / self.driving_limit)
        self.srr_part, self.time_part = srr_part, time_part
        self.score = self.w_srr * srr_part + self.w_time * time_part
        return self._judge(s)

    def _judge(self, s: VehicleState) -> list[Event]:
        t = s.monotonic
        if self.score < self.threshold or t < self._quiet_until:
            self._above_since = None
            return []
        if self._above_since is None:
            self._above_since, self._peak = t, self.score
        self._peak = max(self._peak, self.score)
        if t - self._above_since < self.min_duration:
            return []
        start, self._above_since = self._above_since, None
        self._quiet_until = t + self.cooldown
        # a heuristic: confidence says how direct the signal was, not a calibrated probability
        confidence = {"steering": 0.5, "yaw": 0.3, "lateral": 0.2}.get(self.source, 0.1)
        return [
            Event(
                "fatigue",
                start,
                t,
                self._peak,
                speed=s.speed,
                yaw_rate=s.yaw_rate,
                confidence=confidence,
                lat=s.lat,
                lon=s.lon,
                timestamp=s.timestamp,
                model=self.model,
            )
        ]
