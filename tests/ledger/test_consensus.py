"""Unit tests of the Tendermint core's upon-rules (paper line numbers in the names), driven with
hand-built, Ed25519-signed messages, and of the validator set (quorum, hash, weighted proposer)."""

from __future__ import annotations

from collections import Counter

import pytest

from ledger_lite import consensus as C
from ledger_lite.didkey import did_key
from ledger_lite.errors import GenesisError
from ledger_lite.keys import SigningKey
from ledger_lite.validators import Validator, ValidatorSet

CHAIN = "test-chain"
KEYS = [SigningKey.from_private_bytes("Ed25519", bytes([i + 7]) * 32) for i in range(4)]
DIDS = [did_key(k.public) for k in KEYS]
BY_DID = dict(zip(DIDS, KEYS, strict=True))
VSET = ValidatorSet.from_genesis({"chain_id": CHAIN, "validators": [{"did": d, "power": 1} for d in DIDS]})
TIMEOUTS = C.TimeoutConfig(propose=(3.0, 0.5), prevote=(1.0, 0.25), precommit=(1.0, 0.125))


class KeySigner:
    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.did = did_key(key.public)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def is_valid(value: bytes) -> bool:
    return not value.startswith(b"bad")


def node(did: str, *, height: int = 1) -> C.NodeState:
    return C.initial_state(C.Params(VSET, KeySigner(BY_DID[did]), timeouts=TIMEOUTS, is_valid=is_valid), height=height)


def non_proposer(h: int = 1, r: int = 0) -> str:
    return next(d for d in VSET.dids if d != VSET.proposer(h, r))


def others(me: str) -> list[str]:
    return [d for d in VSET.dids if d != me]


def proposal(value: bytes, *, h: int = 1, r: int = 0, vr: int = -1, by: str | None = None) -> C.Proposal:
    p = C.Proposal(h, r, value, vr, by or VSET.proposer(h, r))
    sig = BY_DID[p.proposer].sign(p.sign_bytes(CHAIN))
    return C.Proposal(h, r, value, vr, p.proposer, sig)


def vote(kind: C.VoteType, value: bytes | None, voter: str, *, h: int = 1, r: int = 0, chain: str = CHAIN) -> C.Vote:
    vid = None if value is None else C.value_id(value)
    v = C.Vote(kind, h, r, vid, voter)
    return C.Vote(kind, h, r, vid, voter, BY_DID[voter].sign(v.sign_bytes(chain)))


def feed(st: C.NodeState, *inputs: C.Input) -> tuple[C.NodeState, list[C.Action]]:
    actions: list[C.Action] = []
    for inp in inputs:
        st, out = C.step(st, inp, now=0.0)
        actions += out
    return st, actions


def own(actions: list[C.Action], kind: type) -> list:  # type: ignore[type-arg]
    return [a.msg for a in actions if isinstance(a, C.Broadcast) and isinstance(a.msg, kind)]


def own_votes(actions: list[C.Action], kind: str) -> list[C.Vote]:
    return [m for m in own(actions, C.Vote) if m.type == kind]


def received(*msgs: C.Message) -> list[C.Input]:
    return [C.Received(m) for m in msgs]


#: a validator that proposes none of rounds 0-2 of height 1
BYSTANDER = next(d for d in VSET.dids if d not in {VSET.proposer(1, r) for r in range(3)})


def locked_node(value: bytes, *, r: int = 0, me: str | None = None) -> tuple[C.NodeState, str]:
    """A non-proposer of (1, r) that saw a proposal and a polka for ``value`` in round r: locked."""
    me = me or non_proposer(1, r)
    st, _ = feed(node(me), C.Start())
    for rr in range(r):
        st, _ = feed(st, C.Timeout("propose", 1, rr), C.Timeout("prevote", 1, rr), C.Timeout("precommit", 1, rr))
    st, acts = feed(
        st, *received(proposal(value, r=r)), *received(*(vote("prevote", value, d, r=r) for d in others(me)))
    )
    assert st.locked_round == r and st.locked_id == C.value_id(value)
    return st, me


# --------------------------------------------------------------------------- validator set


def test_quorum_and_thresholds() -> None:
    vs = ValidatorSet("c", tuple(Validator(f"v{i}", p) for i, p in enumerate([1, 2, 3, 4])))
    assert (vs.total_power, vs.quorum, vs.one_third, vs.power_of("v3"), vs.power_of("nobody")) == (10, 7, 4, 4, 0)
    assert VSET.quorum == 3 and VSET.one_third == 2
    seven = ValidatorSet("c", tuple(Validator(f"v{i}", 1) for i in range(7)))
    assert seven.quorum == 5 and seven.one_third == 3


