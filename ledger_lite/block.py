"""Blocks of a cell ledger: header, transactions, and the previous block's commit certificate.

Pure: no I/O, no clock. Encodings are deterministic CBOR arrays (``ledger_lite.cbor``); ``decode``
accepts exactly what ``encode`` produces (``encode(decode(b)) == b``) and raises a
``BlockFormatError`` naming the field otherwise.

    Header  = [chain_id: tstr, height: uint >= 1, round: uint, time_ms: uint,
               prev_block_id: bstr .size 32 (32 zero bytes at height 1),
               last_commit_hash: bstr .size 32, tx_root: bstr .size 32,
               app_hash: bstr .size (0..64), validators_hash: bstr .size 32,
               next_validators_hash: bstr .size 32, proposer: tstr (DID)]
    Block   = [Header, [* tx: bstr], last_commit: Certificate / null]
    Certificate = [height: uint, round: uint, block_id: bstr .size 32, [* [index: uint, signature: bstr]]]

One id: ``Header.block_id()`` = SHA-256(header encoding). The header commits to the whole body --
the txs through ``tx_root`` (RFC 6962 Merkle root over the tx bytes as leaves) and the previous
block's certificate through ``last_commit_hash`` (SHA-256 of ``last_commit.encode()``, of empty
bytes at height 1) -- so the block id names the whole block. It is

* what the next header's ``prev_block_id`` names, and
* the consensus value id: the node runs consensus with ``Params(value_id=block_value_id)``, so
  precommits sign the block id and a ``CommitCertificate`` carries it (``block_id``).

Validator sets change CometBFT style: an update committed in block H takes effect at height H + 2.
``validators_hash`` is the hash of the set that signs this height (its certificate), and
``next_validators_hash`` the hash of the set that signs height + 1, so the header of H + 1 already
names the new set. A light client follows set changes only through verified headers: it learns the
next set's hash from a header whose certificate it verified with the current set. Between two
linked headers ``validators_hash == prev.next_validators_hash`` (``validate_basic``).

A light client therefore checks a header against a certificate alone
(``CommitCertificate.check_header``); the body is checked against its header by
``Block.check_body`` (part of ``validate_basic`` and ``CommitCertificate.check_block``).

``block_value_id(value)`` maps a consensus value (a block encoding) to its header's block id only
if the value decodes and its body matches its header; anything else (malformed bytes, or a header
whose ``tx_root``/``last_commit_hash`` do not match the body) maps to SHA-256 of the value bytes.
That id is never a valid block's id (it would need a SHA-256 collision between a header encoding
and a different byte string), so such a value can never be decided as, or confused with, a valid
block, and consensus never raises on it; the app's ``is_valid`` refuses it anyway.

A certificate is index based: signer ``i`` is ``validators.validators[i]`` (the set is sorted by
DID), signatures are the consensus precommit signatures over ``Vote(PRECOMMIT, height, round,
block_id, did).sign_bytes(chain_id)`` -- exactly what ``consensus.step`` produced in
``Commit.certificate`` (``CommitCertificate.from_consensus`` converts). Indices are strictly
increasing (so a signer cannot appear twice in an encoding). With four Ed25519 validators a
certificate is 4 * 68 + 40 = 312 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from . import cbor, merkle
from .attestation import attestation_id
from .consensus import PRECOMMIT, Commit, Vote, verify_with_did_key
from .errors import (
    BlockFormatError,
    BlockInvalidError,
    CborError,
    ChainMismatchError,
    CommitMismatchError,
    CommitSignatureError,
    DuplicateSignerError,
    LinkError,
    MalformedError,
    QuorumError,
    TxRootError,
    UnknownSignerError,
    VerificationError,
)
from .validators import ValidatorSet

__all__ = [
    "GENESIS_PREV_ID",
    "MAX_BLOCK_BYTES",
    "MAX_TXS",
    "Block",
    "CommitCertificate",
    "Header",
    "block_value_id",
    "last_commit_hash",
    "tx_receipt",
]

HASH_SIZE: Final = 32
#: the prev_block_id of height 1
GENESIS_PREV_ID: Final = bytes(HASH_SIZE)
MAX_BLOCK_BYTES: Final = 1 << 20  # the CBOR decoder's limit
MAX_TXS: Final = 10_000
MAX_APP_HASH: Final = 64
MAX_SIGNATURE: Final = 512  # Ed25519 64, ES256 64, ES384 96; generous for future algorithms
MAX_CHAIN_ID: Final = 128
MAX_DID: Final = 512

_HEADER_FIELDS: Final = (
    "chain_id",
    "height",
    "round",
    "time_ms",
    "prev_block_id",
    "last_commit_hash",
    "tx_root",
    "app_hash",
    "validators_hash",
    "next_validators_hash",
    "proposer",
)


# --------------------------------------------------------------------------- field checks


def _uint(value: Any, field: str, *, lo: int = 0) -> int:
    if type(value) is not int or not lo <= value < 1 << 63:
        raise BlockFormatError(f"expected an unsigned integer >= {lo}, got {value!r}", field=field)
    return value


def _bstr(value: Any, field: str, *, size: int | None = None, max_size: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise BlockFormatError(f"expected a byte string, got {type(value).__name__}", field=field)
    if size is not None and len(value) != size:
        raise BlockFormatError(f"expected {size} bytes, got {len(value)}", field=field)
    if max_size is not None and len(value) > max_size:
        raise BlockFormatError(f"at most {max_size} bytes, got {len(value)}", field=field)
    return value


def _tstr(value: Any, field: str, *, max_size: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_size:
        raise BlockFormatError(f"expected a non-empty text string of at most {max_size} characters", field=field)
    return value


def _array(value: Any, field: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise BlockFormatError(f"expected an array, got {type(value).__name__}", field=field)
    if length is not None and len(value) != length:
        raise BlockFormatError(f"expected {length} elements, got {len(value)}", field=field)
    return value


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor.loads(data, max_size=MAX_BLOCK_BYTES)
    except CborError as err:
        raise BlockFormatError(f"not deterministic CBOR: {err}", field=what) from err


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    round: int
    time_ms: int
    prev_block_id: bytes
    last_commit_hash: bytes
    tx_root: bytes
    app_hash: bytes
    validators_hash: bytes
    next_validators_hash: bytes
    proposer: str

    def __post_init__(self) -> None:
        _check_header_fields(self.to_list())

    def to_list(self) -> list[Any]:
        return [getattr(self, f) for f in _HEADER_FIELDS]

    def encode(self) -> bytes:
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        return cbor.dumps(self.to_list())

    def block_id(self) -> bytes:
        """SHA-256 of the header encoding: the id the next header's ``prev_block_id`` names and the
        consensus value id (what precommits and certificates are about)."""
        return self._block_id

    @cached_property
    def _block_id(self) -> bytes:
        return hashlib.sha256(self._encoded).digest()

    @classmethod
    def from_list(cls, item: Any) -> Header:
        return cls(*_check_header_fields(_array(item, "header", len(_HEADER_FIELDS))))

    @classmethod
    def decode(cls, data: bytes) -> Header:
        return cls.from_list(_loads(data, "header"))


def _check_header_fields(v: list[Any]) -> list[Any]:
    _tstr(v[0], "header.chain_id", max_size=MAX_CHAIN_ID)
    _uint(v[1], "header.height", lo=1)
    _uint(v[2], "header.round")
    _uint(v[3], "header.time_ms")
    _bstr(v[4], "header.prev_block_id", size=HASH_SIZE)
    _bstr(v[5], "header.last_commit_hash", size=HASH_SIZE)
    _bstr(v[6], "header.tx_root", size=HASH_SIZE)
    _bstr(v[7], "header.app_hash", max_size=MAX_APP_HASH)
    _bstr(v[8], "header.validators_hash", size=HASH_SIZE)
    _bstr(v[9], "header.next_validators_hash", size=HASH_SIZE)
    _tstr(v[10], "header.proposer", max_size=MAX_DID)
    return v


# --------------------------------------------------------------------------- commit certificate


@dataclass(frozen=True)
class CommitCertificate:
    """> 2/3 of the voting power's precommit signatures for ``block_id`` at (height, round)."""

    height: int
    round: int
    block_id: bytes
    signatures: tuple[tuple[int, bytes], ...]  # (validator index, signature), indices increasing

    def __post_init__(self) -> None:
        _uint(self.height, "last_commit.height", lo=1)
        _uint(self.round, "last_commit.round")
        _bstr(self.block_id, "last_commit.block_id", size=HASH_SIZE)
        if not isinstance(self.signatures, tuple):
            object.__setattr__(self, "signatures", tuple(tuple(s) for s in self.signatures))
        for i, pair in enumerate(self.signatures):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise BlockFormatError("expected (index, signature)", field=f"last_commit.signatures[{i}]")
            _uint(pair[0], f"last_commit.signatures[{i}].index")
            _bstr(pair[1], f"last_commit.signatures[{i}].signature", max_size=MAX_SIGNATURE)

    # -- conversion from consensus --------------------------------------------------------------

    @classmethod
    def from_votes(cls, votes: Iterable[Vote], validators: ValidatorSet) -> CommitCertificate:
        """From precommit votes for one (height, round, block id); signers must be validators."""
        votes = tuple(votes)
        if not votes:
            raise QuorumError("no precommits")
        first = votes[0]
        index = {did: i for i, did in enumerate(validators.dids)}
        sigs: dict[int, bytes] = {}
        for v in votes:
            if v.type != PRECOMMIT or (v.height, v.round, v.value_id) != (first.height, first.round, first.value_id):
                raise CommitMismatchError(f"vote of {v.voter} is not a precommit for the same height, round, value")
            i = index.get(v.voter)
            if i is None:
                raise UnknownSignerError(f"{v.voter} is not a validator of {validators.chain_id}")
            if i in sigs and sigs[i] != v.signature:
                raise DuplicateSignerError(f"validator {i} ({v.voter}) signed two different precommits")
            sigs[i] = v.signature
        if first.value_id is None:
            raise CommitMismatchError("precommits for nil commit nothing")
        return cls(first.height, first.round, first.value_id, tuple(sorted(sigs.items())))

    @classmethod
    def from_consensus(cls, commit: Commit, validators: ValidatorSet) -> CommitCertificate:
        """The certificate of a consensus ``Commit`` action of a node run with
        ``Params(value_id=block_value_id)`` (its value is the block encoding)."""
        cert = cls.from_votes(commit.certificate, validators)
        if (cert.height, cert.round, cert.block_id) != (commit.height, commit.round, block_value_id(commit.value)):
            raise CommitMismatchError("the commit's precommits are not for its own height, round and value")
        return cert

    # -- encoding ---------------------------------------------------------------------------------

    def to_list(self) -> list[Any]:
        return [self.height, self.round, self.block_id, [list(s) for s in self.signatures]]

    def encode(self) -> bytes:
        return cbor.dumps(self.to_list())

    @classmethod
    def from_list(cls, item: Any) -> CommitCertificate:
        height, rnd, vid, sigs = _array(item, "last_commit", 4)
        pairs: list[tuple[int, bytes]] = []
        for i, pair in enumerate(_array(sigs, "last_commit.signatures")):
            idx, sig = _array(pair, f"last_commit.signatures[{i}]", 2)
            _uint(idx, f"last_commit.signatures[{i}].index")
            if pairs and idx <= pairs[-1][0]:
                raise BlockFormatError("indices must be strictly increasing", field=f"last_commit.signatures[{i}]")
            pairs.append((idx, _bstr(sig, f"last_commit.signatures[{i}].signature", max_size=MAX_SIGNATURE)))
        return cls(height, rnd, vid, tuple(pairs))

    @classmethod
    def decode(cls, data: bytes) -> CommitCertificate:
        return cls.from_list(_loads(data, "last_commit"))

    # -- verification -------------------------------------------------------------------------------

    def verify(self, validators: ValidatorSet, chain_id: str) -> None:
        """Raise unless > 2/3 of ``validators``' power signed precommits for ``block_id`` at
        (height, round) on ``chain_id``. Every listed signature must verify; a validator listed twice
        or an index outside the set is refused (never counted)."""
        if chain_id != validators.chain_id:
            raise ChainMismatchError(f"validator set of {validators.chain_id!r} used for chain {chain_id!r}")
        seen: set[int] = set()
        power = 0
        vals = validators.validators
        for i, sig in self.signatures:
            if i in seen:
                raise DuplicateSignerError(f"validator {i} signed twice")
            seen.add(i)
            if i >= len(vals):
                raise UnknownSignerError(f"signer index {i} outside a set of {len(vals)}")
            did = vals[i].did
            data = Vote(PRECOMMIT, self.height, self.round, self.block_id, did).sign_bytes(chain_id)
            try:
                verify_with_did_key(did, sig, data)
            except VerificationError as err:
                raise CommitSignatureError(f"precommit of validator {i} ({did}) does not verify: {err}") from err
            power += vals[i].power
        if power < validators.quorum:
            raise QuorumError(f"signers hold {power} of {validators.total_power} power; need {validators.quorum}")

    def check_header(self, header: Header, validators: ValidatorSet) -> None:
        """This certificate commits exactly ``header`` (height, round, block id) and verifies: what a
        light client needs, no body. (The header's own rules against its predecessor and the
        validator set are ``validate_basic``'s.)"""
        if self.height != header.height or self.round != header.round:
            raise CommitMismatchError(
                f"certificate for height {self.height} round {self.round}, header is {header.height}/{header.round}"
            )
        if self.block_id != header.block_id():
            raise CommitMismatchError(f"certificate is for block {self.block_id.hex()}, not this header")
        self.verify(validators, header.chain_id)

    def check_block(self, block: Block, validators: ValidatorSet) -> None:
        """``check_header`` for the block's header, and the body matches the header
        (``Block.check_body``): the certificate commits exactly ``block``."""
        self.check_header(block.header, validators)
        block.check_body()


