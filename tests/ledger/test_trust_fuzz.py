"""Property tests for the trust layer's decoders: arbitrary bytes and mutated valid messages into
cbor.loads, cose.decode_sign1, cose.verify_sign1 and cwt.verify_cwt. They may only raise our
typed errors (MalformedError / VerificationError), never crash, and a mutated message never
verifies as anything but what was signed. The fast CBOR path is cross-checked against the
pure-Python reference scanner, and the fast COSE envelope reader against the general decoder."""

from __future__ import annotations

import math
import struct
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger_lite import cbor, cose, cwt
from ledger_lite.cbor import Tag, _Scanner
from ledger_lite.cose import _fast_envelope
from ledger_lite.cwt import Claims
from ledger_lite.errors import CborError, CoseError, MalformedError, VerificationError
from ledger_lite.keys import SigningKey

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPED = (MalformedError, VerificationError)

ED = SigningKey.from_private_bytes("Ed25519", bytes(range(32)))
P256 = SigningKey.from_private_bytes("P-256", bytes(range(1, 33)))

keys = st.one_of(st.integers(-(2**64), 2**64 - 1), st.text(max_size=8), st.binary(max_size=8))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(keys, inner, max_size=5),
        st.builds(Tag, st.integers(0, 2**64 - 1), inner),
    ),
    max_leaves=25,
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` changed by one of: overwrite a byte, flip a bit, insert, delete, truncate, splice."""
    op = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate", "splice"]))
    i = draw(st.integers(0, max(len(data) - 1, 0)))
    if op == "set":
        out = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif op == "flip":
        out = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1 :] if data else b"\x00"
    elif op == "insert":
        out = data[:i] + draw(st.binary(min_size=1, max_size=3)) + data[i:]
    elif op == "delete":
        out = data[:i] + data[i + draw(st.integers(1, 3)) :]
    elif op == "truncate":
        out = data[:i]
    else:
        j = draw(st.integers(0, len(data)))
        out = data[:i] + data[j : j + draw(st.integers(1, 8))] + data[i:]
    assume(out != data)
    return out


def _reference(data: bytes, *, deterministic: bool = True) -> tuple[bool, Any]:
    try:
        return True, _Scanner(data, cbor.MAX_DEPTH, deterministic=deterministic).run()
    except CborError as err:
        return False, err


def _fast(data: bytes, *, deterministic: bool = True) -> tuple[bool, Any]:
    try:
        return True, cbor.loads(data, deterministic=deterministic)
    except CborError as err:
        return False, err


def _same(a: Any, b: Any) -> bool:
    """Equal, and floats with the same sign (so -0.0 and 0.0 are told apart)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, Tag) and isinstance(b, Tag):
        return a.tag == b.tag and _same(a.value, b.value)
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------------------- CBOR


@FUZZ
@given(values)
def test_cbor_round_trip_is_exact(value: Any) -> None:
    data = cbor.dumps(value)
    decoded = cbor.loads(data)
    assert _same(decoded, _normalise(value))
    assert cbor.dumps(decoded) == data
    ok, ref = _reference(data)
    assert ok and _same(ref, decoded)


def _normalise(value: Any) -> Any:
    """What a decoder gives back for ``value`` (tuples are arrays; nothing else changes)."""
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, Tag):
        return Tag(value.tag, _normalise(value.value))
    return value


@FUZZ
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_encoding_is_the_shortest_exact_one(value: float) -> None:
    encoded = cbor.dumps(value)
    assert encoded == cbor2.dumps(value, canonical=True)  # an independent implementation agrees
    for fmt, head in ((">e", 0xF9), (">f", 0xFA)):  # a shorter width would have lost the value
        try:
            shorter = struct.pack(fmt, value)
        except OverflowError:
            continue
        if struct.unpack(fmt, shorter)[0] == value:
            assert encoded[0] <= head
            break
    else:
        assert encoded[0] == 0xFB


def _check_decoders_agree(data: bytes) -> None:
    ok, value = _fast(data)
    ref_ok, ref = _reference(data)
    assert ok == ref_ok, (data.hex(), value, ref)
    if ok:
        assert _same(value, ref)
        assert cbor.dumps(value) == data  # accepted means: exactly the deterministic encoding
    relaxed_ok, relaxed = _fast(data, deterministic=False)
    assert relaxed_ok or isinstance(relaxed, CborError)
    if ok:
        assert relaxed_ok and _same(relaxed, value)


@FUZZ
@given(st.binary(max_size=64))
def test_cbor_arbitrary_bytes(data: bytes) -> None:
    _check_decoders_agree(data)


@FUZZ
@given(st.data())
def test_cbor_mutated_encodings(draw: st.DataObject) -> None:
    data = cbor.dumps(draw.draw(values))
    _check_decoders_agree(draw.draw(mutated(data)))


# ------------------------------------------------------------------------------------- COSE

payloads = st.one_of(st.binary(max_size=40), values.map(cbor.dumps))


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, SigningKey]:
    key = draw(st.sampled_from([ED, ED, ED, P256]))
    unprotected = draw(st.sampled_from([None, {"n": 1}, {33: b"x"}]))
    data = cose.sign1(
        draw(payloads),
        key,
        kid=draw(st.sampled_from([None, b"k1"])),
        content_type=draw(st.sampled_from([None, 0, "application/cbor"])),
        unprotected=unprotected,
        tagged=draw(st.booleans()),
    )
    return data, key


@FUZZ
@given(st.binary(max_size=80))
def test_cose_arbitrary_bytes(data: bytes) -> None:
    for deterministic in (True, False):
        try:
            cose.decode_sign1(data, deterministic=deterministic)
        except CoseError:
            pass
        with pytest.raises(TYPED):
            cose.verify_sign1(data, ED.public, deterministic=deterministic)


@FUZZ
@given(messages(), st.data())
def test_mutated_cose_messages_never_verify_as_something_else(
    message: tuple[bytes, SigningKey], draw: st.DataObject
) -> None:
    data, key = message
    original = cose.verify_sign1(data, key.public)
    bad = draw.draw(mutated(data))
    _check_envelope_reader(bad)
    for deterministic in (True, False):
        try:
            msg = cose.verify_sign1(bad, key.public, deterministic=deterministic)
        except TYPED:
            continue
        # COSE protects the protected header, the payload and (for EdDSA) the signature; the tag
        # and the unprotected header are not signed, so only they may differ.
        assert msg.protected_raw == original.protected_raw
        assert msg.payload == original.payload
        if key is ED:
            assert msg.signature == original.signature
        if deterministic:
            assert bad in (data[1:], b"\xd2" + data) or msg.unprotected != original.unprotected


def _check_envelope_reader(data: bytes) -> None:
    """The fast envelope reader only accepts what the general strict decoder reads the same way."""
    fast = _fast_envelope(data)
    if fast is None:
        return
    tagged, protected_raw, payload, signature = fast
    body = [protected_raw, {}, payload, signature]
    assert cbor.loads(data) == (Tag(18, body) if tagged else body)


@FUZZ
@given(messages())
def test_envelope_reader_agrees_on_valid_messages(message: tuple[bytes, SigningKey]) -> None:
    data, _ = message
    _check_envelope_reader(data)
    general = cbor.loads(data)
    body = general.value if isinstance(general, Tag) else general
    if body[1] == {}:
        assert _fast_envelope(data) is not None


# -------------------------------------------------------------------------------------- CWT

claims = st.builds(
    Claims,
    iss=st.none() | st.text(max_size=10),
    aud=st.none() | st.text(max_size=10) | st.lists(st.text(max_size=5), min_size=1, max_size=3).map(tuple),
    exp=st.none() | st.integers(10**9, 2 * 10**9),
    nbf=st.none() | st.integers(0, 10**9),
    iat=st.none() | st.floats(0, 2e9),
    cti=st.none() | st.binary(max_size=8),
    extra=st.dictionaries(st.integers(9, 100) | st.text(min_size=4, max_size=6), scalars, max_size=3),
)


@FUZZ
@given(st.binary(max_size=80))
def test_cwt_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(TYPED):
        cwt.verify_cwt(data, ED.public, now=1.5e9)
    with pytest.raises(TYPED):
        cwt.verify_cwt(b"\xd8\x3d" + data, ED.public, now=1.5e9)


@FUZZ
@given(claims, st.booleans(), st.data())
def test_mutated_cwts_never_verify_as_something_else(token_claims: Claims, tag_cwt: bool, draw: st.DataObject) -> None:
    token = cwt.sign_cwt(token_claims, ED, kid=b"k", tag_cwt=tag_cwt)
    now = 1.5e9
    try:
        assert cwt.verify_cwt(token, ED.public, now=now) == token_claims
    except VerificationError:
        pass  # outside its validity window: fine, the mutations below must fail too
    bad = draw.draw(mutated(token))
    try:
        got = cwt.verify_cwt(bad, ED.public, now=now, skew=1e10)
    except TYPED:
        return
    assert got == token_claims
