"""tools/install.sh staged into tmp_path (--destdir): never the real /, never systemctl.

The default run uses ``--skip-venv`` (a stub venv): a real venv pip-installs numpy, LiteRT and
the rest (14 s here with a warm pip cache, minutes on a Pi or with a cold cache, and it needs
the package index), so that one is marked slow.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config

REPO = Path(__file__).resolve().parents[1]
INSTALLER = REPO / "tools" / "install.sh"
SYSTEM_TOOLS = ("systemctl", "systemd-sysusers", "systemd-tmpfiles", "udevadm")
CREDENTIAL = "/run/credentials/autochain-agent.service/mqtt.pass"


class Staging:
    """A DESTDIR plus PATH stubs that record any call of a system tool (there must be none)."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.calls = tmp_path / "system-calls.log"
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        for tool in SYSTEM_TOOLS:
            script = stubs / tool
            script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{self.calls}"\n')
            script.chmod(0o755)
        self.env = {**os.environ, "PATH": f"{stubs}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def run(self, *args: str, ok: bool = True, venv: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", str(INSTALLER), *args, "--destdir", str(self.root)]
        if not venv:
            cmd.append("--skip-venv")
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=600)
        if ok:
            assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        else:
            assert proc.returncode != 0, f"{args} should have failed\n{proc.stdout}"
        assert not self.calls.exists(), f"DESTDIR mode called system tools: {self.calls.read_text()}"
        return proc

    @property
    def opt(self) -> Path:
        return self.root / "opt" / "autochain"

    def link(self, name: str) -> str | None:
        p = self.opt / name
        return os.readlink(p) if p.is_symlink() else None

    def releases(self) -> set[str]:
        return {p.name for p in (self.opt / "releases").iterdir()}


@pytest.fixture
def stage(tmp_path: Path) -> Staging:
    return Staging(tmp_path)


