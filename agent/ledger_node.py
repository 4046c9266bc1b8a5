"""The RSU's ledger node: the Tendermint core (ledger_lite.consensus) wired to a WAL, the block
store, the ledger app, the mempool and the cell network.

    node = await LedgerNode.open(LedgerNodeConfig(...), genesis, key, transport, clock=clock)
    await node.run()              # until cancelled; node.submit_tx(tx) / node.status() any time
    node.close()

One task (``_consensus_loop``) owns the consensus state and feeds it one input at a time, in this
order for each input: append it to the WAL, ``consensus.step``, then execute the actions in order
-- ``PersistVote`` fsyncs the WAL before the ``Broadcast`` of the same vote goes out, ``Commit``
appends the block and its certificate to the block store (SQLite, ``synchronous=FULL``), applies
it to the app, ends the height in the WAL and only then lets the actions of the next height run
(``RequestValue`` builds on the new app hash). File I/O runs on one worker thread (``_io``) so the
event loop never blocks on fsync and SQLite always sees the same thread.

Transactions arrive on the cell's tx topic, are verified once by the app (``check_tx``) and kept
in the bounded mempool; the proposer reaps up to ``max_block_txs`` of them ``block_interval``
seconds after the previous commit.

Catch-up: consensus messages travel over MQTT, which delivers only to connected subscribers, so
(1) a node re-broadcasts its own signed messages of the current height every ``rebroadcast``
seconds while the height does not move, and (2) a node that sees evidence that it is behind (a
consensus message for a later height, or a block announcement) asks its peers for the blocks
(``sync/req``), verifies each one -- links, validator set, the commit certificate for exactly
that block, the app's validation -- stores and applies it, and restarts consensus at the next
height by itself.

Startup: the app is rebuilt by replaying the stored blocks (signatures are not re-checked: the
blocks are committed and their certificates were verified on the way in; the app hash of every
next header is), then the WAL of the height in progress is replayed through ``step``
(``ledger_lite.wal.recover``), so a node killed at any point never signs anything that conflicts
with what it signed before.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from hal.interfaces import Clock
from ledger_lite import cbor, cose, wire
from ledger_lite import consensus as C
from ledger_lite.app import LedgerApp
from ledger_lite.attestation import kid_for
from ledger_lite.block import Block, CommitCertificate, Header, block_value_id, tx_receipt
from ledger_lite.didkey import resolve
from ledger_lite.errors import GenesisError, LedgerError, MalformedError
from ledger_lite.genesis import Genesis
from ledger_lite.keys import SigningKey
from ledger_lite.mempool import AddResult, AddStatus, Mempool
from ledger_lite.merkle import MerkleTree
from ledger_lite.validators import Validator, ValidatorSet
from ledger_lite.wal import Wal, recover

from . import topics
from .blockstore import BlockStore
from .mqtt import Dispatcher, Message, MqttClient, PeerRejects
from .receipts import encode_receipts
from .topics import MessageKind

__all__ = [
    "seal",
    "unseal",
    "LedgerNode",
    "LedgerNodeConfig",
    "LocalHub",
    "LocalTransport",
    "MqttTransport",
    "Transport",
    "decode_announce",
    "encode_announce",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: blocks sent per sync answer, headers per light-client answer
SYNC_BATCH: Final = 16
HEADER_BATCH: Final = 128
#: inputs waiting for the consensus task; more are dropped (peers re-send)
_QUEUE_MAX: Final = 20_000
#: block validity results kept (consensus asks ``is_valid`` again for every rule evaluation)
_VALID_CACHE: Final = 64


class Transport(Protocol):
    """The cell network as the ledger node sees it: broadcast to the cell (``to=None``) or address
    one node (sync answers); ``incoming`` yields (kind, sending node, payload)."""

    node_id: str

    async def send(self, kind: MessageKind, payload: bytes, *, to: str | None = None) -> None: ...

    def incoming(self) -> AsyncIterator[tuple[MessageKind, str, bytes]]: ...


@dataclass(frozen=True)
class LedgerNodeConfig:
    data_dir: Path
    #: seconds between a commit and the next proposal (more txs per block, fewer blocks)
    block_interval: float = 0.5
    max_block_txs: int = 2000
    max_block_bytes: int = 900_000
    timeouts: C.TimeoutConfig = field(default_factory=C.TimeoutConfig)
    #: re-send own messages of a height that has not moved for this long, seconds
    rebroadcast: float = 2.0
    #: mempool bounds
    mempool_txs: int = 20_000
    mempool_bytes: int = 16 << 20
    #: fsync the WAL (own votes, height ends); off only for benchmarks of the network path
    fsync: bool = True


class KeySigner:
    def __init__(self, key: SigningKey, did: str) -> None:
        self.key = key
        self.did = did

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def encode_announce(header: Header, cert: CommitCertificate, next_validators: ValidatorSet | None = None) -> bytes:
    """The block announcement (``.../block``, retained): what a light client needs to verify the
    header -- ``[header, certificate, next set or null]``; the next set ``[[did, power], ...]`` is
    sent when the header names a different one (a validator-set change)."""
    nxt = None if next_validators is None else [[v.did, v.power] for v in next_validators.validators]
    return cbor.dumps([header.encode(), cert.encode(), nxt])


def decode_announce(data: bytes) -> tuple[Header, CommitCertificate, ValidatorSet | None]:
    item = cbor.loads(data)
    if not isinstance(item, list) or len(item) != 3 or not all(isinstance(x, bytes) for x in item[:2]):
        raise MalformedError("block announcement: expected [header: bstr, certificate: bstr, next set / null]")
    header, cert = Header.decode(item[0]), CommitCertificate.decode(item[1])
    nxt = item[2]
    if nxt is None:
        return header, cert, None
    if not isinstance(nxt, list) or not all(
        isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int) for v in nxt
    ):
        raise MalformedError("block announcement: next set must be [[did: tstr, power: uint], ...]")
    try:
        vset = ValidatorSet(header.chain_id, tuple(Validator(d, p) for d, p in nxt))
    except GenesisError as err:
        raise MalformedError(f"block announcement: next set: {err}") from err
    return header, cert, vset


def seal(key: SigningKey, did: str, payload: bytes) -> bytes:
    """A ledger payload as a COSE_Sign1 by the sending node's device key (kid = its did:key method):
    block announcements, sync requests and answers, receipts. Their content verifies on its own
    (certificates, Merkle paths); the signature says which node sent it, so rejects count per peer."""
    return cose.sign1(payload, key, kid=kid_for(did).encode())


def unseal(data: bytes) -> tuple[str, bytes]:
    """(signer DID, payload) of a sealed ledger payload; ``LedgerError`` when it does not verify."""
    msg = cose.decode_sign1(data)
    kid = (msg.kid or b"").decode(errors="replace")
    if "#" not in kid:
        raise MalformedError("sealed payload: kid must be a did:key verification method")
    cose.verify_sign1(msg, resolve(kid))
    return kid.partition("#")[0], msg.payload or b""


def _encode_sync_block(block: Block, cert: CommitCertificate) -> bytes:
    return cbor.dumps([block.header.encode(), block.encode_body(), cert.encode()])


def _decode_sync_block(data: bytes) -> tuple[Block, CommitCertificate]:
    item = cbor.loads(data)
    if not isinstance(item, list) or len(item) != 3 or not all(isinstance(x, bytes) for x in item):
        raise MalformedError("sync answer: expected [header: bstr, body: bstr, certificate: bstr]")
    return Block.from_parts(item[0], item[1]), CommitCertificate.decode(item[2])


@dataclass
class _Counters:
    received: int = 0
    malformed: int = 0
    txs_added: int = 0
    txs_refused: int = 0
    committed_txs: int = 0
    evidence: int = 0
    synced_blocks: int = 0
    sync_requests: int = 0
    sync_rejected: int = 0
    rebroadcasts: int = 0
    receipts_sent: int = 0
    resent_committed: int = 0
    dropped_inputs: int = 0
    wal_torn_bytes: int = 0


class LedgerNode:
    def __init__(
        self,
        cfg: LedgerNodeConfig,
        genesis: Genesis,
        key: SigningKey,
        did: str,
        transport: Transport,
        *,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.genesis = genesis
        self.did = did
        self.transport = transport
        self.clock = clock
        self.app = LedgerApp(genesis)
        self.mempool = Mempool(
            lambda tx: self.app.check_tx(tx, now=self.clock.time()),
            max_txs=cfg.mempool_txs,
            max_bytes=cfg.mempool_bytes,
        )
        self.params = C.Params(
            genesis.validators,
            KeySigner(key, did),
            timeouts=cfg.timeouts,
            is_valid=self._is_valid,
            value_id=block_value_id,
            vset_at=self._vset_at,
        )
        self.counters = _Counters()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-io")
        self._store: BlockStore | None = None
        self._wal: Wal | None = None
        self.state: C.NodeState = C.initial_state(self.params)
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._receipt_again: OrderedDict[bytes, float] = OrderedDict()
        self.rejects: dict[str, PeerRejects] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._valid: OrderedDict[bytes, bool] = OrderedDict()
        self._decoded: OrderedDict[bytes, Block] = OrderedDict()
        self.last_block: Block | None = None
        self.last_cert: CommitCertificate | None = None
        self.last_commit_mono = 0.0
        self.last_commit_wall = 0.0
        self.peers: dict[str, tuple[int, float]] = {}  # node -> (height it is at, monotonic seen)
        self._announced = 0
        self._syncing_to = 0
        self._sync_batch_end = 0
        self.commit_listeners: list[Callable[[Block, CommitCertificate], None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def store(self) -> BlockStore:
        assert self._store is not None, "LedgerNode.start() first"
        return self._store

    @property
    def height(self) -> int:
        """The last committed height."""
        return self.app.height

    async def start(self) -> None:
        """Open the block store and WAL, rebuild the app, recover consensus (no network yet)."""
        d = self.cfg.data_dir
        await self._io(lambda: d.mkdir(parents=True, exist_ok=True))
        self._store = await self._io(lambda: BlockStore(d / "blocks.db", validators=self._vset_at))
        await self._io(self._replay_store)
        self._wal, recovered = await self._io(lambda: Wal.open(d / "consensus.wal", fsync=self.cfg.fsync))
        self.counters.wal_torn_bytes = recovered.torn_bytes
        if recovered.torn_bytes:
            log.warning("ledger: cut a torn WAL tail of %d bytes", recovered.torn_bytes)
        self.state, actions = recover(self.params, height=self.height + 1, recovered=recovered)
        log.info(
            "ledger: %s at height %d (app hash %s), resuming round %d",
            self.genesis.chain_id,
            self.height,
            self.app.app_hash.hex()[:16],
            self.state.round,
        )
        self._pending_actions = actions

    def _replay_store(self) -> None:
        store = self.store
        top = store.height()
        for h in range(1, top + 1):
            block = store.get(h)
            if block is None:
                raise LedgerError(f"block store: height {h} missing below the top {top}")
            self.app.replay_block(block)  # checks the header's app hash against the replayed state
            self.last_block = block
        if top:
            self.last_cert = store.certificate(top)

    def close(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        if self._wal is not None:
            self._pool.submit(self._wal.close).result()
            self._wal = None
        if self._store is not None:
            self._pool.submit(self._store.close).result()
            self._store = None
        self._pool.shutdown(wait=True)

    async def run(self) -> None:
        """Start (if not yet), then run until cancelled."""
        if self._store is None:
            await self.start()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive_loop(), name="ledger.receive")
            tg.create_task(self._consensus_loop(), name="ledger.consensus")
            tg.create_task(self._watch_loop(), name="ledger.watch")

    # --- validator sets, validity ---------------------------------------------------------------

    def _vset_at(self, height: int) -> ValidatorSet:
        return self.app.validators_at(min(height, self.app.height + 2))

    def _decode_cached(self, value: bytes) -> Block | None:
        vid = hashlib.sha256(value).digest()
        block = self._decoded.get(vid)
        if block is None:
            try:
                block = Block.decode(value)
            except MalformedError:
                return None
            self._decoded[vid] = block
            while len(self._decoded) > _VALID_CACHE:
                self._decoded.popitem(last=False)
        return block

    def _is_valid(self, value: bytes) -> bool:
        """Consensus validity of a proposed block at the current height (deterministic; cached)."""
        vid = hashlib.sha256(value).digest()
        cached = self._valid.get(vid)
        if cached is not None:
            return cached
        block = self._decode_cached(value)
        ok = block is not None
        if block is not None:
            try:
                self._validate(block)
            except LedgerError as err:
                log.info("ledger: refusing block %d (%s): %s", block.height, vid.hex()[:12], err)
                ok = False
        self._valid[vid] = ok
        while len(self._valid) > _VALID_CACHE:
            self._valid.popitem(last=False)
        return ok

    def _validate(self, block: Block) -> None:
        h = block.height
        if h != self.height + 1:
            raise LedgerError(f"block for height {h}, the next height is {self.height + 1}")
        prev = None if self.last_block is None else self.last_block.header
        block.validate_basic(
            prev, self._vset_at(h), next_validators=self._vset_at(h + 1), last_validators=self._vset_at(max(1, h - 1))
        )
        self.app.validate_block(block)

    # --- input loop -----------------------------------------------------------------------------

    async def _consensus_loop(self) -> None:
        actions = getattr(self, "_pending_actions", [])
        self._pending_actions = []
        if not self.state.started:
            await self._wal_input(C.Start(), self.state.height)
            self.state, more = C.step(self.state, C.Start(), now=self.clock.time())
            actions = [*actions, *more]
        self.last_commit_mono = self.clock.monotonic()
        await self._execute(actions)
        while True:
            kind, item = await self._queue.get()
            if kind == "input":
                await self._apply(item)
            elif kind == "sync":
                await self._on_sync_block(*item)
            elif kind == "rebroadcast":
                await self._rebroadcast()

    async def _apply(self, inp: C.Input) -> None:
        if isinstance(inp, C.Timeout | C.ProposeValue) and inp.height != self.state.height:
            return  # stale: not worth a WAL record
        if isinstance(inp, C.Received) and inp.msg.height < self.state.height:
            return
        await self._wal_input(inp, self.state.height)
        self.state, actions = C.step(self.state, inp, now=self.clock.time())
        await self._execute(actions)

    async def _wal_input(self, inp: C.Input, height: int) -> None:
        wal = self._wal
        assert wal is not None
        await self._io(lambda: wal.append_input(inp, height=height))

    async def _execute(self, actions: list[C.Action]) -> None:
        assert self._wal is not None
        for act in actions:
            if isinstance(act, C.PersistVote):
                await self._io(self._wal.persist, act.msg)
            elif isinstance(act, C.Broadcast):
                if act.msg.height >= self.state.height - 1:
                    await self.transport.send(MessageKind.CONSENSUS, wire.encode_message(act.msg))
            elif isinstance(act, C.ScheduleTimeout):
                self._schedule(act)
            elif isinstance(act, C.RequestValue):
                self._request_value(act)
            elif isinstance(act, C.Commit):
                await self._commit(act)
            elif isinstance(act, C.Evidence):
                self.counters.evidence += 1
                log.warning(
                    "ledger: equivocation by %s at height %d round %d",
                    act.first.signer,
                    act.first.height,
                    act.first.round,
                )

    def _schedule(self, act: C.ScheduleTimeout) -> None:
        loop = asyncio.get_running_loop()
        inp = C.Timeout(act.kind, act.height, act.round)

        def fire() -> None:
            self._timers.discard(handle)
            self._queue.put_nowait(("input", inp))

        handle = loop.call_later(act.delay, fire)
        self._timers.add(handle)

    def _request_value(self, act: C.RequestValue) -> None:
        wait = max(0.0, self.last_commit_mono + self.cfg.block_interval - self.clock.monotonic())
        if act.round > 0:
            wait = 0.0

        def build() -> None:
            self._timers.discard(handle)
            if self.state.height != act.height or self.state.round != act.round:
                return
            value = self._build_block(act.height, act.round).encode()
            self._queue.put_nowait(("input", C.ProposeValue(act.height, act.round, value)))

        handle = asyncio.get_running_loop().call_later(wait, build)
        self._timers.add(handle)

    def _build_block(self, height: int, round: int) -> Block:
        prev = self.last_block
        now_ms = int(self.clock.time() * 1000)
        time_ms = max(now_ms, (prev.header.time_ms + 1) if prev else self.genesis.genesis_time_ms + 1)
        # the mempool checked each tx against committed state alone: keep one of any conflicting pair
        reaped = self.mempool.reap(max_txs=self.cfg.max_block_txs, max_bytes=self.cfg.max_block_bytes)
        txs = self.app.prepare_txs(reaped, time_ms=time_ms)
        while True:
            block = Block.build(
                validators=self._vset_at(height),
                next_validators=self._vset_at(height + 1),
                height=height,
                round=round,
                time_ms=time_ms,
                prev=prev,
                txs=txs,
                last_commit=self.last_cert if height > 1 else None,
                app_hash=self.app.app_hash,
                proposer=self.did,
            )
            try:
                self.app.validate_block(block)
                return block
            except LedgerError as err:  # a tx went stale since admission: drop it, build again
                bad = getattr(err, "index", None)
                if not isinstance(bad, int) or not 0 <= bad < len(txs):
                    log.warning("ledger: own block invalid (%s); proposing an empty block", err)
                    txs = []
                    continue
                log.info("ledger: dropping tx %d from the proposal: %s", bad, err)
                self.mempool.update([txs[bad]])
                txs = txs[:bad] + txs[bad + 1 :]

    async def _commit(self, act: C.Commit) -> None:
        block = self._decode_cached(act.value)
        if block is None:  # cannot happen: consensus decides only valid values
            raise LedgerError(f"decided an undecodable value at height {act.height}")
        cert = CommitCertificate.from_consensus(act, self._vset_at(act.height))
        await self._store_and_apply(block, cert)

    async def _store_and_apply(self, block: Block, cert: CommitCertificate) -> None:
        assert self._wal is not None
        await self._io(self.store.append, block, cert)
        self.app.apply_block(block)
        self.app.commit()
        await self._io(self._wal.end_height, block.height)
        self.last_block, self.last_cert = block, cert
        self.last_commit_mono = self.clock.monotonic()
        self.last_commit_wall = self.clock.time()
        self.counters.committed_txs += len(block.txs)
        self.mempool.update(block.txs, recheck=lambda tx: self.app.check_tx(tx, now=self.clock.time()))
        self._valid.clear()
        for fn in self.commit_listeners:
            fn(block, cert)
        await self._send_sealed(MessageKind.BLOCK, self._announcement(block.header, cert))
        if block.header.proposer == self.did:
            await self._publish_receipts(block)

    # --- network --------------------------------------------------------------------------------

    async def _send_sealed(self, kind: MessageKind, payload: bytes, *, to: str | None = None) -> None:
        key = self.params.signer.key  # type: ignore[attr-defined]
        await self.transport.send(kind, seal(key, self.did, payload), to=to)

    def _from_validator(self, data: bytes, what: str) -> bytes:
        """Unseal a payload that only a validator of the cell may send (announcements, blocks)."""
        did, payload = unseal(data)
        if did not in self._vset_at(self.height + 1) and did not in self._vset_at(self.height + 2):
            raise LedgerError(f"{what} signed by {did[:40]}..., not a validator of the cell")
        return payload

    def submit_tx(self, tx: bytes) -> AddResult:
        res = self.mempool.add(tx)
        if res.status is AddStatus.ADDED:
            self.counters.txs_added += 1
        elif res.status is AddStatus.COMMITTED:
            # a resend: the sender has no receipt yet (lost, or the proposer died before sending it)
            self.counters.resent_committed += 1
            self._spawn(self._send_receipt_again(tx), "receipt for a resent tx")
        elif res.status is not AddStatus.DUPLICATE:
            self.counters.txs_refused += 1
            self._reject("tx", f"tx {res.status}", res.reason)
        return res

    def _reject(self, peer: str, reason: str, detail: str) -> None:
        if peer not in self.rejects and len(self.rejects) >= 256:
            peer = "other"
        entry = self.rejects.setdefault(peer, PeerRejects())
        entry.total += 1
        entry.reasons[reason] = entry.reasons.get(reason, 0) + 1
        entry.last = detail[:200]

    def rejects_status(self) -> dict[str, dict[str, Any]]:
        """Rejected ledger messages per peer (``node:<id>``, or ``tx`` for the shared tx topic)."""
        return {
            f"ledger {peer}": {"total": r.total, "reasons": dict(r.reasons), "last": r.last}
            for peer, r in sorted(self.rejects.items())
        }

    async def _publish_receipts(self, block: Block) -> None:
        """Receipts for the attestations of a block we proposed, one message per issuer."""
        by_issuer: dict[str, dict[bytes, int]] = {}
        for i, tx in enumerate(block.txs):
            issuer = self.app.attestation_issuer(tx)
            if issuer is not None:
                by_issuer.setdefault(issuer, {})[hashlib.sha256(tx).digest()] = i
        if not by_issuer:
            return
        tree = MerkleTree(block.txs)
        for issuer, wanted in by_issuer.items():
            items = [(aid, tree.prove(i)) for aid, i in wanted.items()]
            await self._send_sealed(
                MessageKind.RECEIPT, encode_receipts(block.height, items), to=topics.issuer_tag(issuer)
            )
            self.counters.receipts_sent += len(items)

    async def _send_receipt_again(self, tx: bytes) -> None:
        aid = hashlib.sha256(tx).digest()
        now = self.clock.monotonic()
        if now - self._receipt_again.get(aid, -1e9) < 5.0:
            return
        self._receipt_again[aid] = now
        while len(self._receipt_again) > 10_000:
            self._receipt_again.popitem(last=False)
        where = self.app.receipt_location(aid)
        issuer = self.app.attestation_issuer(tx)
        if where is None or issuer is None:
            return
        block, _ = await self.stored(where[0])
        if block is None:
            return
        _, proof = tx_receipt(block, where[1])
        await self._send_sealed(
            MessageKind.RECEIPT, encode_receipts(block.height, [(aid, proof)]), to=topics.issuer_tag(issuer)
        )
        self.counters.receipts_sent += 1

    async def _receive_loop(self) -> None:
        async for kind, sender, payload in self.transport.incoming():
            self.counters.received += 1
            try:
                self._on_message(kind, sender, payload)
            except LedgerError as err:
                self.counters.malformed += 1
                self._reject(f"node:{sender}" if sender else str(kind), f"malformed {kind}", str(err))
                log.info("ledger: %s message from %s refused: %s", kind, sender, err)

    def _on_message(self, kind: MessageKind, sender: str, payload: bytes) -> None:
        if kind is MessageKind.TX:
            self.submit_tx(payload)
        elif kind is MessageKind.CONSENSUS:
            if sender == self.transport.node_id:
                return
            msg = wire.decode_message(payload)
            self._peer_at(sender, msg.height)
            if self._queue.qsize() >= _QUEUE_MAX:
                self.counters.dropped_inputs += 1
                return
            self._queue.put_nowait(("input", C.Received(msg)))
        elif kind is MessageKind.BLOCK:
            header, _cert, _nxt = decode_announce(self._from_validator(payload, "block announcement"))
            self._announced = max(self._announced, header.height)
            if sender != self.transport.node_id:
                self._peer_at(sender, header.height + 1)
        elif kind is MessageKind.SYNC_REQUEST:
            if sender != self.transport.node_id:
                _did, request = unseal(payload)  # anyone may ask (the answers are public and verifiable)
                self._spawn(self._answer_sync(sender, request), f"sync answer to {sender}")
        elif kind is MessageKind.SYNC_RESPONSE:
            _did, answer = unseal(payload)  # its blocks verify by their certificates
            block, cert = _decode_sync_block(answer)
            if self._queue.qsize() < _QUEUE_MAX:
                self._queue.put_nowait(("sync", (block, cert)))

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` on the side; a malformed request is logged, not raised into the void."""

        async def guarded() -> None:
            try:
                await coro
            except LedgerError as err:
                self.counters.malformed += 1
                log.info("ledger: %s: %s", what, err)

        task = asyncio.get_running_loop().create_task(guarded())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _peer_at(self, node: str, height: int) -> None:
        known = self.peers.get(node)
        self.peers[node] = (max(height, known[0] if known else 0), self.clock.monotonic())

    def behind(self) -> int:
        """The highest height some peer has committed, as far as we can tell (announcements, and
        consensus messages of height h mean h - 1 is committed)."""
        seen = max((h - 1 for h, _ in self.peers.values()), default=0)
        return max(self._announced, seen)

    async def _watch_loop(self) -> None:
        """Once a second: ask for blocks when peers are ahead and our height has not moved since
        the last look (a node merely slower to count precommits catches up without sync); every
        ``rebroadcast`` seconds of a height that does not move, re-send our own messages."""
        last_height, still_for = self.height, 0.0
        last_round = (-1, -1)
        since_rebroadcast = 0.0
        while True:
            await self.clock.sleep(1.0)
            if self.height == last_height:
                still_for += 1.0
            else:
                last_height, still_for = self.height, 0.0
            target = self.behind()
            if target > self.height and (still_for >= 1.0 or target > self.height + 1):
                self._request_sync(target)
            here = (self.state.height, self.state.round)
            since_rebroadcast = since_rebroadcast + 1.0 if here == last_round else 0.0
            last_round = here
            if since_rebroadcast >= self.cfg.rebroadcast:
                since_rebroadcast = 0.0
                self._queue.put_nowait(("rebroadcast", None))

    def _request_sync(self, height: int) -> None:
        self.counters.sync_requests += 1
        self._syncing_to = max(self._syncing_to, height)
        self._sync_batch_end = min(height, self.height + SYNC_BATCH)
        req = cbor.dumps([self.height + 1, height])
        self._spawn(self._send_sealed(MessageKind.SYNC_REQUEST, req), "sync request")

    async def _answer_sync(self, requester: str, payload: bytes) -> None:
        item = cbor.loads(payload)
        headers = isinstance(item, list) and len(item) == 3 and item[2] == "headers"
        if headers:
            item = item[:2]
        if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int and x >= 1 for x in item)):
            raise MalformedError('sync request: expected [from: uint, to: uint] or [from, to, "headers"]')
        lo, hi = item
        if headers:  # a light client: announcements (header, certificate, next set) only
            hi = min(hi, self.height, lo + HEADER_BATCH - 1)
            for h in range(lo, hi + 1):
                block, cert = await self.stored(h)
                if block is None or cert is None:
                    break
                await self._send_sealed(MessageKind.SYNC_RESPONSE, self._announcement(block.header, cert), to=requester)
            return
        hi = min(hi, self.height, lo + SYNC_BATCH - 1)
        for h in range(lo, hi + 1):
            block = await self._io(self.store.get, h)
            cert = await self._io(self.store.certificate, h)
            if block is None or cert is None:
                break
            await self._send_sealed(MessageKind.SYNC_RESPONSE, _encode_sync_block(block, cert), to=requester)

    async def _on_sync_block(self, block: Block, cert: CommitCertificate) -> None:
        h = block.height
        if h != self.height + 1:
            return  # already have it (or a gap: the next request fills it)
        try:
            self._validate(block)
            cert.check_block(block, self._vset_at(h))
        except LedgerError as err:
            self.counters.sync_rejected += 1
            log.warning("ledger: synced block %d refused: %s", h, err)
            return
        await self._store_and_apply(block, cert)
        self.counters.synced_blocks += 1
        # leave the height we were at: consensus restarts at h + 1 with what it buffered for later heights
        old = self.state
        st = C.initial_state(self.params, height=h + 1)
        st = replace(st, future=tuple(m for m in old.future if m.height > h))
        await self._wal_input(C.Start(), h + 1)
        self.state, actions = C.step(st, C.Start(), now=self.clock.time())
        await self._execute(actions)
        if self._syncing_to > self.height and h >= self._sync_batch_end:
            self._request_sync(self._syncing_to)  # the next batch

    def _announcement(self, header: Header, cert: CommitCertificate) -> bytes:
        changes = header.next_validators_hash != header.validators_hash
        return encode_announce(header, cert, self._vset_at(header.height + 1) if changes else None)

    async def _rebroadcast(self) -> None:
        st = self.state
        own = [m for slot, m in sorted(st.signed.items()) if slot[0] == st.height]
        for msg in own:
            await self.transport.send(MessageKind.CONSENSUS, wire.encode_message(msg))
        if own:
            self.counters.rebroadcasts += 1
        if self.last_block is not None and self.last_cert is not None:
            await self._send_sealed(MessageKind.BLOCK, self._announcement(self.last_block.header, self.last_cert))

    # --- diagnostics ----------------------------------------------------------------------------

    async def stored(self, height: int) -> tuple[Block | None, CommitCertificate | None]:
        """The stored block of ``height`` and our certificate for it (on the store's thread)."""
        store = self.store
        return await self._io(lambda: (store.get(height), store.certificate(height)))

    async def verify_stored_chain(self) -> int:
        """Re-verify the stored chain (hashes, links, certificates with the per-height sets)."""
        store = self.store
        return await self._io(lambda: store.verify_chain(self._vset_at))

    def status(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        vset = self._vset_at(self.height + 1)
        last = self.last_block
        return {
            "chain_id": self.genesis.chain_id,
            "node": self.transport.node_id,
            "did": self.did,
            "height": self.height,
            "round": self.state.round,
            "consensus_height": self.state.height,
            "last_block_time": None if self.last_block is None else self.last_block.header.time_ms / 1000.0,
            "last_block_age_s": None if last is None else round(self.clock.time() - last.header.time_ms / 1e3, 3),
            "app_hash": self.app.app_hash.hex(),
            "validators": [{"did": v.did, "power": v.power} for v in vset.validators],
            "is_validator": self.did in vset,
            "proposer": self._vset_at(self.state.height).proposer(self.state.height, self.state.round),
            "last_commit_signers": []
            if self.last_cert is None
            else [self._vset_at(self.last_cert.height).validators[i].did for i, _ in self.last_cert.signatures],
            "peers": {n: {"height": h, "seen_s_ago": round(now - t, 1)} for n, (h, t) in sorted(self.peers.items())},
            "sync": "catching up" if self.behind() > self.height + 1 else "in consensus",
            "mempool": len(self.mempool),
            **{k: v for k, v in vars(self.counters).items()},
        }


# --------------------------------------------------------------------------- transports


class MqttTransport:
    """The ledger's traffic over the cell's MQTT broker (agent.topics): consensus messages on
    ``cons/{node}``, txs on ``tx``, block announcements on ``block`` (retained), sync requests on
    ``sync/req/{node}`` and answers on ``sync/resp/{requester}``. Received messages come through
    the agent's ``Dispatcher`` (the client has one consumer)."""

    def __init__(
        self,
        client: MqttClient,
        dispatcher: Dispatcher,
        *,
        queue_max: int = 100_000,
        receipt_tag: str | None = None,
        cell: str | None = None,
    ) -> None:
        """An RSU's transport; with ``receipt_tag`` an OBU's (light client): block announcements,
        answers to its header requests and receipts for its issuer tag only. ``cell`` defaults to
        the client's (an OBU follows more than one cell across a handover)."""
        self.client = client
        self.node_id = client.node_id
        self.cell = cell or client.cell
        self.receipt_tag = receipt_tag
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[MessageKind, str, bytes]] = asyncio.Queue(maxsize=queue_max)
        self.kinds = _LEDGER_KINDS if receipt_tag is None else _LIGHT_KINDS
        for kind in self.kinds:
            dispatcher.on(kind, self._on_message)

    def _on_message(self, topic: topics.Topic, msg: Message) -> None:
        if topic.cell != self.cell:
            return
        if topic.kind is MessageKind.SYNC_RESPONSE and topic.node != self.node_id:
            return
        if topic.kind is MessageKind.RECEIPT and topic.node != self.receipt_tag:
            return
        try:
            self._queue.put_nowait((topic.kind, topic.node, msg.payload))
        except asyncio.QueueFull:
            self.dropped += 1

    async def subscribe(self) -> None:
        c, cell = self.client, self.cell
        if self.receipt_tag is not None:
            await c.subscribe(topics.block(cell).path)
            await c.subscribe(topics.receipt(cell, self.receipt_tag).path)
        else:
            for kind in (MessageKind.TX, MessageKind.CONSENSUS, MessageKind.BLOCK, MessageKind.SYNC_REQUEST):
                await c.subscribe(topics.kind_filter(kind, cell))
        await c.subscribe(topics.sync_response(cell, self.node_id).path)

    async def send(self, kind: MessageKind, payload: bytes, *, to: str | None = None) -> None:
        cell, me = self.cell, self.node_id
        if kind is MessageKind.CONSENSUS:
            topic = topics.consensus(cell, me)
        elif kind is MessageKind.BLOCK:
            topic = topics.block(cell)
        elif kind is MessageKind.TX:
            topic = topics.tx(cell)
        elif kind is MessageKind.SYNC_REQUEST:
            topic = topics.sync_request(cell, me)
        elif kind is MessageKind.SYNC_RESPONSE and to is not None:
            topic = topics.sync_response(cell, to)
        elif kind is MessageKind.RECEIPT and to is not None:
            topic = topics.receipt(cell, to)
        else:
            raise ValueError(f"the ledger does not send {kind} (to={to})")
        await self.client.publish(topic, payload)

    async def incoming(self) -> AsyncIterator[tuple[MessageKind, str, bytes]]:
        while True:
            yield await self._queue.get()


