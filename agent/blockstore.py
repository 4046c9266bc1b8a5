"""The block store of an RSU's cell ledger: committed blocks, their commit certificates and a tx index,
in SQLite.

    store = BlockStore(path, validators=vset)   # optional: then append verifies certificates; a set or
                                                # a function height -> set (validator-set changes)
    store.append(block, certificate)            # height latest+1, linked, certificate for exactly it
    store.get(height) / store.latest() / store.certificate(height)
    store.tx_location(attestation_id) -> (height, index) | None
    store.receipt(attestation_id) -> (height, InclusionProof) | None
    store.verify_chain(validators)              # re-verifies every hash, link and certificate (set or
                                                # height -> set)

Durability: ``journal_mode=WAL`` and ``synchronous=FULL``. Under WAL, NORMAL may lose the last
transactions on power loss (the WAL is fsynced only at checkpoints); FULL fsyncs the WAL on every
commit. A committed block must survive: once we have appended it we may tell peers and light clients
about it and serve receipts for its txs (an OBU then retires the attestation from its outbox), and
consensus moves to the next height assuming it is stored -- losing it after a crash would mean
re-fetching it by sync at best and handing out receipts for a block we no longer have at worst.
The cost is one fsync per block (a few ms on eMMC/SD; measured in the report), once per block, not per
tx. ``foreign_keys=ON``; every append is one ``BEGIN IMMEDIATE`` transaction (block, certificate and
tx rows all or nothing).

All methods block (SQLite I/O, fsync): the agent calls them from a worker thread
(``asyncio.to_thread``), never on the event loop. One ``BlockStore`` per thread; the connection is
not shared across threads (``check_same_thread`` stays on).

Decision: the txs table's primary key is the attestation id, so a block carrying a tx already in the
chain is refused (``DuplicateTxError``) -- the mempool and ``check_tx`` must have kept it out; the
store is the last line.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ledger_lite import merkle
from ledger_lite.attestation import attestation_id
from ledger_lite.block import Block, CommitCertificate, tx_receipt
from ledger_lite.errors import LedgerError, LinkError, MalformedError, VerificationError
from ledger_lite.validators import ValidatorSet

__all__ = ["SCHEMA_VERSION", "BlockStore", "BlockStoreError", "CorruptStoreError", "DuplicateTxError", "Validators"]

#: 2: headers carry last_commit_hash and certificates certify the block id (no value_id column);
#: 3: headers carry next_validators_hash. Older stores are refused, not migrated (their blocks do not
#: decode in the new format, and their block ids would change): re-sync the chain from peers.
SCHEMA_VERSION = 3

_OLD_VERSIONS = {
    1: "headers without last_commit_hash and next_validators_hash",
    2: "headers without next_validators_hash",
}

#: the validator set of a height: one fixed set, or a function height -> the set that signs it
Validators = ValidatorSet | Callable[[int], ValidatorSet]


def _set_at(validators: Validators, height: int) -> ValidatorSet:
    return validators if isinstance(validators, ValidatorSet) else validators(height)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    block_id BLOB NOT NULL UNIQUE,
    header BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    height INTEGER PRIMARY KEY REFERENCES blocks(height),
    round INTEGER NOT NULL,
    certificate BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    attestation_id BLOB PRIMARY KEY,
    height INTEGER NOT NULL REFERENCES blocks(height),
    idx INTEGER NOT NULL
) WITHOUT ROWID;
"""


class BlockStoreError(LedgerError):
    """A block the store refuses (or a store it cannot use)."""


class DuplicateTxError(BlockStoreError):
    """A block carries a transaction that is already in the chain."""


class CorruptStoreError(BlockStoreError):
    """A stored row that does not decode or verify (says which height)."""


