"""OBD-II (SAE J1979 / ISO 15031-5) mode 01 over ISO-TP: requests, responses, a poller.

The codec is pure: ``request_frame()`` builds a request (functional 0x7DF or physical
0x7E0..0x7E7; 29-bit 0x18DB33F1 / 0x18DAxxF1 optional), ``decode_response()`` turns a response
payload (``41 PID data...``, possibly several PIDs) into ``ObdValue``s with the J1979 formulas,
``ObdValue.sample()`` gives a ``SignalSample`` named by VSS in our units (drivers/vss.py: the
vehicle speed PID's km/h becomes m/s). ``supported_pids()`` reads the PID 0x00/0x20/... bitmaps.

``ObdPoller`` is the async service: on a ``CanPort`` and a ``Clock`` it discovers the PIDs the
ECUs support, then polls the configured ones at their rates, one request in flight at a time,
reassembling multi-frame responses with ``drivers.isotp`` (it sends the flow control). It
counts timeouts, negative responses (0x7F) and malformed responses, and never raises because of
what the bus sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hal.errors import DecodeError, HalError
from hal.interfaces import CanPort, Clock
from hal.types import CanFrame, SignalSample

from . import vss
from .isotp import IsoTpConfig, IsoTpError, IsoTpReceiver

__all__ = [
    "BITMAP_PIDS",
    "NRC_NAMES",
    "PIDS",
    "ObdAddressing",
    "ObdDecodeError",
    "ObdError",
    "ObdNegativeResponse",
    "ObdPoller",
    "ObdPollerConfig",
    "ObdValue",
    "PidSpec",
    "bitmap",
    "build_request",
    "decode_response",
    "encode_pid",
    "request_frame",
    "supported_pids",
]

log = logging.getLogger(__name__)
#: level of per-frame logs (below DEBUG)
TRACE = 5

MODE_CURRENT_DATA = 0x01
NEGATIVE_RESPONSE = 0x7F
#: NRC "request correctly received, response pending": the ECU answers later (P2*)
NRC_RESPONSE_PENDING = 0x78
NRC_NAMES = {
    0x10: "generalReject",
    0x11: "serviceNotSupported",
    0x12: "subFunctionNotSupported",
    0x13: "incorrectMessageLengthOrInvalidFormat",
    0x21: "busyRepeatRequest",
    0x22: "conditionsNotCorrect",
    0x31: "requestOutOfRange",
    0x78: "requestCorrectlyReceivedResponsePending",
}
#: the "PIDs supported" PIDs: 0x00, 0x20, ..., 0xE0
BITMAP_PIDS = tuple(range(0x00, 0x100, 0x20))


class ObdError(HalError):
    """Base of the OBD errors."""


class ObdDecodeError(ObdError, DecodeError):
    """A response that does not follow J1979."""


class ObdNegativeResponse(ObdError):
    """The ECU answered 0x7F: ``service`` and ``nrc`` (negative response code)."""

    def __init__(self, service: int, nrc: int) -> None:
        self.service = service
        self.nrc = nrc
        super().__init__(f"negative response to service 0x{service:02X}: 0x{nrc:02X} {NRC_NAMES.get(nrc, '')}".strip())


# --------------------------------------------------------------------------------------------
# PIDs


@dataclass(frozen=True, slots=True)
class PidSpec:
    """A mode 01 PID: ``value = raw * scale + offset`` (raw: ``size`` bytes, big-endian)."""

    pid: int
    #: CamelCase name (the VSS OBD-branch name where VSS has one)
    key: str
    description: str
    size: int
    #: ``None``: not a number (bitmaps, bit fields): ``ObdValue.value`` is the raw integer
    scale: float | None = 1.0
    offset: float = 0.0
    #: J1979's unit
    unit: str = ""
    vss: str | None = None


def _pids() -> dict[int, PidSpec]:
    pct = 100 / 255
    rows = [
        PidSpec(0x04, "EngineLoad", "Calculated engine load", 1, pct, 0, "percent", "Vehicle.OBD.EngineLoad"),
        PidSpec(
            0x05,
            "CoolantTemperature",
            "Engine coolant temperature",
            1,
            1,
            -40,
            "celsius",
            "Vehicle.Powertrain.CombustionEngine.ECT",
        ),
        PidSpec(
            0x06,
            "ShortTermFuelTrim1",
            "Short term fuel trim, bank 1",
            1,
            100 / 128,
            -100,
            "percent",
            "Vehicle.OBD.ShortTermFuelTrim1",
        ),
        PidSpec(
            0x07,
            "LongTermFuelTrim1",
            "Long term fuel trim, bank 1",
            1,
            100 / 128,
            -100,
            "percent",
            "Vehicle.OBD.LongTermFuelTrim1",
        ),
        PidSpec(0x0A, "FuelPressure", "Fuel pressure (gauge)", 1, 3, 0, "kPa", "Vehicle.OBD.FuelPressure"),
        PidSpec(
            0x0B, "MAP", "Intake manifold absolute pressure", 1, 1, 0, "kPa", "Vehicle.Powertrain.CombustionEngine.MAP"
        ),
        PidSpec(0x0C, "EngineSpeed", "Engine speed", 2, 0.25, 0, "rpm", "Vehicle.Powertrain.CombustionEngine.Speed"),
        PidSpec(0x0D, "Speed", "Vehicle speed", 1, 1, 0, "km/h", "Vehicle.Speed"),
        PidSpec(0x0E, "TimingAdvance", "Timing advance", 1, 0.5, -64, "degrees", "Vehicle.OBD.TimingAdvance"),
        PidSpec(0x0F, "IntakeTemp", "Intake air temperature", 1, 1, -40, "celsius", "Vehicle.OBD.IntakeTemp"),
        PidSpec(0x10, "MAF", "Mass air flow rate", 2, 0.01, 0, "g/s", "Vehicle.Powertrain.CombustionEngine.MAF"),
        PidSpec(
            0x11,
            "ThrottlePosition",
            "Throttle position",
            1,
            pct,
            0,
            "percent",
            "Vehicle.Powertrain.CombustionEngine.TPS",
        ),
        PidSpec(0x1F, "RunTime", "Run time since engine start", 2, 1, 0, "s", "Vehicle.OBD.RunTime"),
        PidSpec(0x21, "DistanceWithMIL", "Distance traveled with MIL on", 2, 1, 0, "km", "Vehicle.OBD.DistanceWithMIL"),
        PidSpec(0x2C, "CommandedEGR", "Commanded EGR", 1, pct, 0, "percent", "Vehicle.OBD.CommandedEGR"),
        PidSpec(
            0x2F,
            "FuelLevel",
            "Fuel tank level input",
            1,
            pct,
            0,
            "percent",
            "Vehicle.Powertrain.FuelSystem.RelativeLevel",
        ),
        PidSpec(
            0x31,
            "DistanceSinceDTCClear",
            "Distance traveled since codes cleared",
            2,
            1,
            0,
            "km",
            "Vehicle.OBD.DistanceSinceDTCClear",
        ),
        PidSpec(
            0x33,
            "BarometricPressure",
            "Absolute barometric pressure",
            1,
            1,
            0,
            "kPa",
            "Vehicle.OBD.BarometricPressure",
        ),
        PidSpec(
            0x42, "ControlModuleVoltage", "Control module voltage", 2, 0.001, 0, "V", "Vehicle.OBD.ControlModuleVoltage"
        ),
        PidSpec(0x43, "AbsoluteLoad", "Absolute load value", 2, pct, 0, "percent", "Vehicle.OBD.AbsoluteLoad"),
        PidSpec(
            0x45,
            "RelativeThrottlePosition",
            "Relative throttle position",
            1,
            pct,
            0,
            "percent",
            "Vehicle.OBD.RelativeThrottlePosition",
        ),
        PidSpec(
            0x46,
            "AmbientAirTemperature",
            "Ambient air temperature",
            1,
            1,
            -40,
            "celsius",
            "Vehicle.Exterior.AirTemperature",
        ),
        PidSpec(
            0x49,
            "AcceleratorPositionD",
            "Accelerator pedal position D",
            1,
            pct,
            0,
            "percent",
            "Vehicle.OBD.AcceleratorPositionD",
        ),
        PidSpec(
            0x5A,
            "RelativeAcceleratorPosition",
            "Relative accelerator pedal position",
            1,
            pct,
            0,
            "percent",
            "Vehicle.OBD.RelativeAcceleratorPosition",
        ),
        PidSpec(
            0x5C,
            "OilTemperature",
            "Engine oil temperature",
            1,
            1,
            -40,
            "celsius",
            "Vehicle.Powertrain.CombustionEngine.EOT",
        ),
        PidSpec(0x5E, "FuelRate", "Engine fuel rate", 2, 0.05, 0, "l/h", "Vehicle.OBD.FuelRate"),
        PidSpec(
            0x61,
            "DriverDemandEngineTorquePercent",
            "Driver's demand engine torque",
            1,
            1,
            -125,
            "percent",
            "Vehicle.OBD.DriverDemandEngineTorquePercent",
        ),
        PidSpec(
            0x62,
            "ActualEngineTorquePercent",
            "Actual engine torque",
            1,
            1,
            -125,
            "percent",
            "Vehicle.OBD.ActualEngineTorquePercent",
        ),
        PidSpec(0x63, "EngineReferenceTorque", "Engine reference torque", 2, 1, 0, "Nm"),
        PidSpec(0xA6, "Odometer", "Odometer", 4, 0.1, 0, "km", "Vehicle.TraveledDistance"),
        # not numbers: decoded to the raw integer, no sample
        PidSpec(0x01, "Status", "Monitor status since DTCs cleared", 4, None),
        PidSpec(0x03, "FuelStatus", "Fuel system status", 2, None),
        PidSpec(0x1C, "OBDStandards", "OBD standards this vehicle conforms to", 1, None),
        PidSpec(0x41, "DriveCycleStatus", "Monitor status this drive cycle", 4, None),
        PidSpec(0x51, "FuelType", "Fuel type", 1, None),
    ]
    for base in BITMAP_PIDS:
        rows.append(PidSpec(base, f"Pids{base:02X}", f"PIDs supported [{base + 1:02X}-{base + 0x20:02X}]", 4, None))
    return {r.pid: r for r in rows}


#: the PIDs this module decodes, by number
PIDS: dict[int, PidSpec] = _pids()
#: sizes of PIDs known only by length (so multi-PID responses can be split past them)
_SIZES = {0x02: 2, 0x12: 1, 0x13: 1, 0x1D: 1, 0x1E: 1}
_SIZES.update({p: 2 for p in range(0x14, 0x1C)})
_SIZES.update({p: 4 for p in (*range(0x24, 0x2C), *range(0x34, 0x3C))})


@dataclass(frozen=True, slots=True)
class ObdValue:
    """One decoded PID of a response."""

    pid: int
    key: str
    #: in J1979's unit (``unit``); the raw integer for bitmaps and bit fields; bytes when unknown
    value: float | int | bytes
    unit: str
    vss: str | None
    data: bytes

    def sample(self, *, timestamp: float, monotonic: float, source: str, bus: str = "") -> SignalSample | None:
        """The value as a ``SignalSample`` in our units; ``None`` for non-numeric PIDs."""
        if not isinstance(self.value, int | float) or PIDS.get(self.pid, None) is None:
            return None
        spec = PIDS[self.pid]
        if spec.scale is None:
            return None
        if self.vss is not None:
            target = vss.vss_signal(self.vss).unit
            return SignalSample(
                self.vss, vss.convert(self.value, self.unit, target), target, timestamp, monotonic, source
            )
        target = vss.canonical_unit(self.unit) or self.unit
        value = vss.convert(self.value, self.unit, target) if target != self.unit else self.value
        name = f"{bus}.OBD.{self.key}" if bus else f"OBD.{self.key}"
        return SignalSample(name, value, target, timestamp, monotonic, source)


def supported_pids(base: int, data: bytes | int) -> set[int]:
    """PIDs a ``base`` (0x00, 0x20, ...) bitmap says are supported (bit 31 is ``base + 1``)."""
    word = data if isinstance(data, int) else int.from_bytes(data[:4], "big")
    return {base + i + 1 for i in range(32) if word & (1 << (31 - i))}


def bitmap(base: int, pids: Iterable[int]) -> bytes:
    """The 4-byte bitmap for ``base`` of a set of PIDs (PIDs outside ``base+1..base+32`` ignored)."""
    word = 0
    for pid in pids:
        if base < pid <= base + 32:
            word |= 1 << (31 - (pid - base - 1))
    return word.to_bytes(4, "big")


def encode_pid(pid: int, value: float) -> bytes:
    """The data bytes of a PID for a value in J1979's unit (inverse of the formula)."""
    spec = PIDS.get(pid)
    if spec is None or spec.scale is None:
        if isinstance(value, int) and spec is not None:
            return value.to_bytes(spec.size, "big")
        raise ObdError(f"PID 0x{pid:02X} has no formula to encode a value with")
    raw = round((value - spec.offset) / spec.scale)
    if not 0 <= raw < 1 << (8 * spec.size):
        raise ObdError(f"{value} {spec.unit} is outside the range of PID 0x{pid:02X} ({spec.key})")
    return raw.to_bytes(spec.size, "big")


