"""Sans-IO NMEA 0183: a byte framer, typed sentence decoding and a fix tracker.

Nothing here reads, writes, sleeps or touches an event loop; callers feed bytes and a
monotonic ``now`` and get values back (the h11 pattern). Three layers:

``NmeaFramer``
    Finds ``$...*hh`` sentences in arbitrary chunks of bytes. Sentences end at CR or LF;
    a ``$`` inside a line starts a new sentence (so concatenated sentences are split and the
    truncated one before it rejected). The checksum is required (gpsd's rule: a sentence
    without ``*hh`` is rejected) and may be upper- or lower-case hex. Rejections are counted
    by reason, never raised: ``checksum`` (wrong or malformed), ``no_checksum``, ``too_long``
    (more than ``MAX_SENTENCE_LENGTH`` characters without a line end), ``garbage`` (bytes
    outside any sentence, NUL or non-ASCII bytes inside one).

``decode()``
    Turns an accepted ``RawSentence`` into a typed sentence (``RMC``, ``GGA``, ``GSA``, ``GSV``,
    ``VTG``, ``ZDA``, ``GST``, ``GLL``, ``GNS``) from any talker (GP, GL, GA, GB, BD, GN, GQ,
    ...). It raises ``UnknownSentenceType`` for other types and proprietary sentences
    (``$PGRME``, ``$PMTK...``) and ``hal.errors.DecodeError`` naming the sentence and field
    for a malformed field.

    *Accepted* means "passed the framer with a valid checksum": that is the set gpsd echoes
    (every ``$`` line of the gpsd ``.chk`` files, proprietary ones included). Unknown and
    proprietary sentences are accepted but not decoded; they are counted under
    ``unknown_type`` and do not change the fix. Sentences whose fields do not decode are
    counted under ``bad_field`` and do not change the fix either.

``FixTracker``
    Merges the sentences of one receiver cycle into a ``hal.types.GnssFix`` the way gpsd
    builds its TPV report (see ``FixTracker``'s docstring for the rules and the cycle
    detection), and says when a cycle's fix is complete and should be reported.

``NmeaReader`` ties the three together and keeps one counters dict.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import ClassVar, TypeAlias

from hal.errors import DecodeError
from hal.types import FixMode, GnssFix

__all__ = [
    "GGA",
    "GLL",
    "GNS",
    "GSA",
    "GST",
    "GSV",
    "KNOTS_TO_MPS",
    "MAX_SENTENCE_LENGTH",
    "REJECT_REASONS",
    "RMC",
    "VTG",
    "ZDA",
    "FixTracker",
    "NmeaFramer",
    "NmeaReader",
    "RawSentence",
    "ReaderEvent",
    "Rejected",
    "SatelliteInView",
    "Sentence",
    "TrackerUpdate",
    "UnknownSentenceType",
    "checksum",
    "decode",
    "parse",
]

log = logging.getLogger(__name__)
#: per-sentence traffic is logged at this level, below DEBUG
TRAFFIC = 5

#: 1 knot in m/s (1852 m / 3600 s), as gpsd's KNOTS_TO_MPS
KNOTS_TO_MPS = 1852.0 / 3600.0
#: Longest accepted sentence, ``$`` to checksum, without CR LF. NMEA 0183 allows 82
#: characters including CR LF, but real receivers exceed that (u-blox, SiRF); like gpsd we
#: allow some slack and reject only clearly over-long lines (two sentences merged by a
#: dropped line end, or binary junk).
MAX_SENTENCE_LENGTH = 100

#: every reason a sentence or byte run can be rejected, as counter names
REJECT_REASONS = ("checksum", "no_checksum", "too_long", "garbage", "unknown_type", "bad_field")

_DELIM = re.compile(rb"[\r\n$]")
_EOL = re.compile(rb"[\r\n]")
_NONPRINTABLE = re.compile(rb"[^\x20-\x7e]")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ADDRESS = re.compile(r"[A-Z0-9]{2,}")


def checksum(body: bytes | str) -> int:
    """XOR of the characters between ``$`` and ``*`` (pass just that part)."""
    data = body.encode("ascii") if isinstance(body, str) else body
    value = 0
    for byte in data:
        value ^= byte
    return value


# --------------------------------------------------------------------------- framing


@dataclass(frozen=True, slots=True)
class RawSentence:
    """A sentence the framer accepted: checksum valid, printable ASCII.

    ``text`` is the sentence as received without the line end (``$GPRMC,...*15``);
    ``address`` the first field (``GPRMC``, ``PGRME``); ``fields`` the data fields after
    the address, checksum excluded; ``line`` the 1-based line of the input it started on.
    """

    text: str
    address: str
    fields: tuple[str, ...]
    line: int = 0

    @property
    def proprietary(self) -> bool:
        """``$P...`` sentences (``PGRME``, ``PMTK001``): manufacturer-defined."""
        return self.address.startswith("P")

    @property
    def talker(self) -> str:
        """``GP``, ``GN``, ``GL``, ...; ``P`` for a proprietary sentence."""
        return "P" if self.proprietary else self.address[:2]

    @property
    def kind(self) -> str:
        """Sentence type: ``RMC``, ``GGA``; for proprietary ones the rest of the address."""
        return self.address[1:] if self.proprietary else self.address[2:]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes the framer or decoder refused: ``reason`` is one of ``REJECT_REASONS``."""

    reason: str
    raw: bytes
    line: int
    detail: str = ""


class _State(enum.Enum):
    LINE_START = 0  # after a line end (or at the start): bytes here are not in a sentence
    SENTENCE = 1  # after a '$'
    COMMENT = 2  # a '#' line, skipped when comments are allowed
    DISCARD = 3  # an over-long run already counted: drop until the next delimiter


