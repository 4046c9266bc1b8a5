"""An OBU's attestations travel end to end: signed, stored in the chain, queued in the SQLite
outbox, published on the cell's tx topic of a real Mosquitto, and verified by a subscriber
standing in for the ledger. The broker goes away for a while: everything made meanwhile
arrives after it comes back (the outbox resends until a receipt retires an entry; receipts
come with the ledger, so here every entry is resent and the subscriber dedupes by id)."""

from __future__ import annotations

import asyncio
import queue
from pathlib import Path

import paho.mqtt.client as paho

from agent.config import load_config
from agent.demo import SimulatedObu, demo_base_config
from agent.diagnostics import query
from ledger_lite.attestation import Attestation, verify_attestation
from tests.mqtt_broker import Broker
from tools.acc import main as acc_main


def _subscriber(broker: Broker, topic: str) -> tuple[paho.Client, queue.Queue[bytes]]:
    got: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-ledger", protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.put(m.payload)
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
    client.reconnect_delay_set(0.2, 1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client, got


async def test_attestations_reach_the_broker_and_survive_an_outage(tmp_path: Path, mosquitto: Broker) -> None:
    base = demo_base_config(str(tmp_path / "obu"))
    base["attest"] = {"summary_interval": 1.0}
    base["outbox"] = {"resend_after": 2.0, "resend_max": 4.0}
    base["mqtt"] = {"enabled": True, "port": mosquitto.port, "cell": "cell-7", "backoff_max": 1.0}
    for bus in base["can"]:
        bus["channel"] += "-e2e"
    sim = SimulatedObu(load_config(base=base, env={}), seed=5, handle_signals=False)
    sub, got = _subscriber(mosquitto, "acc/v1/cell/cell-7/tx")
    run = asyncio.create_task(sim.run(90.0))
    by_seq: dict[int, Attestation] = {}
    copies = 0

    async def collect(until: int, limit: float) -> None:
        nonlocal copies
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while not set(range(1, until + 1)) <= by_seq.keys() and loop.time() < end:
            try:
                data = await asyncio.to_thread(got.get, True, 0.2)
            except queue.Empty:
                continue
            att = verify_attestation(data)  # signature by the device's did:key, schema
            copies += 1
            assert by_seq.setdefault(att.seq, att).id == att.id  # a resend is the same attestation

    try:
        await asyncio.wait_for(sim.agent.built.wait(), 10)
        attestor = sim.agent.attestor
        assert attestor is not None
        await collect(2, 20)
        sock = tmp_path / "obu" / "diag.sock"
        up = await asyncio.to_thread(query, sock, "net")
        assert up["mqtt"]["connected"] and up["cell"] == "cell-7" and up["outbox"]["refused"] == 0
        assert up["outbox"]["sent_unconfirmed"] >= 2  # no receipts without a ledger: kept for resending
        mosquitto.stop()  # the cell's broker is away ...
        made_before = attestor.count
        await asyncio.sleep(3.5)
        down = await asyncio.to_thread(query, sock, "net")
        assert not down["mqtt"]["connected"]
        assert await asyncio.to_thread(acc_main, ["net", "--socket", str(sock)]) == 1  # the technician sees it
        assert attestor.count >= made_before + 2  # ... the OBU goes on attesting
        made = attestor.count
        mosquitto.start()
        await collect(made, 40)
    finally:
        sim.agent.request_stop()
        await run
        sub.loop_stop()
        sub.disconnect()
    assert set(range(1, made + 1)) <= by_seq.keys(), sorted(by_seq)  # nothing lost
    chain = [by_seq[s] for s in range(1, made + 1)]
    assert all(b.prev == a.id for a, b in zip(chain, chain[1:], strict=False))  # one unbroken chain
    assert all(a.issuer == chain[0].issuer and a.kind == "sensor_summary" for a in chain)
    assert copies >= made  # at-least-once: resends arrive too, deduplicated by id
