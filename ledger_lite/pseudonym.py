"""V2V pseudonyms: short-lived keys certified by an authority, so that neighbours can check a
sender is a certified vehicle but cannot link its pseudonyms to it or to each other, while the
authority (the regulator's trapdoor) can.

**Certificate** (authority -> vehicle): a CWT (RFC 8392, ``ledger_lite.cwt``): tagged
COSE_Sign1, kid = the authority's did:key verification method, over the deterministic-CBOR
claims::

    {1 iss: authority DID, 4 exp, 5 nbf, 7 cti: 16 random bytes (the certificate id),
     8 cnf: {1: COSE_Key of the pseudonym key} (RFC 8747), "lnk": linkage value}

Nothing in it names the vehicle. Validity is a global slot, ``nbf = k * validity``,
``exp = (k + 1) * validity``, the same for every vehicle, so times do not link certificates
either; every pseudonym key is on one curve (the authority's ``curve``). The **linkage value**
is the vehicle's DID sealed to the authority's X25519 escrow key with fresh randomness per
certificate (ephemeral X25519 -> HKDF-SHA256 -> AES-256-GCM, the DID padded to a fixed size and
the certificate id as associated data; an HPKE-base-mode-like box):
``enc (32) || ciphertext (128 + 16)``. Only the escrow private key opens it
(``PseudonymAuthority.open_linkage``).

**Vehicle**: ``make_request`` makes pseudonym key pairs and a request signed with the device key
(its did:key is the kid); the authority's ``issue`` checks it and certifies the keys.
``PseudonymPool`` keeps (key, certificate) pairs and hands each out once;
``PseudonymManager`` decides when to change: every ``period`` +- ``jitter`` seconds, on a radio
cell change, and when the certificate expires. Each change yields a new ``PseudonymIdentity``:
key, certificate, a random 32-bit ETSI station id, a random 24-bit PC5 layer-2 id and a
message counter from 0 -- every identifier changes at once. When no fresh pseudonym is left the
manager keeps the current one while its certificate is valid (V2V safety messages must not
stop) and ``refill_needed`` says so; after that ``PoolExhaustedError``.

**Receivers**: ``verify_pseudonym_cert`` checks a certificate against trusted authority keys;
``PseudonymIdentity.sign`` makes a V2V message (COSE_Sign1, kid = certificate id; station id and
counter in the protected header; the certificate itself in header 13 ``kcwt``, RFC 9528, when
asked) and ``verify_v2v`` checks one, with a cache of certificates seen.

Pure: no files, no clocks; ``now`` is POSIX seconds (UTC). Randomness for jitter and ids comes
from the ``rng`` passed in; keys, certificate ids and linkage use the OS CSPRNG.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import cbor, cose
from .cwt import Claims, sign_cwt
from .didkey import decode as _decode_did
from .didkey import did_key, resolve, verification_method_id
from .errors import (
    CoseError,
    CredentialError,
    DidError,
    KeyFormatError,
    MalformedError,
    PoolExhaustedError,
    ReplayError,
    UnsupportedAlgorithm,
    ValidityError,
    VerificationError,
)
from .keys import CURVES, KeyAgreementKey, KeyAgreementPrivateKey, SigningKey, VerifyKey

__all__ = [
    "CT_REQUEST",
    "PseudonymAuthority",
    "PseudonymCert",
    "PseudonymIdentity",
    "PseudonymManager",
    "PseudonymPool",
    "V2vMessage",
    "make_request",
    "open_linkage",
    "verify_pseudonym_cert",
    "verify_v2v",
]

#: content type of a vehicle's certificate request
CT_REQUEST: Final = "application/acc-pseudonym-request+cbor"
#: cnf holds a COSE_Key (RFC 8747); "lnk" is our private claim
_CNF_COSE_KEY = 1
_LNK = "lnk"
#: COSE header labels: kcwt (RFC 9528 §10.9) and ours for the V2V identifiers
HDR_KCWT: Final = 13
HDR_STATION_ID: Final = "sid"
HDR_COUNTER: Final = "ctr"

_CTI_LEN = 16
_LINKAGE_INFO = b"autochain v2v pseudonym linkage v1"
_LINKAGE_PAD = 128  # plaintext size: 2-byte length + DID + zero padding (same for every DID)
_LINKAGE_LEN = 32 + _LINKAGE_PAD + 16
_NONCE_LEN = 16
_U32 = 1 << 32


# --- claims -------------------------------------------------------------------------------


def _claims_of(payload: bytes | None, what: str) -> dict[Any, Any]:
    if payload is None:
        raise CoseError(f"{what} has a detached payload")
    claims = cbor.loads(payload)
    if not isinstance(claims, dict):
        raise MalformedError(f"{what} payload must be a CBOR map of claims")
    return claims


def _req(claims: Mapping[Any, Any], key: Any, typ: type, what: str) -> Any:
    value = claims.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise MalformedError(f"{what}: claim {key!r} must be {typ.__name__} (got {type(value).__name__})")
    return value


# --- certificates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PseudonymCert:
    """A decoded pseudonym certificate. ``cert_id`` is the kid of the messages it signs."""

    cert_id: bytes
    key: VerifyKey
    issuer: str
    nbf: int
    exp: int
    linkage: bytes = field(repr=False)
    raw: bytes = field(repr=False)

    def valid_at(self, now: float, skew: float = 0.0) -> bool:
        return self.nbf - skew <= now < self.exp + skew

    def check_time(self, now: float, skew: float) -> None:
        if now < self.nbf - skew:
            raise ValidityError(f"pseudonym certificate {self.cert_id.hex()} is not valid before {self.nbf}")
        if now >= self.exp + skew:
            raise ValidityError(f"pseudonym certificate {self.cert_id.hex()} expired at {self.exp}")


def _parse_cert(msg: cose.Sign1) -> PseudonymCert:
    """The certificate in a COSE_Sign1 whose signature has been checked (claims not yet)."""
    what = "pseudonym certificate"
    if not msg.tagged:
        raise CoseError(f"a {what} is a tagged COSE_Sign1")
    claims = Claims.from_map(_claims_of(msg.payload, what))
    foreign = [k for k in ("sub", "aud", "iat") if getattr(claims, k) is not None] + [
        str(k) for k in claims.extra if k != _LNK
    ]
    if foreign:
        raise MalformedError(f"{what}: unknown claims {sorted(foreign)}")
    issuer, nbf, exp, cti, cnf = claims.iss, claims.nbf, claims.exp, claims.cti, claims.cnf
    linkage = claims.extra.get(_LNK)
    if issuer is None or cti is None or cnf is None or type(nbf) is not int or type(exp) is not int:
        raise MalformedError(f"{what}: needs iss, integer nbf and exp, cti and cnf")
    if not isinstance(linkage, bytes) or len(linkage) != _LINKAGE_LEN:
        raise MalformedError(f"{what}: linkage value must be {_LINKAGE_LEN} bytes")
    if len(cti) != _CTI_LEN:
        raise MalformedError(f"{what}: cti must be {_CTI_LEN} bytes (got {len(cti)})")
    if exp <= nbf:
        raise MalformedError(f"{what}: exp {exp} is not after nbf {nbf}")
    if set(cnf) != {_CNF_COSE_KEY} or not isinstance(cnf[_CNF_COSE_KEY], dict):
        raise MalformedError(f"{what}: cnf must hold exactly one COSE_Key (label 1)")
    try:
        key = VerifyKey.from_cose_key(cnf[_CNF_COSE_KEY])
    except UnsupportedAlgorithm as err:
        raise KeyFormatError(f"{what}: {err}") from err
    return PseudonymCert(cti, key, issuer, nbf, exp, linkage, msg.raw)


def _authority_index(authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey]) -> dict[str, VerifyKey]:
    if isinstance(authority_keys, Mapping):
        return dict(authority_keys)
    return {did_key(k): k for k in authority_keys}


def _verify_cert(cert: bytes, trusted: Mapping[str, VerifyKey]) -> PseudonymCert:
    msg = cose.decode_sign1(cert)
    kid = msg.kid
    if kid is None:
        raise CoseError("pseudonym certificate has no kid")
    try:
        issuer_did = kid.decode("ascii").partition("#")[0]
    except UnicodeDecodeError:
        raise CoseError("pseudonym certificate kid is not a did:key key id") from None
    authority = trusted.get(issuer_did)
    if authority is None:
        raise CredentialError(f"pseudonym certificate issued by {issuer_did[:60]!r}, not a trusted authority")
    cose.verify_sign1(msg, authority)
    parsed = _parse_cert(msg)
    if parsed.issuer != issuer_did:
        raise CredentialError(f"pseudonym certificate names issuer {parsed.issuer[:60]!r} but is signed by {kid!r}")
    return parsed


def verify_pseudonym_cert(
    cert: bytes,
    authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey],
    *,
    now: float,
    skew: float = 30.0,
) -> PseudonymCert:
    """Check a pseudonym certificate: signed by one of ``authority_keys`` (keys, or a
    DID -> key map), well formed, valid at ``now`` +- ``skew``. Raises ``CredentialError``
    (untrusted issuer), ``SignatureError``, ``ValidityError`` or a ``MalformedError``."""
    parsed = _verify_cert(cert, _authority_index(authority_keys))
    parsed.check_time(now, skew)
    return parsed


# --- linkage: the vehicle DID sealed to the escrow key ------------------------------------------


def _linkage_keys(shared: bytes, enc: bytes, escrow: KeyAgreementKey) -> tuple[bytes, bytes]:
    okm = HKDF(hashes.SHA256(), length=44, salt=enc + escrow.raw(), info=_LINKAGE_INFO).derive(shared)
    return okm[:32], okm[32:]


def _seal_linkage(escrow: KeyAgreementKey, vehicle_did: str, cti: bytes) -> bytes:
    did = vehicle_did.encode("ascii")
    if len(did) > _LINKAGE_PAD - 2:
        raise DidError(f"vehicle DID is {len(did)} bytes, longer than a linkage value holds")
    ephemeral = KeyAgreementPrivateKey.generate()
    enc = ephemeral.public.raw()
    key, nonce = _linkage_keys(ephemeral.exchange(escrow), enc, escrow)
    plaintext = len(did).to_bytes(2, "big") + did + bytes(_LINKAGE_PAD - 2 - len(did))
    return enc + AESGCM(key).encrypt(nonce, plaintext, cti)


def open_linkage(cert: PseudonymCert, escrow_private_key: KeyAgreementPrivateKey) -> str:
    """The vehicle DID in a (verified) certificate's linkage value. ``VerificationError`` if
    it does not open with this escrow key."""
    enc, sealed = cert.linkage[:32], cert.linkage[32:]
    try:
        ephemeral = KeyAgreementKey.from_raw("X25519", enc)
        escrow = escrow_private_key.public
        key, nonce = _linkage_keys(escrow_private_key.exchange(ephemeral), enc, escrow)
        plaintext = AESGCM(key).decrypt(nonce, sealed, cert.cert_id)
    except (InvalidTag, KeyFormatError):
        raise VerificationError(
            f"linkage value of certificate {cert.cert_id.hex()} does not open with this escrow key"
        ) from None
    n = int.from_bytes(plaintext[:2], "big")
    if n > _LINKAGE_PAD - 2 or any(plaintext[2 + n :]):
        raise MalformedError("linkage plaintext is not a padded DID")
    return plaintext[2 : 2 + n].decode("ascii")


# --- authority ----------------------------------------------------------------------------------


class PseudonymAuthority:
    """Certifies vehicles' pseudonym keys and, holding the escrow key, can open linkage values.

    ``validity``: seconds per global validity slot; ``curve``: the one curve of every pseudonym
    key; ``max_batch``: keys per request; ``slots_ahead``: how many future slots a vehicle may ask
    for; ``request_max_age``: seconds a request stays acceptable; ``enrolled``: a predicate on
    vehicle DIDs (default: every well-formed did:key)."""

    def __init__(
        self,
        signing_key: SigningKey,
        escrow_private_key: KeyAgreementPrivateKey,
        *,
        validity: int = 3600,
        curve: str = "P-256",
        max_batch: int = 100,
        slots_ahead: int = 2,
        request_max_age: float = 300.0,
        enrolled: Callable[[str], bool] | None = None,
    ) -> None:
        if validity <= 0 or int(validity) != validity:
            raise ValueError(f"validity must be a positive whole number of seconds (got {validity})")
        if curve not in CURVES:
            raise UnsupportedAlgorithm(f"unsupported pseudonym curve {curve!r} (supported: {', '.join(CURVES)})")
        self._key = signing_key
        self._escrow = escrow_private_key
        self.did = did_key(signing_key.public)
        self.kid = verification_method_id(self.did).encode("ascii")
        self.escrow_public = escrow_private_key.public
        self.validity = int(validity)
        self.curve = curve
        self.max_batch = max_batch
        self.slots_ahead = slots_ahead
        self.request_max_age = request_max_age
        self._enrolled = enrolled
        self._seen_nonces: dict[bytes, float] = {}

    @property
    def public_key(self) -> VerifyKey:
        return self._key.public

    def slot(self, now: float) -> int:
        """The validity slot that contains ``now``."""
        return math.floor(now / self.validity)

    def certify(
        self, vehicle_did: str, keys: Sequence[VerifyKey], *, now: float, slot: int | None = None
    ) -> list[bytes]:
        """One certificate per key, for ``slot`` (default: the current one). The caller has
        checked that ``vehicle_did`` holds these keys (``issue`` does, from a signed request)."""
        _decode_did(vehicle_did)
        current = self.slot(now)
        slot = current if slot is None else slot
        if not current <= slot <= current + self.slots_ahead:
            raise ValidityError(f"slot {slot} is outside {current}..{current + self.slots_ahead}")
        if not 1 <= len(keys) <= self.max_batch:
            raise ValueError(f"between 1 and {self.max_batch} keys per batch (got {len(keys)})")
        if len(set(keys)) != len(keys):
            raise MalformedError("the same pseudonym key is in the batch twice")
        nbf, exp = slot * self.validity, (slot + 1) * self.validity
        certs = []
        for key in keys:
            if key.crv != self.curve:
                raise UnsupportedAlgorithm(f"pseudonym keys must be {self.curve} (got {key.crv})")
            cti = os.urandom(_CTI_LEN)
            claims = Claims(
                iss=self.did,
                nbf=nbf,
                exp=exp,
                cti=cti,
                cnf={_CNF_COSE_KEY: key.cose_key()},
                extra={_LNK: _seal_linkage(self.escrow_public, vehicle_did, cti)},
            )
            certs.append(sign_cwt(claims, self._key, kid=self.kid))
        return certs

    def issue(self, request: bytes, *, now: float) -> list[bytes]:
        """Certificates for a vehicle's signed request (``make_request``). Raises
        ``SignatureError`` / ``ValidityError`` / ``ReplayError`` / ``CredentialError`` /
        ``MalformedError`` for a request not to be served."""
        msg = cose.decode_sign1(request)
        if msg.content_type != CT_REQUEST:
            raise CoseError(f"not a pseudonym request (content type {msg.content_type!r})")
        if msg.kid is None:
            raise CoseError("pseudonym request has no kid")
        try:
            vm = msg.kid.decode("ascii")
        except UnicodeDecodeError:
            raise CoseError("pseudonym request kid is not a did:key key id") from None
        vehicle_did = vm.partition("#")[0]
        cose.verify_sign1(msg, resolve(vm))
        body = _claims_of(msg.payload, "pseudonym request")
        iat = _req(body, "iat", int, "pseudonym request")
        nonce = _req(body, "nonce", bytes, "pseudonym request")
        raw_keys = _req(body, "keys", list, "pseudonym request")
        slot = body.get("slot")
        if slot is not None and (not isinstance(slot, int) or isinstance(slot, bool)):
            raise MalformedError("pseudonym request: slot must be an integer")
        if abs(now - iat) > self.request_max_age:
            raise ValidityError(f"pseudonym request made at {iat} is older than {self.request_max_age:.0f} s")
        self._seen_nonces = {n: t for n, t in self._seen_nonces.items() if now - t <= self.request_max_age}
        if nonce in self._seen_nonces:
            raise ReplayError("pseudonym request seen before")
        if self._enrolled is not None and not self._enrolled(vehicle_did):
            raise CredentialError(f"vehicle {vehicle_did} is not enrolled with this authority")
        keys = []
        for item in raw_keys:
            if not isinstance(item, dict):
                raise MalformedError("pseudonym request: keys must be COSE_Key maps")
            keys.append(VerifyKey.from_cose_key(item))
        certs = self.certify(vehicle_did, keys, now=now, slot=slot)
        self._seen_nonces[nonce] = now
        return certs

    def open_linkage(self, cert: bytes) -> str:
        """The regulator's trapdoor: the vehicle DID behind one of our certificates (checked to
        be ours first; any validity time)."""
        return open_linkage(_verify_cert(cert, {self.did: self.public_key}), self._escrow)

    def __repr__(self) -> str:
        return f"PseudonymAuthority({self.did}, curve {self.curve}, validity {self.validity}s)"


def make_request(
    device_key: SigningKey, count: int, *, now: float, curve: str = "P-256", slot: int | None = None
) -> tuple[bytes, list[SigningKey]]:
    """New pseudonym key pairs and the certificate request for them, signed by the device key
    (kid: its did:key key id). Keep the private keys; send the request."""
    if count < 1:
        raise ValueError("count must be at least 1")
    keys = [SigningKey.generate(curve) for _ in range(count)]
    body: dict[str, Any] = {
        "iat": math.floor(now),
        "nonce": os.urandom(_NONCE_LEN),
        "keys": [k.public.cose_key() for k in keys],
    }
    if slot is not None:
        body["slot"] = slot
    kid = verification_method_id(did_key(device_key.public)).encode("ascii")
    return cose.sign1(cbor.dumps(body), device_key, kid=kid, content_type=CT_REQUEST), keys


# --- vehicle side -------------------------------------------------------------------------------


class PseudonymIdentity:
    """Everything a vehicle shows its neighbours, changed together: pseudonym key and
    certificate, ETSI station id (32 bit), PC5 layer-2 id (24 bit), message counter (from 0).
    The V2X transport must use ``l2_id`` as its source id while this identity is current."""

    __slots__ = ("_counter", "_key", "cert", "l2_id", "station_id")

    def __init__(self, key: SigningKey, cert: PseudonymCert, station_id: int, l2_id: int) -> None:
        self._key = key
        self.cert = cert
        self.station_id = station_id
        self.l2_id = l2_id
        self._counter = 0

    @property
    def counter(self) -> int:
        """Messages signed with this identity so far."""
        return self._counter

    @property
    def cert_id(self) -> bytes:
        return self.cert.cert_id

    def sign(self, payload: bytes, *, include_cert: bool = False, content_type: int | str | None = None) -> bytes:
        """A V2V message: COSE_Sign1 with kid = certificate id and the station id and counter
        in the protected header; ``include_cert`` carries the certificate (header 13)."""
        protected = {HDR_STATION_ID: self.station_id, HDR_COUNTER: self._counter}
        unprotected = {HDR_KCWT: self.cert.raw} if include_cert else None
        msg = cose.sign1(
            payload,
            self._key,
            kid=self.cert.cert_id,
            protected=protected,
            unprotected=unprotected,
            content_type=content_type,
        )
        self._counter += 1
        return msg

    def __repr__(self) -> str:
        return f"PseudonymIdentity(cert {self.cert.cert_id.hex()}, station {self.station_id}, counter {self._counter})"


@dataclass(frozen=True)
class _Entry:
    key: SigningKey
    cert: PseudonymCert


class PseudonymPool:
    """Unused (pseudonym key, certificate) pairs of one vehicle. Each is handed out once: a
    certificate id or key seen before is refused on ``add``."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._seen_ids: set[bytes] = set()
        self._seen_keys: set[VerifyKey] = set()
        self.expired_unused = 0

    def add(
        self,
        key: SigningKey,
        cert: bytes,
        *,
        authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey],
        now: float,
    ) -> PseudonymCert:
        """Add a certificate for ``key`` (checked: trusted issuer, signature, it certifies this
        key, not expired -- it may be for a later slot)."""
        parsed = _verify_cert(cert, _authority_index(authority_keys))
        if parsed.key != key.public:
            raise CredentialError(f"certificate {parsed.cert_id.hex()} certifies another key")
        if now >= parsed.exp:
            raise ValidityError(f"certificate {parsed.cert_id.hex()} expired at {parsed.exp}")
        if parsed.cert_id in self._seen_ids or parsed.key in self._seen_keys:
            raise ReplayError(f"certificate {parsed.cert_id.hex()} or its key was in this pool before")
        self._seen_ids.add(parsed.cert_id)
        self._seen_keys.add(parsed.key)
        self._entries.append(_Entry(key, parsed))
        return parsed

    def add_batch(
        self,
        keys: Sequence[SigningKey],
        certs: Sequence[bytes],
        *,
        authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey],
        now: float,
    ) -> None:
        """Add an authority's answer to ``make_request`` (certificates in the keys' order)."""
        if len(keys) != len(certs):
            raise ValueError(f"{len(keys)} keys but {len(certs)} certificates")
        trusted = _authority_index(authority_keys)
        for key, cert in zip(keys, certs, strict=True):
            self.add(key, cert, authority_keys=trusted, now=now)

    def _drop_expired(self, now: float) -> None:
        keep = [e for e in self._entries if now < e.cert.exp]
        self.expired_unused += len(self._entries) - len(keep)
        self._entries = keep

    def take(self, now: float, rng: random.Random) -> tuple[SigningKey, PseudonymCert] | None:
        """Remove and return a random pair valid at ``now``; None if there is none."""
        self._drop_expired(now)
        usable = [i for i, e in enumerate(self._entries) if e.cert.valid_at(now)]
        if not usable:
            return None
        entry = self._entries.pop(usable[rng.randrange(len(usable))])
        return entry.key, entry.cert

    def available(self, at: float) -> int:
        """Pairs that will still be valid at ``at`` (now or later)."""
        return sum(1 for e in self._entries if at < e.cert.exp)

    def __len__(self) -> int:
        return len(self._entries)