class NmeaFramer:
    """Split a byte stream into checksum-valid NMEA sentences.

    ``feed(data)`` accepts chunks of any size (a sentence may be split anywhere) and
    returns the sentences completed by this chunk; ``feed_events(data)`` also returns the
    ``Rejected`` items in stream order. ``flush()`` ends the input (a last sentence without a
    line end is then complete). ``counters`` holds ``bytes``, ``sentences`` (accepted) and
    one counter per rejection reason; ``comments`` counts skipped ``#`` lines when
    ``comments=True`` (gpsd's log files carry a ``#`` header; a live receiver never does, so
    by default a ``#`` line is garbage).

    Line numbers count LF bytes (1-based); a CR-only stream stays on line 1.
    """

    def __init__(self, *, max_length: int = MAX_SENTENCE_LENGTH, comments: bool = False) -> None:
        if max_length < 8:
            raise ValueError(f"max_length {max_length} is too small for any NMEA sentence")
        self.max_length = max_length
        self.comments = comments
        self._buf = bytearray()
        self._state = _State.LINE_START
        self._line = 1
        self._seg_line = 1
        self.counters: dict[str, int] = {"bytes": 0, "sentences": 0, "comments": 0}
        for reason in REJECT_REASONS[:4]:
            self.counters[reason] = 0

    def feed(self, data: bytes) -> list[RawSentence]:
        """Feed bytes; return the sentences they complete, in order."""
        return [ev for ev in self.feed_events(data) if isinstance(ev, RawSentence)]

    def feed_events(self, data: bytes) -> list[RawSentence | Rejected]:
        """Feed bytes; return accepted sentences and rejections, in stream order."""
        out: list[RawSentence | Rejected] = []
        self.counters["bytes"] += len(data)
        buf = self._buf
        buf += data
        pos = 0
        while True:
            if self._state is _State.LINE_START and self.comments and buf.startswith(b"#", pos):
                self._state = _State.COMMENT
            pattern = _EOL if self._state is _State.COMMENT else _DELIM
            match = pattern.search(buf, pos)
            if match is None:
                break
            end = match.start()
            self._finish(bytes(buf[pos:end]), out)
            delim = buf[end]
            if delim == 0x24:  # '$'
                self._state = _State.SENTENCE
                self._seg_line = self._line
            else:
                if delim == 0x0A:
                    self._line += 1
                self._state = _State.LINE_START
                self._seg_line = self._line
            pos = end + 1
        del buf[:pos]
        self._bound(out)
        return out

    def flush(self) -> list[RawSentence | Rejected]:
        """End of input: decide on the pending bytes as if a line end followed."""
        out: list[RawSentence | Rejected] = []
        self._finish(bytes(self._buf), out)
        self._buf.clear()
        self._state = _State.LINE_START
        return out

    def _bound(self, out: list[RawSentence | Rejected]) -> None:
        """Keep the pending, unterminated segment shorter than ``max_length``."""
        pending = len(self._buf)
        if pending == 0:
            return
        if self._state is _State.COMMENT or self._state is _State.DISCARD:
            self._buf.clear()
        elif pending + 1 > self.max_length:  # +1: the '$' already consumed
            if self._state is _State.SENTENCE:
                out.append(self._reject("too_long", b"$" + bytes(self._buf[:40]) + b"...", "no line end"))
            else:
                out.append(self._reject("garbage", bytes(self._buf[:40]) + b"...", "bytes outside a sentence"))
            self._buf.clear()
            self._state = _State.DISCARD

    def _reject(self, reason: str, raw: bytes, detail: str) -> Rejected:
        self.counters[reason] += 1
        log.log(TRAFFIC, "line %d: rejected (%s, %s): %r", self._seg_line, reason, detail, raw[:120])
        return Rejected(reason, raw, self._seg_line, detail)

    def _finish(self, seg: bytes, out: list[RawSentence | Rejected]) -> None:
        state = self._state
        if state is _State.SENTENCE:
            out.append(self._sentence(b"$" + seg))
        elif state is _State.LINE_START:
            if seg.strip(b" \t"):
                out.append(self._reject("garbage", seg, "bytes outside a sentence"))
        elif state is _State.COMMENT:
            self.counters["comments"] += 1
        # DISCARD: already counted

    def _sentence(self, text: bytes) -> RawSentence | Rejected:
        if len(text) > self.max_length:
            return self._reject("too_long", text, f"{len(text)} characters without a line end")
        star = text.find(b"*")
        if star < 0:
            return self._reject("no_checksum", text, "no '*hh' checksum (truncated?)")
        tail = text[star + 1 :]
        end = star + 3
        body = text[1:star]
        if _NONPRINTABLE.search(body):
            return self._reject("garbage", text, "NUL or non-ASCII byte inside the sentence")
        if len(tail) < 2 or tail[0] not in _HEX or tail[1] not in _HEX:
            return self._reject("checksum", text, "checksum is not two hex digits")
        if tail[2:].strip(b" \t"):
            return self._reject("checksum", text, "bytes after the checksum")
        expected = int(tail[:2], 16)
        actual = checksum(body)
        if actual != expected:
            return self._reject("checksum", text, f"checksum {actual:02X}, sentence says {expected:02X}")
        parts = body.decode("ascii").split(",")
        if not _ADDRESS.fullmatch(parts[0]):
            return self._reject("garbage", text, f"bad address field {parts[0]!r}")
        self.counters["sentences"] += 1
        raw = RawSentence(text[:end].decode("ascii"), parts[0], tuple(parts[1:]), self._seg_line)
        log.log(TRAFFIC, "line %d: %s", raw.line, raw.text)
        return raw


