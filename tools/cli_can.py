"""``acc can``: CAN bus tools for installers.

``acc can decode --dbc DBC [--dbc-bus NAME=DBC ...] [--obd] [--json] LOG`` decodes a recorded
bus log and shows, for every frame it can decode, the timestamp, channel, id, the DBC message
and its signals with their values in the DBC's units, and the VSS name of the signals that have
one (from the ``<dbc stem>.vss.toml`` beside the DBC, or ``--vss``). ``--dbc`` applies to every
channel, ``--dbc-bus can2=gps.dbc`` to one (it wins over ``--dbc``). ``--obd`` also decodes
OBD-II mode 01 responses (ids 0x7E8..0x7EF, and 0x18DAF1xx) without a DBC, multi-frame ones too.
``--json`` writes one JSON object per decoded frame::

    {"timestamp": 1627276799.7216, "channel": "can2", "id": 9, "extended": false,
     "message": "gnss_imu", "signals": {"AccelerationX": {"value": 9.875, "unit": "m/s^2",
     "vss": "Vehicle.Acceleration.Vertical"}, ...}}
    {"timestamp": 1627276799.8117, "channel": "can1", "id": 2024, "extended": false,
     "obd": {"ecu": 0, "values": [{"pid": 13, "name": "Speed", "value": 53, "unit": "km/h",
     "vss": "Vehicle.Speed"}]}}

Log formats: candump text in every form (``candump``, ``-t*``, ``-l``; any suffix but the ones
below, e.g. ``.log`` or ``.txt``, optionally ``.gz``) is read by ``drivers.candump``; ``.asc``,
``.blf``, ``.trc``, ``.csv``, ``.mf4``, ``.db`` by python-can's readers. Frames that do not
decode (unknown ids, wrong lengths, bad lines) are counted and summarised on stderr; ``-v``
lists each. Exit codes: 0 the log was read and something decoded, 65 nothing decoded (or the
log is malformed), 66 the log or a DBC cannot be opened, 2 wrong usage.

Live, from the running agent (diagnostics ``can.stats`` / ``can.recent``):
``acc can stats [--bus NAME] [--json]`` shows per bus the frames received, the rate, the bus load,
decode errors, error frames, overruns, the bus state and the history of its changes (exit 0 all
buses fine, 1 one is bus-off / error-passive / stopped, 69 no agent). ``acc can dump [--bus NAME]
[--id 0x123[,..]] [--decode] [-n N] [--follow] [--json]`` prints the frames as they arrive, like
``candump`` (``  can0  123   [8]  11 22 33 44 55 66 77 88``), ``--decode`` adds the VSS signals
(``name = value unit``); it polls the agent's ring buffer of recent frames with a cursor and
stops after N frames or on Ctrl-C (exit 0; 69 no agent, 2 an unknown bus).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agent import exitcodes
from drivers.can_convert import LOG_SUFFIXES, read_log
from drivers.candump import CandumpError, CandumpParser
from drivers.dbc import DbcDecoder, DecodedMessage
from drivers.isotp import IsoTpConfig, IsoTpError, IsoTpReceiver
from drivers.obd import ObdAddressing, ObdDecodeError, ObdNegativeResponse, decode_response
from hal.errors import DecodeError, DeviceError
from hal.types import CanFrame
from tools.cli_gnss import add_socket_arg, agent_query

__all__ = ["register"]

_PYTHON_CAN_SUFFIXES = frozenset(s for s in LOG_SUFFIXES if s != ".log")
_OBD_ADDRESSING = (ObdAddressing(extended=False), ObdAddressing(extended=True))


def register(subparsers: Any) -> None:
    """Add the ``can`` command group to ``acc``."""
    can_p = subparsers.add_parser("can", help="CAN bus tools", description=__doc__.split("\n\n")[0])
    sub = can_p.add_subparsers(dest="can_command", metavar="SUBCOMMAND")
    sub.required = True
    decode = sub.add_parser(
        "decode",
        help="decode a recorded CAN log with DBCs (and OBD-II responses)",
        description="Decode a CAN log (candump, ASC, BLF, TRC, ...) with DBC files; "
        "undecodable frames are summarised on stderr.",
    )
    decode.add_argument("log", metavar="LOG", help="bus log: candump text/-l, .asc, .blf, .trc, ...")
    decode.add_argument("--dbc", metavar="DBC", help="DBC for every channel")
    decode.add_argument(
        "--dbc-bus",
        metavar="NAME=DBC",
        action="append",
        default=[],
        help="DBC for the channel NAME of the log (repeatable; wins over --dbc)",
    )
    decode.add_argument("--vss", metavar="TOML", help="VSS mapping for --dbc (default: <dbc stem>.vss.toml)")
    decode.add_argument("--obd", action="store_true", help="also decode OBD-II mode 01 responses")
    decode.add_argument("--json", action="store_true", help="one JSON object per decoded frame")
    decode.add_argument("--no-choices", action="store_true", help="show numbers instead of VAL_ choice names")
    decode.add_argument(
        "-v",
        "--verbose",
        dest="decode_verbose",
        action="count",
        default=0,
        help="list every frame or line that did not decode",
    )
    decode.set_defaults(func=cmd_decode)
    stats = sub.add_parser(
        "stats",
        help="the running agent's per-bus counters, load, state and bus-off history",
        description="Per bus: frames received, rate, bus load, decode errors, error frames, overruns, "
        "bus state and its changes (error-active/passive/bus-off) with times. Exit status: 0 all "
        "buses fine, 1 a bus is bus-off, error-passive or stopped, 2 unknown bus, 69 no agent.",
    )
    add_socket_arg(stats)
    stats.add_argument("--bus", metavar="NAME", help="only this bus (the agent's bus name, e.g. can0)")
    stats.add_argument("--json", action="store_true", help="the agent's answer as JSON")
    stats.set_defaults(func=cmd_stats)
    dump = sub.add_parser(
        "dump",
        help="live candump-style dump of the frames the agent receives",
        description="Print the frames the running agent receives, candump style, by polling its ring "
        "buffer of recent frames. Stops after -n frames or on Ctrl-C. Exit status: 0 done (or "
        "interrupted), 1 frames were lost (the ring buffer overran between polls), 2 unknown bus "
        "or bad --id, 69 no agent.",
    )
    add_socket_arg(dump)
    dump.add_argument("--bus", metavar="NAME", help="only this bus (default: every bus)")
    dump.add_argument("--id", metavar="ID[,ID..]", action="append", default=[], help="only these ids (hex)")
    dump.add_argument("--decode", action="store_true", help="also show the decoded signals (VSS names)")
    dump.add_argument("-n", type=int, metavar="N", help="stop after N frames")
    dump.add_argument("--follow", action="store_true", help="keep dumping until Ctrl-C (the default without -n)")
    dump.add_argument("-t", dest="timestamps", action="store_true", help="prefix the receive time (candump -ta)")
    dump.add_argument("--json", action="store_true", help="one JSON object per frame")
    dump.add_argument("--interval", type=float, default=0.2, help=argparse.SUPPRESS)
    dump.set_defaults(func=cmd_dump)


class _Decoders:
    """DbcDecoders by channel, created when a channel first appears."""

    def __init__(self, default: Path | None, per_bus: dict[str, Path], mapping: Path | None) -> None:
        self.default = default
        self.per_bus = per_bus
        self.mapping = mapping
        self._by_channel: dict[str, DbcDecoder | None] = {}

    def load_all(self) -> None:
        """Load every DBC once up front, so a bad one fails before the log is read."""
        for bus, path in self.per_bus.items():
            self._by_channel[bus] = DbcDecoder(path, bus=bus)
        if self.default is not None:
            DbcDecoder(self.default, bus="-", mapping=self.mapping if self.mapping else None)

    def get(self, channel: str) -> DbcDecoder | None:
        try:
            return self._by_channel[channel]
        except KeyError:
            dec = None
            if self.default is not None:
                dec = DbcDecoder(self.default, bus=channel or "can", mapping=self.mapping if self.mapping else None)
            self._by_channel[channel] = dec
            return dec

    def all(self) -> list[DbcDecoder]:
        return [d for d in self._by_channel.values() if d is not None]


def _open_text(path: Path) -> TextIO:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def _frames(path: Path, bad: list[CandumpError | DecodeError]) -> Iterator[CanFrame]:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _PYTHON_CAN_SUFFIXES:
        yield from read_log(path, on_error=bad.append)
        return
    parser = CandumpParser(on_error=bad.append)
    with _open_text(path) as fh:
        for line in fh:
            frame = parser.line(line)
            if frame is not None:
                yield frame


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _message_json(frame: CanFrame, msg: DecodedMessage) -> dict[str, Any]:
    signals: dict[str, Any] = {}
    for s in msg.signals:
        entry: dict[str, Any] = {"value": _json_value(s.value), "unit": s.unit}
        if s.raw is not None:
            entry["raw"] = s.raw
        if s.vss:
            entry["vss"] = s.vss
        signals[s.name] = entry
    return {
        "timestamp": frame.timestamp,
        "channel": frame.channel,
        "id": frame.arbitration_id,
        "extended": frame.is_extended_id,
        "message": msg.name,
        "signals": signals,
    }


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return str(round(value, 9))
    return str(value)


def _ident(frame: CanFrame) -> str:
    return f"{frame.arbitration_id:08X}" if frame.is_extended_id else f"{frame.arbitration_id:03X}"


def _message_text(frame: CanFrame, msg: DecodedMessage) -> str:
    parts = []
    for s in msg.signals:
        text = f"{s.name}={_fmt_value(s.value)}"
        if s.unit:
            text += f" {s.unit}"
        if s.vss:
            text += f" [{s.vss}]"
        parts.append(text)
    return f"{frame.timestamp:.6f} {frame.channel} {_ident(frame)} {msg.name}: " + ", ".join(parts)


class _ObdDecoder:
    """Reassembles and decodes OBD-II responses of a log (no flow control is sent)."""

    def __init__(self) -> None:
        self._rx: dict[tuple[str, bool, int], IsoTpReceiver] = {}
        self._config = IsoTpConfig(padding=None, n_cr=1e9)
        self.errors = 0

    def ecu(self, frame: CanFrame) -> tuple[ObdAddressing, int] | None:
        for addressing in _OBD_ADDRESSING:
            ecu = addressing.ecu_of_response(frame)
            if ecu is not None:
                return addressing, ecu
        return None

    def decode(self, frame: CanFrame, ecu: int) -> dict[str, Any] | None:
        """The response as a JSON-able dict once complete; ``None`` while incomplete.

        Raises ``DecodeError`` (ISO-TP or J1979) for a malformed response.
        """
        key = (frame.channel, frame.is_extended_id, ecu)
        rx = self._rx.get(key)
        if rx is None:
            rx = self._rx[key] = IsoTpReceiver(self._config)
        try:
            payload = rx.on_frame(frame.data, now=frame.timestamp).payload
        except IsoTpError as err:
            raise DecodeError(str(err), where=f"{frame.channel} {_ident(frame)} OBD") from err
        if payload is None:
            return None
        try:
            values = decode_response(payload)
        except ObdNegativeResponse as neg:
            return {"ecu": ecu, "negative": {"service": neg.service, "nrc": neg.nrc, "text": str(neg)}}
        except ObdDecodeError as err:
            raise DecodeError(str(err), where=f"{frame.channel} {_ident(frame)} OBD", raw=payload) from err
        return {
            "ecu": ecu,
            "values": [
                {
                    "pid": v.pid,
                    "name": v.key,
                    "value": v.value.hex() if isinstance(v.value, bytes) else v.value,
                    "unit": v.unit,
                    **({"vss": v.vss} if v.vss else {}),
                }
                for v in values
            ],
        }


def _obd_text(frame: CanFrame, obd: dict[str, Any]) -> str:
    head = f"{frame.timestamp:.6f} {frame.channel} {_ident(frame)} OBD ECU {obd['ecu']}: "
    if "negative" in obd:
        return head + str(obd["negative"]["text"])
    parts = []
    for v in obd["values"]:
        text = f"PID 0x{v['pid']:02X} {v['name']}={_fmt_value(v['value'])}"
        if v["unit"]:
            text += f" {v['unit']}"
        if v.get("vss"):
            text += f" [{v['vss']}]"
        parts.append(text)
    return head + ", ".join(parts)


def _parse_bus_args(items: list[str]) -> dict[str, Path] | str:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, dbc = item.partition("=")
        if not sep or not name or not dbc:
            return f"--dbc-bus takes NAME=DBC, not {item!r}"
        out[name] = Path(dbc)
    return out


def cmd_decode(args: argparse.Namespace) -> int:
    err = sys.stderr
    per_bus = _parse_bus_args(args.dbc_bus)
    if isinstance(per_bus, str):
        print(f"acc can decode: {per_bus}", file=err)
        return exitcodes.USAGE
    if args.dbc is None and not per_bus and not args.obd:
        print("acc can decode: give --dbc, --dbc-bus or --obd", file=err)
        return exitcodes.USAGE
    log_path = Path(args.log)
    for path in [Path(p) for p in ([args.dbc] if args.dbc else [])] + list(per_bus.values()) + [log_path]:
        if not path.is_file():
            print(f"acc can decode: {path}: no such file", file=err)
            return exitcodes.NO_INPUT
    decoders = _Decoders(Path(args.dbc) if args.dbc else None, per_bus, Path(args.vss) if args.vss else None)
    try:
        decoders.load_all()
    except DecodeError as exc:
        print(f"acc can decode: {exc}", file=err)
        return exitcodes.DATA_ERROR
    obd = _ObdDecoder() if args.obd else None
    out = sys.stdout
    verbose = args.decode_verbose
    bad: list[CandumpError | DecodeError] = []
    frames = decoded = 0
    no_dbc: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    reported = 0
    read_error: str | None = None

    def report_bad() -> None:
        nonlocal reported
        if verbose:
            for item in bad[reported:]:
                print(f"skipped: {item}", file=err)
        reported = len(bad)

    try:
        for frame in _frames(log_path, bad):
            frames += 1
            report_bad()
            if obd is not None and (hit := obd.ecu(frame)) is not None:
                try:
                    result = obd.decode(frame, hit[1])
                except DecodeError as exc:
                    failures["obd"] += 1
                    if verbose:
                        print(f"not decoded: {exc}", file=err)
                    continue
                if result is not None:
                    decoded += 1
                    if args.json:
                        row = {
                            "timestamp": frame.timestamp,
                            "channel": frame.channel,
                            "id": frame.arbitration_id,
                            "extended": frame.is_extended_id,
                            "obd": result,
                        }
                        out.write(json.dumps(row) + "\n")
                    else:
                        out.write(_obd_text(frame, result) + "\n")
                continue
            decoder = decoders.get(frame.channel)
            if decoder is None:
                no_dbc[frame.channel] += 1
                continue
            try:
                msg = decoder.decode_message(frame, decode_choices=not args.no_choices)
            except DecodeError as exc:  # counted by the decoder
                if verbose:
                    print(f"not decoded: {exc}", file=err)
                continue
            if msg is None:
                unknown[f"{frame.channel} {_ident(frame)}"] += 1
                if verbose > 1:
                    print(f"unknown id: {frame.channel} {_ident(frame)}", file=err)
                continue
            decoded += 1
            if args.json:
                out.write(json.dumps(_message_json(frame, msg)) + "\n")
            else:
                out.write(_message_text(frame, msg) + "\n")
        report_bad()
    except DeviceError as exc:
        print(f"acc can decode: {exc}", file=err)
        return exitcodes.NO_INPUT
    except BrokenPipeError:
        raise
    except OSError as exc:
        print(f"acc can decode: {log_path}: {exc.strerror or exc}", file=err)
        return exitcodes.NO_INPUT
    except DecodeError as exc:
        read_error = str(exc)
    out.flush()

    for dec in decoders.all():
        for key, n in dec.counters.items():
            if key.startswith("error.") and n:
                failures[key[6:]] += n
    summary = [f"{frames} frames read, {decoded} decoded"]
    if unknown:
        top = ", ".join(f"{k} ({n})" for k, n in unknown.most_common(5))
        summary.append(f"{sum(unknown.values())} of ids no DBC has: {top}")
    if no_dbc:
        summary.append(f"{sum(no_dbc.values())} on channels without a DBC: {', '.join(sorted(no_dbc))}")
    if failures:
        summary.append("not decodable: " + ", ".join(f"{k} {n}" for k, n in sorted(failures.items())))
    if bad:
        kinds = Counter(getattr(b, "kind", "malformed") for b in bad)
        summary.append("lines skipped: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print("acc can decode: " + "; ".join(summary), file=err)
    if read_error is not None:
        print(f"acc can decode: reading stopped: {read_error}", file=err)
        return exitcodes.DATA_ERROR
    if decoded == 0:
        print("acc can decode: nothing decoded", file=err)
        return exitcodes.DATA_ERROR
    return exitcodes.OK


# --- live: acc can stats / acc can dump ---------------------------------------------------------

_BAD_STATES = frozenset({"bus_off", "passive", "stopped"})
_STATE_NAMES = {"active": "error-active", "passive": "error-passive", "bus_off": "bus-off"}


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def render_stats(answer: dict[str, Any]) -> str:
    """The ``acc can stats`` screen (at most 80 columns)."""
    lines: list[str] = []
    for bus, st in answer.items():
        state = str(st.get("state", "?"))
        lines.append(
            f"{bus:<8} {_STATE_NAMES.get(state, state).upper():<14} {st['rx_frames']:>10} frames rx"
            f"  {st.get('rate', 0.0):>8.1f} fr/s  load {100 * st['bus_load']:5.1f}%"
        )
        lines.append(
            f"{'':<8} errors: {st['decode_errors']} undecodable, {st['error_frames']} error frames,"
            f" {st['overruns']} overruns, {st['bus_off_count']} bus-off"
        )
        for ev in st.get("state_history") or []:
            before = _STATE_NAMES.get(str(ev.get("from")), ev.get("from") or "opened")
            lines.append(f"{'':<8} {_when(ev['time'])}  {before} -> {_STATE_NAMES.get(ev['to'], ev['to'])}")
        for err in (st.get("recent_errors") or [])[-3:]:
            lines.append(f"{'':<8} {_when(err['timestamp'])}  error frame {err['id']:08X} {err['data']}")
        lines.append("")
    if not answer:
        lines.append("no CAN bus configured in the agent")
    return "\n".join(line[:80] for line in lines).rstrip("\n") + "\n"


def cmd_stats(args: argparse.Namespace) -> int:
    params = {"bus": args.bus} if args.bus else {}
    answer, code = agent_query(args.socket, "can.stats", "acc can stats", **params)
    if code:
        return code
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_stats(answer))
    bad = [bus for bus, st in answer.items() if st.get("state") in _BAD_STATES]
    return exitcodes.FAILURE if bad else exitcodes.OK


def _parse_ids(items: list[str]) -> list[int] | str:
    ids: list[int] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                ids.append(int(part, 16))
            except ValueError:
                return f"--id {part!r} is not a hex CAN id"
    return ids


def dump_line(f: dict[str, Any], width: int = 4, timestamps: bool = False) -> str:
    """One frame as candump prints it: ``  can0  123   [8]  11 22 33 44 55 66 77 88``."""
    data = bytes.fromhex(f["data"])
    ident = f"{f['id']:08X}" if f["extended"] or f["error"] else f"{f['id']:03X}"
    length = f"[{len(data):02d}]" if f["fd"] else f"[{len(data)}]"
    head = f"({f['timestamp']:.6f})" if timestamps else ""
    rows = [data[i : i + 16] for i in range(0, len(data), 16)] or [b""]
    text = f"{head}  {f['bus']:<{width}}  {ident}   {length}  {rows[0].hex(' ').upper()}"
    indent = " " * (len(text) - len(rows[0].hex(" ")))
    out = [text] + [indent + r.hex(" ").upper() for r in rows[1:]]
    if f["error"]:
        out[-1] += "   ERRORFRAME"
    return "\n".join(out)


def signal_lines(f: dict[str, Any]) -> list[str]:
    out = []
    for sig in f.get("signals") or []:
        value = sig["value"]
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        out.append(f"        {sig['name']} = {shown} {sig['unit']}".rstrip()[:80])
    return out


def cmd_dump(args: argparse.Namespace) -> int:
    prog = "acc can dump"
    ids = _parse_ids(args.id)
    if isinstance(ids, str):
        sys.stderr.write(f"{prog}: {ids}\n")
        return exitcodes.USAGE
    if args.n is not None and args.n < 1:
        sys.stderr.write(f"{prog}: -n must be at least 1\n")
        return exitcodes.USAGE
    params: dict[str, Any] = {}
    if args.bus:
        params["bus"] = args.bus
    if ids:
        params["ids"] = ids
    start, code = agent_query(args.socket, "can.recent", prog, **params)
    if code:
        return code
    width = max(4, len(args.bus or ""))
    cursor = int(start["cursor"])
    shown, lost = 0, False
    limit = args.n if args.n is not None and not args.follow else None
    try:
        while limit is None or shown < limit:
            answer, code = agent_query(args.socket, "can.recent", prog, cursor=cursor, **params)
            if code:
                return code
            cursor = int(answer["cursor"])
            if answer.get("lost") and not lost:
                lost = True
                sys.stderr.write(f"{prog}: frames were lost (the agent's ring buffer overran)\n")
            for f in answer["frames"]:
                if limit is not None and shown >= limit:
                    break
                if args.json:
                    if not args.decode:
                        f = {k: v for k, v in f.items() if k != "signals"}
                    sys.stdout.write(json.dumps(f, sort_keys=True) + "\n")
                else:
                    width = max(width, len(f["bus"]))
                    sys.stdout.write(dump_line(f, width, args.timestamps) + "\n")
                    if args.decode:
                        sys.stdout.writelines(line + "\n" for line in signal_lines(f))
                shown += 1
            sys.stdout.flush()
            if not answer["frames"]:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        sys.stdout.flush()
    return exitcodes.FAILURE if lost else exitcodes.OK
