"""V2V pseudonyms: what a neighbour can learn from certificates (nothing that links them to a
vehicle or to each other), what the authority can (the vehicle behind each), when the vehicle
changes pseudonym (fake rng, plain ``now`` values), and V2V messages signed with them."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ledger_lite import cbor, cose
from ledger_lite.cwt import Claims, sign_cwt
from ledger_lite.didkey import did_key
from ledger_lite.errors import (
    CoseError,
    CredentialError,
    MalformedError,
    PoolExhaustedError,
    ReplayError,
    SignatureError,
    UnsupportedAlgorithm,
    ValidityError,
    VerificationError,
)
from ledger_lite.keys import KeyAgreementPrivateKey, SigningKey
from ledger_lite.pseudonym import (
    PseudonymAuthority,
    PseudonymCert,
    PseudonymManager,
    PseudonymPool,
    make_request,
    open_linkage,
    verify_pseudonym_cert,
    verify_v2v,
)

NOW = 1_750_000_000.0  # inside slot 486111 of a 3600 s validity (slot start 1749999600)
SLOT_START = 1_749_999_600


@pytest.fixture(scope="module")
def escrow() -> KeyAgreementPrivateKey:
    return KeyAgreementPrivateKey.generate()


@pytest.fixture(scope="module")
def authority(escrow: KeyAgreementPrivateKey) -> PseudonymAuthority:
    return PseudonymAuthority(SigningKey.generate("Ed25519"), escrow, validity=3600)


def _claims(cert: bytes) -> dict[Any, Any]:
    payload = cose.decode_sign1(cert).payload
    assert payload is not None
    claims: dict[Any, Any] = cbor.loads(payload)
    return claims


def _pool(authority: PseudonymAuthority, device: SigningKey, count: int, *, now: float = NOW) -> PseudonymPool:
    request, keys = make_request(device, count, now=now)
    pool = PseudonymPool()
    pool.add_batch(keys, authority.issue(request, now=now), authority_keys=[authority.public_key], now=now)
    return pool


# --- certificates: unlinkable for neighbours, linkable for the authority ----------------------


def test_two_certificates_of_one_vehicle_share_nothing_that_identifies_it(authority: PseudonymAuthority) -> None:
    vehicle_a = SigningKey.generate("Ed25519")
    vehicle_b = SigningKey.generate("P-256")  # another key type: must not show either
    req_a, keys_a = make_request(vehicle_a, 2, now=NOW)
    req_b, _keys_b = make_request(vehicle_b, 1, now=NOW)
    a1, a2 = authority.issue(req_a, now=NOW)
    (b1,) = authority.issue(req_b, now=NOW)
    did_a = did_key(vehicle_a.public)

    # no vehicle identifier in clear: DID, its multibase value, raw public key (bytes or hex)
    for cert in (a1, a2):
        for needle in (did_a.encode(), did_a[len("did:key:") :].encode(), vehicle_a.public.raw()):
            assert needle not in cert
        assert vehicle_a.public.raw().hex().encode() not in cert
        assert vehicle_a.public.raw()[:8] not in cert

    # the claims that differ between A1 and A2 are random per certificate; the ones they share
    # (issuer, validity slot) are the same for B: they name the authority and the hour, not A
    c1, c2, cb = _claims(a1), _claims(a2), _claims(b1)
    assert set(c1) == set(c2) == set(cb) == {1, 4, 5, 7, 8, "lnk"}
    for label in (7, 8, "lnk"):
        assert c1[label] != c2[label]
    assert (c1[1], c1[4], c1[5]) == (c2[1], c2[4], c2[5]) == (cb[1], cb[4], cb[5])
    assert (c1[5], c1[4]) == (SLOT_START, SLOT_START + 3600)  # the global slot, not the issue time
    assert len(c1["lnk"]) == len(c2["lnk"]) == len(cb["lnk"])  # DIDs of any key type pad alike
    assert len(a1) == len(a2) == len(b1)  # same shape byte for byte
    # byte by byte (one layout for all): A1 and A2 agree where every certificate agrees (the
    # structure, the authority, the slot) and, by chance, in a few random bytes (each agrees
    # with probability 1/256: about 2 expected, P(> 8) ~ 1e-5). Anything that identified the
    # vehicle would agree in dozens of bytes.
    others = [b1]
    for _ in range(4):
        request, _ = make_request(SigningKey.generate("Ed25519"), 1, now=NOW)
        others += authority.issue(request, now=NOW)
    structure = {i for i in range(len(a1)) if len({o[i] for o in others}) == 1}
    same = {i for i in range(len(a1)) if a1[i] == a2[i]}
    assert len(same - structure) <= 8
    # ... and the pseudonym keys and signatures do not repeat
    assert keys_a[0].public.raw() not in a2 and keys_a[1].public.raw() not in a1

    # the regulator's trapdoor opens each of them
    assert authority.open_linkage(a1) == authority.open_linkage(a2) == did_a
    assert authority.open_linkage(b1) == did_key(vehicle_b.public)


def test_linkage_opens_only_with_the_escrow_key(authority: PseudonymAuthority, escrow: KeyAgreementPrivateKey) -> None:
    pool = _pool(authority, SigningKey.generate("Ed25519"), 1)
    taken = pool.take(NOW, random.Random(0))
    assert taken is not None
    cert = taken[1]
    assert open_linkage(cert, escrow).startswith("did:key:z6Mk")
    with pytest.raises(VerificationError, match="does not open with this escrow key"):
        open_linkage(cert, KeyAgreementPrivateKey.generate())
    # moving a linkage value into another certificate breaks it (the certificate id is its AAD)
    other = PseudonymCert(bytes(16), cert.key, cert.issuer, cert.nbf, cert.exp, cert.linkage, cert.raw)
    with pytest.raises(VerificationError):
        open_linkage(other, escrow)


def test_authority_opens_only_its_own_certificates(escrow: KeyAgreementPrivateKey) -> None:
    real = PseudonymAuthority(SigningKey.generate("Ed25519"), escrow)
    rogue = PseudonymAuthority(SigningKey.generate("Ed25519"), escrow)
    cert = rogue.certify(did_key(SigningKey.generate("Ed25519").public), [SigningKey.generate("P-256").public], now=NOW)
    with pytest.raises(CredentialError, match="not a trusted authority"):
        real.open_linkage(cert[0])


# --- verifying certificates ------------------------------------------------------------------


def test_verify_certificate_checks_issuer_signature_and_time(authority: PseudonymAuthority) -> None:
    key = SigningKey.generate("P-256")
    (cert,) = authority.certify(did_key(SigningKey.generate("Ed25519").public), [key.public], now=NOW)
    parsed = verify_pseudonym_cert(cert, [authority.public_key], now=NOW)
    assert parsed.key == key.public and parsed.issuer == authority.did and len(parsed.cert_id) == 16
    assert verify_pseudonym_cert(cert, {authority.did: authority.public_key}, now=NOW) == parsed
    # validity: the slot, +- skew
    verify_pseudonym_cert(cert, [authority.public_key], now=SLOT_START - 29, skew=30)
    verify_pseudonym_cert(cert, [authority.public_key], now=SLOT_START + 3600 + 29, skew=30)
    with pytest.raises(ValidityError, match="not valid before"):
        verify_pseudonym_cert(cert, [authority.public_key], now=SLOT_START - 31, skew=30)
    with pytest.raises(ValidityError, match="expired"):
        verify_pseudonym_cert(cert, [authority.public_key], now=SLOT_START + 3600 + 31, skew=30)
    # another authority
    with pytest.raises(CredentialError, match="not a trusted authority"):
        verify_pseudonym_cert(cert, [SigningKey.generate("Ed25519").public], now=NOW)
    # a flipped bit in the signature / in the claims
    tampered = cert[:-1] + bytes([cert[-1] ^ 1])
    with pytest.raises(SignatureError):
        verify_pseudonym_cert(tampered, [authority.public_key], now=NOW)
    i = cert.index(parsed.cert_id)  # one bit of the certificate id
    with pytest.raises(SignatureError):
        verify_pseudonym_cert(cert[:i] + bytes([cert[i] ^ 1]) + cert[i + 1 :], [authority.public_key], now=NOW)
    with pytest.raises(MalformedError):
        verify_pseudonym_cert(b"\xff\x00garbage", [authority.public_key], now=NOW)


def test_certificate_with_foreign_claims_is_refused(authority: PseudonymAuthority) -> None:
    signer = SigningKey.generate("Ed25519")
    rogue = PseudonymAuthority(signer, KeyAgreementPrivateKey.generate())
    claims = _claims(rogue.certify(did_key(signer.public), [SigningKey.generate("P-256").public], now=NOW)[0])
    for label, value in ((2, did_key(signer.public)), ("vin", "WVWZZZ1JZXW000001")):  # naming the vehicle
        cert = sign_cwt(Claims.from_map({**claims, label: value}), signer, kid=rogue.kid)
        with pytest.raises(MalformedError, match="unknown claims"):
            verify_pseudonym_cert(cert, [signer.public], now=NOW)
    del claims["lnk"]
    with pytest.raises(MalformedError, match="linkage value"):
        verify_pseudonym_cert(sign_cwt(Claims.from_map(claims), signer, kid=rogue.kid), [signer.public], now=NOW)


# --- issuing ---------------------------------------------------------------------------------


def test_request_checks(escrow: KeyAgreementPrivateKey) -> None:
    enrolled: set[str] = set()
    authority = PseudonymAuthority(SigningKey.generate("Ed25519"), escrow, enrolled=enrolled.__contains__)
    device = SigningKey.generate("Ed25519")
    request, keys = make_request(device, 3, now=NOW)
    with pytest.raises(CredentialError, match="not enrolled"):
        authority.issue(request, now=NOW)
    enrolled.add(did_key(device.public))
    assert len(authority.issue(request, now=NOW + 10)) == 3
    with pytest.raises(ReplayError):
        authority.issue(request, now=NOW + 20)
    stale, _ = make_request(device, 1, now=NOW - 301)
    with pytest.raises(ValidityError, match="older than"):
        authority.issue(stale, now=NOW)
    # a request whose kid names another device
    other = SigningKey.generate("Ed25519")
    enrolled.add(did_key(other.public))
    forged_body = cose.decode_sign1(make_request(device, 1, now=NOW)[0]).payload
    assert forged_body is not None
    kid = f"{did_key(other.public)}#{did_key(other.public)[8:]}".encode()
    forged = cose.sign1(forged_body, device, kid=kid, content_type="application/acc-pseudonym-request+cbor")
    with pytest.raises(SignatureError):
        authority.issue(forged, now=NOW)
    # keys on another curve than the authority's (all pseudonyms share one curve)
    with pytest.raises(UnsupportedAlgorithm, match="must be P-256"):
        authority.issue(make_request(device, 1, now=NOW, curve="Ed25519")[0], now=NOW)
    # slots: current .. current + 2
    ahead = authority.slot(NOW) + 2
    (cert,) = authority.issue(make_request(device, 1, now=NOW, slot=ahead)[0], now=NOW)
    assert _claims(cert)[5] == ahead * 3600
    with pytest.raises(ValidityError, match="outside"):
        authority.issue(make_request(device, 1, now=NOW, slot=ahead + 1)[0], now=NOW)
    with pytest.raises(ValidityError, match="outside"):
        authority.issue(make_request(device, 1, now=NOW, slot=ahead - 3)[0], now=NOW)
    assert keys  # the vehicle kept its private keys


def test_pool_refuses_wrong_or_repeated_certificates(authority: PseudonymAuthority) -> None:
    device = SigningKey.generate("Ed25519")
    request, keys = make_request(device, 2, now=NOW)
    certs = authority.issue(request, now=NOW)
    pool = PseudonymPool()
    trusted = [authority.public_key]
    with pytest.raises(CredentialError, match="certifies another key"):
        pool.add(keys[0], certs[1], authority_keys=trusted, now=NOW)
    pool.add(keys[0], certs[0], authority_keys=trusted, now=NOW)
    with pytest.raises(ReplayError):
        pool.add(keys[0], certs[0], authority_keys=trusted, now=NOW)
    with pytest.raises(ValidityError, match="expired"):
        pool.add(keys[1], certs[1], authority_keys=trusted, now=SLOT_START + 3600)
    assert len(pool) == 1


# --- the change policy -------------------------------------------------------------------------


class FakeRng(random.Random):
    """Scripted jitter (``uniform`` returns the next of ``jitters``, which must be in range),
    station/layer-2 ids (``getrandbits`` returns the next of ``ids``, then counts up) and pool
    picks (always the first usable pair)."""

    def __init__(self, jitters: list[float], ids: list[int] | None = None) -> None:
        super().__init__(0)
        self.jitters = list(jitters)
        self.ids = list(ids or [])
        self.n = 1000

    def uniform(self, a: float, b: float) -> float:
        value = self.jitters.pop(0) if self.jitters else 0.0
        assert a <= value <= b, (a, value, b)
        return value

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return 0 if stop is None else start  # the pool's pick: the first usable pair

    def getrandbits(self, k: int) -> int:
        if self.ids:
            return self.ids.pop(0)
        self.n += 1
        return self.n % (1 << k)


def _fingerprint(identity: Any) -> tuple[Any, ...]:
    return (identity.cert.key.raw(), identity.cert_id, identity.station_id, identity.l2_id)


def test_time_based_change_with_jitter_bounds(authority: PseudonymAuthority) -> None:
    pool = _pool(authority, SigningKey.generate("Ed25519"), 40)
    rng = random.Random(7)
    manager = PseudonymManager(pool, period=60.0, jitter=15.0, rng=rng, now=NOW, low_water=0)
    intervals, seen = [], set()
    t, first = NOW, manager.current(NOW)
    seen.add(first.cert_id)
    for _ in range(30):
        due = manager.next_change
        assert manager.current(due - 0.001) is manager.current(t)  # not before it is due
        identity = manager.current(due)
        intervals.append(due - t)
        t = due
        assert identity.cert_id not in seen  # never reused
        seen.add(identity.cert_id)
    assert all(45.0 <= i <= 75.0 for i in intervals)
    assert max(intervals) - min(intervals) > 10.0  # jitter is applied, not a fixed period
    assert manager.changes == 31


def test_jitter_extremes_with_a_scripted_rng(authority: PseudonymAuthority) -> None:
    pool = _pool(authority, SigningKey.generate("Ed25519"), 5)
    manager = PseudonymManager(pool, period=100.0, jitter=20.0, rng=FakeRng([-20.0, 20.0, 0.0]), now=NOW)
    assert manager.next_change == NOW + 80.0
    manager.current(NOW + 80.0)
    assert manager.next_change == NOW + 80.0 + 120.0
    with pytest.raises(ValueError, match="jitter < period"):
        PseudonymManager(pool, period=10.0, jitter=10.0, now=NOW)


def test_cell_change_changes_every_identifier_at_once(authority: PseudonymAuthority) -> None:
    pool = _pool(authority, SigningKey.generate("Ed25519"), 5)
    # the rng offers the same station id twice: the manager must draw again
    rng = FakeRng([5.0, -5.0], ids=[0xAABBCCDD, 0x123456, 0xAABBCCDD, 0xAABBCCDD, 0x11223344, 0x654321])
    manager = PseudonymManager(pool, period=300.0, jitter=60.0, rng=rng, now=NOW)
    old = manager.current(NOW)
    assert (old.station_id, old.l2_id) == (0xAABBCCDD, 0x123456)
    for _ in range(3):
        old.sign(b"cam")
    assert old.counter == 3
    new = manager.on_cell_change(NOW + 10.0)
    assert new is manager.current(NOW + 10.0)
    assert all(a != b for a, b in zip(_fingerprint(old), _fingerprint(new), strict=True))
    assert (new.station_id, new.l2_id) == (0x11223344, 0x654321)
    assert new.counter == 0
    assert manager.next_change == NOW + 10.0 + 300.0 - 5.0  # the timer restarts at the change
    verify_v2v(new.sign(b"cam", include_cert=True), authority_keys=[authority.public_key], now=NOW + 10.0)


def test_pool_running_low_and_exhausted(authority: PseudonymAuthority) -> None:
    device = SigningKey.generate("Ed25519")
    pool = _pool(authority, device, 4)
    manager = PseudonymManager(pool, period=60.0, jitter=0.0, rng=random.Random(1), now=NOW, low_water=2)
    assert len(pool) == 3 and not manager.refill_needed(NOW)
    manager.current(NOW + 60.0)
    assert len(pool) == 2 and not manager.refill_needed(NOW + 60.0)
    manager.current(NOW + 120.0)
    assert manager.refill_needed(NOW + 120.0)  # one left: ask the authority for more
    last = manager.current(NOW + 180.0)
    assert len(pool) == 0 and not manager.overdue
    # a change is due and the pool is empty: keep the current pseudonym while it is valid
    assert manager.current(NOW + 240.0) is last and manager.overdue
    assert manager.on_cell_change(NOW + 250.0) is last
    # the refill arrives: the next use changes
    request, keys = make_request(device, 3, now=NOW + 260.0)
    pool.add_batch(keys, authority.issue(request, now=NOW + 260.0), authority_keys=[authority.public_key], now=NOW)
    fresh = manager.current(NOW + 260.0)
    assert fresh is not last and not manager.overdue and not manager.refill_needed(NOW + 260.0)
    # nothing left after the slot ends: refuse rather than sign with an expired certificate
    for t in (300.0, 360.0, 420.0):
        manager.current(NOW + t)
    with pytest.raises(PoolExhaustedError):
        manager.current(SLOT_START + 3600.0)


def test_certificate_expiry_forces_a_change_into_the_next_slot(authority: PseudonymAuthority) -> None:
    device = SigningKey.generate("Ed25519")
    pool = _pool(authority, device, 2)
    next_slot = authority.slot(NOW) + 1
    request, keys = make_request(device, 2, now=NOW, slot=next_slot)
    pool.add_batch(keys, authority.issue(request, now=NOW), authority_keys=[authority.public_key], now=NOW)
    boundary = SLOT_START + 3600.0
    manager = PseudonymManager(
        pool, period=3000.0, jitter=10.0, rng=random.Random(3), now=boundary - 100.0, low_water=3
    )
    before = manager.current(boundary - 100.0)
    assert before.cert.exp == boundary and manager.next_change > boundary
    # 3 unused now, but the one of this slot will have expired by the next change: refill
    assert pool.available(boundary - 100.0) == 3 and pool.available(manager.next_change) == 2
    assert manager.refill_needed(boundary - 100.0)
    after = manager.current(boundary)
    assert after is not before and after.cert.nbf == boundary


# --- V2V messages --------------------------------------------------------------------------


def test_v2v_message_signed_with_the_current_pseudonym(authority: PseudonymAuthority) -> None:
    pool = _pool(authority, SigningKey.generate("Ed25519"), 2)
    manager = PseudonymManager(pool, rng=random.Random(2), now=NOW)
    identity = manager.current(NOW)
    trusted = [authority.public_key]
    cache: dict[bytes, PseudonymCert] = {}
    first = identity.sign(b"CAM 1", include_cert=True, content_type="cam")
    assert cose.decode_sign1(first).kid == identity.cert_id
    msg = verify_v2v(first, authority_keys=trusted, now=NOW, certs=cache)
    assert (msg.payload, msg.station_id, msg.counter, msg.content_type) == (b"CAM 1", identity.station_id, 0, "cam")
    assert msg.cert.cert_id == identity.cert_id and identity.cert_id in cache
    # later messages carry only the kid: the receiver uses the certificate it has
    second = identity.sign(b"CAM 2")
    assert len(second) < len(first) - 400
    assert verify_v2v(second, authority_keys=trusted, now=NOW + 1, certs=cache).counter == 1
    with pytest.raises(CredentialError, match="unknown pseudonym certificate"):
        verify_v2v(second, authority_keys=trusted, now=NOW + 1, certs={})
    with pytest.raises(SignatureError):
        verify_v2v(second.replace(b"CAM 2", b"CAM 3"), authority_keys=trusted, now=NOW + 1, certs=cache)
    with pytest.raises(ValidityError):
        verify_v2v(second, authority_keys=trusted, now=SLOT_START + 3600 + 60, certs=cache)
    with pytest.raises(CredentialError, match="not a trusted authority"):
        verify_v2v(first, authority_keys=[SigningKey.generate("Ed25519").public], now=NOW)
    # a message that carries one certificate but names another
    other = manager.on_cell_change(NOW + 2)
    body = cose.decode_sign1(other.sign(b"x"))
    mixed = cose.sign1(
        b"x",
        SigningKey.generate("P-256"),
        kid=other.cert_id,
        protected={"sid": 1, "ctr": 0},
        unprotected={13: identity.cert.raw},
    )
    assert body.kid == other.cert_id
    with pytest.raises(CoseError, match="kid is not the id of the certificate"):
        verify_v2v(mixed, authority_keys=trusted, now=NOW + 2)


def test_escrow_keys_agree_and_keep_their_secret() -> None:
    import pickle

    from ledger_lite.errors import KeyFormatError
    from ledger_lite.keys import KeyAgreementKey

    a, b = KeyAgreementPrivateKey.generate(), KeyAgreementPrivateKey.generate()
    assert a.exchange(b.public) == b.exchange(a.public)
    assert KeyAgreementPrivateKey.from_private_bytes(a.private_bytes()).public == a.public
    assert a.private_bytes().hex() not in repr(a)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(a)
    with pytest.raises(KeyFormatError):  # a low-order point: the shared secret would be all zeros
        a.exchange(KeyAgreementKey.from_raw("X25519", bytes(32)))
