"""V2V payloads with ETSI CAM / DENM field semantics, the CAM generation rules, and the
receiver's DENM relevance filter.

Payloads are deterministic-CBOR maps whose keys are the ETSI ASN.1 field names and whose values
are in the ETSI units (TS 102 894-2 v1.3.1 Common Data Dictionary), so a later UPER bridge is a
codec, not a redesign:

* ``latitude`` / ``longitude``: 0.1 microdegree ints (900000001 / 1800000001 = unavailable)
* ``heading``: 0.1 degree from true north, 0..3600 (3601 = unavailable)
* ``speed``: 0.01 m/s, 0..16382 (16383 = unavailable)
* ``longitudinalAcceleration`` / ``lateralAcceleration``: 0.1 m/s², -160..160 (161 = unavailable)
* ``yawRate``: 0.01 deg/s, -32766..32766 (32767 = unavailable)
* ``generationDeltaTime``: TimestampIts mod 65536 (EN 302 637-2)
* DENM ``detectionTime`` / ``referenceTime``: TimestampIts, ms since 2004-01-01T00:00:00Z
  (computed from POSIX time without leap seconds: both ends use this module, so ages are right;
  a UPER bridge to real stations must add the TAI-UTC offset)
* DENM ``causeCode`` / ``subCauseCode``: EN 302 637-3 / CDD, e.g. 99 dangerousSituation /
  1 emergencyElectronicBrakeEngaged (hard braking), 94 stationaryVehicle / 2 vehicleBreakdown
* ``relevanceDistance``: the CDD enumeration 0..7 (lessThan50m .. over10km);
  ``relevanceTrafficDirection`` 0 all, 1 upstream, 2 downstream, 3 opposite;
  ``validityDuration`` seconds 0..86400 (default 600).

``decode`` is strict (exact key set, int types, ETSI ranges) and raises ``SchemaError`` naming
the field. ``sign``/``open_signed`` wrap a payload in a pseudonym-signed COSE_Sign1 and check on
receipt that the header's station id is the payload's.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import ClassVar, Final

from hal.types import VehicleState
from ledger_lite import cbor
from ledger_lite.errors import CborError, SchemaError, VerificationError
from ledger_lite.keys import VerifyKey
from ledger_lite.pseudonym import PseudonymCert, PseudonymIdentity, V2vMessage, verify_v2v

from .radio import Position, bearing_deg, distance_m

__all__ = [
    "CAUSE_DANGEROUS_SITUATION",
    "CAUSE_STATIONARY_VEHICLE",
    "CT_CAM",
    "CT_DENM",
    "Cam",
    "CamGenerator",
    "Denm",
    "RELEVANCE_DISTANCE_M",
    "SUB_EMERGENCY_BRAKE",
    "SUB_VEHICLE_BREAKDOWN",
    "Verdict",
    "WarningFilter",
    "decode",
    "open_signed",
    "sign",
    "timestamp_its",
]

CT_CAM: Final = "cam"
CT_DENM: Final = "denm"
#: ItsPduHeader
PROTOCOL_VERSION: Final = 2
MESSAGE_ID_DENM: Final = 1
MESSAGE_ID_CAM: Final = 2
#: CauseCodeType / sub-cause codes (TS 102 894-2 v1.3.1)
CAUSE_STATIONARY_VEHICLE: Final = 94
CAUSE_DANGEROUS_SITUATION: Final = 99
SUB_VEHICLE_BREAKDOWN: Final = 2
SUB_EMERGENCY_BRAKE: Final = 1
#: StationType
STATION_PASSENGER_CAR: Final = 5
#: upper bound (m) of each RelevanceDistance value; over10km is taken as 20 km
RELEVANCE_DISTANCE_M: Final = (50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0, 20000.0)

LAT_UNAVAILABLE: Final = 900000001
LON_UNAVAILABLE: Final = 1800000001
HEADING_UNAVAILABLE: Final = 3601
SPEED_UNAVAILABLE: Final = 16383
ACCEL_UNAVAILABLE: Final = 161
YAW_UNAVAILABLE: Final = 32767

#: 2004-01-01T00:00:00Z in POSIX seconds
ITS_EPOCH_POSIX: Final = 1_072_915_200


def timestamp_its(posix: float) -> int:
    """TimestampIts (ms since 2004-01-01 UTC, leap seconds not counted) for POSIX seconds."""
    return round((posix - ITS_EPOCH_POSIX) * 1000)


def _scaled(value: float | None, scale: float, lo: int, hi: int, unavailable: int) -> int:
    if value is None or not math.isfinite(value):
        return unavailable
    return min(max(round(value * scale), lo), hi)


# --- payloads ----------------------------------------------------------------------------------

_Ranges = Mapping[str, tuple[int, int]]


def _check_map(kind: str, data: bytes, expected: _Ranges) -> dict[str, int]:
    try:
        obj = cbor.loads(data)
    except CborError as err:
        raise SchemaError(f"not deterministic CBOR: {err}", kind=kind) from err
    if not isinstance(obj, dict):
        raise SchemaError(f"payload must be a map (got {type(obj).__name__})", kind=kind)
    unknown = sorted(str(k) for k in obj if k not in expected)
    if unknown:
        raise SchemaError(f"unknown field(s) {unknown}", field=unknown[0], kind=kind)
    for name, (lo, hi) in expected.items():
        if name not in obj:
            raise SchemaError("missing", field=name, kind=kind)
        value = obj[name]
        if type(value) is not int:
            raise SchemaError(f"must be an integer (got {type(value).__name__})", field=name, kind=kind)
        if not lo <= value <= hi:
            raise SchemaError(f"{value} is outside {lo}..{hi}", field=name, kind=kind)
    return obj


class _Payload:
    """Shared encode/decode of the flat int-valued CBOR maps (field name -> ETSI name)."""

    KIND: ClassVar[str]
    MESSAGE_ID: ClassVar[int]
    FIELDS: ClassVar[dict[str, tuple[str, int, int]]]  # attribute -> (ETSI name, min, max)

    def _ranges(self) -> None:
        for attr, (name, lo, hi) in self.FIELDS.items():
            value = getattr(self, attr)
            if type(value) is not int or not lo <= value <= hi:
                raise SchemaError(f"{value!r} is not an integer within {lo}..{hi}", field=name, kind=self.KIND)

    def encode(self) -> bytes:
        body: dict[str, int] = {"protocolVersion": PROTOCOL_VERSION, "messageId": self.MESSAGE_ID}
        body.update({name: getattr(self, attr) for attr, (name, _, _) in self.FIELDS.items()})
        return cbor.dumps(body)

    @classmethod
    def _decode_fields(cls, data: bytes) -> dict[str, int]:
        expected: dict[str, tuple[int, int]] = {
            "protocolVersion": (PROTOCOL_VERSION, PROTOCOL_VERSION),
            "messageId": (cls.MESSAGE_ID, cls.MESSAGE_ID),
        }
        expected.update({name: (lo, hi) for name, lo, hi in cls.FIELDS.values()})
        obj = _check_map(cls.KIND, data, expected)
        return {attr: obj[name] for attr, (name, _, _) in cls.FIELDS.items()}


_COMMON: dict[str, tuple[str, int, int]] = {
    "station_id": ("stationId", 0, 2**32 - 1),
    "station_type": ("stationType", 0, 255),
    "latitude": ("latitude", -900000000, LAT_UNAVAILABLE),
    "longitude": ("longitude", -1800000000, LON_UNAVAILABLE),
}


@dataclass(frozen=True)
class Cam(_Payload):
    """Cooperative Awareness Message: basic + high-frequency container, ETSI units."""

    KIND: ClassVar[str] = "cam"
    MESSAGE_ID: ClassVar[int] = MESSAGE_ID_CAM
    FIELDS: ClassVar[dict[str, tuple[str, int, int]]] = {
        **_COMMON,
        "generation_delta_time": ("generationDeltaTime", 0, 65535),
        "heading": ("heading", 0, HEADING_UNAVAILABLE),
        "speed": ("speed", 0, SPEED_UNAVAILABLE),
        "longitudinal_acceleration": ("longitudinalAcceleration", -160, ACCEL_UNAVAILABLE),
        "lateral_acceleration": ("lateralAcceleration", -160, ACCEL_UNAVAILABLE),
        "yaw_rate": ("yawRate", -32766, YAW_UNAVAILABLE),
    }

    station_id: int
    station_type: int
    latitude: int
    longitude: int
    generation_delta_time: int
    heading: int = HEADING_UNAVAILABLE
    speed: int = SPEED_UNAVAILABLE
    longitudinal_acceleration: int = ACCEL_UNAVAILABLE
    lateral_acceleration: int = ACCEL_UNAVAILABLE
    yaw_rate: int = YAW_UNAVAILABLE

    def __post_init__(self) -> None:
        self._ranges()

    @classmethod
    def from_state(
        cls, state: VehicleState, *, station_id: int, now: float, station_type: int = STATION_PASSENGER_CAR
    ) -> Cam:
        """A CAM from a fused snapshot (SI units, degrees); ``now`` is POSIX seconds."""
        return cls(
            station_id=station_id,
            station_type=station_type,
            latitude=_scaled(state.lat, 1e7, -900000000, 900000000, LAT_UNAVAILABLE),
            longitude=_scaled(state.lon, 1e7, -1800000000, 1800000000, LON_UNAVAILABLE),
            generation_delta_time=timestamp_its(now) % 65536,
            heading=HEADING_UNAVAILABLE if state.heading is None else round((state.heading % 360.0) * 10) % 3600,
            speed=_scaled(state.speed, 100, 0, 16382, SPEED_UNAVAILABLE),
            longitudinal_acceleration=_scaled(state.accel_longitudinal, 10, -160, 160, ACCEL_UNAVAILABLE),
            lateral_acceleration=_scaled(state.accel_lateral, 10, -160, 160, ACCEL_UNAVAILABLE),
            yaw_rate=_scaled(state.yaw_rate, 100, -32766, 32766, YAW_UNAVAILABLE),
        )

    @classmethod
    def decode(cls, data: bytes) -> Cam:
        return cls(**cls._decode_fields(data))

    @property
    def position(self) -> Position | None:
        """(lat, lon) degrees, None when unavailable."""
        if self.latitude == LAT_UNAVAILABLE or self.longitude == LON_UNAVAILABLE:
            return None
        return (self.latitude / 1e7, self.longitude / 1e7)


@dataclass(frozen=True)
class Denm(_Payload):
    """Decentralized Environmental Notification: management + situation + location, ETSI units."""

    KIND: ClassVar[str] = "denm"
    MESSAGE_ID: ClassVar[int] = MESSAGE_ID_DENM
    FIELDS: ClassVar[dict[str, tuple[str, int, int]]] = {
        **_COMMON,
        "sequence_number": ("sequenceNumber", 0, 65535),
        "detection_time": ("detectionTime", 0, 4398046511103),
        "reference_time": ("referenceTime", 0, 4398046511103),
        "cause_code": ("causeCode", 0, 255),
        "sub_cause_code": ("subCauseCode", 0, 255),
        "relevance_distance": ("relevanceDistance", 0, 7),
        "relevance_traffic_direction": ("relevanceTrafficDirection", 0, 3),
        "validity_duration": ("validityDuration", 0, 86400),
        "event_heading": ("eventPositionHeading", 0, HEADING_UNAVAILABLE),
    }

    station_id: int
    station_type: int
    latitude: int
    longitude: int
    sequence_number: int
    detection_time: int
    reference_time: int
    cause_code: int
    sub_cause_code: int
    relevance_distance: int = 2
    relevance_traffic_direction: int = 1
    validity_duration: int = 600
    event_heading: int = HEADING_UNAVAILABLE

    def __post_init__(self) -> None:
        self._ranges()
        if self.latitude == LAT_UNAVAILABLE or self.longitude == LON_UNAVAILABLE:
            raise SchemaError("a DENM needs an event position", field="latitude", kind=self.KIND)
        if self.reference_time < self.detection_time:
            raise SchemaError("is before detectionTime", field="referenceTime", kind=self.KIND)

    @classmethod
    def event(
        cls,
        *,
        station_id: int,
        sequence_number: int,
        position: Position,
        heading: float | None,
        detected_at: float,
        now: float,
        cause_code: int,
        sub_cause_code: int = 0,
        relevance_distance: int = 2,
        relevance_traffic_direction: int = 1,
        validity_duration: int = 600,
        station_type: int = STATION_PASSENGER_CAR,
    ) -> Denm:
        """A DENM from SI values: position degrees, heading degrees, times POSIX seconds."""
        return cls(
            station_id=station_id,
            station_type=station_type,
            latitude=_scaled(position[0], 1e7, -900000000, 900000000, LAT_UNAVAILABLE),
            longitude=_scaled(position[1], 1e7, -1800000000, 1800000000, LON_UNAVAILABLE),
            sequence_number=sequence_number,
            detection_time=timestamp_its(detected_at),
            reference_time=timestamp_its(now),
            cause_code=cause_code,
            sub_cause_code=sub_cause_code,
            relevance_distance=relevance_distance,
            relevance_traffic_direction=relevance_traffic_direction,
            validity_duration=validity_duration,
            event_heading=HEADING_UNAVAILABLE if heading is None else round((heading % 360.0) * 10) % 3600,
        )

    @classmethod
    def decode(cls, data: bytes) -> Denm:
        return cls(**cls._decode_fields(data))

    @property
    def position(self) -> Position:
        return (self.latitude / 1e7, self.longitude / 1e7)


def decode(data: bytes) -> Cam | Denm:
    """A CAM or DENM payload, by its ``messageId``; ``SchemaError`` naming the field otherwise."""
    try:
        obj = cbor.loads(data)
    except CborError as err:
        raise SchemaError(f"not deterministic CBOR: {err}", kind="v2x") from err
    message_id = obj.get("messageId") if isinstance(obj, dict) else None
    if message_id == MESSAGE_ID_CAM and type(message_id) is int:
        return Cam.decode(data)
    if message_id == MESSAGE_ID_DENM and type(message_id) is int:
        return Denm.decode(data)
    raise SchemaError(f"unknown or missing message id {message_id!r}", field="messageId", kind="v2x")


# --- signing -----------------------------------------------------------------------------------


def sign(identity: PseudonymIdentity, message: Cam | Denm, *, include_cert: bool = False) -> bytes:
    """The message signed with the current pseudonym. Its ``station_id`` must be the
    pseudonym's (every identifier changes with the pseudonym)."""
    if message.station_id != identity.station_id:
        raise ValueError(f"message station id {message.station_id} is not the pseudonym's {identity.station_id}")
    content_type = CT_CAM if isinstance(message, Cam) else CT_DENM
    return identity.sign(message.encode(), include_cert=include_cert, content_type=content_type)