def test_hash_is_order_independent_and_binds_chain_and_power() -> None:
    a = ValidatorSet("c", (Validator("x", 1), Validator("y", 2)))
    assert a.hash() == ValidatorSet("c", (Validator("y", 2), Validator("x", 1))).hash()
    assert a.hash() != ValidatorSet("d", (Validator("x", 1), Validator("y", 2))).hash()
    assert a.hash() != ValidatorSet("c", (Validator("x", 1), Validator("y", 3))).hash()


@pytest.mark.parametrize(
    "genesis",
    [
        {"chain_id": "c", "validators": []},
        {"chain_id": "c", "validators": [{"did": DIDS[0], "power": 0}]},
        {"chain_id": "c", "validators": [{"did": DIDS[0], "power": 1}, {"did": DIDS[0], "power": 2}]},
        {"chain_id": "c", "validators": [{"did": "did:key:nope", "power": 1}]},
        {"chain_id": "", "validators": [{"did": DIDS[0], "power": 1}]},
        {"validators": [{"did": DIDS[0], "power": 1}]},
    ],
)
def test_bad_genesis_is_rejected(genesis: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(GenesisError):
        ValidatorSet.from_genesis(genesis)


def test_proposer_rotation_is_round_robin_for_equal_power() -> None:
    seq = [VSET.proposer(h, 0) for h in range(1, 9)]
    assert sorted(seq[:4]) == sorted(DIDS) and seq[4:] == seq[:4]
    assert VSET.proposer(3, 2) == VSET.proposer(5, 0)  # one increment per height and per round


def test_proposer_rotation_is_proportional_to_power() -> None:
    vs = ValidatorSet("c", (Validator("a", 1), Validator("b", 2), Validator("c", 7)))
    counts = Counter(vs.proposer(h, 0) for h in range(1, 1001))
    assert counts == {"a": 100, "b": 200, "c": 700}
    window = [vs.proposer(h, 0) for h in range(1, 11)]  # every window of total power is exact
    assert Counter(window) == {"a": 1, "b": 2, "c": 7}
    assert window.index("c") == 0 and window != sorted(window)  # interleaved, not in blocks


# --------------------------------------------------------------------------- the core


def test_start_schedules_propose_timeout_and_proposer_asks_app_for_value() -> None:
    st, acts = feed(node(non_proposer()), C.Start())
    assert acts == [C.ScheduleTimeout("propose", 1, 0, 3.0)]
    prop_did = VSET.proposer(1, 0)
    st, acts = feed(node(prop_did), C.Start())
    assert C.RequestValue(1, 0) in acts
    st, acts = feed(st, C.ProposeValue(1, 0, b"block-1"))
    # own proposal and own prevote: each persisted before it is broadcast
    kinds = [type(a).__name__ for a in acts if isinstance(a, C.PersistVote | C.Broadcast)]
    assert kinds == ["PersistVote", "Broadcast", "PersistVote", "Broadcast"]
    (p,) = own(acts, C.Proposal)
    assert (p.value, p.valid_round) == (b"block-1", -1)
    BY_DID[prop_did].public.verify(p.signature, p.sign_bytes(CHAIN))
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [C.value_id(b"block-1")]


def test_line22_prevote_for_valid_proposal_and_nil_for_invalid() -> None:
    st, acts = feed(node(non_proposer()), C.Start(), C.Received(proposal(b"v")))
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [C.value_id(b"v")]
    assert st.step == C.Step.PREVOTE
    st, acts = feed(node(non_proposer()), C.Start(), C.Received(proposal(b"bad value")))
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [None]


def test_timeout_propose_prevotes_nil_and_timeouts_grow_with_round() -> None:
    me = non_proposer(1, 0)
    st, acts = feed(node(me), C.Start(), C.Timeout("propose", 1, 0))
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [None]
    delays: dict[tuple[str, int], float] = {}
    for r in range(3):
        st, acts = feed(st, *received(*(vote("prevote", None, d, r=r) for d in others(me)[:2])))
        st, more = feed(st, *received(*(vote("precommit", None, d, r=r) for d in others(me)[:2])))
        for a in acts + more:
            if isinstance(a, C.ScheduleTimeout):
                delays[(a.kind, a.round)] = a.delay
        assert st.round == r  # precommit timeout moves to r + 1
        st, acts = feed(st, C.Timeout("precommit", 1, r))
        for a in acts:
            if isinstance(a, C.ScheduleTimeout):
                delays[(a.kind, a.round)] = a.delay
        st, acts = feed(st, C.Timeout("propose", 1, r + 1))
    assert [delays[("prevote", r)] for r in range(3)] == [1.0, 1.25, 1.5]  # line 34
    assert [delays[("precommit", r)] for r in range(3)] == [1.0, 1.125, 1.25]  # line 47
    assert [delays[("propose", r)] for r in range(1, 4)] == [3.5, 4.0, 4.5]


def test_line44_nil_polka_precommits_nil() -> None:
    me = non_proposer()
    st, acts = feed(node(me), C.Start(), C.Timeout("propose", 1, 0))
    st, acts = feed(st, *received(*(vote("prevote", None, d) for d in others(me)[:2])))
    assert [v.value_id for v in own_votes(acts, C.PRECOMMIT)] == [None]
    assert st.locked_round == -1


def test_line34_timeout_prevote_on_split_prevotes_then_nil_precommit() -> None:
    me = non_proposer()
    st, acts = feed(node(me), C.Start(), C.Received(proposal(b"v")))
    a, b, _ = others(me)
    st, acts = feed(st, C.Received(vote("prevote", b"w", a)), C.Received(vote("prevote", None, b)))
    assert C.ScheduleTimeout("prevote", 1, 0, 1.0) in acts and not own_votes(acts, C.PRECOMMIT)
    st, acts = feed(st, C.Timeout("prevote", 1, 0))
    assert [v.value_id for v in own_votes(acts, C.PRECOMMIT)] == [None]


def test_line36_polka_locks_and_precommits() -> None:
    me = non_proposer()
    st, _ = feed(node(me), C.Start(), C.Received(proposal(b"v")))
    st, acts = feed(st, *received(*(vote("prevote", b"v", d) for d in others(me))))
    persisted = [a.msg for a in acts if isinstance(a, C.PersistVote)]
    assert persisted == [proposal(b"v"), own_votes(acts, C.PRECOMMIT)[0]]  # the locked proposal, then our vote
    assert st.step == C.Step.PRECOMMIT and (st.valid_value, st.valid_round) == (b"v", 0)
    assert [v.value_id for v in st.signed.values() if isinstance(v, C.Vote) and v.type == C.PRECOMMIT] == [
        C.value_id(b"v")
    ]


def test_lock_holds_against_a_new_proposal() -> None:
    st, me = locked_node(b"v", me=BYSTANDER)
    st, _ = feed(st, C.Timeout("precommit", 1, 0))
    # round 1: a fresh value without valid round gets a nil prevote from a locked node
    st, acts = feed(st, C.Received(proposal(b"w", r=1)))
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [None]
    # ... and so does a proposal whose polka (round 0) is older than our lock (round 1)
    st2, _ = locked_node(b"v", r=1, me=BYSTANDER)
    st2, _ = feed(st2, C.Timeout("precommit", 1, 1))
    early = [vote("prevote", b"w", d, r=0) for d in others(BYSTANDER)]
    st2, acts = feed(st2, *received(*early), C.Received(proposal(b"w", r=2, vr=0)))
    assert st2.locked_round == 1
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [None]


def test_line28_unlock_on_higher_round_polka() -> None:
    me = BYSTANDER
    st, _ = locked_node(b"v", r=0, me=me)
    st, _ = feed(st, C.Timeout("precommit", 1, 0), C.Timeout("propose", 1, 1))
    st, _ = feed(st, *received(*(vote("prevote", None, d, r=1) for d in others(me)[:1])), C.Timeout("prevote", 1, 1))
    # a polka for w in round 1 seen after we precommitted nil: valid value moves, lock stays
    st, _ = feed(st, *received(*(vote("prevote", b"w", d, r=1) for d in others(me))))
    st, _ = feed(st, C.Received(proposal(b"w", r=1)))
    assert (st.valid_value, st.valid_round, st.locked_round) == (b"w", 1, 0)
    st, _ = feed(st, C.Timeout("precommit", 1, 1))
    assert st.round == 2
    # line 28: a proposal of w with valid round 1 >= our lock round 0 unlocks us
    st, acts = feed(st, C.Received(proposal(b"w", r=2, vr=1)))
    assert [v.value_id for v in own_votes(acts, C.PREVOTE)] == [C.value_id(b"w")]


def test_proposer_reproposes_valid_value_with_valid_round() -> None:
    # find a node that is not the round-0 proposer but is the round-1 proposer
    me = VSET.proposer(1, 1)
    assert me != VSET.proposer(1, 0)
    st, _ = feed(node(me), C.Start(), C.Received(proposal(b"v")))
    st, _ = feed(st, *received(*(vote("prevote", b"v", d) for d in others(me))))
    assert (st.valid_value, st.locked_round) == (b"v", 0)
    st, acts = feed(st, C.Timeout("precommit", 1, 0))
    (p,) = own(acts, C.Proposal)
    assert (p.round, p.value, p.valid_round) == (1, b"v", 0)
    assert not [a for a in acts if isinstance(a, C.RequestValue)]


def test_line49_decide_commits_with_certificate_and_resets_for_next_height() -> None:
    st, me = locked_node(b"v")
    precommits = [vote("precommit", b"v", d) for d in others(me)[:2]]
    st, acts = feed(st, *received(*precommits))
    (commit,) = [a for a in acts if isinstance(a, C.Commit)]
    assert (commit.height, commit.round, commit.value) == (1, 0, b"v")
    assert {v.voter for v in commit.certificate} == {me, *(v.voter for v in precommits)}
    assert st.height == 2 and st.round == 0 and st.locked_round == -1 and st.valid_value is None


def test_line49_decides_for_an_earlier_round_from_any_step() -> None:
    me = non_proposer()
    st, _ = feed(node(me), C.Start(), C.Timeout("propose", 1, 0))
    st, acts = feed(st, C.Received(proposal(b"v")), *received(*(vote("precommit", b"v", d) for d in others(me))))
    assert [a.value for a in acts if isinstance(a, C.Commit)] == [b"v"]


def test_line55_round_skip_on_f_plus_1_higher_round_messages() -> None:
    me = non_proposer()
    st, _ = feed(node(me), C.Start())
    a, b, _ = others(me)
    st, _ = feed(st, C.Received(vote("prevote", None, a, r=5)))
    assert st.round == 0  # f = 1: one message is not enough
    st, acts = feed(st, C.Received(vote("precommit", None, b, r=5)))
    assert st.round == 5 and C.ScheduleTimeout("propose", 1, 5, 5.5) in acts


def test_duplicates_count_once_and_equivocation_is_evidence() -> None:
    me = non_proposer()
    st, _ = feed(node(me), C.Start(), C.Received(proposal(b"v")))
    a, b, _ = others(me)
    pv = vote("prevote", b"v", a)
    st, acts = feed(st, C.Received(pv), C.Received(pv), C.Received(pv))
    assert st.tally[(0, C.PREVOTE, C.value_id(b"v"))] == 2 and not own_votes(acts, C.PRECOMMIT)
    st, acts = feed(st, C.Received(vote("prevote", None, a)))
    assert [type(x) for x in acts] == [C.Evidence] and len(st.evidence) == 1
    assert st.tally_any[(0, C.PREVOTE)] == 2  # the equivocator counts once towards "any"


def test_bad_signature_foreign_chain_non_validator_and_wrong_proposer_are_dropped() -> None:
    me = non_proposer()
    st, _ = feed(node(me), C.Start())
    a = others(me)[0]
    forged = C.Vote(C.PREVOTE, 1, 0, None, a, b"\x00" * 64)
    other_chain = vote("prevote", None, a, chain="other-chain")
    outsider_key = SigningKey.from_private_bytes("Ed25519", b"\x99" * 32)
    outsider = did_key(outsider_key.public)
    ov = C.Vote(C.PREVOTE, 1, 0, None, outsider)
    ov = C.Vote(C.PREVOTE, 1, 0, None, outsider, outsider_key.sign(ov.sign_bytes(CHAIN)))
    wrong = proposal(b"v", by=non_proposer(1, 0))
    st2, acts = feed(st, *received(forged, other_chain, ov, wrong))
    assert acts == [] and st2.dropped == st.dropped + 4 and st2.votes == {} and st2.proposals == {}


def test_future_height_messages_are_buffered_bounded_and_replayed() -> None:
    st, me = locked_node(b"v")
    h2 = [vote("prevote", None, d, h=2) for d in others(me)]
    st, _ = feed(st, *received(*h2), C.Received(vote("prevote", None, others(me)[0], h=9)))
    assert len(st.future) == 3 and st.votes[(0, C.PREVOTE)] is not None
    st, acts = feed(st, *received(*(vote("precommit", b"v", d) for d in others(me))))
    assert st.height == 2 and st.future == () and st.tally[(0, C.PREVOTE, None)] == 3
    small = C.initial_state(C.Params(VSET, KeySigner(BY_DID[me]), max_future=2))
    small, _ = feed(small, C.Start(), *received(*h2))
    assert len(small.future) == 2 and small.dropped == 1


def test_step_does_not_mutate_its_input() -> None:
    st, me = locked_node(b"v")
    before = (st.height, st.round, st.step, dict(st.tally), {k: dict(v) for k, v in st.votes.items()}, dict(st.signed))
    st2, _ = feed(st, *received(*(vote("precommit", b"v", d) for d in others(me))))
    assert st2.height == 2
    assert (st.height, st.round, st.step, st.tally, st.votes, st.signed) == before


def test_restore_keeps_lock_and_never_signs_a_conflicting_vote() -> None:
    st, me = locked_node(b"v")
    persisted = [*st.signed.values(), proposal(b"v")]  # own messages + the locked proposal
    back = C.restore(st.params, height=1, persisted=persisted)
    assert (back.round, back.locked_id, back.locked_round) == (0, C.value_id(b"v"), 0)
    assert (back.valid_value, back.valid_round) == (b"v", 0)
    # after the crash it sees nil prevotes in round 0 (say its old peers' view): it would precommit
    # nil, but it already precommitted v in round 0, so it re-sends that precommit instead
    back, acts = feed(back, C.Start(), C.Received(proposal(b"v")))
    back, more = feed(back, *received(*(vote("prevote", None, d) for d in others(me))))
    assert [v.value_id for v in own_votes(acts + more, C.PRECOMMIT)] == [C.value_id(b"v")]
    assert not [a for a in acts + more if isinstance(a, C.PersistVote)]  # nothing newly signed
    # its own persisted votes count again: two more precommits for v decide
    back, acts = feed(back, *received(*(vote("precommit", b"v", d) for d in others(me)[:2])))
    assert [a.value for a in acts if isinstance(a, C.Commit)] == [b"v"]


def test_restore_rejects_someone_elses_messages() -> None:
    from ledger_lite.errors import DoubleSignError

    st = node(DIDS[0])
    with pytest.raises(DoubleSignError):
        C.restore(st.params, height=1, persisted=[vote("prevote", None, DIDS[1])])


def test_validator_set_per_height() -> None:
    """``Params.vset_at``: at height 2 a fifth validator joins and the first one leaves; its votes at
    height 2 count nothing, the newcomer's do, and the proposer is the new set's."""
    extra = SigningKey.from_private_bytes("Ed25519", bytes([99]) * 32)
    BY_DID[did_key(extra.public)] = extra
    gone = DIDS[0]
    new = ValidatorSet(CHAIN, tuple(Validator(d, 1) for d in [*DIDS[1:], did_key(extra.public)]))
    assert gone not in new and len(new) == 4

    def vset_at(h: int) -> ValidatorSet:
        return VSET if h == 1 else new

    me = DIDS[1]
    params = C.Params(VSET, KeySigner(BY_DID[me]), timeouts=TIMEOUTS, is_valid=is_valid, vset_at=vset_at)
    st, _ = feed(C.initial_state(params, height=2), C.Start())
    value = b"block at 2"
    prop = C.Proposal(2, 0, value, -1, new.proposer(2, 0))
    prop = C.Proposal(2, 0, value, -1, prop.proposer, BY_DID[prop.proposer].sign(prop.sign_bytes(CHAIN)))
    st, out = feed(st, C.Received(prop))
    assert [v.value_id for v in own_votes(out, C.PREVOTE)] == [C.value_id(value)]
    # the departed validator's precommit is dropped; three members of the new set decide
    dropped = st.dropped
    st, out = feed(st, C.Received(vote(C.PRECOMMIT, value, gone, h=2)))
    assert st.dropped == dropped + 1
    voters = [d for d in new.dids if d != me][:2]
    st, out = feed(st, *received(*(vote(C.PRECOMMIT, value, d, h=2) for d in voters)))
    assert not [a for a in out if isinstance(a, C.Commit)]  # 2 of 4 new + none of ours yet
    st, out = feed(st, *received(*(vote(C.PREVOTE, value, d, h=2) for d in voters)))
    commits = [a for a in out if isinstance(a, C.Commit)]
    assert [c.height for c in commits] == [2]
    assert {v.voter for v in commits[0].certificate} <= set(new.dids)
