"""MQTT publish rate of the agent's client (`agent.mqtt.MqttClient`) at QoS 1 through a real
Mosquitto on 127.0.0.1, next to bare paho-mqtt (loop_start, 100 in flight) in the same run;
aiomqtt (awaited publish) is printed for reference. QoS 0 rates are printed too.

Starts its own Mosquitto (/usr/sbin/mosquitto, listener 127.0.0.1 on a free port, no
persistence) and stops it at the end.

    python -m tools.bench.mqtt_publish            # 20,000 x 100-byte messages per client
    python -m tools.bench.mqtt_publish --quick    # 5,000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from agent import topics
from agent.config import MqttConfig
from agent.mqtt import MqttClient

PAYLOAD = b"x" * 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        f"max_inflight_messages 1000\nlog_dest file {directory / 'mosquitto.log'}\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{port}")


def bare_paho(port: int, qos: int, n: int) -> float:
    done = threading.Event()
    count = [0]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bare-{qos}", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(100)

    def on_publish(*_: object) -> None:
        count[0] += 1
        if count[0] == n:
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.2)
    topic = "acc/v1/pc5/c1" if qos == 0 else "acc/v1/cell/c1/tx"
    t0 = time.perf_counter()
    for _ in range(n):
        client.publish(topic, PAYLOAD, qos)
    done.wait(120)
    rate = n / (time.perf_counter() - t0)
    client.disconnect()
    client.loop_stop()
    return rate


async def ours(port: int, qos: int, n: int) -> float:
    client = MqttClient(
        MqttConfig(host="127.0.0.1", port=port, cell="c1", queue_max=1000, inflight_max=100), node_id=f"ours-{qos}"
    )
    topic = topics.pc5("c1") if qos == 0 else topics.tx("c1")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(client.run())
        await client.wait_connected(5)
        t0 = time.perf_counter()
        for _ in range(n):
            await client.publish(topic, PAYLOAD)
        await client.drain()
        rate = n / (time.perf_counter() - t0)
        task.cancel()
    return rate


async def aiomqtt_rate(port: int, qos: int, n: int) -> float:
    import aiomqtt

    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"aio-{qos}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        topic = "acc/v1/pc5/c1" if qos == 0 else "acc/v1/cell/c1/tx"
        t0 = time.perf_counter()
        for _ in range(n):
            await client.publish(topic, PAYLOAD, qos=qos)
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, help="messages per client (default 20000, quick 5000)")
    args = ap.parse_args(argv)
    n = args.n or (5000 if args.quick else 20000)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_broker(Path(tmp))
        try:
            r = {}
            for qos in (0, 1):
                r[f"paho q{qos}"] = bare_paho(port, qos, n)
                r[f"ours q{qos}"] = asyncio.run(ours(port, qos, n))
                r[f"aiomqtt q{qos}"] = asyncio.run(aiomqtt_rate(port, qos, n))
        finally:
            proc.terminate()
            proc.wait(10)
    print("msgs/s (100 B, local Mosquitto): " + ", ".join(f"{k} {v:,.0f}" for k, v in r.items()))
    print(
        json.dumps(
            {
                "figure": "mqtt_publish_qos1",
                "unit": "msgs/s",
                "value": round(r["ours q1"]),
                "baseline": round(r["paho q1"]),
                "ratio": round(r["ours q1"] / r["paho q1"], 3),
                "qos0_ratio": round(r["ours q0"] / r["paho q0"], 3),
                "aiomqtt_q1": round(r["aiomqtt q1"]),
                "messages": n,
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
