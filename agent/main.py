"""``acc-agent``: the daemon's entry point.

    acc-agent --config /etc/autochain/agent.toml          # as systemd runs it
    acc-agent --demo --duration 20                        # simulated vehicle, no hardware

Exit codes (agent/exitcodes.py): 0 clean stop, 78 configuration error, 77 unsafe device key file
(systemd's ``RestartPreventExitStatus=77 78`` keeps either from restart-looping), 70 internal error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, exitcodes
from .config import Config, ConfigError, load_config
from .keystore import KeyStoreError
from .logsetup import setup_logging

log = logging.getLogger("agent")

DEFAULT_CONFIG = "/etc/autochain/agent.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="acc-agent",
        description="AutoChain edge agent (OBU/RSU). Config: TOML file, then ACC_<SECTION>__<KEY> "
        "environment variables, then --set flags.",
        epilog="exit codes: 0 stopped cleanly, 78 configuration error, 77 unsafe device key file, 70 internal error",
    )
    p.add_argument("-c", "--config", help=f"TOML config file (default {DEFAULT_CONFIG} when it exists)")
    p.add_argument("--role", choices=["obu", "rsu"], help="override agent.role")
    p.add_argument("--data-dir", help="override agent.data_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument(
        "--demo",
        action="store_true",
        help="run an OBU on the built-in simulated vehicle (python-can virtual bus + NMEA over a pty)",
    )
    p.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    p.add_argument("--version", action="version", version=f"acc-agent {__version__}")
    return p


def _overrides(args: argparse.Namespace) -> list[str]:
    sets = list(args.set)
    if args.role:
        sets.append(f"agent.role={args.role}")
    if args.data_dir:
        sets.append(f"agent.data_dir={_toml_str(args.data_dir)}")
    return sets


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.config
    if path is None and not args.demo and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    try:
        if args.demo:
            from .demo import demo_base_config

            base: dict[str, Any] = demo_base_config(args.data_dir or "var/demo")
            config = load_config(path, overrides=_overrides(args), base=base)
        else:
            config = load_config(path, overrides=_overrides(args))
    except ConfigError as err:
        sys.stderr.write(f"acc-agent: {err}\n")
        return exitcodes.CONFIG
    if args.check_config:
        sys.stdout.write(f"configuration OK ({path or 'defaults'})\n")
        return exitcodes.OK
    setup_logging(config.agent.log_level)
    try:
        if args.demo:
            from .demo import run_demo

            asyncio.run(run_demo(config, duration=args.duration, out=sys.stdout))
        else:
            asyncio.run(_run(config, args.duration))
    except KeyboardInterrupt:
        return exitcodes.OK
    except ConfigError as err:
        sys.stderr.write(f"acc-agent: {err}\n")
        return exitcodes.CONFIG
    except KeyStoreError as err:  # the device key file is unsafe: refuse to start, say what to run
        sys.stderr.write(f"acc-agent: refusing to start: {err}\n")
        return exitcodes.NOPERM
    except Exception as err:  # noqa: BLE001 - last resort: say what happened, exit non-zero
        log.critical("agent failed: %s", err, exc_info=err)
        return exitcodes.SOFTWARE
    return exitcodes.OK


async def _run(config: Config, duration: float | None) -> None:
    from .runtime import Agent

    os.makedirs(config.agent.data_dir, exist_ok=True)
    await Agent(config).run(duration)


if __name__ == "__main__":
    sys.exit(main())