# --------------------------------------------------------------------------- block


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]
    last_commit: CommitCertificate | None

    def __post_init__(self) -> None:
        if not isinstance(self.txs, tuple):
            object.__setattr__(self, "txs", tuple(self.txs))
        if len(self.txs) > MAX_TXS:
            raise BlockFormatError(f"{len(self.txs)} transactions, at most {MAX_TXS}", field="txs")
        for i, tx in enumerate(self.txs):
            _bstr(tx, f"txs[{i}]")
            if not tx:
                raise BlockFormatError("empty transaction", field=f"txs[{i}]")

    @classmethod
    def build(
        cls,
        *,
        validators: ValidatorSet,
        height: int,
        round: int,
        time_ms: int,
        prev: Block | None,
        txs: Sequence[bytes],
        last_commit: CommitCertificate | None,
        app_hash: bytes = b"",
        proposer: str | None = None,
        next_validators: ValidatorSet | None = None,
    ) -> Block:
        """A proposer's block: tx_root, last_commit_hash, validators hash and next validators hash
        (of ``next_validators``, the set that signs height + 1; default ``validators``: no change)
        computed, prev id from ``prev``."""
        nxt = validators if next_validators is None else next_validators
        if nxt.chain_id != validators.chain_id:
            raise ValueError(f"next validators of chain {nxt.chain_id!r}, validators of {validators.chain_id!r}")
        header = Header(
            validators.chain_id,
            height,
            round,
            time_ms,
            GENESIS_PREV_ID if prev is None else prev.header.block_id(),
            last_commit_hash(last_commit),
            merkle.root(list(txs)),
            app_hash,
            validators.hash(),
            nxt.hash(),
            proposer or validators.proposer(height, round),
        )
        return cls(header, tuple(txs), last_commit)

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The consensus value (its consensus id is ``block_value_id`` of it: the block id)."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        body = self.encode_body()
        return b"\x83" + self.header.encode() + body[1:]  # [header, txs, last_commit]

    def encode_body(self) -> bytes:
        """``[txs, last_commit]``: the block without its header (the block store keeps them apart)."""
        return cbor.dumps([list(self.txs), None if self.last_commit is None else self.last_commit.to_list()])

    def block_id(self) -> bytes:
        """The header's id: also the consensus value id (see the module doc)."""
        return self.header.block_id()

    @property
    def height(self) -> int:
        return self.header.height

    @classmethod
    def decode(cls, data: bytes) -> Block:
        header, txs, last = _array(_loads(data, "block"), "block", 3)
        return cls._from_items(Header.from_list(header), txs, last)

    @classmethod
    def from_parts(cls, header: bytes, body: bytes) -> Block:
        """Inverse of (``header.encode()``, ``encode_body()``)."""
        txs, last = _array(_loads(body, "body"), "body", 2)
        return cls._from_items(Header.decode(header), txs, last)

    @classmethod
    def _from_items(cls, header: Header, txs: Any, last: Any) -> Block:
        txs = _array(txs, "txs")
        return cls(header, tuple(txs), None if last is None else CommitCertificate.from_list(last))

    # -- validation -------------------------------------------------------------------------------

    def check_body(self) -> None:
        """The body is the one the header commits to: ``tx_root`` is the Merkle root of the txs and
        ``last_commit_hash`` the hash of the last commit; raises ``TxRootError`` /
        ``BlockInvalidError``."""
        if not self.body_matches_header():
            if merkle.root(self.txs) != self.header.tx_root:
                raise TxRootError("not the Merkle root of the transactions", field="header.tx_root")
            raise BlockInvalidError("not the hash of the last commit", field="header.last_commit_hash")

    def body_matches_header(self) -> bool:
        return self._body_matches

    @cached_property
    def _body_matches(self) -> bool:
        h = self.header
        return merkle.root(self.txs) == h.tx_root and last_commit_hash(self.last_commit) == h.last_commit_hash

    def validate_basic(
        self,
        prev: Header | Block | None,
        validators: ValidatorSet,
        next_validators: ValidatorSet | None = None,
        *,
        last_validators: ValidatorSet | None = None,
    ) -> None:
        """Structural rules against the predecessor and the validator sets; raises.

        ``validators`` is the set of this height: chain id and ``validators_hash`` are its; the
        proposer is one of it. With ``next_validators`` (the set of height + 1) given,
        ``next_validators_hash`` must be its hash (unchecked otherwise: the next block's
        ``validators_hash == prev.next_validators_hash`` link catches a wrong one). The body matches
        the header (``check_body``: tx_root, last_commit_hash); no tx twice; height 1 has the
        genesis prev id and no last commit; later heights follow ``prev`` (height + 1,
        prev_block_id, ``validators_hash`` equal to prev's ``next_validators_hash``, time strictly
        later) and carry a last commit for exactly ``prev``'s block id at height - 1 that verifies
        with ``last_validators`` -- the set of height - 1, default ``validators`` (a fixed set);
        it must hash to prev's ``validators_hash``. A bare ``Header`` suffices as ``prev``.
        """
        h = self.header
        if h.chain_id != validators.chain_id:
            raise ChainMismatchError(f"block of chain {h.chain_id!r}, validators of {validators.chain_id!r}")
        if h.validators_hash != validators.hash():
            raise BlockInvalidError(
                f"not the hash of the validator set of height {h.height}", field="header.validators_hash"
            )
        if next_validators is not None and h.next_validators_hash != next_validators.hash():
            raise BlockInvalidError(
                f"not the hash of the validator set of height {h.height + 1}", field="header.next_validators_hash"
            )
        if h.proposer not in validators:
            raise BlockInvalidError(f"{h.proposer} is not a validator", field="header.proposer")
        self.check_body()
        if len(set(self.txs)) != len(self.txs):
            raise BlockInvalidError("a transaction appears twice", field="txs")
        if h.height == 1:
            if prev is not None:
                raise LinkError("height 1 has no predecessor", field="header.height")
            if h.prev_block_id != GENESIS_PREV_ID:
                raise LinkError("height 1 must name no previous block", field="header.prev_block_id")
            if self.last_commit is not None:
                raise LinkError("height 1 has no last commit", field="last_commit")
            return
        if prev is None:
            raise LinkError(f"height {h.height} needs its predecessor to be validated", field="header.height")
        ph = prev.header if isinstance(prev, Block) else prev
        if h.height != ph.height + 1:
            raise LinkError(f"height {h.height} does not follow {ph.height}", field="header.height")
        if h.prev_block_id != ph.block_id():
            raise LinkError("not the id of the previous block", field="header.prev_block_id")
        if h.validators_hash != ph.next_validators_hash:
            raise LinkError(
                f"height {ph.height} named another next validator set than height {h.height}'s",
                field="header.validators_hash",
            )
        if h.time_ms <= ph.time_ms:
            raise BlockInvalidError(f"{h.time_ms} is not after the previous {ph.time_ms}", field="header.time_ms")
        lc = self.last_commit
        if lc is None:
            raise LinkError(f"height {h.height} must carry the commit of height {ph.height}", field="last_commit")
        if lc.height != ph.height or lc.round != ph.round:
            raise LinkError(
                f"commit for {lc.height}/{lc.round}, previous is {ph.height}/{ph.round}", field="last_commit"
            )
        if lc.block_id != ph.block_id():
            raise LinkError("commit is for another block than the previous one", field="last_commit.block_id")
        lv = validators if last_validators is None else last_validators
        if lv.hash() != ph.validators_hash:
            raise BlockInvalidError(
                f"the last commit is signed by the set of height {ph.height} (hash {ph.validators_hash.hex()[:16]}..),"
                " not the one given: pass last_validators= that set when the set changes",
                field="last_commit",
            )
        lc.verify(lv, h.chain_id)


