"""``PythonCanPort``: one ``CanPort`` over any python-can interface (socketcan, virtual,
udp_multicast, slcan, pcan, kvaser, ...).

Receive path (the one bridge from python-can into asyncio):

* Interfaces with a selectable socket (``socketcan``, ``udp_multicast``) are read by the event
  loop itself: ``loop.add_reader(bus.fileno())`` drains ``bus.recv(0)`` up to ``rx_batch_size``
  frames per readiness event. Other interfaces (serial adapters, vendor DLLs, ``virtual``) get
  one reader thread: it blocks in ``bus.recv(rx_poll_interval)`` for the first frame, drains
  ``bus.recv(0)`` until empty (at most ``rx_batch_size``), converts the batch and hands it over
  with at most one ``call_soon_threadsafe`` per wake-up of the consumer.
* Once a drain found the queue empty, the reader pauses ``rx_coalesce`` seconds (default
  1 ms) before reading again, so a busy bus costs one wake-up per millisecond instead of one
  per frame (8,000/s at 1 Mbit/s); frames wait at most that long more. ``0`` disables it.
* Frames wait in one bounded buffer of ``rx_buffer_size`` frames. When the consumer is too
  slow the **oldest** frames are dropped and counted in ``CanBusStats.overruns``: the freshest
  bus state is worth more to a vehicle-state consumer than an old backlog. At most
  ``rx_buffer_size + rx_batch_size`` frames are held (buffer, batch in flight) besides what
  python-can and the kernel queue, and the last list ``batches()`` handed out.
* ``frames()`` yields frames, ``batches()`` whole lists (all frames waiting); use one of
  them, from one task. A frame stays in the buffer until it is yielded.

Statistics: ``rx_frames``/``rx_bytes`` count received data and remote frames (not error
frames, not our own echoed frames); ``overruns`` those of them dropped before the consumer
took them. Bus load is the bus time of the frames seen over the last second (10 slots of
100 ms plus the current one) divided by that span, with frame lengths without stuff bits:

* classic: ``47 + 8n`` bits (11-bit id) or ``67 + 8n`` bits (29-bit id) at ``bitrate``;
  remote frames have ``n = 0``;
* CAN FD: ``30`` (11-bit) or ``49`` (29-bit) arbitration-phase bits (SOF..BRS plus CRC
  delimiter, ACK, EOF, IFS) at ``bitrate`` and ``32 + 8n`` (``n <= 16``) or ``37 + 8n``
  data-phase bits (ESI, DLC, data, stuff count, CRC-17/21 and its fixed stuff bits) at
  ``data_bitrate`` when the frame switches bitrate, at ``bitrate`` otherwise.

Error frames are counted, not timed. Where they carry SocketCAN error classes (``socketcan``,
and ``virtual``/``udp_multicast`` used to emulate it) they drive ``state``: ``CAN_ERR_BUSOFF``
-> bus-off (counted once per entry), ``CAN_ERR_CRTL`` with the RX/TX passive bits -> passive,
with ``CAN_ERR_CRTL_ACTIVE`` or ``CAN_ERR_RESTARTED`` -> active; a data frame received while
bus-off means the controller is back (active). Otherwise ``state`` comes from ``bus.state``
where the interface reports the controller's state (``STATE_REPORTING_INTERFACES``), else
it is ``unknown`` until frames flow (then ``active``); ``stopped`` once closed.

Sending never blocks the loop: interfaces whose ``send(msg, 0)`` cannot block are sent to
directly, falling back to the port's one send thread (``tx_timeout``) when that fails; the
others always go through that thread, which keeps frames in order.

``udp_multicast`` cannot be bound to an interface; the port refuses to open it while any
network interface other than ``lo`` is up (its multicast would leave the machine).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import can

from drivers.can_convert import frame_from_message, message_from_frame
from drivers.clock import SystemClock
from hal.errors import DecodeError, DeviceError
from hal.interfaces import CanPort, Clock
from hal.types import CanBusState, CanBusStats, CanFilter, CanFrame

__all__ = ["BusLoadMeter", "PythonCanPort", "frame_bus_time", "non_loopback_interfaces_up"]

log = logging.getLogger(__name__)

#: level of per-frame traffic logs (below DEBUG)
TRACE = 5

# SocketCAN error classes (linux/can/error.h), carried in the error frame's id
CAN_ERR_CRTL = 0x00000004
CAN_ERR_BUSOFF = 0x00000040
CAN_ERR_RESTARTED = 0x00000100
# data[1] of a CAN_ERR_CRTL error frame
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_ACTIVE = 0x40

#: interfaces read through ``loop.add_reader`` in ``rx_mode="auto"``: their ``fileno()`` is a
#: socket and ``recv(0)`` reads only from it (serial adapters buffer in user space: thread)
FILENO_INTERFACES = frozenset({"socketcan", "udp_multicast"})
#: interfaces whose ``send(msg, timeout=0)`` never blocks: sent directly from the loop, and
#: through the port's send thread only when that fails (transmit queue full)
NONBLOCKING_SEND_INTERFACES = frozenset({"socketcan", "virtual", "udp_multicast"})
#: interfaces whose error frames carry SocketCAN error classes
SOCKETCAN_ERROR_INTERFACES = frozenset({"socketcan", "virtual", "udp_multicast"})
#: interfaces whose ``bus.state`` reports the controller's error state (python-can's other
#: ``state`` properties are the listen-only mode the port was opened in)
STATE_REPORTING_INTERFACES = frozenset({"ixxat", "etas"})

_BUS_STATE = {
    can.BusState.ACTIVE: CanBusState.ACTIVE,
    can.BusState.PASSIVE: CanBusState.PASSIVE,
    can.BusState.ERROR: CanBusState.BUS_OFF,
}

_OPEN_ERRORS = (can.CanError, OSError, ImportError, ValueError)
_IO_ERRORS = (can.CanError, OSError, ValueError)


def frame_bus_time(frame: CanFrame, bitrate: float, data_bitrate: float | None = None) -> float:
    """Seconds ``frame`` occupies a bus at ``bitrate`` (CAN FD data phase at ``data_bitrate``
    when the frame switches bitrate), stuff bits excluded; see the module docstring."""
    n = len(frame.data)
    if not frame.is_fd:
        return ((67 if frame.is_extended_id else 47) + 8 * n) / bitrate
    arbitration = 49 if frame.is_extended_id else 30
    data = (37 if n > 16 else 32) + 8 * n
    rate = data_bitrate if frame.bitrate_switch and data_bitrate else bitrate
    return arbitration / bitrate + data / rate


class BusLoadMeter:
    """Bus time per 100 ms slot; ``load(now)`` is the busy fraction of the last second.

    The window is the 10 slots before the current one plus the current one, so it spans
    1.0 to 1.1 s. One writer thread; readers may see a slot mid-update (an estimate).
    """

    SLOT = 0.1
    SLOTS = 11

    __slots__ = ("_busy", "_ids")

    def __init__(self) -> None:
        self._ids = [-1] * self.SLOTS
        self._busy = [0.0] * self.SLOTS

    def add(self, now: float, seconds: float) -> None:
        idx = int(now / self.SLOT)
        slot = idx % self.SLOTS
        if self._ids[slot] != idx:
            self._ids[slot] = idx
            self._busy[slot] = 0.0
        self._busy[slot] += seconds

    def load(self, now: float) -> float:
        idx = int(now / self.SLOT)
        first = idx - self.SLOTS + 1
        busy = sum(b for i, b in zip(self._ids, self._busy, strict=True) if first <= i <= idx)
        return busy / (now - first * self.SLOT)


def non_loopback_interfaces_up() -> list[str]:
    """Names of the network interfaces other than ``lo`` that are up, in *this process's*
    network namespace.

    Uses ``psutil.net_if_stats`` (ioctl on a socket of this namespace). ``/sys/class/net``
    is not used: inside ``unshare -n`` it still shows the host's interfaces.
    """
    import psutil

    try:
        stats = psutil.net_if_stats()
    except (OSError, RuntimeError) as err:
        raise DeviceError(f"cannot list the network interfaces: {err}") from err
    return sorted(name for name, s in stats.items() if s.isup and name != "lo")


def _filter_dicts(filters: Sequence[CanFilter] | None) -> Any:
    """python-can's ``can_filters`` (a list of dicts) for ``filters``; ``None`` for none."""
    if not filters:
        return None
    out: list[dict[str, Any]] = []
    for f in filters:
        d: dict[str, Any] = {"can_id": f.can_id, "can_mask": f.can_mask}
        if f.extended is not None:
            d["extended"] = f.extended
        out.append(d)
    return out


