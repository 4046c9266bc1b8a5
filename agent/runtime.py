"""The composition root: builds every component from one validated ``Config`` (each gets only
its slice), runs them as named services under the supervisor, serves diagnostics, talks to
systemd, and shuts down cleanly on SIGTERM/SIGINT within ``agent.shutdown_timeout``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hal.interfaces import Camera, CanPort, Clock, GnssSource
from hal.registry import load_backend
from hal.types import CanFilter, VehicleState

from . import __version__
from .access import AccessGate
from .attestor import Attestor, SummaryService
from .config import CameraConfig, CanBusConfig, Config, ConfigError, GnssConfig
from .diagnostics import DiagnosticsServer
from .fusion import Fusion
from .health import HealthRegistry
from .keystore import DeviceIdentity, DeviceKeyMissing, load_identity
from .mqtt import Dispatcher, MqttClient, PresenceTracker
from .outbox import AsyncOutbox, Entry, OutboxSender, SendError
from .sdnotify import Notifier, watchdog_interval
from .services import CameraService, CanService, GnssService, HealthService, StateService, StateSink
from .supervisor import Supervisor

if TYPE_CHECKING:
    from models.learned import LearnedDetector

    from .admission import CellAnnouncer, CellJoiner
    from .behaviour import BehaviourService
    from .fl import FlClient, FlCoordinator
    from .ledger_node import LedgerNode
    from .pc5.service import Pc5Wiring
    from .receipts import CellReceipts

__all__ = ["Agent", "build_camera", "build_can_port", "build_decoders", "build_gnss"]

log = logging.getLogger(__name__)


def build_can_port(bus: CanBusConfig, clock: Clock | None = None) -> CanPort:
    """The configured bus's port; ``clock`` stamps its frames (the agent's clock, so frames and
    the fusion's timers share one time base also on a simulated or scaled clock)."""
    cls = load_backend("can", "python-can")
    filters = [CanFilter(f.id, f.mask, f.extended) for f in bus.filters] or None
    port: CanPort = cls(
        name=bus.name,
        interface=bus.interface,
        channel=bus.channel,
        bitrate=bus.bitrate,
        fd=bus.fd,
        data_bitrate=bus.data_bitrate,
        receive_own_messages=bus.receive_own_messages,
        filters=filters,
        **({"clock": clock} if clock is not None else {}),
        **bus.options,
    )
    return port


def build_decoders(bus: CanBusConfig) -> list[Any]:
    decoders: list[Any] = []
    if bus.dbc:
        from drivers.dbc import DbcDecoder

        decoders.append(DbcDecoder(bus.dbc, bus=bus.name, mapping=bus.vss_map or None))
    return decoders


