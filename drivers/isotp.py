"""ISO 15765-2 (ISO-TP) transport, sans-IO: state machines driven with frame payloads and ``now``.

``IsoTpSender.send(payload, now=)`` gives the first frame(s) to put on the bus; the sender then
takes the receiver's flow control through ``on_frame()`` and releases consecutive frames from
``poll(now=)`` as their separation time comes (``deadline`` says when to call it next).
``IsoTpReceiver.on_frame(data, now=)`` returns the flow control to send (if any) and the payload
once it is complete. Neither sends, reads or sleeps: the caller moves bytes and keeps time.

Timeouts are inputs like frames: N_Bs (sender waiting for flow control) surfaces as
``IsoTpTimeout`` from ``IsoTpSender.poll``; N_Cr (receiver waiting for the next consecutive
frame) from ``IsoTpReceiver.poll``, or from ``on_frame`` when a consecutive frame arrives late.

Addressing is the caller's business (normal addressing: one CAN id each way). Classic CAN
(8-byte frames) and CAN FD (frames up to 64 bytes, escape sequences for long single frames and
payloads over 4095 bytes) are supported. ``padding`` fills frames to ``frame_len`` (OBD-II needs
8-byte frames); ``None`` sends the shortest frames.

Errors: ``IsoTpDecodeError`` (a malformed or unexpected frame: a peer sent garbage),
``IsoTpTimeout``, ``IsoTpOverflow`` (a payload too long for the receiver), all ``IsoTpError``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from hal.errors import DecodeError, HalError
from hal.types import CAN_FD_DLC

__all__ = [
    "FlowStatus",
    "IsoTpConfig",
    "IsoTpDecodeError",
    "IsoTpError",
    "IsoTpOverflow",
    "IsoTpReceiver",
    "IsoTpSender",
    "IsoTpTimeout",
    "RxResult",
    "decode_st_min",
    "encode_st_min",
    "flow_control",
]


class IsoTpError(HalError):
    """Base of the ISO-TP errors."""


class IsoTpDecodeError(IsoTpError, DecodeError):
    """A frame that is malformed or does not fit the state of the transfer."""


class IsoTpTimeout(IsoTpError, TimeoutError):
    """N_Bs or N_Cr expired; the transfer is abandoned."""


class IsoTpOverflow(IsoTpError):
    """The payload is longer than the receiver takes (it answered with flow status OVERFLOW),
    or longer than this end is configured to take. ``flow_control`` is the frame to send back,
    when there is one."""

    def __init__(self, message: str, *, flow_control: bytes | None = None) -> None:
        super().__init__(message)
        self.flow_control = flow_control


class FlowStatus(enum.IntEnum):
    CONTINUE = 0
    WAIT = 1
    OVERFLOW = 2


@dataclass(frozen=True, slots=True)
class IsoTpConfig:
    """Parameters of one end of an ISO-TP link."""

    #: the largest frame this end sends: 8 for classic CAN, up to 64 for CAN FD
    frame_len: int = 8
    #: fill byte for short frames; ``None``: no padding (frames as short as their content)
    padding: int | None = 0xCC
    #: block size this end advertises as a receiver (0: the sender never waits again)
    block_size: int = 0
    #: separation time this end asks of senders, seconds (0..0.127, or 100..900 µs)
    st_min: float = 0.0
    #: sender: how long to wait for a flow control frame (N_Bs), seconds
    n_bs: float = 1.0
    #: receiver: how long to wait for the next consecutive frame (N_Cr), seconds
    n_cr: float = 1.0
    #: sender: how many flow-control WAITs in a row it accepts (N_WFTmax)
    max_wait_frames: int = 10
    #: receiver: the longest payload it accepts (longer ones are answered with OVERFLOW)
    max_length: int = 4095

    def __post_init__(self) -> None:
        if self.frame_len not in CAN_FD_DLC or self.frame_len < 8:
            raise ValueError(f"frame_len must be 8, 12, 16, 20, 24, 32, 48 or 64, not {self.frame_len}")
        if self.padding is not None and not 0 <= self.padding <= 0xFF:
            raise ValueError(f"padding must be a byte, not {self.padding}")
        if not 0 <= self.block_size <= 0xFF:
            raise ValueError(f"block_size must be 0..255, not {self.block_size}")
        encode_st_min(self.st_min)


class RxResult(NamedTuple):
    #: a flow control frame to send to the peer now
    flow_control: bytes | None = None
    #: the complete payload, once the last frame of it has arrived
    payload: bytes | None = None


def encode_st_min(seconds: float) -> int:
    """STmin byte: 0x00..0x7F milliseconds, 0xF1..0xF9 100..900 microseconds."""
    if 0 < seconds < 0.001:
        us = round(seconds * 1e6 / 100)
        if 1 <= us <= 9:
            return 0xF0 + us
    ms = round(seconds * 1000)
    if not 0 <= ms <= 0x7F:
        raise ValueError(f"STmin {seconds} s is outside 0..0.127 s")
    return ms


def decode_st_min(value: int) -> float:
    """Seconds of an STmin byte; reserved values mean the longest, 127 ms (ISO 15765-2)."""
    if value <= 0x7F:
        return value / 1000
    if 0xF1 <= value <= 0xF9:
        return (value - 0xF0) / 10000
    return 0.127


def flow_control(status: FlowStatus, block_size: int = 0, st_min: int = 0, *, config: IsoTpConfig) -> bytes:
    """A flow control frame (``st_min`` as the encoded byte)."""
    return _pad(bytes([0x30 | status, block_size, st_min]), config, 8)


def _pad(frame: bytes, config: IsoTpConfig, length: int) -> bytes:
    if config.padding is None or len(frame) >= length:
        return frame
    return frame + bytes([config.padding]) * (length - len(frame))


def _fd_len(n: int) -> int:
    """The CAN FD frame length that holds ``n`` bytes."""
    for size in CAN_FD_DLC:
        if size >= n:
            return size
    raise ValueError(n)


# --------------------------------------------------------------------------------------------
# Sender


class _TxState(enum.Enum):
    IDLE = "idle"
    WAIT_FC = "wait_fc"
    SENDING = "sending"


class IsoTpSender:
    """Sends one payload at a time."""

    def __init__(self, config: IsoTpConfig | None = None) -> None:
        self.config = config or IsoTpConfig()
        self._state = _TxState.IDLE
        self._payload = b""
        self._pos = 0
        self._sn = 0
        self._block_left = 0
        self._st_min = 0.0
        self._last_cf: float | None = None
        self._next_send = 0.0
        self._fc_deadline = 0.0
        self._waits = 0

    @property
    def idle(self) -> bool:
        return self._state is _TxState.IDLE

    @property
    def deadline(self) -> float | None:
        """When ``poll`` must next be called: the next CF's time or the N_Bs deadline."""
        if self._state is _TxState.WAIT_FC:
            return self._fc_deadline
        if self._state is _TxState.SENDING:
            return self._next_send
        return None

    def abort(self) -> None:
        self._state = _TxState.IDLE
        self._payload = b""

    def send(self, payload: bytes, *, now: float) -> list[bytes]:
        """Start sending ``payload``: returns the single frame, or the first frame."""
        if self._state is not _TxState.IDLE:
            raise IsoTpError("a transfer is in progress")
        cfg = self.config
        n = len(payload)
        if n == 0:
            raise IsoTpError("an ISO-TP payload has at least one byte")
        if n > 0xFFFFFFFF:
            raise IsoTpOverflow(f"{n} bytes is longer than ISO-TP carries")
        if n <= 7:
            return [_pad(bytes([n]) + payload, cfg, 8 if cfg.frame_len == 8 else _fd_len(n + 1))]
        if cfg.frame_len > 8 and n <= cfg.frame_len - 2:
            return [_pad(bytes([0x00, n]) + payload, cfg, _fd_len(n + 2))]
        if n <= 0xFFF:
            header = bytes([0x10 | (n >> 8), n & 0xFF])
        else:
            header = bytes([0x10, 0x00]) + n.to_bytes(4, "big")
        first = cfg.frame_len - len(header)
        self._payload = payload
        self._pos = first
        self._sn = 1
        self._waits = 0
        self._last_cf = None
        self._state = _TxState.WAIT_FC
        self._fc_deadline = now + cfg.n_bs
        return [header + payload[:first]]

    def on_frame(self, data: bytes, *, now: float) -> list[bytes]:
        """Take a flow control frame from the receiver; returns consecutive frames due now."""
        if not data:
            raise IsoTpDecodeError("empty frame")
        if data[0] >> 4 != 3:
            raise IsoTpDecodeError(f"expected a flow control frame, got PCI 0x{data[0]:02X}", raw=data)
        if len(data) < 3:
            raise IsoTpDecodeError(f"flow control frame of {len(data)} bytes (at least 3)", raw=data)
        if self._state is _TxState.IDLE:
            raise IsoTpDecodeError("flow control frame while not sending", raw=data)
        if self._state is _TxState.SENDING:
            raise IsoTpDecodeError("flow control frame while not waiting for one", raw=data)
        status = data[0] & 0x0F
        if status == FlowStatus.WAIT:
            self._waits += 1
            if self._waits > self.config.max_wait_frames:
                self.abort()
                raise IsoTpTimeout(f"receiver sent more than {self.config.max_wait_frames} WAIT frames")
            self._state = _TxState.WAIT_FC
            self._fc_deadline = now + self.config.n_bs
            return []
        if status == FlowStatus.OVERFLOW:
            length = len(self._payload)
            self.abort()
            raise IsoTpOverflow(f"receiver refused a {length}-byte payload (flow status OVERFLOW)")
        if status != FlowStatus.CONTINUE:
            self.abort()
            raise IsoTpDecodeError(f"invalid flow status {status}", raw=data)
        self._waits = 0
        self._block_left = data[1] or -1
        self._st_min = decode_st_min(data[2])
        self._state = _TxState.SENDING
        # STmin separates any two consecutive frames, across a flow control too
        self._next_send = now if self._last_cf is None else max(now, self._last_cf + self._st_min)
        return self.poll(now=now)

    def poll(self, *, now: float) -> list[bytes]:
        """Consecutive frames due by ``now``; ``IsoTpTimeout`` when N_Bs has expired."""
        if self._state is _TxState.WAIT_FC:
            if now >= self._fc_deadline:
                self.abort()
                raise IsoTpTimeout("no flow control frame from the receiver (N_Bs)")
            return []
        out: list[bytes] = []
        cfg = self.config
        while self._state is _TxState.SENDING and now >= self._next_send:
            chunk = self._payload[self._pos : self._pos + cfg.frame_len - 1]
            frame = bytes([0x20 | self._sn]) + chunk
            self._last_cf = now
            self._pos += len(chunk)
            self._sn = (self._sn + 1) & 0x0F
            if self._pos >= len(self._payload):
                length = 8 if cfg.frame_len == 8 else _fd_len(len(frame))
                out.append(_pad(frame, cfg, length))
                self.abort()
                break
            out.append(frame)
            if self._block_left > 0:
                self._block_left -= 1
                if self._block_left == 0:
                    self._state = _TxState.WAIT_FC
                    self._fc_deadline = now + cfg.n_bs
                    break
            if self._st_min > 0:
                self._next_send = now + self._st_min
                break
        return out


