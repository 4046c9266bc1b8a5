"""Tendermint consensus (Buchman, Kwon, Milosevic 2018, Algorithm 1) as a pure state machine.

    state = initial_state(params)                       # or restore(params, height=..., persisted=...)
    state, actions = step(state, Start(), now=0.0)
    state, actions = step(state, Received(msg), now=t)  # Timeout(...), ProposeValue(...)

``step`` never mutates its argument, reads no clock, draws no randomness and does no I/O: the
node runtime executes the returned actions in order (``PersistVote`` comes before the
``Broadcast`` of the same own message, so a WAL can fsync first) and feeds timeouts back in as
``Timeout`` inputs after ``ScheduleTimeout.delay`` seconds. ``now`` is accepted for the uniform
core signature; the algorithm needs only relative delays.

Rules of the paper, by line: 22 and 28 (prevote on a proposal, with the lock check
``locked_round <= valid_round or locked_id == id(v)``), 34 (timeoutPrevote on any 2f+1
prevotes), 36 (lock and precommit on a polka; record validValue/validRound), 44 (precommit nil
on a nil polka), 47 (timeoutPrecommit on any 2f+1 precommits), 49 (decide on 2f+1 precommits
for a proposal of any round), 55 (skip to a round where f+1 power has spoken); timeouts
``base + round * delta`` per kind. "2f+1"/"f+1" are voting power > 2/3 / > 1/3 of the total.

Signatures: every ``Received`` message is verified here with ``Params.verifier`` (default:
Ed25519 etc. via did:key ``resolve``) over ``sign_bytes(chain_id)`` (deterministic CBOR that
includes the chain id) before it touches the state; messages from non-validators, from the wrong
proposer, with bad signatures, or for past heights are dropped and counted in ``state.dropped``.
Messages for the next ``Params.future_heights`` heights are verified and buffered (at most
``Params.max_future``) and replayed when the node gets there. A second, different message of
one signer for one (height, round, kind) is equivocation, reported as ``Evidence``; it still
counts towards its own value (at most ``MAX_VOTES_PER_SLOT`` per voter and slot), never twice
towards "any value".

Own messages are signed through ``Params.signer`` and remembered in ``state.signed`` per
(height, round, kind). A node never signs two different messages for one slot: if the slot is
taken (e.g. after a restart, see ``restore``) it re-sends what it signed before. ``restore``
rebuilds a node from its persisted own messages (the WAL): same height, round = highest round it
signed in, lock = its highest non-nil precommit.

Value ids: votes, locks, tallies and ``Commit.certificate`` are about ``Params.value_id(value)``
(default ``value_id`` = SHA-256 of the value bytes). An app whose values carry their own id (a
block: its header's id) plugs that in, so a certificate certifies the id a light client can check
without the value. The function must be deterministic and collision resistant on the values that
``is_valid`` accepts, and must not raise (map a malformed value to an id no valid value has).
A ``Proposal`` is still signed over SHA-256 of its full value (``Proposal.value_id``), which binds
the exact bytes whatever ``Params.value_id`` is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property, lru_cache
from typing import Literal, Protocol

from . import cbor
from .didkey import resolve
from .errors import DoubleSignError, VerificationError
from .validators import ValidatorSet

__all__ = [
    "PRECOMMIT",
    "PREVOTE",
    "PROPOSE",
    "Action",
    "Broadcast",
    "Commit",
    "Evidence",
    "Input",
    "NodeState",
    "Params",
    "PersistVote",
    "ProposeValue",
    "Proposal",
    "Received",
    "RequestValue",
    "ScheduleTimeout",
    "Signer",
    "Start",
    "Step",
    "Timeout",
    "TimeoutConfig",
    "Vote",
    "initial_state",
    "restore",
    "step",
    "value_id",
    "verify_with_did_key",
]

PREVOTE: Literal["prevote"] = "prevote"
PRECOMMIT: Literal["precommit"] = "precommit"
PROPOSE: Literal["propose"] = "propose"
VoteType = Literal["prevote", "precommit"]
TimeoutKind = Literal["propose", "prevote", "precommit"]

#: proposals kept per round from one (possibly equivocating) proposer, and votes per voter and slot
MAX_PROPOSALS_PER_ROUND = 4
MAX_VOTES_PER_SLOT = 4


def value_id(value: bytes) -> bytes:
    """The default consensus value id (``Params.value_id``): SHA-256 of the value bytes."""
    return hashlib.sha256(value).digest()


class Step(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Proposal:
    height: int
    round: int
    value: bytes
    valid_round: int
    proposer: str
    signature: bytes = b""

    @cached_property
    def value_id(self) -> bytes:
        """SHA-256 of the value: what the proposal signature covers. This is the consensus value id
        only with the default ``Params.value_id``; the state machine always uses ``Params.value_id``."""
        return value_id(self.value)

    @property
    def signer(self) -> str:
        return self.proposer

    def slot(self) -> tuple[int, int, str]:
        return (self.height, self.round, PROPOSE)

    def sign_bytes(self, chain_id: str) -> bytes:
        return cbor.dumps([PROPOSE, chain_id, self.height, self.round, self.value_id, self.valid_round])


@dataclass(frozen=True)
class Vote:
    type: VoteType
    height: int
    round: int
    value_id: bytes | None  # None: nil
    voter: str
    signature: bytes = b""

    @property
    def signer(self) -> str:
        return self.voter

    def slot(self) -> tuple[int, int, str]:
        return (self.height, self.round, self.type)

    def sign_bytes(self, chain_id: str) -> bytes:
        return cbor.dumps([self.type, chain_id, self.height, self.round, self.value_id])


Message = Proposal | Vote


# --------------------------------------------------------------------------- inputs / actions


@dataclass(frozen=True)
class Start:
    """Start (or, after ``restore``, resume) consensus at ``state.height``."""


@dataclass(frozen=True)
class Received:
    msg: Message


@dataclass(frozen=True)
class Timeout:
    kind: TimeoutKind
    height: int
    round: int


@dataclass(frozen=True)
class ProposeValue:
    """The app's answer to ``RequestValue``: the value to propose at (height, round)."""

    height: int
    round: int
    value: bytes


