"""The RSU agents of an ``acc-sim`` run as asyncio tasks of one process of their own:

    python -m tools.sim_rsus RSUS.json

``RSUS.json`` is a list of agent configurations (the dicts ``tools.sim_world.rsu_config``
writes). RSUs use no virtual CAN bus, so they need not share the OBUs' process: on a machine
with two cores they get the second one, as road-side boxes have their own CPUs. Each agent has
its diagnostics socket (``agent.diag_socket``), which is how acc-sim watches them. Runs until
SIGTERM or SIGINT, then stops every agent cleanly; exit 0, or 78 for a bad configuration.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from agent.config import load_config
from agent.runtime import Agent
from tools.sim_world import child_main


async def run(configs: list[dict[str, object]]) -> None:
    agents = [Agent(load_config(base=c, env={}), handle_signals=False) for c in configs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(a.run(None)) for a in agents]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
    for a in agents:
        a.request_stop()
    stopper.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> int:
    return child_main("sim_rsus", argv, run)


if __name__ == "__main__":
    sys.exit(main())
