"""Cell announcement, admission (mutual authentication) and handover: the whitepaper's join flow.

Wire (every message a tagged COSE_Sign1, EdDSA/ES256, ``kid`` = the signer's did:key verification
method, deterministic CBOR payload with text keys; times are integer milliseconds since 1970,
positions integer 1e-7 degrees as in ETSI CAM)::

    acc/v1/cell/{cell}/announce          RSU, retained   content type application/acc-cell-announce+cbor
      {v: 1, cell, area: {c: [lat, lon, radius_m]} | {p: [[lat, lon], ...]}, chain: chain id,
       genesis: SHA-256 of Genesis.to_json() (UTF-8), vset: ValidatorSet.hash() of the set the RSU
       validates in, broker: {host, port, tls}, vc: the RSU's validator credential, issuers?:
       [issuer credentials delegating the road-authority role], t, exp}
    acc/v1/cell/{cell}/admission/{obu}   OBU -> RSU      application/acc-admission-request+cbor
      {v: 1, type: "req", cell, rsu: DID asked, node: {obu}, nonce: 16 bytes, t, vc: vehicle
       credential, chain?: [issuer credentials]}
    acc/v1/cell/{cell}/admission/{obu}   RSU -> OBU      application/acc-admission-response+cbor
      {v: 1, type: "resp", cell, obu: DID, nonce: echoed, t, ok: bool,
       ok:     genesis: genesis JSON text (hashes to the announced hash), chain, exp, topics: {block, tx}
       not ok: reason: a ``Reason`` code, text: for humans}

Requests and answers share the OBU's topic (one subscription per side, no RSU node id needed);
``type`` tells them apart: the RSU ignores answers, the OBU ignores its own requests.

Checks. An announcement: signature by its kid; the validator credential chains to a
road-authority root of the trust store, names the announcing DID as subject and this cell, is
neither expired nor revoked (nor is the RSU's DID); the announcement itself is not expired; when
the verifier knows the genesis it names, the chain id and validator set match it and the RSU is
a validator. A request: signature, addressed to this RSU, time within the skew, nonce not seen
(per signer, remembered for the replay window), this cell, a vehicle credential chaining to an
OEM root, subject = the signer, not expired/revoked. An answer: signed by the announced RSU,
for this OBU, nonce echoed, genesis text matching the announced hash.

Every refusal carries a machine-readable ``Reason`` and a text; both sides log it.

``CellAnnouncer`` (RSU) and ``CellJoiner`` (OBU) are the services; everything else is pure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from hal.interfaces import Clock
from ledger_lite import cbor, cose, didkey
from ledger_lite.credentials import (
    CredentialKind,
    CredentialStore,
    Role,
    TrustStore,
    ValidatorCredential,
    VehicleCredential,
    VerifiedCredential,
    decode_credential,
    verify_credential,
)
from ledger_lite.errors import (
    CredentialError,
    LedgerError,
    MalformedError,
    RevokedError,
    SignatureError,
    ValidityError,
)
from ledger_lite.genesis import Genesis
from ledger_lite.keys import SigningKey
from models.rules import point_in_polygon

from . import topics
from .health import HealthRegistry
from .mqtt import Dispatcher, Message, MqttClient

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = [
    "CT_ANNOUNCE",
    "CT_REQUEST",
    "CT_RESPONSE",
    "AdmissionError",
    "AdmissionRequest",
    "AdmissionResult",
    "Area",
    "CellAnnouncer",
    "CellInfo",
    "CellJoiner",
    "Endpoint",
    "Membership",
    "NonceCache",
    "Reason",
    "build_admitted",
    "build_announcement",
    "build_cell_service",
    "build_cell_services",
    "build_refused",
    "build_request",
    "distance_m",
    "genesis_hash",
    "message_type",
    "reason_for",
    "verify_announcement",
    "verify_request",
    "verify_response",
]

log = logging.getLogger(__name__)

CT_ANNOUNCE: Final = "application/acc-cell-announce+cbor"
CT_REQUEST: Final = "application/acc-admission-request+cbor"
CT_RESPONSE: Final = "application/acc-admission-response+cbor"
VERSION: Final = 1
NONCE_LEN: Final = 16
_E7: Final = 10_000_000
_EARTH_R: Final = 6_371_008.8


class Reason(StrEnum):
    """Why an announcement, a request or an answer is refused (sent on the wire as text)."""

    REVOKED = "revoked"
    EXPIRED = "expired"
    UNKNOWN_ISSUER = "unknown_issuer"
    BAD_SIGNATURE = "bad_signature"
    WRONG_CELL = "wrong_cell"
    REPLAY = "replay"
    CLOCK_SKEW = "clock_skew"
    SUBJECT_MISMATCH = "subject_mismatch"
    MALFORMED = "malformed"
    NOT_VALIDATOR = "not_validator"
    UNKNOWN_GENESIS = "unknown_genesis"
    WRONG_RSU = "wrong_rsu"


class AdmissionError(Exception):
    """A refused announcement, request or answer: ``reason`` (a ``Reason``) and ``text``.
    ``peer`` (the signer's DID) and ``nonce`` are set when known, so the RSU can still answer."""

    def __init__(self, reason: Reason, text: str, *, peer: str = "", nonce: bytes | None = None) -> None:
        self.reason = reason
        self.text = text
        self.peer = peer
        self.nonce = nonce
        super().__init__(f"{reason}: {text}")


def reason_for(err: Exception) -> Reason:
    """The reason code for a ``ledger_lite`` verification error."""
    if isinstance(err, RevokedError):
        return Reason.REVOKED
    if isinstance(err, ValidityError):
        return Reason.EXPIRED
    if isinstance(err, SignatureError):
        return Reason.BAD_SIGNATURE
    if isinstance(err, CredentialError):
        return Reason.UNKNOWN_ISSUER
    return Reason.MALFORMED


# --------------------------------------------------------------------------------------------
# geometry


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_R * math.asin(min(1.0, math.sqrt(h)))


def _e7(value: float) -> int:
    return round(value * _E7)


def _check_latlon(lat: float, lon: float, where: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{where}: ({lat}, {lon}) is not a latitude/longitude in degrees")


@dataclass(frozen=True)
class Area:
    """A cell's coverage: a circle (``lat``, ``lon``, ``radius_m`` > 0) or a ``polygon`` of
    (lat, lon) corners (then ``lat``/``lon`` is the corners' mean, used for distances).
    Coordinates are kept at the wire's resolution (1e-7 degree), radii in whole metres."""

    lat: float = 0.0
    lon: float = 0.0
    radius_m: float = 0.0
    polygon: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        poly = tuple((_e7(a) / _E7, _e7(b) / _E7) for a, b in self.polygon)
        for i, (a, b) in enumerate(poly):
            _check_latlon(a, b, f"area.polygon[{i}]")
        if poly:
            if len(poly) < 3:
                raise ValueError("area.polygon: needs at least 3 corners")
            lat = sum(p[0] for p in poly) / len(poly)
            lon = sum(p[1] for p in poly) / len(poly)
            object.__setattr__(self, "radius_m", 0.0)
        else:
            lat, lon = self.lat, self.lon
            if not 1 <= round(self.radius_m) <= 1_000_000:
                raise ValueError(f"area.radius_m: {self.radius_m} is not 1 .. 1000000 m")
            object.__setattr__(self, "radius_m", float(round(self.radius_m)))
        _check_latlon(lat, lon, "area centre")
        object.__setattr__(self, "polygon", poly)
        object.__setattr__(self, "lat", _e7(lat) / _E7)
        object.__setattr__(self, "lon", _e7(lon) / _E7)

    @classmethod
    def circle(cls, lat: float, lon: float, radius_m: float) -> Area:
        return cls(lat, lon, radius_m)

    @classmethod
    def from_polygon(cls, corners: Iterable[Sequence[float]]) -> Area:
        pts: list[tuple[float, float]] = []
        for i, c in enumerate(corners):
            if len(c) != 2:
                raise ValueError(f"area.polygon[{i}]: {list(c)} is not [lat, lon]")
            pts.append((float(c[0]), float(c[1])))
        return cls(polygon=tuple(pts))

    def contains(self, lat: float, lon: float) -> bool:
        """Inside (polygon: even-odd rule on lat/lon, a point on a shared edge belongs to one side)."""
        if not self.polygon:
            return distance_m(self.lat, self.lon, lat, lon) <= self.radius_m
        return point_in_polygon(lat, lon, self.polygon)

    def distance_m(self, lat: float, lon: float) -> float:
        """Distance from the area's centre."""
        return distance_m(self.lat, self.lon, lat, lon)

    def to_wire(self) -> dict[str, Any]:
        if self.polygon:
            return {"p": [[_e7(a), _e7(b)] for a, b in self.polygon]}
        return {"c": [_e7(self.lat), _e7(self.lon), int(self.radius_m)]}

    @classmethod
    def from_wire(cls, obj: object) -> Area:
        try:
            if type(obj) is not dict or len(obj) != 1:
                raise ValueError("must be {c: [lat, lon, radius]} or {p: [[lat, lon], ...]}")
            if "c" in obj:
                c = obj["c"]
                if type(c) is not list or len(c) != 3 or any(type(x) is not int for x in c):
                    raise ValueError("c must be [lat_e7, lon_e7, radius_m] integers")
                return cls(c[0] / _E7, c[1] / _E7, float(c[2]))
            p = obj.get("p")
            if type(p) is not list or not 3 <= len(p) <= 256:
                raise ValueError("p must be 3 to 256 corners")
            corners: list[tuple[float, float]] = []
            for pt in p:
                if type(pt) is not list or len(pt) != 2 or any(type(x) is not int for x in pt):
                    raise ValueError("a corner is [lat_e7, lon_e7] integers")
                corners.append((pt[0] / _E7, pt[1] / _E7))
            return cls(polygon=tuple(corners))
        except ValueError as err:
            raise AdmissionError(Reason.MALFORMED, f"announcement.area: {err}") from None

    def to_json(self) -> dict[str, Any]:
        if self.polygon:
            return {"polygon": [list(p) for p in self.polygon]}
        return {"lat": self.lat, "lon": self.lon, "radius_m": self.radius_m}


@dataclass(frozen=True)
class Endpoint:
    """The broker OBUs of the cell use."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}{' (tls)' if self.tls else ''}"


# --------------------------------------------------------------------------------------------
# message plumbing


def genesis_hash(genesis: Genesis | str | bytes) -> bytes:
    """SHA-256 of the genesis JSON exactly as ``Genesis.to_json()`` writes it (UTF-8): the
    canonical form, independent of how the file on disk was formatted."""
    text = genesis.to_json() if isinstance(genesis, Genesis) else genesis
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).digest()


def _ms(t: float) -> int:
    return int(round(t * 1000))


def _kid(did: str) -> bytes:
    return didkey.verification_method_id(did).encode()


def _sign(payload: Mapping[str, Any], key: SigningKey, content_type: str) -> bytes:
    did = didkey.did_key(key.public)
    return cose.sign1(cbor.dumps(dict(payload)), key, kid=_kid(did), content_type=content_type)


def _open(data: bytes, content_type: str, what: str) -> tuple[dict[Any, Any], str]:
    """Verify a signed message by its kid's did:key: (payload map, signer DID)."""
    try:
        msg = cose.decode_sign1(bytes(data))
    except (MalformedError, ValueError, TypeError) as err:
        raise AdmissionError(Reason.MALFORMED, f"{what}: not a COSE_Sign1: {err}") from None
    if msg.content_type != content_type:
        raise AdmissionError(Reason.MALFORMED, f"{what}: content type {msg.content_type!r}, expected {content_type}")
    try:
        kid = (msg.kid or b"").decode()
        key = didkey.resolve(kid)
    except (UnicodeDecodeError, LedgerError) as err:
        raise AdmissionError(Reason.MALFORMED, f"{what}: kid is not a did:key: {err}") from None
    signer = kid.partition("#")[0]
    try:
        cose.verify_sign1(msg, key)
    except SignatureError as err:
        raise AdmissionError(Reason.BAD_SIGNATURE, f"{what}: {err}", peer=signer) from None
    except MalformedError as err:
        raise AdmissionError(Reason.MALFORMED, f"{what}: {err}", peer=signer) from None
    if msg.payload is None:
        raise AdmissionError(Reason.MALFORMED, f"{what}: detached payload", peer=signer)
    try:
        doc = cbor.loads(msg.payload)
    except MalformedError as err:
        raise AdmissionError(Reason.MALFORMED, f"{what}: payload is not deterministic CBOR: {err}") from None
    if type(doc) is not dict:
        raise AdmissionError(Reason.MALFORMED, f"{what}: payload is not a map", peer=signer)
    if doc.get("v") != VERSION:
        raise AdmissionError(Reason.MALFORMED, f"{what}: version {doc.get('v')!r} (this node speaks {VERSION})")
    return doc, signer


class _Fields:
    """Typed access to a payload map: a wrong or missing field is a MALFORMED ``AdmissionError``
    naming it; unknown fields are refused too."""

    def __init__(self, doc: dict[Any, Any], what: str, allowed: Iterable[str], peer: str = "") -> None:
        self.doc, self.what, self.peer = doc, what, peer
        unknown = sorted(repr(k) for k in doc if k not in set(allowed))
        if unknown:
            self.fail(unknown[0], "unknown field")

    def fail(self, name: str, text: str) -> NoReturn:
        raise AdmissionError(Reason.MALFORMED, f"{self.what}.{name}: {text}", peer=self.peer)

    def get(self, name: str, typ: type, *, optional: bool = False) -> Any:
        if name not in self.doc:
            if optional:
                return None
            self.fail(name, "required field is missing")
        value = self.doc[name]
        if type(value) is not typ:
            self.fail(name, f"must be {typ.__name__}, not {type(value).__name__}")
        return value

    def text(self, name: str, max_len: int = 256) -> str:
        value: str = self.get(name, str)
        if not 1 <= len(value) <= max_len:
            self.fail(name, f"must be 1 to {max_len} characters")
        return value

    def cell(self, name: str = "cell") -> str:
        value = self.text(name, 64)
        try:
            return topics.check_id(value, "cell")
        except topics.TopicError as err:
            self.fail(name, str(err))

    def did(self, name: str) -> str:
        value = self.text(name, 512)
        try:
            didkey.resolve(value)
        except LedgerError as err:
            self.fail(name, f"not a did:key: {err}")
        return value

    def time_ms(self, name: str) -> float:
        value: int = self.get(name, int)
        if not 0 <= value < 1 << 53:
            self.fail(name, "must be milliseconds since 1970")
        return value / 1000.0


def _peek_nonce(data: bytes) -> bytes | None:
    """The nonce of a request WITHOUT verifying it (to address a refusal), else None."""
    try:
        doc = cbor.loads(cose.decode_sign1(bytes(data)).payload or b"")
    except (MalformedError, ValueError, TypeError):
        return None
    nonce = doc.get("nonce") if type(doc) is dict else None
    return nonce if type(nonce) is bytes and len(nonce) == NONCE_LEN else None


def message_type(data: bytes) -> str | None:
    """``"req"`` / ``"resp"`` of an admission message WITHOUT verifying it (to route it), else None."""
    try:
        msg = cose.decode_sign1(bytes(data))
        doc = cbor.loads(msg.payload or b"")
    except (MalformedError, ValueError, TypeError):
        return None
    kind = doc.get("type") if type(doc) is dict else None
    return kind if kind in ("req", "resp") else None


# --------------------------------------------------------------------------------------------
# announcement


@dataclass(frozen=True)
class CellInfo:
    """A verified cell announcement."""

    cell: str
    area: Area
    rsu: str
    chain_id: str
    genesis_hash: bytes
    validators_hash: bytes
    broker: Endpoint
    power: int
    issued: float
    expires: float
    #: the genesis, when the verifier knew it (then the RSU was checked against its validator set)
    genesis: Genesis | None = field(default=None, compare=False)
    raw: bytes = field(default=b"", repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "area": self.area.to_json(),
            "rsu": self.rsu,
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis_hash.hex(),
            "validators_hash": self.validators_hash.hex(),
            "broker": str(self.broker),
            "power": self.power,
            "issued": self.issued,
            "expires": self.expires,
            "genesis_known": self.genesis is not None,
        }


def build_announcement(
    *,
    key: SigningKey,
    cell: str,
    area: Area,
    genesis: Genesis,
    broker: Endpoint,
    validator_credential: bytes,
    now: float,
    validity: float = 60.0,
    validators_hash: bytes | None = None,
    issuers: Sequence[bytes] = (),
) -> bytes:
    """The RSU's signed announcement (``validators_hash``: of the current set, default the
    genesis set). The credential must name this key's DID and ``cell`` (``ValueError``)."""
    did = didkey.did_key(key.public)
    topics.check_id(cell, "cell")
    cred = decode_credential(validator_credential)
    if not isinstance(cred.body, ValidatorCredential) or cred.subject != did or cred.body.cell != cell:
        raise ValueError(f"the validator credential is not for {did} in cell {cell} ({cred.kind} for {cred.subject})")
    if validity <= 0:
        raise ValueError("validity must be > 0")
    payload: dict[str, Any] = {
        "v": VERSION,
        "cell": cell,
        "area": area.to_wire(),
        "chain": genesis.chain_id,
        "genesis": genesis_hash(genesis),
        "vset": validators_hash if validators_hash is not None else genesis.validators.hash(),
        "broker": {"host": broker.host, "port": broker.port, "tls": broker.tls},
        "vc": bytes(validator_credential),
        "t": _ms(now),
        "exp": _ms(now + validity),
    }
    if issuers:
        payload["issuers"] = [bytes(c) for c in issuers]
    return _sign(payload, key, CT_ANNOUNCE)


def verify_announcement(
    data: bytes,
    trust: TrustStore,
    now: float,
    *,
    genesis: Iterable[Genesis] = (),
    trusted_hashes: Iterable[bytes] = (),
    require_known_genesis: bool = False,
    credentials: CredentialStore | None = None,
) -> CellInfo:
    """Verify an announcement (see the module docstring); ``AdmissionError`` with the reason."""
    what = "announcement"
    doc, rsu = _open(data, CT_ANNOUNCE, what)
    f = _Fields(
        doc, what, ("v", "cell", "area", "chain", "genesis", "vset", "broker", "vc", "issuers", "t", "exp"), rsu
    )
    cell = f.cell()
    area = Area.from_wire(f.get("area", dict))
    chain_id = f.text("chain", 64)
    g_hash: bytes = f.get("genesis", bytes)
    vset: bytes = f.get("vset", bytes)
    if len(g_hash) != 32 or len(vset) != 32:
        f.fail("genesis", "genesis and vset are SHA-256 hashes (32 bytes)")
    b = _Fields(f.get("broker", dict), f"{what}.broker", ("host", "port", "tls"), rsu)
    port: int = b.get("port", int)
    if not 0 < port < 65536:
        b.fail("port", f"{port} is not a TCP port")
    broker = Endpoint(b.text("host", 253), port, b.get("tls", bool))
    vc: bytes = f.get("vc", bytes)
    issuers = f.get("issuers", list, optional=True) or []
    if len(issuers) > 2 or any(type(c) is not bytes for c in issuers):
        f.fail("issuers", "must be at most 2 issuer credentials (byte strings)")
    issued, expires = f.time_ms("t"), f.time_ms("exp")
    if issued > now + trust.skew:
        raise AdmissionError(Reason.CLOCK_SKEW, f"{what} of {cell} is {issued - now:.0f} s in the future", peer=rsu)
    if now >= expires + trust.skew:
        raise AdmissionError(Reason.EXPIRED, f"{what} of {cell} expired {now - expires:.0f} s ago", peer=rsu)
    try:
        cred = verify_credential(
            vc, trust, now=now, expected_kind=CredentialKind.VALIDATOR, chain=issuers, credentials=credentials
        )
    except LedgerError as err:
        raise AdmissionError(reason_for(err), f"{what} of {cell}: validator credential: {err}", peer=rsu) from None
    if Role.ROAD_AUTHORITY not in trust.roles_of(cred.root):  # verify_credential ensures it; say it again
        raise AdmissionError(Reason.UNKNOWN_ISSUER, f"{what}: {cred.root} is not a road authority", peer=rsu)
    body = cred.body
    assert isinstance(body, ValidatorCredential)
    if cred.subject != rsu:
        raise AdmissionError(
            Reason.SUBJECT_MISMATCH,
            f"{what}: the validator credential is for {cred.subject}, signed by {rsu}",
            peer=rsu,
        )
    if body.cell != cell:
        raise AdmissionError(Reason.WRONG_CELL, f"{what} of {cell}: the credential is for cell {body.cell}", peer=rsu)
    known = {genesis_hash(g): g for g in genesis}
    gen = known.get(g_hash)
    if gen is not None:
        if gen.chain_id != chain_id:
            raise AdmissionError(Reason.MALFORMED, f"{what}: chain {chain_id!r}, its genesis says {gen.chain_id!r}")
        if vset == gen.validators.hash() and rsu not in gen.validators:
            raise AdmissionError(Reason.NOT_VALIDATOR, f"{what}: {rsu} is not a validator of {chain_id}", peer=rsu)
    elif require_known_genesis and g_hash not in set(trusted_hashes):
        raise AdmissionError(Reason.UNKNOWN_GENESIS, f"{what} of {cell}: genesis {g_hash.hex()} is not trusted")
    return CellInfo(cell, area, rsu, chain_id, g_hash, vset, broker, body.power, issued, expires, gen, bytes(data))


# --------------------------------------------------------------------------------------------
# admission request (OBU -> RSU)


def build_request(
    *,
    key: SigningKey,
    node: str,
    cell: str,
    rsu: str,
    vehicle_credential: bytes,
    now: float,
    chain: Sequence[bytes] = (),
    nonce: bytes | None = None,
) -> tuple[bytes, bytes]:
    """(signed request, its nonce) asking ``rsu`` to admit this OBU into ``cell``."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    payload: dict[str, Any] = {
        "v": VERSION,
        "type": "req",
        "cell": topics.check_id(cell, "cell"),
        "rsu": rsu,
        "node": topics.check_id(node, "node"),
        "nonce": nonce,
        "t": _ms(now),
        "vc": bytes(vehicle_credential),
    }
    if chain:
        payload["chain"] = [bytes(c) for c in chain]
    return _sign(payload, key, CT_REQUEST), nonce


@dataclass(frozen=True)
class AdmissionRequest:
    """A verified admission request."""

    obu: str
    node: str
    cell: str
    nonce: bytes
    issued: float
    vin: str
    credential: VerifiedCredential = field(repr=False)


class NonceCache:
    """(signer, nonce) pairs seen within ``window`` seconds; older requests are refused by their
    time anyway. Bounded: beyond ``max_entries`` the oldest are forgotten (and counted)."""

    def __init__(self, window: float, max_entries: int = 100_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self.evicted = 0
        self._seen: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    def check_and_add(self, signer: str, nonce: bytes, now: float) -> None:
        while self._seen:
            first = next(iter(self._seen.items()))
            if first[1] > now - self.window:
                break
            self._seen.popitem(last=False)
        key = (signer, nonce)
        if key in self._seen:
            raise AdmissionError(Reason.REPLAY, f"nonce {nonce.hex()} was used before", peer=signer, nonce=nonce)
        if len(self._seen) >= self.max_entries:
            self._seen.popitem(last=False)
            self.evicted += 1
        self._seen[key] = now

    def __len__(self) -> int:
        return len(self._seen)


def verify_request(
    data: bytes,
    *,
    trust: TrustStore,
    cell: str,
    rsu: str,
    now: float,
    nonces: NonceCache,
    node: str | None = None,
    credentials: CredentialStore | None = None,
) -> AdmissionRequest:
    """Verify a request to ``rsu`` for ``cell`` (``node``: the topic's node id, must match).
    ``AdmissionError`` otherwise; ``WRONG_RSU`` means "for another RSU of the cell", not an attack."""
    what = "request"
    try:
        doc, obu = _open(data, CT_REQUEST, what)
    except AdmissionError as err:
        if err.reason is Reason.BAD_SIGNATURE and err.peer:  # answerable: tell the OBU its signature is bad
            err.nonce = _peek_nonce(data)
        raise
    raw_nonce = doc.get("nonce")
    nonce = raw_nonce if type(raw_nonce) is bytes and len(raw_nonce) == NONCE_LEN else None
    try:
        f = _Fields(doc, what, ("v", "type", "cell", "rsu", "node", "nonce", "t", "vc", "chain"), obu)
        if f.get("type", str) != "req":
            f.fail("type", "not a request")
        req_cell = f.cell()
        asked = f.text("rsu", 512)
        req_node = f.text("node", 64)
        if nonce is None:
            f.fail("nonce", f"must be {NONCE_LEN} bytes")
        issued = f.time_ms("t")
        vc: bytes = f.get("vc", bytes)
        chain_raw = f.get("chain", list, optional=True) or []
        if any(type(c) is not bytes for c in chain_raw) or len(chain_raw) > 4:
            f.fail("chain", "must be at most 4 credentials (byte strings)")
    except AdmissionError as err:
        err.nonce = nonce
        raise
    assert nonce is not None

    def refuse(reason: Reason, text: str) -> AdmissionError:
        return AdmissionError(reason, text, peer=obu, nonce=nonce)

    if asked != rsu:
        raise refuse(Reason.WRONG_RSU, f"addressed to {asked}, this RSU is {rsu}")
    if node is not None and req_node != node:
        raise refuse(Reason.MALFORMED, f"request.node {req_node!r} is not the topic's node {node!r}")
    if abs(issued - now) > trust.skew:
        raise refuse(Reason.CLOCK_SKEW, f"request time is {issued - now:+.0f} s off (skew allowed {trust.skew:.0f} s)")
    nonces.check_and_add(obu, nonce, now)
    if req_cell != cell:
        raise refuse(Reason.WRONG_CELL, f"asks for cell {req_cell}, this is cell {cell}")
    try:
        cred = verify_credential(
            vc, trust, now=now, expected_kind=CredentialKind.VEHICLE, chain=chain_raw, credentials=credentials
        )
    except LedgerError as err:
        raise refuse(reason_for(err), f"vehicle credential: {err}") from None
    body = cred.body
    assert isinstance(body, VehicleCredential)
    if cred.subject != obu:
        raise refuse(Reason.SUBJECT_MISMATCH, f"the vehicle credential is for {cred.subject}, signed by {obu}")
    return AdmissionRequest(obu, req_node, req_cell, nonce, issued, body.vin, cred)


# --------------------------------------------------------------------------------------------
# admission answer (RSU -> OBU)


def build_admitted(*, key: SigningKey, request: AdmissionRequest, genesis: Genesis, now: float, ttl: float) -> bytes:
    payload = {
        "v": VERSION,
        "type": "resp",
        "cell": request.cell,
        "obu": request.obu,
        "nonce": request.nonce,
        "t": _ms(now),
        "ok": True,
        "genesis": genesis.to_json(),
        "chain": genesis.chain_id,
        "exp": _ms(now + ttl),
        "topics": {"block": topics.block(request.cell).path, "tx": topics.tx(request.cell).path},
    }
    return _sign(payload, key, CT_RESPONSE)


def build_refused(
    *, key: SigningKey, cell: str, obu: str, nonce: bytes, reason: Reason, text: str, now: float
) -> bytes:
    payload = {
        "v": VERSION,
        "type": "resp",
        "cell": cell,
        "obu": obu,
        "nonce": nonce,
        "t": _ms(now),
        "ok": False,
        "reason": str(reason),
        "text": text[:500],
    }
    return _sign(payload, key, CT_RESPONSE)


@dataclass(frozen=True)
class AdmissionResult:
    """A verified answer: admitted (``genesis``, ``expires``, ``topics``) or refused (``reason``
    -- a ``Reason`` value, kept as text so newer codes still read -- and ``text``)."""

    admitted: bool
    cell: CellInfo
    reason: str = ""
    text: str = ""
    expires: float = 0.0
    genesis: Genesis | None = None
    topics: Mapping[str, str] = field(default_factory=dict)


def verify_response(data: bytes, *, cell: CellInfo, obu: str, nonce: bytes, now: float, skew: float) -> AdmissionResult:
    """Verify the RSU's answer against the announcement it was asked under (``AdmissionError``)."""
    what = "answer"
    doc, signer = _open(data, CT_RESPONSE, what)
    if signer != cell.rsu:
        raise AdmissionError(Reason.WRONG_RSU, f"{what} signed by {signer}, the cell's RSU is {cell.rsu}", peer=signer)
    f = _Fields(
        doc,
        what,
        ("v", "type", "cell", "obu", "nonce", "t", "ok", "genesis", "chain", "exp", "topics", "reason", "text"),
    )
    if f.get("type", str) != "resp":
        f.fail("type", "not an answer")
    if f.cell() != cell.cell:
        raise AdmissionError(Reason.WRONG_CELL, f"{what} for cell {doc['cell']}, asked {cell.cell}", peer=signer)
    if f.text("obu", 512) != obu:
        raise AdmissionError(Reason.MALFORMED, f"{what} is for {doc['obu']}, not for us", peer=signer)
    if f.get("nonce", bytes) != nonce:
        raise AdmissionError(Reason.REPLAY, f"{what} does not echo our nonce (stale or replayed)", peer=signer)
    issued = f.time_ms("t")
    if abs(issued - now) > skew:
        raise AdmissionError(Reason.CLOCK_SKEW, f"{what} time is {issued - now:+.0f} s off", peer=signer)
    if not f.get("ok", bool):
        return AdmissionResult(False, cell, f.text("reason", 64), str(f.get("text", str, optional=True) or ""))
    text: str = f.text("genesis", 1 << 20)
    if genesis_hash(text) != cell.genesis_hash:
        raise AdmissionError(Reason.MALFORMED, f"{what}: the genesis does not hash to the announced one", peer=signer)
    try:
        gen = Genesis.from_json(text)
    except LedgerError as err:
        raise AdmissionError(Reason.MALFORMED, f"{what}.genesis: {err}", peer=signer) from None
    expires = f.time_ms("exp")
    if expires <= now:
        raise AdmissionError(Reason.EXPIRED, f"{what}: the admission has already expired", peer=signer)
    tps = _Fields(f.get("topics", dict), f"{what}.topics", ("block", "tx"))
    return AdmissionResult(
        True, cell, expires=expires, genesis=gen, topics={"block": tps.text("block"), "tx": tps.text("tx")}
    )


# --------------------------------------------------------------------------------------------
# services


class CellAnnouncer:
    """RSU: publishes the signed announcement (retained) at start and every ``interval`` s and
    answers admission requests addressed to it."""

    name = "cell.announce"

    def __init__(
        self,
        client: MqttClient,
        dispatcher: Dispatcher,
        clock: Clock,
        health: HealthRegistry,
        *,
        key: SigningKey,
        cell: str,
        area: Area,
        genesis: Genesis,
        broker: Endpoint,
        validator_credential: bytes,
        trust: TrustStore,
        credentials: CredentialStore | None = None,
        issuers: Sequence[bytes] = (),
        interval: float = 10.0,
        validity: float = 60.0,
        admission_ttl: float = 3600.0,
        queue_max: int = 1024,
    ) -> None:
        self.client, self.dispatcher, self.clock, self.health = client, dispatcher, clock, health
        self.key = key
        self.did = didkey.did_key(key.public)
        self.cell = topics.check_id(cell, "cell")
        self.area, self.genesis, self.broker = area, genesis, broker
        self.genesis_hash = genesis_hash(genesis)
        self.validator_credential = bytes(validator_credential)
        self.issuers = [bytes(c) for c in issuers]
        self.trust, self.credentials = trust, credentials
        self.interval, self.validity, self.admission_ttl = interval, validity, admission_ttl
        self.nonces = NonceCache(2 * trust.skew + 1)
        self.announced = 0
        self.admitted: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, int] = {}
        self.last_refusal = ""
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=queue_max)
        # fail early (a ValueError at build time) if the credential is not this RSU's for this cell
        build_announcement(**self._announce_args(clock.time()))
        dispatcher.on(topics.MessageKind.ADMISSION, self._on_message)

    def _announce_args(self, now: float) -> dict[str, Any]:
        return {
            "key": self.key,
            "cell": self.cell,
            "area": self.area,
            "genesis": self.genesis,
            "broker": self.broker,
            "validator_credential": self.validator_credential,
            "now": now,
            "validity": self.validity,
            "issuers": self.issuers,
        }

    def _on_message(self, topic: topics.Topic, msg: Message) -> None:
        if topic.cell != self.cell:
            return
        try:
            self._queue.put_nowait((topic.node, msg.payload))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        await self.client.subscribe(topics.kind_filter(topics.MessageKind.ADMISSION, self.cell))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._announce_loop(), name="cell.announce.publish")
            tg.create_task(self._answer_loop(), name="cell.announce.answer")

    async def announce_once(self) -> None:
        data = build_announcement(**self._announce_args(self.clock.time()))
        await self.client.publish(topics.announce(self.cell), data)
        self.announced += 1
        self.health.ok("cell", f"announcing {self.cell} ({len(self.admitted)} OBU(s) admitted)")

    async def _announce_loop(self) -> None:
        while True:
            await self.announce_once()
            await self.clock.sleep(self.interval)

    async def _answer_loop(self) -> None:
        while True:
            node, payload = await self._queue.get()
            reply = self.handle_request(node, payload)
            if reply is not None:
                await self.client.publish(topics.admission(self.cell, node), reply)

    def handle_request(self, node: str, payload: bytes) -> bytes | None:
        """The signed answer to one message on ``admission/{node}``, or None (not a request, not
        for this RSU, or too broken to answer)."""
        if message_type(payload) != "req":
            return None
        now = self.clock.time()
        try:
            req = verify_request(
                payload,
                trust=self.trust,
                cell=self.cell,
                rsu=self.did,
                now=now,
                nonces=self.nonces,
                node=node,
                credentials=self.credentials,
            )
        except AdmissionError as err:
            if err.reason is Reason.WRONG_RSU:
                log.debug("admission: request of %s is for another RSU: %s", node, err.text)
                return None
            self.refused[err.reason] = self.refused.get(err.reason, 0) + 1
            self.last_refusal = f"{node}: {err.reason}: {err.text}"[:300]
            log.warning(
                "admission: REFUSED node %s (%s) in cell %s: %s: %s",
                node,
                err.peer or "?",
                self.cell,
                err.reason,
                err.text,
            )
            if err.nonce is None or not err.peer:
                return None
            return build_refused(
                key=self.key, cell=self.cell, obu=err.peer, nonce=err.nonce, reason=err.reason, text=err.text, now=now
            )
        if len(self.admitted) >= 4096:  # forget admissions that have run out
            self.admitted = {k: v for k, v in self.admitted.items() if v["until"] > now}
        self.admitted[req.obu] = {"node": req.node, "vin": req.vin, "until": now + self.admission_ttl}
        log.info("admission: admitted node %s (%s, VIN %s) into cell %s", req.node, req.obu, req.vin, self.cell)
        return build_admitted(key=self.key, request=req, genesis=self.genesis, now=now, ttl=self.admission_ttl)

    def status(self) -> dict[str, Any]:
        now = self.clock.time()
        return {
            "role": "rsu",
            "cell": self.cell,
            "did": self.did,
            "area": self.area.to_json(),
            "broker": str(self.broker),
            "chain_id": self.genesis.chain_id,
            "genesis_hash": self.genesis_hash.hex(),
            "announcements": self.announced,
            "admitted": {did: dict(v) for did, v in self.admitted.items() if v["until"] > now},
            "refused": dict(self.refused),
            "last_refusal": self.last_refusal,
            "dropped": self.dropped,
        }