# --------------------------------------------------------------------------- decoding


class UnknownSentenceType(DecodeError):
    """A checksum-valid sentence of a type this decoder does not handle (or proprietary)."""


@dataclass(frozen=True, slots=True)
class SatelliteInView:
    prn: int
    elevation: float | None
    azimuth: float | None
    snr: float | None


@dataclass(frozen=True, slots=True)
class RMC:
    """Recommended minimum data. ``lat``/``lon`` signed degrees; ``magvar`` east positive."""

    kind: ClassVar[str] = "RMC"
    talker: str
    time: time | None
    status: str
    lat: float | None
    lon: float | None
    speed_knots: float | None
    track: float | None
    date: date | None
    magvar: float | None = None
    faa_mode: str = ""
    nav_status: str = ""

    @property
    def valid(self) -> bool:
        return self.status in ("A", "D") and self.faa_mode != "N"

    @property
    def speed(self) -> float | None:
        return None if self.speed_knots is None else self.speed_knots * KNOTS_TO_MPS

    @property
    def datetime(self) -> datetime | None:
        return _combine(self.date, self.time)


@dataclass(frozen=True, slots=True)
class GGA:
    """Fix data. ``quality`` 0 = no fix, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 DR."""

    kind: ClassVar[str] = "GGA"
    talker: str
    time: time | None
    lat: float | None
    lon: float | None
    quality: int | None
    sats_used: int | None
    hdop: float | None
    alt_msl: float | None
    geoid_sep: float | None
    dgps_age: float | None = None
    dgps_station: str = ""

    @property
    def valid(self) -> bool:
        return bool(self.quality) and self.lat is not None and self.lon is not None


@dataclass(frozen=True, slots=True)
class GSA:
    """DOP and active satellites. ``fix_type`` 1 no fix, 2 2D, 3 3D."""

    kind: ClassVar[str] = "GSA"
    talker: str
    selection: str
    fix_type: int | None
    prns: tuple[int, ...]
    pdop: float | None
    hdop: float | None
    vdop: float | None
    system_id: int | None = None


@dataclass(frozen=True, slots=True)
class GSV:
    """Satellites in view, one message of a series of ``total_messages``."""

    kind: ClassVar[str] = "GSV"
    talker: str
    total_messages: int | None
    message_number: int | None
    sats_in_view: int | None
    satellites: tuple[SatelliteInView, ...]
    signal_id: str = ""


@dataclass(frozen=True, slots=True)
class VTG:
    """Track made good and ground speed."""

    kind: ClassVar[str] = "VTG"
    talker: str
    track_true: float | None
    track_magnetic: float | None
    speed_knots: float | None
    speed_kmh: float | None
    faa_mode: str = ""

    @property
    def valid(self) -> bool:
        return self.faa_mode not in ("N", "E")

    @property
    def speed(self) -> float | None:
        if self.speed_knots is not None:
            return self.speed_knots * KNOTS_TO_MPS
        if self.speed_kmh is not None:
            return self.speed_kmh / 3.6
        return None


@dataclass(frozen=True, slots=True)
class ZDA:
    """UTC date and time. ``tz_hours``/``tz_minutes`` are the local zone offset."""

    kind: ClassVar[str] = "ZDA"
    talker: str
    time: time | None
    day: int | None
    month: int | None
    year: int | None
    tz_hours: int | None = None
    tz_minutes: int | None = None

    @property
    def date(self) -> date | None:
        if self.day is None or self.month is None or self.year is None:
            return None
        return date(self.year, self.month, self.day)

    @property
    def datetime(self) -> datetime | None:
        return _combine(self.date, self.time)


@dataclass(frozen=True, slots=True)
class GST:
    """Pseudorange error statistics, metres (1 sigma); ``orientation`` degrees true."""

    kind: ClassVar[str] = "GST"
    talker: str
    time: time | None
    rms: float | None
    semi_major: float | None
    semi_minor: float | None
    orientation: float | None
    sd_lat: float | None
    sd_lon: float | None
    sd_alt: float | None


@dataclass(frozen=True, slots=True)
class GLL:
    """Geographic position."""

    kind: ClassVar[str] = "GLL"
    talker: str
    lat: float | None
    lon: float | None
    time: time | None
    status: str
    faa_mode: str = ""

    @property
    def valid(self) -> bool:
        return self.status == "A" and self.faa_mode != "N" and self.lat is not None and self.lon is not None


@dataclass(frozen=True, slots=True)
class GNS:
    """Multi-constellation fix data; ``mode`` has one FAA mode letter per constellation."""

    kind: ClassVar[str] = "GNS"
    talker: str
    time: time | None
    lat: float | None
    lon: float | None
    mode: str
    sats_used: int | None
    hdop: float | None
    alt_msl: float | None
    geoid_sep: float | None
    dgps_age: float | None = None
    dgps_station: str = ""
    nav_status: str = ""

    @property
    def valid(self) -> bool:
        return (
            self.mode[:1] not in ("", "N")
            and self.nav_status not in ("U", "V")
            and self.lat is not None
            and self.lon is not None
        )


Sentence: TypeAlias = RMC | GGA | GSA | GSV | VTG | ZDA | GST | GLL | GNS


def _combine(d: date | None, t: time | None) -> datetime | None:
    if d is None or t is None:
        return None
    return datetime.combine(d, t)


