"""The OBU's light client: follows a cell ledger through headers and commit certificates only.

Pure: no I/O, no clock (``now`` is an argument, seconds since the epoch).

    client = LightClient(genesis_validators, trusting_period=14 * 86400, max_clock_drift=10.0)
    client.verify(LightBlock(header, certificate, validators, next_validators), now=now) -> Header
    client.verify_receipt(tx, height, proof) -> Receipt      # kept in client.receipts[tx_id]
    client.state() -> bytes / LightClient.from_state(data)   # deterministic CBOR, what the OBU stores
    client.evidence                                          # ConflictEvidence found so far

Trust model (sequential verification, no skipping):

* The OBU is provisioned with the genesis validator set; it trusts it to sign height 1.
* Header ``h`` is accepted only right after ``h - 1`` (or as height 1 from genesis): same chain id;
  ``validators_hash`` is the hash of the set we trust for ``h`` (the one the previous verified
  header named as its ``next_validators_hash``); the certificate carries > 2/3 of that set's power
  in valid precommit signatures for exactly this header's block id (``CommitCertificate.check_header``);
  ``prev_block_id`` is the previous header's id; the time is strictly later, and not later than
  ``now + max_clock_drift``. Validator-set changes are followed only through verified headers: if
  ``next_validators_hash`` differs from the current set's hash, the light block must carry the next
  set and it must hash to it (``ValidatorSetError`` otherwise).
* The trusted header expires ``trusting_period`` after its time (``ExpiredTrustError``): a set may
  have changed hands since, and validators that unbonded long ago can sign anything for free. The
  OBU must then re-provision or obtain a fresh trusted header out of band. Genesis trust expires
  only if ``genesis_time_ms`` is given.
* A different header for a height already verified (still in the window) whose certificate is
  valid for the set that signed that height is proof that > 1/3 of that set equivocated: the
  pair is kept as ``ConflictEvidence`` in ``evidence`` (for the OBU to report) and
  ``ConflictingHeadersError`` is raised. The client does not switch. The same header again is a
  no-op; a different header with an invalid certificate is a plain verification failure.

Receipts: ``verify_receipt`` checks an RFC 6962 inclusion proof of ``tx`` against the ``tx_root``
of a header this client verified; the last ``window`` (default 1024) verified headers are kept for
that (oldest dropped). ``state()`` persists the configuration, the genesis set, the trusted header
with its certificate and the sets that signed it and sign the next height, every receipt and all
evidence; not the window (after ``from_state`` only the trusted header can back new receipts).
``from_state`` re-verifies the trusted header's certificate, so a corrupted state is refused.

Every error is a ``VerificationError`` (``LightClientError`` and the certificate errors of
``ledger_lite.errors``) whose message names the height, except a malformed state
(``LightStateError``, a ``MalformedError``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from . import cbor, merkle
from .attestation import attestation_id
from .block import GENESIS_PREV_ID, HASH_SIZE, CommitCertificate, Header
from .errors import (
    CborError,
    ChainMismatchError,
    CommitError,
    GenesisError,
    MalformedError,
    ProofError,
    ValidityError,
    VerificationError,
)
from .validators import Validator, ValidatorSet

__all__ = [
    "DEFAULT_WINDOW",
    "ConflictEvidence",
    "ConflictingHeadersError",
    "ExpiredTrustError",
    "FutureHeaderError",
    "HeaderLinkError",
    "HeightError",
    "LightBlock",
    "LightChainError",
    "LightClient",
    "LightClientError",
    "LightStateError",
    "Receipt",
    "UnverifiedHeightError",
    "ValidatorSetError",
]

DEFAULT_WINDOW: Final = 1024
STATE_VERSION: Final = 1
MAX_STATE_BYTES: Final = 64 << 20


# --------------------------------------------------------------------------- errors


class LightClientError(VerificationError):
    """A light block (or receipt) the client refuses; ``height`` says which height."""

    def __init__(self, message: str, *, height: int | None = None) -> None:
        self.height = height
        super().__init__(f"height {height}: {message}" if height is not None else message)


class LightChainError(LightClientError, ChainMismatchError):
    """A header of another chain."""


class HeightError(LightClientError):
    """Not the next height (a gap, or a height we are already past and no longer hold)."""


class HeaderLinkError(LightClientError):
    """The header does not follow the trusted one (prev_block_id, time not strictly later)."""


class ValidatorSetError(LightClientError):
    """``validators_hash`` is not the set we trust for the height, or the next set is missing or
    does not hash to ``next_validators_hash``."""


class FutureHeaderError(LightClientError, ValidityError):
    """A header time later than ``now + max_clock_drift``."""


class ExpiredTrustError(LightClientError, ValidityError):
    """The trusted header is older than the trusting period: re-provision, or get a fresh trusted
    header out of band."""


class ConflictingHeadersError(LightClientError):
    """Two different headers for one height, both with a valid certificate of the same set."""

    def __init__(self, message: str, *, height: int, evidence: ConflictEvidence) -> None:
        self.evidence = evidence
        super().__init__(message, height=height)


class UnverifiedHeightError(LightClientError):
    """A receipt for a height whose header this client did not verify (or no longer holds)."""


class LightStateError(MalformedError):
    """A stored light-client state that does not decode or is inconsistent; says which field."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LightBlock:
    """What a light client fetches per height: the header, its own certificate, the set that signs
    it, and (required when the header names a different next set) the next set."""

    header: Header
    certificate: CommitCertificate
    validators: ValidatorSet
    next_validators: ValidatorSet | None = None


