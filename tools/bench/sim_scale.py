"""How many OBUs one machine simulates at 10 Hz with the agent's real pipeline (``acc-sim``,
4 RSUs), next to how many bare simulated cars one process keeps at real time.

    python -m tools.bench.sim_scale            # ladder 2, 4, 6, 8, 10, 12, 16, 20, ... at 30 s per step
    python -m tools.bench.sim_scale --quick    # ladder 4, 8, 16 at 12 s per step, under a minute
    python -m tools.bench.sim_scale --no-pc5   # the same without the PC5 sidelink (CAMs are O(M^2))

Ours: ``acc-sim --rsus 4 --obus M`` as a subprocess (a real Mosquitto on 127.0.0.1, 4 RSU agents
running the cell ledger, M OBU agents each on its own simulated car, all asyncio tasks of that
one process) for a ladder of M, stopping after the first failing step and then bisecting once.
A step passes when every OBU fused >= 9.5 VehicleStates per second (``fusion_hz``, goal 10 Hz),
the run's verdict is ok (every cell committed blocks, every attestation older than 5 s was
retired by a verified receipt) and no subsystem of any agent failed. The figure is the largest
passing M.

FL and PC5: both on in the full run (the honest default: the real pipeline, including every
OBU's local training and the RSUs' aggregation each round, and acc-sim's FL evaluator, which
scores each committed model in a worker process of its own). ``--quick`` turns FL off: a 12 s
step is shorter than one FL round; ``--fl`` forces it on.

Baseline, same run: bare simulated cars, no agent at all: ``SimVehicle`` driven by the real
``run_sim`` into the same two python-can ``virtual`` buses per car through ``PythonCanPort``
(each with one listener, as the agent's bus in acc-sim, so python-can copies every frame once),
NMEA to a sink that drops it. Paced by a simulated clock, flat out: CPU seconds per simulated
second per car; bare cars = 1 / that (one core, what the one acc-sim process has).
ratio = OBUs / bare cars. Also reported: RSS per OBU (least-squares slope of the process RSS
over M) and the simulator's own cost per frame (generate, and generate + send).

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import can

PASS_HZ = 9.5
QUICK_STEPS = (4, 8, 16)
FULL_STEPS = (2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 60, 80, 120, 160, 200, 250)
RSUS = 4
REPO = Path(__file__).resolve().parents[2]
BITRATES = {"can0": 500_000, "can1": 125_000}


# ------------------------------------------------------------------------------------ baseline


def sim_generation_cost(seconds: float) -> dict[str, float]:
    """CPU seconds per simulated second (and per frame) of one car's frame generation alone."""
    from drivers.simvehicle import SimVehicle

    v = SimVehicle(seed=100, nmea_rate_hz=1.0)
    v.start(0.0, 1.7e9)
    frames = 0
    t0 = time.process_time()
    t = 0.0
    while t < seconds:
        t += 0.01
        frames += len(v.frames_due(t))
        v.nmea_due(t)
    cpu = time.process_time() - t0
    return {"gen_cpu_per_sim_s": cpu / seconds, "gen_us_per_frame": 1e6 * cpu / max(frames, 1)}


async def _bare_cars(cars: int, seconds: float) -> dict[str, float]:
    from drivers.can_bus import PythonCanPort
    from drivers.clock import SimulatedClock
    from drivers.simvehicle import SimVehicle, run_sim

    clock = SimulatedClock()
    tag = uuid.uuid4().hex[:8]
    ports: list[Any] = []
    listeners: list[can.BusABC] = []
    tasks = []
    results = []
    for i in range(cars):
        names = {name: f"bare-{tag}-{i}-{name}" for name in ("can0", "can1")}
        car_ports = {  # the demo OBU's buses: powertrain 500 kbit/s, body 125 kbit/s
            name: PythonCanPort(name, interface="virtual", channel=ch, bitrate=BITRATES[name], clock=clock)
            for name, ch in names.items()
        }
        for port in car_ports.values():
            await port.open()
        ports.extend(car_ports.values())
        listeners.extend(can.Bus(interface="virtual", channel=ch) for ch in names.values())
        vehicle = SimVehicle(seed=100 + i, nmea_rate_hz=1.0)
        tasks.append(asyncio.create_task(run_sim(vehicle, car_ports, lambda data: None, clock, duration=seconds)))
    await asyncio.sleep(0)
    drain_cpu = 0.0
    t0 = time.process_time()
    try:
        while not all(t.done() for t in tasks):
            await clock.advance(0.01)
            if round(clock.monotonic() * 100) % 50 == 0:  # drain the listeners (not counted)
                d0 = time.process_time()
                for bus in listeners:
                    while bus.recv(0) is not None:
                        pass
                drain_cpu += time.process_time() - d0
        cpu = time.process_time() - t0 - drain_cpu
        results = [t.result() for t in tasks]
    finally:
        for port in ports:
            await port.close()
        for bus in listeners:
            bus.shutdown()
    frames = sum(r.frames_sent for r in results)
    per_car = cpu / (cars * seconds)
    return {
        "bare_cpu_per_sim_s": per_car,
        "bare_us_per_frame": 1e6 * cpu / max(frames, 1),
        "bare_frames_per_car_s": frames / (cars * seconds),
    }