class PseudonymManager:
    """When to change pseudonym: every ``period`` +- ``jitter`` seconds (uniform), on
    ``on_cell_change``, and when the current certificate expires. Never reuses a pseudonym.

    ``refill_needed(now)`` is true when fewer than ``low_water`` pseudonyms will still be valid
    at the next change: time to ``make_request`` and ``PseudonymPool.add_batch``."""

    def __init__(
        self,
        pool: PseudonymPool,
        *,
        period: float = 300.0,
        jitter: float = 60.0,
        rng: random.Random | None = None,
        now: float,
        low_water: int = 5,
    ) -> None:
        if period <= 0 or not 0 <= jitter < period:
            raise ValueError(f"need period > 0 and 0 <= jitter < period (got {period}, {jitter})")
        self.pool = pool
        self.period = period
        self.jitter = jitter
        self.rng = rng if rng is not None else random.SystemRandom()
        self.low_water = low_water
        #: changes made, and changes that were due but found the pool empty
        self.changes = 0
        self.overdue = False
        self.next_change = now
        self._identity: PseudonymIdentity | None = None
        self._change(now)

    def current(self, now: float) -> PseudonymIdentity:
        """The identity to sign with at ``now`` (changing first if a change is due)."""
        identity = self._identity
        if identity is None or now >= self.next_change or now >= identity.cert.exp:
            return self._change(now)
        return identity

    def on_cell_change(self, now: float) -> PseudonymIdentity:
        """The vehicle entered another radio cell: change now."""
        return self._change(now)

    def refill_needed(self, now: float) -> bool:
        return self.pool.available(max(now, self.next_change)) < self.low_water

    def _draw(self, bits: int, previous: int | None) -> int:
        while True:
            value = self.rng.getrandbits(bits)
            if value != previous:
                return value

    def _change(self, now: float) -> PseudonymIdentity:
        old = self._identity
        taken = self.pool.take(now, self.rng)
        if taken is None:
            if old is not None and now < old.cert.exp:
                self.overdue = True  # keep sending under the current pseudonym; retry on next use
                return old
            raise PoolExhaustedError(
                f"no pseudonym certificate valid at {now:.0f} left in the pool ({len(self.pool)} unusable)"
            )
        key, cert = taken
        identity = PseudonymIdentity(
            key,
            cert,
            station_id=self._draw(32, old.station_id if old else None),
            l2_id=self._draw(24, old.l2_id if old else None),
        )
        self._identity = identity
        self.overdue = False
        self.changes += 1
        self.next_change = now + self.period + self.rng.uniform(-self.jitter, self.jitter)
        return identity


