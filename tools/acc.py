"""``acc``: the field technician's command-line tool.

Each command group lives in its own module with a ``register(subparsers)`` function that adds
its sub-commands; each sub-command sets ``func(args) -> int`` (an exit code from
``agent.exitcodes``). Every command takes ``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from agent import exitcodes

#: command-group modules, imported lazily so ``acc status`` does not pay for cantools
_GROUPS = {
    "status": "tools.cli_status",
    "gnss": "tools.cli_gnss",
    "can": "tools.cli_can",
    "net": "tools.cli_net",
    "keys": "tools.cli_keys",
    "attest": "tools.cli_attest",
    "ledger": "tools.cli_ledger",
    "fl": "tools.cli_fl",
    "model": "tools.cli_model",
    "selftest": "tools.cli_selftest",
    "logs": "tools.cli_logs",
    "bundle": "tools.cli_bundle",
    "camera": "tools.cli_camera",
}


def build_parser(groups: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acc",
        description="AutoChain agent: diagnostics and decoding tools for installers and technicians.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in groups if groups is not None else _GROUPS:
        importlib.import_module(_GROUPS[name]).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # import only the group that is asked for, when it is known
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([first] if first in _GROUPS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `acc ... | head`
        return exitcodes.OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
