"""``acc-sim``: a whole cell on this machine. M simulated OBUs, each a real agent (python-can
virtual buses, NMEA over its own pty, DBC decoding, fusion, health, diagnostics socket) driving
the default route with its own seed, and with ``--rsus R`` R RSU agents (role rsu, the cell
ledger) on a real Mosquitto, all as asyncio tasks in one process: python-can's virtual bus only
connects buses of one process, and tasks keep one core's worth of OBUs cheap. With RSUs the
OBUs attest every ~2 s into their outbox, send over MQTT and retire entries on verified receipts.

    acc-sim --obus 4 --duration 30
    acc-sim --rsus 4 --obus 8 --duration 60 --report out/

The report (``--report DIR``): acc-sim-report.json and acc-sim-summary.txt. No PNG plots
(matplotlib is not a dependency). Exit 0 with RSUs when the cell committed blocks, every
attestation made before the last 5 s is receipted, and no subsystem went to ``failed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import exitcodes
from agent.config import ConfigError, load_config
from agent.demo import SimulatedObu, TruthTracker, demo_base_config
from agent.health import Status
from agent.keystore import ensure_device_key
from agent.logsetup import setup_logging
from agent.runtime import Agent

CELL = "sim-cell"
SETTLE = 5.0  # attestations younger than this at the end need not be receipted yet


class Tracker(TruthTracker):
    """Per-OBU state sink: errors of the fused state against its simulator's truth."""

    def __init__(self, sim: SimulatedObu) -> None:
        super().__init__(sim.vehicle.truth)
        self.sim = sim

    def row(self) -> dict[str, Any]:
        a = self.sim.agent
        mean, median = self.speed_err_mean(), self.pos_err_median()
        return {
            "node": a.node_id,
            "frames": sum(s.frames for s in a.can_services),
            "undecodable": sum(s.decode_errors for s in a.can_services),
            "fixes": a.gnss_service.fixes if a.gnss_service else 0,
            "snapshots": self.n,
            "speed_err_mean": None if mean is None else round(mean, 4),
            "pos_err_median_m": None if median is None else round(median, 2),
            "health": str(a.health.overall()),
        }


