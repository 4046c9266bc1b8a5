"""A cell of 4 RSU processes (``acc-agent`` with role rsu) running the ledger over a real Mosquitto:
they commit attestations published by simulated OBUs; one is killed with SIGKILL and the others
keep committing; restarted, it catches up by sync and votes again; then the proposer of the next
height is killed and that height still commits within a few seconds (the next round's proposer).
Each node is asked through its diagnostics socket (the same command ``acc ledger status`` uses)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.blockstore import BlockStore
from agent.diagnostics import query
from ledger_lite.attestation import AttestationBuilder, TimeSource, attestation_id
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tests.integration.cell import Rsu, heights, wait_for, write_genesis
from tests.mqtt_broker import Broker
from tools.acc import main as acc_main

CELL = "cell-rsu"
N = 4
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

pytestmark = pytest.mark.timeout(240)


def publish(port: int, txs: list[bytes]) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="obu-sim", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(f"acc/v1/cell/{CELL}/tx", tx, qos=1) for tx in txs]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def publish_to(port: int, topic: str, payload: bytes) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rogue", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def obu_attestations(n_obus: int, per_obu: int, seed: int) -> list[bytes]:
    out = []
    for i in range(n_obus):
        key = SigningKey.from_private_bytes("Ed25519", bytes([seed, i + 1]) * 16)
        b = AttestationBuilder(key, did_key(key.public))
        out += [b.build("driving_event", EVENT, time=time.time(), time_source=TimeSource.GNSS) for _ in range(per_obu)]
    return out


def test_four_rsu_processes_commit_survive_kill_and_proposer_loss(tmp_path: Path, mosquitto: Broker) -> None:
    genesis_path = tmp_path / "genesis.json"
    rsus = [Rsu(tmp_path, i, mosquitto.port, genesis_path, CELL) for i in range(N)]
    write_genesis(genesis_path, rsus, CELL)
    by_did = {r.did: r for r in rsus}
    try:
        for r in rsus:
            r.write_config()
            r.start()
        wait_for(lambda: len(h := heights(rsus)) == N and min(h.values()) >= 2, 30, "all four at height 2", rsus)

        # simulated OBUs publish attestations; every node commits all of them
        txs = obu_attestations(4, 25, seed=1)
        publish(mosquitto.port, txs)
        wait_for(
            lambda: all((s := r.status()) is not None and s["committed_txs"] >= len(txs) for r in rsus),
            30,
            "100 attestations committed on every node",
            rsus,
        )
        st0 = rsus[0].status()
        assert st0 is not None and st0["txs_refused"] == 0
        assert acc_main(["ledger", "status", "--socket", str(rsus[0].sock)]) == 0  # the technician's view

        # a rogue client publishes garbage and forgeries: counted per peer, the cell goes on
        rogue = [
            (f"acc/v1/cell/{CELL}/tx", b"\x00garbage"),
            (f"acc/v1/cell/{CELL}/cons/rogue", b"\xa1\x01\x02"),
            (f"acc/v1/cell/{CELL}/block", b"not a block"),
            (f"acc/v1/cell/{CELL}/presence/rsu9", b"unsigned presence"),
            (f"acc/v1/cell/{CELL}/presence/rsu1", txs[0]),  # signed, but by an OBU, not a presence of rsu1
        ]
        for topic, payload in rogue:
            publish_to(mosquitto.port, topic, payload)
        top = max(heights(rsus).values())
        wait_for(lambda: min(heights(rsus).values()) >= top + 2, 30, "commits after the garbage", rsus)
        net = query(rsus[0].sock, "net")
        assert net["mqtt"]["rtt_ms"] is not None
        assert {"rsu1", "rsu2", "rsu3"} <= {n for n, p in net["peers"].items() if p["state"] == "online"}
        assert "rsu9" not in net["peers"]
        assert {"node:rsu9", "node:rsu1", "ledger tx", "ledger node:rogue"} <= set(net["rejects"]), net["rejects"]
        assert acc_main(["net", "--socket", str(rsus[0].sock)]) == 0

        # kill -9 one RSU: the other three keep committing
        victim = rsus[3]
        victim.kill()
        live = rsus[:3]
        top = max(heights(live).values())
        wait_for(lambda: min(heights(live).values()) >= top + 3, 30, "3 of 4 commit on", rsus)
        more = obu_attestations(2, 10, seed=2)
        publish(mosquitto.port, more)
        wait_for(
            lambda: all((s := r.status()) is not None and s["committed_txs"] >= len(txs) + len(more) for r in live),
            30,
            "new txs committed without the victim",
            rsus,
        )

        # restart it: it catches up by sync and votes again
        victim.start()
        target = max(heights(live).values())
        wait_for(lambda: heights([victim]).get(victim.name, 0) >= target, 40, "the restarted RSU catches up", rsus)
        vs = victim.status()
        assert vs is not None and vs["synced_blocks"] >= 1 and vs["wal_torn_bytes"] >= 0
        wait_for(
            lambda: any(victim.did in (r.status() or {}).get("last_commit_signers", []) for r in live),
            30,
            "the restarted RSU's precommit in a commit certificate",
            rsus,
        )

        # kill the proposer of the height in progress: that height commits within a few seconds
        for _ in range(50):
            s = rsus[0].status()
            assert s is not None
            proposer = by_did[s["proposer"]]
            h = s["consensus_height"]
            if proposer is not rsus[0] and s["round"] == 0:
                break
            time.sleep(0.1)
        proposer.kill()
        t0 = time.monotonic()
        rest = [r for r in rsus if r is not proposer]
        wait_for(lambda: min(heights(rest).values()) >= h, 20, f"height {h} without its proposer", rsus)
        elapsed = time.monotonic() - t0
        assert elapsed < 10.0, elapsed
        time.sleep(1.0)
    finally:
        for r in rsus:
            r.stop()
    # agreement: every node's stored chain is a prefix of the longest one, block id by block id
    chains = []
    for r in rsus:
        with BlockStore(r.dir / "ledger" / "blocks.db") as store:
            chains.append([store.get(h).block_id() for h in range(1, store.height() + 1)])  # type: ignore[union-attr]
            for tx in txs:
                assert store.receipt(attestation_id(tx)) is not None
    longest = max(chains, key=len)
    assert all(c == longest[: len(c)] for c in chains)
    assert min(map(len, chains)) >= 10
    # acc ledger verify re-verifies a stored chain from genesis, and names the first bad block
    assert acc_main(["ledger", "verify", "--genesis", str(genesis_path), "--data-dir", str(rsus[0].dir)]) == 0
    bad = tmp_path / "tampered.db"
    with sqlite3.connect(rsus[0].dir / "ledger" / "blocks.db") as src, sqlite3.connect(bad) as dst:
        src.backup(dst)
        other = dst.execute("SELECT body FROM blocks WHERE height = 2").fetchone()[0]
        dst.execute("UPDATE blocks SET body = ? WHERE height = 5", (other,))
    assert acc_main(["ledger", "verify", "--genesis", str(genesis_path), "--db", str(bad)]) == 65
