"""A worker of ``acc-sim``: some of its OBU agents, each on its own simulated car, as asyncio
tasks of one process of their own:

    python -m tools.sim_obus OBUS.json

``OBUS.json``: ``{"obus": [{"config": {...}, "seed": 100, "start": 7}, ...], "interval": 1.0}``
(agent configurations as ``tools.sim_world.obu_config`` writes them, the car's seed, and the
segment of the Munich loop it starts at). A car and its agent share a process (python-can's
``virtual`` bus connects only buses of one process); the OBUs talk to everything else -- RSUs,
each other over the PC5 emulation -- through the broker, so they can be spread over workers.

Every ``interval`` seconds it writes one JSON line to stdout: ``{"obus": [snapshot, ...]}``
(``tools.sim_world.obu_snapshot``); on SIGTERM/SIGINT a last one with ``"final": true``, then it
stops every agent cleanly. Logs go to stderr. Exit 0, or 78 for a bad configuration.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from agent.config import load_config
from agent.demo import SimulatedObu
from drivers.simvehicle import Route
from tools.sim_world import child_main, obu_snapshot


async def run(spec: dict[str, Any]) -> None:
    route = Route.default()
    sims = [
        SimulatedObu(
            load_config(base=o["config"], env={}),
            seed=int(o["seed"]),
            handle_signals=False,
            route=route.starting_at(int(o["start"])),
        )
        for o in spec["obus"]
    ]
    interval = float(spec.get("interval", 1.0))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def report(final: bool = False) -> None:
        snaps = [await obu_snapshot(s) for s in sims]
        sys.stdout.write(json.dumps({"obus": snaps, **({"final": True} if final else {})}) + "\n")
        sys.stdout.flush()

    tasks = [asyncio.create_task(s.run(None)) for s in sims]
    while not stop.is_set() and not all(t.done() for t in tasks):
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            await report()
    await report(final=True)  # before the agents close their stores
    for s in sims:
        s.agent.request_stop()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    return child_main("sim_obus", argv, run)


if __name__ == "__main__":
    sys.exit(main())
