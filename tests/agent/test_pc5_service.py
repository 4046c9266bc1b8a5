"""The PC5 sidelink service against a real Mosquitto: several simulated OBUs, each with its own
MQTT client, dispatcher, pseudonyms and seeded radio model."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import MqttConfig, Pc5Config, load_config
from agent.health import HealthRegistry
from agent.mqtt import Dispatcher, MqttClient
from agent.pc5 import messages
from agent.pc5.messages import CAUSE_DANGEROUS_SITUATION, SUB_EMERGENCY_BRAKE, Cam, Denm
from agent.pc5.service import Pc5Error, Pc5Service, build_pc5, load_pseudonym_pool, store_pseudonyms
from agent.topics import pc5 as pc5_topic
from drivers.clock import SimulatedClock, SystemClock
from hal.types import VehicleState
from ledger_lite.didkey import did_key
from ledger_lite.keys import KeyAgreementPrivateKey, SigningKey
from ledger_lite.pseudonym import PseudonymAuthority, PseudonymIdentity, PseudonymManager, PseudonymPool
from tests.mqtt_broker import Broker

pytestmark = pytest.mark.timeout(60)
CELL = "c1"
BASE = (48.0, 11.0)
M_PER_DEG_LAT = 111_195.0


def north(metres: float, east: float = 0.0) -> tuple[float, float]:
    return (
        BASE[0] + metres / M_PER_DEG_LAT,
        BASE[1] + east / (M_PER_DEG_LAT * math.cos(math.radians(BASE[0]))),
    )


def make_authority() -> PseudonymAuthority:
    return PseudonymAuthority(SigningKey.generate("Ed25519"), KeyAgreementPrivateKey.generate(), validity=3600)


def provision(authority: PseudonymAuthority, now: float, per_slot: int = 2) -> PseudonymPool:
    """Pseudonyms for this slot and the next (a test straddling a slot boundary keeps working)."""
    vehicle = did_key(SigningKey.generate("Ed25519").public)
    pool = PseudonymPool()
    for slot in (authority.slot(now), authority.slot(now) + 1):
        keys = [SigningKey.generate("P-256") for _ in range(per_slot)]
        certs = authority.certify(vehicle, [k.public for k in keys], now=now, slot=slot)
        pool.add_batch(keys, certs, authority_keys=[authority.public_key], now=now)
    return pool


def mqtt_cfg(broker: Broker) -> MqttConfig:
    return MqttConfig(enabled=True, host=broker.host, port=broker.port, cell=CELL, connect_timeout=3.0)


class Obu:
    """One simulated vehicle: state, MQTT client, dispatcher, PC5 service."""

    def __init__(
        self,
        name: str,
        broker: Broker,
        cfg: Pc5Config,
        authority: PseudonymAuthority,
        *,
        pos: tuple[float, float],
        heading: float = 0.0,
        speed: float = 0.0,
        seed: int = 1,
        clock: Any = None,
    ) -> None:
        self.name = name
        self.clock = clock or SystemClock()
        self.state: VehicleState | None = VehicleState(
            monotonic=0.0, timestamp=0.0, sequence=0, lat=pos[0], lon=pos[1], heading=heading, speed=speed
        )
        self.client = MqttClient(mqtt_cfg(broker), node_id=name)
        self.dispatcher = Dispatcher(self.client)
        now = self.clock.time()
        self.manager = PseudonymManager(provision(authority, now), now=now, rng=random.Random(seed))
        self.health = HealthRegistry(self.clock.monotonic)
        self.service = Pc5Service(
            cfg,
            client=self.client,
            dispatcher=self.dispatcher,
            cell=CELL,
            clock=self.clock,
            health=self.health,
            state=lambda: self.state,
            identity=self.manager,
            trust=[authority.public_key],
            rng=random.Random(seed),
        )

    @property
    def station_id(self) -> int:
        return self.manager.current(self.clock.time()).station_id

    def move(self, dt: float) -> None:
        s = self.state
        assert s is not None and s.lat is not None and s.lon is not None and s.speed is not None
        d = s.speed * dt
        h = math.radians(s.heading or 0.0)
        lat = s.lat + d * math.cos(h) / M_PER_DEG_LAT
        lon = s.lon + d * math.sin(h) / (M_PER_DEG_LAT * math.cos(math.radians(s.lat)))
        self.state = replace(s, lat=lat, lon=lon)


@asynccontextmanager
async def running(*obus: Obu, drive: bool = False) -> AsyncIterator[None]:
    tasks: list[asyncio.Task[None]] = []
    for o in obus:
        tasks.append(asyncio.create_task(o.client.run()))
        tasks.append(asyncio.create_task(o.dispatcher.run()))
    try:
        for o in obus:
            await o.client.wait_connected(5)
        for o in obus:
            tasks.append(asyncio.create_task(o.service.run()))
        await asyncio.sleep(0.2)  # subscriptions in place before anyone counts

        async def driver() -> None:
            while True:
                await asyncio.sleep(0.05)
                for o in obus:
                    o.move(0.05)

        if drive:
            tasks.append(asyncio.create_task(driver()))
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - polls counters of the code under test
            await asyncio.sleep(0.02)


def neighbour_ids(o: Obu) -> set[int]:
    return set(o.service.neighbours)


# --- radio: range and PDR ---------------------------------------------------------------------


async def test_near_pairs_hear_each_other_at_the_configured_pdr_and_far_ones_nothing(mosquitto: Broker) -> None:
    cfg = Pc5Config(
        enabled=True,
        max_range_m=600.0,
        pdr_curve=((0.0, 1.0), (100.0, 0.7), (500.0, 0.7)),
        cbr_knee=0.6,
        denm_repetitions=0,
    )
    authority = make_authority()
    a = Obu("a", mosquitto, cfg, authority, pos=north(0), speed=25.0, seed=11)
    b = Obu("b", mosquitto, cfg, authority, pos=north(300), speed=25.0, seed=12)
    c = Obu("c", mosquitto, cfg, authority, pos=north(2000), speed=25.0, seed=13)
    # a probe station at a's position sends many signed CAMs, paced to keep the channel below the knee
    probe = MqttClient(mqtt_cfg(mosquitto), node_id="probe")
    probe_id = PseudonymManager(provision(authority, SystemClock().time()), now=SystemClock().time())
    async with running(a, b, c, drive=True):
        probe_task = asyncio.create_task(probe.run())
        try:
            await probe.wait_connected(5)
            wall = SystemClock()
            for _ in range(300):
                ident = probe_id.current(wall.time())
                assert a.state is not None
                cam = Cam.from_state(a.state, station_id=ident.station_id, now=wall.time())
                assert probe.try_publish(pc5_topic(CELL), messages.sign(ident, cam, include_cert=True))
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.3)
        finally:
            probe_task.cancel()
            await asyncio.gather(probe_task, return_exceptions=True)

    sa, sb, sc = a.service.status(), b.service.status(), c.service.status()
    for s in (sa, sb, sc):
        assert 5 <= s["cam_sent"] <= 40, s  # 5 Hz driving at 25 m/s for ~2 s
        # a message that arrives before its sender's certificate was heard cannot be verified
        assert set(s["rejected"]) <= {"unknown_cert"} and s["rejected"].get("unknown_cert", 0) <= 5, s
    received = sb["delivered"] + sb["rejected"].get("unknown_cert", 0)
    near = received + sb["dropped_by"].get("lost", 0)
    assert near >= 300
    assert received / near == pytest.approx(0.7, abs=0.08)
    assert sb["dropped_by"]["out_of_range"] >= 5  # c's CAMs
    # the far vehicle hears nothing, and nobody hears it
    assert sc["delivered"] == 0 and sc["neighbours"] == []
    assert sc["dropped_by"]["out_of_range"] >= 300
    assert c.station_id not in neighbour_ids(a) | neighbour_ids(b)
    # the near pair see each other in their neighbour tables (with the distance)
    assert b.station_id in neighbour_ids(a) and a.station_id in neighbour_ids(b)
    nb = b.service.neighbours[a.station_id]
    assert nb.distance == pytest.approx(300, abs=30) and nb.speed == pytest.approx(25.0)
    # own messages are heard (channel load) and ignored
    assert sa["own"] >= 5 and sa["cbr"] >= 0.0


# --- DENM relevance ---------------------------------------------------------------------------


async def test_hard_braking_warns_the_follower_only(mosquitto: Broker, caplog: pytest.LogCaptureFixture) -> None:
    cfg = Pc5Config(enabled=True, denm_repetitions=2, denm_repeat_interval=0.2)
    authority = make_authority()
    leader = Obu("leader", mosquitto, cfg, authority, pos=north(0), heading=0.0, speed=20.0, seed=21)
    follower = Obu("follower", mosquitto, cfg, authority, pos=north(-100), heading=0.0, speed=20.0, seed=22)
    ahead = Obu("ahead", mosquitto, cfg, authority, pos=north(100), heading=0.0, speed=20.0, seed=23)
    oncoming = Obu("oncoming", mosquitto, cfg, authority, pos=north(80, east=3), heading=180.0, speed=20.0, seed=24)
    caplog.set_level(logging.WARNING, logger="agent.pc5.service")
    async with running(leader, follower, ahead, oncoming):
        assert leader.state is not None
        leader.state = replace(leader.state, accel_longitudinal=-6.5)
        await until(lambda: leader.service.counts["denm_sent"] >= 3)
        assert not leader.service.on_driving_event("harsh_brake")  # the same braking, seen by the model too
        await asyncio.sleep(0.2)
    assert leader.service.counts["denm_sent"] == 3  # one braking episode: one event, two repetitions
    fw = follower.service.status()["warnings"]
    assert len(fw) == 1, follower.service.status()
    w = fw[0]
    assert (w["cause"], w["sub_cause"]) == (CAUSE_DANGEROUS_SITUATION, SUB_EMERGENCY_BRAKE)
    assert w["distance_m"] == pytest.approx(100, abs=5) and (w["bearing_deg"] < 2 or w["bearing_deg"] > 358)
    assert follower.service.counts["denm_received"] >= 2
    assert ahead.service.warnings == {} and ahead.service.denm_verdicts.get("behind", 0) >= 1
    assert oncoming.service.warnings == {} and oncoming.service.denm_verdicts.get("other_direction", 0) >= 1
    warned = [r for r in caplog.records if "V2V warning" in r.getMessage()]
    assert len(warned) == 1  # logged once per event, not per repetition


# --- forged, garbage, stale, replayed ---------------------------------------------------------


async def test_forged_garbage_stale_and_replayed_messages_are_rejected(mosquitto: Broker) -> None:
    cfg = Pc5Config(enabled=True, pdr_curve=((0.0, 1.0), (800.0, 1.0)), stale_after=1.0)
    authority = make_authority()
    a = Obu("a", mosquitto, cfg, authority, pos=north(0), speed=0.0, seed=31)
    b = Obu("b", mosquitto, cfg, authority, pos=north(50), speed=0.0, seed=32)
    rogue_client = MqttClient(mqtt_cfg(mosquitto), node_id="rogue")
    wall = SystemClock()
    now = wall.time()
    rogue_ca = make_authority()
    forged_id = PseudonymManager(provision(rogue_ca, now), now=now).current(now)
    certified = PseudonymManager(provision(authority, now), now=now)
    assert a.state is not None
    state = a.state

    def cam(ident: PseudonymIdentity, at: float) -> Cam:
        return Cam.from_state(state, station_id=ident.station_id, now=at)

    async with running(a, b):
        task = asyncio.create_task(rogue_client.run())
        try:
            await rogue_client.wait_connected(5)
            t = pc5_topic(CELL)
            delivered_before = b.service.counts["delivered"]
            good = certified.current(now)
            sends = [
                b"\x00garbage",
                b"",
                bytes(range(256)),
                messages.sign(forged_id, cam(forged_id, wall.time()), include_cert=True),  # unknown CA
            ]
            tampered = bytearray(messages.sign(good, cam(good, wall.time()), include_cert=True))
            tampered[-1] ^= 0x01
            sends.append(bytes(tampered))  # bad signature
            fresh = messages.sign(good, cam(good, wall.time()), include_cert=True)
            sends += [fresh, fresh]  # the second one is a replay
            sends.append(messages.sign(good, cam(good, wall.time() - 5.0)))  # stale CAM
            old = Denm.event(
                station_id=good.station_id,
                sequence_number=1,
                position=north(0),
                heading=0.0,
                detected_at=wall.time() - 10,
                now=wall.time() - 10,
                cause_code=CAUSE_DANGEROUS_SITUATION,
            )
            sends.append(messages.sign(good, old))  # stale DENM
            unseen = PseudonymManager(provision(authority, now), now=now).current(now)
            sends.append(messages.sign(unseen, cam(unseen, wall.time())))  # certificate never seen
            for data in sends:
                assert rogue_client.try_publish(t, data)
                await asyncio.sleep(0.02)
            await until(lambda: sum(b.service.rejected.values()) >= 7 and b.service.counts["stale"] >= 2)
            await asyncio.sleep(1.2)  # a's CAMs keep arriving
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    s = b.service.status()
    rejected = dict(s["rejected"])
    assert 1 <= rejected.pop("unknown_cert", 0) <= 2, s  # the unseen certificate (+ a race at start-up)
    assert rejected == {"malformed": 3, "untrusted_ca": 1, "bad_signature": 1, "replay": 1}, s
    assert s["stale"] == 2
    # delivery went on: a's CAMs (1 Hz standing still) and the one fresh probe CAM
    assert s["delivered"] >= delivered_before + 2
    assert a.station_id in b.service.neighbours and good.station_id in b.service.neighbours
    assert forged_id.station_id not in b.service.neighbours
    assert b.health.get("pc5") is not None


# --- CAM generation rate ----------------------------------------------------------------------


async def test_cam_rate_stays_within_1_to_10_hz_on_a_simulated_drive(mosquitto: Broker) -> None:
    clock = SimulatedClock(start_utc=SystemClock().time())
    cfg = Pc5Config(enabled=True, hard_brake_mps2=0.0)
    authority = make_authority()
    car = Obu("car", mosquitto, cfg, authority, pos=north(0), speed=0.0, seed=41, clock=clock)
    published: list[float] = []
    real = car.client.try_publish

    def spy(topic: Any, payload: bytes) -> bool:
        published.append(clock.monotonic())
        return real(topic, payload)

    car.client.try_publish = spy  # type: ignore[method-assign]
    tasks = [asyncio.create_task(car.client.run()), asyncio.create_task(car.dispatcher.run())]
    try:
        await car.client.wait_connected(5)
        tasks.append(asyncio.create_task(car.service.run()))
        await asyncio.sleep(0.05)

        async def drive(seconds: float, speed: float, turn_rate: float = 0.0) -> None:
            assert car.state is not None
            car.state = replace(car.state, speed=speed)
            for _ in range(round(seconds / 0.05)):
                assert car.state is not None
                car.state = replace(car.state, heading=((car.state.heading or 0.0) + turn_rate * 0.05) % 360)
                car.move(0.05)
                await clock.advance(0.05)

        phases = [(10.0, 0.0, 0.0), (10.0, 60.0, 0.0), (10.0, 10.0, 0.0), (10.0, 5.0, 30.0)]
        counts = []
        for seconds, speed, turn in phases:
            start = len(published)
            await drive(seconds, speed, turn)
            counts.append(len(published) - start)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    gaps = [b - a for a, b in zip(published, published[1:], strict=False)]
    assert min(gaps) >= 0.1 - 1e-6 and max(gaps) <= 1.0 + 0.05 + 1e-6  # 1..10 Hz, checked every 50 ms
    assert counts[0] == pytest.approx(10, abs=1)  # standing: T_GenCam = 1 s
    assert counts[1] == pytest.approx(100, abs=2)  # 60 m/s: 6 m per 100 ms, every check window
    assert 18 <= counts[2] <= 40  # 10 m/s: position change > 4 m about every 0.45 s
    assert counts[3] >= 15  # turning at 30 deg/s: heading change > 4 deg
    assert car.service.counts["cam_sent"] == len(published)


# --- pseudonym material and wiring ------------------------------------------------------------


def test_pseudonym_directory_round_trip_and_key_file_modes(tmp_path: Path) -> None:
    authority = make_authority()
    now = SystemClock().time()
    vehicle = did_key(SigningKey.generate("Ed25519").public)
    keys = [SigningKey.generate("P-256") for _ in range(3)]
    certs = authority.certify(vehicle, [k.public for k in keys], now=now)
    d = tmp_path / "pseudonyms"
    assert store_pseudonyms(d, keys, certs) == 3
    assert (d.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in d.glob("*.key"))
    pool = load_pseudonym_pool(d, [authority.public_key], now=now)
    assert len(pool) == 3
    assert len(load_pseudonym_pool(d, [make_authority().public_key], now=now)) == 0  # other CA: skipped
    os.chmod(next(d.glob("*.key")), 0o644)
    with pytest.raises(Pc5Error, match="chmod 600"):
        load_pseudonym_pool(d, [authority.public_key], now=now)


def test_build_pc5_wires_one_service_from_config(tmp_path: Path) -> None:
    authority = make_authority()
    now = SystemClock().time()
    vehicle = did_key(SigningKey.generate("Ed25519").public)
    keys = [SigningKey.generate("P-256") for _ in range(2)]
    store_pseudonyms(tmp_path / "pseudonyms", keys, authority.certify(vehicle, [k.public for k in keys], now=now))
    cfg = load_config(
        env={},
        base={
            "agent": {"data_dir": str(tmp_path)},
            "mqtt": {"enabled": True, "cell": CELL},
            "pc5": {"enabled": True, "authorities": [authority.did]},
        },
    )
    clock = SystemClock()
    health = HealthRegistry(clock.monotonic)

    async def build() -> Any:
        client = MqttClient(cfg.mqtt, node_id="obu")
        agent = SimpleNamespace(
            config=cfg,
            mqtt=client,
            dispatcher=Dispatcher(client),
            clock=clock,
            health=health,
            state_service=None,
        )
        return build_pc5(agent)  # type: ignore[arg-type]

    wiring = asyncio.run(build())
    assert [name for name, _ in wiring.services] == ["pc5"]
    assert wiring.status()["cam_sent"] == 0
    # no trusted CA: health failed, nothing built
    bad = SimpleNamespace(
        config=load_config(env={}, base={"mqtt": {"enabled": True, "cell": CELL}, "pc5": {"enabled": True}}),
        mqtt=object(),
        dispatcher=object(),
        clock=clock,
        health=health,
        state_service=None,
    )
    assert build_pc5(bad).services == []  # type: ignore[arg-type]
    h = health.get("pc5")
    assert h is not None and "pseudonym CA" in h.reason


class _StubClient:
    """Records what the service publishes (no broker)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def try_publish(self, topic: Any, payload: bytes) -> bool:
        self.sent.append(payload)
        return True

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        return None


