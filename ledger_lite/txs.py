"""The ledger's transaction kinds: one registry, strict decoding, builders for the ledger-only kinds.

Every transaction is a tagged COSE_Sign1 whose protected header is exactly ``{alg, content
type, kid}`` (kid = the signer's did:key verification method, ``did:key:z..#z..``). The content
type decides the kind (``classify``):

==================  =========================================================================
kind                content type
==================  =========================================================================
ATTESTATION         any attestation kind (``attestation.KINDS``), e.g. ``driving_event``
CREDENTIAL          any ``credentials.CONTENT_TYPES`` (vehicle, owner, grant, validator, issuer)
REVOCATION          ``application/acc-revocation+cbor``
VALIDATOR_UPDATE    ``application/acc-validator-update+cbor``
FL_ROUND            ``application/acc-fl-round+cbor`` (an RSU opens a federated-learning round)
FL_RESULT           ``application/acc-fl-result+cbor`` (the RSU commits the round's new model)
==================  =========================================================================

Payloads of the two ledger-only kinds are deterministic CBOR maps with text keys:

* revocation: ``{"chain": tstr, "time": uint ms, "cti": bstr (8..64)}`` *or*
  ``{"chain", "time", "did": did:key}``, optionally ``"reason": tstr (<= 256)``;
* validator update: ``{"chain": tstr, "nonce": uint, "changes": [{"did": did:key, "power":
  uint <= 2^32}, ...]}`` (1..64 changes, each DID once; power 0 removes the validator).

* FL round: ``{"chain", "round": uint >= 1, "task": tstr, "base": bstr .size 32 (the model id
  the round starts from), "deadline": uint ms, "config": {tstr: int / float / tstr}}``;
* FL result: ``{"chain", "round", "task", "base", "model": bstr .size 32 (the new model id),
  "participants": [* did:key], "rejected": [* [did:key, reason: tstr]], "aggregator": tstr,
  ? "epsilon": float}``.

A model id is ``models.fl``'s SHA-256 over the .tflite file's hash and the weights (see
``agent/fl.py``); the ledger treats it as opaque bytes.

Decoding is strict: unknown or missing keys, wrong types, another chain -> ``TxSchemaError``
(a ``SchemaError``) naming the field. Signatures are NOT checked here (``verify_signer`` does
it); the ledger app decides who may sign what. ``tx_id(tx)`` = SHA-256 of the bytes (equal to
``attestation_id`` for attestations).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from . import cbor, cose, didkey
from .attestation import KINDS
from .credentials import CONTENT_TYPES
from .errors import CoseError, DidError, SchemaError
from .keys import SigningKey
from .validators import Validator

__all__ = [
    "REVOCATION_CONTENT_TYPE",
    "VALIDATOR_UPDATE_CONTENT_TYPE",
    "RevocationTx",
    "TxKind",
    "TxSchemaError",
    "ValidatorUpdateTx",
    "FL_RESULT_CONTENT_TYPE",
    "FL_ROUND_CONTENT_TYPE",
    "FlResultTx",
    "FlRoundTx",
    "build_fl_result",
    "build_fl_round",
    "decode_fl_result",
    "decode_fl_round",
    "build_revocation",
    "build_validator_update",
    "classify",
    "decode_revocation",
    "decode_validator_update",
    "kind_of",
    "signer_of",
    "tx_id",
    "verify_signer",
]

REVOCATION_CONTENT_TYPE: Final = "application/acc-revocation+cbor"
VALIDATOR_UPDATE_CONTENT_TYPE: Final = "application/acc-validator-update+cbor"
FL_ROUND_CONTENT_TYPE: Final = "application/acc-fl-round+cbor"
FL_RESULT_CONTENT_TYPE: Final = "application/acc-fl-result+cbor"
_CREDENTIAL_TYPES: Final = frozenset(CONTENT_TYPES.values())
_PROTECTED_LABELS: Final = frozenset({cose.HDR_ALG, cose.HDR_CONTENT_TYPE, cose.HDR_KID})
_CTI_MIN, _CTI_MAX = 8, 64
_MAX_REASON = 256
_MAX_CHANGES = 64
_MAX_POWER = 1 << 32
_MAX_U63 = (1 << 63) - 1


class TxKind(StrEnum):
    ATTESTATION = "attestation"
    CREDENTIAL = "credential"
    REVOCATION = "revocation"
    VALIDATOR_UPDATE = "validator_update"
    FL_ROUND = "fl_round"
    FL_RESULT = "fl_result"


class TxSchemaError(SchemaError):
    """A ledger transaction that breaks its kind's schema; ``field`` names the culprit."""


