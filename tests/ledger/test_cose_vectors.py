"""COSE_Sign1 against every Sign1 vector in ../shared/refdata/cose (cose-wg/Examples: sign1-tests,
ecdsa-examples, eddsa-examples, RFC 8152 C.2.1), then the profile's own rules: tag, crit,
duplicate labels, alg placement and fit, the empty protected header sent as h'A0'."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from ledger_lite import cbor, cose
from ledger_lite.cbor import Tag
from ledger_lite.errors import CoseError, LedgerError, SignatureError
from ledger_lite.keys import SigningKey, VerifyKey

ALGS = {"EdDSA": -8, "ES256": -7, "ES384": -35, "ES512": -36}
HEADER_LABELS = {"alg": 1, "ctyp": 3, "kid": 4}
SIGN1_DIRS = ("sign1-tests", "ecdsa-examples", "eddsa-examples", "RFC8152")
PASS = [
    "RFC8152/Appendix_C_2_1",
    "ecdsa-examples/ecdsa-sig-01",  # P-256, with a protected content type
    "ecdsa-examples/ecdsa-sig-02",  # P-384
    "ecdsa-examples/ecdsa-sig-03",  # P-521 (titled "P-512")
    "ecdsa-examples/ecdsa-sig-04",  # P-256 with SHA-512 (ES512)
    "eddsa-examples/eddsa-sig-01",  # Ed25519
    "eddsa-examples/eddsa-sig-02",  # Ed448
    "sign1-tests/sign-pass-01",  # protected h'A0', alg unprotected: see test_a0_*
    "sign1-tests/sign-pass-02",  # external AAD
    "sign1-tests/sign-pass-03",  # untagged
]
FAIL = [f"sign1-tests/sign-fail-0{n}" for n in (1, 2, 3, 4, 6, 7)]
# the one pass vector outside our profile (alg only in the unprotected header)
PROFILE_REJECTS = {"sign1-tests/sign-pass-01"}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _case(refdata: Path, name: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    vector = _load(refdata / "cose" / f"{name}.json")
    sign0 = vector["input"]["sign0"]
    return vector, sign0, bytes.fromhex(vector["output"]["cbor"]), bytes.fromhex(sign0.get("external", ""))


def _key_bytes(jwk: dict[str, str], name: str) -> bytes:
    """A JWK-like member: base64url ``x`` or hex ``x_hex`` (the cose-wg vectors use both)."""
    if f"{name}_hex" in jwk:
        return bytes.fromhex(jwk[f"{name}_hex"])
    text = jwk[name]
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_key(jwk: dict[str, str]) -> VerifyKey:
    if jwk["kty"] == "OKP":
        return VerifyKey.from_raw(jwk["crv"], _key_bytes(jwk, "x"))
    return VerifyKey.from_ec_coordinates(jwk["crv"], _key_bytes(jwk, "x"), _key_bytes(jwk, "y"))


def signing_key(jwk: dict[str, str]) -> SigningKey:
    key = SigningKey.from_private_bytes(jwk["crv"], _key_bytes(jwk, "d"))
    assert key.public == verify_key(jwk), "the vector's private and public keys do not match"
    return key


def _headers(names: dict[str, Any]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for name, value in names.items():
        label = HEADER_LABELS[name]
        out[label] = ALGS[value] if name == "alg" else value.encode() if name == "kid" else value
    return out


def test_every_sign1_vector_is_covered(refdata: Path) -> None:
    found = {
        f"{path.parent.name}/{path.stem}"
        for d in SIGN1_DIRS
        for path in (refdata / "cose" / d).glob("*.json")
        if "sign0" in _load(path)["input"]
    }
    assert found == set(PASS) | set(FAIL)
    assert {name for name in found if _load(refdata / "cose" / f"{name}.json").get("fail")} == set(FAIL)


@pytest.mark.parametrize("name", PASS)
def test_pass_vectors_verify_and_their_sig_structure_matches(refdata: Path, name: str) -> None:
    vector, sign0, data, aad = _case(refdata, name)
    key = verify_key(sign0["key"])
    msg = cose.decode_sign1(data)
    assert msg.to_be_signed(aad).hex().upper() == vector["intermediates"]["ToBeSign_hex"].upper()
    if name in PROFILE_REJECTS:
        with pytest.raises(CoseError, match="alg .* must be in the protected header"):
            cose.verify_sign1(data, key, external_aad=aad)
        return
    verified = cose.verify_sign1(data, key, external_aad=aad)
    assert verified.payload == vector["input"]["plaintext"].encode()
    assert verified.alg == ALGS[sign0["alg"]]
    assert verified.tagged == (data[0] == 0xD2)
    if aad:
        with pytest.raises(SignatureError):
            cose.verify_sign1(data, key)


@pytest.mark.parametrize("name", FAIL)
def test_fail_vectors_are_rejected(refdata: Path, name: str) -> None:
    vector, sign0, data, aad = _case(refdata, name)
    failures = vector["input"]["failures"]
    expected: type[LedgerError] = CoseError if "ChangeCBORTag" in failures else SignatureError
    with pytest.raises(expected):
        cose.verify_sign1(data, verify_key(sign0["key"]), external_aad=aad)


@pytest.mark.parametrize("name", [n for n in PASS if n not in PROFILE_REJECTS])
def test_signing_reproduces_the_vector(refdata: Path, name: str) -> None:
    vector, sign0, data, aad = _case(refdata, name)
    key = signing_key(sign0["key"])
    protected = _headers(sign0.get("protected", {}))
    unprotected = _headers(sign0.get("unprotected", {}))
    plaintext = vector["input"]["plaintext"].encode()
    ours = cose.sign1(
        plaintext, key, protected=protected, unprotected=unprotected, external_aad=aad, tagged=data[0] == 0xD2
    )
    msg = cose.decode_sign1(ours)
    assert msg.to_be_signed(aad).hex().upper() == vector["intermediates"]["ToBeSign_hex"].upper()
    cose.verify_sign1(ours, key.public, external_aad=aad)
    if key.crv in ("Ed25519", "Ed448"):  # EdDSA is deterministic: the very same bytes
        assert ours == data
    else:  # ECDSA is randomised: everything but the signature is the same
        assert ours[: -len(msg.signature)] == data[: -len(msg.signature)]


def test_eddsa_sig_01_ed25519_byte_for_byte(refdata: Path) -> None:
    vector = _load(refdata / "cose/eddsa-examples/eddsa-sig-01.json")
    sign0 = vector["input"]["sign0"]
    key = signing_key(sign0["key"])
    ours = cose.sign1(b"This is the content.", key, content_type=0, unprotected={cose.HDR_KID: b"11"})
    assert ours.hex().upper() == vector["output"]["cbor"].upper()


def test_es256_round_trip_and_upstream_verifies(refdata: Path) -> None:
    vector = _load(refdata / "cose/RFC8152/Appendix_C_2_1.json")
    key = signing_key(vector["input"]["sign0"]["key"])
    assert key.alg == -7
    signatures = set()
    for _ in range(3):
        ours = cose.sign1(b"This is the content.", key, unprotected={cose.HDR_KID: b"11"})
        msg = cose.verify_sign1(ours, key.public)
        assert len(msg.signature) == 64
        signatures.add(msg.signature)
    assert len(signatures) == 3  # randomised ECDSA, each one verifies
    cose.verify_sign1(bytes.fromhex(vector["output"]["cbor"]), key.public)


# ---------------------------------------------------------------------------- the A0 decision


def test_a0_protected_header_is_accepted_as_empty_and_signed_as_zero_length(refdata: Path) -> None:
    """RFC 9052 §3: recipients MUST accept h'' and h'A0'; §4.4: an empty protected header is
    the zero-length bstr in the Sig_structure. sign-pass-01's signature proves the signer did
    exactly that: it verifies over h'' and not over the literal h'A0'."""
    vector = _load(refdata / "cose/sign1-tests/sign-pass-01.json")
    sign0 = vector["input"]["sign0"]
    data = bytes.fromhex(vector["output"]["cbor"])
    key = verify_key(sign0["key"])
    msg = cose.decode_sign1(data)
    assert msg.protected_raw == b"\xa0" and msg.protected == {}
    assert msg.unprotected == {cose.HDR_ALG: -7, cose.HDR_KID: b"11"}
    assert msg.to_be_signed() == cose.sig_structure(b"", b"", msg.payload or b"")
    key.verify(msg.signature, msg.to_be_signed(), alg=-7)
    with pytest.raises(SignatureError):
        key.verify(msg.signature, cose.sig_structure(b"\xa0", b"", msg.payload or b""), alg=-7)


def test_a0_and_empty_protected_headers_never_verify_in_our_profile(refdata: Path) -> None:
    """...but alg must be protected, so a message with an empty protected header (sent either
    way) is rejected as outside the profile, even with a valid signature."""
    key = SigningKey.generate("P-256")
    for protected_raw in (b"", b"\xa0"):
        tbs = cose.sig_structure(b"", b"", b"payload")
        body = [protected_raw, {cose.HDR_ALG: -7}, b"payload", key.sign(tbs)]
        data = cbor.dumps(Tag(18, body))
        key.public.verify(cose.decode_sign1(data).signature, cose.decode_sign1(data).to_be_signed())
        with pytest.raises(CoseError, match="must be in the protected header"):
            cose.verify_sign1(data, key.public)
    # and our signer never sends h'A0': alg is always there
    assert cose.decode_sign1(cose.sign1(b"x", key)).protected_raw == cbor.dumps({1: -7})


# ---------------------------------------------------------------------------- profile rules


def _forge(key: SigningKey, protected: dict[Any, Any], unprotected: dict[Any, Any], payload: bytes = b"p") -> bytes:
    """A correctly signed COSE_Sign1 with arbitrary headers (bypassing sign1's own checks), so a
    rejection can only come from the rule under test, not from the signature."""
    protected_raw = cbor.dumps(protected)
    alg = protected.get(1)
    signature = key.sign(cose.sig_structure(protected_raw, b"", payload), alg=alg if type(alg) is int else key.alg)
    return cbor.dumps(Tag(18, [protected_raw, unprotected, payload, signature]))


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return SigningKey.from_private_bytes("Ed25519", bytes(range(32)))


def test_forge_helper_makes_valid_messages(ed_key: SigningKey) -> None:
    cose.verify_sign1(_forge(ed_key, {1: -8}, {4: b"k"}), ed_key.public)


@pytest.mark.parametrize(
    ("protected", "unprotected", "message"),
    [
        ({1: -8, 2: [99], 99: 1}, {}, r"critical header labels \[99\] are not understood"),
        ({1: -8, 2: ["x"], "x": 1}, {}, "not understood"),
        ({1: -8, 2: [98]}, {}, "not in the protected header"),
        ({1: -8, 2: [4]}, {4: b"k"}, "not in the protected header"),
        ({1: -8, 2: []}, {}, "non-empty array"),
        ({1: -8, 2: 4, 4: b"k"}, {}, "non-empty array"),
        ({1: -8}, {2: [1]}, "crit .* must be in the protected header"),
        ({1: -8, 4: b"a"}, {4: b"b"}, r"labels \[4\] are in both"),
        ({1: -8}, {1: -8}, r"labels \[1\] are in both"),
        ({1: -8, 4: "text kid"}, {}, "kid must be a byte string"),
        ({1: -8}, {4: 5}, "kid must be a byte string"),
        ({1: -8, 3: -1}, {}, "content type"),
        ({1: -8, 3: 70000}, {}, "content type"),
        ({1: b"\xf8"}, {}, "alg must be an int or text"),
        ({1: -8, b"lbl": 1}, {}, "label b'lbl' is not an int or text"),
        ({}, {1: -8}, r"alg \(label 1\) must be in the protected header \(only in the unprotected header\)"),
        ({4: b"k"}, {}, r"must be in the protected header \(missing\)"),
    ],
)
def test_header_rules(ed_key: SigningKey, protected: dict[Any, Any], unprotected: dict[Any, Any], message: str) -> None:
    with pytest.raises(CoseError, match=message):
        cose.verify_sign1(_forge(ed_key, protected, unprotected), ed_key.public)


def test_critical_headers_the_caller_understands_are_accepted(ed_key: SigningKey) -> None:
    data = _forge(ed_key, {1: -8, 2: [99, 4], 4: b"k", 99: "v"}, {})
    with pytest.raises(CoseError, match="not understood"):
        cose.verify_sign1(data, ed_key.public)
    msg = cose.verify_sign1(data, ed_key.public, understood={99})
    assert msg.protected[99] == "v" and msg.kid == b"k"


def test_tags_other_than_18_are_rejected_untagged_is_accepted(ed_key: SigningKey) -> None:
    untagged = cose.sign1(b"payload", ed_key, tagged=False)
    assert untagged[0] == 0x84
    assert cose.verify_sign1(untagged, ed_key.public).tagged is False
    for tag in (17, 61, 98, 998):
        wrapped = cbor.dumps(Tag(tag, cbor.loads(untagged)))
        with pytest.raises(CoseError, match=f"CBOR tag {tag} is not COSE_Sign1"):
            cose.verify_sign1(wrapped, ed_key.public)


def test_alg_must_fit_the_key(ed_key: SigningKey) -> None:
    p256 = SigningKey.generate("P-256")
    es256 = cose.sign1(b"payload", p256)
    with pytest.raises(SignatureError, match="cannot be used with an Ed25519 key"):
        cose.verify_sign1(es256, ed_key.public)
    eddsa = cose.sign1(b"payload", ed_key)
    with pytest.raises(SignatureError, match="cannot be used with a P-256 key"):
        cose.verify_sign1(eddsa, p256.public)
    other = SigningKey.generate("Ed25519")
    with pytest.raises(SignatureError, match="does not verify"):
        cose.verify_sign1(eddsa, other.public)


def test_detached_payload_and_external_aad(ed_key: SigningKey) -> None:
    detached = cose.sign1(b"payload", ed_key, detached=True, external_aad=b"ctx")
    msg = cose.decode_sign1(detached)
    assert msg.payload is None
    with pytest.raises(CoseError, match="detached payload not supplied"):
        cose.verify_sign1(detached, ed_key.public, external_aad=b"ctx")
    cose.verify_sign1(detached, ed_key.public, external_aad=b"ctx", detached_payload=b"payload")
    with pytest.raises(SignatureError):
        cose.verify_sign1(detached, ed_key.public, external_aad=b"ctx", detached_payload=b"other")
    with pytest.raises(SignatureError):
        cose.verify_sign1(detached, ed_key.public, detached_payload=b"payload")
    attached = cose.sign1(b"payload", ed_key)
    with pytest.raises(CoseError, match="must not be given too"):
        cose.verify_sign1(attached, ed_key.public, detached_payload=b"payload")


def test_key_resolver_and_kid(ed_key: SigningKey) -> None:
    keys = {b"a": SigningKey.generate("Ed25519"), b"b": ed_key}
    data = cose.sign1(b"payload", ed_key, kid=b"b")
    seen: list[bytes | None] = []

    def resolve(msg: cose.Sign1) -> VerifyKey:
        seen.append(msg.kid)
        return keys[msg.kid or b""].public

    assert cose.verify_sign1(data, resolve).payload == b"payload"
    assert seen == [b"b"]
    assert cose.decode_sign1(data).protected[cose.HDR_KID] == b"b"  # kid is protected


def test_verify_returns_the_message_and_accepts_a_decoded_one(ed_key: SigningKey) -> None:
    data = cose.sign1(b"payload", ed_key, content_type="application/cbor", unprotected={"note": "x"})
    msg = cose.decode_sign1(data)
    again = cose.verify_sign1(msg, ed_key.public)
    assert again is msg and msg.content_type == "application/cbor" and msg.unprotected == {"note": "x"}
    doctored = cose.Sign1(msg.protected_raw, {1: -7}, msg.unprotected, msg.payload, msg.signature)
    with pytest.raises(CoseError, match="does not match"):
        cose.verify_sign1(doctored, ed_key.public)


def test_envelope_must_be_deterministic_unless_asked(ed_key: SigningKey) -> None:
    """The same signature in a second wire form (a long length head) is refused by default, so a
    replay cache keyed on message bytes cannot be bypassed by re-encoding the envelope."""
    data = cose.sign1(b"payload", ed_key)
    msg = cose.decode_sign1(data)
    sig = msg.signature
    stretched = data[: -len(sig) - 2] + b"\x59\x00\x40" + sig  # 64-byte bstr with a 2-byte length
    assert stretched != data
    with pytest.raises(CoseError, match="not valid CBOR.*shortest form"):
        cose.decode_sign1(stretched)
    assert cose.verify_sign1(stretched, ed_key.public, deterministic=False).signature == sig
    head = cbor.encode_head
    unsorted = b"".join(  # unprotected {"b": 1, "a": 1}: keys out of order
        (b"\xd2\x84", head(2, len(msg.protected_raw)), msg.protected_raw, bytes.fromhex("a2616201616101"))
        + (head(2, 7), b"payload", head(2, 64), sig)
    )
    with pytest.raises(CoseError, match="out of order"):
        cose.decode_sign1(unsorted)
    assert cose.verify_sign1(unsorted, ed_key.public, deterministic=False).unprotected == {"b": 1, "a": 1}


@pytest.mark.parametrize(
    ("hexstr", "message"),
    [
        ("d283404040", "array of 4"),
        ("d28441ffa0f640", "protected header is not valid CBOR"),
        ("d2844180a0f640", "must encode a map"),
        ("d28440a0f6f6", "signature must be a byte string"),
        ("d28440a0614040", "payload must be a byte string or nil"),
        ("d2844080f640", "unprotected header must be a map"),
        ("d28401a0f640", "protected header must be a byte string"),
        ("d28540a0f64040", "array of 4"),
        ("a0", "array of 4"),
        ("d284", "not valid CBOR"),
    ],
)
def test_malformed_messages_say_what(hexstr: str, message: str) -> None:
    with pytest.raises(CoseError, match=message):
        cose.decode_sign1(bytes.fromhex(hexstr))


def test_signing_refuses_bad_headers(ed_key: SigningKey) -> None:
    with pytest.raises(CoseError, match="in both"):
        cose.sign1(b"x", ed_key, kid=b"a", unprotected={cose.HDR_KID: b"b"})
    with pytest.raises(CoseError, match="kid must be a byte string"):
        cose.sign1(b"x", ed_key, kid="a")  # type: ignore[arg-type]
    with pytest.raises(CoseError, match="payload must be bytes"):
        cose.sign1("text", ed_key)  # type: ignore[arg-type]
