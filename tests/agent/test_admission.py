"""Cell announcement, admission and handover (agent/admission.py): the pure message checks with
every rejection reason, both sides of a refusal, and an RSU/OBU pair over a real Mosquitto with a
handover between two adjacent cells."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent import topics
from agent.admission import (
    CT_ANNOUNCE,
    AdmissionError,
    Area,
    CellAnnouncer,
    CellJoiner,
    Endpoint,
    NonceCache,
    Reason,
    build_announcement,
    build_request,
    genesis_hash,
    message_type,
    reason_for,
    verify_announcement,
    verify_request,
    verify_response,
)
from agent.config import MqttConfig
from agent.health import HealthRegistry
from agent.mqtt import Dispatcher, MqttClient
from ledger_lite import cbor, cose
from ledger_lite.credentials import (
    RevocationList,
    Role,
    TrustStore,
    ValidatorCredential,
    VehicleCredential,
    decode_credential,
    issue_credential,
)
from ledger_lite.didkey import did_key, verification_method_id
from ledger_lite.errors import CredentialError, RevokedError, SignatureError, ValidityError
from ledger_lite.genesis import Genesis
from ledger_lite.keys import SigningKey
from ledger_lite.validators import Validator, ValidatorSet
from tests.mqtt_broker import Broker

NOW = 1_800_000_000.0
DAY = 86400.0
VIN = "1M8GDM9AXKP042788"
# two adjacent cells: A is lon 11.00 .. 11.01, B is lon 11.01 .. 11.02 (lat 48.00 .. 48.01)
POLY_A = [(48.0, 11.0), (48.0, 11.01), (48.01, 11.01), (48.01, 11.0)]
POLY_B = [(48.0, 11.01), (48.0, 11.02), (48.01, 11.02), (48.01, 11.01)]


def did(key: SigningKey) -> str:
    return did_key(key.public)


class FixedClock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    async def sleep_until(self, deadline: float) -> None:  # pragma: no cover - not used
        await asyncio.sleep(0)


@dataclass
class World:
    """Roots, two cells with one RSU each, one OBU; credentials valid around ``now``."""

    now: float = NOW
    road: SigningKey = field(default_factory=lambda: SigningKey.generate("Ed25519"))
    oem: SigningKey = field(default_factory=lambda: SigningKey.generate("Ed25519"))
    rogue: SigningKey = field(default_factory=lambda: SigningKey.generate("Ed25519"))
    rsu_a: SigningKey = field(default_factory=lambda: SigningKey.generate("Ed25519"))
    rsu_b: SigningKey = field(default_factory=lambda: SigningKey.generate("Ed25519"))
    obu: SigningKey = field(default_factory=lambda: SigningKey.generate("Ed25519"))
    revocation: RevocationList = field(default_factory=RevocationList)

    def __post_init__(self) -> None:
        self.trust = TrustStore({did(self.road): Role.ROAD_AUTHORITY, did(self.oem): Role.OEM}, self.revocation)
        self.genesis = {c: self.make_genesis(c, k) for c, k in (("A", self.rsu_a), ("B", self.rsu_b))}
        self.vc = {"A": self.validator_cred(self.rsu_a, "A"), "B": self.validator_cred(self.rsu_b, "B")}
        self.vehicle = self.vehicle_cred()

    def make_genesis(self, cell: str, rsu: SigningKey) -> Genesis:
        chain = f"chain-{cell}"
        return Genesis(
            chain,
            int(self.now * 1000) - 1000,
            ValidatorSet(chain, (Validator(did(rsu), 1),)),
            {did(self.road): frozenset({Role.ROAD_AUTHORITY}), did(self.oem): frozenset({Role.OEM})},
        )

    def validator_cred(self, rsu: SigningKey, cell: str, *, issuer: SigningKey | None = None, exp: float = 0) -> bytes:
        return issue_credential(
            ValidatorCredential(did(rsu), cell),
            issuer or self.road,
            now=self.now - DAY,
            expires=exp or self.now + 365 * DAY,
        )

    def vehicle_cred(
        self, *, issuer: SigningKey | None = None, exp: float = 0, subject: SigningKey | None = None
    ) -> bytes:
        return issue_credential(
            VehicleCredential(did(subject or self.obu), VIN),
            issuer or self.oem,
            now=self.now - DAY,
            expires=exp or self.now + 365 * DAY,
        )

    def area(self, cell: str) -> Area:
        return Area.from_polygon(POLY_A if cell == "A" else POLY_B)

    def announcement(self, cell: str = "A", **kw: Any) -> bytes:
        args: dict[str, Any] = {
            "key": self.rsu_a if cell == "A" else self.rsu_b,
            "cell": cell,
            "area": self.area(cell),
            "genesis": self.genesis[cell],
            "broker": Endpoint("127.0.0.1", 1883),
            "validator_credential": self.vc[cell],
            "now": self.now,
            "validity": 60.0,
        }
        args.update(kw)
        return build_announcement(**args)


def resign(data: bytes, key: SigningKey, content_type: str = CT_ANNOUNCE, **changes: Any) -> bytes:
    """The same message with ``changes`` to its payload, signed by ``key`` (a well-signed forgery)."""
    doc = cbor.loads(cose.decode_sign1(data).payload or b"")
    doc.update(changes)
    return cose.sign1(cbor.dumps(doc), key, kid=verification_method_id(did(key)).encode(), content_type=content_type)


def refused(reason: Reason, fn: Callable[[], object]) -> AdmissionError:
    with pytest.raises(AdmissionError) as info:
        fn()
    assert info.value.reason is reason, info.value
    return info.value


@pytest.fixture
def w() -> World:
    return World()


# --- geometry ---------------------------------------------------------------------------------


def test_areas_contain_and_round_trip() -> None:
    circle = Area.circle(48.0, 11.0, 500)
    assert circle.contains(48.0, 11.0) and circle.contains(48.004, 11.0)
    assert not circle.contains(48.005, 11.0)  # ~556 m north
    a, b = Area.from_polygon(POLY_A), Area.from_polygon(POLY_B)
    assert a.contains(48.005, 11.005) and not a.contains(48.005, 11.015)
    assert b.contains(48.005, 11.015) and not b.contains(48.005, 11.005)
    edge = [a.contains(48.005, 11.01), b.contains(48.005, 11.01)]
    assert edge.count(True) == 1  # a point on the shared edge belongs to exactly one cell
    for area in (circle, a):
        assert Area.from_wire(cbor.loads(cbor.dumps(area.to_wire()))) == area
    with pytest.raises(ValueError):
        Area.from_polygon([(48.0, 11.0), (48.1, 11.0)])
    with pytest.raises(ValueError):
        Area.circle(91.0, 0.0, 10)
    refused(Reason.MALFORMED, lambda: Area.from_wire({"c": [1, 2]}))


def test_reason_codes_for_ledger_errors() -> None:
    assert reason_for(RevokedError("x")) is Reason.REVOKED
    assert reason_for(ValidityError("x")) is Reason.EXPIRED
    assert reason_for(SignatureError("x")) is Reason.BAD_SIGNATURE
    assert reason_for(CredentialError("x")) is Reason.UNKNOWN_ISSUER
    assert reason_for(ValueError("x")) is Reason.MALFORMED


# --- announcement -----------------------------------------------------------------------------


def test_announcement_round_trip(w: World) -> None:
    data = w.announcement("A")
    info = verify_announcement(data, w.trust, w.now + 5, genesis=w.genesis.values())
    assert info.cell == "A" and info.rsu == did(w.rsu_a) and info.area == w.area("A")
    assert info.chain_id == "chain-A" and info.genesis_hash == genesis_hash(w.genesis["A"])
    assert info.genesis_hash == genesis_hash(w.genesis["A"].to_json().encode())
    assert info.validators_hash == w.genesis["A"].validators.hash()
    assert info.broker == Endpoint("127.0.0.1", 1883, False) and info.power == 1
    assert info.issued == w.now and info.expires == w.now + 60 and info.genesis == w.genesis["A"]
    # without the genesis: accepted, unless the verifier insists on knowing it
    assert verify_announcement(data, w.trust, w.now).genesis is None
    refused(Reason.UNKNOWN_GENESIS, lambda: verify_announcement(data, w.trust, w.now, require_known_genesis=True))
    ok = verify_announcement(
        data, w.trust, w.now, require_known_genesis=True, trusted_hashes=[genesis_hash(w.genesis["A"])]
    )
    assert ok.cell == "A"
    assert data == w.announcement("A")  # deterministic


def test_announcement_builder_refuses_a_credential_of_someone_else(w: World) -> None:
    with pytest.raises(ValueError, match="not for"):
        w.announcement("A", validator_credential=w.vc["B"])


def test_announcement_forged_signature(w: World) -> None:
    data = w.announcement("A")
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    refused(Reason.BAD_SIGNATURE, lambda: verify_announcement(tampered, w.trust, w.now))
    # a payload changed (area moved) but still claiming the RSU's kid
    doc = cbor.loads(cose.decode_sign1(data).payload or b"")
    doc["area"] = Area.from_polygon(POLY_B).to_wire()
    forged = cose.sign1(
        cbor.dumps(doc), w.rogue, kid=verification_method_id(did(w.rsu_a)).encode(), content_type=CT_ANNOUNCE
    )
    refused(Reason.BAD_SIGNATURE, lambda: verify_announcement(forged, w.trust, w.now))
    refused(Reason.MALFORMED, lambda: verify_announcement(b"\x00garbage", w.trust, w.now))


def test_announcement_validator_credential_not_from_a_road_authority(w: World) -> None:
    by_oem = w.validator_cred(w.rsu_a, "A", issuer=w.oem)  # a trust root, but for OEM only
    err = refused(
        Reason.UNKNOWN_ISSUER, lambda: verify_announcement(w.announcement(validator_credential=by_oem), w.trust, w.now)
    )
    assert "road_authority" in err.text
    by_rogue = w.validator_cred(w.rsu_a, "A", issuer=w.rogue)  # no trust root at all
    refused(
        Reason.UNKNOWN_ISSUER,
        lambda: verify_announcement(w.announcement(validator_credential=by_rogue), w.trust, w.now),
    )


def test_announcement_by_a_delegated_road_authority(w: World) -> None:
    from ledger_lite.credentials import IssuerCredential

    region = SigningKey.generate("Ed25519")
    delegation = issue_credential(
        IssuerCredential(did(region), Role.ROAD_AUTHORITY), w.road, now=w.now - DAY, expires=w.now + DAY
    )
    vc = w.validator_cred(w.rsu_a, "A", issuer=region)
    with_chain = w.announcement("A", validator_credential=vc, issuers=[delegation])
    assert verify_announcement(with_chain, w.trust, w.now).rsu == did(w.rsu_a)
    without = w.announcement("A", validator_credential=vc)
    refused(Reason.UNKNOWN_ISSUER, lambda: verify_announcement(without, w.trust, w.now))


def test_announcement_subject_mismatch_and_wrong_cell(w: World) -> None:
    data = w.announcement("A")
    # RSU A presents RSU B's credential (well signed by A)
    stolen = resign(data, w.rsu_a, vc=w.vc["B"], cell="B")
    refused(Reason.SUBJECT_MISMATCH, lambda: verify_announcement(stolen, w.trust, w.now))
    # RSU A announces cell B with its credential for cell A
    other_cell = resign(data, w.rsu_a, cell="B")
    refused(Reason.WRONG_CELL, lambda: verify_announcement(other_cell, w.trust, w.now))


def test_announcement_expired(w: World) -> None:
    data = w.announcement("A")
    err = refused(Reason.EXPIRED, lambda: verify_announcement(data, w.trust, w.now + 60 + w.trust.skew))
    assert "expired" in err.text
    assert verify_announcement(data, w.trust, w.now + 60 + w.trust.skew - 1).cell == "A"  # skew allowed
    refused(Reason.CLOCK_SKEW, lambda: verify_announcement(data, w.trust, w.now - 2 * w.trust.skew))
    # a fresh announcement carrying an expired validator credential
    short = w.validator_cred(w.rsu_a, "A", exp=w.now + 100)
    late = w.now + 100 + w.trust.skew + 1
    stale_vc = w.announcement("A", validator_credential=short, now=late)
    refused(Reason.EXPIRED, lambda: verify_announcement(stale_vc, w.trust, late))


def test_announcement_revoked(w: World) -> None:
    data = w.announcement("A")
    w.revocation.revoke_credential(decode_credential(w.vc["A"]).cti)
    refused(Reason.REVOKED, lambda: verify_announcement(data, w.trust, w.now))
    w.revocation.credentials.clear()
    w.revocation.revoke_did(did(w.rsu_a))
    refused(Reason.REVOKED, lambda: verify_announcement(data, w.trust, w.now))


def test_announcement_by_a_non_validator_of_the_known_genesis(w: World) -> None:
    outsider = SigningKey.generate("Ed25519")
    w.vc["A"] = w.validator_cred(outsider, "A")
    data = w.announcement("A", key=outsider)  # names genesis A, whose only validator is rsu_a
    refused(Reason.NOT_VALIDATOR, lambda: verify_announcement(data, w.trust, w.now, genesis=[w.genesis["A"]]))
    assert verify_announcement(data, w.trust, w.now).rsu == did(outsider)  # genesis unknown: cannot tell


# --- admission, pure --------------------------------------------------------------------------


def _client(cell: str, node: str, port: int = 1883) -> tuple[MqttClient, Dispatcher]:
    client = MqttClient(MqttConfig(host="127.0.0.1", port=port, cell=cell), node_id=node)
    return client, Dispatcher(client)


def announcer(w: World, cell: str = "A", clock: Any = None, port: int = 1883, **kw: Any) -> CellAnnouncer:
    clock = clock or FixedClock(w.now)
    client, dispatcher = _client(cell, f"rsu-{cell.lower()}", port)
    args: dict[str, Any] = {
        "key": w.rsu_a if cell == "A" else w.rsu_b,
        "cell": cell,
        "area": w.area(cell),
        "genesis": w.genesis[cell],
        "broker": Endpoint("127.0.0.1", port),
        "validator_credential": w.vc[cell],
        "trust": w.trust,
    }
    args.update(kw)
    return CellAnnouncer(client, dispatcher, clock, HealthRegistry(clock.monotonic), **args)


def joiner(
    w: World, position: Callable[[], tuple[float, float] | None], clock: Any = None, port: int = 1883, **kw: Any
) -> CellJoiner:
    clock = clock or FixedClock(w.now)
    client, dispatcher = _client("A", "obu-1", port)
    args: dict[str, Any] = {
        "key": w.obu,
        "node": "obu-1",
        "vehicle_credential": w.vehicle,
        "trust": w.trust,
        "position": position,
        "genesis": w.genesis.values(),
    }
    args.update(kw)
    return CellJoiner(client, dispatcher, clock, HealthRegistry(clock.monotonic), **args)


def exchange(rsu: CellAnnouncer, obu: CellJoiner) -> tuple[Any, bytes | None]:
    """OBU hears the announcement, asks; RSU answers; OBU reads the answer."""
    obu.handle_announcement(build_announcement(**rsu._announce_args(rsu.clock.time())))
    out = obu.evaluate()
    assert out is not None
    topic, request = out
    assert topic == topics.admission(rsu.cell, "obu-1") and message_type(request) == "req"
    reply = rsu.handle_request(topic.node, request)
    assert reply is not None and message_type(reply) == "resp"
    return obu.handle_answer(topic.cell, reply), reply


def test_admission_accepted(w: World) -> None:
    rsu, changes = announcer(w), []
    obu = joiner(w, lambda: (48.005, 11.005))
    obu.on_change(lambda old, new: changes.append((old, new)))
    result, _ = exchange(rsu, obu)
    assert result.admitted and result.genesis == w.genesis["A"] and result.expires == w.now + 3600
    assert result.topics == {"block": "acc/v1/cell/A/block", "tx": "acc/v1/cell/A/tx"}
    assert obu.current_cell == "A" and changes == [(None, "A")]
    assert rsu.status()["admitted"][did(w.obu)]["vin"] == VIN
    assert obu.status()["current_cell"] == "A" and obu.evaluate() is None  # admitted: nothing to ask


def _refusal(
    w: World, reason: Reason, caplog: pytest.LogCaptureFixture, *, swap_credential: bytes = b"", **obu_kw: Any
) -> None:
    rsu = announcer(w)
    obu = joiner(w, lambda: (48.005, 11.005), **obu_kw)
    if swap_credential:  # misprovisioned after start (the constructor refuses a foreign one)
        obu.vehicle_credential = swap_credential
    with caplog.at_level(logging.INFO, logger="agent.admission"):
        result, _ = exchange(rsu, obu)
    assert result is not None and not result.admitted and result.reason == reason
    assert rsu.refused == {reason: 1} and obu.current_cell is None
    assert obu.backoff["A"] > w.now and obu.evaluate() is None  # backs off before asking again
    logs = caplog.text
    assert f"REFUSED node obu-1 ({did(w.obu)}) in cell A: {reason}" in logs  # RSU side
    assert f"cell A REFUSED us: {reason}" in logs  # OBU side


def test_admission_refused_revoked(w: World, caplog: pytest.LogCaptureFixture) -> None:
    w.revocation.revoke_credential(decode_credential(w.vehicle).cti)
    _refusal(w, Reason.REVOKED, caplog)


def test_admission_refused_revoked_device(w: World, caplog: pytest.LogCaptureFixture) -> None:
    w.revocation.revoke_did(did(w.obu))
    _refusal(w, Reason.REVOKED, caplog)


def test_admission_refused_expired(w: World, caplog: pytest.LogCaptureFixture) -> None:
    expired = issue_credential(VehicleCredential(did(w.obu), VIN), w.oem, now=w.now - 10 * DAY, expires=w.now - DAY)
    _refusal(w, Reason.EXPIRED, caplog, vehicle_credential=expired)


def test_admission_refused_unknown_issuer(w: World, caplog: pytest.LogCaptureFixture) -> None:
    _refusal(w, Reason.UNKNOWN_ISSUER, caplog, vehicle_credential=w.vehicle_cred(issuer=w.rogue))


def test_admission_refused_subject_mismatch(w: World, caplog: pytest.LogCaptureFixture) -> None:
    foreign = w.vehicle_cred(subject=SigningKey.generate("Ed25519"))
    with pytest.raises(ValueError, match="not for this device"):
        joiner(w, lambda: None, vehicle_credential=foreign)
    _refusal(w, Reason.SUBJECT_MISMATCH, caplog, swap_credential=foreign)


def test_admission_refused_bad_signature_reaches_the_obu(w: World, caplog: pytest.LogCaptureFixture) -> None:
    rsu = announcer(w)
    info = verify_announcement(w.announcement("A"), w.trust, w.now)
    request, nonce = build_request(
        key=w.obu, node="obu-1", cell="A", rsu=did(w.rsu_a), vehicle_credential=w.vehicle, now=w.now
    )
    with caplog.at_level(logging.INFO, logger="agent.admission"):
        reply = rsu.handle_request("obu-1", request[:-1] + bytes([request[-1] ^ 1]))
    assert reply is not None
    result = verify_response(reply, cell=info, obu=did(w.obu), nonce=nonce, now=w.now, skew=60)
    assert not result.admitted and result.reason == Reason.BAD_SIGNATURE
    assert "in cell A: bad_signature" in caplog.text
    assert rsu.handle_request("obu-1", b"garbage") is None  # nothing to address an answer to


def test_admission_refused_replayed_nonce(w: World, caplog: pytest.LogCaptureFixture) -> None:
    rsu = announcer(w)
    info = verify_announcement(w.announcement("A"), w.trust, w.now)
    request, nonce = build_request(
        key=w.obu, node="obu-1", cell="A", rsu=did(w.rsu_a), vehicle_credential=w.vehicle, now=w.now
    )
    first = rsu.handle_request("obu-1", request)
    assert first is not None
    ok = verify_response(first, cell=info, obu=did(w.obu), nonce=nonce, now=w.now, skew=60)
    assert ok.admitted
    with caplog.at_level(logging.INFO, logger="agent.admission"):
        again = rsu.handle_request("obu-1", request)  # captured and replayed
    assert again is not None
    replay = verify_response(again, cell=info, obu=did(w.obu), nonce=nonce, now=w.now, skew=60)
    assert not replay.admitted and replay.reason == Reason.REPLAY and rsu.refused == {Reason.REPLAY: 1}
    assert "REFUSED node obu-1" in caplog.text and ": replay:" in caplog.text
    # an old answer does not satisfy a new request (nonce echo)
    refused(
        Reason.REPLAY, lambda: verify_response(first, cell=info, obu=did(w.obu), nonce=b"\x01" * 16, now=w.now, skew=60)
    )


def test_admission_refused_wrong_cell(w: World, caplog: pytest.LogCaptureFixture) -> None:
    rsu = announcer(w)
    info = verify_announcement(w.announcement("A"), w.trust, w.now)
    request, nonce = build_request(
        key=w.obu, node="obu-1", cell="B", rsu=did(w.rsu_a), vehicle_credential=w.vehicle, now=w.now
    )
    with caplog.at_level(logging.INFO, logger="agent.admission"):
        reply = rsu.handle_request("obu-1", request)
    assert reply is not None
    result = verify_response(reply, cell=info, obu=did(w.obu), nonce=nonce, now=w.now, skew=60)
    assert not result.admitted and result.reason == Reason.WRONG_CELL and "asks for cell B" in result.text
    assert "in cell A: wrong_cell" in caplog.text


def test_request_checks_without_the_service(w: World) -> None:
    nonces = NonceCache(121)

    def check(data: bytes, now: float = NOW, **kw: Any) -> Any:
        args: dict[str, Any] = {"trust": w.trust, "cell": "A", "rsu": did(w.rsu_a), "now": now, "nonces": nonces}
        args.update(kw)
        return verify_request(data, **args)

    def req(**kw: Any) -> bytes:
        args: dict[str, Any] = {
            "key": w.obu,
            "node": "obu-1",
            "cell": "A",
            "rsu": did(w.rsu_a),
            "vehicle_credential": w.vehicle,
            "now": NOW,
        }
        args.update(kw)
        return build_request(**args)[0]

    ok = check(req())
    assert ok.obu == did(w.obu) and ok.vin == VIN and ok.cell == "A" and len(ok.nonce) == 16
    err = refused(Reason.WRONG_RSU, lambda: check(req(rsu=did(w.rsu_b))))
    assert err.nonce is not None and err.peer == did(w.obu)
    refused(Reason.CLOCK_SKEW, lambda: check(req(now=NOW - 300)))
    refused(Reason.MALFORMED, lambda: check(req(), node="someone-else"))
    data = req()
    refused(Reason.BAD_SIGNATURE, lambda: check(data[:-1] + bytes([data[-1] ^ 0x80])))
    bad = refused(Reason.BAD_SIGNATURE, lambda: check(data[:-1] + bytes([data[-1] ^ 0x40])))
    assert bad.nonce is not None and bad.peer == did(w.obu)  # the RSU can still address a refusal
    refused(Reason.MALFORMED, lambda: check(resign(data, w.obu, "application/acc-admission-request+cbor", extra=1)))
    # the replay window: the same nonce is refused until it has aged out with the request time
    fixed = bytes(16)
    check(req(nonce=fixed))
    refused(Reason.REPLAY, lambda: check(req(nonce=fixed)))
    assert len(nonces) >= 1
    later = NOW + 200
    check(req(nonce=fixed, now=later), now=later)  # older entries purged, fresh request accepted


def test_answer_must_come_from_the_announced_rsu(w: World) -> None:
    info = verify_announcement(w.announcement("A"), w.trust, w.now)
    request, nonce = build_request(
        key=w.obu, node="obu-1", cell="A", rsu=did(w.rsu_a), vehicle_credential=w.vehicle, now=w.now
    )
    impostor = announcer(w, "B")  # a valid RSU, but not the one announced for A
    req = verify_request(request, trust=w.trust, cell="A", rsu=did(w.rsu_a), now=w.now, nonces=NonceCache(120))
    from agent.admission import build_admitted

    reply = build_admitted(key=impostor.key, request=req, genesis=w.genesis["A"], now=w.now, ttl=60)
    refused(
        Reason.WRONG_RSU, lambda: verify_response(reply, cell=info, obu=did(w.obu), nonce=nonce, now=w.now, skew=60)
    )
    # the right RSU with a genesis that does not hash to the announced one
    wrong = build_admitted(key=w.rsu_a, request=req, genesis=w.genesis["B"], now=w.now, ttl=60)
    refused(
        Reason.MALFORMED, lambda: verify_response(wrong, cell=info, obu=did(w.obu), nonce=nonce, now=w.now, skew=60)
    )


def test_joiner_picks_the_cell_under_the_position_and_leaves(w: World) -> None:
    pos: list[tuple[float, float] | None] = [None]
    obu = joiner(w, lambda: pos[0])
    for cell in ("A", "B"):
        obu.handle_announcement(w.announcement(cell))
    assert set(obu.cells) == {"A", "B"} and obu.evaluate() is None  # no position yet
    pos[0] = (48.005, 11.015)
    out = obu.evaluate()
    assert out is not None and out[0].cell == "B"
    assert obu.evaluate() is None  # waiting for B's answer
    pos[0] = (49.0, 11.0)  # nowhere
    assert obu.evaluate() is None
    # a forged announcement is ignored and counted
    obu.handle_announcement(resign(w.announcement("A"), w.rogue))
    assert obu.rejected == {Reason.SUBJECT_MISMATCH: 1}


# --- over a real broker -----------------------------------------------------------------------


async def _until(cond: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - polling state the services update
            await asyncio.sleep(0.02)


async def test_join_and_handover_over_mosquitto(mosquitto: Broker) -> None:
    from drivers.clock import SystemClock

    w = World(now=time.time())
    clock = SystemClock()
    rsu_a = announcer(w, "A", clock=clock, port=mosquitto.port, interval=0.5)
    rsu_b = announcer(w, "B", clock=clock, port=mosquitto.port, interval=0.5)
    position = [(48.005, 11.004)]
    obu = joiner(w, lambda: position[0], clock=clock, port=mosquitto.port, check_interval=0.05, retry_after=1.0)
    changes: list[tuple[str | None, str | None]] = []
    obu.on_change(lambda old, new: changes.append((old, new)))
    tasks: list[asyncio.Task[None]] = []
    try:
        for svc in (rsu_a, rsu_b, obu):
            tasks.append(asyncio.create_task(svc.client.run()))
            tasks.append(asyncio.create_task(svc.dispatcher.run()))
        for svc in (rsu_a, rsu_b, obu):
            await svc.client.wait_connected(5)
        tasks.append(asyncio.create_task(rsu_a.run()))
        tasks.append(asyncio.create_task(rsu_b.run()))
        await _until(lambda: rsu_a.announced > 0 and rsu_b.announced > 0)
        tasks.append(asyncio.create_task(obu.run()))  # a late OBU: hears the retained announcements
        await _until(lambda: obu.current_cell == "A")
        assert changes == [(None, "A")]
        assert did(w.obu) in rsu_a.status()["admitted"] and set(obu.cells) == {"A", "B"}
        position[0] = (48.005, 11.016)  # drive east across the boundary into B
        await _until(lambda: obu.current_cell == "B")
        assert changes == [(None, "A"), ("A", "B")]
        assert did(w.obu) in rsu_b.status()["admitted"]
        st = obu.status()
        assert st["chain_id"] == "chain-B" and st["rsu"] == did(w.rsu_b) and st["rejected"] == {}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --- composition ------------------------------------------------------------------------------


def test_build_cell_services_from_config(w: World, tmp_path: Any) -> None:
    from agent.admission import build_cell_service, build_cell_services
    from agent.config import ConfigError, load_config
    from agent.keystore import DeviceIdentity
    from agent.runtime import Agent

    (tmp_path / "genesis.json").write_text(w.genesis["A"].to_json())
    (tmp_path / "validator.cose").write_bytes(w.vc["A"])
    (tmp_path / "vehicle.cose").write_bytes(w.vehicle)
    roots = {did(w.road): "road_authority", did(w.oem): "oem"}
    base: dict[str, Any] = {
        "agent": {"role": "rsu", "node_id": "rsu-a", "data_dir": str(tmp_path)},
        "mqtt": {"enabled": True, "cell": "A"},
        "trust": {"roots": roots},
        "ledger": {"genesis_file": str(tmp_path / "genesis.json")},
        "cell": {
            "announce": True,
            "validator_credential": str(tmp_path / "validator.cose"),
            "area_polygon": [list(p) for p in POLY_A],
        },
    }

    def agent_for(cfg_base: dict[str, Any], key: SigningKey) -> Agent:
        agent = Agent(load_config(base=cfg_base, env={}), handle_signals=False)
        agent.identity = DeviceIdentity(did(key), key, tmp_path / "key")
        agent.mqtt, agent.dispatcher = _client("A", agent.node_id)
        return agent

    rsu_agent = agent_for(base, w.rsu_a)
    services = build_cell_services(rsu_agent)
    assert [name for name, _ in services] == ["cell.announce"]
    rsu = build_cell_service(rsu_agent)
    assert isinstance(rsu, CellAnnouncer) and rsu.area == w.area("A") and rsu.broker.port == 1883
    assert rsu.status()["genesis_hash"] == genesis_hash(w.genesis["A"]).hex()
    # the wrong device key for this validator credential: one clear config error
    with pytest.raises(ConfigError, match="cell: the validator credential is not for"):
        build_cell_service(agent_for(base, w.rsu_b))
    obu_base: dict[str, Any] = {
        "agent": {"role": "obu", "node_id": "obu-1", "data_dir": str(tmp_path)},
        "mqtt": {"enabled": True, "cell": "A"},
        "trust": {"roots": roots},
        "gnss": {"backend": "none"},
        "cell": {"join": True, "vehicle_credential": str(tmp_path / "vehicle.cose"), "genesis_dir": str(tmp_path)},
    }
    (tmp_path / "genesis.json").rename(tmp_path / "cell-a.json")
    obu = build_cell_service(agent_for(obu_base, w.obu))
    assert isinstance(obu, CellJoiner) and obu.genesis == [w.genesis["A"]] and obu.position() is None
    assert build_cell_services(Agent(load_config(env={}), handle_signals=False)) == []


def test_cell_config_is_checked() -> None:
    from agent.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(
            base={
                "agent": {"role": "obu"},
                "cell": {"announce": True, "area_polygon": [[1, 2]], "genesis_hashes": ["zz"]},
            },
            env={},
        )
    text = str(info.value)
    for needle in (
        "cell.announce: only an RSU",
        "cell.announce: needs mqtt.enabled",
        "cell.validator_credential: required",
        "cell.area_polygon: needs at least 3",
        "cell.genesis_hashes[0]",
    ):
        assert needle in text


def test_renewal_refused_renewal_and_expiry(w: World) -> None:
    clock = FixedClock(w.now)
    rsu, changes = announcer(w, clock=clock, admission_ttl=600), []
    obu = joiner(w, lambda: (48.005, 11.005), clock=clock)
    obu.on_change(lambda old, new: changes.append((old, new)))
    assert exchange(rsu, obu)[0].admitted and changes == [(None, "A")]
    clock.t = w.now + 600 - 59  # within the last minute: renew, same cell, no change
    w.now = clock.t
    result, _ = exchange(rsu, obu)
    assert result.admitted and obu.current.expires == clock.t + 600 and changes == [(None, "A")]
    clock.t += 545
    w.revocation.revoke_credential(decode_credential(w.vehicle).cti)
    result, _ = exchange(rsu, obu)
    assert not result.admitted and result.reason == Reason.REVOKED and changes == [(None, "A"), ("A", None)]
    # expiry without a renewal answer
    w.revocation.credentials.clear()
    clock.t += 10
    obu.backoff.clear()
    assert exchange(rsu, obu)[0].admitted
    clock.t = obu.current.expires
    obu.evaluate()
    assert obu.current_cell is None and changes[-1] == ("A", None)