@dataclass(frozen=True)
class Receipt:
    """Proof that the tx with id ``tx_id`` (attestation id: SHA-256 of its bytes) is leaf ``index``
    of the verified block ``block_id`` at ``height``."""

    tx_id: bytes
    height: int
    index: int
    block_id: bytes
    proof: merkle.InclusionProof

    def to_list(self) -> list[Any]:
        return [self.tx_id, self.height, self.index, self.block_id, self.proof.to_cbor()]


@dataclass(frozen=True)
class ConflictEvidence:
    """Two different headers for ``height``, each with a certificate valid for the same set: > 1/3
    of that set's power signed both (a fork attempt). ``header_a`` is the one the client trusts."""

    height: int
    header_a: Header
    cert_a: CommitCertificate
    header_b: Header
    cert_b: CommitCertificate

    def to_list(self) -> list[Any]:
        return [
            self.height,
            self.header_a.to_list(),
            self.cert_a.to_list(),
            self.header_b.to_list(),
            self.cert_b.to_list(),
        ]

    def encode(self) -> bytes:
        """Deterministic CBOR ``[height, header_a, cert_a, header_b, cert_b]``, for reporting."""
        return cbor.dumps(self.to_list())


@dataclass(frozen=True)
class _Verified:
    header: Header
    certificate: CommitCertificate
    validators: ValidatorSet  # the set that signed it


# --------------------------------------------------------------------------- client


