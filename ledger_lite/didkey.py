"""did:key (W3C CCG did-method-key): a public key *is* the DID.

    did:key:z<base58btc(multicodec varint || public key)>

Key types (multicodec table): ed25519-pub 0xed, x25519-pub 0xec, secp256k1-pub 0xe7,
p256-pub 0x1200, p384-pub 0x1201, p521-pub 0x1202 (EC keys as *compressed* SEC1 points),
ed448-pub 0x1203.

- ``did_key(key)`` encodes a ``VerifyKey`` (or an X25519 ``KeyAgreementKey``).
- ``resolve(did)`` gives the ``VerifyKey`` of a signing DID (Ed25519, Ed448, P-256/384/521);
  it also takes a verification-method id (``did:key:z...#z...``) whose fragment names the key.
- ``resolve_key_agreement(did)`` gives a ``KeyAgreementKey``: an X25519 DID's key, or the X25519
  key derived from an Ed25519 DID (what the DID document lists under ``keyAgreement``).
- ``decode(did)`` parses any supported DID to a ``DidKey`` (codec, curve, raw key) after
  checking the key is a valid point. secp256k1 DIDs decode, encode and get a DID document, but
  do not resolve to a ``VerifyKey``: ES256K is not an algorithm this project accepts.
- ``did_document(did, style=...)`` builds the DID document: ``"auto"`` gives the shapes of the
  2022 test vectors (Ed25519VerificationKey2018 + X25519KeyAgreementKey2019, JsonWebKey2020 for
  the NIST curves, EcdsaSecp256k1VerificationKey2019), ``"base58"`` / ``"jwk"`` force one
  vector style, ``"multikey"`` the current spec's ``Multikey`` form.

Every malformed or unsupported DID raises ``DidError`` saying what is wrong; base58btc decoding
is strict (alphabet only, bounded length; the leading-'1' rule makes it one-to-one).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import DidError, KeyFormatError, UnsupportedAlgorithm
from .keys import KeyAgreementKey, VerifyKey

__all__ = [
    "DidKey",
    "base58btc_decode",
    "base58btc_encode",
    "decode",
    "did_document",
    "did_key",
    "did_key_from_raw",
    "resolve",
    "resolve_key_agreement",
    "verification_method_id",
    "x25519_from_ed25519",
]

PREFIX: Final = "did:key:"
#: longest method-specific id we parse (a P-521 key is ~95 characters)
MAX_ID_LEN: Final = 128

_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX: Final = {c: i for i, c in enumerate(_ALPHABET)}

DocumentStyle = Literal["auto", "base58", "jwk", "multikey"]


@dataclass(frozen=True)
class _Codec:
    name: str
    code: int
    crv: str
    size: int  # bytes of the raw key in the DID
    signing: bool  # resolves to a VerifyKey

    @property
    def prefix(self) -> bytes:
        return _varint(self.code)


_CODECS: Final = (
    _Codec("ed25519-pub", 0xED, "Ed25519", 32, True),
    _Codec("x25519-pub", 0xEC, "X25519", 32, False),
    _Codec("secp256k1-pub", 0xE7, "secp256k1", 33, False),
    _Codec("p256-pub", 0x1200, "P-256", 33, True),
    _Codec("p384-pub", 0x1201, "P-384", 49, True),
    _Codec("p521-pub", 0x1202, "P-521", 67, True),
    _Codec("ed448-pub", 0x1203, "Ed448", 57, True),
)
_BY_CODE: Final = {c.code: c for c in _CODECS}
_BY_CRV: Final = {c.crv: c for c in _CODECS}
_EC_POINT_CURVES: Final = {"P-256", "P-384", "P-521", "secp256k1"}


# --- base58btc and varints --------------------------------------------------------------------


def base58btc_encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (no multibase prefix); leading zero bytes become '1's."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def base58btc_decode(text: str, *, max_len: int = MAX_ID_LEN) -> bytes:
    """Strict inverse of ``base58btc_encode``: only alphabet characters, at most ``max_len``."""
    if not isinstance(text, str):
        raise DidError(f"base58btc text must be a string, not {type(text).__name__}")
    if len(text) > max_len:
        raise DidError(f"base58btc text is {len(text)} characters (at most {max_len} accepted)")
    n = 0
    for pos, ch in enumerate(text):
        digit = _INDEX.get(ch)
        if digit is None:
            raise DidError(f"{ch!r} at position {pos} is not a base58btc character")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes) -> tuple[int, int]:
    """(value, bytes used) of an unsigned varint; minimal encoding only, at most 4 bytes."""
    value = 0
    for i, byte in enumerate(data[:4]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise DidError("multicodec varint is not minimally encoded")
            return value, i + 1
    raise DidError("multicodec varint is truncated or longer than 4 bytes")


# --- decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DidKey:
    """A parsed did:key: its multicodec name, curve and raw public key (compressed for EC)."""

    did: str
    codec: str
    crv: str
    public: bytes

    @property
    def fragment(self) -> str:
        """The multibase value, used as the verification-method fragment."""
        return self.did[len(PREFIX) :]

    @property
    def signing(self) -> bool:
        return _BY_CRV[self.crv].signing


def _split(did_or_vm: str) -> tuple[str, str | None]:
    if not isinstance(did_or_vm, str):
        raise DidError(f"a DID must be a string, not {type(did_or_vm).__name__}")
    did, sep, fragment = did_or_vm.partition("#")
    return did, (fragment if sep else None)


def decode(did: str) -> DidKey:
    """Parse and check a did:key (no fragment); ``DidError`` says what is wrong."""
    did, fragment = _split(did)
    if fragment is not None:
        raise DidError(f"{_short(did)}: a DID has no fragment (use resolve() for a key id)")
    if not did.startswith(PREFIX):
        method = did.split(":")[1] if did.count(":") >= 2 and did.startswith("did:") else None
        if method is not None:
            raise DidError(f"unsupported DID method {method!r} (only did:key)")
        raise DidError(f"not a DID: {_short(did)!r} does not start with {PREFIX!r}")
    mb = did[len(PREFIX) :]
    if not mb:
        raise DidError("did:key without a key")
    if mb[0] != "z":
        raise DidError(f"multibase prefix {mb[0]!r} is not base58btc ('z'); did:key uses 'z'")
    data = base58btc_decode(mb[1:])
    code, used = _read_varint(data)
    codec = _BY_CODE.get(code)
    if codec is None:
        raise DidError(f"unsupported did:key multicodec 0x{code:x} (supported: {_supported()})")
    raw = data[used:]
    _check_raw(codec, raw)
    return DidKey(did, codec.name, codec.crv, raw)


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _supported() -> str:
    return ", ".join(f"{c.name} 0x{c.code:x}" for c in _CODECS)


def _check_raw(codec: _Codec, raw: bytes) -> None:
    if codec.crv in _EC_POINT_CURVES:
        if len(raw) == 2 * codec.size - 1 and raw[:1] == b"\x04":
            raise DidError(f"{codec.crv} key is an uncompressed point; did:key needs the compressed form")
        if len(raw) != codec.size or raw[0] not in (2, 3):
            raise DidError(
                f"{codec.crv} key must be a compressed point ({codec.size} bytes starting 0x02/0x03), "
                f"got {len(raw)} bytes"
            )
    elif len(raw) != codec.size:
        raise DidError(f"{codec.crv} key must be {codec.size} bytes, got {len(raw)}")
    try:
        if codec.signing:
            VerifyKey.from_raw(codec.crv, raw)
        elif codec.crv == "X25519":
            KeyAgreementKey.from_raw(codec.crv, raw)
        else:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
    except (KeyFormatError, UnsupportedAlgorithm, ValueError) as err:
        raise DidError(f"did:key holds an invalid {codec.crv} key: {err}") from err


# --- encoding ---------------------------------------------------------------------------------


def did_key_from_raw(crv: str, public: bytes) -> str:
    """The did:key of a raw public key (EC points may be compressed or not; they are compressed)."""
    codec = _BY_CRV.get(crv)
    if codec is None:
        raise DidError(f"no did:key encoding for curve {crv!r} (supported: {', '.join(_BY_CRV)})")
    raw = bytes(public)
    if crv in _EC_POINT_CURVES and raw[:1] == b"\x04":
        raw = _compress(crv, raw)
    _check_raw(codec, raw)
    return PREFIX + "z" + base58btc_encode(codec.prefix + raw)


def did_key(key: VerifyKey | KeyAgreementKey) -> str:
    """The did:key of a verification key (or of an X25519 key-agreement key)."""
    return did_key_from_raw(key.crv, key.raw())


def _compress(crv: str, point: bytes) -> bytes:
    size = (len(point) - 1) // 2
    if len(point) != 2 * size + 1 or size not in (32, 48, 66):
        raise DidError(f"{crv} uncompressed point has a wrong length ({len(point)} bytes)")
    y = int.from_bytes(point[1 + size :], "big")
    return bytes([2 + (y & 1)]) + point[1 : 1 + size]


def _uncompressed(crv: str, compressed: bytes) -> bytes:
    if crv == "secp256k1":
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), compressed).public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
    return VerifyKey.from_raw(crv, compressed).raw(compressed=False)


# --- resolving --------------------------------------------------------------------------------


def resolve(did: str) -> VerifyKey:
    """The ``VerifyKey`` of a signing did:key, or of its verification-method id
    (``did:key:z...#z...``, the fragment must be the DID's own key)."""
    base, fragment = _split(did)
    parsed = decode(base)
    if fragment is not None and fragment != parsed.fragment:
        raise DidError(f"{_short(did)}: fragment {fragment!r} does not name this DID's signing key")
    if parsed.crv == "X25519":
        raise DidError(f"{_short(base)} is an X25519 key-agreement key, not a signing key")
    if not parsed.signing:
        raise DidError(f"{_short(base)} is a {parsed.crv} key: {parsed.crv} signatures are not accepted")
    return VerifyKey.from_raw(parsed.crv, parsed.public)


def resolve_key_agreement(did: str) -> KeyAgreementKey:
    """The X25519 key-agreement key of an X25519 did:key, or the one derived from an Ed25519
    did:key (its DID document's ``keyAgreement``); a fragment must name that key."""
    base, fragment = _split(did)
    parsed = decode(base)
    if parsed.crv == "X25519":
        key = KeyAgreementKey.from_raw("X25519", parsed.public)
    elif parsed.crv == "Ed25519":
        key = x25519_from_ed25519(VerifyKey.from_raw("Ed25519", parsed.public))
    else:
        raise DidError(f"{_short(base)} is a {parsed.crv} key: no X25519 key agreement for it")
    if fragment is not None and fragment != did_key(key)[len(PREFIX) :]:
        raise DidError(f"{_short(did)}: fragment {fragment!r} does not name this DID's key-agreement key")
    return key


_P25519: Final = 2**255 - 19


def x25519_from_ed25519(key: VerifyKey) -> KeyAgreementKey:
    """The X25519 public key of an Ed25519 key (RFC 7748 birational map: u = (1+y)/(1-y))."""
    if key.crv != "Ed25519":
        raise DidError(f"only Ed25519 keys map to X25519 (got {key.crv})")
    y = int.from_bytes(key.raw(), "little") & ((1 << 255) - 1)
    if y >= _P25519 or y == 1:
        raise DidError("Ed25519 key has no X25519 counterpart (non-canonical or identity point)")
    u = (1 + y) * pow((1 - y) % _P25519, _P25519 - 2, _P25519) % _P25519
    return KeyAgreementKey.from_raw("X25519", u.to_bytes(32, "little"))


def verification_method_id(did: str) -> str:
    """``did:key:z...#z...``: the id of the DID's own key in its DID document."""
    parsed = decode(did)
    return f"{parsed.did}#{parsed.fragment}"


# --- DID documents ----------------------------------------------------------------------------

_CTX_DID: Final = "https://www.w3.org/ns/did/v1"
_CTX_ED2018: Final = "https://w3id.org/security/suites/ed25519-2018/v1"
_CTX_X2019: Final = "https://w3id.org/security/suites/x25519-2019/v1"
_CTX_JWS2020: Final = "https://w3id.org/security/suites/jws-2020/v1"
_CTX_K1_2019: Final = "https://w3id.org/security/suites/secp256k1-2019/v1"
_CTX_MULTIKEY2021: Final = "https://w3id.org/security/suites/multikey-2021/v1"
_CTX_MULTIKEY: Final = "https://w3id.org/security/multikey/v1"
_BASE58_TYPES: Final = {
    "Ed25519": ("Ed25519VerificationKey2018", _CTX_ED2018),
    "X25519": ("X25519KeyAgreementKey2019", _CTX_X2019),
    "secp256k1": ("EcdsaSecp256k1VerificationKey2019", _CTX_K1_2019),
    "P-256": ("P256Key2021", _CTX_MULTIKEY2021),
}
_SIGNING_RELATIONS: Final = ("assertionMethod", "authentication", "capabilityInvocation", "capabilityDelegation")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwk(crv: str, raw: bytes) -> dict[str, str]:
    if crv in _EC_POINT_CURVES:
        point = _uncompressed(crv, raw)
        size = (len(point) - 1) // 2
        return {"kty": "EC", "crv": crv, "x": _b64url(point[1 : 1 + size]), "y": _b64url(point[1 + size :])}
    return {"kty": "OKP", "crv": crv, "x": _b64url(raw)}


def did_document(did: str, *, style: DocumentStyle = "auto") -> dict[str, Any]:
    """The DID document of a did:key, as a JSON-ready dict.

    ``auto``: the test vectors' shape per key type (``base58`` for Ed25519, X25519 and
    secp256k1; ``jwk`` otherwise). ``base58``: 2018/2019 suites with ``publicKeyBase58``
    (P256Key2021 for P-256; none exists for P-384/P-521/Ed448). ``jwk``: JsonWebKey2020.
    ``multikey``: the current spec's ``Multikey`` with ``publicKeyMultibase``.
    An Ed25519 DID also lists its derived X25519 key under ``keyAgreement``; EC keys list
    themselves there (ECDH); an X25519 DID has only ``keyAgreement``."""
    parsed = decode(did)
    if style == "auto":
        style = "base58" if parsed.crv in ("Ed25519", "X25519", "secp256k1") else "jwk"
    if style not in ("base58", "jwk", "multikey"):
        raise ValueError(f"unknown DID document style {style!r}")
    keys: list[tuple[str, bytes]] = [(parsed.crv, parsed.public)]
    if parsed.crv == "Ed25519":
        keys.append(("X25519", x25519_from_ed25519(VerifyKey.from_raw("Ed25519", parsed.public)).raw()))
    contexts = [_CTX_DID]
    methods: list[dict[str, Any]] = []
    for crv, raw in keys:
        fragment = did_key_from_raw(crv, raw)[len(PREFIX) :]
        vm: dict[str, Any] = {"id": f"{parsed.did}#{fragment}", "controller": parsed.did}
        if style == "jwk":
            vm.update(type="JsonWebKey2020", publicKeyJwk=_jwk(crv, raw))
            ctx = _CTX_JWS2020
        elif style == "multikey":
            vm.update(type="Multikey", publicKeyMultibase=fragment)
            ctx = _CTX_MULTIKEY
        else:
            if crv not in _BASE58_TYPES:
                raise DidError(f"no base58 (2018-2021 suite) document form for {crv} keys: use style='jwk'")
            vm_type, ctx = _BASE58_TYPES[crv]
            vm.update(type=vm_type, publicKeyBase58=base58btc_encode(raw))
        if ctx not in contexts:
            contexts.append(ctx)
        methods.append(vm)
    doc: dict[str, Any] = {"@context": contexts, "id": parsed.did, "verificationMethod": methods}
    own = methods[0]["id"]
    if parsed.crv != "X25519":
        for rel in _SIGNING_RELATIONS:
            doc[rel] = [own]
    if parsed.crv in ("Ed25519", "X25519"):
        doc["keyAgreement"] = [methods[-1]["id"]]
    elif parsed.crv in _EC_POINT_CURVES and style != "multikey":
        doc["keyAgreement"] = [own]  # ECDH with the key itself, as the vectors list it
    return doc
