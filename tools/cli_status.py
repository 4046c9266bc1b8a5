"""``acc status``: the running agent's role, uptime and health per subsystem."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent import exitcodes
from agent.diagnostics import DiagError, default_socket_paths, query


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="role, uptime and health of the running agent",
        description="Ask the running agent over its diagnostics socket; with no agent answering, "
        "print what the disk tells (keys, outbox, ledger, logs). Exit status: 0 all ok, "
        "1 degraded or failed, 69 no agent reachable (the offline report is printed).",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="diagnostics socket (default: ACC_DIAG_SOCKET, "
        "$RUNTIME_DIRECTORY/diag.sock, /run/autochain/diag.sock, /var/lib/autochain/diag.sock)",
    )
    p.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    p.add_argument("--data-dir", help="agent data dir read when the agent is down (default: from the config)")
    p.add_argument("--config", help="agent config for the data dir (default /etc/autochain/agent.toml)")
    p.set_defaults(func=run)


def find_socket(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    return next((p for p in default_socket_paths() if p.exists()), None)


def ask_agent(explicit: Path | None, cmd: str, prog: str) -> tuple[Any, int]:
    """(answer, 0) from the running agent, or (None, 69) after saying on stderr why not."""
    path = find_socket(explicit)
    if path is None:
        tried = ", ".join(str(p) for p in default_socket_paths())
        sys.stderr.write(f"{prog}: no agent socket found (tried {tried}); is acc-agent running?\n")
        return None, exitcodes.UNAVAILABLE
    try:
        return query(path, cmd), exitcodes.OK
    except DiagError as err:
        sys.stderr.write(f"{prog}: {err}\n")
        return None, exitcodes.UNAVAILABLE


def run(args: argparse.Namespace) -> int:
    status, code = ask_agent(args.socket, "status", "acc status")
    if code:
        from tools.cli_offline import status_offline

        return status_offline(args, code)
    if args.json:
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(status))
    return exitcodes.OK if status.get("overall") == "ok" else exitcodes.FAILURE


def _fmt_uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def render(st: dict[str, Any]) -> str:
    lines = [
        f"node      {st.get('node_id')}  (role {st.get('role')}, version {st.get('version')}, pid {st.get('pid')})",
        f"uptime    {_fmt_uptime(float(st.get('uptime_s', 0)))}",
        f"overall   {str(st.get('overall', '?')).upper()}",
        "",
        "subsystem            status    reason",
    ]
    for name, h in (st.get("health") or {}).items():
        lines.append(f"{name:<20} {h['status']:<9} {h.get('reason', '')}")
    for bus, c in (st.get("can") or {}).items():
        lines.append(
            f"\n{bus}: {c['rx_frames']} frames rx, {c['decode_errors']} undecodable,"
            f" {c['error_frames']} error frames,"
            f" {c['overruns']} overruns, load {100 * c['bus_load']:.1f}%, state {c['state']}"
        )
    g = st.get("gnss")
    if g:
        lines.append(f"\ngnss: mode {g['mode']}, {g['fixes']} fixes, last {g['lat']}, {g['lon']} at {g['time']}")
    return "\n".join(lines) + "\n"
