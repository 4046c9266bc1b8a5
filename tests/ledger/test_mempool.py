"""The mempool: FIFO reaping, bounds with the stated FULL policy, dedupe and check-once, commits
and rechecks; with a counting fake check, and with the real app (real attestations)."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_lite.app import LedgerApp, TxInfo, TxRejected
from ledger_lite.attestation import AttestationBuilder
from ledger_lite.block import Block
from ledger_lite.didkey import did_key
from ledger_lite.errors import CoseError, ValidityError
from ledger_lite.genesis import make_test_genesis
from ledger_lite.keys import SigningKey
from ledger_lite.mempool import AddStatus, Mempool
from ledger_lite.txs import TxKind

NOW = 1_800_000_000.0


class CountingCheck:
    """Accepts txs unless they start with ``b"bad"`` (rejected) or ``b"late"`` (transient);
    counts calls per tx."""

    def __init__(self) -> None:
        self.calls: Counter[bytes] = Counter()

    def __call__(self, tx: bytes) -> TxInfo:
        self.calls[tx] += 1
        tid = hashlib.sha256(tx).digest()
        if tx.startswith(b"bad"):
            raise TxRejected("bad tx", tx_id=tid)
        if tx.startswith(b"late"):
            raise ValidityError("not yet")
        if tx.startswith(b"junk"):
            raise CoseError("junk")
        return TxInfo(TxKind.ATTESTATION, tid, "did:key:test", None)


def tx(i: int, size: int = 10) -> bytes:
    return f"tx-{i:04d}".encode().ljust(size, b".")


def test_fifo_reap_without_removing() -> None:
    pool = Mempool(CountingCheck())
    txs = [tx(i) for i in range(5)]
    assert [pool.add(t).status for t in txs] == [AddStatus.ADDED] * 5
    assert pool.reap(max_txs=3, max_bytes=1000) == txs[:3]
    assert pool.reap(max_txs=100, max_bytes=25) == txs[:2]  # stops at the first that does not fit
    assert pool.reap(max_txs=100, max_bytes=1000) == txs and len(pool) == 5 and pool.size_bytes == 50


def test_duplicates_and_rejections_are_checked_once() -> None:
    check = CountingCheck()
    pool = Mempool(check)
    first = pool.add(tx(1))
    again = pool.add(tx(1))
    assert (first.status, again.status, again.tx_id) == (AddStatus.ADDED, AddStatus.DUPLICATE, first.tx_id)
    assert pool.add(b"bad-1").status is AddStatus.REJECTED
    second = pool.add(b"bad-1")
    assert second.status is AddStatus.REJECTED and "bad tx" in second.reason
    assert pool.add(b"junk").status is AddStatus.REJECTED
    assert pool.add(b"junk").status is AddStatus.REJECTED
    assert check.calls == {tx(1): 1, b"bad-1": 1, b"junk": 1}
    # a transient rejection is checked again next time
    assert pool.add(b"late").status is AddStatus.REJECTED
    assert pool.add(b"late").status is AddStatus.REJECTED
    assert check.calls[b"late"] == 2
    stats = pool.stats()
    assert (stats["added"], stats["duplicate"], stats["rejected"], stats["size"]) == (1, 1, 6, 1)


def test_full_refuses_new_and_keeps_old() -> None:
    check = CountingCheck()
    pool = Mempool(check, max_txs=2, max_bytes=1000)
    a, b, c = tx(1), tx(2), tx(3)
    assert [pool.add(t).status for t in (a, b, c)] == [AddStatus.ADDED, AddStatus.ADDED, AddStatus.FULL]
    assert check.calls[c] == 0 and pool.reap(max_txs=9, max_bytes=999) == [a, b]
    pool.update([a])
    assert pool.add(c).status is AddStatus.ADDED  # FULL is not remembered: the retry gets in
    by_bytes = Mempool(CountingCheck(), max_bytes=25)
    assert [by_bytes.add(tx(i)).status for i in range(3)] == [AddStatus.ADDED, AddStatus.ADDED, AddStatus.FULL]
    assert by_bytes.stats()["full"] == 1


def test_oversized_tx_is_rejected_without_checking() -> None:
    check = CountingCheck()
    pool = Mempool(check, max_tx_bytes=16)
    result = pool.add(tx(1, size=17))
    assert result.status is AddStatus.REJECTED and "at most 16" in result.reason and not check.calls


def test_update_removes_committed_and_remembers_them() -> None:
    check = CountingCheck()
    pool = Mempool(check)
    txs = [tx(i) for i in range(4)]
    for t in txs:
        pool.add(t)
    pool.update([txs[0], txs[2], tx(99)])  # tx 99 was never in the pool: remembered all the same
    assert pool.reap(max_txs=10, max_bytes=1000) == [txs[1], txs[3]] and pool.size_bytes == 20
    assert pool.add(txs[0]).status is AddStatus.COMMITTED
    assert pool.add(tx(99)).status is AddStatus.COMMITTED
    assert check.calls[txs[0]] == 1 and check.calls[tx(99)] == 0
    assert pool.stats()["committed"] == 2


def test_recheck_drops_what_the_new_state_rejects() -> None:
    pool = Mempool(CountingCheck())
    for t in (tx(1), tx(2), tx(3)):
        pool.add(t)

    def recheck(t: bytes) -> None:
        if t == tx(2):
            raise TxRejected("now invalid")

    pool.update([tx(1)], recheck)
    assert pool.reap(max_txs=10, max_bytes=1000) == [tx(3)]
    assert pool.add(tx(2)).status is AddStatus.REJECTED


def test_seen_cache_is_bounded() -> None:
    check = CountingCheck()
    pool = Mempool(check, seen_size=2)
    for t in (b"bad-1", b"bad-2", b"bad-3"):
        pool.add(t)
    pool.add(b"bad-1")  # forgotten: checked again
    pool.add(b"bad-3")  # remembered
    assert check.calls[b"bad-1"] == 2 and check.calls[b"bad-3"] == 1


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Mempool(CountingCheck(), max_txs=0)


def test_with_the_real_app() -> None:
    genesis, _, _ = make_test_genesis(4)
    app = LedgerApp(genesis)
    pool = Mempool(lambda t: app.check_tx(t, now=NOW))
    k = SigningKey.from_private_bytes("Ed25519", bytes(32))
    b = AttestationBuilder(k, did_key(k.public))
    body = {"event": "harsh_brake", "severity": 0.5, "duration": 1.0, "speed": 10.0}
    body |= {"accel_long": -5.0, "accel_lat": 0.1, "yaw_rate": 0.0, "confidence": 0.9}
    txs = [b.build("driving_event", body, time=NOW, time_source="gnss") for _ in range(3)]
    forged = bytearray(txs[0])
    forged[-1] ^= 1
    assert [pool.add(t).status for t in txs] == [AddStatus.ADDED] * 3
    assert pool.add(bytes(forged)).status is AddStatus.REJECTED
    assert app.verifications == 3
    block = Block.build(
        validators=app.validators_at(1),
        height=1,
        round=0,
        time_ms=int(NOW * 1000),
        prev=None,
        txs=pool.reap(max_txs=2, max_bytes=1 << 20),
        last_commit=None,
        app_hash=app.app_hash,
    )
    app.validate_block(block)
    app.apply_block(block)
    app.commit()
    pool.update(block.txs, lambda t: app.check_tx(t, now=NOW))
    assert len(pool) == 1 and app.verifications == 3
    # a fresh pool (restart) learns from the app that the tx is already on the ledger
    fresh = Mempool(lambda t: app.check_tx(t, now=NOW))
    result = fresh.add(txs[0])
    assert result.status is AddStatus.COMMITTED and "already committed at height 1 index 0" in result.reason


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 30), st.sampled_from([b"", b"bad", b"late"])),
        st.tuples(st.just("reap"), st.integers(0, 8), st.integers(0, 200)),
        st.tuples(st.just("commit"), st.integers(0, 5), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_invariants_under_random_operations(operations: list[tuple[object, int, object]]) -> None:
    check, recheck = CountingCheck(), CountingCheck()
    pool = Mempool(check, max_txs=6, max_bytes=120, max_tx_bytes=40)
    order: list[bytes] = []  # expected FIFO content
    for op, n, arg in operations:
        if op == "add":
            assert isinstance(arg, bytes)
            t = arg + tx(n, size=10 + n)
            result = pool.add(t)
            if result.status is AddStatus.ADDED:
                order.append(t)
        elif op == "reap":
            assert isinstance(arg, int)
            reaped = pool.reap(max_txs=n, max_bytes=arg)
            assert reaped == order[: len(reaped)] and len(reaped) <= n and sum(map(len, reaped)) <= arg
        else:
            committed = order[:n]
            order = order[n:]
            pool.update(committed, recheck if arg else None)
        assert pool.reap(max_txs=10**6, max_bytes=10**9) == order
        assert len(pool) == len(order) <= 6 and pool.size_bytes == sum(map(len, order)) <= 120
    # check once: admission checks each tx at most once, except transient (late) rejections
    assert all(count == 1 for t, count in check.calls.items() if not t.startswith(b"late"))
    # rechecks run only on txs that were in the pool
    assert set(recheck.calls) <= set(check.calls)


def test_a_tx_from_the_future_is_refused_now_and_admitted_later() -> None:
    genesis, _, _ = make_test_genesis(1)
    app = LedgerApp(genesis)
    clock = [NOW]
    pool = Mempool(lambda t: app.check_tx(t, now=clock[0]))
    k = SigningKey.from_private_bytes("Ed25519", bytes(32))
    body = {"event": "harsh_brake", "severity": 0.5, "duration": 1.0, "speed": 10.0}
    body |= {"accel_long": -5.0, "accel_lat": 0.1, "yaw_rate": 0.0, "confidence": 0.9}
    early = AttestationBuilder(k, did_key(k.public)).build("driving_event", body, time=NOW + 600, time_source="gnss")
    first = pool.add(early)
    assert first.status is AddStatus.REJECTED and "ahead of now" in first.reason
    clock[0] = NOW + 600
    assert pool.add(early).status is AddStatus.ADDED
