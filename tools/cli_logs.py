"""``acc logs``: the agent's recent log lines, from journald or from a log file.

Sources, in order (``--source auto``): journald (``journalctl -u autochain-agent -o json``) when
``journalctl`` exists and has entries for the unit; else a log file: ``--file``, ``$ACC_LOG_FILE``,
``<data_dir>/agent.log``, ``/var/log/autochain/agent.log`` (the agent writes to stderr; a log file
exists where its stderr is redirected to one). Both of the agent's line formats are parsed: the
journal's ``<N>logger: message`` (sd-daemon priority prefix) and the terminal's
``HH:MM:SS LEVEL logger: message``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent import exitcodes

__all__ = ["parse_line", "recent_lines", "register"]

UNIT = "autochain-agent"
LOG_FILES = ("/var/log/autochain/agent.log",)
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_LEVEL_PRIO = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7, "TRACE": 7}
_PREFIX = re.compile(r"^<([0-7])>(.*)$")
_TERMINAL = re.compile(r"^(\d\d:\d\d:\d\d) (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+([\w.\-]+): (.*)$")
_NAMED = re.compile(r"^([\w.\-]+): (.*)$")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "logs",
        help="the agent's recent log lines (journald or log file)",
        description="Show the agent's log: journald (unit autochain-agent) when it has entries, else "
        "the log file (--file, $ACC_LOG_FILE, <data_dir>/agent.log, /var/log/autochain/agent.log). "
        "Exit status: 0 shown, 2 bad arguments, 66 no log source found.",
    )
    p.add_argument("-n", "--lines", type=int, default=50, metavar="N", help="last N lines (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    p.add_argument("--since", metavar="WHEN", help="only newer lines: 30s, 10m, 2h, 1d, HH:MM[:SS] or ISO time")
    p.add_argument(
        "-p", "--priority", choices=PRIORITY_NAMES, help="only lines at this priority or more urgent (e.g. warning)"
    )
    p.add_argument("--source", choices=("auto", "journal", "file"), default="auto", help="where to read")
    p.add_argument("--file", type=Path, help="the agent's log file")
    p.add_argument("--data-dir", help="agent data dir (for <data_dir>/agent.log)")
    p.add_argument("--json", action="store_true", help="JSON: one document; with --follow one object a line")
    p.set_defaults(func=run)


# --- parsing ---------------------------------------------------------------------------------


def parse_line(text: str, *, today: datetime | None = None) -> dict[str, Any]:
    """One log line -> {time, priority, level, logger, message, text}; unknown parts are None."""
    text = text.rstrip("\n")
    entry: dict[str, Any] = {"time": None, "priority": None, "level": None, "logger": None, "message": text}
    rest = text
    if m := _PREFIX.match(rest):
        entry["priority"] = int(m.group(1))
        rest = m.group(2)
    if m := _TERMINAL.match(rest):
        entry["time"] = _time_of_day(m.group(1), today)
        entry["priority"] = _LEVEL_PRIO[m.group(2)]
        entry["logger"], entry["message"] = m.group(3), m.group(4)
    elif m := _NAMED.match(rest):
        entry["logger"], entry["message"] = m.group(1), m.group(2)
    else:
        entry["message"] = rest
    if entry["priority"] is not None:
        entry["level"] = PRIORITY_NAMES[entry["priority"]]
    entry["text"] = text
    return entry


def _time_of_day(hms: str, today: datetime | None) -> float | None:
    now = today or datetime.now()
    try:
        t = datetime.combine(now.date(), datetime.strptime(hms, "%H:%M:%S").time())
    except ValueError:
        return None
    if t > now + timedelta(minutes=5):  # a line from before midnight
        t -= timedelta(days=1)
    return t.timestamp()


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` -> epoch seconds; ``ValueError`` with a readable reason."""
    now = time.time() if now is None else now
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)", text.strip()):
        unit = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - float(m.group(1)) * unit
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            t = datetime.strptime(text, fmt).time()
        except ValueError:
            continue
        return datetime.combine(datetime.fromtimestamp(now).date(), t).timestamp()
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r}: use 30s, 10m, 2h, 1d, HH:MM[:SS] or an ISO time") from None


def _journal_entry(d: dict[str, Any]) -> dict[str, Any]:
    msg = d.get("MESSAGE")
    if isinstance(msg, list):  # journald sends non-UTF-8 messages as byte arrays
        msg = bytes(msg).decode("utf-8", "replace")
    entry = parse_line(str(msg or ""))
    try:
        entry["priority"] = int(d["PRIORITY"])
        entry["level"] = PRIORITY_NAMES[entry["priority"]]
    except (KeyError, ValueError, IndexError):
        pass
    try:
        entry["time"] = int(d["__REALTIME_TIMESTAMP"]) / 1e6
    except (KeyError, ValueError):
        pass
    return entry


# --- sources ---------------------------------------------------------------------------------


