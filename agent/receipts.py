"""Ledger receipts: RSUs send them, OBUs verify them with their light client and retire the
outbox entries they prove.

Wire format (``acc/v1/cell/{cell}/receipt/{issuer tag}``, deterministic CBOR)::

    [height: uint, [* [attestation_id: bstr .size 32, index: uint, size: uint, path: [* bstr]]]]

A receipt needs no signature of its own: the OBU accepts it only if the Merkle path leads from
the attestation bytes it holds (its outbox) to the ``tx_root`` of a header its light client
verified by a commit certificate of the cell's validators.

OBU side, ``ReceiptService`` (one per cell followed):

* follows the cell's block announcements (``.../block``, retained) with a ``LightClient`` started
  from the cell's genesis validator set -- sequentially: an announcement ahead of the trusted
  height is buffered and the missing headers are asked for (``sync/req/{node}`` with
  ``[from, to, "headers"]``; RSUs answer on ``sync/resp/{node}`` with announcements);
* verifies every receipt for this issuer against a verified header and retires the entry
  (``AsyncOutbox.retire_receipt``); a receipt for a height not verified yet waits (bounded) until
  the light client gets there;
* persists the light client's state (``light-<cell>.cbor`` in its state dir, atomically, at most
  every ``save_every`` seconds) so a restart resumes from the trusted header, not from genesis;
* reports health ``ledger.<cell>``: ok while it follows, degraded with the reason otherwise
  (trusting period expired -> re-provision; conflicting headers -> evidence kept).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hal.interfaces import Clock
from ledger_lite import cbor
from ledger_lite.block import Block, CommitCertificate, Header
from ledger_lite.errors import LedgerError, MalformedError
from ledger_lite.genesis import Genesis
from ledger_lite.keys import SigningKey
from ledger_lite.light import (
    ConflictingHeadersError,
    ExpiredTrustError,
    LightBlock,
    LightClient,
    UnverifiedHeightError,
)
from ledger_lite.merkle import InclusionProof, MerkleTree
from ledger_lite.validators import ValidatorSet

from .health import HealthRegistry
from .outbox import AsyncOutbox, Receipt, State
from .topics import MessageKind

__all__ = ["ReceiptService", "decode_receipts", "encode_receipts", "receipts_for_block"]

log = logging.getLogger(__name__)

#: receipts waiting for a header, at most (the outbox resends what is dropped here)
MAX_PENDING: Final = 20_000
#: announcements ahead of the trusted height kept while the gap is being filled
MAX_AHEAD: Final = 4096
#: headers asked for per request
HEADER_BATCH: Final = 128


def encode_receipts(height: int, items: list[tuple[bytes, InclusionProof]]) -> bytes:
    return cbor.dumps([height, [[aid, p.leaf_index, p.tree_size, list(p.path)] for aid, p in items]])


def decode_receipts(data: bytes) -> tuple[int, list[tuple[bytes, InclusionProof]]]:
    item = cbor.loads(data)
    if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], list)):
        raise MalformedError("receipts: expected [height: uint, [* [id, index, size, path]]]")
    height, rows = item
    out = []
    for i, row in enumerate(rows):
        if not (
            isinstance(row, list)
            and len(row) == 4
            and isinstance(row[0], bytes)
            and len(row[0]) == 32
            and type(row[1]) is int
            and type(row[2]) is int
            and isinstance(row[3], list)
            and all(isinstance(h, bytes) and len(h) == 32 for h in row[3])
        ):
            raise MalformedError(f"receipts[{i}]: expected [id: bstr .size 32, index, size, [* bstr .size 32]]")
        try:
            proof = InclusionProof(row[1], row[2], tuple(row[3]))
        except (ValueError, LedgerError) as err:
            raise MalformedError(f"receipts[{i}]: {err}") from err
        out.append((row[0], proof))
    return height, out


def receipts_for_block(block: Block, wanted: dict[bytes, int] | None = None) -> list[tuple[bytes, InclusionProof]]:
    """(attestation id, inclusion proof) for the txs of ``block`` (only ``wanted`` ids -> index,
    when given), with one Merkle tree for the whole block."""
    from ledger_lite.attestation import attestation_id

    tree = MerkleTree(block.txs)
    if wanted is None:
        return [(attestation_id(tx), tree.prove(i)) for i, tx in enumerate(block.txs)]
    return [(aid, tree.prove(i)) for aid, i in wanted.items()]


class UnknownSenderError(LedgerError):
    """A ledger payload signed by a key that is not a validator of the cell."""


@dataclass
class _Counters:
    headers_verified: int = 0
    header_requests: int = 0
    announcements: int = 0
    receipts_heard: int = 0
    retired: int = 0
    already_retired: int = 0
    unknown: int = 0
    bad_receipts: int = 0
    pending_dropped: int = 0
    retired_by_back_link: int = 0
    rejected_headers: int = 0
    malformed: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)


class ReceiptService:
    def __init__(
        self,
        *,
        cell: str,
        genesis: Genesis,
        outbox: AsyncOutbox,
        transport: Any,  # agent.ledger_node.Transport: send(kind, payload, to=) / incoming()
        clock: Clock,
        health: HealthRegistry | None = None,
        state_dir: Path | None = None,
        trusting_period: float = 14 * 86400.0,
        save_every: float = 5.0,
        key: SigningKey | None = None,
        did: str = "",
    ) -> None:
        #: the OBU's device key signs its header requests (RSUs answer only signed requests)
        self.key, self.did = key, did
        self.cell = cell
        self.genesis = genesis
        self.outbox = outbox
        self.transport = transport
        self.clock = clock
        self.health = health
        self.health_name = f"ledger.{cell}"
        self.state_path = None if state_dir is None else state_dir / f"light-{cell}.cbor"
        self.save_every = save_every
        self.client = LightClient(
            genesis.validators, trusting_period=trusting_period, genesis_time_ms=genesis.genesis_time_ms, window=4096
        )
        self.counters = _Counters()
        self._ahead: OrderedDict[int, tuple[Header, CommitCertificate, ValidatorSet | None]] = OrderedDict()
        self._pending: dict[int, list[tuple[bytes, InclusionProof]]] = {}
        self._pending_count = 0
        #: receipts older than the headers held, their headers linked backwards (see _verify_old)
        self._old: dict[int, list[tuple[bytes, InclusionProof, bytes]]] = {}
        self._below: dict[int, Header] = {}
        self._back: dict[int, Header] = {}
        self._asked_mono = -1e9
        self._dirty = False
        self._saved_mono = 0.0
        self.problem = ""

    # --- lifecycle ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Resume from the saved light-client state, if any (a bad file is kept aside, not trusted)."""
        path = self.state_path
        if path is None or not path.exists():
            return
        data = await asyncio.to_thread(path.read_bytes)
        try:
            client = LightClient.from_state(data)
        except LedgerError as err:
            bad = path.with_suffix(".bad")
            await asyncio.to_thread(path.replace, bad)
            log.error(
                "receipts: light client state %s unusable (%s); moved to %s, starting from genesis", path, err, bad
            )
            return
        if client.trusted is not None and client.trusted.chain_id != self.genesis.chain_id:
            log.error(
                "receipts: %s is for chain %s, not %s; ignored", path, client.trusted.chain_id, self.genesis.chain_id
            )
            return
        self.client = client
        log.info("receipts: %s light client resumes at height %d", self.cell, client.height)

    async def save(self) -> None:
        path = self.state_path
        if path is None:
            return
        data = self.client.state()

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)

        await asyncio.to_thread(write)
        self._dirty = False
        self._saved_mono = self.clock.monotonic()

    async def run(self) -> None:
        await self.load()
        self._set_health()
        try:
            async for kind, _sender, payload in self.transport.incoming():
                try:
                    if kind in (MessageKind.BLOCK, MessageKind.SYNC_RESPONSE):
                        await self._on_announcement(self._from_validator(payload))
                    elif kind is MessageKind.RECEIPT:
                        await self._on_receipts(self._from_validator(payload))
                except (MalformedError, UnknownSenderError) as err:
                    self.counters.malformed += 1
                    log.info("receipts: %s message refused: %s", kind, err)
                if self._dirty and self.clock.monotonic() - self._saved_mono >= self.save_every:
                    await self.save()
        finally:
            if self._dirty:
                await self.save()

    def _from_validator(self, data: bytes) -> bytes:
        """Unseal a payload signed by a validator of the cell (the trusted set, or the genesis set)."""
        from .ledger_node import unseal

        try:
            did, payload = unseal(data)
        except LedgerError as err:
            raise MalformedError(f"not a sealed ledger payload: {err}") from err
        if did not in self.client.trusted_validators and did not in self.genesis.validators:
            raise UnknownSenderError(f"signed by {did[:40]}..., not a validator of cell {self.cell}")
        return payload

    # --- headers --------------------------------------------------------------------------------

    async def _on_announcement(self, payload: bytes) -> None:
        from .ledger_node import decode_announce

        header, cert, nxt = decode_announce(payload)
        self.counters.announcements += 1
        h = header.height
        if h <= self.client.height:
            if self.client.verified_header(h) is not None:
                await self._verify(header, cert, nxt)  # a different header there is evidence
            elif self._old:
                await self._link_back(header)
            return
        if h > self.client.height + 1:
            if len(self._ahead) < MAX_AHEAD:
                self._ahead[h] = (header, cert, nxt)
            await self._ask_headers(h - 1)
            return
        await self._verify(header, cert, nxt)
        while (nxt_item := self._ahead.pop(self.client.height + 1, None)) is not None:
            if not await self._verify(*nxt_item):
                break
        for stale in [k for k in self._ahead if k <= self.client.height]:
            del self._ahead[stale]

    async def _verify(self, header: Header, cert: CommitCertificate, nxt: ValidatorSet | None) -> bool:
        before = self.client.height
        try:
            self.client.verify(LightBlock(header, cert, self.client.trusted_validators, nxt), now=self.clock.time())
        except ConflictingHeadersError as err:
            self.counters.rejected_headers += 1
            self.problem = f"conflicting headers at height {header.height}: evidence kept"
            log.error("receipts: %s: %s", self.cell, err)
            self._set_health()
            return False
        except ExpiredTrustError as err:
            self.problem = f"trusting period expired: re-provision the cell's trusted header ({err})"
            self._set_health()
            return False
        except LedgerError as err:
            self.counters.rejected_headers += 1
            reason = type(err).__name__
            self.counters.rejects_by_reason[reason] = self.counters.rejects_by_reason.get(reason, 0) + 1
            log.warning("receipts: %s header %d refused: %s", self.cell, header.height, err)
            return False
        if self.client.height == before:
            return True  # the same header again
        self.counters.headers_verified += 1
        self._dirty = True
        if self.problem:
            self.problem = ""
            self._set_health()
        waiting = self._pending.pop(header.height, None)
        if waiting:
            self._pending_count -= len(waiting)
            await self._apply(header.height, waiting)
        return True

    async def _ask_headers(self, upto: int) -> None:
        now = self.clock.monotonic()
        if now - self._asked_mono < 1.0:
            return
        self._asked_mono = now
        lo = self.client.height + 1
        hi = min(upto, lo + HEADER_BATCH - 1)
        self.counters.header_requests += 1
        request = cbor.dumps([lo, hi, "headers"])
        if self.key is None:
            log.warning("receipts: no device key to sign header requests; RSUs will not answer")
            return
        from .ledger_node import seal

        await self.transport.send(MessageKind.SYNC_REQUEST, seal(self.key, self.did, request))

    # --- receipts -------------------------------------------------------------------------------

    async def _on_receipts(self, payload: bytes) -> None:
        height, items = decode_receipts(payload)
        self.counters.receipts_heard += len(items)
        if height > self.client.height:
            if self._pending_count + len(items) > MAX_PENDING:
                self.counters.pending_dropped += len(items)
                return
            self._pending.setdefault(height, []).extend(items)
            self._pending_count += len(items)
            return
        await self._apply(height, items)

    async def _apply(self, height: int, items: list[tuple[bytes, InclusionProof]]) -> None:
        for aid, proof in items:
            entry = await self.outbox.get(aid)
            if entry is None:
                self.counters.unknown += 1
                continue
            if entry.state is State.RETIRED:
                self.counters.already_retired += 1
                continue
            try:
                self.client.verify_receipt(entry.payload, height, proof)
            except UnverifiedHeightError:
                if height < self.client.height:  # older than the headers held (e.g. after a restart)
                    await self._verify_old(height, aid, proof, entry.payload)
                    continue
                self.counters.bad_receipts += 1
                continue
            except LedgerError as err:
                self.counters.bad_receipts += 1
                log.warning("receipts: %s receipt for %s at %d refused: %s", self.cell, aid.hex()[:16], height, err)
                continue
            if await self.outbox.retire_receipt(Receipt(aid, self.cell, height, proof)):
                self.counters.retired += 1

    # --- receipts for heights before the headers held: backward verification ---------------------

    async def _verify_old(self, height: int, aid: bytes, proof: InclusionProof, tx: bytes) -> None:
        """A receipt for a height below the light client's window (it restarted from its saved
        trusted header, or the window moved on): verify the header of that height by hash links
        backwards from a header the client verified (each header names its predecessor's id), then
        the Merkle path against it. The headers are asked for like a forward gap."""
        header = self._back.get(height)
        if header is None:
            if sum(map(len, self._old.values())) < MAX_PENDING:
                self._old.setdefault(height, []).append((aid, proof, tx))
            anchor = self._anchor()
            if anchor is not None and height < anchor:
                await self._ask_range(height, anchor - 1)
            return
        try:
            proof.verify(tx, header.tx_root)
        except LedgerError as err:
            self.counters.bad_receipts += 1
            log.warning("receipts: %s receipt for %s at %d refused: %s", self.cell, aid.hex()[:16], height, err)
            return
        if await self.outbox.retire_receipt(Receipt(aid, self.cell, height, proof)):
            self.counters.retired += 1
            self.counters.retired_by_back_link += 1

    def _anchor(self) -> int | None:
        """The lowest height whose header is trusted: backward-linked, or verified and held."""
        if self._back:
            return min(self._back)
        h = self.client.height
        while h > 0 and self.client.verified_header(h - 1) is not None:
            h -= 1
        return h if h > 0 and self.client.verified_header(h) is not None else None

    def _trusted_at(self, height: int) -> Header | None:
        return self._back.get(height) or self.client.verified_header(height)

    async def _link_back(self, header: Header) -> None:
        """Keep an older header; link every kept header downwards from the anchor by prev ids."""
        if len(self._below) < MAX_AHEAD:
            self._below[header.height] = header
        anchor = self._anchor()
        while anchor is not None and (older := self._below.pop(anchor - 1, None)) is not None:
            above = self._trusted_at(anchor)
            if above is None or older.block_id() != above.prev_block_id:
                self.counters.rejected_headers += 1
                log.warning("receipts: %s header %d does not link to %d; dropped", self.cell, older.height, anchor)
                break
            self._back[older.height] = older
            while len(self._back) > MAX_AHEAD:
                del self._back[max(self._back)]
            anchor = older.height
            waiting = self._old.pop(anchor, [])
            for aid, proof, tx in waiting:
                await self._verify_old(anchor, aid, proof, tx)

    async def _ask_range(self, lo: int, hi: int) -> None:
        now = self.clock.monotonic()
        if now - self._asked_mono < 1.0 or self.key is None:
            return
        self._asked_mono = now
        from .ledger_node import seal

        self.counters.header_requests += 1
        lo = max(lo, hi - HEADER_BATCH + 1)
        await self.transport.send(MessageKind.SYNC_REQUEST, seal(self.key, self.did, cbor.dumps([lo, hi, "headers"])))

    # --- status ---------------------------------------------------------------------------------

    def _set_health(self) -> None:
        if self.health is None:
            return
        if self.problem:
            self.health.degraded(self.health_name, self.problem)
        else:
            self.health.ok(self.health_name, f"{self.genesis.chain_id}: trusted height {self.client.height}")

    def status(self) -> dict[str, Any]:
        trusted = self.client.trusted
        return {
            "cell": self.cell,
            "chain_id": self.genesis.chain_id,
            "trusted_height": self.client.height,
            "trusted_time": None if trusted is None else trusted.time_ms / 1000.0,
            "pending_receipts": self._pending_count,
            "ahead_buffered": len(self._ahead),
            "problem": self.problem,
            "evidence": len(self.client.evidence),
            **{k: v for k, v in vars(self.counters).items()},
        }


