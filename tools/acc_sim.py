"""``acc-sim``: whole cells on this machine. M simulated OBUs, each a real agent (python-can
virtual buses, NMEA over its own pty, DBC decoding, fusion, behaviour rules and model, health,
diagnostics socket) on its own simulated vehicle spread along the Munich town loop, and with
``--rsus R`` one or two cells (``--cells 2``: west and east halves of the loop) of R RSU agents
each (the cell ledger by BFT consensus; the first RSU announces the cell, admits vehicles and
coordinates federated learning) on a real Mosquitto. OBUs join the cell they are in and hand
over when they cross; they attest (summaries every 2 s, driving events) and retire outbox
entries on verified receipts, exchange CAM/DENM on the emulated PC5 sidelink, and train in FL
rounds. The OBU agents are asyncio tasks of ``--workers`` worker processes (``tools.sim_obus``;
python-can's virtual bus connects only the buses of one process, and tasks keep an OBU cheap:
see BENCHMARKS.md for how many fit), the RSU agents tasks of one child process
(``tools.sim_rsus``), the FL evaluator a worker process; this process watches. docs/sim.md
says why. Without ``--rsus`` the OBUs run in this process (no broker, no ledger).

    acc-sim --obus 4 --duration 30
    acc-sim --rsus 4 --obus 8 --cells 2 --duration 120 --report out/

The report (``--report DIR``): acc-sim-report.json, acc-sim-summary.txt and PNG plots (map of
routes and events, ledger throughput, FL accuracy per round on held-apart drives; needs the
``sim`` extra, matplotlib). Exit 0 with RSUs when every cell committed blocks, every attestation
made before the last 5 s is receipted, and no subsystem went to ``failed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
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
from agent.logsetup import setup_logging
from tools.sim_world import FlEvaluator, ModelTap, ObuWorkers, RsuProcess, SimSpec, Watch, World, report_dict


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


# --------------------------------------------------------------------------- the cells (--rsus)


async def run_world(spec: SimSpec, duration: float, root: Path, host: str, port: int, out: Any) -> dict[str, Any]:
    """The cells of ``spec`` (their RSUs in a child process) and its OBUs (in ``spec.workers``
    worker processes) on the broker at host:port, for ``duration`` seconds; the report."""
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    sock_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="acc-sim-"))
    world = World(spec, root, host, port, sock_dir)  # before anything runs: keys, credentials, geneses
    rsus = RsuProcess(world, root / "rsus.log")
    workers = ObuWorkers(world, spec.workers)
    tap = ModelTap(host, port)
    evaluator = FlEvaluator() if spec.fl else None  # its own process too
    baseline = asyncio.create_task(evaluator.score(None)) if evaluator is not None else None
    watch = Watch(world, rsus=rsus, models=tap if spec.fl else None, obus=workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    died: list[str] = []

    async def live() -> None:
        last_tx, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            if (why := rsus.died() or workers.died()) is not None:
                died.append(why)
                stop.set()
                return
            if baseline is not None and baseline.done() and watch.evaluator is None:
                watch.fl_baseline = baseline.result()
                watch.evaluator = evaluator
            await watch.sample()
            now = time.monotonic()
            tx = sum(watch.txs.values())
            rate = {"tx": (tx - last_tx) / (now - last_t)}
            last_tx, last_t = tx, now
            out.write(watch.live_line(rate) + "\n")
            out.flush()

    try:
        await rsus.start()
        if spec.fl:
            await asyncio.to_thread(tap.start)
        await workers.start()
        ticker = asyncio.create_task(live())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        end = time.time()
        elapsed = watch.now()
        await workers.stop()  # each worker's final snapshot, taken before its agents close
        await watch.sample()
        watch.final_heights = watch.heights()
    finally:
        await workers.stop()
        await rsus.stop()
        await asyncio.to_thread(tap.stop)
        if baseline is not None and not baseline.done():
            baseline.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await baseline
        if evaluator is not None:
            evaluator.close()
        await asyncio.to_thread(shutil.rmtree, sock_dir, True)
    rep = report_dict(watch, spec, elapsed, end)
    if died:
        rep["ok"] = False
        rep["health_failures"].append({"t": elapsed, "node": "sim", "subsystem": "process", "reason": died[0]})
    return rep


def summary_text(rep: dict[str, Any]) -> str:
    fl = rep.get("fl_rounds") or []
    lines = [
        f"acc-sim: cells {', '.join(rep['cells'])}, {rep['rsus']} RSUs each, {rep['obus']} OBUs, {rep['elapsed_s']} s",
        f"blocks committed {rep['blocks_committed']} ({rep['blocks_per_s']}/s) {rep['heights']}, "
        f"transactions {rep['committed_txs']}",
        f"attestations made {rep['attestations_made']}, receipted {rep['attestations_receipted']}, "
        f"backlog {rep['outbox_backlog']}; driving events {rep['driving_events']}",
        f"PC5: {rep['pc5']}, warnings {rep['pc5_warnings']}; handovers {rep['handovers']}; "
        f"health failures {len(rep['health_failures'])}",
    ]
    if rep.get("fl_baseline") is not None or fl:
        lines.append(f"FL: start model {rep.get('fl_baseline')} on {rep.get('fl_eval_set')}")
        for r in fl:
            lines.append(
                f"  {r['cell']} round {r['round']}: {r['participants']} updates, {r['rejected']} rejected, "
                f"accuracy {r['accuracy']}, macro-F1 {r['macro_f1']}, model {r['model'][:12]}"
            )
    lines += [
        "",
        "node     home      at end    made  made<-5s  receipted  pending  unconfirmed  oldest unrcpt s  fusion Hz  ok",
    ]
    for r in rep["obus_detail"]:
        lines.append(
            f"{r['node']:<8} {r.get('home_cell')!s:<9} {r.get('cell_at_end')!s:<9} {r['made']:>4}  "
            f"{r['made_before_last_5s']:>8}  {r['receipted']:>9}  {r['pending']:>7}  {r['sent_unconfirmed']:>11}  "
            f"{r['oldest_unreceipted_age_s']!s:>15}  {r.get('fusion_hz')!s:>9}  {r['settled_all_receipted']}"
        )
    for f in rep["health_failures"]:
        lines.append(f"FAILED t={f['t']}s {f['node']} {f['subsystem']}: {f['reason']}")
    for name, path in (rep.get("plots") or {}).items():
        lines.append(f"plot {name}: {path}")
    lines.append(f"verdict: {'OK' if rep['ok'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


def write_report(rep: dict[str, Any], report: Path) -> None:
    report.mkdir(parents=True, exist_ok=True)
    try:
        from tools.sim_plots import PlotsUnavailable, write_plots
    except ImportError as err:  # pragma: no cover - the module ships with the tools
        rep["plots"] = {"all": f"skipped: {err}"}
    else:
        try:
            rep["plots"] = write_plots(rep, report)
        except PlotsUnavailable as err:
            rep["plots"] = {"all": f"skipped: {err} (pip install 'autochain-agent[sim]')"}
    (report / "acc-sim-report.json").write_text(json.dumps(rep, indent=1) + "\n")
    (report / "acc-sim-summary.txt").write_text(summary_text(rep))


def simulate(
    spec: SimSpec, duration: float, root: Path, broker: str | None, report: Path | None, out: Any
) -> dict[str, Any]:
    """Start Mosquitto (unless ``broker`` HOST:PORT), run the world, write the report."""
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
        rep = asyncio.run(run_world(spec, duration, root, host, port, out))
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
        write_report(rep, report)
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="acc-sim", description=__doc__.split("\n\n")[0])
    ap.add_argument("--obus", type=int, default=4, help="simulated OBUs (default 4)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    ap.add_argument("--data-dir", type=Path, help="where the OBUs keep their state (default: a temporary dir)")
    ap.add_argument("--json", action="store_true", help="print the final table as JSON lines")
    ap.add_argument("--rsus", type=int, default=0, help="RSU agents running the cell ledger (default 0: OBUs only)")
    ap.add_argument("--broker", metavar="HOST:PORT", help="use this MQTT broker (default: start Mosquitto)")
    ap.add_argument(
        "--report", type=Path, metavar="DIR", help="write acc-sim-report.json, a summary table and PNG plots here"
    )
    ap.add_argument("--cells", type=int, choices=(1, 2), default=1, help="1 cell, or 2 (west/east) to drive across")
    ap.add_argument("--no-fl", action="store_true", help="no federated learning rounds")
    ap.add_argument("--no-pc5", action="store_true", help="no PC5 sidelink")
    ap.add_argument(
        "--workers", type=int, default=1, metavar="N", help="OBU worker processes (default 1; more use more cores)"
    )
    ap.add_argument("--fl-round", type=float, default=15.0, metavar="S", help="FL round length, seconds (default 15)")
    args = ap.parse_args(argv)
    if args.obus < 1:
        ap.error("--obus must be at least 1")
    if args.rsus < 0:
        ap.error("--rsus must be >= 0")
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    if args.broker and not args.broker.rpartition(":")[2].isdigit():
        ap.error("--broker must be HOST:PORT")
    setup_logging("warning")
    if args.rsus > 0:
        with tempfile.TemporaryDirectory(prefix="acc-sim-") as tmp:
            root = args.data_dir or Path(tmp)
            try:
                spec = SimSpec(
                    rsus=args.rsus,
                    obus=args.obus,
                    cells=args.cells,
                    fl=not args.no_fl,
                    pc5=not args.no_pc5,
                    fl_round_seconds=args.fl_round,
                    workers=args.workers,
                )
                rep = simulate(spec, args.duration, root, args.broker, args.report, sys.stdout)
            except ConfigError as err:
                sys.stderr.write(f"acc-sim: {err}\n")
                return exitcodes.CONFIG
        sys.stdout.write("\n" + (json.dumps(rep) + "\n" if args.json else summary_text(rep)))
        if args.report is not None:
            sys.stdout.write(f"report: {args.report / 'acc-sim-report.json'}\n")
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
