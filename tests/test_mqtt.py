"""The MQTT client layer against a real Mosquitto (tests/mqtt_broker.py starts it on a free
127.0.0.1 port): round trip, QoS / retain per kind, last will, broker restart, backpressure,
TLS / mTLS / password file, and signature-checked delivery with a rogue peer."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import topics
from agent.config import ConfigError, MqttConfig, load_config
from agent.health import HealthRegistry, Status
from agent.mqtt import Message, MqttClient, SignedInbox, Verified, presence_signer
from agent.topics import MessageKind
from ledger_lite import cose
from ledger_lite.attestation import kid_for
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tests.mqtt_broker import Broker, BrokerFactory

pytestmark = pytest.mark.timeout(30)
CELL = "c1"
REPO = Path(__file__).resolve().parent.parent


def cfg(broker: Broker, **kw: Any) -> MqttConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "cell": CELL,
        "keepalive": 30,
        "connect_timeout": 3.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
    }
    base.update(kw)
    return MqttConfig(**base)


class FakeClock:
    """Backoff sleeps are recorded and wait for the test to release them."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def monotonic(self) -> float:
        return 0.0

    def time(self) -> float:
        return 1.7e9

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.gate.wait()

    async def sleep_until(self, deadline: float) -> None:  # pragma: no cover - not used
        await self.sleep(deadline)


@asynccontextmanager
async def running(*clients: MqttClient, wait: bool = True) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.run(), name=f"mqtt-{c.node_id}") for c in clients]
        try:
            if wait:
                for c in clients:
                    await c.wait_connected(5)
            yield
        finally:
            for t in tasks:
                t.cancel()


async def collect(client: MqttClient, n: int, within: float = 5.0) -> list[Message]:
    out: list[Message] = []
    async with asyncio.timeout(within):
        async for m in client.messages():
            out.append(m)
            if len(out) >= n:
                return out
    return out  # pragma: no cover


