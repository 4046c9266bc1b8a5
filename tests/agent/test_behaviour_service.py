"""The behaviour service: VehicleState in, signed driving_event attestations out (real Attestor
with a device key in tmp_path), per-kind counts, the add_detector hook, build_behaviour from the
config, and the [behaviour] config checks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.attestor import Attestor, chain_dir
from agent.behaviour import BehaviourService, build_behaviour, detectors_from_config
from agent.config import BehaviourConfig, ConfigError, load_config
from agent.health import HealthRegistry
from agent.keystore import init_device_key, load_identity
from drivers.clock import SimulatedClock
from hal.types import FixMode, VehicleState
from ledger_lite.attestation import AttestationReceiver
from models.rules import RULES_MODEL, Event, HarshEventDetector

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC).timestamp()
REPO = Path(__file__).resolve().parents[2]


def state(t: float, along: float = 0.0, speed: float = 20.0, alat: float = 0.0) -> VehicleState:
    return VehicleState(
        monotonic=t,
        timestamp=T0 + t,
        sequence=int(t * 10),
        speed=speed,
        accel_longitudinal=along,
        accel_lateral=alat,
        lat=48.1,
        lon=11.5,
        gnss_mode=FixMode.FIX_3D,
    )


async def settle(service: BehaviourService, n: int) -> None:
    for _ in range(500):  # the durable write runs in a thread, on real time
        if sum(service.attested.values()) + service.failures >= n:
            return
        await asyncio.sleep(0.01)


class Weaving:
    """Stands in for the learned model the lead will plug in with add_detector."""

    name = "weaving"

    def __init__(self) -> None:
        self.calls = 0

    def update(self, s: VehicleState) -> list[Event]:
        self.calls += 1
        if self.calls == 30:
            return [Event("lane_change", s.monotonic - 2, s.monotonic, 0.4, speed=s.speed, model="weaving-0.1.0")]
        return []


async def test_events_become_verified_driving_event_attestations(tmp_path: Path) -> None:
    init_device_key(tmp_path)
    clock = SimulatedClock(start_utc=T0)
    last: list[VehicleState] = []
    attestor = Attestor(load_identity(tmp_path), tmp_path, clock, state=lambda: last[-1] if last else None)
    service = BehaviourService(attestor, clock, [HarshEventDetector()])
    weaving = Weaving()
    service.add_detector(weaving)
    task = asyncio.create_task(service.run())
    for i in range(100):  # 10 s at 10 Hz: a hard brake 2.0-3.4 s, a hard corner 6.0-6.9 s
        t = i / 10
        s = state(t, along=-6.0 if 20 <= i < 35 else 0.0, alat=5.0 if 60 <= i < 70 else 0.0)
        last.append(s)
        service(s)
    await settle(service, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert service.events == {"harsh_brake": 1, "harsh_corner": 1, "lane_change": 1}
    assert service.attested == service.events and service.failures == 0 and service.dropped == 0

    rx = AttestationReceiver(from_start=True)
    got = [rx.accept(p.read_bytes(), now=T0 + 20).attestation for p in sorted(chain_dir(tmp_path).glob("*.cose"))]
    assert [a.kind for a in got] == ["driving_event"] * 3
    by_event = {a.body["event"]: a for a in got}
    brake = by_event["harsh_brake"]
    assert brake.model == RULES_MODEL and brake.body["accel_long"] == -6.0
    assert brake.body["duration"] == pytest.approx(1.5) and 0 < brake.body["severity"] < 1
    assert brake.position is not None and brake.position.lat == pytest.approx(48.1)
    assert by_event["lane_change"].model == "weaving-0.1.0"
    st = service.status()
    assert st["detectors"] == ["harsh", "weaving"] and st["by_model"] == {RULES_MODEL: 2, "weaving-0.1.0": 1}


async def test_without_an_attestor_events_are_counted_and_a_bad_detector_is_isolated() -> None:
    class Broken:
        name = "broken"

        def update(self, s: VehicleState) -> list[Event]:
            raise RuntimeError("boom")

    service = BehaviourService(None, SimulatedClock(), [Broken(), HarshEventDetector()], queue_max=1)
    for i in range(200):  # two brakes
        service(state(i / 10, along=-6.0 if i % 100 < 10 else 0.0))
    assert service.events["harsh_brake"] == 2 and service.detector_errors == 200
    assert service.dropped == 1  # queue_max 1 and nothing drains it
    assert await service.attest(service.queue.get_nowait()) is None
    assert "broken: boom" in service.status()["last_error"]


def fake_agent(tmp_path: Path, cfg: Any, attestor: Attestor | None) -> SimpleNamespace:
    clock = SimulatedClock(start_utc=T0)
    return SimpleNamespace(
        config=cfg,
        clock=clock,
        attestor=attestor,
        health=HealthRegistry(clock.monotonic),
        state_service=SimpleNamespace(sinks=[]),
        camera_service=None,
    )


def test_build_behaviour_from_config(tmp_path: Path) -> None:
    off = load_config(env={})
    assert build_behaviour(fake_agent(tmp_path, off, None)) is None  # type: ignore[arg-type]
    cfg = load_config(
        env={},
        base={
            "behaviour": {
                "enabled": True,
                "speed_limit_kmh": 100,
                "speed_zones": [{"limit_kmh": 30, "lat": 48.1, "lon": 11.5, "radius_m": 300}],
                "eye_model": "nowhere.module:factory",
            }
        },
    )
    agent = fake_agent(tmp_path, cfg, None)
    service = build_behaviour(agent)  # type: ignore[arg-type]
    assert service is not None and agent.state_service.sinks == [service]
    assert service.status()["detectors"] == ["harsh", "speeding", "driving_time", "fatigue"]
    assert service.perclos is None  # no camera configured
    assert agent.health.snapshot()["behaviour"].as_dict()["status"] == "degraded"  # counted, not attested
    dets = detectors_from_config(BehaviourConfig(harsh_accel_mps2=0, fatigue=False, driving_limit_h=0))
    assert [d.name for d in dets] == ["harsh"]
    harsh = dets[0]
    assert isinstance(harsh, HarshEventDetector) and harsh.rules["harsh_accel"].on > 1e6


def test_the_behaviour_config_is_checked() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            env={},
            base={
                "agent": {"role": "rsu"},
                "behaviour": {
                    "enabled": True,
                    "harsh_brake_mps2": 0.1,
                    "speed_zones": [{"limit_kmh": 0}, {"limit_kmh": 50, "polygon": [[48, 11], [48, 12]]}],
                    "fatigue_threshold": 2,
                    "eye_model": "not a spec",
                },
            },
        )
    text = str(err.value)
    for key in (
        "behaviour.harsh_brake_mps2",
        "behaviour.speed_zones[0].limit_kmh",
        "behaviour.speed_zones[1]: needs radius_m",
        "behaviour.fatigue_threshold",
        "behaviour.eye_model",
        "behaviour.enabled: only an OBU",
    ):
        assert key in text


def test_the_example_config_has_a_behaviour_block() -> None:
    cfg = load_config(REPO / "docs/agent.example.toml", env={})
    assert cfg.behaviour.harsh_brake_mps2 == pytest.approx(3.43)
    assert cfg.behaviour.speed_zones and cfg.behaviour.speed_zones[0].limit_kmh == 30.0


async def test_perclos_runs_on_camera_frames_in_the_service() -> None:
    from models.perclos import PerclosMonitor
    from tests.test_fatigue import FakeEyes, WholeImage, frame

    clock = SimulatedClock(start_utc=T0)
    monitor = PerclosMonitor(FakeEyes(), WholeImage(), min_duration=5.0)
    current = [frame(0.0, 180, 0)]
    service = BehaviourService(None, clock, [], perclos=monitor, frames=lambda: current[-1], perclos_period=0.2)
    task = asyncio.create_task(service.run())
    for _ in range(20):  # let the PERCLOS loop start its first sleep
        await asyncio.sleep(0.001)
    for i in range(1, 451):  # 90 s at 5 Hz, eyes closed 40 % of the time
        t = i * 0.2
        current.append(frame(t, 10 if i % 5 < 2 else 180, i))
        await clock.advance(0.2)
        for _ in range(250):  # the eye model runs in a thread, on real time
            if monitor.frames >= i:
                break
            await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert monitor.frames >= 440 and monitor.perclos == pytest.approx(0.4, abs=0.05)
    assert service.events == {"fatigue": 1} and service.status()["perclos"]["model"] == "perclos-1.0.0+fake-eyes-0"