_LEDGER_KINDS: Final = frozenset(
    {MessageKind.TX, MessageKind.CONSENSUS, MessageKind.BLOCK, MessageKind.SYNC_REQUEST, MessageKind.SYNC_RESPONSE}
)
_LIGHT_KINDS: Final = frozenset({MessageKind.BLOCK, MessageKind.SYNC_RESPONSE, MessageKind.RECEIPT})


class LocalHub:
    """An in-process cell network for tests of the node logic: every send reaches every attached
    transport (the sender's own included, as a broker would), in order; ``cut(node)`` detaches
    one node (a partition) until ``heal(node)``."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[tuple[MessageKind, str, bytes]]] = {}
        self.aliases: dict[str, set[str]] = {}
        self.cut_off: set[str] = set()

    def attach(self, node_id: str, *, aliases: tuple[str, ...] = ()) -> LocalTransport:
        """A node's transport; messages addressed to ``node_id`` or one of ``aliases`` (e.g. an
        OBU's receipt tag) reach it."""
        self.queues[node_id] = asyncio.Queue()
        self.aliases[node_id] = {node_id, *aliases}
        return LocalTransport(self, node_id)

    def deliver(self, kind: MessageKind, sender: str, payload: bytes, to: str | None) -> None:
        if sender in self.cut_off:
            return
        for node, q in self.queues.items():
            if node in self.cut_off or (to is not None and to not in self.aliases[node]):
                continue
            q.put_nowait((kind, sender, payload))


class LocalTransport:
    def __init__(self, hub: LocalHub, node_id: str) -> None:
        self.hub = hub
        self.node_id = node_id

    async def send(self, kind: MessageKind, payload: bytes, *, to: str | None = None) -> None:
        self.hub.deliver(kind, self.node_id, payload, to)

    async def incoming(self) -> AsyncIterator[tuple[MessageKind, str, bytes]]:
        q = self.hub.queues[self.node_id]
        while True:
            yield await q.get()
