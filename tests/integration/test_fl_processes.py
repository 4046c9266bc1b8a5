"""Federated learning with real processes on a real Mosquitto: 1 RSU (``acc-agent`` role rsu,
a one-validator ledger, the FL coordinator) and 5 demo OBUs (``acc-agent --demo``: the
simulated vehicle, the shipped TFLite behaviour model, local windows labelled by the rules)
complete 3 rounds; each round's model id is committed on the ledger and every OBU runs the last
committed model; a model that is not on the ledger is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest

from agent.diagnostics import DiagError, query
from agent.fl import _signed, initial_model, model_id
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tests.integration.cell import AgentProcess, Rsu, start_cell, wait_for
from tests.mqtt_broker import Broker
from tools.acc import main as acc_main

CELL = "cell-fl"
pytestmark = pytest.mark.timeout(300)


class Obu(AgentProcess):
    def __init__(self, root: Path, i: int, port: int, genesis: Path) -> None:
        self.dir = root / f"obu{i}"
        self.dir.mkdir(parents=True)
        self.sock = self.dir / "diag.sock"
        sets = {
            "agent.node_id": f"obu{i}",
            "agent.diag_socket": str(self.sock),
            "mqtt.enabled": "true",
            "mqtt.port": port,
            "mqtt.cell": CELL,
            "mqtt.backoff_max": 1.0,
            "ledger.enabled": "true",
            "ledger.genesis_file": str(genesis),
            "fl.enabled": "true",
            "fl.min_samples": 8,
            "fl.epochs": 2,
        }
        self.args = [sys.executable, "-m", "agent.main", "--demo", "--data-dir", str(self.dir)]
        for k, v in sets.items():
            self.args += ["--set", f"{k}={v}"]
        self.proc = subprocess.Popen(self.args, stdout=open(self.dir / "agent.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def fl(self) -> dict[str, Any]:
        try:
            return query(self.sock, "fl", timeout=3.0) or {}
        except (DiagError, OSError):
            return {}


def test_one_rsu_and_five_obus_complete_three_rounds_and_refuse_an_uncommitted_model(
    tmp_path: Path, mosquitto: Broker
) -> None:
    _model, tflite, weights = initial_model()
    start_model = model_id(tflite, weights).hex()
    fl_toml = (
        "[fl]\nenabled = true\ncoordinator = true\nround_seconds = 12.0\npause_seconds = 1.0\n"
        "min_clients = 3\nmax_clients = 5\n"
    )
    rsus: list[Rsu] = []
    obus: list[Obu] = []
    try:
        rsus = start_cell(tmp_path / "cell", mosquitto.port, 1, CELL, lambda r: fl_toml, models=(start_model,))
        rsu = rsus[0]
        genesis = tmp_path / "cell" / "genesis.json"
        obus = [Obu(tmp_path, i, mosquitto.port, genesis) for i in range(5)]

        def rsu_fl() -> dict[str, Any]:
            try:
                return query(rsu.sock, "fl", timeout=3.0) or {}
            except (DiagError, OSError):
                return {}

        def full_rounds() -> int:
            return sum(1 for h in rsu_fl().get("history", []) if h["participants"] >= 3)

        # the first round may close before the OBUs have 8 windows each (then the model stays)
        wait_for(lambda: full_rounds() >= 3, 200, "three FL rounds with >= 3 updates each", rsus)
        st = rsu_fl()
        final = st["model"]
        assert final != start_model
        ledger = query(rsu.sock, "ledger")
        assert ledger["height"] >= 6
        # every OBU runs the model the ledger committed last (or the one before, mid-round)
        committed = {h["model"] for h in st["history"]}
        wait_for(lambda: all(o.fl().get("model") in committed for o in obus), 30, "OBUs on committed models", rsus)
        assert sum(1 for o in obus if (o.fl().get("last_update") or {}).get("round", 0) >= 1) >= 3
        assert acc_main(["fl", "status", "--socket", str(obus[0].sock)]) == 0
        assert acc_main(["fl", "status", "--socket", str(rsu.sock)]) == 0
        # a forged state with a model that is not on the ledger: refused by the OBUs
        rogue = SigningKey.from_private_bytes("Ed25519", b"\x66" * 32)
        forged_w = (weights + 0.5).astype(np.float32)
        payload = _signed(
            rogue,
            did_key(rogue.public),
            {
                "task": "dbm",
                "model": {
                    "id": model_id(tflite, forged_w),
                    "tflite": tflite,
                    "weights": forged_w.tobytes(),
                    "proof": None,
                },
                "round": None,
            },
        )
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rogue-fl", protocol=paho.MQTTv5)
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        c.publish(f"acc/v1/cell/{CELL}/fl/model", payload, qos=1).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
        wait_for(lambda: all(o.fl().get("refused") for o in obus), 30, "the forged model refused", rsus)
        assert all(o.fl().get("model") in committed for o in obus)
        assert acc_main(["fl", "status", "--socket", str(obus[0].sock)]) == 1  # the technician sees the refusal
    finally:
        for o in obus:
            o.stop()
        for r in rsus:
            r.stop()
