"""The store-and-forward outbox: attestations are persisted here before they are sent, resent
until a verified ledger receipt retires them, and kept within a disk budget.

Delivery is at-least-once; the ledger dedupes by attestation id (SHA-256 of the bytes), which is
also this table's key, so ``enqueue`` is idempotent.

Durability (decision): SQLite in WAL mode with ``synchronous=FULL`` by default. Every commit
fsyncs the WAL, so an ``enqueue`` that returned survives power loss, not only a crash of the
process (kill -9 is survived by NORMAL too: the WAL is in the page cache). FULL costs one fsync
per commit (~6k enqueues/s on the build machine, far above the agent's attestation rate);
``mark_sent`` batches a whole send round into one commit. ``synchronous="NORMAL"`` can be chosen
where an attestation lost on power loss is acceptable (it is still in the attestor's chain
files until the lead retires those).

Budget (decision): ``budget_bytes`` bounds the *accounted* size of the rows (payload + receipt +
``ROW_OVERHEAD`` each). When an enqueue would exceed it, space is made in this order, oldest
first within each step, all in the enqueue's transaction:

1. retired rows (their payload was already dropped at retirement; the row kept the receipt and
   the id, so a re-enqueue of a delivered attestation is recognised). Pruning them loses no
   undelivered data: counted in ``receipts_pruned``, logged at DEBUG.
2. undelivered (pending or sent, not retired) entries of the lowest priority class first:
   ``BULK`` (sensor summaries, map observations, unknown kinds), then ``NORMAL`` (DTC reports,
   FL update references) — but never an entry of a higher class than the one being enqueued.
   Each is counted (``evicted``, ``evicted_by_kind``) and logged at WARNING.
3. ``CRITICAL`` entries (driving events, clip evidence) are never evicted. If the space cannot
   be made, nothing is evicted and ``enqueue`` raises ``OutboxFull`` (counted in ``refused``,
   logged at ERROR): the caller still holds the attestation and must say so.

The file on disk is the accounted size plus SQLite's page slack and the WAL (bounded by
``journal_size_limit`` after checkpoints); ``max_page_count`` caps it at twice the budget plus
4 MiB as a safety net (hitting it raises ``OutboxFull`` too).

Integrity (decision): on open, ``PRAGMA quick_check``. A file that is not a database or fails the
check is never silently recreated: by default (``on_corrupt="quarantine"``) it (with its -wal
and -shm) is renamed to ``<name>.corrupt-<UTC timestamp>``, logged at ERROR, an empty outbox is
started, and ``quarantined`` (in ``stats()`` and the sender's health) says where the old file
is. ``on_corrupt="raise"`` raises ``OutboxCorrupt`` instead. A database written by a newer
schema raises ``OutboxError`` (never quarantined: it is not corrupt).

Handover: each entry is bound to the cell whose ledger it is for. ``rebind(a, b)`` moves only
entries never sent; entries already sent to ``a`` may be on ``a``'s ledger and stay bound to
``a`` until its receipt retires them, so nothing is counted on two ledgers. ``due(cells=...)``
lets the sender send only to cells it can reach.

Threading: ``Outbox`` is synchronous and must be used from one thread. ``AsyncOutbox`` runs it
in one dedicated worker thread; the event loop never touches SQLite. ``OutboxSender`` is the
service that sends due entries through an injected ``send``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from drivers.clock import sleep_until_or
from hal.interfaces import Clock
from ledger_lite import cbor
from ledger_lite.attestation import attestation_id, decode_attestation
from ledger_lite.errors import CborError, MalformedError
from ledger_lite.merkle import InclusionProof

from .health import HealthRegistry, Status

__all__ = [
    "DEFAULT_PRIORITIES",
    "AsyncOutbox",
    "Entry",
    "Outbox",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxFull",
    "OutboxSender",
    "OutboxStats",
    "Priority",
    "Receipt",
    "SendError",
    "State",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: bytes accounted per row on top of payload and receipt (metadata, the id's index entry)
ROW_OVERHEAD = 128
_WAL_LIMIT = 4 * 1024 * 1024


class OutboxError(Exception):
    """The outbox could not do what was asked (I/O error, unusable database)."""


class OutboxFull(OutboxError):
    """No room within the budget for this entry without evicting what the policy protects."""


class OutboxCorrupt(OutboxError):
    """The database file is not a database or fails SQLite's integrity check."""


