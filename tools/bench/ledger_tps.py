"""Cell ledger throughput and commit latency: n RSU processes (``acc-agent``, role rsu, WAL and
block store fsynced as in the field) on one Mosquitto on 127.0.0.1, fed signed attestations by
simulated OBUs at a fixed offered rate.

    python -m tools.bench.ledger_tps [--quick] [--n 4 7] [--seconds S] [--rate-4 R] [--rate-7 R]

Latency of a tx = the first block announcement (``.../block``) of the height that holds it, as
seen by a subscriber, minus the time the OBU published it. Committed tx/s = txs committed over
(last commit - first publish). Baseline, same run: the broker alone -- the same txs published by
one paho client and counted by one subscriber, flat out (the transport's ceiling on this box).
Ends with one JSON line (figure, unit, value, baseline, ratio, and per-n figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from agent.blockstore import BlockStore
from agent.diagnostics import DiagError, query
from agent.keystore import ensure_device_key
from agent.ledger_node import decode_announce, unseal
from ledger_lite.attestation import AttestationBuilder, TimeSource, attestation_id
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tools.bench.mqtt_publish import start_broker

CELL = "bench"
#: the smallest attestation kind (a DTC report): ~400 bytes with did:key issuer and kid
DTC = {"codes": ["P0301"], "mil": True}


def make_txs(count: int, obus: int) -> list[bytes]:
    builders = []
    for i in range(obus):
        key = SigningKey.from_private_bytes("Ed25519", i.to_bytes(4, "big") * 8)
        builders.append(AttestationBuilder(key, did_key(key.public)))
    now = time.time()
    return [builders[i % obus].build("dtc_report", DTC, time=now, time_source=TimeSource.GNSS) for i in range(count)]


class Rsu:
    def __init__(self, root: Path, i: int, port: int, genesis: Path) -> None:
        self.name = f"rsu{i}"
        self.dir = root / self.name
        self.sock = self.dir / "diag.sock"
        self.did = ensure_device_key(self.dir).did
        (self.dir / "agent.toml").write_text(
            f'[agent]\nrole = "rsu"\nnode_id = "{self.name}"\ndata_dir = "{self.dir}"\ndiag_socket = "{self.sock}"\n'
            'log_level = "warning"\nwatchdog = false\n[attest]\nenabled = false\n'
            f'[mqtt]\nenabled = true\nport = {port}\ncell = "{CELL}"\nmax_payload = 4194304\n'
            "queue_max = 20000\ninbox_max = 100000\n"
            f'[ledger]\nenabled = true\ngenesis_file = "{genesis}"\nblock_interval = 0.3\nmax_block_txs = 3000\n'
            "timeout_propose = 3.0\ntimeout_vote = 1.0\nmempool_txs = 50000\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.dir / "agent.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--config", str(self.dir / "agent.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def status(self) -> dict[str, Any] | None:
        try:
            st = query(self.sock, "ledger", timeout=5.0)
        except (DiagError, OSError):
            return None
        return st if isinstance(st, dict) else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _client(port: int, name: str) -> paho.Client:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def broker_baseline(port: int, txs: list[bytes]) -> float:
    """Messages/s through the broker: one paho publisher (QoS 1) to one subscriber, flat out."""
    got = threading.Event()
    count = [0]
    sub = _client(port, "bench-base-sub")
    sub.subscribe("acc/v1/bench-base", qos=1)

    def on_message(*_: object) -> None:
        count[0] += 1
        if count[0] == len(txs):
            got.set()

    sub.on_message = on_message
    time.sleep(0.3)
    pub = _client(port, "bench-base-pub")
    t0 = time.perf_counter()
    for tx in txs:
        pub.publish("acc/v1/bench-base", tx, qos=1)
    got.wait(120)
    rate = count[0] / (time.perf_counter() - t0)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return rate


def run_cell(n: int, rate: float, seconds: float, port: int, root: Path) -> dict[str, Any]:
    genesis = root / "genesis.json"
    rsus = [Rsu(root, i, port, genesis) for i in range(n)]
    authority = SigningKey.from_private_bytes("Ed25519", b"\x42" * 32)
    genesis.write_text(
        json.dumps(
            {
                "chain_id": CELL,
                "genesis_time_ms": int(time.time() * 1000) - 1000,
                "validators": [{"did": r.did, "power": 1} for r in rsus],
                "authorities": {did_key(authority.public): ["road_authority"]},
            }
        )
    )
    total = int(rate * seconds)
    txs = make_txs(total, obus=max(10, int(rate) // 10))
    announced: dict[int, float] = {}
    sub = _client(port, "bench-blocks")

    def on_block(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        header, _, _ = decode_announce(unseal(msg.payload)[1])
        announced.setdefault(header.height, time.time())

    sub.on_message = on_block
    sub.subscribe(f"acc/v1/cell/{CELL}/block", qos=1)
    try:
        for r in rsus:
            r.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sts = [r.status() for r in rsus]
            if all(s is not None and s["height"] >= 2 for s in sts):
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the cell of {n} did not start: {[r.status() for r in rsus]}")
        pub = _client(port, "bench-obus")
        submitted: dict[bytes, float] = {}
        t_start = time.time()
        batch = max(1, int(rate / 100))
        for i in range(0, total, batch):
            due = t_start + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            for tx in txs[i : i + batch]:
                submitted[attestation_id(tx)] = time.time()
                pub.publish(f"acc/v1/cell/{CELL}/tx", tx, qos=1)
        t_sent = time.time()
        deadline = time.monotonic() + 60
        committed = 0
        while time.monotonic() < deadline:
            s0 = rsus[0].status()
            committed = s0["committed_txs"] if s0 else committed
            if committed >= total:
                break
            time.sleep(0.25)
        time.sleep(1.0)
        pub.loop_stop()
        pub.disconnect()
    finally:
        for r in rsus:
            r.stop()
        sub.loop_stop()
        sub.disconnect()
    latencies = []
    last_commit = t_start
    with BlockStore(rsus[0].dir / "ledger" / "blocks.db") as store:
        for h in range(1, store.height() + 1):
            block = store.get(h)
            assert block is not None
            for tx in block.txs:
                sent = submitted.get(attestation_id(tx))
                if sent is not None and h in announced:
                    latencies.append(announced[h] - sent)
                    last_commit = max(last_commit, announced[h])
    latencies.sort()
    done = len(latencies)

    def pct(p: float) -> float:
        return round(latencies[min(done - 1, int(p * done))], 3) if done else float("nan")

    return {
        "n": n,
        "offered_tps": rate,
        "txs": total,
        "committed": done,
        "committed_tps": round(done / max(1e-9, last_commit - t_start), 1),
        "publish_seconds": round(t_sent - t_start, 2),
        "p50_s": pct(0.5),
        "p99_s": pct(0.99),
        "max_s": round(latencies[-1], 3) if done else None,
        "mean_s": round(statistics.fmean(latencies), 3) if done else None,
        "tx_bytes": len(txs[0]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, nargs="+", default=[4, 7])
    ap.add_argument("--seconds", type=float, help="seconds of offered load per cell (default 30, quick 8)")
    ap.add_argument("--rate-4", type=float, default=1100.0, help="offered tx/s for n=4 (goal: 1000 committed)")
    ap.add_argument("--rate-7", type=float, default=600.0, help="offered tx/s for n=7 (goal: 500 committed)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_broker(Path(tmp))
        try:
            baseline = broker_baseline(port, make_txs(5000 if args.quick else 20000, obus=10))
            for n in args.n:
                rate = args.rate_4 if n <= 4 else args.rate_7
                root = Path(tmp) / f"cell{n}"
                root.mkdir()
                res = run_cell(n, rate, seconds, port, root)
                results.append(res)
                sys.stdout.write(f"n={n}: {json.dumps(res)}\n")
        finally:
            proc.terminate()
            proc.wait(10)
    first = results[0]
    out = {
        "figure": "ledger_committed_tps",
        "unit": "tx/s",
        "value": first["committed_tps"],
        "baseline": round(baseline),
        "ratio": round(first["committed_tps"] / baseline, 4),
        "cores": os.cpu_count(),
        "quick": args.quick,
    }
    for r in results:
        out[f"n{r['n']}"] = {k: r[k] for k in ("offered_tps", "committed_tps", "p50_s", "p99_s", "committed", "txs")}
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