def decode_response(payload: bytes) -> list[ObdValue]:
    """The values of a mode 01 response payload (``41 PID data [PID data ...]``).

    Raises ``ObdNegativeResponse`` for ``7F 01 NRC`` and ``ObdDecodeError`` for anything that is
    not a well-formed mode 01 response.
    """
    if len(payload) < 1:
        raise ObdDecodeError("empty response", raw=payload)
    if payload[0] == NEGATIVE_RESPONSE:
        if len(payload) < 3:
            raise ObdDecodeError("negative response of fewer than 3 bytes", raw=payload)
        raise ObdNegativeResponse(payload[1], payload[2])
    if payload[0] != MODE_CURRENT_DATA | 0x40:
        raise ObdDecodeError(f"not a mode 01 response (service byte 0x{payload[0]:02X})", raw=payload)
    if len(payload) < 3:
        raise ObdDecodeError("mode 01 response without PID data", raw=payload)
    out: list[ObdValue] = []
    i = 1
    while i < len(payload):
        pid = payload[i]
        spec = PIDS.get(pid)
        size = spec.size if spec is not None else _SIZES.get(pid)
        if size is None:
            if i != 1:
                raise ObdDecodeError(f"unknown PID 0x{pid:02X} in a multi-PID response", raw=payload)
            size = len(payload) - 2
        data = bytes(payload[i + 1 : i + 1 + size])
        if len(data) != size or size == 0:
            raise ObdDecodeError(
                f"PID 0x{pid:02X} needs {size} data bytes, the response has {len(payload) - i - 1}", raw=payload
            )
        raw = int.from_bytes(data, "big")
        if spec is None:
            out.append(ObdValue(pid, f"Pid{pid:02X}", data, "", None, data))
        elif spec.scale is None:
            out.append(ObdValue(pid, spec.key, raw, "", None, data))
        else:
            value = raw * spec.scale + spec.offset
            if spec.scale == 1 and spec.offset == int(spec.offset):
                value = int(value)
            out.append(ObdValue(pid, spec.key, value, spec.unit, spec.vss, data))
        i += 1 + size
    return out


