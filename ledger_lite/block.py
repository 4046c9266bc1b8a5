"""Blocks of a cell ledger: header, transactions, and the previous block's commit certificate.

Pure: no I/O, no clock. Encodings are deterministic CBOR arrays (``ledger_lite.cbor``); ``decode``
accepts exactly what ``encode`` produces (``encode(decode(b)) == b``) and raises a
``BlockFormatError`` naming the field otherwise.

    Header  = [chain_id: tstr, height: uint >= 1, round: uint, time_ms: uint,
               prev_block_id: bstr .size 32 (32 zero bytes at height 1), tx_root: bstr .size 32,
               app_hash: bstr .size (0..64), validators_hash: bstr .size 32, proposer: tstr (DID)]
    Block   = [Header, [* tx: bstr], last_commit: Certificate / null]
    Certificate = [height: uint, round: uint, value_id: bstr .size 32, [* [index: uint, signature: bstr]]]

Two ids, and how they relate (the consensus core treats values as opaque bytes):

* ``Header.block_id()`` = SHA-256(header encoding). It names a block in the chain: the next
  header's ``prev_block_id`` is it. The header commits to the transactions through ``tx_root``
  (RFC 6962 Merkle root over the tx bytes as leaves).
* ``Block.value_id()`` = ``consensus.value_id(block.encode())`` = SHA-256(block encoding). The
  block's encoding IS the consensus value, so this is what precommits sign and what a
  ``CommitCertificate`` carries (its ``value_id``). Since the block encoding contains the header
  encoding, a value id determines the block id (and the txs and last commit), not vice versa:
  checking a certificate against a header needs the block's bytes (``CommitCertificate.check_block``),
  or, at a light client, the body bytes beside the header (see ``Block.from_parts``).

A certificate is index based: signer ``i`` is ``validators.validators[i]`` (the set is sorted by
DID), signatures are the consensus precommit signatures over ``Vote(PRECOMMIT, height, round,
value_id, did).sign_bytes(chain_id)`` -- exactly what ``consensus.step`` produced in
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
from .consensus import PRECOMMIT, Commit, Vote, value_id, verify_with_did_key
from .errors import (
    BlockFormatError,
    BlockInvalidError,
    CborError,
    ChainMismatchError,
    CommitMismatchError,
    CommitSignatureError,
    DuplicateSignerError,
    LinkError,
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
    "tx_root",
    "app_hash",
    "validators_hash",
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
    tx_root: bytes
    app_hash: bytes
    validators_hash: bytes
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
        """SHA-256 of the header encoding: the id the next header's ``prev_block_id`` names."""
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
    _bstr(v[5], "header.tx_root", size=HASH_SIZE)
    _bstr(v[6], "header.app_hash", max_size=MAX_APP_HASH)
    _bstr(v[7], "header.validators_hash", size=HASH_SIZE)
    _tstr(v[8], "header.proposer", max_size=MAX_DID)
    return v


# --------------------------------------------------------------------------- commit certificate


