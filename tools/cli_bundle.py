"""``acc bundle``: a support archive (tar.gz) to attach to a ticket.

Contents: ``config.json`` (the config file and the effective config, secrets redacted: values of
password/secret/token keys are replaced, ``*_file`` paths are kept but the files are never read or
included), ``agent/<cmd>.json`` (status, net, ledger, cell, pc5, fl, behaviour answers when the
agent runs) or ``offline.json`` (keys' DID, outbox and ledger read-only from disk), ``model.json``,
``versions.json`` (acc-agent, Python, installed packages), ``logs.txt`` (recent log lines) and
``README.txt``. No key material: the device key file is opened only to derive its DID, and every
member is scrubbed of PEM private-key blocks before it is written.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import sys
import tarfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import exitcodes

__all__ = ["build_bundle", "redact", "register"]

AGENT_COMMANDS = ("status", "net", "ledger", "cell", "pc5", "fl", "behaviour")
SECRET_KEY = re.compile(r"pass(word|phrase)?|secret|token|credential|private", re.IGNORECASE)
REDACTED = "<redacted>"
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bundle",
        help="write a support archive (config redacted, agent answers or disk state, versions, logs)",
        description="Collect what support needs into a tar.gz, without secrets or key material. "
        "Exit status: 0 written (with or without a running agent), 1 the archive cannot be written.",
    )
    p.add_argument("-o", "--output", type=Path, help="archive path (default ./acc-bundle-<node>-<time>.tar.gz)")
    p.add_argument("--config", help="agent config (default /etc/autochain/agent.toml when it exists)")
    p.add_argument("--socket", type=Path, help="diagnostics socket (default: as for acc status)")
    p.add_argument("--data-dir", help="agent data dir (default: from the config)")
    p.add_argument("--log-file", type=Path, help="the agent's log file (default: journald, then the usual files)")
    p.add_argument("--log-lines", type=int, default=1000, help="recent log lines to include (default 1000)")
    p.add_argument("--json", action="store_true", help="print a JSON summary of what was written")
    p.set_defaults(func=run)


def redact(value: Any, key: str = "") -> Any:
    """A copy with secret values replaced; ``*_file`` / ``*_dir`` entries keep their paths."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if key and SECRET_KEY.search(key) and not key.endswith(("_file", "_dir")) and value not in ("", None):
        return REDACTED
    if isinstance(value, str):
        return scrub(value)
    return value


def scrub(text: str) -> str:
    """Remove PEM private-key blocks (and a truncated one) from ``text``."""
    return _PEM_PRIVATE.sub("<private key removed>", text)


def _config_part(config: str | None) -> tuple[dict[str, Any], Any]:
    import dataclasses

    from agent.config import ConfigError, load_config
    from tools.cli_offline import config_path

    path = config_path(config)
    part: dict[str, Any] = {"file": path, "file_contents": None, "effective": None, "error": None}
    cfg = None
    if path is not None:
        try:
            with open(path, "rb") as fh:
                part["file_contents"] = redact(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as err:
            part["error"] = f"cannot read {path}: {err}"
    try:
        cfg = load_config(path)
        part["effective"] = redact(dataclasses.asdict(cfg))
    except ConfigError as err:
        part["error"] = scrub(str(err))
    env = {k: v for k, v in os.environ.items() if k.startswith("ACC_")}
    part["environment"] = redact(env)
    return part, cfg


def _versions() -> dict[str, Any]:
    from importlib import metadata

    from agent import __version__

    packages = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name] = dist.version
    return {
        "acc-agent": __version__,
        "python": sys.version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower())),
    }


def _agent_answers(socket: Path | None) -> dict[str, Any] | None:
    from agent.diagnostics import DiagError, query
    from tools.cli_status import find_socket

    path = find_socket(socket)
    if path is None:
        return None
    try:
        answers: dict[str, Any] = {"status": query(path, "status")}
    except DiagError:
        return None
    for cmd in AGENT_COMMANDS[1:]:
        try:
            answers[cmd] = query(path, cmd)
        except DiagError as err:
            answers[cmd] = {"error": str(err)}
    return answers