def tx_id(tx: bytes) -> bytes:
    """SHA-256 of the transaction bytes."""
    return hashlib.sha256(tx).digest()


def classify(tx: bytes) -> TxKind:
    """The kind of ``tx`` from its protected content type (the envelope only; nothing verified).
    ``CoseError`` for a non-COSE_Sign1, ``TxSchemaError`` for an unknown content type."""
    ct = cose.decode_sign1(tx).content_type
    return kind_of(ct)


def kind_of(ct: object) -> TxKind:
    """The transaction kind of a content type (``TxSchemaError`` for one that is not a ledger kind)."""
    if isinstance(ct, str):
        if ct in KINDS:
            return TxKind.ATTESTATION
        if ct in _CREDENTIAL_TYPES:
            return TxKind.CREDENTIAL
        if ct == REVOCATION_CONTENT_TYPE:
            return TxKind.REVOCATION
        if ct == VALIDATOR_UPDATE_CONTENT_TYPE:
            return TxKind.VALIDATOR_UPDATE
        if ct == FL_ROUND_CONTENT_TYPE:
            return TxKind.FL_ROUND
        if ct == FL_RESULT_CONTENT_TYPE:
            return TxKind.FL_RESULT
    raise TxSchemaError(f"content type {ct!r} is not a ledger transaction kind", field="content_type", kind="tx")


def signer_of(msg: cose.Sign1) -> str:
    """The signer DID named by the kid (``did:key:z..#z..`` -> ``did:key:z..``), checked to be a did:key."""
    kid = msg.kid
    if kid is None:
        raise CoseError("a transaction's protected header names the signer's key (kid)")
    try:
        text = kid.decode()
    except UnicodeDecodeError:
        raise CoseError("kid is not UTF-8") from None
    did, sep, _ = text.partition("#")
    if not sep:
        raise CoseError(f"kid {text[:80]!r} is not a did:key verification method (did:key:z..#z..)")
    try:
        if didkey.verification_method_id(did) != text:
            raise CoseError(f"kid {text[:80]!r} is not the verification method of {did[:80]}")
    except DidError as err:
        raise CoseError(f"kid {text[:80]!r}: {err}") from None
    return did


def verify_signer(msg: cose.Sign1) -> str:
    """Check the signature of a decoded transaction with its kid's did:key; the signer DID."""
    did = signer_of(msg)
    cose.verify_sign1(msg, didkey.resolve(did))
    return did


# --------------------------------------------------------------------------------------------
# the ledger-only kinds


@dataclass(frozen=True)
class RevocationTx:
    """A decoded revocation (signature NOT verified): exactly one of ``cti`` / ``did``."""

    signer: str
    chain_id: str
    time_ms: int
    cti: bytes | None
    did: str | None
    reason: str
    msg: cose.Sign1


@dataclass(frozen=True)
class ValidatorUpdateTx:
    """A decoded validator-set update (signature NOT verified); power 0 removes."""

    signer: str
    chain_id: str
    nonce: int
    changes: tuple[Validator, ...]
    msg: cose.Sign1


def _err(kind: TxKind, field: str, message: str) -> TxSchemaError:
    return TxSchemaError(message, field=field, kind=str(kind))


