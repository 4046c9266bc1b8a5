"""The learned detector: the shipped TFLite behaviour model on the VehicleState stream, weaving
reported as lane_change events with the model version; inference in a worker thread."""

from __future__ import annotations

import math

import pytest

from hal.types import VehicleState
from models.learned import LearnedDetector
from models.manifest import default_manifest
from models.tflite_model import TfliteModel


def drive(seconds: float, *, weave: bool, rate: float = 10.0) -> list[VehicleState]:
    out = []
    heading = 90.0
    v = 15.0
    for i in range(int(seconds * rate)):
        t = i / rate
        a_lat = 2.5 * math.sin(2 * math.pi * t / 4.0) if weave else 0.0
        yaw = math.degrees(a_lat / v)
        heading = (heading + yaw / rate) % 360
        out.append(
            VehicleState(
                monotonic=t,
                timestamp=1.8e9 + t,
                sequence=i,
                speed=v,
                accel_longitudinal=0.0,
                accel_lateral=a_lat,
                yaw_rate=yaw,
                heading=heading,
                lat=48.1,
                lon=11.5,
            )
        )
    return out


@pytest.fixture(scope="module")
def model() -> TfliteModel:
    return TfliteModel.from_manifest(default_manifest("dbm"))


async def run(det: LearnedDetector, states: list[VehicleState]) -> list:  # type: ignore[type-arg]
    events = []
    for i, s in enumerate(states):
        events += det.update(s)
        if i % 10 == 9:
            await det.infer_pending()
    await det.infer_pending()
    events += det.update(states[-1])
    return events


async def test_weaving_is_a_lane_change_event_with_the_model_version(model: TfliteModel) -> None:
    det = LearnedDetector(model, version="dbm-1")
    events = await run(det, drive(30, weave=True))
    assert [e.kind for e in events] == ["lane_change"], [e.kind for e in events]
    e = events[0]
    assert e.model == "dbm-1" and e.confidence is not None and e.confidence >= 0.8
    assert e.body()["event"] == "lane_change"
    assert det.windows >= 20 and model.latency().infer_count >= 1


async def test_steady_driving_gives_nothing(model: TfliteModel) -> None:
    det = LearnedDetector(model, version="dbm-1")
    assert await run(det, drive(30, weave=False)) == []
