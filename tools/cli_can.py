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
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from collections.abc import Iterator
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