class _Fields:
    """Field access with errors that name the sentence, the field and the line."""

    __slots__ = ("fields", "raw")

    def __init__(self, raw: RawSentence) -> None:
        self.raw = raw
        self.fields = raw.fields

    def error(self, index: int, name: str, message: str) -> DecodeError:
        where = f"{self.raw.address} field {index + 1} ({name})"
        if self.raw.line:
            where = f"line {self.raw.line}: {where}"
        return DecodeError(message, where=where, raw=self.raw.text)

    def text(self, index: int) -> str:
        return self.fields[index].strip() if index < len(self.fields) else ""

    def num(self, index: int, name: str) -> float | None:
        text = self.text(index)
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise self.error(index, name, f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.error(index, name, f"{text!r} is not a finite number")
        return value

    def uint(self, index: int, name: str) -> int | None:
        text = self.text(index)
        if not text:
            return None
        if not text.isdigit():
            raise self.error(index, name, f"{text!r} is not an unsigned integer")
        return int(text)

    def sint(self, index: int, name: str) -> int | None:
        text = self.text(index)
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise self.error(index, name, f"{text!r} is not an integer") from None

    def letter(self, index: int, name: str, allowed: str) -> str:
        text = self.text(index)
        if text and (len(text) != 1 or text not in allowed):
            raise self.error(index, name, f"{text!r} is not one of {', '.join(allowed)}")
        return text

    def tod(self, index: int) -> time | None:
        text = self.text(index)
        if not text:
            return None
        if len(text) < 6 or not text[:6].isdigit() or (len(text) > 6 and text[6] != "."):
            raise self.error(index, "time", f"{text!r} is not hhmmss[.ss]")
        frac = text[7:]
        if frac and not frac.isdigit():
            raise self.error(index, "time", f"{text!r} is not hhmmss[.ss]")
        hh, mm, ss = int(text[:2]), int(text[2:4]), int(text[4:6])
        micro = int((frac + "000000")[:6]) if frac else 0
        if hh > 23 or mm > 59 or ss > 60:
            raise self.error(index, "time", f"{text!r} is not a time of day")
        if ss == 60:  # a leap second: datetime.time cannot hold it
            ss, micro = 59, 999999
        return time(hh, mm, ss, micro, tzinfo=UTC)

    def ddmmyy(self, index: int) -> date | None:
        text = self.text(index)
        if not text:
            return None
        if len(text) != 6 or not text.isdigit():
            raise self.error(index, "date", f"{text!r} is not ddmmyy")
        yy = int(text[4:])
        # gpsd's window: two-digit years map to 1980..2079
        year = 2000 + yy if yy < 80 else 1900 + yy
        try:
            return date(year, int(text[2:4]), int(text[:2]))
        except ValueError as err:
            raise self.error(index, "date", f"{text!r}: {err}") from None

    def coordinate(self, index: int, name: str, hemispheres: str, limit: int) -> float | None:
        """``ddmm.mmmm`` (``dddmm.mmmm``) at ``index``, hemisphere letter at ``index + 1``."""
        text = self.text(index)
        hemi = self.text(index + 1)
        if not text and not hemi:
            return None
        if not text or not hemi:
            raise self.error(index, name, f"value {text!r} with hemisphere {hemi!r}: one is missing")
        if hemi not in hemispheres:
            raise self.error(index + 1, f"{name} hemisphere", f"{hemi!r} is not {' or '.join(hemispheres)}")
        whole, dot, frac = text.partition(".")
        if not whole.isdigit() or len(whole) < 3 or (frac and not frac.isdigit()):
            raise self.error(index, name, f"{text!r} is not d(d)dmm.mmmm")
        degrees, minutes_whole = divmod(int(whole), 100)
        minutes = minutes_whole + (float("0." + frac) if frac else 0.0)
        if minutes >= 60.0:
            raise self.error(index, name, f"{text!r} has {minutes} minutes")
        value = degrees + minutes / 60.0
        if value > limit:
            raise self.error(index, name, f"{text!r} is more than {limit} degrees")
        return -value if hemi == hemispheres[1] else value


def _decode_rmc(f: _Fields, talker: str) -> RMC:
    magvar = f.num(9, "magnetic variation")
    mv_dir = f.letter(10, "magnetic variation direction", "EW")
    if magvar is not None and mv_dir == "W":
        magvar = -magvar
    return RMC(
        talker=talker,
        time=f.tod(0),
        status=f.letter(1, "status", "AVD"),
        lat=f.coordinate(2, "latitude", "NS", 90),
        lon=f.coordinate(4, "longitude", "EW", 180),
        speed_knots=f.num(6, "speed"),
        track=f.num(7, "track"),
        date=f.ddmmyy(8),
        magvar=magvar,
        faa_mode=f.text(11),
        nav_status=f.text(12),
    )


def _decode_gga(f: _Fields, talker: str) -> GGA:
    return GGA(
        talker=talker,
        time=f.tod(0),
        lat=f.coordinate(1, "latitude", "NS", 90),
        lon=f.coordinate(3, "longitude", "EW", 180),
        quality=f.uint(5, "fix quality"),
        sats_used=f.uint(6, "satellites used"),
        hdop=f.num(7, "HDOP"),
        alt_msl=f.num(8, "altitude"),
        geoid_sep=f.num(10, "geoid separation"),
        dgps_age=f.num(12, "DGPS age"),
        dgps_station=f.text(13),
    )


def _decode_gsa(f: _Fields, talker: str) -> GSA:
    n = len(f.fields)
    # 12 PRN slots, then PDOP/HDOP/VDOP; NMEA 4.10 appends a system id. Some receivers
    # send more or fewer slots, so the DOPs are counted from the end.
    dop_at = n - 4 if n >= 18 else n - 3
    prns = tuple(prn for i in range(2, max(2, dop_at)) if (prn := f.uint(i, f"PRN {i - 1}")) is not None and prn > 0)
    return GSA(
        talker=talker,
        selection=f.text(0),
        fix_type=f.uint(1, "fix type"),
        prns=prns,
        pdop=f.num(dop_at, "PDOP") if dop_at >= 2 else None,
        hdop=f.num(dop_at + 1, "HDOP") if dop_at >= 2 else None,
        vdop=f.num(dop_at + 2, "VDOP") if dop_at >= 2 else None,
        system_id=f.uint(n - 1, "system id") if n >= 18 else None,
    )


def _decode_gsv(f: _Fields, talker: str) -> GSV:
    n = len(f.fields)
    groups = (n - 3) // 4
    signal_id = f.text(n - 1) if n > 3 and (n - 3) % 4 == 1 else ""
    sats = []
    for g in range(groups):
        base = 3 + 4 * g
        prn = f.uint(base, f"satellite {g + 1} PRN")
        if prn is None:
            continue
        sats.append(
            SatelliteInView(
                prn=prn,
                elevation=f.num(base + 1, f"satellite {g + 1} elevation"),
                azimuth=f.num(base + 2, f"satellite {g + 1} azimuth"),
                snr=f.num(base + 3, f"satellite {g + 1} SNR"),
            )
        )
    return GSV(
        talker=talker,
        total_messages=f.uint(0, "number of messages"),
        message_number=f.uint(1, "message number"),
        sats_in_view=f.uint(2, "satellites in view"),
        satellites=tuple(sats),
        signal_id=signal_id,
    )


def _decode_vtg(f: _Fields, talker: str) -> VTG:
    if len(f.fields) >= 2 and f.text(1) not in ("T", ""):
        # NMEA 1.x: track true, track magnetic, knots, km/h without unit letters
        return VTG(talker, f.num(0, "track"), f.num(1, "magnetic track"), f.num(2, "speed"), f.num(3, "km/h"))
    return VTG(
        talker=talker,
        track_true=f.num(0, "track"),
        track_magnetic=f.num(2, "magnetic track"),
        speed_knots=f.num(4, "speed"),
        speed_kmh=f.num(6, "speed km/h"),
        faa_mode=f.text(8),
    )


def _decode_zda(f: _Fields, talker: str) -> ZDA:
    day, month, year = f.uint(1, "day"), f.uint(2, "month"), f.uint(3, "year")
    if day is not None and month is not None and year is not None:
        try:
            date(year, month, day)
        except ValueError as err:
            raise f.error(1, "date", f"{day}/{month}/{year}: {err}") from None
    return ZDA(
        talker=talker,
        time=f.tod(0),
        day=day,
        month=month,
        year=year,
        tz_hours=f.sint(4, "zone hours"),
        tz_minutes=f.sint(5, "zone minutes"),
    )


def _decode_gst(f: _Fields, talker: str) -> GST:
    names = ("RMS", "semi-major", "semi-minor", "orientation", "lat sigma", "lon sigma", "alt sigma")
    rms, smaj, smin, orient, slat, slon, salt = (f.num(i + 1, name) for i, name in enumerate(names))
    return GST(talker, f.tod(0), rms, smaj, smin, orient, slat, slon, salt)


def _decode_gll(f: _Fields, talker: str) -> GLL:
    return GLL(
        talker=talker,
        lat=f.coordinate(0, "latitude", "NS", 90),
        lon=f.coordinate(2, "longitude", "EW", 180),
        time=f.tod(4),
        status=f.letter(5, "status", "AV"),
        faa_mode=f.text(6),
    )


def _decode_gns(f: _Fields, talker: str) -> GNS:
    return GNS(
        talker=talker,
        time=f.tod(0),
        lat=f.coordinate(1, "latitude", "NS", 90),
        lon=f.coordinate(3, "longitude", "EW", 180),
        mode=f.text(5),
        sats_used=f.uint(6, "satellites used"),
        hdop=f.num(7, "HDOP"),
        alt_msl=f.num(8, "altitude"),
        geoid_sep=f.num(9, "geoid separation"),
        dgps_age=f.num(10, "DGPS age"),
        dgps_station=f.text(11),
        nav_status=f.text(12),
    )


_DECODERS: dict[str, Callable[[_Fields, str], Sentence]] = {
    "RMC": _decode_rmc,
    "GGA": _decode_gga,
    "GSA": _decode_gsa,
    "GSV": _decode_gsv,
    "VTG": _decode_vtg,
    "ZDA": _decode_zda,
    "GST": _decode_gst,
    "GLL": _decode_gll,
    "GNS": _decode_gns,
}


def decode(raw: RawSentence) -> Sentence:
    """Decode an accepted sentence; ``UnknownSentenceType`` or ``DecodeError`` if not."""
    decoder = None if raw.proprietary or len(raw.address) != 5 else _DECODERS.get(raw.kind)
    if decoder is None:
        where = f"line {raw.line}: {raw.address}" if raw.line else raw.address
        kind = "proprietary" if raw.proprietary else "unknown"
        raise UnknownSentenceType(f"{kind} sentence type, not decoded", where=where, raw=raw.text)
    return decoder(_Fields(raw), raw.talker)


def parse(text: str | bytes, *, require_checksum: bool = True) -> Sentence:
    """Frame and decode one sentence; raise ``DecodeError`` saying why it was refused.

    With ``require_checksum=False`` a sentence without ``*hh`` is decoded too (a wrong
    checksum is still an error): for hand-typed input and old test vectors.
    """
    data = text.encode("latin-1") if isinstance(text, str) else bytes(text)
    data = data.strip(b"\r\n")
    if not require_checksum and b"*" not in data and data.startswith(b"$"):
        data += b"*%02X" % checksum(data[1:])
    framer = NmeaFramer()
    events = framer.feed_events(data) + framer.flush()
    accepted = [ev for ev in events if isinstance(ev, RawSentence)]
    rejected = [ev for ev in events if isinstance(ev, Rejected)]
    if rejected or len(accepted) != 1:
        why = f"{rejected[0].reason}: {rejected[0].detail}" if rejected else f"{len(accepted)} sentences"
        raise DecodeError(f"not one valid NMEA sentence ({why})", where="parse", raw=text)
    return decode(accepted[0])


# --------------------------------------------------------------------------- tracking

#: gpsd's user-equivalent range errors (95 %), metres: eph = HDOP * H, epv = VDOP * V
_UERE = {False: (19.0, 23.0), True: (4.75, 5.75)}
#: sentences whose time stamp marks the receiver cycle they belong to
_TIMED = frozenset({"RMC", "GGA", "GLL", "GNS", "ZDA"})
#: gpsd ``status`` from GGA's quality indicator
_GGA_STATUS = {1: 1, 2: 2, 3: 1, 4: 3, 5: 4, 6: 5, 7: 1, 8: 1}
#: gpsd ``status`` from an FAA mode letter
_FAA_STATUS = {"D": 2, "P": 2, "R": 3, "F": 4, "E": 5}


@dataclass(frozen=True, slots=True)
class TrackerUpdate:
    """What one sentence did: the merged ``fix`` after it, whether it ``changed`` the fix,
    and the fixes to ``reports`` (completed cycles; usually none or one)."""

    fix: GnssFix
    changed: bool
    reports: tuple[GnssFix, ...] = ()


@dataclass(slots=True)
class _Cycle:
    key: time | None = None
    last_timed: str = ""
    reported: bool = False
    gsa_used: list[int] = field(default_factory=list)


class FixTracker:
    """Merge decoded sentences into a ``GnssFix``, cycle by cycle, as gpsd does.

    Field rules (after gpsd's ``driver_nmea0183.c``; the gpsd regression logs check them):

    * **time** from RMC, GGA, GLL, GNS and ZDA, but only once a date is known (from a valid
      RMC or a ZDA): a GGA before any date leaves it unset. A time of day that goes from
      23 h to 0 h rolls the date over.
    * **lat/lon** from a valid RMC (status A/D), GGA (quality > 0), GLL (status A), GNS.
    * **mode**: RMC V, GGA quality 0 or zero satellites, GLL V, GNS mode N and GSA fix type
      1 give NO_FIX. A GGA/GNS with an altitude and four or more satellites gives 3D,
      otherwise 2D; GSA's fix type is taken as is; RMC/GLL give 2D, or 3D when the fix is
      3D already or four satellites and an altitude are known. Like gpsd, a 3D fix with a
      known altitude is not downgraded to 2D (only to NO_FIX).
    * Below 2D the fix carries no lat/lon/altitude/speed/track (gpsd prints none either);
      they are kept, and come back if a later sentence of the cycle restores the mode.
    * **speed** (m/s from knots) and **track** from RMC and VTG; they belong to one cycle
      and are cleared when the next cycle starts. **magvar** from RMC.
    * **alt_msl** from GGA/GNS, **alt_hae** = alt_msl + geoid separation.
    * **hdop/vdop/pdop** from GSA (HDOP also from GGA/GNS; 0 and 99.99 mean unknown);
      **eph/epv** = DOP times gpsd's UERE (19 m / 23 m; DGPS 4.75 m / 5.75 m).
    * **sats_used**: the PRNs of all GSA sentences of the cycle (one per constellation on
      multi-GNSS receivers), else GGA's count; **sats_visible**: the "in view" counts of
      GSV summed over talkers (GP + GL + GA + ...).

    Cycles: a receiver sends a burst of sentences per fix, all stamped with the same time
    of day. A timed sentence with a new time starts a new cycle. The last timed sentence
    type of a completed cycle is learnt as a *cycle ender* (as gpsd does); from then on the
    fix is reported as soon as the ender arrives, without waiting for the next burst. A
    cycle its ender did not report (ender missing, or not learnt yet) is reported when the
    next cycle starts. A no-fix RMC/GGA without any time (``$GPRMC,,V,...``) is reported at
    once, since cycle detection cannot work without time (gpsd does the same).
    """

    def __init__(self) -> None:
        self._mode = FixMode.UNKNOWN
        self._status: int | None = None
        self._time: datetime | None = None
        self._date: date | None = None
        self._tod: time | None = None
        self._lat: float | None = None
        self._lon: float | None = None
        self._alt_msl: float | None = None
        self._geoid_sep: float | None = None
        self._speed: float | None = None
        self._track: float | None = None
        self._magvar: float | None = None
        self._dops: dict[str, float] = {}
        self._sats_used: int | None = None
        self._gsv_counts: dict[str, int] = {}
        self._sats_visible: int | None = None
        self._dgps = False
        self._cycle = _Cycle()
        self._enders: set[str] = set()
        self._fix = GnssFix()

    @property
    def fix(self) -> GnssFix:
        """The merged fix after the last sentence."""
        return self._fix

    @property
    def cycle_enders(self) -> frozenset[str]:
        """The sentence types learnt as ending a cycle (``{"GLL"}``, ...)."""
        return frozenset(self._enders)

    def update(self, sentence: Sentence, *, now: float) -> TrackerUpdate:
        """Apply one decoded sentence received at monotonic time ``now``."""
        reports: list[GnssFix] = []
        kind = sentence.kind
        key: time | None = getattr(sentence, "time", None) if kind in _TIMED else None
        if key is not None and key != self._cycle.key:
            previous = self._cycle
            if previous.key is not None:
                if previous.last_timed:
                    self._enders.add(previous.last_timed)
                if not previous.reported:
                    reports.append(self._fix)
            self._cycle = _Cycle(key=key)
            self._speed = self._track = None
        before = self._fix
        self._apply(sentence)
        fix = self._compose(before, now)
        if key is not None:
            self._cycle.last_timed = kind
            if kind in self._enders and not self._cycle.reported:
                self._cycle.reported = True
                reports.append(fix)
        elif self._timeless_no_fix(sentence):
            reports.append(fix)
        return TrackerUpdate(fix=fix, changed=fix is not before, reports=tuple(reports))

    def _compose(self, before: GnssFix, now: float) -> GnssFix:
        located = self._mode >= FixMode.FIX_2D
        hdop, vdop = self._dops.get("hdop"), self._dops.get("vdop")
        h_uere, v_uere = _UERE[self._dgps]
        alt_hae = None
        if self._alt_msl is not None and self._geoid_sep is not None:
            alt_hae = self._alt_msl + self._geoid_sep
        fix = GnssFix(
            mode=self._mode,
            time=self._time,
            lat=self._lat if located else None,
            lon=self._lon if located else None,
            alt_msl=self._alt_msl if located else None,
            alt_hae=alt_hae if located else None,
            speed=self._speed if located else None,
            track=self._track if located else None,
            magvar=self._magvar,
            eph=None if hdop is None or not located else round(hdop * h_uere, 3),
            epv=None if vdop is None or not located else round(vdop * v_uere, 3),
            hdop=hdop,
            vdop=vdop,
            pdop=self._dops.get("pdop"),
            sats_used=self._sats_used,
            sats_visible=self._sats_visible,
            status=self._status,
            monotonic=before.monotonic,
        )
        if fix == before:
            return before
        self._fix = fix = replace(fix, monotonic=now)
        return fix

    def flush(self) -> tuple[GnssFix, ...]:
        """End of input: report the last cycle if its ender never came."""
        cycle = self._cycle
        if cycle.key is None or cycle.reported:
            return ()
        cycle.reported = True
        return (self._fix,)

    @staticmethod
    def _timeless_no_fix(sentence: Sentence) -> bool:
        if isinstance(sentence, RMC):
            return sentence.time is None and not sentence.valid
        if isinstance(sentence, GGA):
            return sentence.time is None and not sentence.quality
        return False

    # -- per-sentence rules -------------------------------------------------------------

    def _set_time(self, tod: time | None, day: date | None = None) -> None:
        if tod is None:
            return
        if day is not None:
            self._date = day
        elif self._date is not None and self._tod is not None and (self._tod.hour, tod.hour) == (23, 0):
            self._date += timedelta(days=1)
        self._tod = tod
        if self._date is not None:
            self._time = datetime.combine(self._date, tod)

    def _set_mode(self, mode: FixMode) -> None:
        if mode == FixMode.FIX_2D and self._mode == FixMode.FIX_3D and self._alt_msl is not None:
            return  # gpsd: "don't downgrade mode if holding previous fix"
        self._mode = mode

    def _mode_from_position(self) -> FixMode:
        """RMC/GLL carry no dimension: keep 3D, or infer it as gpsd does."""
        if self._mode == FixMode.FIX_3D:
            return FixMode.FIX_3D
        if (self._sats_used or 0) > 3 and self._alt_msl is not None:
            return FixMode.FIX_3D
        return FixMode.FIX_2D

    def _set_dop(self, name: str, value: float | None) -> None:
        # receivers send 0.0 or 99.99 for "unknown"
        if value is not None and 0.0 < value < 99.0:
            self._dops[name] = value

    def _altitude(self, alt: float | None, sep: float | None) -> None:
        if alt is not None:
            self._alt_msl = alt
            if sep is not None:
                self._geoid_sep = sep

    def _apply(self, s: Sentence) -> None:
        if isinstance(s, RMC):
            self._rmc(s)
        elif isinstance(s, GGA):
            self._gga(s)
        elif isinstance(s, GLL):
            self._gll(s)
        elif isinstance(s, GNS):
            self._gns(s)
        elif isinstance(s, GSA):
            self._gsa(s)
        elif isinstance(s, GSV):
            self._gsv(s)
        elif isinstance(s, VTG):
            self._vtg(s)
        elif isinstance(s, ZDA):
            if s.date is not None:
                self._set_time(s.time, s.date)
        # GST: error statistics only

    def _rmc(self, s: RMC) -> None:
        if not s.valid:
            self._mode, self._status = FixMode.NO_FIX, 0
            return
        if s.date is not None:
            self._set_time(s.time, s.date)
        self._dgps = s.status == "D" or s.faa_mode == "D"
        self._status = _FAA_STATUS.get(s.faa_mode, 2 if s.status == "D" else 1)
        if s.lat is None or s.lon is None:
            self._mode = FixMode.NO_FIX
            return
        self._lat, self._lon = s.lat, s.lon
        self._set_mode(self._mode_from_position())
        if s.speed is not None:
            self._speed = s.speed
        if s.track is not None:
            self._track = s.track
        if s.magvar is not None:
            self._magvar = s.magvar

    def _gga(self, s: GGA) -> None:
        self._set_time(s.time)
        self._set_dop("hdop", s.hdop)
        if not s.valid:
            self._mode, self._status = FixMode.NO_FIX, 0
            return
        assert s.quality is not None
        self._lat, self._lon = s.lat, s.lon
        self._dgps = s.quality == 2
        self._status = _GGA_STATUS.get(s.quality, 1)
        self._altitude(s.alt_msl, s.geoid_sep)
        if self._cycle.gsa_used == [] and s.sats_used is not None:
            self._sats_used = s.sats_used
        if s.sats_used == 0:
            self._mode = FixMode.NO_FIX
        elif s.alt_msl is not None and (s.sats_used or 0) >= 4:
            self._mode = FixMode.FIX_3D
        else:
            self._mode = FixMode.FIX_2D

    def _gll(self, s: GLL) -> None:
        self._set_time(s.time)
        if not s.valid:
            self._mode, self._status = FixMode.NO_FIX, 0
            return
        self._lat, self._lon = s.lat, s.lon
        self._set_mode(self._mode_from_position())

    def _gns(self, s: GNS) -> None:
        self._set_time(s.time)
        if not s.valid:
            self._mode, self._status = FixMode.NO_FIX, 0
            return
        self._lat, self._lon = s.lat, s.lon
        self._dgps = s.mode[:1] == "D"
        self._status = _FAA_STATUS.get(s.mode[:1], 1)
        self._altitude(s.alt_msl, s.geoid_sep)
        self._set_dop("hdop", s.hdop)
        if s.alt_msl is not None and (s.sats_used or 0) > 3:
            self._mode = FixMode.FIX_3D
        else:
            self._set_mode(FixMode.FIX_2D)

    def _gsa(self, s: GSA) -> None:
        self._cycle.gsa_used.append(len(s.prns))
        self._sats_used = sum(self._cycle.gsa_used)
        if s.fix_type in (2, 3):
            self._set_mode(FixMode(s.fix_type))
        elif s.fix_type == 1:
            self._mode = FixMode.NO_FIX
        self._set_dop("pdop", s.pdop)
        self._set_dop("hdop", s.hdop)
        self._set_dop("vdop", s.vdop)

    def _gsv(self, s: GSV) -> None:
        if s.sats_in_view is None:
            return
        self._gsv_counts[f"{s.talker}{s.signal_id}"] = s.sats_in_view
        per_talker: dict[str, int] = {}
        for key, count in self._gsv_counts.items():
            per_talker[key[:2]] = max(per_talker.get(key[:2], 0), count)
        self._sats_visible = sum(per_talker.values())

    def _vtg(self, s: VTG) -> None:
        if not s.valid:
            return
        if s.track_true is not None:
            self._track = s.track_true
        if s.speed is not None:
            self._speed = s.speed


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True, slots=True)
class ReaderEvent:
    """One accepted sentence: what it decoded to (``None`` if it did not), the error if
    it did not, the merged fix after it, and the fixes to report."""

    raw: RawSentence
    sentence: Sentence | None
    fix: GnssFix
    reports: tuple[GnssFix, ...] = ()
    error: DecodeError | None = None


