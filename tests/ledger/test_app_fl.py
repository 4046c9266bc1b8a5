"""The ledger app's federated-learning registry: rounds opened by validators from committed
models, results committed by the opener, model ids committed for OBUs to check."""

from __future__ import annotations

import dataclasses

import pytest

from ledger_lite.app import LedgerApp, TxRejected
from ledger_lite.didkey import did_key
from ledger_lite.errors import SchemaError
from ledger_lite.genesis import Genesis, make_test_genesis
from ledger_lite.keys import SigningKey
from ledger_lite.txs import TxKind, build_fl_result, build_fl_round, classify, decode_fl_result
from tests.ledger.test_app import NOW, Chain

M0, M1, M2 = (bytes([i]) * 32 for i in (1, 2, 3))


@pytest.fixture
def world() -> tuple[Chain, list[SigningKey], SigningKey]:
    genesis, keys, authority = make_test_genesis(4)
    genesis = dataclasses.replace(genesis, models=(M0,))
    assert Genesis.from_json(genesis.to_json()).models == (M0,)
    return Chain(LedgerApp(genesis)), keys, authority


def _round(key: SigningKey, rnd: int, base: bytes, task: str = "dbm") -> bytes:
    return build_fl_round(
        key, did_key(key.public), chain_id="test-cell", round=rnd, task=task, base=base,
        deadline_ms=int(NOW * 1000) + 60_000, config={"clip": 1.0, "aggregator": "fedavg"},
    )  # fmt: skip


def _result(key: SigningKey, rnd: int, base: bytes, model: bytes, parts: list[str]) -> bytes:
    return build_fl_result(
        key, did_key(key.public), chain_id="test-cell", round=rnd, task="dbm", base=base, model=model,
        participants=parts, rejected=[(parts[-1], "norm 12.0 above clip 1.0")], aggregator="fedavg",
    )  # fmt: skip


def test_rounds_and_results_commit_models(world: tuple[Chain, list[SigningKey], SigningKey]) -> None:
    chain, keys, authority = world
    app = chain.app
    rsu, other = keys[0], keys[1]
    obus = [did_key(SigningKey.from_private_bytes("Ed25519", bytes([i + 9]) * 32).public) for i in range(3)]
    assert app.model_committed(M0) and not app.model_committed(M1)
    r1 = _round(rsu, 1, M0)
    assert classify(r1) is TxKind.FL_ROUND
    chain.commit(r1)
    assert app.fl_status("dbm") | {"models": None} == {
        "task": "dbm", "round": 1, "open": True, "base": M0.hex(), "model": None, "result_height": None, "models": None
    }  # fmt: skip
    with pytest.raises(TxRejected, match="round 1 has no result yet"):
        app.check_tx(_round(rsu, 2, M0), now=NOW)
    with pytest.raises(TxRejected, match="only .* who opened the round"):
        app.check_tx(_result(other, 1, M0, M1, obus), now=NOW)
    with pytest.raises(TxRejected, match="another base model"):
        app.check_tx(_result(rsu, 1, M2, M1, obus), now=NOW)
    res = _result(rsu, 1, M0, M1, obus)
    assert decode_fl_result(res).rejected == ((obus[-1], "norm 12.0 above clip 1.0"),)
    chain.commit(res)
    assert app.model_committed(M1) and app.fl_status("dbm")["model"] == M1.hex()
    with pytest.raises(TxRejected, match="already has a result"):
        app.check_tx(_result(rsu, 1, M0, M2, obus), now=NOW)
    with pytest.raises(TxRejected, match="not committed"):
        app.check_tx(_round(rsu, 2, M2), now=NOW)
    with pytest.raises(TxRejected, match="the next is 2"):
        app.check_tx(_round(rsu, 3, M1), now=NOW)
    chain.commit(_round(other, 2, M1))  # any validator may open the next round
    assert app.fl_round("dbm", 2) is not None and app.fl_status("dbm")["open"]


def test_only_validators_open_rounds_and_payloads_are_strict(world: tuple[Chain, list[SigningKey], SigningKey]) -> None:
    chain, _keys, authority = world
    with pytest.raises(TxRejected, match="not a validator"):
        chain.app.check_tx(_round(authority, 1, M0), now=NOW)
    with pytest.raises(TxRejected, match="never opened"):
        chain.app.check_tx(_result(_keys[0], 1, M0, M1, [did_key(authority.public)]), now=NOW)
    with pytest.raises(SchemaError, match="rounds are numbered from 1"):
        _round(_keys[0], 0, M0)
    with pytest.raises(SchemaError, match="32 bytes"):
        _round(_keys[0], 1, b"short")
    two_tasks = [_round(_keys[0], 1, M0, task="dbm"), _round(_keys[0], 1, M0, task="fatigue")]
    chain.commit(*two_tasks)  # tasks have their own round numbers
    assert chain.app.fl_status("fatigue")["round"] == 1
