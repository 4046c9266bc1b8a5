"""``acc fl status``: federated learning on this box -- an RSU's rounds (current round, model,
updates, recent results) or an OBU's side (the committed model it runs, local windows available,
the last update it sent, models it refused)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent import exitcodes
from tools.cli_status import ask_agent


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fl", help="federated learning: round, model, local data, last update")
    fsub = p.add_subparsers(dest="fl_cmd", required=True, metavar="COMMAND")
    s = fsub.add_parser(
        "status",
        help="current round, model hash, local data available, last update sent",
        description="Ask the running agent about federated learning. Exit status: 0 fine, 1 models refused, "
        "69 no agent reachable or FL not enabled.",
    )
    s.add_argument("--socket", type=Path, help="diagnostics socket (default: as for acc status)")
    s.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    s.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    st, code = ask_agent(args.socket, "fl", "acc fl status")
    if code:
        return code
    if st is None:
        sys.stderr.write("acc fl status: federated learning is not enabled on this agent ([fl] enabled)\n")
        return exitcodes.UNAVAILABLE
    sys.stdout.write(json.dumps(st, indent=2, sort_keys=True) + "\n" if args.json else render(st))
    return exitcodes.FAILURE if st.get("refused") else exitcodes.OK


def render(st: dict[str, Any]) -> str:
    model = st.get("model") or "none loaded"
    if st.get("role") == "coordinator":
        lines = [
            f"task      {st['task']} (this RSU coordinates)",
            f"model     {model[:32]}",
            f"round     {st['round'] or 'none open'}"
            + (f", {st['updates_this_round']} update(s) so far" if st["round"] else ""),
            f"totals    {st['rounds']} round(s), {st['updates']} update(s) accepted, {st['rejected']} refused",
        ]
        if st.get("dp"):
            dp = st["dp"]
            lines.append(
                f"privacy   central DP, noise x{dp['noise_multiplier']}, campaign epsilon {dp['campaign_epsilon']} "
                f"at delta {dp['delta']}"
            )
        for h in st.get("history", []):
            rej = f", rejected {h['rejected']}" if h["rejected"] else ""
            lines.append(f"  round {h['round']}: model {h['model'][:16]} from {h['participants']} update(s){rej}")
        return "\n".join(lines) + "\n"
    last = st.get("last_update")
    lines = [
        f"task      {st['task']}",
        f"model     {model[:32]} (committed on the cell ledger)",
        f"local     {st['local_windows']} labelled window(s) available",
    ]
    if last:
        when = time.strftime("%H:%M:%S UTC", time.gmtime(last["at"]))
        lines.append(
            f"last sent round {last['round']} at {when}: {last['samples']} windows, loss {last['loss']}, "
            f"norm {last['norm']}{' (clipped)' if last['clipped'] else ''}, {last['seconds']} s of training"
        )
    else:
        lines.append("last sent none yet")
    if st.get("latency"):
        lat = st["latency"]
        lines.append(
            f"model     infer p50 {lat['infer_p50_us']} us p99 {lat['infer_p99_us']} us; train step p50 "
            f"{lat['train_p50_us']} us ({lat['train_steps']} steps)"
        )
    for why, n in (st.get("refused") or {}).items():
        lines.append(f"REFUSED   {n} x {why}")
    return "\n".join(lines) + "\n"
