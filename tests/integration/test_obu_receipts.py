"""An OBU process (the demo vehicle, attesting every 0.5 s) sends its attestations through its
SQLite outbox and a real Mosquitto to a cell of 4 RSU processes; receipts verified by its light
client retire them. The broker is stopped for 30 s and restarted, and later the OBU is killed
with SIGKILL mid-stream and restarted: in the end every attestation it made is on the ledger
exactly once, in one unbroken chain, and retired from its outbox."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.blockstore import BlockStore
from agent.diagnostics import DiagError, query
from ledger_lite.attestation import decode_attestation
from tests.integration.cell import AgentProcess, Rsu, start_cell, wait_for
from tests.mqtt_broker import Broker
from tools.acc import main as acc_main

CELL = "cell-obu"
pytestmark = pytest.mark.timeout(300)


class ObuProc(AgentProcess):
    def __init__(self, root: Path, port: int, genesis: Path) -> None:
        self.dir = root / "obu"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sock = self.dir / "diag.sock"
        self.port = port
        self.genesis = genesis
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "agent.log"

    def start(self) -> None:
        sets = {
            "agent.node_id": "obu-1",
            "agent.diag_socket": str(self.sock),
            "agent.log_level": "info",
            "attest.summary_interval": 0.5,
            "outbox.resend_after": 3.0,
            "outbox.resend_max": 6.0,
            "mqtt.enabled": "true",
            "mqtt.port": self.port,
            "mqtt.cell": CELL,
            "mqtt.backoff_max": 1.0,
            "ledger.enabled": "true",
            "ledger.genesis_file": str(self.genesis),
        }
        args = [sys.executable, "-m", "agent.main", "--demo", "--data-dir", str(self.dir)]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        self.sock.unlink(missing_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def ask(self, cmd: str) -> Any:
        try:
            return query(self.sock, cmd, timeout=3.0)
        except (DiagError, OSError):
            return None

    def made(self) -> int:
        """Attestations made so far, over restarts (the chain's next seq - 1)."""
        st = self.ask("status")
        att = (st or {}).get("attest") or {}
        return int(att["next_seq"]) - 1 if att.get("next_seq") else 0

    def outbox(self) -> dict[str, Any]:
        net = self.ask("net")
        return (net or {}).get("outbox") or {}


def test_obu_attestations_reach_the_ledger_once_through_outage_and_sigkill(tmp_path: Path, mosquitto: Broker) -> None:
    rsus: list[Rsu] = []
    obu = ObuProc(tmp_path, mosquitto.port, tmp_path / "cell" / "genesis.json")
    try:
        rsus = start_cell(tmp_path / "cell", mosquitto.port, 4, CELL)
        obu.start()
        wait_for(lambda: obu.outbox().get("retired", 0) >= 3, 60, "first receipts at the OBU", [*rsus])
        ledger = obu.ask("ledger")
        follower = ledger["cells"][CELL]
        assert ledger["role"] == "obu" and follower["trusted_height"] >= 2 and follower["bad_receipts"] == 0
        assert acc_main(["ledger", "status", "--socket", str(obu.sock)]) == 0

        # the broker is away for 30 s: the OBU goes on attesting into its outbox
        mosquitto.stop()
        before = obu.made()
        time.sleep(30)
        during = obu.made()
        assert during >= before + 20
        assert obu.outbox()["pending"] + obu.outbox()["sent_unconfirmed"] >= during - before - 2
        mosquitto.start()
        wait_for(
            lambda: (ob := obu.outbox()).get("retired", 0) >= during and ob.get("pending", 1) <= 4,
            90,
            "everything made during the outage retired after it",
            rsus,
        )

        # kill -9 mid-stream, restart: nothing lost, nothing twice
        obu.kill()
        obu.start()
        wait_for(lambda: obu.made() > 0, 30, "the OBU back", rsus)
        time.sleep(3)
        obu.stop()  # a clean stop: its last attestations are in the outbox
        obu.start()
        wait_for(lambda: obu.made() > 0, 30, "the OBU back again", rsus)
        wait_for(
            lambda: (ob := obu.outbox()).get("pending", 1) == 0 and ob.get("sent_unconfirmed", 1) == 0,
            60,
            "the outbox empty: every entry retired by a receipt",
            rsus,
        )
        retired = obu.outbox()["retired"]
        obu.stop()
        time.sleep(1.0)
    finally:
        obu.stop()
        for r in rsus:
            r.stop()
    # on the ledger: the OBU's attestations, each exactly once, one unbroken chain from seq 1
    with BlockStore(rsus[0].dir / "ledger" / "blocks.db") as store:
        atts = [decode_attestation(tx) for h in range(1, store.height() + 1) for tx in store.get(h).txs]  # type: ignore[union-attr]
    seqs = sorted(a.seq for a in atts)
    assert len(seqs) == len(set(seqs)), "an attestation twice on the ledger"
    assert seqs == list(range(1, len(seqs) + 1)), "a gap in the OBU's chain on the ledger"
    by_seq = {a.seq: a for a in atts}
    assert all(by_seq[s].prev == by_seq[s - 1].id for s in seqs[1:])
    assert len(seqs) >= retired >= during
