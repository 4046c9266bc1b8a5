"""Attestations: what a device signs about what it saw, and the one registry of their kinds.

An attestation is a tagged COSE_Sign1 (``cose``) whose protected header is exactly
``{1: alg, 3: kind, 4: kid}`` (kid = the issuer's verification method, e.g. ``did:key:z..#z..``)
and whose payload is deterministic CBOR (``cbor``): the envelope map

=========  ===========================================================================  ========
key        value                                                                        required
=========  ===========================================================================  ========
``v``      format version, 1                                                            yes
``iss``    issuer: the device DID, or ``pseudonym:<hex certificate id>``                yes
``seq``    per-issuer sequence number, 1, 2, 3, ...                                     yes
``prev``   SHA-256 of the previous attestation's COSE bytes (32 zero bytes for seq 1)   yes
``kind``   the message kind (equal to the content type)                                 yes
``time``   UTC, integer milliseconds since the Unix epoch                               yes
``tsrc``   where the time came from: ``gnss`` (a GNSS fix), ``holdover`` (a clock       yes
           disciplined by GNSS, fix lost), ``system`` (the OS clock)
``pos``    ``{lat, lon, ?alt, ?acc}``: WGS84 in 0.1 microdegrees, altitude above MSL    no
           and accuracy (95 %) in centimetres -- integers
``model``  version of the model that produced the body, where the kind allows one      per kind
``body``   the kind's fields (schemas below)                                            yes
=========  ===========================================================================  ========

The attestation id is the SHA-256 of its COSE bytes; receivers accept only the canonical
encoding (deterministic CBOR, empty unprotected header), so one signed attestation has one id.

**Numbers on the wire are integers.** Real-valued fields are ``fixed``: an SI value with a
stated resolution, sent as ``round(value * scale)`` -- ETSI CAM/DENM's choice (speed 0.01 m/s,
acceleration 0.01 m/s^2, yaw rate 0.01 deg/s, heading 0.1 deg, latitude 0.1 microdegree), so an
ASN.1 bridge is a codec, every encoder agrees on the bytes, and encoding stays cheap (no
shortest-float search). Callers give and get SI floats; values are exact to the resolution.

Time and position come from the caller: the agent maps ``GnssFix.time`` and the fused position
(``VehicleState``) to ``time`` + ``TimeSource.GNSS`` while the fix is valid, ``HOLDOVER`` after.
The kid's DID must be ``iss``: did:key issuers verify on their own (``did_key_resolver``);
pseudonymous ones through ``pseudonym_resolver`` over verified pseudonym certificates.

``AttestationBuilder`` signs; its ``state`` (next seq, previous hash) is what the agent persists
(or recovers with ``AttestationBuilder.resume(key, did, last_attestation)``): persist it, or
the attestation itself (the outbox), before sending, or a restart reuses a sequence number and
receivers see a fork (``ReplayError``).
``AttestationReceiver`` keeps, per issuer, the highest seq and the last hash: it rejects replays
(``ReplayError``) and reports, without rejecting, gaps in the sequence and broken hash links.
``decode_attestation`` parses and validates without checking the signature (for display);
``verify_attestation`` also checks the signature, without replay state.

Pure: no files, no clocks; ``now`` is an argument (seconds since the Unix epoch).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from . import cbor, cose, didkey
from .errors import CoseError, CredentialError, ReplayError, SchemaError, ValidityError
from .keys import SigningKey, VerifyKey

__all__ = [
    "FORMAT_VERSION",
    "PSEUDONYM_PREFIX",
    "KINDS",
    "ZERO_HASH",
    "Attestation",
    "AttestationBuilder",
    "AttestationReceiver",
    "BrokenLink",
    "BuilderState",
    "Field",
    "Kind",
    "Position",
    "Received",
    "SenderState",
    "SeqGap",
    "TimeSource",
    "attestation_id",
    "decode_attestation",
    "did_key_resolver",
    "kid_for",
    "pseudonym_issuer",
    "pseudonym_resolver",
    "validate_body",
    "verify_attestation",
]

FORMAT_VERSION: Final = 1
ZERO_HASH: Final = bytes(32)
_MAX_U63 = (1 << 63) - 1
#: 9999-12-31T23:59:59.999Z: the last instant a datetime can show
_MAX_TIME_MS = 253_402_300_799_999
_DID_KEY = "did:key:"
#: issuer prefix of attestations signed with a pseudonym certificate (then hex of its id)
PSEUDONYM_PREFIX: Final = "pseudonym:"

#: kid (text) -> the key that signs under it
KeyResolver = Callable[[str], VerifyKey]


class TimeSource(StrEnum):
    """Where an attestation's time came from."""

    #: UTC from a valid GNSS fix
    GNSS = "gnss"
    #: the local clock, disciplined by GNSS until the fix was lost
    HOLDOVER = "holdover"
    #: the operating system's clock (NTP or nothing)
    SYSTEM = "system"


# --------------------------------------------------------------------------------------------
# schemas

_Checker = Callable[[Any], Any]
_head = cbor.encode_head


def _text(s: str) -> bytes:
    b = s.encode()
    return _head(3, len(b)) + b


@dataclass(frozen=True)
class Field:
    """One field of a kind's body.

    ``type`` is one of

    * ``uint`` (0 .. 2^63-1 unless ``min``/``max`` say otherwise), ``int``;
    * ``fixed``: a real number in ``unit`` with a resolution of ``1/scale``; the wire carries
      the integer ``round(value * scale)`` (ETSI CAM/DENM style: speeds in 0.01 m/s, positions
      in 0.1 microdegrees), so encodings are exact, compact and the same in every language.
      Building accepts int or float; decoding gives a float;
    * ``bool``, ``text`` (``min``/``max`` bound its length, ``pattern`` a full match),
      ``enum`` (text from ``choices``), ``bytes`` (exactly ``length`` bytes when given),
      ``text_list`` (at most ``length`` items, each matching ``pattern``).

    ``min``/``max`` are inclusive, in ``unit``.
    """

    name: str
    type: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    required: bool = True
    scale: int = 1
    choices: tuple[str, ...] = ()
    length: int | None = None
    pattern: str | None = None
    doc: str = ""

    def describe(self) -> str:
        """One line for people: name, type, unit, range, resolution, required/optional."""
        parts = [self.type]
        if self.unit:
            parts.append(f"({self.unit})")
        if self.min is not None or self.max is not None:
            parts.append(
                f"[{'' if self.min is None else f'{self.min:g}'}..{'' if self.max is None else f'{self.max:g}'}]"
            )
        if self.type == "fixed":
            parts.append(f"resolution {1 / self.scale:g}")
        if self.choices:
            parts.append("{" + ", ".join(self.choices) + "}")
        if self.length is not None:
            parts.append(f"length {self.length}")
        if self.pattern:
            parts.append(f"/{self.pattern}/")
        parts.append("required" if self.required else "optional")
        return f"{self.name}: {' '.join(parts)}" + (f" -- {self.doc}" if self.doc else "")