def baseline(seconds: float) -> dict[str, float]:
    """Bare cars per core, and the simulator's own cost per frame."""
    out = sim_generation_cost(seconds)
    out.update(asyncio.run(_bare_cars(4, seconds)))
    out["bare_cars_per_core"] = 1.0 / out["bare_cpu_per_sim_s"]
    return out


# --------------------------------------------------------------------------------- acc-sim ladder


def run_step(obus: int, duration: float, root: Path, *, fl: bool, pc5: bool, workers: int = 1) -> dict[str, Any]:
    """One acc-sim run with ``obus`` OBUs; the step's row (``passed`` and the figures)."""
    work = root / f"m{obus:04d}"
    cmd = [sys.executable, "-m", "tools.acc_sim", "--rsus", str(RSUS), "--obus", str(obus), "--workers", str(workers)]
    cmd += ["--duration", str(duration), "--report", str(work / "report"), "--data-dir", str(work / "data")]
    if not fl:
        cmd.append("--no-fl")
    if not pc5:
        cmd.append("--no-pc5")
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    row: dict[str, Any] = {"obus": obus}
    with (work / "acc-sim.log").open("wb") as log:
        try:
            proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=3 * duration + 60 + obus)
            row["exit"] = proc.returncode
        except subprocess.TimeoutExpired:
            row["exit"] = "timeout"
    row["wall_s"] = round(time.monotonic() - t0, 1)
    path = work / "report" / "acc-sim-report.json"
    if not path.exists():
        row.update(passed=False, why="no report")
        return row
    rep = json.loads(path.read_text())
    hz = [r.get("fusion_hz") or 0.0 for r in rep["obus_detail"]]
    hz += [0.0] * (obus - len(hz))  # an OBU the watcher never sampled
    slow = sum(h < PASS_HZ for h in hz)
    unsettled = sum(not r["settled_all_receipted"] for r in rep["obus_detail"])
    row.update(
        min_hz=min(hz),
        median_hz=statistics.median(hz),
        # cores used by all of acc-sim: the OBU workers, the RSU process and the watcher
        cpu_share=round(
            (rep["obu_workers"]["cpu_cores_used"] or 0.0)
            + (rep["rsu_process"]["cpu_share_of_one_core"] or 0.0)
            + rep["process"]["cpu_share_of_one_core"],
            3,
        ),
        obu_cpu=rep["obu_workers"]["cpu_cores_used"],
        rss_mib=round((rep["obu_workers"]["rss_mib"] or 0.0) + (rep["rsu_process"]["rss_mib"] or 0.0), 1),
        blocks=rep["blocks_committed"],
        made=rep["attestations_made"],
        receipted=rep["attestations_receipted"],
        backlog=rep["outbox_backlog"],
        health_failures=len(rep["health_failures"]),
        pc5=rep.get("pc5") or {},
        fl_rounds=len(rep.get("fl_rounds") or []),
        ok=rep["ok"],
    )
    why = []
    if slow:
        why.append(f"{slow} OBUs < {PASS_HZ} Hz")
    if unsettled:
        why.append(f"{unsettled} OBUs not all receipted")
    if row["health_failures"]:
        why.append(f"{row['health_failures']} health failures")
    if not rep["ok"] and not why:
        why.append("verdict not ok")
    row["passed"] = not why
    row["why"] = "; ".join(why) or "-"
    return row


def print_row(row: dict[str, Any]) -> None:
    if "min_hz" not in row:
        sys.stdout.write(
            f"{row['obus']:>5}  {'-':>6}  {'-':>6}  {'-':>5}  {'-':>7}  {'-':>6}  {'-':>13}  FAIL ({row['why']})\n"
        )
    else:
        att = f"{row['made']}/{row['receipted']}"
        verdict = "pass" if row["passed"] else f"FAIL ({row['why']})"
        sys.stdout.write(
            f"{row['obus']:>5}  {row['min_hz']:>6.2f}  {row['median_hz']:>6.2f}  {row['cpu_share']:>5.2f}  "
            f"{row['rss_mib']:>7.1f}  {row['blocks']:>6}  {att:>13}  {verdict}  [{row['wall_s']} s]\n"
        )
    sys.stdout.flush()