async def run(obus: int, duration: float, data_root: Path, out: Any) -> list[dict[str, Any]]:
    sims: list[SimulatedObu] = []
    trackers: list[Tracker] = []
    for i in range(obus):
        base = demo_base_config(str(data_root / f"obu{i:03d}"))
        base["agent"]["node_id"] = f"obu-{i:03d}"
        base["agent"]["log_level"] = "warning"
        for bus in base["can"]:
            bus["channel"] += f"-obu{i}"
        sim = SimulatedObu(load_config(base=base, env={}), seed=100 + i, handle_signals=False)
        tracker = Tracker(sim)
        sim.agent.state_sinks.append(tracker)
        sims.append(sim)
        trackers.append(tracker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def progress() -> None:
        last = 0
        t0 = time.monotonic()
        cpu0 = time.process_time()
        while True:
            await asyncio.sleep(1.0)
            frames = sum(s.frames for sim in sims for s in sim.agent.can_services)
            healthy = sum(str(sim.agent.health.overall()) == "ok" for sim in sims)
            cpu = (time.process_time() - cpu0) / (time.monotonic() - t0)
            out.write(
                f"t={time.monotonic() - t0:5.1f}s  OBUs {obus}  frames {frames - last:6d}/s  "
                f"healthy {healthy}/{obus}  CPU {100 * cpu:4.0f}%\n"
            )
            out.flush()
            last = frames

    async def run_all() -> None:
        async with asyncio.TaskGroup() as tg:
            for sim in sims:
                tg.create_task(sim.run(duration))

    ticker = asyncio.create_task(progress())
    stopper = asyncio.create_task(stop.wait())
    main = asyncio.create_task(run_all())
    await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not main.done():
        for sim in sims:
            sim.agent.request_stop()
        await main
    ticker.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    return [t.row() for t in trackers]


# --------------------------------------------------------------------------- the cell (--rsus)


def write_genesis(path: Path, dids: list[str]) -> None:
    """The cell's genesis: chain id = cell id, the RSUs as equal validators, a throwaway authority."""
    from ledger_lite.didkey import did_key
    from ledger_lite.keys import SigningKey

    authority = did_key(SigningKey.from_private_bytes("Ed25519", b"\x42" * 32).public)
    genesis = {
        "chain_id": CELL,
        "genesis_time_ms": int(time.time() * 1000) - 1000,
        "validators": [{"did": d, "power": 1} for d in dids],
        "authorities": {authority: ["road_authority"]},
    }
    path.write_text(json.dumps(genesis))


def rsu_config(i: int, data_dir: Path, host: str, port: int, genesis: Path) -> dict[str, Any]:
    return {
        "agent": {
            "role": "rsu",
            "node_id": f"rsu-{i}",
            "data_dir": str(data_dir),
            "diag_socket": str(data_dir / "diag.sock"),
            "log_level": "warning",
            "watchdog": False,
        },
        "gnss": {"backend": "none"},  # a fixed road-side unit: no receiver simulated
        "attest": {"enabled": False},
        "mqtt": {
            "enabled": True,
            "host": host,
            "port": port,
            "cell": CELL,
            "client_id": f"{CELL}-rsu-{i}",
            "backoff_max": 1.0,
            "max_payload": 2097152,
        },
        "ledger": {
            "enabled": True,
            "genesis_file": str(genesis),
            "block_interval": 0.5,
            "timeout_propose": 1.0,
            "timeout_vote": 0.5,
            "rebroadcast": 1.0,
        },
    }


def obu_config(i: int, data_dir: Path, host: str, port: int, genesis: Path) -> dict[str, Any]:
    base = demo_base_config(str(data_dir))
    base["agent"]["node_id"] = f"obu-{i:03d}"
    base["agent"]["log_level"] = "warning"
    for bus in base["can"]:
        bus["channel"] += f"-obu{i}"
    base["attest"] = {"summary_interval": 2.0}
    base["outbox"] = {"resend_after": 3.0, "resend_max": 6.0}
    base["mqtt"] = {"enabled": True, "host": host, "port": port, "cell": CELL, "backoff_max": 1.0}
    base["ledger"] = {"enabled": True, "genesis_file": str(genesis)}
    return base


class CellWatch:
    """Samples the in-process agents once a second: RSU heights, per-OBU attestations made and
    outbox counters, health transitions (events; into ``failed`` counts as a failure)."""

    def __init__(self, rsus: list[Agent], obus: list[SimulatedObu]) -> None:
        self.rsus = rsus
        self.obus = obus
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._health: dict[tuple[str, str], Status] = {}
        self.made: dict[str, list[tuple[float, int]]] = {o.agent.node_id: [] for o in obus}
        self.outbox: dict[str, dict[str, Any]] = {}
        self.height = 0
        self.first_receipt: set[str] = set()
        self.final_heights: dict[str, int] = {}

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, node: str, what: str) -> None:
        self.events.append({"t": self.now(), "node": node, "event": what})

    def heights(self) -> dict[str, int]:
        return {a.node_id: a.ledger.height for a in self.rsus if a.ledger is not None}

    async def sample(self) -> None:
        t = self.now()
        for a in [*self.rsus, *(o.agent for o in self.obus)]:
            for name, h in a.health.snapshot().items():
                old = self._health.get((a.node_id, name))
                if old != h.status:
                    self._health[(a.node_id, name)] = h.status
                    if old is not None or h.status is not Status.OK:
                        self.event(a.node_id, f"health {name}: {h.status}{f' ({h.reason})' if h.reason else ''}")
                    if h.status is Status.FAILED:
                        self.failures.append({"t": t, "node": a.node_id, "subsystem": name, "reason": h.reason})
        top = max(self.heights().values(), default=0)
        if self.height == 0 and top > 0:
            self.event("cell", f"first block committed (height {top})")
        self.height = max(self.height, top)
        for o in self.obus:
            a = o.agent
            att = a.attestor.status() if a.attestor is not None else {}
            made = int(att["next_seq"]) - 1 if att.get("next_seq") else 0
            self.made[a.node_id].append((time.time(), made))
            if a.outbox is not None:
                with contextlib.suppress(Exception):  # closed while stopping
                    st = await a.outbox.stats()
                    self.outbox[a.node_id] = {
                        "pending": st.pending,
                        "sent_unconfirmed": st.sent,
                        "retired": st.retired,
                        "oldest_undelivered": st.oldest_created,
                    }
                    if st.retired and a.node_id not in self.first_receipt:
                        self.first_receipt.add(a.node_id)
                        self.event(a.node_id, "first attestation receipted")

    def totals(self) -> tuple[int, int, int]:
        made = sum(v[-1][1] for v in self.made.values() if v)
        retired = sum(o["retired"] for o in self.outbox.values())
        backlog = sum(o["pending"] + o["sent_unconfirmed"] for o in self.outbox.values())
        return made, retired, backlog