def build_bundle(args: argparse.Namespace) -> tuple[dict[str, bytes], dict[str, Any]]:
    """(archive members by name, summary)."""
    from tools.cli_logs import recent_lines
    from tools.cli_model import model_report
    from tools.cli_offline import data_dir_for, offline_report

    members: dict[str, Any] = {}
    config_part, cfg = _config_part(args.config)
    members["config.json"] = config_part
    members["versions.json"] = _versions()
    if args.data_dir:
        data_dir, source = Path(args.data_dir), "--data-dir"
    elif cfg is not None and config_part["file"]:
        data_dir, source = Path(cfg.agent.data_dir), f"agent.data_dir of {config_part['file']}"
    else:
        data_dir, source = data_dir_for(None, None, args.socket)
    answers = _agent_answers(args.socket)
    if answers is not None:
        for cmd, answer in answers.items():
            members[f"agent/{cmd}.json"] = answer
    members["offline.json"] = offline_report(data_dir, source, log_lines=0)
    members["offline.json"]["agent_running"] = answers is not None
    model, _code = model_report(None, args.config, args.socket)
    members["model.json"] = model
    log_source, entries = recent_lines(args.log_lines, data_dir=data_dir, file=args.log_file)
    members["logs.txt"] = f"# {log_source}\n" + "".join(e["text"] + "\n" for e in entries)
    summary = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "agent_running": answers is not None,
        "node_id": (answers or {}).get("status", {}).get("node_id") or (cfg.agent.node_id if cfg else "") or None,
        "data_dir": str(data_dir),
        "log_source": log_source,
        "log_lines": len(entries),
        "members": sorted([*members, "README.txt"]),
    }
    members["README.txt"] = _readme(summary)
    encoded: dict[str, bytes] = {}
    for name, value in members.items():
        text = value if isinstance(value, str) else json.dumps(redact(value), indent=2, sort_keys=True, default=str)
        encoded[name] = scrub(text).encode()
    return encoded, summary


def _readme(s: dict[str, Any]) -> str:
    state = "answered on its diagnostics socket" if s["agent_running"] else "was not running (disk state only)"
    return (
        f"AutoChain support bundle, {s['created']}\n"
        f"node {s['node_id'] or '?'}; the agent {state}\n"
        f"data dir {s['data_dir']}; logs: {s['log_source']} ({s['log_lines']} lines)\n\n"
        "config.json    config file and effective config, secrets redacted (paths kept, files not read)\n"
        "agent/*.json   the agent's diagnostics answers (when it runs)\n"
        "offline.json   what the disk tells: device DID, outbox, ledger (read-only)\n"
        "model.json     the behaviour model's manifest and hash check\n"
        "versions.json  acc-agent, Python and package versions\n"
        "logs.txt       recent log lines\n"
        "No private keys, passwords or credential files are included.\n"
    )


def _default_name(summary: dict[str, Any]) -> Path:
    node = re.sub(r"[^A-Za-z0-9._-]", "_", summary["node_id"] or platform.node() or "node")
    return Path(f"acc-bundle-{node}-{time.strftime('%Y%m%dT%H%M%S')}.tar.gz")


def write_archive(path: Path, members: dict[str, bytes]) -> None:
    prefix = path.name.removesuffix(".tar.gz").removesuffix(".tgz")
    now = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o600
            tar.addfile(info, io.BytesIO(data))


def run(args: argparse.Namespace) -> int:
    members, summary = build_bundle(args)
    out = args.output or _default_name(summary)
    try:
        write_archive(out, members)
    except OSError as err:
        sys.stderr.write(f"acc bundle: cannot write {out}: {err.strerror or err}\n")
        return exitcodes.FAILURE
    summary["archive"] = str(out)
    summary["bytes"] = out.stat().st_size
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        state = "agent running" if summary["agent_running"] else "agent NOT running: disk state only"
        sys.stdout.write(
            f"wrote {out} ({summary['bytes'] / 1024:.1f} KiB, {len(members)} files; {state})\n"
            f"logs: {summary['log_source']}, {summary['log_lines']} lines\n"
            "no private keys, passwords or credential files are included\n"
        )
    return exitcodes.OK
