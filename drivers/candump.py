"""A sans-IO parser for candump text, in every form ``cantools decode`` reads.

* ``candump can0``: ``  vcan0  0C8   [8]  F0 00 00 00 00 00 00 00``
  (``-a`` adds a trailing ASCII column, which is ignored; ``remote request`` is a remote frame)
* ``candump -tz`` / ``-td`` / ``-ta``: the same after ``(000.000000)`` (seconds)
* ``candump -tA``: after ``(2020-12-19 12:04:45.485261)`` (a local date; read as ``tz``)
* ``candump -l`` log: ``(1594172461.968006) vcan0 0C8#F000000000000000``, optionally followed by
  ``T``/``R`` (transmitted/received); ``ID#R`` remote frames; CAN FD ``ID##<flags><data>``

An id written with more than 3 hex digits is extended (candump prints 8). A payload of more
than 8 bytes, or a ``[NN]`` length written with a leading zero (candump's CAN FD form) or the
``##`` form, makes a CAN FD frame. Timestamps are seconds (relative ones are kept as they are,
absolute ones become Unix time); a line without one gets 0.0.

Lines that are not frames are *reported and skipped*: error frames (``ERROR``, ``ERRORFRAME``,
or an id with the CAN_ERR_FLAG bit) and anything malformed become ``CandumpError`` records with
their line number; blank lines and ``#`` comments are ignored. Nothing here reads a file:
``CandumpParser.feed(text)`` takes chunks, ``parse_line()`` one line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from hal.errors import DecodeError
from hal.types import CanFrame

__all__ = ["CandumpError", "CandumpParser", "iter_candump", "parse_line"]

log = logging.getLogger(__name__)
#: level of per-frame logs (below DEBUG)
TRACE = 5

#: SocketCAN's error-frame flag in the CAN id (linux/can.h)
CAN_ERR_FLAG = 0x20000000

_TS_REL = r"\((?P<ts>\d+(?:\.\d*)?)\)"
_TS_ABS = r"\((?P<date>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?)\)"

# (ts) chan ID#DATA [T|R]   /  ID#R[dlc]  /  ID##F<data>
_LOG = re.compile(
    r"^\s*" + _TS_REL + r"\s+(?P<chan>\S+)\s+(?P<id>[0-9A-Fa-f]+)"
    r"(?:(?P<fd>##)(?P<flags>[0-9A-Fa-f])|#)"
    r"(?P<data>R[0-9A-Fa-f]?|[0-9A-Fa-f]*)(?:_(?P<dlc8>[0-9A-Fa-f]))?(?:\s+(?P<dir>[TR]))?\s*$"
)
# [(ts)] chan ID [len] XX XX ...  [ascii]
_TEXT = re.compile(
    r"^\s*(?:" + _TS_REL + r"|" + _TS_ABS + r")?\s*(?P<chan>\S+)\s+(?P<id>[0-9A-Fa-f]+)\s+"
    r"\[(?P<len>\d+)\]\s*(?P<data>remote request|(?:[0-9A-Fa-f]{2}(?: +|$))*)(?P<rest>.*)$"
)
_ERROR_WORD = re.compile(r"^\s*(?:\([^)]*\)\s*)?\S+\s+ERROR\s*$")


@dataclass(frozen=True, slots=True)
class CandumpError:
    """A line that was not a frame."""

    line_no: int
    #: "error_frame" or "malformed"
    kind: str
    reason: str
    line: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.reason}: {self.line.strip()!r}"


class _Skip(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _frame(
    *,
    ident: str,
    data: bytes,
    chan: str,
    ts: float,
    is_fd: bool,
    remote: bool = False,
    remote_dlc: int = 0,
    brs: bool = False,
    esi: bool = False,
    is_rx: bool = True,
) -> CanFrame:
    can_id = int(ident, 16)
    if can_id & CAN_ERR_FLAG:
        raise _Skip("error_frame", f"error frame (id 0x{can_id:08X})")
    extended = len(ident) > 3
    try:
        return CanFrame(
            arbitration_id=can_id,
            data=data,
            is_extended_id=extended,
            is_fd=is_fd or len(data) > 8,
            is_remote_frame=remote,
            bitrate_switch=brs,
            error_state_indicator=esi,
            is_rx=is_rx,
            channel=chan,
            timestamp=ts,
            remote_dlc=remote_dlc,
        )
    except ValueError as err:
        raise _Skip("malformed", str(err)) from err


def _parse(line: str, tz: tzinfo | None) -> CanFrame | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    if _ERROR_WORD.match(line) or "ERRORFRAME" in line:
        raise _Skip("error_frame", "error frame")
    mo = _LOG.match(line)
    if mo:
        ts = float(mo["ts"])
        body = mo["data"]
        is_rx = mo["dir"] != "T"
        if mo["fd"]:
            if body.startswith("R") or len(body) % 2:
                raise _Skip("malformed", "bad CAN FD payload")
            flags = int(mo["flags"], 16)
            return _frame(
                ident=mo["id"],
                data=bytes.fromhex(body),
                chan=mo["chan"],
                ts=ts,
                is_fd=True,
                brs=bool(flags & 1),
                esi=bool(flags & 2),
                is_rx=is_rx,
            )
        if body.startswith(("R", "r")):
            dlc = int(body[1:], 16) if len(body) > 1 else 0
            if dlc > 8:
                raise _Skip("malformed", f"remote frame DLC {dlc} > 8")
            return _frame(ident=mo["id"], data=b"", chan=mo["chan"], ts=ts, is_fd=False, remote=True, remote_dlc=dlc)
        if len(body) % 2:
            raise _Skip("malformed", "odd number of hex digits in the data")
        data = bytes.fromhex(body)
        if len(data) > 8:
            raise _Skip("malformed", f"{len(data)} data bytes in a classic CAN frame (at most 8)")
        return _frame(ident=mo["id"], data=data, chan=mo["chan"], ts=ts, is_fd=False, is_rx=is_rx)
    mo = _TEXT.match(line)
    if mo:
        if mo["ts"] is not None:
            ts = float(mo["ts"])
        elif mo["date"] is not None:
            fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in mo["date"] else "%Y-%m-%d %H:%M:%S"
            ts = datetime.strptime(mo["date"], fmt).replace(tzinfo=tz or UTC).timestamp()
        else:
            ts = 0.0
        length_text = mo["len"]
        length = int(length_text)
        if mo["data"] == "remote request":
            if length > 8:
                raise _Skip("malformed", f"remote frame DLC {length} > 8")
            return _frame(ident=mo["id"], data=b"", chan=mo["chan"], ts=ts, is_fd=False, remote=True, remote_dlc=length)
        data = bytes.fromhex(mo["data"].replace(" ", ""))
        rest = mo["rest"].strip()
        if rest and not rest.startswith("'"):  # candump -a prints the bytes as ASCII in quotes
            raise _Skip("malformed", f"unexpected text after the data: {rest[:20]!r}")
        if len(data) != length:
            raise _Skip("malformed", f"length [{length_text}] but {len(data)} data bytes")
        is_fd = len(data) > 8 or (len(length_text) > 1 and length_text.startswith("0"))
        return _frame(ident=mo["id"], data=data, chan=mo["chan"], ts=ts, is_fd=is_fd)
    raise _Skip("malformed", "not a candump line")


def parse_line(line: str, *, line_no: int = 0, tz: tzinfo | None = UTC) -> CanFrame | None:
    """One line: a frame, ``None`` for a blank or comment line, ``DecodeError`` otherwise.

    ``tz`` is the zone of ``candump -tA`` dates (candump prints local time; default UTC).
    """
    try:
        return _parse(line, tz)
    except _Skip as skip:
        raise DecodeError(skip.reason, where=f"line {line_no}" if line_no else "", raw=line) from None


class CandumpParser:
    """Incremental parser: ``feed()`` text as it arrives, ``close()`` at the end.

    Bad lines are recorded in ``errors`` (the first ``max_errors`` of them; ``error_count``
    counts all) and passed to ``on_error`` when given. ``channel_map`` renames channels.
    """

    def __init__(
        self,
        *,
        tz: tzinfo | None = UTC,
        channel_map: Mapping[str, str] | Callable[[str], str] | None = None,
        on_error: Callable[[CandumpError], None] | None = None,
        max_errors: int = 1000,
    ) -> None:
        self.tz = tz
        self.channel_map = channel_map
        self.on_error = on_error
        self.max_errors = max_errors
        self.errors: list[CandumpError] = []
        self.error_count = 0
        self.line_no = 0
        self.frame_count = 0
        self._partial = ""

    def feed(self, text: str) -> list[CanFrame]:
        """Frames of the complete lines in ``text`` (plus what was left from the last call)."""
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        return [f for line in lines if (f := self.line(line)) is not None]

    def close(self) -> list[CanFrame]:
        """Frames of a last line that had no newline."""
        rest, self._partial = self._partial, ""
        if rest:
            frame = self.line(rest)
            return [frame] if frame is not None else []
        return []

    def line(self, line: str) -> CanFrame | None:
        """Parse the next line; ``None`` when it is not a frame (recorded when it is bad)."""
        self.line_no += 1
        line = line.rstrip("\r\n")
        try:
            frame = _parse(line, self.tz)
        except _Skip as skip:
            self._report(CandumpError(self.line_no, skip.kind, skip.reason, line))
            return None
        if frame is None:
            return None
        self.frame_count += 1
        if self.channel_map is not None:
            chan = (
                self.channel_map(frame.channel)
                if callable(self.channel_map)
                else self.channel_map.get(frame.channel, frame.channel)
            )
            if chan != frame.channel:
                frame = _rechannel(frame, chan)
        return frame

    def _report(self, err: CandumpError) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)
        else:
            log.log(TRACE, "%s", err)


def _rechannel(frame: CanFrame, channel: str) -> CanFrame:
    from dataclasses import replace

    return replace(frame, channel=channel)


def iter_candump(
    lines: Iterable[str],
    *,
    tz: tzinfo | None = UTC,
    channel_map: Mapping[str, str] | Callable[[str], str] | None = None,
    on_error: Callable[[CandumpError], None] | None = None,
) -> Iterator[CanFrame]:
    """Frames of an iterable of lines (an open text file); bad lines go to ``on_error``."""
    parser = CandumpParser(tz=tz, channel_map=channel_map, on_error=on_error)
    for line in lines:
        frame = parser.line(line)
        if frame is not None:
            yield frame
