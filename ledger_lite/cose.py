"""COSE_Sign1 (RFC 9052 §4.2) sign and verify. Verification raises; it never returns a bool.

API (stable; other modules build on it):

    sign1(payload, key, *, protected=None, unprotected=None, external_aad=b"", kid=None,
          content_type=None, tagged=True) -> bytes
    decode_sign1(data) -> Sign1                 # parse only, no verification
    verify_sign1(data_or_sign1, key_or_resolver, *, external_aad=b"", detached_payload=None) -> Sign1

The protected header always carries ``alg`` (label 1); ``kid`` (4) and content type (3) go in
the protected header too when given, so they are covered by the signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from .errors import CoseError, SignatureError, UnsupportedAlgorithm
from .keys import SigningKey, VerifyKey

__all__ = [
    "HDR_ALG",
    "HDR_CONTENT_TYPE",
    "HDR_CRIT",
    "HDR_KID",
    "TAG_SIGN1",
    "Sign1",
    "decode_sign1",
    "sign1",
    "verify_sign1",
]

TAG_SIGN1 = 18
HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID = 1, 2, 3, 4

KeyResolver = Callable[["Sign1"], VerifyKey]
_FROZEN_MAP: type = getattr(cbor2, "frozendict", dict)


@dataclass(frozen=True)
class Sign1:
    """A decoded COSE_Sign1. ``protected_raw`` is the protected header bstr as sent."""

    protected_raw: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes | None
    signature: bytes
    tagged: bool = True
    raw: bytes = field(default=b"", repr=False)

    @property
    def alg(self) -> int | None:
        alg = self.protected.get(HDR_ALG)
        return alg if isinstance(alg, int) else None

    @property
    def kid(self) -> bytes | None:
        kid = self.protected.get(HDR_KID, self.unprotected.get(HDR_KID))
        return kid if isinstance(kid, bytes) else None

    @property
    def content_type(self) -> int | str | None:
        ct = self.protected.get(HDR_CONTENT_TYPE)
        return ct if isinstance(ct, int | str) else None


def _sig_structure(protected_raw: bytes, external_aad: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected_raw, external_aad, payload])


def sign1(
    payload: bytes,
    key: SigningKey,
    *,
    protected: Mapping[Any, Any] | None = None,
    unprotected: Mapping[Any, Any] | None = None,
    external_aad: bytes = b"",
    kid: bytes | None = None,
    content_type: int | str | None = None,
    tagged: bool = True,
) -> bytes:
    hdr: dict[Any, Any] = {HDR_ALG: key.alg}
    if content_type is not None:
        hdr[HDR_CONTENT_TYPE] = content_type
    if kid is not None:
        hdr[HDR_KID] = kid
    hdr.update(protected or {})
    protected_raw = cbor2.dumps(hdr, canonical=True)
    signature = key.sign(_sig_structure(protected_raw, external_aad, payload), alg=hdr[HDR_ALG])
    body = [protected_raw, dict(unprotected or {}), payload, signature]
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, body) if tagged else body)


def decode_sign1(data: bytes) -> Sign1:
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise CoseError(f"not CBOR: {err}") from None
    tagged = isinstance(obj, cbor2.CBORTag)
    if tagged:
        if obj.tag != TAG_SIGN1:
            raise CoseError(f"CBOR tag {obj.tag} is not COSE_Sign1 ({TAG_SIGN1})")
        obj = obj.value
    if not isinstance(obj, list | tuple) or len(obj) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4 items")
    protected_raw, unprotected, payload, signature = obj
    if not isinstance(protected_raw, bytes):
        raise CoseError("protected header must be a byte string")
    if isinstance(unprotected, _FROZEN_MAP):  # cbor2 6 decodes maps inside tags as frozendict
        unprotected = dict(unprotected)  # type: ignore[call-overload]
    if not isinstance(unprotected, dict):
        raise CoseError("unprotected header must be a map")
    if payload is not None and not isinstance(payload, bytes):
        raise CoseError("payload must be a byte string or nil")
    if not isinstance(signature, bytes):
        raise CoseError("signature must be a byte string")
    try:
        protected = cbor2.loads(protected_raw) if protected_raw else {}
    except (cbor2.CBORDecodeError, ValueError) as err:
        raise CoseError(f"protected header is not CBOR: {err}") from None
    if not isinstance(protected, dict):
        raise CoseError("protected header must encode a map")
    return Sign1(protected_raw, protected, unprotected, payload, signature, tagged, bytes(data))


def verify_sign1(
    data: bytes | Sign1,
    key: VerifyKey | KeyResolver,
    *,
    external_aad: bytes = b"",
    detached_payload: bytes | None = None,
) -> Sign1:
    msg = decode_sign1(data) if isinstance(data, bytes | bytearray) else data
    alg = msg.alg
    if alg is None:
        raise CoseError("no algorithm in the protected header")
    payload = msg.payload if msg.payload is not None else detached_payload
    if payload is None:
        raise CoseError("detached payload not supplied")
    vk = key(msg) if callable(key) else key
    try:
        vk.verify(msg.signature, _sig_structure(msg.protected_raw, external_aad, payload), alg=alg)
    except UnsupportedAlgorithm as err:
        raise SignatureError(f"cannot verify: {err}") from err
    return msg
