"""COSE_Sign1 (RFC 9052 §4.2) sign and verify. Verification raises; it never returns a bool.

API (stable; other modules build on it):

    sign1(payload, key, *, protected=None, unprotected=None, external_aad=b"", kid=None,
          content_type=None, tagged=True, detached=False) -> bytes
    decode_sign1(data, *, deterministic=True) -> Sign1      # parse and check, no verification
    verify_sign1(data_or_sign1, key_or_resolver, *, external_aad=b"", detached_payload=None,
                 understood=(), deterministic=True) -> Sign1
    sig_structure(body_protected, external_aad, payload) -> bytes      # RFC 9052 §4.4

The protected header always carries ``alg`` (label 1); ``kid`` (4) and content type (3) go in
the protected header too when given, so they are covered by the signature. Headers are encoded
with deterministic CBOR (``ledger_lite.cbor``), and so is the whole message we send.

What a received message must satisfy (``decode_sign1`` checks the shape, ``verify_sign1`` the rest):

* Tag 18 (COSE_Sign1) when tagged; any other tag (e.g. 998) is refused. Untagged is accepted.
* A 4-array [protected bstr, unprotected map, payload bstr / nil, signature bstr], strict CBOR
  (no trailing bytes, no indefinite lengths, no duplicate map keys). With ``deterministic=True``
  (the default) the message and its protected header must also be in deterministic encoding, so
  one signature has exactly one wire form (no envelope malleability for replay caches that key
  on message bytes). ``deterministic=False`` is for foreign producers.
* Header labels are int or text; ``alg`` int or text, ``crit`` a non-empty array of labels,
  content type uint16 or text, ``kid`` bytes. No label in both buckets (RFC 9052 §3).
* ``crit`` (label 2) is protected, lists only labels present in the protected header, and every
  one of them is understood: alg/crit/content type/kid plus the caller's ``understood`` labels.
* ``alg`` is in the protected header (an ``alg`` that only sits in the unprotected bucket is
  refused) and fits the key: EdDSA for Ed25519/Ed448, ES256/384/512 for the NIST curves.
* A payload that is attached and a ``detached_payload`` must not both be given.

**The empty protected header sent as ``A0``** (cose-wg ``sign-pass-01``). RFC 9052 §3 says senders
SHOULD send an empty protected header as a zero-length bstr and recipients MUST accept both
``h''`` and ``h'A0'``; §4.4 says that with no protected attributes the Sig_structure's
``body_protected`` is the zero-length bstr. We follow it: ``decode_sign1`` accepts ``h'A0'`` (and
``h''``) as an empty protected map, and ``sig_structure``/``Sign1.to_be_signed`` use ``h''`` for
any empty protected map however it was sent -- which is how sign-pass-01's signature was made.
We never send ``h'A0'`` (our protected header always holds ``alg``). And because our profile
requires ``alg`` in the protected header, ``verify_sign1`` rejects every message with an empty
protected header anyway (``CoseError``), sign-pass-01 included: the normalisation only decides
what ``to_be_signed`` returns. The tests check both halves.

Errors: ``CoseError`` (a ``MalformedError``) for anything malformed or outside the profile;
``SignatureError`` (a ``VerificationError``) for a signature that does not verify, an algorithm
we do not support, or an algorithm that does not fit the key.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import cbor
from .errors import CborError, CoseError, SignatureError, UnsupportedAlgorithm
from .keys import SigningKey, VerifyKey

__all__ = [
    "HDR_ALG",
    "HDR_CONTENT_TYPE",
    "HDR_CRIT",
    "HDR_KID",
    "TAG_SIGN1",
    "Sign1",
    "decode_sign1",
    "sig_structure",
    "sign1",
    "verify_sign1",
]

TAG_SIGN1 = 18
HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID = 1, 2, 3, 4

KeyResolver = Callable[["Sign1"], VerifyKey]

#: header labels every verifier understands (for ``crit``)
_UNDERSTOOD: Final = frozenset({HDR_ALG, HDR_CRIT, HDR_CONTENT_TYPE, HDR_KID})
_SIG1_PREFIX: Final = b"\x84\x6aSignature1"  # array(4), tstr "Signature1"
_TAG18: Final = b"\xd2"
_EMPTY_MAP: Final = b"\xa0"

#: decoded protected headers by their exact bytes (they repeat: one per sender and alg)
_PROTECTED_CACHE: dict[bytes, dict[Any, Any]] = {}
_PROTECTED_CACHE_MAX: Final = 1024
#: encoded protected headers for sign1's common (alg, kid, content type) case
_SCALARS: Final = frozenset({int, str, bytes, bool, float, type(None)})
_HEADER_CACHE: dict[tuple[int, bytes | None, int | str | None], bytes] = {}


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

    def to_be_signed(self, external_aad: bytes = b"", detached_payload: bytes | None = None) -> bytes:
        """The Sig_structure this message's signature covers (an empty protected map counts as h'')."""
        payload = self.payload if self.payload is not None else detached_payload
        if payload is None:
            raise CoseError("detached payload not supplied")
        return sig_structure(self.protected_raw if self.protected else b"", external_aad, payload)