class SendError(Exception):
    """``send`` could not deliver an entry now (broker down, timeout): retry later.
    Publishers translate their transport's errors into this (OSError and TimeoutError are
    accepted as well); any other exception is a bug and ends the sender."""


class State(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    RETIRED = "retired"


class Priority(enum.IntEnum):
    """Eviction class: lower goes first; CRITICAL is never evicted."""

    BULK = 0
    NORMAL = 1
    CRITICAL = 2


DEFAULT_PRIORITIES: Mapping[str, Priority] = {
    "driving_event": Priority.CRITICAL,
    "clip_evidence": Priority.CRITICAL,
    "dtc_report": Priority.NORMAL,
    "fl_update_ref": Priority.NORMAL,
    "sensor_summary": Priority.BULK,
    "map_observation": Priority.BULK,
}


@dataclass(frozen=True, slots=True)
class Entry:
    id: bytes
    seq: int  # the outbox's insertion order
    kind: str
    priority: Priority
    cell: str
    payload: bytes  # empty once retired
    created: float  # UTC seconds
    attempts: int
    last_sent: float | None
    state: State
    receipt: bytes | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A ledger's proof that ``attestation_id`` is in the block at ``height`` of ``cell``'s
    chain. The light client builds it only after verifying the block header's commit
    certificate and ``proof`` against the header's root, then calls
    ``outbox.retire(receipt.attestation_id, receipt.to_cbor())``."""

    attestation_id: bytes
    cell: str
    height: int
    proof: InclusionProof

    def to_cbor(self) -> bytes:
        return cbor.dumps([self.attestation_id, self.cell, self.height, cbor.loads(self.proof.to_cbor())])

    @classmethod
    def from_cbor(cls, data: bytes) -> Receipt:
        item: Any = cbor.loads(data)
        if not isinstance(item, list) or len(item) != 4:
            raise CborError("receipt: expected an array [attestation_id, cell, height, proof]")
        aid, cell, height, proof = item
        if not isinstance(aid, bytes) or len(aid) != 32 or not isinstance(cell, str) or type(height) is not int:
            raise CborError("receipt: expected [bstr .size 32, tstr, uint, proof]")
        return cls(aid, cell, height, InclusionProof.from_cbor(cbor.dumps(proof)))


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    sent: int
    retired: int
    bytes: int
    budget: int
    oldest_created: float | None  # UTC of the oldest undelivered entry
    oldest_age: float | None  # seconds, at the time of the call
    evicted: int
    evicted_by_kind: Mapping[str, int]
    refused: int
    receipts_pruned: int
    unknown_retires: int
    undelivered_by_cell: Mapping[str, int]
    quarantined: str | None = None

    @property
    def undelivered(self) -> int:
        return self.pending + self.sent


_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE CHECK (length(id) = 32),
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    cell TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sent REAL,
    next_due REAL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'retired')),
    receipt BLOB,
    retired_at REAL
);
CREATE INDEX entries_due ON entries (next_due) WHERE next_due IS NOT NULL;
CREATE INDEX entries_evict ON entries (state = 'retired', priority, seq);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""

_COLUMNS = "id, seq, kind, priority, cell, payload, created, attempts, last_sent, state, receipt"


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(
        id=row[0],
        seq=row[1],
        kind=row[2],
        priority=Priority(row[3]),
        cell=row[4],
        payload=row[5],
        created=row[6],
        attempts=row[7],
        last_sent=row[8],
        state=State(row[9]),
        receipt=row[10],
    )


class Outbox:
    """The synchronous core over one SQLite connection; use it from one thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        budget_bytes: int,
        clock: Clock,
        resend_after: float = 30.0,
        resend_max: float = 600.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
        priorities: Mapping[str, Priority] = DEFAULT_PRIORITIES,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        on_corrupt: Literal["quarantine", "raise"] = "quarantine",
    ) -> None:
        if budget_bytes <= ROW_OVERHEAD:
            raise ValueError(f"budget_bytes must be more than {ROW_OVERHEAD}, got {budget_bytes}")
        if not 0 < resend_after <= resend_max:
            raise ValueError(f"need 0 < resend_after <= resend_max, got {resend_after}, {resend_max}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = Path(path)
        self.budget = budget_bytes
        self.clock = clock
        self.resend_after = resend_after
        self.resend_max = resend_max
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._priorities = dict(priorities)
        self._synchronous = synchronous
        self.quarantined: Path | None = None
        try:
            self._db = self._connect()
        except OutboxCorrupt as err:
            if on_corrupt == "raise":
                raise
            self.quarantined = self._quarantine(err)
            self._db = self._connect()
        self._used = int(self._db.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0])

    # -- opening -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as err:
            raise OutboxError(f"cannot open the outbox database {self.path}: {err}") from err
        try:
            self._check_and_migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _check_and_migrate(self, db: sqlite3.Connection) -> None:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            result = [r[0] for r in db.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as err:
            raise OutboxCorrupt(f"{self.path}: {err}") from err
        if result != ["ok"]:
            raise OutboxCorrupt(f"{self.path}: integrity check failed: {'; '.join(map(str, result[:3]))}")
        if mode != "wal":
            raise OutboxError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        try:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            db.execute(f"PRAGMA max_page_count={(2 * self.budget + _WAL_LIMIT) // page_size + 16}")
            db.execute("BEGIN IMMEDIATE")
            try:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "schema_version" not in tables:
                    if "entries" in tables:
                        raise OutboxCorrupt(f"{self.path}: entries table without a schema version")
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                    log.info("created outbox %s (schema %d)", self.path, SCHEMA_VERSION)
                else:
                    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
                    version = row[0] if row else None
                    if version is None or version < 1:
                        raise OutboxCorrupt(f"{self.path}: no schema version recorded")
                    if version > SCHEMA_VERSION:
                        raise OutboxError(
                            f"{self.path}: schema version {version} is newer than this agent's {SCHEMA_VERSION}"
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as err:
            raise OutboxCorrupt(f"{self.path}: {err}") from err

    def _quarantine(self, err: OutboxCorrupt) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock.time()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{target}{suffix}"))
        log.error("outbox database is unusable (%s); moved it to %s and started an empty outbox", err, target)
        return target

    # -- helpers -------------------------------------------------------------------------------

    def priority_of(self, kind: str) -> Priority:
        return self._priorities.get(kind, Priority.BULK)

    def _bump(self, name: str, by: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _counters(self) -> dict[str, int]:
        return {name: value for name, value in self._db.execute("SELECT name, value FROM counters")}

    def _txn(self) -> _Txn:
        return _Txn(self._db, self.path)

    def _backoff(self, attempts: int) -> float:
        delay = min(self.resend_max, self.resend_after * 2.0 ** min(attempts - 1, 60))
        return delay * (1.0 - self.jitter * self._rng.random())

    # -- API -----------------------------------------------------------------------------------

    def enqueue(self, data: bytes, *, cell: str, kind: str | None = None) -> bool:
        """Persist ``data`` (durably, before returning) for ``cell``. False when its id is
        already here (pending, sent or retired). Raises OutboxFull (see the budget policy)."""
        if not cell:
            raise ValueError("an entry needs a destination cell")
        if kind is None:
            try:
                kind = decode_attestation(data).kind
            except MalformedError as err:
                raise ValueError(f"not an attestation and no kind given: {err}") from err
        aid = attestation_id(data)
        priority = self.priority_of(kind)
        size = len(data) + ROW_OVERHEAD
        now = self.clock.time()
        try:
            with self._txn():
                freed = 0
                if self._used + size > self.budget:
                    if self._db.execute("SELECT 1 FROM entries WHERE id = ?", (aid,)).fetchone():
                        return False
                    freed = self._make_room(size, priority, kind)
                cur = self._db.execute(
                    "INSERT INTO entries (id, kind, priority, cell, payload, size, created, next_due, state)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT (id) DO NOTHING",
                    (aid, kind, int(priority), cell, data, size, now, now),
                )
                if cur.rowcount == 0:
                    return False
        except OutboxFull as err:
            with self._txn():
                self._bump("refused")
            log.error("%s: refused %s %s", err, kind, aid.hex()[:16])
            raise
        self._used += size - freed
        return True

    def _make_room(self, size: int, priority: Priority, kind: str) -> int:
        """Evict per the policy inside the caller's transaction; the bytes freed."""
        need = self._used + size - self.budget
        ceiling = min(int(priority), int(Priority.NORMAL))
        rows = self._db.execute(
            "SELECT seq, kind, size, state FROM entries"
            " WHERE state = 'retired' OR priority <= ?"
            " ORDER BY state = 'retired' DESC, priority, seq",
            (ceiling,),
        )
        chosen: list[tuple[int, str, int, str]] = []
        freed = 0
        for row in rows:
            if freed >= need:
                break
            chosen.append(row)
            freed += row[2]
        if freed < need or size > self.budget:
            raise OutboxFull(
                f"outbox full ({self._used} of {self.budget} bytes): no room for a {kind} of {size} bytes"
                " without evicting higher-priority entries"
            )
        self._db.executemany("DELETE FROM entries WHERE seq = ?", [(r[0],) for r in chosen])
        pruned = [r for r in chosen if r[3] == State.RETIRED]
        evicted = [r for r in chosen if r[3] != State.RETIRED]
        if pruned:
            self._bump("receipts_pruned", len(pruned))
            log.debug("outbox: pruned %d retired entries to make room", len(pruned))
        if evicted:
            self._bump("evicted", len(evicted))
            kinds: dict[str, int] = {}
            for r in evicted:
                kinds[r[1]] = kinds.get(r[1], 0) + 1
            for k, n in kinds.items():
                self._bump(f"evicted:{k}", n)
            log.warning(
                "outbox full: evicted %d undelivered entries (%s; seq %d..%d) to store a %s",
                len(evicted),
                ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())),
                min(r[0] for r in evicted),
                max(r[0] for r in evicted),
                kind,
            )
        return freed

    def due(self, now: float, limit: int = 64, *, cells: Collection[str] | None = None) -> list[Entry]:
        """Undelivered entries to send now: never sent, or sent and not retired whose backoff
        passed (or whose last send is in the future: the wall clock stepped back). Highest
        priority first, then oldest."""
        clock_back = now + self.resend_max
        sql = f"SELECT {_COLUMNS} FROM entries WHERE (next_due <= ? OR next_due > ?)"
        args: list[Any] = [now, clock_back]
        if cells is not None:
            if not cells:
                return []
            sql += f" AND cell IN ({', '.join('?' * len(cells))})"
            args.extend(cells)
        sql += " ORDER BY priority DESC, seq LIMIT ?"
        args.append(limit)
        return [_entry(r) for r in self._db.execute(sql, args)]

    def next_due(self) -> float | None:
        """The earliest UTC at which an entry becomes due (None: nothing undelivered)."""
        row = self._db.execute("SELECT min(next_due) FROM entries WHERE next_due IS NOT NULL").fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(self, ids: Iterable[bytes], now: float) -> int:
        """Record one more send attempt of each (not retired) id; the number updated."""
        updates = []
        with self._txn():
            for aid in ids:
                row = self._db.execute("SELECT attempts FROM entries WHERE id = ? AND state != 'retired'", (aid,))
                found = row.fetchone()
                if found is None:
                    continue
                attempts = found[0] + 1
                updates.append((attempts, now, now + self._backoff(attempts), aid))
            self._db.executemany(
                "UPDATE entries SET attempts = ?, last_sent = ?, next_due = ?, state = 'sent' WHERE id = ?", updates
            )
        return len(updates)

    def retire(self, aid: bytes, receipt: bytes) -> bool:
        """Retire ``aid`` with its (already verified) receipt: the payload is dropped and it is
        never sent again. True when it was newly retired; retiring twice is a no-op; an id not
        here (never enqueued, or evicted/pruned) is counted in ``unknown_retires``."""
        now = self.clock.time()
        size = len(receipt) + ROW_OVERHEAD
        with self._txn():
            row = self._db.execute("SELECT state, size FROM entries WHERE id = ?", (aid,)).fetchone()
            if row is None:
                self._bump("unknown_retires")
                log.info("outbox: receipt for unknown attestation %s", aid.hex()[:16])
                return False
            if row[0] == State.RETIRED:
                return False
            self._db.execute(
                "UPDATE entries SET state = 'retired', payload = X'', receipt = ?, size = ?, retired_at = ?,"
                " next_due = NULL WHERE id = ?",
                (receipt, size, now, aid),
            )
        self._used += size - row[1]
        return True

    def rebind(self, from_cell: str, to_cell: str) -> int:
        """Handover: entries for ``from_cell`` that were never sent now go to ``to_cell``.
        Entries already sent to ``from_cell`` stay bound to it (they may be on its ledger)."""
        with self._txn():
            cur = self._db.execute(
                "UPDATE entries SET cell = ? WHERE cell = ? AND state = 'pending' AND attempts = 0",
                (to_cell, from_cell),
            )
        if cur.rowcount:
            log.info("outbox: %d unsent entries rebound from cell %s to %s", cur.rowcount, from_cell, to_cell)
        return cur.rowcount

    def get(self, aid: bytes) -> Entry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE id = ?", (aid,)).fetchone()
        return None if row is None else _entry(row)

    def entries_for(self, cell: str) -> list[Entry]:
        """Every entry bound to ``cell`` (retired ones too, until pruned), in insertion order."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE cell = ? ORDER BY seq", (cell,))
        return [_entry(r) for r in rows]

    def stats(self) -> OutboxStats:
        now = self.clock.time()
        by_state = {State.PENDING: 0, State.SENT: 0, State.RETIRED: 0}
        for state, n in self._db.execute("SELECT state, count(*) FROM entries GROUP BY state"):
            by_state[State(state)] = n
        oldest = self._db.execute("SELECT min(created) FROM entries WHERE state != 'retired'").fetchone()[0]
        cells = dict(self._db.execute("SELECT cell, count(*) FROM entries WHERE state != 'retired' GROUP BY cell"))
        counters = self._counters()
        return OutboxStats(
            pending=by_state[State.PENDING],
            sent=by_state[State.SENT],
            retired=by_state[State.RETIRED],
            bytes=self._used,
            budget=self.budget,
            oldest_created=oldest,
            oldest_age=None if oldest is None else max(0.0, now - oldest),
            evicted=counters.get("evicted", 0),
            evicted_by_kind={k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("evicted:")},
            refused=counters.get("refused", 0),
            receipts_pruned=counters.get("receipts_pruned", 0),
            unknown_retires=counters.get("unknown_retires", 0),
            undelivered_by_cell=cells,
            quarantined=str(self.quarantined) if self.quarantined else None,
        )

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            log.warning("outbox checkpoint on close failed: %s", err)
        self._db.close()


class _Txn:
    """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on error); SQLite errors become OutboxError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise OutboxError(f"outbox {self._path}: {err}") from err

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        except sqlite3.Error as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if exc_type is None:
                raise OutboxError(f"outbox {self._path}: commit failed: {err}") from err
        if exc is not None and isinstance(exc, sqlite3.Error):
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise OutboxFull(f"outbox {self._path}: {exc}") from exc
            raise OutboxError(f"outbox {self._path}: {exc}") from exc


