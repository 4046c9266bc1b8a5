"""Driving behaviour on the OBU: rule detectors (+ fatigue, + PERCLOS) on the 10 Hz VehicleState
stream, each detected event signed as a ``driving_event`` attestation with the version of what
detected it.

``BehaviourService`` is a state sink (``StateService.sinks``): it runs every detector on each
snapshot in the sink call (cheap, pure Python) and queues the events; its ``run()`` task signs
them through the ``Attestor`` (file I/O in a thread) and, with a camera and an eye-state model,
feeds camera frames to the PERCLOS monitor in a thread. A full queue drops new events and counts
them. ``add_detector`` plugs in more detectors (the learned behaviour model).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hal.interfaces import Clock
from hal.types import Frame, VehicleState
from ledger_lite.errors import SchemaError
from models.fatigue import FatigueDetector
from models.perclos import PerclosMonitor
from models.rules import (
    RULES_MODEL,
    Detector,
    DrivingTimeRule,
    Event,
    G,
    HarshEventDetector,
    SpeedingDetector,
    SpeedZone,
)

from .attestor import Attestor
from .config import BehaviourConfig
from .outbox import OutboxError

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = ["BehaviourService", "build_behaviour", "detectors_from_config"]

log = logging.getLogger(__name__)

_DISABLED = 1e9  # a threshold no vehicle reaches


class BehaviourService:
    name = "behaviour"

    def __init__(
        self,
        attestor: Attestor | None,
        clock: Clock,
        detectors: Sequence[Detector] = (),
        *,
        perclos: PerclosMonitor | None = None,
        frames: Callable[[], Frame | None] | None = None,
        perclos_period: float = 0.2,
        queue_max: int = 256,
    ) -> None:
        self.attestor = attestor
        self.clock = clock
        self.detectors: list[Detector] = list(detectors)
        self.perclos = perclos
        self._frames = frames
        self.perclos_period = perclos_period
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_max)
        self.events: Counter[str] = Counter()
        self.attested: Counter[str] = Counter()
        self.by_model: Counter[str] = Counter()
        self.dropped = 0
        self.failures = 0
        self.detector_errors = 0
        self.last: Event | None = None
        self.last_state: VehicleState | None = None
        self.last_error = ""

    def add_detector(self, detector: Detector) -> None:
        """Run another detector (e.g. the learned model) on every snapshot from now on."""
        self.detectors.append(detector)

    # --- the state sink ---------------------------------------------------------------------

    def __call__(self, state: VehicleState) -> None:
        self.last_state = state
        for det in self.detectors:
            try:
                found = det.update(state)
            except Exception as err:  # noqa: BLE001 - one broken detector must not stop the others
                self.detector_errors += 1
                self.last_error = f"{getattr(det, 'name', type(det).__name__)}: {err}"
                log.error("behaviour detector %s failed: %s", getattr(det, "name", det), err, exc_info=err)
                continue
            for event in found:
                self.submit(event)

    def submit(self, event: Event) -> None:
        """Count an event and queue it for attestation."""
        self.events[event.kind] += 1
        self.by_model[event.model or "-"] += 1
        self.last = event
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("behaviour: event queue full, %s event dropped", event.kind)

    # --- the task ---------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._attest_loop(), name="behaviour.attest")
            if self.perclos is not None and self._frames is not None:
                tg.create_task(self._perclos_loop(), name="behaviour.perclos")

    async def _attest_loop(self) -> None:
        while True:
            event = await self.queue.get()
            await self.attest(event)

    async def attest(self, event: Event) -> bytes | None:
        if self.attestor is None:
            return None
        speed = self.last_state.speed if self.last_state is not None else None
        try:
            data = await self.attestor.attest("driving_event", event.body(speed=speed), model=event.model)
        except (OSError, OutboxError, SchemaError) as err:  # keep driving: say so, count it
            self.failures += 1
            self.last_error = f"attest {event.kind}: {err}"
            log.error("could not attest a %s event: %s", event.kind, err)
            return None
        self.attested[event.kind] += 1
        return data

    async def _perclos_loop(self) -> None:
        assert self.perclos is not None and self._frames is not None
        monitor, frames = self.perclos, self._frames
        seen = -1
        deadline = self.clock.monotonic()
        while True:
            deadline = max(deadline + self.perclos_period, self.clock.monotonic() - self.perclos_period)
            await self.clock.sleep_until(deadline)  # a fixed rate; a slow model skips frames, no burst
            frame = frames()
            if frame is None or frame.sequence == seen:
                continue
            seen = frame.sequence
            for event in await asyncio.to_thread(monitor.update, frame):
                self.submit(event)

    def status(self) -> dict[str, Any]:
        last = self.last
        return {
            "detectors": [getattr(d, "name", type(d).__name__) for d in self.detectors],
            "events": dict(self.events),
            "attested": dict(self.attested),
            "by_model": dict(self.by_model),
            "queued": self.queue.qsize(),
            "dropped": self.dropped,
            "failures": self.failures,
            "detector_errors": self.detector_errors,
            "last_error": self.last_error,
            "last": None
            if last is None
            else {"kind": last.kind, "severity": round(last.severity, 3), "duration": round(last.duration, 2)},
            "fatigue_score": next((round(d.score, 3) for d in self.detectors if isinstance(d, FatigueDetector)), None),
            "perclos": self.perclos.status() if self.perclos is not None else None,
            "attesting": self.attestor is not None,
        }


def detectors_from_config(cfg: BehaviourConfig, model: str = RULES_MODEL) -> list[Detector]:
    """The rule detectors (and the fatigue score) that ``cfg`` turns on."""
    dets: list[Detector] = []
    if cfg.harsh_brake_mps2 or cfg.harsh_accel_mps2 or cfg.harsh_corner_mps2:
        dets.append(
            HarshEventDetector(
                brake=cfg.harsh_brake_mps2 or _DISABLED,
                accel=cfg.harsh_accel_mps2 or _DISABLED,
                corner=cfg.harsh_corner_mps2 or _DISABLED,
                hysteresis=cfg.hysteresis_mps2,
                min_duration=cfg.harsh_min_duration,
                max_gap=cfg.max_gap,
                full_scale=max(0.8 * G, 2 * max(cfg.harsh_brake_mps2, cfg.harsh_accel_mps2, cfg.harsh_corner_mps2)),
                model=model,
            )
        )
    zones = [
        SpeedZone(
            z.limit_kmh,
            lat=z.lat,
            lon=z.lon,
            radius_m=z.radius_m,
            polygon=tuple((float(c[0]), float(c[1])) for c in z.polygon),
            name=z.name,
        )
        for z in cfg.speed_zones
    ]
    if zones or cfg.speed_limit_kmh:
        dets.append(
            SpeedingDetector(
                zones,
                default_limit_kmh=cfg.speed_limit_kmh or None,
                tolerance_kmh=cfg.speed_tolerance_kmh,
                min_duration=cfg.speeding_min_duration,
                max_gap=max(cfg.max_gap, 2.0),
                model=model,
            )
        )
    if cfg.driving_limit_h:
        dets.append(DrivingTimeRule(limit=cfg.driving_limit_h * 3600, break_min=cfg.break_min * 60, model=model))
    if cfg.fatigue:
        dets.append(
            FatigueDetector(
                gap=cfg.steering_gap_deg,
                threshold=cfg.fatigue_threshold,
                min_duration=cfg.fatigue_min_duration,
                driving_limit=(cfg.driving_limit_h or 4.5) * 3600,
                break_min=cfg.break_min * 60,
                model=model,
            )
        )
    return dets


def _build_perclos(agent: Agent, cfg: BehaviourConfig) -> PerclosMonitor | None:
    if not cfg.perclos or not cfg.eye_model or agent.camera_service is None:
        return None
    from models.perclos import default_locator, load_eye_model

    try:
        model = load_eye_model(cfg.eye_model)
    except (ImportError, AttributeError, ValueError, TypeError) as err:
        agent.health.degraded("behaviour", f"PERCLOS off: eye model {cfg.eye_model}: {err}")
        return None
    locator = default_locator()
    if locator is None:
        agent.health.degraded("behaviour", "PERCLOS off: OpenCV (the camera extra) is not installed")
        return None
    return PerclosMonitor(model, locator, threshold=cfg.perclos_threshold, min_duration=cfg.perclos_min_duration)


def build_behaviour(agent: Agent) -> BehaviourService | None:
    """The OBU's behaviour service from ``agent.config.behaviour``, registered as a state sink
    (None when off or without a VehicleState stream). The caller adds ``service.run`` to the
    supervisor; call after the attestor is built."""
    cfg = agent.config.behaviour
    if not cfg.enabled or agent.state_service is None:
        return None
    perclos = _build_perclos(agent, cfg)
    camera = agent.camera_service
    service = BehaviourService(
        agent.attestor,
        agent.clock,
        detectors_from_config(cfg),
        perclos=perclos,
        frames=(lambda: camera.last) if camera is not None else None,
        perclos_period=1.0 / cfg.perclos_rate_hz,
        queue_max=cfg.queue_max,
    )
    agent.state_service.sinks.append(service)
    if agent.attestor is None:
        agent.health.degraded("behaviour", "events are counted, not attested (no device key or attest.enabled off)")
    elif perclos is not None or not (cfg.perclos and cfg.eye_model and camera is not None):
        agent.health.ok("behaviour", f"{len(service.detectors)} detector(s)" + (", PERCLOS" if perclos else ""))
    return service