def open_signed(
    data: bytes,
    *,
    authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey],
    now: float,
    certs: MutableMapping[bytes, PseudonymCert] | None = None,
) -> tuple[V2vMessage, Cam | Denm]:
    """Verify a pseudonym-signed V2V message (``verify_v2v``; its errors propagate) and decode
    its payload; ``VerificationError`` when the content type or station id disagree with it."""
    msg = verify_v2v(data, authority_keys=authority_keys, now=now, certs=certs)
    payload = decode(msg.payload)
    expected = CT_CAM if isinstance(payload, Cam) else CT_DENM
    if msg.content_type != expected:
        raise VerificationError(f"content type {msg.content_type!r} but the payload is a {payload.KIND}")
    if msg.station_id != payload.station_id:
        raise VerificationError(f"signed for station {msg.station_id} but the payload says {payload.station_id}")
    return msg, payload


# --- CAM generation (EN 302 637-2 §6.1.3) ------------------------------------------------------


def _angle_diff(a: float, b: float) -> float:
    """Smallest absolute difference between two headings, degrees (0..180)."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


@dataclass(frozen=True)
class _Sent:
    at: float
    position: Position
    heading: float | None
    speed: float | None


class CamGenerator:
    """When to send the next CAM (EN 302 637-2 v1.4.1 §6.1.3), as a pure decision.

    * Condition 1: at least ``T_GenCamDcc`` since the last CAM (``min_gap`` 0.1 s, or the
      larger DCC gap passed to ``due``) and heading changed > 4°, position > 4 m or speed
      > 0.5 m/s since the last CAM.
    * Condition 2: at least ``T_GenCam`` since the last CAM (and ``T_GenCamDcc``). ``T_GenCam``
      is ``max_gap`` (1 s), except that after a CAM triggered by condition 1 it becomes that
      CAM's interval, for ``n_gen_cam`` (3) consecutive CAMs.

    The caller sends when ``due`` says so and then calls ``sent``. ``now`` is any one clock
    (seconds), the same for both. No position: no CAM.
    """

    def __init__(
        self,
        *,
        min_gap: float = 0.1,
        max_gap: float = 1.0,
        n_gen_cam: int = 3,
        heading_deg: float = 4.0,
        position_m: float = 4.0,
        speed_mps: float = 0.5,
    ) -> None:
        if not 0 < min_gap <= max_gap:
            raise ValueError(f"need 0 < min_gap <= max_gap (got {min_gap}, {max_gap})")
        self.min_gap = min_gap
        self.max_gap = max_gap
        self.n_gen_cam = n_gen_cam
        self.thresholds = (heading_deg, position_m, speed_mps)
        self._last: _Sent | None = None
        self._t_gen_cam = max_gap
        self._left_at_t_gen_cam = 0

    def _gap_dcc(self, dcc_gap: float | None) -> float:
        if dcc_gap is None:
            return self.min_gap
        return min(max(dcc_gap, self.min_gap), self.max_gap)

    def _dynamics(self, state: VehicleState) -> bool:
        last = self._last
        assert last is not None and state.lat is not None and state.lon is not None
        heading_deg, position_m, speed_mps = self.thresholds
        if state.heading is not None and last.heading is not None:
            if _angle_diff(state.heading, last.heading) > heading_deg:
                return True
        if distance_m(last.position, (state.lat, state.lon)) > position_m:
            return True
        return state.speed is not None and last.speed is not None and abs(state.speed - last.speed) > speed_mps

    def trigger(self, state: VehicleState, now: float, dcc_gap: float | None = None) -> int:
        """0 = not due, 1 = due by dynamics (condition 1), 2 = due by time (condition 2)."""
        if state.lat is None or state.lon is None:
            return 0
        if self._last is None:
            return 2
        elapsed = now - self._last.at
        gap_dcc = self._gap_dcc(dcc_gap)
        if elapsed < gap_dcc - 1e-9:
            return 0
        if self._dynamics(state):
            return 1
        return 2 if elapsed >= max(self._t_gen_cam, gap_dcc) - 1e-9 else 0

    def due(self, state: VehicleState, now: float, dcc_gap: float | None = None) -> bool:
        """Whether a CAM is due at ``now`` (``dcc_gap``: the DCC minimum gap, e.g.
        ``RadioModel.min_gap(cbr)``). Changes nothing."""
        return self.trigger(state, now, dcc_gap) != 0

    def sent(self, state: VehicleState, now: float, dcc_gap: float | None = None) -> None:
        """Record a CAM sent at ``now`` with ``state``'s kinematics."""
        if state.lat is None or state.lon is None:
            raise ValueError("a CAM needs a position")
        cause = self.trigger(state, now, dcc_gap)
        if self._last is not None and cause == 1:
            self._t_gen_cam = min(max(now - self._last.at, self.min_gap), self.max_gap)
            self._left_at_t_gen_cam = self.n_gen_cam
        elif self._left_at_t_gen_cam > 0:
            self._left_at_t_gen_cam -= 1
            if self._left_at_t_gen_cam == 0:
                self._t_gen_cam = self.max_gap
        self._last = _Sent(now, (state.lat, state.lon), state.heading, state.speed)


