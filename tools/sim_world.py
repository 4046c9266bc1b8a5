"""The world of ``acc-sim --rsus R``: one or two cells of R RSU agents each (the cell ledger by
BFT consensus, the first RSU announcing the cell and coordinating its federated learning) and
M OBU agents on simulated vehicles spread along the Munich town loop, all real agents running
as asyncio tasks of one process on one MQTT broker.

Everything a deployment provisions is made here, for this run only: a road authority (genesis
authority, validator credentials), an OEM (vehicle credentials), a pseudonym CA (PC5 pseudonym
certificates), one genesis per cell (with the shipped behaviour model as the FL start model).
OBUs join the cell whose announced area holds their position and hand over when they drive into
the other one; they attest (summaries every 2 s and driving events), retire outbox entries on
verified receipts, send and hear CAM/DENM on the emulated sidelink, and train in their home
cell's FL rounds. ``Watch`` samples everything once a second for the live line and the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import load_config
from agent.demo import SimulatedObu, demo_base_config
from agent.health import Status
from agent.keystore import ensure_device_key
from drivers.simvehicle import Route, _TangentPlane
from ledger_lite.credentials import ValidatorCredential, VehicleCredential, issue_credential
from ledger_lite.didkey import did_key
from ledger_lite.keys import KeyAgreementPrivateKey, SigningKey
from ledger_lite.pseudonym import PseudonymAuthority
from models.rules import point_in_polygon

log = logging.getLogger(__name__)

REPO = str(Path(__file__).resolve().parent.parent)

ONE_CELL = ("sim-cell",)
TWO_CELLS = ("sim-west", "sim-east")
SETTLE = 5.0  # attestations younger than this at the end need not be receipted yet
MARGIN_M = 150.0  # cell areas reach this far beyond the loop


@dataclass(frozen=True)
class SimSpec:
    rsus: int = 4  # per cell
    obus: int = 8
    cells: int = 1
    fl: bool = True
    pc5: bool = True
    behaviour: bool = True
    fl_round_seconds: float = 15.0
    fl_pause_seconds: float = 2.0
    workers: int = 1  # OBU worker processes


# --------------------------------------------------------------------------- geography


def cell_areas(route: Route, cells: int) -> dict[str, list[list[float]]]:
    """The cells' areas as [lat, lon] polygons: the loop's bounding box plus a margin, whole for
    one cell, split at its middle meridian (west / east) for two."""
    pts = [route.pose_at(s) for s in np.arange(0.0, route.length, 10.0)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    plane = _TangentPlane(*route.origin)
    x0, x1, y0, y1 = min(xs) - MARGIN_M, max(xs) + MARGIN_M, min(ys) - MARGIN_M, max(ys) + MARGIN_M

    def box(a: float, b: float) -> list[list[float]]:
        corners = ((a, y0), (b, y0), (b, y1), (a, y1))
        return [[round(v, 7) for v in plane.to_geodetic(x, y)[:2]] for x, y in corners]

    if cells == 1:
        return {ONE_CELL[0]: box(x0, x1)}
    mid = (min(xs) + max(xs)) / 2
    return {TWO_CELLS[0]: box(x0, mid), TWO_CELLS[1]: box(mid, x1)}


def cell_at(areas: dict[str, list[list[float]]], lat: float, lon: float) -> str:
    for cell, poly in areas.items():
        if point_in_polygon(lat, lon, [(p[0], p[1]) for p in poly]):
            return cell
    return next(iter(areas))


# --------------------------------------------------------------------------- provisioning


class Authorities:
    """The run's road authority, OEM and pseudonym CA (fresh keys each run)."""

    def __init__(self) -> None:
        self.road = SigningKey.generate("Ed25519")
        self.oem = SigningKey.generate("Ed25519")
        self.pca = PseudonymAuthority(SigningKey.generate("Ed25519"), KeyAgreementPrivateKey.generate(), validity=3600)
        self.road_did = did_key(self.road.public)
        self.roots: dict[str, str] = {
            self.road_did: "road_authority",
            did_key(self.oem.public): "oem",
            self.pca.did: "pseudonym_ca",
        }

    def validator_credential(self, did: str, cell: str, path: Path) -> None:
        now = time.time()
        path.write_bytes(issue_credential(ValidatorCredential(did, cell), self.road, now=now - 60, expires=now + 86400))

    def vehicle_credential(self, did: str, vin: str, path: Path) -> None:
        now = time.time()
        path.write_bytes(issue_credential(VehicleCredential(did, vin), self.oem, now=now - 60, expires=now + 86400))

    def pseudonyms(self, vehicle_did: str, directory: Path, per_slot: int = 2) -> None:
        """Pseudonym pairs for this validity slot and the next (a run straddling a slot boundary)."""
        from agent.pc5.service import store_pseudonyms

        now = time.time()
        for slot in (self.pca.slot(now), self.pca.slot(now) + 1):
            keys = [SigningKey.generate("P-256") for _ in range(per_slot)]
            certs = self.pca.certify(vehicle_did, [k.public for k in keys], now=now, slot=slot)
            store_pseudonyms(directory, keys, certs)


