"""The OBU's emulated PC5 sidelink: CAMs and DENMs over the cell broker, radio model at the receiver.

Transmit: ``run()`` checks every ``CHECK_INTERVAL`` (50 ms, below T_GenCamMin) whether a CAM is due
(``CamGenerator``: EN 302 637-2 rules, 1-10 Hz, the DCC gap from the channel busy ratio this
station measures), builds it from the latest ``VehicleState``, signs it with the current pseudonym
(the full certificate at least every ``cert_interval`` and in the first message after a new
station's certificate was heard, TS 103 097 style) and publishes it, best effort (QoS 0,
never waiting), on ``topics.pc5(cell)``. ``send_denm`` sends a DENM and ``denm_repetitions``
repetitions; each repetition carries its own transmission time as ``referenceTime`` so that
receivers can apply ``stale_after`` to DENMs too. The loop itself raises a hard-braking DENM
(99/1) when the longitudinal deceleration reaches ``hard_brake_mps2`` (once per braking episode)
and, if ``stationary_after`` > 0, a stationary-vehicle DENM (94/0) after standing that long.

Receive (``on_message``, a sync ``Dispatcher`` handler): every message heard counts in
``ChannelLoad``; the envelope is parsed without verification to read the sender's position (a
radio that did not receive a packet verifies nothing), our own messages (by pseudonym
certificate id) are ignored, the ``RadioModel`` decides drop (counted by reason) or delivery after
the modelled latency (``loop.call_later``). On delivery: pseudonym signature and certificate
against the trusted pseudonym CAs (``open_signed``; rejects counted per reason), a replay window
per certificate, staleness (CAM ``generationDeltaTime``, DENM ``referenceTime``, both against
``stale_after``), then CAMs update the neighbour table and DENMs go through ``WarningFilter``:
a relevant one is logged at WARNING once per event (originating station id + sequence number)
and kept, with distance and bearing, in a bounded list of active warnings until its validity
ends.

Without our own position the radio model is applied at distance 0 (a receiver without a GNSS
fix still hears its neighbours). Timing uses the injected ``Clock`` except the delivery latency,
which is real event-loop time.

Pseudonym material on disk (``load_pseudonym_pool`` / ``store_pseudonyms``): a directory (mode
0700) of pairs ``<certificate id hex>.cert`` (the certificate's COSE_Sign1 bytes) and
``<certificate id hex>.key`` (the raw private key bytes on the certificate's curve, mode 0600).
Key files readable by group or others are refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from hal.interfaces import Clock
from hal.types import VehicleState
from ledger_lite import cose
from ledger_lite.errors import (
    CredentialError,
    LedgerError,
    ReplayError,
    SignatureError,
    ValidityError,
    VerificationError,
)
from ledger_lite.keys import SigningKey, VerifyKey
from ledger_lite.pseudonym import PseudonymCert, PseudonymIdentity, PseudonymManager, PseudonymPool

from .. import topics
from ..config import Pc5Config
from ..health import HealthRegistry
from ..mqtt import Dispatcher, Message, MqttClient
from . import messages
from .messages import (
    CAUSE_DANGEROUS_SITUATION,
    CAUSE_STATIONARY_VEHICLE,
    SUB_EMERGENCY_BRAKE,
    Cam,
    CamGenerator,
    Denm,
    Verdict,
    WarningFilter,
    timestamp_its,
)
from .radio import ChannelLoad, Position, RadioModel, RadioParams, bearing_deg, distance_m

if TYPE_CHECKING:
    from ..runtime import Agent

__all__ = [
    "CHECK_INTERVAL",
    "Pc5Error",
    "Pc5Service",
    "Pc5Wiring",
    "PseudonymSource",
    "build_pc5",
    "load_pseudonym_pool",
    "radio_params",
    "store_pseudonyms",
]

log = logging.getLogger(__name__)

#: how often the CAM generation conditions are checked, seconds (EN 302 637-2: <= T_GenCamMin)
CHECK_INTERVAL: Final = 0.05
#: validity of the DENMs this station raises, seconds
HARD_BRAKE_VALIDITY: Final = 5
STATIONARY_VALIDITY: Final = 60
#: bounds of the receive-side tables
MAX_NEIGHBOURS: Final = 512
MAX_CERTS: Final = 1024
REPLAY_WINDOW: Final = 64
#: a sender's clock may be this far ahead of ours, seconds
FUTURE_SKEW: Final = 1.0


class Pc5Error(Exception):
    """PC5 cannot start: unusable pseudonym material or trust configuration."""


class PseudonymSource(Protocol):
    """Where the current pseudonym comes from (``PseudonymManager`` is one)."""

    def current(self, now: float) -> PseudonymIdentity: ...


def radio_params(cfg: Pc5Config) -> RadioParams:
    """The radio model slice of the config."""
    return RadioParams(
        max_range_m=cfg.max_range_m,
        pdr_curve=tuple((float(a), float(b)) for a, b in cfg.pdr_curve),
        base_latency_s=cfg.base_latency_s,
        jitter_s=cfg.jitter_s,
        airtime_s=cfg.airtime_s,
        cbr_window_s=cfg.cbr_window_s,
        cbr_knee=cfg.cbr_knee,
        cbr_loss_at_full=cfg.cbr_loss_at_full,
        dcc_gaps=tuple((float(a), float(b)) for a, b in cfg.dcc_gaps),
    )


@dataclass
class Neighbour:
    station_id: int
    position: Position | None
    speed: float | None
    heading: float | None
    last_heard: float
    cam: Cam = field(repr=False)
    distance: float | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "position": self.position,
            "speed_mps": self.speed,
            "heading_deg": self.heading,
            "distance_m": None if self.distance is None else round(self.distance, 1),
            "age_s": round(now - self.last_heard, 3),
        }


@dataclass
class ActiveWarning:
    station_id: int
    sequence_number: int
    cause_code: int
    sub_cause_code: int
    position: Position
    distance: float | None
    bearing: float | None
    first_seen: float
    last_seen: float
    #: TimestampIts (ms) when the event's validity ends
    ends_its: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "sequence_number": self.sequence_number,
            "cause": self.cause_code,
            "sub_cause": self.sub_cause_code,
            "position": self.position,
            "distance_m": None if self.distance is None else round(self.distance, 1),
            "bearing_deg": None if self.bearing is None else round(self.bearing, 1),
        }


class _ReplayWindow:
    """Counters seen per certificate: the newest and a window below it (IPsec style)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, tuple[int, set[int]]] = OrderedDict()

    def check(self, cert_id: bytes, counter: int) -> bool:
        """True (and remembered) when ``counter`` is new for ``cert_id``."""
        top, recent = self._seen.get(cert_id, (-1, set()))
        if counter <= top - REPLAY_WINDOW or counter in recent:
            return False
        recent.add(counter)
        top = max(top, counter)
        if len(recent) > 2 * REPLAY_WINDOW:
            recent = {c for c in recent if c > top - REPLAY_WINDOW}
        self._seen[cert_id] = (top, recent)
        self._seen.move_to_end(cert_id)
        while len(self._seen) > MAX_CERTS:
            self._seen.popitem(last=False)
        return True


