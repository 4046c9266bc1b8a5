"""``acc-bench``: the vehicle-in-the-loop test bench (first slice).

Drives the simulated test vehicle, or a recorded bus log, onto real python-can buses — a
rig's ``socketcan`` vcan0/can0, a USB adapter, or ``udp_multicast`` between processes inside a
private network namespace — and NMEA 0183 into a pseudo-terminal (or a file, or a pyserial
URL) that the agent under test reads as its GNSS receiver.

    acc-bench vehicle --can0 socketcan:vcan0 --can1 socketcan:vcan1 --nmea pty --duration 60
    acc-bench replay run.blf --bus socketcan:vcan0 --speed 1.0
    acc-bench scenario tests/data/scenarios/harsh_brake.toml --junit report.xml

``scenario`` runs the real agent (``agent.runtime.Agent`` built from a generated TOML config
exactly as ``acc-agent --config`` builds it) in this process on python-can ``virtual`` buses
that the bench drives with the scenario's route or replay and faults, watches the attestor's
chain directory and the diagnostics socket, and reports pass/fail (exit 0 / 1). Scenario format:
tools/bench_scenario.py and docs/bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from agent import exitcodes
from agent.logsetup import setup_logging
from drivers.clock import ScaledClock, SystemClock
from hal.errors import HalError
from hal.interfaces import Clock

log = logging.getLogger(__name__)


def parse_bus(text: str) -> tuple[str, str]:
    """``interface:channel`` (``socketcan:vcan0``, ``udp_multicast:239.74.163.2``)."""
    interface, sep, channel = text.partition(":")
    if not sep or not interface or not channel:
        raise argparse.ArgumentTypeError(f"{text!r}: expected INTERFACE:CHANNEL, e.g. socketcan:vcan0")
    return interface, channel


class NmeaOut:
    """Where the NMEA goes: a new pty (its path is printed), a file, or a pyserial URL/device."""

    def __init__(self, spec: str, out: IO[str]) -> None:
        self.spec = spec
        self._close: list[Callable[[], None]] = []
        self.path = ""
        self.written = 0
        if spec == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self.path = os.ttyname(slave)
            self._fd = master
            self._close += [lambda: os.close(master), lambda: os.close(slave)]
            out.write(f"NMEA on {self.path}\n")
            out.flush()
            self._write: Callable[[bytes], None] = self._write_fd
        elif "://" in spec or spec.startswith("/dev/"):
            import serial

            port = serial.serial_for_url(spec, baudrate=9600, timeout=0, write_timeout=0)
            self._close.append(port.close)
            self._write = lambda data: port.write(data) and None
        else:
            fh = open(spec, "ab")  # noqa: SIM115 - closed in close()
            self._close.append(fh.close)
            self._write = lambda data: (fh.write(data), fh.flush()) and None

    def _write_fd(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # nobody reading: a receiver would lose it too
            os.write(self._fd, data)

    def __call__(self, data: bytes) -> None:
        self.written += len(data)
        self._write(data)

    def close(self) -> None:
        for fn in reversed(self._close):
            with contextlib.suppress(OSError):
                fn()


async def _stoppable(coro: asyncio.Future[object] | asyncio.Task[object]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({coro, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for t in (coro, stopper):
        t.cancel()
    await asyncio.gather(coro, stopper, return_exceptions=True)


async def run_vehicle(args: argparse.Namespace, out: IO[str]) -> int:
    from drivers.can_bus import PythonCanPort
    from drivers.simvehicle import SimVehicle, run_sim

    clock = SystemClock()
    ports = {}
    for name, spec in (("can0", args.can0), ("can1", args.can1)):
        if spec is not None:
            interface, channel = spec
            ports[name] = PythonCanPort(name, interface=interface, channel=channel, bitrate=args.bitrate)
    nmea = NmeaOut(args.nmea, out) if args.nmea else None
    vehicle = SimVehicle(seed=args.seed, nmea_rate_hz=args.nmea_rate)
    opened = []
    try:
        for port in ports.values():
            await port.open()
            opened.append(port)
        buses = ", ".join(f"{n}={p.interface}:{p.channel}" for n, p in ports.items()) or "no CAN bus"
        out.write(f"simulated vehicle (seed {args.seed}) on {buses} for {args.duration or 'unlimited'} s\n")
        out.flush()

        async def report() -> None:
            while True:
                await asyncio.sleep(1.0)
                t = vehicle.truth()
                sent = {n: p.stats().tx_frames for n, p in ports.items()}
                out.write(
                    f"t={t.t:6.1f}s  v {t.speed * 3.6:5.1f} km/h  {t.segment_name:<18} "
                    + " ".join(f"{n} {c} tx" for n, c in sent.items())
                    + ("  GNSS outage" if t.gnss_outage else "")
                    + "\n"
                )
                out.flush()

        reporter = asyncio.create_task(report())
        sim = asyncio.create_task(run_sim(vehicle, ports, nmea, clock, args.duration))
        await _stoppable(sim)
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    finally:
        for port in opened:
            await port.close()
        if nmea is not None:
            nmea.close()
    return exitcodes.OK


async def run_replay(args: argparse.Namespace, out: IO[str]) -> int:
    from drivers.can_bus import PythonCanPort
    from drivers.can_replay import replay_to

    interface, channel = args.bus
    port = PythonCanPort("bench", interface=interface, channel=channel, bitrate=args.bitrate)
    await port.open()
    try:
        task = asyncio.create_task(
            replay_to(port, args.log, speed=None if args.speed == 0 else args.speed, channel=args.channel)
        )
        await _stoppable(task)
        sent = port.stats().tx_frames
    finally:
        await port.close()
    out.write(f"sent {sent} frames of {args.log} on {interface}:{channel}\n")
    return exitcodes.OK


_RUNS = itertools.count()


def dump_toml(table: dict[str, Any], prefix: str = "") -> list[str]:
    """Lines of a TOML document for plain data (tables, arrays of tables, scalars, lists)."""

    def key(k: str) -> str:
        return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines: list[str] = []
    nested: list[tuple[str, Any]] = []
    for k, v in table.items():
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            nested.append((k, v))
        else:
            lines.append(f"{key(k)} = {value(v)}")
    for k, v in nested:
        name = prefix + key(k)
        for item in [v] if isinstance(v, dict) else v:
            lines += ["", f"[{name}]" if isinstance(v, dict) else f"[[{name}]]"]
            lines += dump_toml(item, name + ".")
    return lines


def _merge(into: dict[str, Any], extra: Any) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


_MULTICAST_REFUSED = (
    "--agent process puts the CAN buses on udp_multicast, which would leave this machine through {}: "
    "run it in a private network namespace with only loopback (add --netns, as root)"
)


class BenchRefused(Exception):
    """The bench will not run this way here (e.g. multicast outside a private namespace)."""


def agent_config(
    sc: Any, data_dir: Path, nmea_device: str, diag_socket: Path, *, multicast: bool = False
) -> dict[str, Any]:
    """The agent configuration of a scenario run: the demo's two buses with the reference
    DBCs (python-can ``virtual`` channels of their own, or with ``multicast`` one
    ``udp_multicast`` group and UDP port per bus), NMEA from the bench's pty, behaviour on
    (the scenario's ``[agent]`` table is merged on top)."""
    from agent.demo import demo_base_config

    cfg = demo_base_config(str(data_dir))
    tag = f"acc-bench-{os.getpid()}-{next(_RUNS)}"
    for i, bus in enumerate(cfg["can"]):
        bus["channel"] = f"{tag}-{bus['name']}"
        if multicast:  # a UDP port per bus as well: a socket bound to a port hears every group on it
            bus.update(interface="udp_multicast", channel=f"239.74.163.{20 + i}", options={"port": 43210 + i})
    cfg["agent"].update(node_id="bench-obu", diag_socket=str(diag_socket), log_level="warning")
    cfg["gnss"]["device"] = nmea_device
    cfg["attest"]["summary_interval"] = 0.0
    cfg["behaviour"] = {"enabled": True}
    # the outbox refuses entries without a destination cell (ValueError, which the behaviour
    # service does not catch): give the bench's agent one, as a deployed OBU has
    cfg["mqtt"] = {"cell": "bench-cell"}
    rp = getattr(sc, "replay", None)
    if rp is not None and rp.dbc is not None:  # the replayed bus decoded with the log's own DBC
        bus = next(b for b in cfg["can"] if b["name"] == rp.bus)
        bus["dbc"] = str(Path(rp.dbc).resolve())
        bus["vss_map"] = "" if rp.vss_map is None else str(Path(rp.vss_map).resolve())
    _merge(cfg, sc.agent)
    return cfg


GPSD = shutil.which("gpsd") or next((p for p in ("/usr/sbin/gpsd",) if os.path.exists(p)), None)


class GpsdProcess:
    """A real gpsd (``-N -n -b``: foreground, poll at once, read-only) on 127.0.0.1 reading the
    bench's pty, so the agent under test reads GNSS as a gpsd client, as on most Linux boxes."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, version: str) -> None:
        self.proc, self.port, self.version = proc, port, version

    @classmethod
    async def start(cls, device: str, run_dir: Path, limit: float = 5.0) -> GpsdProcess:
        if GPSD is None:
            raise BenchRefused("--gnss gpsd: gpsd is not installed (apt-get install gpsd)")
        os.chmod(device, 0o666)  # gpsd may drop root before it opens the device
        from tools.bench.mqtt_publish import free_port

        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            GPSD, "-N", "-n", "-b", "-S", str(port), "-F", str(run_dir / "gpsd.sock"), device,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + limit
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"gpsd exited with status {proc.returncode} before listening on port {port}")
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    proc.kill()
                    await proc.wait()
                    raise RuntimeError(f"gpsd did not listen on 127.0.0.1:{port} within {limit:g} s") from None
                await asyncio.sleep(0.05)
                continue
            try:
                hello = await asyncio.wait_for(reader.readline(), 2.0)
            finally:
                writer.close()
            version = str(json.loads(hello).get("release", "?")) if hello.startswith(b"{") else "?"
            return cls(proc, port, version)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


BENCH_CELL = "bench-cell"


class MqttWatch:
    """The bench as the cell's backend sees the agent: a Mosquitto on 127.0.0.1 (started here,
    or ``HOST:PORT``), the agent's MQTT on with cell ``bench-cell``, and a paho subscriber on
    the cell's attestation topic that keeps every payload (verified and timed at the end)."""

    def __init__(self, spec: str, run_dir: Path) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.proc: Any = None
        self.host, self.port = "127.0.0.1", 0
        self.payloads: list[bytes] = []
        self.client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as paho

        from agent import topics

        if self.spec == "embedded":
            from tools.bench.mqtt_publish import start_broker

            self.proc, self.port = start_broker(self.run_dir)
        else:
            host, _, port = self.spec.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port)
        topic = str(topics.tx(BENCH_CELL))
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"acc-bench-{os.getpid()}", protocol=paho.MQTTv5)
        subscribed = threading.Event()
        c.on_message = lambda _c, _u, msg: self.payloads.append(bytes(msg.payload))
        c.on_subscribe = lambda *_a: subscribed.set()
        c.connect(self.host, self.port)
        c.loop_start()
        c.subscribe(topic, qos=1)
        self.client = c
        if not subscribed.wait(5.0):
            self.stop()
            raise RuntimeError(f"could not subscribe to {topic} on {self.host}:{self.port}")
        self.topic = topic

    def agent_config(self) -> dict[str, Any]:
        return {"enabled": True, "host": self.host, "port": self.port, "cell": BENCH_CELL, "backoff_max": 1.0}

    def stop(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def events(self, t0_utc: float) -> tuple[list[Any], dict[str, Any]]:
        """The driving events heard (each attestation once, signature verified) and counters."""
        from ledger_lite.attestation import verify_attestation
        from ledger_lite.errors import LedgerError

        seen: dict[bytes, Any] = {}
        bad = 0
        for data in self.payloads:
            key = hashlib.sha256(data).digest()
            if key in seen:
                continue
            try:
                seen[key] = verify_attestation(data)
            except (LedgerError, ValueError) as err:
                bad += 1
                log.warning("acc-bench: an attestation heard on %s does not verify: %s", self.topic, err)
        atts = sorted(seen.values(), key=lambda a: a.seq)
        counts = {
            "topic": self.topic,
            "messages": len(self.payloads),
            "attestations": len(atts),
            "not verified": bad,
        }
        return [_event_of(a, t0_utc) for a in atts if a.kind == "driving_event"], counts


class SteppedClock(Clock):
    """The agent's clock for an in-process run with ``clock = "system"`` jumps: the bench's
    clock (``base``: the system clock, or a ``ScaledClock`` with ``--speed``), with ``time()``
    stepped by the scenario's jumps once the drive (``start``) has reached them. ``monotonic``
    and sleeping are untouched, as on a host whose wall clock is set (NTP step, RTC fix): only
    what reads the wall clock sees the jump."""

    def __init__(self, faults: Any, base: Clock | None = None) -> None:
        self.faults = faults
        self.base = base or SystemClock()
        self.t0: float | None = None

    def start(self, t0_monotonic: float) -> None:
        self.t0 = t0_monotonic

    def offset(self) -> float:
        if self.t0 is None:
            return 0.0
        return float(self.faults.clock_offset("system", self.monotonic() - self.t0))

    def monotonic(self) -> float:
        return self.base.monotonic()

    def time(self) -> float:
        return self.base.time() + self.offset()

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


class InProcessAgent:
    """The agent under test as ``agent.runtime.Agent`` in this event loop (``virtual`` buses)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.agent.run(), name="agent")
        built = asyncio.create_task(self.agent.built.wait())
        await asyncio.wait({self.task, built}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            built.cancel()
            await self.task  # raises what stopped it
            raise RuntimeError("the agent stopped before it was built")

    async def wait(self) -> None:
        assert self.task is not None
        await asyncio.shield(self.task)

    def why(self) -> str:
        t = self.task
        return "" if t is None or not t.done() or t.cancelled() else repr(t.exception())

    async def stop(self) -> None:
        self.agent.request_stop()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


class AgentProcess:
    """The agent under test as its own process, ``python -m agent.main --config FILE`` (buses
    on ``udp_multicast``: only inside a private network namespace with only loopback)."""

    def __init__(self, config: Path, overrides: Sequence[str], log: Path, diag: Path) -> None:
        self.argv = [sys.executable, "-m", "agent.main", "--config", str(config)]
        for item in overrides:
            self.argv += ["--set", item]
        self.log = log
        self.diag = diag
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        from agent.diagnostics import DiagError, query

        with open(self.log, "wb") as fh:  # noqa: ASYNC230 - opened once, before anything runs
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=fh, cwd=Path(__file__).parent.parent
            )
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"the agent exited with {self.proc.returncode} before it was up: {self.why()}")
            with contextlib.suppress(DiagError):
                status = await asyncio.to_thread(query, self.diag, "status", 2.0)
                if any(name.startswith("can.") for name in status["health"]):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the agent did not answer on {self.diag} within 60 s: {self.why()}")

    async def wait(self) -> None:
        assert self.proc is not None
        await self.proc.wait()

    def why(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return (lines[-1] if lines else "") + f" (log: {self.log})"

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_scenario(
    sc: Any,
    workdir: Path,
    *,
    overrides: Sequence[str] = (),
    out: IO[str] | None = None,
    mode: str = "inprocess",
    gnss: str = "pty",
    speed: float = 1.0,
    mqtt: str | None = None,
) -> Any:
    """Run ``sc`` (a ``bench_scenario.Scenario``) against the real agent and return its
    ``Report``. ``mode`` ``inprocess``: ``agent.runtime.Agent`` in this event loop on python-can
    ``virtual`` buses; ``process``: ``python -m agent.main`` as a child process on
    ``udp_multicast`` buses (only in a private network namespace with only loopback).
    ``speed`` > 1: the in-process agent, the vehicle and the bench share a ``ScaledClock``
    (faster than real time). ``gnss`` ``pty``: the agent reads the NMEA from the bench's pty as
    a serial receiver;
    ``gpsd``: a real gpsd on 127.0.0.1 reads the pty and the agent is its client.
    ``mqtt`` (``embedded`` or ``HOST:PORT``): the agent publishes to a broker and the events
    are judged from what the bench hears on the cell's attestation topic (``MqttWatch``).
    ``overrides`` are ``section.key=value`` settings for the agent (as ``acc-agent --set``)."""
    from agent.config import load_config
    from agent.keystore import ensure_device_key
    from agent.runtime import Agent
    from drivers.can_bus import non_loopback_interfaces_up
    from tools.bench_scenario import Observed, ScenarioError, build_vehicle, evaluate

    system_jumps = any(j.clock == "system" for j in sc.faults.clock_jumps)
    if system_jumps and mode == "process":
        raise ScenarioError(
            "faults.clock_jump: not supported yet: clock = 'system' with --agent process "
            "(the bench can only step the clock of an agent in its own process)"
        )
    if speed != 1.0 and mode == "process":
        raise ScenarioError(
            "--speed: not supported with --agent process (the agent process runs on the system clock; "
            "only an agent in the bench's process can share its scaled clock)"
        )
    if mode == "process" and (up := await asyncio.to_thread(non_loopback_interfaces_up)):
        raise BenchRefused(_MULTICAST_REFUSED.format(", ".join(up)))
    started = time.monotonic()
    vehicle = build_vehicle(sc) if sc.replay is None else None  # refuses impossible events before anything runs
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    data_dir = workdir / "agent"
    # a Unix socket path must stay short (108 bytes): a private temporary directory
    sock_dir = Path(tempfile.mkdtemp(prefix="acc-bench-"))
    diag = sock_dir / "diag.sock"
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    observed = Observed()
    gpsd: GpsdProcess | None = None
    watch: MqttWatch | None = None
    try:
        await asyncio.to_thread(ensure_device_key, data_dir)
        raw = agent_config(sc, data_dir, os.ttyname(slave), diag, multicast=mode == "process")
        if gnss == "gpsd":
            gpsd = await GpsdProcess.start(os.ttyname(slave), sock_dir)
            raw["gnss"] = {"backend": "gpsd", "host": "127.0.0.1", "port": gpsd.port}
            observed.notes["gnss"] = f"gpsd {gpsd.version} on 127.0.0.1:{gpsd.port} reading the bench's pty"
        if mqtt is not None:
            watch = MqttWatch(mqtt, sock_dir)
            await asyncio.to_thread(watch.start)
            raw["mqtt"] = watch.agent_config()
        cfg_path = workdir / "agent.toml"
        cfg_path.write_text(
            "# generated by acc-bench for scenario " + sc.name + "\n" + "\n".join(dump_toml(raw)) + "\n"
        )
        config = load_config(cfg_path, env={}, overrides=overrides)  # refuses a bad override here
        aut: InProcessAgent | AgentProcess
        clock: Clock = ScaledClock(speed) if speed != 1.0 else SystemClock()
        stepped = SteppedClock(sc.faults, clock) if system_jumps else None
        if mode == "process":
            aut = AgentProcess(cfg_path, overrides, workdir / "agent.log", diag)
        else:
            aut = InProcessAgent(Agent(config, clock=stepped or clock, handle_signals=False))
        if speed != 1.0:
            observed.notes["speed"] = f"{speed:g}x real time (a scaled clock shared by the agent and the bench)"
        if out is not None:
            out.write(f"running scenario {sc.name!r}: {sc.duration:g} s drive + {sc.settle:g} s settle\n")
            out.flush()
        opened: list[Any] = []
        try:
            await aut.start()
            report = await _drive(sc, aut, config, vehicle, master, diag, observed, opened, stepped, clock)
        finally:
            await aut.stop()
            for p in opened:
                await p.close()
        if sc.faults.clock_jumps:
            observed.notes["clock jumps"] = ", ".join(
                f"{j.clock} {j.by:+g} s at t={j.at:g}s" for j in sc.faults.clock_jumps
            )
        if sc.faults.any:
            observed.notes["faults"] = report
        observed.events = _driving_events(data_dir, observed.t0_utc)
        if watch is not None:
            heard, counts = watch.events(observed.t0_utc)
            in_chain = len(observed.events)
            observed.events = heard  # judged from what the backend receives
            counts["driving events"] = len(heard)
            counts["driving events in the agent's chain"] = in_chain
            observed.notes["mqtt"] = counts
    finally:
        if watch is not None:
            await asyncio.to_thread(watch.stop)
        if gpsd is not None:
            await gpsd.stop()
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        await asyncio.to_thread(_remove_socket_dir, sock_dir)
    return evaluate(sc, observed, time.monotonic() - started)


async def _drive(
    sc: Any,
    aut: Any,
    config: Any,
    vehicle: Any,
    master: int,
    diag: Path,
    observed: Any,
    opened: list[Any],
    stepped: SteppedClock | None = None,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Drive the scenario onto the agent's buses while watching its health (and the
    diagnostics answers the expectations ask about); returns the fault counters per bus.
    Ports it opens are added to ``opened`` (the caller closes them)."""
    from agent.diagnostics import DiagError, query
    from drivers.can_bus import PythonCanPort
    from drivers.simvehicle import run_sim
    from hal.types import CanFrame
    from tools.bench_scenario import (
        CAN_ERR_BUSERROR,
        CAN_ERR_BUSOFF,
        CAN_ERR_CRTL,
        CAN_ERR_CRTL_TX_PASSIVE,
        CAN_ERR_PROT,
        CAN_ERR_RESTARTED,
        FaultInjector,
        shift_nmea,
    )

    clock = clock or SystemClock()
    speed = getattr(clock, "speed", 1.0)
    await clock.sleep(0.5)  # the CAN services open their buses
    ports = {
        b.name: PythonCanPort(f"bench-{b.name}", interface=b.interface, channel=b.channel, bitrate=b.bitrate)
        for b in config.can
    }
    for name, port in ports.items():
        port_opts = next(b.options for b in config.can if b.name == name)
        if port_opts:  # udp_multicast: the same group *and* UDP port as the agent's bus
            ports[name] = PythonCanPort(
                port.name, interface=port.interface, channel=port.channel, bitrate=port.bitrate, **port_opts
            )
    t0 = clock.monotonic()
    t0_utc = clock.time()
    if stepped is not None:
        stepped.start(t0)

    def now() -> float:
        return clock.monotonic() - t0

    injectors: dict[str, Any] = {n: FaultInjector(p, sc.faults, now, sc.seed, bus=n) for n, p in ports.items()}
    for p in ports.values():
        await p.open()
        opened.append(p)
    observed.t0_utc = t0_utc

    def nmea_sink(data: bytes) -> None:
        by = sc.faults.clock_offset("gnss", now())
        if by:
            data = shift_nmea(data, by)
        with contextlib.suppress(BlockingIOError):
            os.write(master, data)

    async def bus_off(b: Any) -> None:
        """What a controller going bus-off looks like on SocketCAN: error-passive, then
        bus-off (the injector drops every frame meanwhile), optionally bus errors, then a
        restart (``restart-ms``) and traffic again."""
        targets = [p for n, p in ports.items() if b.bus in (None, n)]

        async def error(cls: int, data: bytes = bytes(8)) -> None:
            for p in targets:
                await p.send(CanFrame(arbitration_id=cls, data=data, is_error_frame=True, is_rx=False))

        await clock.sleep_until(t0 + b.at)
        await error(CAN_ERR_CRTL, bytes([0, CAN_ERR_CRTL_TX_PASSIVE, 0, 0, 0, 0, 0, 0]))
        await error(CAN_ERR_BUSOFF)
        sent = 2
        if b.error_frames_per_s:
            period = 1.0 / b.error_frames_per_s
            for k in itertools.count(1):
                if b.at + k * period >= b.at + b.duration:
                    break
                await clock.sleep_until(t0 + b.at + k * period)
                await error(CAN_ERR_PROT | CAN_ERR_BUSERROR)
                sent += 1
        await clock.sleep_until(t0 + b.at + b.duration)
        await error(CAN_ERR_RESTARTED)
        sent += 1
        notes = observed.notes.setdefault("bus-off error frames sent", {})
        for n in ports:
            if b.bus in (None, n):
                notes[n] = notes.get(n, 0) + sent

    async def error_frames() -> None:
        period = 1.0 / sc.faults.error_frames_per_s
        for k in itertools.count(1):
            await clock.sleep_until(t0 + k * period)
            for p in ports.values():
                await p.send(CanFrame(arbitration_id=0, data=bytes(8), is_error_frame=True, is_rx=False))
            observed.notes["error frames sent"] = k * len(ports)

    queries = sorted({d.query for d in sc.expect_diag} - {"status"})
    want_status = any(d.query == "status" for d in sc.expect_diag)

    async def sample() -> None:
        t = now()
        with contextlib.suppress(DiagError):
            st = await asyncio.to_thread(query, diag, "status")
            observed.health.append((t, {n: h["status"] for n, h in st["health"].items()}))
            if want_status:
                observed.diag.setdefault("status", []).append((t, st))
        for q in queries:
            with contextlib.suppress(DiagError):
                observed.diag.setdefault(q, []).append((t, await asyncio.to_thread(query, diag, q)))

    async def watch_health() -> None:
        for k in itertools.count(1):
            await clock.sleep_until(t0 + k * 1.0)
            await sample()

    async def drive() -> None:
        if vehicle is not None:
            vehicle.start(t0, t0_utc)
            await run_sim(vehicle, injectors, nmea_sink, clock, sc.duration)
        else:
            from drivers.can_replay import replay_to

            rp = sc.replay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(  # replay paces on real time: the scaled clock's speed on top
                    replay_to(injectors[rp.bus], rp.path, speed=rp.speed * speed, channel=rp.channel),
                    sc.duration / speed,
                )

    helpers = [asyncio.create_task(watch_health())]
    if sc.faults.error_frames_per_s:
        helpers.append(asyncio.create_task(error_frames()))
    helpers += [asyncio.create_task(bus_off(b)) for b in sc.faults.bus_off]
    try:
        drive_task = asyncio.create_task(drive())
        agent_gone = asyncio.create_task(aut.wait())
        await asyncio.wait({drive_task, agent_gone}, return_when=asyncio.FIRST_COMPLETED)
        if agent_gone.done():
            drive_task.cancel()
            raise RuntimeError(f"the agent stopped during the drive: {aut.why()}")
        agent_gone.cancel()
        await drive_task
        await clock.sleep_until(t0 + sc.duration + sc.settle)
        await sample()
        with contextlib.suppress(DiagError):
            st = await asyncio.to_thread(query, diag, "status")
            beh = st.get("behaviour")
            observed.notes["agent behaviour"] = (
                "off" if beh is None else f"events {beh['events']}, attested {beh['attested']}"
            )
            net = await asyncio.to_thread(query, diag, "net")
            if net.get("outbox") is not None:
                observed.notes["agent outbox"] = f"{net['outbox']['pending']} attestation(s) pending"
    finally:
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return {n: i.counts for n, i in injectors.items()}


def _remove_socket_dir(sock_dir: Path) -> None:
    with contextlib.suppress(OSError):
        for p in sock_dir.iterdir():
            p.unlink()
        sock_dir.rmdir()


def _event_of(att: Any, t0_utc: float) -> Any:
    """A ``driving_event`` attestation as an event timed from the start of the drive
    (attestation time minus the event's duration)."""
    from tools.bench_scenario import ObservedEvent

    body = att.body
    duration = float(body.get("duration", 0.0))
    return ObservedEvent(
        kind=str(body["event"]),
        t=att.time - duration - t0_utc,
        severity=float(body.get("severity", 0.0)),
        duration=duration,
        seq=att.seq,
        tsrc=str(att.time_source),
    )


def _driving_events(data_dir: Path, t0_utc: float) -> list[Any]:
    """The ``driving_event`` attestations in the attestor's chain directory, as events."""
    from agent.attestor import chain_dir
    from ledger_lite.attestation import decode_attestation

    events = []
    for path in sorted(chain_dir(data_dir).glob("*.cose")):
        att = decode_attestation(path.read_bytes())
        if att.kind == "driving_event":
            events.append(_event_of(att, t0_utc))
    return events


def run_scenario_command(args: argparse.Namespace, out: IO[str]) -> int:
    from drivers.can_bus import non_loopback_interfaces_up
    from tools.bench_scenario import ScenarioError, load_scenario

    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as err:
        sys.stderr.write(f"acc-bench: {err}\n")
        return exitcodes.USAGE
    if args.agent == "process" and (up := non_loopback_interfaces_up()):
        if args.netns:
            return _rerun_in_netns(args.argv)
        sys.stderr.write(f"acc-bench: {_MULTICAST_REFUSED.format(', '.join(up))}\n")
        return exitcodes.UNAVAILABLE
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix=f"acc-bench-{sc.name.replace(' ', '_')[:20]}-"))).resolve()
    try:
        report = asyncio.run(
            run_scenario(
                sc,
                workdir,
                overrides=args.set,
                out=out,
                mode=args.agent,
                gnss=args.gnss,
                speed=args.speed,
                mqtt=args.mqtt,
            )
        )
    except ScenarioError as err:
        sys.stderr.write(f"acc-bench: {err}\n")
        return exitcodes.USAGE
    except BenchRefused as err:
        sys.stderr.write(f"acc-bench: {err}\n")
        return exitcodes.UNAVAILABLE
    except (HalError, RuntimeError, OSError) as err:
        sys.stderr.write(f"acc-bench: scenario {sc.name!r} could not run: {err}\n")
        return exitcodes.SOFTWARE
    out.write(report.text() + "\n")
    out.write(f"agent data and generated config in {workdir}\n")
    out.flush()
    if args.junit:
        Path(args.junit).write_bytes(report.junit())
    return exitcodes.OK if report.passed else exitcodes.FAILURE


