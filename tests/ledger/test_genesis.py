"""Genesis: the JSON round trip, errors that name the bad field, the trust store, and the
deterministic test genesis."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from ledger_lite.credentials import Role
from ledger_lite.didkey import did_key
from ledger_lite.errors import GenesisError
from ledger_lite.genesis import Genesis, make_test_genesis


def _doc() -> dict[str, Any]:
    genesis, _, _ = make_test_genesis(3)
    return genesis.to_dict()


def test_json_round_trip() -> None:
    genesis, vkeys, auth = make_test_genesis(4, chain_id="cell-7")
    again = Genesis.from_json(genesis.to_json())
    assert again == genesis and again.to_dict() == genesis.to_dict()
    assert again != make_test_genesis(4, chain_id="cell-8")[0]
    assert again.validators.hash() == genesis.validators.hash()
    assert set(again.validators.dids) == {did_key(k.public) for k in vkeys}
    assert again.roles_of(did_key(auth.public)) == {Role.ROAD_AUTHORITY, Role.REGISTRATION, Role.OEM}
    assert again.chain_id == "cell-7" and again.app_hash == b""


def test_app_hash_hex_round_trip() -> None:
    doc = _doc()
    doc["app_hash"] = "ab" * 32
    genesis = Genesis.from_dict(doc)
    assert genesis.app_hash == bytes.fromhex("ab" * 32)
    assert Genesis.from_json(genesis.to_json()).app_hash == genesis.app_hash


def test_make_test_genesis_is_deterministic() -> None:
    a, ka, aa = make_test_genesis(4)
    b, kb, ab = make_test_genesis(4)
    c, _, ac = make_test_genesis(4, seed=b"another seed")
    assert a.to_dict() == b.to_dict()
    assert [k.private_bytes() for k in ka] == [k.private_bytes() for k in kb]
    assert aa.private_bytes() == ab.private_bytes()
    assert set(c.validators.dids).isdisjoint(a.validators.dids) and ac.private_bytes() != aa.private_bytes()


def test_trust_store_has_the_authorities_as_roots() -> None:
    genesis, _, auth = make_test_genesis(1, roles=("registration",))
    store = genesis.trust_store()
    assert store.roles_of(did_key(auth.public)) == {Role.REGISTRATION}
    assert store.roles_of(genesis.validators.dids[0]) == frozenset()


def _bad(mutate: Any) -> str:
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(GenesisError) as info:
        Genesis.from_json(json.dumps(doc))
    return str(info.value)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["validators"][2].__setitem__("power", 0), r"genesis.validators\[2\].power: must be a positive"),
        (lambda d: d["validators"][1].__setitem__("power", True), r"genesis.validators\[1\].power"),
        (lambda d: d["validators"][0].__setitem__("did", "did:web:example.com"), r"genesis.validators\[0\].did"),
        (lambda d: d["validators"][0].pop("power"), r"genesis.validators\[0\].power: required field is missing"),
        (lambda d: d["validators"][0].__setitem__("name", "x"), r"genesis.validators\[0\].name: unknown field"),
        (lambda d: d["validators"].append(dict(d["validators"][0])), r"genesis.validators\[3\].did: .* listed twice"),
        (lambda d: d.__setitem__("validators", []), "genesis.validators: must be a non-empty list"),
        (lambda d: d.pop("chain_id"), "genesis.chain_id: required field is missing"),
        (lambda d: d.__setitem__("chain_id", ""), "genesis.chain_id"),
        (lambda d: d.__setitem__("genesis_time_ms", -1), "genesis.genesis_time_ms"),
        (lambda d: d.__setitem__("genesis_time_ms", 1.5), "genesis.genesis_time_ms"),
        (lambda d: d.__setitem__("extra", 1), "genesis.extra: unknown field"),
        (lambda d: d.__setitem__("authorities", []), "genesis.authorities: must be an object"),
        (lambda d: d.__setitem__("authorities", {"did:key:zNope": ["oem"]}), r"genesis.authorities\['did:key:zNope'\]"),
        (
            lambda d: d["authorities"].__setitem__(next(iter(d["authorities"])), ["oem", "king"]),
            r"genesis.authorities\[.*\]\[1\]: 'king' is not one of",
        ),
        (lambda d: d["authorities"].__setitem__(next(iter(d["authorities"])), []), "at least one role"),
        (lambda d: d.__setitem__("app_hash", "xyz"), "genesis.app_hash: must be hex"),
    ],
)
def test_errors_name_the_field(mutate: Any, expected: str) -> None:
    message = _bad(mutate)
    assert re.search(expected, message), message


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(GenesisError, match="not JSON"):
        Genesis.from_json("{")
    with pytest.raises(GenesisError, match="must be a JSON object"):
        Genesis.from_json("[]")
