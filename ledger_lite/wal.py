"""The consensus write-ahead log (design.md §5): every input is appended before it is applied, a
node's own vote is fsynced before it is sent, recovery replays the log through the same ``step``.

    wal, recovered = Wal.open(path)                  # creates, scans, cuts a torn/corrupt tail
    state, actions = recover(params, height=block_store_height + 1, recovered=recovered)
    wal.append_input(inp, height=state.height)        # before step(state, inp): written, not fsynced
    wal.persist(msg)                                  # the PersistVote action: written and fsynced
    wal.end_height(h)                                 # block h is durable: marker, fsync, compact

File format: a sequence of records ``[u32 length][u32 CRC-32 of payload][payload]`` (big endian,
``zlib.crc32``). Payloads are deterministic CBOR (ledger_lite.wire):

    <message>                          a persisted message: exactly ``wire.encode_message(msg)``
    ["input", height, <input item>]    an input, logged at the node's height when it was appended
    ["end", height]                    the block of ``height`` is durable in the block store

Scanning stops at the first record that is incomplete, longer than ``MAX_RECORD`` or fails its CRC:
everything from there on is a torn write (or corruption) and ``Wal.open`` truncates it (reported
as ``Recovered.torn_bytes``). A record with a good CRC that does not decode is not a torn write
but a bug or a foreign file: ``open`` raises ``WireFormatError`` rather than silently dropping
the persisted votes behind it.

Durability: ``append_input`` writes with one ``os.write`` (the OS has it; a process crash cannot
lose it, a power cut can). ``persist`` and ``end_height`` fsync, which also makes every earlier
record durable. So everything a persisted vote was derived from is durable with it, and the
replay in ``recover`` re-derives the same votes; the persisted copies (through ``restore``) are
what keeps the node safe when the replay does not (a changed consensus core, a lost file tail).

Compaction (in ``end_height``) writes a fresh file holding the end marker and the
records of later heights to ``<path>.compact``, fsyncs it, renames it over ``path`` and fsyncs the
directory; a crash before the rename leaves a stale ``.compact`` file that ``open`` deletes.

``Wal`` runs over a ``Storage``: ``FileStorage`` (what ``Wal.open`` uses) or ``MemoryStorage``, an
in-memory image with a durable watermark whose ``crash(keep)`` drops the unsynced bytes (keeping
``keep`` of them: a torn write). The simulation harness (tests/ledger/sim.py) runs every honest node
on the real ``Wal`` over a ``MemoryStorage`` and restarts it through ``Wal.attach`` + ``recover``.
The byte-level functions (``frame``, ``scan``, ``parse``, ``compact``) work on plain bytes.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

from . import cbor, consensus
from .consensus import Input, Message, Received, Start, Vote
from .errors import LedgerError
from .wire import (
    MAX_HEIGHT,
    MAX_WIRE_SIZE,
    WireFormatError,
    encode_message,
    input_from_item,
    input_to_item,
    loads_item,
    message_from_item,
)

__all__ = [
    "HEADER",
    "MAX_RECORD",
    "EndRecord",
    "FileStorage",
    "InputRecord",
    "MemoryStorage",
    "PersistRecord",
    "Record",
    "Recovered",
    "Storage",
    "Wal",
    "WalAheadError",
    "compact",
    "decode_record",
    "encode_record",
    "frame",
    "parse",
    "record_height",
    "recover",
    "scan",
]

HEADER: Final = struct.Struct(">II")
#: the largest payload accepted when scanning (a larger length field is corruption)
MAX_RECORD: Final = MAX_WIRE_SIZE + 64
COMPACT_SUFFIX: Final = ".compact"


class WalAheadError(LedgerError):
    """The WAL says a height is durably committed that the block store does not have."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class InputRecord:
    height: int
    input: Input


@dataclass(frozen=True)
class PersistRecord:
    msg: Message


@dataclass(frozen=True)
class EndRecord:
    height: int


Record = InputRecord | PersistRecord | EndRecord