Input = Start | Received | Timeout | ProposeValue


@dataclass(frozen=True)
class Broadcast:
    msg: Message


@dataclass(frozen=True)
class PersistVote:
    """Make this message durable (fsync) before executing the following actions: every own signed
    message, and the proposal a node locks on (so ``restore`` gets the locked value back)."""

    msg: Message


@dataclass(frozen=True)
class ScheduleTimeout:
    kind: TimeoutKind
    height: int
    round: int
    delay: float


@dataclass(frozen=True)
class RequestValue:
    """We propose at (height, round): answer with ``ProposeValue``."""

    height: int
    round: int


@dataclass(frozen=True)
class Commit:
    height: int
    round: int
    value: bytes
    certificate: tuple[Vote, ...]  # precommits for Params.value_id(value) at ``round``, > 2/3 of the power


@dataclass(frozen=True)
class Evidence:
    """Two different signed messages of ``first.signer`` for one (height, round, kind)."""

    first: Message
    second: Message


Action = Broadcast | PersistVote | ScheduleTimeout | RequestValue | Commit | Evidence


# --------------------------------------------------------------------------- parameters


class Signer(Protocol):
    did: str

    def sign(self, data: bytes) -> bytes: ...


Verifier = Callable[[str, bytes, bytes], None]  # (did, signature, data); raises VerificationError


_resolve = lru_cache(maxsize=1024)(resolve)


def verify_with_did_key(did: str, signature: bytes, data: bytes) -> None:
    """Default verifier: the signer's did:key resolves to its verify key (cached per DID)."""
    _resolve(did).verify(signature, data)


@dataclass(frozen=True)
class TimeoutConfig:
    """Timeouts in seconds: ``base + round * delta`` for each kind."""

    propose: tuple[float, float] = (3.0, 0.5)
    prevote: tuple[float, float] = (1.0, 0.5)
    precommit: tuple[float, float] = (1.0, 0.5)

    def delay(self, kind: TimeoutKind, round: int) -> float:
        base, delta = getattr(self, kind)
        return float(base + round * delta)


def _always_valid(value: bytes) -> bool:
    return True


