"""Signing and verification keys for COSE (RFC 9053): EdDSA over Ed25519/Ed448 and ECDSA over
P-256/P-384/P-521, on pyca/cryptography. ECDSA signatures are the fixed-length ``r || s`` form
COSE uses (not DER). ``verify`` raises ``SignatureError``; it never returns a boolean.

A ``SigningKey``'s repr never shows key material; ``private_bytes()`` is the one way out
(raw 32/57-byte EdDSA seed, or the big-endian ECDSA scalar), used only by the key store.

``KeyAgreementKey`` / ``KeyAgreementPrivateKey`` are X25519 keys (RFC 7748) for key agreement
only: they never sign or verify (did:key ``z6LS...`` DIDs, the pseudonym authority's escrow key).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .errors import KeyFormatError, SignatureError, UnsupportedAlgorithm

__all__ = [
    "ALG_EDDSA",
    "ALG_ES256",
    "ALG_ES384",
    "ALG_ES512",
    "CURVES",
    "KeyAgreementKey",
    "KeyAgreementPrivateKey",
    "SigningKey",
    "VerifyKey",
]

#: COSE algorithm identifiers (RFC 9053 / IANA)
ALG_EDDSA: Final = -8
ALG_ES256: Final = -7
ALG_ES384: Final = -35
ALG_ES512: Final = -36

_ECDSA_HASH: dict[int, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    ALG_ES256: hashes.SHA256,
    ALG_ES384: hashes.SHA384,
    ALG_ES512: hashes.SHA512,
}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_EC_SIZE = {"P-256": 32, "P-384": 48, "P-521": 66}
_EC_DEFAULT_ALG = {"P-256": ALG_ES256, "P-384": ALG_ES384, "P-521": ALG_ES512}
#: curve name -> (COSE kty, default alg)
CURVES: Final = {
    "Ed25519": ("OKP", ALG_EDDSA),
    "Ed448": ("OKP", ALG_EDDSA),
    "P-256": ("EC2", ALG_ES256),
    "P-384": ("EC2", ALG_ES384),
    "P-521": ("EC2", ALG_ES512),
}
#: COSE_Key labels (RFC 9052 §7, RFC 9053 §7)
_KTY, _KID, _ALG, _CRV, _X, _Y, _D = 1, 2, 3, -1, -2, -3, -4
_KTY_OKP, _KTY_EC2 = 1, 2
_CRV_IDS = {"P-256": 1, "P-384": 2, "P-521": 3, "Ed25519": 6, "Ed448": 7}
_CRV_NAMES = {v: k for k, v in _CRV_IDS.items()}

PublicKey = ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey


def _check_alg(crv: str, alg: int) -> None:
    kty = CURVES[crv][0]
    if kty == "OKP" and alg != ALG_EDDSA:
        raise UnsupportedAlgorithm(f"algorithm {alg} cannot be used with an {crv} key (EdDSA is -8)")
    if kty == "EC2" and alg not in _ECDSA_HASH:
        raise UnsupportedAlgorithm(f"algorithm {alg} cannot be used with a {crv} key (ES256/384/512 are -7/-35/-36)")


@dataclass(frozen=True, eq=False)
class VerifyKey:
    """A public key. Equal keys have equal ``crv`` and ``raw()`` bytes."""

    crv: str
    _key: PublicKey

    @property
    def kty(self) -> str:
        return CURVES[self.crv][0]

    @property
    def alg(self) -> int:
        """The default COSE algorithm for this curve."""
        return CURVES[self.crv][1]

    @classmethod
    def from_raw(cls, crv: str, data: bytes) -> VerifyKey:
        """Raw public key: 32/57 bytes for Ed25519/Ed448; SEC1 compressed or uncompressed
        point for the NIST curves."""
        try:
            if crv == "Ed25519":
                return cls(crv, ed25519.Ed25519PublicKey.from_public_bytes(bytes(data)))
            if crv == "Ed448":
                return cls(crv, ed448.Ed448PublicKey.from_public_bytes(bytes(data)))
            if crv in _EC_CURVES:
                return cls(crv, ec.EllipticCurvePublicKey.from_encoded_point(_EC_CURVES[crv](), bytes(data)))
        except ValueError as err:
            raise KeyFormatError(f"not a valid {crv} public key ({len(data)} bytes): {err}") from err
        raise UnsupportedAlgorithm(f"unsupported curve {crv!r} (supported: {', '.join(CURVES)})")

    @classmethod
    def from_ec_coordinates(cls, crv: str, x: bytes, y: bytes) -> VerifyKey:
        if crv not in _EC_CURVES:
            raise UnsupportedAlgorithm(f"{crv!r} is not an EC2 curve")
        size = _EC_SIZE[crv]
        if len(x) != size or len(y) != size:
            raise KeyFormatError(f"{crv} coordinates must be {size} bytes each (got {len(x)} and {len(y)})")
        return cls.from_raw(crv, b"\x04" + x + y)

    def raw(self, *, compressed: bool = True) -> bytes:
        """Raw public bytes (EdDSA: the key; EC: SEC1 point, compressed by default)."""
        if isinstance(self._key, ec.EllipticCurvePublicKey):
            fmt = PublicFormat.CompressedPoint if compressed else PublicFormat.UncompressedPoint
            return self._key.public_bytes(Encoding.X962, fmt)
        return self._key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def verify(self, signature: bytes, data: bytes, *, alg: int | None = None) -> None:
        """Raise ``SignatureError`` unless ``signature`` is valid over ``data``."""
        alg = self.alg if alg is None else alg
        _check_alg(self.crv, alg)
        try:
            if isinstance(self._key, ec.EllipticCurvePublicKey):
                size = _EC_SIZE[self.crv]
                if len(signature) != 2 * size:
                    raise SignatureError(f"{self.crv} signature must be {2 * size} bytes (got {len(signature)})")
                r = int.from_bytes(signature[:size], "big")
                s = int.from_bytes(signature[size:], "big")
                self._key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_ECDSA_HASH[alg]()))
            else:
                self._key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"{self.crv} signature does not verify") from None

    def cose_key(self) -> dict[int, object]:
        """The COSE_Key map (no kid)."""
        if isinstance(self._key, ec.EllipticCurvePublicKey):
            pt = self.raw(compressed=False)
            size = _EC_SIZE[self.crv]
            return {_KTY: _KTY_EC2, _CRV: _CRV_IDS[self.crv], _X: pt[1 : 1 + size], _Y: pt[1 + size :]}
        return {_KTY: _KTY_OKP, _CRV: _CRV_IDS[self.crv], _X: self.raw()}

    @classmethod
    def from_cose_key(cls, key: dict[int, object]) -> VerifyKey:
        try:
            crv = _CRV_NAMES[key[_CRV]]  # type: ignore[index]
            x = key[_X]
            if not isinstance(x, bytes):
                raise KeyFormatError("COSE_Key x must be a byte string")
            if key[_KTY] == _KTY_OKP:
                return cls.from_raw(crv, x)
            y = key[_Y]
            if not isinstance(y, bytes):
                raise KeyFormatError("COSE_Key y must be a byte string (compressed y is not supported)")
            return cls.from_ec_coordinates(crv, x, y)
        except (KeyError, TypeError) as err:
            raise KeyFormatError(f"incomplete or unknown COSE_Key: {err!r}") from None

    def fingerprint(self) -> str:
        """A short stable id for logs: first 8 bytes of SHA-256 over the raw key, hex."""
        return hashlib.sha256(self.crv.encode() + self.raw()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and self.crv == other.crv and self.raw() == other.raw()

    def __hash__(self) -> int:
        return hash((self.crv, self.raw()))

    def __repr__(self) -> str:
        return f"VerifyKey({self.crv}, {self.fingerprint()})"


class SigningKey:
    """A private key. ``sign()`` gives the COSE signature form."""

    __slots__ = ("_key", "crv", "public")

    def __init__(self, crv: str, key: PrivateKey) -> None:
        self.crv = crv
        self._key = key
        self.public = VerifyKey(crv, key.public_key())

    @property
    def alg(self) -> int:
        return CURVES[self.crv][1]

    @classmethod
    def generate(cls, crv: str = "Ed25519") -> SigningKey:
        if crv == "Ed25519":
            return cls(crv, ed25519.Ed25519PrivateKey.generate())
        if crv == "Ed448":
            return cls(crv, ed448.Ed448PrivateKey.generate())
        if crv in _EC_CURVES:
            return cls(crv, ec.generate_private_key(_EC_CURVES[crv]()))
        raise UnsupportedAlgorithm(f"unsupported curve {crv!r} (supported: {', '.join(CURVES)})")

    @classmethod
    def from_private_bytes(cls, crv: str, data: bytes) -> SigningKey:
        try:
            if crv == "Ed25519":
                return cls(crv, ed25519.Ed25519PrivateKey.from_private_bytes(bytes(data)))
            if crv == "Ed448":
                return cls(crv, ed448.Ed448PrivateKey.from_private_bytes(bytes(data)))
            if crv in _EC_CURVES:
                if len(data) != _EC_SIZE[crv]:
                    raise KeyFormatError(f"{crv} private scalar must be {_EC_SIZE[crv]} bytes (got {len(data)})")
                return cls(crv, ec.derive_private_key(int.from_bytes(data, "big"), _EC_CURVES[crv]()))
        except ValueError as err:
            raise KeyFormatError(f"not a valid {crv} private key: {err}") from None
        raise UnsupportedAlgorithm(f"unsupported curve {crv!r} (supported: {', '.join(CURVES)})")

    def private_bytes(self) -> bytes:
        """Raw private key material. Only the key store should call this."""
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.private_numbers().private_value.to_bytes(_EC_SIZE[self.crv], "big")
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes, *, alg: int | None = None) -> bytes:
        alg = self.alg if alg is None else alg
        _check_alg(self.crv, alg)
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            der = self._key.sign(data, ec.ECDSA(_ECDSA_HASH[alg]()))
            r, s = decode_dss_signature(der)
            size = _EC_SIZE[self.crv]
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey({self.crv}, public {self.public.fingerprint()})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SigningKey cannot be pickled (it would copy key material)")


# --- key agreement (X25519) ------------------------------------------------------------------
# Not signing keys: a did:key of type X25519 (``z6LS...``) resolves to a ``KeyAgreementKey``, and
# the pseudonym authority's escrow key (ledger_lite.pseudonym) is one.


@dataclass(frozen=True, eq=False)
class KeyAgreementKey:
    """An X25519 public key (RFC 7748). Equal keys have equal ``raw()`` bytes."""

    crv: str
    _key: x25519.X25519PublicKey

    @classmethod
    def from_raw(cls, crv: str, data: bytes) -> KeyAgreementKey:
        if crv != "X25519":
            raise UnsupportedAlgorithm(f"unsupported key-agreement curve {crv!r} (supported: X25519)")
        try:
            return cls(crv, x25519.X25519PublicKey.from_public_bytes(bytes(data)))
        except ValueError as err:
            raise KeyFormatError(f"not a valid X25519 public key ({len(data)} bytes): {err}") from None

    def raw(self) -> bytes:
        return self._key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def cose_key(self) -> dict[int, object]:
        """The COSE_Key map (OKP, crv X25519 = 4; no kid)."""
        return {_KTY: _KTY_OKP, _CRV: _CRV_X25519, _X: self.raw()}

    def fingerprint(self) -> str:
        return hashlib.sha256(self.crv.encode() + self.raw()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyAgreementKey) and self.raw() == other.raw()

    def __hash__(self) -> int:
        return hash((self.crv, self.raw()))

    def __repr__(self) -> str:
        return f"KeyAgreementKey({self.crv}, {self.fingerprint()})"


_CRV_X25519 = 4


class KeyAgreementPrivateKey:
    """An X25519 private key. ``exchange()`` gives the raw shared secret (feed it to a KDF)."""

    __slots__ = ("_key", "crv", "public")

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        self.crv = "X25519"
        self._key = key
        self.public = KeyAgreementKey("X25519", key.public_key())

    @classmethod
    def generate(cls) -> KeyAgreementPrivateKey:
        return cls(x25519.X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyAgreementPrivateKey:
        try:
            return cls(x25519.X25519PrivateKey.from_private_bytes(bytes(data)))
        except ValueError as err:
            raise KeyFormatError(f"not a valid X25519 private key: {err}") from None

    def private_bytes(self) -> bytes:
        """Raw private key material. Only a key store should call this."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def exchange(self, peer: KeyAgreementKey) -> bytes:
        """X25519(self, peer); ``KeyFormatError`` for a low-order peer key (all-zero secret)."""
        try:
            return self._key.exchange(peer._key)
        except ValueError as err:
            raise KeyFormatError(f"X25519 exchange with {peer!r} failed: {err}") from None

    def __repr__(self) -> str:
        return f"KeyAgreementPrivateKey({self.crv}, public {self.public.fingerprint()})"

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("KeyAgreementPrivateKey cannot be pickled (it would copy key material)")