_FIELD_TYPES = frozenset({"uint", "int", "fixed", "bool", "text", "enum", "bytes", "text_list"})


def _range_msg(f: Field) -> str:
    lo = "-inf" if f.min is None else f"{f.min:g}"
    hi = "inf" if f.max is None else f"{f.max:g}"
    return f"[{lo}, {hi}]" + (f" {f.unit}" if f.unit else "")


def _checkers(f: Field, kind: str) -> tuple[_Checker, _Checker]:
    """(encode, decode) for one field: encode takes the caller's value and returns the wire
    value, decode takes a decoded wire value and returns the value callers see. Both raise
    SchemaError naming the field; neither lets anything else escape."""
    name, lo, hi = f.name, f.min, f.max

    def fail(msg: str) -> SchemaError:
        return SchemaError(msg, field=name, kind=kind)

    def tname(v: Any) -> str:
        return type(v).__name__

    if f.type in ("uint", "int"):
        lo_i = 0 if f.type == "uint" and lo is None else lo
        lo_i = -_MAX_U63 - 1 if lo_i is None else lo_i
        hi_i = _MAX_U63 if hi is None else hi

        def check_int(v: Any) -> Any:
            if type(v) is not int:
                raise fail(f"expected an integer, got {tname(v)}")
            if not lo_i <= v <= hi_i:
                raise fail(f"{v} is out of range {_range_msg(f)}")
            return v

        return check_int, check_int
    if f.type == "fixed":
        scale = f.scale
        lo_f = -math.inf if lo is None else lo
        hi_f = math.inf if hi is None else hi
        lo_w = -_MAX_U63 - 1 if lo is None else round(lo * scale)
        hi_w = _MAX_U63 if hi is None else round(hi * scale)

        def encode_fixed(v: Any) -> Any:
            t = type(v)
            if t is not float and t is not int:
                raise fail(f"expected a number, got {tname(v)}")
            if not lo_f <= v <= hi_f:  # also false for NaN
                raise fail(f"{v!r} is out of range {_range_msg(f)}")
            return round(v * scale)

        def decode_fixed(v: Any) -> Any:
            if type(v) is not int:
                raise fail(f"expected an integer count of 1/{scale} {f.unit}, got {tname(v)}".replace("  ", " "))
            if not lo_w <= v <= hi_w:
                raise fail(f"{v / scale!r} is out of range {_range_msg(f)}")
            return v / scale

        return encode_fixed, decode_fixed
    if f.type == "bool":

        def check_bool(v: Any) -> Any:
            if type(v) is not bool:
                raise fail(f"expected a bool, got {tname(v)}")
            return v

        return check_bool, check_bool
    if f.type == "enum":
        choices = frozenset(f.choices)

        def check_enum(v: Any) -> Any:
            if type(v) is not str or v not in choices:
                shown = repr(v) if type(v) is str else tname(v)
                raise fail(f"{shown} is not one of {', '.join(f.choices)}")
            return v

        return check_enum, check_enum
    if f.type == "text":
        tlo = 0 if lo is None else int(lo)
        thi = 1 << 16 if hi is None else int(hi)
        rx = re.compile(f.pattern) if f.pattern else None

        def check_text(v: Any) -> Any:
            if type(v) is not str:
                raise fail(f"expected text, got {tname(v)}")
            if not tlo <= len(v) <= thi:
                raise fail(f"text of {len(v)} characters, expected {tlo} to {thi}")
            if rx is not None and rx.fullmatch(v) is None:
                raise fail(f"{v!r} does not match {f.pattern}")
            return v

        return check_text, check_text
    if f.type == "bytes":
        size = f.length

        def check_bytes(v: Any) -> Any:
            if type(v) is not bytes:
                raise fail(f"expected a byte string, got {tname(v)}")
            if size is not None and len(v) != size:
                raise fail(f"expected {size} bytes, got {len(v)}")
            return v

        def encode_bytes(v: Any) -> Any:
            return check_bytes(bytes(v) if isinstance(v, bytearray | memoryview) else v)

        return encode_bytes, check_bytes
    if f.type == "text_list":
        max_items = 1 << 16 if f.length is None else f.length
        item_rx = re.compile(f.pattern) if f.pattern else None

        def check_list(v: Any) -> Any:
            if type(v) is not list:
                raise fail(f"expected a list, got {tname(v)}")
            if len(v) > max_items:
                raise fail(f"{len(v)} items, at most {max_items}")
            for i, item in enumerate(v):
                if type(item) is not str:
                    raise SchemaError(f"expected text, got {tname(item)}", field=f"{name}[{i}]", kind=kind)
                if item_rx is not None and item_rx.fullmatch(item) is None:
                    raise SchemaError(f"{item!r} does not match {f.pattern}", field=f"{name}[{i}]", kind=kind)
            return v

        def encode_list(v: Any) -> Any:
            return check_list(list(v) if type(v) is tuple else v)

        return encode_list, check_list
    raise ValueError(f"field {name}: unknown type {f.type!r}")  # a bug in a Kind definition