# --------------------------------------------------------------------------------------------
# Addressing and requests


@dataclass(frozen=True, slots=True)
class ObdAddressing:
    """ISO 15765-4 CAN identifiers. ``ecu`` is 0..7 with 11-bit ids (0x7E0+ecu / 0x7E8+ecu),
    the ECU's address (0x00..0xFF, engine usually 0x10) with 29-bit ids."""

    extended: bool = False

    @property
    def functional_id(self) -> int:
        return 0x18DB33F1 if self.extended else 0x7DF

    def request_id(self, ecu: int) -> int:
        if self.extended:
            return 0x18DA00F1 | (ecu & 0xFF) << 8
        if not 0 <= ecu <= 7:
            raise ValueError(f"11-bit OBD ECUs are 0..7, not {ecu}")
        return 0x7E0 + ecu

    def response_id(self, ecu: int) -> int:
        if self.extended:
            return 0x18DAF100 | (ecu & 0xFF)
        if not 0 <= ecu <= 7:
            raise ValueError(f"11-bit OBD ECUs are 0..7, not {ecu}")
        return 0x7E8 + ecu

    def ecu_of_response(self, frame: CanFrame) -> int | None:
        """The ECU a frame is a response from, or ``None`` when it is not an OBD response."""
        ident = frame.arbitration_id
        if frame.is_extended_id != self.extended:
            return None
        if self.extended:
            return ident & 0xFF if ident & 0xFFFFFF00 == 0x18DAF100 else None
        return ident - 0x7E8 if 0x7E8 <= ident <= 0x7EF else None

    def ecu_of_request(self, frame: CanFrame) -> int | None:
        """The ECU a physical request is for; ``-1`` for a functional request; else ``None``."""
        ident = frame.arbitration_id
        if frame.is_extended_id != self.extended:
            return None
        if ident == self.functional_id:
            return -1
        if self.extended:
            return (ident >> 8) & 0xFF if ident & 0xFFFF00FF == 0x18DA00F1 else None
        return ident - 0x7E0 if 0x7E0 <= ident <= 0x7E7 else None