def test_bash_syntax() -> None:
    for script in (INSTALLER, REPO / "systemd" / "autochain-can-up"):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(
        ["shellcheck", str(INSTALLER), str(REPO / "systemd" / "autochain-can-up")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_install_writes_the_layout(stage: Staging) -> None:
    out = stage.run("install").stdout
    r = stage.root
    for rel in (
        "etc/systemd/system/autochain-agent.service",
        "etc/systemd/system/autochain-can@.service",
        "usr/lib/sysusers.d/autochain.conf",
        "usr/lib/tmpfiles.d/autochain.conf",
        "etc/udev/rules.d/90-autochain-can.rules",
    ):
        assert (r / rel).is_file(), rel
    assert (r / "etc/systemd/system/autochain-agent.service").read_text() == (
        REPO / "systemd" / "autochain-agent.service"
    ).read_text()
    assert stage.link("current") == "releases/0.1.0"  # relative: valid inside and outside DESTDIR
    assert stage.link("previous") is None
    release = stage.opt / "releases" / "0.1.0"
    assert os.access(release / "venv" / "bin" / "acc-agent", os.X_OK)
    assert os.access(release / "libexec" / "autochain-can-up", os.X_OK)
    assert (stage.opt / "current" / "share" / "systemd" / "autochain-agent.service").is_file()
    # config template: valid, mode 0640, pointing mqtt.password_file at the unit's credential
    conf = r / "etc/autochain/agent.toml"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert CREDENTIAL in conf.read_text()
    assert '/etc/autochain/mqtt.pass"' not in conf.read_text()
    load_config(conf)  # raises ConfigError if the template does not validate
    secret = r / "etc/autochain/mqtt.pass"
    assert secret.read_bytes() == b"" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((r / "var/lib/autochain").stat().st_mode) == 0o750
    assert stat.S_IMODE((r / "var/lib/autochain/keys").stat().st_mode) == 0o700
    assert "wrote" in out
    for cmd in ("acc", "acc-agent"):  # absolute targets: valid on the box, dangling in the stage
        assert os.readlink(r / "usr/local/bin" / cmd) == f"/opt/autochain/current/venv/bin/{cmd}"


def test_second_install_keeps_config_and_secret(stage: Staging) -> None:
    stage.run("install")
    conf = stage.root / "etc/autochain/agent.toml"
    conf.write_text('[agent]\nrole = "rsu"\n')
    (stage.root / "etc/autochain/mqtt.pass").write_text("s3cret\n")
    out = stage.run("install").stdout
    assert conf.read_text() == '[agent]\nrole = "rsu"\n'
    assert (stage.root / "etc/autochain/mqtt.pass").read_text() == "s3cret\n"
    assert "keeping" in out and "already installed" in out
    assert stage.link("current") == "releases/0.1.0" and stage.link("previous") is None


def test_install_over_another_release_wants_upgrade(stage: Staging) -> None:
    stage.run("install")
    assert "use upgrade" in stage.run("install", "--version", "0.2.0", ok=False).stderr


def test_upgrade_keeps_previous_and_rollback_flips_back(stage: Staging) -> None:
    stage.run("upgrade", ok=False)  # nothing installed yet
    stage.run("install")
    stage.run("upgrade", "--version", "0.2.0")
    assert stage.link("current") == "releases/0.2.0"
    assert stage.link("previous") == "releases/0.1.0"
    assert stage.releases() == {"0.1.0", "0.2.0"}
    assert "already exists" in stage.run("upgrade", "--version", "0.2.0", ok=False).stderr
    stage.run("upgrade", "--version", "0.2.0", "--force")  # rebuild in place
    assert stage.link("current") == "releases/0.2.0" and stage.releases() == {"0.1.0", "0.2.0"}

    stage.run("rollback")
    assert stage.link("current") == "releases/0.1.0"
    assert stage.link("previous") == "releases/0.2.0"
    stage.run("rollback")  # and forward again
    assert stage.link("current") == "releases/0.2.0"

    stage.run("upgrade", "--version", "0.3.0")  # keeps current + previous only
    assert stage.releases() == {"0.2.0", "0.3.0"}
    assert stage.link("previous") == "releases/0.2.0"
    listing = stage.run("list").stdout
    assert "0.3.0 (current)" in listing and "0.2.0 (previous)" in listing


def test_rollback_without_previous_fails(stage: Staging) -> None:
    stage.run("install")
    assert "no previous release" in stage.run("rollback", ok=False).stderr
    assert stage.link("current") == "releases/0.1.0"


def _provision(stage: Staging) -> Path:
    key = stage.root / "var/lib/autochain/keys/device.key"
    key.write_bytes(b"not really a key")
    return key


def test_uninstall_keeps_state_and_config(stage: Staging) -> None:
    stage.run("install")
    stage.run("upgrade", "--version", "0.2.0")
    key = _provision(stage)
    stage.run("uninstall")
    assert not stage.opt.exists()
    assert not (stage.root / "etc/systemd/system/autochain-agent.service").exists()
    assert not (stage.root / "etc/systemd/system/autochain-can@.service").exists()
    assert not (stage.root / "usr/lib/sysusers.d/autochain.conf").exists()
    assert not (stage.root / "usr/lib/tmpfiles.d/autochain.conf").exists()
    assert not (stage.root / "etc/udev/rules.d/90-autochain-can.rules").exists()
    assert key.read_bytes() == b"not really a key"
    assert (stage.root / "etc/autochain/agent.toml").is_file()
    assert not (stage.root / "usr/local/bin/acc").is_symlink()


def test_uninstall_purge_removes_state_and_config(stage: Staging) -> None:
    stage.run("install")
    _provision(stage)
    stage.run("uninstall", "--purge")
    assert not (stage.root / "var/lib/autochain").exists()
    assert not (stage.root / "etc/autochain").exists()
    assert not stage.opt.exists()


def test_unknown_option_and_command(stage: Staging) -> None:
    assert "unknown option" in stage.run("install", "--frobnicate", ok=False).stderr
    proc = subprocess.run(["bash", str(INSTALLER), "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert not stage.root.exists() or not any(stage.root.iterdir())


@pytest.mark.slow
def test_install_with_a_real_venv(stage: Staging) -> None:
    """pip-installs this tree and its dependencies into a staged venv (needs the package index)."""
    if subprocess.run([sys.executable, "-c", "import ensurepip"], capture_output=True).returncode != 0:
        pytest.skip("python3-venv (ensurepip) is not installed")
    stage.run("install", "--from", str(REPO), venv=True)
    agent = stage.opt / "current" / "venv" / "bin" / "acc-agent"
    proc = subprocess.run(
        [str(agent), "--check-config", "-c", str(stage.root / "etc/autochain/agent.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
