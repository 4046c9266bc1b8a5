"""Value types shared by every layer: CAN frames, GNSS fixes, camera frames, signals.

All values are frozen and compare by value. Units are SI (m, m/s, m/s², rad/s only where
a name says so, otherwise degrees for angles as VSS and NMEA use them), positions are WGS84
degrees. Every sample carries a *monotonic* timestamp (``time.monotonic()`` domain of the
process that received it, or of the injected ``Clock``) and, where the source has one, a
UTC wall-clock timestamp in seconds since the Unix epoch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "CAN_FD_DLC",
    "CanBusState",
    "CanBusStats",
    "CanFilter",
    "CanFrame",
    "FixMode",
    "Frame",
    "GnssFix",
    "SignalSample",
    "VehicleState",
    "len_to_dlc",
]

#: CAN FD data length codes 9..15 map to these payload lengths (ISO 11898-1:2015).
CAN_FD_DLC = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


def len_to_dlc(length: int) -> int:
    """Smallest DLC whose payload length holds ``length`` bytes (CAN FD table)."""
    for dlc, size in enumerate(CAN_FD_DLC):
        if size >= length:
            return dlc
    raise ValueError(f"CAN payload of {length} bytes is longer than 64")


@dataclass(frozen=True, slots=True)
class CanFrame:
    """One CAN or CAN FD frame as the rest of the agent sees it.

    ``channel`` is the agent's logical bus name (``can0``, ``powertrain``), not the
    interface's own channel string. ``timestamp`` is the source's clock (hardware or
    kernel receive time, or the log's recorded time), ``monotonic`` the local receive time.
    """

    arbitration_id: int
    data: bytes = b""
    is_extended_id: bool = False
    is_fd: bool = False
    is_remote_frame: bool = False
    is_error_frame: bool = False
    bitrate_switch: bool = False
    error_state_indicator: bool = False
    is_rx: bool = True
    channel: str = ""
    timestamp: float = 0.0
    monotonic: float = 0.0
    #: DLC of a remote frame (which carries no data); otherwise derived from ``data``.
    remote_dlc: int = 0

    def __post_init__(self) -> None:
        limit = 0x1FFFFFFF if self.is_extended_id else 0x7FF
        if not 0 <= self.arbitration_id <= limit:
            kind = "extended (29-bit)" if self.is_extended_id else "standard (11-bit)"
            raise ValueError(f"arbitration id 0x{self.arbitration_id:X} out of range for a {kind} frame")
        max_len = 64 if self.is_fd else 8
        if len(self.data) > max_len:
            raise ValueError(
                f"{len(self.data)} data bytes in a {'CAN FD' if self.is_fd else 'classic CAN'} frame"
                f" (at most {max_len})"
            )
        if self.is_fd and len(self.data) not in CAN_FD_DLC:
            raise ValueError(f"{len(self.data)} data bytes is not a valid CAN FD payload length")

    @property
    def dlc(self) -> int:
        """Data length code: 0..8 for classic CAN, 0..15 for CAN FD."""
        if self.is_remote_frame:
            return self.remote_dlc
        return len_to_dlc(len(self.data))

    def candump(self) -> str:
        """The frame in ``candump -l`` notation: ``(ts) chan ID#DATA``."""
        ident = f"{self.arbitration_id:08X}" if self.is_extended_id else f"{self.arbitration_id:03X}"
        if self.is_remote_frame:
            body = f"{ident}#R"
        elif self.is_fd:
            flags = (1 if self.bitrate_switch else 0) | (2 if self.error_state_indicator else 0)
            body = f"{ident}##{flags:X}{self.data.hex().upper()}"
        else:
            body = f"{ident}#{self.data.hex().upper()}"
        return f"({self.timestamp:.6f}) {self.channel or 'can'} {body}"


@dataclass(frozen=True, slots=True)
class CanFilter:
    """Acceptance filter: a frame passes when ``id & mask == can_id & mask``.

    Same semantics as SocketCAN and python-can's ``can_filters``; the adapter pushes filters
    to the kernel/hardware where the interface supports it and applies them in software
    otherwise.
    """

    can_id: int
    can_mask: int = 0x7FF
    extended: bool | None = None

    def matches(self, frame: CanFrame) -> bool:
        if self.extended is not None and frame.is_extended_id != self.extended:
            return False
        return (frame.arbitration_id & self.can_mask) == (self.can_id & self.can_mask)


class CanBusState(enum.StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"
    BUS_OFF = "bus_off"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CanBusStats:
    """Counters of one bus since it was opened."""

    channel: str
    rx_frames: int = 0
    tx_frames: int = 0
    rx_bytes: int = 0
    error_frames: int = 0
    #: frames the adapter had to drop because its consumer was too slow
    overruns: int = 0
    bus_off_count: int = 0
    tx_errors: int = 0
    #: fraction (0..1) of the nominal bitrate used over the last second, estimated from
    #: frame sizes (worst-case bit stuffing excluded)
    bus_load: float = 0.0
    state: CanBusState = CanBusState.UNKNOWN


class FixMode(enum.IntEnum):
    """gpsd's TPV ``mode``: 0 unknown, 1 no fix, 2 two-dimensional, 3 three-dimensional."""

    UNKNOWN = 0
    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3


@dataclass(frozen=True, slots=True)
class GnssFix:
    """A fused GNSS solution, field names and units as gpsd's TPV report.

    Fields a receiver did not report are ``None``.
    """

    mode: FixMode = FixMode.UNKNOWN
    time: datetime | None = None
    lat: float | None = None
    lon: float | None = None
    #: altitude above mean sea level, metres
    alt_msl: float | None = None
    #: altitude above the WGS84 ellipsoid, metres
    alt_hae: float | None = None
    #: speed over ground, m/s
    speed: float | None = None
    #: course over ground, degrees true
    track: float | None = None
    climb: float | None = None
    magvar: float | None = None
    #: estimated horizontal / vertical position error, metres (95 %)
    eph: float | None = None
    epv: float | None = None
    hdop: float | None = None
    vdop: float | None = None
    pdop: float | None = None
    sats_used: int | None = None
    sats_visible: int | None = None
    #: gpsd ``status``: 0 unknown, 1 normal, 2 DGPS, 3 RTK fixed, 4 RTK float, 5 DR, ...
    status: int | None = None
    monotonic: float = 0.0

    @property
    def has_position(self) -> bool:
        return self.mode >= FixMode.FIX_2D and self.lat is not None and self.lon is not None


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera image. ``data`` is the raw buffer in ``pixel_format``.

    Pixel formats use V4L2 fourcc names: ``RGB3`` (RGB24), ``GREY``, ``YUYV``, ``MJPG``.
    """

    data: bytes
    width: int
    height: int
    pixel_format: str
    sequence: int
    timestamp: float
    monotonic: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class SignalSample:
    """One decoded vehicle signal, named as in VSS where it has a VSS name.

    ``value`` is in SI units (VSS's unit for the name where that is not SI, e.g. km/h for
    ``Vehicle.Speed`` is converted: we carry m/s and say so in ``unit``).
    """

    name: str
    value: float | int | str | bool
    unit: str
    timestamp: float
    monotonic: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class VehicleState:
    """The fused vehicle snapshot produced at a fixed rate (default 10 Hz).

    Each field is ``None`` when no source has ever given it; ``ages`` maps field name to the
    seconds since its last update at ``monotonic``. Derived fields say so in ``derived``.
    """

    monotonic: float
    timestamp: float
    sequence: int
    #: m/s, from the bus (wheel speed / vehicle speed), else GNSS
    speed: float | None = None
    #: m/s² forward positive
    accel_longitudinal: float | None = None
    #: m/s² left positive (ISO 8855)
    accel_lateral: float | None = None
    #: deg/s, counter-clockwise positive
    yaw_rate: float | None = None
    #: steering wheel angle, degrees, left positive
    steering_angle: float | None = None
    #: brake pedal position 0..100 %
    brake: float | None = None
    #: accelerator pedal position 0..100 %
    throttle: float | None = None
    #: selected gear: -1 reverse, 0 neutral, 1..n, 126 park (VSS convention)
    gear: int | None = None
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    #: degrees true
    heading: float | None = None
    gnss_speed: float | None = None
    gnss_mode: FixMode = FixMode.UNKNOWN
    #: true while the position is dead-reckoned through a GNSS gap
    dead_reckoning: bool = False
    ages: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    derived: frozenset[str] = frozenset()
