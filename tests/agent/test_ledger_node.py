"""The RSU ledger node (agent/ledger_node.py) with real parts -- block store (SQLite), WAL files,
the ledger app, the mempool, Ed25519 validator keys -- on an in-process network (``LocalHub``).
Processes over a real Mosquitto broker: tests/integration/test_rsu_cell.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.blockstore import BlockStore
from agent.ledger_node import LedgerNode, LedgerNodeConfig, LocalHub, decode_announce, unseal
from agent.topics import MessageKind
from drivers.clock import SystemClock
from ledger_lite import consensus as C
from ledger_lite.attestation import AttestationBuilder, TimeSource, attestation_id
from ledger_lite.block import tx_receipt
from ledger_lite.didkey import did_key
from ledger_lite.errors import LedgerError
from ledger_lite.genesis import Genesis, make_test_genesis
from ledger_lite.keys import SigningKey
from ledger_lite.light import LightBlock, LightClient

FAST = C.TimeoutConfig(propose=(1.0, 0.5), prevote=(0.4, 0.2), precommit=(0.4, 0.2))
EVENT = {
    "event": "harsh_brake",
    "severity": 0.72,
    "duration": 1.4,
    "speed": 13.9,
    "accel_long": -6.1,
    "accel_lat": 0.35,
    "yaw_rate": -12.5,
    "confidence": 0.93,
}


def attestations(n_obus: int, per_obu: int, *, seed: int = 0) -> list[bytes]:
    out = []
    for i in range(n_obus):
        key = SigningKey.from_private_bytes("Ed25519", bytes([seed + 1, i + 1]) * 16)
        b = AttestationBuilder(key, did_key(key.public))
        out += [b.build("driving_event", EVENT, time=time.time(), time_source=TimeSource.GNSS) for _ in range(per_obu)]
    return out


class Cell:
    def __init__(self, tmp: Path, n: int = 4) -> None:
        self.genesis, keys, self.authority = make_test_genesis(n, genesis_time_ms=int(time.time() * 1000) - 60_000)
        self.keys = {did_key(k.public): k for k in keys}
        self.dids = sorted(self.keys)
        self.tmp = tmp
        self.hub = LocalHub()
        self.nodes: dict[str, LedgerNode] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def name(self, did: str) -> str:
        return f"rsu{self.dids.index(did)}"

    async def start(self, did: str) -> LedgerNode:
        name = self.name(did)
        cfg = LedgerNodeConfig(data_dir=self.tmp / name, block_interval=0.05, timeouts=FAST, rebroadcast=1.0)
        node = LedgerNode(cfg, self.genesis, self.keys[did], did, self.hub.attach(name), clock=SystemClock())
        await node.start()
        self.nodes[did] = node
        self.tasks[did] = asyncio.create_task(node.run(), name=name)
        return node

    async def stop(self, did: str) -> None:
        task = self.tasks.pop(did)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.nodes.pop(did).close()
        self.hub.queues.pop(self.name(did), None)

    def submit(self, txs: list[bytes]) -> None:
        for tx in txs:
            self.hub.deliver(MessageKind.TX, "obu", tx, None)

    async def wait(self, pred, limit: float = 20.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + limit
        while not pred():
            if time.monotonic() > deadline:
                heights = {self.name(d): n.height for d, n in self.nodes.items()}
                pytest.fail(f"timed out waiting for {what}: heights {heights}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for did in list(self.tasks):
            await self.stop(did)


@pytest.fixture
async def cell(tmp_path: Path) -> AsyncIterator[Cell]:
    c = Cell(tmp_path)
    try:
        yield c
    finally:
        await c.close()


class LightFollower:
    """An OBU's light client fed by the cell's block announcements (``.../block``)."""

    def __init__(self, cell: Cell) -> None:
        self.transport = cell.hub.attach("obu-light")
        self.client = LightClient(cell.genesis.validators, genesis_time_ms=cell.genesis.genesis_time_ms)
        self.errors: list[str] = []

    async def run(self) -> None:
        async for kind, _sender, payload in self.transport.incoming():
            if kind is not MessageKind.BLOCK:
                continue
            header, cert, nxt = decode_announce(unseal(payload)[1])
            if header.height != self.client.height + 1:
                continue  # a repeat, or one the sequential client cannot take yet
            try:
                self.client.verify(LightBlock(header, cert, self.client.trusted_validators, nxt), now=time.time())
            except LedgerError as err:
                self.errors.append(f"{header.height}: {err}")


def chain(path: Path) -> list[bytes]:
    with BlockStore(path) as store:
        return [store.get(h).block_id() for h in range(1, store.height() + 1)]  # type: ignore[union-attr]


async def test_four_nodes_commit_attestations_and_agree(cell: Cell) -> None:
    for did in cell.dids:
        await cell.start(did)
    txs = attestations(5, 20)
    cell.submit(txs)
    ids = {attestation_id(tx) for tx in txs}
    nodes = list(cell.nodes.values())
    await cell.wait(
        lambda: all(all(n.app.receipt_location(i) is not None for i in ids) for n in nodes), what="all txs committed"
    )
    top = min(n.height for n in nodes)
    await cell.wait(lambda: all(n.height >= top + 1 for n in nodes), what="one more height")
    await cell.close()
    chains = [chain(cell.tmp / cell.name(d) / "blocks.db") for d in cell.dids]
    common = min(map(len, chains))
    assert common >= 2
    assert all(c[:common] == chains[0][:common] for c in chains)  # agreement, height by height
    with BlockStore(cell.tmp / "rsu0" / "blocks.db") as store:
        for i in ids:
            assert store.receipt(i) is not None
        assert store.verify_chain(cell.genesis.validators) == store.height()


async def test_a_node_partitioned_away_and_back_catches_up_by_sync(cell: Cell) -> None:
    for did in cell.dids:
        await cell.start(did)
    nodes = list(cell.nodes.values())
    await cell.wait(lambda: all(n.height >= 2 for n in nodes), what="height 2")
    lagger = cell.nodes[cell.dids[3]]
    cell.hub.cut_off.add("rsu3")
    start = max(n.height for n in nodes)
    others = [n for n in nodes if n is not lagger]
    await cell.wait(lambda: all(n.height >= start + 5 for n in others), what="3 of 4 keep committing")
    assert lagger.height <= start + 1
    cell.hub.cut_off.discard("rsu3")
    target = max(n.height for n in others)
    await cell.wait(lambda: lagger.height >= target, what="the lagger syncs")
    assert lagger.counters.synced_blocks >= 1
    # and it votes again: its precommit is in a later certificate
    await cell.wait(lambda: lagger.height >= target + 3, what="the lagger back in consensus")
    me = cell.dids[3]
    await cell.wait(
        lambda: any(me in n.status()["last_commit_signers"] for n in others),
        what="the lagger's precommit in a certificate",
    )


async def test_restart_from_wal_and_store(cell: Cell) -> None:
    for did in cell.dids:
        await cell.start(did)
    cell.submit(attestations(2, 10))
    nodes = list(cell.nodes.values())
    await cell.wait(lambda: all(n.height >= 3 for n in nodes), what="height 3")
    victim = cell.dids[1]
    before = cell.nodes[victim].height
    app_hash = cell.nodes[victim].app.app_hash
    await cell.stop(victim)
    node = await cell.start(victim)
    assert node.height >= before  # the block store and app were rebuilt...
    assert node.height > before or node.app.app_hash == app_hash  # ...to the same state
    others = [n for d, n in cell.nodes.items() if d != victim]
    top = max(n.height for n in others)
    await cell.wait(lambda: node.height >= top + 2, what="the restarted node follows")
    assert not any(n.counters.evidence for n in cell.nodes.values())  # nobody saw it equivocate


def test_genesis_roundtrip_for_processes(tmp_path: Path) -> None:
    g, _, _ = make_test_genesis(4)
    assert Genesis.from_json(g.to_json()).validators.hash() == g.validators.hash()


async def test_validator_set_change_by_authority_takes_effect_two_heights_later(cell: Cell) -> None:
    """An authority-signed update adds a fifth RSU (running as a follower until then) and removes
    one of the four: from height H + 2 on, the newcomer's precommits are in the certificates and
    the removed node's are not, on every node; blocks keep verifying against the per-height sets."""
    from ledger_lite.txs import build_validator_update

    newcomer_key = SigningKey.from_private_bytes("Ed25519", b"\x77" * 32)
    newcomer = did_key(newcomer_key.public)
    cell.keys[newcomer] = newcomer_key
    cell.dids.append(newcomer)
    light = LightFollower(cell)
    for did in cell.dids:
        await cell.start(did)
    follow = asyncio.create_task(light.run())
    nodes = list(cell.nodes.values())
    await cell.wait(lambda: all(n.height >= 2 for n in nodes), what="height 2")
    leaving = cell.dids[0]
    update = build_validator_update(
        cell.authority,
        did_key(cell.authority.public),
        chain_id=cell.genesis.chain_id,
        nonce=1,
        changes=[(newcomer, 1), (leaving, 0)],
    )
    cell.submit([update])
    uid = attestation_id(update)
    await cell.wait(lambda: all(n.app.receipt_location(uid) is not None for n in nodes), what="update committed")
    at = nodes[0].app.receipt_location(uid)
    assert at is not None
    h_update = at[0]
    effective = h_update + 2
    await cell.wait(lambda: all(n.height >= effective + 2 for n in nodes), what="two heights past the change")
    for n in nodes:
        assert newcomer in n.app.validators_at(effective) and leaving not in n.app.validators_at(effective)
        assert newcomer not in n.app.validators_at(effective - 1)
    node = nodes[1]
    vset_old, vset_new = node.app.validators_at(effective - 1), node.app.validators_at(effective)
    _, cert_new = await node.stored(effective)
    _, cert_old = await node.stored(effective - 1)
    assert cert_new is not None and cert_old is not None
    signers_new = {vset_new.validators[i].did for i, _ in cert_new.signatures}
    assert leaving not in signers_new
    signers_old = {vset_old.validators[i].did for i, _ in cert_old.signatures}
    assert newcomer not in signers_old
    await cell.wait(
        lambda: any(newcomer in n.status()["last_commit_signers"] for n in nodes), what="the newcomer signs"
    )
    assert node.status()["is_validator"]
    assert await node.verify_stored_chain() == node.height
    # an OBU's light client followed the announcements through the change, and holds a receipt
    await cell.wait(lambda: light.client.height >= effective + 1, what="the light client past the change")
    follow.cancel()
    assert not light.errors, light.errors[:3]
    assert newcomer in light.client.trusted_validators and leaving not in light.client.trusted_validators
    block, _ = await node.stored(h_update)
    assert block is not None
    _, proof = tx_receipt(block, block.txs.index(update))
    receipt = light.client.verify_receipt(update, h_update, proof)
    assert receipt.tx_id == uid and receipt.height == h_update


async def test_garbage_on_every_ledger_topic_is_counted_and_the_cell_goes_on(cell: Cell) -> None:
    for did in cell.dids:
        await cell.start(did)
    nodes = list(cell.nodes.values())
    await cell.wait(lambda: all(n.height >= 2 for n in nodes), what="height 2")
    junk = [b"", b"\xff\x00", b"\x83\x01\x02\x03", b"\xa1\x61a\x01", b"x" * 5000]
    for kind in (MessageKind.TX, MessageKind.CONSENSUS, MessageKind.BLOCK, MessageKind.SYNC_REQUEST):
        for payload in junk:
            cell.hub.deliver(kind, "intruder", payload, None)
    for payload in junk:
        cell.hub.deliver(MessageKind.SYNC_RESPONSE, "intruder", payload, "rsu0")
    top = max(n.height for n in nodes)
    await cell.wait(lambda: all(n.height >= top + 3 for n in nodes), what="commits after the garbage")
    for n in nodes:
        assert n.counters.malformed >= 3 * len(junk), n.counters
        assert n.counters.txs_refused >= 1