def encode_record(rec: Record) -> bytes:
    """The payload of a record (see the module docstring)."""
    if isinstance(rec, PersistRecord):
        return _message_bytes(rec.msg)
    if isinstance(rec, InputRecord):
        height = _height(rec.height, "input.height")
        if isinstance(rec.input, Received):  # the hot path: [..., ["received", <message>]] by concatenation
            return _RECEIVED_HEAD + cbor.encode_head(0, height) + _RECEIVED_TAIL + _message_bytes(rec.input.msg)
        return cbor.dumps(["input", height, input_to_item(rec.input)])
    return cbor.dumps(["end", _height(rec.height, "end.height")])


#: a vote is often logged by several records (gossip duplicates, the persisted copy): encode it once.
#: Proposals are not cached: their values can be MiBs.
_vote_bytes = lru_cache(maxsize=4096)(encode_message)


def _message_bytes(msg: Message) -> bytes:
    return _vote_bytes(msg) if isinstance(msg, Vote) else encode_message(msg)


_RECEIVED_HEAD: Final = cbor.encode_head(4, 3) + cbor.dumps("input")
_RECEIVED_TAIL: Final = cbor.encode_head(4, 2) + cbor.dumps("received")


def decode_record(payload: bytes | bytearray | memoryview) -> Record:
    """The record of a payload; raises ``WireFormatError``."""
    item = loads_item(payload, "record")
    if type(item) is not list or not item:
        raise WireFormatError("must be a non-empty array", field="record")
    kind = item[0]
    if kind in ("proposal", "vote"):
        return PersistRecord(message_from_item(item))
    if kind == "input" and len(item) == 3:
        return InputRecord(_height(item[1], "input.height"), input_from_item(item[2]))
    if kind == "end" and len(item) == 2:
        return EndRecord(_height(item[1], "end.height"))
    raise WireFormatError(f"unknown record {kind!r} of {len(item)} items", field="record")


