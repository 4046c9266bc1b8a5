"""``acc net``: the running agent's cell network: broker connection, message counters and the
outbox (what is waiting to be delivered)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent import exitcodes
from tools.cli_status import ask_agent


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "net",
        help="broker connection and RTT, peers seen, rejected messages per peer, outbox depth",
        description="Ask the running agent about its cell network. Exit status: 0 connected (or MQTT "
        "disabled) with nothing refused, 1 disconnected or outbox trouble, 69 no agent reachable.",
    )
    p.add_argument("--socket", type=Path, help="diagnostics socket (default: as for acc status)")
    p.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    net, code = ask_agent(args.socket, "net", "acc net")
    if code:
        return code
    sys.stdout.write(json.dumps(net, indent=2, sort_keys=True) + "\n" if args.json else render(net))
    mqtt, outbox = net.get("mqtt"), net.get("outbox")
    bad = (mqtt is not None and not mqtt.get("connected")) or (
        outbox is not None and (outbox.get("refused") or outbox.get("quarantined"))
    )
    return exitcodes.FAILURE if bad else exitcodes.OK


def render(net: dict[str, Any]) -> str:
    lines = []
    mqtt = net.get("mqtt")
    if mqtt is None:
        lines.append("mqtt      disabled")
    else:
        state = "connected" if mqtt.get("connected") else "DISCONNECTED"
        lines.append(
            f"broker    {net.get('broker')} ({'TLS' if net.get('tls') else 'plain'}), cell {net.get('cell')}: {state}"
        )
        if mqtt.get("last_error"):
            lines.append(f"last error {mqtt['last_error']}")
        lines.append(
            f"messages  {mqtt.get('published', 0)} published, {mqtt.get('received', 0)} received, "
            f"{mqtt.get('dropped', 0)} dropped, queue {mqtt.get('queue_depth', 0)}, in flight {mqtt.get('inflight', 0)}"
        )
        lines.append(f"sessions  {mqtt.get('connects', 0)} connects, {mqtt.get('reconnects', 0)} reconnects")
        if mqtt.get("rtt_ms") is not None:
            lines.append(
                f"rtt       {mqtt['rtt_ms']} ms to the broker (publish -> ack; average {mqtt['rtt_avg_ms']} ms)"
            )
    peers = net.get("peers")
    if peers is not None:
        lines.append(f"peers     {len(peers)} seen in the cell")
        for node, p in peers.items():
            lines.append(f"  {node:<16} {p['state']:<8} {p['seen_s_ago']:>7.1f} s ago  {p['did'][:32]}...")
    rejects = net.get("rejects") or {}
    if rejects:
        lines.append(f"rejected  {sum(r['total'] for r in rejects.values())} message(s)")
        for peer, r in rejects.items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items()))
            lines.append(f"  {peer[:40]:<40} {r['total']:>6}  ({reasons}); last: {r['last'][:80]}")
    ob = net.get("outbox")
    if ob is None:
        lines.append("outbox    none (no device identity)")
    else:
        age = ob.get("oldest_age_s")
        lines.append(
            f"outbox    {ob['pending']} pending, {ob['sent_unconfirmed']} sent awaiting receipt, "
            f"{ob['retired']} retired; {ob['bytes'] / 2**20:.1f} of {ob['budget'] / 2**20:.0f} MiB"
            + (f"; oldest {age:.0f} s" if age is not None else "")
        )
        if ob.get("evicted") or ob.get("refused"):
            lines.append(f"          {ob['evicted']} evicted, {ob['refused']} refused (disk budget)")
        if ob.get("quarantined"):
            lines.append(f"          corrupt database moved aside: {ob['quarantined']}")
    return "\n".join(lines) + "\n"