def ladder(
    steps: list[int], duration: float, root: Path, *, fl: bool, pc5: bool, bisect: bool, workers: int = 1
) -> list[dict[str, Any]]:
    sys.stdout.write(
        f"acc-sim --rsus {RSUS}, {duration:g} s per step, FL {'on' if fl else 'off'}"
        f", PC5 {'on' if pc5 else 'off'}\n"
        "  OBUs  min Hz  med Hz   CPU  RSS MiB  blocks  made/receipted  verdict\n"
    )
    rows: list[dict[str, Any]] = []
    for m in steps:
        row = run_step(m, duration, root, fl=fl, pc5=pc5, workers=workers)
        print_row(row)
        rows.append(row)
        if not row["passed"]:
            break
    passed = [r["obus"] for r in rows if r["passed"]]
    failed = [r["obus"] for r in rows if not r["passed"]]
    if bisect and passed and failed and failed[0] - max(passed) > 2:
        mid = (max(passed) + failed[0]) // 2
        row = run_step(mid, duration, root, fl=fl, pc5=pc5, workers=workers)
        print_row(row)
        rows.append(row)
    return rows


def slope(xs: list[float], ys: list[float]) -> float | None:
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="ladder 4, 8, 16 at 12 s, FL off, no bisection")
    ap.add_argument("--steps", help="comma-separated OBU counts (default: the ladder of the mode)")
    ap.add_argument("--duration", type=float, help="seconds per step (default 30, quick 12)")
    fl = ap.add_mutually_exclusive_group()
    fl.add_argument("--fl", dest="fl", action="store_true", default=None, help="FL on (default: on, quick off)")
    fl.add_argument("--no-fl", dest="fl", action="store_false", help="FL off")
    ap.add_argument("--no-pc5", action="store_true", help="PC5 sidelink off")
    ap.add_argument("--workers", type=int, default=1, help="acc-sim's OBU worker processes (default 1)")
    ap.add_argument("--no-bisect", action="store_true", help="do not bisect after the first failing step")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep every step's acc-sim log and report here")
    args = ap.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else list(QUICK_STEPS if args.quick else FULL_STEPS)
    duration = args.duration or (12.0 if args.quick else 30.0)
    use_fl = args.fl if args.fl is not None else not args.quick
    pc5 = not args.no_pc5

    base = baseline(3.0 if args.quick else 15.0)
    sys.stdout.write(
        f"bare simulated car (SimVehicle + run_sim + 2 virtual buses): {base['bare_cpu_per_sim_s'] * 1000:.1f} ms "
        f"CPU per simulated second ({base['bare_frames_per_car_s']:.0f} frames/s: {base['bare_us_per_frame']:.1f} us "
        f"per frame, of which generating {base['gen_us_per_frame']:.1f} us) -> "
        f"{base['bare_cars_per_core']:.0f} bare cars per core\n"
    )
    with tempfile.TemporaryDirectory(prefix="sim-scale-") as tmp:
        root = args.keep or Path(tmp)
        rows = ladder(
            steps, duration, root, fl=use_fl, pc5=pc5, bisect=not (args.quick or args.no_bisect), workers=args.workers
        )
    passed = [r["obus"] for r in rows if r["passed"]]
    value = max(passed, default=0)
    failed = sorted(r["obus"] for r in rows if not r["passed"] and r["obus"] > value)
    sized = [r for r in rows if "rss_mib" in r]
    rss_slope = slope([r["obus"] for r in sized], [r["rss_mib"] for r in sized])
    bare = base["bare_cars_per_core"]
    first_fail = next((r for r in rows if r["obus"] == failed[0]), None) if failed else None
    result = {
        "figure": "sim_obus_at_10hz",
        "unit": "OBUs",
        "value": value,
        "baseline": round(bare, 1),
        "ratio": round(value / bare, 3),
        "rsus": RSUS,
        "fl": use_fl,
        "pc5": pc5,
        "obu_workers": args.workers,
        "seconds_per_step": duration,
        # every step passed: the figure is the ladder's top, not the limit
        "capped_by_ladder": not failed and value == max(steps),
        "first_failing_obus": failed[0] if failed else None,
        "first_failing_why": first_fail["why"] if first_fail else None,
        "cpu_share_at_value": next((r["cpu_share"] for r in rows if r["obus"] == value and "cpu_share" in r), None),
        "rss_mib_per_obu": None if rss_slope is None else round(rss_slope, 2),
        "bare_car_cpu_ms_per_s": round(base["bare_cpu_per_sim_s"] * 1000, 2),
        "sim_gen_us_per_frame": round(base["gen_us_per_frame"], 2),
        "sim_gen_send_us_per_frame": round(base["bare_us_per_frame"], 2),
        "steps": {
            str(r["obus"]): [r.get("min_hz"), r.get("cpu_share"), r.get("rss_mib"), r["passed"]]
            for r in sorted(rows, key=lambda r: r["obus"])
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