# --------------------------------------------------------------------------------------------
# Receiver


class IsoTpReceiver:
    """Reassembles payloads from one sender."""

    def __init__(self, config: IsoTpConfig | None = None) -> None:
        self.config = config or IsoTpConfig()
        self._busy = False
        self._buf = bytearray()
        self._length = 0
        self._sn = 0
        self._rx_dl = 8
        self._block_left = 0
        self._deadline = 0.0
        #: transfers abandoned because a new first/single frame started another
        self.interrupted = 0

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def deadline(self) -> float | None:
        """When ``poll`` must next be called (N_Cr), while a transfer is in progress."""
        return self._deadline if self._busy else None

    def reset(self) -> None:
        self._busy = False
        self._buf = bytearray()

    def poll(self, *, now: float) -> None:
        """Raise ``IsoTpTimeout`` (and drop the transfer) once N_Cr has expired."""
        if self._busy and now >= self._deadline:
            got, want = len(self._buf), self._length
            self.reset()
            raise IsoTpTimeout(f"no consecutive frame for {self.config.n_cr} s (N_Cr) after {got}/{want} bytes")

    def on_frame(self, data: bytes, *, now: float) -> RxResult:
        """Take one frame payload from the sender."""
        if not data:
            raise IsoTpDecodeError("empty frame")
        if len(data) > 64:
            raise IsoTpDecodeError(f"{len(data)}-byte frame (at most 64)", raw=data)
        kind = data[0] >> 4
        if kind == 0:
            return self._single(data)
        if kind == 1:
            return self._first(data, now)
        if kind == 2:
            return self._consecutive(data, now)
        if kind == 3:
            raise IsoTpDecodeError("flow control frame sent to a receiver", raw=data)
        raise IsoTpDecodeError(f"invalid PCI 0x{data[0]:02X}", raw=data)

    def _single(self, data: bytes) -> RxResult:
        length = data[0] & 0x0F
        if length == 0:
            if len(data) <= 8:
                raise IsoTpDecodeError("single frame of length 0", raw=data)
            length, start = data[1], 2
            if length < 1 or length > len(data) - 2:
                raise IsoTpDecodeError(f"CAN FD single frame length {length} in a {len(data)}-byte frame", raw=data)
        else:
            start = 1
            if length > len(data) - 1 or length > 7:
                raise IsoTpDecodeError(f"single frame length {length} in a {len(data)}-byte frame", raw=data)
        if self._busy:
            self.interrupted += 1
            self.reset()
        return RxResult(payload=bytes(data[start : start + length]))

    def _first(self, data: bytes, now: float) -> RxResult:
        if len(data) < 8:
            raise IsoTpDecodeError(f"first frame of {len(data)} bytes (at least 8)", raw=data)
        length = ((data[0] & 0x0F) << 8) | data[1]
        start = 2
        if length == 0:
            if len(data) < 6:
                raise IsoTpDecodeError("first frame escape sequence is cut short", raw=data)
            length = int.from_bytes(data[2:6], "big")
            start = 6
            if length <= 0xFFF:
                raise IsoTpDecodeError(f"escaped first frame for {length} bytes (needs > 4095)", raw=data)
        if length < (8 if len(data) == 8 else len(data) - 1):
            raise IsoTpDecodeError(f"first frame for {length} bytes, which fit a single frame", raw=data)
        if len(data) not in CAN_FD_DLC:
            raise IsoTpDecodeError(f"first frame of {len(data)} bytes is not a CAN frame length", raw=data)
        if self._busy:
            self.interrupted += 1
            self.reset()
        if length > self.config.max_length:
            raise IsoTpOverflow(
                f"first frame announces {length} bytes, more than {self.config.max_length}",
                flow_control=flow_control(FlowStatus.OVERFLOW, config=self.config),
            )
        self._busy = True
        self._length = length
        self._rx_dl = len(data)
        self._buf = bytearray(data[start:])
        self._sn = 1
        return RxResult(flow_control=self._continue(now))

    def _continue(self, now: float) -> bytes:
        cfg = self.config
        self._block_left = cfg.block_size
        self._deadline = now + cfg.n_cr
        return flow_control(FlowStatus.CONTINUE, cfg.block_size, encode_st_min(cfg.st_min), config=cfg)

    def _consecutive(self, data: bytes, now: float) -> RxResult:
        if not self._busy:
            raise IsoTpDecodeError("consecutive frame without a first frame", raw=data)
        if now >= self._deadline:
            got, want = len(self._buf), self._length
            self.reset()
            raise IsoTpTimeout(f"consecutive frame came after N_Cr ({got}/{want} bytes received)")
        sn = data[0] & 0x0F
        if sn != self._sn:
            want = self._sn
            self.reset()
            raise IsoTpDecodeError(f"consecutive frame number {sn}, expected {want}", raw=data)
        remaining = self._length - len(self._buf)
        chunk = data[1 : 1 + remaining]
        if len(chunk) < min(remaining, self._rx_dl - 1):
            self.reset()
            raise IsoTpDecodeError(
                f"consecutive frame of {len(data)} bytes carries {len(chunk)} of the {remaining} bytes still due",
                raw=data,
            )
        self._buf += chunk
        self._sn = (self._sn + 1) & 0x0F
        if len(self._buf) >= self._length:
            payload = bytes(self._buf)
            self.reset()
            return RxResult(payload=payload)
        self._deadline = now + self.config.n_cr
        if self._block_left:
            self._block_left -= 1
            if self._block_left == 0:
                return RxResult(flow_control=self._continue(now))
        return RxResult()