def _envelope(tx: bytes, kind: TxKind) -> tuple[cose.Sign1, str, dict[str, Any]]:
    """(message, signer, payload map) of a ledger-only kind, the envelope checked strictly."""
    msg = cose.decode_sign1(tx)
    if not msg.tagged:
        raise CoseError("a transaction is a tagged COSE_Sign1 (tag 18)")
    if msg.unprotected:
        raise CoseError("a transaction has an empty unprotected header")
    if msg.protected.keys() != _PROTECTED_LABELS:
        raise CoseError("protected header must hold exactly alg, content type and kid")
    if kind_of(msg.content_type) is not kind:
        raise _err(kind, "content_type", f"{msg.content_type!r} is not a {kind} transaction")
    signer = signer_of(msg)
    if msg.payload is None:
        raise CoseError("a transaction's payload must not be detached")
    doc = cbor.loads(msg.payload)
    if type(doc) is not dict:
        raise _err(kind, "payload", f"must be a map, not {type(doc).__name__}")
    for k in doc:
        if type(k) is not str:
            raise _err(kind, "payload", f"keys are text, not {type(k).__name__} ({k!r})")
    return msg, signer, doc


def _keys(
    doc: Mapping[str, Any], kind: TxKind, required: Iterable[str], optional: Iterable[str] = (), *, at: str = ""
) -> None:
    req = tuple(required)
    allowed = set(req) | set(optional)
    unknown = sorted(str(k) for k in doc if k not in allowed)
    if unknown:
        raise _err(kind, at + unknown[0], "unknown field")
    for name in req:
        if name not in doc:
            raise _err(kind, at + name, "required field is missing")


def _uint(value: Any, kind: TxKind, field: str, hi: int = _MAX_U63) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise _err(kind, field, f"must be an integer 0 .. {hi}, got {value!r}")
    return value


def _did(value: Any, kind: TxKind, field: str) -> str:
    if type(value) is not str:
        raise _err(kind, field, f"must be a did:key, not {type(value).__name__}")
    try:
        didkey.resolve(value)
        if "#" in value:
            raise DidError("a DID has no fragment")
    except DidError as err:
        raise _err(kind, field, f"not a usable did:key: {err}") from None
    return value


def _chain(value: Any, kind: TxKind, chain_id: str | None) -> str:
    if type(value) is not str or not 1 <= len(value) <= 64:
        raise _err(kind, "chain", f"must be text of 1 to 64 characters, got {value!r}")
    if chain_id is not None and value != chain_id:
        raise _err(kind, "chain", f"signed for chain {value!r}, this is {chain_id!r}")
    return value


def decode_revocation(tx: bytes, *, chain_id: str | None = None) -> RevocationTx:
    """Parse a revocation strictly (``chain_id`` given: it must be for that chain). Not verified."""
    k = TxKind.REVOCATION
    msg, signer, doc = _envelope(tx, k)
    _keys(doc, k, ("chain", "time"), ("cti", "did", "reason"))
    chain = _chain(doc["chain"], k, chain_id)
    time_ms = _uint(doc["time"], k, "time")
    if ("cti" in doc) == ("did" in doc):
        raise _err(k, "cti", "exactly one of cti and did is required")
    cti = doc.get("cti")
    if cti is not None and (type(cti) is not bytes or not _CTI_MIN <= len(cti) <= _CTI_MAX):
        raise _err(k, "cti", f"must be {_CTI_MIN} to {_CTI_MAX} bytes")
    did = _did(doc["did"], k, "did") if "did" in doc else None
    reason = doc.get("reason", "")
    if type(reason) is not str or len(reason) > _MAX_REASON:
        raise _err(k, "reason", f"must be text of at most {_MAX_REASON} characters")
    return RevocationTx(signer, chain, time_ms, cti, did, reason, msg)


def decode_validator_update(tx: bytes, *, chain_id: str | None = None) -> ValidatorUpdateTx:
    """Parse a validator update strictly (``chain_id`` given: it must be for that chain). Not verified."""
    k = TxKind.VALIDATOR_UPDATE
    msg, signer, doc = _envelope(tx, k)
    _keys(doc, k, ("chain", "nonce", "changes"))
    chain = _chain(doc["chain"], k, chain_id)
    nonce = _uint(doc["nonce"], k, "nonce")
    changes = doc["changes"]
    if type(changes) is not list or not 1 <= len(changes) <= _MAX_CHANGES:
        raise _err(k, "changes", f"must be a list of 1 to {_MAX_CHANGES} {{did, power}}")
    out: list[Validator] = []
    seen: set[str] = set()
    for i, entry in enumerate(changes):
        where = f"changes[{i}]"
        if type(entry) is not dict:
            raise _err(k, where, f"must be a map {{did, power}}, not {type(entry).__name__}")
        _keys(entry, k, ("did", "power"), at=f"{where}.")
        did = _did(entry["did"], k, f"{where}.did")
        if did in seen:
            raise _err(k, f"{where}.did", f"{did} is changed twice")
        seen.add(did)
        out.append(Validator(did, _uint(entry["power"], k, f"{where}.power", _MAX_POWER)))
    return ValidatorUpdateTx(signer, chain, nonce, tuple(out), msg)


