"""Where the OBU enforces access grants on requests for its data.

A request is a COSE_Sign1 signed by the requester's own did:key (proof that the requester
holds the key of the DID the grant names), content type ``application/acc-request+cbor``,
payload a deterministic CBOR map:

=========  =================================================================================
``aud``    this vehicle's DID (a request for another vehicle is refused)
``res``    the resource: a VSS path (``Vehicle.Speed``) or ``events``/``attestations``/...
``act``    ``read`` or ``subscribe``
``time``   UTC milliseconds; must be within the trust store's clock-skew allowance of now
``nonce``  8..64 random bytes; a nonce seen within the freshness window is a replay
``grants`` list of access-grant credentials (bstr)
``chain``  list of credentials that make the grants' issuers authorities (owner credentials)
=========  =================================================================================

``AccessGate.check(request, now)`` verifies all of it and returns the decision or raises a
``ledger_lite`` error that says why (``AccessDenied`` lists, per grant, why it did not
apply). ``build_request`` makes one (third-party apps, the tests, the bench). The transport is
the diagnostics socket today (command ``access.read``) and the cell network later.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger_lite import cbor, cose, didkey
from ledger_lite.credentials import AccessPolicy, CredentialStore, TrustStore
from ledger_lite.errors import CoseError, CredentialError, ReplayError, SchemaError, ValidityError
from ledger_lite.keys import SigningKey

__all__ = ["REQUEST_CONTENT_TYPE", "AccessDecision", "AccessGate", "build_request"]

REQUEST_CONTENT_TYPE = "application/acc-request+cbor"
MAX_REQUEST = 64 * 1024


@dataclass(frozen=True, slots=True)
class AccessDecision:
    subject: str
    resource: str
    action: str
    grant_id: bytes


def build_request(
    key: SigningKey,
    vehicle_did: str,
    resource: str,
    *,
    now: float,
    action: str = "read",
    grants: Iterable[bytes] = (),
    chain: Iterable[bytes] = (),
    nonce: bytes | None = None,
) -> bytes:
    did = didkey.did_key(key.public)
    payload = {
        "aud": vehicle_did,
        "res": resource,
        "act": action,
        "time": round(now * 1000),
        "nonce": os.urandom(16) if nonce is None else nonce,
        "grants": list(grants),
        "chain": list(chain),
    }
    return cose.sign1(
        cbor.dumps(payload),
        key,
        kid=didkey.verification_method_id(did).encode(),
        content_type=REQUEST_CONTENT_TYPE,
    )


def _field(m: Mapping[str, Any], name: str, typ: type | tuple[type, ...]) -> Any:
    value = m.get(name)
    if not isinstance(value, typ) or isinstance(value, bool) and typ is int:
        raise SchemaError(f"missing or of the wrong type ({type(value).__name__})", field=name, kind="request")
    return value


class AccessGate:
    """Checks signed requests against grants; remembers nonces for twice the skew window."""

    def __init__(
        self,
        vehicle_did: str,
        store: TrustStore,
        *,
        vin: str | None = None,
        credentials: CredentialStore | None = None,
        max_nonces: int = 10_000,
    ) -> None:
        self.vehicle_did = vehicle_did
        self.store = store
        self.policy = AccessPolicy(vehicle_did, store, vin=vin, credentials=credentials)
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._max_nonces = max_nonces
        self.allowed = 0
        self.denied = 0

    def check(self, request: bytes, now: float) -> AccessDecision:
        try:
            decision = self._check(request, now)
        except Exception:
            self.denied += 1
            raise
        self.allowed += 1
        return decision

    def _check(self, request: bytes, now: float) -> AccessDecision:
        if len(request) > MAX_REQUEST:
            raise CoseError(f"request of {len(request)} bytes is larger than {MAX_REQUEST}")
        msg = cose.decode_sign1(request)
        if msg.content_type != REQUEST_CONTENT_TYPE:
            raise CoseError(f"content type {msg.content_type!r} is not {REQUEST_CONTENT_TYPE}")
        if msg.kid is None:
            raise CoseError("request has no kid (the requester's did:key verification method)")
        subject = msg.kid.decode("utf-8", "replace").partition("#")[0]
        key = didkey.resolve(subject)  # DidError for anything but a did:key
        cose.verify_sign1(msg, key)  # proof of possession of the subject's key
        assert msg.payload is not None
        payload = cbor.loads(msg.payload)
        if not isinstance(payload, dict):
            raise SchemaError("request payload must be a map", kind="request")
        if _field(payload, "aud", str) != self.vehicle_did:
            raise CredentialError(f"request is addressed to {payload['aud']}, not to this vehicle ({self.vehicle_did})")
        t = _field(payload, "time", int) / 1000.0
        if abs(t - now) > self.store.skew:
            raise ValidityError(f"request time is {t - now:+.0f} s from now (allowed: ±{self.store.skew:.0f} s)")
        nonce = _field(payload, "nonce", bytes)
        if not 8 <= len(nonce) <= 64:
            raise SchemaError("nonce must be 8..64 bytes", field="nonce", kind="request")
        self._expire(now)
        if nonce in self._nonces:
            raise ReplayError(f"request nonce {nonce.hex()[:16]} was used before")
        grants = _field(payload, "grants", list)
        chain = _field(payload, "chain", list)
        if not all(isinstance(g, bytes) for g in [*grants, *chain]):
            raise SchemaError("grants and chain must be lists of credentials (bstr)", field="grants", kind="request")
        resource, action = _field(payload, "res", str), _field(payload, "act", str)
        grant = self.policy.check(grants, subject, resource, action, now, chain=chain)
        self._nonces[nonce] = now
        if len(self._nonces) > self._max_nonces:
            self._nonces.popitem(last=False)
        return AccessDecision(subject, resource, action, grant.cti)

    def _expire(self, now: float) -> None:
        horizon = now - 2 * self.store.skew
        while self._nonces:
            nonce, seen = next(iter(self._nonces.items()))
            if seen >= horizon:
                break
            del self._nonces[nonce]
