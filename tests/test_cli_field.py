"""Field diagnostics: ``acc model``, ``selftest``, ``logs``, ``bundle``, ``camera`` and the offline
``acc status``, against a real demo agent process and with it stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-Field-Pa55word-4711"


def acc(*argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACC_") and k != "RUNTIME_DIRECTORY"}
    return subprocess.run(
        [sys.executable, "-m", "tools.acc", *map(str, argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _nmea(body: str) -> str:
    c = 0
    for ch in body:
        c ^= ord(ch)
    return f"${body}*{c:02X}\r\n"


def nmea_file(path: Path) -> Path:
    lines = []
    for i in range(5):
        t = f"1200{i:02d}.00"
        lines.append(_nmea(f"GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
        lines.append(_nmea(f"GPRMC,{t},A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"))
    path.write_text("".join(lines))
    return path


def image_folder(folder: Path, n: int = 3) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 24), (40 * i, 120, 200)).save(folder / f"frame{i}.png")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_secrets(data_dir: Path) -> list[str]:
    """The device key's PEM text, its body lines and its raw private bytes in hex."""
    from cryptography.hazmat.primitives import serialization

    pem = (data_dir / "keys" / "device.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    body = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return ["PRIVATE KEY", raw.hex(), raw.hex().upper(), *body]


def assert_no_secrets(text: str, secrets: list[str], where: str) -> None:
    for secret in [PASSWORD, *secrets]:
        assert secret not in text, f"{secret[:12]}... leaked into {where}"


def bundle_texts(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A demo agent with MQTT configured (user + password file; no broker: it retries), logging at
    info into a file, as a real process."""
    tmp = tmp_path_factory.mktemp("field")
    data = tmp / "data"
    pw = tmp / "mqtt.pw"
    pw.write_text(PASSWORD + "\n")
    config = tmp / "agent.toml"
    config.write_text(
        f'[agent]\ndata_dir = "{data}"\nlog_level = "info"\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {_free_port()}\ncell = "field-1"\n'
        f'username = "tech"\npassword_file = "{pw}"\nbackoff_max = 1.0\n'
    )
    log = tmp / "agent.log"
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--demo", "--config", str(config), "--data-dir", str(data)]
            + ["--duration", "90"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_fh,
        )
    sock = data / "diag.sock"
    try:
        end = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, "the demo agent did not come up"
            time.sleep(0.05)
        yield {"proc": proc, "tmp": tmp, "data": data, "sock": sock, "config": config, "log": log}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_against_the_running_agent_then_stopped(field: dict[str, Any]) -> None:
    sock, data, config, log, tmp = field["sock"], field["data"], field["config"], field["log"], field["tmp"]
    secrets = key_secrets(data)
    # acc model: the manifest, verified, and the agent's view
    out = acc("model", "--json", "--socket", sock)
    assert out.returncode == 0, out.stderr
    model = json.loads(out.stdout)
    assert model["ok"] and model["sha256"] == model["sha256_actual"] and model["classes"]
    assert model["agent"] is not None and model["agent"]["socket"] == str(sock)
    human = acc("model", "--socket", sock).stdout
    assert "OK: the file matches the manifest" in human and max(map(len, human.splitlines())) <= 100
    # status --json: no password, no key material
    time.sleep(1.0)
    status = acc("status", "--json", "--socket", sock)
    assert status.returncode in (0, 1) and json.loads(status.stdout)["node_id"] == "demo-obu"
    assert_no_secrets(status.stdout + status.stderr, secrets, "acc status --json")
    # selftest while the agent runs: its buses and GNSS are not grabbed
    st = acc("selftest", "--json", "--config", config, "--socket", sock, "--gnss-seconds", "2")
    checks = {c["name"]: c for c in json.loads(st.stdout)["checks"]}
    assert checks["gnss"]["result"] == "SKIP" and "running agent" in checks["gnss"]["reason"]
    assert checks["keys"]["result"] == "PASS" and checks["model"]["result"] == "PASS"
    assert checks["mqtt"]["result"] == "FAIL" and "TCP connect failed" in checks["mqtt"]["reason"]
    assert st.returncode == 1
    # logs from the file
    logs = acc("logs", "--file", log, "-n", "20", "--json")
    assert logs.returncode == 0, logs.stderr
    entries = json.loads(logs.stdout)["entries"]
    assert entries and any(e["level"] == "info" and e["logger"] for e in entries)
    assert_no_secrets(logs.stdout, secrets, "acc logs")
    # bundle with the agent running
    archive = tmp / "online.tar.gz"
    b = acc("bundle", "-o", archive, "--config", config, "--socket", sock, "--log-file", log)
    assert b.returncode == 0, b.stderr
    assert "agent running" in b.stdout and (archive.stat().st_mode & 0o777) == 0o600
    texts = bundle_texts(archive)
    assert {"agent/status.json", "agent/net.json", "config.json", "versions.json", "logs.txt"} <= set(texts)
    for name, text in texts.items():
        assert_no_secrets(text, secrets, f"bundle member {name}")
    cfg = json.loads(texts["config.json"])
    assert cfg["effective"]["mqtt"]["password_file"].endswith("mqtt.pw")  # the path is kept
    assert cfg["effective"]["mqtt"]["username"] == "tech"
    assert json.loads(texts["versions.json"])["acc-agent"]
    assert json.loads(texts["offline.json"])["keys"]["did"].startswith("did:key:")

    # --- stop the agent: everything falls back to the disk ---------------------------------
    proc = field["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not sock.exists()
    off = acc("status", "--socket", sock)
    assert off.returncode == 69
    assert "agent not running: reading state on disk" in off.stdout
    did = json.loads(texts["offline.json"])["keys"]["did"]
    assert did[:60] in off.stdout and "outbox    " in off.stdout
    assert max(len(line) for line in off.stdout.splitlines() if str(tmp) not in line) <= 80
    off_json = acc("status", "--json", "--socket", sock, "--data-dir", data)
    assert off_json.returncode == 69
    rep = json.loads(off_json.stdout)
    assert rep["agent_running"] is False and rep["keys"]["did"] == did
    assert rep["outbox"]["pending"] + rep["outbox"]["sent_unconfirmed"] + rep["outbox"]["retired"] >= 0
    assert_no_secrets(off.stdout + off_json.stdout, secrets, "offline status")
    archive2 = tmp / "offline.tar.gz"
    b2 = acc("bundle", "-o", archive2, "--config", config, "--socket", sock, "--log-file", log, "--json")
    assert b2.returncode == 0 and json.loads(b2.stdout)["agent_running"] is False
    texts2 = bundle_texts(archive2)
    assert not any(name.startswith("agent/") for name in texts2)
    assert json.loads(texts2["offline.json"])["keys"]["did"] == did
    for name, text in texts2.items():
        assert_no_secrets(text, secrets, f"offline bundle member {name}")
    m2 = acc("model", "--json", "--socket", sock)
    assert m2.returncode == 0 and json.loads(m2.stdout)["agent"] is None


def _selftest_config(tmp: Path, *, missing_bus: bool, camera: Path | None = None) -> Path:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    text = (
        f'[agent]\ndata_dir = "{data}"\n[attest]\nenabled = false\n'
        f'[[can]]\nname = "bench"\ninterface = "virtual"\nchannel = "field-selftest-{os.getpid()}"\n'
        f'[gnss]\nbackend = "nmea"\ndevice = "{nmea_file(tmp / "fix.nmea")}"\n'
    )
    if missing_bus:
        text += '[[can]]\nname = "body"\ninterface = "socketcan"\nchannel = "vcan93"\n'
    if camera is not None:
        text += f'[camera]\nbackend = "folder"\npath = "{camera}"\n'
    path = tmp / "selftest.toml"
    path.write_text(text)
    return path


def test_selftest_without_agent(tmp_path: Path) -> None:
    nosock = tmp_path / "none.sock"
    good = _selftest_config(tmp_path, missing_bus=False, camera=image_folder(tmp_path / "cam"))
    out = acc("selftest", "--config", good, "--socket", nosock)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert any(line.startswith("PASS  can.bench") for line in lines)
    flat = " ".join(out.stdout.split())  # long paths wrap onto continuation lines
    assert "PASS gnss" in flat and "3D fix at 48.11730, 11.51667" in flat
    assert "PASS camera" in flat and "32x24 RGB3" in flat
    assert any(line.startswith("SKIP  keys") for line in lines)
    assert any(line.startswith("PASS  model") for line in lines)
    bad = _selftest_config(tmp_path, missing_bus=True)
    out = acc("selftest", "--json", "--config", bad, "--socket", nosock)
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["can.body"]["result"] == "FAIL" and "vcan93" in checks["can.body"]["reason"]
    assert checks["can.bench"]["result"] == "PASS" and checks["gnss"]["result"] == "PASS"
    broken = tmp_path / "broken.toml"
    broken.write_text("[agent]\nrole = 'plane'\n")
    out = acc("selftest", "--config", broken, "--socket", nosock)
    assert out.returncode == 78 and "FAIL  config" in out.stdout and "plane" in out.stdout


def test_camera_probe_and_snapshot(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "frames")
    for name in ("snap.png", "snap.jpg"):
        out = acc("camera", "snapshot", tmp_path / name, "--folder", folder)
        assert out.returncode == 0, out.stderr
        from PIL import Image

        with Image.open(tmp_path / name) as img:
            assert img.size == (32, 24) and img.format == ("PNG" if name.endswith("png") else "JPEG")
    probe = acc("camera", "probe", "--folder", folder, "--json")
    assert probe.returncode == 0 and json.loads(probe.stdout)["frames_in_folder"] == 3
    assert acc("camera", "snapshot", tmp_path / "x.gif", "--folder", folder).returncode == 2
    missing = acc("camera", "probe", "--folder", tmp_path / "nothing")
    assert missing.returncode == 66 and "not a directory" in missing.stderr


def test_logs_file_mode_parses_both_formats(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text(
        "10:00:01 INFO    agent.runtime: agent demo-obu starting as obu\n"
        "10:00:02 WARNING agent.mqtt: broker unreachable\n"
        "<3>agent.ledger_node: block store corrupt\n"
        "a line without a format\n"
    )
    out = acc("logs", "--file", log, "--json")
    entries = json.loads(out.stdout)["entries"]
    assert [e["level"] for e in entries] == ["info", "warning", "err", None]
    assert entries[2]["logger"] == "agent.ledger_node" and entries[2]["message"] == "block store corrupt"
    warn = acc("logs", "--file", log, "-p", "warning", "-n", "3")
    assert warn.returncode == 0 and "starting" not in warn.stdout and "corrupt" in warn.stdout
    assert acc("logs", "--file", log, "--since", "yesterday-ish").returncode == 2
    assert acc("logs", "--source", "file", "--data-dir", tmp_path / "empty").returncode == 66


@pytest.mark.parametrize(
    "argv", [("logs", "-n", "many"), ("camera", "snapshot"), ("selftest", "--can-seconds", "x"), ("model", "--nope")]
)
def test_wrong_arguments_are_a_usage_line(argv: tuple[str, ...]) -> None:
    out = acc(*argv)
    assert out.returncode == 2 and "usage: acc" in out.stderr and "Traceback" not in out.stderr


def test_redaction_keeps_paths_drops_secrets() -> None:
    from tools.cli_bundle import REDACTED, redact, scrub

    cfg = {"mqtt": {"password": "x", "password_file": "/etc/pw", "username": "u", "key_file": "/k"}, "token": "t"}
    assert redact(cfg) == {
        "mqtt": {"password": REDACTED, "password_file": "/etc/pw", "username": "u", "key_file": "/k"},
        "token": REDACTED,
    }
    pem = "a\n-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\nb"
    assert scrub(pem) == "a\n<private key removed>\nb"