@dataclass
class _Pending:
    cell: CellInfo
    nonce: bytes
    sent: float


@dataclass(frozen=True)
class Membership:
    """The cell this OBU is admitted to."""

    cell: CellInfo
    since: float
    expires: float
    genesis: Genesis | None
    topics: Mapping[str, str]


ChangeCallback = Callable[[str | None, str | None], None]


class CellJoiner:
    """OBU: hears announcements of every cell, verifies them, asks the cell whose area holds
    ``position()`` (the nearest centre when several do; the current cell while it still does)
    for admission, renews before the admission expires, and hands over when the position moves
    into another cell (make-before-break: the old cell stays current until the new one admits).
    ``on_change(cb)``: ``cb(old_cell_id, new_cell_id)`` on every change (None: no cell)."""

    name = "cell.join"

    def __init__(
        self,
        client: MqttClient,
        dispatcher: Dispatcher,
        clock: Clock,
        health: HealthRegistry,
        *,
        key: SigningKey,
        node: str,
        vehicle_credential: bytes,
        trust: TrustStore,
        position: Callable[[], tuple[float, float] | None],
        chain: Sequence[bytes] = (),
        credentials: CredentialStore | None = None,
        genesis: Iterable[Genesis] = (),
        trusted_hashes: Iterable[bytes] = (),
        require_known_genesis: bool = False,
        check_interval: float = 1.0,
        retry_after: float = 5.0,
        queue_max: int = 1024,
    ) -> None:
        self.client, self.dispatcher, self.clock, self.health = client, dispatcher, clock, health
        self.key = key
        self.did = didkey.did_key(key.public)
        self.node = topics.check_id(node, "node")
        self.vehicle_credential = bytes(vehicle_credential)
        own = decode_credential(self.vehicle_credential)
        if own.kind is not CredentialKind.VEHICLE or own.subject != self.did:
            raise ValueError(f"the vehicle credential is not for this device {self.did} ({own.kind} for {own.subject})")
        self.chain = [bytes(c) for c in chain]
        self.trust, self.credentials = trust, credentials
        self.position = position
        self.genesis = list(genesis)
        self.trusted_hashes = {bytes(h) for h in trusted_hashes}
        self.require_known_genesis = require_known_genesis
        self.check_interval, self.retry_after = check_interval, retry_after
        self.cells: dict[str, CellInfo] = {}
        self.current: Membership | None = None
        self.pending: _Pending | None = None
        self.backoff: dict[str, float] = {}
        self.rejected: dict[str, int] = {}
        self.last_refusal = ""
        self.changes = 0
        self.dropped = 0
        self._warned: set[tuple[str, str]] = set()
        self._callbacks: list[ChangeCallback] = []
        self._queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(maxsize=queue_max)
        dispatcher.on(topics.MessageKind.CELL, self._on_announce)
        dispatcher.on(topics.MessageKind.ADMISSION, self._on_admission)

    @property
    def current_cell(self) -> str | None:
        return None if self.current is None else self.current.cell.cell

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    # -- intake (dispatcher handlers: non-blocking) ----------------------------------------------

    def _put(self, item: tuple[str, str, bytes]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1

    def _on_announce(self, topic: topics.Topic, msg: Message) -> None:
        if msg.payload:  # an empty retained message clears a cell's announcement
            self._put(("announce", topic.cell, msg.payload))

    def _on_admission(self, topic: topics.Topic, msg: Message) -> None:
        if topic.node == self.node:
            self._put(("answer", topic.cell, msg.payload))

    # -- the service ---------------------------------------------------------------------------

    async def run(self) -> None:
        await self.client.subscribe(topics.kind_filter(topics.MessageKind.CELL))
        # every cell's answers to this node: acc/v1/cell/+/admission/{node}
        await self.client.subscribe(topics.kind_filter(topics.MessageKind.ADMISSION)[:-1] + self.node)
        self.health.degraded("cell", "no cell yet: listening for announcements")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ticker(), name="cell.join.tick")
            tg.create_task(self._loop(), name="cell.join.loop")

    async def _ticker(self) -> None:
        while True:
            await self.clock.sleep(self.check_interval)
            if self._queue.empty():
                self._put(("tick", "", b""))

    async def _loop(self) -> None:
        while True:
            what, cell, payload = await self._queue.get()
            if what == "announce":
                self.handle_announcement(payload)
            elif what == "answer":
                self.handle_answer(cell, payload)
            out = self.evaluate()
            if out is not None:
                await self.client.publish(*out)

    def handle_announcement(self, payload: bytes) -> CellInfo | None:
        now = self.clock.time()
        try:
            info = verify_announcement(
                payload,
                self.trust,
                now,
                genesis=self.genesis,
                trusted_hashes=self.trusted_hashes,
                require_known_genesis=self.require_known_genesis,
                credentials=self.credentials,
            )
        except AdmissionError as err:
            self.rejected[err.reason] = self.rejected.get(err.reason, 0) + 1
            key = (err.peer, str(err.reason))
            level = logging.DEBUG if key in self._warned else logging.WARNING
            self._warned.add(key)
            log.log(
                level, "admission: ignoring cell announcement from %s: %s: %s", err.peer or "?", err.reason, err.text
            )
            return None
        old = self.cells.get(info.cell)
        if old is None or info.issued >= old.issued or old.expires <= now:
            self.cells[info.cell] = info
        return info

    def handle_answer(self, cell: str, payload: bytes) -> AdmissionResult | None:
        if message_type(payload) != "resp":
            return None  # our own request, echoed by the broker
        pending = self.pending
        if pending is None or pending.cell.cell != cell:
            log.debug("admission: unexpected answer from cell %s", cell)
            return None
        now = self.clock.time()
        try:
            result = verify_response(
                payload, cell=pending.cell, obu=self.did, nonce=pending.nonce, now=now, skew=self.trust.skew
            )
        except AdmissionError as err:
            self.rejected[err.reason] = self.rejected.get(err.reason, 0) + 1
            log.warning("admission: ignoring answer from cell %s: %s: %s", cell, err.reason, err.text)
            return None
        self.pending = None
        if not result.admitted:
            self.backoff[cell] = now + self.retry_after
            self.last_refusal = f"{cell}: {result.reason}: {result.text}"[:300]
            log.warning("admission: cell %s REFUSED us: %s: %s", cell, result.reason, result.text)
            if self.current_cell == cell:  # a refused renewal ends the membership
                self.current = None
                self._changed(cell, None)
            if self.current is None:
                self.health.degraded("cell", f"refused by {cell}: {result.reason}")
            return result
        old = self.current_cell
        self.current = Membership(pending.cell, now, result.expires, result.genesis, dict(result.topics))
        self.backoff.pop(cell, None)
        self.health.ok("cell", f"in cell {cell} (rsu {pending.cell.rsu[:24]}...)")
        if old != cell:
            log.info("admission: joined cell %s (was %s)", cell, old)
            self._changed(old, cell)
        return result

    def _changed(self, old: str | None, new: str | None) -> None:
        self.changes += 1
        for cb in list(self._callbacks):
            try:
                cb(old, new)
            except Exception:  # noqa: BLE001 - a bad callback must not stop handover
                log.exception("admission: on_change callback failed")

    def evaluate(self) -> tuple[topics.Topic, bytes] | None:
        """Decide what to do at this position now: the request to publish, or None."""
        now = self.clock.time()
        cur = self.current
        if cur is not None and cur.expires <= now:
            log.warning("admission: admission to cell %s expired", cur.cell.cell)
            self.current = None
            self.health.degraded("cell", f"admission to {cur.cell.cell} expired")
            self._changed(cur.cell.cell, None)
            cur = None
        pos = self.position()
        if pos is None:
            return None
        lat, lon = pos
        live = {c.cell: c for c in self.cells.values() if c.expires + self.trust.skew > now}
        here = [c for c in live.values() if c.area.contains(lat, lon)]
        target: CellInfo | None = None
        if cur is not None and any(c.cell == cur.cell.cell for c in here):
            info = live[cur.cell.cell]
            renew_at = cur.expires - min(60.0, (cur.expires - cur.since) / 2)
            if now >= renew_at:
                target = info
        elif here:
            usable = [c for c in here if self.backoff.get(c.cell, 0.0) <= now]
            if usable:
                target = min(usable, key=lambda c: c.area.distance_m(lat, lon))
        elif cur is not None:
            log.info("admission: left cell %s (position outside every announced area)", cur.cell.cell)
            self.current = None
            self.health.degraded("cell", "outside every announced cell")
            self._changed(cur.cell.cell, None)
        if target is None:
            return None
        p = self.pending
        if p is not None and p.cell.cell == target.cell and now < p.sent + self.retry_after:
            return None  # waiting for the answer
        if p is not None and p.cell.cell == target.cell:
            log.warning("admission: no answer from cell %s within %.0f s; asking again", target.cell, self.retry_after)
        data, nonce = build_request(
            key=self.key,
            node=self.node,
            cell=target.cell,
            rsu=target.rsu,
            vehicle_credential=self.vehicle_credential,
            chain=self.chain,
            now=now,
        )
        self.pending = _Pending(target, nonce, now)
        log.info("admission: asking cell %s (rsu %s) to admit us", target.cell, target.rsu)
        return topics.admission(target.cell, self.node), data

    def status(self) -> dict[str, Any]:
        cur = self.current
        return {
            "role": "obu",
            "did": self.did,
            "node": self.node,
            "current_cell": self.current_cell,
            "admitted_until": None if cur is None else cur.expires,
            "chain_id": None if cur is None else cur.cell.chain_id,
            "rsu": None if cur is None else cur.cell.rsu,
            "broker": None if cur is None else str(cur.cell.broker),
            "pending": None if self.pending is None else self.pending.cell.cell,
            "cells": {c: info.to_json() for c, info in self.cells.items()},
            "rejected": dict(self.rejected),
            "last_refusal": self.last_refusal,
            "changes": self.changes,
            "dropped": self.dropped,
        }


