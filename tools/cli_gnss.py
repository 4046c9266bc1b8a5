"""``acc gnss``: GNSS tools for installers.

``acc gnss decode FILE [--json] [-v]`` decodes a recorded NMEA log (a receiver capture or a
gpsd regression log: ``#`` comment lines and NUL bytes are fine) and shows, for every
accepted sentence (checksum valid), the merged fix after it. ``--json`` writes one JSON
object per accepted sentence::

    {"line": 10, "sentence": "$GPRMC,...*15", "fix": {"mode": 2, "time": "2005-03-16T09:38:02.000Z",
     "lat": 52.219065, "lon": 21.010851667, "alt": null, "speed": 0.0, "track": 226.0}}

(``alt`` is above mean sea level, ``speed`` in m/s.) Rejected input is summarised on stderr
at the end, by reason; ``-v`` lists each rejected line with its line number. Exit codes: 0
the file was read, 65 it holds no valid NMEA sentence, 66 it cannot be read.

``acc gnss fix [--json] [--watch]`` asks the running agent (diagnostics ``gnss.fix``) for the
receiver's fix: mode, position, speed/heading, satellites used/seen, HDOP, the offset of GNSS
UTC from the system clock and the age of the fix. Exit codes: 0 a fresh 2D/3D fix, 1 no fix
(or a stale one, or no receiver configured), 69 no agent answering.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from agent import exitcodes
from agent.diagnostics import DiagError, default_socket_paths, query
from drivers.nmea import REJECT_REASONS, NmeaReader, ReaderEvent
from hal.types import FixMode, GnssFix

__all__ = ["agent_query", "fix_to_json", "register"]

_CHUNK = 65536
_MODE_NAMES = {FixMode.UNKNOWN: "-", FixMode.NO_FIX: "nofix", FixMode.FIX_2D: "2D", FixMode.FIX_3D: "3D"}


def register(subparsers: Any) -> None:
    """Add the ``gnss`` command group to ``acc``."""
    gnss = subparsers.add_parser("gnss", help="GNSS receiver tools", description=__doc__.split("\n\n")[0])
    sub = gnss.add_subparsers(dest="gnss_command", metavar="SUBCOMMAND")
    sub.required = True
    decode = sub.add_parser(
        "decode",
        help="decode an NMEA log file and show the fix after each sentence",
        description="Decode a recorded NMEA 0183 log; rejected input is summarised on stderr.",
    )
    decode.add_argument("file", metavar="FILE", help="NMEA log (raw capture or gpsd .log)")
    decode.add_argument("--json", action="store_true", help="one JSON object per accepted sentence")
    decode.add_argument(
        "-v",
        "--verbose",
        dest="decode_verbose",
        action="count",
        default=0,
        help="list every rejected line with its line number",
    )
    decode.set_defaults(func=cmd_decode)
    fix = sub.add_parser(
        "fix",
        help="the running agent's GNSS fix, satellites, HDOP and clock offset",
        description="Ask the running agent for the receiver's fix: mode, position, speed/heading, "
        "satellites used/seen, HDOP, GNSS UTC minus the system clock (ms) and the fix's age. "
        "Exit status: 0 a fresh (< 5 s) 2D/3D fix, 1 no fix, a stale fix or no receiver, "
        "69 no agent reachable.",
    )
    add_socket_arg(fix)
    fix.add_argument("--json", action="store_true", help="the agent's answer as JSON (one line per refresh)")
    fix.add_argument("--watch", action="store_true", help="refresh once a second until Ctrl-C")
    fix.set_defaults(func=cmd_fix)


def add_socket_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        type=Path,
        help="diagnostics socket (default: ACC_DIAG_SOCKET, $RUNTIME_DIRECTORY/diag.sock, "
        "/run/autochain/diag.sock, /var/lib/autochain/diag.sock)",
    )


def agent_query(explicit: Path | None, cmd: str, prog: str, **params: Any) -> tuple[Any, int]:
    """(answer, 0) from the running agent; else (None, exit code) after saying why on stderr:
    69 no agent (or one without ``cmd``), 2 the agent refused the parameters."""
    path = explicit or next((p for p in default_socket_paths() if p.exists()), None)
    if path is None:
        tried = ", ".join(str(p) for p in default_socket_paths())
        sys.stderr.write(f"{prog}: no agent socket found (tried {tried}); is acc-agent running?\n")
        return None, exitcodes.UNAVAILABLE
    try:
        return query(path, cmd, **params), exitcodes.OK
    except DiagError as err:
        sys.stderr.write(f"{prog}: {err}\n")
        refused = str(err).startswith("the agent refused") and "unknown command" not in str(err)
        return None, exitcodes.USAGE if refused else exitcodes.UNAVAILABLE


#: a fix older than this (seconds) is stale: exit 1
STALE_FIX = 5.0


def fix_code(ans: dict[str, Any] | None) -> int:
    last = (ans or {}).get("last")
    if not last or int(last.get("mode") or 0) < FixMode.FIX_2D or (last.get("age") or 0) > STALE_FIX:
        return exitcodes.FAILURE
    return exitcodes.OK


def _num(v: Any, fmt: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def render_fix(ans: dict[str, Any] | None) -> str:
    """The ``acc gnss fix`` screen (at most 80 columns)."""
    if ans is None:
        return "no GNSS receiver configured in the agent\n"
    last, fix = ans.get("last"), ans.get("fix")
    if last is None:
        return f"no report from the receiver yet ({ans.get('counters', {}).get('bytes', 0)} bytes read)\n"
    mode = _MODE_NAMES.get(FixMode(int(last["mode"])), "?")
    lines = [f"mode      {mode:<6} ({ans.get('fixes', 0)} reports, last {_num(last.get('age'), '.1f', ' s')} ago)"]
    if fix is None:
        lines.append("fix       none yet")
    else:
        lat, lon = fix.get("lat"), fix.get("lon")
        ns = "-" if lat is None else f"{abs(lat):.7f} {'N' if lat >= 0 else 'S'}"
        ew = "-" if lon is None else f"{abs(lon):.7f} {'E' if lon >= 0 else 'W'}"
        lines.append(f"position  {ns}  {ew}  alt {_num(fix.get('alt'), '.1f', ' m')}")
        speed = fix.get("speed")
        kmh = "" if speed is None else f" ({speed * 3.6:.1f} km/h)"
        lines.append(f"speed     {_num(speed, '.2f', ' m/s')}{kmh}  heading {_num(fix.get('track'), '.1f', ' deg')}")
        when = str(fix.get("time") or "-").replace("+00:00", "Z")
        lines.append(f"fix age   {_num(fix.get('age'), '.1f', ' s')}  (time {when})")
    lines.append(
        f"sats      {_num(last.get('sats_used'), 'd')} used / {_num(last.get('sats_visible'), 'd')} seen"
        f"   HDOP {_num(last.get('hdop'), '.2f')}  VDOP {_num(last.get('vdop'), '.2f')}"
        f"  PDOP {_num(last.get('pdop'), '.2f')}"
    )
    off = ans.get("time_offset_ms")
    lines.append(f"clock     GNSS UTC - system clock = {_num(off, '+.1f', ' ms')}")
    return "\n".join(line[:80] for line in lines) + "\n"


def cmd_fix(args: argparse.Namespace) -> int:
    prog = "acc gnss fix"
    tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    code = exitcodes.OK
    try:
        while True:
            ans, err = agent_query(args.socket, "gnss.fix", prog)
            if err:
                return err
            code = fix_code(ans)
            if args.json:
                sys.stdout.write(json.dumps(ans, sort_keys=True) + "\n")
            else:
                if args.watch and tty:
                    sys.stdout.write("\x1b[H\x1b[2J")
                if args.watch:
                    now = datetime.now(UTC).strftime("%H:%M:%S")
                    sys.stdout.write(f"acc gnss fix  {now} UTC  (Ctrl-C to stop)\n")
                sys.stdout.write(render_fix(ans))
            sys.stdout.flush()
            if not args.watch:
                return code
            if not tty and not args.json:
                sys.stdout.write("\n")
            time.sleep(1.0)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return code


def _time(fix: GnssFix) -> str | None:
    if fix.time is None:
        return None
    return fix.time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fix.time.microsecond // 1000:03d}Z"


def fix_to_json(fix: GnssFix) -> dict[str, Any]:
    """The fix fields ``acc gnss decode --json`` shows."""
    return {
        "mode": int(fix.mode),
        "time": _time(fix),
        "lat": fix.lat,
        "lon": fix.lon,
        "alt": fix.alt_msl,
        "speed": fix.speed,
        "track": fix.track,
    }


def _fmt(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


_HEADER = f"{'LINE':>6}  {'SENTENCE':<8}  {'MODE':<5}  {'TIME':<24}  {'LAT':>13}  {'LON':>14}  " + (
    f"{'ALT(m)':>8}  {'SPEED(m/s)':>10}  {'TRACK':>6}"
)


def _row(ev: ReaderEvent) -> str:
    fix = ev.fix
    return (
        f"{ev.raw.line:>6}  {ev.raw.address:<8}  {_MODE_NAMES[fix.mode]:<5}  {_time(fix) or '-':<24}  "
        f"{_fmt(fix.lat, 13, 9)}  {_fmt(fix.lon, 14, 9)}  {_fmt(fix.alt_msl, 8, 1)}  "
        f"{_fmt(fix.speed, 10, 3)}  {_fmt(fix.track, 6, 1)}"
    )


def cmd_decode(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    verbose = int(getattr(args, "decode_verbose", 0) or 0) + int(getattr(args, "verbose", 0) or 0)
    try:
        handle = open(args.file, "rb")  # noqa: SIM115 - read in chunks below
    except OSError as exc:
        print(f"acc gnss decode: cannot open {args.file}: {exc.strerror}", file=err)
        return exitcodes.NO_INPUT
    reader = NmeaReader(comments=True, keep_rejects=True)
    if not args.json:
        out.write(_HEADER + "\n")
    with handle:
        while True:
            try:
                chunk = handle.read(_CHUNK)
            except OSError as exc:
                print(f"acc gnss decode: error reading {args.file}: {exc.strerror}", file=err)
                return exitcodes.NO_INPUT
            events = reader.feed(chunk) if chunk else reader.flush()
            for ev in events:
                if args.json:
                    record = {"line": ev.raw.line, "sentence": ev.raw.text, "fix": fix_to_json(ev.fix)}
                    out.write(json.dumps(record) + "\n")
                else:
                    out.write(_row(ev) + "\n")
            if not chunk:
                break
    reader.finish()
    out.flush()
    _summary(reader, args.file, verbose, err)
    if reader.counters["sentences"] == 0:
        print(f"acc gnss decode: no valid NMEA sentence in {args.file}", file=err)
        return exitcodes.DATA_ERROR
    return exitcodes.OK


def _summary(reader: NmeaReader, path: str, verbose: int, err: TextIO) -> None:
    c = reader.counters
    if verbose:
        for rej in reader.rejected:
            if rej.reason == "unknown_type":
                continue  # accepted, just not decoded: not an error
            raw = rej.raw.decode("ascii", "backslashreplace")
            print(f"{path}:{rej.line}: {rej.reason}: {raw!r} ({rej.detail})", file=err)
    reasons = Counter({r: c[r] for r in REJECT_REASONS if c.get(r) and r != "unknown_type"})
    rejected = sum(reasons.values())
    detail = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
    print(
        f"acc gnss decode: {c['sentences']} sentences accepted ({c['decoded']} decoded, "
        f"{c['unknown_type']} of types not decoded), {c['reports']} fixes; "
        f"rejected {rejected}{': ' + detail if detail else ''}",
        file=err,
    )
