"""``acc ledger``: the RSU's cell ledger.

    acc ledger status [--json]                 height, last block, peers, validators, sync state (from the agent)
    acc ledger verify --genesis G [--data-dir D | --db FILE] [--json]
                                               re-verify the local chain: hashes, links, commit certificates,
                                               every transaction's signature and the app hash of every header

``verify`` reads the block store directly (SQLite allows it while the agent runs) and replays the
chain through a fresh ledger app, so it checks what the agent would check on the way in, from
genesis. Exit status: 0 all good, 65 the chain has a bad block (the first one is named), 66 no
store, 78 unreadable genesis.
"""

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
    p = sub.add_parser("ledger", help="the cell ledger of an RSU: status, verify the local chain")
    lsub = p.add_subparsers(dest="ledger_cmd", required=True, metavar="COMMAND")
    s = lsub.add_parser(
        "status",
        help="RSU: height, last block, peers, validators, sync state; OBU: light client and receipts per cell",
        description="Ask the running agent about its ledger. Exit status: 0 in consensus (RSU) / following "
        "(OBU), 1 catching up, not a validator or a light-client problem, 69 no agent reachable (or no ledger).",
    )
    s.add_argument("--socket", type=Path, help="diagnostics socket (default: as for acc status)")
    s.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    s.set_defaults(func=run_status)
    v = lsub.add_parser(
        "verify",
        help="re-verify the local chain from genesis",
        description="Re-verify every stored block: header links and hashes, the commit certificate, every "
        "transaction and the app hash each header names. Exit status: 0 good, 65 a bad block, 66 no store.",
    )
    v.add_argument("--genesis", type=Path, required=True, help="the cell's genesis JSON")
    where = v.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, default=Path("/var/lib/autochain"), help="the agent's data dir")
    where.add_argument("--db", type=Path, help="the block store file (default: DATA_DIR/ledger/blocks.db)")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=run_verify)


def run_status(args: argparse.Namespace) -> int:
    st, code = ask_agent(args.socket, "ledger", "acc ledger status")
    if code:
        return code
    if st is None:
        sys.stderr.write("acc ledger status: the agent runs no ledger (role rsu with ledger.enabled)\n")
        return exitcodes.UNAVAILABLE
    if st.get("role") == "obu":
        sys.stdout.write(json.dumps(st, indent=2, sort_keys=True) + "\n" if args.json else render_obu(st))
        bad = not st["cells"] or any(c["problem"] for c in st["cells"].values())
        return exitcodes.FAILURE if bad else exitcodes.OK
    sys.stdout.write(json.dumps(st, indent=2, sort_keys=True) + "\n" if args.json else render(st))
    return exitcodes.OK if st.get("sync") == "in consensus" and st.get("is_validator") else exitcodes.FAILURE


def render_obu(st: dict[str, Any]) -> str:
    """An OBU: its light client per cell and the receipts it verified."""
    if not st["cells"]:
        return "light client  following no cell yet (no genesis configured, not admitted anywhere)\n"
    lines = []
    for cell, c in st["cells"].items():
        when = (
            "-" if c["trusted_time"] is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(c["trusted_time"]))
        )
        lines.append(f"cell {cell} ({c['chain_id']}): trusted height {c['trusted_height']} ({when})")
        lines.append(
            f"  receipts {c['retired']} retired, {c['pending_receipts']} waiting for a header, "
            f"{c['bad_receipts']} bad; headers {c['headers_verified']} verified, {c['rejected_headers']} refused"
        )
        if c["problem"]:
            lines.append(f"  PROBLEM: {c['problem']}")
    return "\n".join(lines) + "\n"