# --------------------------------------------------------------------------------------------
# composition


def _trust(agent: Agent, genesis: Genesis | None) -> tuple[TrustStore, CredentialStore | None]:
    """The config's trust roots plus the genesis authorities (roles merged), its revocation list."""
    from ledger_lite.credentials import RevocationList

    t = agent.config.trust
    roots: dict[str, set[str]] = {}
    for did, roles in (genesis.authorities if genesis is not None else {}).items():
        roots.setdefault(did, set()).update(str(r) for r in roles)
    for did, roles in t.roots.items():
        roots.setdefault(did, set()).update([roles] if isinstance(roles, str) else [str(r) for r in roles])
    revocation = RevocationList.parse(Path(t.revocation_file).read_text()) if t.revocation_file else None
    store = TrustStore(roots, revocation, skew=t.skew)
    creds = (
        CredentialStore(p.read_bytes() for p in sorted(Path(t.credentials_dir).glob("*.cose")))
        if t.credentials_dir
        else None
    )
    return store, creds


def _position(agent: Agent) -> tuple[float, float] | None:
    state = agent.state_service.last if agent.state_service is not None else None
    if state is not None and state.lat is not None and state.lon is not None:
        return state.lat, state.lon
    fix = agent.gnss_service.last if agent.gnss_service is not None else None
    lat, lon = getattr(fix, "lat", None), getattr(fix, "lon", None)
    if isinstance(lat, float) and isinstance(lon, float):
        return lat, lon
    return None