def _sign(key: SigningKey, did: str, content_type: str, payload: Mapping[str, Any]) -> bytes:
    if didkey.did_key(key.public) != did:
        raise ValueError(f"{did} is not the DID of this key")
    kid = didkey.verification_method_id(did).encode()
    return cose.sign1(cbor.dumps(dict(payload)), key, kid=kid, content_type=content_type)


def build_revocation(
    key: SigningKey,
    did: str,
    *,
    chain_id: str,
    time_ms: int,
    cti: bytes | None = None,
    revoked_did: str | None = None,
    reason: str = "",
) -> bytes:
    """A signed revocation of the credential ``cti`` or of the DID ``revoked_did`` (one of them),
    from ``did`` (``key``'s did:key). Checked as a receiver would check it."""
    payload: dict[str, Any] = {"chain": chain_id, "time": time_ms}
    if cti is not None:
        payload["cti"] = bytes(cti)
    if revoked_did is not None:
        payload["did"] = revoked_did
    if reason:
        payload["reason"] = reason
    tx = _sign(key, did, REVOCATION_CONTENT_TYPE, payload)
    decode_revocation(tx, chain_id=chain_id)
    return tx


def build_validator_update(
    key: SigningKey,
    did: str,
    *,
    chain_id: str,
    nonce: int,
    changes: Iterable[Validator | tuple[str, int]],
) -> bytes:
    """A signed validator-set update from ``did`` (``key``'s did:key): ``changes`` are
    ``Validator(did, power)`` or ``(did, power)``; power 0 removes. Checked as a receiver would."""
    items = [c if isinstance(c, Validator) else Validator(*c) for c in changes]
    payload = {"chain": chain_id, "nonce": nonce, "changes": [{"did": v.did, "power": v.power} for v in items]}
    tx = _sign(key, did, VALIDATOR_UPDATE_CONTENT_TYPE, payload)
    decode_validator_update(tx, chain_id=chain_id)
    return tx


# --------------------------------------------------------------------------------------------
# federated learning

_MAX_TASK = 64
_MAX_CONFIG = 32
_MAX_PARTICIPANTS = 1024


@dataclass(frozen=True)
class FlRoundTx:
    """An RSU opens round ``round`` of ``task`` from model ``base`` (signature NOT verified)."""

    signer: str
    chain_id: str
    round: int
    task: str
    base: bytes
    deadline_ms: int
    config: Mapping[str, int | float | str]
    msg: cose.Sign1


@dataclass(frozen=True)
class FlResultTx:
    """The aggregated model of a round, its participants and the updates rejected (NOT verified)."""

    signer: str
    chain_id: str
    round: int
    task: str
    base: bytes
    model: bytes
    participants: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    aggregator: str
    epsilon: float | None
    msg: cose.Sign1


def _text(value: Any, kind: TxKind, field: str, hi: int) -> str:
    if type(value) is not str or not 1 <= len(value) <= hi:
        raise _err(kind, field, f"must be text of 1 to {hi} characters, got {value!r}")
    return value


def _hash(value: Any, kind: TxKind, field: str) -> bytes:
    if type(value) is not bytes or len(value) != 32:
        raise _err(kind, field, "must be 32 bytes (a SHA-256)")
    return value


