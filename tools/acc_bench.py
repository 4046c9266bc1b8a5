"""``acc-bench``: the vehicle-in-the-loop test bench (first slice).

Drives the simulated test vehicle, or a recorded bus log, onto real python-can buses — a
rig's ``socketcan`` vcan0/can0, a USB adapter, or ``udp_multicast`` between processes inside a
private network namespace — and NMEA 0183 into a pseudo-terminal (or a file, or a pyserial
URL) that the agent under test reads as its GNSS receiver.

    acc-bench vehicle --can0 socketcan:vcan0 --can1 socketcan:vcan1 --nmea pty --duration 60
    acc-bench replay run.blf --bus socketcan:vcan0 --speed 1.0

Scenarios with timed events, faults and expectations come with the bench issue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from agent import exitcodes
from agent.logsetup import setup_logging
from hal.errors import HalError


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
    from drivers.clock import SystemClock
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
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("debug" if args.verbose > 1 else "info" if args.verbose else "warning")
    if args.command == "vehicle" and not (args.can0 or args.can1 or args.nmea):
        sys.stderr.write("acc-bench vehicle: give at least one of --can0, --can1, --nmea\n")
        return exitcodes.USAGE
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
