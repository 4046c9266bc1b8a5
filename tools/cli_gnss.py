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
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any, TextIO

from agent import exitcodes
from drivers.nmea import REJECT_REASONS, NmeaReader, ReaderEvent
from hal.types import FixMode, GnssFix

__all__ = ["fix_to_json", "register"]

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