def journal_lines(n: int, since: float | None = None) -> list[dict[str, Any]] | None:
    """The unit's last ``n`` journal entries; None when journald is not there or has none."""
    exe = shutil.which("journalctl")
    if exe is None:
        return None
    cmd = [exe, "-u", UNIT, "-o", "json", "--no-pager", "-n", str(n)]
    if since is not None:
        cmd += ["--since", f"@{int(since)}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    entries = []
    for line in out.stdout.splitlines():
        try:
            entries.append(_journal_entry(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return entries or None


def log_file(explicit: Path | None, data_dir: str | Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    candidates = []
    if env := os.environ.get("ACC_LOG_FILE"):
        candidates.append(Path(env))
    if data_dir:
        candidates.append(Path(data_dir) / "agent.log")
    candidates += [Path(p) for p in LOG_FILES]
    return next((p for p in candidates if p.is_file()), None)


def file_lines(path: Path, n: int) -> list[dict[str, Any]]:
    today = datetime.fromtimestamp(path.stat().st_mtime)
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [parse_line(line, today=today) for line in deque(fh, maxlen=max(n, 0))]


def recent_lines(
    n: int,
    *,
    data_dir: str | Path | None = None,
    file: Path | None = None,
    source: str = "auto",
    since: float | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """(where they came from, entries); source ``"none: ..."`` and no entries when there is no log."""
    if source in ("auto", "journal") and file is None:
        entries = journal_lines(n, since)
        if entries is not None:
            return f"journald (unit {UNIT})", entries
        if source == "journal":
            return f"none: journald has no entries for {UNIT} (or no journalctl)", []
    path = log_file(file, data_dir)
    if path is None:
        return "none: no journal entries, no log file (--file or ACC_LOG_FILE)", []
    try:
        entries = file_lines(path, n if since is None else 100_000)
    except OSError as err:
        return f"none: cannot read {path}: {err.strerror or err}", []
    if since is not None:
        entries = [e for e in entries if e["time"] is None or e["time"] >= since][-n:] if n else []
    return f"file {path}", entries


# --- command ---------------------------------------------------------------------------------


def _fmt(e: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(e["time"]).strftime("%m-%d %H:%M:%S") if e["time"] is not None else " " * 14
    level = (e["level"] or "-")[:7]
    logger = f"{e['logger']}: " if e["logger"] else ""
    return f"{when} {level:<7} {logger}{e['message']}"


def _keep(e: dict[str, Any], max_prio: int | None) -> bool:
    return max_prio is None or e["priority"] is None or e["priority"] <= max_prio


def run(args: argparse.Namespace) -> int:
    if args.lines < 0:
        sys.stderr.write("acc logs: -n must be >= 0\n")
        return exitcodes.USAGE
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as err:
        sys.stderr.write(f"acc logs: {err}\n")
        return exitcodes.USAGE
    max_prio = PRIORITY_NAMES.index(args.priority) if args.priority else None
    source, entries = recent_lines(args.lines, data_dir=args.data_dir, file=args.file, source=args.source, since=since)
    if source.startswith("none"):
        sys.stderr.write(f"acc logs: {source}\n")
        return exitcodes.NO_INPUT
    entries = [e for e in entries if _keep(e, max_prio)]
    if args.json and not args.follow:
        sys.stdout.write(json.dumps({"source": source, "entries": entries}, indent=2) + "\n")
        return exitcodes.OK
    if not args.json:
        sys.stderr.write(f"-- {source} --\n")
    for e in entries:
        sys.stdout.write((json.dumps(e) if args.json else _fmt(e)) + "\n")
    sys.stdout.flush()
    if args.follow:
        if source.startswith("journald"):
            return _follow_journal(args.json, max_prio)
        return _follow_file(Path(source.removeprefix("file ")), args.json, max_prio)
    return exitcodes.OK


def _emit(e: dict[str, Any], as_json: bool, max_prio: int | None) -> None:
    if _keep(e, max_prio):
        sys.stdout.write((json.dumps(e) if as_json else _fmt(e)) + "\n")
        sys.stdout.flush()


def _follow_file(path: Path, as_json: bool, max_prio: int | None) -> int:
    with open(path, encoding="utf-8", errors="replace") as fh:
        fh.seek(0, os.SEEK_END)
        buf = ""
        while True:
            chunk = fh.read()
            if not chunk:
                try:
                    if path.stat().st_size < fh.tell():  # rotated or truncated: start over
                        fh.seek(0)
                except FileNotFoundError:
                    pass
                time.sleep(0.5)
                continue
            buf += chunk
            *done, buf = buf.split("\n")
            for line in done:
                _emit(parse_line(line), as_json, max_prio)


def _follow_journal(as_json: bool, max_prio: int | None) -> int:
    exe = shutil.which("journalctl") or "journalctl"
    cmd = [exe, "-u", UNIT, "-o", "json", "--no-pager", "-f", "-n", "0"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    _emit(_journal_entry(json.loads(line)), as_json, max_prio)
                except json.JSONDecodeError:
                    continue
        finally:
            proc.terminate()
    return exitcodes.OK
