"""Receipts retire an OBU's outbox entries: a 4-RSU cell (real ledger nodes, block stores, WALs)
on the in-process hub, an OBU with a real SQLite outbox, the real ``OutboxSender`` and the
``ReceiptService`` (light client from the cell's genesis). Over Mosquitto with processes:
tests/integration/test_obu_receipts.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.ledger_node import LocalTransport
from agent.outbox import AsyncOutbox, Entry, OutboxSender, State
from agent.receipts import ReceiptService, decode_receipts, encode_receipts
from agent.topics import MessageKind, issuer_tag
from drivers.clock import SystemClock
from ledger_lite.attestation import AttestationBuilder, TimeSource
from ledger_lite.didkey import did_key
from ledger_lite.errors import MalformedError
from ledger_lite.keys import SigningKey
from ledger_lite.merkle import InclusionProof
from tests.agent.test_ledger_node import EVENT, Cell


class Obu:
    def __init__(self, cell: Cell, tmp: Path, name: str = "obu1", seed: int = 9) -> None:
        self.cell = cell
        self.name = name
        self.key = SigningKey.from_private_bytes("Ed25519", bytes([seed]) * 32)
        self.did = did_key(self.key.public)
        self.builder = AttestationBuilder(self.key, self.did)
        self.tmp = tmp
        self.outbox: AsyncOutbox | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.service: ReceiptService | None = None
        self.clock = SystemClock()

    async def start(self) -> None:
        self.outbox = await AsyncOutbox.open(
            self.tmp / "outbox.db", budget_bytes=1 << 22, clock=self.clock, resend_after=1.0, resend_max=2.0
        )
        hub = self.cell.hub
        transport: LocalTransport = hub.attach(self.name, aliases=(issuer_tag(self.did),))

        async def send(entry: Entry) -> None:
            hub.deliver(MessageKind.TX, self.name, entry.payload, None)

        sender = OutboxSender(self.outbox, send, self.clock, retry_min=0.2)
        self.service = ReceiptService(
            cell="test-cell",
            genesis=self.cell.genesis,
            outbox=self.outbox,
            transport=transport,
            clock=self.clock,
            state_dir=self.tmp,
            save_every=0.5,
            key=self.key,
            did=self.did,
        )
        self.tasks = [asyncio.create_task(sender.run()), asyncio.create_task(self.service.run())]

    async def attest(self, n: int) -> None:
        assert self.outbox is not None
        for _ in range(n):
            data = self.builder.build("driving_event", EVENT, time=time.time(), time_source=TimeSource.GNSS)
            await self.outbox.enqueue(data, cell="test-cell")

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.cell.hub.queues.pop(self.name, None)
        if self.outbox is not None:
            await self.outbox.close()
            self.outbox = None

    async def retired(self) -> int:
        assert self.outbox is not None
        return (await self.outbox.stats()).retired


@pytest.fixture
async def cell(tmp_path: Path) -> AsyncIterator[Cell]:
    c = Cell(tmp_path)
    try:
        yield c
    finally:
        await c.close()


async def wait_async(pred, limit: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not await pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_receipts_retire_every_outbox_entry(cell: Cell, tmp_path: Path) -> None:
    for did in cell.dids:
        await cell.start(did)
    obu = Obu(cell, tmp_path / "obu")
    (tmp_path / "obu").mkdir()
    await obu.start()
    try:
        await obu.attest(40)

        async def all_retired() -> bool:
            return await obu.retired() >= 40

        await wait_async(all_retired, 30, "40 receipts")
        assert obu.outbox is not None
        st = await obu.outbox.stats()
        assert st.pending == 0 and st.sent == 0 and st.retired == 40
        svc = obu.service
        assert svc is not None
        assert svc.counters.bad_receipts == 0 and svc.client.height >= 2
        # every retired entry carries a receipt that verifies against the light client's header
        stored = [await obu.outbox.get(aid) for aid in list(svc.client.receipts)[:5]]
        assert all(e is not None and e.state is State.RETIRED and e.receipt for e in stored)
    finally:
        await obu.stop()


async def test_an_obu_that_starts_late_fills_the_header_gap_and_resumes_from_its_saved_state(
    cell: Cell, tmp_path: Path
) -> None:
    for did in cell.dids:
        await cell.start(did)
    nodes = list(cell.nodes.values())
    await cell.wait(lambda: all(n.height >= 6 for n in nodes), what="height 6")
    (tmp_path / "obu").mkdir()
    obu = Obu(cell, tmp_path / "obu")
    await obu.start()
    try:
        svc = obu.service
        assert svc is not None
        await cell.wait(lambda: svc.client.height >= 6, what="the light client fills the gap from genesis")
        assert svc.counters.header_requests >= 1
        await obu.attest(5)

        async def retired5() -> bool:
            return await obu.retired() >= 5

        await wait_async(retired5, 30, "5 receipts")
    finally:
        await obu.stop()
    saved = svc.client.height
    assert (tmp_path / "obu" / "light-test-cell.cbor").exists()
    again = Obu(cell, tmp_path / "obu")
    await again.start()
    try:
        svc2 = again.service
        assert svc2 is not None
        await cell.wait(lambda: svc2.client.height >= saved, what="resumed")
        assert svc2.counters.headers_verified < saved  # it did not start over from genesis
    finally:
        await again.stop()


async def test_a_lost_receipt_comes_again_when_the_outbox_resends(cell: Cell, tmp_path: Path) -> None:
    for did in cell.dids:
        await cell.start(did)
    (tmp_path / "obu").mkdir()
    obu = Obu(cell, tmp_path / "obu")
    await obu.start()
    tag = issuer_tag(obu.did)
    cell.hub.aliases[obu.name].discard(tag)  # receipts are lost on the way
    try:
        await obu.attest(3)
        nodes = list(cell.nodes.values())
        await cell.wait(lambda: all(n.counters.committed_txs >= 3 for n in nodes), what="committed")
        assert await obu.retired() == 0
        cell.hub.aliases[obu.name].add(tag)  # the OBU resends; the RSUs answer with the receipt

        async def retired3() -> bool:
            return await obu.retired() >= 3

        await wait_async(retired3, 30, "receipts after resend")
        assert sum(n.counters.resent_committed for n in nodes) >= 3
    finally:
        await obu.stop()


def test_receipt_wire_format_is_strict() -> None:
    proof = InclusionProof(1, 3, (b"\x01" * 32, b"\x02" * 32))
    data = encode_receipts(7, [(b"\xaa" * 32, proof)])
    assert decode_receipts(data) == (7, [(b"\xaa" * 32, proof)])
    for bad in (b"", b"\x80", encode_receipts(7, [])[:-1], b"\x82\x07\x81\x84\x40\x00\x00\x80"):
        with pytest.raises(MalformedError):
            decode_receipts(bad)


async def test_receipts_older_than_the_resumed_light_client_are_verified_by_back_links(
    cell: Cell, tmp_path: Path
) -> None:
    """Entries committed while their receipts were lost; the OBU restarts from its saved trusted
    header (which holds no older header): the receipts for the old heights that come with the
    resends are checked by hash links backwards from the trusted header, then retire the entries."""
    for did in cell.dids:
        await cell.start(did)
    (tmp_path / "obu").mkdir()
    obu = Obu(cell, tmp_path / "obu")
    await obu.start()
    tag = issuer_tag(obu.did)
    cell.hub.aliases[obu.name].discard(tag)  # receipts are lost
    nodes = list(cell.nodes.values())
    try:
        await obu.attest(3)
        await cell.wait(lambda: all(n.counters.committed_txs >= 3 for n in nodes), what="committed")
        committed_at = max(n.height for n in nodes)
        svc = obu.service
        assert svc is not None
        await cell.wait(lambda: svc.client.height >= committed_at + 3, what="the light client moves on")
    finally:
        await obu.stop()
    again = Obu(cell, tmp_path / "obu")
    await again.start()  # resumes from the saved state, receipts flow again
    try:
        svc2 = again.service
        assert svc2 is not None

        async def retired3() -> bool:
            return await again.retired() >= 3

        await wait_async(retired3, 40, "receipts for old heights")
        assert svc2.counters.retired_by_back_link >= 1 and svc2.counters.bad_receipts == 0
    finally:
        await again.stop()