def _bstr(data: bytes) -> bytes:
    return cbor.encode_head(2, len(data)) + data


def sig_structure(body_protected: bytes, external_aad: bytes, payload: bytes) -> bytes:
    """``["Signature1", body_protected, external_aad, payload]`` in deterministic CBOR (RFC 9052 §4.4)."""
    return b"".join((_SIG1_PREFIX, _bstr(body_protected), _bstr(external_aad), _bstr(payload)))


def _as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise CoseError(f"{what} must be bytes, not {type(value).__name__}")


def _check_bucket(bucket: Mapping[Any, Any], name: str) -> None:
    for label, value in bucket.items():
        if type(label) is not int and type(label) is not str:
            raise CoseError(f"{name} header label {label!r} is not an int or text")
        if label == HDR_ALG:
            if type(value) is not int and type(value) is not str:
                raise CoseError(f"{name} header alg must be an int or text, not {type(value).__name__}")
        elif label == HDR_CRIT:
            if name != "protected":
                raise CoseError("crit (label 2) must be in the protected header")
            if type(value) is not list or not value:
                raise CoseError("crit (label 2) must be a non-empty array of labels")
            for item in value:
                if type(item) is not int and type(item) is not str:
                    raise CoseError(f"crit lists {item!r}, which is not a label")
                if item not in bucket:
                    raise CoseError(f"crit lists label {item!r}, which is not in the protected header")
        elif label == HDR_CONTENT_TYPE:
            if not (type(value) is int and 0 <= value <= 0xFFFF) and type(value) is not str:
                raise CoseError(f"{name} header content type must be a uint16 or text, not {value!r}")
        elif label == HDR_KID:
            if type(value) is not bytes:
                raise CoseError(f"{name} header kid must be a byte string, not {type(value).__name__}")