def render(st: dict[str, Any]) -> str:
    age = st.get("last_block_age_s")
    when = (
        "none yet"
        if st.get("last_block_time") is None
        else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st["last_block_time"])) + f" ({age:.1f} s ago)"
    )
    lines = [
        f"chain       {st['chain_id']}  (node {st['node']})",
        f"height      {st['height']}  last block {when}",
        f"consensus   height {st['consensus_height']} round {st['round']}, proposer {_short(st['proposer'])}",
        f"sync        {st['sync']}",
        f"app hash    {st['app_hash'][:32]}",
        f"txs         {st['committed_txs']} committed, {st['mempool']} in mempool, {st['txs_refused']} refused",
        f"validators  {len(st['validators'])}" + ("" if st.get("is_validator") else "  (this node is NOT one)"),
    ]
    signers = set(st.get("last_commit_signers", []))
    for v in st["validators"]:
        mark = "signed last commit" if v["did"] in signers else ""
        lines.append(f"  {_short(v['did'])}  power {v['power']}  {mark}".rstrip())
    lines.append(f"peers       {len(st['peers'])}")
    for name, p in st["peers"].items():
        lines.append(f"  {name:<12} at height {p['height']}, heard {p['seen_s_ago']} s ago")
    if st.get("evidence"):
        lines.append(f"EVIDENCE    {st['evidence']} equivocation(s) seen: see the agent's log")
    return "\n".join(lines) + "\n"


def _short(did: str) -> str:
    return did if len(did) <= 28 else f"{did[:16]}...{did[-8:]}"


def verify_chain(db: Path, genesis_path: Path) -> dict[str, Any]:
    """Replay the stored chain through a fresh app with full checks; the result says how far it
    got and the first problem (``ok`` False) -- raises only for an unusable genesis."""
    from agent.blockstore import BlockStore
    from ledger_lite.app import LedgerApp
    from ledger_lite.errors import LedgerError
    from ledger_lite.genesis import Genesis

    genesis = Genesis.from_json(genesis_path.read_bytes())
    app = LedgerApp(genesis)
    out: dict[str, Any] = {"store": str(db), "chain_id": genesis.chain_id, "verified": 0, "txs": 0, "ok": True}
    started = time.monotonic()
    with BlockStore(db) as store:
        top = store.height()
        out["height"] = top
        prev = None
        for h in range(1, top + 1):
            try:
                block = store.get(h)
                cert = store.certificate(h)
                if block is None or cert is None:
                    raise LedgerError("missing from the store")
                block.validate_basic(
                    prev,
                    app.validators_at(h),
                    next_validators=app.validators_at(h + 1),
                    last_validators=app.validators_at(max(1, h - 1)),
                )
                cert.check_block(block, app.validators_at(h))
                app.validate_block(block)  # every tx, signatures included, and the header's app hash
                app.apply_block(block)
                app.commit()
            except LedgerError as err:
                out.update(ok=False, bad_height=h, problem=f"{type(err).__name__}: {err}")
                break
            out["verified"] = h
            out["txs"] += len(block.txs)
            prev = block
    out["app_hash"] = app.app_hash.hex()
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def run_verify(args: argparse.Namespace) -> int:
    from ledger_lite.errors import LedgerError

    db = args.db or args.data_dir / "ledger" / "blocks.db"
    if not db.is_file():
        sys.stderr.write(f"acc ledger verify: no block store at {db}\n")
        return exitcodes.NO_INPUT
    try:
        res = verify_chain(db, args.genesis)
    except (OSError, LedgerError) as err:
        sys.stderr.write(f"acc ledger verify: genesis {args.genesis}: {err}\n")
        return exitcodes.CONFIG
    if args.json:
        sys.stdout.write(json.dumps(res, indent=2, sort_keys=True) + "\n")
    elif res["ok"]:
        sys.stdout.write(
            f"chain {res['chain_id']}: {res['verified']} blocks, {res['txs']} transactions verified "
            f"in {res['seconds']} s; app hash {res['app_hash'][:32]}\n"
        )
    else:
        sys.stdout.write(
            f"chain {res['chain_id']}: blocks 1..{res['verified']} good; block {res['bad_height']} is BAD: "
            f"{res['problem']}\n"
        )
    return exitcodes.OK if res["ok"] else exitcodes.DATA_ERROR
