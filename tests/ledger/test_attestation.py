"""Attestations: the kind registry's schemas (round trips, every bad field named, random bodies
only ever SchemaError), the wire form (the builder's fast path equals the reference encoding),
signatures and issuers, and the receiver's chain tracking: replays and duplicates rejected,
gaps and broken hash links reported."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_lite import cbor, cose
from ledger_lite.attestation import (
    KINDS,
    ZERO_HASH,
    AttestationBuilder,
    AttestationReceiver,
    Field,
    Position,
    SenderState,
    TimeSource,
    decode_attestation,
    kid_for,
    pseudonym_issuer,
    pseudonym_resolver,
    validate_body,
    verify_attestation,
)
from ledger_lite.didkey import did_key
from ledger_lite.errors import (
    CoseError,
    CredentialError,
    MalformedError,
    ReplayError,
    SchemaError,
    SignatureError,
    ValidityError,
)
from ledger_lite.keys import SigningKey

NOW = 1_800_000_000.0
POS = Position(52.2190651, 21.0108517, 112.5, 3.2)

#: one valid body per kind, in callers' units, every value exact at its field's resolution
BODIES: dict[str, dict[str, Any]] = {
    "driving_event": {
        "event": "harsh_brake",
        "severity": 0.72,
        "duration": 1.4,
        "speed": 13.9,
        "accel_long": -6.1,
        "accel_lat": 0.35,
        "yaw_rate": -12.5,
        "confidence": 0.93,
    },
    "sensor_summary": {
        "duration": 60.0,
        "samples": 600,
        "distance": 812.34,
        "speed_mean": 13.5,
        "speed_max": 19.44,
        "accel_long_min": -3.2,
        "accel_long_max": 2.1,
        "accel_lat_max": 1.75,
        "gnss_fix_ratio": 0.983,
        "dead_reckoning": 1.0,
        "can_frames": 25_000,
        "can_errors": 0,
        "events": 2,
    },
    "clip_evidence": {
        "sha256": hashlib.sha256(b"clip").digest(),
        "duration": 12.04,
        "size": 3_145_728,
        "format": "h264",
        "camera": "front",
        "width": 1280,
        "height": 720,
        "event": bytes(range(32)),
    },
    "fl_update_ref": {
        "round": 17,
        "model_hash": b"\x11" * 32,
        "update_hash": b"\x22" * 32,
        "samples": 4096,
        "norm": 0.873215,
        "masked": True,
    },
    "map_observation": {
        "type": "pothole",
        "lat": 52.2297,
        "lon": -21.0122,
        "confidence": 0.8,
        "heading": 271.5,
        "extent": 0.6,
    },
    "dtc_report": {"codes": ["P0301", "U0100"], "mil": True, "distance_with_mil": 1200.0},
}
MODEL = {"driving_event": "dbm-1.2.0", "map_observation": "mapper-0.3", "fl_update_ref": "dbm-1.2.0"}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def builder(key: SigningKey) -> AttestationBuilder:
    return AttestationBuilder(key, did_key(key.public))


def build(b: AttestationBuilder, kind: str = "driving_event", t: float = NOW, **kw: Any) -> bytes:
    kw.setdefault("position", POS)
    return b.build(kind, BODIES[kind], time=t, time_source=TimeSource.GNSS, model=MODEL.get(kind), **kw)


def test_the_registry_covers_the_issue() -> None:
    assert set(KINDS) >= {"driving_event", "sensor_summary", "clip_evidence", "fl_update_ref", "map_observation"}
    assert set(BODIES) == set(KINDS)
    events = next(f for f in KINDS["driving_event"].fields if f.name == "event").choices
    assert set(events) == {"harsh_brake", "harsh_accel", "harsh_corner", "lane_change", "speeding", "fatigue"}
    for spec in KINDS.values():  # every field says type, unit and range for people
        assert all(f.describe().startswith(f"{f.name}: ") for f in spec.fields)


# --- round trips and the wire form ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_round_trips(builder: AttestationBuilder, kind: str) -> None:
    data = build(builder, kind)
    att = verify_attestation(data, now=NOW)
    assert att.kind == kind and dict(att.body) == BODIES[kind]
    assert (att.issuer, att.seq, att.prev, att.time_ms, att.time_source) == (
        builder.did,
        1,
        ZERO_HASH,
        int(NOW * 1000),
        TimeSource.GNSS,
    )
    assert att.position == POS and att.model == MODEL.get(kind)
    assert att.id == hashlib.sha256(data).digest() == builder.state.prev_hash
    msg = cose.decode_sign1(data)
    assert msg.content_type == kind and msg.kid == kid_for(builder.did).encode()
    assert msg.unprotected == {} and msg.tagged


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_builder_output_is_the_reference_encoding(builder: AttestationBuilder, key: SigningKey, kind: str) -> None:
    """The builder concatenates precomputed fragments; it must equal cbor.dumps + cose.sign1."""
    data = build(builder, kind)
    payload = cose.decode_sign1(data).payload
    assert payload is not None
    envelope = cbor.loads(payload)
    assert envelope["body"] == KINDS[kind].encode(BODIES[kind])  # wire units: integers
    assert cbor.dumps(envelope) == payload
    # Ed25519 signatures are deterministic, so the whole message can be re-made independently
    assert cose.sign1(payload, key, kid=kid_for(builder.did).encode(), content_type=kind) == data


def test_wire_units_are_etsi_like_integers(builder: AttestationBuilder) -> None:
    payload = cose.decode_sign1(build(builder)).payload
    assert payload is not None
    env = cbor.loads(payload)
    assert env["pos"] == {"lat": 522190651, "lon": 210108517, "alt": 11250, "acc": 320}
    assert env["body"]["speed"] == 1390 and env["body"]["accel_long"] == -610 and env["time"] == 1_800_000_000_000
    assert env["v"] == 1 and env["tsrc"] == "gnss" and env["kind"] == "driving_event"


def test_chain_and_state(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    first = build(b)
    second = build(b, "sensor_summary", position=None)
    a1, a2 = decode_attestation(first), decode_attestation(second)
    assert (a2.seq, a2.prev, a2.position) == (2, a1.id, None)
    assert b.state.next_seq == 3 and b.state.prev_hash == a2.id
    resumed = AttestationBuilder.resume(key, b.did, second)
    assert resumed.state == b.state
    again = AttestationBuilder(key, b.did, start_seq=b.state.next_seq, prev_hash=b.state.prev_hash)
    assert decode_attestation(build(again)).prev == a2.id


def test_builder_checks_its_identity(key: SigningKey) -> None:
    with pytest.raises(ValueError, match="not the DID of this key"):
        AttestationBuilder(key, did_key(SigningKey.generate().public))
    with pytest.raises(ValueError, match="zero previous hash"):
        AttestationBuilder(key, did_key(key.public), prev_hash=b"\x01" * 32)


def test_time_sources_and_datetime(builder: AttestationBuilder) -> None:
    from datetime import UTC, datetime

    when = datetime(2027, 1, 15, 8, 0, 0, 250_000, tzinfo=UTC)
    data = builder.build("dtc_report", BODIES["dtc_report"], time=when, time_source="holdover")
    att = decode_attestation(data)
    assert att.datetime == when and att.time_source is TimeSource.HOLDOVER
    with pytest.raises(SchemaError, match="time source") as info:
        builder.build("dtc_report", BODIES["dtc_report"], time=NOW, time_source="sundial")
    assert info.value.field == "tsrc"


def test_p256_issuer() -> None:
    key = SigningKey.generate("P-256")
    b = AttestationBuilder(key, did_key(key.public))
    att = verify_attestation(build(b), now=NOW)
    assert att.alg == -7 and att.issuer.startswith("did:key:zDn")


def test_pseudonym_issuer(key: SigningKey) -> None:
    cert_id = bytes(range(16))
    issuer = pseudonym_issuer(cert_id)
    b = AttestationBuilder(key, issuer)
    data = build(b, "map_observation")
    assert verify_attestation(data, pseudonym_resolver({cert_id: key.public})).issuer == issuer
    with pytest.raises(CredentialError, match="no verified pseudonym"):
        verify_attestation(data, pseudonym_resolver({}))
    with pytest.raises(CredentialError, match="not a did:key"):
        verify_attestation(data)  # a pseudonym is not self-contained


# --- schemas: every bad field is named -----------------------------------------------------------


def _wrong_type(f: Field) -> Any:
    return {
        "uint": 1.5,
        "int": "1",
        "fixed": "1.0",
        "bool": 1,
        "text": 7,
        "enum": 3,
        "bytes": "ab",
        "text_list": "P0301",
    }[f.type]


def _out_of_range(f: Field) -> Any | None:
    if f.type in ("uint", "int", "fixed") and f.max is not None:
        return f.max + (1 if f.type != "fixed" else 1.0)
    if f.type == "enum":
        return "not_a_choice"
    if f.type == "bytes":
        return b"\x00" * 31
    if f.type == "text" and f.pattern:
        return "no spaces allowed"
    if f.type == "text_list":
        return ["X9999"]
    return None


FIELDS = [(kind, f) for kind, spec in sorted(KINDS.items()) for f in spec.fields]


@pytest.mark.parametrize(("kind", "field"), FIELDS, ids=[f"{k}.{f.name}" for k, f in FIELDS])
def test_each_bad_field_is_named(builder: AttestationBuilder, kind: str, field: Field) -> None:
    spec = KINDS[kind]
    for bad in (_wrong_type(field), _out_of_range(field)):
        if bad is None:
            continue
        body = {**BODIES[kind], field.name: bad}
        with pytest.raises(SchemaError) as built:
            builder.build(kind, body, time=NOW, time_source="gnss", model=MODEL.get(kind))
        with pytest.raises(SchemaError) as decoded:
            validate_body(kind, {**spec.encode(BODIES[kind]), field.name: bad})
        for info in (built, decoded):
            assert info.value.field.split("[")[0] == field.name and info.value.kind == kind
    if field.required:
        body = {k: v for k, v in BODIES[kind].items() if k != field.name}
        with pytest.raises(SchemaError, match="required") as info:
            builder.build(kind, body, time=NOW, time_source="gnss", model=MODEL.get(kind))
        assert info.value.field == field.name


def test_nan_bool_and_unknown_fields(builder: AttestationBuilder) -> None:
    spec = KINDS["driving_event"]
    for bad in (math.nan, math.inf, True):
        with pytest.raises(SchemaError) as info:
            spec.encode({**BODIES["driving_event"], "severity": bad})
        assert info.value.field == "severity"
    with pytest.raises(SchemaError, match="unknown field") as info:
        spec.encode({**BODIES["driving_event"], "colour": "red"})
    assert info.value.field == "colour"
    with pytest.raises(SchemaError) as info:
        validate_body("driving_event", {**spec.encode(BODIES["driving_event"]), "speed": 13.9})  # wire is int
    assert info.value.field == "speed"
    with pytest.raises(SchemaError, match="unknown message kind"):
        builder.build("selfie", {}, time=NOW, time_source="gnss")


def test_cross_field_rules() -> None:
    speeding = {"event": "speeding", "severity": 0.3, "duration": 12.0, "speed": 31.5}
    with pytest.raises(SchemaError, match="speed limit") as info:
        KINDS["driving_event"].encode(speeding)
    assert info.value.field == "speed_limit"
    with pytest.raises(SchemaError, match="not above") as info:
        KINDS["driving_event"].encode({**speeding, "speed_limit": 33.0})
    assert info.value.field == "speed"
    # rules judge what is signed: 31.504 m/s is 31.50 at the 0.01 m/s resolution, not above 31.5
    for encode in (KINDS["driving_event"].encode, KINDS["driving_event"].encode_cbor):
        with pytest.raises(SchemaError, match="not above"):
            encode({**speeding, "speed": 31.504, "speed_limit": 31.5})
    assert KINDS["driving_event"].encode({**speeding, "speed_limit": 31.49})["speed"] == 3150
    with pytest.raises(SchemaError) as info:
        KINDS["sensor_summary"].encode({**BODIES["sensor_summary"], "speed_max": 1.0})
    assert info.value.field == "speed_max"


def test_model_version_per_kind(builder: AttestationBuilder) -> None:
    with pytest.raises(SchemaError, match="no model") as info:
        builder.build("dtc_report", BODIES["dtc_report"], time=NOW, time_source="gnss", model="x")
    assert info.value.field == "model"


@pytest.mark.parametrize(
    ("pos", "name"),
    [
        (Position(91.0, 0.0), "pos.lat"),
        (Position(0.0, -180.5), "pos.lon"),
        (Position(0.0, 0.0, accuracy=-1), "pos.acc"),
    ],
)
def test_bad_position_is_named(builder: AttestationBuilder, pos: Position, name: str) -> None:
    with pytest.raises(SchemaError) as info:
        build(builder, position=pos)
    assert info.value.field == name


# --- envelopes made by someone else (signed correctly, wrong inside) -----------------------------


_DROP = object()


def _envelope(b: AttestationBuilder, **changes: Any) -> dict[str, Any]:
    payload = cose.decode_sign1(build(b)).payload
    assert payload is not None
    env: dict[str, Any] = cbor.loads(payload)
    for k, v in changes.items():
        if v is _DROP:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def _sign(key: SigningKey, env: dict[str, Any], kind: str = "driving_event", kid: str | None = None) -> bytes:
    kid = kid or kid_for(did_key(key.public))
    return cose.sign1(cbor.dumps(env), key, kid=kid.encode(), content_type=kind)


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"seq": 0}, "seq"),
        ({"seq": "1"}, "seq"),
        ({"prev": b"\x00" * 31}, "prev"),
        ({"prev": b"\x01" * 32}, "prev"),  # seq 1 must have the zero hash
        ({"time": -1}, "time"),
        ({"time": 1.8e12}, "time"),
        ({"time": 2**62}, "time"),
        ({"tsrc": "ntp"}, "tsrc"),
        ({"v": 2}, "v"),
        ({"kind": "sensor_summary"}, "kind"),
        ({"iss": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"}, "iss"),
        ({"body": _DROP}, "body"),
        ({"pos": None}, "pos"),
        ({"model": None}, "model"),
        ({"extra": 1}, "extra"),
        ({"pos": {"lat": 1, "lon": 2, "x": 3}}, "pos.x"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_envelope_is_named(
    builder: AttestationBuilder, key: SigningKey, changes: dict[str, Any], name: str
) -> None:
    data = _sign(key, _envelope(builder, **changes))
    with pytest.raises(SchemaError) as info:
        decode_attestation(data)
    assert info.value.field == name


def test_malformed_cose_is_refused(builder: AttestationBuilder, key: SigningKey) -> None:
    data = build(builder)
    msg = cose.decode_sign1(data)
    assert msg.payload is not None
    with pytest.raises(CoseError, match="unprotected"):
        decode_attestation(
            cose.sign1(msg.payload, key, kid=msg.kid, content_type="driving_event", unprotected={"note": "hi"})
        )
    with pytest.raises(CoseError, match="tagged"):
        decode_attestation(cose.sign1(msg.payload, key, kid=msg.kid, content_type="driving_event", tagged=False))
    with pytest.raises(CoseError, match="exactly"):
        decode_attestation(cose.sign1(msg.payload, key, kid=msg.kid, content_type="driving_event", protected={7: 1}))
    with pytest.raises(MalformedError):
        decode_attestation(data[:-1])
    with pytest.raises(MalformedError):
        decode_attestation(b"\xa0")


def test_tampered_and_wrong_key(builder: AttestationBuilder) -> None:
    build(builder)
    data = build(builder)  # seq 2, so its prev is free
    i = data.index(b"\x64prev")  # flip a byte of the previous hash, inside the signed payload
    tampered = data[: i + 8] + bytes([data[i + 8] ^ 1]) + data[i + 9 :]
    with pytest.raises(SignatureError):
        verify_attestation(tampered)
    with pytest.raises(SignatureError):
        verify_attestation(data, SigningKey.generate().public)


# --- receiver: replays, duplicates, gaps, broken links -------------------------------------------


def test_receiver_accepts_a_chain(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    r = AttestationReceiver()
    got = [r.accept(build(b, t=NOW + i), now=NOW + i) for i in range(3)]
    assert [g.attestation.seq for g in got] == [1, 2, 3]
    assert all(g.gap is None and g.broken_link is None for g in got)
    assert r.senders[b.did] == SenderState(3, got[-1].attestation.id)
    assert r.gaps == [] and r.broken_links == []


def test_replay_and_duplicate_are_rejected(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    r = AttestationReceiver()
    first, second = build(b), build(b)
    r.accept(first, now=NOW)
    r.accept(second, now=NOW)
    with pytest.raises(ReplayError, match="duplicate"):
        r.accept(second, now=NOW)
    with pytest.raises(ReplayError, match="duplicate"):
        r.accept(first, now=NOW)
    fresh = AttestationReceiver(senders=r.senders)  # persisted state, no id memory: the seq check
    with pytest.raises(ReplayError, match="not above the highest"):
        fresh.accept(first, now=NOW)
    # the same seq signed again with other content: a forked chain
    forked = AttestationBuilder(key, b.did, start_seq=2, prev_hash=decode_attestation(first).id)
    with pytest.raises(ReplayError, match="forked"):
        r.accept(build(forked, "dtc_report"), now=NOW)


def test_replay_checks_do_not_change_state_before_the_signature(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    r = AttestationReceiver()
    data = build(b)
    forged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(SignatureError):
        r.accept(forged, now=NOW)
    assert r.senders == {}
    assert r.accept(data, now=NOW).attestation.seq == 1


def test_gaps_are_reported_not_rejected(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    msgs = [build(b) for _ in range(6)]
    r = AttestationReceiver()
    r.accept(msgs[0], now=NOW)
    got = r.accept(msgs[3], now=NOW)  # 2 and 3 lost
    assert got.gap is not None and (got.gap.first, got.gap.last) == (2, 3)
    r.accept(msgs[5], now=NOW)  # 5 lost
    assert [(g.first, g.last) for g in r.gaps] == [(2, 3), (5, 5)]
    with pytest.raises(ReplayError):  # a late one inside a gap is below the highest seq
        r.accept(msgs[4], now=NOW)


def test_first_contact_mid_chain(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public), start_seq=500, prev_hash=b"\x07" * 32)
    data = build(b)
    assert AttestationReceiver().accept(data, now=NOW).gap is None
    gap = AttestationReceiver(from_start=True).accept(data, now=NOW).gap
    assert gap is not None and (gap.first, gap.last) == (1, 499)


def test_broken_hash_link_is_reported(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    r = AttestationReceiver()
    first = r.accept(build(b), now=NOW).attestation
    liar = AttestationBuilder(key, b.did, start_seq=2, prev_hash=b"\xee" * 32)
    got = r.accept(build(liar), now=NOW)
    assert got.broken_link is not None
    assert (got.broken_link.seq, got.broken_link.expected, got.broken_link.got) == (2, first.id, b"\xee" * 32)
    assert r.broken_links == [got.broken_link] and r.senders[b.did].highest_seq == 2


def test_receiver_time_window(key: SigningKey) -> None:
    b = AttestationBuilder(key, did_key(key.public))
    r = AttestationReceiver(skew=60.0, max_age=3600.0)
    with pytest.raises(ValidityError, match="ahead of now"):
        r.accept(build(b, t=NOW + 61), now=NOW)
    r.accept(build(b, t=NOW + 59), now=NOW)
    with pytest.raises(ValidityError, match="older than"):
        r.accept(build(b, t=NOW - 3601), now=NOW)


def test_receiver_keeps_issuers_apart() -> None:
    keys = [SigningKey.generate() for _ in range(2)]
    builders = [AttestationBuilder(k, did_key(k.public)) for k in keys]
    r = AttestationReceiver()
    for _ in range(2):
        for b in builders:
            r.accept(build(b), now=NOW)
    assert {d: s.highest_seq for d, s in r.senders.items()} == {b.did: 2 for b in builders}


# --- property: random bodies either validate or raise SchemaError --------------------------------

_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _valid(f: Field) -> st.SearchStrategy[Any]:
    if f.type in ("uint", "int"):
        return st.integers(int(f.min if f.min is not None else 0), int(f.max if f.max is not None else 2**63 - 1))
    if f.type == "fixed":
        lo, hi = round((f.min or 0) * f.scale), round((f.max or 0) * f.scale)
        return st.integers(lo, hi).map(lambda w: w / f.scale)
    if f.type == "bool":
        return st.booleans()
    if f.type == "enum":
        return st.sampled_from(f.choices)
    if f.type == "bytes":
        return st.binary(min_size=f.length or 0, max_size=f.length or 64)
    if f.type == "text":
        return st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True)
    return st.lists(st.from_regex(f.pattern or ".*", fullmatch=True), max_size=f.length or 8)


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(KINDS)))
    body: dict[str, Any] = {}
    for f in KINDS[kind].fields:
        choice = draw(st.integers(0, 9))
        if choice == 0 and True:
            continue  # leave it out
        body[f.name] = draw(_ANY) if choice == 1 else draw(_valid(f))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=6))] = draw(_ANY)
    return kind, body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies())
def test_random_bodies_validate_or_raise_schema_error(case: tuple[str, dict[str, Any]]) -> None:
    kind, body = case
    spec = KINDS[kind]
    try:
        wire = spec.encode(body)
    except SchemaError as err:
        assert err.kind == kind and err.field
        with pytest.raises(SchemaError):
            spec.encode_cbor(body)
    else:
        assert spec.encode_cbor(body) == cbor.dumps(wire)  # the builder's fast path is exact
        decoded = spec.decode(cbor.loads(cbor.dumps(wire)))
        assert decoded.keys() == body.keys()
        for f in spec.fields:  # values come back exact to their resolution
            if f.name not in body:
                continue
            if f.type == "fixed":
                assert abs(decoded[f.name] - body[f.name]) <= 0.5 / f.scale + 1e-9, f.name
            else:
                assert decoded[f.name] == body[f.name], f.name
    try:
        validate_body(kind, body)  # the same random values, as if decoded from the wire
    except SchemaError as err:
        assert err.kind == kind


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(KINDS)), _ANY)
def test_random_values_as_bodies(kind: str, body: Any) -> None:
    try:
        validate_body(kind, body)
    except SchemaError:
        pass


_coord = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-200, 200) | st.none()


@settings(max_examples=300, deadline=None)
@given(_coord, _coord, _coord, _coord)
def test_position_fast_path_equals_the_checked_path(lat: Any, lon: Any, alt: Any, acc: Any) -> None:
    from ledger_lite.attestation import _decode_position, _encode_position, _encode_position_checked

    p = Position(lat, lon, alt, acc)
    try:
        reference = _encode_position_checked(p)
    except SchemaError as err:
        with pytest.raises(SchemaError):
            _encode_position(p)
        assert err.field.startswith("pos")
        return
    assert _encode_position(p) == reference
    back = _decode_position(cbor.loads(reference))
    assert back.lat == pytest.approx(lat, abs=1e-7) and back.lon == pytest.approx(lon, abs=1e-7)