@dataclass(frozen=True)
class CommitCertificate:
    """> 2/3 of the voting power's precommit signatures for ``value_id`` at (height, round)."""

    height: int
    round: int
    value_id: bytes
    signatures: tuple[tuple[int, bytes], ...]  # (validator index, signature), indices increasing

    def __post_init__(self) -> None:
        _uint(self.height, "last_commit.height", lo=1)
        _uint(self.round, "last_commit.round")
        _bstr(self.value_id, "last_commit.value_id", size=HASH_SIZE)
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
        """From precommit votes for one (height, round, value id); signers must be validators."""
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
        """The certificate of a consensus ``Commit`` action (its value is the block encoding)."""
        cert = cls.from_votes(commit.certificate, validators)
        if (cert.height, cert.round, cert.value_id) != (commit.height, commit.round, value_id(commit.value)):
            raise CommitMismatchError("the commit's precommits are not for its own height, round and value")
        return cert

    # -- encoding ---------------------------------------------------------------------------------

    def to_list(self) -> list[Any]:
        return [self.height, self.round, self.value_id, [list(s) for s in self.signatures]]

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
        """Raise unless > 2/3 of ``validators``' power signed precommits for ``value_id`` at
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
            data = Vote(PRECOMMIT, self.height, self.round, self.value_id, did).sign_bytes(chain_id)
            try:
                verify_with_did_key(did, sig, data)
            except VerificationError as err:
                raise CommitSignatureError(f"precommit of validator {i} ({did}) does not verify: {err}") from err
            power += vals[i].power
        if power < validators.quorum:
            raise QuorumError(f"signers hold {power} of {validators.total_power} power; need {validators.quorum}")

    def check_block(self, block: Block, validators: ValidatorSet) -> None:
        """This certificate commits exactly ``block`` (height, round, value id) and verifies."""
        h = block.header
        if self.height != h.height or self.round != h.round:
            raise CommitMismatchError(
                f"certificate for height {self.height} round {self.round}, block is {h.height}/{h.round}"
            )
        if self.value_id != block.value_id():
            raise CommitMismatchError(f"certificate is for value {self.value_id.hex()}, not this block")
        self.verify(validators, h.chain_id)


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
    ) -> Block:
        """A proposer's block: tx_root and validators hash computed, prev id from ``prev``."""
        header = Header(
            validators.chain_id,
            height,
            round,
            time_ms,
            GENESIS_PREV_ID if prev is None else prev.header.block_id(),
            merkle.root(list(txs)),
            app_hash,
            validators.hash(),
            proposer or validators.proposer(height, round),
        )
        return cls(header, tuple(txs), last_commit)

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The consensus value."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        body = self.encode_body()
        return b"\x83" + self.header.encode() + body[1:]  # [header, txs, last_commit]

    def encode_body(self) -> bytes:
        """``[txs, last_commit]``: the block without its header (the block store keeps them apart)."""
        return cbor.dumps([list(self.txs), None if self.last_commit is None else self.last_commit.to_list()])

    def value_id(self) -> bytes:
        """SHA-256 of ``encode()``: the id consensus votes and certificates are about."""
        return self._value_id

    @cached_property
    def _value_id(self) -> bytes:
        return value_id(self._encoded)

    def block_id(self) -> bytes:
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

    def validate_basic(self, prev: Header | Block | None, validators: ValidatorSet) -> None:
        """Structural rules against the predecessor and the (fixed) validator set; raises.

        chain id and validators hash of ``validators``; proposer is a validator; tx_root is the
        Merkle root of the txs; no tx twice; height 1 has the genesis prev id and no last commit;
        later heights follow ``prev`` (height + 1, prev_block_id, time strictly later) and carry a
        last commit for height - 1 that verifies with ``validators`` -- for exactly ``prev``'s
        value id when ``prev`` is a ``Block`` (a bare ``Header`` cannot tell: see the module doc).
        """
        h = self.header
        if h.chain_id != validators.chain_id:
            raise ChainMismatchError(f"block of chain {h.chain_id!r}, validators of {validators.chain_id!r}")
        if h.validators_hash != validators.hash():
            raise BlockInvalidError("not the hash of the validator set", field="header.validators_hash")
        if h.proposer not in validators:
            raise BlockInvalidError(f"{h.proposer} is not a validator", field="header.proposer")
        if merkle.root(self.txs) != h.tx_root:
            raise TxRootError("not the Merkle root of the transactions", field="header.tx_root")
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
        if h.time_ms <= ph.time_ms:
            raise BlockInvalidError(f"{h.time_ms} is not after the previous {ph.time_ms}", field="header.time_ms")
        lc = self.last_commit
        if lc is None:
            raise LinkError(f"height {h.height} must carry the commit of height {ph.height}", field="last_commit")
        if lc.height != ph.height or lc.round != ph.round:
            raise LinkError(
                f"commit for {lc.height}/{lc.round}, previous is {ph.height}/{ph.round}", field="last_commit"
            )
        if isinstance(prev, Block) and lc.value_id != prev.value_id():
            raise LinkError("commit is for another value than the previous block", field="last_commit.value_id")
        lc.verify(validators, h.chain_id)


# --------------------------------------------------------------------------- receipts


def tx_receipt(block: Block, index: int) -> tuple[bytes, merkle.InclusionProof]:
    """(attestation id of tx ``index``, its inclusion proof against ``block.header.tx_root``)."""
    if not 0 <= index < len(block.txs):
        raise IndexError(f"block {block.height} has {len(block.txs)} transactions, no index {index}")
    path = merkle.inclusion_proof(block.txs, index)
    return attestation_id(block.txs[index]), merkle.InclusionProof(index, len(block.txs), tuple(path))
