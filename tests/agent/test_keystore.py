"""The device key store on real files: modes, atomic writes, the refusals and what they say,
the agent refusing to start on an unsafe key file (exit 77), and no private key material in
anything the agent prints, logs or answers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from agent import keystore
from agent.config import load_config
from agent.keystore import (
    DeviceKeyExists,
    DeviceKeyInvalid,
    DeviceKeyMissing,
    KeyStoreError,
    ensure_device_key,
    init_device_key,
    inspect_device_key,
    key_path,
    load_device_key,
    load_identity,
)
from agent.runtime import Agent
from ledger_lite.didkey import base58btc_encode, resolve

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: modes must come from the key store, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o7777


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("curve", ["Ed25519", "P-256"])
def test_init_writes_a_private_pkcs8_key_and_load_reads_it_back(tmp_path: Path, curve: str) -> None:
    key, did = init_device_key(tmp_path, curve)
    path = tmp_path / "keys" / "device.key"
    assert key_path(tmp_path) == path
    assert _mode(path.parent) == 0o700 and _mode(path) == 0o600
    assert path.stat().st_uid == os.geteuid()
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert sorted(os.listdir(path.parent)) == ["device.key"]  # no temporary file left behind
    loaded = load_device_key(tmp_path)
    assert loaded.crv == curve and loaded.public == key.public
    assert resolve(did) == key.public
    resolve(did).verify(loaded.sign(b"boot"), b"boot")
    identity = load_identity(tmp_path)
    assert identity.did == did and identity.curve == curve and identity.path == path
    assert key.private_bytes().hex() not in repr(identity) + repr(identity.key)


def test_init_refuses_to_replace_a_key_without_force(tmp_path: Path) -> None:
    _, did = init_device_key(tmp_path)
    before = key_path(tmp_path).read_bytes()
    with pytest.raises(DeviceKeyExists, match="already exists: use --force to replace it"):
        init_device_key(tmp_path, "P-256")
    assert key_path(tmp_path).read_bytes() == before
    _, new_did = init_device_key(tmp_path, "P-256", force=True)
    assert new_did != did and new_did.startswith("did:key:zDn")
    assert _mode(key_path(tmp_path)) == 0o600
    assert sorted(os.listdir(tmp_path / "keys")) == ["device.key"]


def test_the_link_step_never_replaces_a_key_that_appeared_meanwhile(tmp_path: Path) -> None:
    init_device_key(tmp_path)
    before = key_path(tmp_path).read_bytes()
    with pytest.raises(DeviceKeyExists):
        keystore._write_atomic(key_path(tmp_path), b"other", replace=False, uid_gid=None)
    assert key_path(tmp_path).read_bytes() == before
    assert sorted(os.listdir(tmp_path / "keys")) == ["device.key"]


def test_a_failed_write_leaves_the_old_key_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, did = init_device_key(tmp_path)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(keystore.os, "fsync", broken_fsync)
    with pytest.raises(KeyStoreError, match="Input/output error"):
        init_device_key(tmp_path, force=True)
    monkeypatch.undo()
    assert load_identity(tmp_path).did == did
    assert sorted(os.listdir(tmp_path / "keys")) == ["device.key"]


def test_init_tightens_an_existing_key_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir(mode=0o755)
    os.chmod(tmp_path / "keys", 0o755)
    init_device_key(tmp_path)
    assert _mode(tmp_path / "keys") == 0o700


@pytest.mark.parametrize(
    ("mode", "who"),
    [
        (0o644, "readable by group and others"),
        (0o640, "readable by group"),
        (0o604, "readable by others"),
        (0o660, "readable by group, writable by group"),
        (0o602, "writable by others"),
        (0o700, "executable"),  # owner x only: not a problem ...
    ],
)
def test_unsafe_modes_are_refused_with_the_command_to_fix_them(tmp_path: Path, mode: int, who: str) -> None:
    init_device_key(tmp_path)
    path = key_path(tmp_path)
    os.chmod(path, mode)
    if not mode & 0o077:  # ... the owner's own bits are the owner's business
        load_identity(tmp_path)
        return
    with pytest.raises(KeyStoreError) as info:
        load_identity(tmp_path)
    assert str(info.value) == f"key file {path} is {who} (mode {mode:04o}): run chmod 600 {path}"
    report = inspect_device_key(tmp_path)  # acc keys show still tells what the key is
    assert report.problems == (str(info.value),) and report.mode == mode


def test_unreadable_by_owner(tmp_path: Path) -> None:
    init_device_key(tmp_path)
    os.chmod(key_path(tmp_path), 0o200)
    with pytest.raises(KeyStoreError, match=r"not readable by its owner \(mode 0200\): run chmod 600"):
        load_identity(tmp_path)


def test_a_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    init_device_key(tmp_path)
    path = key_path(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(KeyStoreError) as info:
        load_identity(tmp_path)
    assert str(info.value) == (
        f"key file {path} is owned by nobody (uid 65534), not by the agent's user root (uid 0): run chown root {path}"
    )


def test_key_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    init_device_key(tmp_path)
    os.chmod(tmp_path / "keys", 0o777)
    with pytest.raises(KeyStoreError) as info:
        load_identity(tmp_path)
    d = tmp_path / "keys"
    assert str(info.value) == f"key directory {d} is writable by group and others (mode 0777): run chmod 700 {d}"


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    init_device_key(real)
    (tmp_path / "keys").mkdir(mode=0o700)
    os.symlink(key_path(real), key_path(tmp_path))
    with pytest.raises(KeyStoreError, match="is a symbolic link"):
        load_identity(tmp_path)
    os.unlink(key_path(tmp_path))
    os.rmdir(tmp_path / "keys")
    os.symlink(real / "keys", tmp_path / "keys")
    with pytest.raises(KeyStoreError, match="symbolic link or not a directory"):
        load_identity(tmp_path)


def test_missing_key_says_run_acc_keys_init(tmp_path: Path) -> None:
    with pytest.raises(DeviceKeyMissing) as info:
        load_identity(tmp_path)
    assert str(info.value) == f"no device key at {tmp_path}/keys/device.key: run acc keys init"
    (tmp_path / "keys").mkdir(mode=0o700)
    with pytest.raises(DeviceKeyMissing):
        load_device_key(tmp_path)


def _put(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    path = key_path(tmp_path)
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_files_that_are_not_a_device_key(tmp_path: Path) -> None:
    secret = b"-----BEGIN PRIVATE KEY-----\nTUFURVJJQUwtVEhBVC1NVVNULU5PVC1MRUFL\n-----END PRIVATE KEY-----\n"
    _put(tmp_path, secret)
    with pytest.raises(DeviceKeyInvalid, match="is not a PEM private key") as info:
        load_identity(tmp_path)
    assert b"TUFURVJJQUw" not in str(info.value).encode()  # never echoes the file
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    _put(tmp_path, rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(DeviceKeyInvalid, match="holds a RSA key"):
        load_identity(tmp_path)
    _put(tmp_path, rsa_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw")))
    with pytest.raises(DeviceKeyInvalid, match="is encrypted"):
        load_identity(tmp_path)
    os.unlink(key_path(tmp_path))
    key_path(tmp_path).mkdir(mode=0o700)
    with pytest.raises(KeyStoreError, match="not a regular file"):
        load_identity(tmp_path)


def test_ensure_provisions_once(tmp_path: Path) -> None:
    first = ensure_device_key(tmp_path)
    assert ensure_device_key(tmp_path).did == first.did


# --- the agent -----------------------------------------------------------------------------


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\ndata_dir = "{tmp_path / "data"}"\nnode_id = "t"\n[gnss]\nbackend = "none"\n')
    return cfg


async def test_agent_without_a_key_runs_degraded_and_with_one_shows_its_did(tmp_path: Path) -> None:
    cfg = load_config(env={}, base={"agent": {"data_dir": str(tmp_path)}, "gnss": {"backend": "none"}})
    agent = Agent(cfg, handle_signals=False)
    run = asyncio.create_task(agent.run(5.0))
    await asyncio.sleep(0.05)
    status = agent.status()
    agent.request_stop()
    await run
    assert status["health"]["identity"]["status"] == "degraded"
    assert status["health"]["identity"]["reason"] == "no device key: run acc keys init"
    assert status["did"] is None and agent.identity is None

    _, did = init_device_key(tmp_path)
    agent = Agent(cfg, handle_signals=False)
    run = asyncio.create_task(agent.run(5.0))
    await asyncio.sleep(0.05)
    status = agent.status()
    agent.request_stop()
    await run
    assert status["did"] == did and status["health"]["identity"]["status"] == "ok"
    assert agent.identity is not None and agent.identity.did == did


def test_agent_refuses_to_start_on_a_key_file_others_can_read(tmp_path: Path) -> None:
    init_device_key(tmp_path / "data")
    path = key_path(tmp_path / "data")
    os.chmod(path, 0o644)
    out = subprocess.run(
        [sys.executable, "-m", "agent.main", "-c", str(_config(tmp_path)), "--duration", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 77, out.stderr
    assert (
        f"refusing to start: key file {path} is readable by group and others (mode 0644): run chmod 600 {path}"
        in out.stderr
    )
    assert not (tmp_path / "data" / "diag.sock").exists()


# --- redaction -----------------------------------------------------------------------------


def _private_forms(data_dir: Path) -> dict[str, str]:
    """Every way the private key could show up in text."""
    raw = load_device_key(data_dir).private_bytes()
    pem = key_path(data_dir).read_text()
    body_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    der = base64.b64decode("".join(body_lines))
    forms = {
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "base64": base64.b64encode(raw).decode(),
        "base64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "base58": base58btc_encode(raw),
        "der-hex": der.hex(),
        "pem-body": "".join(body_lines),
        "bytes-repr": repr(raw)[2:-1],
    }
    for i, line in enumerate(body_lines):
        forms[f"pem-line-{i}"] = line
    return forms


def test_no_private_key_material_in_logs_status_or_key_show(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, did = init_device_key(data)
    forms = _private_forms(data)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.main", "--demo", "--data-dir", str(data), "--duration", "20"),
            *("--set", "agent.log_level=debug"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    texts: dict[str, str] = {}
    try:
        sock = data / "diag.sock"
        end = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < end and proc.poll() is None, "the demo agent did not start"
            time.sleep(0.05)
        time.sleep(1.0)  # let it log a while at DEBUG
        acc = [sys.executable, "-m", "tools.acc"]
        status = subprocess.run(
            [*acc, "status", "--json", "--socket", str(sock)], cwd=REPO, capture_output=True, text=True, timeout=30
        )
        show = subprocess.run(
            [*acc, "keys", "show", "--json", "--data-dir", str(data)], cwd=REPO, capture_output=True, text=True
        )
        texts.update(status=status.stdout + status.stderr, show=show.stdout + show.stderr)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    texts.update(stdout=stdout, stderr=stderr)
    assert json.loads(texts["status"])["did"] == did
    assert json.loads(show.stdout)["did"] == did
    assert " DEBUG " in stderr  # the log really was at DEBUG
    for where, text in texts.items():
        for form, value in forms.items():
            assert value not in text, f"private key ({form}) in {where}"
