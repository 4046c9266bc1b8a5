"""Handover between two cells: two groups of 4 RSU processes (cells A and B, each its own ledger;
the first RSU of each announces its cell with a road-authority validator credential) on one
real Mosquitto, and the demo OBU (a real agent in this process on the simulated vehicle, which
drives east) with an OEM vehicle credential. The OBU is admitted to A, crosses into B's area,
is admitted there and hands over. Every attestation it made ends on exactly one ledger -- A's
before the handover, B's after, none twice -- and is retired from its outbox by a receipt of
that same cell."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent.blockstore import BlockStore
from agent.config import load_config
from agent.demo import SimulatedObu, demo_base_config
from agent.keystore import ensure_device_key
from agent.outbox import Outbox, Receipt, State
from drivers.clock import SystemClock
from ledger_lite.attestation import decode_attestation
from ledger_lite.credentials import ValidatorCredential, VehicleCredential, issue_credential
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tests.integration.cell import Rsu, start_cell
from tests.mqtt_broker import Broker

pytestmark = pytest.mark.timeout(300)

#: the simulated vehicle starts at 48.135 N 11.5705 E heading east; it passes 11.5717 E after ~12 s
BOUNDARY_LON = 11.5717
AREA = {
    "cell-a": [[48.13, 11.56], [48.14, 11.56], [48.14, BOUNDARY_LON], [48.13, BOUNDARY_LON]],
    "cell-b": [[48.13, BOUNDARY_LON], [48.14, BOUNDARY_LON], [48.14, 11.59], [48.13, 11.59]],
}
ROAD = SigningKey.from_private_bytes("Ed25519", b"\x51" * 32)
OEM = SigningKey.from_private_bytes("Ed25519", b"\x52" * 32)
ROOTS = {did_key(ROAD.public): "road_authority", did_key(OEM.public): "oem"}


def _roots_toml() -> str:
    return "[trust]\nroots = { " + ", ".join(f'"{d}" = "{r}"' for d, r in ROOTS.items()) + " }\n"


def _announcer(cell: str, root: Path) -> Any:
    def extra(r: Rsu) -> str:
        if r.name != "rsu0":
            return _roots_toml()
        cred = root / f"{cell}-validator.cose"
        cred.write_bytes(
            issue_credential(ValidatorCredential(r.did, cell), ROAD, now=time.time() - 60, expires=time.time() + 3600)
        )
        polygon = ", ".join(f"[{lat}, {lon}]" for lat, lon in AREA[cell])
        return _roots_toml() + (
            f'[cell]\nannounce = true\nvalidator_credential = "{cred}"\narea_polygon = [{polygon}]\n'
            "announce_interval = 1.0\n"
        )

    return extra


async def _until(pred: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_an_obu_drives_from_cell_a_to_cell_b_and_every_attestation_lands_in_its_cell(
    tmp_path: Path, mosquitto: Broker
) -> None:
    cells: dict[str, list[Rsu]] = {}
    try:
        for cell in ("cell-a", "cell-b"):
            root = tmp_path / cell
            root.mkdir()
            cells[cell] = start_cell(root, mosquitto.port, 4, cell, _announcer(cell, root), did_key(ROAD.public))
        obu_dir = tmp_path / "obu"
        identity = ensure_device_key(obu_dir)
        vehicle = obu_dir / "vehicle.cose"
        vehicle.write_bytes(
            issue_credential(VehicleCredential(identity.did, "WVWZZZ1JZXW000001"), OEM, now=time.time() - 60)
        )
        base = demo_base_config(str(obu_dir))
        base["agent"]["log_level"] = "info"
        base["attest"] = {"summary_interval": 0.5}
        base["outbox"] = {"resend_after": 3.0, "resend_max": 6.0}
        base["mqtt"] = {"enabled": True, "port": mosquitto.port, "cell": "cell-a", "backoff_max": 1.0}
        base["trust"] = {"roots": ROOTS}
        base["ledger"] = {"enabled": True, "genesis_file": str(tmp_path / "cell-a" / "genesis.json")}
        base["cell"] = {"join": True, "vehicle_credential": str(vehicle), "check_interval": 0.5, "retry_after": 1.0}
        for bus in base["can"]:
            bus["channel"] += "-handover"
        sim = SimulatedObu(load_config(base=base, env={}), seed=1, handle_signals=False)
        run = asyncio.create_task(sim.run(150.0))
        agent = sim.agent
        try:
            await asyncio.wait_for(agent.built.wait(), 10)
            joiner = agent.cell
            assert joiner is not None
            await _until(lambda: agent.current_cell() == "cell-a", 40, "admitted to A")
            await _until(lambda: agent.current_cell() == "cell-b", 60, "handover to B")
            assert joiner.status()["changes"] >= 2
            assert agent.attestor is not None and agent.summary is not None and agent.outbox is not None
            made_at_handover = agent.attestor.count
            await _until(lambda: agent.attestor.count >= made_at_handover + 6, 20, "attestations in B")
            agent.summary.interval = 1e9  # stop attesting (at most one more), then let delivery finish
            await asyncio.sleep(1.5)
            outbox = agent.outbox
            deadline = time.monotonic() + 60
            while (st := await outbox.stats()).pending or st.sent:
                if time.monotonic() > deadline:
                    pytest.fail(f"outbox not drained: {st}")
                await asyncio.sleep(0.5)
            receipts = agent.receipts
            assert receipts is not None and {"cell-a", "cell-b"} <= set(receipts.services)
        finally:
            agent.request_stop()
            await run
    finally:
        for rsus in cells.values():
            for r in rsus:
                r.stop()
    # the ledgers: each attestation once, A a prefix of the chain and B the rest
    seqs: dict[str, list[int]] = {}
    for cell, rsus in cells.items():
        with BlockStore(rsus[0].dir / "ledger" / "blocks.db") as store:
            seqs[cell] = sorted(
                decode_attestation(tx).seq
                for h in range(1, store.height() + 1)
                for tx in store.get(h).txs  # type: ignore[union-attr]
            )
    a, b = seqs["cell-a"], seqs["cell-b"]
    assert a and b, seqs
    assert not set(a) & set(b), "an attestation on both ledgers"
    assert sorted(a + b) == list(range(1, len(a) + len(b) + 1)), "an attestation missing from both ledgers"
    assert max(a) < min(b), "attestations made after the handover went to A (or before it to B)"
    # the outbox: every entry retired by a receipt of the cell it was sent to
    ob = Outbox(obu_dir / "outbox" / "outbox.db", budget_bytes=64 << 20, clock=SystemClock())
    try:
        for cell, got in (("cell-a", a), ("cell-b", b)):
            for entry in ob.entries_for(cell):
                assert entry.state is State.RETIRED and entry.receipt is not None
                assert Receipt.from_cbor(entry.receipt).cell == cell
            assert len(ob.entries_for(cell)) == len(got)
    finally:
        ob.close()
