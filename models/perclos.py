"""Cabin camera drowsiness: frames -> eye regions -> eye-state model -> PERCLOS -> events.

PERCLOS (Wierwille et al. 1994; Dinges & Grace 1998, FHWA-MCRT-98-006) is the proportion of
time in a window (here 60 s) during which the eyes are at least 80 % closed (the *P80*
definition). The pipeline:

1. ``Frame`` (``hal.types``, from the agent's camera service) -> 8-bit greyscale array
   (``GREY``, ``RGB3``, ``YUYV``; ``MJPG`` through OpenCV when it is installed);
2. an ``EyeLocator`` finds the eye regions; ``HaarEyeLocator`` uses OpenCV's Haar cascades
   (``cv2.data.haarcascades``: frontal face, then eyes in its upper half) when OpenCV is
   installed (the ``camera`` extra) *and* still carries them (OpenCV 5 moved ``CascadeClassifier``
   to contrib and dropped the XML files), otherwise the pipeline has no locator and says so;
3. the **eye-state model slot**: any object with ``closed_probability(eye_image) -> float``
   (``EyeStateModel``), the probability that the eye is at least 80 % closed. **No model ships
   with the project** (there is no labelled eye-state data here; docs/behaviour.md); the agent
   loads one from ``behaviour.eye_model`` (``package.module:factory``);
4. a frame counts as *closed* when the mean probability over the eyes found is >= 0.5; PERCLOS
   is the time-weighted share of closed frames among frames with eyes found in the window.
   Frames without a face/eyes are *unknown*, not open: PERCLOS is reported only when the known
   part covers at least ``min_coverage`` of the window;
5. a ``fatigue`` event when PERCLOS stays >= ``threshold`` (default 0.15, the drowsiness level
   used with the P80 measure in the FHWA studies) for ``min_duration`` seconds; severity 0 at the
   threshold, 1 at PERCLOS 0.5; then not again for ``cooldown`` seconds.
"""

from __future__ import annotations

import importlib
import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from hal.types import Frame

from .rules import Event

__all__ = [
    "EyeLocator",
    "EyeStateModel",
    "HaarEyeLocator",
    "PerclosMonitor",
    "frame_to_gray",
    "load_eye_model",
]

Gray = npt.NDArray[np.uint8]
PERCLOS_PIPELINE: Final = "perclos-1.0.0"


class EyeStateModel(Protocol):
    """The slot for an eye-state classifier (none ships: see the module doc)."""

    #: the model's version, recorded in the attestations it causes
    version: str

    def closed_probability(self, eye_image: Gray) -> float:
        """Probability (0..1) that the eye in this greyscale crop is at least 80 % closed."""
        ...


class EyeLocator(Protocol):
    def eyes(self, gray: Gray) -> list[Gray]:
        """Greyscale crops of the driver's eyes (empty: no face or eyes found)."""
        ...


def frame_to_gray(frame: Frame) -> Gray | None:
    """The frame as an 8-bit greyscale array, or None for a format this cannot read."""
    w, h, fmt = frame.width, frame.height, frame.pixel_format
    buf = np.frombuffer(frame.data, dtype=np.uint8)
    if fmt == "GREY" and buf.size >= w * h:
        return buf[: w * h].reshape(h, w).copy()
    if fmt == "RGB3" and buf.size >= w * h * 3:
        rgb = buf[: w * h * 3].reshape(h, w, 3).astype(np.float32)
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma
        return np.clip(gray, 0, 255).astype(np.uint8)
    if fmt == "YUYV" and buf.size >= w * h * 2:
        return buf[: w * h * 2].reshape(h, w * 2)[:, 0::2].copy()  # the Y samples
    if fmt == "MJPG":
        try:
            import cv2
        except ImportError:
            return None
        img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return None if img is None else np.asarray(img, dtype=np.uint8)
    return None