def decode_fl_round(tx: bytes, *, chain_id: str | None = None) -> FlRoundTx:
    k = TxKind.FL_ROUND
    msg, signer, doc = _envelope(tx, k)
    _keys(doc, k, ("chain", "round", "task", "base", "deadline", "config"))
    chain = _chain(doc["chain"], k, chain_id)
    rnd = _uint(doc["round"], k, "round")
    if rnd < 1:
        raise _err(k, "round", "rounds are numbered from 1")
    config = doc["config"]
    if type(config) is not dict or len(config) > _MAX_CONFIG:
        raise _err(k, "config", f"must be a map of at most {_MAX_CONFIG} entries")
    for key, value in config.items():
        if type(key) is not str or type(value) not in (int, float, str):
            raise _err(k, f"config.{key}", "keys are text, values int, float or text")
    return FlRoundTx(
        signer,
        chain,
        rnd,
        _text(doc["task"], k, "task", _MAX_TASK),
        _hash(doc["base"], k, "base"),
        _uint(doc["deadline"], k, "deadline"),
        dict(config),
        msg,
    )


def decode_fl_result(tx: bytes, *, chain_id: str | None = None) -> FlResultTx:
    k = TxKind.FL_RESULT
    msg, signer, doc = _envelope(tx, k)
    _keys(doc, k, ("chain", "round", "task", "base", "model", "participants", "rejected", "aggregator"), ("epsilon",))
    chain = _chain(doc["chain"], k, chain_id)
    parts = doc["participants"]
    if type(parts) is not list or len(parts) > _MAX_PARTICIPANTS:
        raise _err(k, "participants", f"must be a list of at most {_MAX_PARTICIPANTS} DIDs")
    participants = tuple(_did(p, k, f"participants[{i}]") for i, p in enumerate(parts))
    if len(set(participants)) != len(participants):
        raise _err(k, "participants", "a participant is listed twice")
    rej = doc["rejected"]
    if type(rej) is not list or len(rej) > _MAX_PARTICIPANTS:
        raise _err(k, "rejected", f"must be a list of at most {_MAX_PARTICIPANTS} [did, reason]")
    rejected = []
    for i, item in enumerate(rej):
        if type(item) is not list or len(item) != 2:
            raise _err(k, f"rejected[{i}]", "must be [did, reason]")
        rejected.append((_did(item[0], k, f"rejected[{i}][0]"), _text(item[1], k, f"rejected[{i}][1]", _MAX_REASON)))
    eps = doc.get("epsilon")
    if eps is not None and (type(eps) not in (int, float) or not eps > 0):
        raise _err(k, "epsilon", "must be a positive number")
    return FlResultTx(
        signer,
        chain,
        _uint(doc["round"], k, "round"),
        _text(doc["task"], k, "task", _MAX_TASK),
        _hash(doc["base"], k, "base"),
        _hash(doc["model"], k, "model"),
        participants,
        tuple(rejected),
        _text(doc["aggregator"], k, "aggregator", _MAX_TASK),
        None if eps is None else float(eps),
        msg,
    )


def build_fl_round(
    key: SigningKey,
    did: str,
    *,
    chain_id: str,
    round: int,
    task: str,
    base: bytes,
    deadline_ms: int,
    config: Mapping[str, int | float | str] | None = None,
) -> bytes:
    payload = {
        "chain": chain_id,
        "round": round,
        "task": task,
        "base": bytes(base),
        "deadline": deadline_ms,
        "config": dict(config or {}),
    }
    tx = _sign(key, did, FL_ROUND_CONTENT_TYPE, payload)
    decode_fl_round(tx, chain_id=chain_id)
    return tx


def build_fl_result(
    key: SigningKey,
    did: str,
    *,
    chain_id: str,
    round: int,
    task: str,
    base: bytes,
    model: bytes,
    participants: Iterable[str],
    rejected: Iterable[tuple[str, str]] = (),
    aggregator: str,
    epsilon: float | None = None,
) -> bytes:
    payload: dict[str, Any] = {
        "chain": chain_id,
        "round": round,
        "task": task,
        "base": bytes(base),
        "model": bytes(model),
        "participants": list(participants),
        "rejected": [[d, r] for d, r in rejected],
        "aggregator": aggregator,
    }
    if epsilon is not None:
        payload["epsilon"] = float(epsilon)
    tx = _sign(key, did, FL_RESULT_CONTENT_TYPE, payload)
    decode_fl_result(tx, chain_id=chain_id)
    return tx