class LightClient:
    def __init__(
        self,
        genesis_validators: ValidatorSet,
        *,
        trusting_period: float = 14 * 86400,
        max_clock_drift: float = 10.0,
        genesis_time_ms: int | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if not trusting_period > 0 or not max_clock_drift >= 0 or window < 1:
            raise ValueError("trusting_period must be > 0, max_clock_drift >= 0 and window >= 1")
        self.genesis_validators = genesis_validators
        self.chain_id = genesis_validators.chain_id
        self.trusting_period = float(trusting_period)
        self.max_clock_drift = float(max_clock_drift)
        self.genesis_time_ms = genesis_time_ms
        self.window = window
        #: the latest verified header (None: only the genesis set is trusted)
        self.trusted: Header | None = None
        self._next_vals = genesis_validators
        self._next_hash = genesis_validators.hash()
        self.receipts: dict[bytes, Receipt] = {}
        self.evidence: list[ConflictEvidence] = []
        self._verified: OrderedDict[int, _Verified] = OrderedDict()

    @property
    def trusted_validators(self) -> ValidatorSet:
        """The set that signs the next height (``trusted``'s next set; the genesis set at first)."""
        return self._next_vals

    def _trust_next(self, vals: ValidatorSet, vhash: bytes | None = None) -> None:
        self._next_vals = vals
        self._next_hash = vals.hash() if vhash is None else vhash

    @property
    def height(self) -> int:
        """The trusted height; 0 before the first header."""
        return 0 if self.trusted is None else self.trusted.height

    def verified_header(self, height: int) -> Header | None:
        """A verified header still in the window, or None."""
        v = self._verified.get(height)
        return None if v is None else v.header

    # -- headers ----------------------------------------------------------------------------------

    def verify(self, lb: LightBlock, *, now: float) -> Header:
        """Verify the next light block (see the module doc); on success it becomes the trusted
        header and is returned. Raises, and changes nothing but ``evidence``, otherwise."""
        h, cert = lb.header, lb.certificate
        height = h.height
        if h.chain_id != self.chain_id:
            raise LightChainError(
                f"header of chain {h.chain_id!r}, this client follows {self.chain_id!r}", height=height
            )
        if height <= self.height:
            return self._verify_known(lb)
        expected = self.height + 1
        if height != expected:
            raise HeightError(f"not sequential: the client expects height {expected}", height=height)
        self._check_fresh(now, height)
        if h.time_ms > (now + self.max_clock_drift) * 1000:
            raise FutureHeaderError(
                f"header time {h.time_ms} ms is after now + {self.max_clock_drift:g} s ({now * 1000:.0f} ms)",
                height=height,
            )
        vals, vhash = self._next_vals, self._next_hash
        if h.validators_hash != vhash:
            raise ValidatorSetError(
                f"validators_hash {h.validators_hash.hex()} is not the trusted set's {vhash.hex()}", height=height
            )
        if lb.validators is not vals and lb.validators.hash() != vhash:
            raise ValidatorSetError("the light block carries another validator set than the trusted one", height=height)
        self._check_link(h)
        _check_certificate(cert, h, vals)
        nxt = self._next_set(lb, vals, vhash)
        self.trusted = h
        self._trust_next(nxt, vhash if nxt is vals else h.next_validators_hash)
        self._verified[height] = _Verified(h, cert, vals)
        while len(self._verified) > self.window:
            self._verified.popitem(last=False)
        return h

    def _verify_known(self, lb: LightBlock) -> Header:
        h, height = lb.header, lb.header.height
        known = self._verified.get(height)
        if known is None:
            raise HeightError(
                f"already past (trusted height {self.height}) and no longer held for comparison", height=height
            )
        if h == known.header:
            return known.header
        if h.validators_hash != known.header.validators_hash:
            raise ValidatorSetError(
                f"a different header naming another validator set than the one that signed height {height}",
                height=height,
            )
        _check_certificate(lb.certificate, h, known.validators)
        ev = ConflictEvidence(height, known.header, known.certificate, h, lb.certificate)
        if ev not in self.evidence:
            self.evidence.append(ev)
        raise ConflictingHeadersError(
            f"conflicting header {h.block_id().hex()} with a valid certificate; trusted is "
            f"{known.header.block_id().hex()} (evidence recorded)",
            height=height,
            evidence=ev,
        )

    def _check_fresh(self, now: float, height: int) -> None:
        if self.trusted is not None:
            since_ms, what = self.trusted.time_ms, f"trusted header {self.trusted.height}"
        elif self.genesis_time_ms is not None:
            since_ms, what = self.genesis_time_ms, "genesis"
        else:
            return
        age = now - since_ms / 1000
        if age > self.trusting_period:
            raise ExpiredTrustError(
                f"{what} is {age:.0f} s old, the trusting period is {self.trusting_period:.0f} s: "
                "re-provision or obtain a fresh trusted header out of band",
                height=height,
            )

    def _check_link(self, h: Header) -> None:
        t = self.trusted
        if t is None:
            if h.prev_block_id != GENESIS_PREV_ID:
                raise HeaderLinkError("height 1 must name no previous block", height=h.height)
            if self.genesis_time_ms is not None and h.time_ms < self.genesis_time_ms:
                raise HeaderLinkError(
                    f"time {h.time_ms} is before the genesis time {self.genesis_time_ms}", height=h.height
                )
            return
        if h.prev_block_id != t.block_id():
            raise HeaderLinkError(f"prev_block_id is not the id of the trusted header {t.height}", height=h.height)
        if h.time_ms <= t.time_ms:
            raise HeaderLinkError(f"time {h.time_ms} is not after the trusted header's {t.time_ms}", height=h.height)

    def _next_set(self, lb: LightBlock, vals: ValidatorSet, vhash: bytes) -> ValidatorSet:
        h = lb.header
        want = h.next_validators_hash
        nxt = lb.next_validators
        if nxt is None:
            if want != vhash:
                raise ValidatorSetError(
                    f"the header names a new validator set for height {h.height + 1} ({want.hex()}) "
                    "but the light block does not carry it",
                    height=h.height,
                )
            return vals
        if nxt.chain_id != self.chain_id or nxt.hash() != want:
            raise ValidatorSetError(
                f"the carried next validator set does not hash to next_validators_hash {want.hex()}", height=h.height
            )
        return nxt

    # -- receipts ---------------------------------------------------------------------------------

    def verify_receipt(self, tx: bytes, height: int, proof: merkle.InclusionProof) -> Receipt:
        """Check that ``tx`` is in the block at ``height`` (a header this client verified, still in
        the window) by ``proof`` against its ``tx_root``; keep and return the receipt."""
        known = self._verified.get(height)
        if known is None:
            lo, hi = (min(self._verified), max(self._verified)) if self._verified else (0, 0)
            held = f"verified headers held: {lo}..{hi}" if self._verified else "no verified header held"
            raise UnverifiedHeightError(f"not a header this client verified ({held})", height=height)
        tx_id = attestation_id(tx)
        if not isinstance(proof, merkle.InclusionProof):
            raise ProofError(f"height {height}: tx {tx_id.hex()}: expected an InclusionProof")
        try:
            proof.verify(tx, known.header.tx_root)
        except ProofError as err:
            raise ProofError(f"height {height}: tx {tx_id.hex()}: {err}") from err
        receipt = Receipt(tx_id, height, proof.leaf_index, known.header.block_id(), proof)
        self.receipts[tx_id] = receipt
        return receipt

    # -- persistence --------------------------------------------------------------------------------

    def state(self) -> bytes:
        """Deterministic CBOR of everything the OBU must keep (see the module doc)."""
        known = None if self.trusted is None else self._verified[self.trusted.height]
        doc: dict[str, Any] = {
            "v": STATE_VERSION,
            "chain_id": self.chain_id,
            "trusting_period_ms": round(self.trusting_period * 1000),
            "max_clock_drift_ms": round(self.max_clock_drift * 1000),
            "genesis_time_ms": self.genesis_time_ms,
            "window": self.window,
            "genesis": _set_list(self.genesis_validators),
            "trusted": None
            if known is None
            else [known.header.to_list(), known.certificate.to_list(), _set_list(known.validators)],
            "next": _set_list(self.trusted_validators),
            "receipts": [r.to_list() for r in sorted(self.receipts.values(), key=lambda r: r.tx_id)],
            "evidence": [e.to_list() for e in self.evidence],
        }
        return cbor.dumps(doc)

    @classmethod
    def from_state(cls, data: bytes) -> LightClient:
        """Inverse of ``state()``, strict: ``LightStateError`` naming the field on anything else
        (including a trusted header whose certificate does not verify with its stored set)."""
        try:
            doc = cbor.loads(data, max_size=MAX_STATE_BYTES)
        except CborError as err:
            raise LightStateError(f"light state: not deterministic CBOR: {err}") from err
        keys = {
            "v",
            "chain_id",
            "trusting_period_ms",
            "max_clock_drift_ms",
            "genesis_time_ms",
            "window",
            "genesis",
            "trusted",
            "next",
            "receipts",
            "evidence",
        }
        if not isinstance(doc, dict) or set(doc) != keys:
            raise LightStateError(f"light state: expected a map with keys {sorted(keys)}")
        if doc["v"] != STATE_VERSION:
            raise LightStateError(f"light state: version {doc['v']!r}, this client reads {STATE_VERSION}")
        field = "genesis"
        try:
            chain_id = doc["chain_id"]
            genesis = _set_from(chain_id, doc["genesis"])
            gtime = doc["genesis_time_ms"]
            if gtime is not None and type(gtime) is not int:
                raise LightStateError("light state.genesis_time_ms: expected an integer or null")
            for name in ("trusting_period_ms", "max_clock_drift_ms", "window"):
                if type(doc[name]) is not int:
                    raise LightStateError(f"light state.{name}: expected an integer")
            client = cls(
                genesis,
                trusting_period=doc["trusting_period_ms"] / 1000,
                max_clock_drift=doc["max_clock_drift_ms"] / 1000,
                genesis_time_ms=gtime,
                window=doc["window"],
            )
            field = "next"
            nxt = _set_from(chain_id, doc["next"])
            field = "trusted"
            if doc["trusted"] is not None:
                hl, cl, sl = _list(doc["trusted"], 3, "trusted")
                header, cert, signers = Header.from_list(hl), CommitCertificate.from_list(cl), _set_from(chain_id, sl)
                if header.chain_id != chain_id or header.validators_hash != signers.hash():
                    raise LightStateError("light state.trusted: header is not of this chain or not of its signers")
                if header.next_validators_hash != nxt.hash():
                    raise LightStateError("light state.next: not the trusted header's next validator set")
                try:
                    cert.check_header(header, signers)
                except VerificationError as err:
                    raise LightStateError(f"light state.trusted: certificate does not verify: {err}") from err
                client.trusted = header
                client._verified[header.height] = _Verified(header, cert, signers)
            elif nxt.hash() != genesis.hash():
                raise LightStateError("light state.next: must be the genesis set before the first header")
            client._trust_next(nxt)
            field = "receipts"
            for item in _list(doc["receipts"], None, "receipts"):
                tx_id, height, index, bid, proof_bytes = _list(item, 5, "receipts[]")
                proof = merkle.InclusionProof.from_cbor(proof_bytes)
                if (
                    not isinstance(tx_id, bytes)
                    or len(tx_id) != HASH_SIZE
                    or type(height) is not int
                    or height < 1
                    or index != proof.leaf_index
                    or not isinstance(bid, bytes)
                    or len(bid) != HASH_SIZE
                ):
                    raise LightStateError("light state.receipts: malformed receipt")
                client.receipts[tx_id] = Receipt(tx_id, height, index, bid, proof)
            field = "evidence"
            for item in _list(doc["evidence"], None, "evidence"):
                height, ha, ca, hb, cb = _list(item, 5, "evidence[]")
                client.evidence.append(
                    ConflictEvidence(
                        height,
                        Header.from_list(ha),
                        CommitCertificate.from_list(ca),
                        Header.from_list(hb),
                        CommitCertificate.from_list(cb),
                    )
                )
        except (MalformedError, GenesisError, TypeError, ValueError) as err:
            if isinstance(err, LightStateError):
                raise
            raise LightStateError(f"light state.{field}: {err}") from err
        return client


# --------------------------------------------------------------------------- helpers


def _check_certificate(cert: CommitCertificate, header: Header, vals: ValidatorSet) -> None:
    """``cert.check_header`` with the height in the message (the error type is kept)."""
    try:
        cert.check_header(header, vals)
    except CommitError as err:
        raise type(err)(f"height {header.height}: {err}") from err


def _set_list(vs: ValidatorSet) -> list[list[Any]]:
    return [[v.did, v.power] for v in vs.validators]


def _set_from(chain_id: Any, item: Any) -> ValidatorSet:
    if not isinstance(chain_id, str):
        raise LightStateError("light state.chain_id: expected a text string")
    entries = _list(item, None, "validator set")
    vals = []
    for e in entries:
        did, power = _list(e, 2, "validator")
        if not isinstance(did, str) or type(power) is not int:
            raise LightStateError("light state: a validator must be [did: tstr, power: uint]")
        vals.append(Validator(did, power))
    vs = ValidatorSet(chain_id, tuple(vals))
    if _set_list(vs) != entries:
        raise LightStateError("light state: validators not sorted by DID")
    return vs


def _list(item: Any, length: int | None, what: str) -> list[Any]:
    if not isinstance(item, list) or (length is not None and len(item) != length):
        n = "" if length is None else f" of {length}"
        raise LightStateError(f"light state.{what}: expected an array{n}")
    return item
