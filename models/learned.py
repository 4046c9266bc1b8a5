"""The learned behaviour detector: the on-device TFLite model (``dbm``) on sliding windows of the
VehicleState stream, reporting what the rules cannot see -- weaving / aggressive lane changes --
as ``lane_change`` driving events with the model's version.

    det = LearnedDetector(model, version="dbm-1")     # model: models.tflite_model.TfliteModel
    events = det.update(state)                        # the Detector protocol (models.rules)
    await det.infer_pending()                         # the agent runs this off the event loop

``update`` only collects windows (cheap, on the loop); ``infer_pending`` runs the interpreter in
a worker thread (``asyncio.to_thread``) and turns the results into events that the next
``update`` returns. A window is weaving when the model's softmax probability of ``weaving`` is
at least ``threshold``; ``min_windows`` consecutive such windows (hop 1 s) make one event, and
nothing new is reported until the model has seen ``min_windows`` non-weaving windows again.
Harsh braking / acceleration / cornering stay with the rules (they are thresholds by
definition); the model's own harsh classes are not reported.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from hal.types import VehicleState

from .features import CLASSES, HOP_S, WINDOW_S, window_features
from .rules import Event

__all__ = ["LearnedDetector"]

_WEAVING = CLASSES.index("weaving")


class LearnedDetector:
    name = "learned"

    def __init__(
        self, model: Any, *, version: str, threshold: float = 0.8, min_windows: int = 2, max_pending: int = 64
    ) -> None:
        self.model = model
        self.version = version
        self.threshold = threshold
        self.min_windows = min_windows
        self.max_pending = max_pending
        self._states: list[VehicleState] = []
        self._pending: list[tuple[np.ndarray, float, VehicleState]] = []
        self._events: list[Event] = []
        self._next_at: float | None = None
        self._run = 0
        self._quiet = 0
        self._in_event = False
        self._first: tuple[float, VehicleState] | None = None
        self.windows = 0
        self.dropped = 0

    def update(self, state: VehicleState) -> list[Event]:
        t = state.monotonic
        self._states.append(state)
        while self._states and self._states[0].monotonic < t - WINDOW_S - 1.0:
            self._states.pop(0)
        if self._next_at is None:
            self._next_at = t + WINDOW_S
        if t >= self._next_at:
            self._next_at = t + HOP_S
            win = [s for s in self._states if s.monotonic >= t - WINDOW_S]
            if len(self._pending) < self.max_pending:
                self._pending.append((window_features(win), t, win[0]))
            else:
                self.dropped += 1
        out, self._events = self._events, []
        return out

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        logits = np.asarray(self.model.infer(x), dtype=np.float64)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(z / z.sum(axis=1, keepdims=True))

    async def infer_pending(self) -> int:
        """Run the model on the collected windows in a worker thread; the number inferred."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        x = np.stack([b[0] for b in batch]).astype(np.float32)
        probs = await asyncio.to_thread(self.probabilities, x)
        for (_, t, first), p in zip(batch, probs, strict=True):
            self.windows += 1
            self._step(float(p[_WEAVING]), t, first)
        return len(batch)

    def _step(self, p_weave: float, t: float, first: VehicleState) -> None:
        if p_weave >= self.threshold:
            self._quiet = 0
            self._run += 1
            if self._run == 1:
                self._first = (t - WINDOW_S, first)
            if self._run >= self.min_windows and not self._in_event and self._first is not None:
                self._in_event = True
                start, s0 = self._first
                self._events.append(
                    Event(
                        "lane_change",
                        start,
                        t,
                        severity=min(1.0, (p_weave - self.threshold) / max(1e-9, 1.0 - self.threshold)),
                        speed=s0.speed,
                        accel_lat=s0.accel_lateral,
                        yaw_rate=s0.yaw_rate,
                        confidence=p_weave,
                        lat=s0.lat,
                        lon=s0.lon,
                        model=self.version,
                    )
                )
        else:
            self._run = 0
            self._quiet += 1
            if self._quiet >= self.min_windows:
                self._in_event = False