def _cbor_encoder(f: Field, encode: _Checker) -> Callable[[Any], bytes]:
    """value -> its wire value's deterministic CBOR bytes (equal to ``cbor.dumps``)."""
    if f.type in ("uint", "int", "fixed"):
        # the checks of ``encode`` inlined for the common case; anything else goes through it
        lo = -math.inf if f.min is None else f.min
        hi = math.inf if f.max is None else f.max
        if f.type == "uint":
            lo = max(lo, 0)
        lo, hi = max(lo, -_MAX_U63 - 1), min(hi, _MAX_U63)
        scale = f.scale
        fixed = f.type == "fixed"

        def enc_int(v: Any) -> bytes:
            t = type(v)
            if (t is int or (fixed and t is float)) and lo <= v <= hi:
                w = round(v * scale) if fixed else v
            else:
                w = encode(v)  # raises SchemaError
            return _head(0, w) if w >= 0 else _head(1, -1 - w)

        return enc_int
    if f.type in ("text", "enum"):

        def enc_text(v: Any) -> bytes:
            return _text(encode(v))

        return enc_text
    if f.type == "bytes":

        def enc_bytes(v: Any) -> bytes:
            w: bytes = encode(v)
            return _head(2, len(w)) + w

        return enc_bytes
    if f.type == "bool":

        def enc_bool(v: Any) -> bytes:
            return b"\xf5" if encode(v) else b"\xf4"

        return enc_bool

    def enc_other(v: Any) -> bytes:
        return cbor.dumps(encode(v))

    return enc_other


