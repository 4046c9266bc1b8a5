"""CBOR Web Tokens (RFC 8392) signed as COSE_Sign1.

    Claims(iss=, sub=, aud=, exp=, nbf=, iat=, cti=, cnf=, extra={})   .to_map() / Claims.from_map(m)
    sign_cwt(claims, key, *, kid=None, tag_cwt=False) -> bytes
    verify_cwt(data, key_or_resolver, *, now, skew=60.0, audience=None) -> Claims

Registered claims use their integer keys (iss 1, sub 2, aud 3, exp 4, nbf 5, iat 6, cti 7,
cnf 8). Types are checked strictly, and a ``SchemaError`` names the claim: iss/sub text; aud text
or a non-empty array of text; exp/nbf/iat a NumericDate (int or finite float, not bool); cti
bytes; cnf a map (RFC 8747). ``extra`` holds every other claim (int or text keys); it may not
reuse a registered key, nor the registered claim *names* as text keys ("iss", "exp", ...), so a
token cannot say two different things under the two spellings.

``verify_cwt`` checks, in order: the CWT tag 61 if present (then the COSE tag 18 must follow it,
RFC 8392 §7.2), the COSE_Sign1 signature (``cose.verify_sign1``: ``CoseError``/``SignatureError``),
the claims' encoding (deterministic CBOR map: ``CborError``/``SchemaError``), then ``exp`` and
``nbf`` against ``now`` with ``skew`` seconds of allowance each way (``ValidityError`` saying
which and by how much: expired when ``now >= exp + skew``, not yet valid when
``now < nbf - skew``), then ``aud`` if an ``audience`` is given (``AudienceError``). ``iat`` is
not checked. COSE_Mac0/Encrypt0 CWTs and nested CWTs are not supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import cbor, cose
from .errors import AudienceError, CborError, CoseError, SchemaError, ValidityError
from .keys import SigningKey, VerifyKey

__all__ = ["CLAIM_KEYS", "TAG_CWT", "Claims", "sign_cwt", "verify_cwt"]

TAG_CWT: Final = 61
#: registered claim name -> integer key (RFC 8392 §4, RFC 8747 for cnf)
CLAIM_KEYS: Final = {"iss": 1, "sub": 2, "aud": 3, "exp": 4, "nbf": 5, "iat": 6, "cti": 7, "cnf": 8}
_CLAIM_NAMES: Final = {v: k for k, v in CLAIM_KEYS.items()}
_CWT_PREFIX: Final = b"\xd8\x3d"  # tag 61
_KIND = "cwt"

NumericDate = int | float


def _numeric_date(name: str, value: object) -> NumericDate | None:
    if value is None:
        return None
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return value
    raise SchemaError(f"must be a NumericDate (int or finite float), not {value!r}", field=name, kind=_KIND)


def _text(name: str, value: object) -> str | None:
    if value is None or type(value) is str:
        return value
    raise SchemaError(f"must be text, not {type(value).__name__}", field=name, kind=_KIND)


@dataclass(frozen=True)
class Claims:
    """A CWT claims set. Construction checks every claim's type."""

    iss: str | None = None
    sub: str | None = None
    aud: str | tuple[str, ...] | None = None
    exp: NumericDate | None = None
    nbf: NumericDate | None = None
    iat: NumericDate | None = None
    cti: bytes | None = None
    cnf: Mapping[Any, Any] | None = None
    extra: Mapping[int | str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text("iss", self.iss)
        _text("sub", self.sub)
        aud = self.aud
        if aud is not None and type(aud) is not str:
            if type(aud) not in (list, tuple) or not aud or any(type(a) is not str for a in aud):
                raise SchemaError("must be text or a non-empty array of text", field="aud", kind=_KIND)
            object.__setattr__(self, "aud", tuple(aud))
        for name in ("exp", "nbf", "iat"):
            _numeric_date(name, getattr(self, name))
        if self.cti is not None and type(self.cti) is not bytes:
            raise SchemaError(f"must be a byte string, not {type(self.cti).__name__}", field="cti", kind=_KIND)
        if self.cnf is not None and not isinstance(self.cnf, Mapping):
            raise SchemaError(f"must be a map, not {type(self.cnf).__name__}", field="cnf", kind=_KIND)
        if not isinstance(self.extra, Mapping):
            raise SchemaError("extra claims must be a map", field="extra", kind=_KIND)
        for key in self.extra:
            if type(key) is not int and type(key) is not str:
                raise SchemaError(f"claim key {key!r} is not an int or text", field=str(key), kind=_KIND)
            if key in _CLAIM_NAMES or key in CLAIM_KEYS:
                raise SchemaError("is a registered claim: use its field", field=str(key), kind=_KIND)
        object.__setattr__(self, "extra", dict(self.extra))

    def audiences(self) -> tuple[str, ...]:
        if self.aud is None:
            return ()
        return (self.aud,) if isinstance(self.aud, str) else tuple(self.aud)

    def to_map(self) -> dict[int | str, Any]:
        """The claims set as a CBOR map (registered claims under their integer keys)."""
        out: dict[int | str, Any] = {}
        for name, key in CLAIM_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = list(value) if name == "aud" and isinstance(value, tuple) else value
        out.update(self.extra)
        return out

    @classmethod
    def from_map(cls, claims: object) -> Claims:
        """Strictly typed claims from a decoded CBOR map; ``SchemaError`` names the culprit."""
        if not isinstance(claims, Mapping):
            raise SchemaError(f"a claims set must be a map, not {type(claims).__name__}", kind=_KIND)
        registered: dict[str, Any] = {}
        extra: dict[int | str, Any] = {}
        for key, value in claims.items():
            name = _CLAIM_NAMES.get(key) if type(key) is int else None
            if name is not None:
                if value is None:  # "absent" is spelt by leaving the claim out, never by null
                    raise SchemaError("must not be null", field=name, kind=_KIND)
                registered[name] = value
            else:
                extra[key] = value
        return cls(**registered, extra=extra)


def sign_cwt(claims: Claims, key: SigningKey, *, kid: bytes | None = None, tag_cwt: bool = False) -> bytes:
    """A signed CWT: COSE_Sign1 (tag 18) over the deterministic claims map, optionally inside tag 61."""
    msg = cose.sign1(cbor.dumps(claims.to_map()), key, kid=kid)
    return _CWT_PREFIX + msg if tag_cwt else msg


def verify_cwt(
    data: bytes,
    key: VerifyKey | Callable[[cose.Sign1], VerifyKey],
    *,
    now: float,
    skew: float = 60.0,
    audience: str | None = None,
) -> Claims:
    """Verify a signed CWT and its validity at ``now`` (UTC epoch seconds); see the module docstring."""
    if not (type(now) in (int, float) and math.isfinite(now)):
        raise ValueError(f"now must be finite epoch seconds, not {now!r}")
    if not (type(skew) in (int, float) and 0 <= skew < math.inf):
        raise ValueError(f"skew must be finite and >= 0, not {skew!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CoseError(f"a CWT must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if data.startswith(_CWT_PREFIX):
        data = data[len(_CWT_PREFIX) :]
        if not data.startswith(b"\xd2"):
            raise CoseError("the CWT tag 61 must be followed by the COSE_Sign1 tag 18")
    msg = cose.verify_sign1(data, key)
    if msg.payload is None:
        raise CoseError("a CWT cannot have a detached payload")
    try:
        decoded = cbor.loads(msg.payload)
    except CborError as err:
        raise CborError(f"CWT claims set: {err}") from err
    claims = Claims.from_map(decoded)
    if claims.exp is not None and now >= claims.exp + skew:
        raise ValidityError(
            f"CWT expired: exp {claims.exp} is {now - claims.exp:.3f} s before now {now} (allowed skew {skew} s)"
        )
    if claims.nbf is not None and now < claims.nbf - skew:
        raise ValidityError(
            f"CWT not yet valid: nbf {claims.nbf} is {claims.nbf - now:.3f} s after now {now} (allowed skew {skew} s)"
        )
    if audience is not None and audience not in claims.audiences():
        raise AudienceError(f"CWT audience {list(claims.audiences())!r} does not include {audience!r}")
    return claims