def _check_headers(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> None:
    _check_bucket(protected, "protected")
    _check_bucket(unprotected, "unprotected")
    if unprotected and protected:
        both = protected.keys() & unprotected.keys()
        if both:
            raise CoseError(f"header labels {sorted(both, key=repr)} are in both protected and unprotected")


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
    detached: bool = False,
) -> bytes:
    """Sign ``payload`` into a COSE_Sign1 (deterministic CBOR). ``detached`` sends a nil payload."""
    payload = _as_bytes(payload, "payload")
    external_aad = _as_bytes(external_aad, "external_aad")
    cache_key: tuple[int, bytes | None, int | str | None] | None = None
    protected_raw: bytes | None = None
    if protected is None and type(kid) in (bytes, type(None)) and type(content_type) in (int, str, type(None)):
        cache_key = (key.alg, kid, content_type)
        protected_raw = _HEADER_CACHE.get(cache_key)
    if protected_raw is None:
        hdr: dict[Any, Any] = {HDR_ALG: key.alg}
        if content_type is not None:
            hdr[HDR_CONTENT_TYPE] = content_type
        if kid is not None:
            hdr[HDR_KID] = kid
        hdr.update(protected or {})
        _check_bucket(hdr, "protected")
        protected_raw = cbor.dumps(hdr)
        if cache_key is not None:
            if len(_HEADER_CACHE) >= _PROTECTED_CACHE_MAX:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[cache_key] = protected_raw
    if unprotected:
        hdr_check = _decode_protected(protected_raw, deterministic=True)
        _check_headers(hdr_check, unprotected)
        unprotected_raw = cbor.dumps(dict(unprotected))
        alg = hdr_check[HDR_ALG]
    else:
        unprotected_raw = _EMPTY_MAP
        alg = protected[HDR_ALG] if protected and HDR_ALG in protected else key.alg
    signature = key.sign(sig_structure(protected_raw, external_aad, payload), alg=alg)
    return b"".join(
        (
            _TAG18 if tagged else b"",
            b"\x84",
            _bstr(protected_raw),
            unprotected_raw,
            b"\xf6" if detached else _bstr(payload),
            _bstr(signature),
        )
    )


def _decode_protected(protected_raw: bytes, *, deterministic: bool) -> dict[Any, Any]:
    """The protected header map (a fresh dict). ``h''`` and ``h'A0'`` both give ``{}``."""
    cached = _PROTECTED_CACHE.get(protected_raw)
    if cached is not None:
        return dict(cached)
    if not protected_raw:
        return {}
    try:
        protected = cbor.loads(protected_raw, deterministic=deterministic)
    except CborError as err:
        raise CoseError(f"protected header is not valid CBOR: {err}") from err
    if type(protected) is not dict:
        raise CoseError(f"protected header must encode a map, not {type(protected).__name__}")
    _check_bucket(protected, "protected")
    if deterministic and len(protected_raw) <= 256 and all(type(v) in _SCALARS for v in protected.values()):
        if len(_PROTECTED_CACHE) >= _PROTECTED_CACHE_MAX:
            _PROTECTED_CACHE.clear()
        _PROTECTED_CACHE[protected_raw] = dict(protected)
    return protected


