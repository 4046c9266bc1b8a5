"""systemd/: the agent unit, the CAN bring-up template, sysusers.d/tmpfiles.d snippets, the udev rule.

Settings are parsed and asserted everywhere; ``systemd-analyze verify`` / ``security --offline``,
``systemd-sysusers --root`` and ``systemd-tmpfiles --root`` run against a staging root under
tmp_path when the host has them (skipped with the reason otherwise). Nothing touches the real /.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent import exitcodes

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
AGENT = UNITS / "autochain-agent.service"
CAN = UNITS / "autochain-can@.service"
EXEC = "/opt/autochain/current/venv/bin/acc-agent"
CAN_UP = "/opt/autochain/current/libexec/autochain-can-up"
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
MAX_EXPOSURE = 2.5


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value in order (systemd keys repeat; configparser cannot do that)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values, f"{key}= is not set"
    return values[-1]


def test_agent_unit_settings() -> None:
    unit = parse_unit(AGENT)
    u, s, i = unit["Unit"], unit["Service"], unit["Install"]
    assert one(u, "StartLimitIntervalSec") == "300" and one(u, "StartLimitBurst") == "5"
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": f"{EXEC} --config /etc/autochain/agent.toml",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartSec": "5s",
        "TimeoutStopSec": "15s",
        "User": "autochain",
        "Group": "autochain",
        "StateDirectory": "autochain",
        "StateDirectoryMode": "0750",
        "ConfigurationDirectory": "autochain",
        "RuntimeDirectory": "autochain",
        "RuntimeDirectoryMode": "0750",
        "UMask": "0027",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
        "LoadCredential": "mqtt.pass:/etc/autochain/mqtt.pass",
    }
    for key, value in expected.items():
        assert one(s, key) == value, key
    # the exit codes the agent really uses for "needs a person"
    assert set(one(s, "RestartPreventExitStatus").split()) == {str(exitcodes.NOPERM), str(exitcodes.CONFIG)}
    assert set(one(s, "SupplementaryGroups").split()) == {"dialout", "video"}
    assert set(one(s, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN", "AF_NETLINK"}
    assert s["SystemCallFilter"][0] == "@system-service"
    devices = {tuple(v.split()) for v in s["DeviceAllow"]}
    for cls in ("ttyUSB", "ttyACM", "ttyAMA", "video4linux"):
        assert (f"char-{cls}", "rw") in devices
    assert one(i, "WantedBy") == "multi-user.target"


def test_watchdog_interval_matches_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.sdnotify import watchdog_interval

    sec = int(one(parse_unit(AGENT)["Service"], "WatchdogSec").removesuffix("s"))
    monkeypatch.setenv("WATCHDOG_USEC", str(sec * 1_000_000))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == sec / 2


def test_can_unit_settings() -> None:
    unit = parse_unit(CAN)
    u, s = unit["Unit"], unit["Service"]
    assert one(u, "Before") == "autochain-agent.service"
    assert one(u, "BindsTo") == one(u, "After") == "sys-subsystem-net-devices-%i.device"
    assert one(s, "Type") == "oneshot" and one(s, "RemainAfterExit") == "yes"
    assert one(s, "ExecStart") == f"{CAN_UP} %i"
    assert one(s, "CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert one(unit["Install"], "WantedBy") == "autochain-agent.service"
    rule = (UNITS / "90-autochain-can.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="autochain-can@%k.service"' in rule and 'KERNEL=="can[0-9]*"' in rule


def test_sysusers_and_tmpfiles_snippets() -> None:
    sysusers = [ln.split() for ln in (UNITS / "autochain.sysusers").read_text().splitlines() if ln[:1] not in "#"]
    assert ["u", "autochain", "-"] == sysusers[0][:3]
    assert {("m", "autochain", "dialout"), ("m", "autochain", "video")} <= {tuple(x) for x in sysusers}
    tmpfiles = {
        ln.split()[1]: ln.split() for ln in (UNITS / "autochain.tmpfiles").read_text().splitlines() if ln[:1] not in "#"
    }
    assert tmpfiles["/var/lib/autochain"][:5] == ["d", "/var/lib/autochain", "0750", "autochain", "autochain"]
    assert tmpfiles["/var/lib/autochain/keys"][2] == "0700"
    assert tmpfiles["/etc/autochain/mqtt.pass"][:5] == ["f", "/etc/autochain/mqtt.pass", "0600", "root", "root"]


# --- systemd-analyze on a staging root --------------------------------------------------------


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    return exe


def _host_unit_dir() -> Path:
    for d in HOST_UNIT_DIRS:
        if (d / "sysinit.target").is_file():
            return d
    pytest.skip("no systemd target units on this host to verify against")


def _executable(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


@pytest.fixture
def staged_root(tmp_path: Path) -> Path:
    """A root with the host's targets, our units, and the binaries they run (stubs)."""
    host = _host_unit_dir()
    root = tmp_path / "root"
    lib = root / "usr/lib/systemd/system"
    lib.mkdir(parents=True)
    for target in host.glob("*.target"):
        shutil.copy(target, lib / target.name, follow_symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for unit in (AGENT, CAN):
        shutil.copy(unit, etc / unit.name)
    for binary in (EXEC, CAN_UP, "/usr/sbin/ip"):
        _executable(root / binary.lstrip("/"))
    return root


def test_systemd_analyze_verify(staged_root: Path) -> None:
    exe = _analyze()
    proc = subprocess.run(
        [exe, "verify", "--man=no", f"--root={staged_root}", AGENT.name, "autochain-can@can0.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # unknown keys and bad values are only warnings (exit 0): any output is a finding
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stderr + proc.stdout


def _exposure(exe: str, root: Path, unit: str) -> float:
    proc = subprocess.run(
        [exe, "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_security_exposure(staged_root: Path) -> None:
    exe = _analyze()
    help_text = subprocess.run([exe, "security", "--help"], capture_output=True, text=True).stdout
    if "--offline" not in help_text:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    assert _exposure(exe, staged_root, AGENT.name) <= MAX_EXPOSURE
    # runs as root with CAP_NET_ADMIN for ip(8): still well sandboxed
    assert _exposure(exe, staged_root, "autochain-can@can0.service") <= 3.0


def test_sysusers_and_tmpfiles_apply_to_a_staging_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = shutil.which("systemd-sysusers"), shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers / systemd-tmpfiles are not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for src, dest in (("autochain.sysusers", "sysusers.d"), ("autochain.tmpfiles", "tmpfiles.d")):
        d = root / "usr/lib" / dest
        d.mkdir(parents=True)
        shutil.copy(UNITS / src, d / "autochain.conf")
    proc = subprocess.run([sysusers, f"--root={root}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    passwd = (root / "etc/passwd").read_text()
    user = next(line.split(":") for line in passwd.splitlines() if line.startswith("autochain:"))
    assert user[5] == "/var/lib/autochain" and user[6] == "/usr/sbin/nologin"
    groups = {line.split(":")[0]: line.split(":")[3] for line in (root / "etc/group").read_text().splitlines()}
    assert "autochain" in groups["dialout"].split(",") and "autochain" in groups["video"].split(",")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root needs root to chown to the staged user")
    proc = subprocess.run([tmpfiles, f"--root={root}", "--create", "autochain.conf"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    state = (root / "var/lib/autochain").stat()
    assert stat.S_IMODE(state.st_mode) == 0o750 and state.st_uid == int(user[2])
    assert stat.S_IMODE((root / "var/lib/autochain/keys").stat().st_mode) == 0o700
    secret = (root / "etc/autochain/mqtt.pass").stat()
    assert stat.S_IMODE(secret.st_mode) == 0o600 and secret.st_uid == 0 and secret.st_size == 0


# --- autochain-can-up: the bitrate comes from agent.toml ----------------------------------------


def _can_up(tmp_path: Path, iface: str, toml: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    conf = tmp_path / "agent.toml"
    conf.write_text(toml)
    log = tmp_path / "ip.log"
    ip = tmp_path / "ip"
    ip.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    ip.chmod(0o755)
    full_env = {
        **os.environ,
        "ACC_CONFIG": str(conf),
        "ACC_PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "IP": str(ip),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(UNITS / "autochain-can-up"), iface], env=full_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc, log.read_text().splitlines() if log.exists() else []


BUSES = """
[[can]]
name = "powertrain"
interface = "socketcan"
channel = "can0"
bitrate = 250000

[[can]]
name = "body"
interface = "socketcan"
channel = "can1"
bitrate = 500000
fd = true
data_bitrate = 4000000
"""


def test_can_up_takes_the_bitrate_from_the_agent_config(tmp_path: Path) -> None:
    _, calls = _can_up(tmp_path, "can0", BUSES)
    assert calls == [
        "link set dev can0 down",
        "link set dev can0 type can bitrate 250000 restart-ms 100",
        "link set dev can0 txqueuelen 1000",
        "link set dev can0 up",
    ]


def test_can_up_fd_and_dropin_override(tmp_path: Path) -> None:
    _, calls = _can_up(tmp_path, "can1", BUSES)
    assert calls[1] == "link set dev can1 type can bitrate 500000 restart-ms 100 dbitrate 4000000 fd on"
    (tmp_path / "ip.log").unlink()
    _, calls = _can_up(tmp_path, "can1", BUSES, CAN_BITRATE="125000", CAN_LISTEN_ONLY="yes")
    assert calls[1] == "link set dev can1 type can bitrate 125000 restart-ms 100 listen-only on"


def test_can_up_leaves_unconfigured_interfaces_alone(tmp_path: Path) -> None:
    proc, calls = _can_up(tmp_path, "can7", BUSES)
    assert calls == [] and "left alone" in proc.stderr