@dataclass(frozen=True)
class Params:
    vset: ValidatorSet
    signer: Signer
    verifier: Verifier = verify_with_did_key
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    #: the app's validity predicate for proposed values (deterministic)
    is_valid: Callable[[bytes], bool] = _always_valid
    #: how many heights ahead messages are buffered, and how many at most
    future_heights: int = 2
    max_future: int = 1024
    #: messages more than this many rounds ahead of ours are dropped (bounds memory)
    max_round_ahead: int = 64
    #: the id votes are about (deterministic, never raises; see the module doc)
    value_id: Callable[[bytes], bytes] = value_id
    #: the validator set of a height when it changes over the chain (default: ``vset`` at every
    #: height); must be deterministic and known for the heights messages are buffered for
    vset_at: Callable[[int], ValidatorSet] | None = None

    @property
    def me(self) -> str:
        return self.signer.did

    def validators(self, height: int) -> ValidatorSet:
        """The validator set that votes at ``height``."""
        return self.vset if self.vset_at is None else self.vset_at(height)


# --------------------------------------------------------------------------- state


@dataclass
class NodeState:
    """Consensus state of one node. Treat as immutable: ``step`` returns a new one."""

    params: Params
    height: int = 1
    round: int = 0
    step: Step = Step.PROPOSE
    started: bool = False
    locked_id: bytes | None = None
    locked_round: int = -1
    valid_value: bytes | None = None
    valid_round: int = -1
    awaiting_value: int | None = None
    proposals: dict[int, dict[bytes, Proposal]] = field(default_factory=dict)
    votes: dict[tuple[int, str], dict[str, tuple[Vote, ...]]] = field(default_factory=dict)
    tally: dict[tuple[int, str, bytes | None], int] = field(default_factory=dict)
    tally_any: dict[tuple[int, str], int] = field(default_factory=dict)
    senders: dict[int, set[str]] = field(default_factory=dict)
    fired: set[tuple[str, int]] = field(default_factory=set)
    signed: dict[tuple[int, int, str], Message] = field(default_factory=dict)
    future: tuple[Message, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    dropped: int = 0
    decisions: tuple[tuple[int, bytes], ...] = ()

    def clone(self) -> NodeState:
        return NodeState(
            params=self.params,
            height=self.height,
            round=self.round,
            step=self.step,
            started=self.started,
            locked_id=self.locked_id,
            locked_round=self.locked_round,
            valid_value=self.valid_value,
            valid_round=self.valid_round,
            awaiting_value=self.awaiting_value,
            proposals={r: dict(p) for r, p in self.proposals.items()},
            votes={k: dict(v) for k, v in self.votes.items()},
            tally=dict(self.tally),
            tally_any=dict(self.tally_any),
            senders={r: set(s) for r, s in self.senders.items()},
            fired=set(self.fired),
            signed=dict(self.signed),
            future=self.future,
            evidence=self.evidence,
            dropped=self.dropped,
            decisions=self.decisions,
        )


def initial_state(params: Params, *, height: int = 1) -> NodeState:
    return NodeState(params=params, height=height)


def restore(params: Params, *, height: int, persisted: Iterable[Message]) -> NodeState:
    """A node after a crash: ``height`` = last committed + 1, ``persisted`` = what it was told to
    ``PersistVote`` (its own signed messages and the proposals it locked on). It resumes in the
    highest round it signed in, locked on its highest non-nil precommit with that value as its
    valid value, and will never sign anything conflicting with ``persisted``."""
    st = NodeState(params=params, height=height)
    replay: list[Message] = []
    locked_proposals: dict[bytes, Proposal] = {}
    for msg in persisted:
        if msg.height < height:
            continue
        if isinstance(msg, Proposal) and msg.signer != params.me:
            if msg.height == height:
                locked_proposals[params.value_id(msg.value)] = msg
                replay.append(msg)
            continue
        if msg.signer != params.me:
            raise DoubleSignError(f"persisted vote signed by {msg.signer}, not by us ({params.me})")
        st.signed[msg.slot()] = msg
        if msg.height <= height + params.future_heights:
            replay.append(msg)  # our own messages count again once we start (they are in the WAL)
        if msg.height == height:
            st.round = max(st.round, msg.round)
            if isinstance(msg, Vote) and msg.type == PRECOMMIT and msg.value_id is not None:
                if msg.round > st.locked_round:
                    st.locked_id, st.locked_round = msg.value_id, msg.round
    locked = locked_proposals.get(st.locked_id) if st.locked_id is not None else None
    if locked is None:
        own = st.signed.get((height, st.locked_round, PROPOSE))
        locked = own if isinstance(own, Proposal) and params.value_id(own.value) == st.locked_id else None
    if locked is not None:  # a lock implies validValue = lockedValue, validRound >= lockedRound (line 36)
        st.valid_value, st.valid_round = locked.value, st.locked_round
    st.future = tuple(replay[-params.max_future :])
    return st


# --------------------------------------------------------------------------- the step function


def step(state: NodeState, inp: Input, *, now: float = 0.0) -> tuple[NodeState, list[Action]]:
    """Apply one input; returns the new state and the actions to execute in order."""
    st = state.clone()
    out: list[Action] = []
    if isinstance(inp, Received):
        _receive(st, inp.msg, out, verified=False)
    elif isinstance(inp, Timeout):
        _on_timeout(st, inp, out)
    elif isinstance(inp, Start):
        if not st.started:
            st.started = True
            _start_round(st, st.round, out)
            _replay_future(st, out)
    elif isinstance(inp, ProposeValue):
        if (
            st.started
            and inp.height == st.height
            and inp.round == st.round
            and st.step == Step.PROPOSE
            and st.awaiting_value == inp.round
        ):
            st.awaiting_value = None
            _propose(st, inp.value, -1, out)
    else:  # pragma: no cover - typing guards this
        raise TypeError(f"not a consensus input: {inp!r}")
    if st.started:
        _run_rules(st, out)
    return st, out


# -- receiving -----------------------------------------------------------------------------


def _receive(st: NodeState, msg: Message, out: list[Action], *, verified: bool) -> None:
    p = st.params
    if msg.height < st.height or msg.round < 0 or msg.height > st.height + p.future_heights:
        st.dropped += 1
        return
    vset = p.validators(msg.height)
    if vset.power_of(msg.signer) == 0 or msg.round > st.round + p.max_round_ahead:
        st.dropped += 1
        return
    if isinstance(msg, Proposal) and (
        msg.proposer != vset.proposer(msg.height, msg.round) or not -1 <= msg.valid_round < msg.round
    ):
        st.dropped += 1
        return
    if not verified:
        try:
            p.verifier(msg.signer, msg.signature, msg.sign_bytes(vset.chain_id))
        except VerificationError:
            st.dropped += 1
            return
    if msg.height > st.height or not st.started:
        if len(st.future) >= p.max_future:
            st.dropped += 1
        else:
            st.future = (*st.future, msg)
        return
    if isinstance(msg, Proposal):
        _add_proposal(st, msg, out)
    else:
        _add_vote(st, msg, out)


def _add_proposal(st: NodeState, prop: Proposal, out: list[Action]) -> None:
    props = st.proposals.setdefault(prop.round, {})
    vid = st.params.value_id(prop.value)
    if vid in props:
        return
    if props:
        first = next(iter(props.values()))
        ev = Evidence(first, prop)
        st.evidence = (*st.evidence, ev)
        out.append(ev)
        if len(props) >= MAX_PROPOSALS_PER_ROUND:
            return
    props[vid] = prop
    st.senders.setdefault(prop.round, set()).add(prop.proposer)


def _classify_vote(prior: tuple[Vote, ...], vote: Vote) -> Literal["new", "duplicate", "conflict"]:
    if not prior:
        return "new"
    return "duplicate" if any(v.value_id == vote.value_id for v in prior) else "conflict"


def _add_vote(st: NodeState, vote: Vote, out: list[Action]) -> None:
    """Count ``vote``. A voter's power counts once in the any-value tally of a (round, type) and once
    per value it voted for: an equivocator's conflicting votes count for each value (as the paper's
    message sets do; quorum intersection already allows for f double votes) and are evidence."""
    key = (vote.round, vote.type)
    votes = st.votes.setdefault(key, {})
    prior = votes.get(vote.voter, ())
    kind = _classify_vote(prior, vote)
    if kind == "duplicate":
        return
    if kind == "conflict":
        ev = Evidence(prior[0], vote)
        st.evidence = (*st.evidence, ev)
        out.append(ev)
        if len(prior) >= MAX_VOTES_PER_SLOT:
            return
    votes[vote.voter] = (*prior, vote)
    power = st.params.validators(st.height).power_of(vote.voter)
    tkey = (vote.round, vote.type, vote.value_id)
    st.tally[tkey] = st.tally.get(tkey, 0) + power
    if kind == "new":
        st.tally_any[key] = st.tally_any.get(key, 0) + power
    st.senders.setdefault(vote.round, set()).add(vote.voter)


def _replay_future(st: NodeState, out: list[Action]) -> None:
    keep: list[Message] = []
    now: list[Message] = []
    for msg in st.future:
        if msg.height > st.height:
            keep.append(msg)
        elif msg.height == st.height:
            now.append(msg)
    st.future = tuple(keep)
    for msg in now:
        _receive(st, msg, out, verified=True)


# -- own messages -----------------------------------------------------------------------------


def _sign_and_send(st: NodeState, msg: Message, out: list[Action]) -> None:
    """Sign ``msg`` unless its slot is taken (then re-send the message signed before)."""
    slot = msg.slot()
    prior = st.signed.get(slot)
    if prior is None:
        sig = st.params.signer.sign(msg.sign_bytes(st.params.vset.chain_id))
        if isinstance(msg, Proposal):
            msg = Proposal(msg.height, msg.round, msg.value, msg.valid_round, msg.proposer, sig)
        else:
            msg = Vote(msg.type, msg.height, msg.round, msg.value_id, msg.voter, sig)
        st.signed[slot] = msg
        out.append(PersistVote(msg))
    else:
        msg = prior
    out.append(Broadcast(msg))
    _receive(st, msg, out, verified=True)


def _propose(st: NodeState, value: bytes, valid_round: int, out: list[Action]) -> None:
    _sign_and_send(st, Proposal(st.height, st.round, value, valid_round, st.params.me), out)


def _vote(st: NodeState, kind: VoteType, vid: bytes | None, out: list[Action]) -> None:
    _sign_and_send(st, Vote(kind, st.height, st.round, vid, st.params.me), out)


# -- rounds and heights -------------------------------------------------------------------------


def _proposal_choice(st: NodeState) -> tuple[bytes | None, int]:
    """Line 14-18: re-propose validValue (with validRound) if we have one."""
    return st.valid_value, st.valid_round


def _start_round(st: NodeState, r: int, out: list[Action]) -> None:
    st.round = r
    st.step = Step.PROPOSE
    st.awaiting_value = None
    if st.params.validators(st.height).proposer(st.height, r) == st.params.me:
        value, vr = _proposal_choice(st)
        if value is not None:
            _propose(st, value, vr, out)
        else:
            st.awaiting_value = r
            out.append(RequestValue(st.height, r))
    # Scheduled by the proposer too, so a slow app cannot stall it forever (a no-op once it prevoted).
    out.append(ScheduleTimeout(PROPOSE, st.height, r, st.params.timeouts.delay(PROPOSE, r)))


def _reset_for_height(st: NodeState) -> None:
    st.locked_id, st.locked_round = None, -1
    st.valid_value, st.valid_round = None, -1


def _decide(st: NodeState, r: int, vid: bytes, prop: Proposal, out: list[Action]) -> None:
    cert = tuple(
        sorted(
            (v for vs in st.votes[(r, PRECOMMIT)].values() for v in vs if v.value_id == vid),
            key=lambda v: v.voter,
        )
    )
    out.append(Commit(st.height, r, prop.value, cert))
    st.decisions = (*st.decisions, (st.height, prop.value))
    st.height += 1
    _reset_for_height(st)
    st.proposals, st.votes, st.tally, st.tally_any, st.senders, st.fired = {}, {}, {}, {}, {}, set()
    st.signed = {k: m for k, m in st.signed.items() if k[0] >= st.height}
    _start_round(st, 0, out)
    _replay_future(st, out)


def _on_timeout(st: NodeState, t: Timeout, out: list[Action]) -> None:
    if not st.started or t.height != st.height or t.round != st.round:
        return
    if t.kind == PROPOSE and st.step == Step.PROPOSE:
        _vote(st, PREVOTE, None, out)
        st.step = Step.PREVOTE
    elif t.kind == PREVOTE and st.step == Step.PREVOTE:
        _vote(st, PRECOMMIT, None, out)
        st.step = Step.PRECOMMIT
    elif t.kind == PRECOMMIT:
        _start_round(st, st.round + 1, out)


# -- the upon-rules ----------------------------------------------------------------------------


def _lock_allows(st: NodeState, vid: bytes, valid_round: int) -> bool:
    """Lines 23 and 29: ``lockedRound <= vr or lockedValue = v`` (with vr = -1 for line 22)."""
    return st.locked_round <= valid_round or st.locked_id == vid


def _has_quorum(st: NodeState, power: int) -> bool:
    return power >= st.params.validators(st.height).quorum


def _lock_on(st: NodeState, vid: bytes) -> None:
    st.locked_id, st.locked_round = vid, st.round


def _run_rules(st: NodeState, out: list[Action]) -> None:
    while _apply_one_rule(st, out):
        pass


def _apply_one_rule(st: NodeState, out: list[Action]) -> bool:
    """Apply the first enabled upon-rule; True if one fired (the caller loops to a fixpoint)."""
    p = st.params
    h, r = st.height, st.round
    # line 49: decide (any round)
    for pr, props in st.proposals.items():
        for vid, prop in props.items():
            if _has_quorum(st, st.tally.get((pr, PRECOMMIT, vid), 0)) and p.is_valid(prop.value):
                _decide(st, pr, vid, prop, out)
                return True
    # line 55: f+1 power already in a higher round
    vset = p.validators(h)
    higher = [rr for rr, who in st.senders.items() if rr > r and sum(map(vset.power_of, who)) >= vset.one_third]
    if higher:
        _start_round(st, max(higher), out)
        return True
    props = st.proposals.get(r, {})
    if st.step == Step.PROPOSE:
        for vid, prop in props.items():
            vr = prop.valid_round
            if vr == -1:  # line 22
                ok = p.is_valid(prop.value) and _lock_allows(st, vid, -1)
            elif vr < r and _has_quorum(st, st.tally.get((vr, PREVOTE, vid), 0)):  # line 28
                ok = p.is_valid(prop.value) and _lock_allows(st, vid, vr)
            else:
                continue
            _vote(st, PREVOTE, vid if ok else None, out)
            st.step = Step.PREVOTE
            return True
    # line 34
    if st.step == Step.PREVOTE and ("prevote-any", r) not in st.fired:
        if _has_quorum(st, st.tally_any.get((r, PREVOTE), 0)):
            st.fired.add(("prevote-any", r))
            out.append(ScheduleTimeout(PREVOTE, h, r, p.timeouts.delay(PREVOTE, r)))
            return True
    # line 36
    if st.step >= Step.PREVOTE and ("polka", r) not in st.fired:
        for vid, prop in props.items():
            if _has_quorum(st, st.tally.get((r, PREVOTE, vid), 0)) and p.is_valid(prop.value):
                st.fired.add(("polka", r))
                if st.step == Step.PREVOTE:
                    _lock_on(st, vid)
                    out.append(PersistVote(prop))  # the locked value survives a crash (see restore)
                    _vote(st, PRECOMMIT, vid, out)
                    st.step = Step.PRECOMMIT
                st.valid_value, st.valid_round = prop.value, r
                return True
    # line 44
    if st.step == Step.PREVOTE and _has_quorum(st, st.tally.get((r, PREVOTE, None), 0)):
        _vote(st, PRECOMMIT, None, out)
        st.step = Step.PRECOMMIT
        return True
    # line 47
    if ("precommit-any", r) not in st.fired and _has_quorum(st, st.tally_any.get((r, PRECOMMIT), 0)):
        st.fired.add(("precommit-any", r))
        out.append(ScheduleTimeout(PRECOMMIT, h, r, p.timeouts.delay(PRECOMMIT, r)))
        return True
    return False
