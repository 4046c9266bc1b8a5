"""Deterministic simulation of N Tendermint cores (ledger_lite.consensus) on a faulty network.

One seed fixes everything: the fault mix (``random_config``), message delays, drops, duplicates
(reordering follows from random delays), a partition and its heal, crashes and restarts of honest
nodes, and f Byzantine validators that equivocate (conflicting proposals/votes to different
halves of the network, sometimes invalid values) or stay silent. Time is simulated; a run is a
discrete-event loop over a heap ordered by (time, sequence number).

Network model (the paper's partial synchrony + gossip): before GST (``heal_at``) messages may be
dropped, delayed up to ``max_delay``, duplicated and cut by the partition. At GST the partition
heals, drops stop, delays fall below ``post_delay``, and every message sent so far is re-delivered
to every node (what gossip catch-up does); afterwards a message of a Byzantine sender that reaches
one honest node is relayed to all (gossip relays what it sees).

Crash model (the WAL): every honest node runs the real ``ledger_lite.wal.Wal`` over a
``MemoryStorage`` (an in-memory log image with a durable watermark that advances on fsync): each
input is appended before it is applied, each ``PersistVote`` is ``persist``ed (fsync), and after a
Commit (the block is in the block store) ``end_height`` writes the marker and compacts. A crash
(drawn from a separate per-seed RNG) loses the node state and every log byte after the watermark,
except that in 40% of crashes a torn write survives (a random strict prefix of the next record)
and in 20% a random prefix of all unsynced bytes. Restart goes through ``Wal.attach`` (scan, cut
the torn tail) and ``wal.recover`` (``consensus.restore`` + replay of the logged inputs through
``step``); the replay's actions are executed like any others, then the network log is
re-delivered to the node.

Checks (each failure is a ``Violation`` with a kind): agreement, validity (committed values are
valid and were proposed), certificates (> 2/3 power of distinct, verified precommits for the
value), no honest double-sign, persist-before-broadcast, commits in height order, and liveness:
all honest nodes commit ``heights`` heights within ``liveness_bound`` simulated seconds after GST.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from ledger_lite import consensus as C
from ledger_lite import wal as W
from ledger_lite.didkey import did_key
from ledger_lite.errors import SignatureError
from ledger_lite.keys import SigningKey
from ledger_lite.validators import Validator, ValidatorSet

CHAIN_ID = "autochain-sim"
ByzMode = Literal["equivocate", "silent"]


# --------------------------------------------------------------------------- keys


def sim_sign(did: str, data: bytes) -> bytes:
    """A fast stand-in signature (the harness checks thousands of runs; Ed25519 is tested in the
    unit tests). Byzantine nodes in this harness only ever sign as themselves."""
    return hashlib.sha256(b"sim-sig|" + did.encode() + b"|" + data).digest()[:16]


def sim_verify(did: str, signature: bytes, data: bytes) -> None:
    if signature != sim_sign(did, data):
        raise SignatureError("sim signature does not verify")


@dataclass(frozen=True)
class SimSigner:
    did: str

    def sign(self, data: bytes) -> bytes:
        return sim_sign(self.did, data)


@cache
def validator_dids(n: int) -> tuple[str, ...]:
    """n fixed did:key identities (Ed25519 keys from fixed seeds)."""
    return tuple(did_key(SigningKey.from_private_bytes("Ed25519", bytes([i + 1]) * 32).public) for i in range(n))


def is_valid_value(value: bytes) -> bool:
    return not value.startswith(b"INVALID")


SIM_TIMEOUTS = C.TimeoutConfig(propose=(1.0, 0.5), prevote=(0.5, 0.25), precommit=(0.5, 0.25))


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SimConfig:
    n: int = 4
    byzantine: int = 0
    byz_mode: ByzMode = "equivocate"
    heights: int = 3
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: float = 0.2
    post_delay: float = 0.2
    partition_at: float | None = None  # a random split of the nodes from then until heal_at
    crashes: int = 0  # honest crash/restart pairs before heal_at
    heal_at: float = 0.0  # GST
    liveness_bound: float = 120.0
    max_events: int = 200_000
    powers: tuple[int, ...] | None = None


def random_config(rng: random.Random, n: int) -> SimConfig:
    f = (n - 1) // 3
    return SimConfig(
        n=n,
        byzantine=rng.choice([0, f, f]),
        byz_mode=rng.choice(["equivocate", "equivocate", "silent"]),
        heights=3,
        drop=rng.choice([0.0, 0.05, 0.2, 0.4]),
        duplicate=rng.choice([0.0, 0.1, 0.3]),
        max_delay=rng.choice([0.05, 0.5, 2.0]),
        partition_at=rng.choice([None, rng.uniform(0.0, 5.0)]),
        crashes=rng.choice([0, 0, 1, 2]),
        heal_at=rng.uniform(0.0, 15.0),
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Violation:
    kind: str  # agreement | validity | certificate | double-sign | wal | order | liveness | budget
    detail: str


@dataclass
class Result:
    seed: int
    config: SimConfig
    violations: list[Violation]
    commits: dict[str, dict[int, bytes]]
    events: int
    end_time: float
    evidence: int
    restarts: int = 0
    torn_restarts: int = 0  # restarts whose log image had a torn/corrupt tail that was cut
    replayed: int = 0  # inputs fed back through step by recovery

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class _Node:
    did: str
    byz: ByzMode | None
    params: C.Params
    state: C.NodeState | None = None
    incarnation: int = 0
    persisted_set: set[C.Message] = field(default_factory=set)
    committed: dict[int, bytes] = field(default_factory=dict)
    # the WAL (the real ledger_lite.wal code) over an in-memory "disk" with a durable watermark
    disk: W.MemoryStorage = field(default_factory=W.MemoryStorage)
    wal: W.Wal | None = None


# --------------------------------------------------------------------------- the simulation


class Simulation:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.cfg = config
        self.rng = random.Random(seed)
        dids = validator_dids(config.n)
        powers = config.powers or (1,) * config.n
        self.vset = ValidatorSet(CHAIN_ID, tuple(Validator(d, p) for d, p in zip(dids, powers, strict=True)))
        byz_idx = set(self.rng.sample(range(config.n), config.byzantine))
        self.nodes = [
            _Node(
                did=d,
                byz=config.byz_mode if i in byz_idx else None,
                params=C.Params(
                    vset=self.vset,
                    signer=SimSigner(d),
                    verifier=sim_verify,
                    timeouts=SIM_TIMEOUTS,
                    is_valid=is_valid_value,
                    future_heights=config.heights + 1,
                ),
            )
            for i, d in enumerate(dids)
        ]
        self.honest = [i for i, nd in enumerate(self.nodes) if nd.byz is None]
        self.behind = len(self.honest) if config.heights > 0 else 0  # honest nodes short of ``heights``
        self.index = {nd.did: i for i, nd in enumerate(self.nodes)}
        self.queue: list[tuple[float, int, tuple[Any, ...]]] = []
        self.seq = 0
        self.now = 0.0
        self.healed = config.heal_at <= 0.0
        self.groups: dict[int, int] | None = None
        self.log: list[tuple[int, C.Message]] = []  # (sender index, message) in send order
        self.relayed: set[C.Message] = set()
        self.proposed: set[bytes] = set()
        self.decided: dict[int, bytes] = {}
        self.signed_by_honest: dict[tuple[str, tuple[int, int, str]], C.Message] = {}
        self.violations: list[Violation] = []
        self.evidence = 0
        self.events = 0
        self.restarts = 0
        self.torn_restarts = 0
        self.replayed = 0
        self.crash_rng = random.Random(f"crash-{seed}")

    # -- scheduling ---------------------------------------------------------------------------

    def _push(self, at: float, event: tuple[Any, ...]) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, event))

    def _violate(self, kind: str, detail: str) -> None:
        self.violations.append(Violation(kind, f"t={self.now:.3f}: {detail}"))

    def _send(self, src: int, dst: int, msg: C.Message, *, forced: bool = False) -> None:
        rng = self.rng
        if not self.healed and not forced:
            if rng.random() < self.cfg.drop:
                return
            if self.groups is not None and self.groups[src] != self.groups[dst]:
                return
        copies = 2 if rng.random() < self.cfg.duplicate else 1
        top = self.cfg.post_delay if self.healed else self.cfg.max_delay
        for _ in range(copies):
            self._push(self.now + rng.uniform(0.0, top), ("deliver", dst, msg))

    def _broadcast(self, src: int, msg: C.Message, targets: list[int] | None = None) -> None:
        self.log.append((src, msg))
        if isinstance(msg, C.Proposal):
            self.proposed.add(msg.value_id)
        for dst in range(self.cfg.n) if targets is None else targets:
            if dst != src:
                self._send(src, dst, msg)

    # -- running nodes ------------------------------------------------------------------------

    def _input(self, i: int, inp: C.Input) -> None:
        nd = self.nodes[i]
        if nd.state is None:
            return
        if nd.wal is not None:
            nd.wal.append_input(inp, height=nd.state.height)  # appended before it is applied
        nd.state, actions = C.step(nd.state, inp, now=self.now)
        for act in actions:
            self._execute(i, act)

    def _execute(self, i: int, act: C.Action) -> None:
        nd = self.nodes[i]
        if isinstance(act, C.PersistVote):
            if nd.wal is not None:
                nd.wal.persist(act.msg)
            nd.persisted_set.add(act.msg)
        elif isinstance(act, C.Broadcast):
            if nd.byz == "equivocate":
                self._equivocate(i, act.msg)
                return
            self._check_own(i, act.msg)
            self._broadcast(i, act.msg)
        elif isinstance(act, C.ScheduleTimeout):
            self._push(self.now + act.delay, ("input", i, nd.incarnation, C.Timeout(act.kind, act.height, act.round)))
        elif isinstance(act, C.RequestValue):
            value = f"block h{act.height} r{act.round} by {i} seed {self.seed}".encode()
            self._push(self.now + 0.01, ("input", i, nd.incarnation, C.ProposeValue(act.height, act.round, value)))
        elif isinstance(act, C.Commit):
            if nd.byz is None:
                self._check_commit(i, act)
                if nd.wal is not None:
                    nd.wal.end_height(act.height)  # the block is in the block store
        elif isinstance(act, C.Evidence):
            self.evidence += 1

    def _equivocate(self, i: int, msg: C.Message) -> None:
        """Send ``msg`` to a random half of the peers and a conflicting one to the rest."""
        rng = self.rng
        me = self.nodes[i].did
        alt: C.Message
        if isinstance(msg, C.Proposal):
            prefix = b"INVALID " if rng.random() < 0.3 else b"byz "
            value = prefix + msg.value + bytes([rng.randrange(256)])
            alt = C.Proposal(msg.height, msg.round, value, msg.valid_round, me)
        else:
            candidates = [m.value_id for _, m in self.log if isinstance(m, C.Proposal) and m.height == msg.height]
            options = [v for v in [None, *candidates] if v != msg.value_id] or [bytes(32)]
            alt = C.Vote(msg.type, msg.height, msg.round, rng.choice(options), me)
        alt = _resign(alt)
        peers = [j for j in range(self.cfg.n) if j != i]
        rng.shuffle(peers)
        half = len(peers) // 2
        self._broadcast(i, msg, peers[:half])
        self._broadcast(i, alt, peers[half:])

    # -- checks -------------------------------------------------------------------------------

    def _check_own(self, i: int, msg: C.Message) -> None:
        nd = self.nodes[i]
        if msg not in nd.persisted_set:
            self._violate("wal", f"node {i} broadcast {msg} before persisting it")
        key = (nd.did, msg.slot())
        prior = self.signed_by_honest.setdefault(key, msg)
        if prior != msg:
            self._violate("double-sign", f"honest node {i} signed {prior} and {msg}")

    def _check_commit(self, i: int, c: C.Commit) -> None:
        nd = self.nodes[i]
        if c.height != len(nd.committed) + 1:
            self._violate("order", f"node {i} committed height {c.height} after {sorted(nd.committed)}")
        nd.committed[c.height] = c.value
        if len(nd.committed) == self.cfg.heights:
            self.behind -= 1
        first = self.decided.setdefault(c.height, c.value)
        if first != c.value:
            self._violate("agreement", f"height {c.height}: {first!r} and {c.value!r} (node {i})")
        vid = C.value_id(c.value)
        if vid not in self.proposed or not is_valid_value(c.value):
            self._violate("validity", f"node {i} committed {c.value!r} at height {c.height}")
        voters = [v.voter for v in c.certificate]
        power = sum(self.vset.power_of(v) for v in set(voters))
        bad = [
            v
            for v in c.certificate
            if v.type != C.PRECOMMIT or v.value_id != vid or v.height != c.height or v.round != c.round
        ]
        for v in c.certificate:
            try:
                sim_verify(v.voter, v.signature, v.sign_bytes(CHAIN_ID))
            except SignatureError:
                bad.append(v)
        if bad or len(set(voters)) != len(voters) or power < self.vset.quorum:
            self._violate("certificate", f"node {i} height {c.height}: power {power}, bad {bad}")

    # -- faults -------------------------------------------------------------------------------

    def _deliver_log(self, dst: int, *, forced: bool) -> None:
        for src, msg in self.log:
            if src != dst:
                self._send(src, dst, msg, forced=forced)

    def _crash(self, i: int) -> None:
        """Lose the state and the unsynced log bytes; sometimes a torn write survives."""
        nd = self.nodes[i]
        if nd.state is None:
            return
        nd.state = None
        nd.incarnation += 1
        nd.wal = None
        rng, disk = self.crash_rng, nd.disk
        unsynced = len(disk.data) - disk.durable
        mode = rng.random()
        keep = 0
        if unsynced and mode < 0.4:  # a torn next record
            length, _ = W.HEADER.unpack_from(disk.data, disk.durable)  # unsynced bytes are whole records
            keep = rng.randrange(1, min(unsynced, W.HEADER.size + length))
        elif unsynced and mode < 0.6:  # the OS wrote back some prefix of the unsynced bytes
            keep = rng.randrange(0, unsynced + 1)
        disk.crash(keep)

    def _restart(self, i: int) -> None:
        nd = self.nodes[i]
        if nd.state is not None:
            return
        nd.wal, recovered = W.Wal.attach(nd.disk)  # Wal.open: scan, cut the torn tail
        self.restarts += 1
        self.torn_restarts += recovered.torn_bytes > 0
        height = len(nd.committed) + 1
        self.replayed += sum(1 for h, inp in recovered.inputs if h >= height)
        nd.state, actions = W.recover(nd.params, height=height, recovered=recovered)
        nd.wal.append_input(C.Start(), height=height)  # the restart itself (a no-op on the next replay)
        for act in actions:
            self._execute(i, act)
        self._deliver_log(i, forced=False)

    def _heal(self) -> None:
        self.healed = True
        self.groups = None
        for i in range(self.cfg.n):
            if self.nodes[i].state is not None:
                self._deliver_log(i, forced=True)

    # -- main loop ----------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg, rng = self.cfg, self.rng
        for nd in self.nodes:
            if nd.byz != "silent":
                nd.state = C.initial_state(nd.params)
            if nd.byz is None:
                nd.wal, _ = W.Wal.attach(nd.disk)
        if cfg.partition_at is not None and cfg.heal_at > cfg.partition_at:
            self._push(cfg.partition_at, ("partition",))
        for _ in range(cfg.crashes):
            if cfg.heal_at <= 0:
                break
            i = rng.choice(self.honest)
            t = rng.uniform(0.0, cfg.heal_at)
            self._push(t, ("crash", i))
            self._push(rng.uniform(t, cfg.heal_at), ("restart", i))
        if not self.healed:
            self._push(cfg.heal_at, ("heal",))
        for i in range(cfg.n):
            self._input(i, C.Start())

    def _done(self) -> bool:
        return self.behind == 0

    def run(self) -> Result:
        cfg = self.cfg
        self._setup()
        deadline = cfg.heal_at + cfg.liveness_bound
        while self.queue and not self._done():
            at, _, ev = heapq.heappop(self.queue)
            if at > deadline:
                break
            self.now = at
            self.events += 1
            if self.events > cfg.max_events:
                self._violate("budget", f"more than {cfg.max_events} events")
                break
            self._dispatch(ev)
        if not self._done() and not any(v.kind == "budget" for v in self.violations):
            lag = {i: len(self.nodes[i].committed) for i in self.honest}
            self._violate("liveness", f"committed heights per honest node {lag} by t={self.now:.1f}")
        return Result(
            self.seed,
            cfg,
            self.violations,
            {self.nodes[i].did: dict(self.nodes[i].committed) for i in self.honest},
            self.events,
            self.now,
            self.evidence,
            self.restarts,
            self.torn_restarts,
            self.replayed,
        )

    def _dispatch(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == "deliver":
            _, dst, msg = ev
            nd = self.nodes[dst]
            if nd.state is None:
                return
            self._input(dst, C.Received(msg))
            src = self.index[msg.signer]
            if self.healed and nd.byz is None and self.nodes[src].byz is not None and msg not in self.relayed:
                self.relayed.add(msg)
                for j in range(self.cfg.n):
                    if j not in (src, dst):
                        self._send(src, j, msg)
        elif kind == "input":
            _, i, inc, inp = ev
            if self.nodes[i].incarnation == inc:
                self._input(i, inp)
        elif kind == "crash":
            self._crash(ev[1])
        elif kind == "restart":
            self._restart(ev[1])
        elif kind == "heal":
            self._heal()
        elif kind == "partition":
            nodes = list(range(self.cfg.n))
            self.rng.shuffle(nodes)
            cut = self.rng.randrange(1, self.cfg.n)
            self.groups = {j: int(k < cut) for k, j in enumerate(nodes)}


def _resign(msg: C.Message) -> C.Message:
    sig = sim_sign(msg.signer, msg.sign_bytes(CHAIN_ID))
    if isinstance(msg, C.Proposal):
        return C.Proposal(msg.height, msg.round, msg.value, msg.valid_round, msg.proposer, sig)
    return C.Vote(msg.type, msg.height, msg.round, msg.value_id, msg.voter, sig)


def run_seed(seed: int, n: int, config: SimConfig | None = None) -> Result:
    """One seeded run; without ``config`` the fault mix is drawn from the seed too."""
    cfg = config if config is not None else random_config(random.Random(f"config-{n}-{seed}"), n)
    return Simulation(seed, cfg).run()
