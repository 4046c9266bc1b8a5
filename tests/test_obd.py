"""OBD-II mode 01: formulas, requests, bitmaps, the simulated ECU, and ObdPoller against it over
two python-can ``virtual`` buses."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.can_convert import frame_from_message, message_from_frame
from drivers.clock import SimulatedClock, SystemClock
from drivers.isotp import IsoTpReceiver
from drivers.obd import (
    PIDS,
    ObdAddressing,
    ObdDecodeError,
    ObdError,
    ObdNegativeResponse,
    ObdPoller,
    ObdPollerConfig,
    bitmap,
    decode_response,
    encode_pid,
    request_frame,
    supported_pids,
)
from drivers.obd_ecu import ObdEcu, ObdEcuService
from hal.interfaces import CanPort
from hal.types import CanBusStats, CanFilter, CanFrame, SignalSample

# ------------------------------------------------------------------------------------ codec


@pytest.mark.parametrize(
    ("payload", "pid", "value", "unit"),
    [
        ("41 04 FF", 0x04, 100.0, "percent"),
        ("41 05 7B", 0x05, 83, "celsius"),
        ("41 0B 4C", 0x0B, 76, "kPa"),
        ("41 0C 1B E4", 0x0C, 1785.0, "rpm"),
        ("41 0D 35", 0x0D, 53, "km/h"),
        ("41 0F 28", 0x0F, 0, "celsius"),
        ("41 10 01 F4", 0x10, 5.0, "g/s"),
        ("41 11 33", 0x11, 20.0, "percent"),
        ("41 1F 01 00", 0x1F, 256, "s"),
        ("41 2F 80", 0x2F, 128 * 100 / 255, "percent"),
        ("41 33 65", 0x33, 101, "kPa"),
        ("41 42 31 2D", 0x42, 12.589, "V"),
        ("41 46 3C", 0x46, 20, "celsius"),
        ("41 5C 8C", 0x5C, 100, "celsius"),
        ("41 62 95", 0x62, 24, "percent"),
        ("41 A6 00 01 E2 40", 0xA6, 12345.6, "km"),
    ],
)
def test_j1979_formulas(payload: str, pid: int, value: float, unit: str) -> None:
    (got,) = decode_response(bytes.fromhex(payload))
    assert got.pid == pid and got.unit == unit
    assert got.value == pytest.approx(value)


def test_samples_are_vss_in_our_units() -> None:
    (speed,) = decode_response(bytes.fromhex("410D48"))
    sample = speed.sample(timestamp=5.0, monotonic=1.0, source="can1.OBD.7E8")
    assert sample == SignalSample("Vehicle.Speed", pytest.approx(20.0), "m/s", 5.0, 1.0, "can1.OBD.7E8")
    (odo,) = decode_response(bytes.fromhex("41A60001E240"))
    s = odo.sample(timestamp=0, monotonic=0, source="x")
    assert s is not None and s.name == "Vehicle.TraveledDistance" and s.value == pytest.approx(12345600.0)
    (ref,) = decode_response(bytes.fromhex("41630190"))
    s = ref.sample(timestamp=0, monotonic=0, source="x", bus="can1")
    assert s is not None and (s.name, s.value, s.unit) == ("can1.OBD.EngineReferenceTorque", 400, "Nm")
    (bits,) = decode_response(bytes.fromhex("4100BE1FA813"))
    assert bits.sample(timestamp=0, monotonic=0, source="x") is None


def test_multi_pid_response() -> None:
    values = decode_response(bytes.fromhex("410C1AF80D32057B"))
    assert [(v.pid, v.value) for v in values] == [(0x0C, 1726.0), (0x0D, 50), (0x05, 83)]
    with pytest.raises(ObdDecodeError, match="unknown PID 0xFE"):
        decode_response(bytes.fromhex("410D32FE01"))
    with pytest.raises(ObdDecodeError, match="needs 2 data bytes"):
        decode_response(bytes.fromhex("410D320C1A"))


def test_negative_and_foreign_responses() -> None:
    with pytest.raises(ObdNegativeResponse) as info:
        decode_response(bytes.fromhex("7F0112"))
    assert (info.value.service, info.value.nrc) == (1, 0x12) and "subFunctionNotSupported" in str(info.value)
    for bad in ("", "7F01", "49020157", "41", "410C1A"):
        with pytest.raises(ObdDecodeError):
            decode_response(bytes.fromhex(bad))


def test_supported_bitmaps() -> None:
    # the example of J1979 / Wikipedia: BE 1F A8 13
    assert supported_pids(0x00, bytes.fromhex("BE1FA813")) == {
        0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x13, 0x15, 0x1C, 0x1F, 0x20,
    }  # fmt: skip
    pids = {0x21, 0x2F, 0x33, 0x40}
    assert supported_pids(0x20, bitmap(0x20, pids)) == pids


@given(st.sampled_from(sorted(p for p, s in PIDS.items() if s.scale is not None)), st.data())
def test_encode_decode_inverse(pid: int, data: st.DataObject) -> None:
    spec = PIDS[pid]
    raw = data.draw(st.binary(min_size=spec.size, max_size=spec.size))
    (value,) = decode_response(bytes([0x41, pid]) + raw)
    assert isinstance(value.value, int | float)
    assert encode_pid(pid, value.value) == raw


@given(st.binary(max_size=40))
@settings(max_examples=500)
def test_fuzz_decoder_raises_only_obd_errors(payload: bytes) -> None:
    try:
        values = decode_response(payload)
    except ObdError:
        return
    for v in values:
        if isinstance(v.value, float | int):
            v.sample(timestamp=0, monotonic=0, source="fuzz", bus="can1")


def test_request_frames() -> None:
    f = request_frame([0x0D])
    assert (f.arbitration_id, f.data.hex(), f.is_extended_id) == (0x7DF, "02010d5555555555", False)
    f = request_frame([0x0C, 0x0D], ecu=2, padding=None)
    assert (f.arbitration_id, f.data.hex()) == (0x7E2, "03010c0d")
    ext = ObdAddressing(extended=True)
    assert request_frame([0x00], addressing=ext).arbitration_id == 0x18DB33F1
    assert request_frame([0x00], addressing=ext, ecu=0x10).arbitration_id == 0x18DA10F1
    assert ext.response_id(0x10) == 0x18DAF110
    assert ext.ecu_of_response(CanFrame(0x18DAF118, b"", is_extended_id=True)) == 0x18
    assert ObdAddressing().ecu_of_response(CanFrame(0x7EF, b"")) == 7
    assert ObdAddressing().ecu_of_response(CanFrame(0x7E7, b"")) is None
    with pytest.raises(ValueError):
        request_frame([1, 2, 3, 4, 5, 6, 7])


def test_ecu_answers_multi_pid_request_with_multi_frame_response() -> None:
    ecu = ObdEcu({0x0C: 1726.0, 0x0D: 50, 0x05: 83, 0x04: 40.0, 0x11: 20.0, 0x2F: 50.0})
    (ff,) = ecu.on_frame(request_frame([0x0C, 0x0D, 0x05, 0x04, 0x11, 0x2F]), now=0.0)
    assert ff.arbitration_id == 0x7E8 and ff.data[0] >> 4 == 1
    rx = IsoTpReceiver()
    result = rx.on_frame(ff.data, now=0.0)
    assert result.flow_control is not None
    cfs = ecu.on_frame(CanFrame(0x7E0, result.flow_control), now=0.0)
    payload = None
    for cf in cfs:
        payload = rx.on_frame(cf.data, now=0.0).payload or payload
    assert payload is not None
    got = {v.pid: v.value for v in decode_response(payload)}
    assert got == pytest.approx({0x0C: 1726.0, 0x0D: 50, 0x05: 83, 0x04: 40.0, 0x11: 20.0, 0x2F: 50.2}, abs=0.2)


def test_ecu_bitmaps_chain_to_high_pids() -> None:
    ecu = ObdEcu({0x0D: 10, 0xA6: 100.0})
    seen: set[int] = set()
    for base in (0x00, 0x20, 0x40, 0x60, 0x80, 0xA0):
        (resp,) = ecu.on_frame(request_frame([base]), now=0)
        (value,) = decode_response(resp.data[1 : 1 + resp.data[0]])
        seen |= supported_pids(base, value.value)  # type: ignore[arg-type]
    assert seen >= {0x0D, 0xA6, 0x20, 0x40, 0x60, 0x80, 0xA0}
    assert ecu.on_frame(request_frame([0xC0]), now=0) == []  # not advertised
    assert ecu.on_frame(request_frame([0x33]), now=0) == []  # unsupported: silence
    other = ecu.on_frame(CanFrame(0x7E0, bytes.fromhex("0209025555555555")), now=0)
    assert other[0].data[:4] == bytes.fromhex("037F0911")  # another service: NRC on physical only


# ------------------------------------------------------------------------------------ bus


class VirtualPort(CanPort):
    """A CanPort over one python-can ``virtual`` bus (for these tests only)."""

    def __init__(self, channel: str, name: str) -> None:
        self.name = name
        self._channel = channel
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._queue: asyncio.Queue[can.Message | None] = asyncio.Queue()
        self.sent = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue

        class ToLoop(can.Listener):
            def on_message_received(self, msg: can.Message) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, msg)

        self._bus = can.Bus(interface="virtual", channel=self._channel, receive_own_messages=False)
        self._notifier = can.Notifier(self._bus, [ToLoop()], timeout=0.01)

    async def close(self) -> None:
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if self._bus is not None:
            self._bus.shutdown()
            self._bus = None
        self._queue.put_nowait(None)

    async def frames(self) -> AsyncIterator[CanFrame]:
        while (msg := await self._queue.get()) is not None:
            yield frame_from_message(msg, channel=self.name, monotonic=time.monotonic())

    async def send(self, frame: CanFrame) -> None:
        assert self._bus is not None
        self._bus.send(message_from_frame(frame))
        self.sent += 1

    def set_filters(self, filters: Sequence[CanFilter] | None) -> None:
        raise NotImplementedError

    def stats(self) -> CanBusStats:
        return CanBusStats(self.name, tx_frames=self.sent)


@contextlib.asynccontextmanager
async def bus_pair() -> AsyncIterator[tuple[VirtualPort, VirtualPort]]:
    channel = f"obd-{uuid.uuid4().hex}"
    tester, vehicle = VirtualPort(channel, "can1"), VirtualPort(channel, "can1")
    async with tester, vehicle:
        yield tester, vehicle


async def run_for(seconds: float, *coros: object) -> None:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c, name=f"t{i}") for i, c in enumerate(coros)]  # type: ignore[arg-type]
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()


async def test_poller_against_simulated_ecus_over_virtual_buses() -> None:
    engine = ObdEcu(
        {0x0C: 2000.0, 0x0D: 72, 0x05: 90, 0x11: 25.0, 0x42: b"\x30", 0xA6: 54321.0},
        ecu=0,
        negative={0x04: 0x22},
        silent={0x2F},
    )
    gearbox = ObdEcu({0x05: 70, 0x0D: 72}, ecu=1)
    samples: list[SignalSample] = []
    config = ObdPollerConfig(
        pids={0x0C: 0.05, 0x0D: 0.1, 0x05: 0.2, 0x04: 0.2, 0x2F: 0.2, 0x42: 0.2, 0xA6: 0.3, 0x33: 0.1},
        response_timeout=0.05,
    )
    async with bus_pair() as (tester, vehicle):
        poller = ObdPoller(tester, SystemClock(), config, sink=samples.append)
        service = ObdEcuService(vehicle, SystemClock(), engine, gearbox)
        await run_for(1.0, service.run(), poller.run())

    c = poller.counters
    assert poller.supported[0] >= {0x0C, 0x0D, 0x05, 0x11, 0x42, 0xA6, 0x04, 0x2F} and poller.supported[1] >= {
        0x05,
        0x0D,
    }
    assert c["unsupported"] == 1  # 0x33: nobody has it, never asked
    assert set(poller.active) == {0x0C, 0x0D, 0x05, 0x04, 0x2F, 0x42, 0xA6}
    by_name: dict[str, list[SignalSample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    rpm = by_name["Vehicle.Powertrain.CombustionEngine.Speed"]
    assert len(rpm) >= 8 and {s.value for s in rpm} == {2000.0}
    assert {(round(float(s.value), 9), s.unit) for s in by_name["Vehicle.Speed"]} == {(20.0, "m/s")}
    assert {s.source for s in by_name["Vehicle.Speed"]} == {"can1.OBD.7E8", "can1.OBD.7E9"}
    coolant = {s.source: s.value for s in by_name["Vehicle.Powertrain.CombustionEngine.ECT"]}
    assert coolant == {"can1.OBD.7E8": 90, "can1.OBD.7E9": 70}
    assert by_name["Vehicle.TraveledDistance"][0].value == pytest.approx(54321000.0)
    # the bad ones are counted, and the poller kept going
    assert c["negative_responses"] >= 2 and poller.last_nrc[0] == 0x22  # 0x04
    assert c["timeouts"] >= 2  # 0x2F is advertised but never answered
    assert c["decode_errors"] >= 2  # 0x42 comes with 1 byte instead of 2
    assert "Vehicle.OBD.ControlModuleVoltage" not in by_name
    assert c["requests"] >= 30 and c["responses"] >= 20
    assert poller.latest["Vehicle.Powertrain.CombustionEngine.Speed"].value == 2000.0


async def test_multi_frame_response_over_the_bus() -> None:
    ecu = ObdEcu({0x0C: 1726.0, 0x0D: 50, 0x05: 83, 0x04: 40.0, 0x11: 20.0, 0x46: 21}, ecu=0)
    samples: list[SignalSample] = []
    async with bus_pair() as (tester, vehicle):
        poller = ObdPoller(
            tester, SystemClock(), ObdPollerConfig(pids={0x0D: 10.0}, discover=False), sink=samples.append
        )
        service = ObdEcuService(vehicle, SystemClock(), ecu)

        async def ask() -> None:
            await asyncio.sleep(0.05)
            answered = await poller.request([0x0C, 0x0D, 0x05, 0x04, 0x11, 0x46], expected={0})
            assert answered == {0}

        async with asyncio.TaskGroup() as tg:
            rx = tg.create_task(poller._receive_loop(), name="rx")
            srv = tg.create_task(service.run(), name="ecu")
            await ask()
            rx.cancel()
            srv.cancel()
    names = {s.name: s.value for s in samples}
    assert names["Vehicle.Exterior.AirTemperature"] == 21
    assert names["Vehicle.Powertrain.CombustionEngine.Speed"] == 1726.0
    assert len(names) == 6
    assert poller.counters["isotp_errors"] == 0 and poller.counters["timeouts"] == 0


class RecordingPort(CanPort):
    """Frames in from a list, sent frames recorded (a fake of the interface)."""

    def __init__(self, incoming: list[CanFrame] | None = None) -> None:
        self.name = "can1"
        self.incoming = incoming or []
        self.sent_frames: list[CanFrame] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def frames(self) -> AsyncIterator[CanFrame]:
        for f in self.incoming:
            yield f

    async def send(self, frame: CanFrame) -> None:
        self.sent_frames.append(frame)

    def set_filters(self, filters: Sequence[CanFilter] | None) -> None: ...

    def stats(self) -> CanBusStats:
        return CanBusStats(self.name)


async def test_no_ecu_discovery_retries_with_backoff_on_simulated_time() -> None:
    clock = SimulatedClock()
    port = RecordingPort()
    poller = ObdPoller(port, clock, ObdPollerConfig(discovery_retry=1.0, response_timeout=0.1))
    task = asyncio.create_task(poller._poll_loop(), name="poll")
    for _ in range(80):
        await clock.advance(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    c = poller.counters
    # requests at 0, 1.1, 3.2, 7.3 s (waits of 1, 2, 4 s after each 0.1 s timeout)
    assert c["requests"] == 4 and c["timeouts"] == 4 and c["discovery_failures"] >= 3
    assert all(f.arbitration_id == 0x7DF and f.data[:3] == b"\x02\x01\x00" for f in port.sent_frames)
    assert not poller.discovered.is_set()


async def test_garbage_from_response_ids_never_raises() -> None:
    rng = random.Random(1234)
    frames = []
    for _ in range(3000):
        ident = rng.choice([0x7E8, 0x7E9, 0x7EF, 0x7DF, 0x123])
        size = rng.randint(0, 8)
        data = bytes(rng.randrange(256) for _ in range(size))
        if rng.random() < 0.3 and size:
            data = bytes([rng.choice([0x02, 0x03, 0x10, 0x21, 0x30]), rng.choice([0x41, 0x7F, 0x00, 0x14])]) + data[2:]
        frames.append(CanFrame(ident, data))
    port = RecordingPort(frames)
    poller = ObdPoller(port, SimulatedClock(), ObdPollerConfig())
    await poller._receive_loop()
    c = poller.counters
    assert c["isotp_errors"] + c["decode_errors"] + c["ignored"] + c["responses"] + c["negative_responses"] > 100
    # flow control was sent for the first frames it accepted, to the ECU's request id
    assert all(f.arbitration_id in range(0x7E0, 0x7E8) and f.data[0] >> 4 == 3 for f in port.sent_frames)


def test_29_bit_addressing_round_trip() -> None:
    ext = ObdAddressing(extended=True)
    ecu = ObdEcu({0x0D: 30, 0x0C: 800.0}, ecu=0x10, addressing=ext)
    (resp,) = ecu.on_frame(request_frame([0x0D], addressing=ext), now=0)
    assert resp.is_extended_id and resp.arbitration_id == 0x18DAF110
    assert ext.ecu_of_response(resp) == 0x10
    (value,) = decode_response(resp.data[1 : 1 + resp.data[0]])
    assert (value.pid, value.value) == (0x0D, 30)
    (resp,) = ecu.on_frame(request_frame([0x0C], addressing=ext, ecu=0x10), now=0)
    assert decode_response(resp.data[1 : 1 + resp.data[0]])[0].value == 800.0
    assert ecu.on_frame(request_frame([0x0C], addressing=ext, ecu=0x18), now=0) == []  # another ECU's
    assert ecu.on_frame(request_frame([0x0C]), now=0) == []  # 11-bit request
