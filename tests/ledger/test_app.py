"""The ledger app with real Ed25519 keys, real attestations and credentials: registries accept and
reject with the right reason, validator changes take effect at H + 2, the app hash is the same on
every node and changes with any block, blocks are checked per tx, signatures are verified once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_lite import cbor, cose
from ledger_lite.app import AlreadyCommitted, BlockResult, LedgerApp, TxNotYetValid, TxRejected
from ledger_lite.attestation import AttestationBuilder, attestation_id, decode_attestation, pseudonym_issuer
from ledger_lite.block import Block
from ledger_lite.credentials import IssuerCredential, Role, VehicleCredential, issue_credential
from ledger_lite.didkey import did_key, verification_method_id
from ledger_lite.errors import MalformedError, SchemaError, SignatureError, VerificationError
from ledger_lite.genesis import Genesis, make_test_genesis
from ledger_lite.keys import SigningKey
from ledger_lite.mempool import Mempool
from ledger_lite.txs import (
    REVOCATION_CONTENT_TYPE,
    TxKind,
    TxSchemaError,
    build_revocation,
    build_validator_update,
    classify,
    decode_revocation,
    decode_validator_update,
    tx_id,
)
from ledger_lite.validators import Validator

NOW = 1_800_000_000.0  # = make_test_genesis's genesis time
VIN = "1M8GDM9AXKP042788"
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


def key(label: str) -> SigningKey:
    return SigningKey.from_private_bytes("Ed25519", hashlib.sha256(label.encode()).digest())


def did(k: SigningKey) -> str:
    return did_key(k.public)


class Chain:
    """Builds, validates, applies and commits blocks on one app (header time = NOW + height s)."""

    def __init__(self, app: LedgerApp) -> None:
        self.app = app
        self.prev: Block | None = None

    def block(self, txs: Sequence[bytes], *, time_ms: int | None = None) -> Block:
        h = self.app.height + 1
        return Block.build(
            validators=self.app.validators_at(h),
            next_validators=self.app.validators_at(h + 1),
            height=h,
            round=0,
            time_ms=int(NOW * 1000) + h * 1000 if time_ms is None else time_ms,
            prev=self.prev,
            txs=txs,
            last_commit=None,
            app_hash=self.app.app_hash,
        )

    def run(self, block: Block) -> BlockResult:
        self.app.validate_block(block)
        result = self.app.apply_block(block)
        assert self.app.commit() == result.app_hash
        self.prev = block
        return result

    def commit(self, *txs: bytes) -> BlockResult:
        return self.run(self.block(txs))


@pytest.fixture(scope="module")
def net() -> tuple[Genesis, list[SigningKey], SigningKey]:
    return make_test_genesis(4)


@pytest.fixture
def genesis(net: tuple[Genesis, list[SigningKey], SigningKey]) -> Genesis:
    return net[0]


@pytest.fixture
def authority(net: tuple[Genesis, list[SigningKey], SigningKey]) -> SigningKey:
    return net[2]


@pytest.fixture
def chain(genesis: Genesis) -> Chain:
    return Chain(LedgerApp(genesis))


def vehicle(label: str = "vehicle") -> AttestationBuilder:
    k = key(label)
    return AttestationBuilder(k, did(k))


def att(b: AttestationBuilder, t: float = NOW, **body: Any) -> bytes:
    return b.build("driving_event", {**EVENT, **body}, time=t, time_source="gnss")


# --- attestations --------------------------------------------------------------------------------


def test_attestation_is_checked_committed_and_located(chain: Chain) -> None:
    b = vehicle()
    tx = att(b)
    info = chain.app.check_tx(tx, now=NOW)
    assert (info.kind, info.tx_id, info.signer, info.seq) == (TxKind.ATTESTATION, attestation_id(tx), b.did, 1)
    result = chain.commit(tx)
    assert result.height == 1 and [(r.tx_id, r.kind, r.index) for r in result.results] == [
        (tx_id(tx), TxKind.ATTESTATION, 0)
    ]
    assert chain.app.height == 1 and chain.app.receipt_location(tx_id(tx)) == (1, 0)
    assert chain.app.receipt_location(b"\x00" * 32) is None
    assert chain.app.seqs_of(b.did) == {1}


def test_duplicate_is_rejected_as_already_committed(chain: Chain) -> None:
    b = vehicle()
    other, tx = att(b), att(b)
    chain.commit(other, tx)
    with pytest.raises(AlreadyCommitted, match="already committed at height 1 index 1"):
        chain.app.check_tx(tx, now=NOW)
    with pytest.raises(AlreadyCommitted, match="tx 0 .*already committed at height 1 index 1"):
        chain.app.validate_block(chain.block([tx]))


def test_duplicate_inside_one_block_names_the_index(chain: Chain) -> None:
    b = vehicle()
    tx = att(b)
    with pytest.raises(TxRejected, match="tx 2 .*duplicate of tx 0") as info:
        chain.app.validate_block(chain.block([tx, att(b), tx]))
    assert info.value.index == 2 and info.value.tx_id == tx_id(tx)


def test_same_seq_with_another_id_is_a_replay(chain: Chain) -> None:
    k = key("vehicle")
    first = att(AttestationBuilder(k, did(k)))
    fork = att(AttestationBuilder(k, did(k)), speed=20.0)  # seq 1 again, other content
    chain.commit(first)
    with pytest.raises(TxRejected, match="seq 1 is already on the ledger as another attestation"):
        chain.app.check_tx(fork, now=NOW)
    # and inside one block
    chain2 = Chain(LedgerApp(chain.app.genesis))
    with pytest.raises(TxRejected, match="tx 1 .*seq: .*replay or a forked chain"):
        chain2.app.validate_block(chain2.block([first, fork]))


def test_gaps_and_out_of_order_seqs_are_accepted(chain: Chain) -> None:
    b = vehicle()
    txs = [att(b) for _ in range(4)]
    chain.commit(txs[3], txs[0])  # seq 4 before seq 1, 2 and 3 missing
    chain.commit(txs[2])
    assert chain.app.seqs_of(b.did) == {1, 3, 4}


def test_forged_signature_is_rejected(chain: Chain) -> None:
    tx = bytearray(att(vehicle()))
    tx[-1] ^= 1
    with pytest.raises(TxRejected) as rejected:
        chain.app.check_tx(bytes(tx), now=NOW)
    assert isinstance(rejected.value.__cause__, SignatureError)
    with pytest.raises(TxRejected, match="tx 0 ") as info:
        chain.app.validate_block(chain.block([bytes(tx)]))
    assert isinstance(info.value.__cause__, SignatureError)


def test_garbage_is_malformed_in_check_tx_and_rejected_in_a_block(chain: Chain) -> None:
    with pytest.raises(MalformedError):
        chain.app.check_tx(b"\x01\x02", now=NOW)
    good = att(vehicle())
    with pytest.raises(TxRejected, match="tx 1 ") as info:
        chain.app.validate_block(chain.block([good, cbor.dumps({"not": "cose"})]))
    assert info.value.index == 1


def test_pseudonymous_issuer_is_refused(chain: Chain) -> None:
    b = AttestationBuilder(key("pseudo"), pseudonym_issuer(b"\x07" * 8))
    with pytest.raises(TxRejected, match="pseudonymous issuers are not accepted"):
        chain.app.check_tx(att(b), now=NOW)


def test_attestation_from_the_future_is_refused(chain: Chain) -> None:
    tx = att(vehicle(), t=NOW + 3600)
    with pytest.raises(TxNotYetValid, match="ahead of now"):
        chain.app.check_tx(tx, now=NOW)
    assert chain.app.check_tx(tx, now=NOW + 3600).seq == 1  # later it is fine
    # a block's time decides in a block: at NOW + 1 s the tx is still an hour early
    with pytest.raises(TxRejected, match="tx 0 .*ahead of now"):
        chain.app.validate_block(chain.block([tx]))


def test_revoked_did_cannot_attest(chain: Chain, genesis: Genesis, authority: SigningKey) -> None:
    b = vehicle()
    chain.commit(att(b))
    rev = build_revocation(
        authority, did(authority), chain_id=genesis.chain_id, time_ms=int(NOW * 1000), revoked_did=b.did
    )
    assert classify(rev) is TxKind.REVOCATION
    chain.commit(rev)
    assert chain.app.is_revoked(did=b.did) and not chain.app.is_revoked(did=did(authority))
    with pytest.raises(TxRejected, match=f"the signer {b.did} is revoked"):
        chain.app.check_tx(att(b), now=NOW)
    # revoked earlier in the same block counts too
    c2 = Chain(LedgerApp(genesis))
    b2 = vehicle("second")
    rev2 = build_revocation(
        authority, did(authority), chain_id=genesis.chain_id, time_ms=int(NOW * 1000), revoked_did=b2.did
    )
    with pytest.raises(TxRejected, match="tx 1 .*is revoked"):
        c2.app.validate_block(c2.block([rev2, att(b2)]))
    with pytest.raises(TxRejected, match="already revoked"):
        chain.app.check_tx(
            build_revocation(
                authority, did(authority), chain_id=genesis.chain_id, time_ms=int(NOW * 1000) + 1, revoked_did=b.did
            ),
            now=NOW,
        )


def test_did_revocation_needs_a_genesis_authority(chain: Chain, genesis: Genesis) -> None:
    stranger = key("stranger")
    rev = build_revocation(
        stranger, did(stranger), chain_id=genesis.chain_id, time_ms=int(NOW * 1000), revoked_did=did(key("vehicle"))
    )
    with pytest.raises(TxRejected, match="may not revoke DIDs: only a genesis authority"):
        chain.app.check_tx(rev, now=NOW)


# --- credentials and revocation ------------------------------------------------------------------


def test_credential_is_registered_and_revoked_by_cti(chain: Chain, genesis: Genesis, authority: SigningKey) -> None:
    cred = issue_credential(VehicleCredential(did(key("vehicle")), VIN), authority, now=NOW, cti=b"vehicle-0001")
    info = chain.app.check_tx(cred, now=NOW)
    assert info.kind is TxKind.CREDENTIAL and info.signer == did(authority)
    chain.commit(cred)
    registered = chain.app.credential(b"vehicle-0001")
    assert registered is not None and registered.subject == did(key("vehicle"))
    same_cti = issue_credential(VehicleCredential(did(key("other")), VIN), authority, now=NOW, cti=b"vehicle-0001")
    with pytest.raises(TxRejected, match="cti: credential id 766568.* is already registered"):
        chain.app.check_tx(same_cti, now=NOW)
    rev = build_revocation(
        authority, did(authority), chain_id=genesis.chain_id, time_ms=int(NOW * 1000), cti=b"vehicle-0001"
    )
    chain.commit(rev)
    assert chain.app.is_revoked(cti=b"vehicle-0001") and not chain.app.is_revoked(cti=b"vehicle-0002")


def test_revoked_cti_cannot_be_registered(chain: Chain, genesis: Genesis, authority: SigningKey) -> None:
    chain.commit(
        build_revocation(authority, did(authority), chain_id=genesis.chain_id, time_ms=int(NOW * 1000), cti=b"cti-0042")
    )
    cred = issue_credential(VehicleCredential(did(key("vehicle")), VIN), authority, now=NOW, cti=b"cti-0042")
    with pytest.raises(TxRejected, match="cti: credential id .* is revoked"):
        chain.app.check_tx(cred, now=NOW)


def test_delegated_issuer_uses_registered_chain_and_may_revoke_its_own(
    chain: Chain, genesis: Genesis, authority: SigningKey
) -> None:
    plant, stranger = key("plant"), key("stranger")
    delegation = issue_credential(
        IssuerCredential(did(plant), Role.OEM), authority, now=NOW, expires=NOW + 86400, cti=b"delegate-1"
    )
    made = issue_credential(VehicleCredential(did(key("vehicle")), VIN), plant, now=NOW, cti=b"vehicle-77")
    with pytest.raises(TxRejected, match="vehicle credential .*not a trust root"):
        chain.app.check_tx(made, now=NOW)  # the delegation is not on the ledger yet
    chain.commit(delegation, made)  # ... but earlier in the same block is enough
    t = int(NOW * 1000)
    bad = build_revocation(stranger, did(stranger), chain_id=genesis.chain_id, time_ms=t, cti=b"vehicle-77")
    with pytest.raises(TxRejected, match=f"{did(stranger)} may not revoke credential .* was issued by {did(plant)}"):
        chain.app.check_tx(bad, now=NOW)
    unknown = build_revocation(plant, did(plant), chain_id=genesis.chain_id, time_ms=t, cti=b"never-issued")
    with pytest.raises(TxRejected, match="it is not registered"):
        chain.app.check_tx(unknown, now=NOW)
    chain.commit(build_revocation(plant, did(plant), chain_id=genesis.chain_id, time_ms=t, cti=b"vehicle-77"))
    assert chain.app.is_revoked(cti=b"vehicle-77")
    # a revoked delegation makes the plant's new credentials unregistrable
    chain.commit(build_revocation(authority, did(authority), chain_id=genesis.chain_id, time_ms=t, cti=b"delegate-1"))
    later = issue_credential(VehicleCredential(did(key("v2")), VIN), plant, now=NOW, cti=b"vehicle-78")
    with pytest.raises(TxRejected, match="revoked"):
        chain.app.check_tx(later, now=NOW)


def test_expired_credential_is_refused_at_block_time(chain: Chain, authority: SigningKey) -> None:
    plant = key("plant")
    delegation = issue_credential(IssuerCredential(did(plant), Role.OEM), authority, now=NOW - 7200, expires=NOW - 3600)
    with pytest.raises(TxRejected, match="tx 0 .*expired"):
        chain.app.validate_block(chain.block([delegation]))


def test_wrong_chain_is_malformed_and_names_the_field(chain: Chain, authority: SigningKey) -> None:
    rev = build_revocation(authority, did(authority), chain_id="other-cell", time_ms=1, cti=b"12345678")
    with pytest.raises(TxSchemaError, match="revocation.chain: signed for chain 'other-cell'"):
        chain.app.check_tx(rev, now=NOW)


# --- the two ledger kinds' schemas ----------------------------------------------------------------


def _signed(k: SigningKey, payload: Any, ct: str = REVOCATION_CONTENT_TYPE) -> bytes:
    kid = verification_method_id(did(k)).encode()
    return cose.sign1(cbor.dumps(payload), k, kid=kid, content_type=ct)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"chain": "c", "time": 1}, "revocation.cti: exactly one"),
        ({"chain": "c", "time": 1, "cti": b"12345678", "did": "did:key:x"}, "revocation.cti: exactly one"),
        ({"chain": "c", "time": -1, "cti": b"12345678"}, "revocation.time"),
        ({"chain": "c", "time": 1, "cti": b"short"}, "revocation.cti: must be 8 to 64"),
        ({"chain": "c", "time": 1, "did": "did:web:x"}, "revocation.did: not a usable did:key"),
        ({"chain": "c", "time": 1, "cti": b"12345678", "why": "x"}, "revocation.why: unknown field"),
        ({"time": 1, "cti": b"12345678"}, "revocation.chain: required field is missing"),
        ({"chain": "c", "time": 1, "cti": b"12345678", "reason": 5}, "revocation.reason"),
        ({"chain": 1, "time": 1, "cti": b"12345678"}, "revocation.chain"),
        ([1, 2], "revocation.payload: must be a map"),
    ],
)
def test_revocation_schema(payload: Any, field: str) -> None:
    with pytest.raises(TxSchemaError, match=field):
        decode_revocation(_signed(key("a"), payload))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"chain": "c", "nonce": 1, "changes": []}, "validator_update.changes: must be a list of 1"),
        ({"chain": "c", "nonce": "1", "changes": [{"did": "x", "power": 1}]}, "validator_update.nonce"),
        ({"chain": "c", "nonce": 1, "changes": [{"did": "did:key:z6Mk", "power": 1}]}, r"changes\[0\]\.did"),
        ({"chain": "c", "nonce": 1, "changes": [{"did": "D", "power": -1}]}, r"changes\[0\]\.power"),
        ({"chain": "c", "nonce": 1, "changes": [{"did": "D", "power": 1, "x": 1}]}, r"changes\[0\]\.x: unknown"),
        ({"chain": "c", "nonce": 1, "changes": [{"did": "D", "power": 1}, {"did": "D", "power": 2}]}, "twice"),
    ],
)
def test_validator_update_schema(payload: Any, field: str) -> None:
    d = did(key("b"))
    for change in payload.get("changes", []):
        if change.get("did") == "D":
            change["did"] = d
    with pytest.raises(TxSchemaError, match=field):
        decode_validator_update(_signed(key("a"), payload, "application/acc-validator-update+cbor"))


def test_builders_round_trip_and_refuse_bad_input() -> None:
    a = key("a")
    tx = build_validator_update(a, did(a), chain_id="c", nonce=7, changes=[(did(key("b")), 3), Validator(did(a), 0)])
    upd = decode_validator_update(tx, chain_id="c")
    assert (
        upd.signer == did(a) and upd.nonce == 7 and upd.changes == (Validator(did(key("b")), 3), Validator(did(a), 0))
    )
    rev = decode_revocation(build_revocation(a, did(a), chain_id="c", time_ms=5, cti=b"12345678", reason="stolen"))
    assert (rev.cti, rev.did, rev.reason, rev.time_ms) == (b"12345678", None, "stolen", 5)
    with pytest.raises(SchemaError):
        build_revocation(a, did(a), chain_id="c", time_ms=5)
    with pytest.raises(ValueError, match="not the DID of this key"):
        build_revocation(a, did(key("b")), chain_id="c", time_ms=5, cti=b"12345678")
    with pytest.raises(TxSchemaError, match="content_type"):
        classify(cose.sign1(b"x", a, content_type="text/plain"))


# --- validator set changes -----------------------------------------------------------------------


def test_validator_update_takes_effect_at_h_plus_2(chain: Chain, genesis: Genesis, authority: SigningKey) -> None:
    newcomer = did(key("rsu-5"))
    removed = genesis.validators.dids[0]
    upd = build_validator_update(
        authority, did(authority), chain_id=genesis.chain_id, nonce=1, changes=[(newcomer, 2), (removed, 0)]
    )
    chain.commit(att(vehicle()))
    result = chain.commit(upd)  # height 2
    assert result.validator_updates == (Validator(newcomer, 2), Validator(removed, 0))
    app = chain.app
    assert app.validators_at(3).hash() == genesis.validators.hash()
    new = app.validators_at(4)
    assert newcomer in new and removed not in new and new.power_of(newcomer) == 2 and len(new) == 4
    with pytest.raises(ValueError, match="not known yet"):
        app.validators_at(5)
    chain.commit()  # height 3: the old set signs; its header names the new set as next
    assert chain.prev is not None and chain.prev.header.next_validators_hash == new.hash()
    chain.commit()  # height 4: built with the new set
    assert chain.prev is not None and chain.prev.header.validators_hash == new.hash()
    assert app.validators_at(2).hash() == genesis.validators.hash()


def test_validator_update_rules(chain: Chain, genesis: Genesis, authority: SigningKey) -> None:
    t = genesis.chain_id
    a = did(authority)
    validator = chain.app.genesis.validators.dids[0]
    vkey = next(k for k in make_test_genesis(4)[1] if did(k) == validator)
    by_validator = build_validator_update(vkey, validator, chain_id=t, nonce=1, changes=[(did(key("x")), 1)])
    with pytest.raises(TxRejected, match="may not change the validator set: only a genesis road authority"):
        chain.app.check_tx(by_validator, now=NOW)
    remove_all = build_validator_update(
        authority, a, chain_id=t, nonce=2, changes=[(d, 0) for d in genesis.validators.dids]
    )
    with pytest.raises(TxRejected, match="changes: the update would leave the validator set empty"):
        chain.app.check_tx(remove_all, now=NOW)
    not_member = build_validator_update(authority, a, chain_id=t, nonce=3, changes=[(did(key("x")), 0)])
    with pytest.raises(TxRejected, match=r"changes\[0\]\.did: .* is not a validator"):
        chain.app.check_tx(not_member, now=NOW)
    chain.commit(build_validator_update(authority, a, chain_id=t, nonce=4, changes=[(validator, 5)]))
    again = build_validator_update(authority, a, chain_id=t, nonce=4, changes=[(validator, 6)])
    with pytest.raises(TxRejected, match="nonce: nonce 4 was already used"):
        chain.app.check_tx(again, now=NOW)
    # removing three now and the fourth in the same block still empties the set
    first = build_validator_update(
        authority, a, chain_id=t, nonce=5, changes=[(d, 0) for d in genesis.validators.dids[:3]]
    )
    last = build_validator_update(authority, a, chain_id=t, nonce=6, changes=[(genesis.validators.dids[3], 0)])
    with pytest.raises(TxRejected, match="tx 1 .*empty"):
        chain.app.validate_block(chain.block([first, last]))


def test_an_authority_without_the_road_role_cannot_change_validators() -> None:
    genesis, _, registrar = make_test_genesis(4, roles=("registration",))
    app = LedgerApp(genesis)
    upd = build_validator_update(
        registrar, did(registrar), chain_id=genesis.chain_id, nonce=1, changes=[(did(key("x")), 1)]
    )
    with pytest.raises(TxRejected, match="only a genesis road authority"):
        app.check_tx(upd, now=NOW)


# --- blocks, app hash, replay ----------------------------------------------------------------------


def _workload(genesis: Genesis, authority: SigningKey) -> list[list[bytes]]:
    b1, b2 = vehicle("v1"), vehicle("v2")
    t = int(NOW * 1000)
    return [
        [att(b1), att(b2), att(b1)],
        [issue_credential(VehicleCredential(b1.did, VIN), authority, now=NOW, cti=b"vehicle-0001")],
        [build_validator_update(authority, did(authority), chain_id=genesis.chain_id, nonce=1, changes=[(b2.did, 1)])],
        [build_revocation(authority, did(authority), chain_id=genesis.chain_id, time_ms=t, cti=b"vehicle-0001")],
        [],
        [att(b2)],
    ]


def test_app_hash_is_deterministic_and_sensitive(genesis: Genesis, authority: SigningKey) -> None:
    blocks = _workload(genesis, authority)
    a, b = Chain(LedgerApp(genesis)), Chain(LedgerApp(genesis))
    hashes = []
    for txs in blocks:
        ra, rb = a.commit(*txs), b.commit(*txs)
        assert ra == rb and len(ra.app_hash) == 32
        hashes.append(ra.app_hash)
    assert len(set(hashes)) == len(hashes)  # every block moves the hash, even an empty one
    assert a.prev is not None and b.prev is not None and a.prev.block_id() == b.prev.block_id()
    # a different block (same txs, another order) -> another hash
    c = Chain(LedgerApp(genesis))
    c.commit(*blocks[0][::-1])
    assert c.app.app_hash != hashes[0]
    # the next header must carry the hash
    bad = Block.build(
        validators=a.app.validators_at(a.app.height + 1),
        next_validators=a.app.validators_at(a.app.height + 2),
        height=a.app.height + 1,
        round=0,
        time_ms=int(NOW * 1000) + 10_000,
        prev=a.prev,
        txs=[],
        last_commit=None,
        app_hash=hashes[-2],
    )
    with pytest.raises(VerificationError, match="header.app_hash .* is not the app hash after height 6"):
        a.app.validate_block(bad)


def test_replay_rebuilds_the_same_state_without_verifying(genesis: Genesis, authority: SigningKey) -> None:
    live = Chain(LedgerApp(genesis))
    stored: list[Block] = []
    for txs in _workload(genesis, authority):
        live.commit(*txs)
        assert live.prev is not None
        stored.append(Block.decode(live.prev.encode()))
    rebuilt = LedgerApp(genesis)
    for block in stored:
        rebuilt.replay_block(block)
    assert rebuilt.verifications == 0
    assert (rebuilt.height, rebuilt.app_hash) == (live.app.height, live.app.app_hash)
    assert rebuilt.validators_at(rebuilt.height + 2).hash() == live.app.validators_at(live.app.height + 2).hash()
    assert rebuilt.is_revoked(cti=b"vehicle-0001")
    first = stored[0].txs[0]
    assert rebuilt.receipt_location(tx_id(first)) == (1, 0)
    with pytest.raises(AlreadyCommitted):
        rebuilt.check_tx(first, now=NOW)
    with pytest.raises(VerificationError, match="block height 1, expected 7"):
        rebuilt.replay_block(stored[0])


def test_header_is_checked(chain: Chain, genesis: Genesis) -> None:
    block = chain.block([])
    other = Block.build(
        validators=make_test_genesis(4, chain_id="other")[0].validators,
        height=1,
        round=0,
        time_ms=int(NOW * 1000),
        prev=None,
        txs=[],
        last_commit=None,
    )
    with pytest.raises(VerificationError, match="block is for chain 'other'"):
        chain.app.validate_block(other)
    chain.run(block)
    with pytest.raises(VerificationError, match="block height 1, expected 2"):
        chain.app.validate_block(block)
    wrong_set = Block.build(
        validators=make_test_genesis(3)[0].validators,
        height=2,
        round=0,
        time_ms=int(NOW * 1000),
        prev=block,
        txs=[],
        last_commit=None,
        app_hash=chain.app.app_hash,
    )
    with pytest.raises(VerificationError, match="validators_hash"):
        chain.app.validate_block(wrong_set)
    with pytest.raises(RuntimeError, match="without apply_block"):
        chain.app.commit()


def test_signatures_are_verified_once(chain: Chain, genesis: Genesis, authority: SigningKey) -> None:
    txs = [att(vehicle()), att(vehicle("v2"))]
    txs.append(build_revocation(authority, did(authority), chain_id=genesis.chain_id, time_ms=1, cti=b"12345678"))
    for tx in txs:
        chain.app.check_tx(tx, now=NOW)
        chain.app.check_tx(tx, now=NOW)
    assert chain.app.verifications == 3
    block = chain.block(txs)
    chain.app.validate_block(block)
    chain.app.apply_block(block)
    chain.app.commit()
    assert chain.app.verifications == 3
    small = LedgerApp(genesis, sig_cache_size=1)
    for tx in txs[:2] * 2:
        small.check_tx(tx, now=NOW)
    assert small.verifications == 4  # evicted: verified again (bounded memory)


def test_prepare_txs_drops_conflicts_the_mempool_can_hold(
    chain: Chain, genesis: Genesis, authority: SigningKey
) -> None:
    k = key("vehicle")
    first, fork = att(AttestationBuilder(k, did(k))), att(AttestationBuilder(k, did(k)), speed=20.0)
    t = int(NOW * 1000)
    rev1 = build_revocation(authority, did(authority), chain_id=genesis.chain_id, time_ms=t, cti=b"12345678")
    rev2 = build_revocation(authority, did(authority), chain_id=genesis.chain_id, time_ms=t + 1, cti=b"12345678")
    for tx in (first, fork, rev1, rev2):
        chain.app.check_tx(tx, now=NOW)  # each is fine on its own
    picked = chain.app.prepare_txs([first, fork, rev1, first, b"junk", rev2], time_ms=t + 1000)
    assert picked == [first, rev1]
    chain.commit(*picked)


# --- property: mempool -> prepare -> block -> commit, and replay ---------------------------------

_POOL_TXS: list[bytes] = []


def _pool_txs() -> list[bytes]:
    """Attestations of 3 issuers, with forks (two builders per issuer share seq numbers)."""
    if not _POOL_TXS:
        for label in ("p1", "p2", "p3"):
            k = key(label)
            for speed in (10.0, 11.0):
                b = AttestationBuilder(k, did(k))
                _POOL_TXS.extend(att(b, speed=speed) for _ in range(3))
    return _POOL_TXS


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(18))), st.lists(st.integers(0, 6), min_size=1, max_size=8))
def test_pipeline_keeps_the_registry_invariants(order: list[int], sizes: list[int]) -> None:
    genesis, _, _ = make_test_genesis(4)
    txs = _pool_txs()
    live = Chain(LedgerApp(genesis))
    pool = Mempool(lambda t: live.app.check_tx(t, now=NOW))
    for i in order:
        pool.add(txs[i])
    stored: list[Block] = []
    for size in sizes:
        body = live.app.prepare_txs(pool.reap(max_txs=size, max_bytes=1 << 20), time_ms=int(NOW * 1000) + 1000)
        live.commit(*body)
        assert live.prev is not None
        stored.append(live.prev)
        pool.update(body, lambda t: live.app.check_tx(t, now=NOW))
    committed = [tx for block in stored for tx in block.txs]
    pairs = [(a.issuer, a.seq) for a in map(decode_attestation, committed)]
    assert len(pairs) == len(set(pairs))  # no seq twice, no tx twice
    assert all(live.app.receipt_location(tx_id(tx)) is not None for tx in committed)
    # every tx not committed is still pooled or conflicts with a committed one
    for tx in txs:
        a = decode_attestation(tx)
        assert tx in committed or (a.issuer, a.seq) in pairs or tx_id(tx) in pool
    rebuilt = LedgerApp(genesis)
    for block in stored:
        rebuilt.replay_block(block)
    assert rebuilt.app_hash == live.app.app_hash
