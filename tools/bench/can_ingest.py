"""CAN ingest benchmark: receive -> DBC decode -> fusion, in frames per CPU-second, next to
python-can's bare receive loop on the same kind of bus in the same run.

Both sides read a python-can ``virtual`` bus fed by a sender thread with the simulated test
vehicle's real frame mix (reference DBC, powertrain bus). CPU time is the process's CPU time
minus the sender thread's own (per-thread clocks), so it covers exactly the receiving side:
python-can, our reader thread, the event loop, decoding and fusion (with the 10 Hz
VehicleState snapshot running).

Two measurements per side:
- paced: 8,000 frames/s (a full 1 Mbit/s bus) for ``--seconds``: CPU share of one core and
  frames lost (sent - received);
- flat out: frames per CPU-second with the sender throttled only by a bounded in-flight window.

    python -m tools.bench.can_ingest            # 20 s paced + 200k frames flat out per side
    python -m tools.bench.can_ingest --quick    # 5 s paced + 50k frames, under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import can

from drivers.can_convert import message_from_frame
from hal.types import CanFrame

DATA = Path(__file__).resolve().parents[2] / "drivers" / "data"
RATE = 8000.0  # frames/s on a fully loaded 1 Mbit/s bus (about 125 us per 8-byte frame)


def frame_mix(seconds: float = 10.0) -> list[can.Message]:
    """The simulated vehicle's powertrain frames over ``seconds`` of driving."""
    from drivers.simvehicle import SimVehicle

    v = SimVehicle(seed=3, nmea_rate_hz=None)
    v.start(0.0, 1.7e9)
    frames: list[CanFrame] = []
    t = 0.0
    while t < seconds:
        t += 0.01
        frames.extend(f for f in v.frames_due(t) if f.channel == "can0")
    return [message_from_frame(f) for f in frames]


class Sender(threading.Thread):
    """Sends the mix on its own bus; paced at ``rate`` or as fast as ``window()`` allows."""

    def __init__(
        self,
        channel: str,
        msgs: list[can.Message],
        count: int,
        rate: float | None,
        in_flight: Callable[[int], int] | None = None,
        window: int = 4000,
    ) -> None:
        super().__init__(name="bench-sender", daemon=True)
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.msgs, self.count, self.rate = msgs, count, rate
        self.in_flight, self.window = in_flight, window
        self.cpu = 0.0
        self.sent = 0

    def run(self) -> None:
        c0 = time.thread_time()
        start = time.monotonic()
        it = itertools.cycle(self.msgs)
        batch = 40
        while self.sent < self.count:
            if self.rate is not None:
                due = start + self.sent / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            elif self.in_flight is not None:
                while self.in_flight(self.sent) > self.window:
                    time.sleep(0.0005)
            for _ in range(min(batch, self.count - self.sent)):
                self.bus.send(next(it))
                self.sent += 1
        self.cpu = time.thread_time() - c0
        self.bus.shutdown()


def run_bare(channel: str, msgs: list[can.Message], count: int, rate: float | None) -> dict[str, float]:
    """python-can's bare receive loop: ``bus.recv()`` until every frame is in."""
    rx = can.Bus(interface="virtual", channel=channel)
    got = 0
    sender = Sender(channel, msgs, count, rate, in_flight=lambda sent: sent - got)
    p0, w0 = time.process_time(), time.monotonic()
    sender.start()
    idle_since = None
    while got < count:
        msg = rx.recv(0.2)
        if msg is None:
            if not sender.is_alive():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break
            continue
        got += 1
    sender.join()
    cpu = time.process_time() - p0 - sender.cpu
    wall = time.monotonic() - w0
    rx.shutdown()
    return {"frames": got, "lost": count - got, "cpu_s": cpu, "wall_s": wall}