class BlockStore:
    def __init__(self, path: str | Path, *, validators: Validators | None = None) -> None:
        self.path = Path(path)
        self.validators = validators
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            self._db.close()
            what = _OLD_VERSIONS.get(version, "unknown to this agent")
            raise BlockStoreError(
                f"{self.path}: block store schema version {version} ({what}); this agent knows only version "
                f"{SCHEMA_VERSION} and does not migrate: move the file away and re-sync the chain from peers"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def pragma(self, name: str) -> object:
        """A PRAGMA's current value (journal_mode, synchronous, ...), for diagnostics and tests."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        row = self._db.execute(f"PRAGMA {name}").fetchone()
        return None if row is None else row[0]

    # -- writing ----------------------------------------------------------------------------------

    def append(self, block: Block, certificate: CommitCertificate) -> None:
        """Store the committed ``block`` with its own ``certificate`` (one durable transaction).

        Refuses (``LinkError``) a height other than latest + 1, a prev id that is not the latest
        block's id, a last commit that is not for the latest block's id, or a certificate for
        another height/round/block id, and (``TxRootError``/``BlockInvalidError``) a body that does
        not match its header; with ``validators`` set, the block's ``validate_basic`` and the
        certificate's signatures are checked too. Appending the latest block again is a no-op
        (idempotent after a crash between commit and acknowledgement). The block's
        ``validators_hash`` must be the latest block's ``next_validators_hash`` (always checked); with
        ``validators`` a function, height h is checked against ``validators(h)`` and its last commit
        against ``validators(h - 1)``."""
        h = block.header
        latest = self.latest()
        if latest is not None and h.height == latest.height and block == latest:
            return
        expected = 1 if latest is None else latest.height + 1
        if h.height != expected:
            raise LinkError(f"block at height {h.height}, the store expects {expected}", field="header.height")
        if latest is not None:
            if h.prev_block_id != latest.block_id():
                raise LinkError("not the id of the latest stored block", field="header.prev_block_id")
            if block.last_commit is None or block.last_commit.block_id != latest.block_id():
                raise LinkError("last commit is not for the latest stored block", field="last_commit")
            if h.validators_hash != latest.header.next_validators_hash:
                raise LinkError(
                    f"not the next validator set named by the latest stored block {latest.height}",
                    field="header.validators_hash",
                )
        if (certificate.height, certificate.round, certificate.block_id) != (h.height, h.round, block.block_id()):
            raise LinkError("the certificate is not for this block", field="certificate")
        block.check_body()  # the block id (what the certificate certifies) binds the body only through it
        if self.validators is not None:
            vals = _set_at(self.validators, h.height)
            last = None if latest is None else _set_at(self.validators, latest.height)
            block.validate_basic(latest, vals, last_validators=last)
            certificate.check_block(block, vals)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO blocks(height, block_id, header, body) VALUES (?, ?, ?, ?)",
                (h.height, block.block_id(), h.encode(), block.encode_body()),
            )
            db.execute(
                "INSERT INTO commits(height, round, certificate) VALUES (?, ?, ?)",
                (h.height, certificate.round, certificate.encode()),
            )
            for i, tx in enumerate(block.txs):
                aid = attestation_id(tx)
                try:
                    db.execute("INSERT INTO txs(attestation_id, height, idx) VALUES (?, ?, ?)", (aid, h.height, i))
                except sqlite3.IntegrityError:
                    where = self.tx_location(aid)
                    raise DuplicateTxError(f"tx {i} ({aid.hex()}) is already in the chain at {where}") from None
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- reading ----------------------------------------------------------------------------------

    def _decode(self, height: int, header: bytes, body: bytes) -> Block:
        try:
            return Block.from_parts(header, body)
        except MalformedError as err:
            raise CorruptStoreError(f"block {height}: {err}") from err

    def get(self, height: int) -> Block | None:
        row = self._db.execute("SELECT header, body FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else self._decode(height, row[0], row[1])

    def height(self) -> int:
        """The latest stored height; 0 for an empty store."""
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return int(row[0] or 0)

    def latest(self) -> Block | None:
        h = self.height()
        return None if h == 0 else self.get(h)

    def certificate(self, height: int) -> CommitCertificate | None:
        row = self._db.execute("SELECT certificate FROM commits WHERE height = ?", (height,)).fetchone()
        if row is None:
            return None
        try:
            return CommitCertificate.decode(row[0])
        except MalformedError as err:
            raise CorruptStoreError(f"certificate {height}: {err}") from err

    def tx_location(self, aid: bytes) -> tuple[int, int] | None:
        row = self._db.execute("SELECT height, idx FROM txs WHERE attestation_id = ?", (aid,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def receipt(self, aid: bytes) -> tuple[int, merkle.InclusionProof] | None:
        """(height, inclusion proof against that block's tx_root) of the tx with this attestation id."""
        where = self.tx_location(aid)
        if where is None:
            return None
        height, idx = where
        block = self.get(height)
        if block is None or idx >= len(block.txs):
            raise CorruptStoreError(f"tx index points at block {height} index {idx}, which does not exist")
        got, proof = tx_receipt(block, idx)
        if got != aid:
            raise CorruptStoreError(f"tx index of {aid.hex()} points at another tx in block {height}")
        return height, proof

    # -- auditing ---------------------------------------------------------------------------------

    def verify_chain(self, validators: Validators) -> int:
        """Re-verify the whole chain: decoding, stored ids, heights without gaps, ``validate_basic``
        against the predecessor (links, tx roots, last commits, ``validators_hash`` against the
        set of its height and the predecessor's ``next_validators_hash``; ``validators`` is one set
        or a function height -> set), each block's own certificate, and
        the tx index. Returns the number of blocks; raises ``CorruptStoreError`` at the first fault
        (its cause is the ledger error). O(chain): for ``acc ledger verify``, not the hot path."""
        prev: Block | None = None
        count = 0
        rows = self._db.execute(
            "SELECT b.height, b.block_id, b.header, b.body, c.round, c.certificate "
            "FROM blocks b LEFT JOIN commits c ON c.height = b.height ORDER BY b.height"
        )
        for height, bid, header, body, rnd, cert_bytes in rows:
            block = self._decode(height, header, body)
            try:
                if (
                    block.height != height
                    or (prev is None and height != 1)
                    or (prev is not None and height != prev.height + 1)
                ):
                    raise LinkError(f"row {height} holds block {block.height}", field="header.height")
                if bid != block.block_id():
                    raise LinkError("stored id is not the block's", field="block_id")
                vals = _set_at(validators, height)
                last = None if prev is None else _set_at(validators, prev.height)
                block.validate_basic(prev, vals, last_validators=last)
                if cert_bytes is None:
                    raise LinkError("no commit certificate stored", field="certificate")
                cert = CommitCertificate.decode(cert_bytes)
                if cert.round != rnd:
                    raise LinkError("stored round is not the certificate's", field="certificate.round")
                cert.check_block(block, vals)
            except (VerificationError, MalformedError) as err:
                raise CorruptStoreError(f"block {height}: {err}") from err
            indexed = self._db.execute("SELECT attestation_id, idx FROM txs WHERE height = ?", (height,)).fetchall()
            expected = {attestation_id(tx): i for i, tx in enumerate(block.txs)}
            if {bytes(a): int(i) for a, i in indexed} != expected:
                raise CorruptStoreError(f"block {height}: the tx index does not match the block's txs")
            prev = block
            count += 1
        return count
