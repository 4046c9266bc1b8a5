"""The agent's MQTT 5 client: one connection to the cell's broker, kept up with capped, jittered
backoff, with a bounded outgoing queue, last-will presence and signature-checked delivery.

**paho-mqtt driven from asyncio, not aiomqtt.** aiomqtt is itself a wrapper round paho; going to
paho directly costs ~150 lines of socket glue (``add_reader``/``add_writer`` on paho's socket, a
1 s ``loop_misc`` tick) and buys what this layer needs: (1) throughput -- through a local
Mosquitto this client publishes at 0.75-1.1x bare paho's rate and 2-3x faster than aiomqtt's
awaited ``publish()`` (~22k vs 9k msgs/s QoS 0, ~15k vs 6.7k QoS 1, one run, build machine): it
keeps a window of ``inflight_max`` messages in flight instead of awaiting each one; (2) exact
control of what is in flight, so memory is bounded by ``queue_max + inflight_max`` messages and
QoS 1 messages in flight when a connection died are re-sent on the next one (paho's own queue
is per connection and unbounded by default); (3) one reconnect loop of our own with injected
clock and randomness. The blocking part of paho's connect (TCP + TLS handshake) runs in a worker
thread; everything after it runs in the event-loop thread only.

Data flow::

    publish(topic, payload) --> bounded queue --(window of inflight_max)--> paho --> broker
    broker --> paho on_message --> bounded inbox --> messages() --> SignedInbox.accept --> agent

Policies (stated, and counted in ``stats()``):

* ``publish()`` waits while the queue is full (backpressure); ``try_publish()`` returns False and
  counts a drop. Kinds whose ``topics.POLICY`` says ``offline="drop"`` (PC5, presence) are dropped
  and counted at once while disconnected; the others queue.
* QoS 1 messages in flight when the connection is lost are re-sent after the reconnect
  (at-least-once: receivers must be idempotent); QoS 0 messages not yet written are dropped
  ("lost in disconnect").
* A full inbox drops the newest received message and counts it (``inbox_dropped``), as does a
  received payload larger than ``max_payload``.
* The last will is a retained ``offline`` presence on ``.../presence/{node}``; an ``online``
  presence is published (retained) on every connect; ``run()`` being cancelled disconnects with
  reason "Disconnect with Will Message", so a clean shutdown also leaves ``offline`` behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hal.interfaces import Clock
from ledger_lite import cbor, cose
from ledger_lite.errors import LedgerError, MalformedError, VerificationError
from ledger_lite.keys import SigningKey, VerifyKey

from . import topics
from .config import MqttConfig
from .health import HealthRegistry, Status

__all__ = [
    "Dispatcher",
    "Peer",
    "PresenceTracker",
    "Message",
    "MqttClient",
    "MqttConnectError",
    "MqttError",
    "PeerRejects",
    "SignedInbox",
    "Verified",
    "presence_signer",
]

log = logging.getLogger(__name__)
TRACE: Final = 5  # per-message logs go below DEBUG

#: paho's keepalive / retry housekeeping runs this often (paho keeps its own monotonic time)
_MISC_TICK: Final = 1.0
#: a connection that lasted this long resets the reconnect backoff
_STABLE_AFTER: Final = 10.0
#: CONNACK reason codes that retrying will not fix (the operator must)
_PERMANENT: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


class MqttError(Exception):
    """Base of this module's errors."""


class MqttConnectError(MqttError, ConnectionError):
    """A connection attempt failed; ``permanent`` when retrying cannot help (bad credentials, a
    certificate that does not verify, unreadable files) -- it is still retried, at the cap."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Message:
    """A received message as the broker delivered it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class _Out:
    topic: str
    payload: bytes
    policy: topics.Policy
    sent_at: float = 0.0


@dataclass(slots=True)
class _Stats:
    enqueued: int = 0
    published: int = 0
    resent: int = 0
    dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)
    received: int = 0
    inbox_dropped: int = 0
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    #: QoS 1 publish -> PUBACK round trip to the broker, seconds: last and moving average
    rtt_last: float | None = None
    rtt_avg: float | None = None


