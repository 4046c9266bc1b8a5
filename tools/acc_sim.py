"""``acc-sim``: a whole cell on this machine. This first slice runs M simulated OBUs, each a
real agent (python-can virtual buses, NMEA over its own pty, DBC decoding, fusion, health,
diagnostics socket) driving the default route with its own seed, as asyncio tasks in one
process: python-can's virtual bus only connects buses of one process, and tasks keep one
core's worth of OBUs cheap. RSUs, consensus and MQTT join when those issues land.

    acc-sim --obus 4 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import exitcodes
from agent.config import ConfigError, load_config
from agent.demo import SimulatedObu, TruthTracker, demo_base_config
from agent.logsetup import setup_logging


class Tracker(TruthTracker):
    """Per-OBU state sink: errors of the fused state against its simulator's truth."""

    def __init__(self, sim: SimulatedObu) -> None:
        super().__init__(sim.vehicle.truth)
        self.sim = sim

    def row(self) -> dict[str, Any]:
        a = self.sim.agent
        mean, median = self.speed_err_mean(), self.pos_err_median()
        return {
            "node": a.node_id,
            "frames": sum(s.frames for s in a.can_services),
            "undecodable": sum(s.decode_errors for s in a.can_services),
            "fixes": a.gnss_service.fixes if a.gnss_service else 0,
            "snapshots": self.n,
            "speed_err_mean": None if mean is None else round(mean, 4),
            "pos_err_median_m": None if median is None else round(median, 2),
            "health": str(a.health.overall()),
        }


async def run(obus: int, duration: float, data_root: Path, out: Any) -> list[dict[str, Any]]:
    sims: list[SimulatedObu] = []
    trackers: list[Tracker] = []
    for i in range(obus):
        base = demo_base_config(str(data_root / f"obu{i:03d}"))
        base["agent"]["node_id"] = f"obu-{i:03d}"
        base["agent"]["log_level"] = "warning"
        for bus in base["can"]:
            bus["channel"] += f"-obu{i}"
        sim = SimulatedObu(load_config(base=base, env={}), seed=100 + i, handle_signals=False)
        tracker = Tracker(sim)
        sim.agent.state_sinks.append(tracker)
        sims.append(sim)
        trackers.append(tracker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def progress() -> None:
        last = 0
        t0 = time.monotonic()
        cpu0 = time.process_time()
        while True:
            await asyncio.sleep(1.0)
            frames = sum(s.frames for sim in sims for s in sim.agent.can_services)
            healthy = sum(str(sim.agent.health.overall()) == "ok" for sim in sims)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
            out.write(
                f"t={time.monotonic() - t0:5.1f}s  OBUs {obus}  frames {frames - last:6d}/s  "
                f"healthy {healthy}/{obus}  CPU {100 * cpu:4.0f}%\n"
            )
            out.flush()
            last = frames

    async def run_all() -> None:
        async with asyncio.TaskGroup() as tg:
            for sim in sims:
                tg.create_task(sim.run(duration))

    ticker = asyncio.create_task(progress())
    stopper = asyncio.create_task(stop.wait())
    main = asyncio.create_task(run_all())
    await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not main.done():
        for sim in sims:
            sim.agent.request_stop()
        await main
    ticker.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    return [t.row() for t in trackers]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="acc-sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--obus", type=int, default=4, help="simulated OBUs (default 4)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    ap.add_argument("--data-dir", type=Path, help="where the OBUs keep their state (default: a temporary dir)")
    ap.add_argument("--json", action="store_true", help="print the final table as JSON lines")
    args = ap.parse_args(argv)
    if args.obus < 1:
        ap.error("--obus must be at least 1")
    setup_logging("warning")
    with tempfile.TemporaryDirectory(prefix="acc-sim-") as tmp:
        root = args.data_dir or Path(tmp)
        try:
            rows = asyncio.run(run(args.obus, args.duration, root, sys.stdout))
        except ConfigError as err:
            sys.stderr.write(f"acc-sim: {err}\n")
            return exitcodes.CONFIG
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        sys.stdout.write("\nnode      frames  undecodable  fixes  snapshots  speed err m/s  pos err m  health\n")
        for r in rows:
            sys.stdout.write(
                f"{r['node']:<9} {r['frames']:>6}  {r['undecodable']:>11}  {r['fixes']:>5}  {r['snapshots']:>9}"
                f"  {r['speed_err_mean']!s:>13}  {r['pos_err_median_m']!s:>9}  {r['health']}\n"
            )
    return exitcodes.OK if all(r["health"] == "ok" for r in rows) else exitcodes.FAILURE


if __name__ == "__main__":
    sys.exit(main())