# --------------------------------------------------------------------------- ids


def last_commit_hash(last_commit: CommitCertificate | None) -> bytes:
    """SHA-256 of the certificate's encoding; of empty bytes for none (height 1)."""
    return hashlib.sha256(b"" if last_commit is None else last_commit.encode()).digest()


def block_value_id(value: bytes) -> bytes:
    """The consensus value id of a block encoding, for ``consensus.Params(value_id=...)``: its
    header's block id if ``value`` decodes and its body matches its header, else SHA-256 of
    ``value`` (never a valid block's id; never raises -- see the module doc)."""
    try:
        block = Block.decode(value)
    except MalformedError:  # BlockFormatError, and CborError should one escape
        return hashlib.sha256(value).digest()
    if not block.body_matches_header():
        return hashlib.sha256(value).digest()
    return block.header.block_id()


# --------------------------------------------------------------------------- receipts


def tx_receipt(block: Block, index: int) -> tuple[bytes, merkle.InclusionProof]:
    """(attestation id of tx ``index``, its inclusion proof against ``block.header.tx_root``)."""
    if not 0 <= index < len(block.txs):
        raise IndexError(f"block {block.height} has {len(block.txs)} transactions, no index {index}")
    path = merkle.inclusion_proof(block.txs, index)
    return attestation_id(block.txs[index]), merkle.InclusionProof(index, len(block.txs), tuple(path))
