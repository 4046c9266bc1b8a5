"""The mempool: transactions admitted by the app's ``check_tx``, waiting for a block. Pure, bounded.

* **Check once.** ``add`` answers a tx id it has seen -- in the pool, rejected recently, or
  committed recently (``seen_size`` ids, LRU) -- without calling ``check`` again. The app keeps
  its own signature cache too, so a tx is verified once per process either way. Transient
  rejections (``ValidityError``: e.g. a time ahead of now) are not remembered, so the sender's
  retry is checked again.
* **Bounded.** At most ``max_txs`` transactions and ``max_bytes`` bytes; a single tx of more than
  ``max_tx_bytes`` is rejected. **When full, new transactions are refused (``FULL``) and the
  pooled ones kept**: older transactions keep their place (FIFO fairness), and the sender's
  outbox retries later. A FULL answer is not remembered.
* **FIFO.** ``reap`` returns the oldest transactions first, without removing them; it stops at
  the first one that does not fit ``max_bytes`` (so the order is never changed).
* ``update(committed, recheck)`` after each commit: committed txs leave the pool (and are
  remembered as COMMITTED); ``recheck`` (e.g. ``lambda tx: app.check_tx(tx, now=...)``, cheap
  thanks to the app's signature cache) drops txs the new state made invalid.

The node builds it as ``Mempool(lambda tx: app.check_tx(tx, now=clock()))``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from .app import AlreadyCommitted, TxInfo
from .errors import LedgerError, ValidityError

__all__ = ["AddResult", "AddStatus", "Mempool"]


class AddStatus(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"  # already in the pool
    REJECTED = "rejected"  # check failed (reason says why)
    FULL = "full"  # the pool is at its limits: retry later
    COMMITTED = "committed"  # already on the ledger


@dataclass(frozen=True)
class AddResult:
    status: AddStatus
    tx_id: bytes
    reason: str = ""


class Mempool:
    """See the module docstring. Not thread-safe: one owner task."""

    def __init__(
        self,
        check: Callable[[bytes], TxInfo],
        *,
        max_txs: int = 20_000,
        max_bytes: int = 16 << 20,
        max_tx_bytes: int = 64 << 10,
        seen_size: int = 100_000,
    ) -> None:
        if min(max_txs, max_bytes, max_tx_bytes, seen_size) < 1:
            raise ValueError("mempool limits must be positive")
        self._check = check
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.max_tx_bytes = max_tx_bytes
        self._seen_size = seen_size
        self._pool: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        #: tx id -> (COMMITTED or REJECTED, reason): answers without re-checking
        self._seen: OrderedDict[bytes, tuple[AddStatus, str]] = OrderedDict()
        self._stats = {s.value: 0 for s in AddStatus}

    def __len__(self) -> int:
        return len(self._pool)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._pool

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        """Counts of add() answers by status, plus the current size."""
        return {**self._stats, "size": len(self._pool), "bytes": self._bytes}

    def _answer(self, status: AddStatus, tid: bytes, reason: str = "") -> AddResult:
        self._stats[status.value] += 1
        return AddResult(status, tid, reason)

    def _remember(self, tid: bytes, status: AddStatus, reason: str) -> None:
        seen = self._seen
        seen[tid] = (status, reason)
        seen.move_to_end(tid)
        while len(seen) > self._seen_size:
            seen.popitem(last=False)

    def add(self, tx: bytes) -> AddResult:
        tx = bytes(tx)
        tid = hashlib.sha256(tx).digest()
        if tid in self._pool:
            return self._answer(AddStatus.DUPLICATE, tid)
        seen = self._seen.get(tid)
        if seen is not None:
            return self._answer(seen[0], tid, seen[1])
        if len(tx) > self.max_tx_bytes:
            reason = f"{len(tx)} bytes, at most {self.max_tx_bytes}"
            self._remember(tid, AddStatus.REJECTED, reason)
            return self._answer(AddStatus.REJECTED, tid, reason)
        if len(self._pool) >= self.max_txs or self._bytes + len(tx) > self.max_bytes:
            return self._answer(AddStatus.FULL, tid, f"{len(self._pool)} txs, {self._bytes} bytes")
        try:
            self._check(tx)
        except AlreadyCommitted as err:
            self._remember(tid, AddStatus.COMMITTED, str(err))
            return self._answer(AddStatus.COMMITTED, tid, str(err))
        except ValidityError as err:  # transient: not remembered
            return self._answer(AddStatus.REJECTED, tid, str(err))
        except LedgerError as err:
            self._remember(tid, AddStatus.REJECTED, str(err))
            return self._answer(AddStatus.REJECTED, tid, str(err))
        self._pool[tid] = tx
        self._bytes += len(tx)
        return self._answer(AddStatus.ADDED, tid)

    def reap(self, *, max_txs: int, max_bytes: int) -> list[bytes]:
        """The oldest txs, at most ``max_txs`` and ``max_bytes`` in all (not removed)."""
        out: list[bytes] = []
        total = 0
        for tx in self._pool.values():
            if len(out) >= max_txs or total + len(tx) > max_bytes:
                break
            out.append(tx)
            total += len(tx)
        return out

    def _drop(self, tid: bytes) -> None:
        tx = self._pool.pop(tid, None)
        if tx is not None:
            self._bytes -= len(tx)

    def update(self, committed: Iterable[bytes], recheck: Callable[[bytes], object] | None = None) -> None:
        """Remove committed txs (remembered as COMMITTED); with ``recheck``, drop the pooled txs
        it now rejects (a ``LedgerError``)."""
        for tx in committed:
            tid = hashlib.sha256(tx).digest()
            self._drop(tid)
            self._remember(tid, AddStatus.COMMITTED, "committed")
        if recheck is None:
            return
        for tid, tx in list(self._pool.items()):
            try:
                recheck(tx)
            except AlreadyCommitted as err:
                self._drop(tid)
                self._remember(tid, AddStatus.COMMITTED, str(err))
            except ValidityError:
                self._drop(tid)
            except LedgerError as err:
                self._drop(tid)
                self._remember(tid, AddStatus.REJECTED, str(err))