async def _run_agent_path(channel: str, msgs: list[can.Message], count: int, rate: float | None) -> dict[str, float]:
    from agent.fusion import Fusion
    from agent.health import HealthRegistry
    from agent.services import CanService, StateService
    from drivers.can_bus import PythonCanPort
    from drivers.clock import SystemClock
    from drivers.dbc import DbcDecoder

    clock = SystemClock()
    fusion = Fusion()
    port = PythonCanPort("can0", interface="virtual", channel=channel, bitrate=1_000_000)
    service = CanService(
        port,
        [DbcDecoder(DATA / "acc_testcar_powertrain.dbc", bus="can0")],
        fusion,
        HealthRegistry(clock.monotonic),
        clock,
    )
    state = StateService(fusion, clock, 10.0)
    tasks = [asyncio.create_task(service.run()), asyncio.create_task(state.run())]
    while service.opened_mono is None:  # noqa: ASYNC110 - polling a plain attribute
        await asyncio.sleep(0.001)
    sender = Sender(channel, msgs, count, rate, in_flight=lambda sent: sent - service.frames)
    p0, w0 = time.process_time(), time.monotonic()
    sender.start()
    last, idle_since = -1, None
    while service.frames < count:
        await asyncio.sleep(0.01)
        if not sender.is_alive():
            if service.frames == last:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break
            last = service.frames
    sender.join()
    cpu = time.process_time() - p0 - sender.cpu
    wall = time.monotonic() - w0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = port.stats()
    return {
        "frames": service.frames,
        "lost": count - service.frames,
        "cpu_s": cpu,
        "wall_s": wall,
        "overruns": stats.overruns,
        "decode_errors": service.decode_errors,
        "snapshots": state.snapshots,
    }


def run_agent_path(channel: str, msgs: list[can.Message], count: int, rate: float | None) -> dict[str, float]:
    return asyncio.run(_run_agent_path(channel, msgs, count, rate))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (under a minute)")
    ap.add_argument("--seconds", type=float, help="paced run length (default 20, quick 5)")
    ap.add_argument("--frames", type=int, help="flat-out frames per side (default 200000, quick 50000)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    flat = args.frames or (50_000 if args.quick else 200_000)
    msgs = frame_mix()
    paced_n = int(RATE * seconds)
    results = {}
    for name, fn in (("bare", run_bare), ("agent", run_agent_path)):
        results[name] = {
            "paced": fn(f"bench-{name}-paced", msgs, paced_n, RATE),
            "flat": fn(f"bench-{name}-flat", msgs, flat, None),
        }
    for name, r in results.items():
        p, f = r["paced"], r["flat"]
        print(
            f"{name:>5}: paced {RATE:.0f} frames/s for {p['wall_s']:.1f}s: {p['frames']} received, {p['lost']} lost, "
            f"CPU {100 * p['cpu_s'] / p['wall_s']:.1f}% of one core | flat out: {f['frames'] / f['cpu_s']:,.0f} "
            f"frames/CPU-s ({f['frames']} frames, {f['wall_s']:.1f}s wall)"
            + (
                f" | overruns {p['overruns'] + f['overruns']}, undecodable {p['decode_errors']}"
                if name == "agent"
                else ""
            )
        )
    ours = results["agent"]["flat"]["frames"] / results["agent"]["flat"]["cpu_s"]
    base = results["bare"]["flat"]["frames"] / results["bare"]["flat"]["cpu_s"]
    pa = results["agent"]["paced"]
    print(
        json.dumps(
            {
                "figure": "can_ingest_receive_decode_fuse",
                "unit": "frames/CPU-s",
                "value": round(ours),
                "baseline": round(base),
                "ratio": round(ours / base, 3),
                "cpu_share_at_8000fps": round(pa["cpu_s"] / pa["wall_s"], 3),
                "baseline_cpu_share_at_8000fps": round(
                    results["bare"]["paced"]["cpu_s"] / results["bare"]["paced"]["wall_s"], 3
                ),
                "lost_at_8000fps": pa["lost"],
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
