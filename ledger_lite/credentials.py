"""Credentials: the whitepaper's DID + verifiable-credential flows, as CWTs (RFC 8392) in
tagged COSE_Sign1. Every DID is a did:key; the kid is the issuer's verification method and the
content type names the kind (``application/acc-<kind>+cwt``).

The chain of trust
==================

Trust roots are configured: ``{did: role}`` with the roles

* ``oem`` -- a vehicle manufacturer: issues vehicle credentials and the first owner credential;
* ``registration`` -- a vehicle registration authority: issues owner credentials (transfers);
* ``road_authority`` -- issues RSU validator credentials;
* ``pseudonym_ca`` -- certifies V2V pseudonym keys (``ledger_lite.pseudonym``; its
  ``verify_pseudonym_cert`` takes ``TrustStore.authority_keys("pseudonym_ca")``).

::

    root (oem) ----------------> [issuer credential, role oem] --> plant key   (optional, 1 level)
    oem root or plant key -----> vehicle credential   sub = device DID, VIN, attributes
    oem / registration (root or
      delegated) --------------> owner credential     sub = owner DID, vehicle = device DID, VIN
    owner (sub of a valid
      owner credential) -------> access grant         sub = third party DID, vehicle = device DID,
                                                      resources, actions, exp (required)
    road_authority (root or
      delegated) --------------> validator credential sub = RSU DID, cell id, voting power

* **Issuer credential** (delegation): a root gives one of its roles to another key, e.g. an
  OEM's offline root key to the key of a production plant. Only a root may issue one (a
  delegated issuer cannot delegate again) and it must carry ``exp``.
* **Owner credential**: binds an owner DID to one vehicle (its device DID *and* VIN) -- this is
  what makes the owner an issuer for that vehicle and no other. Selling the vehicle = the
  registration authority issues the buyer's owner credential and revokes the seller's (by cti).
* **Access grant**: only the owner of ``vehicle`` may issue it, so verifying it needs the
  owner's owner credential (passed along in ``chain`` or found in a ``CredentialStore``).

Verification (``verify_credential``) checks, for the credential and every credential of its
chain: the signature (issuer DID from the kid, key from did:key), ``exp``/``nbf`` with the
trust store's clock-skew allowance (``cwt.verify_cwt``: expired when ``now >= exp + skew``, not
yet valid when ``now < nbf - skew``), the claims' schema, revocation of the credential id (cti)
and of every DID involved, and that the issuer holds the authority the kind needs. Chains end
at a configured root; a revoked root is refused too. Revocation is a ``RevocationList`` now;
anything with the same ``check`` method (the ledger registry, later) can take its place.

``AccessPolicy.check`` is what the OBU enforces on requests: a grant for *this* vehicle, to
the requesting subject, naming the resource and the action, valid now, with its chain.

Pure: no files, no clocks; ``now`` is seconds since the Unix epoch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Final, Protocol

from . import cbor, cose, cwt, didkey
from .errors import (
    AccessDenied,
    CoseError,
    CredentialError,
    DidError,
    LedgerError,
    MalformedError,
    RevokedError,
    SchemaError,
)
from .keys import SigningKey, VerifyKey

__all__ = [
    "ACTIONS",
    "CONTENT_TYPES",
    "MAX_CHAIN",
    "NAMED_RESOURCES",
    "AccessDenied",
    "AccessGrant",
    "AccessPolicy",
    "CredentialBody",
    "CredentialKind",
    "CredentialStore",
    "DecodedCredential",
    "IssuerCredential",
    "OwnerCredential",
    "Revocation",
    "RevocationList",
    "Role",
    "TrustStore",
    "ValidatorCredential",
    "VehicleCredential",
    "VerifiedCredential",
    "decode_credential",
    "issue_credential",
    "resource_matches",
    "validate_vin",
    "verify_credential",
]

#: longest chain walked: grant -> owner credential -> issuer credential -> root
MAX_CHAIN: Final = 3


class Role(StrEnum):
    """What a trust root (or a delegated issuer) may issue."""

    OEM = "oem"
    REGISTRATION = "registration"
    ROAD_AUTHORITY = "road_authority"
    PSEUDONYM_CA = "pseudonym_ca"


_ROLE_VALUES: Final = frozenset(r.value for r in Role)


class CredentialKind(StrEnum):
    VEHICLE = "vehicle"
    OWNER = "owner"
    GRANT = "grant"
    VALIDATOR = "validator"
    ISSUER = "issuer"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self]


CONTENT_TYPES: Final[Mapping[CredentialKind, str]] = {
    CredentialKind.VEHICLE: "application/acc-vehicle-credential+cwt",
    CredentialKind.OWNER: "application/acc-owner-credential+cwt",
    CredentialKind.GRANT: "application/acc-access-grant+cwt",
    CredentialKind.VALIDATOR: "application/acc-validator-credential+cwt",
    CredentialKind.ISSUER: "application/acc-issuer-credential+cwt",
}
_KIND_BY_CT: Final = {ct: kind for kind, ct in CONTENT_TYPES.items()}

#: roles whose holders may issue each kind (grants: the vehicle's owner; issuer: a root of the role)
_ISSUER_ROLES: Final[Mapping[CredentialKind, frozenset[Role]]] = {
    CredentialKind.VEHICLE: frozenset({Role.OEM}),
    CredentialKind.OWNER: frozenset({Role.OEM, Role.REGISTRATION}),
    CredentialKind.VALIDATOR: frozenset({Role.ROAD_AUTHORITY}),
}

#: resources that are not VSS signals
NAMED_RESOURCES: Final = ("events", "attestations", "clips", "dtc")
#: what a grant can allow: read a value or records once, or subscribe to a stream
ACTIONS: Final = ("read", "subscribe")
_VSS_RE: Final = re.compile(r"Vehicle(\.[A-Z][A-Za-z0-9]*)*(\.\*)?")
_ATTR_KEY_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_CELL_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CTI_MIN, _CTI_MAX = 8, 64


# --------------------------------------------------------------------------------------------
# VIN (ISO 3779)

_VIN_RE: Final = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_VIN_VALUES: Final = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS: Final = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
#: WMI regions whose rules make position 9 a check digit: North America (49 CFR 565: 1-5)
#: and China (GB 16735: L). Elsewhere (EU, Japan, Korea, ...) it is the maker's choice.
_CHECK_DIGIT_REGIONS: Final = frozenset("12345L")


def _vin_check_digit(vin: str) -> str:
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin, _VIN_WEIGHTS, strict=True))
    rem = total % 11
    return "X" if rem == 10 else str(rem)


def validate_vin(vin: object) -> str:
    """An ISO 3779 VIN: 17 characters of 0-9 and A-Z without I, O, Q. Position 9 must be the
    check digit (49 CFR 565 weights) where the WMI's region requires one: North America (first
    character 1-5) and China (L); elsewhere it is not checked, since many EU and Asian VINs
    carry a filler there. ``SchemaError`` (field ``vin``) otherwise."""
    if type(vin) is not str:
        raise SchemaError(f"a VIN is text, not {type(vin).__name__}", field="vin")
    if len(vin) != 17:
        raise SchemaError(f"a VIN has 17 characters, {vin!r} has {len(vin)}", field="vin")
    if _VIN_RE.fullmatch(vin) is None:
        bad = sorted({c for c in vin if not ("0" <= c <= "9" or "A" <= c <= "Z") or c in "IOQ"})
        raise SchemaError(f"{vin!r}: characters {''.join(bad)!r} are not allowed (0-9, A-Z without I O Q)", field="vin")
    if vin[0] in _CHECK_DIGIT_REGIONS:
        expected = _vin_check_digit(vin)
        if vin[8] != expected:
            raise SchemaError(f"{vin!r}: check digit (position 9) is {vin[8]!r}, expected {expected!r}", field="vin")
    return vin


# --------------------------------------------------------------------------------------------
# credential bodies (the kind-specific claims)


def _did(value: object, name: str, kind: str) -> str:
    if type(value) is not str:
        raise SchemaError(f"must be a did:key, not {type(value).__name__}", field=name, kind=kind)
    try:
        didkey.decode(value)
    except DidError as err:
        raise SchemaError(f"not a usable did:key: {err}", field=name, kind=kind) from None
    return value


def _text_list(value: object, name: str, kind: str) -> tuple[str, ...]:
    if type(value) not in (list, tuple) or not value:
        raise SchemaError("must be a non-empty array of text", field=name, kind=kind)
    items: list[str] = []
    seq: list[Any] | tuple[Any, ...] = value  # type: ignore[assignment]
    for i, item in enumerate(seq):
        if type(item) is not str:
            raise SchemaError(f"must be text, not {type(item).__name__}", field=f"{name}[{i}]", kind=kind)
        if item in items:
            raise SchemaError(f"{item!r} is listed twice", field=f"{name}[{i}]", kind=kind)
        items.append(item)
    return tuple(items)


def _check_resource(resource: str, *, field_name: str = "res", kind: str = "grant") -> str:
    if resource in NAMED_RESOURCES or _VSS_RE.fullmatch(resource):
        return resource
    raise SchemaError(
        f"{resource!r} is neither a VSS path (Vehicle.X.Y, or a branch Vehicle.X.*) nor one of "
        f"{', '.join(NAMED_RESOURCES)}",
        field=field_name,
        kind=kind,
    )


def _only(extra: Mapping[Any, Any], allowed: Iterable[str], kind: str) -> None:
    unknown = [k for k in extra if k not in allowed]
    if unknown:
        raise SchemaError(f"unknown claim {unknown[0]!r}", field=str(unknown[0]) or repr(unknown[0]), kind=kind)


def _need(extra: Mapping[Any, Any], name: str, kind: str) -> Any:
    if name not in extra:
        raise SchemaError("required claim is missing", field=name, kind=kind)
    return extra[name]


@dataclass(frozen=True)
class VehicleCredential:
    """OEM -> vehicle, issued at production: the device DID is the vehicle with this VIN."""

    device: str
    vin: str
    attributes: Mapping[str, str | int | bool] = field(default_factory=dict)

    KIND: ClassVar[CredentialKind] = CredentialKind.VEHICLE

    @property
    def subject(self) -> str:
        return self.device

    def extra_claims(self) -> dict[int | str, Any]:
        out: dict[int | str, Any] = {"vin": self.vin}
        if self.attributes:
            out["attrs"] = dict(self.attributes)
        return out

    @classmethod
    def from_claims(cls, sub: str, extra: Mapping[Any, Any]) -> VehicleCredential:
        k = cls.KIND.value
        _only(extra, ("vin", "attrs"), k)
        vin = validate_vin(_need(extra, "vin", k))
        attrs = extra.get("attrs", {})
        if type(attrs) is not dict or len(attrs) > 32:
            raise SchemaError("must be a map of at most 32 attributes", field="attrs", kind=k)
        for key, value in attrs.items():
            if type(key) is not str or _ATTR_KEY_RE.fullmatch(key) is None:
                raise SchemaError(f"attribute name {key!r} is not [a-z][a-z0-9_]{{0,31}}", field="attrs", kind=k)
            if type(value) not in (str, int, bool) or (type(value) is str and len(value) > 128):
                raise SchemaError(
                    "must be text (<= 128 characters), an integer or a bool", field=f"attrs.{key}", kind=k
                )
        return cls(_did(sub, "sub", k), vin, dict(attrs))


@dataclass(frozen=True)
class OwnerCredential:
    """OEM or registration authority -> owner: ``owner`` owns the vehicle ``vehicle`` / ``vin``."""

    owner: str
    vehicle: str
    vin: str

    KIND: ClassVar[CredentialKind] = CredentialKind.OWNER

    @property
    def subject(self) -> str:
        return self.owner

    def extra_claims(self) -> dict[int | str, Any]:
        return {"vehicle": self.vehicle, "vin": self.vin}

    @classmethod
    def from_claims(cls, sub: str, extra: Mapping[Any, Any]) -> OwnerCredential:
        k = cls.KIND.value
        _only(extra, ("vehicle", "vin"), k)
        vehicle = _did(_need(extra, "vehicle", k), "vehicle", k)
        return cls(_did(sub, "sub", k), vehicle, validate_vin(_need(extra, "vin", k)))


@dataclass(frozen=True)
class AccessGrant:
    """Owner -> third party: ``subject`` may do ``actions`` on ``resources`` of ``vehicle``
    until the credential's ``exp``. Resources are VSS paths (``Vehicle.Speed``; a trailing
    ``.*`` grants a branch) or ``events``/``attestations``/``clips``/``dtc``."""

    subject: str
    vehicle: str
    resources: tuple[str, ...]
    actions: tuple[str, ...] = ("read",)

    KIND: ClassVar[CredentialKind] = CredentialKind.GRANT

    def extra_claims(self) -> dict[int | str, Any]:
        return {"vehicle": self.vehicle, "res": list(self.resources), "act": list(self.actions)}

    @classmethod
    def from_claims(cls, sub: str, extra: Mapping[Any, Any]) -> AccessGrant:
        k = cls.KIND.value
        _only(extra, ("vehicle", "res", "act"), k)
        vehicle = _did(_need(extra, "vehicle", k), "vehicle", k)
        resources = _text_list(_need(extra, "res", k), "res", k)
        for i, r in enumerate(resources):
            _check_resource(r, field_name=f"res[{i}]", kind=k)
        actions = _text_list(_need(extra, "act", k), "act", k)
        for i, a in enumerate(actions):
            if a not in ACTIONS:
                raise SchemaError(f"{a!r} is not one of {', '.join(ACTIONS)}", field=f"act[{i}]", kind=k)
        return cls(_did(sub, "sub", k), vehicle, resources, actions)


@dataclass(frozen=True)
class ValidatorCredential:
    """Road authority -> RSU: ``rsu`` is a validator of radio cell ``cell`` with ``power`` votes."""

    rsu: str
    cell: str
    power: int = 1

    KIND: ClassVar[CredentialKind] = CredentialKind.VALIDATOR

    @property
    def subject(self) -> str:
        return self.rsu

    def extra_claims(self) -> dict[int | str, Any]:
        return {"cell": self.cell, "power": self.power}

    @classmethod
    def from_claims(cls, sub: str, extra: Mapping[Any, Any]) -> ValidatorCredential:
        k = cls.KIND.value
        _only(extra, ("cell", "power"), k)
        cell = _need(extra, "cell", k)
        if type(cell) is not str or _CELL_RE.fullmatch(cell) is None:
            raise SchemaError(f"cell id {cell!r} is not 1-64 of [A-Za-z0-9_.:-]", field="cell", kind=k)
        power = _need(extra, "power", k)
        if type(power) is not int or not 1 <= power <= 1 << 32:
            raise SchemaError(f"voting power {power!r} is not an integer 1 .. 2^32", field="power", kind=k)
        return cls(_did(sub, "sub", k), cell, power)


@dataclass(frozen=True)
class IssuerCredential:
    """Root -> delegate: ``subject`` may issue what ``role`` issues (one level, never further)."""

    subject: str
    role: Role

    KIND: ClassVar[CredentialKind] = CredentialKind.ISSUER

    def extra_claims(self) -> dict[int | str, Any]:
        return {"role": str(self.role)}

    @classmethod
    def from_claims(cls, sub: str, extra: Mapping[Any, Any]) -> IssuerCredential:
        k = cls.KIND.value
        _only(extra, ("role",), k)
        role = _need(extra, "role", k)
        if type(role) is not str or role not in _ROLE_VALUES:
            raise SchemaError(f"{role!r} is not one of {', '.join(Role)}", field="role", kind=k)
        return cls(_did(sub, "sub", k), Role(role))


CredentialBody = VehicleCredential | OwnerCredential | AccessGrant | ValidatorCredential | IssuerCredential
_BODIES: Final[Mapping[CredentialKind, Any]] = {
    c.KIND: c for c in (VehicleCredential, OwnerCredential, AccessGrant, ValidatorCredential, IssuerCredential)
}


# --------------------------------------------------------------------------------------------
# issuing and decoding


def issue_credential(
    body: CredentialBody,
    key: SigningKey,
    *,
    now: float,
    expires: float | None = None,
    not_before: float | None = None,
    cti: bytes | None = None,
) -> bytes:
    """Sign ``body`` as a CWT from ``key``'s did:key: ``iat`` = ``now``, ``exp``/``nbf`` when
    given (required for grants and issuer credentials), ``cti`` random 16 bytes unless given.
    The body is checked as a verifier would check it (SchemaError names the claim)."""
    kind = body.KIND
    issuer = didkey.did_key(key.public)
    if expires is None and kind in (CredentialKind.GRANT, CredentialKind.ISSUER):
        raise SchemaError("this kind of credential must expire", field="exp", kind=kind.value)
    if expires is not None and expires <= now:
        raise SchemaError(f"exp {expires} is not after iat {now}", field="exp", kind=kind.value)
    cti = os.urandom(16) if cti is None else cti
    if not _CTI_MIN <= len(cti) <= _CTI_MAX:
        raise SchemaError(f"cti must be {_CTI_MIN} to {_CTI_MAX} bytes", field="cti", kind=kind.value)
    extra = body.extra_claims()
    _BODIES[kind].from_claims(body.subject, extra)  # the verifier's checks, before signing
    claims = cwt.Claims(
        iss=issuer,
        sub=body.subject,
        iat=int(now),
        exp=None if expires is None else int(expires),
        nbf=None if not_before is None else int(not_before),
        cti=cti,
        extra=extra,
    )
    return cose.sign1(
        cbor.dumps(claims.to_map()),
        key,
        kid=didkey.verification_method_id(issuer).encode(),
        content_type=kind.content_type,
    )


@dataclass(frozen=True)
class DecodedCredential:
    """A credential's content. From ``decode_credential``: NOT verified."""

    kind: CredentialKind
    issuer: str
    subject: str
    cti: bytes
    claims: cwt.Claims
    body: CredentialBody
    raw: bytes = field(repr=False)

    @property
    def expires(self) -> float | None:
        return self.claims.exp

    def to_json(self) -> dict[str, Any]:
        c = self.claims
        body = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.body).items()}
        return {
            "kind": str(self.kind),
            "issuer": self.issuer,
            "subject": self.subject,
            "cti": self.cti.hex(),
            "iat": c.iat,
            "nbf": c.nbf,
            "exp": c.exp,
            "claims": body,
        }