async def until(cond: Any, within: float = 5.0) -> None:
    """Poll a condition on counters the code under test updates (test helper only)."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# --- plain broker -----------------------------------------------------------------------------


async def test_round_trip_with_qos_and_retain_per_kind(mosquitto: Broker) -> None:
    a = MqttClient(cfg(mosquitto), node_id="a")
    b = MqttClient(cfg(mosquitto), node_id="b")
    async with running(a, b):
        await b.subscribe(topics.kind_filter(MessageKind.TX, CELL), qos=1)
        await b.subscribe(topics.kind_filter(MessageKind.PC5, CELL), qos=1)
        for i in range(200):
            assert await a.publish(topics.tx(CELL), b"tx%d" % i)
        assert await a.publish(topics.pc5(CELL), b"beacon")
        got = await collect(b, 201)
        txs = [m for m in got if m.topic.endswith("/tx")]
        assert [m.payload for m in txs] == [b"tx%d" % i for i in range(200)]  # in order, none lost
        assert {m.qos for m in txs} == {1} and not any(m.retain for m in got)
        (beacon,) = [m for m in got if m.topic == "acc/v1/pc5/c1"]
        assert beacon.qos == 0  # PC5 is QoS 0 by policy
        await a.publish(topics.block(CELL), b"block-9")
        await a.drain()
        # a late subscriber sees the retained kinds (block, presence) and not the others
        c = MqttClient(cfg(mosquitto), node_id="late")
        async with running(c):
            await c.subscribe(topics.cell_filter(CELL))
            got = await collect(c, 4)  # block + presence of a, b, late
            retained = {m.topic: m.payload for m in got if m.retain}
            assert retained["acc/v1/cell/c1/block"] == b"block-9"
            assert retained["acc/v1/cell/c1/presence/a"] == b"online"
            assert not [m for m in got if m.topic.endswith("/tx")]
        st = a.stats()
        assert st["published"] >= 203 and st["dropped"] == 0 and st["queue_depth"] == 0


_VICTIM = """
import asyncio, sys
from agent.config import MqttConfig
from agent.mqtt import MqttClient
async def main():
    c = MqttClient(MqttConfig(host="127.0.0.1", port=int(sys.argv[1]), cell="c1"), node_id="victim")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(c.run())
        await c.wait_connected(5)
        print("up", flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_last_will_offline_when_the_process_dies(mosquitto: Broker) -> None:
    watcher = MqttClient(cfg(mosquitto), node_id="watcher")
    async with running(watcher):
        await watcher.subscribe(topics.kind_filter(MessageKind.PRESENCE, CELL))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            textwrap.dedent(_VICTIM),
            str(mosquitto.port),
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            assert line.strip() == b"up"
            seen: list[bytes] = []
            async with asyncio.timeout(5):
                async for m in watcher.messages():
                    if m.topic == "acc/v1/cell/c1/presence/victim":
                        seen.append(m.payload)
                        if m.payload == b"online":
                            proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
                        if m.payload == b"offline":
                            break
            assert seen[-2:] == [b"online", b"offline"]
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_clean_shutdown_also_leaves_offline(mosquitto: Broker) -> None:
    watcher = MqttClient(cfg(mosquitto), node_id="watcher")
    async with running(watcher):
        await watcher.subscribe(topics.kind_filter(MessageKind.PRESENCE, CELL))
        node = MqttClient(cfg(mosquitto), node_id="n1")
        async with running(node):
            pass
        states = []
        async with asyncio.timeout(5):
            async for m in watcher.messages():
                if m.topic.endswith("/presence/n1"):
                    states.append(m.payload)
                    if m.payload == b"offline":
                        break
        assert states == [b"online", b"offline"]


async def test_broker_restart_reconnects_with_backoff_and_delivers_the_queue(mosquitto: Broker) -> None:
    clock = FakeClock()
    health = HealthRegistry(lambda: 0.0)
    a = MqttClient(cfg(mosquitto, backoff_initial=0.5, backoff_max=4.0), node_id="a", clock=clock, health=health)
    a_rng = random.Random(7)
    a._rng = a_rng  # noqa: SLF001 - seeded jitter
    b = MqttClient(cfg(mosquitto), node_id="b")
    async with running(a, b):
        await b.subscribe(topics.kind_filter(MessageKind.CONSENSUS, CELL))
        await a.publish(topics.consensus(CELL, "a"), b"before")
        assert (await collect(b, 1))[0].payload == b"before"

        clock.gate.clear()  # a's reconnect attempts wait for the test
        mosquitto.stop()
        await until(lambda: not a.connected and not b.connected)
        assert health.get("mqtt") is not None and health.get("mqtt").status is Status.DEGRADED  # type: ignore[union-attr]
        for i in range(50):  # queued while the broker is away (consensus: offline="queue")
            assert a.try_publish(topics.consensus(CELL, "a"), b"during%d" % i)
        assert not a.try_publish(topics.pc5(CELL), b"stale beacon")  # pc5: dropped while offline
        # let a fail a few attempts against the stopped broker: delays grow, capped, jittered
        for _ in range(4):
            n = len(clock.sleeps)
            clock.gate.set()
            clock.gate.clear()
            await until(lambda n=n: len(clock.sleeps) > n)  # type: ignore[misc]
        assert a.stats()["connect_failures"] >= 4
        caps = [min(4.0, 0.5 * 2**k) for k in range(len(clock.sleeps))]
        assert all(0 <= s <= c for s, c in zip(clock.sleeps, caps, strict=True))
        assert len(set(clock.sleeps)) == len(clock.sleeps)  # jittered
        assert "cannot connect to 127.0.0.1" in str(a.last_error)

        mosquitto.start()
        await b.wait_connected(5)  # b resubscribes before a is let go
        clock.gate.set()
        await a.wait_connected(5)
        got = await collect(b, 50)
        assert [m.payload for m in got] == [b"during%d" % i for i in range(50)]
        st = a.stats()
        assert st["reconnects"] == 1 and st["dropped_by"] == {"offline": 1}
        assert health.get("mqtt").status is Status.OK  # type: ignore[union-attr]


async def test_backpressure_with_a_stopped_broker(mosquitto: Broker) -> None:
    a = MqttClient(cfg(mosquitto, queue_max=50, inflight_max=10), node_id="a")
    b = MqttClient(cfg(mosquitto), node_id="b")
    async with running(a, b):
        await b.subscribe(topics.kind_filter(MessageKind.TX, CELL))
        mosquitto.pause()
        accepted = sum(a.try_publish(topics.tx(CELL), b"x" * 100) for _ in range(5000))
        await asyncio.sleep(0.2)  # the sender moves what the window allows
        accepted += sum(a.try_publish(topics.tx(CELL), b"x" * 100) for _ in range(5000))
        st = a.stats()
        assert st["queue_depth"] == 50 and st["inflight"] == 10  # bounded: queue + window
        assert accepted == 60 and st["dropped_by"] == {"queue full": 10_000 - 60}
        blocked = asyncio.create_task(a.publish(topics.tx(CELL), b"waits"))
        await asyncio.sleep(0.3)
        assert not blocked.done()  # publish() waits for room instead of growing memory
        mosquitto.resume()
        async with asyncio.timeout(5):
            assert await blocked
        got = await collect(b, 61)
        assert got[-1].payload == b"waits" and len(got) == 61


async def test_qos1_in_flight_when_the_broker_dies_is_resent(mosquitto: Broker) -> None:
    clock = FakeClock()
    a = MqttClient(cfg(mosquitto, inflight_max=10), node_id="a", clock=clock)
    b = MqttClient(cfg(mosquitto), node_id="b")
    async with running(a, b):
        await b.subscribe(topics.kind_filter(MessageKind.TX, CELL))
        mosquitto.pause()
        for i in range(30):
            assert a.try_publish(topics.tx(CELL), b"m%d" % i)
        await until(lambda: a.stats()["inflight"] == 10)  # written, never acknowledged
        clock.gate.clear()
        mosquitto.kill()
        await until(lambda: not a.connected)
        assert a.stats()["resent"] == 10 and a.stats()["queue_depth"] == 30
        mosquitto.start()
        await b.wait_connected(5)
        clock.gate.set()
        got = await collect(b, 30)
        assert [m.payload for m in got] == [b"m%d" % i for i in range(30)]  # none lost, in order
        assert a.stats()["dropped"] == 0


# --- TLS and passwords ------------------------------------------------------------------------


async def test_tls_with_the_test_ca(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(tls=True)
    assert broker.tls is not None
    good = MqttClient(cfg(broker, tls=True, ca_file=str(broker.tls.ca)), node_id="t1")
    async with running(good):
        await good.subscribe(topics.kind_filter(MessageKind.TX, CELL))
        await good.publish(topics.tx(CELL), b"over tls")
        assert (await collect(good, 1))[0].payload == b"over tls"


async def test_tls_refuses_a_server_the_ca_did_not_sign(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(tls=True)
    assert broker.tls is not None
    health = HealthRegistry(lambda: 0.0)
    bad = MqttClient(cfg(broker, tls=True, ca_file=str(broker.tls.other_ca)), node_id="t2", health=health)
    async with running(bad, wait=False):
        await until(lambda: bad.last_error is not None)
        assert not bad.connected
        err = str(bad.last_error)
        assert "broker certificate not accepted" in err and "check mqtt.ca_file" in err
        h = health.get("mqtt")
        assert h is not None and h.status is Status.FAILED and "check mqtt.ca_file" in h.reason
        with pytest.raises(TimeoutError, match="certificate not accepted"):
            await bad.wait_connected(0.1)


async def test_mutual_tls(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(tls=True, require_certificate=True)
    pki = broker.tls
    assert pki is not None
    with_cert = MqttClient(
        cfg(broker, tls=True, ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)),
        node_id="m1",
    )
    without = MqttClient(cfg(broker, tls=True, ca_file=str(pki.ca)), node_id="m2")
    async with running(with_cert):
        assert with_cert.connected
    async with running(without, wait=False):
        await until(lambda: without.stats()["connect_failures"] >= 1)
        assert not without.connected
        assert "require a client certificate" in str(without.last_error)


async def test_password_file(broker_factory: BrokerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = broker_factory(users={"node-a": "s3cret-pw"})
    good_pw, bad_pw = tmp_path / "good", tmp_path / "bad"
    good_pw.write_text("s3cret-pw\n")
    bad_pw.write_text("wrong-pw\n")
    caplog.set_level(5)
    good = MqttClient(cfg(broker, username="node-a", password_file=str(good_pw)), node_id="a")
    health = HealthRegistry(lambda: 0.0)
    bad = MqttClient(cfg(broker, username="node-a", password_file=str(bad_pw)), node_id="b", health=health)
    anon = MqttClient(cfg(broker), node_id="c")
    async with running(good):
        assert good.connected
    async with running(bad, anon, wait=False):
        await until(lambda: bad.last_error is not None and anon.last_error is not None)
        assert "refused the connection" in str(bad.last_error)
        assert bad.last_error is not None and bad.last_error.permanent
        assert health.get("mqtt").status is Status.FAILED  # type: ignore[union-attr]
    assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text


# --- signed delivery --------------------------------------------------------------------------


def _peer(seed: int) -> tuple[SigningKey, str]:
    key = SigningKey.from_private_bytes("Ed25519", bytes([seed]) * 32)
    return key, kid_for(did_key(key.public))


async def test_rogue_peer_is_ignored_counted_and_does_not_disturb(mosquitto: Broker) -> None:
    good_key, good_kid = _peer(1)
    rogue_key, _ = _peer(2)
    now = lambda: 1.7e9  # noqa: E731
    good = MqttClient(cfg(mosquitto), node_id="good", presence_payload=presence_signer(good_key, good_kid, "good", now))
    rogue = MqttClient(cfg(mosquitto), node_id="rogue")
    me = MqttClient(cfg(mosquitto), node_id="me")
    inbox = SignedInbox()
    received: list[Verified] = []

    async def handle(v: Verified) -> None:
        received.append(v)

    async with running(good, rogue, me), asyncio.TaskGroup() as tg:
        await me.subscribe(topics.kind_filter(MessageKind.CONSENSUS, CELL))
        consumer = tg.create_task(inbox.run(me, handle))
        signed = cose.sign1(b"vote-0", good_key, kid=good_kid.encode())
        forged = cose.sign1(b"vote-evil", rogue_key, kid=good_kid.encode())  # claims good's key
        tampered = bytearray(signed)
        tampered[-70] ^= 1  # flip a bit of the signed payload
        garbage = random.Random(5)
        for i in range(20):
            await good.publish(
                topics.consensus(CELL, "good"), cose.sign1(b"vote-%d" % i, good_key, kid=good_kid.encode())
            )
            await rogue.publish(topics.consensus(CELL, "rogue"), garbage.randbytes(40))  # garbage
            await rogue.publish(topics.consensus(CELL, "rogue"), forged)
            await rogue.publish(topics.consensus(CELL, "rogue"), bytes(tampered))
            await rogue.publish(topics.consensus(CELL, "rogue"), cose.sign1(b"x", rogue_key))  # no kid
        await until(lambda: len(received) >= 20 and inbox.rejected >= 80)
        consumer.cancel()
    assert [v.payload for v in received] == [b"vote-%d" % i for i in range(20)]
    assert {v.kid for v in received} == {good_kid}
    r = inbox.rejects["node:rogue"]
    assert r.total == 80 and r.reasons == {"malformed": 20, "bad-signature": 40, "no-kid": 20}
    assert "node:good" not in inbox.rejects and inbox.accepted == 20


def test_signed_inbox_reasons_without_a_broker() -> None:
    key, kid = _peer(3)
    inbox = SignedInbox()
    t = topics.tx(CELL).path
    assert inbox.accept(Message("not/ours", b"", 0, False)) is None
    assert inbox.accept(Message(t, cose.sign1(b"p", key, kid=b"did:web:example.com"), 1, False)) is None
    ok = inbox.accept(Message(t, cose.sign1(b"p", key, kid=kid.encode()), 1, False))
    assert ok is not None and ok.payload == b"p" and ok.topic == topics.tx(CELL)
    assert inbox.rejects["other"].reasons == {"bad-topic": 1}
    assert inbox.rejects["kid:did:web:example.com"].reasons == {"unknown-key": 1}


def test_mqtt_config_checks_are_listed() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            base={
                "mqtt": {
                    "enabled": True,
                    "cell": "a/b",
                    "port": 0,
                    "cert_file": "/nonexistent.pem",
                    "password_file": "/nonexistent",
                    "backoff_initial": 5.0,
                    "backoff_max": 1.0,
                }
            }
        )
    text = str(err.value)
    for needle in ("mqtt.cell", "mqtt.port", "give both or neither", "needs mqtt.username", "backoff_initial"):
        assert needle in text
    assert dataclasses.is_dataclass(load_config().mqtt)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    class Edge(random.Random):
        def __init__(self, pick: str) -> None:
            super().__init__(0)
            self.pick = pick

        def uniform(self, a: float, b: float) -> float:
            return b if self.pick == "high" else a

    c = MqttConfig(cell=CELL, backoff_initial=0.5, backoff_max=30.0)
    high = MqttClient(c, node_id="n", rng=Edge("high"))
    assert [high.backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert MqttClient(c, node_id="n", rng=Edge("low")).backoff(7) == 0.0  # full jitter: down to 0
    seeded = MqttClient(c, node_id="n", rng=random.Random(1))
    draws = [seeded.backoff(20) for _ in range(200)]
    assert max(draws) <= 30 and min(draws) < 3 and len(set(draws)) == 200
