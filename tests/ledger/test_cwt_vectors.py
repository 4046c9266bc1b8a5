"""CWT (RFC 8392) against the Appendix A examples in ../shared/refdata/cwt, then validity
(exp/nbf with skew), audience, the CWT tag and strict claim typing."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from ledger_lite import cbor, cose, cwt
from ledger_lite.cwt import Claims
from ledger_lite.errors import (
    AudienceError,
    CborError,
    CoseError,
    SchemaError,
    SignatureError,
    ValidityError,
    VerificationError,
)
from ledger_lite.keys import SigningKey, VerifyKey

# RFC 8392 A.1, decoded by hand from the RFC's text
A1_CLAIMS = Claims(
    iss="coap://as.example.com",
    sub="erikw",
    aud="coap://light.example.com",
    exp=1444064944,
    nbf=1443944944,
    iat=1443944944,
    cti=bytes.fromhex("0b71"),
)
EXP, NBF = 1444064944, 1443944944


def _vector(refdata: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((refdata / "cwt/cose-wg-examples" / f"{name}.json").read_text())
    return data


def _a3_key(vector: dict[str, Any]) -> SigningKey:
    jwk = vector["input"]["sign0"]["key"]
    key = SigningKey.from_private_bytes("P-256", bytes.fromhex(jwk["d_hex"]))
    assert key.public == VerifyKey.from_ec_coordinates(
        "P-256", bytes.fromhex(jwk["x_hex"]), bytes.fromhex(jwk["y_hex"])
    )
    return key


@pytest.mark.parametrize("name", ["A_3", "A_4", "A_5"])
def test_claims_encode_to_the_recorded_bytes(refdata: Path, name: str) -> None:
    plaintext = bytes.fromhex(_vector(refdata, name)["input"]["plaintext_hex"])
    assert cbor.dumps(A1_CLAIMS.to_map()) == plaintext
    assert Claims.from_map(cbor.loads(plaintext)) == A1_CLAIMS


def test_a7_float_iat_encodes_as_float64(refdata: Path) -> None:
    plaintext = bytes.fromhex(_vector(refdata, "A_7")["input"]["plaintext_hex"])
    claims = Claims(iat=1443944944.5)
    assert cbor.dumps(claims.to_map()) == plaintext  # shortest exact float: needs float64
    assert Claims.from_map(cbor.loads(plaintext)) == claims


def test_a6_nests_the_a3_token(refdata: Path) -> None:
    a3 = _vector(refdata, "A_3")
    assert _vector(refdata, "A_6")["input"]["plaintext_hex"].upper() == a3["output"]["cbor"].upper()


def test_a3_signed_cwt_verifies(refdata: Path) -> None:
    vector = _vector(refdata, "A_3")
    key = _a3_key(vector).public
    data = bytes.fromhex(vector["output"]["cbor"])
    msg = cose.decode_sign1(data)
    assert msg.to_be_signed().hex().upper() == vector["intermediates"]["ToBeSign_hex"].upper()
    assert cwt.verify_cwt(data, key, now=NBF + 1000) == A1_CLAIMS
    assert cwt.verify_cwt(data, key, now=NBF + 1000, audience="coap://light.example.com") == A1_CLAIMS
    with pytest.raises(ValidityError, match=r"expired: exp 1444064944 is 60\.000 s before now"):
        cwt.verify_cwt(data, key, now=EXP + 60)  # the 2015-10-05T17:09:04Z of the README, plus skew
    with pytest.raises(SignatureError):
        cwt.verify_cwt(data, SigningKey.generate("P-256").public, now=NBF + 1000)


def test_a3_signing_round_trip(refdata: Path) -> None:
    vector = _vector(refdata, "A_3")
    key = _a3_key(vector)
    token = cwt.sign_cwt(A1_CLAIMS, key)
    msg = cose.decode_sign1(token)
    assert msg.protected_raw == bytes.fromhex("a10126") and msg.unprotected == {}
    assert msg.to_be_signed().hex().upper() == vector["intermediates"]["ToBeSign_hex"].upper()
    assert token[: -len(msg.signature)] == bytes.fromhex(vector["output"]["cbor"])[: -len(msg.signature)]
    assert cwt.verify_cwt(token, key.public, now=NBF) == A1_CLAIMS


@pytest.mark.parametrize("name", ["A_4", "A_7"])
def test_maced_examples_mac_structure_and_tag(refdata: Path, name: str) -> None:
    """COSE_Mac0 is not supported; this only checks that our claim bytes make the recorded
    MAC_structure and HMAC 256/64 tag (alg 4), i.e. that the bytes are right."""
    vector = _vector(refdata, name)
    plaintext = bytes.fromhex(vector["input"]["plaintext_hex"])
    protected = cbor.dumps({1: 4})
    to_mac = cbor.dumps(["MAC0", protected, b"", plaintext])
    assert to_mac.hex().upper() == vector["intermediates"]["ToMac_hex"].upper()
    secret = bytes.fromhex(vector["input"]["mac0"]["recipients"][0]["key"]["k_hex"])
    tag = hmac.new(secret, to_mac, hashlib.sha256).digest()[:8]
    assert cbor.dumps(cbor.Tag(17, [protected, {}, plaintext, tag])).hex().upper() == vector["output"]["cbor"].upper()
    with pytest.raises(CoseError, match="tag 17 is not COSE_Sign1"):
        cwt.verify_cwt(bytes.fromhex(vector["output"]["cbor"]), SigningKey.generate().public, now=NBF)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.from_private_bytes("Ed25519", bytes(range(1, 33)))


def test_validity_window_with_skew(key: SigningKey) -> None:
    token = cwt.sign_cwt(Claims(iss="rsu-7", exp=2000, nbf=1000), key, kid=b"rsu-7")
    vk = key.public
    for now in (940, 1000, 1500, 2000, 2059.999):
        assert cwt.verify_cwt(token, vk, now=now).iss == "rsu-7"
    with pytest.raises(ValidityError, match=r"expired: exp 2000 is 60\.000 s before now 2060"):
        cwt.verify_cwt(token, vk, now=2060)
    with pytest.raises(ValidityError, match=r"not yet valid: nbf 1000 is 60\.001 s after now 939\.999"):
        cwt.verify_cwt(token, vk, now=939.999)
    with pytest.raises(ValidityError, match="expired"):
        cwt.verify_cwt(token, vk, now=2000, skew=0)
    assert cwt.verify_cwt(token, vk, now=1999.5, skew=0).exp == 2000
    assert cwt.verify_cwt(cwt.sign_cwt(Claims(sub="x"), key), vk, now=1e12).sub == "x"  # no exp, no nbf


def test_audience(key: SigningKey) -> None:
    single = cwt.sign_cwt(Claims(aud="obu:42"), key)
    several = cwt.sign_cwt(Claims(aud=("obu:1", "obu:42")), key)
    none = cwt.sign_cwt(Claims(), key)
    for token in (single, several):
        assert "obu:42" in cwt.verify_cwt(token, key.public, now=0, audience="obu:42").audiences()
        with pytest.raises(AudienceError, match="does not include 'obu:7'"):
            cwt.verify_cwt(token, key.public, now=0, audience="obu:7")
    with pytest.raises(AudienceError):
        cwt.verify_cwt(none, key.public, now=0, audience="obu:42")
    assert cwt.verify_cwt(several, key.public, now=0).aud == ("obu:1", "obu:42")
    assert issubclass(AudienceError, VerificationError)


def test_cwt_tag(key: SigningKey) -> None:
    claims = Claims(iss="a", cti=b"\x01", extra={-70000: "private", "acc:role": ["rsu"]})
    tagged = cwt.sign_cwt(claims, key, tag_cwt=True)
    assert tagged[:3] == b"\xd8\x3d\xd2"
    assert cwt.verify_cwt(tagged, key.public, now=0) == claims
    assert cbor.loads(tagged).tag == cwt.TAG_CWT
    untagged_inside = b"\xd8\x3d" + cose.sign1(cbor.dumps(claims.to_map()), key, tagged=False)
    with pytest.raises(CoseError, match="must be followed by the COSE_Sign1 tag 18"):
        cwt.verify_cwt(untagged_inside, key.public, now=0)
    # a bare (untagged) COSE_Sign1 CWT is accepted, like cose.verify_sign1 accepts it
    assert cwt.verify_cwt(cose.sign1(cbor.dumps(claims.to_map()), key, tagged=False), key.public, now=0) == claims


@pytest.mark.parametrize(
    ("claims", "field"),
    [
        ({1: 5}, "iss"),
        ({2: b"x"}, "sub"),
        ({3: []}, "aud"),
        ({3: ["a", 1]}, "aud"),
        ({4: True}, "exp"),
        ({4: "2030-01-01"}, "exp"),
        ({5: None}, "nbf"),
        ({6: [1]}, "iat"),
        ({7: "id"}, "cti"),
        ({8: 1}, "cnf"),
        ({"exp": 5}, "exp"),  # the registered name as a text key
        ({b"k": 1}, "b'k'"),
    ],
)
def test_claims_are_strictly_typed(key: SigningKey, claims: dict[Any, Any], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        Claims.from_map(claims)
    assert info.value.field == field and info.value.kind == "cwt"
    token = cose.sign1(cbor.dumps(claims), key)  # well signed, but the claims are wrong
    with pytest.raises(SchemaError):
        cwt.verify_cwt(token, key.public, now=0)


def test_claims_payload_must_be_a_deterministic_map(key: SigningKey) -> None:
    with pytest.raises(SchemaError, match="must be a map"):
        cwt.verify_cwt(cose.sign1(cbor.dumps([1, 2]), key), key.public, now=0)
    with pytest.raises(CborError, match="CWT claims set: .*out of order"):
        cwt.verify_cwt(cose.sign1(bytes.fromhex("a2020101617a"), key), key.public, now=0)
    with pytest.raises(CoseError, match="detached"):
        cwt.verify_cwt(cose.sign1(cbor.dumps({}), key, detached=True), key.public, now=0)


def test_round_trip_keeps_every_claim(key: SigningKey) -> None:
    claims = Claims(
        iss="did:key:z6Mk",
        sub="vin:WVW000",
        aud=("rsu:1",),
        exp=1700003600,
        nbf=1700000000,
        iat=1700000000.25,
        cti=b"\x00\x01",
        cnf={1: key.public.cose_key()},
        extra={9: 1, "x": {"nested": [1.5, None]}},
    )
    assert Claims.from_map(claims.to_map()) == claims
    assert cwt.verify_cwt(cwt.sign_cwt(claims, key), key.public, now=1700000001) == claims
    with pytest.raises(SchemaError, match="registered claim"):
        Claims(extra={4: 1})


def test_bad_arguments_are_bugs_not_peer_errors(key: SigningKey) -> None:
    token = cwt.sign_cwt(Claims(), key)
    with pytest.raises(ValueError, match="now"):
        cwt.verify_cwt(token, key.public, now=float("nan"))
    with pytest.raises(ValueError, match="skew"):
        cwt.verify_cwt(token, key.public, now=0, skew=-1)
