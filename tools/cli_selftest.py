"""``acc selftest``: a power-on self test of every device and service the agent's config names.

One line per check: ``PASS``, ``FAIL`` or ``SKIP`` with the reason. Checks: config (validates),
disk (data dir writable, free space), keys (device key present, 0600, parses), can.<name> (open
the bus, receive for ``--can-seconds``), gnss (a fix-bearing sentence within ``--gnss-seconds``),
camera (one frame), mqtt (TCP connect, TLS handshake if configured; no MQTT login), model
(manifest SHA-256).

It runs without the agent. When the agent answers on its diagnostics socket, the devices it reports
holding (its CAN buses by name, its GNSS receiver, its camera) are SKIPped rather than opened a
second time -- a serial receiver or a V4L2 camera cannot be shared, and a second reader would steal
the agent's data; ``--force`` opens them anyway. Their live state is in ``acc status``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent import exitcodes

__all__ = ["Check", "register", "run_checks"]

MIN_FREE_MB = 50.0


@dataclass
class Check:
    name: str
    result: str  # PASS, FAIL, SKIP
    reason: str
    seconds: float = 0.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "selftest",
        help="power-on self test of CAN, GNSS, camera, keys, disk, broker and model",
        description="Exercise each configured device and print PASS/FAIL/SKIP per check. Devices held "
        "by a running agent are skipped unless --force. Exit status: 0 all pass or skip, 1 any "
        "check failed, 78 the configuration is invalid.",
    )
    p.add_argument("--config", help="agent config (default /etc/autochain/agent.toml when it exists)")
    p.add_argument("--socket", type=Path, help="diagnostics socket of a running agent (default: as for acc status)")
    p.add_argument("--force", action="store_true", help="open devices even while the agent runs")
    p.add_argument("--can-seconds", type=float, default=1.0, help="receive time per CAN bus (default 1)")
    p.add_argument("--gnss-seconds", type=float, default=10.0, help="wait this long for a GNSS fix (default 10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


# --- the checks --------------------------------------------------------------------------------


def check_disk(data_dir: Path) -> Check:
    target = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), Path("/"))
    if not os.access(target, os.W_OK | os.X_OK):
        return Check("disk", "FAIL", f"{target} is not writable by uid {os.geteuid()} (data dir {data_dir})")
    if data_dir.exists():
        try:
            with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".selftest-"):
                pass
        except OSError as err:
            return Check("disk", "FAIL", f"cannot write in {data_dir}: {err.strerror or err}")
    free_mb = shutil.disk_usage(target).free / 2**20
    where = str(data_dir) if data_dir.exists() else f"{data_dir} (not there yet; the agent creates it)"
    if free_mb < MIN_FREE_MB:
        return Check("disk", "FAIL", f"{where}: only {free_mb:.0f} MiB free (need {MIN_FREE_MB:.0f})")
    return Check("disk", "PASS", f"{where} writable, {free_mb / 1024:.1f} GiB free")


def check_keys(data_dir: Path, needed: bool) -> Check:
    from agent.keystore import DeviceKeyMissing, KeyStoreError, inspect_device_key

    try:
        report = inspect_device_key(data_dir)
    except DeviceKeyMissing:
        if needed:
            return Check("keys", "FAIL", f"no device key in {data_dir}/keys: run acc keys init")
        return Check("keys", "SKIP", "no device key, and attest is off")
    except KeyStoreError as err:
        return Check("keys", "FAIL", str(err))
    if report.problems:
        return Check("keys", "FAIL", report.problems[0])
    return Check(
        "keys", "PASS", f"{report.identity.key.crv} key, mode {report.mode:04o}: {report.identity.did[:32]}..."
    )


def check_can(bus: Any, seconds: float) -> Check:
    if bus.interface == "socketcan" and not os.path.exists(os.path.join("/sys/class/net", bus.channel)):
        where = f"{bus.interface}:{bus.channel}"
        return Check(
            f"can.{bus.name}", "FAIL", f"{where}: no network interface {bus.channel} (ip link show; not plugged in?)"
        )
    return asyncio.run(_can_one(bus, seconds))


async def _can_one(bus: Any, seconds: float) -> Check:
    from agent.runtime import build_can_port
    from hal.errors import DeviceError

    name = f"can.{bus.name}"
    where = f"{bus.interface}:{bus.channel}"
    try:
        port = build_can_port(bus)
        await port.open()
    except (DeviceError, OSError, ValueError, ImportError) as err:
        return Check(name, "FAIL", f"{where}: {err}")
    try:
        with_frames = 0
        try:
            async with asyncio.timeout(seconds):
                async for _frame in port.frames():
                    with_frames += 1
        except TimeoutError:
            pass
        st = port.stats()
    except DeviceError as err:
        return Check(name, "FAIL", f"{where}: {err}")
    finally:
        await port.close()
    state = getattr(st.state, "value", st.state)
    facts = f"{st.rx_frames} frames, {st.error_frames} error frames in {seconds:g} s, state {state}"
    if str(state).lower() in ("bus_off", "bus-off", "busoff") or st.bus_off_count:
        return Check(name, "FAIL", f"{where}: {facts}")
    if st.rx_frames == 0:
        return Check(name, "PASS", f"{where} open; no traffic in {seconds:g} s (ignition off?)")
    return Check(name, "PASS", f"{where}: {facts}")


async def _gnss(cfg: Any, seconds: float) -> Check:
    from hal.errors import DeviceError
    from hal.types import FixMode

    if cfg.backend == "gpsd":
        from hal.registry import load_backend

        source = load_backend("gnss", "gpsd")(host=cfg.host, port=cfg.port)
        where = f"gpsd {cfg.host}:{cfg.port}"
    else:
        from drivers.gnss_stream import open_nmea_source

        source = open_nmea_source(cfg.device, baudrate=cfg.baudrate, pace=0, ready_timeout=None)
        where = cfg.device
    fixes = 0
    try:
        async with asyncio.timeout(seconds):
            await source.open()
            async for fix in source.fixes():
                fixes += 1
                if fix.mode >= FixMode.FIX_2D and fix.lat is not None:
                    return Check(
                        "gnss", "PASS", f"{where}: {int(fix.mode)}D fix at {fix.lat:.5f}, {fix.lon:.5f} ({fix.time})"
                    )
        return Check("gnss", "FAIL", f"{where}: input ended after {fixes} report(s), none with a fix")
    except TimeoutError:
        counters = source.counters()
        return Check(
            "gnss",
            "FAIL",
            f"{where}: no fix within {seconds:g} s ({counters.get('sentences', 0)} sentences, {fixes} reports)",
        )
    except (DeviceError, OSError) as err:
        return Check("gnss", "FAIL", f"{where}: {err}")
    finally:
        await source.close()


def check_camera(cfg: Any) -> Check:
    from tools.cli_camera import probe_camera

    if cfg.backend == "none":
        return Check("camera", "SKIP", "camera.backend is 'none'")
    report, _frame = probe_camera(cfg)
    if not report["ok"]:
        return Check("camera", "FAIL", f"{cfg.backend} {cfg.path}: {report['error']}")
    return Check(
        "camera", "PASS", f"{cfg.backend} {cfg.path}: {report['width']}x{report['height']} {report['pixel_format']}"
    )


def check_mqtt(m: Any) -> Check:
    if not m.enabled:
        return Check("mqtt", "SKIP", "mqtt.enabled is false")
    where = f"{m.host}:{m.port}"
    t0 = time.monotonic()
    try:
        raw = socket.create_connection((m.host, m.port), timeout=m.connect_timeout)
    except OSError as err:
        return Check("mqtt", "FAIL", f"{where}: TCP connect failed: {err.strerror or err}")
    tcp_ms = (time.monotonic() - t0) * 1000
    with raw:
        if not m.tls:
            return Check("mqtt", "PASS", f"{where}: TCP connect in {tcp_ms:.0f} ms (plain; login not tried)")
        try:
            ctx = ssl.create_default_context(cafile=m.ca_file or None)
            if not m.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if m.cert_file:
                ctx.load_cert_chain(m.cert_file, m.key_file)
            raw.settimeout(m.connect_timeout)
            with ctx.wrap_socket(raw, server_hostname=m.host) as tls:
                version = tls.version()
        except (ssl.SSLError, OSError) as err:
            return Check("mqtt", "FAIL", f"{where}: TLS handshake failed: {err}")
    return Check("mqtt", "PASS", f"{where}: TCP {tcp_ms:.0f} ms, {version} handshake ok (login not tried)")


def check_model(cfg: Any) -> Check:
    from models.manifest import ManifestError, default_manifest
    from tools.cli_model import manifest_check

    try:
        path = Path(cfg.fl.model_manifest) if cfg.fl.model_manifest else default_manifest("dbm")
    except ManifestError as err:
        return Check("model", "FAIL", str(err))
    r = manifest_check(path)
    if not r["ok"]:
        return Check("model", "FAIL", r.get("error", "?"))
    return Check("model", "PASS", f"{r['name']}-{r['version']}: sha256 {r['sha256'][:16]}... matches")


def _agent_devices(sock: Path | None) -> tuple[int, set[str]] | None:
    """(pid, names of the checks whose devices the running agent holds), or None: no agent."""
    from agent.diagnostics import DiagError, query
    from tools.cli_status import find_socket

    path = find_socket(sock)
    if path is None:
        return None
    try:
        st = query(path, "status", timeout=2.0)
    except DiagError:
        return None
    held = {f"can.{name}" for name in st.get("can") or {}}
    held |= {name for name in ("gnss", "camera") if st.get(name)}
    return int(st.get("pid") or 0), held


def run_checks(args: argparse.Namespace) -> tuple[list[Check], int]:
    from agent.config import ConfigError, load_config
    from tools.cli_offline import config_path

    path = config_path(args.config)
    t0 = time.monotonic()
    try:
        cfg = load_config(path)
    except ConfigError as err:
        return [Check("config", "FAIL", " / ".join(err.problems) or str(err))], exitcodes.CONFIG
    checks = [Check("config", "PASS", f"{path or 'built-in defaults'} is valid", time.monotonic() - t0)]

    def timed(fn: Any, *a: Any) -> Check:
        t = time.monotonic()
        c: Check = fn(*a)
        c.seconds = round(time.monotonic() - t, 2)
        return c

    data_dir = Path(cfg.agent.data_dir)
    checks.append(timed(check_disk, data_dir))
    checks.append(timed(check_keys, data_dir, cfg.attest.enabled or cfg.mqtt.enabled))
    agent = None if args.force else _agent_devices(args.socket)
    pid, busy = agent if agent is not None else (0, set())
    held = f"in use by the running agent (pid {pid}): see acc status, or --force"
    for bus in cfg.can:
        if f"can.{bus.name}" in busy:
            checks.append(Check(f"can.{bus.name}", "SKIP", held))
        else:
            checks.append(timed(check_can, bus, args.can_seconds))
    if cfg.gnss.backend == "none":
        checks.append(Check("gnss", "SKIP", "gnss.backend is 'none'"))
    elif "gnss" in busy:
        checks.append(Check("gnss", "SKIP", held))
    else:
        checks.append(timed(lambda: asyncio.run(_gnss(cfg.gnss, args.gnss_seconds))))
    if "camera" in busy and cfg.camera.backend != "none":
        checks.append(Check("camera", "SKIP", held))
    else:
        checks.append(timed(check_camera, cfg.camera))
    checks.append(timed(check_mqtt, cfg.mqtt))
    checks.append(timed(check_model, cfg))
    failed = any(c.result == "FAIL" for c in checks)
    return checks, exitcodes.FAILURE if failed else exitcodes.OK


def render(checks: list[Check], width: int = 80) -> str:
    lines = []
    for c in checks:
        head = f"{c.result:<5} {c.name:<12} "
        body = textwrap.wrap(c.reason, width - len(head)) or [""]
        lines.append(head + body[0])
        lines.extend(" " * len(head) + more for more in body[1:])
    n = {r: sum(c.result == r for c in checks) for r in ("PASS", "FAIL", "SKIP")}
    lines.append(f"\n{n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    checks, code = run_checks(args)
    if args.json:
        out = {"ok": code == exitcodes.OK, "exit": code, "checks": [asdict(c) for c in checks]}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(render(checks))
    return code