@dataclass(frozen=True)
class VerifiedCredential(DecodedCredential):
    """A credential whose chain was verified to ``root``; ``chain`` holds the credentials that
    gave its issuer the authority, nearest first (empty when a root issued it)."""

    root: str = ""
    chain: tuple[VerifiedCredential, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["root"] = self.root
        out["chain"] = [{"kind": str(c.kind), "issuer": c.issuer, "cti": c.cti.hex()} for c in self.chain]
        return out


def _decode_msg(data: bytes) -> tuple[cose.Sign1, CredentialKind, str]:
    msg = cose.decode_sign1(data)
    if not msg.tagged:
        raise CoseError("a credential is a tagged COSE_Sign1 (tag 18)")
    ct = msg.content_type
    kind = _KIND_BY_CT.get(ct) if isinstance(ct, str) else None
    if kind is None:
        raise CoseError(f"content type {ct!r} is not a credential kind ({', '.join(_KIND_BY_CT)})")
    kid = msg.kid
    if kid is None:
        raise CoseError("a credential's protected header names the issuer's key (kid)")
    try:
        issuer = kid.decode().partition("#")[0]
    except UnicodeDecodeError:
        raise CoseError("kid is not a did:key verification method") from None
    return msg, kind, issuer


def _parse(msg: cose.Sign1, kind: CredentialKind, kid_issuer: str, claims: cwt.Claims) -> DecodedCredential:
    k = kind.value
    if claims.iss != kid_issuer:
        raise CredentialError(f"{k} credential: iss {claims.iss!r} is not the signer {kid_issuer!r}")
    if claims.sub is None:
        raise SchemaError("required claim is missing", field="sub", kind=k)
    if claims.cti is None or not _CTI_MIN <= len(claims.cti) <= _CTI_MAX:
        raise SchemaError(f"a credential id of {_CTI_MIN} to {_CTI_MAX} bytes is required", field="cti", kind=k)
    if kind in (CredentialKind.GRANT, CredentialKind.ISSUER) and claims.exp is None:
        raise SchemaError("this kind of credential must expire", field="exp", kind=k)
    if claims.aud is not None or claims.cnf is not None:
        raise SchemaError("aud and cnf are not used in credentials", field="aud" if claims.aud else "cnf", kind=k)
    body = _BODIES[kind].from_claims(claims.sub, claims.extra)
    return DecodedCredential(kind, kid_issuer, claims.sub, claims.cti, claims, body, msg.raw)


def decode_credential(data: bytes) -> DecodedCredential:
    """Parse a credential WITHOUT verifying signature, validity, revocation or chain."""
    msg, kind, issuer = _decode_msg(data)
    if msg.payload is None:
        raise CoseError("a credential cannot have a detached payload")
    try:
        claims = cwt.Claims.from_map(cbor.loads(msg.payload))
    except SchemaError as err:
        raise SchemaError(str(err), field=err.field, kind=kind.value) from None
    return _parse(msg, kind, issuer, claims)


# --------------------------------------------------------------------------------------------
# trust store, revocation, credential store


class Revocation(Protocol):
    """Anything that can say a credential id or a DID is revoked (raising ``RevokedError``)."""

    def check(self, *, cti: bytes | None = None, dids: Iterable[str] = ()) -> None: ...


@dataclass
class RevocationList:
    """Revoked credential ids (cti) and DIDs. ``parse`` reads the text form: one entry per line,
    a DID or a credential id in hex; ``#`` starts a comment. (JSON ``{"credentials": [hex],
    "dids": [...]}`` is read too.)"""

    credentials: set[bytes] = field(default_factory=set)
    dids: set[str] = field(default_factory=set)

    def revoke_credential(self, cti: bytes) -> None:
        self.credentials.add(bytes(cti))

    def revoke_did(self, did: str) -> None:
        self.dids.add(did)

    def check(self, *, cti: bytes | None = None, dids: Iterable[str] = ()) -> None:
        if cti is not None and cti in self.credentials:
            raise RevokedError(f"credential {cti.hex()} is revoked")
        for did in dids:
            if did in self.dids:
                raise RevokedError(f"{did} is revoked")

    @classmethod
    def parse(cls, text: str) -> RevocationList:
        out = cls()
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                doc = json.loads(stripped)
                creds, dids = doc.get("credentials", []), doc.get("dids", [])
                for c in creds:
                    out.revoke_credential(bytes.fromhex(c))
                for d in dids:
                    if type(d) is not str:
                        raise TypeError(f"DID {d!r} is not text")
                    out.revoke_did(d)
            except (ValueError, TypeError, AttributeError) as err:
                raise MalformedError(f"revocation list (JSON): {err}") from None
            return out
        for n, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if entry.startswith("did:"):
                out.revoke_did(entry)
                continue
            try:
                out.revoke_credential(bytes.fromhex(entry))
            except ValueError:
                raise MalformedError(f"revocation list line {n}: {entry[:40]!r} is neither a DID nor hex") from None
        return out


class TrustStore:
    """Trust roots ``{did: role or roles}``, revocation, and the clock-skew allowance (s)."""

    def __init__(
        self,
        roots: Mapping[str, Role | str | Iterable[Role | str]],
        revocation: Revocation | None = None,
        *,
        skew: float = 60.0,
    ) -> None:
        if not 0 <= skew < 86400:
            raise ValueError(f"skew must be 0 .. 86400 s (got {skew})")
        self._roots: dict[str, frozenset[Role]] = {}
        for did, roles in roots.items():
            didkey.resolve(did)  # a root must be a usable signing did:key
            items = [roles] if isinstance(roles, str) else list(roles)
            try:
                self._roots[did] = frozenset(Role(r) for r in items)
            except ValueError:
                raise ValueError(f"root {did}: roles {items} (known: {', '.join(Role)})") from None
        self.revocation: Revocation = revocation if revocation is not None else RevocationList()
        self.skew = float(skew)

    @property
    def roots(self) -> Mapping[str, frozenset[Role]]:
        return self._roots

    def roles_of(self, did: str) -> frozenset[Role]:
        return self._roots.get(did, frozenset())

    def authority_keys(self, role: Role | str) -> dict[str, VerifyKey]:
        """``{did: key}`` of the roots with ``role`` (e.g. for ``verify_pseudonym_cert``)."""
        r = Role(role)
        return {did: didkey.resolve(did) for did, roles in self._roots.items() if r in roles}


class CredentialStore:
    """Credentials known locally (chains presented earlier, provisioning), indexed by kind and
    subject for chain look-ups. Adding does not verify; verification happens on use."""

    def __init__(self, credentials: Iterable[bytes] = ()) -> None:
        self._by_subject: dict[tuple[CredentialKind, str], list[bytes]] = {}
        for data in credentials:
            self.add(data)

    def add(self, data: bytes) -> DecodedCredential:
        cred = decode_credential(data)
        entries = self._by_subject.setdefault((cred.kind, cred.subject), [])
        if cred.raw not in entries:
            entries.append(cred.raw)
        return cred

    def find(self, kind: CredentialKind, subject: str) -> list[bytes]:
        return list(self._by_subject.get((kind, subject), ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_subject.values())


# --------------------------------------------------------------------------------------------
# verification


def _again(err: LedgerError, context: str) -> LedgerError:
    """The same kind of error with ``context`` in front (chain errors say which link failed)."""
    if isinstance(err, SchemaError):
        return SchemaError(f"{context}: {err}")
    try:
        return type(err)(f"{context}: {err}")
    except TypeError:  # pragma: no cover - every class of ours takes a message
        return CredentialError(f"{context}: {err}")


class _Verifier:
    def __init__(self, store: TrustStore, now: float, stores: tuple[CredentialStore, ...]) -> None:
        self.store = store
        self.now = now
        self.stores = stores

    def candidates(self, kind: CredentialKind, subject: str) -> list[bytes]:
        found: list[bytes] = []
        for s in self.stores:
            found.extend(c for c in s.find(kind, subject) if c not in found)
        return found

    def verify(self, data: bytes, expected: CredentialKind | None, depth: int) -> VerifiedCredential:
        msg, kind, issuer = _decode_msg(data)
        if expected is not None and kind != expected:
            raise CredentialError(f"expected a {expected.value} credential, got a {kind.value} credential")
        try:
            key = didkey.resolve(bytes(msg.kid or b"").decode())
        except (DidError, UnicodeDecodeError) as err:
            raise CredentialError(f"{kind.value} credential: cannot resolve the issuer key: {err}") from err
        claims = cwt.verify_cwt(data, key, now=self.now, skew=self.store.skew)
        cred = _parse(msg, kind, issuer, claims)
        self.store.revocation.check(cti=cred.cti, dids=(cred.issuer, cred.subject))
        root, chain = self.authorise(cred, depth)
        return VerifiedCredential(
            cred.kind, cred.issuer, cred.subject, cred.cti, cred.claims, cred.body, cred.raw, root, chain
        )

    def authorise(self, cred: DecodedCredential, depth: int) -> tuple[str, tuple[VerifiedCredential, ...]]:
        """(root DID, chain) that gives ``cred.issuer`` the authority to issue ``cred``."""
        kind, issuer, body = cred.kind, cred.issuer, cred.body
        roles = self.store.roles_of(issuer)
        if kind == CredentialKind.ISSUER:
            assert isinstance(body, IssuerCredential)
            if body.role in roles:
                return issuer, ()
            why = "is not a trust root" if not roles else f"is a root for {', '.join(sorted(roles))} only"
            raise CredentialError(f"issuer credential for role {body.role}: {issuer} {why} (only roots delegate)")
        if kind == CredentialKind.GRANT:
            assert isinstance(body, AccessGrant)
            owner_cred = self.link(
                CredentialKind.OWNER,
                issuer,
                depth,
                lambda c: isinstance(c.body, OwnerCredential) and c.body.vehicle == body.vehicle,
                f"an owner credential making {issuer} the owner of {body.vehicle}",
            )
            return owner_cred.root, (owner_cred, *owner_cred.chain)
        needed = _ISSUER_ROLES[kind]
        if roles & needed:
            return issuer, ()
        delegation = self.link(
            CredentialKind.ISSUER,
            issuer,
            depth,
            lambda c: isinstance(c.body, IssuerCredential) and c.body.role in needed,
            f"an issuer credential giving {issuer} the role {' or '.join(sorted(needed))}",
            role_hint=needed,
        )
        return delegation.root, (delegation, *delegation.chain)

    def link(
        self,
        kind: CredentialKind,
        subject: str,
        depth: int,
        fits: Any,
        what: str,
        role_hint: frozenset[Role] = frozenset(),
    ) -> VerifiedCredential:
        if depth >= MAX_CHAIN:
            raise CredentialError(f"chain longer than {MAX_CHAIN} credentials while looking for {what}")
        failures: list[LedgerError] = []
        for data in self.candidates(kind, subject):
            try:
                parent = self.verify(data, kind, depth + 1)
            except LedgerError as err:
                failures.append(err)
                continue
            if fits(parent):
                return parent
        if failures:
            raise _again(failures[0], what) from failures[0]
        if role_hint:
            roles = self.store.roles_of(subject)
            where = f"a trust root for {', '.join(sorted(roles))} only" if roles else "not a trust root"
            raise CredentialError(f"{subject} is {where}, and no chain gives it the authority: need {what}")
        raise CredentialError(f"no chain: need {what}")


def verify_credential(
    data: bytes,
    store: TrustStore,
    *,
    now: float,
    expected_kind: CredentialKind | str | None = None,
    chain: Iterable[bytes] = (),
    credentials: CredentialStore | None = None,
) -> VerifiedCredential:
    """Verify a credential and walk its issuer chain to a root of ``store`` (see the module
    docstring). Chain credentials come from ``chain`` (presented with it) and ``credentials``.

    Raises CoseError/SchemaError (malformed), SignatureError, ValidityError (with the skew),
    RevokedError, CredentialError (no chain to a root, wrong issuer authority, wrong kind)."""
    presented = CredentialStore(chain)
    stores = (presented,) if credentials is None else (presented, credentials)
    expected = None if expected_kind is None else CredentialKind(expected_kind)
    verified = _Verifier(store, now, stores).verify(bytes(data), expected, 0)
    store.revocation.check(dids=(verified.root,))
    return verified


# --------------------------------------------------------------------------------------------
# access policy (what the OBU enforces)


def resource_matches(granted: str, requested: str) -> bool:
    """Exact name, or a VSS branch grant ``Vehicle.X.*`` covering everything below ``Vehicle.X``."""
    if granted == requested:
        return True
    if granted.endswith(".*"):
        return requested.startswith(granted[:-1])
    return False


class AccessPolicy:
    """Decides requests to this vehicle (``vehicle_did``, optionally its ``vin``) from the
    grants a requester presents, verified against ``store`` (chains from ``credentials``)."""

    def __init__(
        self,
        vehicle_did: str,
        store: TrustStore,
        *,
        vin: str | None = None,
        credentials: CredentialStore | None = None,
    ) -> None:
        self.vehicle_did = vehicle_did
        self.vin = None if vin is None else validate_vin(vin)
        self.store = store
        self.credentials = credentials

    def check(
        self,
        grants: Iterable[bytes | VerifiedCredential],
        subject_did: str,
        resource: str,
        action: str,
        now: float,
        *,
        chain: Iterable[bytes] = (),
    ) -> VerifiedCredential:
        """The grant that allows ``subject_did`` to ``action`` ``resource`` now, or
        ``AccessDenied`` (a CredentialError) listing, per grant, why it does not."""
        if action not in ACTIONS:
            raise AccessDenied(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        _check_resource(resource)
        chain = list(chain)
        reasons: list[str] = []
        first_error: LedgerError | None = None
        for i, grant in enumerate(grants):
            data = grant.raw if isinstance(grant, VerifiedCredential) else grant  # re-checked at `now`
            try:
                verified = verify_credential(
                    data,
                    self.store,
                    now=now,
                    expected_kind=CredentialKind.GRANT,
                    chain=chain,
                    credentials=self.credentials,
                )
            except LedgerError as err:
                reasons.append(f"grant {i}: {err}")
                first_error = first_error or err
                continue
            why = self._mismatch(verified, subject_did, resource, action)
            if why is None:
                return verified
            reasons.append(f"grant {i} ({verified.cti.hex()}): {why}")
        if not reasons:
            raise AccessDenied(f"{subject_did} presented no grant for {action} {resource}")
        denied = AccessDenied(f"{action} {resource} denied to {subject_did}: " + "; ".join(reasons), reasons)
        if first_error is not None:
            raise denied from first_error
        raise denied

    def _mismatch(self, grant: VerifiedCredential, subject: str, resource: str, action: str) -> str | None:
        body = grant.body
        assert isinstance(body, AccessGrant)
        if body.vehicle != self.vehicle_did:
            return f"it is for vehicle {body.vehicle}, not this one"
        owner = grant.chain[0].body if grant.chain else None
        if self.vin is not None and isinstance(owner, OwnerCredential) and owner.vin != self.vin:
            return f"its owner credential is for VIN {owner.vin}, this vehicle is {self.vin}"
        if grant.subject != subject:
            return f"it is granted to {grant.subject}, not to {subject}"
        if not any(resource_matches(r, resource) for r in body.resources):
            return f"{resource} is not among its resources ({', '.join(body.resources)})"
        if action not in body.actions:
            return f"it allows {', '.join(body.actions)}, not {action}"
        return None