class NmeaReader:
    """Framer + decoder + tracker with one counters dict; still no I/O.

    ``feed(data, now=...)`` returns one ``ReaderEvent`` per accepted sentence. With
    ``keep_rejects=True`` every rejection (framing and decoding) is also appended to
    ``rejected`` (for tools that list them; a long-running reader should not keep them).
    """

    def __init__(
        self, *, comments: bool = False, max_length: int = MAX_SENTENCE_LENGTH, keep_rejects: bool = False
    ) -> None:
        self.framer = NmeaFramer(max_length=max_length, comments=comments)
        self.tracker = FixTracker()
        self.keep_rejects = keep_rejects
        self.rejected: list[Rejected] = []
        self._counters = {"decoded": 0, "unknown_type": 0, "bad_field": 0, "reports": 0}

    @property
    def counters(self) -> dict[str, int]:
        merged = dict(self.framer.counters)
        merged.update(self._counters)
        return merged

    @property
    def fix(self) -> GnssFix:
        return self.tracker.fix

    def feed(self, data: bytes, *, now: float = 0.0) -> list[ReaderEvent]:
        return self._handle(self.framer.feed_events(data), now)

    def flush(self, *, now: float = 0.0) -> list[ReaderEvent]:
        """End of input (a file): the last sentence may lack its line end."""
        return self._handle(self.framer.flush(), now)

    def finish(self) -> tuple[GnssFix, ...]:
        """After ``flush()``: the last cycle's fix if its ender never came (else nothing)."""
        reports = self.tracker.flush()
        self._counters["reports"] += len(reports)
        return reports

    def _handle(self, events: Iterable[RawSentence | Rejected], now: float) -> list[ReaderEvent]:
        out: list[ReaderEvent] = []
        for ev in events:
            if isinstance(ev, Rejected):
                if self.keep_rejects:
                    self.rejected.append(ev)
                continue
            try:
                sentence = decode(ev)
            except DecodeError as err:
                reason = "unknown_type" if isinstance(err, UnknownSentenceType) else "bad_field"
                self._counters[reason] += 1
                if reason == "bad_field":
                    log.debug("%s", err)
                if self.keep_rejects:
                    self.rejected.append(Rejected(reason, ev.text.encode("ascii"), ev.line, str(err)))
                out.append(ReaderEvent(ev, None, self.tracker.fix, (), err))
                continue
            self._counters["decoded"] += 1
            update = self.tracker.update(sentence, now=now)
            self._counters["reports"] += len(update.reports)
            out.append(ReaderEvent(ev, sentence, update.fix, update.reports))
        return out
