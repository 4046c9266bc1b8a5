"""Fatigue from steering reversals (and the yaw-rate proxy), and the PERCLOS pipeline with a fake
eye-state model (no real one ships: there is no labelled eye data)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hal.types import Frame, VehicleState
from ledger_lite.attestation import KINDS
from models.fatigue import FatigueDetector, SteeringReversals, steering_equivalent
from models.perclos import PerclosMonitor, frame_to_gray, load_eye_model
from models.rules import Event


def steering(t: float, reversals_per_min: float, amplitude: float = 4.0) -> float:
    """A sine whose every half period is one reversal."""
    return amplitude * math.sin(math.pi * t * reversals_per_min / 60.0)


def drive(det: FatigueDetector, seconds: float, rpm: float, *, t0: float = 0.0, yaw: bool = False) -> list[Event]:
    out: list[Event] = []
    v = 25.0
    for i in range(int(seconds * 10)):
        t = t0 + i / 10
        angle = steering(t, rpm)
        if yaw:  # the same steering seen through the yaw rate only
            s = VehicleState(monotonic=t, timestamp=t, sequence=i, speed=v, yaw_rate=angle * v / (15.0 * 2.7))
        else:
            s = VehicleState(monotonic=t, timestamp=t, sequence=i, speed=v, steering_angle=angle)
        out += det.update(s)
    return out


def test_reversal_counter_counts_only_reversals_larger_than_the_gap() -> None:
    big, small = SteeringReversals(gap=2.5), SteeringReversals(gap=2.5)
    for i in range(600):  # 60 s at 10 Hz, 20 reversals per minute
        t = i / 10
        big.update(t, steering(t, 20, amplitude=4.0))
        small.update(t, steering(t, 20, amplitude=0.8))  # 1.6 deg peak to peak: below the gap
    assert 17 <= big.count <= 20  # the filter delays the first ones
    assert small.count == 0


@pytest.mark.parametrize("yaw", [False, True])
def test_fatigue_score_rises_with_the_reversal_rate(yaw: bool) -> None:
    scores, parts = [], []
    for rpm in (6, 18, 30, 40):
        det = FatigueDetector()
        drive(det, 150, rpm, yaw=yaw)
        assert det.srr is not None
        scores.append(det.score)
        parts.append(det.srr_part)
    assert scores == sorted(scores) and parts[0] == 0.0 and parts[-1] == 1.0 and scores[-1] > 0.6
    assert det.time_part == pytest.approx(150 / (4.5 * 3600), rel=0.01)
    assert det.source == ("yaw" if yaw else "steering")


def test_a_fatigue_event_when_the_score_stays_high_long_enough() -> None:
    det = FatigueDetector(threshold=0.5, min_duration=30.0, cooldown=600.0)
    assert drive(det, 55, 45) == []  # the rate is known from 30 s on: high, but not for 30 s yet
    got = drive(det, 300, 45, t0=55.0)
    assert len(got) == 1  # then the cooldown
    e = got[0]
    assert e.kind == "fatigue" and 0.5 <= e.severity <= 1 and e.duration >= 30.0 and e.confidence == 0.5
    KINDS["driving_event"].encode(e.body())


def test_no_steering_signal_and_slow_driving_give_no_rate() -> None:
    det = FatigueDetector()
    for i in range(1500):
        det.update(VehicleState(monotonic=i / 10, timestamp=0, sequence=i, speed=8.0, steering_angle=steering(i, 40)))
    assert det.srr is None and det.srr_part == 0.0  # town speed: not counted
    assert steering_equivalent(VehicleState(monotonic=0, timestamp=0, sequence=0, speed=20.0)) == (None, "")
    lat = steering_equivalent(VehicleState(monotonic=0, timestamp=0, sequence=0, speed=20.0, accel_lateral=1.0))
    assert lat[1] == "lateral" and lat[0] == pytest.approx(math.degrees(15 * 2.7 * 1.0 / 400))


# --- PERCLOS ---------------------------------------------------------------------------------


class FakeEyes:
    """A fake eye-state model: the eye is 'closed' when the crop is dark."""

    version = "fake-eyes-0"

    def closed_probability(self, eye_image: np.ndarray) -> float:  # type: ignore[type-arg]
        return 1.0 if float(eye_image.mean()) < 64 else 0.0


class WholeImage:
    """A locator that returns the whole image as the eye (the test frames are just eyes)."""

    def eyes(self, gray: np.ndarray) -> list[np.ndarray]:  # type: ignore[type-arg]
        return [] if float(gray.mean()) > 250 else [gray]


def frame(t: float, level: int, seq: int) -> Frame:
    return Frame(bytes([level]) * (16 * 8), 16, 8, "GREY", seq, 1_700_000_000.0 + t, t)


def test_perclos_with_a_fake_eye_model_makes_a_drowsiness_event() -> None:
    mon = PerclosMonitor(FakeEyes(), WholeImage(), threshold=0.15, min_duration=10.0)
    events: list[Event] = []
    seq = 0
    # 60 s alert (eyes closed 0.2 s of every 5 s: blinks, PERCLOS 4 %)
    for i in range(600):
        t = i / 10
        events += mon.update(frame(t, 10 if i % 50 < 2 else 180, seq))
        seq += 1
    assert events == [] and mon.perclos == pytest.approx(0.04, abs=0.01)
    # then drowsy: closed 1.5 s of every 5 s (30 %)
    for i in range(600, 1800):
        t = i / 10
        events += mon.update(frame(t, 10 if i % 50 < 15 else 180, seq))
        seq += 1
    assert len(events) == 1  # once, then the cooldown
    e = events[0]
    assert e.kind == "fatigue" and e.model == "perclos-1.0.0+fake-eyes-0" and e.duration >= 10.0
    assert 0 < e.severity < 1
    KINDS["driving_event"].encode(e.body(speed=20.0))
    assert mon.status()["frames"] == 1800


def test_perclos_ignores_frames_without_eyes() -> None:
    mon = PerclosMonitor(FakeEyes(), WholeImage())
    for i in range(600):
        mon.update(frame(i / 10, 255 if i % 3 else 10, i))  # two thirds without eyes: too little coverage
    assert mon.perclos is None and mon.frames_with_eyes == 200


def test_frame_conversion_and_model_loading() -> None:
    rgb = Frame(bytes([255, 0, 0]) * 4, 2, 2, "RGB3", 0, 0.0, 0.0)
    gray = frame_to_gray(rgb)
    assert gray is not None and gray.shape == (2, 2) and int(gray[0, 0]) == 76
    yuyv = Frame(bytes([100, 128, 50, 128]) * 2, 2, 2, "YUYV", 0, 0.0, 0.0)
    g2 = frame_to_gray(yuyv)
    assert g2 is not None and g2.tolist() == [[100, 50], [100, 50]]
    assert frame_to_gray(Frame(b"", 2, 2, "NV12", 0, 0.0, 0.0)) is None
    with pytest.raises(ValueError):
        load_eye_model("no_colon")
    with pytest.raises(TypeError):
        load_eye_model("collections:OrderedDict")


def test_haar_locator_runs_when_opencv_is_installed() -> None:
    pytest.importorskip("cv2")
    from models.perclos import HaarEyeLocator

    try:
        loc = HaarEyeLocator()
    except ImportError as err:  # OpenCV 5 without contrib has no Haar cascades
        pytest.skip(str(err))
    assert loc.eyes(np.full((120, 160), 128, dtype=np.uint8)) == []  # a blank image has no face