class _RxBuffer:
    """Bounded hand-over from the producer (reader thread or fd callback) to one consumer
    task in the loop; drops the oldest frames when full."""

    __slots__ = ("_cap", "_loop", "_wake_scheduled", "_waiter", "buf", "closed", "failure", "lock", "overruns")

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._cap = capacity
        self.lock = threading.Lock()
        self.buf: deque[CanFrame] = deque(maxlen=capacity)
        self._waiter: asyncio.Future[None] | None = None
        self._wake_scheduled = False
        self.closed = False
        self.failure: BaseException | None = None
        self.overruns = 0

    def __len__(self) -> int:
        return len(self.buf)

    def push(self, frames: list[CanFrame], *, in_loop: bool) -> None:
        with self.lock:
            if self.closed:
                return
            excess = len(self.buf) + len(frames) - self._cap
            if excess > 0:
                self.overruns += excess
            self.buf.extend(frames)
            if self._waiter is None or self._wake_scheduled:
                return
            if in_loop:
                waiter, self._waiter = self._waiter, None
            else:
                self._wake_scheduled = True
        if in_loop:
            if not waiter.done():
                waiter.set_result(None)
        else:
            self._loop.call_soon_threadsafe(self._wake)

    def purge(self, keep: Any) -> None:
        """Drop buffered frames for which ``keep(frame)`` is false (filters changed)."""
        with self.lock:
            kept = [f for f in self.buf if keep(f)]
            self.buf.clear()
            self.buf.extend(kept)

    def _wake(self) -> None:
        with self.lock:
            self._wake_scheduled = False
            waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, err: BaseException) -> None:
        """Called in the loop: the producer died; the consumer gets a DeviceError."""
        self.failure = err
        self._wake()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.buf.clear()
        self._wake()

    def take_all(self) -> list[CanFrame]:
        with self.lock:
            out = list(self.buf)
            self.buf.clear()
            return out

    async def wait(self, name: str) -> bool:
        """Wait until a frame is buffered (true) or the buffer is closed (false)."""
        while True:
            with self.lock:
                if self.closed:
                    return False
                if self.failure is not None:
                    raise DeviceError(f"{name}: receiving failed: {self.failure}") from self.failure
                if self.buf:
                    return True
                if self._waiter is not None:
                    raise RuntimeError(f"{name}: frames()/batches() already has a consumer")
                waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                with self.lock:
                    if self._waiter is waiter:
                        self._waiter = None