_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncOutbox:
    """The agent's facade: every call runs ``Outbox`` in one dedicated worker thread."""

    def __init__(self, executor: ThreadPoolExecutor, outbox: Outbox) -> None:
        self._executor = executor
        self.outbox = outbox
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **kwargs: Any) -> AsyncOutbox:
        """Open (integrity check and all) in the worker thread; ``kwargs`` go to ``Outbox``."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            outbox = await asyncio.get_running_loop().run_in_executor(executor, lambda: Outbox(path, **kwargs))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, outbox)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def add_listener(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called (on the event loop) after each new enqueue."""
        self._listeners.append(wake)

    def remove_listener(self, wake: Callable[[], None]) -> None:
        if wake in self._listeners:
            self._listeners.remove(wake)

    @property
    def clock(self) -> Clock:
        return self.outbox.clock

    @property
    def quarantined(self) -> Path | None:
        return self.outbox.quarantined

    async def enqueue(self, data: bytes, *, cell: str, kind: str | None = None) -> bool:
        new = await self._run(self.outbox.enqueue, data, cell=cell, kind=kind)
        if new:
            for wake in self._listeners:
                wake()
        return new

    async def due(self, now: float, limit: int = 64, *, cells: Collection[str] | None = None) -> list[Entry]:
        return await self._run(self.outbox.due, now, limit, cells=cells)

    async def next_due(self) -> float | None:
        return await self._run(self.outbox.next_due)

    async def mark_sent(self, ids: Iterable[bytes], now: float) -> int:
        return await self._run(self.outbox.mark_sent, list(ids), now)

    async def retire(self, aid: bytes, receipt: bytes) -> bool:
        return await self._run(self.outbox.retire, aid, receipt)

    async def retire_receipt(self, receipt: Receipt) -> bool:
        """What the light client calls with a receipt it verified."""
        return await self.retire(receipt.attestation_id, receipt.to_cbor())

    async def rebind(self, from_cell: str, to_cell: str) -> int:
        return await self._run(self.outbox.rebind, from_cell, to_cell)

    async def get(self, aid: bytes) -> Entry | None:
        return await self._run(self.outbox.get, aid)

    async def stats(self) -> OutboxStats:
        return await self._run(self.outbox.stats)

    async def close(self) -> None:
        try:
            await self._run(self.outbox.close)
        finally:
            self._executor.shutdown(wait=True)