def _read_bstr(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """A byte string with a shortest-form head at ``pos`` (for ``_fast_envelope``), else None."""
    ib = data[pos]
    if ib < 0x40 or ib > 0x5A:
        return None
    n = ib - 0x40
    if n >= 24:
        size = 1 << (n - 24)
        n = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
        if n < (24 if size == 1 else 1 << (4 * size)):
            return None
        pos += size
    pos += 1
    end = pos + n
    if end > len(data):
        return None
    return data[pos:end], end


def _fast_envelope(data: bytes) -> tuple[bool, bytes, bytes | None, bytes] | None:
    """The common message exactly as we send it -- ``[18(]h'..', {}, h'..' / nil, h'..'[)]`` in
    deterministic CBOR -- read without a general decoder: (tagged, protected, payload, signature).
    None for anything else (the general, strict path decides that)."""
    try:
        tagged = data[0] == 0xD2
        pos = 1 if tagged else 0
        if data[pos] != 0x84:
            return None
        item = _read_bstr(data, pos + 1)
        if item is None:
            return None
        protected_raw, pos = item
        if data[pos] != 0xA0:
            return None
        payload: bytes | None = None
        if data[pos + 1] == 0xF6:
            pos += 2
        else:
            item = _read_bstr(data, pos + 1)
            if item is None:
                return None
            payload, pos = item
        item = _read_bstr(data, pos)
        if item is None or item[1] != len(data):
            return None
        return tagged, protected_raw, payload, item[0]
    except IndexError:
        return None


def decode_sign1(data: bytes, *, deterministic: bool = True) -> Sign1:
    """Parse a COSE_Sign1 and check its shape and headers (see the module docstring). No signature check."""
    data = _as_bytes(data, "COSE_Sign1")
    fast = _fast_envelope(data) if deterministic else None
    if fast is not None:
        tagged, protected_raw, payload, signature = fast
        protected = _decode_protected(protected_raw, deterministic=True)
        return Sign1(protected_raw, protected, {}, payload, signature, tagged, data)
    try:
        obj = cbor.loads(data, deterministic=deterministic)
    except CborError as err:
        raise CoseError(f"COSE_Sign1 is not valid CBOR: {err}") from err
    tagged = type(obj) is cbor.Tag
    if tagged:
        if obj.tag != TAG_SIGN1:
            raise CoseError(f"CBOR tag {obj.tag} is not COSE_Sign1 ({TAG_SIGN1})")
        obj = obj.value
    if type(obj) is not list or len(obj) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4 items")
    protected_raw, unprotected, payload, signature = obj
    if type(protected_raw) is not bytes:
        raise CoseError("protected header must be a byte string")
    if type(unprotected) is not dict:
        raise CoseError("unprotected header must be a map")
    if payload is not None and type(payload) is not bytes:
        raise CoseError("payload must be a byte string or nil")
    if type(signature) is not bytes:
        raise CoseError("signature must be a byte string")
    protected = _decode_protected(protected_raw, deterministic=deterministic)
    _check_headers(protected, unprotected)
    return Sign1(protected_raw, protected, unprotected, payload, signature, tagged, data)


def verify_sign1(
    data: bytes | Sign1,
    key: VerifyKey | KeyResolver,
    *,
    external_aad: bytes = b"",
    detached_payload: bytes | None = None,
    understood: Collection[int | str] = (),
    deterministic: bool = True,
) -> Sign1:
    """Verify a COSE_Sign1 and return it decoded; raise ``CoseError`` or ``SignatureError`` otherwise.

    ``key`` is a ``VerifyKey`` or a resolver called with the decoded message (e.g. by ``kid``;
    it should raise a ``LedgerError`` for a key it does not know). ``understood`` adds header
    labels the caller processes, for ``crit``. Given a ``Sign1`` (from ``decode_sign1``), its
    ``protected`` map is checked against ``protected_raw`` again before it is trusted."""
    if isinstance(data, Sign1):
        msg = data
        if _decode_protected(msg.protected_raw, deterministic=False) != msg.protected:
            raise CoseError("Sign1.protected does not match Sign1.protected_raw")
        _check_headers(msg.protected, msg.unprotected)
    else:
        msg = decode_sign1(data, deterministic=deterministic)
    alg = msg.protected.get(HDR_ALG)
    if alg is None:
        where = "only in the unprotected header" if HDR_ALG in msg.unprotected else "missing"
        raise CoseError(f"alg (label 1) must be in the protected header ({where})")
    crit = msg.protected.get(HDR_CRIT)
    if crit is not None:
        unknown = [label for label in crit if label not in _UNDERSTOOD and label not in understood]
        if unknown:
            raise CoseError(f"critical header labels {unknown!r} are not understood")
    if msg.payload is not None and detached_payload is not None:
        raise CoseError("the payload is attached; a detached_payload must not be given too")
    external_aad = _as_bytes(external_aad, "external_aad")
    to_be_signed = msg.to_be_signed(external_aad, detached_payload)
    if type(alg) is not int:
        raise SignatureError(f"cannot verify: unsupported algorithm {alg!r}")
    vk = key if isinstance(key, VerifyKey) else key(msg)
    if not isinstance(vk, VerifyKey):
        raise TypeError(f"key resolver returned {type(vk).__name__}, not a VerifyKey")
    try:
        vk.verify(msg.signature, to_be_signed, alg=alg)
    except UnsupportedAlgorithm as err:
        raise SignatureError(f"cannot verify: {err}") from err
    return msg