async def run_cell(
    rsus: int, obus: int, duration: float, data_root: Path, host: str, port: int, out: Any
) -> dict[str, Any]:
    """R RSU agents and M OBUs in this process on the broker at host:port; the report."""
    await asyncio.to_thread(data_root.mkdir, parents=True, exist_ok=True)
    genesis = data_root / "genesis.json"
    rsu_dirs = [data_root / f"rsu{i}" for i in range(rsus)]
    dids = [(await asyncio.to_thread(ensure_device_key, d)).did for d in rsu_dirs]
    await asyncio.to_thread(write_genesis, genesis, dids)
    rsu_agents = [
        Agent(load_config(base=rsu_config(i, d, host, port, genesis), env={}), handle_signals=False)
        for i, d in enumerate(rsu_dirs)
    ]
    sims = [
        SimulatedObu(
            load_config(base=obu_config(i, data_root / f"obu{i:03d}", host, port, genesis), env={}),
            seed=100 + i,
            handle_signals=False,
        )
        for i in range(obus)
    ]
    watch = CellWatch(rsu_agents, sims)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def live() -> None:
        last_h, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            await watch.sample()
            now = time.monotonic()
            made, retired, backlog = watch.totals()
            rate = (watch.height - last_h) / (now - last_t)
            last_h, last_t = watch.height, now
            out.write(
                f"t={watch.now():5.1f}s  height {watch.height:4d}  blocks/s {rate:4.1f}  "
                f"attestations {made:4d} made / {retired:4d} receipted  backlog {backlog:3d}  "
                f"health failures {len(watch.failures)}\n"
            )
            out.flush()

    async def run_all() -> None:
        async with asyncio.TaskGroup() as tg:
            for a in rsu_agents:
                tg.create_task(a.run(None))
            for sim in sims:
                tg.create_task(sim.run(None))

    main = asyncio.create_task(run_all())
    ticker = asyncio.create_task(live())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({main, stopper}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    for task in (ticker, stopper):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if not main.done():
        await watch.sample()  # the final state, before the agents close their stores
    watch.final_heights = watch.heights()
    end = time.time()
    elapsed = watch.now()
    for a in [*rsu_agents, *(s.agent for s in sims)]:
        a.request_stop()
    await main
    return build_report(watch, rsus, obus, duration, elapsed, end)


def build_report(watch: CellWatch, rsus: int, obus: int, duration: float, elapsed: float, end: float) -> dict[str, Any]:
    cutoff = end - SETTLE
    rows = []
    for node, hist in watch.made.items():
        ob = watch.outbox.get(node, {})
        made = hist[-1][1] if hist else 0
        made_settled = max((m for t, m in hist if t <= cutoff), default=0)
        oldest = ob.get("oldest_undelivered")
        rows.append(
            {
                "node": node,
                "made": made,
                "made_before_last_5s": made_settled,
                "receipted": ob.get("retired", 0),
                "pending": ob.get("pending", 0),
                "sent_unconfirmed": ob.get("sent_unconfirmed", 0),
                "oldest_unreceipted_age_s": None if oldest is None else round(end - oldest, 1),
                # every outbox entry created before the cutoff is retired by a verified receipt
                "settled_all_receipted": oldest is None or oldest >= cutoff,
            }
        )
    made, retired, backlog = watch.totals()
    blocks = watch.height
    ok = blocks > 0 and all(r["settled_all_receipted"] and r["made"] > 0 for r in rows) and not watch.failures
    return {
        "cell": CELL,
        "rsus": rsus,
        "obus": obus,
        "duration_s": duration,
        "elapsed_s": elapsed,
        "blocks_committed": blocks,
        "blocks_per_s": round(blocks / elapsed, 2) if elapsed else None,
        "rsu_heights": watch.final_heights,
        "attestations_made": made,
        "attestations_receipted": retired,
        "outbox_backlog": backlog,
        "obus_detail": rows,
        "events": watch.events,
        "health_failures": watch.failures,
        "plots": "skipped: matplotlib is not installed (not a dependency)",
        "ok": ok,
    }


def summary_text(rep: dict[str, Any]) -> str:
    lines = [
        f"acc-sim: cell {rep['cell']}, {rep['rsus']} RSUs, {rep['obus']} OBUs, {rep['elapsed_s']} s",
        f"blocks committed {rep['blocks_committed']} ({rep['blocks_per_s']}/s), "
        f"attestations made {rep['attestations_made']}, receipted {rep['attestations_receipted']}, "
        f"backlog {rep['outbox_backlog']}, health failures {len(rep['health_failures'])}, "
        f"events {len(rep['events'])}",
        "",
        "node      made  made<-5s  receipted  pending  unconfirmed  oldest unreceipted s  settled ok",
    ]
    for r in rep["obus_detail"]:
        lines.append(
            f"{r['node']:<9} {r['made']:>4}  {r['made_before_last_5s']:>8}  {r['receipted']:>9}  {r['pending']:>7}"
            f"  {r['sent_unconfirmed']:>11}  {r['oldest_unreceipted_age_s']!s:>20}  {r['settled_all_receipted']}"
        )
    for f in rep["health_failures"]:
        lines.append(f"FAILED t={f['t']}s {f['node']} {f['subsystem']}: {f['reason']}")
    lines.append(f"verdict: {'OK' if rep['ok'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


def simulate_cell(
    rsus: int, obus: int, duration: float, root: Path, broker: str | None, report: Path | None, out: Any
) -> dict[str, Any]:
    """Start Mosquitto (unless ``broker`` HOST:PORT), run the cell, write the report."""
    proc: subprocess.Popen[bytes] | None = None
    if broker:
        host, _, p = broker.rpartition(":")
        port = int(p)
    else:
        from tools.bench.mqtt_publish import start_broker

        bdir = root / "mosquitto"
        bdir.mkdir(parents=True, exist_ok=True)
        proc, port = start_broker(bdir)
        host = "127.0.0.1"
    try:
        rep = asyncio.run(run_cell(rsus, obus, duration, root, host, port, out))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    rep["broker"] = f"{host}:{port}"
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "acc-sim-report.json").write_text(json.dumps(rep, indent=2) + "\n")
        (report / "acc-sim-summary.txt").write_text(summary_text(rep))
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="acc-sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--obus", type=int, default=4, help="simulated OBUs (default 4)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    ap.add_argument("--data-dir", type=Path, help="where the OBUs keep their state (default: a temporary dir)")
    ap.add_argument("--json", action="store_true", help="print the final table as JSON lines")
    ap.add_argument("--rsus", type=int, default=0, help="RSU agents running the cell ledger (default 0: OBUs only)")
    ap.add_argument("--broker", metavar="HOST:PORT", help="use this MQTT broker (default: start Mosquitto)")
    ap.add_argument("--report", type=Path, metavar="DIR", help="write acc-sim-report.json and a summary table here")
    args = ap.parse_args(argv)
    if args.obus < 1:
        ap.error("--obus must be at least 1")
    if args.rsus < 0:
        ap.error("--rsus must be >= 0")
    if args.broker and not args.broker.rpartition(":")[2].isdigit():
        ap.error("--broker must be HOST:PORT")
    setup_logging("warning")
    if args.rsus > 0:
        with tempfile.TemporaryDirectory(prefix="acc-sim-") as tmp:
            root = args.data_dir or Path(tmp)
            try:
                rep = simulate_cell(args.rsus, args.obus, args.duration, root, args.broker, args.report, sys.stdout)
            except ConfigError as err:
                sys.stderr.write(f"acc-sim: {err}\n")
                return exitcodes.CONFIG
        sys.stdout.write("\n" + (json.dumps(rep) + "\n" if args.json else summary_text(rep)))
        if args.report is not None:
            sys.stdout.write(
                f"report: {args.report / 'acc-sim-report.json'} (no PNG plots: matplotlib not installed)\n"
            )
        return exitcodes.OK if rep["ok"] else exitcodes.FAILURE
    with tempfile.TemporaryDirectory(prefix="acc-sim-") as tmp:
        root = args.data_dir or Path(tmp)
        try:
            rows = asyncio.run(run(args.obus, args.duration, root, sys.stdout))
        except ConfigError as err:
            sys.stderr.write(f"acc-sim: {err}\n")
            return exitcodes.CONFIG
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        sys.stdout.write("\nnode      frames  undecodable  fixes  snapshots  speed err m/s  pos err m  health\n")
        for r in rows:
            sys.stdout.write(
                f"{r['node']:<9} {r['frames']:>6}  {r['undecodable']:>11}  {r['fixes']:>5}  {r['snapshots']:>9}"
                f"  {r['speed_err_mean']!s:>13}  {r['pos_err_median_m']!s:>9}  {r['health']}\n"
            )
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "acc-sim-report.json").write_text(json.dumps({"rsus": 0, "obus_detail": rows}, indent=2) + "\n")
    return exitcodes.OK if all(r["health"] == "ok" for r in rows) else exitcodes.FAILURE


if __name__ == "__main__":
    sys.exit(main())