def start_model() -> str:
    from agent.fl import initial_model, model_id

    _model, tflite, weights = initial_model()
    return model_id(tflite, weights).hex()


def write_genesis(path: Path, cell: str, dids: list[str], authority: str, models: tuple[str, ...]) -> None:
    genesis = {
        "chain_id": cell,
        "genesis_time_ms": int(time.time() * 1000) - 1000,
        "validators": [{"did": d, "power": 1} for d in dids],
        "authorities": {authority: ["road_authority"]},
        **({"models": list(models)} if models else {}),
    }
    path.write_text(json.dumps(genesis))


def rsu_config(
    spec: SimSpec,
    cell: str,
    i: int,
    data_dir: Path,
    host: str,
    port: int,
    genesis: Path,
    auth: Authorities,
    diag_socket: Path,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "agent": {
            "role": "rsu",
            "node_id": f"{cell}-rsu{i}",
            "data_dir": str(data_dir),
            "diag_socket": str(diag_socket),
            "log_level": "warning",
            "watchdog": False,
        },
        "gnss": {"backend": "none"},  # a fixed road-side unit: no receiver simulated
        "attest": {"enabled": False},
        "trust": {"roots": auth.roots},
        "mqtt": {
            "enabled": True,
            "host": host,
            "port": port,
            "cell": cell,
            "client_id": f"{cell}-rsu-{i}",
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
    if i == 0:  # the cell's announcer (and admission) and its FL coordinator
        cred = data_dir / "validator.cose"
        cfg["cell"] = {
            "announce": True,
            "validator_credential": str(cred),
            "area_polygon": cell_areas(Route.default(), spec.cells)[cell],
            "announce_interval": 1.0,
        }
        if spec.fl:
            per_cell = max(1, spec.obus // spec.cells)
            cfg["fl"] = {
                "enabled": True,
                "coordinator": True,
                "round_seconds": spec.fl_round_seconds,
                "pause_seconds": spec.fl_pause_seconds,
                "min_clients": max(1, min(3, per_cell)),
                "max_clients": max(1, spec.obus),
            }
    return cfg


def obu_config(
    spec: SimSpec, i: int, data_dir: Path, host: str, port: int, home: str, geneses: Path, auth: Authorities
) -> dict[str, Any]:
    base = demo_base_config(str(data_dir))
    base["agent"]["node_id"] = f"obu-{i:03d}"
    base["agent"]["log_level"] = "warning"
    for bus in base["can"]:
        bus["channel"] += f"-obu{i}"
    base["attest"] = {"summary_interval": 2.0}
    base["outbox"] = {"resend_after": 3.0, "resend_max": 6.0}
    base["trust"] = {"roots": auth.roots}
    base["mqtt"] = {"enabled": True, "host": host, "port": port, "cell": home, "backoff_max": 1.0}
    base["ledger"] = {"enabled": True, "genesis_file": str(geneses / f"{home}.json")}
    base["cell"] = {
        "join": True,
        "vehicle_credential": str(data_dir / "vehicle.cose"),
        "genesis_dir": str(geneses),
        "require_known_genesis": True,
        "check_interval": 0.5,
        "retry_after": 1.0,
    }
    if spec.behaviour:
        base["behaviour"] = {"enabled": True, "speed_limit_kmh": 50.0}
    if spec.pc5:
        base["pc5"] = {"enabled": True, "pseudonym_dir": str(data_dir / "pseudonyms"), "seed": 1000 + i}
    if spec.fl:
        base["fl"] = {"enabled": True, "min_samples": 8, "epochs": 2}
    return base


# --------------------------------------------------------------------------- the FL yardstick


class _EvalSet:
    """The evaluation windows and a model to score weights with (in the evaluator's process)."""

    def __init__(self) -> None:
        from agent.fl import initial_model
        from models.dataset import default_nds_path, drive_windows, load_nds, simulate_drive, split_drives

        self.model, _tflite, self.start_weights = initial_model()
        nds_path = default_nds_path()
        nds = load_nds(nds_path) if nds_path.is_file() else []
        _train, test = split_drives([d.drive_id for d in nds])
        drives = [d for d in nds if d.drive_id in set(test)] + [simulate_drive(s) for s in (900, 901, 902)]
        parts = [drive_windows(d) for d in drives]
        self.x = np.concatenate([p[0] for p in parts])
        self.y = np.concatenate([p[1] for p in parts])
        n_ref = sum(1 for d in drives if not d.drive_id.startswith("sim"))
        self.source = f"{n_ref} held-apart reference drives + 3 simulated ({len(self.y)} windows)"

    def score(self, weights: np.ndarray | None) -> dict[str, Any]:
        from tools.build_models import class_metrics

        self.model.set_weights(self.start_weights if weights is None else weights)
        pred = np.asarray(self.model.infer(self.x)).argmax(axis=1)
        m = class_metrics(self.y, pred)  # macro-F1 over the classes present, as the model card
        return {
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "source": self.source,
        }


_EVAL: _EvalSet | None = None


def _eval_score(weights: np.ndarray | None) -> dict[str, Any]:
    global _EVAL  # noqa: PLW0603 - one evaluation set per worker process, built on first use
    if _EVAL is None:
        _EVAL = _EvalSet()
    return _EVAL.score(weights)


class FlEvaluator:
    """Accuracy and macro-F1 of a cell's models on windows no model was trained on: the
    reference drives held apart by ``models.dataset.split_drives`` (as ``tools/build_models.py``
    holds them apart) and three fresh simulated drives (seeds outside ``SIM_SEEDS``).

    It runs in a worker process of its own: building the set (~3 s of CPU) and scoring hold
    the GIL, and in the agents' process they made every OBU miss fusion ticks."""

    def __init__(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.source: str | None = None

    async def score(self, weights: np.ndarray | None) -> dict[str, Any]:
        """Scores of ``weights`` (None: the shipped start model)."""
        out = await asyncio.get_running_loop().run_in_executor(self._pool, _eval_score, weights)
        self.source = str(out.pop("source"))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- the world


class World:
    """Provisioned agents of one run (not started): the RSUs as configurations for their own
    process (``RsuProcess``), the OBUs as agents of this one."""

    def __init__(self, spec: SimSpec, root: Path, host: str, port: int, sock_dir: Path) -> None:
        self.spec = spec
        self.root = root
        route = Route.default()
        self.areas = cell_areas(route, spec.cells)
        self.cells = list(self.areas)
        self.auth = Authorities()
        models = (start_model(),) if spec.fl else ()
        geneses = root / "geneses"
        geneses.mkdir(parents=True, exist_ok=True)
        self.rsu_configs: list[dict[str, Any]] = []
        #: cell -> its RSUs' (node id, diagnostics socket)
        self.rsus: dict[str, list[tuple[str, Path]]] = {}
        for cell in self.cells:
            dirs = [root / cell / f"rsu{i}" for i in range(spec.rsus)]
            dids = [ensure_device_key(d).did for d in dirs]
            write_genesis(geneses / f"{cell}.json", cell, dids, self.auth.road_did, models)
            self.auth.validator_credential(dids[0], cell, dirs[0] / "validator.cose")
            self.rsus[cell] = []
            for i, d in enumerate(dirs):
                sock = sock_dir / f"{cell}-rsu{i}.sock"  # short: a Unix socket path is <= 108 bytes
                cfg = rsu_config(spec, cell, i, d, host, port, geneses / f"{cell}.json", self.auth, sock)
                load_config(base=cfg, env={})  # a bad one is refused here, not in the child
                self.rsu_configs.append(cfg)
                self.rsus[cell].append((cfg["agent"]["node_id"], sock))
        #: per OBU: its agent configuration, its car's seed and the loop segment it starts at
        self.obu_specs: list[dict[str, Any]] = []
        self.home: dict[str, str] = {}
        n_seg = len(route.segments)
        for i in range(spec.obus):
            # pairs spread along the loop (7 and 19 segments: coprime); the second of a pair starts
            # one segment behind the first and follows it (so a leader's hard brake is a DENM its
            # follower should warn about)
            start_index = ((i // 2) * 7 - i % 2) % n_seg
            start = route.starting_at(start_index)
            home = cell_at(self.areas, start.origin[0], start.origin[1])
            d = root / f"obu{i:03d}"
            ident = ensure_device_key(d)
            self.auth.vehicle_credential(ident.did, f"WACCSXM{i:010d}", d / "vehicle.cose")
            if spec.pc5:
                self.auth.pseudonyms(ident.did, d / "pseudonyms")
            cfg = obu_config(spec, i, d, host, port, home, geneses, self.auth)
            load_config(base=cfg, env={})  # a bad one is refused here, not in a worker
            self.obu_specs.append({"config": cfg, "seed": 100 + i, "start": start_index})
            self.home[cfg["agent"]["node_id"]] = home

    @property
    def obu_nodes(self) -> list[str]:
        return [str(o["config"]["agent"]["node_id"]) for o in self.obu_specs]


class RsuProcess:
    """Every RSU agent of the run as a task of one child process (``python -m tools.sim_rsus``),
    watched through their diagnostics sockets."""

    def __init__(self, world: World, log_path: Path) -> None:
        self.world = world
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.cpu_s: float | None = None
        self.rss_mib: float | None = None

    async def start(self) -> None:
        cfg_path = self.world.root / "rsus.json"
        await asyncio.to_thread(cfg_path.write_text, json.dumps(self.world.rsu_configs))
        self.proc = await spawn("tools.sim_rsus", cfg_path, self.log_path)

    def died(self) -> str | None:
        if self.proc is not None and self.proc.returncode is not None:
            return f"the RSU process exited with status {self.proc.returncode} (log: {self.log_path})"
        return None

    async def poll(self) -> dict[str, dict[str, Any]]:
        """node id -> its ``status``, ``ledger`` (and for a coordinator ``fl``) answers."""
        from agent.diagnostics import DiagError, query

        def one(sock: Path) -> dict[str, Any] | None:
            try:
                st = query(sock, "status", timeout=2.0)
                st["ledger"] = query(sock, "ledger", timeout=2.0)
                st["fl"] = query(sock, "fl", timeout=2.0)
            except (DiagError, OSError):
                return None
            return dict(st)

        nodes = [(n, sock) for rs in self.world.rsus.values() for n, sock in rs]
        answers = await asyncio.gather(*(asyncio.to_thread(one, sock) for _n, sock in nodes))
        return {n: a for (n, _s), a in zip(nodes, answers, strict=True) if a is not None}

    async def stop(self) -> None:
        if self.proc is not None:
            if self.cpu_s is None:
                self.cpu_s, self.rss_mib = usage_of(self.proc.pid)
            await terminate(self.proc)


async def spawn(module: str, spec: Path, log_path: Path, *, stdout_pipe: bool = False) -> asyncio.subprocess.Process:
    """``python -m module spec`` with this checkout on the path, stderr (and stdout unless piped)
    appended to ``log_path``."""
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    log = await asyncio.to_thread(log_path.open, "ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, str(spec),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            env=env,
            limit=2**24,  # a worker's line carries every snapshot of its OBUs
        )  # fmt: skip
    finally:
        log.close()


def usage_of(pid: int) -> tuple[float | None, float | None]:
    """(CPU seconds, RSS MiB) of a running child (None when it is gone)."""
    try:
        import psutil

        p = psutil.Process(pid)
        cpu = p.cpu_times()
        return cpu.user + cpu.system, round(p.memory_info().rss / 2**20, 1)
    except Exception:  # noqa: BLE001 - the figures are nice to have
        return None, None


async def terminate(proc: asyncio.subprocess.Process, limit: float = 20.0) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), limit)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ObuWorkers:
    """The OBUs spread over ``spec.workers`` worker processes (``python -m tools.sim_obus``), each
    reporting its OBUs' snapshots once a second on stdout."""

    def __init__(self, world: World, n: int) -> None:
        self.world = world
        self.n = max(1, min(n, len(world.obu_specs)))
        self.procs: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        #: node -> its newest snapshot
        self.latest: dict[str, dict[str, Any]] = {}
        self.finals = 0
        self.cpu_s: float | None = None
        self.rss_mib: float | None = None

    async def start(self) -> None:
        for w in range(self.n):
            part = self.world.obu_specs[w :: self.n]
            path = self.world.root / f"obus-{w}.json"
            await asyncio.to_thread(path.write_text, json.dumps({"obus": part, "interval": 1.0}))
            proc = await spawn("tools.sim_obus", path, self.world.root / f"obus-{w}.log", stdout_pipe=True)
            self.procs.append(proc)
            self.readers.append(asyncio.create_task(self._read(proc)))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # not ours (a native library writing to stdout)
            for snap in msg.get("obus", []):
                self.latest[str(snap["node"])] = snap
            if msg.get("final"):
                self.finals += 1

    def died(self) -> str | None:
        for w, p in enumerate(self.procs):
            if p.returncode is not None:
                return f"OBU worker {w} exited with status {p.returncode} (log: {self.world.root / f'obus-{w}.log'})"
        return None

    async def stop(self) -> None:
        """SIGTERM: each worker reports a final snapshot, then stops its agents."""
        if self.cpu_s is None:  # measured while they run (stop may be called again on the way out)
            cpu, rss = 0.0, 0.0
            for p in self.procs:
                c, r = usage_of(p.pid)
                cpu += c or 0.0
                rss += r or 0.0
            self.cpu_s, self.rss_mib = cpu, round(rss, 1)
        await asyncio.gather(*(terminate(p, 30.0) for p in self.procs))
        await asyncio.gather(*self.readers, return_exceptions=True)


def child_main(name: str, argv: Sequence[str] | None, run: Callable[[Any], Awaitable[None]]) -> int:
    """``main()`` of acc-sim's child processes: ``python -m tools.NAME SPEC.json`` runs
    ``run(spec)``; a bad spec file or configuration exits 78 naming it."""
    import sys

    from agent import exitcodes
    from agent.config import ConfigError
    from agent.logsetup import setup_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write(f"usage: python -m tools.{name} SPEC.json\n")
        return exitcodes.USAGE
    setup_logging("warning")
    try:
        spec = json.loads(Path(args[0]).read_text())
        asyncio.run(run(spec))
    except ConfigError as err:
        sys.stderr.write(f"{name}: {err}\n")
        return exitcodes.CONFIG
    except (OSError, ValueError, KeyError) as err:
        sys.stderr.write(f"{name}: {args[0]}: {err}\n")
        return exitcodes.CONFIG
    return exitcodes.OK


PC5_KEYS = ("cam_sent", "denm_sent", "delivered", "dropped_radio", "warnings_raised")


async def obu_snapshot(sim: SimulatedObu) -> dict[str, Any]:
    """What the watcher needs of one OBU agent, JSON-ready (taken in the OBU's process)."""
    a = sim.agent
    st = a.state_service.last if a.state_service is not None else None
    att = a.attestor.status() if a.attestor is not None else {}
    svc = a.pc5.service if a.pc5 is not None else None
    outbox = None
    if a.outbox is not None:
        with contextlib.suppress(Exception):  # closed while stopping
            ob = await a.outbox.stats()
            outbox = {
                "pending": ob.pending,
                "sent_unconfirmed": ob.sent,
                "retired": ob.retired,
                "oldest_undelivered": ob.oldest_created,
            }
    return {
        "node": a.node_id,
        "wall": time.time(),
        "health": {n: [str(h.status), h.reason] for n, h in a.health.snapshot().items()},
        "state": None if st is None else {"lat": st.lat, "lon": st.lon, "sequence": st.sequence},
        "made": int(att["next_seq"]) - 1 if att.get("next_seq") else 0,
        "events": dict(a.behaviour.events) if a.behaviour is not None else {},
        "pc5": None if svc is None else {k: svc.counts[k] for k in PC5_KEYS},
        "cell": a.current_cell(),
        "outbox": outbox,
    }


class ModelTap:
    """The cells' FL models as an OBU receives them: a paho client subscribed to every cell's
    retained ``fl/model`` topic, keeping the weights of each model id (signature checked)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.weights: dict[str, np.ndarray] = {}
        self.client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as paho

        from agent import topics

        c = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"acc-sim-fl-tap-{os.getpid()}", protocol=paho.MQTTv5
        )
        c.on_message = lambda _c, _u, msg: self._on_model(bytes(msg.payload))
        c.connect(self.host, self.port)
        c.loop_start()
        c.subscribe(f"{topics.PREFIX}/cell/+/fl/model", qos=1)
        self.client = c

    def _on_model(self, data: bytes) -> None:
        from agent.fl import _open_signed

        try:
            _did, body = _open_signed(data)
            model = body["model"]
            self.weights[bytes(model["id"]).hex()] = np.frombuffer(bytes(model["weights"]), dtype="<f4").copy()
        except Exception as err:  # noqa: BLE001 - a bad message is the cell's problem, not the watcher's
            log.warning("acc-sim: an FL model message could not be read: %s", err)

    def stop(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None


class Watch:
    """Samples the in-process agents once a second: per cell heights and committed txs, per OBU
    attestations made, outbox counters, position, driving events, PC5 warnings and cell changes;
    FL rounds (scored by an ``FlEvaluator``); health transitions (into ``failed`` is a failure)."""

    def __init__(
        self,
        world: World | None,
        evaluator: FlEvaluator | None = None,
        rsus: RsuProcess | None = None,
        models: ModelTap | None = None,
        obus: ObuWorkers | None = None,
    ) -> None:
        self.world = world
        self.evaluator = evaluator
        self.rsu_process = rsus
        self.workers = obus
        self._snap_wall: dict[str, float] = {}
        self.models = models
        self._rsu_heights: dict[str, int] = {}
        self.t0 = time.monotonic()
        cpu = os.times()
        self.cpu0 = cpu.user + cpu.system
        self.events: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._health: dict[tuple[str, str], Status] = {}
        nodes = world.obu_nodes if world is not None else []
        self.made: dict[str, list[tuple[float, int]]] = {n: [] for n in nodes}
        self.outbox: dict[str, dict[str, Any]] = {}
        self.height: dict[str, int] = {c: 0 for c in (world.cells if world is not None else [])}
        self.txs: dict[str, int] = dict.fromkeys(self.height, 0)
        self.first_receipt: set[str] = set()
        self.final_heights: dict[str, int] = {}
        self.tracks: dict[str, list[list[float | None]]] = {n: [] for n in nodes}
        self.event_points: list[dict[str, Any]] = []
        self.ledger_series: list[dict[str, Any]] = []
        self.fl_rounds: list[dict[str, Any]] = []
        self.fl_baseline: dict[str, float] | None = None
        self.kinds: Counter[str] = Counter()
        self._seen_events: dict[str, Counter[str]] = {}
        self._seen_warnings: dict[str, int] = {}
        self._cell_of: dict[str, str] = {}
        self._fl_seen: dict[str, int] = {}
        self.snapshots: dict[str, list[tuple[float, int]]] = {}
        self._pc5_now: dict[tuple[str, str], int] = {}

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def event(self, node: str, what: str) -> None:
        self.events.append({"t": self.now(), "node": node, "event": what})

    def point(self, node: str, kind: str, pos: tuple[float | None, float | None], **extra: Any) -> None:
        self.kinds[kind] += 1
        self.event_points.append({"t": self.now(), "node": node, "kind": kind, "lat": pos[0], "lon": pos[1], **extra})

    def heights(self) -> dict[str, int]:
        """The last height each RSU reported."""
        return dict(self._rsu_heights)

    def _note_health(self, node: str, health: dict[str, tuple[Status, str]], t: float) -> None:
        for name, (status, reason) in health.items():
            old = self._health.get((node, name))
            if old != status:
                self._health[(node, name)] = status
                if old is not None or status is not Status.OK:
                    self.event(node, f"health {name}: {status}{f' ({reason})' if reason else ''}")
                if status is Status.FAILED:
                    self.failures.append({"t": t, "node": node, "subsystem": name, "reason": reason})

    async def sample(self) -> None:
        if self.world is None:
            return
        t = self.now()
        world = self.world
        answers = await self.rsu_process.poll() if self.rsu_process is not None else {}
        for node, st in answers.items():
            health = {
                n: (Status[str(h["status"]).upper()], str(h.get("reason") or "")) for n, h in st["health"].items()
            }
            self._note_health(node, health, t)
            self._rsu_heights[node] = int((st.get("ledger") or {}).get("height") or 0)
        for cell, rs in world.rsus.items():
            ledgers = [answers[n]["ledger"] for n, _s in rs if n in answers and answers[n].get("ledger")]
            top = max((int(lg.get("height") or 0) for lg in ledgers), default=0)
            if self.height[cell] == 0 and top > 0:
                self.event(cell, f"first block committed (height {top})")
            self.height[cell] = max(self.height[cell], top)
            txs = max((int(lg.get("committed_txs") or 0) for lg in ledgers), default=0)
            self.txs[cell] = max(self.txs[cell], txs)
            self.ledger_series.append({"t": t, "cell": cell, "height": self.height[cell], "txs": self.txs[cell]})
            coord = next(
                (
                    answers[n]["fl"]
                    for n, _s in rs
                    if n in answers and (answers[n].get("fl") or {}).get("role") == "coordinator"
                ),
                None,
            )
            self._sample_fl(cell, coord)
        await self._score_rounds()
        for node, snap in (self.workers.latest if self.workers is not None else {}).items():
            if self._snap_wall.get(node) != snap["wall"]:  # each snapshot once
                self._snap_wall[node] = snap["wall"]
                self._sample_obu(snap, t)

    @property
    def pc5(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for (_node, k), n in self._pc5_now.items():
            total[k] += n
        return total

    def _sample_fl(self, cell: str, coord: dict[str, Any] | None) -> None:
        """New rounds in the coordinator's ``fl`` answer (its last five are kept there)."""
        if coord is None:
            return
        seen = self._fl_seen.get(cell, 0)
        done = int(coord.get("rounds") or 0)
        if done <= seen:
            return
        self._fl_seen[cell] = done
        for last in (coord.get("history") or [])[-(done - seen) :]:
            self.fl_rounds.append(
                {
                    "cell": cell,
                    "round": int(last["round"]),
                    "t": self.now(),
                    "model": str(last["model"]),
                    "participants": int(last["participants"]),
                    "rejected": len(last.get("rejected") or {}),
                    "accuracy": None,
                    "macro_f1": None,
                }
            )
            self.event(cell, f"FL round {last['round']} committed ({last['participants']} updates)")

    async def _score_rounds(self) -> None:
        """Score the rounds whose model the tap has received (the same model is scored once)."""
        if self.evaluator is None or self.models is None:
            return
        for r in self.fl_rounds:
            if r["accuracy"] is not None:
                continue
            done = next((q for q in self.fl_rounds if q["model"] == r["model"] and q["accuracy"] is not None), None)
            if done is not None:
                r["accuracy"], r["macro_f1"] = done["accuracy"], done["macro_f1"]
                continue
            weights = self.models.weights.get(r["model"])
            if weights is not None:
                score = await self.evaluator.score(weights)
                r["accuracy"], r["macro_f1"] = score["accuracy"], score["macro_f1"]

    def _sample_obu(self, snap: dict[str, Any], t: float) -> None:
        """One OBU's snapshot (``obu_snapshot``, from its worker)."""
        node = str(snap["node"])
        health = {n: (Status[str(h[0]).upper()], str(h[1] or "")) for n, h in snap["health"].items()}
        self._note_health(node, health, t)
        st = snap.get("state")
        pos: tuple[float | None, float | None] = (st["lat"], st["lon"]) if st else (None, None)
        if st is not None:
            self.snapshots.setdefault(node, []).append((t, int(st["sequence"])))
        if pos[0] is not None:
            self.tracks.setdefault(node, []).append([t, round(pos[0], 7), round(pos[1] or 0.0, 7)])
        self.made.setdefault(node, []).append((float(snap["wall"]), int(snap["made"])))
        seen = self._seen_events.setdefault(node, Counter())
        for kind, n in snap["events"].items():
            for _ in range(int(n) - seen[kind]):
                self.point(node, kind, pos)
            seen[kind] = int(n)
        pc5 = snap.get("pc5")
        if pc5 is not None:
            raised = int(pc5["warnings_raised"])
            for _ in range(raised - self._seen_warnings.get(node, 0)):
                self.point(node, "pc5_warning", pos)
            self._seen_warnings[node] = raised
            for k in PC5_KEYS:
                self._pc5_now[(node, k)] = int(pc5[k])
        cell = snap.get("cell")
        old = self._cell_of.get(node)
        if cell and old != cell:
            self._cell_of[node] = cell
            if old is not None:
                self.point(node, "handover", pos, to=cell)
                self.event(node, f"handover {old} -> {cell}")
            else:
                self.event(node, f"admitted to {cell}")
        ob = snap.get("outbox")
        if ob is not None:
            self.outbox[node] = ob
            if ob["retired"] and node not in self.first_receipt:
                self.first_receipt.add(node)
                self.event(node, "first attestation receipted")

    def totals(self) -> tuple[int, int, int]:
        made = sum(v[-1][1] for v in self.made.values() if v)
        retired = sum(o["retired"] for o in self.outbox.values())
        backlog = sum(o["pending"] + o["sent_unconfirmed"] for o in self.outbox.values())
        return made, retired, backlog

    def handovers(self) -> int:
        return self.kinds["handover"]

    def live_line(self, rate: dict[str, float]) -> str:
        made, retired, backlog = self.totals()
        heights = " ".join(f"{c}:{h}" for c, h in self.height.items())
        fl = "-"
        if self.fl_rounds:
            r = self.fl_rounds[-1]
            fl = f"r{r['round']} acc {r['accuracy']}" if r["accuracy"] is not None else f"r{r['round']}"
        drive_events = sum(n for k, n in self.kinds.items() if k not in ("pc5_warning", "handover"))
        return (
            f"t={self.now():5.1f}s  height {heights}  tx/s {rate.get('tx', 0.0):5.1f}  "
            f"attestations {made} made / {retired} receipted (backlog {backlog})  events {drive_events}  "
            f"FL {fl}  PC5 warnings {self.kinds['pc5_warning']}  handovers {self.handovers()}  "
            f"health failures {len(self.failures)}"
        )


def fusion_hz(watch: Watch, node: str) -> float | None:
    """VehicleStates per second the OBU fused from its first sample to its last (10 Hz goal)."""
    seen = watch.snapshots.get(node) or []
    if len(seen) < 2 or seen[-1][0] <= seen[0][0]:
        return None
    return round((seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0]), 2)


def report_dict(watch: Watch, spec: SimSpec, elapsed: float, end: float) -> dict[str, Any]:
    cutoff = end - SETTLE
    rows = []
    homes = watch.world.home if watch.world is not None else {}
    for node, hist in watch.made.items():
        ob = watch.outbox.get(node, {})
        made = hist[-1][1] if hist else 0
        made_settled = max((m for t, m in hist if t <= cutoff), default=0)
        oldest = ob.get("oldest_undelivered")
        rows.append(
            {
                "node": node,
                "home_cell": homes.get(node),
                "cell_at_end": watch._cell_of.get(node),
                "made": made,
                "made_before_last_5s": made_settled,
                "receipted": ob.get("retired", 0),
                "pending": ob.get("pending", 0),
                "sent_unconfirmed": ob.get("sent_unconfirmed", 0),
                "oldest_unreceipted_age_s": None if oldest is None else round(end - oldest, 1),
                # every outbox entry created before the cutoff is retired by a verified receipt
                "settled_all_receipted": oldest is None or oldest >= cutoff,
                "fusion_hz": fusion_hz(watch, node),
            }
        )
    made, retired, backlog = watch.totals()
    blocks = sum(watch.height.values())
    ok = (
        bool(watch.height)
        and all(h > 0 for h in watch.height.values())
        and all(r["settled_all_receipted"] and r["made"] > 0 for r in rows)
        and not watch.failures
    )
    return {
        "cell": list(watch.height),
        "cells": list(watch.height),
        "rsus": spec.rsus,
        "obus": spec.obus,
        "elapsed_s": elapsed,
        "blocks_committed": blocks,
        "blocks_per_s": round(blocks / elapsed, 2) if elapsed else None,
        "heights": dict(watch.height),
        "committed_txs": dict(watch.txs),
        "rsu_heights": watch.final_heights,
        "attestations_made": made,
        "attestations_receipted": retired,
        "outbox_backlog": backlog,
        "driving_events": {k: n for k, n in watch.kinds.items() if k not in ("pc5_warning", "handover")},
        "pc5": dict(watch.pc5),
        "pc5_warnings": watch.kinds["pc5_warning"],
        "handovers": watch.handovers(),
        "fl_rounds": watch.fl_rounds,
        "fl_baseline_accuracy": None if watch.fl_baseline is None else watch.fl_baseline["accuracy"],
        "fl_baseline": watch.fl_baseline,
        "fl_eval_set": None if watch.evaluator is None else watch.evaluator.source,
        "obus_detail": rows,
        "events": watch.events,
        "health_failures": watch.failures,
        "tracks": watch.tracks,
        "event_points": watch.event_points,
        "cell_areas": watch.world.areas if watch.world is not None else {},
        "ledger_series": watch.ledger_series,
        "process": process_usage(watch),
        "obu_workers": None
        if watch.workers is None
        else {
            "processes": watch.workers.n,
            "cpu_cores_used": None
            if watch.workers.cpu_s is None
            else round(watch.workers.cpu_s / max(1e-9, elapsed), 3),
            "rss_mib": watch.workers.rss_mib,
        },
        "rsu_process": None
        if watch.rsu_process is None
        else {
            "cpu_share_of_one_core": None
            if watch.rsu_process.cpu_s is None
            else round(watch.rsu_process.cpu_s / max(1e-9, elapsed), 3),
            "rss_mib": watch.rsu_process.rss_mib,
        },
        "ok": ok,
    }


def process_usage(watch: Watch) -> dict[str, float]:
    """This process's resident memory and CPU share over the run (every agent is in it)."""
    import psutil

    proc = psutil.Process()
    cpu = proc.cpu_times()
    elapsed = time.monotonic() - watch.t0
    return {
        "rss_mib": round(proc.memory_info().rss / 2**20, 1),
        "cpu_share_of_one_core": round((cpu.user + cpu.system - watch.cpu0) / elapsed, 3) if elapsed else 0.0,
    }
