"""The agent's configuration: a TOML file, then environment variables, then command-line
overrides, validated into frozen dataclasses. Every bad key is listed in one ``ConfigError``.

Environment overrides are ``ACC_<SECTION>__<KEY>=value`` (double underscore between the
section and the key, e.g. ``ACC_GNSS__DEVICE=/dev/ttyUSB0``); command-line overrides are
``--set section.key=value``. Values are read as TOML literals when they parse as one
(``500000``, ``true``, ``"x"``, ``[1, 2]``), otherwise as plain strings. List sections
(``[[can]]``) are addressed by index: ``--set can.0.bitrate=250000``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .pc5.radio import DEFAULT_DCC, DEFAULT_PDR

__all__ = [
    "AgentConfig",
    "AttestConfig",
    "BehaviourConfig",
    "CameraConfig",
    "CanBusConfig",
    "Config",
    "ConfigError",
    "FusionConfig",
    "GnssConfig",
    "LedgerConfig",
    "FlConfig",
    "CellConfig",
    "Pc5Config",
    "OutboxConfig",
    "SpeedZoneConfig",
    "MqttConfig",
    "TrustConfig",
    "load_config",
]

ENV_PREFIX = "ACC_"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every bad key with what was wrong."""

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid configuration{f' ({source})' if source else ''}: {len(self.problems)} problem(s)"
        super().__init__("\n  - ".join([head, *self.problems]))


