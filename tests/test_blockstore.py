"""The SQLite block store: append/reload, linkage refusals, tx dedupe and receipts, verify_chain."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.blockstore import SCHEMA_VERSION, BlockStore, BlockStoreError, CorruptStoreError, DuplicateTxError
from ledger_lite.attestation import attestation_id
from ledger_lite.block import Block
from ledger_lite.errors import BlockInvalidError, LinkError
from tests.ledger.test_block import SET_A, SET_B, VSET, run_cell, set_at, signed_chain


@pytest.fixture(scope="module")
def chain() -> list[Any]:
    return run_cell(4)


def fill(path: Path, chain: list[Any], n: int | None = None) -> BlockStore:
    store = BlockStore(path, validators=VSET)
    for block, cert, _ in chain[:n]:
        store.append(block, cert)
    return store


def test_append_reload_and_receipts(tmp_path: Path, chain: list[Any]) -> None:
    db = tmp_path / "chain.db"
    with fill(db, chain) as store:
        assert store.pragma("journal_mode") == "wal" and store.pragma("synchronous") == 2  # FULL
        assert store.height() == 4
    with BlockStore(db) as store:
        assert store.latest() == chain[-1][0]
        for block, cert, _ in chain:
            assert store.get(block.height) == block and store.certificate(block.height) == cert
        block = chain[2][0]
        for i, tx in enumerate(block.txs):
            aid = attestation_id(tx)
            assert store.tx_location(aid) == (3, i)
            got = store.receipt(aid)
            assert got is not None and got[0] == 3
            got[1].verify(tx, block.header.tx_root)
        assert store.receipt(b"\x00" * 32) is None and store.get(99) is None
        assert store.verify_chain(VSET) == 4
        store.append(*chain[-1][:2])  # the latest again: idempotent
        assert store.height() == 4


def test_gap_and_unlinked_blocks_are_refused(tmp_path: Path, chain: list[Any]) -> None:
    with BlockStore(tmp_path / "c.db") as store:
        with pytest.raises(LinkError, match="expects 1"):
            store.append(*chain[1][:2])
        store.append(*chain[0][:2])
        with pytest.raises(LinkError, match="expects 2"):
            store.append(*chain[2][:2])
        b2, c2, _ = chain[1]
        with pytest.raises(LinkError, match="certificate"):
            store.append(b2, chain[2][1])
        forged = dataclasses.replace(b2, header=dataclasses.replace(b2.header, prev_block_id=b"\x05" * 32))
        with pytest.raises(LinkError, match="prev_block_id"):
            store.append(forged, c2)
        assert store.height() == 1


def test_duplicate_tx_is_refused_atomically(tmp_path: Path, chain: list[Any]) -> None:
    b1, c1, _ = chain[0]
    with BlockStore(tmp_path / "d.db") as store:  # no validators: structure only (a hand-made block)
        store.append(b1, c1)
        b2 = Block.build(
            validators=VSET,
            height=2,
            round=0,
            time_ms=b1.header.time_ms + 1,
            prev=b1,
            txs=[chain[1][0].txs[0], b1.txs[0]],
            last_commit=chain[1][0].last_commit,
        )
        cert = dataclasses.replace(c1, height=2, block_id=b2.block_id())
        with pytest.raises(DuplicateTxError, match=r"\(1, 0\)"):
            store.append(b2, cert)
        assert store.height() == 1 and store.tx_location(attestation_id(chain[1][0].txs[0])) is None


def test_verify_chain_catches_corrupted_rows(tmp_path: Path, chain: list[Any]) -> None:
    db = tmp_path / "e.db"
    fill(db, chain).close()
    conn = sqlite3.connect(db)
    body = conn.execute("SELECT body FROM blocks WHERE height = 3").fetchone()[0]
    flipped = bytearray(body)
    flipped[40] ^= 1  # inside the first tx
    conn.execute("UPDATE blocks SET body = ? WHERE height = 3", (bytes(flipped),))
    conn.commit()
    conn.close()
    with BlockStore(db) as store, pytest.raises(CorruptStoreError, match="block 3"):
        store.verify_chain(VSET)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE blocks SET body = ? WHERE height = 3", (body,))
    cert = conn.execute("SELECT certificate FROM commits WHERE height = 4").fetchone()[0]
    conn.execute("UPDATE commits SET certificate = ? WHERE height = 4", (cert[:-3] + b"\x00\x00\x00",))
    conn.commit()
    conn.close()
    with BlockStore(db) as store, pytest.raises(CorruptStoreError, match="block 4") as info:
        store.verify_chain(VSET)
    assert "does not verify" in str(info.value)


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_append_latency(tmp_path: Path, chain: list[Any], sync: str) -> None:
    store = BlockStore(tmp_path / f"{sync}.db")
    store._db.execute(f"PRAGMA synchronous={sync}")  # measurement only; the store always runs FULL
    times = []
    for block, cert, _ in chain:
        t = time.perf_counter()
        store.append(block, cert)
        times.append(time.perf_counter() - t)
    store.close()
    print(f"\nappend synchronous={sync}: " + ", ".join(f"{x * 1e3:.2f}" for x in times) + " ms")


def test_validator_set_changes_over_the_chain(tmp_path: Path) -> None:
    changing = signed_chain({1: SET_A, 4: SET_B}, 6)
    db = tmp_path / "v.db"
    with BlockStore(db, validators=set_at) as store:
        for block, cert in changing:
            store.append(block, cert)
        assert store.verify_chain(set_at) == 6
        with pytest.raises(CorruptStoreError, match="block 4"):
            store.verify_chain(VSET)  # a fixed set does not sign the later blocks
    with BlockStore(tmp_path / "w.db", validators=VSET) as store:  # a fixed set refuses the switch
        for block, cert in changing[:3]:
            store.append(block, cert)
        with pytest.raises(BlockInvalidError, match="validators_hash"):
            store.append(*changing[3])
        assert store.height() == 3
    # without validators the store still checks that a block's set is the one its predecessor named
    unnamed = signed_chain({1: SET_A}, 3)
    with BlockStore(tmp_path / "x.db") as store:
        for block, cert in unnamed:
            store.append(block, cert)
        b4 = dataclasses.replace(
            changing[3][0], header=dataclasses.replace(changing[3][0].header, prev_block_id=unnamed[2][0].block_id())
        )
        b4 = dataclasses.replace(b4, last_commit=unnamed[2][1])
        with pytest.raises(LinkError, match="next validator set"):
            store.append(b4, dataclasses.replace(changing[3][1], block_id=b4.block_id()))


@pytest.mark.parametrize("old", [1, 2])
def test_old_schema_is_refused(tmp_path: Path, old: int) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={old}")
    conn.close()
    with pytest.raises(BlockStoreError, match=f"version {old}.*re-sync"):
        BlockStore(db)
    assert SCHEMA_VERSION == 3
    with BlockStore(tmp_path / "new.db") as store:
        assert store.pragma("user_version") == 3
