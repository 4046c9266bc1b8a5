"""did:key against every vector of w3c-ccg/did-method-key (../shared/refdata/didkey): keys from
the vectors' private material, DIDs, resolution back to the key, derived X25519 keys and the full
DID documents; then what a peer could send that is not a did:key we accept."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from ledger_lite import didkey
from ledger_lite.didkey import (
    base58btc_decode,
    base58btc_encode,
    did_document,
    did_key,
    did_key_from_raw,
    resolve,
    resolve_key_agreement,
    verification_method_id,
)
from ledger_lite.errors import DidError, MalformedError
from ledger_lite.keys import KeyAgreementKey, SigningKey, VerifyKey


def _load(refdata: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((refdata / "didkey/w3c-ccg-did-method-key" / name).read_text())
    return data


def _b64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _pub(pair: dict[str, Any]) -> bytes:
    """The public key of a vector's key pair, base58 or JWK."""
    return base58btc_decode(pair["publicKeyBase58"]) if "publicKeyBase58" in pair else _b64u(pair["publicKeyJwk"]["x"])


def _priv(pair: dict[str, Any]) -> bytes:
    return (
        base58btc_decode(pair["privateKeyBase58"]) if "privateKeyBase58" in pair else _b64u(pair["privateKeyJwk"]["d"])
    )


def _style(vm: dict[str, Any]) -> str:
    return "jwk" if "publicKeyJwk" in vm else "base58"


@pytest.fixture(scope="module")
def vectors(refdata: Path) -> dict[str, dict[str, Any]]:
    return {
        name: _load(refdata, name)
        for name in ("ed25519-x25519.json", "nist-curves.json", "x25519.json", "secp256k1.json")
    }


def test_every_vector_file_is_used(refdata: Path, vectors: dict[str, dict[str, Any]]) -> None:
    files = {p.name for p in (refdata / "didkey/w3c-ccg-did-method-key").glob("*.json")}
    assert files == set(vectors)
    assert [len(v) for v in vectors.values()] == [5, 7, 1, 6]
    assert len(vectors["x25519.json"]["didDocument"]) == 4


# --- Ed25519 (+ derived X25519) -------------------------------------------------------------


def test_ed25519_vectors(vectors: dict[str, dict[str, Any]]) -> None:
    for did, v in vectors["ed25519-x25519.json"].items():
        seed = bytes.fromhex(v["seed"])
        sk = SigningKey.from_private_bytes("Ed25519", seed)
        vkp = v["verificationKeyPair"]
        listed = (
            base58btc_decode(vkp["publicKeyBase58"]) if "publicKeyBase58" in vkp else _b64u(vkp["publicKeyJwk"]["x"])
        )
        assert sk.public.raw() == listed
        assert did_key(sk.public) == did
        assert resolve(did) == sk.public
        assert vkp["id"].endswith("#" + did[len("did:key:") :])
        assert resolve(verification_method_id(did)) == sk.public
        # the keyAgreement key: X25519 derived from the Ed25519 key (public from the public key
        # alone; the vector's private key is the clamped SHA-512 of the seed)
        kap = v["keyAgreementKeyPair"]
        x_pub = (
            base58btc_decode(kap["publicKeyBase58"]) if "publicKeyBase58" in kap else _b64u(kap["publicKeyJwk"]["x"])
        )
        x_priv = (
            base58btc_decode(kap["privateKeyBase58"]) if "privateKeyBase58" in kap else _b64u(kap["privateKeyJwk"]["d"])
        )
        derived = resolve_key_agreement(did)
        assert derived.raw() == x_pub
        h = bytearray(hashlib.sha512(seed).digest()[:32])
        h[0] &= 248
        h[31] = (h[31] & 127) | 64
        assert bytes(h) == x_priv
        assert x25519.X25519PrivateKey.from_private_bytes(x_priv).public_key().public_bytes_raw() == x_pub
        x_fragment = kap["id"].split("#")[1]
        assert did_key(derived) == "did:key:" + x_fragment
        assert resolve_key_agreement(f"{did}#{x_fragment}") == derived
        # the whole document, in the vector's style
        assert did_document(did, style=_style(vkp)) == v["didDocument"]
    assert (
        did_document("did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp")
        == next(iter(vectors["ed25519-x25519.json"].values()))["didDocument"]
    )


# --- P-256 / P-384 / P-521 --------------------------------------------------------------------


