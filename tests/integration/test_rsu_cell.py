"""A cell of 4 RSU processes (``acc-agent`` with role rsu) running the ledger over a real Mosquitto:
they commit attestations published by simulated OBUs; one is killed with SIGKILL and the others
keep committing; restarted, it catches up by sync and votes again; then the proposer of the next
height is killed and that height still commits within a few seconds (the next round's proposer).
Each node is asked through its diagnostics socket (the same command ``acc ledger status`` uses)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from agent.blockstore import BlockStore
from agent.diagnostics import DiagError, query
from agent.keystore import ensure_device_key
from ledger_lite.attestation import AttestationBuilder, TimeSource, attestation_id
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
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


class Rsu:
    def __init__(self, root: Path, i: int, port: int, genesis: Path) -> None:
        self.name = f"rsu{i}"
        self.dir = root / self.name
        self.sock = self.dir / "diag.sock"
        self.did = ensure_device_key(self.dir).did
        self.conf = self.dir / "agent.toml"
        self.port = port
        self.genesis = genesis
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "agent.log"

    def write_config(self) -> None:
        self.conf.write_text(
            f"""
[agent]
role = "rsu"
node_id = "{self.name}"
data_dir = "{self.dir}"
diag_socket = "{self.sock}"
log_level = "info"
watchdog = false
[attest]
enabled = false
[mqtt]
enabled = true
port = {self.port}
cell = "{CELL}"
backoff_max = 1.0
max_payload = 2097152
[ledger]
enabled = true
genesis_file = "{self.genesis}"
block_interval = 0.2
timeout_propose = 1.0
timeout_vote = 0.5
rebroadcast = 1.0
"""
        )

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--config", str(self.conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def status(self) -> dict[str, Any] | None:
        try:
            return query(self.sock, "ledger", timeout=2.0)  # type: ignore[no-any-return]
        except (DiagError, OSError):
            return None


def wait_for(pred, timeout: float, what: str, rsus: list[Rsu]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in rsus if r.log.exists())
    pytest.fail(f"timed out waiting for {what}; statuses: {[r.status() for r in rsus]}\n{logs}")


def heights(rsus: list[Rsu]) -> dict[str, int]:
    out = {}
    for r in rsus:
        st = r.status() if r.proc is not None else None
        if st is not None:
            out[r.name] = st["height"]
    return out


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


def obu_attestations(n_obus: int, per_obu: int, seed: int) -> list[bytes]:
    out = []
    for i in range(n_obus):
        key = SigningKey.from_private_bytes("Ed25519", bytes([seed, i + 1]) * 16)
        b = AttestationBuilder(key, did_key(key.public))
        out += [b.build("driving_event", EVENT, time=time.time(), time_source=TimeSource.GNSS) for _ in range(per_obu)]
    return out


def test_four_rsu_processes_commit_survive_kill_and_proposer_loss(tmp_path: Path, mosquitto: Broker) -> None:
    authority = SigningKey.from_private_bytes("Ed25519", b"\x42" * 32)
    genesis_path = tmp_path / "genesis.json"
    rsus = [Rsu(tmp_path, i, mosquitto.port, genesis_path) for i in range(N)]
    genesis = {
        "chain_id": CELL,
        "genesis_time_ms": int(time.time() * 1000) - 1000,
        "validators": [{"did": r.did, "power": 1} for r in rsus],
        "authorities": {did_key(authority.public): ["road_authority"]},
    }
    genesis_path.write_text(json.dumps(genesis))
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
