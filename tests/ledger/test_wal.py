"""ledger_lite.wal: framing, torn tails, corruption, compaction, durability, SIGKILL and recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_lite import cbor
from ledger_lite import consensus as C
from ledger_lite import wal as W
from ledger_lite.validators import Validator, ValidatorSet
from ledger_lite.wire import WireFormatError
from tests.ledger.sim import CHAIN_ID, SIM_TIMEOUTS, SimSigner, sim_sign, sim_verify, validator_dids

DIDS = validator_dids(4)
VSET = ValidatorSet(CHAIN_ID, tuple(Validator(d, 1) for d in DIDS))


def params(i: int = 0) -> C.Params:
    return C.Params(vset=VSET, signer=SimSigner(DIDS[i]), verifier=sim_verify, timeouts=SIM_TIMEOUTS)


def signed_vote(i: int, kind: C.VoteType, height: int, rnd: int, vid: bytes | None) -> C.Vote:
    v = C.Vote(kind, height, rnd, vid, DIDS[i])
    return C.Vote(kind, height, rnd, vid, DIDS[i], sim_sign(DIDS[i], v.sign_bytes(CHAIN_ID)))


def sample_records() -> list[W.Record]:
    vote = signed_vote(0, C.PREVOTE, 1, 0, None)
    prop = C.Proposal(1, 0, b"block one" * 10, -1, DIDS[1], b"s" * 16)
    return [
        W.InputRecord(1, C.Start()),
        W.InputRecord(1, C.ProposeValue(1, 0, b"v")),
        W.InputRecord(1, C.Received(prop)),
        W.InputRecord(1, C.Timeout("propose", 1, 0)),
        W.PersistRecord(vote),
        W.InputRecord(1, C.Received(signed_vote(2, C.PRECOMMIT, 2, 0, bytes(32)))),  # buffered for height 2
        W.PersistRecord(signed_vote(0, C.PRECOMMIT, 1, 0, None)),
    ]


def write(wal: W.Wal, records: list[W.Record]) -> None:
    for rec in records:
        if isinstance(rec, W.InputRecord):
            wal.append_input(rec.input, height=rec.height)
        elif isinstance(rec, W.PersistRecord):
            wal.persist(rec.msg)
        else:
            wal.end_height(rec.height)


def expected(records: list[W.Record], torn: int = 0) -> W.Recovered:
    return W.Recovered(
        height=1 if records else None,
        inputs=tuple((r.height, r.input) for r in records if isinstance(r, W.InputRecord)),
        persisted=tuple(r.msg for r in records if isinstance(r, W.PersistRecord)),
        torn_bytes=torn,
    )


# --------------------------------------------------------------------------- framing


def test_frame_layout_and_scan() -> None:
    payload = W.encode_record(W.InputRecord(7, C.Start()))
    framed = W.frame(payload)
    assert framed[:4] == len(payload).to_bytes(4, "big")
    assert framed[4:8] == zlib.crc32(payload).to_bytes(4, "big")
    assert cbor.loads(framed[8:]) == ["input", 7, ["start"]]
    assert W.scan(framed * 3) == ([payload] * 3, 3 * len(framed))
    assert W.scan(b"") == ([], 0)
    assert W.scan(framed[:-1]) == ([], 0)


def test_persisted_payload_is_the_wire_message() -> None:
    from ledger_lite.wire import encode_message

    vote = signed_vote(1, C.PRECOMMIT, 3, 2, bytes(32))
    assert W.encode_record(W.PersistRecord(vote)) == encode_message(vote)
    for rec in sample_records():
        assert W.decode_record(W.encode_record(rec)) == rec


def test_empty_log(tmp_path: Path) -> None:
    wal, rec = W.Wal.open(tmp_path / "wal")
    assert rec == W.Recovered(None, (), (), 0)
    assert (wal.size_bytes, wal.records_written, wal.fsyncs) == (0, 0, 0)
    wal.close()
    assert (tmp_path / "wal").exists()


def test_round_trip(tmp_path: Path) -> None:
    records = sample_records()
    wal, _ = W.Wal.open(tmp_path / "wal")
    write(wal, records)
    assert wal.records_written == len(records)
    assert wal.fsyncs == 2  # the two persisted votes, nothing else
    assert wal.size_bytes == (tmp_path / "wal").stat().st_size
    wal.close()
    wal2, rec = W.Wal.open(tmp_path / "wal")
    assert rec == expected(records)
    assert wal2.size_bytes == wal.size_bytes
    wal2.append_input(C.Timeout("prevote", 1, 0), height=1)  # appends after what was there
    wal2.close()
    _, rec3 = W.Wal.open(tmp_path / "wal")
    assert rec3.inputs[-1] == (1, C.Timeout("prevote", 1, 0))
    assert rec3.inputs[:-1] == rec.inputs


def test_memory_storage_writes_the_same_bytes(tmp_path: Path) -> None:
    records = sample_records() + [W.EndRecord(1), W.InputRecord(2, C.Timeout("precommit", 2, 1))]
    fwal, _ = W.Wal.open(tmp_path / "wal", fsync=False)
    disk = W.MemoryStorage()
    mwal, _ = W.Wal.attach(disk)
    write(fwal, records)
    write(mwal, records)
    fwal.close()
    assert (tmp_path / "wal").read_bytes() == bytes(disk.data)
    assert fwal.fsyncs == 0  # fsync=False


def test_torn_tail_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    records = sample_records()
    wal, _ = W.Wal.open(tmp_path / "full", fsync=False)
    write(wal, records)
    wal.close()
    data = (tmp_path / "full").read_bytes()
    last = len(W.frame(W.encode_record(records[-1])))
    start = len(data) - last
    path = tmp_path / "torn"
    for cut in range(start, len(data)):
        path.write_bytes(data[:cut])
        torn_wal, rec = W.Wal.open(path, fsync=False)
        torn_wal.close()
        assert rec == expected(records[:-1], torn=cut - start), cut
        assert path.read_bytes() == data[:start], cut  # the tail was cut from the file
    path.write_bytes(data)
    _, rec = W.Wal.open(path, fsync=False)
    assert rec == expected(records)


def test_bit_flip_in_the_middle_stops_at_the_corrupt_record(tmp_path: Path) -> None:
    records = sample_records()
    frames = [W.frame(W.encode_record(r)) for r in records]
    data = b"".join(frames)
    k = 3
    start = sum(map(len, frames[:k]))
    for offset in (0, 5, W.HEADER.size + 2, len(frames[k]) - 1):  # length, CRC, payload bytes
        bad = bytearray(data)
        bad[start + offset] ^= 0x10
        (tmp_path / "wal").write_bytes(bytes(bad))
        wal, rec = W.Wal.open(tmp_path / "wal")
        wal.close()
        assert rec == expected(records[:k], torn=len(data) - start), offset
        assert (tmp_path / "wal").read_bytes() == data[:start]


def test_good_crc_but_undecodable_payload_is_refused(tmp_path: Path) -> None:
    (tmp_path / "wal").write_bytes(W.frame(cbor.dumps(["input", 0, ["start"]])))
    with pytest.raises(WireFormatError, match="input.height"):
        W.Wal.open(tmp_path / "wal")
    (tmp_path / "wal").write_bytes(W.frame(b"\xff"))
    with pytest.raises(WireFormatError):
        W.Wal.open(tmp_path / "wal")


def test_oversized_length_field_is_corruption() -> None:
    bogus = W.HEADER.pack(W.MAX_RECORD + 1, 0) + bytes(16)
    assert W.scan(bogus) == ([], 0)


# --------------------------------------------------------------------------- compaction


def test_end_height_compacts(tmp_path: Path) -> None:
    records = sample_records()
    wal, _ = W.Wal.open(tmp_path / "wal")
    write(wal, records)
    before = wal.fsyncs
    wal.end_height(1)
    assert wal.fsyncs == before + 3  # the marker, the new file, the directory
    later = [
        W.InputRecord(2, C.Start()),
        W.PersistRecord(signed_vote(0, C.PREVOTE, 2, 0, None)),
    ]
    write(wal, later)
    wal.close()
    assert wal.size_bytes == (tmp_path / "wal").stat().st_size
    _, rec = W.Wal.open(tmp_path / "wal")
    assert rec.height == 2
    # the height-2 vote received at height 1 survives the compaction; nothing else of height 1
    assert rec.inputs == ((1, records[5].input), (2, C.Start()))  # type: ignore[union-attr]
    assert rec.persisted == (later[1].msg,)  # type: ignore[union-attr]
    data = (tmp_path / "wal").read_bytes()
    image = W.compact(b"".join(W.frame(W.encode_record(r)) for r in records), 1)
    assert data.startswith(image)
    assert not list(tmp_path.glob("*.compact"))


def test_end_height_with_nothing_after_it(tmp_path: Path) -> None:
    wal, _ = W.Wal.open(tmp_path / "wal")
    write(wal, sample_records()[:5])
    wal.end_height(1)
    wal.end_height(2)
    wal.close()
    _, rec = W.Wal.open(tmp_path / "wal")
    assert rec == W.Recovered(3, (), (), 0, ended=2)
    with pytest.raises(W.WalAheadError, match="block store"):  # the block store lost block 2
        W.recover(params(0), height=2, recovered=rec)
    state, _ = W.recover(params(0), height=3, recovered=rec)
    assert state.height == 3
    assert len((tmp_path / "wal").read_bytes()) == len(W.frame(W.encode_record(W.EndRecord(2))))


def test_crash_between_writing_and_renaming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = sample_records()
    wal, _ = W.Wal.open(tmp_path / "wal")
    write(wal, records)

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(W.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        wal.end_height(1)
    monkeypatch.undo()
    wal.close()
    tmp = tmp_path / "wal.compact"
    assert tmp.exists()  # the written, fsynced, never renamed new file
    _, rec = W.Wal.open(tmp_path / "wal")
    assert not tmp.exists()  # the leftover is ignored and removed
    # the old file is intact, with the durable end marker: height 1 is over, height 2 kept
    assert rec.height == 2
    assert rec.inputs == ((1, records[5].input),)  # type: ignore[union-attr]
    assert rec.torn_bytes == 0


def test_leftover_garbage_temp_file_is_ignored(tmp_path: Path) -> None:
    wal, _ = W.Wal.open(tmp_path / "wal")
    write(wal, sample_records())
    wal.close()
    (tmp_path / "wal.compact").write_bytes(b"\x00\x01half a compaction")
    _, rec = W.Wal.open(tmp_path / "wal")
    assert rec == expected(sample_records())


# --------------------------------------------------------------------------- durability


def test_persist_is_durable_and_inputs_are_not() -> None:
    disk = W.MemoryStorage()
    wal, _ = W.Wal.attach(disk)
    vote = signed_vote(0, C.PREVOTE, 1, 0, None)
    wal.append_input(C.Start(), height=1)
    assert (disk.durable, disk.fsyncs) == (0, 0)
    wal.persist(vote)
    assert disk.durable == len(disk.data) and disk.fsyncs == 1 == wal.fsyncs
    wal.append_input(C.Timeout("prevote", 1, 0), height=1)
    disk.crash()  # a power cut: the unsynced input is lost
    _, rec = W.Wal.attach(disk)
    assert rec.inputs == ((1, C.Start()),) and rec.persisted == (vote,)


CHILD = textwrap.dedent(
    """
    import sys
    from ledger_lite import consensus as C, wal as W
    wal, rec = W.Wal.open(sys.argv[1])
    print(len(rec.persisted), flush=True)
    i = 0
    while True:
        i += 1
        wal.append_input(C.Timeout("propose", 1, i), height=1)
        wal.append_input(C.ProposeValue(1, i, b"x" * (i % 3000)), height=1)
        wal.persist(C.Vote("prevote", 1, i, None, "did:example:child", b"s" * 16))
        print(i, flush=True)
    """
)


def test_sigkill_while_appending(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    for _ in range(2):  # the second child appends to what the first left behind
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout is not None
        previous = int(proc.stdout.readline())
        reported = 0
        while reported < 150:
            reported = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        reported = max([reported, *map(int, rest)])
        wal, rec = W.Wal.open(path)
        wal.close()
        rounds = [m.round for m in rec.persisted]
        # every vote the child reported as persisted is there, in order, nothing conflicting
        assert len(rounds) >= previous + reported
        assert rounds[previous : previous + reported] == list(range(1, reported + 1))


# --------------------------------------------------------------------------- recovery


class Node:
    """One consensus node driven through a WAL the way the runtime does it."""

    def __init__(self, disk: W.MemoryStorage, i: int = 0) -> None:
        self.disk = disk
        self.p = params(i)
        self.wal, rec = W.Wal.attach(disk)
        self.sent: list[C.Message] = []
        self.state = C.initial_state(self.p)
        self.recovered = rec

    def execute(self, actions: list[C.Action]) -> None:
        for act in actions:
            if isinstance(act, C.PersistVote):
                self.wal.persist(act.msg)
            elif isinstance(act, C.Broadcast):
                self.sent.append(act.msg)

    def feed(self, inp: C.Input) -> None:
        self.wal.append_input(inp, height=self.state.height)
        self.state, actions = C.step(self.state, inp)
        self.execute(actions)


def test_recover_resumes_without_conflicting_votes() -> None:
    disk = W.MemoryStorage()
    node = Node(disk)
    node.feed(C.Start())
    node.feed(C.Timeout("propose", 1, 0))  # prevote nil
    node.feed(C.Received(signed_vote(1, C.PREVOTE, 1, 0, None)))
    node.feed(C.Received(signed_vote(2, C.PREVOTE, 1, 0, None)))  # a nil polka: precommit nil
    own = [m for m in node.sent if m.signer == DIDS[0]]
    assert [(m.type, m.value_id) for m in own if isinstance(m, C.Vote)] == [(C.PREVOTE, None), (C.PRECOMMIT, None)]
    node.feed(C.Received(signed_vote(3, C.PREVOTE, 1, 0, bytes(32))))  # unsynced: lost by the crash
    disk.crash()
    again = Node(disk)
    assert again.recovered.height == 1 and len(again.recovered.persisted) == 2
    state, actions = W.recover(again.p, height=1, recovered=again.recovered)
    again.execute(actions)
    assert {m.slot(): m for m in state.signed.values()} == {m.slot(): m for m in own}
    for msg in again.sent:  # re-sends what it signed before, never anything else for those slots
        if msg.slot() in state.signed:
            assert msg == state.signed[msg.slot()]
    assert (state.height, state.round, state.step) == (node.state.height, node.state.round, node.state.step)
    assert not any(isinstance(a, C.PersistVote) for a in actions)  # nothing new to sign


def test_recover_replays_a_commit_the_block_store_does_not_have() -> None:
    disk = W.MemoryStorage()
    node = Node(disk)
    node.feed(C.Start())
    proposer = VSET.proposer(1, 0)
    value = b"the block"
    prop = C.Proposal(1, 0, value, -1, proposer)
    prop = C.Proposal(1, 0, value, -1, proposer, sim_sign(proposer, prop.sign_bytes(CHAIN_ID)))
    if proposer == DIDS[0]:
        node.feed(C.ProposeValue(1, 0, value))
    else:
        node.feed(C.Received(prop))
    vid = C.value_id(value)
    for i in (1, 2, 3):
        node.feed(C.Received(signed_vote(i, C.PREVOTE, 1, 0, vid)))
    for i in (1, 2):
        node.feed(C.Received(signed_vote(i, C.PRECOMMIT, 1, 0, vid)))
    assert node.state.decisions == ((1, value),)
    node.wal.persist(signed_vote(0, C.PREVOTE, 2, 0, None))  # makes everything durable
    disk.crash()
    rec = Node(disk).recovered
    # crash before the block was stored: the replay commits it again
    state, actions = W.recover(params(0), height=1, recovered=rec)
    assert [a.value for a in actions if isinstance(a, C.Commit)] == [value]
    assert state.height == 2
    # the block store has it: height 2 wins, height-1 records are ignored
    state2, actions2 = W.recover(params(0), height=2, recovered=rec)
    assert not any(isinstance(a, C.Commit) for a in actions2)
    assert state2.height == 2 and set(state2.signed) == {(2, 0, C.PREVOTE)}


def test_recover_empty_log_starts_fresh() -> None:
    state, actions = W.recover(params(0), height=5, recovered=W.Recovered(None, (), (), 0))
    assert state.started and state.height == 5 and state.round == 0
    assert any(isinstance(a, C.ScheduleTimeout) for a in actions)


VALUES = (b"value one", b"value two")


def _proposal(rnd: int, value: bytes, valid_round: int) -> C.Proposal:
    proposer = VSET.proposer(1, rnd)
    prop = C.Proposal(1, rnd, value, valid_round, proposer)
    return C.Proposal(1, rnd, value, valid_round, proposer, sim_sign(proposer, prop.sign_bytes(CHAIN_ID)))


delta = st.integers(0, 3)  # the op's round: the node's round, or (1 in 4) the next one
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("vote"),
            delta,
            st.integers(1, 3),
            st.sampled_from([C.PREVOTE, C.PRECOMMIT]),
            st.sampled_from([None, *VALUES]),
        ),
        st.tuples(st.just("proposal"), delta, st.sampled_from(VALUES), st.integers(-1, 2)),
        st.tuples(st.just("timeout"), delta, st.sampled_from(["propose", "prevote", "precommit"])),
        st.tuples(st.just("value"), delta, st.sampled_from(VALUES)),
        st.tuples(st.just("crash"), st.integers(0, 400)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_crash_anywhere_never_signs_against_the_log(script: list[tuple[object, ...]]) -> None:
    """One node driven through the WAL by random inputs, crashed at random points with random torn
    tails and recovered: across all incarnations it never sends two different messages for a slot,
    and never sends an own message that is not durable in the log."""
    disk = W.MemoryStorage()
    node = Node(disk)
    sent: dict[tuple[int, int, str], C.Message] = {}

    def check(actions: list[C.Action]) -> None:
        for act in actions:
            if isinstance(act, C.Broadcast) and act.msg.signer == DIDS[0]:
                assert sent.setdefault(act.msg.slot(), act.msg) == act.msg, "double sign"

    def run(inp: C.Input) -> None:
        node.wal.append_input(inp, height=node.state.height)
        node.state, actions = C.step(node.state, inp)
        node.execute(actions)
        check(actions)

    run(C.Start())
    for op in script:
        kind = op[0]
        rnd = node.state.round + op[1] // 3  # type: ignore[operator]
        if kind == "vote":
            _, _, i, vtype, value = op
            vid = None if value is None else C.value_id(value)  # type: ignore[arg-type]
            run(C.Received(signed_vote(i, vtype, 1, rnd, vid)))  # type: ignore[arg-type]
        elif kind == "proposal":
            _, _, value, vr = op
            if vr < rnd and VSET.proposer(1, rnd) != DIDS[0]:  # type: ignore[operator]
                run(C.Received(_proposal(rnd, value, vr)))  # type: ignore[arg-type]
        elif kind == "timeout":
            run(C.Timeout(op[2], node.state.height, rnd))  # type: ignore[arg-type]
        elif kind == "value":
            run(C.ProposeValue(node.state.height, rnd, op[2]))  # type: ignore[arg-type]
        else:
            disk.crash(op[1])  # type: ignore[arg-type]
            node = Node(disk)
            node.state, actions = W.recover(node.p, height=1, recovered=node.recovered)
            node.execute(actions)
            check(actions)
            # everything the node ever sent is durable in the log (or the node re-persisted it)
            logged = set(W.Wal.attach(W.MemoryStorage(bytes(disk.data)))[1].persisted)
            assert {m for m in sent.values() if m.height >= 1} <= logged


@settings(max_examples=300)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_after_good_records(garbage: bytes, with_valid_frame: bool) -> None:
    """Whatever follows the good records, scanning keeps them and ``attach`` raises nothing but
    ``WireFormatError`` (only for a CRC-valid record that does not decode)."""
    records = sample_records()
    good = b"".join(W.frame(W.encode_record(r)) for r in records)
    tail = W.frame(garbage) if with_valid_frame else garbage
    payloads, length = W.scan(good + tail)
    assert length >= len(good) and len(payloads) >= len(records)
    try:
        _, rec = W.Wal.attach(W.MemoryStorage(good + tail))
    except WireFormatError:
        assert with_valid_frame
        return
    assert rec.inputs[: len(expected(records).inputs)] == expected(records).inputs
    try:
        W.decode_record(garbage)
    except WireFormatError:
        pass