def test_nist_curve_vectors(vectors: dict[str, dict[str, Any]]) -> None:
    seen = set()
    for did, v in vectors["nist-curves.json"].items():
        vm = v["verificationMethod"]
        if "publicKeyJwk" in vm:
            jwk = vm["publicKeyJwk"]
            crv = jwk["crv"]
            vk = VerifyKey.from_ec_coordinates(crv, _b64u(jwk["x"]), _b64u(jwk["y"]))
            d = _b64u(vm["privateKeyJwk"]["d"])
        else:  # P256Key2021: compressed point and scalar in base58
            crv = "P-256"
            vk = VerifyKey.from_raw(crv, base58btc_decode(vm["publicKeyBase58"]))
            assert base58btc_decode(vm["publicKeyBase58"]) == vk.raw()
            d = base58btc_decode(vm["privateKeyBase58"])
        seen.add(crv)
        assert SigningKey.from_private_bytes(crv, d).public == vk
        assert did_key(vk) == did
        assert did_key_from_raw(crv, vk.raw(compressed=False)) == did  # uncompressed input is compressed
        resolved = resolve(did)
        assert resolved == vk and resolved.raw(compressed=False) == vk.raw(compressed=False)  # y recovered
        parsed = didkey.decode(did)
        assert parsed.crv == crv and parsed.public == vk.raw() and parsed.public[0] in (2, 3)
        assert did_document(did, style=_style(vm)) == v["didDocument"]
        if "publicKeyJwk" in vm:
            assert did_document(did) == v["didDocument"]  # auto: JsonWebKey2020 for NIST curves
    assert seen == {"P-256", "P-384", "P-521"}


def test_p256_prefix_is_varint_0x1200() -> None:
    vk = SigningKey.generate("P-256").public
    data = base58btc_decode(did_key(vk)[len("did:key:z") :])
    assert data[:2] == b"\x80\x24" and data[2:] == vk.raw() and len(data) == 35


# --- X25519 ---------------------------------------------------------------------------------


def test_x25519_vectors(vectors: dict[str, dict[str, Any]]) -> None:
    for did, doc in vectors["x25519.json"]["didDocument"].items():
        vm = doc["verificationMethod"][0]
        raw = _pub(vm)
        key = resolve_key_agreement(did)
        assert isinstance(key, KeyAgreementKey) and key.raw() == raw
        assert did_key(KeyAgreementKey.from_raw("X25519", raw)) == did
        with pytest.raises(DidError, match="key-agreement key, not a signing key"):
            resolve(did)
        assert did_document(did, style=_style(vm)) == doc


# --- secp256k1: encode / decode / document only ------------------------------------------------


def test_secp256k1_vectors_encode_decode_and_document(vectors: dict[str, dict[str, Any]]) -> None:
    for did, v in vectors["secp256k1.json"].items():
        vkp = v["verificationKeyPair"]
        if "privateKeyJwk" in vkp:
            d = _b64u(vkp["privateKeyJwk"]["d"])
        else:
            d = base58btc_decode(vkp["privateKeyBase58"])
            assert d == bytes.fromhex(v["seed"])
        priv = ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256K1())
        pub = priv.public_key()
        compressed = pub.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        uncompressed = pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        if "publicKeyBase58" in vkp:
            assert base58btc_decode(vkp["publicKeyBase58"]) == compressed
        else:
            assert uncompressed[1:33] == _b64u(vkp["publicKeyJwk"]["x"])
            assert uncompressed[33:] == _b64u(vkp["publicKeyJwk"]["y"])
        assert did_key_from_raw("secp256k1", compressed) == did
        assert did_key_from_raw("secp256k1", uncompressed) == did
        parsed = didkey.decode(did)
        assert (parsed.codec, parsed.crv, parsed.public) == ("secp256k1-pub", "secp256k1", compressed)
        with pytest.raises(DidError, match="secp256k1 signatures are not accepted"):
            resolve(did)
        assert did_document(did, style=_style(vkp)) == v["didDocument"]
        assert priv.private_bytes(Encoding.DER, PrivateFormat.PKCS8, _no_enc())  # the key is usable


def _no_enc() -> Any:
    from cryptography.hazmat.primitives.serialization import NoEncryption

    return NoEncryption()


# --- round trips and other shapes --------------------------------------------------------------


