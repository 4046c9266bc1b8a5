"""The demo: a real OBU agent on the built-in simulated test vehicle, no hardware needed.

The simulated vehicle (``drivers.simvehicle``) drives its default route and sends the
reference DBC's frames on two python-can ``virtual`` buses (can0 powertrain, can1 body) and
NMEA 0183 into a pseudo-terminal; the agent reads them exactly as it reads a car (python-can
port -> DBC decoder -> fusion; tty -> NMEA reader -> fusion) and writes what it sees once a
second, then a summary that compares the fused state with the simulator's truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hal.types import VehicleState

from .config import Config
from .keystore import ensure_device_key
from .services import StateSink

DATA = Path(__file__).resolve().parent.parent / "drivers" / "data"
PTY_PLACEHOLDER = "(demo pty)"

if TYPE_CHECKING:
    from drivers.simvehicle import Route


def demo_base_config(data_dir: str) -> dict[str, Any]:
    """The embedded defaults of the demo, before any file/env/flag overrides."""
    tag = os.getpid()
    return {
        "agent": {"role": "obu", "node_id": "demo-obu", "data_dir": data_dir, "log_level": "warning"},
        "can": [
            {
                "name": "can0",
                "interface": "virtual",
                "channel": f"acc-demo-{tag}-can0",
                "bitrate": 500_000,
                "dbc": str(DATA / "acc_testcar_powertrain.dbc"),
            },
            {
                "name": "can1",
                "interface": "virtual",
                "channel": f"acc-demo-{tag}-can1",
                "bitrate": 125_000,
                "dbc": str(DATA / "acc_testcar_body.dbc"),
            },
        ],
        "gnss": {"backend": "nmea", "device": PTY_PLACEHOLDER},
        "attest": {"summary_interval": 10.0},
    }


class TruthTracker:
    """State sink: errors of the fused state against the simulated vehicle's truth."""

    def __init__(self, truth: Callable[[], Any]) -> None:
        self.truth = truth
        self.n = 0
        self.speed_err: list[float] = []
        self.pos_err: list[float] = []
        self.dr_snapshots = 0

    def __call__(self, s: VehicleState) -> None:
        self.n += 1
        truth = self.truth()
        if s.speed is not None:
            self.speed_err.append(abs(s.speed - truth.speed))
        if s.lat is not None and s.lon is not None:
            dn = math.radians(s.lat - truth.lat) * 6_371_000
            de = math.radians(s.lon - truth.lon) * 6_371_000 * math.cos(math.radians(truth.lat))
            self.pos_err.append(math.hypot(dn, de))
        self.dr_snapshots += s.dead_reckoning

    def speed_err_mean(self) -> float | None:
        return sum(self.speed_err) / len(self.speed_err) if self.speed_err else None

    def pos_err_median(self) -> float | None:
        return sorted(self.pos_err)[len(self.pos_err) // 2] if self.pos_err else None


class ConsoleReport(TruthTracker):
    """State sink: one line per second, and the error statistics against the truth."""

    def __init__(self, out: TextIO, truth: Callable[[], Any], rate_hz: float, counts: Callable[[], dict[str, int]]):
        super().__init__(truth)
        self.out = out
        self.every = max(1, round(rate_hz))
        self.counts = counts
        self.last_counts: dict[str, int] = {}
        self.t0: float | None = None

    def __call__(self, s: VehicleState) -> None:
        super().__call__(s)
        if self.t0 is None:
            self.t0 = s.monotonic
        if self.n % self.every == 0:
            self.out.write(self.line(s) + "\n")
            self.out.flush()

    def line(self, s: VehicleState) -> str:
        counts = self.counts()
        rates = " ".join(f"{k} {v - self.last_counts.get(k, 0):4d}/s" for k, v in counts.items())
        self.last_counts = counts

        def f(v: float | None, fmt: str) -> str:
            return format(v, fmt) if v is not None else "-".rjust(len(format(0.0, fmt)))

        pos = f"{s.lat:.6f},{s.lon:.6f}" if s.lat is not None and s.lon is not None else "no position".ljust(20)
        speed = None if s.speed is None else s.speed * 3.6
        return (
            f"t={s.monotonic - (self.t0 or 0):5.1f}s  v {f(speed, '5.1f')} km/h  ax {f(s.accel_longitudinal, '5.2f')}"
            f"  ay {f(s.accel_lateral, '5.2f')} m/s²  yaw {f(s.yaw_rate, '5.1f')}°/s"
            f"  steer {f(s.steering_angle, '6.1f')}°  brake {f(s.brake, '3.0f')}%  thr {f(s.throttle, '3.0f')}%"
            f"  gear {s.gear if s.gear is not None else '-'}  {pos} hdg {f(s.heading, '3.0f')}°"
            f"  fix {int(s.gnss_mode)}{' DR' if s.dead_reckoning else '   '}  {rates}"
        )


class SimulatedObu:
    """One OBU agent wired to its own simulated vehicle: the vehicle's frames go onto the
    agent's ``virtual`` buses and its NMEA into a pty the agent reads as a serial receiver.
    Used by the demo and by ``acc-sim``. ``close()`` releases the pty."""

    def __init__(
        self,
        config: Config,
        *,
        seed: int = 1,
        state_sinks: Sequence[StateSink] = (),
        handle_signals: bool = True,
        route: Route | None = None,
    ) -> None:
        import dataclasses

        from drivers.can_bus import PythonCanPort
        from drivers.simvehicle import SimVehicle

        from .runtime import Agent

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.pty_path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        if config.gnss.backend == "nmea" and config.gnss.device == PTY_PLACEHOLDER:
            config = dataclasses.replace(config, gnss=dataclasses.replace(config.gnss, device=self.pty_path))
        self.config = config
        self.vehicle = SimVehicle(route, seed=seed, nmea_rate_hz=1.0)
        self.sim_ports = {
            bus.name: PythonCanPort(bus.name, interface="virtual", channel=bus.channel, bitrate=bus.bitrate)
            for bus in config.can
            if bus.interface == "virtual"
        }
        self.nmea_dropped = 0
        self.agent = Agent(
            config,
            state_sinks=state_sinks,
            extra_services=[("simvehicle", self._simulate)],
            handle_signals=handle_signals,
        )

    def _nmea_sink(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except BlockingIOError:  # nobody reads the pty (yet): a receiver would lose it too
            self.nmea_dropped += len(data)

    async def _simulate(self) -> None:
        from drivers.simvehicle import run_sim

        for port in self.sim_ports.values():
            await port.open()
        try:
            await run_sim(self.vehicle, self.sim_ports, self._nmea_sink, self.agent.clock)
        finally:
            for port in self.sim_ports.values():
                await port.close()

    def counts(self) -> dict[str, int]:
        c = {s.port.name: s.frames for s in self.agent.can_services}
        c["fixes"] = self.agent.gnss_service.fixes if self.agent.gnss_service else 0
        return c

    async def run(self, duration: float | None) -> None:
        os.makedirs(self.config.agent.data_dir, exist_ok=True)
        try:
            # each simulated OBU has its own identity (fsync: off the loop)
            await asyncio.to_thread(ensure_device_key, self.config.agent.data_dir)
            await self.agent.run(duration)
        finally:
            self.close()

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def run_demo(config: Config, *, duration: float | None, out: TextIO) -> None:
    sim = SimulatedObu(config, seed=1)
    report = ConsoleReport(out, sim.vehicle.truth, config.fusion.rate_hz, sim.counts)
    sim.agent.state_sinks.append(report)
    out.write(
        f"AutoChain demo: OBU agent on the simulated test vehicle for {duration or 'unlimited'} s\n"
        f"  CAN  {', '.join(f'{b.name}=virtual:{b.channel} ({Path(b.dbc).name})' for b in config.can)}\n"
        f"  GNSS NMEA 0183 on {sim.pty_path}\n"
        f"  diagnostics: acc status --socket {sim.agent.diag_socket_path()}\n"
    )
    out.flush()
    await sim.run(duration)
    out.write(summary(sim.agent, report) + "\n")


def summary(agent: Any, report: ConsoleReport) -> str:
    import psutil

    lines = ["", "summary"]
    for s in agent.can_services:
        st = s.status()
        lines.append(
            f"  {s.port.name}: {st['frames']} frames, {st['signals']} signals, {st['decode_errors']} undecodable, "
            f"{st['overruns']} overruns"
        )
    if agent.gnss_service is not None:
        g = agent.gnss_service.status()
        c = g["counters"]
        lines.append(f"  gnss: {g['fixes']} fixes; reader counters {c}")
    if (mean := report.speed_err_mean()) is not None:
        lines.append(
            f"  fused vs simulator truth over {report.n} snapshots: speed error mean "
            f"{mean:.3f} m/s (max {max(report.speed_err):.3f})"
        )
    if (median := report.pos_err_median()) is not None:
        lines.append(
            f"  position error median {median:.2f} m, max {max(report.pos_err):.2f} m "
            f"({report.dr_snapshots} snapshots dead-reckoned)"
        )
    if agent.attestor is not None:
        st = agent.attestor.status()
        lines.append(
            f"  attestations: {st['attested']} signed by {st['did'][:24]}... in {st['dir']}"
            + (f" (check one: acc attest verify {st['dir']}/{st['next_seq'] - 1:012d}.cose)" if st["attested"] else "")
        )
    lines.append("  health: " + agent.health.summary())
    lines.append(f"  RSS {psutil.Process().memory_info().rss / 2**20:.1f} MiB")
    return "\n".join(lines)