def _doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if default is dataclasses.MISSING or "default_factory" in kw:
        return field(metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class AgentConfig:
    role: Literal["obu", "rsu"] = _doc("what this box is: 'obu' (in a vehicle) or 'rsu' (road-side)", "obu")
    node_id: str = _doc("name of this node in logs and on the network; default: the host name", "")
    data_dir: str = _doc("state on disk: keys, ledger, outbox, models", "/var/lib/autochain")
    diag_socket: str = _doc("Unix socket of the local diagnostics server ('' disables it)", "")
    log_level: Literal["trace", "debug", "info", "warning", "error"] = _doc("log level", "info")
    shutdown_timeout: float = _doc("seconds a clean shutdown may take before tasks are cancelled", 5.0)
    watchdog: bool = _doc("send WATCHDOG=1 to systemd when WatchdogSec is set", True)


@dataclass(frozen=True)
class CanFilterConfig:
    id: int = _doc("CAN id to accept")
    mask: int = _doc("bits of the id that must match", 0x7FF)
    extended: bool | None = _doc("only extended (true) / standard (false) frames; unset: both", None)


@dataclass(frozen=True)
class CanBusConfig:
    name: str = _doc("the agent's name for this bus: can0, powertrain, body, ...")
    interface: str = _doc("python-can interface: socketcan, virtual, slcan, pcan, kvaser, udp_multicast, ...")
    channel: str = _doc("the interface's channel: can0, /dev/ttyACM0@115200, PCAN_USBBUS1, ...")
    bitrate: int = _doc("nominal bitrate in bit/s (used for bus load even where the OS sets it)", 500_000)
    fd: bool = _doc("CAN FD", False)
    data_bitrate: int = _doc("CAN FD data-phase bitrate, bit/s", 2_000_000)
    dbc: str = _doc("DBC file decoding this bus ('' = none)", "")
    vss_map: str = _doc("VSS mapping TOML for the DBC ('' = <dbc stem>.vss.toml if it exists)", "")
    obd: bool = _doc("poll OBD-II mode 01 PIDs on this bus (cars without a DBC)", False)
    receive_own_messages: bool = _doc("deliver frames this node sends back to it", False)
    filters: tuple[CanFilterConfig, ...] = _doc("acceptance filters; none: accept all", ())
    options: dict[str, Any] = _doc("extra keyword arguments for python-can's Bus", None, default_factory=dict)


@dataclass(frozen=True)
class GnssConfig:
    backend: Literal["nmea", "gpsd", "none"] = _doc("where fixes come from", "nmea")
    device: str = _doc("NMEA source: serial device (/dev/ttyACM0), pty, file, or pyserial URL", "/dev/ttyACM0")
    baudrate: int = _doc("serial speed for an NMEA receiver", 9600)
    host: str = _doc("gpsd host", "127.0.0.1")
    port: int = _doc("gpsd port", 2947)
    pace: float = _doc("seconds per fix cycle when device is a recorded NMEA file (0: as fast as possible)", 1.0)
    ready_timeout: float = _doc(
        "seconds to wait for the first valid sentence before the receiver counts as absent", 5.0
    )


@dataclass(frozen=True)
class CameraConfig:
    backend: Literal["none", "folder", "video", "v4l2"] = _doc("camera backend", "none")
    path: str = _doc("image folder, video file or V4L2 device", "")
    fps: float = _doc("frame rate", 10.0)
    width: int = _doc("capture width (v4l2)", 640)
    height: int = _doc("capture height (v4l2)", 480)


@dataclass(frozen=True)
class FusionConfig:
    rate_hz: float = _doc("VehicleState snapshots per second", 10.0)
    stale_after: float = _doc("seconds after which a signal counts as stale in health", 2.0)
    dead_reckoning_max: float = _doc("longest GNSS gap bridged by dead reckoning, seconds", 30.0)


@dataclass(frozen=True)
class AttestConfig:
    enabled: bool = _doc("sign attestations with the device key (needs `acc keys init`)", True)
    summary_interval: float = _doc("seconds between sensor_summary attestations (0: none)", 60.0)


@dataclass(frozen=True)
class OutboxConfig:
    budget_mb: float = _doc(
        "disk budget of the store-and-forward outbox, MiB (eviction order: see agent/outbox.py)", 64.0
    )
    resend_after: float = _doc("seconds before an unacknowledged entry is sent again (doubling, capped)", 30.0)
    resend_max: float = _doc("largest resend interval, seconds", 600.0)


@dataclass(frozen=True)
class TrustConfig:
    roots: dict[str, Any] = _doc(
        "trust roots: did:key -> role or list of roles (oem, registration, road_authority, pseudonym_ca)",
        None,
        default_factory=dict,
    )
    revocation_file: str = _doc("revocation list file (credential ids and DIDs, one per line)", "")
    credentials_dir: str = _doc("credentials this node keeps (owner credentials for grant chains)", "")
    skew: float = _doc("clock-skew allowance for validity times, seconds", 60.0)
    vin: str = _doc("this vehicle's VIN (access grants may be bound to it)", "")


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = _doc("connect to an MQTT 5 broker (the cell network)", False)
    host: str = _doc("broker host name or address", "127.0.0.1")
    port: int = _doc("broker TCP port (1883 plain, 8883 TLS by convention)", 1883)
    cell: str = _doc("the cell this node belongs to (topic id: A-Z a-z 0-9 . _ -)", "")
    client_id: str = _doc("MQTT client id; default: agent.node_id", "")
    tls: bool = _doc("connect with TLS", False)
    ca_file: str = _doc("CA bundle the broker's certificate must chain to ('' = system CAs)", "")
    cert_file: str = _doc("client certificate (PEM) for mutual TLS ('' = none)", "")
    key_file: str = _doc("private key (PEM) of cert_file", "")
    tls_verify: bool = _doc("verify the broker's certificate and host name (never turn off in the field)", True)
    username: str = _doc("user name ('' = anonymous)", "")
    password_file: str = _doc("file whose first line is the password (read at each connect, never logged)", "")
    keepalive: int = _doc("MQTT keepalive, seconds", 30)
    connect_timeout: float = _doc("seconds a TCP+TLS+CONNACK exchange may take", 10.0)
    queue_max: int = _doc("outgoing messages held while the broker is slow or away; publish() waits beyond", 1000)
    inflight_max: int = _doc("messages handed to the socket and not yet acknowledged/written", 100)
    inbox_max: int = _doc("received messages waiting for the agent; more are dropped and counted", 10000)
    max_payload: int = _doc("largest payload published or accepted, bytes", 262144)
    backoff_initial: float = _doc("first reconnect delay, seconds (full jitter, doubling)", 0.5)
    backoff_max: float = _doc("largest reconnect delay, seconds", 30.0)


@dataclass(frozen=True)
class LedgerConfig:
    enabled: bool = _doc(
        "the cell ledger: role rsu runs a validator; role obu follows it as a light client and retires outbox "
        "entries on verified receipts (needs mqtt and a device key)",
        False,
    )
    genesis_file: str = _doc("the cell's genesis JSON (chain id, validators, authorities): the trust anchor", "")
    block_interval: float = _doc("seconds between a commit and the next proposal", 0.5)
    max_block_txs: int = _doc("most transactions in one block", 2000)
    timeout_propose: float = _doc("propose timeout of round 0, seconds (grows by half of it per round)", 3.0)
    timeout_vote: float = _doc("prevote/precommit timeout of round 0, seconds (grows by half per round)", 1.0)
    rebroadcast: float = _doc("re-send own consensus messages of a height stuck this long, seconds", 2.0)
    mempool_txs: int = _doc("transactions the mempool holds; new ones are refused beyond (senders retry)", 20000)
    stall_after: float = _doc(
        "RSU: health ledger degraded when no block was committed for this long, seconds (a live cell commits "
        "a block, empty or not, every block_interval + a round)",
        20.0,
    )


@dataclass(frozen=True)
class Pc5Config:
    enabled: bool = _doc(
        "emulated C-V2X PC5 sidelink (CAM/DENM over the cell broker, radio model at the receiver)", False
    )
    tx: bool = _doc("transmit CAMs and DENMs (false: listen only)", True)
    max_range_m: float = _doc("radio: nothing is delivered beyond this distance, metres", 800.0)
    pdr_curve: tuple[tuple[float, ...], ...] = _doc(
        "radio: [distance m, PDR 0..1] points from distance 0, PDR non-increasing (illustrative default)",
        DEFAULT_PDR,
    )
    base_latency_s: float = _doc("radio: one-way latency floor, seconds", 0.010)
    jitter_s: float = _doc("radio: latency adds uniform 0..jitter_s, seconds", 0.020)
    airtime_s: float = _doc("radio: channel occupancy of one message for the CBR estimate, seconds", 0.001)
    cbr_window_s: float = _doc("radio: channel busy ratio window, seconds", 0.1)
    cbr_knee: float = _doc("radio: CBR below which congestion costs no PDR", 0.3)
    cbr_loss_at_full: float = _doc("radio: PDR is multiplied by (1 - this) at CBR 1", 0.5)
    dcc_gaps: tuple[tuple[float, ...], ...] = _doc(
        "DCC: [CBR lower bound, minimum gap s] steps from CBR 0",
        DEFAULT_DCC,
    )
    seed: int = _doc("seed of the radio model's randomness (0: random)", 0)
    stale_after: float = _doc("drop messages generated longer ago than this, seconds", 1.0)
    neighbour_timeout: float = _doc("forget a neighbour not heard for this long, seconds", 3.0)
    cert_interval: float = _doc("carry the full pseudonym certificate at least this often, seconds", 1.0)
    pseudonym_dir: str = _doc(
        "directory of pseudonym pairs <id>.cert + <id>.key (0600) ('' = <data_dir>/pseudonyms)", ""
    )
    pseudonym_period: float = _doc("change pseudonym every period +- jitter seconds", 300.0)
    pseudonym_jitter: float = _doc("random part of the pseudonym change period, seconds", 60.0)
    authorities: tuple[str, ...] = _doc(
        "pseudonym CA did:keys trusted for V2V, besides trust.roots with role pseudonym_ca", ()
    )
    hard_brake_mps2: float = _doc("send a hard-braking DENM at this deceleration, m/s^2 (0: never)", 4.0)
    stationary_after: float = _doc("send a stationary-vehicle DENM after standing this long, seconds (0: never)", 0.0)
    denm_repetitions: int = _doc("times each DENM is sent again", 2)
    denm_repeat_interval: float = _doc("seconds between DENM repetitions", 0.5)
    max_warnings: int = _doc("active DENM warnings kept (oldest dropped beyond)", 16)


@dataclass(frozen=True)
class CellConfig:
    announce: bool = _doc("RSU: announce this cell (id, area, genesis hash, broker) and admit OBUs", False)
    join: bool = _doc("OBU: hear cell announcements, join the cell covering the position, hand over", False)
    # --- RSU -------------------------------------------------------------------------------
    area_lat: float = _doc("RSU: cell area as a circle: centre latitude, degrees WGS84", 0.0)
    area_lon: float = _doc("RSU: cell area as a circle: centre longitude, degrees WGS84", 0.0)
    area_radius_m: float = _doc("RSU: cell area as a circle: radius, metres (0: use area_polygon)", 0.0)
    area_polygon: tuple[tuple[float, ...], ...] = _doc(
        "RSU: cell area as a polygon instead: [[lat, lon], ...], at least 3 corners, degrees", ()
    )
    broker_host: str = _doc("RSU: broker host OBUs are told to use ('' = mqtt.host)", "")
    broker_port: int = _doc("RSU: broker port OBUs are told to use (0 = mqtt.port)", 0)
    broker_tls: bool | None = _doc("RSU: advertise the broker as TLS (unset = mqtt.tls)", None)
    validator_credential: str = _doc(
        "RSU: its validator credential (COSE CWT from a road authority, subject = this device's DID)", ""
    )
    announce_interval: float = _doc("RSU: seconds between announcements (retained, re-signed each time)", 10.0)
    announce_validity: float = _doc("RSU: seconds an announcement stays valid (> announce_interval)", 60.0)
    admission_ttl: float = _doc("RSU: seconds an admission lasts before the OBU must renew it", 3600.0)
    # --- OBU -------------------------------------------------------------------------------
    vehicle_credential: str = _doc(
        "OBU: its vehicle credential (COSE CWT from the OEM, subject = this device's DID)", ""
    )
    genesis_dir: str = _doc("OBU: directory of trusted cell genesis JSON files (*.json)", "")
    genesis_hashes: tuple[str, ...] = _doc(
        "OBU: trusted genesis hashes (hex SHA-256 of the genesis JSON as Genesis.to_json writes it)", ()
    )
    require_known_genesis: bool = _doc("OBU: join only cells whose genesis is in genesis_dir / genesis_hashes", False)
    check_interval: float = _doc("OBU: seconds between position checks for handover", 1.0)
    retry_after: float = _doc("OBU: seconds before asking a cell again after a refusal or no answer", 5.0)


@dataclass(frozen=True)
class SpeedZoneConfig:
    limit_kmh: float = _doc("speed limit in the zone, km/h")
    name: str = _doc("a name for logs", "")
    lat: float = _doc("circle: centre latitude, degrees WGS84", 0.0)
    lon: float = _doc("circle: centre longitude, degrees WGS84", 0.0)
    radius_m: float = _doc("circle: radius, metres (0: use polygon)", 0.0)
    polygon: tuple[tuple[float, ...], ...] = _doc("polygon instead: [[lat, lon], ...], at least 3 corners", ())


@dataclass(frozen=True)
class BehaviourConfig:
    enabled: bool = _doc("OBU: detect driving events on the VehicleState stream and attest them", False)
    harsh_brake_mps2: float = _doc("harsh braking at this deceleration, m/s^2 (0.35 g; 0: off)", 3.43)
    harsh_accel_mps2: float = _doc("harsh acceleration at this acceleration, m/s^2 (0.35 g; 0: off)", 3.43)
    harsh_corner_mps2: float = _doc("harsh cornering at this |lateral acceleration|, m/s^2 (0.35 g; 0: off)", 3.43)
    hysteresis_mps2: float = _doc("a harsh event lasts while the value stays above threshold - this, m/s^2", 0.5)
    harsh_min_duration: float = _doc("shortest harsh event, seconds", 0.5)
    max_gap: float = _doc("missing data longer than this ends an event, seconds", 1.5)
    speed_limit_kmh: float = _doc("speed limit outside every zone, km/h (0: none)", 0.0)
    speed_tolerance_kmh: float = _doc("speeding only above limit + this, km/h", 5.0)
    speeding_min_duration: float = _doc("shortest speeding event, seconds", 10.0)
    speed_zones: tuple[SpeedZoneConfig, ...] = _doc("zones with their own limit, [[behaviour.speed_zones]]", ())
    driving_limit_h: float = _doc("continuous driving before a break is due, hours (EU 561/2006: 4.5; 0: off)", 4.5)
    break_min: float = _doc("a stop at least this long resets the driving time, minutes (EU 561/2006: 45)", 45.0)
    fatigue: bool = _doc("fatigue score from steering reversals (yaw-rate proxy) and driving time", True)
    fatigue_threshold: float = _doc("fatigue event when the score (0..1) stays at or above this", 0.7)
    fatigue_min_duration: float = _doc("seconds the fatigue score must stay above the threshold", 60.0)
    steering_gap_deg: float = _doc("smallest steering reversal counted, degrees of steering-wheel angle", 2.5)
    perclos: bool = _doc("PERCLOS from the cabin camera (needs camera.backend and eye_model)", True)
    eye_model: str = _doc("eye-state model 'package.module:factory' (none ships; '' = no PERCLOS)", "")
    perclos_threshold: float = _doc("drowsiness event when PERCLOS (P80, 60 s window) stays at or above this", 0.15)
    perclos_min_duration: float = _doc("seconds PERCLOS must stay above its threshold", 10.0)
    perclos_rate_hz: float = _doc("camera frames per second given to the eye-state model", 5.0)
    queue_max: int = _doc("events waiting to be attested; more are dropped and counted", 256)


@dataclass(frozen=True)
class FlConfig:
    enabled: bool = _doc("federated learning of the behaviour model with the cell (needs ledger.enabled)", False)
    task: str = _doc("the model task trained in the cell's rounds", "dbm")
    model_manifest: str = _doc("manifest JSON of the on-device model ('' = the model shipped in models/data)", "")
    coordinator: bool = _doc("RSU: open rounds, aggregate updates and commit results (one RSU per cell)", False)
    round_seconds: float = _doc("RSU: how long a round collects updates, seconds", 60.0)
    pause_seconds: float = _doc("RSU: pause between rounds, seconds", 300.0)
    min_clients: int = _doc("RSU: fewest updates for a new model (fewer: the model stays)", 3)
    max_clients: int = _doc("RSU: the round closes early with this many updates", 100)
    clip: float = _doc("L2 bound of an update (clients clip to it, the RSU scales larger ones down)", 1.0)
    aggregator: Literal["fedavg", "coordinate_median", "trimmed_mean", "multi_krum"] = _doc(
        "RSU: how updates are combined (robust ones need individual updates: no secure aggregation)", "fedavg"
    )
    dp_noise: float = _doc(
        "RSU: central DP noise multiplier (0 = off; FedAvg only): noise std dp_noise * clip on the clipped sum", 0.0
    )
    secagg: bool = _doc(
        "RSU: secure aggregation by pairwise masks (the RSU learns only the sum; FedAvg only, see docs/fl.md)", False
    )
    min_samples: int = _doc("OBU: fewest labelled local windows to take part in a round", 32)
    epochs: int = _doc("OBU: passes over the local windows per round", 2)


@dataclass(frozen=True)
class Config:
    agent: AgentConfig = _doc("runtime", None, default_factory=AgentConfig)
    can: tuple[CanBusConfig, ...] = _doc("CAN buses, one [[can]] table each", ())
    gnss: GnssConfig = _doc("GNSS receiver", None, default_factory=GnssConfig)
    camera: CameraConfig = _doc("camera", None, default_factory=CameraConfig)
    fusion: FusionConfig = _doc("VehicleState fusion", None, default_factory=FusionConfig)
    attest: AttestConfig = _doc("attestations", None, default_factory=AttestConfig)
    trust: TrustConfig = _doc("trust roots, revocation, access grants", None, default_factory=TrustConfig)
    outbox: OutboxConfig = _doc("store-and-forward outbox for attestations", None, default_factory=OutboxConfig)
    mqtt: MqttConfig = _doc("MQTT 5 broker connection (cell network)", None, default_factory=MqttConfig)
    ledger: LedgerConfig = _doc("the cell ledger (RSU)", None, default_factory=LedgerConfig)
    pc5: Pc5Config = _doc("V2V sidelink emulation (OBU)", None, default_factory=Pc5Config)
    cell: CellConfig = _doc("cell announcement, admission and handover", None, default_factory=CellConfig)
    fl: FlConfig = _doc("federated learning", None, default_factory=FlConfig)
    behaviour: BehaviourConfig = _doc(
        "driving-behaviour rules, fatigue and PERCLOS (OBU)", None, default_factory=BehaviourConfig
    )


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Build the ``Config``: ``base`` dict, then the TOML file, then env, then overrides."""
    problems: list[str] = []
    raw: dict[str, Any] = _deep_copy(base or {})
    source = str(path) if path else "defaults"
    if path is not None:
        try:
            with open(path, "rb") as fh:
                _merge(raw, tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError([f"config file {path} does not exist"], source) from None
        except PermissionError:
            raise ConfigError([f"config file {path} is not readable by this user"], source) from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError([f"{path}: not valid TOML: {err}"], source) from None
    env = os.environ if env is None else env
    for key, value in sorted(env.items()):
        if key.startswith(ENV_PREFIX) and "__" in key:
            dotted = key[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_dotted(raw, dotted, value, f"environment {key}", problems)
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted.strip():
            problems.append(f"--set {item!r}: expected section.key=value")
            continue
        _set_dotted(raw, dotted.strip(), value, f"--set {dotted.strip()}", problems)
    cfg: Config | None = _build(Config, raw, "", problems)
    if cfg is not None:
        problems.extend(_check(cfg))
    if problems:
        raise ConfigError(problems, source)
    assert cfg is not None
    return cfg


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, doc) for every setting; used by ``acc config --help-keys`` and the docs."""
    out: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        inner = _tuple_item(tp)
        if dataclasses.is_dataclass(tp):
            out.extend(describe(tp, key + "."))  # type: ignore[arg-type]
        elif inner is not None and dataclasses.is_dataclass(inner):
            out.extend(describe(inner, key + "[]."))  # type: ignore[arg-type]
        else:
            out.append((key, _type_name(tp), f.metadata.get("doc", "")))
    return out


# --- internals -----------------------------------------------------------------------------


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = _deep_copy(value) if isinstance(value, Mapping) else value


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(raw: dict[str, Any], dotted: str, text: str, origin: str, problems: list[str]) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                problems.append(f"{origin}: no list entry {part!r} (there are {len(node)})")
                return
            node = node[int(part)]
            continue
        if part not in node:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        problems.append(f"{origin}: {'.'.join(parts[:-1])} is a list; give an index")
        return
    if not isinstance(node, dict):
        problems.append(f"{origin}: {'.'.join(parts[:-1])} is not a section")
        return
    node[last] = _parse_literal(text)


def _tuple_item(tp: Any) -> Any:
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _build(cls: Any, raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, Mapping):
        problems.append(f"{where or 'config'}: expected a table, got {type(raw).__name__} {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            problems.append(f"{where}{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    ok = True
    for f in dataclasses.fields(cls):
        key = f"{where}{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key}: required")
                ok = False
            continue
        value, good = _coerce(hints[f.name], raw[f.name], key, problems)
        ok &= good
        if good:
            kwargs[f.name] = value
    return cls(**kwargs) if ok else None


def _coerce(tp: Any, value: Any, key: str, problems: list[str]) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        built = _build(tp, value, key + ".", problems)
        return built, built is not None
    item = _tuple_item(tp)
    if item is not None:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {type(value).__name__} {value!r}")
            return None, False
        out, ok = [], True
        for i, v in enumerate(value):
            c, good = _coerce(item, v, f"{key}[{i}]", problems)
            ok &= good
            out.append(c)
        return tuple(out), ok
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")
            return None, False
        return value, True
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None, True
        return _coerce(args[0], value, key, problems)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{key}: expected a table, got {type(value).__name__} {value!r}")
            return None, False
        return dict(value), True
    if tp is bool:
        if isinstance(value, bool):
            return value, True
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on"), True
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, True
        if isinstance(value, str):
            try:
                return int(value, 0), True
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), True
        if isinstance(value, str):
            try:
                return float(value), True
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value, True
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value), True
    problems.append(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return None, False


def _check(cfg: Config) -> list[str]:
    """Checks across fields, after types are right."""
    problems = []
    if cfg.agent.shutdown_timeout <= 0:
        problems.append("agent.shutdown_timeout: must be > 0")
    if not 0.1 <= cfg.fusion.rate_hz <= 100:
        problems.append(f"fusion.rate_hz: {cfg.fusion.rate_hz} is outside 0.1..100")
    seen: set[str] = set()
    for i, bus in enumerate(cfg.can):
        if not bus.name:
            problems.append(f"can[{i}].name: must not be empty")
        if bus.name in seen:
            problems.append(f"can[{i}].name: {bus.name!r} is used by another bus")
        seen.add(bus.name)
        if not 10_000 <= bus.bitrate <= 1_000_000:
            problems.append(f"can[{i}].bitrate: {bus.bitrate} is outside 10000..1000000 bit/s")
        if bus.fd and not bus.bitrate <= bus.data_bitrate <= 15_000_000:
            problems.append(f"can[{i}].data_bitrate: {bus.data_bitrate} must be between bitrate and 15 Mbit/s")
        if bus.dbc and not Path(bus.dbc).is_file():
            problems.append(f"can[{i}].dbc: file {bus.dbc} does not exist")
        if bus.vss_map and not Path(bus.vss_map).is_file():
            problems.append(f"can[{i}].vss_map: file {bus.vss_map} does not exist")
        for j, flt in enumerate(bus.filters):
            limit = 0x1FFFFFFF
            if not 0 <= flt.id <= limit or not 0 <= flt.mask <= limit:
                problems.append(f"can[{i}].filters[{j}]: id/mask must be within 0..0x1FFFFFFF")
    if cfg.gnss.pace < 0 or cfg.gnss.ready_timeout <= 0:
        problems.append("gnss.pace must be >= 0 and gnss.ready_timeout > 0")
    if cfg.gnss.backend == "gpsd" and not 0 < cfg.gnss.port < 65536:
        problems.append(f"gnss.port: {cfg.gnss.port} is not a TCP port")
    if cfg.camera.backend != "none" and not cfg.camera.path:
        problems.append(f"camera.path: required for camera backend {cfg.camera.backend!r}")
    if cfg.outbox.budget_mb <= 0.01:
        problems.append("outbox.budget_mb: must be more than 0.01 MiB")
    if not 0 < cfg.outbox.resend_after <= cfg.outbox.resend_max:
        problems.append("outbox.resend_after: must be > 0 and <= outbox.resend_max")
    problems.extend(_check_ledger(cfg))
    problems.extend(_check_fl(cfg))
    if cfg.attest.summary_interval < 0:
        problems.append("attest.summary_interval: must be >= 0")
    if not 0 <= cfg.trust.skew < 86400:
        problems.append("trust.skew: must be within 0..86400 s")
    for path_key in ("revocation_file", "credentials_dir"):
        value = getattr(cfg.trust, path_key)
        if value and not Path(value).exists():
            problems.append(f"trust.{path_key}: {value} does not exist")
    if cfg.camera.fps <= 0:
        problems.append("camera.fps: must be > 0")
    problems.extend(_check_mqtt(cfg.mqtt))
    problems.extend(_check_cell(cfg))
    problems.extend(_check_pc5(cfg))
    problems.extend(_check_behaviour(cfg))
    return problems


def _check_fl(cfg: Config) -> list[str]:
    fl = cfg.fl
    problems = []
    if fl.enabled and not cfg.ledger.enabled:
        problems.append("fl.enabled: needs ledger.enabled (rounds and models are committed on the cell ledger)")
    if fl.coordinator and cfg.agent.role != "rsu":
        problems.append("fl.coordinator: only an RSU coordinates rounds")
    if fl.model_manifest and not Path(fl.model_manifest).is_file():
        problems.append(f"fl.model_manifest: file {fl.model_manifest} does not exist")
    if fl.round_seconds <= 0 or fl.pause_seconds < 0:
        problems.append("fl.round_seconds must be > 0 and fl.pause_seconds >= 0")
    if not 1 <= fl.min_clients <= fl.max_clients:
        problems.append("fl.min_clients: must be >= 1 and <= fl.max_clients")
    if fl.secagg and fl.aggregator != "fedavg":
        problems.append("fl.secagg: robust aggregators need the individual updates it hides: use aggregator fedavg")
    if fl.dp_noise < 0 or (fl.dp_noise > 0 and fl.aggregator != "fedavg"):
        problems.append("fl.dp_noise: must be >= 0, and central DP goes with aggregator fedavg only (docs/fl.md)")
    if not fl.clip > 0 or fl.min_samples < 1 or fl.epochs < 1:
        problems.append("fl.clip must be > 0, fl.min_samples and fl.epochs >= 1")
    return problems


def _check_ledger(cfg: Config) -> list[str]:
    lg = cfg.ledger
    problems = []
    if lg.enabled:
        if not lg.genesis_file:
            problems.append("ledger.genesis_file: required when ledger.enabled")
        elif not Path(lg.genesis_file).is_file():
            problems.append(f"ledger.genesis_file: file {lg.genesis_file} does not exist")
        if not cfg.mqtt.enabled:
            problems.append("ledger.enabled: needs mqtt.enabled (the ledger runs over the cell broker)")
    if not 0 <= lg.block_interval <= 60:
        problems.append(f"ledger.block_interval: {lg.block_interval} is outside 0..60 s")
    if not 1 <= lg.max_block_txs <= 10_000:
        problems.append(f"ledger.max_block_txs: {lg.max_block_txs} is outside 1..10000")
    if lg.timeout_propose <= 0 or lg.timeout_vote <= 0 or lg.rebroadcast <= 0:
        problems.append("ledger.timeout_propose, timeout_vote and rebroadcast: must be > 0")
    if lg.block_interval >= lg.timeout_propose:
        problems.append("ledger.block_interval: must be shorter than ledger.timeout_propose")
    if lg.mempool_txs < lg.max_block_txs:
        problems.append("ledger.mempool_txs: must be >= ledger.max_block_txs")
    return problems


def _check_mqtt(m: MqttConfig) -> list[str]:
    problems = []
    if m.enabled:
        if not m.host:
            problems.append("mqtt.host: required when mqtt.enabled")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", m.cell):
            problems.append(f"mqtt.cell: {m.cell!r} is not a cell id (1-64 of A-Z a-z 0-9 . _ -)")
    if not 0 < m.port < 65536:
        problems.append(f"mqtt.port: {m.port} is not a TCP port")
    if bool(m.cert_file) != bool(m.key_file):
        problems.append("mqtt.cert_file and mqtt.key_file: give both or neither")
    if (m.cert_file or m.ca_file) and not m.tls:
        problems.append("mqtt.ca_file / mqtt.cert_file: set mqtt.tls = true to use them")
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        value = getattr(m, key)
        if value and not Path(value).is_file():
            problems.append(f"mqtt.{key}: file {value} does not exist")
    if m.password_file and not m.username:
        problems.append("mqtt.password_file: needs mqtt.username")
    if not 5 <= m.keepalive <= 65535:
        problems.append(f"mqtt.keepalive: {m.keepalive} is outside 5..65535 s")
    if m.connect_timeout <= 0:
        problems.append("mqtt.connect_timeout: must be > 0")
    for key in ("queue_max", "inflight_max", "inbox_max"):
        if getattr(m, key) < 1:
            problems.append(f"mqtt.{key}: must be >= 1")
    if not 1 <= m.max_payload <= 268_435_455:
        problems.append("mqtt.max_payload: must be within 1..268435455 bytes")
    if not 0 < m.backoff_initial <= m.backoff_max:
        problems.append("mqtt.backoff_initial / backoff_max: need 0 < backoff_initial <= backoff_max")
    return problems


def _check_pc5(cfg: Config) -> list[str]:
    p = cfg.pc5
    problems = []
    if p.enabled and not cfg.mqtt.enabled:
        problems.append("pc5.enabled: needs mqtt.enabled (the sidelink is emulated over the cell broker)")
    for key in ("pdr_curve", "dcc_gaps"):
        if any(len(point) != 2 for point in getattr(p, key)):
            problems.append(f"pc5.{key}: every point must be a [x, y] pair")
    if not problems:
        from .pc5.radio import RadioParams

        try:
            RadioParams(
                max_range_m=p.max_range_m,
                pdr_curve=tuple((a, b) for a, b in p.pdr_curve),
                base_latency_s=p.base_latency_s,
                jitter_s=p.jitter_s,
                airtime_s=p.airtime_s,
                cbr_window_s=p.cbr_window_s,
                cbr_knee=p.cbr_knee,
                cbr_loss_at_full=p.cbr_loss_at_full,
                dcc_gaps=tuple((a, b) for a, b in p.dcc_gaps),
            )
        except ValueError as err:
            problems.append(f"pc5: {err}")
    for key in ("stale_after", "neighbour_timeout", "cert_interval", "pseudonym_period", "denm_repeat_interval"):
        if not getattr(p, key) > 0:
            problems.append(f"pc5.{key}: must be > 0")
    if not 0 <= p.pseudonym_jitter < p.pseudonym_period:
        problems.append("pc5.pseudonym_jitter: must be within 0..pseudonym_period")
    for key in ("hard_brake_mps2", "stationary_after"):
        if getattr(p, key) < 0:
            problems.append(f"pc5.{key}: must be >= 0 (0 turns it off)")
    if not 0 <= p.denm_repetitions <= 100:
        problems.append("pc5.denm_repetitions: must be within 0..100")
    if not 1 <= p.max_warnings <= 1000:
        problems.append("pc5.max_warnings: must be within 1..1000")
    if not 0 <= p.seed < 2**63:
        problems.append("pc5.seed: must be within 0..2^63-1")
    if p.pseudonym_dir and not Path(p.pseudonym_dir).is_dir():
        problems.append(f"pc5.pseudonym_dir: directory {p.pseudonym_dir} does not exist")
    for did in p.authorities:
        if not did.startswith("did:key:"):
            problems.append(f"pc5.authorities: {did[:60]!r} is not a did:key")
    return problems


def _check_cell(cfg: Config) -> list[str]:
    c = cfg.cell
    problems: list[str] = []
    if c.announce:
        if cfg.agent.role != "rsu":
            problems.append("cell.announce: only an RSU (agent.role = 'rsu') announces a cell")
        if not cfg.mqtt.enabled:
            problems.append("cell.announce: needs mqtt.enabled")
        if not cfg.ledger.genesis_file:
            problems.append("cell.announce: needs ledger.genesis_file (the announcement names the genesis hash)")
        if not c.validator_credential:
            problems.append("cell.validator_credential: required when cell.announce")
        elif not Path(c.validator_credential).is_file():
            problems.append(f"cell.validator_credential: file {c.validator_credential} does not exist")
        if c.area_radius_m <= 0 and not c.area_polygon:
            problems.append("cell.area_radius_m / cell.area_polygon: an announced cell needs an area")
    if not 0 <= c.area_radius_m <= 100_000:
        problems.append(f"cell.area_radius_m: {c.area_radius_m} is outside 0..100000 m")
    if not -90 <= c.area_lat <= 90 or not -180 <= c.area_lon <= 180:
        problems.append("cell.area_lat / cell.area_lon: outside -90..90 / -180..180 degrees")
    if c.area_polygon:
        if len(c.area_polygon) < 3:
            problems.append("cell.area_polygon: needs at least 3 corners [lat, lon]")
        for i, corner in enumerate(c.area_polygon):
            if len(corner) != 2 or not -90 <= corner[0] <= 90 or not -180 <= corner[1] <= 180:
                problems.append(f"cell.area_polygon[{i}]: {list(corner)} is not [lat, lon] in degrees")
    if c.broker_port and not 0 < c.broker_port < 65536:
        problems.append(f"cell.broker_port: {c.broker_port} is not a TCP port")
    if not 0 < c.announce_interval < c.announce_validity:
        problems.append("cell.announce_interval / announce_validity: need 0 < announce_interval < announce_validity")
    if c.admission_ttl <= 0 or c.check_interval <= 0 or c.retry_after <= 0:
        problems.append("cell.admission_ttl, check_interval and retry_after: must be > 0")
    if c.join:
        if cfg.agent.role != "obu":
            problems.append("cell.join: only an OBU (agent.role = 'obu') joins cells")
        if not cfg.mqtt.enabled:
            problems.append("cell.join: needs mqtt.enabled")
        if not c.vehicle_credential:
            problems.append("cell.vehicle_credential: required when cell.join")
        elif not Path(c.vehicle_credential).is_file():
            problems.append(f"cell.vehicle_credential: file {c.vehicle_credential} does not exist")
        if c.require_known_genesis and not (c.genesis_dir or c.genesis_hashes):
            problems.append("cell.require_known_genesis: needs cell.genesis_dir or cell.genesis_hashes")
    if c.genesis_dir and not Path(c.genesis_dir).is_dir():
        problems.append(f"cell.genesis_dir: directory {c.genesis_dir} does not exist")
    for i, h in enumerate(c.genesis_hashes):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
            problems.append(f"cell.genesis_hashes[{i}]: {h!r} is not 64 hex digits (SHA-256)")
    return problems


def _check_behaviour(cfg: Config) -> list[str]:
    b = cfg.behaviour
    problems: list[str] = []
    for key in ("harsh_brake_mps2", "harsh_accel_mps2", "harsh_corner_mps2"):
        value = getattr(b, key)
        if not (value == 0 or 0.5 <= value <= 20):
            problems.append(f"behaviour.{key}: {value} is outside 0.5..20 m/s^2 (0 turns it off)")
        elif value and not 0 <= b.hysteresis_mps2 < value:
            problems.append(f"behaviour.hysteresis_mps2: must be within 0..behaviour.{key}")
    for key in ("harsh_min_duration", "speeding_min_duration", "fatigue_min_duration", "perclos_min_duration"):
        if getattr(b, key) < 0:
            problems.append(f"behaviour.{key}: must be >= 0")
    if b.max_gap <= 0:
        problems.append("behaviour.max_gap: must be > 0")
    if not 0 <= b.speed_limit_kmh <= 500:
        problems.append(f"behaviour.speed_limit_kmh: {b.speed_limit_kmh} is outside 0..500 km/h")
    if not 0 <= b.speed_tolerance_kmh <= 100:
        problems.append(f"behaviour.speed_tolerance_kmh: {b.speed_tolerance_kmh} is outside 0..100 km/h")
    for i, z in enumerate(b.speed_zones):
        where = f"behaviour.speed_zones[{i}]"
        if not 0 < z.limit_kmh <= 500:
            problems.append(f"{where}.limit_kmh: {z.limit_kmh} is outside 0..500 km/h")
        if z.radius_m < 0:
            problems.append(f"{where}.radius_m: must be >= 0")
        if z.radius_m > 0:
            if not -90 <= z.lat <= 90 or not -180 <= z.lon <= 180:
                problems.append(f"{where}.lat / lon: outside -90..90 / -180..180 degrees")
        elif len(z.polygon) < 3:
            problems.append(f"{where}: needs radius_m > 0 or a polygon of at least 3 corners")
        for j, corner in enumerate(z.polygon):
            if len(corner) != 2 or not -90 <= corner[0] <= 90 or not -180 <= corner[1] <= 180:
                problems.append(f"{where}.polygon[{j}]: {list(corner)} is not [lat, lon] in degrees")
    if not 0 <= b.driving_limit_h <= 24:
        problems.append(f"behaviour.driving_limit_h: {b.driving_limit_h} is outside 0..24 h")
    if not 0 < b.break_min <= 24 * 60:
        problems.append(f"behaviour.break_min: {b.break_min} is outside 0..1440 minutes")
    if not 0 < b.fatigue_threshold <= 1:
        problems.append("behaviour.fatigue_threshold: must be within 0..1 (not 0)")
    if not 0.1 <= b.steering_gap_deg <= 45:
        problems.append("behaviour.steering_gap_deg: must be within 0.1..45 degrees")
    if not 0 < b.perclos_threshold < 1:
        problems.append("behaviour.perclos_threshold: must be within 0..1 (exclusive)")
    if not 0 < b.perclos_rate_hz <= 60:
        problems.append("behaviour.perclos_rate_hz: must be within 0..60 (not 0)")
    if b.eye_model and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", b.eye_model):
        problems.append(f"behaviour.eye_model: {b.eye_model!r} is not 'package.module:factory'")
    if not 1 <= b.queue_max <= 100_000:
        problems.append("behaviour.queue_max: must be within 1..100000")
    if b.enabled and cfg.agent.role != "obu":
        problems.append("behaviour.enabled: only an OBU (agent.role = 'obu') sees a vehicle")
    return problems
