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
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import exitcodes
from agent.config import ConfigError, load_config
from agent.logsetup import setup_logging
from agent.runtime import Agent


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
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m tools.sim_rsus RSUS.json\n")
        return exitcodes.USAGE
    setup_logging("warning")
    try:
        configs = json.loads(Path(args[0]).read_text())
        asyncio.run(run(configs))
    except ConfigError as err:
        sys.stderr.write(f"sim_rsus: {err}\n")
        return exitcodes.CONFIG
    except (OSError, ValueError) as err:
        sys.stderr.write(f"sim_rsus: {args[0]}: {err}\n")
        return exitcodes.CONFIG
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