_Rule = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True)
class Kind:
    """A message kind: its body fields, whether an envelope ``model`` version is
    ``required``/``optional``/``forbidden``, and cross-field rules. A rule gets the body in
    callers' units after every field passed its own checks, compares fixed values at their
    resolution (``_at_resolution``), so it judges what is signed, and raises SchemaError."""

    name: str
    fields: tuple[Field, ...]
    doc: str = ""
    model: str = "forbidden"
    rules: tuple[_Rule, ...] = ()
    _encoders: dict[str, _Checker] = field(init=False, repr=False, compare=False)
    _decoders: dict[str, _Checker] = field(init=False, repr=False, compare=False)
    _required: frozenset[str] = field(init=False, repr=False, compare=False)
    _to_cbor: tuple[tuple[str, bytes, Callable[[Any], bytes]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model not in ("required", "optional", "forbidden"):
            raise ValueError(f"kind {self.name}: model must be required/optional/forbidden")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"kind {self.name}: duplicate field names")
        for f in self.fields:
            if f.type not in _FIELD_TYPES:
                raise ValueError(f"kind {self.name}: field {f.name} has unknown type {f.type!r}")
            if f.type == "fixed" and f.scale < 1:
                raise ValueError(f"kind {self.name}: field {f.name} needs a scale >= 1")
        pairs = {f.name: _checkers(f, self.name) for f in self.fields}
        object.__setattr__(self, "_encoders", {k: v[0] for k, v in pairs.items()})
        object.__setattr__(self, "_decoders", {k: v[1] for k, v in pairs.items()})
        object.__setattr__(self, "_required", frozenset(f.name for f in self.fields if f.required))
        # (name, encoded key, value -> CBOR bytes) in deterministic key order, for encode_cbor
        plan = sorted((cbor.dumps(f.name), f.name, _cbor_encoder(f, pairs[f.name][0])) for f in self.fields)
        object.__setattr__(self, "_to_cbor", tuple((name, kb, fn) for kb, name, fn in plan))

    def _apply(self, body: Any, checkers: dict[str, _Checker]) -> dict[str, Any]:
        if type(body) is not dict:
            if not isinstance(body, Mapping):
                raise SchemaError(f"body must be a map, got {type(body).__name__}", field="body", kind=self.name)
            body = dict(body)
        out: dict[str, Any] = {}
        for key, value in body.items():
            chk = checkers.get(key) if type(key) is str else None
            if chk is None:
                raise SchemaError(f"unknown field {key!r}", field=str(key) or repr(key), kind=self.name)
            out[key] = chk(value)
        if len(out) < len(self._required) or not self._required <= out.keys():
            missing = sorted(self._required - out.keys())
            raise SchemaError("required field is missing", field=missing[0], kind=self.name)
        return out

    def encode_cbor(self, body: Any) -> bytes:
        """``cbor.dumps(self.encode(body))`` in one pass (the builder's hot path)."""
        if type(body) is not dict:
            if not isinstance(body, Mapping):
                raise SchemaError(f"body must be a map, got {type(body).__name__}", field="body", kind=self.name)
            body = dict(body)
        n = 0
        parts = [b""]
        for name, kb, fn in self._to_cbor:
            if name in body:
                parts.append(kb)
                parts.append(fn(body[name]))
                n += 1
        if n != len(body):  # keys that are not fields
            self._apply(body, self._encoders)  # raises, naming the unknown key
        if n < len(self._required) or not self._required <= body.keys():
            missing = sorted(self._required - body.keys())
            raise SchemaError("required field is missing", field=missing[0], kind=self.name)
        for rule in self.rules:
            rule(body)
        parts[0] = _head(5, n)
        return b"".join(parts)

    def encode(self, body: Any) -> dict[str, Any]:
        """Check a body given in callers' units; return its wire form. SchemaError names the field."""
        wire = self._apply(body, self._encoders)
        for rule in self.rules:
            rule(body)
        return wire

    def decode(self, wire: Any) -> dict[str, Any]:
        """Strictly check a decoded wire body; return it in callers' units (floats for fixed)."""
        body = self._apply(wire, self._decoders)
        for rule in self.rules:
            rule(body)
        return body


def _at_resolution(value: float, scale: int) -> int:
    """A fixed field's value as it is signed (the same from callers' and from decoded values)."""
    return round(value * scale)


def _speeding_needs_limit(body: Mapping[str, Any]) -> None:
    if body["event"] == "speeding":
        limit = body.get("speed_limit")
        if limit is None:
            raise SchemaError("a speeding event needs the speed limit", field="speed_limit", kind="driving_event")
        if _at_resolution(body["speed"], 100) <= _at_resolution(limit, 100):
            raise SchemaError("speed is not above the speed limit", field="speed", kind="driving_event")


def _max_not_below_mean(body: Mapping[str, Any]) -> None:
    if _at_resolution(body["speed_max"], 100) < _at_resolution(body["speed_mean"], 100):
        raise SchemaError("speed_max is below speed_mean", field="speed_max", kind="sensor_summary")


def _hash(name: str, *, required: bool = True, doc: str = "") -> Field:
    return Field(name, "bytes", "SHA-256", length=32, required=required, doc=doc)


def _fixed(name: str, unit: str, lo: float, hi: float, scale: int, *, required: bool = True, doc: str = "") -> Field:
    return Field(name, "fixed", unit, lo, hi, required=required, scale=scale, doc=doc)


def _ratio(name: str, *, required: bool = True, doc: str = "") -> Field:
    return _fixed(name, "", 0.0, 1.0, 1000, required=required, doc=doc)


def _accel(name: str, *, required: bool = True, doc: str = "") -> Field:
    return _fixed(name, "m/s^2", -30.0, 30.0, 100, required=required, doc=doc)


def _speed(name: str, *, required: bool = True, doc: str = "") -> Field:
    return _fixed(name, "m/s", 0.0, 150.0, 100, required=required, doc=doc)


def _seconds(name: str, lo: float, hi: float, *, required: bool = True, doc: str = "") -> Field:
    return _fixed(name, "s", lo, hi, 1000, required=required, doc=doc)


#: The one registry of message kinds (ETSI-like resolutions: 0.01 m/s, 0.01 m/s^2, 0.1 udeg).
KINDS: Final[Mapping[str, Kind]] = {
    k.name: k
    for k in (
        Kind(
            "driving_event",
            (
                Field(
                    "event",
                    "enum",
                    choices=("harsh_brake", "harsh_accel", "harsh_corner", "lane_change", "speeding", "fatigue"),
                ),
                _ratio("severity", doc="0 = barely over the threshold, 1 = the worst the detector rates"),
                _seconds("duration", 0.0, 3600.0),
                _speed("speed", doc="at the start of the event"),
                _accel("accel_long", required=False, doc="peak, forward positive"),
                _accel("accel_lat", required=False, doc="peak, left positive (ISO 8855)"),
                _fixed("yaw_rate", "deg/s", -720.0, 720.0, 100, required=False, doc="peak, counter-clockwise positive"),
                _speed("speed_limit", required=False, doc="required for speeding"),
                _ratio("confidence", required=False, doc="the detector's confidence"),
            ),
            "A driving-behaviour event from the rules or the behaviour model.",
            model="optional",
            rules=(_speeding_needs_limit,),
        ),
        Kind(
            "sensor_summary",
            (
                _seconds("duration", 0.001, 86400.0, doc="length of the summarised window"),
                Field("samples", "uint", doc="VehicleState snapshots in the window"),
                _fixed("distance", "m", 0.0, 1e7, 100),
                _speed("speed_mean"),
                _speed("speed_max"),
                _accel("accel_long_min", required=False),
                _accel("accel_long_max", required=False),
                _fixed("accel_lat_max", "m/s^2", 0.0, 30.0, 100, required=False, doc="largest magnitude"),
                _ratio("gnss_fix_ratio", required=False, doc="share of the window with a GNSS fix"),
                _seconds("dead_reckoning", 0.0, 86400.0, required=False, doc="time dead-reckoned"),
                Field("can_frames", "uint", required=False),
                Field("can_errors", "uint", required=False),
                Field("events", "uint", required=False, doc="driving events attested in the window"),
            ),
            "Statistics of the vehicle's sensors over a window.",
            rules=(_max_not_below_mean,),
        ),
        Kind(
            "clip_evidence",
            (
                _hash("sha256", doc="of the clip file as stored on the device"),
                _seconds("duration", 0.04, 600.0),
                Field("size", "uint", "bytes", 1, 1 << 40),
                Field("format", "enum", choices=("mjpeg", "h264", "h265", "jpeg_seq", "png_seq")),
                Field("camera", "text", min=1, max=32, pattern=r"[A-Za-z0-9_.-]+", doc="the agent's camera name"),
                Field("width", "uint", "px", 1, 16384, required=False),
                Field("height", "uint", "px", 1, 16384, required=False),
                _hash("event", required=False, doc="id of the attestation this clip is evidence for"),
            ),
            "The hash of a camera clip kept on the device (the clip itself is not sent).",
        ),
        Kind(
            "fl_update_ref",
            (
                Field("round", "uint", doc="federated-learning round number"),
                _hash("model_hash", doc="of the base model the update was trained on"),
                _hash("update_hash", doc="of the (clipped, maybe masked) update"),
                Field("samples", "uint", min=1, doc="local training examples"),
                _fixed("norm", "", 0.0, 1e6, 1_000_000, required=False, doc="L2 norm after clipping"),
                Field("masked", "bool", required=False, doc="secure-aggregation masked"),
            ),
            "A reference to a federated-learning update (the update travels separately).",
            model="optional",
        ),
        Kind(
            "map_observation",
            (
                Field(
                    "type",
                    "enum",
                    choices=(
                        "pothole",
                        "road_works",
                        "obstacle",
                        "lane_closure",
                        "accident",
                        "ice",
                        "flooding",
                        "speed_limit_sign",
                        "stop_sign",
                        "traffic_light",
                    ),
                ),
                _fixed("lat", "deg", -90.0, 90.0, 10_000_000, doc="of the observed object, WGS84"),
                _fixed("lon", "deg", -180.0, 180.0, 10_000_000),
                _ratio("confidence"),
                _fixed("heading", "deg", 0.0, 360.0, 10, required=False, doc="road direction it applies to"),
                _fixed("extent", "m", 0.0, 10000.0, 100, required=False),
                _fixed("value", "", -1e6, 1e6, 1000, required=False, doc="e.g. a sign's speed limit in m/s"),
            ),
            "Something on or beside the road, for the map.",
            model="optional",
        ),
        Kind(
            "dtc_report",
            (
                Field("codes", "text_list", length=64, pattern=r"[PCBU][0-3][0-9A-F]{3}", doc="SAE J2012 DTCs"),
                Field("mil", "bool", doc="malfunction indicator lamp on"),
                _fixed("distance_with_mil", "m", 0.0, 1e8, 1, required=False),
            ),
            "OBD-II diagnostic trouble codes (mode 03) and the MIL state.",
        ),
    )
}


def validate_body(kind: str, body: Any) -> dict[str, Any]:
    """Strictly validate a decoded (wire) body of ``kind`` and return it in callers' units;
    SchemaError names the field."""
    spec = KINDS.get(kind) if type(kind) is str else None
    if spec is None:
        raise SchemaError(f"unknown message kind {kind!r}", field="kind")
    return spec.decode(body)


# --------------------------------------------------------------------------------------------
# envelope


@dataclass(frozen=True, slots=True)
class Position:
    """WGS84 degrees; ``alt`` metres above mean sea level; ``accuracy`` metres (95 %).
    On the wire: lat/lon in 0.1 microdegrees, alt and accuracy in centimetres (integers)."""

    lat: float
    lon: float
    alt: float | None = None
    accuracy: float | None = None


_POS = Kind(
    "pos",
    (
        _fixed("lat", "deg", -90.0, 90.0, 10_000_000),
        _fixed("lon", "deg", -180.0, 180.0, 10_000_000),
        _fixed("alt", "m", -1000.0, 20000.0, 100, required=False),
        _fixed("acc", "m", 0.0, 1e6, 100, required=False),
    ),
)


def _pos_error(err: SchemaError) -> SchemaError:
    name = "pos" if err.field == "body" else f"pos.{err.field}"
    return SchemaError(str(err).removeprefix("pos.").replace("body must", "position must"), field=name)


def _int_cbor(w: int) -> bytes:
    return _head(0, w) if w >= 0 else _head(1, -1 - w)


def _encode_position(p: Position) -> bytes:
    """``cbor.dumps(_POS.encode(...))`` of a position; the common all-float case inline."""
    lat, lon, alt, acc = p.lat, p.lon, p.alt, p.accuracy
    if (
        type(lat) is float
        and type(lon) is float
        and -90.0 <= lat <= 90.0
        and -180.0 <= lon <= 180.0
        and (alt is None or (type(alt) is float and -1000.0 <= alt <= 20000.0))
        and (acc is None or (type(acc) is float and 0.0 <= acc <= 1e6))
    ):
        # keys in deterministic order: acc, alt, lat, lon; scales as in _POS
        parts = [_head(5, 2 + (alt is not None) + (acc is not None))]
        if acc is not None:
            parts += (b"\x63acc", _int_cbor(round(acc * 100)))
        if alt is not None:
            parts += (b"\x63alt", _int_cbor(round(alt * 100)))
        parts += (b"\x63lat", _int_cbor(round(lat * 10_000_000)), b"\x63lon", _int_cbor(round(lon * 10_000_000)))
        return b"".join(parts)
    return _encode_position_checked(p)


def _encode_position_checked(p: Position) -> bytes:
    m: dict[str, Any] = {"lat": p.lat, "lon": p.lon}
    if p.alt is not None:
        m["alt"] = p.alt
    if p.accuracy is not None:
        m["acc"] = p.accuracy
    try:
        return _POS.encode_cbor(m)
    except SchemaError as err:
        raise _pos_error(err) from None


def _decode_position(wire: Any) -> Position:
    try:
        m = _POS.decode(wire)
    except SchemaError as err:
        raise _pos_error(err) from None
    return Position(m["lat"], m["lon"], m.get("alt"), m.get("acc"))


@dataclass(frozen=True, slots=True)
class Attestation:
    """A decoded, schema-valid attestation (verified when it came from a verify/accept)."""

    id: bytes
    kind: str
    issuer: str
    seq: int
    prev: bytes
    time_ms: int
    time_source: TimeSource
    position: Position | None
    model: str | None
    body: Mapping[str, Any]
    kid: str
    alg: int
    raw: bytes = field(repr=False)

    @property
    def time(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        return self.time_ms / 1000.0

    @property
    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.time_ms / 1000.0, UTC)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly dict (bytes as hex, time as ISO 8601)."""
        pos = None
        if self.position is not None:
            p = self.position
            pos = {"lat": p.lat, "lon": p.lon, "alt": p.alt, "accuracy": p.accuracy}
        return {
            "id": self.id.hex(),
            "kind": self.kind,
            "issuer": self.issuer,
            "kid": self.kid,
            "alg": self.alg,
            "seq": self.seq,
            "prev": self.prev.hex(),
            "time": self.datetime.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "time_source": str(self.time_source),
            "position": pos,
            "model": self.model,
            "body": {k: v.hex() if isinstance(v, bytes) else v for k, v in self.body.items()},
        }


def attestation_id(data: bytes) -> bytes:
    """The attestation id: SHA-256 of the COSE bytes."""
    return hashlib.sha256(data).digest()


def kid_for(did: str) -> str:
    """The kid an issuer signs with: a did:key's verification method (``did:key:z..#z..``);
    any other issuer (a pseudonym, ``pseudonym_issuer()``) is its own kid."""
    if did.startswith(_DID_KEY):
        return didkey.verification_method_id(did)
    return did


def pseudonym_issuer(cert_id: bytes) -> str:
    """The issuer (and kid) of attestations signed with a pseudonym certificate's key."""
    return PSEUDONYM_PREFIX + cert_id.hex()


def pseudonym_resolver(keys: Mapping[bytes, VerifyKey]) -> KeyResolver:
    """A kid -> key resolver over verified pseudonym certificates (``{cert_id: cert.key}``,
    from ``pseudonym.verify_pseudonym_cert``)."""

    def resolve(kid: str) -> VerifyKey:
        if not kid.startswith(PSEUDONYM_PREFIX):
            raise CredentialError(f"{kid[:80]!r} is not a pseudonym issuer")
        try:
            key = keys.get(bytes.fromhex(kid[len(PSEUDONYM_PREFIX) :]))
        except ValueError:
            key = None
        if key is None:
            raise CredentialError(f"no verified pseudonym certificate for {kid[:80]!r}")
        return key

    return resolve


_SIG1 = b"\x84\x6aSignature1"
_ENVELOPE_KEYS = frozenset({"v", "iss", "seq", "prev", "kind", "time", "tsrc", "body"})
_ENVELOPE_OPTIONAL = frozenset({"pos", "model"})
_TIME_SOURCES = {s.value: s for s in TimeSource}
_ABSENT: Any = object()
_PROTECTED_LABELS = frozenset({cose.HDR_ALG, cose.HDR_CONTENT_TYPE, cose.HDR_KID})


def _time_ms(time: float | datetime) -> int:
    if isinstance(time, datetime):
        if time.tzinfo is None:
            raise ValueError("attestation time must be timezone-aware (UTC)")
        seconds = time.timestamp()
    else:
        seconds = float(time)
    if not 0.0 <= seconds <= _MAX_TIME_MS / 1000.0:  # also false for NaN
        raise SchemaError(f"time {time!r} is out of range (1970 .. 9999)", field="time")
    return round(seconds * 1000.0)


@dataclass(frozen=True, slots=True)
class BuilderState:
    """What a builder needs to continue a chain: persist it with every attestation sent."""

    next_seq: int
    prev_hash: bytes


class AttestationBuilder:
    """Builds and signs one issuer's chain of attestations.

    ``did`` is the device DID (a did:key, which must be the key's own) or a pseudonym issuer
    (``pseudonym_issuer(cert_id)``). ``kid`` defaults to ``kid_for(did)``; its DID part must be
    ``did``. Not thread-safe: one builder per issuer, used from one task.
    """

    def __init__(
        self,
        key: SigningKey,
        did: str,
        *,
        start_seq: int = 1,
        prev_hash: bytes = ZERO_HASH,
        kid: str | None = None,
    ) -> None:
        if not 1 <= start_seq <= _MAX_U63:
            raise ValueError(f"start_seq must be >= 1 (got {start_seq})")
        if len(prev_hash) != 32:
            raise ValueError(f"prev_hash must be 32 bytes (got {len(prev_hash)})")
        if start_seq == 1 and prev_hash != ZERO_HASH:
            raise ValueError("the first attestation (seq 1) must have the zero previous hash")
        if did.startswith(_DID_KEY) and didkey.did_key(key.public) != did:
            raise ValueError(f"{did} is not the DID of this key ({key.public.fingerprint()})")
        if not 1 <= len(did) <= 256:
            raise ValueError("an issuer is 1 to 256 characters")
        kid = kid if kid is not None else kid_for(did)
        if kid.partition("#")[0] != did:
            raise ValueError(f"kid {kid!r} does not name a key of {did}")
        self._key = key
        self.did = did
        self.kid = kid
        self._seq = start_seq
        self._prev = bytes(prev_hash)
        self._alg = key.alg
        self._kid_bytes = self.kid.encode()
        # payload prefix after the map head: "v": 1, "iss": <did>
        self._iss_frag = b"\x61v" + _head(0, FORMAT_VERSION) + b"\x63iss" + _text(did)
        self._kinds: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._models: dict[str, bytes] = {}
        self._tsrc: dict[str, bytes] = {s.value: b"\x64tsrc" + _text(s.value) for s in TimeSource}

    @classmethod
    def resume(cls, key: SigningKey, did: str, last: bytes, *, kid: str | None = None) -> AttestationBuilder:
        """A builder that continues after ``last`` (this issuer's newest attestation)."""
        att = decode_attestation(last)
        if att.issuer != did:
            raise ValueError(f"the last attestation was issued by {att.issuer}, not {did}")
        return cls(key, did, start_seq=att.seq + 1, prev_hash=att.id, kid=kid)

    @property
    def state(self) -> BuilderState:
        return BuilderState(self._seq, self._prev)

    def _kind_frags(self, kind: str) -> tuple[bytes, bytes, bytes]:
        frags = self._kinds.get(kind)
        if frags is None:
            protected = cbor.dumps(
                {cose.HDR_ALG: self._alg, cose.HDR_CONTENT_TYPE: kind, cose.HDR_KID: self._kid_bytes}
            )
            prot = _head(2, len(protected)) + protected
            frags = (b"\x64kind" + _text(kind), _SIG1 + prot + b"\x40", b"\xd2\x84" + prot + b"\xa0")
            self._kinds[kind] = frags
        return frags

    def build(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        time: float | datetime,
        time_source: TimeSource | str,
        position: Position | None = None,
        model: str | None = None,
    ) -> bytes:
        """Validate ``body`` against ``kind``'s schema, sign, advance the chain; the COSE bytes.

        ``time``: seconds since the Unix epoch (UTC) or an aware datetime. The attestation's id
        is ``attestation_id(result)`` (also ``state.prev_hash`` right after)."""
        spec = KINDS.get(kind)
        if spec is None:
            raise SchemaError(f"unknown message kind {kind!r}", field="kind")
        body_cbor = spec.encode_cbor(body)
        tsrc = self._tsrc.get(time_source) if isinstance(time_source, str) else None
        if tsrc is None:
            raise SchemaError(f"unknown time source {time_source!r}", field="tsrc", kind=kind)
        if model is None:
            if spec.model == "required":
                raise SchemaError("this kind needs the model version", field="model", kind=kind)
            model_frag = b""
        else:
            if spec.model == "forbidden":
                raise SchemaError("this kind carries no model version", field="model", kind=kind)
            model_frag = self._models.get(model, b"")
            if not model_frag:
                if not 1 <= len(model) <= 64:
                    raise SchemaError("model version must be 1 to 64 characters", field="model", kind=kind)
                model_frag = self._models[model] = b"\x65model" + _text(model)
        if position is None:
            pos_frag = b""
        else:
            pos_frag = b"\x63pos" + _encode_position(position)
        t = _time_ms(time)
        kind_frag, sig_prefix, cose_prefix = self._kind_frags(kind)
        seq = self._seq
        # deterministic key order: v, iss, pos, seq, body, kind, prev, time, tsrc, model
        payload = b"".join(
            (
                bytes((0xA8 + bool(pos_frag) + bool(model_frag),)),
                self._iss_frag,
                pos_frag,
                b"\x63seq",
                _head(0, seq),
                b"\x64body",
                body_cbor,
                kind_frag,
                b"\x64prev\x58\x20",
                self._prev,
                b"\x64time",
                _head(0, t),
                tsrc,
                model_frag,
            )
        )
        phead = _head(2, len(payload))
        signature = self._key.sign(sig_prefix + phead + payload, alg=self._alg)
        data = cose_prefix + phead + payload + _head(2, len(signature)) + signature
        self._seq = seq + 1
        self._prev = hashlib.sha256(data).digest()
        return data


# --------------------------------------------------------------------------------------------
# decoding and verification


def did_key_resolver(cache_size: int = 4096) -> KeyResolver:
    """A kid -> key resolver for did:key issuers (the kid is the DID's verification method),
    with a cache of resolved keys."""
    cache: dict[str, VerifyKey] = {}

    def resolve(kid: str) -> VerifyKey:
        key = cache.get(kid)
        if key is None:
            if not kid.startswith(_DID_KEY) or "#" not in kid:
                raise CredentialError(f"cannot resolve {kid[:80]!r}: not a did:key verification method")
            key = didkey.resolve(kid)
            if len(cache) >= cache_size:
                cache.clear()
            cache[kid] = key
        return key

    return resolve


_PROTECTED_CACHE: dict[bytes, tuple[Kind, str, int]] = {}
_PROTECTED_CACHE_MAX = 4096


def _protected_info(msg: cose.Sign1) -> tuple[Kind, str, int]:
    """(kind, kid, alg) from a protected header that holds exactly those, deterministically
    encoded. Cached by the header's bytes: one sender sends few distinct headers."""
    info = _PROTECTED_CACHE.get(msg.protected_raw)
    if info is not None:
        return info
    prot = msg.protected
    if prot.keys() != _PROTECTED_LABELS:
        raise CoseError(f"protected header must hold exactly alg, content type and kid (has {sorted(prot, key=str)})")
    kind, kid_b, alg = prot[cose.HDR_CONTENT_TYPE], prot[cose.HDR_KID], prot[cose.HDR_ALG]
    if type(kind) is not str:
        raise CoseError("content type must be the message kind (text)")
    spec = KINDS.get(kind)
    if spec is None:
        raise SchemaError(f"unknown message kind {kind!r}", field="kind")
    if type(kid_b) is not bytes or type(alg) is not int:
        raise CoseError("kid must be a byte string and alg an integer")
    try:
        kid = kid_b.decode()
    except UnicodeDecodeError:
        raise CoseError("kid is not UTF-8") from None
    if cbor.dumps(prot) != msg.protected_raw:
        raise CoseError("protected header is not deterministic CBOR")
    if len(_PROTECTED_CACHE) >= _PROTECTED_CACHE_MAX:
        _PROTECTED_CACHE.clear()
    info = _PROTECTED_CACHE[msg.protected_raw] = (spec, kid, alg)
    return info


def _decode(data: bytes) -> tuple[Attestation, cose.Sign1]:
    if not isinstance(data, bytes):
        data = bytes(data)
    msg = cose.decode_sign1(data)
    if not msg.tagged:
        raise CoseError("an attestation is a tagged COSE_Sign1 (tag 18)")
    if msg.unprotected:
        raise CoseError("an attestation has an empty unprotected header")
    spec, kid, alg = _protected_info(msg)
    kind = spec.name
    payload = msg.payload
    if payload is None:
        raise CoseError("an attestation's payload must not be detached")
    env = cbor.loads(payload)
    if type(env) is not dict:
        raise SchemaError(f"payload must be a map, got {type(env).__name__}", field="payload", kind=kind)
    keys = env.keys()
    if not _ENVELOPE_KEYS <= keys or not keys - _ENVELOPE_KEYS <= _ENVELOPE_OPTIONAL:
        missing = sorted(_ENVELOPE_KEYS - keys)
        if missing:
            raise SchemaError("required envelope field is missing", field=missing[0], kind=kind)
        raise SchemaError("unknown envelope field", field=str(sorted(map(str, keys - _ENVELOPE_KEYS))[0]), kind=kind)
    if env["v"] != FORMAT_VERSION or type(env["v"]) is not int:
        raise SchemaError(f"unsupported format version {env['v']!r}", field="v", kind=kind)
    if env["kind"] != kind:
        raise SchemaError(f"{env['kind']!r} differs from the content type {kind!r}", field="kind", kind=kind)
    iss = env["iss"]
    if type(iss) is not str or not 1 <= len(iss) <= 256:
        raise SchemaError("issuer must be text of 1 to 256 characters", field="iss", kind=kind)
    if kid.partition("#")[0] != iss:
        raise SchemaError(f"kid {kid!r} is not a key of the issuer {iss!r}", field="iss", kind=kind)
    seq = env["seq"]
    if type(seq) is not int or not 1 <= seq <= _MAX_U63:
        raise SchemaError(f"seq must be an integer >= 1, got {seq!r}", field="seq", kind=kind)
    prev = env["prev"]
    if type(prev) is not bytes or len(prev) != 32:
        raise SchemaError("prev must be 32 bytes", field="prev", kind=kind)
    if seq == 1 and prev != ZERO_HASH:
        raise SchemaError("the first attestation's prev must be 32 zero bytes", field="prev", kind=kind)
    t = env["time"]
    if type(t) is not int or not 0 <= t <= _MAX_TIME_MS:
        raise SchemaError(f"time must be integer milliseconds from 1970 to 9999, got {t!r}", field="time", kind=kind)
    tsrc = _TIME_SOURCES.get(env["tsrc"]) if type(env["tsrc"]) is str else None
    if tsrc is None:
        raise SchemaError(f"unknown time source {env['tsrc']!r}", field="tsrc", kind=kind)
    position = _decode_position(env["pos"]) if "pos" in env else None
    model = env.get("model", _ABSENT)
    if model is _ABSENT:
        model = None
        if spec.model == "required":
            raise SchemaError("this kind needs the model version", field="model", kind=kind)
    elif spec.model == "forbidden":
        raise SchemaError("this kind carries no model version", field="model", kind=kind)
    elif type(model) is not str or not 1 <= len(model) <= 64:
        raise SchemaError("model version must be 1 to 64 characters", field="model", kind=kind)
    body = spec.decode(env["body"])
    att = Attestation(
        hashlib.sha256(data).digest(), kind, iss, seq, prev, t, tsrc, position, model, body, kid, alg, data
    )
    return att, msg


def decode_attestation(data: bytes) -> Attestation:
    """Parse and validate an attestation WITHOUT checking its signature."""
    return _decode(data)[0]


_default_resolver = did_key_resolver()


def verify_attestation(
    data: bytes,
    key: VerifyKey | KeyResolver | None = None,
    *,
    now: float | None = None,
    skew: float = 60.0,
) -> Attestation:
    """Decode, validate and check the signature (``key``: a key, a kid -> key resolver, or
    None for did:key issuers). With ``now``, a time more than ``skew`` s ahead is rejected.
    No replay state: use an ``AttestationReceiver`` for streams."""
    att, msg = _decode(data)
    if now is not None and att.time_ms > (now + skew) * 1000.0:
        raise ValidityError(f"attestation time {att.datetime.isoformat()} is ahead of now by more than {skew:g} s")
    vk = _resolve(key, att.kid)
    cose.verify_sign1(msg, vk)
    return att


def _resolve(key: VerifyKey | KeyResolver | None, kid: str) -> VerifyKey:
    if key is None:
        return _default_resolver(kid)
    if isinstance(key, VerifyKey):
        return key
    return key(kid)


@dataclass(frozen=True, slots=True)
class SeqGap:
    """Sequence numbers ``first`` .. ``last`` of ``issuer`` were never received."""

    issuer: str
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """``seq`` of ``issuer`` does not name the previous attestation received as its ``prev``."""

    issuer: str
    seq: int
    expected: bytes
    got: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """An accepted attestation, and what the receiver noticed about its place in the chain."""

    attestation: Attestation
    gap: SeqGap | None = None
    broken_link: BrokenLink | None = None


@dataclass(frozen=True, slots=True)
class SenderState:
    """Per issuer: the highest seq accepted and its attestation id. Persist to resume."""

    highest_seq: int
    last_hash: bytes


class AttestationReceiver:
    """Accepts attestations from many issuers: verifies, rejects replays, tracks chains.

    ``skew``: how far (s) an attestation's time may be ahead of ``now``; ``max_age``: how
    old it may be (None: any). ``from_start``: a first attestation from an unknown issuer
    with seq > 1 is reported as a gap from 1 (a ledger), else it starts the chain (an RSU
    meeting a vehicle mid-journey). ``recent_ids`` bounds the duplicate-id memory.
    Findings accumulate in ``gaps`` and ``broken_links`` until the owner clears them.
    """

    def __init__(
        self,
        *,
        skew: float = 60.0,
        max_age: float | None = None,
        from_start: bool = False,
        recent_ids: int = 4096,
        senders: Mapping[str, SenderState] | None = None,
    ) -> None:
        self.skew = skew
        self.max_age = max_age
        self.from_start = from_start
        self._senders: dict[str, SenderState] = dict(senders or {})
        self._recent: OrderedDict[bytes, None] = OrderedDict()
        self._recent_max = recent_ids
        self._resolver = did_key_resolver()
        self.gaps: list[SeqGap] = []
        self.broken_links: list[BrokenLink] = []

    @property
    def senders(self) -> Mapping[str, SenderState]:
        """Per-issuer chain state: a read-only view (copy it to persist)."""
        return MappingProxyType(self._senders)

    def accept(self, data: bytes, *, key_resolver: KeyResolver | None = None, now: float) -> Received:
        """Verify ``data`` and take it into its issuer's chain. Raises MalformedError
        subclasses for garbage, ReplayError for a seq already passed or a duplicate,
        ValidityError for a time outside [now - max_age, now + skew], SignatureError."""
        att, msg = _decode(data)
        if att.id in self._recent:
            raise ReplayError(f"duplicate attestation {att.id.hex()[:16]} ({att.issuer} seq {att.seq})")
        state = self._senders.get(att.issuer)
        if state is not None and att.seq <= state.highest_seq:
            if att.seq == state.highest_seq:
                raise ReplayError(
                    f"{att.issuer} seq {att.seq} already accepted as a different attestation (a forked chain)"
                )
            raise ReplayError(f"{att.issuer} seq {att.seq} is not above the highest accepted ({state.highest_seq})")
        t_ms = att.time_ms
        if t_ms > (now + self.skew) * 1000.0:
            raise ValidityError(
                f"attestation time {att.datetime.isoformat()} is ahead of now by more than {self.skew:g} s"
            )
        if self.max_age is not None and t_ms < (now - self.max_age) * 1000.0:
            raise ValidityError(f"attestation time {att.datetime.isoformat()} is older than {self.max_age:g} s")
        vk = (key_resolver or self._resolver)(att.kid)
        cose.verify_sign1(msg, vk)
        # verified: take it into the chain
        gap = broken = None
        if state is None:
            if att.seq > 1 and self.from_start:
                gap = SeqGap(att.issuer, 1, att.seq - 1)
            self._senders[att.issuer] = SenderState(att.seq, att.id)
        else:
            if att.seq > state.highest_seq + 1:
                gap = SeqGap(att.issuer, state.highest_seq + 1, att.seq - 1)
            elif att.prev != state.last_hash:
                broken = BrokenLink(att.issuer, att.seq, state.last_hash, att.prev)
            self._senders[att.issuer] = SenderState(att.seq, att.id)
        if gap is not None:
            self.gaps.append(gap)
        if broken is not None:
            self.broken_links.append(broken)
        recent = self._recent
        recent[att.id] = None
        if len(recent) > self._recent_max:
            recent.popitem(last=False)
        return Received(att, gap, broken)
