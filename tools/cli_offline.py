"""What the disk tells when the agent is not running: shared by ``acc status`` (its offline
fallback), ``acc bundle`` and ``acc selftest``.

Everything here only reads, and reads databases read-only (SQLite ``file:...?mode=ro`` URIs), so
it is safe next to a running agent too. The device key file is opened only to derive the public
DID: no key material is ever returned.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_DATA_DIR",
    "config_path",
    "data_dir_for",
    "offline_report",
    "render_offline",
]

DEFAULT_CONFIG = "/etc/autochain/agent.toml"
DEFAULT_DATA_DIR = "/var/lib/autochain"


def config_path(explicit: str | Path | None) -> str | None:
    """The config file ``acc`` reads: ``--config``, else the agent's default when it exists."""
    if explicit:
        return str(explicit)
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None


def data_dir_for(
    data_dir: str | Path | None, config: str | Path | None = None, socket: Path | None = None
) -> tuple[Path, str]:
    """(data dir, where that came from): ``--data-dir``; the config's ``agent.data_dir``; the
    directory of an explicit socket that looks like a data dir (the agent's default socket is
    ``<data_dir>/diag.sock``); else the packaged default."""
    if data_dir:
        return Path(data_dir), "--data-dir"
    path = config_path(config)
    if path is not None:
        try:
            from agent.config import load_config

            return Path(load_config(path).agent.data_dir), f"agent.data_dir of {path}"
        except Exception:  # noqa: BLE001 - a bad config: fall through to the other guesses
            pass
    if socket is not None and any((socket.parent / d).is_dir() for d in ("keys", "outbox", "ledger")):
        return socket.parent, "the socket's directory"
    if env := os.environ.get("ACC_AGENT__DATA_DIR"):
        return Path(env), "ACC_AGENT__DATA_DIR"
    return Path(DEFAULT_DATA_DIR), "default"


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)


def keys_offline(data_dir: Path) -> dict[str, Any]:
    from agent.keystore import DeviceKeyMissing, KeyStoreError, inspect_device_key, key_path

    path = key_path(data_dir)
    try:
        report = inspect_device_key(data_dir)
    except DeviceKeyMissing:
        return {"key_file": str(path), "did": None, "problem": "no device key (acc keys init)"}
    except KeyStoreError as err:
        return {"key_file": str(path), "did": None, "problem": str(err)}
    return {
        "key_file": str(path),
        "did": report.identity.did,
        "mode": f"{report.mode:04o}",
        "problem": "; ".join(report.problems) or None,
    }


def outbox_offline(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "outbox" / "outbox.db"
    if not path.is_file():
        return None
    out: dict[str, Any] = {"file": str(path), "size_bytes": path.stat().st_size}
    try:
        with _ro(path) as db:
            by_state = dict(db.execute("SELECT state, count(*) FROM entries GROUP BY state").fetchall())
            oldest = db.execute("SELECT min(created) FROM entries WHERE state != 'retired'").fetchone()[0]
            used = db.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]
    except sqlite3.Error as err:
        out["error"] = f"cannot read: {err}"
        return out
    out.update(
        pending=int(by_state.get("pending", 0)),
        sent_unconfirmed=int(by_state.get("sent", 0)),
        retired=int(by_state.get("retired", 0)),
        bytes=int(used),
        oldest_age_s=None if oldest is None else round(max(0.0, time.time() - float(oldest)), 1),
    )
    return out


def ledger_offline(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "ledger" / "blocks.db"
    if not path.is_file():
        return None
    out: dict[str, Any] = {"file": str(path)}
    try:
        with _ro(path) as db:
            height = db.execute("SELECT MAX(height) FROM blocks").fetchone()[0]
            txs = db.execute("SELECT count(*) FROM txs").fetchone()[0]
    except sqlite3.Error as err:
        out["error"] = f"cannot read: {err}"
        return out
    out.update(height=int(height or 0), txs=int(txs))
    return out


def offline_report(data_dir: Path, source: str = "", log_lines: int = 10) -> dict[str, Any]:
    """The disk's view of the node: keys (DID only), outbox depth, ledger height, last log lines."""
    from tools.cli_logs import recent_lines

    report: dict[str, Any] = {
        "agent_running": False,
        "data_dir": str(data_dir),
        "data_dir_source": source,
        "data_dir_exists": data_dir.is_dir(),
    }
    report["keys"] = keys_offline(data_dir)
    report["outbox"] = outbox_offline(data_dir)
    report["ledger"] = ledger_offline(data_dir)
    try:
        log_source, lines = recent_lines(log_lines, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001 - logs are a bonus here, never a reason to fail
        log_source, lines = f"unreadable: {err}", []
    report["logs"] = {"source": log_source, "lines": [entry["text"] for entry in lines]}
    return report


def render_offline(rep: dict[str, Any]) -> str:
    lines = [f"data dir  {rep['data_dir']}" + ("" if rep["data_dir_exists"] else "  (does not exist)")]
    k = rep["keys"]
    if k.get("did"):
        lines.append(f"identity  {k['did'][:70]}")
        lines.append(f"key file  {k['key_file']} (mode {k.get('mode')})")
    else:
        lines.append(f"identity  none: {k.get('problem')}")
    if k.get("did") and k.get("problem"):
        lines.append(f"          UNSAFE: {k['problem'][:68]}")
    ob = rep["outbox"]
    if ob is None:
        lines.append("outbox    none on disk")
    elif "error" in ob:
        lines.append(f"outbox    {ob['file']}: {ob['error']}")
    else:
        age = ob["oldest_age_s"]
        lines.append(
            f"outbox    {ob['pending']} pending, {ob['sent_unconfirmed']} sent awaiting receipt,"
            f" {ob['retired']} retired"
        )
        lines.append(
            f"          {ob['bytes'] / 2**20:.2f} MiB"
            + (f"; oldest undelivered {age:.0f} s" if age is not None else "")
        )
    lg = rep["ledger"]
    if lg is None:
        lines.append("ledger    no block store on disk")
    elif "error" in lg:
        lines.append(f"ledger    {lg['file']}: {lg['error']}")
    else:
        lines.append(f"ledger    height {lg['height']}, {lg['txs']} transactions")
    logs = rep["logs"]
    lines.append(f"logs      {logs['source'][:70]}")
    lines.extend(f"  {line[:76]}" for line in logs["lines"])
    return "\n".join(lines) + "\n"


def status_offline(args: Any, code: int) -> int:
    """``acc status`` with no agent answering: say so, print what the disk tells, keep ``code``."""
    import json

    data_dir, source = data_dir_for(
        getattr(args, "data_dir", None), getattr(args, "config", None), getattr(args, "socket", None)
    )
    rep = offline_report(data_dir, source)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(rep, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"agent not running: reading state on disk (data dir from {source})\n\n")
        sys.stdout.write(render_offline(rep))
    return code