def _rerun_in_netns(argv: Sequence[str]) -> int:
    """This command again, in a new private network namespace with only loopback up and a
    multicast route on it (``unshare -n``, needs root); returns its exit code."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        sys.stderr.write("acc-bench: --netns needs unshare and ip (util-linux, iproute2)\n")
        return exitcodes.UNAVAILABLE
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    script = 'ip link set lo up && ip route add 224.0.0.0/4 dev lo && exec "$@"'
    cmd = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, "-m", "tools.acc_bench", *argv]
    sys.stdout.flush()
    return subprocess.run(cmd, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="acc-bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("-v", "--verbose", action="count", default=0)
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser("vehicle", help="drive the simulated test vehicle onto buses and an NMEA sink")
    v.add_argument("--can0", type=parse_bus, help="powertrain bus, INTERFACE:CHANNEL")
    v.add_argument("--can1", type=parse_bus, help="body bus, INTERFACE:CHANNEL")
    v.add_argument("--bitrate", type=int, default=500_000)
    v.add_argument("--nmea", help="'pty' (a new pseudo-terminal), a file, a device or a pyserial URL")
    v.add_argument("--nmea-rate", type=float, default=1.0, help="fixes per second, 1..10")
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--duration", type=float, help="seconds (default: until interrupted)")
    r = sub.add_parser("replay", help="send a recorded log (candump/ASC/BLF/TRC) onto a bus")
    r.add_argument("log", type=Path)
    r.add_argument("--bus", type=parse_bus, required=True, help="INTERFACE:CHANNEL")
    r.add_argument("--channel", help="only this channel of the log")
    r.add_argument("--bitrate", type=int, default=500_000)
    r.add_argument("--speed", type=float, default=1.0, help="pace factor; 0 = as fast as possible")
    sc = sub.add_parser("scenario", help="run a scenario file against the real agent and check its expectations")
    sc.add_argument("scenario", type=Path, help="scenario TOML (docs/bench.md)")
    sc.add_argument("--junit", type=Path, help="also write the report as JUnit XML here")
    sc.add_argument("--workdir", type=Path, help="agent data dir and generated config (default: a new temp dir)")
    sc.add_argument(
        "--agent",
        choices=["inprocess", "process"],
        default="inprocess",
        help="the agent in this process on virtual buses (default), or as `python -m agent.main` on "
        "udp_multicast buses (only in a private network namespace: see --netns)",
    )
    sc.add_argument("--netns", action="store_true", help="with --agent process: run in a new private netns (root)")
    sc.add_argument(
        "--mqtt",
        nargs="?",
        const="embedded",
        metavar="HOST:PORT",
        help="the agent publishes to MQTT (a Mosquitto started on 127.0.0.1, or HOST:PORT) and the events "
        "are judged from the attestations the bench hears on the cell's topic",
    )
    sc.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="run N times faster than real time (in-process agent only: it shares the bench's scaled clock)",
    )
    sc.add_argument(
        "--gnss",
        choices=["pty", "gpsd"],
        default="pty",
        help="the agent reads the NMEA from a pty as a serial receiver (default), or from a real gpsd "
        "on 127.0.0.1 that reads the pty",
    )
    sc.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override an agent setting (as acc-agent --set)"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    setup_logging("debug" if args.verbose > 1 else "info" if args.verbose else "warning")
    if args.command == "vehicle" and not (args.can0 or args.can1 or args.nmea):
        sys.stderr.write("acc-bench vehicle: give at least one of --can0, --can1, --nmea\n")
        return exitcodes.USAGE
    if args.command == "scenario":
        try:
            return run_scenario_command(args, sys.stdout)
        except KeyboardInterrupt:
            return exitcodes.FAILURE
    runner = run_vehicle if args.command == "vehicle" else run_replay
    try:
        return asyncio.run(runner(args, sys.stdout))
    except HalError as err:
        sys.stderr.write(f"acc-bench: {err}\n")
        return exitcodes.NO_INPUT
    except KeyboardInterrupt:
        return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