def _reject_reason(err: Exception) -> str:
    if isinstance(err, CredentialError):
        return "unknown_cert" if str(err).startswith("unknown pseudonym certificate") else "untrusted_ca"
    if isinstance(err, SignatureError):
        return "bad_signature"
    if isinstance(err, ValidityError):
        return "cert_validity"
    if isinstance(err, ReplayError):
        return "replay"
    if isinstance(err, VerificationError):
        return "mismatch"
    return "malformed"


class Pc5Service:
    """One station's sidelink; see the module docstring."""

    def __init__(
        self,
        cfg: Pc5Config,
        *,
        client: MqttClient,
        dispatcher: Dispatcher,
        cell: str,
        clock: Clock,
        state: Callable[[], VehicleState | None],
        identity: PseudonymSource,
        trust: Iterable[VerifyKey] | Mapping[str, VerifyKey],
        health: HealthRegistry | None = None,
        rng: random.Random | None = None,
        health_name: str = "pc5",
    ) -> None:
        self.cfg = cfg
        self.params = radio_params(cfg)
        if rng is None:
            rng = random.Random(cfg.seed) if cfg.seed else random.Random()
        self.radio = RadioModel(self.params, rng)
        self.load = ChannelLoad.from_params(self.params)
        self.generator = CamGenerator()
        self.filter = WarningFilter(max_age=max(cfg.stale_after, 1.0) + FUTURE_SKEW)
        self.topic = topics.pc5(cell)
        self._client = client
        self._clock = clock
        self._state = state
        self._identity = identity
        self._trust: dict[str, VerifyKey] | list[VerifyKey] = dict(trust) if isinstance(trust, Mapping) else list(trust)
        self._health = health
        self._health_name = health_name
        self._certs: OrderedDict[bytes, PseudonymCert] = OrderedDict()
        self._replay = _ReplayWindow()
        self._own_certs: OrderedDict[bytes, None] = OrderedDict()
        self._cert_sent: tuple[bytes, float] | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._denm_seq = 0
        self._braking = False
        self._last_brake_denm = -math.inf
        self._no_pseudonym = False
        self._standing_since: float | None = None
        self._stationary_sent = False
        self._last_expire = -math.inf
        self.neighbours: dict[int, Neighbour] = {}
        self.warnings: OrderedDict[tuple[int, int], ActiveWarning] = OrderedDict()
        self.counts: dict[str, int] = {
            "cam_sent": 0,
            "denm_sent": 0,
            "tx_dropped": 0,
            "tx_errors": 0,
            "heard": 0,
            "own": 0,
            "delivered": 0,
            "dropped_radio": 0,
            "stale": 0,
            "cam_received": 0,
            "denm_received": 0,
            "warnings_raised": 0,
        }
        self.dropped_by: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.denm_verdicts: dict[str, int] = {}
        dispatcher.on(topics.MessageKind.PC5, self.on_message)

    # --- transmit ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Subscribe to the cell's sidelink and generate CAMs until cancelled."""
        await self._client.subscribe(topics.kind_filter(topics.MessageKind.PC5, self.topic.cell), qos=0)
        self._set_health(True, f"on {self.topic}")
        try:
            while True:
                self.tick()
                await self._clock.sleep(CHECK_INTERVAL)
        finally:
            for handle in self._pending:
                handle.cancel()
            self._pending.clear()
            for task in self._tasks:
                task.cancel()

    def tick(self) -> None:
        """One pass of the transmit side: CAM if due, DENM triggers, table housekeeping."""
        mono = self._clock.monotonic()
        if mono - self._last_expire >= 1.0:
            self._expire(mono)
            self._last_expire = mono
        state = self._state()
        if not self.cfg.tx or state is None or state.lat is None or state.lon is None:
            return
        self._detect_events(state, mono)
        gap = self.radio.min_gap(self.load.cbr(mono))
        if not self.generator.due(state, mono, gap):
            return
        wall = self._clock.time()
        identity = self._current_identity(wall)
        if identity is None:
            return
        cam = Cam.from_state(state, station_id=identity.station_id, now=wall)
        if self._publish(identity, cam, mono):
            self.counts["cam_sent"] += 1
        self.generator.sent(state, mono, gap)

    def _current_identity(self, wall: float) -> PseudonymIdentity | None:
        try:
            identity = self._identity.current(wall)
        except LedgerError as err:  # PoolExhaustedError: no valid pseudonym left
            self.counts["tx_errors"] += 1
            self._set_health(False, f"no pseudonym: {err}")
            self._no_pseudonym = True
            return None
        if self._no_pseudonym:
            self._no_pseudonym = False
            self._set_health(True, f"on {self.topic}")
        self._own_certs[identity.cert_id] = None
        while len(self._own_certs) > 64:
            self._own_certs.popitem(last=False)
        return identity

    def _publish(self, identity: PseudonymIdentity, message: Cam | Denm, mono: float) -> bool:
        last = self._cert_sent
        include = last is None or last[0] != identity.cert_id or mono - last[1] >= self.cfg.cert_interval
        data = messages.sign(identity, message, include_cert=include)
        if include:
            self._cert_sent = (identity.cert_id, mono)
        if not self._client.try_publish(self.topic, data):
            self.counts["tx_dropped"] += 1
            return False
        return True

    def _detect_events(self, state: VehicleState, mono: float) -> None:
        threshold = self.cfg.hard_brake_mps2
        accel = state.accel_longitudinal
        if threshold > 0 and accel is not None:
            if not self._braking and accel <= -threshold:
                self._braking = True
                self.on_driving_event("harsh_brake")
            elif self._braking and accel > -threshold / 2:
                self._braking = False
        if self.cfg.stationary_after > 0:
            if state.speed is not None and state.speed < 0.1:
                if self._standing_since is None:
                    self._standing_since = mono
                elif not self._stationary_sent and mono - self._standing_since >= self.cfg.stationary_after:
                    self._stationary_sent = True
                    self.send_denm(CAUSE_STATIONARY_VEHICLE, 0, validity=STATIONARY_VALIDITY, traffic_direction=0)
            else:
                self._standing_since = None
                self._stationary_sent = False

    def on_driving_event(self, event: str) -> bool:
        """A driving event (the ``driving_event`` attestation's ``event``, e.g. from the
        behaviour model): ``harsh_brake`` raises a hard-braking DENM unless one was raised within
        its validity (the state-based detector and the model may both see one braking).
        True when a DENM was sent."""
        if event != "harsh_brake":
            return False
        mono = self._clock.monotonic()
        if mono - self._last_brake_denm < HARD_BRAKE_VALIDITY:
            return False
        if not self.send_denm(CAUSE_DANGEROUS_SITUATION, SUB_EMERGENCY_BRAKE, validity=HARD_BRAKE_VALIDITY):
            return False
        self._last_brake_denm = mono
        return True

    def send_denm(
        self,
        cause: int,
        sub_cause: int = 0,
        *,
        position: Position | None = None,
        heading: float | None = None,
        relevance_distance: int = 2,
        traffic_direction: int = 1,
        validity: int = 600,
        repetitions: int | None = None,
    ) -> bool:
        """Raise an event: a DENM now and ``repetitions`` (default ``cfg.denm_repetitions``)
        repetitions every ``cfg.denm_repeat_interval``. Position and heading default to the
        latest VehicleState's. False when transmission is off or there is no position/pseudonym."""
        if not self.cfg.tx:
            return False
        if position is None:
            state = self._state()
            if state is None or state.lat is None or state.lon is None:
                return False
            position = (state.lat, state.lon)
            heading = state.heading if heading is None else heading
        wall = self._clock.time()
        seq = self._denm_seq
        self._denm_seq = (seq + 1) % 65536

        def make(identity: PseudonymIdentity, now: float) -> Denm:
            assert position is not None
            return Denm.event(
                station_id=identity.station_id,
                sequence_number=seq,
                position=position,
                heading=heading,
                detected_at=wall,
                now=now,
                cause_code=cause,
                sub_cause_code=sub_cause,
                relevance_distance=relevance_distance,
                relevance_traffic_direction=traffic_direction,
                validity_duration=validity,
            )

        if not self._send_denm_once(make):
            return False
        n = self.cfg.denm_repetitions if repetitions is None else repetitions
        if n > 0:
            task = asyncio.get_running_loop().create_task(self._repeat(make, n), name=f"pc5.denm.{seq}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        log.info("pc5: DENM %d/%d sent (sequence %d)", cause, sub_cause, seq)
        return True

    def _send_denm_once(self, make: Callable[[PseudonymIdentity, float], Denm]) -> bool:
        wall = self._clock.time()
        identity = self._current_identity(wall)
        if identity is None:
            return False
        if self._publish(identity, make(identity, wall), self._clock.monotonic()):
            self.counts["denm_sent"] += 1
            return True
        return False

    async def _repeat(self, make: Callable[[PseudonymIdentity, float], Denm], n: int) -> None:
        for _ in range(n):
            await self._clock.sleep(self.cfg.denm_repeat_interval)
            self._send_denm_once(make)

    # --- receive ----------------------------------------------------------------------------

    def on_message(self, topic: topics.Topic, msg: Message) -> None:
        """Dispatcher handler for every sidelink message heard (ours included)."""
        if topic.cell != self.topic.cell:
            return
        mono = self._clock.monotonic()
        self.load.observe(mono)
        self.counts["heard"] += 1
        try:
            envelope = cose.decode_sign1(msg.payload)
            if envelope.payload is None:
                raise ValueError("detached payload")
            payload = messages.decode(envelope.payload)
        except (LedgerError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            self._reject("malformed", err)
            return
        if envelope.kid in self._own_certs:
            self.counts["own"] += 1
            return
        own = self._own_position()
        sender = payload.position or own
        rx = own or sender or (0.0, 0.0)
        decision = self.radio.decide(sender or rx, rx, mono, self.load.cbr(mono))
        if not decision.delivered:
            self.counts["dropped_radio"] += 1
            self.dropped_by[decision.reason] = self.dropped_by.get(decision.reason, 0) + 1
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def deliver() -> None:
            assert handle is not None
            self._pending.discard(handle)
            self._deliver(msg.payload)

        handle = loop.call_later(decision.latency, deliver)
        self._pending.add(handle)

    def _deliver(self, data: bytes) -> None:
        wall = self._clock.time()
        known = len(self._certs)
        try:
            v2v, payload = messages.open_signed(data, authority_keys=self._trust, now=wall, certs=self._certs)
        except (LedgerError, ValueError) as err:
            self._reject(_reject_reason(err), err)
            return
        if len(self._certs) > known:
            self._cert_sent = None  # a new station nearby: show our certificate in the next message
        while len(self._certs) > MAX_CERTS:
            self._certs.popitem(last=False)
        if not self._replay.check(v2v.cert.cert_id, v2v.counter):
            self._reject("replay", None)
            return
        now_its = timestamp_its(wall)
        if isinstance(payload, Cam):
            age_ms = (now_its - payload.generation_delta_time) % 65536
            if age_ms >= 32768:
                age_ms -= 65536
        else:
            age_ms = now_its - payload.reference_time
        if age_ms > self.cfg.stale_after * 1000 or age_ms < -FUTURE_SKEW * 1000:
            self.counts["stale"] += 1
            return
        self.counts["delivered"] += 1
        if isinstance(payload, Cam):
            self._on_cam(payload)
        else:
            self._on_denm(payload, wall, now_its)

    def _on_cam(self, cam: Cam) -> None:
        self.counts["cam_received"] += 1
        mono = self._clock.monotonic()
        own = self._own_position()
        pos = cam.position
        self.neighbours.pop(cam.station_id, None)  # re-insert: dict order is last-heard order
        self.neighbours[cam.station_id] = Neighbour(
            station_id=cam.station_id,
            position=pos,
            speed=None if cam.speed == messages.SPEED_UNAVAILABLE else cam.speed / 100,
            heading=None if cam.heading == messages.HEADING_UNAVAILABLE else cam.heading / 10,
            last_heard=mono,
            cam=cam,
            distance=distance_m(own, pos) if own is not None and pos is not None else None,
        )
        while len(self.neighbours) > MAX_NEIGHBOURS:
            del self.neighbours[next(iter(self.neighbours))]

    def _on_denm(self, denm: Denm, wall: float, now_its: int) -> None:
        self.counts["denm_received"] += 1
        key = (denm.station_id, denm.sequence_number)
        state = self._state()
        own = self._own_position(state)
        mono = self._clock.monotonic()
        distance = distance_m(own, denm.position) if own is not None else None
        bearing = bearing_deg(own, denm.position) if own is not None else None
        known = self.warnings.get(key)
        if known is not None:
            known.distance, known.bearing, known.last_seen = distance, bearing, mono
            return
        if own is None:
            verdict = Verdict.RELEVANT  # no fix: we cannot tell; better warn than not
        else:
            verdict = self.filter.assess(own, state.heading if state is not None else None, denm, now=wall)
        self.denm_verdicts[verdict] = self.denm_verdicts.get(verdict, 0) + 1
        if verdict is not Verdict.RELEVANT:
            return
        warning = ActiveWarning(
            station_id=denm.station_id,
            sequence_number=denm.sequence_number,
            cause_code=denm.cause_code,
            sub_cause_code=denm.sub_cause_code,
            position=denm.position,
            distance=distance,
            bearing=bearing,
            first_seen=mono,
            last_seen=mono,
            ends_its=denm.detection_time + denm.validity_duration * 1000,
        )
        self.warnings[key] = warning
        while len(self.warnings) > self.cfg.max_warnings:
            self.warnings.popitem(last=False)
        self.counts["warnings_raised"] += 1
        log.warning(
            "pc5: V2V warning: cause %d/%d from station %d, %s m away at bearing %s deg",
            denm.cause_code,
            denm.sub_cause_code,
            denm.station_id,
            "?" if distance is None else f"{distance:.0f}",
            "?" if bearing is None else f"{bearing:.0f}",
        )

    def _own_position(self, state: VehicleState | None = None) -> Position | None:
        state = self._state() if state is None else state
        if state is None or state.lat is None or state.lon is None:
            return None
        return (state.lat, state.lon)

    def _reject(self, reason: str, err: Exception | None) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.debug("pc5: rejected (%s): %s", reason, err)

    def _expire(self, mono: float) -> None:
        limit = mono - self.cfg.neighbour_timeout
        for sid in [s for s, n in self.neighbours.items() if n.last_heard < limit]:
            del self.neighbours[sid]
        now_its = timestamp_its(self._clock.time())
        for key in [k for k, w in self.warnings.items() if w.ends_its < now_its]:
            del self.warnings[key]

    def _set_health(self, ok: bool, reason: str) -> None:
        if self._health is None:
            return
        if ok:
            self._health.ok(self._health_name, reason)
        else:
            self._health.degraded(self._health_name, reason)

    # --- diagnostics ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counters, channel load, neighbours and active warnings (diagnostics ``pc5``)."""
        mono = self._clock.monotonic()
        self._expire(mono)
        return {
            **self.counts,
            "dropped_by": dict(self.dropped_by),
            "rejected": dict(self.rejected),
            "denm_verdicts": dict(self.denm_verdicts),
            "cbr": round(self.load.cbr(mono), 3),
            "dcc_gap_s": self.radio.min_gap(self.load.cbr(mono)),
            "neighbours": [n.as_dict(mono) for n in self.neighbours.values()],
            "warnings": [w.as_dict() for w in self.warnings.values()],
        }


# --- pseudonym material on disk ---------------------------------------------------------------


def _cert_info(cert: bytes) -> tuple[bytes, str]:
    """(certificate id, pseudonym key curve) of a certificate, unverified (``pool.add`` verifies)."""
    from ledger_lite import cbor

    envelope = cose.decode_sign1(cert)
    claims = cbor.loads(envelope.payload or b"")
    try:
        cti, cnf = claims[7], claims[8][1]
        crv = VerifyKey.from_cose_key(cnf).crv
    except (TypeError, KeyError, IndexError) as err:
        raise ValueError(f"not a pseudonym certificate: {err!r}") from err
    if not isinstance(cti, bytes):
        raise ValueError("not a pseudonym certificate: cti is not a byte string")
    return cti, crv


def store_pseudonyms(directory: str | os.PathLike[str], keys: Iterable[SigningKey], certs: Iterable[bytes]) -> int:
    """Write (key, certificate) pairs as ``<id>.key`` (0600) + ``<id>.cert``; the directory is
    made 0700. Returns how many pairs were written."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    n = 0
    for key, cert in zip(keys, certs, strict=True):
        name = _cert_info(cert)[0].hex()
        fd = os.open(d / f"{name}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key.private_bytes())
        finally:
            os.close(fd)
        (d / f"{name}.cert").write_bytes(cert)
        n += 1
    return n


def load_pseudonym_pool(
    directory: str | os.PathLike[str],
    authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey],
    *,
    now: float,
) -> PseudonymPool:
    """The pool of the pairs in ``directory`` that verify against ``authority_keys`` and have not
    expired (the others are skipped and logged). ``Pc5Error`` for an unsafe key file or dir."""
    d = Path(directory)
    if not d.is_dir():
        raise Pc5Error(f"pseudonym directory {d} does not exist")
    if d.stat().st_mode & 0o022:
        raise Pc5Error(f"pseudonym directory {d} is writable by group or others: run chmod 700 {d}")
    trusted = dict(authority_keys) if isinstance(authority_keys, Mapping) else list(authority_keys)
    pool = PseudonymPool()
    for cert_path in sorted(d.glob("*.cert")):
        key_path = cert_path.with_suffix(".key")
        try:
            st = key_path.lstat()
        except FileNotFoundError:
            log.warning("pc5: %s has no key file; skipped", cert_path.name)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise Pc5Error(f"pseudonym key {key_path} must be a regular file of mode 0600: run chmod 600 {key_path}")
        try:
            cert = cert_path.read_bytes()
            crv = _cert_info(cert)[1]
            key = SigningKey.from_private_bytes(crv, key_path.read_bytes())
            pool.add(key, cert, authority_keys=trusted, now=now)
        except (LedgerError, ValueError, OSError) as err:
            log.warning("pc5: pseudonym %s skipped: %s", cert_path.stem, err)
    return pool


# --- wiring -----------------------------------------------------------------------------------


@dataclass
class Pc5Wiring:
    """What ``build_pc5`` gives the composition root."""

    services: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)
    service: Pc5Service | None = None

    def status(self) -> dict[str, Any] | None:
        return None if self.service is None else self.service.status()


def _trusted_authorities(agent: Agent) -> dict[str, VerifyKey]:
    from ledger_lite.didkey import resolve

    cfg = agent.config
    dids = list(cfg.pc5.authorities)
    for did, roles in cfg.trust.roots.items():
        if roles == "pseudonym_ca" or (isinstance(roles, list) and "pseudonym_ca" in roles):
            dids.append(did)
    trusted: dict[str, VerifyKey] = {}
    for did in dids:
        try:
            trusted[did] = resolve(did)
        except LedgerError as err:
            raise Pc5Error(f"pseudonym CA {did[:60]!r}: {err}") from err
    return trusted


def build_pc5(agent: Agent, *, identity: PseudonymSource | None = None) -> Pc5Wiring:
    """The PC5 service of an OBU with ``pc5.enabled`` (empty otherwise): pseudonyms from
    ``pc5.pseudonym_dir`` (or ``identity``), trust from ``pc5.authorities`` and the
    ``pseudonym_ca`` trust roots. Problems set health ``pc5`` failed and build nothing."""
    cfg = agent.config
    wiring = Pc5Wiring()
    if not cfg.pc5.enabled or cfg.agent.role != "obu":
        return wiring
    if agent.mqtt is None or agent.dispatcher is None:
        agent.health.failed("pc5", "needs mqtt.enabled")
        return wiring
    try:
        trusted = _trusted_authorities(agent)
        if not trusted:
            raise Pc5Error("no pseudonym CA: set pc5.authorities or a trust.roots entry with role pseudonym_ca")
        if identity is None:
            directory = cfg.pc5.pseudonym_dir or str(Path(cfg.agent.data_dir) / "pseudonyms")
            now = agent.clock.time()
            pool = load_pseudonym_pool(directory, trusted, now=now)
            if not len(pool):
                raise Pc5Error(f"no valid pseudonym in {directory}")
            identity = PseudonymManager(
                pool,
                period=cfg.pc5.pseudonym_period,
                jitter=cfg.pc5.pseudonym_jitter,
                rng=random.SystemRandom(),
                now=now,
            )
    except (Pc5Error, LedgerError) as err:
        agent.health.failed("pc5", str(err))
        log.error("pc5: not started: %s", err)
        return wiring
    state_service = agent.state_service
    service = Pc5Service(
        cfg.pc5,
        client=agent.mqtt,
        dispatcher=agent.dispatcher,
        cell=cfg.mqtt.cell,
        clock=agent.clock,
        health=agent.health,
        state=lambda: state_service.last if state_service is not None else None,
        identity=identity,
        trust=trusted,
    )
    wiring.service = service
    wiring.services.append(("pc5", service.run))
    return wiring
