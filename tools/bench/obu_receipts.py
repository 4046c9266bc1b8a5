"""One OBU's attestations through outbox, broker and ledger, with receipts: how many per second,
and how long from the event to the verified receipt, in a 4-RSU cell.

    python -m tools.bench.obu_receipts [--quick] [-n N] [--rate R]

The cell: 4 ``acc-agent`` RSU processes (ledger on, fsync on) and Mosquitto on 127.0.0.1. The
OBU runs in this process with the agent's real path: ``AttestationBuilder`` signs, the SQLite
outbox (synchronous=FULL) stores, ``OutboxSender`` publishes through ``MqttClient``, the
``ReceiptService`` light client verifies headers and receipts and retires entries.

* throughput: N attestations made as fast as possible; attestations/s = N / (time until the
  last one is retired by a verified receipt);
* latency (paced at ``--rate``/s): event (build) -> verified receipt (retire), p50/p99;
* baselines, same run: N 100-byte messages published by bare paho (QoS 1, 100 in flight) and by
  aiomqtt (awaited QoS 1) to the same broker -- the transport alone, no ledger, no signing.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import topics
from agent.config import MqttConfig
from agent.ledger_node import MqttTransport
from agent.mqtt import Dispatcher, MqttClient
from agent.outbox import AsyncOutbox, Entry, OutboxSender, Receipt
from agent.receipts import ReceiptService
from drivers.clock import SystemClock
from ledger_lite.attestation import AttestationBuilder, TimeSource, attestation_id
from ledger_lite.didkey import did_key
from ledger_lite.genesis import Genesis
from ledger_lite.keys import SigningKey
from tools.bench.ledger_tps import CELL, DTC, Rsu
from tools.bench.mqtt_publish import aiomqtt_rate, bare_paho, start_broker


class Obu:
    def __init__(self, root: Path, port: int, genesis: Genesis) -> None:
        self.root = root
        self.port = port
        self.genesis = genesis
        key = SigningKey.from_private_bytes("Ed25519", b"\x33" * 32)
        self.did = did_key(key.public)
        self.builder = AttestationBuilder(key, self.did)
        self.made: dict[bytes, float] = {}
        self.retired: dict[bytes, float] = {}
        self.done = asyncio.Event()
        self.want = 0

    async def run(self, body: Any) -> None:
        clock = SystemClock()
        outbox = await AsyncOutbox.open(
            self.root / "outbox.db", budget_bytes=64 << 20, clock=clock, resend_after=10.0, resend_max=30.0
        )
        client = MqttClient(
            MqttConfig(enabled=True, port=self.port, cell=CELL, queue_max=20000, inflight_max=200),
            node_id="bench-obu",
            clock=clock,
        )
        dispatcher = Dispatcher(client)
        transport = MqttTransport(client, dispatcher, receipt_tag=topics.issuer_tag(self.did))
        real_retire = outbox.retire_receipt

        async def retire(receipt: Receipt) -> bool:
            ok = await real_retire(receipt)
            if ok:
                self.retired[receipt.attestation_id] = time.perf_counter()
                if len(self.retired) >= self.want:
                    self.done.set()
            return ok

        outbox.retire_receipt = retire  # type: ignore[method-assign]
        service = ReceiptService(cell=CELL, genesis=self.genesis, outbox=outbox, transport=transport, clock=clock)

        async def send(entry: Entry) -> None:
            await client.publish(topics.tx(CELL), entry.payload)

        sender = OutboxSender(outbox, send, clock, batch=256)
        self.outbox = outbox
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(client.run()),
                    tg.create_task(dispatcher.run()),
                    tg.create_task(sender.run()),
                ]
                await client.wait_connected(10)
                await transport.subscribe()
                tasks.append(tg.create_task(service.run()))
                await body(self)
                for t in tasks:
                    t.cancel()
        finally:
            await outbox.close()

    async def attest(self, n: int, rate: float | None) -> None:
        t0 = time.perf_counter()
        for i in range(n):
            if rate:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            data = self.builder.build("dtc_report", DTC, time=time.time(), time_source=TimeSource.GNSS)
            self.made[attestation_id(data)] = time.perf_counter()
            await self.outbox.enqueue(data, cell=CELL)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, help="attestations flat out (default 5000, quick 1500)")
    ap.add_argument("--rate", type=float, default=20.0, help="paced attestations/s for the latency run")
    args = ap.parse_args(argv)
    n = args.n or (1500 if args.quick else 5000)
    paced = int(args.rate * (10 if args.quick else 30))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, port = start_broker(root)
        rsus: list[Rsu] = []
        try:
            paho_rate = bare_paho(port, 1, n)
            aiomqtt = asyncio.run(aiomqtt_rate(port, 1, n))
            genesis_path = root / "genesis.json"
            rsus = [Rsu(root, i, port, genesis_path) for i in range(4)]
            authority = SigningKey.from_private_bytes("Ed25519", b"\x42" * 32)
            genesis_path.write_text(
                json.dumps(
                    {
                        "chain_id": CELL,
                        "genesis_time_ms": int(time.time() * 1000) - 1000,
                        "validators": [{"did": r.did, "power": 1} for r in rsus],
                        "authorities": {did_key(authority.public): ["road_authority"]},
                    }
                )
            )
            genesis = Genesis.from_json(genesis_path.read_bytes())
            for r in rsus:
                r.start()
            deadline = time.monotonic() + 60
            while not all((s := r.status()) is not None and s["height"] >= 2 for r in rsus):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cell did not start")
                time.sleep(0.3)
            obu = Obu(root, port, genesis)

            async def body(o: Obu) -> None:
                # latency, paced
                o.want = paced
                await o.attest(paced, args.rate)
                await asyncio.wait_for(o.done.wait(), 120)
                lat = [o.retired[a] - o.made[a] for a in o.made]
                out["latency_p50_s"], out["latency_p99_s"] = pct(lat, 0.5), pct(lat, 0.99)
                out["paced_rate"], out["paced_n"] = args.rate, paced
                # throughput, flat out
                o.made.clear()
                o.retired.clear()
                o.done.clear()
                o.want = n
                t0 = time.perf_counter()
                await o.attest(n, None)
                made_s = time.perf_counter() - t0
                await asyncio.wait_for(o.done.wait(), 300)
                total = max(o.retired.values()) - t0
                out["attestations_per_s"] = round(n / total, 1)
                out["make_and_store_per_s"] = round(n / made_s, 1)
                lat2 = [o.retired[a] - o.made[a] for a in o.made]
                out["flat_out_latency_p50_s"], out["flat_out_latency_p99_s"] = pct(lat2, 0.5), pct(lat2, 0.99)

            asyncio.run(obu.run(body))
        finally:
            for r in rsus:
                r.stop()
            proc.terminate()
            proc.wait(10)
    sys.stdout.write(
        f"paho q1 {paho_rate:,.0f}/s, aiomqtt q1 {aiomqtt:,.0f}/s; with ledger receipts "
        f"{out['attestations_per_s']:,.0f}/s; event->receipt p50 {out['latency_p50_s']} s "
        f"p99 {out['latency_p99_s']} s\n"
    )
    result = {
        "figure": "obu_attestations_with_receipts",
        "unit": "attestations/s",
        "value": out["attestations_per_s"],
        "baseline": round(paho_rate),
        "ratio": round(out["attestations_per_s"] / paho_rate, 4),
        "aiomqtt_q1": round(aiomqtt),
        "n": n,
        "quick": args.quick,
        **out,
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