class _Session:
    """One open bus: what ``close()`` tears down."""

    __slots__ = ("bus", "executor", "fd", "loop", "rx", "stop", "thread")

    def __init__(self, bus: can.BusABC, loop: asyncio.AbstractEventLoop, rx: _RxBuffer) -> None:
        self.bus = bus
        self.loop = loop
        self.rx = rx
        self.stop = threading.Event()
        self.fd = -1
        self.thread: threading.Thread | None = None
        self.executor: concurrent.futures.ThreadPoolExecutor | None = None


class PythonCanPort(CanPort):
    """A CAN bus through python-can; see the module docstring for the receive path.

    ``name`` is the agent's logical bus (``can0`` powertrain, ``can1`` body) and goes into
    every frame's ``channel``; ``channel`` is the interface's own (``can0``, ``vcan0``,
    ``/dev/ttyACM0@115200``, ``PCAN_USBBUS1``; default: ``name``). ``bitrate`` configures
    interfaces that set it and is the base of the bus-load estimate (``None``: no estimate).
    ``socketcan_error_frames`` says whether error frames carry SocketCAN error classes
    (default: for ``socketcan``, ``virtual`` and ``udp_multicast``). Extra keyword arguments
    go to ``can.Bus`` unchanged.

    ``set_filters`` pushes the filters to python-can (kernel/hardware filtering where the
    interface has it, python-can's software filtering otherwise); for ``REFILTER_SECONDS``
    after a change the port also filters what arrives, so frames queued under the old filters
    are not delivered; frames already buffered are filtered once.
    """

    #: how long after ``set_filters`` received frames are filtered again in the port
    REFILTER_SECONDS = 1.0

    def __init__(
        self,
        name: str = "can0",
        *,
        interface: str = "socketcan",
        channel: str | int | None = None,
        bitrate: int | None = 500_000,
        fd: bool = False,
        data_bitrate: int | None = None,
        receive_own_messages: bool = False,
        filters: Sequence[CanFilter] | None = None,
        clock: Clock | None = None,
        rx_buffer_size: int = 16_384,
        rx_batch_size: int = 512,
        rx_poll_interval: float = 0.1,
        rx_coalesce: float = 0.001,
        rx_mode: Literal["auto", "fileno", "thread"] = "auto",
        tx_timeout: float = 0.1,
        socketcan_error_frames: bool | None = None,
        **bus_kwargs: Any,
    ) -> None:
        if rx_buffer_size < 1 or rx_batch_size < 1:
            raise ValueError("rx_buffer_size and rx_batch_size must be at least 1")
        if rx_batch_size > rx_buffer_size:
            raise ValueError(f"rx_batch_size {rx_batch_size} exceeds rx_buffer_size {rx_buffer_size}")
        if rx_mode not in ("auto", "fileno", "thread"):
            raise ValueError(f"rx_mode must be auto, fileno or thread, not {rx_mode!r}")
        if bitrate is not None and bitrate <= 0:
            raise ValueError(f"bitrate must be positive, not {bitrate}")
        self.name = name
        self.interface = interface
        self.channel = name if channel is None else channel
        self.bitrate = bitrate
        self.fd = fd
        self.data_bitrate = data_bitrate if fd else None
        self.receive_own_messages = receive_own_messages
        self._filters: tuple[CanFilter, ...] = tuple(filters or ())
        self._clock: Clock = clock or SystemClock()
        self.buffer_size = rx_buffer_size
        self._batch_size = rx_batch_size
        self._poll_interval = rx_poll_interval
        self._coalesce = max(0.0, rx_coalesce)
        self._rx_mode = rx_mode
        self._tx_timeout = tx_timeout
        self._bus_kwargs: Mapping[str, Any] = dict(bus_kwargs)
        self._error_classes = (
            interface in SOCKETCAN_ERROR_INTERFACES if socketcan_error_frames is None else socketcan_error_frames
        )
        self._session: _Session | None = None
        self._opened = False
        self._filter_gen = 0
        self._refilter_until = float("-inf")
        self._reset_counters()

    def __repr__(self) -> str:
        return f"PythonCanPort({self.name!r}, interface={self.interface!r}, channel={self.channel!r})"

    # ------------------------------------------------------------------ life cycle

    def _reset_counters(self) -> None:
        self._rx_frames = 0
        self._rx_bytes = 0
        self._tx_frames = 0
        self._tx_errors = 0
        self._error_frames = 0
        self._bus_off_count = 0
        self._overruns_closed = 0
        #: frames python-can delivered that are not valid CAN frames (skipped)
        self.invalid_frames = 0
        #: failed ``bus.recv`` calls (the reader backs off and keeps going)
        self.rx_errors = 0
        self._err_state: CanBusState | None = None
        self._traffic = False
        self._rx_load = BusLoadMeter()
        self._tx_load = BusLoadMeter()
        self._tx_in_thread = 0

    @property
    def is_open(self) -> bool:
        return self._session is not None

    @property
    def rx_path(self) -> str | None:
        """How frames are read while open: ``"loop"`` (``add_reader`` on the bus's socket) or
        ``"thread"`` (a reader thread); ``None`` when closed."""
        s = self._session
        if s is None:
            return None
        return "loop" if s.fd >= 0 else "thread"

    @property
    def pending(self) -> int:
        """Received frames waiting for the consumer."""
        s = self._session
        return len(s.rx) if s is not None else 0

    def _where(self) -> str:
        return f"{self.name} (python-can interface {self.interface!r}, channel {self.channel!r})"

    def _bus_config(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"interface": self.interface, "channel": self.channel}
        if self.bitrate is not None:
            kwargs["bitrate"] = self.bitrate
        if self.fd:
            kwargs["fd"] = True
            if self.data_bitrate is not None:
                kwargs["data_bitrate"] = self.data_bitrate
        if self.receive_own_messages:
            kwargs["receive_own_messages"] = True
        kwargs["can_filters"] = _filter_dicts(self._filters)
        kwargs.update(self._bus_kwargs)
        return kwargs

    async def open(self) -> None:
        if self._session is not None:
            return
        if self.interface == "udp_multicast":
            up = await asyncio.to_thread(non_loopback_interfaces_up)
            if up:
                raise DeviceError(
                    f"{self._where()}: refusing to open udp_multicast while network interfaces other"
                    f" than lo are up ({', '.join(up)}): its multicast would leave this machine; use"
                    " it only in a private network namespace with loopback alone"
                )
        try:
            bus = await asyncio.to_thread(lambda: can.Bus(**self._bus_config()))
        except _OPEN_ERRORS as err:
            raise DeviceError(f"{self._where()}: cannot open: {type(err).__name__}: {err}") from err
        loop = asyncio.get_running_loop()
        self._reset_counters()
        self._filter_gen += 1
        session = _Session(bus, loop, _RxBuffer(loop, self.buffer_size))
        try:
            self._start_reader(session)
        except BaseException:
            await asyncio.to_thread(bus.shutdown)
            raise
        self._session = session
        self._opened = True
        log.debug("%s open (%s)", self._where(), "loop reader" if session.fd >= 0 else "reader thread")

    def _start_reader(self, s: _Session) -> None:
        fd = -1
        if self._rx_mode == "fileno" or (self._rx_mode == "auto" and self.interface in FILENO_INTERFACES):
            try:
                fd = s.bus.fileno()
            except (NotImplementedError, OSError, AttributeError):
                fd = -1
            if fd >= 0:
                try:
                    s.loop.add_reader(fd, self._on_readable, s)
                    s.fd = fd
                    return
                except NotImplementedError:  # an event loop without add_reader
                    pass
            if self._rx_mode == "fileno":
                raise DeviceError(f"{self._where()}: rx_mode='fileno' but the bus has no selectable fileno()")
        s.thread = threading.Thread(target=self._reader_thread, args=(s,), name=f"can-rx-{self.name}", daemon=True)
        s.thread.start()

    async def close(self) -> None:
        s = self._session
        if s is None:
            return
        self._session = None
        self._overruns_closed = s.rx.overruns
        s.stop.set()
        s.rx.close()
        if s.fd >= 0:
            s.loop.remove_reader(s.fd)
        await asyncio.shield(asyncio.to_thread(self._teardown, s))
        log.debug("%s closed", self._where())

    def _teardown(self, s: _Session) -> None:
        if s.thread is not None:
            s.thread.join(self._poll_interval + 2.0)
            if s.thread.is_alive():
                log.warning("%s: reader thread did not stop; shutting the bus down anyway", self._where())
        if s.executor is not None:
            s.executor.shutdown(wait=True, cancel_futures=True)
        try:
            s.bus.shutdown()
        except _IO_ERRORS as err:
            log.warning("%s: shutdown failed: %s", self._where(), err)

    # ------------------------------------------------------------------ receive

    def _reader_thread(self, s: _Session) -> None:
        recv = s.bus.recv
        stop = s.stop
        batch_size = self._batch_size
        poll = self._poll_interval
        coalesce = self._coalesce
        sleep = time.sleep
        failures = 0
        try:
            while not stop.is_set():
                msgs: list[can.Message] = []
                gen = self._filter_gen
                try:
                    msg = recv(poll)
                    if msg is None:
                        continue
                    msgs.append(msg)
                    while len(msgs) < batch_size:
                        msg = recv(0.0)
                        if msg is None:
                            break
                        msgs.append(msg)
                except _IO_ERRORS as err:
                    if stop.is_set():
                        break
                    self.rx_errors += 1
                    failures += 1
                    if failures == 1:
                        log.warning("%s: receive failed (backing off, will retry): %s", self._where(), err)
                    stop.wait(min(0.01 * 2 ** min(failures, 7), 1.0))
                    if not msgs:
                        continue
                else:
                    failures = 0
                frames = self._ingest(msgs, gen)
                if frames:
                    s.rx.push(frames, in_loop=False)
                if coalesce and len(msgs) < batch_size:
                    # the queue ran dry: let frames gather for a moment instead of waking
                    # up (and waking the loop) for every single frame
                    sleep(coalesce)
        except RuntimeError as err:  # the event loop was closed under us
            if not stop.is_set():
                log.warning("%s: reader thread stopped: %s", self._where(), err)
        except BaseException as err:
            log.exception("%s: reader thread crashed", self._where())
            try:
                s.loop.call_soon_threadsafe(s.rx.fail, err)
            except RuntimeError:
                pass

    def _on_readable(self, s: _Session) -> None:
        if s.stop.is_set():
            return
        recv = s.bus.recv
        msgs: list[can.Message] = []
        gen = self._filter_gen
        try:
            for _ in range(self._batch_size):
                msg = recv(0.0)
                if msg is None:
                    break
                msgs.append(msg)
        except _IO_ERRORS as err:
            self.rx_errors += 1
            log.warning("%s: receive failed: %s", self._where(), err)
            if not msgs:
                # a persistently failing socket stays readable: pause it instead of spinning
                s.loop.remove_reader(s.fd)
                s.loop.call_later(min(0.01 * 2 ** min(self.rx_errors, 7), 1.0), self._resume_reader, s)
                return
        frames = self._ingest(msgs, gen)
        if frames:
            s.rx.push(frames, in_loop=True)
        if self._coalesce and len(msgs) < self._batch_size:
            # drained: let frames gather in the socket before the next wake-up
            s.loop.remove_reader(s.fd)
            s.loop.call_later(self._coalesce, self._resume_reader, s)

    def _resume_reader(self, s: _Session) -> None:
        if not s.stop.is_set() and self._session is s:
            s.loop.add_reader(s.fd, self._on_readable, s)

    def _ingest(self, msgs: list[can.Message], gen: int) -> list[CanFrame]:
        """Convert and account one batch (producer side: one thread at a time)."""
        now = self._clock.monotonic()
        name = self.name
        frames: list[CanFrame] = []
        append = frames.append
        bits = 0
        fd_time = 0.0
        n_rx = 0
        n_bytes = 0
        for msg in msgs:
            try:
                frame = frame_from_message(msg, name, now)
            except DecodeError as err:
                self.invalid_frames += 1
                log.debug("%s: invalid frame skipped: %s", name, err)
                continue
            if frame.is_error_frame:
                self._on_error_frame(frame)
                append(frame)
                continue
            n = len(frame.data)
            if frame.is_fd:
                if self.bitrate:
                    fd_time += frame_bus_time(frame, self.bitrate, self.data_bitrate)
            else:
                bits += (67 if frame.is_extended_id else 47) + 8 * n
            if frame.is_rx:
                n_rx += 1
                n_bytes += n
            append(frame)
        if gen != self._filter_gen or now < self._refilter_until:
            # filters changed while this batch was read, or frames queued (in the kernel or
            # python-can) under the old filters may still be coming: filter here too
            frames = [f for f in frames if self._passes(f)]
        self._rx_frames += n_rx
        self._rx_bytes += n_bytes
        if n_rx or bits or fd_time:
            self._traffic = True
            if self._err_state is CanBusState.BUS_OFF:
                self._err_state = CanBusState.ACTIVE
        if self.bitrate and (bits or fd_time):
            self._rx_load.add(now, bits / self.bitrate + fd_time)
        if frames and log.isEnabledFor(TRACE):
            for f in frames:
                log.log(TRACE, "rx %s", f.candump())
        return frames

    def _on_error_frame(self, frame: CanFrame) -> None:
        self._error_frames += 1
        if not self._error_classes:
            return
        cls = frame.arbitration_id
        if cls & CAN_ERR_BUSOFF:
            if self._err_state is not CanBusState.BUS_OFF:
                self._bus_off_count += 1
                log.warning("%s: bus-off", self.name)
            self._err_state = CanBusState.BUS_OFF
        elif cls & CAN_ERR_RESTARTED:
            self._err_state = CanBusState.ACTIVE
        elif cls & CAN_ERR_CRTL and len(frame.data) > 1:
            ctrl = frame.data[1]
            if ctrl & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
                self._err_state = CanBusState.PASSIVE
            elif ctrl & CAN_ERR_CRTL_ACTIVE:
                self._err_state = CanBusState.ACTIVE

    def _passes(self, frame: CanFrame) -> bool:
        if frame.is_error_frame or not self._filters:
            return True
        return any(f.matches(frame) for f in self._filters)

    def _rx(self) -> _RxBuffer:
        s = self._session
        if s is None:
            raise DeviceError(f"{self._where()}: not open")
        return s.rx

    async def frames(self) -> AsyncIterator[CanFrame]:
        rx = self._rx()
        lock, buf = rx.lock, rx.buf
        while True:
            with lock:
                frame = buf.popleft() if buf else None
            if frame is None:
                if not await rx.wait(self.name):
                    return
                continue
            yield frame

    async def batches(self) -> AsyncIterator[list[CanFrame]]:
        """Received frames in lists (all that arrived since the last one); ends on close."""
        rx = self._rx()
        while await rx.wait(self.name):
            batch = rx.take_all()
            if batch:
                yield batch

    # ------------------------------------------------------------------ filters, send, stats

    def set_filters(self, filters: Sequence[CanFilter] | None) -> None:
        self._filters = tuple(filters or ())
        s = self._session
        if s is None:
            return
        self._refilter_until = self._clock.monotonic() + self.REFILTER_SECONDS
        self._filter_gen += 1
        try:
            s.bus.set_filters(_filter_dicts(self._filters))
        except _IO_ERRORS as err:
            raise DeviceError(f"{self._where()}: cannot set filters: {err}") from err
        if self._filters:
            s.rx.purge(self._passes)

    async def send(self, frame: CanFrame) -> None:
        s = self._session
        if s is None:
            raise DeviceError(f"{self._where()}: not open")
        if frame.is_fd and not self.fd:
            self._tx_errors += 1
            raise DeviceError(f"{self._where()}: cannot send a CAN FD frame on a classic CAN port (fd=False)")
        msg = message_from_frame(frame)
        try:
            if self._tx_in_thread == 0 and self.interface in NONBLOCKING_SEND_INTERFACES:
                try:
                    s.bus.send(msg, 0.0)
                except _IO_ERRORS:  # transmit queue full (or a real error): retry with a timeout
                    await self._send_in_thread(s, msg)
            else:
                await self._send_in_thread(s, msg)
        except _IO_ERRORS as err:
            self._tx_errors += 1
            raise DeviceError(f"{self._where()}: sending {frame.candump()} failed: {err}") from err
        self._tx_frames += 1
        self._traffic = True
        if self.bitrate and not self.receive_own_messages and not frame.is_error_frame:
            self._tx_load.add(self._clock.monotonic(), frame_bus_time(frame, self.bitrate, self.data_bitrate))
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "tx %s", frame.candump())

    async def _send_in_thread(self, s: _Session, msg: can.Message) -> None:
        # one thread per port keeps frames in order; while one is queued there, later frames
        # follow it through the thread
        if s.executor is None:
            s.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"can-tx-{self.name}")
        self._tx_in_thread += 1
        try:
            fut = s.loop.run_in_executor(s.executor, s.bus.send, msg, self._tx_timeout)
        except RuntimeError as err:  # the executor was shut down: the port is closing
            self._tx_in_thread -= 1
            raise DeviceError(f"{self._where()}: closed while sending") from err
        try:
            await fut
        finally:
            self._tx_in_thread -= 1

    def _state(self) -> CanBusState:
        s = self._session
        if s is None:
            return CanBusState.STOPPED if self._opened else CanBusState.UNKNOWN
        if self._err_state is not None:
            return self._err_state
        if self.interface in STATE_REPORTING_INTERFACES:
            try:
                state = _BUS_STATE.get(s.bus.state)
            except (*_IO_ERRORS, NotImplementedError):
                state = None
            if state is not None:
                return state
        return CanBusState.ACTIVE if self._traffic else CanBusState.UNKNOWN

    def stats(self) -> CanBusStats:
        s = self._session
        load = 0.0
        if self.bitrate and s is not None:
            now = self._clock.monotonic()
            load = self._rx_load.load(now) + self._tx_load.load(now)
        return CanBusStats(
            channel=self.name,
            rx_frames=self._rx_frames,
            tx_frames=self._tx_frames,
            rx_bytes=self._rx_bytes,
            error_frames=self._error_frames,
            overruns=s.rx.overruns if s is not None else self._overruns_closed,
            bus_off_count=self._bus_off_count,
            tx_errors=self._tx_errors,
            bus_load=load,
            state=self._state(),
        )
