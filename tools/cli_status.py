"""``acc status``: the running agent's role, uptime and one verdict per subsystem.

Each of CAN, GNSS, camera, models, ledger, network, FL and keys gets ok / degraded / failed / off
(not configured) with the reason, derived on this side from the agent's health registry and its
``status``, ``net``, ``ledger``, ``fl``, ``behaviour`` and ``verdicts`` answers (an agent without
``verdicts`` is still judged, with less to go on). Health entries no subsystem claims come out as
``services``. Colours only on a terminal and without ``NO_COLOR``; lines fit 80 columns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from agent import exitcodes
from agent.diagnostics import DiagError, default_socket_paths, query


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "status",
        help="role, uptime and health of the running agent",
        description="Ask the running agent over its diagnostics socket and judge each subsystem "
        "(CAN, GNSS, camera, models, ledger, network, FL, keys: ok / degraded / failed / off); with no "
        "agent answering, print what the disk tells (keys, outbox, ledger, logs). Exit status: 0 all ok "
        "or off, 1 any degraded or failed, 69 no agent reachable (the offline report is printed).",
    )
    p.add_argument(
        "--socket",
        type=Path,
        help="diagnostics socket (default: ACC_DIAG_SOCKET, "
        "$RUNTIME_DIRECTORY/diag.sock, /run/autochain/diag.sock, /var/lib/autochain/diag.sock)",
    )
    p.add_argument("--json", action="store_true", help="the agent's answer and the verdicts as JSON")
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


OK, DEGRADED, FAILED, OFF = "ok", "degraded", "failed", "off"
_RANK = {OFF: 0, OK: 0, DEGRADED: 1, FAILED: 2}
SUBSYSTEMS = ("CAN", "GNSS", "camera", "models", "ledger", "network", "FL", "keys")
_COLOURS = {OK: "\033[32m", DEGRADED: "\033[33m", FAILED: "\033[31m", OFF: "\033[2m"}
WIDTH = 80
#: an outbox entry older than this with the broker there: delivery is stuck
BACKLOG_STALE_S = 3600.0


def _ask(path: Path, cmd: str) -> Any:
    """A further answer of the agent; None when it cannot give one (an older agent, a hiccup)."""
    try:
        return query(path, cmd)
    except DiagError:
        return None


def run(args: argparse.Namespace) -> int:
    status, code = ask_agent(args.socket, "status", "acc status")
    if code:
        from tools.cli_offline import status_offline

        return status_offline(args, code)
    path = find_socket(args.socket)
    assert path is not None  # it just answered
    answers = {cmd: _ask(path, cmd) for cmd in ("net", "ledger", "fl", "behaviour", "verdicts")}
    verdicts = judge(status, **answers)
    worst = overall(verdicts)
    if args.json:
        out = {**status, "verdicts": verdicts, "verdict": worst}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(status, verdicts, colour=use_colour()))
    return exitcodes.OK if _RANK[worst] == 0 else exitcodes.FAILURE


def use_colour() -> bool:
    """ANSI colours only on a terminal and when NO_COLOR is not set (https://no-color.org)."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


# --- verdicts ------------------------------------------------------------------------------


def _v(verdict: str, reason: str) -> dict[str, str]:
    return {"verdict": verdict, "reason": reason}


def _worst(items: list[tuple[str, dict[str, Any]]]) -> str:
    order = {"ok": OK, "degraded": DEGRADED, "failed": FAILED}
    return max((order.get(str(h.get("status")), FAILED) for _, h in items), key=_RANK.__getitem__, default=OK)


def _bad(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{n} {h.get('status')}: {h.get('reason') or '?'}" for n, h in items if h.get("status") != "ok"]


def overall(verdicts: dict[str, dict[str, str]]) -> str:
    """The worst verdict; ``ok`` when everything is ok or off."""
    worst = max((v["verdict"] for v in verdicts.values()), key=_RANK.__getitem__, default=OK)
    return OK if worst == OFF else worst


def _claim(health: dict[str, Any], claimed: set[str], *prefixes: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, h in health.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            claimed.add(name)
            out.append((name, h))
    return out


def judge(
    st: dict[str, Any],
    net: Any = None,
    ledger: Any = None,
    fl: Any = None,
    behaviour: Any = None,
    verdicts: Any = None,
) -> dict[str, dict[str, str]]:
    """One verdict per subsystem from the agent's answers (pure: no I/O but the credential files)."""
    health: dict[str, Any] = st.get("health") or {}
    extra: dict[str, Any] = verdicts if isinstance(verdicts, dict) else {}
    configured: dict[str, Any] = extra.get("configured") or {}
    claimed: set[str] = set()
    out: dict[str, dict[str, str]] = {}

    # CAN: one health entry per bus, with the bus counters
    items = _claim(health, claimed, "can", "obd")
    if not items:
        out["CAN"] = _v(OFF, "no CAN bus configured")
    else:
        can = st.get("can") or {}
        parts = []
        for name, h in items:
            c = can.get(name.removeprefix("can."), {})
            load = f", load {100 * c['bus_load']:.1f}%" if "bus_load" in c else ""
            state = f", {c['state']}" if c.get("state") not in (None, "active") else ""
            parts.append(f"{name} {h.get('status')}{': ' + h['reason'] if h.get('reason') else ''}{load}{state}")
        out["CAN"] = _v(_worst(items), "; ".join(parts))

    items = _claim(health, claimed, "gnss")
    g = st.get("gnss")
    if not items and not g:
        out["GNSS"] = _v(OFF, "no GNSS receiver configured")
    else:
        fixes = f", {g.get('fixes')} fixes" if g else ""
        reason = "; ".join(_bad(items)) or (items[0][1].get("reason", "") if items else "running")
        out["GNSS"] = _v(_worst(items), reason + fixes)

    items = _claim(health, claimed, "camera")
    if not items:
        off = configured.get("camera")
        out["camera"] = _v(FAILED, "configured but not running") if off else _v(OFF, "no camera configured")
    else:
        out["camera"] = _v(_worst(items), "; ".join(f"{n}: {h.get('reason') or h.get('status')}" for n, h in items))

    # models: the behaviour model (its manifest's hash is checked when the agent loads it)
    items = _claim(health, claimed, "behaviour")
    if behaviour is None and not items:
        out["models"] = _v(OFF, "behaviour detection not configured")
    else:
        model = extra.get("model")
        if _bad(items):
            reason = "; ".join(_bad(items))
        elif model:
            reason = f"{model.get('version')} (manifest verified)"
        else:
            reason = "rule detectors only" if "verdicts" in extra or configured else "running"
        if behaviour and behaviour.get("failures"):
            reason += f"; {behaviour['failures']} detector failures"
        verdict = _worst(items)
        if behaviour and behaviour.get("detector_errors") and verdict == OK:
            verdict, reason = DEGRADED, f"{reason}; {behaviour['detector_errors']} detector errors"
        out["models"] = _v(verdict, reason)

    out["ledger"] = _judge_ledger(ledger, _claim(health, claimed, "ledger"))
    out["network"] = _judge_network(net, _claim(health, claimed, "mqtt", "outbox", "cell", "pc5"))
    out["FL"] = _judge_fl(fl, _claim(health, claimed, "fl"))
    for name, key in (("ledger", "ledger"), ("FL", "fl")):
        if out[name]["verdict"] == OFF and configured.get(key):
            out[name] = _v(FAILED, "configured but not running (see the agent's log)")
    out["keys"] = _judge_keys(st, extra, _claim(health, claimed, "identity", "keys"))

    rest = [(n, h) for n, h in health.items() if n not in claimed]
    if rest:
        bad = _bad(rest)
        out["services"] = _v(_worst(rest), "; ".join(bad) if bad else f"{len(rest)} ok")
    return out


def _judge_ledger(ledger: Any, items: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    if not ledger:
        return _v(OFF, "no ledger configured")
    verdict = _worst(items)
    if "sync" in ledger:  # an RSU's node
        peers = len(ledger.get("peers") or {})
        where = f"height {ledger.get('height')}, {peers} peers"
        if ledger.get("sync") == "catching up":
            return _v(max(verdict, DEGRADED, key=_RANK.__getitem__), f"catching up ({where})")
        if not ledger.get("is_validator"):
            return _v(verdict, f"following, not a validator ({where})")
        return _v(verdict, f"in consensus, validator ({where})")
    cells = ledger.get("cells") or {}
    problems = [f"cell {c}: {s['problem']}" for c, s in cells.items() if s.get("problem")]
    if problems:
        return _v(max(verdict, DEGRADED, key=_RANK.__getitem__), "light client: " + "; ".join(problems))
    if not cells:
        return _v(verdict, "light client: following no cell yet")
    heights = ", ".join(f"{c} trusted height {s.get('trusted_height')}" for c, s in cells.items())
    return _v(verdict, "light client: " + heights)


def _judge_network(net: Any, items: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    net = net or {}
    outbox = net.get("outbox") or {}
    backlog = int(outbox.get("pending") or 0) + int(outbox.get("sent_unconfirmed") or 0)
    age = outbox.get("oldest_age_s")
    queued = f"outbox {backlog} queued" + (f", oldest {age:.0f}s" if backlog and age is not None else "")
    if outbox.get("refused") or outbox.get("evicted"):
        queued += f", {outbox.get('evicted', 0)} evicted, {outbox.get('refused', 0)} refused"
    mqtt = net.get("mqtt")
    if mqtt is None and not net.get("broker") and not items:
        return _v(OFF, "no broker configured" + (f"; {queued}" if backlog else ""))
    verdict = _worst(items)
    bad = _bad(items)
    if mqtt is not None and mqtt.get("connected"):
        rtt = mqtt.get("rtt_ms")
        head = f"broker {net.get('broker')} connected" + (f", RTT {rtt:.0f} ms" if rtt is not None else "")
    else:
        err = (mqtt or {}).get("last_error")
        head = f"broker {net.get('broker')} not connected" + (f" ({err})" if err and not bad else "")
        verdict = max(verdict, DEGRADED, key=_RANK.__getitem__)
    stale = backlog and age is not None and age > BACKLOG_STALE_S
    if outbox.get("evicted") or outbox.get("refused") or stale:
        verdict = max(verdict, DEGRADED, key=_RANK.__getitem__)
    return _v(verdict, "; ".join([head, queued, *bad]))


def _judge_fl(fl: Any, items: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    if not fl:
        return _v(OFF, "federated learning not configured")
    verdict = _worst(items)
    model = fl.get("model")
    parts = [f"{fl.get('role')}, task {fl.get('task')}", f"model {model[:12]}" if model else "no model yet"]
    if fl.get("role") == "client":
        parts.append(f"{len(fl.get('rounds_done') or [])} rounds")
    else:
        parts.append(f"round {fl.get('round')}")
    refused = fl.get("refused") or {}
    if refused:
        verdict = max(verdict, DEGRADED, key=_RANK.__getitem__)
        parts.append("refused models: " + ", ".join(f"{k} x{v}" for k, v in refused.items()))
    return _v(verdict, "; ".join(parts + _bad(items)))


def _judge_keys(st: dict[str, Any], extra: dict[str, Any], items: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    from tools.cli_keys import EXPIRY_WARN_DAYS, credential_report

    did = st.get("did")
    verdict = _worst(items)
    if not did:
        return _v(FAILED if not items else max(verdict, DEGRADED, key=_RANK.__getitem__), "no device key")
    parts = [f"device key {did if len(did) <= 31 else did[:28] + '...'}"]
    creds = credential_report(extra.get("credentials_dirs") or [])
    for c in creds:
        name = Path(c["file"]).name
        if c["state"] == "expired":
            verdict = FAILED
            parts.append(f"{c['kind']} credential {name} expired {c['expires'][:10]}")
        elif c["state"] == "expiring":
            verdict = max(verdict, DEGRADED, key=_RANK.__getitem__)
            parts.append(f"{c['kind']} credential expires in {c['days_left']:.0f} days (< {EXPIRY_WARN_DAYS})")
        elif c["state"] == "unreadable":
            verdict = max(verdict, DEGRADED, key=_RANK.__getitem__)
            parts.append(f"credential {name} unreadable")
    ok = [c for c in creds if c["state"] in ("ok", "no expiry")]
    if ok:
        parts.append(f"{len(ok)} credential{'s' if len(ok) > 1 else ''} valid")
    elif not creds and "credentials_dirs" in extra:
        parts.append("no credentials")
    return _v(verdict, "; ".join(parts + _bad(items)))


# --- output --------------------------------------------------------------------------------


def _fmt_uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _paint(text: str, verdict: str, colour: bool) -> str:
    return f"{_COLOURS[verdict]}{text}\033[0m" if colour else text


def render(st: dict[str, Any], verdicts: dict[str, dict[str, str]] | None = None, *, colour: bool = False) -> str:
    """The human report, 80 columns; ``verdicts`` default to those judged from ``st`` alone."""
    verdicts = judge(st) if verdicts is None else verdicts
    worst = overall(verdicts)
    node = f"node      {st.get('node_id')}  (role {st.get('role')}, version {st.get('version')}, pid {st.get('pid')})"
    lines = [
        node[:WIDTH],
        f"uptime    {_fmt_uptime(float(st.get('uptime_s', 0)))}",
        f"overall   {_paint(worst.upper(), worst, colour)}",
        "",
        "subsystem  verdict   reason",
    ]
    indent = " " * 21  # under the reason column
    for name, v in verdicts.items():
        wrapped = textwrap.wrap(v["reason"] or "-", WIDTH - len(indent), break_on_hyphens=False) or ["-"]
        verdict = _paint(f"{v['verdict']:<9}", v["verdict"], colour)
        lines.append(f"{name:<10} {verdict} {wrapped[0]}")
        lines.extend(indent + w for w in wrapped[1:])
    return "\n".join(lines) + "\n"
