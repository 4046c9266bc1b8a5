"""The OBU enforces access grants: a third party with an owner's grant reads Vehicle.Speed
through the running agent's socket; everything else is refused with the reason."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.access import AccessGate, build_request
from agent.config import load_config
from agent.diagnostics import DiagError, query
from agent.keystore import init_device_key
from agent.runtime import Agent
from drivers.can_bus import PythonCanPort
from hal.types import CanFrame
from ledger_lite import didkey
from ledger_lite.credentials import AccessGrant, OwnerCredential, RevocationList, TrustStore, issue_credential
from ledger_lite.errors import AccessDenied, ReplayError, SignatureError, ValidityError
from ledger_lite.keys import SigningKey

VIN = "1M8GDM9AXKP042788"
DBC = Path(__file__).resolve().parents[2] / "drivers/data/acc_testcar_powertrain.dbc"


class World:
    def __init__(self, vehicle_did: str, now: float) -> None:
        self.oem = SigningKey.generate()
        self.owner = SigningKey.generate()
        self.app = SigningKey.generate()  # the third party (an insurer's app)
        self.vehicle = vehicle_did
        did = lambda k: didkey.did_key(k.public)  # noqa: E731
        self.oem_did, self.owner_did, self.app_did = did(self.oem), did(self.owner), did(self.app)
        self.owner_cred = issue_credential(OwnerCredential(self.owner_did, vehicle_did, VIN), self.oem, now=now)
        self.grant = issue_credential(
            AccessGrant(self.app_did, vehicle_did, ("Vehicle.Speed",)), self.owner, now=now, expires=now + 3600
        )

    def request(self, resource: str, now: float, **kw: object) -> bytes:
        return build_request(
            self.app, self.vehicle, resource, now=now, grants=[self.grant], chain=[self.owner_cred], **kw
        )


def test_gate_allows_the_grant_and_refuses_everything_else() -> None:
    now = time.time()
    vehicle = didkey.did_key(SigningKey.generate().public)
    w = World(vehicle, now)
    revocation = RevocationList()
    gate = AccessGate(vehicle, TrustStore({w.oem_did: "oem"}, revocation, skew=60), vin=VIN)
    decision = gate.check(w.request("Vehicle.Speed", now), now)
    assert (decision.subject, decision.resource, decision.action) == (w.app_did, "Vehicle.Speed", "read")

    with pytest.raises(AccessDenied, match="Vehicle.CurrentLocation.Latitude"):
        gate.check(w.request("Vehicle.CurrentLocation.Latitude", now), now)  # not granted
    same = w.request("Vehicle.Speed", now, nonce=b"n" * 16)
    gate.check(same, now)
    with pytest.raises(ReplayError):
        gate.check(same, now)  # the same request again
    with pytest.raises(ValidityError, match="from now"):
        gate.check(w.request("Vehicle.Speed", now - 600), now)  # stale
    with pytest.raises(AccessDenied):
        gate.check(w.request("Vehicle.Speed", now + 7200), now + 7200)  # the grant expired
    # somebody else signing with their own key cannot use the app's grant
    thief = build_request(
        SigningKey.generate(), vehicle, "Vehicle.Speed", now=now, grants=[w.grant], chain=[w.owner_cred]
    )
    with pytest.raises(AccessDenied, match="it is granted to did:key:"):
        gate.check(thief, now)
    # ... nor forge the app's kid: the signature gives it away
    forged = bytearray(w.request("Vehicle.Speed", now))
    forged[-5] ^= 0x01
    with pytest.raises(SignatureError):
        gate.check(bytes(forged), now)
    revocation.revoke_credential(cti_of(w.grant))
    with pytest.raises(AccessDenied, match="revoked"):
        gate.check(w.request("Vehicle.Speed", now), now)
    assert gate.allowed == 2 and gate.denied == 7


def cti_of(credential: bytes) -> bytes:
    from ledger_lite.credentials import decode_credential

    return decode_credential(credential).cti


async def test_a_granted_app_reads_the_speed_through_the_running_agent(tmp_path: Path) -> None:
    _, vehicle_did = await asyncio.to_thread(init_device_key, tmp_path)
    now = time.time()
    w = World(vehicle_did, now)
    cfg = load_config(
        env={},
        base={
            "agent": {"data_dir": str(tmp_path)},
            "can": [{"name": "can0", "interface": "virtual", "channel": "t-access", "dbc": str(DBC)}],
            "gnss": {"backend": "none"},
            "trust": {"roots": {w.oem_did: "oem"}, "vin": VIN},
        },
    )
    agent = Agent(cfg, handle_signals=False)
    run = asyncio.create_task(agent.run(20.0))
    await asyncio.wait_for(agent.built.wait(), 10)
    await asyncio.wait_for(agent.can_services[0].opened.wait(), 10)
    sock = tmp_path / "diag.sock"
    async with PythonCanPort("ecu", interface="virtual", channel="t-access") as ecu:
        for _ in range(50):  # ESP_1 at 72 km/h
            await ecu.send(CanFrame(0x1A0, bytes.fromhex("201c000000000000")))
            await asyncio.sleep(0.01)
    for _ in range(100):
        if sock.exists() and agent.state_service and agent.state_service.last and agent.state_service.last.speed:
            break
        await asyncio.sleep(0.02)
    request = w.request("Vehicle.Speed", time.time())
    answer = await asyncio.to_thread(query, sock, "access.read", request=request.hex())
    with pytest.raises(DiagError, match="denied"):
        await asyncio.to_thread(
            query, sock, "access.read", request=w.request("Vehicle.CurrentLocation.Latitude", time.time()).hex()
        )
    agent.request_stop()
    await run
    assert answer["allowed"] and answer["subject"] == w.app_did and answer["unit"] == "m/s"
    assert answer["value"] == pytest.approx(20.0, abs=0.01)  # 72 km/h