def build_gnss(cfg: GnssConfig, clock: Clock | None = None) -> GnssSource | None:
    """The configured receiver; ``clock`` stamps its fixes (see ``build_can_port``)."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "gpsd":
        source: GnssSource = load_backend("gnss", "gpsd")(host=cfg.host, port=cfg.port, clock=clock)
        return source
    from drivers.gnss_stream import open_nmea_source

    return open_nmea_source(
        cfg.device, baudrate=cfg.baudrate, pace=cfg.pace, ready_timeout=cfg.ready_timeout, clock=clock
    )


def build_camera(cfg: CameraConfig) -> Camera | None:
    if cfg.backend == "none":
        return None
    cls = load_backend("camera", cfg.backend)
    if cfg.backend == "v4l2":
        camera: Camera = cls(cfg.path, width=cfg.width, height=cfg.height, fps=cfg.fps, name="camera")
    elif cfg.backend == "folder":
        camera = cls(cfg.path, fps=cfg.fps, loop=True, name="camera")
    else:
        camera = cls(cfg.path, loop=True, name="camera")
    return camera


#: resources a granted requester can read, and the VehicleState field that holds them
RESOURCE_FIELDS: dict[str, tuple[str, str]] = {
    "Vehicle.Speed": ("speed", "m/s"),
    "Vehicle.Acceleration.Longitudinal": ("accel_longitudinal", "m/s^2"),
    "Vehicle.Acceleration.Lateral": ("accel_lateral", "m/s^2"),
    "Vehicle.AngularVelocity.Yaw": ("yaw_rate", "degrees/s"),
    "Vehicle.Chassis.SteeringWheel.Angle": ("steering_angle", "degrees"),
    "Vehicle.Chassis.Brake.PedalPosition": ("brake", "percent"),
    "Vehicle.Chassis.Accelerator.PedalPosition": ("throttle", "percent"),
    "Vehicle.Powertrain.Transmission.CurrentGear": ("gear", ""),
    "Vehicle.CurrentLocation.Latitude": ("lat", "degrees"),
    "Vehicle.CurrentLocation.Longitude": ("lon", "degrees"),
    "Vehicle.CurrentLocation.Heading": ("heading", "degrees"),
}


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        state_sinks: Sequence[StateSink] = (),
        extra_services: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = (),
        handle_signals: bool = True,
    ) -> None:
        if clock is None:
            from drivers.clock import SystemClock

            clock = SystemClock()
        self.config = config
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.health = HealthRegistry(clock.monotonic)
        self.fusion = Fusion(
            stale_after=max(0.5, 3.0 / config.fusion.rate_hz),
            dead_reckoning_max=config.fusion.dead_reckoning_max,
        )
        self.state_sinks = list(state_sinks)
        self.extra_services = list(extra_services)
        self.handle_signals = handle_signals
        self.supervisor = Supervisor(self.health, clock)
        self.can_services: list[CanService] = []
        self.gnss_service: GnssService | None = None
        self.camera_service: CameraService | None = None
        self.state_service: StateService | None = None
        self.node_id = config.agent.node_id or socket.gethostname()
        #: the device's DID and signing key (agent/keystore.py), loaded by run(); None: not provisioned
        self.identity: DeviceIdentity | None = None
        self.attestor: Attestor | None = None
        self.outbox: AsyncOutbox | None = None
        self.mqtt: MqttClient | None = None
        #: routes received MQTT messages by kind to the services that want them
        self.dispatcher: Dispatcher | None = None
        #: the cell's peers by their signed presence, and what was rejected per peer
        self.presence: PresenceTracker | None = None
        self.access: AccessGate | None = None
        self.summary: SummaryService | None = None
        #: the RSU's ledger node (agent/ledger_node.py), while its service runs
        self.ledger: LedgerNode | None = None
        #: an OBU's light client + receipt verification (agent/receipts.py)
        self.receipts: CellReceipts | None = None
        #: the RSU's cell announcer or the OBU's cell joiner (agent/admission.py)
        self.cell: CellAnnouncer | CellJoiner | None = None
        #: the OBU's emulated PC5 sidelink (agent/pc5/service.py)
        self.pc5: Pc5Wiring | None = None
        #: federated learning: the RSU's coordinator or the OBU's client (agent/fl.py)
        self.fl: FlCoordinator | FlClient | None = None
        #: rules, fatigue and PERCLOS detectors turning the drive into driving_event attestations
        self.behaviour: BehaviourService | None = None
        self.learned: LearnedDetector | None = None
        self.started_mono = 0.0
        self._stop: asyncio.Event | None = None
        #: set once run() has built every service (tests and embedders wait on it)
        self.built = asyncio.Event()

    # --- building ---------------------------------------------------------------------------

    def diag_socket_path(self) -> Path:
        if self.config.agent.diag_socket:
            return Path(self.config.agent.diag_socket)
        if rt := os.environ.get("RUNTIME_DIRECTORY"):
            return Path(rt.split(":")[0]) / "diag.sock"
        return Path(self.config.agent.data_dir) / "diag.sock"

    def _load_identity(self) -> None:
        """The device key: an unsafe key file raises ``KeyStoreError`` (acc-agent exits 77);
        without one the agent runs, with health ``identity`` degraded."""
        try:
            self.identity = load_identity(self.config.agent.data_dir)
        except DeviceKeyMissing:
            self.health.degraded("identity", "no device key: run acc keys init")
        else:
            self.health.ok("identity", self.identity.did)

    def _build(self) -> None:
        cfg = self.config
        for bus in cfg.can:
            port = build_can_port(bus, self.clock)
            obd = None
            if bus.obd:
                from drivers.obd import ObdPoller

                obd = ObdPoller(port, self.clock, sink=self.fusion.on_signal, bus=bus.name)
            service = CanService(port, build_decoders(bus), self.fusion, self.health, self.clock, obd=obd)
            self.can_services.append(service)
            self.supervisor.add(service.name, service.run)
            if obd is not None:
                self.supervisor.add(f"obd.{bus.name}", service.run_obd)
        source = build_gnss(cfg.gnss, self.clock)
        if source is not None:
            self.gnss_service = GnssService(source, self.fusion, self.health, self.clock)
            self.supervisor.add("gnss", self.gnss_service.run)
        camera = build_camera(cfg.camera)
        if camera is not None:
            self.camera_service = CameraService(camera, self.health, self.clock, fps=cfg.camera.fps)
            self.supervisor.add(self.camera_service.name, self.camera_service.run)
        if cfg.agent.role == "obu":
            self.state_service = StateService(self.fusion, self.clock, cfg.fusion.rate_hz, self.state_sinks)
            self.supervisor.add("state", self.state_service.run)
        self._build_attestor()
        from .behaviour import build_behaviour

        self.behaviour = build_behaviour(self)
        if self.behaviour is not None:
            self.supervisor.add(self.behaviour.name, self.behaviour.run)
            self._build_learned_detector()
        self._build_access()
        self._build_network()
        self._build_ledger()
        from .admission import CellJoiner, build_cell_service

        self.cell = build_cell_service(self)
        if self.cell is not None:
            self.supervisor.add(self.cell.name, self.cell.run)
            if isinstance(self.cell, CellJoiner):
                self.cell.on_change(self._follow_new_cell)
        self._build_fl()
        from .pc5.service import build_pc5

        self.pc5 = build_pc5(self)
        for name, run in self.pc5.services:
            self.supervisor.add(name, run)
        checkers: list[Callable[[float], None]] = [s.check for s in self.can_services]
        if self.gnss_service is not None:
            checkers.append(self.gnss_service.check)
        if self.camera_service is not None:
            checkers.append(self.camera_service.check)
        if cfg.ledger.enabled and cfg.agent.role == "rsu":
            checkers.append(self._ledger_check())
        wd = watchdog_interval() if cfg.agent.watchdog else None
        health = HealthService(self.health, self.clock, checkers, self.notifier, watchdog=wd)
        self.supervisor.add("health", health.run)
        diag = DiagnosticsServer(self.diag_socket_path())
        diag.command("status", lambda req: self.status())
        diag.command("state", lambda req: self.last_state())
        diag.command("access.read", self.access_read)
        diag.command("net", lambda req: self.net_status())
        diag.command("ledger", lambda req: self.ledger_status())
        diag.command("cell", lambda req: self.cell.status() if self.cell is not None else None)
        diag.command("pc5", lambda req: self.pc5.status() if self.pc5 else None)
        diag.command("fl", lambda req: self.fl.status() if self.fl is not None else None)
        diag.command("behaviour", lambda req: self.behaviour.status() if self.behaviour else None)
        diag.command("can.stats", self.can_stats)
        diag.command("can.recent", self.can_recent)
        diag.command("gnss.fix", lambda req: self.gnss_service.fix_status() if self.gnss_service else None)
        diag.command("verdicts", lambda req: self.verdicts())
        self.supervisor.add("diagnostics", diag.serve)
        for name, run in self.extra_services:
            self.supervisor.add(name, run)

    async def _open_outbox(self) -> None:
        """The outbox exists where attestations are made: a node with a device identity."""
        cfg = self.config
        if self.identity is None or not cfg.attest.enabled:
            return
        self.outbox = await AsyncOutbox.open(
            Path(cfg.agent.data_dir) / "outbox" / "outbox.db",
            budget_bytes=int(cfg.outbox.budget_mb * 2**20),
            clock=self.clock,
            resend_after=cfg.outbox.resend_after,
            resend_max=cfg.outbox.resend_max,
        )

    def _build_network(self) -> None:
        """MQTT to the cell's broker, and the outbox's sender publishing on the cell's tx topic."""
        cfg = self.config
        if not cfg.mqtt.enabled:
            return
        from . import topics
        from .mqtt import presence_signer

        presence = None
        if self.identity is not None:
            from ledger_lite.attestation import kid_for

            presence = presence_signer(self.identity.key, kid_for(self.identity.did), self.node_id, self.clock.time)
        client = MqttClient(
            cfg.mqtt,
            node_id=self.node_id,  # the MQTT client id is mqtt.client_id (default: this)
            cell=cfg.mqtt.cell,
            clock=self.clock,
            health=self.health,
            presence_payload=presence,
        )
        self.mqtt = client
        self.dispatcher = Dispatcher(client)
        self.presence = PresenceTracker(client.cell, self.clock)
        self.presence.register(self.dispatcher)
        self.presence.want(client)
        self.supervisor.add("mqtt", client.run, restart="always")
        self.supervisor.add("mqtt.dispatch", self.dispatcher.run, restart="always")
        if self.outbox is not None:

            async def send(entry: Entry) -> None:
                if not await client.publish(topics.tx(entry.cell), entry.payload):
                    raise SendError("the MQTT client dropped it (offline policy)")

            # every cell is reached through this broker (the joiner does not switch brokers yet):
            # entries of a cell left behind are still sent there until its receipts retire them
            sender = OutboxSender(self.outbox, send, self.clock, health=self.health)
            self.supervisor.add("outbox.sender", sender.run)

    def _build_ledger(self) -> None:
        """The RSU's ledger node over the cell broker, as the service ``ledger``."""
        cfg = self.config
        if not cfg.ledger.enabled:
            return
        if self.identity is None or self.mqtt is None:
            self.health.failed("ledger", "needs a device key (acc keys init) and mqtt.enabled")
            return
        if cfg.agent.role == "obu":
            self._build_receipts()
            return
        from ledger_lite import consensus
        from ledger_lite.errors import LedgerError
        from ledger_lite.genesis import Genesis

        from .ledger_node import LedgerNode, LedgerNodeConfig, MqttTransport

        lg = cfg.ledger
        try:
            genesis = Genesis.from_json(Path(lg.genesis_file).read_bytes())
        except (OSError, LedgerError) as err:
            raise ConfigError([f"ledger.genesis_file: {err}"], lg.genesis_file) from err
        node_cfg = LedgerNodeConfig(
            data_dir=Path(cfg.agent.data_dir) / "ledger",
            block_interval=lg.block_interval,
            max_block_txs=lg.max_block_txs,
            timeouts=consensus.TimeoutConfig(
                propose=(lg.timeout_propose, lg.timeout_propose / 2),
                prevote=(lg.timeout_vote, lg.timeout_vote / 2),
                precommit=(lg.timeout_vote, lg.timeout_vote / 2),
            ),
            rebroadcast=lg.rebroadcast,
            mempool_txs=lg.mempool_txs,
        )
        assert self.dispatcher is not None
        identity, transport = self.identity, MqttTransport(self.mqtt, self.dispatcher)

        async def run() -> None:
            node = LedgerNode(node_cfg, genesis, identity.key, identity.did, transport, clock=self.clock)
            try:
                await node.start()
                self.ledger = node
                self.health.ok("ledger", f"{genesis.chain_id} at height {node.height}")
                await transport.subscribe()
                await node.run()
            finally:
                self.ledger = None
                await asyncio.to_thread(node.close)

        self.supervisor.add("ledger", run)

    def _ledger_check(self) -> Callable[[float], None]:
        """Health ``ledger`` of an RSU: degraded while no block has been committed for
        ``ledger.stall_after`` seconds (consensus stuck: too few validators reachable, or a
        starved CPU), ok again at the next commit."""
        last = {"height": -1, "since": self.clock.monotonic()}
        limit = self.config.ledger.stall_after

        def check(now: float) -> None:
            node = self.ledger
            if node is None:
                return
            if node.height != last["height"]:
                last["height"], last["since"] = node.height, now
                self.health.ok("ledger", f"{node.genesis.chain_id} at height {node.height}")
            elif now - last["since"] > limit:
                self.health.degraded(
                    "ledger",
                    f"no block committed for {now - last['since']:.0f} s (height {node.height}, "
                    f"consensus at height {node.state.height} round {node.state.round}, "
                    f"{len(node.peers)} peer(s) heard)",
                )

        return check

    def _build_receipts(self) -> None:
        """An OBU: light clients of the cells it sends to, verifying receipts that retire outbox
        entries -- the configured cell (``ledger.genesis_file``) and, with ``cell.join``, every
        cell it is admitted to (the genesis comes with the admission)."""
        from ledger_lite.errors import LedgerError
        from ledger_lite.genesis import Genesis

        from .receipts import CellReceipts
        from .topics import issuer_tag

        cfg = self.config
        if self.outbox is None or self.identity is None or self.mqtt is None or self.dispatcher is None:
            self.health.degraded("ledger", "receipts need the outbox (attest.enabled and a device key)")
            return
        self.receipts = CellReceipts(
            client=self.mqtt,
            dispatcher=self.dispatcher,
            receipt_tag=issuer_tag(self.identity.did),
            outbox=self.outbox,
            clock=self.clock,
            health=self.health,
            state_dir=Path(cfg.agent.data_dir) / "ledger",
            key=self.identity.key,
            did=self.identity.did,
        )
        if cfg.ledger.genesis_file:
            try:
                genesis = Genesis.from_json(Path(cfg.ledger.genesis_file).read_bytes())
            except (OSError, LedgerError) as err:
                raise ConfigError([f"ledger.genesis_file: {err}"], cfg.ledger.genesis_file) from err
            self.receipts.follow(self.mqtt.cell, genesis)
        self.supervisor.add("receipts", self.receipts.run)

    def _follow_new_cell(self, old: str | None, new: str | None) -> None:
        """Handover (``CellJoiner.on_change``): follow the new cell's ledger with its genesis."""
        from .admission import CellJoiner

        joiner = self.cell
        if new is None or self.receipts is None or not isinstance(joiner, CellJoiner) or joiner.current is None:
            return
        if joiner.current.genesis is not None:
            self.receipts.follow(new, joiner.current.genesis)

    def current_cell(self) -> str:
        """The cell new attestations are for: the one the OBU is admitted to, else the configured one."""
        from .admission import CellJoiner

        if isinstance(self.cell, CellJoiner) and self.cell.current_cell:
            return self.cell.current_cell
        return self.config.mqtt.cell

    def _build_learned_detector(self) -> None:
        """The behaviour model (weaving -> lane_change events) next to the rules, inference in a
        worker thread once a second; with FL it follows the committed models."""
        from models.learned import LearnedDetector
        from models.manifest import Manifest, ManifestError, default_manifest

        from .fl import initial_model

        assert self.behaviour is not None
        try:
            model, _sha, _w = initial_model(self.config.fl.model_manifest)
            manifest = Manifest.read(self.config.fl.model_manifest or default_manifest("dbm"))
            version = f"{manifest.name}-{manifest.version}"
        except (OSError, ValueError, ManifestError) as err:
            self.health.degraded("behaviour.model", f"no behaviour model: {err}")
            return
        detector = LearnedDetector(model, version=version)
        self.behaviour.add_detector(detector)
        self.learned = detector

        async def infer() -> None:
            while True:
                await self.clock.sleep(1.0)
                await detector.infer_pending()

        self.supervisor.add("behaviour.model", infer)

    def _build_fl(self) -> None:
        """Federated learning: the coordinator on the cell's coordinating RSU, the client on OBUs."""
        cfg = self.config
        if not cfg.fl.enabled:
            return
        if self.identity is None or self.mqtt is None or self.dispatcher is None:
            self.health.failed("fl", "needs a device key and mqtt.enabled")
            return
        from ledger_lite.genesis import Genesis
        from models.manifest import ManifestError

        from .fl import FlClient, FlCoordinator, LocalWindows, initial_model

        try:
            model, tflite, weights = initial_model(cfg.fl.model_manifest)
            genesis = Genesis.from_json(Path(cfg.ledger.genesis_file).read_bytes())
        except (OSError, ValueError, ManifestError) as err:
            raise ConfigError([f"fl: {err}"], "fl") from err
        identity, client, dispatcher = self.identity, self.mqtt, self.dispatcher
        fl = cfg.fl
        if cfg.agent.role == "rsu":
            if not fl.coordinator:
                return

            async def coordinate() -> None:
                while self.ledger is None:  # the ledger service opens the node
                    await self.clock.sleep(0.2)
                coordinator = FlCoordinator(
                    node=self.ledger,
                    client=client,
                    dispatcher=dispatcher,
                    key=identity.key,
                    clock=self.clock,
                    task=fl.task,
                    tflite_sha256=tflite,
                    weights=weights,
                    round_seconds=fl.round_seconds,
                    pause_seconds=fl.pause_seconds,
                    min_clients=fl.min_clients,
                    max_clients=fl.max_clients,
                    clip=fl.clip,
                    aggregator=fl.aggregator,
                    dp_noise=fl.dp_noise,
                    secagg=fl.secagg,
                )
                self.fl = coordinator
                await coordinator.run()

            self.supervisor.add("fl", coordinate)
            return
        windows = LocalWindows()
        if self.state_service is not None:
            self.state_service.sinks.append(windows)
        cell = client.cell

        def light() -> Any:
            services = self.receipts.services if self.receipts is not None else {}
            # the rounds are the home cell's (its FL topics): its ledger proves the models, also
            # while the vehicle is admitted to another cell
            follower = services.get(cell) or services.get(self.current_cell())
            return None if follower is None else follower.client

        self.fl = FlClient(
            client=client,
            dispatcher=dispatcher,
            key=identity.key,
            did=identity.did,
            clock=self.clock,
            task=fl.task,
            trainer=model,
            tflite_sha256=tflite,
            light=light,
            genesis_models=genesis.models,
            data=windows.data,
            min_samples=fl.min_samples,
            epochs=fl.epochs,
            clip=fl.clip,
        )
        if self.learned is not None:
            self.fl.model_listeners.append(self.learned.model.set_weights)
        self.supervisor.add("fl", self.fl.run)

    def ledger_status(self) -> dict[str, Any] | None:
        """Diagnostics command ``ledger``: an RSU's node (height, last block, peers, validators,
        sync state) or an OBU's light client and receipts."""
        if self.ledger is not None:
            return self.ledger.status()
        return None if self.receipts is None else self.receipts.status()

    def _build_attestor(self) -> None:
        cfg = self.config
        if self.identity is None or not cfg.attest.enabled:
            return
        gnss, state = self.gnss_service, self.state_service
        self.attestor = Attestor(
            self.identity,
            cfg.agent.data_dir,
            self.clock,
            fix=lambda: gnss.last if gnss is not None else None,
            state=lambda: state.last if state is not None else None,
            outbox=self.outbox,
            cell=self.current_cell,
            held_time=lambda: gnss.held_time_anchor() if gnss is not None else None,
        )
        if state is not None and cfg.attest.summary_interval > 0:
            services = self.can_services

            def can_counters() -> tuple[int, int]:
                return sum(s.frames for s in services), sum(s.decode_errors for s in services)

            self.summary = SummaryService(self.attestor, self.clock, cfg.attest.summary_interval, can_counters)
            state.sinks.append(self.summary)
            self.supervisor.add("attest.summary", self.summary.run)

    def _build_access(self) -> None:
        """The grant-enforcing gate for requests to this vehicle's data (needs an identity)."""
        if self.identity is None:
            return
        from ledger_lite.credentials import CredentialStore, RevocationList, TrustStore

        t = self.config.trust
        revocation = RevocationList.parse(Path(t.revocation_file).read_text()) if t.revocation_file else None
        store = TrustStore(t.roots, revocation, skew=t.skew)
        creds = (
            CredentialStore(p.read_bytes() for p in sorted(Path(t.credentials_dir).glob("*.cose")))
            if t.credentials_dir
            else None
        )
        self.access = AccessGate(self.identity.did, store, vin=t.vin or None, credentials=creds)

    def access_read(self, req: dict[str, Any]) -> dict[str, Any]:
        """Diagnostics command ``access.read``: a signed request (hex) -> the resource's value."""
        if self.access is None:
            raise PermissionError("this node has no device identity: no access to vehicle data")
        request = bytes.fromhex(str(req.get("request", "")))
        decision = self.access.check(request, self.clock.time())
        state = self.state_service.last if self.state_service else None
        field, unit = RESOURCE_FIELDS.get(decision.resource, ("", ""))
        value = getattr(state, field, None) if state is not None and field else None
        return {
            "allowed": True,
            "subject": decision.subject,
            "resource": decision.resource,
            "value": value,
            "unit": unit,
            "grant": decision.grant_id.hex(),
        }

    # --- diagnostics ------------------------------------------------------------------------

    async def net_status(self) -> dict[str, Any]:
        """Diagnostics command ``net``: broker connection and counters, outbox depth."""
        cfg = self.config.mqtt
        out: dict[str, Any] = {
            "mqtt": None,
            "outbox": None,
            "broker": f"{cfg.host}:{cfg.port}" if cfg.enabled else None,
            "cell": cfg.cell or None,
            "tls": cfg.tls if cfg.enabled else None,
        }
        if self.mqtt is not None:
            out["mqtt"] = {**self.mqtt.stats(), "last_error": str(self.mqtt.last_error or "")}
        if self.presence is not None:
            seen = self.presence.status()
            out["peers"] = seen["peers"]
            out["rejects"] = seen["rejects"]
            if self.ledger is not None:
                out["rejects"].update(self.ledger.rejects_status())
        if self.outbox is not None:
            st = await self.outbox.stats()
            out["outbox"] = {
                "pending": st.pending,
                "sent_unconfirmed": st.sent,
                "retired": st.retired,
                "bytes": st.bytes,
                "budget": st.budget,
                "oldest_age_s": None if st.oldest_age is None else round(st.oldest_age, 1),
                "evicted": st.evicted,
                "refused": st.refused,
                "undelivered_by_cell": dict(st.undelivered_by_cell),
                "quarantined": st.quarantined,
            }
        return out

    def can_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        """Diagnostics command ``can.stats`` (``bus``: one bus): per bus counters, rate, load,
        state and the history of its changes, recent error frames."""
        bus = req.get("bus")
        found = {s.port.name: s.stats() for s in self.can_services if bus in (None, s.port.name)}
        if bus is not None and not found:
            raise KeyError(f"no CAN bus {bus!r}; buses: {', '.join(s.port.name for s in self.can_services)}")
        return found

    def can_recent(self, req: dict[str, Any]) -> dict[str, Any]:
        """Diagnostics command ``can.recent``: the remembered frames after ``cursor`` (all buses'
        frames share one sequence; no cursor: none, just the current cursor to poll from),
        optionally of one ``bus`` and of the arbitration ``ids``, at most ``limit`` (500).
        ``lost`` says frames after the cursor were already pushed out of the ring."""
        bus = req.get("bus")
        services = [s for s in self.can_services if bus in (None, s.port.name)]
        if bus is not None and not services:
            raise KeyError(f"no CAN bus {bus!r}; buses: {', '.join(s.port.name for s in self.can_services)}")
        cursor, ids = req.get("cursor"), req.get("ids")
        limit = max(1, min(int(req.get("limit", 500)), 2000))
        latest = max((s.last_seq for s in services), default=0)
        if cursor is None:
            return {"cursor": latest, "frames": [], "lost": False}
        cursor = int(cursor)
        wanted = None if ids is None else [int(i) for i in ids]
        frames = sorted(
            (f for s in services for f in s.recent_since(cursor, wanted, limit)), key=lambda f: int(f["seq"])
        )[:limit]
        lost = any(s.evicted_seq > cursor for s in services)
        # without a match the cursor moves on to the newest frame seen, so polls stay cheap
        new_cursor = frames[-1]["seq"] if len(frames) == limit else max(latest, cursor)
        return {"cursor": new_cursor, "frames": frames, "lost": lost}

    def status(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "role": self.config.agent.role,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(self.clock.monotonic() - self.started_mono, 1),
            "overall": str(self.health.overall()),
            "did": self.identity.did if self.identity is not None else None,
            "health": {name: h.as_dict() for name, h in self.health.snapshot().items()},
            "services": {
                name: {"restarts": spec.restarts, "finished": spec.finished}
                for name, spec in self.supervisor.services.items()
            },
            "can": {s.port.name: s.status() for s in self.can_services},
            "obd": {s.port.name: s.obd.counters for s in self.can_services if s.obd is not None},
            "gnss": self.gnss_service.status() if self.gnss_service else None,
            "camera": self.camera_service.status() if self.camera_service else None,
            "attest": self.attestor.status() if self.attestor else None,
            "mqtt": self.mqtt.stats() if self.mqtt else None,
            "pc5": self.pc5.status() if self.pc5 else None,
            "behaviour": self.behaviour.status() if self.behaviour else None,
            "state": self.last_state(),
        }

    def verdicts(self) -> dict[str, Any]:
        """Diagnostics command ``verdicts``: what ``acc status`` needs beyond the other answers to
        judge each subsystem: what is configured, the verified behaviour model, where credentials are."""
        cfg = self.config
        dirs = [str(Path(cfg.agent.data_dir) / "credentials")]
        if cfg.trust.credentials_dir and cfg.trust.credentials_dir not in dirs:
            dirs.append(cfg.trust.credentials_dir)
        return {
            "configured": {
                "camera": cfg.camera.backend != "none",
                "mqtt": cfg.mqtt.enabled,
                "ledger": cfg.ledger.enabled,
                "fl": cfg.fl.enabled,
                "behaviour": self.behaviour is not None,
            },
            "model": None if self.learned is None else {"version": self.learned.version, "verified": True},
            "credentials_dirs": dirs,
        }

    def last_state(self) -> dict[str, Any] | None:
        state = self.state_service.last if self.state_service else None
        return state_to_dict(state) if state is not None else None

    # --- running ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def run(self, duration: float | None = None) -> None:
        """Run until SIGTERM/SIGINT, ``request_stop()``, or ``duration`` seconds."""
        self._stop = asyncio.Event()
        self.started_mono = self.clock.monotonic()
        self._load_identity()
        await self._open_outbox()
        self._build()
        self.built.set()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT) if self.handle_signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        log.info(
            "agent %s starting as %s: %d CAN bus(es), gnss %s",
            self.node_id,
            self.config.agent.role,
            len(self.config.can),
            self.config.gnss.backend,
        )
        task = asyncio.create_task(self.supervisor.run(), name="supervisor")
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        waiters: set[asyncio.Task[Any]] = {task, stopper}
        if duration is not None:
            waiters.add(asyncio.create_task(self.clock.sleep(duration), name="duration"))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if w is not task:
                    w.cancel()
            self.notifier.stopping()
            await self._shutdown(task)
            if self.outbox is not None:
                await self.outbox.close()
            for sig in installed:
                loop.remove_signal_handler(sig)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        self.request_stop()

    async def _shutdown(self, task: asyncio.Task[Any]) -> None:
        if task.done():
            return
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.config.agent.shutdown_timeout)
        except asyncio.CancelledError:
            pass
        except TimeoutError:
            log.error("services did not stop within %.1fs", self.config.agent.shutdown_timeout)
        log.info("agent stopped")


def state_to_dict(state: VehicleState) -> dict[str, Any]:
    d = asdict(state)
    d["gnss_mode"] = int(state.gnss_mode)
    d["derived"] = sorted(state.derived)
    return d