def build_request(pids: Sequence[int], *, mode: int = MODE_CURRENT_DATA) -> bytes:
    """The request payload for up to 6 PIDs (``01 0C 0D``)."""
    if not 1 <= len(pids) <= 6:
        raise ValueError(f"a request has 1..6 PIDs, not {len(pids)}")
    if not all(0 <= p <= 0xFF for p in pids):
        raise ValueError(f"PIDs are bytes: {list(pids)}")
    return bytes([mode, *pids])


def request_frame(
    pids: Sequence[int],
    *,
    addressing: ObdAddressing = ObdAddressing(),  # noqa: B008 (frozen, immutable)
    ecu: int | None = None,
    padding: int | None = 0x55,
    channel: str = "",
    timestamp: float = 0.0,
) -> CanFrame:
    """A single-frame request; ``ecu=None`` addresses every ECU (functional)."""
    payload = build_request(pids)
    data = bytes([len(payload)]) + payload
    if padding is not None:
        data = data.ljust(8, bytes([padding]))
    return CanFrame(
        arbitration_id=addressing.functional_id if ecu is None else addressing.request_id(ecu),
        data=data,
        is_extended_id=addressing.extended,
        channel=channel,
        timestamp=timestamp,
        is_rx=False,
    )


# --------------------------------------------------------------------------------------------
# The poller