# --- receivers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class V2vMessage:
    payload: bytes
    cert: PseudonymCert
    station_id: int
    counter: int
    content_type: int | str | None


def verify_v2v(
    data: bytes,
    *,
    authority_keys: Iterable[VerifyKey] | Mapping[str, VerifyKey],
    now: float,
    skew: float = 30.0,
    certs: MutableMapping[bytes, PseudonymCert] | None = None,
) -> V2vMessage:
    """Check a V2V message signed with a pseudonym. The certificate comes from the message
    (header 13) or from ``certs`` (id -> certificate, filled here with every certificate that
    verifies; bound its size yourself). ``CredentialError`` when the certificate is unknown."""
    msg = cose.decode_sign1(data)
    kid = msg.kid
    if kid is None or len(kid) != _CTI_LEN:
        raise CoseError("V2V message kid must be a pseudonym certificate id")
    carried = msg.unprotected.get(HDR_KCWT)
    if carried is not None:
        if not isinstance(carried, bytes):
            raise CoseError("kcwt header must be a byte string")
        cert = verify_pseudonym_cert(carried, authority_keys, now=now, skew=skew)
        if cert.cert_id != kid:
            raise CoseError("V2V message kid is not the id of the certificate it carries")
        if certs is not None:
            certs[kid] = cert
    else:
        known = certs.get(kid) if certs is not None else None
        if known is None:
            raise CredentialError(f"unknown pseudonym certificate {kid.hex()}")
        known.check_time(now, skew)
        cert = known
    station_id = msg.protected.get(HDR_STATION_ID)
    counter = msg.protected.get(HDR_COUNTER)
    if not isinstance(station_id, int) or isinstance(station_id, bool) or not 0 <= station_id < _U32:
        raise CoseError("V2V message station id must be an unsigned 32-bit integer")
    if not isinstance(counter, int) or isinstance(counter, bool) or counter < 0:
        raise CoseError("V2V message counter must be an unsigned integer")
    cose.verify_sign1(msg, cert.key)
    assert msg.payload is not None  # verify_sign1 refuses a detached payload without one
    return V2vMessage(msg.payload, cert, station_id, counter, msg.content_type)