# --- DENM relevance ----------------------------------------------------------------------------


class Verdict(enum.StrEnum):
    RELEVANT = "relevant"
    EXPIRED = "expired"  # past detectionTime + validityDuration
    TOO_OLD = "too_old"  # referenceTime older than max_age
    FUTURE = "future"  # referenceTime ahead of our clock beyond the skew
    TOO_FAR = "too_far"
    BEHIND = "behind"
    OTHER_DIRECTION = "other_direction"


@dataclass(frozen=True)
class WarningFilter:
    """Whether a received DENM matters to a vehicle at ``own`` heading ``own_heading``.

    Fresh: ``now`` (POSIX s) before detectionTime + validityDuration, referenceTime at most
    ``max_age`` s old and at most ``skew`` s in the future. On the path: within the relevance
    distance, the bearing to the event within ``ahead_cone_deg`` of our heading, and the
    traffic direction right: upstream (1) wants the event's heading within ``heading_tol_deg``
    of ours, opposite (3) within that of the reverse, all directions (0) any; downstream (2)
    concerns traffic that has passed the event, so never something ahead. An unknown own
    heading (standing still, no fix) skips the ahead and direction checks; an unknown event
    heading skips the direction check.
    """

    max_age: float = 10.0
    skew: float = 1.0
    ahead_cone_deg: float = 60.0
    heading_tol_deg: float = 45.0

    def assess(self, own: Position, own_heading: float | None, denm: Denm, *, now: float) -> Verdict:
        now_its = timestamp_its(now)
        if now_its > denm.detection_time + denm.validity_duration * 1000:
            return Verdict.EXPIRED
        age = (now_its - denm.reference_time) / 1000
        if age > self.max_age:
            return Verdict.TOO_OLD
        if age < -self.skew:
            return Verdict.FUTURE
        if distance_m(own, denm.position) > RELEVANCE_DISTANCE_M[denm.relevance_distance]:
            return Verdict.TOO_FAR
        if own_heading is None:
            return Verdict.RELEVANT
        if distance_m(own, denm.position) > 1.0:  # at the spot itself any bearing is "ahead"
            if _angle_diff(bearing_deg(own, denm.position), own_heading) > self.ahead_cone_deg:
                return Verdict.BEHIND
        direction = denm.relevance_traffic_direction
        if direction == 2:
            return Verdict.OTHER_DIRECTION
        if direction == 0 or denm.event_heading == HEADING_UNAVAILABLE:
            return Verdict.RELEVANT
        event_heading = denm.event_heading / 10
        wanted = event_heading if direction == 1 else (event_heading + 180.0) % 360.0
        if _angle_diff(own_heading, wanted) > self.heading_tol_deg:
            return Verdict.OTHER_DIRECTION
        return Verdict.RELEVANT

    def relevant(self, own: Position, own_heading: float | None, denm: Denm, *, now: float) -> bool:
        return self.assess(own, own_heading, denm, now=now) is Verdict.RELEVANT