def _default_pids() -> dict[int, float]:
    return {0x0C: 0.1, 0x0D: 0.1, 0x11: 0.2, 0x04: 0.5, 0x05: 2.0, 0x2F: 10.0, 0x46: 10.0}


@dataclass(frozen=True, slots=True)
class ObdPollerConfig:
    #: PID -> seconds between requests
    pids: Mapping[int, float] = field(default_factory=_default_pids)
    addressing: ObdAddressing = ObdAddressing()
    #: poll one ECU by physical address; ``None``: functional requests that every ECU answers
    ecu: int | None = None
    #: how long to wait for responses to a request (J1979 P2 is 50 ms)
    response_timeout: float = 0.1
    #: how long to wait after an ECU said "response pending" (NRC 0x78, P2*)
    pending_timeout: float = 5.0
    #: ask PIDs 0x00/0x20/... first and poll only configured PIDs an ECU supports
    discover: bool = True
    #: first wait before repeating a discovery that nobody answered; doubles up to 60 s
    discovery_retry: float = 2.0
    #: fill byte of requests and flow control frames
    padding: int | None = 0x55

    def __post_init__(self) -> None:
        for pid, interval in self.pids.items():
            if not 0 < pid <= 0xFF or pid in BITMAP_PIDS:
                raise ValueError(f"cannot poll PID 0x{pid:02X}")
            if not interval > 0:
                raise ValueError(f"PID 0x{pid:02X}: interval must be > 0, not {interval}")


@dataclass(slots=True)
class _Pending:
    pids: tuple[int, ...]
    #: ECUs whose answer completes the request (``None``: the first answer does)
    expected: set[int] | None
    answered: set[int]
    done: asyncio.Future[None]
    deadline: float
    wait_all: bool = False


