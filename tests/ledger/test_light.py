"""The OBU light client against real Ed25519 validators and real precommit certificates: a chain whose
validator set changes at height 4 (announced by header 3's next_validators_hash), forgeries,
conflicts (evidence), receipts and the persisted state."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ledger_lite import cbor
from ledger_lite.attestation import attestation_id
from ledger_lite.block import Block, CommitCertificate, Header, tx_receipt
from ledger_lite.errors import (
    ChainMismatchError,
    CommitMismatchError,
    CommitSignatureError,
    LedgerError,
    ProofError,
    QuorumError,
    ValidityError,
    VerificationError,
)
from ledger_lite.light import (
    ConflictingHeadersError,
    ExpiredTrustError,
    FutureHeaderError,
    HeaderLinkError,
    HeightError,
    LightBlock,
    LightChainError,
    LightClient,
    LightStateError,
    UnverifiedHeightError,
    ValidatorSetError,
)
from ledger_lite.merkle import InclusionProof
from tests.ledger.test_block import SET_A, SET_B, T0, make_keys, make_set, set_at, sign_certificate, signed_chain

NOW = T0 / 1000 + 3600.0  # an hour after height 0; headers are at T0 + h s
HEIGHTS = 6

Chain = list[tuple[Block, CommitCertificate]]


@pytest.fixture(scope="module")
def chain() -> Chain:
    return signed_chain({1: SET_A, 4: SET_B}, HEIGHTS)


def lb(block: Block | Header, cert: CommitCertificate, *, with_next: bool = True) -> LightBlock:
    h = block.header if isinstance(block, Block) else block
    nxt = set_at(h.height + 1) if with_next and set_at(h.height + 1) is not set_at(h.height) else None
    return LightBlock(h, cert, set_at(h.height), nxt)


def client_at(chain: Chain, height: int, **kw: Any) -> LightClient:
    c = LightClient(SET_A[0], **kw)
    for block, cert in chain[:height]:
        c.verify(lb(block, cert), now=NOW)
    assert c.height == height
    return c


def forge(header: Header, sset: Any = SET_A, signers: int | None = None, **changes: Any) -> LightBlock:
    """``header`` with ``changes``, and a real certificate of ``sset`` for the forged header."""
    h = dataclasses.replace(header, **changes)
    return LightBlock(h, sign_certificate(h, sset[0], sset[1], signers), sset[0])


def test_follows_a_validator_set_change_through_headers(chain: Chain) -> None:
    c = LightClient(SET_A[0])
    assert c.height == 0 and c.trusted is None and c.trusted_validators is SET_A[0]
    for block, cert in chain:
        h = block.height
        got = c.verify(lb(block, cert), now=NOW)
        assert got == block.header and c.trusted == block.header and c.height == h
        assert c.trusted_validators.hash() == set_at(h + 1).hash()
    assert c.trusted_validators.hash() == SET_B[0].hash() != SET_A[0].hash()
    # block 4 is signed by B only: a client whose height 3 did not announce B refuses it
    c = client_at(chain, 2)
    c.verify(forge(chain[2][0].header, next_validators_hash=SET_A[0].hash()), now=NOW)
    with pytest.raises(ValidatorSetError, match="height 4: validators_hash"):
        c.verify(lb(*chain[3]), now=NOW)


def test_set_change_needs_the_announced_next_set(chain: Chain) -> None:
    c = client_at(chain, 2)
    b3, c3 = chain[2]
    with pytest.raises(ValidatorSetError, match="height 3.*does not carry"):
        c.verify(lb(b3, c3, with_next=False), now=NOW)
    with pytest.raises(ValidatorSetError, match="height 3.*does not hash"):
        c.verify(LightBlock(b3.header, c3, SET_A[0], make_set(make_keys(4, 200))[0]), now=NOW)
    assert c.height == 2 and c.trusted_validators is SET_A[0]
    c.verify(lb(b3, c3), now=NOW)
    # a light block that claims the old set for height 4 is refused: the header committed to B
    with pytest.raises(ValidatorSetError, match="height 4"):
        c.verify(LightBlock(chain[3][0].header, chain[3][1], SET_A[0]), now=NOW)
    # an unchanged next set may be carried too, but must hash right
    c2 = client_at(chain, 1)
    c2.verify(LightBlock(chain[1][0].header, chain[1][1], SET_A[0], SET_A[0]), now=NOW)


def test_forged_header_field_is_refused(chain: Chain) -> None:
    c = client_at(chain, 1)
    b2, c2 = chain[1]
    changes: list[dict[str, Any]] = [
        {"app_hash": b"\x01" * 32},
        {"tx_root": bytes(32)},
        {"time_ms": b2.header.time_ms + 1},
        {"next_validators_hash": SET_B[0].hash()},
    ]
    for change in changes:
        forged = dataclasses.replace(b2.header, **change)
        with pytest.raises(CommitMismatchError, match="height 2"):
            c.verify(LightBlock(forged, c2, SET_A[0]), now=NOW)
    assert c.height == 1


def test_certificate_with_too_little_power(chain: Chain) -> None:
    c = client_at(chain, 1)
    b2, c2 = chain[1]
    weak = dataclasses.replace(c2, signatures=c2.signatures[:2])
    with pytest.raises(QuorumError, match="height 2: signers hold 2 of 4"):
        c.verify(lb(b2, weak), now=NOW)
    with pytest.raises(QuorumError):
        c.verify(forge(b2.header, signers=2), now=NOW)
    assert c.height == 1


def test_signatures_from_non_validators(chain: Chain) -> None:
    c = client_at(chain, 1)
    b2, _ = chain[1]
    strangers = make_set(make_keys(4, 90))
    # strangers sign the real header in the validators' slots: their signatures do not verify
    fake = sign_certificate(b2.header, strangers[0], strangers[1])
    with pytest.raises(CommitSignatureError, match="height 2"):
        c.verify(lb(b2, fake), now=NOW)
    # strangers make their own header naming their own set: not the trusted set
    with pytest.raises(ValidatorSetError, match="height 2"):
        c.verify(forge(b2.header, strangers, validators_hash=strangers[0].hash()), now=NOW)
    lb2 = forge(b2.header, strangers, validators_hash=strangers[0].hash())
    with pytest.raises(ValidatorSetError):  # even carrying the trusted set as its own
        c.verify(dataclasses.replace(lb2, validators=SET_A[0]), now=NOW)
    assert c.height == 1


def test_certificate_for_another_block(chain: Chain) -> None:
    c = client_at(chain, 2)
    b3, _ = chain[2]
    with pytest.raises(CommitMismatchError, match="height 3"):  # the certificate of height 2
        c.verify(lb(b3, chain[1][1]), now=NOW)
    other = forge(b3.header, app_hash=b"\x07" * 32).certificate  # same height and round, other id
    with pytest.raises(CommitMismatchError, match="height 3: certificate is for block"):
        c.verify(lb(b3, other), now=NOW)


def test_wrong_chain_id(chain: Chain) -> None:
    c = client_at(chain, 1)
    other = make_set(make_keys(4, 41), "other-chain")  # the very same keys on another chain
    b2, _ = chain[1]
    with pytest.raises(LightChainError, match="height 2.*other-chain") as info:
        c.verify(forge(b2.header, other, chain_id="other-chain"), now=NOW)
    assert isinstance(info.value, ChainMismatchError)


def test_height_gap_and_links(chain: Chain) -> None:
    c = client_at(chain, 1)
    with pytest.raises(HeightError, match="height 3: not sequential: the client expects height 2"):
        c.verify(lb(*chain[2]), now=NOW)
    with pytest.raises(HeightError, match="height 2"):
        LightClient(SET_A[0]).verify(lb(*chain[1]), now=NOW)
    b2 = chain[1][0]
    with pytest.raises(HeaderLinkError, match="height 2: prev_block_id"):
        c.verify(forge(b2.header, prev_block_id=b"\x05" * 32), now=NOW)
    with pytest.raises(HeaderLinkError, match="height 2: time"):
        c.verify(forge(b2.header, time_ms=chain[0][0].header.time_ms), now=NOW)
    with pytest.raises(HeaderLinkError, match="height 1"):
        LightClient(SET_A[0]).verify(forge(chain[0][0].header, prev_block_id=b"\x01" * 32), now=NOW)
    with pytest.raises(HeaderLinkError, match="genesis time"):
        LightClient(SET_A[0], genesis_time_ms=T0 + 5000).verify(lb(*chain[0]), now=NOW)
    assert c.height == 1


def test_future_header(chain: Chain) -> None:
    c = client_at(chain, 1)
    b2, c2 = chain[1]
    t2 = b2.header.time_ms / 1000
    with pytest.raises(FutureHeaderError, match="height 2") as info:
        c.verify(lb(b2, c2), now=t2 - 10.5)
    assert isinstance(info.value, ValidityError)
    c.verify(lb(b2, c2), now=t2 - 9.5)  # within the allowed drift
    assert c.height == 2


def test_expired_trusting_period(chain: Chain) -> None:
    c = client_at(chain, 2, trusting_period=86400.0)
    t2 = chain[1][0].header.time_ms / 1000
    with pytest.raises(ExpiredTrustError, match="height 3: trusted header 2 is 86401 s old.*out of band"):
        c.verify(lb(*chain[2]), now=t2 + 86401)
    c.verify(lb(*chain[2]), now=t2 + 86399)
    with pytest.raises(ExpiredTrustError, match="genesis"):
        LightClient(SET_A[0], genesis_time_ms=T0, trusting_period=60).verify(lb(*chain[0]), now=T0 / 1000 + 61)
    LightClient(SET_A[0]).verify(lb(*chain[0]), now=T0 / 1000 + 10**8)  # no genesis time: no expiry at genesis


def test_conflicting_header_with_valid_certificate_is_evidence(chain: Chain) -> None:
    c = client_at(chain, 3)
    b2, c2 = chain[1]
    assert c.verify(lb(b2, c2), now=NOW) == b2.header and not c.evidence  # the same header again: no-op
    fork = forge(b2.header, app_hash=b"\x66" * 32)
    with pytest.raises(ConflictingHeadersError, match="height 2: conflicting header") as info:
        c.verify(fork, now=NOW)
    assert c.height == 3 and c.verified_header(2) == b2.header  # no switch
    (ev,) = c.evidence
    assert info.value.evidence == ev
    assert (ev.height, ev.header_a, ev.cert_a, ev.header_b, ev.cert_b) == (
        2,
        b2.header,
        c2,
        fork.header,
        fork.certificate,
    )
    assert cbor.loads(ev.encode())[0] == 2
    with pytest.raises(ConflictingHeadersError):  # again: recorded once
        c.verify(fork, now=NOW)
    assert len(c.evidence) == 1
    # a conflicting header whose certificate is not valid is a forgery, not evidence
    with pytest.raises(QuorumError):
        c.verify(forge(b2.header, signers=2, app_hash=b"\x67" * 32), now=NOW)
    with pytest.raises(ValidatorSetError):
        strangers = make_set(make_keys(4, 90))
        c.verify(forge(b2.header, strangers, validators_hash=strangers[0].hash()), now=NOW)
    # the conflict at the latest height (the next header would be built on either)
    b3 = chain[2][0]
    with pytest.raises(ConflictingHeadersError, match="height 3"):
        c.verify(forge(b3.header, round=1), now=NOW)
    assert len(c.evidence) == 2 and c.trusted == b3.header


def test_receipts(chain: Chain) -> None:
    c = client_at(chain, 4)
    block = chain[3][0]
    for i, tx in enumerate(block.txs):
        aid, proof = tx_receipt(block, i)
        r = c.verify_receipt(tx, 4, proof)
        assert (r.tx_id, r.height, r.index, r.block_id, r.proof) == (aid, 4, i, block.block_id(), proof)
        assert c.receipts[aid] == r
    tx = block.txs[0]
    _, proof = tx_receipt(block, 0)
    bad_path = (bytes([proof.path[0][0] ^ 1]) + proof.path[0][1:], *proof.path[1:])
    for bad in (
        InclusionProof(1, proof.tree_size, proof.path),  # wrong index
        InclusionProof(0, proof.tree_size + 1, proof.path),  # wrong size
        InclusionProof(0, proof.tree_size, bad_path),  # tampered path
        InclusionProof(0, proof.tree_size, proof.path[:-1]),  # short path
    ):
        with pytest.raises(ProofError, match=f"height 4: tx {attestation_id(tx).hex()}"):
            c.verify_receipt(tx, 4, bad)
    with pytest.raises(ProofError, match="height 3"):  # the right proof against another block
        c.verify_receipt(tx, 3, proof)
    with pytest.raises(ProofError):
        c.verify_receipt(tx + b"x", 4, proof)
    assert len(c.receipts) == len(block.txs)


def test_receipt_for_a_height_not_verified(chain: Chain) -> None:
    c = client_at(chain, 3, window=2)
    b5 = chain[4][0]
    _, proof = tx_receipt(b5, 0)
    with pytest.raises(UnverifiedHeightError, match="height 5: not a header this client verified .*2..3"):
        c.verify_receipt(b5.txs[0], 5, proof)
    b1 = chain[0][0]
    with pytest.raises(UnverifiedHeightError, match="height 1"):  # dropped from the window of 2
        c.verify_receipt(b1.txs[0], 1, tx_receipt(b1, 0)[1])
    with pytest.raises(UnverifiedHeightError, match="no verified header held"):
        LightClient(SET_A[0]).verify_receipt(b1.txs[0], 1, tx_receipt(b1, 0)[1])
    with pytest.raises(HeightError, match="height 1: already past"):  # nothing left to compare against
        c.verify(lb(*chain[0]), now=NOW)


def test_state_round_trip(chain: Chain) -> None:
    fresh = LightClient(SET_A[0], genesis_time_ms=T0)
    assert LightClient.from_state(fresh.state()).state() == fresh.state()
    c = client_at(chain, 3, trusting_period=3600.0, max_clock_drift=2.5)
    block = chain[2][0]
    for i, tx in enumerate(block.txs):
        c.verify_receipt(tx, 3, tx_receipt(block, i)[1])
    with pytest.raises(ConflictingHeadersError):
        c.verify(forge(block.header, app_hash=b"\x01" * 32), now=NOW)
    data = c.state()
    assert data == c.state() and isinstance(cbor.loads(data), dict)
    r = LightClient.from_state(data)
    assert r.state() == data
    assert (r.trusted, r.height, r.trusting_period, r.max_clock_drift) == (block.header, 3, 3600.0, 2.5)
    assert r.trusted_validators.hash() == SET_B[0].hash() and r.receipts == c.receipts and r.evidence == c.evidence
    r.verify_receipt(block.txs[0], 3, tx_receipt(block, 0)[1])  # the trusted header backs receipts
    for b, cert in chain[3:]:  # and the restored client follows on with the new set
        r.verify(lb(b, cert), now=NOW)
    assert r.height == HEIGHTS


def test_corrupt_state_is_refused(chain: Chain) -> None:
    data = client_at(chain, 2).state()
    doc = cbor.loads(data)
    cases: list[tuple[str, Any]] = [
        ("v", 2),
        ("window", "x"),
        ("next", [["did:key:zX", 1]]),
        ("receipts", [[b"x", 1, 0, b"", b""]]),
    ]
    for key, value in cases:
        bad = dict(doc, **{key: value})
        with pytest.raises(LightStateError):
            LightClient.from_state(cbor.dumps(bad))
    trusted = doc["trusted"]
    header, cert, signers = trusted
    sigs = cert[3]
    forged_cert = [*cert[:3], [[i, bytes(64)] for i, _ in sigs]]
    with pytest.raises(LightStateError, match="trusted.*does not verify"):
        LightClient.from_state(cbor.dumps(dict(doc, trusted=[header, forged_cert, signers])))
    with pytest.raises(LightStateError, match="not deterministic"):
        LightClient.from_state(data + b"\x00")
    with pytest.raises(LightStateError):
        LightClient.from_state(cbor.dumps([1, 2]))


def test_error_tree() -> None:
    for cls in (ValidatorSetError, FutureHeaderError, ExpiredTrustError, HeightError, HeaderLinkError):
        assert issubclass(cls, VerificationError) and issubclass(cls, LedgerError)
    assert issubclass(LightStateError, LedgerError) and not issubclass(LightStateError, VerificationError)