async def test_stationary_vehicle_denm_once_per_stop() -> None:
    clock = SimulatedClock(start_utc=SystemClock().time())
    authority = make_authority()
    now = clock.time()
    stub = _StubClient()
    state = VehicleState(monotonic=0.0, timestamp=0.0, sequence=0, lat=BASE[0], lon=BASE[1], heading=90.0, speed=0.0)
    current = {"state": state}
    service = Pc5Service(
        Pc5Config(enabled=True, stationary_after=5.0, denm_repetitions=0),
        client=stub,  # type: ignore[arg-type]
        dispatcher=Dispatcher(stub),  # type: ignore[arg-type]
        cell=CELL,
        clock=clock,
        state=lambda: current["state"],
        identity=PseudonymManager(provision(authority, now), now=now),
        trust=[authority.public_key],
    )

    def denms() -> list[Denm]:
        out, certs = [], {}
        for data in stub.sent:
            _, payload = messages.open_signed(
                data, authority_keys=[authority.public_key], now=clock.time(), certs=certs
            )
            if isinstance(payload, Denm):
                out.append(payload)
        return out

    for _ in range(200):  # 10 s standing
        service.tick()
        await clock.advance(0.05)
    assert [(d.cause_code, d.relevance_traffic_direction) for d in denms()] == [(94, 0)]
    current["state"] = replace(state, speed=3.0)
    service.tick()
    current["state"] = state
    for _ in range(120):  # a second stop: a second event
        service.tick()
        await clock.advance(0.05)
    assert len(denms()) == 2 and denms()[0].sequence_number != denms()[1].sequence_number