def build_cell_service(agent: Agent) -> CellAnnouncer | CellJoiner | None:
    """The RSU's announcer (``cell.announce``) or the OBU's joiner (``cell.join``) from the
    agent's config, or None when neither is configured. Call after the MQTT client is built."""
    from .config import ConfigError

    cfg = agent.config
    c = cfg.cell
    if not (c.announce or c.join):
        return None
    if agent.identity is None or agent.mqtt is None or agent.dispatcher is None:
        agent.health.failed("cell", "needs a device key (acc keys init) and mqtt.enabled")
        return None
    key = agent.identity.key
    try:
        if c.announce:
            genesis = Genesis.from_json(Path(cfg.ledger.genesis_file).read_bytes())
            trust, creds = _trust(agent, genesis)
            area = (
                Area.circle(c.area_lat, c.area_lon, c.area_radius_m)
                if c.area_radius_m > 0
                else Area.from_polygon(c.area_polygon)
            )
            broker = Endpoint(
                c.broker_host or cfg.mqtt.host,
                c.broker_port or cfg.mqtt.port,
                cfg.mqtt.tls if c.broker_tls is None else c.broker_tls,
            )
            return CellAnnouncer(
                agent.mqtt,
                agent.dispatcher,
                agent.clock,
                agent.health,
                key=key,
                cell=cfg.mqtt.cell,
                area=area,
                genesis=genesis,
                broker=broker,
                validator_credential=Path(c.validator_credential).read_bytes(),
                trust=trust,
                credentials=creds,
                interval=c.announce_interval,
                validity=c.announce_validity,
                admission_ttl=c.admission_ttl,
            )
        known = (
            [Genesis.from_json(p.read_bytes()) for p in sorted(Path(c.genesis_dir).glob("*.json"))]
            if c.genesis_dir
            else []
        )
        trust, creds = _trust(agent, None)
        return CellJoiner(
            agent.mqtt,
            agent.dispatcher,
            agent.clock,
            agent.health,
            key=key,
            node=cfg.mqtt.client_id or agent.node_id,
            vehicle_credential=Path(c.vehicle_credential).read_bytes(),
            trust=trust,
            position=lambda: _position(agent),
            credentials=creds,
            genesis=known,
            trusted_hashes=[bytes.fromhex(h) for h in c.genesis_hashes],
            require_known_genesis=c.require_known_genesis,
            check_interval=c.check_interval,
            retry_after=c.retry_after,
        )
    except (OSError, LedgerError, ValueError) as err:
        raise ConfigError([f"cell: {err}"], "cell") from err


def build_cell_services(agent: Agent) -> list[tuple[str, Callable[[], Any]]]:
    """``[(name, run)]`` for the supervisor (empty when the cell section asks for nothing)."""
    service = build_cell_service(agent)
    return [] if service is None else [(service.name, service.run)]