def presence_signer(key: SigningKey, kid: str, node: str, now: Callable[[], float]) -> Callable[[str], bytes]:
    """A ``presence_payload`` for ``MqttClient``: COSE_Sign1 over CBOR ``{node, state, t}``."""

    def make(state: str) -> bytes:
        body = cbor.dumps({"node": node, "state": state, "t": int(now() * 1000)})
        return cose.sign1(body, key, kid=kid.encode())

    return make


class MqttClient:
    """One MQTT 5 connection for this node. Run ``run()`` as a service; publish and subscribe from
    anywhere in the same event loop."""

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        node_id: str,
        cell: str = "",
        clock: Clock | None = None,
        rng: random.Random | None = None,
        health: HealthRegistry | None = None,
        health_name: str = "mqtt",
        presence_payload: Callable[[str], bytes] | None = None,
    ) -> None:
        if clock is None:
            from drivers.clock import SystemClock

            clock = SystemClock()
        self.cfg = cfg
        self.node_id = topics.check_id(node_id, "node")
        self.cell = topics.check_id(cell or cfg.cell, "cell")
        self.client_id = cfg.client_id or node_id
        self.presence_topic = topics.presence(self.cell, self.node_id)
        self._clock = clock
        self._rng = rng or random.Random()
        self._health = health
        self._health_name = health_name
        self._presence = presence_payload or (lambda state: state.encode())
        self._queue: asyncio.Queue[_Out] = asyncio.Queue(maxsize=cfg.queue_max)
        self._retry: deque[_Out] = deque()
        self._pending: dict[int, _Out] = {}
        self._window = asyncio.Event()
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=cfg.inbox_max)
        self._subs: dict[str, int] = {}
        self._sub_waiters: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._client: paho.Client | None = None
        self._connected = asyncio.Event()
        self._stats = _Stats()
        self.status: tuple[Status, str] = (Status.DEGRADED, "not connected yet")
        self.last_error: MqttConnectError | None = None

    # --- public API ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - names the cause
        """Wait until connected and subscribed; ``TimeoutError`` naming the last failure otherwise."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"mqtt: not connected to {self.cfg.host}:{self.cfg.port} after {timeout}s"
                + (f": {self.last_error}" if self.last_error else "")
            ) from None

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "enqueued": s.enqueued,
            "published": s.published,
            "resent": s.resent,
            "dropped": s.dropped,
            "dropped_by": dict(s.dropped_by),
            "received": s.received,
            "inbox_dropped": s.inbox_dropped,
            "connects": s.connects,
            "reconnects": s.reconnects,
            "connect_failures": s.connect_failures,
            "queue_depth": self._queue.qsize() + len(self._retry),
            "inflight": len(self._pending),
            "connected": self.connected,
            "rtt_ms": None if s.rtt_last is None else round(s.rtt_last * 1000, 2),
            "rtt_avg_ms": None if s.rtt_avg is None else round(s.rtt_avg * 1000, 2),
        }

    async def publish(self, topic: topics.Topic, payload: bytes) -> bool:
        """Queue ``payload`` for ``topic`` with its kind's policy; waits while the queue is full.
        False when the policy drops it (offline and ``offline="drop"``)."""
        out = self._make(topic, payload)
        if out is None:
            return False
        await self._queue.put(out)
        self._stats.enqueued += 1
        return True

    def try_publish(self, topic: topics.Topic, payload: bytes) -> bool:
        """Like ``publish`` but never waits: False (and a counted drop) when the queue is full."""
        out = self._make(topic, payload)
        if out is None:
            return False
        try:
            self._queue.put_nowait(out)
        except asyncio.QueueFull:
            self._drop("queue full")
            return False
        self._stats.enqueued += 1
        return True

    def want(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe at the next connect (and every reconnect after); for use before ``run()``."""
        if not topic_filter.startswith(topics.PREFIX + "/") or not 0 <= qos <= 2:
            raise ValueError(f"subscription {topic_filter!r} (qos {qos}) is outside {topics.PREFIX}/")
        self._subs[topic_filter] = qos

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (waiting for the SUBACK when connected) and after every reconnect."""
        if not topic_filter.startswith(topics.PREFIX + "/") or not 0 <= qos <= 2:
            raise ValueError(f"subscription {topic_filter!r} (qos {qos}) is outside {topics.PREFIX}/")
        self._subs[topic_filter] = qos
        client = self._client
        if client is not None and self.connected:
            async with asyncio.timeout(self.cfg.connect_timeout):
                await self._subscribe(client, [(topic_filter, qos)])

    async def messages(self) -> AsyncIterator[Message]:
        """Received messages, in order, for as long as the caller iterates."""
        while True:
            yield await self._inbox.get()

    async def drain(self) -> None:
        """Wait until everything queued has been handed over (QoS 1: acknowledged)."""
        while self._queue.qsize() or self._retry or self._pending:
            self._window.clear()
            await self._window.wait()

    def backoff(self, failures: int) -> float:
        """Delay before reconnect attempt after ``failures`` failures: full jitter over a capped
        exponential, uniform(0, min(max, initial * 2**(failures-1)))."""
        cap = min(self.cfg.backoff_max, self.cfg.backoff_initial * 2.0 ** max(0, failures - 1))
        return self._rng.uniform(0.0, cap)

    async def run(self) -> None:
        """Connect and stay connected until cancelled. A connection that lasted less than
        ``_STABLE_AFTER`` seconds counts as a failure, so a flapping broker is backed off too."""
        failures = 0
        ssl_ctx: ssl.SSLContext | None = None
        while True:
            started = self._clock.monotonic()
            status = Status.DEGRADED
            try:
                if self.cfg.tls and ssl_ctx is None:
                    ssl_ctx = await asyncio.to_thread(_ssl_context, self.cfg)
                await self._session(ssl_ctx)
                stable = self._clock.monotonic() - started >= _STABLE_AFTER
                failures = 0 if stable else failures + 1
                reason = "connection lost"
            except MqttConnectError as err:
                failures += 1
                self._stats.connect_failures += 1
                self.last_error = err
                reason = str(err)
                if err.permanent:
                    status = Status.FAILED
            delay = self.backoff(max(1, failures))
            self._set_status(status, f"{reason}; reconnecting in {delay:.1f}s")
            log.info("mqtt: %s; reconnecting in %.2fs", reason, delay)
            await self._clock.sleep(delay)

    # --- internals ----------------------------------------------------------------------------

    def _make(self, topic: topics.Topic, payload: bytes) -> _Out | None:
        if not isinstance(topic, topics.Topic):
            raise TypeError(f"topic must be an agent.topics.Topic, got {type(topic).__name__}")
        if not isinstance(payload, bytes | bytearray):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        if len(payload) > self.cfg.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds mqtt.max_payload {self.cfg.max_payload}")
        policy = topic.policy
        if policy.offline == "drop" and not self.connected:
            self._drop("offline")
            return None
        return _Out(topic.path, bytes(payload), policy)

    def _tls_hint(self) -> str:
        if self.cfg.tls and not self.cfg.cert_file:
            return " (with TLS: does the broker require a client certificate? see mqtt.cert_file / key_file)"
        return ""

    def _drop(self, why: str, n: int = 1) -> None:
        self._stats.dropped += n
        self._stats.dropped_by[why] = self._stats.dropped_by.get(why, 0) + n

    def _set_status(self, status: Status, reason: str) -> None:
        self.status = (status, reason)
        if self._health is not None:
            self._health.set(self._health_name, status, reason)

    def _new_client(self, ssl_ctx: ssl.SSLContext | None) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        client.connect_timeout = self.cfg.connect_timeout
        client.max_inflight_messages_set(self.cfg.inflight_max)
        if ssl_ctx is not None:
            client.tls_set_context(ssl_ctx)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, _read_password(self.cfg.password_file))
        client.will_set(self.presence_topic.path, self._presence("offline"), qos=1, retain=True)
        return client

    async def _session(self, ssl_ctx: ssl.SSLContext | None) -> None:
        """One connection: connect, restore subscriptions, announce presence, pump until lost."""
        loop = asyncio.get_running_loop()
        client = await asyncio.to_thread(self._new_client, ssl_ctx) if self.cfg.username else self._new_client(ssl_ctx)
        where = f"{self.cfg.host}:{self.cfg.port}"
        try:
            await asyncio.to_thread(client.connect, self.cfg.host, self.cfg.port, self.cfg.keepalive)
        except ssl.SSLCertVerificationError as err:
            raise MqttConnectError(
                f"TLS to {where}: broker certificate not accepted ({err.verify_message}); check mqtt.ca_file"
                " and that mqtt.host matches the certificate",
                permanent=True,
            ) from err
        except ssl.SSLError as err:
            raise MqttConnectError(
                f"TLS to {where} failed: {err.reason or err}{self._tls_hint()}", permanent=True
            ) from err
        except OSError as err:
            raise MqttConnectError(f"cannot connect to {where}: {err.strerror or err}") from err
        lost = asyncio.Event()
        connack: asyncio.Future[None] = loop.create_future()
        sock = client.socket()
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            raise MqttConnectError(f"{where} closed the connection right after connecting{self._tls_hint()}")

        def on_connect(c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if connack.done():
                return
            if rc.is_failure:
                connack.set_exception(
                    MqttConnectError(f"broker {where} refused the connection: {rc}", permanent=rc.value in _PERMANENT)
                )
            else:
                connack.set_result(None)

        def on_disconnect(c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if not connack.done():
                connack.set_exception(
                    MqttConnectError(f"broker {where} closed the connection before CONNACK: {rc}{self._tls_hint()}")
                )
            lost.set()

        def on_socket_close(c: paho.Client, _u: Any, _s: Any) -> None:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            lost.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_close = on_socket_close
        client.on_socket_register_write = lambda c, _u, _s: loop.add_writer(fd, c.loop_write)

        def on_unregister_write(c: paho.Client, _u: Any, _s: Any) -> None:
            loop.remove_writer(fd)

        client.on_socket_unregister_write = on_unregister_write
        loop.add_reader(fd, client.loop_read)
        if client.want_write():
            loop.add_writer(fd, client.loop_write)
        self._client = client
        self._pending = {}
        error: MqttConnectError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                misc = tg.create_task(self._misc(client, lost), name="mqtt-misc")
                try:
                    async with asyncio.timeout(self.cfg.connect_timeout):
                        await connack
                        if self._subs:
                            await self._subscribe(client, list(self._subs.items()))
                except TimeoutError:
                    error = MqttConnectError(f"no CONNACK/SUBACK from {where} within {self.cfg.connect_timeout}s")
                except MqttConnectError as err:
                    error = err
                except MqttError as err:
                    error = MqttConnectError(str(err), permanent=True)
                else:
                    self._send(
                        client, _Out(self.presence_topic.path, self._presence("online"), self.presence_topic.policy)
                    )
                    self._stats.connects += 1
                    if self._stats.connects > 1:
                        self._stats.reconnects += 1
                    self._connected.set()
                    self._set_status(Status.OK, f"connected to {where}")
                    log.info("mqtt: connected to %s as %s", where, self.client_id)
                    sender = tg.create_task(self._sender(client), name="mqtt-sender")
                    await lost.wait()
                    sender.cancel()
                misc.cancel()
        finally:
            self._connected.clear()
            self._client = None
            if not connack.done():
                connack.cancel()
            if not lost.is_set():  # cancelled (shutdown) or failed during CONNACK: close cleanly
                with contextlib.suppress(Exception):
                    client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
                    client.loop_write()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            with contextlib.suppress(Exception):
                s = client.socket()
                if s is not None:
                    s.close()
            self._requeue_pending()
        if error is not None:
            raise error

    def _requeue_pending(self) -> None:
        """After a connection ends: QoS>0 in flight are re-sent next time, QoS 0 are lost."""
        again = [m for m in self._pending.values() if m.policy.qos > 0]
        lost0 = len(self._pending) - len(again)
        if lost0:
            self._drop("lost in disconnect", lost0)
        self._stats.resent += len(again)
        self._retry.extendleft(reversed(again))
        self._pending = {}
        for fut in self._sub_waiters.values():
            if not fut.done():
                fut.cancel()
        self._sub_waiters.clear()
        self._window.set()

    async def _misc(self, client: paho.Client, lost: asyncio.Event) -> None:
        while not lost.is_set():
            await asyncio.sleep(_MISC_TICK)
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                lost.set()

    async def _sender(self, client: paho.Client) -> None:
        while True:
            while len(self._pending) >= self.cfg.inflight_max:
                self._window.clear()
                await self._window.wait()
            out = self._retry.popleft() if self._retry else await self._queue.get()
            self._send(client, out)

    def _send(self, client: paho.Client, out: _Out) -> None:
        props = None if out.policy.expiry is None else _expiry_properties(out.policy.expiry)
        info = client.publish(out.topic, out.payload, out.policy.qos, out.policy.retain, props)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            out.sent_at = self._clock.monotonic()
            self._pending[info.mid] = out
            log.log(TRACE, "mqtt: publish mid %d %s (%d bytes)", info.mid, out.topic, len(out.payload))
        elif out.policy.qos > 0:
            self._retry.appendleft(out)
        else:
            self._drop("lost in disconnect")

    def _on_publish(self, c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        out = self._pending.pop(mid, None)
        if out is None:
            return
        if rc.is_failure:
            self._drop(f"broker refused: {rc}")
            log.warning("mqtt: broker refused publish to %s: %s", out.topic, rc)
        else:
            self._stats.published += 1
            if out.policy.qos > 0 and out.sent_at:
                rtt = self._clock.monotonic() - out.sent_at
                st = self._stats
                st.rtt_last = rtt
                st.rtt_avg = rtt if st.rtt_avg is None else 0.9 * st.rtt_avg + 0.1 * rtt
        self._window.set()

    def _on_message(self, c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._stats.received += 1
        if len(msg.payload) > self.cfg.max_payload:
            self._stats.inbox_dropped += 1
            log.debug("mqtt: dropped %d-byte message on %.120s (mqtt.max_payload)", len(msg.payload), msg.topic)
            return
        try:
            self._inbox.put_nowait(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
        except asyncio.QueueFull:
            self._stats.inbox_dropped += 1

    def _on_subscribe(self, c: paho.Client, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        fut = self._sub_waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(rcs)

    async def _subscribe(self, client: paho.Client, subs: list[tuple[str, int]]) -> None:
        rc, mid = client.subscribe(subs)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttConnectError(f"subscribe {[s for s, _ in subs]} failed: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = asyncio.get_running_loop().create_future()
        self._sub_waiters[mid] = fut
        rcs = await fut
        refused = [f"{s} ({r})" for (s, _), r in zip(subs, rcs, strict=False) if r.is_failure]
        if refused:
            raise MqttError(f"broker refused subscription(s): {', '.join(refused)}")


class _PackedProperties(Properties):
    """PUBLISH properties that never change, packed once (paho re-packs per message otherwise;
    that was a third of the per-message cost)."""

    _packed: bytes = b""

    def pack(self) -> bytes:
        if not self._packed:
            object.__setattr__(self, "_packed", bytes(super().pack()))  # type: ignore[no-untyped-call]
        return self._packed


@functools.cache
def _expiry_properties(expiry: int) -> Properties:
    props = _PackedProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = expiry
    return props


def _read_password(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise MqttConnectError(f"cannot read mqtt.password_file {path}: {err.strerror}", permanent=True) from None
    return text.splitlines()[0] if text else ""


def _ssl_context(cfg: MqttConfig) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not cfg.tls_verify:
            log.warning("mqtt: tls_verify is off: the broker's identity is NOT checked")
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as err:
        raise MqttConnectError(
            f"TLS setup failed (ca_file={cfg.ca_file!r}, cert_file={cfg.cert_file!r}): {err}", permanent=True
        ) from None
    return ctx


# --- verified delivery ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """A received message whose COSE_Sign1 verified: ``payload`` is the signed content."""

    topic: topics.Topic
    kid: str
    payload: bytes
    raw: bytes


@dataclass(slots=True)
class PeerRejects:
    total: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    last: str = ""


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


KidResolver = Callable[[str], VerifyKey]


class SignedInbox:
    """Verifies each received payload as a COSE_Sign1 (kid -> key through ``resolver``, by
    default did:key verification methods), counts rejects per peer with reasons, and passes on
    only verified messages. Peers are named ``node:<id>`` by the topic's node id, else
    ``kid:<kid>``, else ``cell:<cell>``; at most ``max_peers`` are tracked, the rest count under
    ``other``. ``authorize(topic, kid)`` may raise (``LedgerError`` / ``ValueError``) to refuse a
    signer for a topic (e.g. presence of node X signed by a key that is not X's)."""

    def __init__(
        self,
        resolver: KidResolver | None = None,
        *,
        authorize: Callable[[topics.Topic, str], None] | None = None,
        max_peers: int = 1024,
    ) -> None:
        if resolver is None:
            from ledger_lite.attestation import did_key_resolver

            resolver = did_key_resolver()
        self._resolver = resolver
        self._authorize = authorize
        self._max_peers = max_peers
        self.accepted = 0
        self.rejected = 0
        self.rejects: dict[str, PeerRejects] = {}

    def accept(self, msg: Message) -> Verified | None:
        """The verified message, or None (counted) for anything that does not verify."""
        peer = "other"
        try:
            try:
                topic = topics.parse(msg.topic)
            except topics.TopicError as err:
                raise _Reject("bad-topic", str(err)) from None
            peer = f"node:{topic.node}" if topic.node else f"cell:{topic.cell}"
            try:
                sign1 = cose.decode_sign1(msg.payload)
            except (MalformedError, ValueError) as err:
                raise _Reject("malformed", str(err)) from None
            kid_b = sign1.kid
            if kid_b is None:
                raise _Reject("no-kid", "COSE_Sign1 without kid")
            try:
                kid = kid_b.decode("utf-8")
            except UnicodeDecodeError:
                raise _Reject("malformed", "kid is not UTF-8") from None
            if not topic.node:
                peer = f"kid:{kid[:80]}"
            try:
                key = self._resolver(kid)
            except (LedgerError, ValueError) as err:
                raise _Reject("unknown-key", str(err)) from None
            try:
                cose.verify_sign1(sign1, key)
            except MalformedError as err:
                raise _Reject("malformed", str(err)) from None
            except VerificationError as err:
                raise _Reject("bad-signature", str(err)) from None
            if self._authorize is not None:
                try:
                    self._authorize(topic, kid)
                except (LedgerError, ValueError) as err:
                    raise _Reject("not-authorized", str(err)) from None
        except _Reject as rej:
            self._count(peer, rej.reason, str(rej))
            return None
        self.accepted += 1
        return Verified(topic, kid, sign1.payload or b"", msg.payload)

    def count_reject(self, peer: str, reason: str, detail: str) -> None:
        """Count a message from ``peer`` refused after verification (e.g. a bad signed body)."""
        self._count(peer, reason, detail)

    def _count(self, peer: str, reason: str, detail: str) -> None:
        self.rejected += 1
        if peer not in self.rejects and len(self.rejects) >= self._max_peers:
            peer = "other"
        entry = self.rejects.setdefault(peer, PeerRejects())
        entry.total += 1
        entry.reasons[reason] = entry.reasons.get(reason, 0) + 1
        entry.last = detail[:200]
        log.debug("mqtt: rejected message from %s: %s (%s)", peer, reason, detail[:200])

    async def run(self, client: MqttClient, handler: Callable[[Verified], Awaitable[None]]) -> None:
        """Feed ``client``'s messages through ``accept`` to ``handler`` until cancelled."""
        async for msg in client.messages():
            verified = self.accept(msg)
            if verified is not None:
                await handler(verified)


Handler = Callable[[topics.Topic, Message], None]


class Dispatcher:
    """The one consumer of ``MqttClient.messages()``: parses each topic once and hands the
    message to the handlers registered for its kind (``on(kind, handler)``), in arrival order.
    Handlers must not block (they queue work for their own task); one that raises is logged and
    counted, the others still run. Messages of no registered kind, or on topics outside the
    schema, are counted, not raised."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.routes: dict[topics.MessageKind, list[Handler]] = {}
        self.counts: dict[str, int] = {"dispatched": 0, "unrouted": 0, "bad_topic": 0, "handler_errors": 0}

    def on(self, kind: topics.MessageKind, handler: Handler) -> None:
        self.routes.setdefault(kind, []).append(handler)

    def dispatch(self, msg: Message) -> None:
        try:
            topic = topics.parse(msg.topic)
        except topics.TopicError as err:
            self.counts["bad_topic"] += 1
            log.debug("mqtt: %s", err)
            return
        handlers = self.routes.get(topic.kind)
        if not handlers:
            self.counts["unrouted"] += 1
            return
        self.counts["dispatched"] += 1
        for handler in handlers:
            try:
                handler(topic, msg)
            except Exception:  # noqa: BLE001 - one bad handler must not starve the others
                self.counts["handler_errors"] += 1
                log.exception("mqtt: handler for %s failed on %s", topic.kind, msg.topic)

    async def run(self) -> None:
        async for msg in self.client.messages():
            self.dispatch(msg)


@dataclass(slots=True)
class Peer:
    state: str
    did: str
    last_seen: float  # monotonic
    said_at: float  # the peer's own clock, UTC seconds


class PresenceTracker:
    """Peers of the cell seen through their signed presence messages (``presence/{node}``,
    retained, the broker's last will when a node drops): node -> state, DID, when. Unsigned or
    forged presence is rejected by a ``SignedInbox`` (counted per peer); a presence must be
    signed by a did:key and name the node of its topic, and a node id stays pinned to the DID
    first seen for it (a restart of this agent forgets the pins: trust on first use)."""

    def __init__(self, cell: str, clock: Clock, *, max_peers: int = 1024) -> None:
        self.cell = cell
        self.clock = clock
        self.max_peers = max_peers
        self.peers: dict[str, Peer] = {}
        self.inbox = SignedInbox()

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.on(topics.MessageKind.PRESENCE, self.on_message)

    def want(self, client: MqttClient) -> None:
        client.want(topics.kind_filter(topics.MessageKind.PRESENCE, self.cell))

    def on_message(self, topic: topics.Topic, msg: Message) -> None:
        if topic.cell != self.cell or not msg.payload:
            return  # an empty retained message clears a topic
        verified = self.inbox.accept(msg)
        if verified is None:
            return
        try:
            body = cbor.loads(verified.payload)
            if not isinstance(body, dict) or body.get("node") != topic.node or not isinstance(body.get("state"), str):
                raise MalformedError("presence: expected {node: <topic node>, state: tstr, t: uint}")
            said = body.get("t")
            said_at = said / 1000.0 if isinstance(said, int) else 0.0
        except MalformedError as err:
            self.inbox.count_reject(f"node:{topic.node}", "malformed", str(err))
            return
        did = verified.kid.partition("#")[0]
        known = self.peers.get(topic.node)
        if known is not None and known.did != did:  # first seen wins: a node id is pinned to its DID
            self.inbox.count_reject(f"node:{topic.node}", "did-changed", f"{topic.node} was {known.did}, now {did}")
            return
        if known is None and len(self.peers) >= self.max_peers:
            return
        self.peers[topic.node] = Peer(body["state"], did, self.clock.monotonic(), said_at)

    def status(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        return {
            "peers": {
                node: {"state": p.state, "did": p.did, "seen_s_ago": round(now - p.last_seen, 1)}
                for node, p in sorted(self.peers.items())
            },
            "rejects": {
                peer: {"total": r.total, "reasons": dict(r.reasons), "last": r.last}
                for peer, r in sorted(self.inbox.rejects.items())
            },
        }