@pytest.mark.parametrize("crv", ["Ed25519", "Ed448", "P-256", "P-384", "P-521"])
def test_generated_keys_round_trip(crv: str) -> None:
    sk = SigningKey.generate(crv)
    did = did_key(sk.public)
    assert resolve(did) == sk.public
    signature = sk.sign(b"attested")
    resolve(verification_method_id(did)).verify(signature, b"attested")
    doc = did_document(did, style="multikey")
    assert doc["verificationMethod"][0] == {
        "id": verification_method_id(did),
        "type": "Multikey",
        "controller": did,
        "publicKeyMultibase": did[len("did:key:") :],
    }
    assert doc["@context"] == ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"]


def test_no_base58_document_form_for_p384() -> None:
    did = did_key(SigningKey.generate("P-384").public)
    with pytest.raises(DidError, match="style='jwk'"):
        did_document(did, style="base58")


@given(st.binary(max_size=80))
def test_base58_round_trip(data: bytes) -> None:
    text = base58btc_encode(data)
    assert base58btc_decode(text) == data


@given(st.text(alphabet="123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", max_size=60))
def test_base58_is_one_to_one(text: str) -> None:
    assert base58btc_encode(base58btc_decode(text)) == text


def test_base58_known_values() -> None:
    assert base58btc_encode(b"") == "" and base58btc_encode(b"\x00\x00\x01") == "112"
    assert base58btc_encode(b"hello world") == "StV1DL6CwTryKyV"


# --- what we refuse --------------------------------------------------------------------------

ED = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
P256 = "did:key:zDnaerx9CtbPJ1q36T5Ln5wYt3MQYeGRG5ehnPAmxcf5mDZpv"


def _did(payload: bytes) -> str:
    return "did:key:z" + base58btc_encode(payload)


def _ed_raw() -> bytes:
    return didkey.decode(ED).public


def _p256_point() -> bytes:
    return resolve(P256).raw(compressed=False)


@pytest.mark.parametrize(
    ("did", "message"),
    [
        ("did:web:example.com", "unsupported DID method 'web'"),
        ("key:z6Mk", "does not start with 'did:key:'"),
        ("did:key:", "without a key"),
        ("did:key:" + "f" + _ed_raw().hex(), "multibase prefix 'f' is not base58btc"),
        ("did:key:u" + base64.urlsafe_b64encode(b"\xed\x01" + _ed_raw()).decode(), "prefix 'u'"),
        (ED.replace("z6Mk", "z6M0"), "'0' at position 2 is not a base58btc character"),
        (ED + "l", "'l' at position"),
        (ED + " ", "' ' at position"),
        ("did:key:z" + "2" * 200, "at most 128 accepted"),
        (_did(b"\x85\x24" + bytes(33)), "unsupported did:key multicodec 0x1205"),  # rsa-pub
        (_did(b"\x55" + _ed_raw()), "unsupported did:key multicodec 0x55"),  # raw
        (_did(b"\xed\x81\x00" + _ed_raw()), "not minimally encoded"),
        (_did(b"\xed"), "truncated"),
        (_did(b"\xed\x01" + _ed_raw()[:31]), "Ed25519 key must be 32 bytes, got 31"),
        (_did(b"\xed\x01" + _ed_raw() + b"\x00"), "must be 32 bytes, got 33"),
        (_did(b"\x80\x24" + _p256_point()), "uncompressed point; did:key needs the compressed form"),
        (_did(b"\x80\x24" + _p256_point()[:33]), "compressed point"),  # 0x04 prefix, 33 bytes
        (_did(b"\x80\x24" + b"\x02" + b"\xff" * 32), "invalid P-256 key"),  # x >= p: not on the curve
        (_did(b"\x80\x24" + resolve(P256).raw()[:20]), "got 20 bytes"),  # truncated
        (ED + "#other", "a DID has no fragment"),
    ],
)
def test_malformed_dids_are_refused(did: str, message: str) -> None:
    with pytest.raises(DidError, match=_escape(message)) as info:
        didkey.decode(did)
    assert isinstance(info.value, MalformedError)  # "a peer sent garbage"


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_resolve_checks_the_fragment() -> None:
    assert resolve(f"{ED}#{ED[len('did:key:') :]}") == resolve(ED)
    with pytest.raises(DidError, match="does not name this DID's signing key"):
        resolve(f"{ED}#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW")
    with pytest.raises(DidError, match="no X25519 key agreement"):
        resolve_key_agreement(P256)


def test_non_string_input() -> None:
    with pytest.raises(DidError, match="must be a string"):
        resolve(b"did:key:z6Mk")  # type: ignore[arg-type]