class CellReceipts:
    """An OBU's receipt services, one per cell it has attestations in: ``follow(cell, genesis)``
    starts one (idempotent), for the configured cell at start and for each cell it is admitted
    to on a handover. A cell's service keeps running after the OBU left it, so entries sent
    there are still retired by that cell's receipts; beyond ``max_cells`` the oldest stops
    (its unretired entries are resent and answered by receipts when it is followed again)."""

    def __init__(
        self,
        *,
        client: Any,
        dispatcher: Any,
        receipt_tag: str,
        outbox: AsyncOutbox,
        clock: Clock,
        health: HealthRegistry | None,
        state_dir: Path,
        max_cells: int = 4,
        key: SigningKey | None = None,
        did: str = "",
    ) -> None:
        self.key, self.did = key, did
        self.client, self.dispatcher, self.receipt_tag = client, dispatcher, receipt_tag
        self.outbox, self.clock, self.health, self.state_dir = outbox, clock, health, state_dir
        self.max_cells = max_cells
        self.services: OrderedDict[str, ReceiptService] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wanted: asyncio.Queue[tuple[str, Genesis]] = asyncio.Queue()

    def follow(self, cell: str, genesis: Genesis) -> None:
        """Follow ``cell`` (callable from any callback on the loop)."""
        if cell in self.services:
            self.services.move_to_end(cell)
            return
        self._wanted.put_nowait((cell, genesis))

    async def run(self) -> None:
        from .ledger_node import MqttTransport

        try:
            while True:
                cell, genesis = await self._wanted.get()
                if cell in self.services:
                    continue
                transport = MqttTransport(self.client, self.dispatcher, receipt_tag=self.receipt_tag, cell=cell)
                service = ReceiptService(
                    cell=cell,
                    genesis=genesis,
                    outbox=self.outbox,
                    transport=transport,
                    clock=self.clock,
                    health=self.health,
                    state_dir=self.state_dir,
                    key=self.key,
                    did=self.did,
                )
                await transport.subscribe()
                self.services[cell] = service
                self._tasks[cell] = asyncio.get_running_loop().create_task(service.run(), name=f"receipts.{cell}")
                log.info("receipts: following cell %s (%s)", cell, genesis.chain_id)
                while len(self.services) > self.max_cells:
                    old, _ = self.services.popitem(last=False)
                    self._tasks.pop(old).cancel()
                    log.info("receipts: no longer following cell %s", old)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {"role": "obu", "cells": {cell: s.status() for cell, s in self.services.items()}}