Send = Callable[[Entry], Awaitable[None]]


@dataclass
class _SenderState:
    sent: int = 0
    failures: int = 0  # consecutive
    last_error: str | None = None
    retry_at: float | None = None
    stats: OutboxStats | None = None
    stats_at: float = field(default=float("-inf"))


class OutboxSender:
    """Sends due entries through ``send`` (the MQTT publisher), marks them sent, backs off
    (capped, jittered) while sending fails, and wakes on new enqueues. Health is reported to
    ``health`` under ``name``: ok, or degraded with the reason."""

    def __init__(
        self,
        outbox: AsyncOutbox,
        send: Send,
        clock: Clock,
        *,
        health: HealthRegistry | None = None,
        name: str = "outbox",
        batch: int = 32,
        idle_poll: float = 30.0,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
        stale_after: float = 600.0,
        stats_every: float = 5.0,
        cells: Callable[[], Collection[str] | None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self._send = send
        self.clock = clock
        self.health = health
        self.name = name
        self.batch = batch
        self.idle_poll = idle_poll
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.stale_after = stale_after
        self.stats_every = stats_every
        self._cells = cells
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self.state = _SenderState()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.outbox.add_listener(self.wake)
        try:
            await self._refresh(force=True)
            while True:
                await self._step()
        finally:
            self.outbox.remove_listener(self.wake)

    async def _step(self) -> None:
        self._wake.clear()
        entries = await self.outbox.due(self.clock.time(), self.batch, cells=self._cells())
        if not entries:
            await self._refresh()
            nd = await self.outbox.next_due()
            delay = self.idle_poll if nd is None else min(self.idle_poll, max(0.0, nd - self.clock.time()))
            await sleep_until_or(self.clock, self.clock.monotonic() + delay, self._wake)
            return
        delivered: list[bytes] = []
        error: BaseException | None = None
        for entry in entries:
            try:
                await self._send(entry)
            except (SendError, OSError, TimeoutError) as err:
                error = err
                break
            delivered.append(entry.id)
        if delivered:
            await self.outbox.mark_sent(delivered, self.clock.time())
            self.state.sent += len(delivered)
        if error is None:
            if self.state.failures:
                log.info("outbox: sending works again after %d failed rounds", self.state.failures)
            self.state.failures = 0
            self.state.last_error = None
            self.state.retry_at = None
            await self._refresh()
            return
        self.state.failures += 1
        self.state.last_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        delay = min(self.retry_max, self.retry_min * 2.0 ** min(self.state.failures - 1, 60))
        delay *= 0.5 + 0.5 * self._rng.random()
        self.state.retry_at = self.clock.monotonic() + delay
        log.log(
            logging.WARNING if self.state.failures == 1 else logging.DEBUG,
            "outbox: send failed (%s); retry in %.1fs",
            self.state.last_error,
            delay,
        )
        await self._refresh(force=True)
        await self.clock.sleep(delay)  # not woken by enqueues: do not hammer a broker that is down

    async def _refresh(self, *, force: bool = False) -> None:
        now = self.clock.monotonic()
        if force or now - self.state.stats_at >= self.stats_every:
            self.state.stats = await self.outbox.stats()
            self.state.stats_at = now
        if self.health is not None:
            status, reason = self.status()
            self.health.set(self.name, status, reason)

    def status(self) -> tuple[Status, str]:
        """(ok | degraded, reason) from the last stats and send results."""
        s = self.state.stats
        pending = f"{s.undelivered} entries pending" if s else "pending unknown"
        age = s.oldest_age if s else None
        age_txt = f", oldest {_ago(age)}" if age is not None and s and s.undelivered else ""
        problems = []
        if s is not None and s.quarantined:
            problems.append(f"database was corrupt, moved to {s.quarantined}; started empty")
        if self.state.last_error is not None:
            problems.append(f"send failing: {self.state.last_error} ({self.state.failures}x)")
        if s is not None and s.refused:
            problems.append(f"full: {s.refused} entries refused")
        if s is not None and age is not None and s.undelivered and age > self.stale_after:
            problems.append(pending + age_txt)
        if problems:
            if pending not in problems[-1]:
                problems.append(pending + age_txt)
            return Status.DEGRADED, "; ".join(problems)
        return Status.OK, pending + age_txt


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