class ObdPoller:
    """Polls OBD-II mode 01 PIDs on one bus; see the module docstring.

    ``sink`` receives every sample as it is decoded; ``latest`` keeps the last one per name.
    ``run()`` returns when the port's frame stream ends; cancel it to stop.
    """

    def __init__(
        self,
        port: CanPort,
        clock: Clock,
        config: ObdPollerConfig | None = None,
        *,
        sink: Callable[[SignalSample], None] | None = None,
        bus: str | None = None,
    ) -> None:
        self.port = port
        self.clock = clock
        self.config = config or ObdPollerConfig()
        self.sink = sink
        self.bus = bus or getattr(port, "name", "") or "can"
        self.latest: dict[str, SignalSample] = {}
        #: ECU -> PIDs it supports (from discovery)
        self.supported: dict[int, set[int]] = {}
        #: the PIDs being polled
        self.active: dict[int, float] = {}
        self.discovered = asyncio.Event()
        self._counters = dict.fromkeys(
            (
                "requests",
                "responses",
                "samples",
                "timeouts",
                "negative_responses",
                "response_pending",
                "decode_errors",
                "isotp_errors",
                "unsupported",
                "discovery_failures",
                "send_errors",
                "sample_errors",
                "ignored",
            ),
            0,
        )
        self.last_nrc: dict[int, int] = {}
        self._pending: _Pending | None = None
        isotp = IsoTpConfig(padding=self.config.padding, n_cr=max(self.config.response_timeout, 0.15))
        self._isotp = isotp
        self._rx: dict[int, IsoTpReceiver] = {}

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(self._receive_loop(), name=f"obd-{self.bus}-rx")
            poller = tg.create_task(self._poll_loop(), name=f"obd-{self.bus}-poll")
            await receiver
            poller.cancel()

    async def poll_forever(self) -> None:
        """Only the request side, for a caller that owns the port's receive stream and hands
        every received frame to ``on_frame()`` (the agent's CAN service does)."""
        await self._poll_loop()

    # ------------------------------------------------------------------------- receiving

    async def _receive_loop(self) -> None:
        async for frame in self.port.frames():
            try:
                await self.on_frame(frame)
            except HalError as err:  # a send of flow control failed
                self._counters["send_errors"] += 1
                log.debug("obd %s: %s", self.bus, err)

    async def on_frame(self, frame: CanFrame) -> None:
        """Handle one received frame (the receive loop calls this for every frame)."""
        addressing = self.config.addressing
        ecu = addressing.ecu_of_response(frame)
        if ecu is None or frame.is_remote_frame or frame.is_error_frame:
            return
        rx = self._rx.get(ecu)
        if rx is None:
            rx = self._rx[ecu] = IsoTpReceiver(self._isotp)
        now = self.clock.monotonic()
        try:
            result = rx.on_frame(frame.data, now=now)
        except IsoTpError as err:
            self._counters["isotp_errors"] += 1
            log.log(TRACE, "obd %s ECU %s: %s", self.bus, ecu, err)
            fc = getattr(err, "flow_control", None)
            if fc:
                await self._send_fc(ecu, fc)
            return
        if result.flow_control is not None:
            await self._send_fc(ecu, result.flow_control)
        if result.payload is not None:
            self._on_payload(ecu, result.payload, frame)

    async def _send_fc(self, ecu: int, data: bytes) -> None:
        addressing = self.config.addressing
        await self.port.send(
            CanFrame(
                arbitration_id=addressing.request_id(ecu),
                data=data,
                is_extended_id=addressing.extended,
                channel=self.bus,
                timestamp=self.clock.time(),
                is_rx=False,
            )
        )

    def _on_payload(self, ecu: int, payload: bytes, frame: CanFrame) -> None:
        pending = self._pending
        try:
            values = decode_response(payload)
        except ObdNegativeResponse as neg:
            if neg.service != MODE_CURRENT_DATA:
                self._counters["ignored"] += 1
                return
            if neg.nrc == NRC_RESPONSE_PENDING:
                self._counters["response_pending"] += 1
                if pending is not None:
                    pending.deadline = max(pending.deadline, self.clock.monotonic() + self.config.pending_timeout)
                return
            self._counters["negative_responses"] += 1
            self.last_nrc[ecu] = neg.nrc
            log.log(TRACE, "obd %s ECU %s: %s", self.bus, ecu, neg)
            self._answered(ecu)
            return
        except ObdDecodeError as err:
            if payload[:1] != bytes([MODE_CURRENT_DATA | 0x40]):
                self._counters["ignored"] += 1  # another service's response: not ours
                return
            self._counters["decode_errors"] += 1
            log.log(TRACE, "obd %s ECU %s: %s", self.bus, ecu, err)
            self._answered(ecu)
            return
        self._counters["responses"] += 1
        source = f"{self.bus}.OBD.{frame.arbitration_id:03X}"
        for value in values:
            if value.pid in BITMAP_PIDS and isinstance(value.value, int):
                known = self.supported.setdefault(ecu, set())
                known.difference_update(range(value.pid + 1, value.pid + 33))
                known.update(supported_pids(value.pid, value.value))
                continue
            try:
                sample = value.sample(timestamp=frame.timestamp, monotonic=frame.monotonic, source=source, bus=self.bus)
            except DecodeError as err:  # a unit the catalogue cannot take: our bug, counted
                self._counters["sample_errors"] += 1
                log.warning("obd %s: %s", self.bus, err)
                continue
            if sample is None:
                continue
            self._counters["samples"] += 1
            self.latest[sample.name] = sample
            if self.sink is not None:
                self.sink(sample)
        self._answered(ecu)

    def _answered(self, ecu: int) -> None:
        pending = self._pending
        if pending is None or pending.done.done():
            return
        pending.answered.add(ecu)
        if pending.wait_all:
            return
        if pending.expected is None or pending.expected <= pending.answered:
            pending.done.set_result(None)

    # ------------------------------------------------------------------------- polling

    async def request(
        self, pids: Sequence[int], *, expected: set[int] | None = None, wait_all: bool = False
    ) -> set[int]:
        """Send one request and wait for answers; returns the ECUs that answered.

        The wait ends when every ECU in ``expected`` has answered, or at the first answer when
        ``expected`` is ``None``, or at the response timeout (``wait_all``: only then). A
        request that ends at the timeout without the answers it waited for counts as a timeout.
        """
        cfg = self.config
        loop = asyncio.get_running_loop()
        pending = _Pending(
            tuple(pids),
            expected,
            set(),
            loop.create_future(),
            self.clock.monotonic() + cfg.response_timeout,
            wait_all,
        )
        self._pending = pending
        frame = request_frame(
            pids,
            addressing=cfg.addressing,
            ecu=cfg.ecu,
            padding=cfg.padding,
            channel=self.bus,
            timestamp=self.clock.time(),
        )
        try:
            await self.port.send(frame)
        except HalError as err:
            self._counters["send_errors"] += 1
            log.debug("obd %s: send failed: %s", self.bus, err)
            self._pending = None
            await self.clock.sleep(cfg.response_timeout)
            return set()
        self._counters["requests"] += 1
        try:
            while not pending.done.done():
                remaining = pending.deadline - self.clock.monotonic()
                if remaining <= 0:
                    break
                sleeper = loop.create_task(self.clock.sleep(remaining), name=f"obd-{self.bus}-wait")
                try:
                    await asyncio.wait({pending.done, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
        finally:
            self._pending = None
        if not pending.done.done():
            pending.done.cancel()
            if not pending.answered or (pending.expected and not pending.expected <= pending.answered):
                self._counters["timeouts"] += 1
                for ecu, rx in self._rx.items():
                    if ecu not in pending.answered and rx.busy:  # a multi-frame answer cut short
                        self._counters["isotp_errors"] += 1
                        rx.reset()
        return set(pending.answered)

    async def discover(self) -> bool:
        """Ask the supported-PID bitmaps; ``True`` when some ECU answered."""
        base = 0x00
        answered_any = False
        while True:
            answered = await self.request((base,), wait_all=True)
            if base == 0x00 and not answered:
                break
            answered_any = answered_any or bool(answered)
            nxt = base + 0x20
            if nxt > 0xE0 or not any(nxt in pids for pids in self.supported.values()):
                break
            base = nxt
        return answered_any

    async def _poll_loop(self) -> None:
        cfg = self.config
        if cfg.discover:
            delay = cfg.discovery_retry
            while not await self.discover():
                self._counters["discovery_failures"] += 1
                log.info("obd %s: no ECU answered PID 0x00; retrying in %.0f s", self.bus, delay)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 60.0)
            every = set().union(*self.supported.values())
            self.active = {pid: iv for pid, iv in cfg.pids.items() if pid in every}
            unsupported = sorted(set(cfg.pids) - every)
            self._counters["unsupported"] = len(unsupported)
            if unsupported:
                log.info("obd %s: not supported by any ECU: %s", self.bus, ", ".join(f"0x{p:02X}" for p in unsupported))
        else:
            self.active = dict(cfg.pids)
        self.discovered.set()
        if not self.active:
            log.warning("obd %s: nothing to poll", self.bus)
            return
        now = self.clock.monotonic()
        due = dict.fromkeys(self.active, now)
        while True:
            pid = min(due, key=due.__getitem__)
            await self.clock.sleep_until(due[pid])
            expected = {e for e, pids in self.supported.items() if pid in pids} or None if cfg.discover else None
            await self.request((pid,), expected=expected)
            due[pid] = max(due[pid] + self.active[pid], self.clock.monotonic())