class HaarEyeLocator:
    """Face then eyes with OpenCV's Haar cascades (Viola & Jones 2001). Needs ``cv2``."""

    def __init__(self, *, min_face: int = 60) -> None:
        cv2: Any = importlib.import_module("cv2")  # ImportError: no OpenCV (the camera extra)

        cascade = getattr(cv2, "CascadeClassifier", None)  # OpenCV 5 moved it to contrib (xobjdetect)
        base = str(getattr(getattr(cv2, "data", None), "haarcascades", ""))
        face_xml, eye_xml = Path(base, "haarcascade_frontalface_default.xml"), Path(base, "haarcascade_eye.xml")
        if cascade is None or not face_xml.is_file() or not eye_xml.is_file():
            raise ImportError(f"this OpenCV ({cv2.__version__}) has no Haar cascades (CascadeClassifier + XML)")
        self.face = cascade(str(face_xml))
        self.eye = cascade(str(eye_xml))
        if self.face.empty() or self.eye.empty():
            raise ImportError(f"OpenCV's Haar cascades in {base} do not load")
        self.min_face = min_face

    def eyes(self, gray: Gray) -> list[Gray]:
        faces = self.face.detectMultiScale(gray, 1.1, 5, minSize=(self.min_face, self.min_face))
        if len(faces) == 0:
            return []
        x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))  # the largest face: the driver
        upper = gray[y : y + h // 2, x : x + w]
        found = self.eye.detectMultiScale(upper, 1.1, 5, minSize=(max(8, w // 10), max(8, w // 10)))
        crops = [upper[ey : ey + eh, ex : ex + ew] for ex, ey, ew, eh in sorted(found, key=lambda e: int(e[0]))[:2]]
        return [np.asarray(c, dtype=np.uint8) for c in crops]


def default_locator() -> EyeLocator | None:
    """OpenCV's Haar locator, or None when OpenCV is not installed."""
    try:
        return HaarEyeLocator()
    except ImportError:
        return None


def load_eye_model(spec: str) -> EyeStateModel:
    """``package.module:factory`` -> ``factory()``, the plugged-in eye-state model."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"eye model {spec!r}: expected package.module:factory")
    factory = getattr(importlib.import_module(module), attr)
    model: EyeStateModel = factory()
    if not callable(getattr(model, "closed_probability", None)):
        raise TypeError(f"eye model {spec!r} has no closed_probability(eye_image)")
    return model


class PerclosMonitor:
    name = "perclos"

    def __init__(
        self,
        model: EyeStateModel,
        locator: EyeLocator | None,
        *,
        window: float = 60.0,
        closed_at: float = 0.5,
        threshold: float = 0.15,
        min_duration: float = 10.0,
        min_coverage: float = 0.5,
        cooldown: float = 300.0,
        max_frame_gap: float = 1.0,
    ) -> None:
        self.model = model
        self.locator = locator
        self.window = window
        self.closed_at = closed_at
        self.threshold = threshold
        self.min_duration = min_duration
        self.min_coverage = min_coverage
        self.cooldown = cooldown
        self.max_frame_gap = max_frame_gap
        #: (t, dt, closed or None when unknown)
        self._samples: deque[tuple[float, float, bool | None]] = deque()
        self._prev: float | None = None
        self.perclos: float | None = None
        self.frames = 0
        self.frames_with_eyes = 0
        self._above_since: float | None = None
        self._peak = 0.0
        self._quiet_until = -math.inf

    @property
    def version(self) -> str:
        return f"{PERCLOS_PIPELINE}+{getattr(self.model, 'version', 'unversioned')}"

    def closed(self, gray: Gray) -> bool | None:
        """Is the driver's eye closed in this image (None: no eyes found)?"""
        eyes: Sequence[Gray] = self.locator.eyes(gray) if self.locator is not None else [gray]
        if not eyes:
            return None
        p = sum(float(self.model.closed_probability(e)) for e in eyes) / len(eyes)
        return p >= self.closed_at

    def update(self, frame: Frame) -> list[Event]:
        """Add a frame (blocking: run it in a thread in the agent)."""
        gray = frame_to_gray(frame)
        state = self.closed(gray) if gray is not None else None
        return self.add(frame.monotonic, state, timestamp=frame.timestamp)

    def add(self, t: float, closed: bool | None, *, timestamp: float = 0.0) -> list[Event]:
        """Add one eye-state observation at ``t`` (monotonic seconds)."""
        self.frames += 1
        self.frames_with_eyes += closed is not None
        dt = 0.0 if self._prev is None else min(max(0.0, t - self._prev), self.max_frame_gap)
        self._prev = t
        self._samples.append((t, dt, closed))
        while self._samples and self._samples[0][0] <= t - self.window:
            self._samples.popleft()
        known = sum(d for _, d, c in self._samples if c is not None)
        shut = sum(d for _, d, c in self._samples if c)
        self.perclos = shut / known if known >= self.min_coverage * self.window else None
        return self._judge(t, timestamp)

    def _judge(self, t: float, timestamp: float) -> list[Event]:
        p = self.perclos
        if p is None or p < self.threshold or t < self._quiet_until:
            self._above_since = None
            return []
        if self._above_since is None:
            self._above_since, self._peak = t, p
        self._peak = max(self._peak, p)
        if t - self._above_since < self.min_duration:
            return []
        start, self._above_since = self._above_since, None
        self._quiet_until = t + self.cooldown
        severity = min(1.0, max(0.0, (self._peak - self.threshold) / (0.5 - self.threshold)))
        return [Event("fatigue", start, t, severity, timestamp=timestamp, model=self.version)]

    def status(self) -> dict[str, Any]:
        return {
            "perclos": None if self.perclos is None else round(self.perclos, 3),
            "frames": self.frames,
            "frames_with_eyes": self.frames_with_eyes,
            "locator": type(self.locator).__name__ if self.locator is not None else None,
            "model": self.version,
        }