def _height(value: Any, field: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_HEIGHT:
        raise WireFormatError(f"{value!r} is not a height", field=field)
    return value


def record_height(rec: Record) -> int:
    """The height a record is about: compaction after ``end_height(h)`` keeps records above ``h``.
    A received message for a later height counts for that height (it was buffered for it)."""
    if isinstance(rec, PersistRecord):
        return rec.msg.height
    if isinstance(rec, InputRecord) and isinstance(rec.input, Received):
        return max(rec.height, rec.input.msg.height)
    return rec.height


# --------------------------------------------------------------------------- framing


def frame(payload: bytes) -> bytes:
    """One framed record: ``[u32 length][u32 CRC-32][payload]``."""
    if len(payload) > MAX_RECORD:
        raise WireFormatError(f"record of {len(payload)} bytes exceeds {MAX_RECORD}", field="record")
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def scan(data: bytes | bytearray | memoryview) -> tuple[list[bytes], int]:
    """The payloads of the complete, CRC-valid records at the start of ``data``, and the length of
    that good prefix (``len(data) - good`` bytes are a torn or corrupt tail)."""
    view = memoryview(data)
    out: list[bytes] = []
    pos, end = 0, len(view)
    while end - pos >= HEADER.size:
        length, crc = HEADER.unpack_from(view, pos)
        start = pos + HEADER.size
        if length > MAX_RECORD or end - start < length:
            break
        payload = bytes(view[start : start + length])
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        pos = start + length
    return out, pos


@dataclass(frozen=True)
class Recovered:
    """What a WAL holds after its last end-of-height marker.

    ``height``: the first height not ended (None for an empty log); ``inputs``: (logged height,
    input) in log order; ``persisted``: the persisted messages in log order; ``torn_bytes``: how
    many bytes of torn/corrupt tail were cut; ``ended``: the last height with an end marker (0:
    none), i.e. the block store must have at least that many blocks."""

    height: int | None
    inputs: tuple[tuple[int, Input], ...]
    persisted: tuple[Message, ...]
    torn_bytes: int
    ended: int = 0


def _fold(records: Iterable[Record], torn: int) -> Recovered:
    ended = 0
    kept: list[Record] = []
    for rec in records:
        if isinstance(rec, EndRecord):
            ended = max(ended, rec.height)
        else:
            kept.append(rec)
    kept = [r for r in kept if record_height(r) > ended]
    if ended:
        height: int | None = ended + 1
    elif kept:
        height = min(r.height if isinstance(r, InputRecord) else record_height(r) for r in kept)
    else:
        height = None
    return Recovered(
        height=height,
        inputs=tuple((r.height, r.input) for r in kept if isinstance(r, InputRecord)),
        persisted=tuple(r.msg for r in kept if isinstance(r, PersistRecord)),
        torn_bytes=torn,
        ended=ended,
    )


def parse(data: bytes | bytearray | memoryview) -> tuple[Recovered, int]:
    """Scan and decode a whole log image; returns what it holds and the good length."""
    payloads, good = scan(data)
    return _fold((decode_record(p) for p in payloads), len(data) - good), good


def compact(data: bytes | bytearray | memoryview, height: int) -> bytes:
    """The image of a fresh log after ``end_height(height)`` of the log image ``data``: an end
    marker for ``height`` and the good records of later heights, in order (the torn tail is cut)."""
    out = bytearray(frame(encode_record(EndRecord(height))))
    for payload in scan(data)[0]:
        if record_height(decode_record(payload)) > height:
            out += frame(payload)
    return bytes(out)


# --------------------------------------------------------------------------- storage


class Storage(Protocol):
    """Where a ``Wal`` keeps its bytes. ``fsyncs`` counts the durability points executed."""

    fsyncs: int

    def read(self) -> bytes: ...

    def truncate(self, length: int) -> None:
        """Cut the log to ``length`` bytes, durably."""

    def append(self, data: bytes) -> None:
        """Hand ``data`` to the OS (survives a process crash, not a power cut)."""

    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""

    def replace(self, image: bytes) -> None:
        """Atomically and durably replace the whole log with ``image``."""

    def close(self) -> None: ...


class FileStorage:
    """A log file: ``os.write`` appends, ``os.fsync`` syncs, compaction writes ``<path>.compact``,
    fsyncs it, renames it over the log and fsyncs the directory (a stale ``.compact`` is deleted on
    open: the crash came before the rename, so the log itself is intact). ``fsync=False`` skips
    every fsync (tests, or a RAM disk)."""

    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync_enabled = fsync
        self.fsyncs = 0
        stale = self._tmp_path()
        if stale.exists():
            stale.unlink()
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)

    def _tmp_path(self) -> Path:
        return self.path.with_name(self.path.name + COMPACT_SUFFIX)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the WAL {self.path} is closed")
        return self._fd

    def _fsync(self, fd: int) -> None:
        if self.fsync_enabled:
            os.fsync(fd)
            self.fsyncs += 1

    def read(self) -> bytes:
        fd = self._open_fd()
        os.lseek(fd, 0, os.SEEK_SET)
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def truncate(self, length: int) -> None:
        fd = self._open_fd()
        os.ftruncate(fd, length)
        self._fsync(fd)

    def append(self, data: bytes) -> None:
        _write_all(self._open_fd(), data)

    def sync(self) -> None:
        self._fsync(self._open_fd())

    def replace(self, image: bytes) -> None:
        old = self._open_fd()
        tmp = self._tmp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, image)
            self._fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.fsync_enabled:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
                self.fsyncs += 1
            finally:
                os.close(dfd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        os.close(old)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MemoryStorage:
    """An in-memory log image with a durable watermark (for tests and the simulation harness):
    ``data`` is what the OS has, ``data[:durable]`` what survives a power cut. ``crash(keep)``
    simulates one: everything after ``durable + keep`` is lost (``keep`` > 0 models a torn write of
    unsynced bytes)."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.durable = len(self.data)
        self.fsyncs = 0

    def read(self) -> bytes:
        return bytes(self.data)

    def truncate(self, length: int) -> None:
        del self.data[length:]
        self.sync()

    def append(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        self.durable = len(self.data)
        self.fsyncs += 1

    def replace(self, image: bytes) -> None:
        self.data = bytearray(image)
        self.durable = len(self.data)
        self.fsyncs += 2

    def close(self) -> None:
        pass

    def crash(self, keep: int = 0) -> None:
        del self.data[self.durable + max(0, keep) :]


# --------------------------------------------------------------------------- the log


class Wal:
    """The consensus WAL over a ``Storage``. Blocking I/O with ``FileStorage``: call it from a
    thread (or accept the short blocking write)."""

    def __init__(self, storage: Storage, records: list[tuple[int, bytes]], size: int) -> None:
        self.storage = storage
        self._records = records  # (record height, framed) since the last compaction
        self.size_bytes = size
        self.records_written = 0

    @property
    def fsyncs(self) -> int:
        return self.storage.fsyncs

    @classmethod
    def open(cls, path: str | Path, *, fsync: bool = True) -> tuple[Wal, Recovered]:
        """Open (or create) the log file at ``path``: scan it, truncate a torn/corrupt tail, and
        return the log ready for appending with what it holds."""
        storage = FileStorage(path, fsync=fsync)
        try:
            return cls.attach(storage)
        except BaseException:
            storage.close()
            raise

    @classmethod
    def attach(cls, storage: Storage) -> tuple[Wal, Recovered]:
        """``open`` on any storage."""
        data = storage.read()
        payloads, good = scan(data)
        records = [decode_record(p) for p in payloads]
        if good < len(data):
            storage.truncate(good)
        kept: list[tuple[int, bytes]] = []
        pos = 0
        for payload, rec in zip(payloads, records, strict=True):
            end = pos + HEADER.size + len(payload)
            kept.append((record_height(rec), data[pos:end]))
            pos = end
        return cls(storage, kept, good), _fold(records, len(data) - good)

    def append_input(self, inp: Input, *, height: int) -> None:
        """Log ``inp`` (to be applied at ``height``) before it is applied: written to the OS, no fsync."""
        if type(inp) is Received:  # the hot path (most inputs), without the record object
            payload = _RECEIVED_HEAD + cbor.encode_head(0, _height(height, "input.height")) + _RECEIVED_TAIL
            self._write(payload + _message_bytes(inp.msg), max(height, inp.msg.height))
        else:
            self._append(InputRecord(height, inp))

    def persist(self, msg: Message) -> None:
        """The ``PersistVote`` action: log ``msg`` and fsync (every earlier record is durable too)."""
        self._append(PersistRecord(msg))
        self.storage.sync()

    def end_height(self, height: int) -> None:
        """The block of ``height`` is durable in the block store: write an end marker, fsync, and
        compact to a fresh log without anything of heights <= ``height``."""
        self._append(EndRecord(height))
        self.storage.sync()
        end = self._records[-1]
        self._records = [end, *((h, f) for h, f in self._records[:-1] if h > height)]
        image = b"".join(f for _, f in self._records)
        self.storage.replace(image)
        self.size_bytes = len(image)

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, rec: Record) -> None:
        self._write(encode_record(rec), record_height(rec))

    def _write(self, payload: bytes, height: int) -> None:
        framed = frame(payload)
        self.storage.append(framed)
        self._records.append((height, framed))
        self.size_bytes += len(framed)
        self.records_written += 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --------------------------------------------------------------------------- recovery


def recover(
    params: consensus.Params, *, height: int, recovered: Recovered
) -> tuple[consensus.NodeState, list[consensus.Action]]:
    """Rebuild a node after a crash. ``height`` = last height in the block store + 1 (it wins over
    the log: records of lower heights are ignored).

    ``consensus.restore`` takes the persisted messages (own signed ones: their slots stay taken, so
    nothing conflicting is ever signed; locked proposals: the lock keeps its value). Then the logged
    inputs of heights >= ``height`` go back through ``consensus.step`` in log order, after a
    ``Start`` (a logged Start then is a no-op). Returns the state and every action the replay
    produced, for the runtime to execute as usual (PersistVote before Broadcast for anything newly
    signed; re-sent messages and re-scheduled timeouts are harmless repeats; a ``Commit`` is for a
    height the block store does not have yet).

    Raises ``WalAheadError`` if the log ended a height the block store does not have: the log has
    dropped the votes of that height, so resuming there could sign against them."""
    if height <= recovered.ended:
        raise WalAheadError(
            f"the WAL ended height {recovered.ended} but the block store resumes at height {height}: "
            "the block store lost committed blocks"
        )
    persisted = [m for m in recovered.persisted if m.height >= height]
    state = consensus.restore(params, height=height, persisted=persisted)
    actions: list[consensus.Action] = []
    state, out = consensus.step(state, Start())
    actions += out
    for logged, inp in recovered.inputs:
        if record_height(InputRecord(logged, inp)) < height or isinstance(inp, Start):
            continue
        state, out = consensus.step(state, inp)
        actions += out
    return state, actions
