"""``acc keys init`` / ``acc keys show`` as a technician runs them: real files, exit codes, and
output that names the DID and the key file but never the private key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.keystore import key_path, load_device_key
from ledger_lite.didkey import resolve
from tools.acc import main

REPO = Path(__file__).resolve().parent.parent


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_init_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "keys", "init", "--data-dir", str(tmp_path))
    assert code == 0
    path = tmp_path / "keys" / "device.key"
    did = out.split()[1]
    assert out.startswith("did       did:key:z6Mk") and f"key file  {path} (mode 0600)" in out
    assert path.stat().st_mode & 0o777 == 0o600
    key = load_device_key(tmp_path)
    assert resolve(did) == key.public

    code, out, _ = _run(capsys, "keys", "show", "--data-dir", str(tmp_path), "--json")
    shown = json.loads(out)
    assert code == 0
    assert shown["did"] == did and shown["curve"] == "Ed25519" and shown["mode"] == "0600" and shown["ok"]
    assert shown["public_key_hex"] == key.public.raw().hex() and shown["key_file"] == str(path)
    code, human, _ = _run(capsys, "keys", "show", "--data-dir", str(tmp_path))
    assert code == 0 and did in human and "check        ok" in human
    secret = key.private_bytes()
    for text in (out, human):
        for form in (secret.hex(), base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode()):
            assert form not in text


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(capsys, "keys", "init", "--data-dir", str(tmp_path))
    old = load_device_key(tmp_path).public
    code, out, err = _run(capsys, "keys", "init", "--data-dir", str(tmp_path), "--curve", "P-256")
    assert code == 1 and out == ""
    assert "already exists: use --force to replace it" in err and "did:key:z6Mk" in err
    assert load_device_key(tmp_path).public == old
    code, out, _ = _run(capsys, "keys", "init", "--data-dir", str(tmp_path), "--curve", "P-256", "--force", "--json")
    result = json.loads(out)
    assert code == 0 and result["curve"] == "P-256" and result["did"].startswith("did:key:zDn")
    assert resolve(result["replaced"]) == old
    assert load_device_key(tmp_path).crv == "P-256"


def test_show_reports_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "keys", "show", "--data-dir", str(tmp_path))
    assert code == 66 and f"no device key at {key_path(tmp_path)}: run acc keys init" in err
    _run(capsys, "keys", "init", "--data-dir", str(tmp_path))
    os.chmod(key_path(tmp_path), 0o644)
    code, out, _ = _run(capsys, "keys", "show", "--data-dir", str(tmp_path), "--json")
    shown = json.loads(out)
    assert code == 77 and not shown["ok"] and shown["mode"] == "0644"
    assert shown["problems"] == [
        f"key file {key_path(tmp_path)} is readable by group and others (mode 0644): run chmod 600 {key_path(tmp_path)}"
    ]
    key_path(tmp_path).write_text("not a key\n")
    os.chmod(key_path(tmp_path), 0o600)
    code, _, err = _run(capsys, "keys", "show", "--data-dir", str(tmp_path))
    assert code == 65 and "is not a PEM private key" in err and "not a key\n" not in err


def test_init_hands_the_key_to_the_agent_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files away")
    code, _, _ = _run(capsys, "keys", "init", "--data-dir", str(tmp_path), "--owner", "nobody")
    assert code == 0
    for p in (tmp_path / "keys", key_path(tmp_path)):
        assert (p.stat().st_uid, p.stat().st_gid) == (65534, 65534)
    code, _, err = _run(capsys, "keys", "init", "--data-dir", str(tmp_path / "x"), "--owner", "no-such-user-here")
    assert code == 77 and "no such user: no-such-user-here" in err


def test_data_dir_from_the_agent_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACC_AGENT__DATA_DIR", str(tmp_path / "box"))
    code, out, _ = _run(capsys, "keys", "init")
    assert code == 0 and str(tmp_path / "box" / "keys" / "device.key") in out


def test_the_installed_entry_point(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.acc", "keys", "init", "--data-dir", str(tmp_path), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["key_file"] == str(tmp_path / "keys" / "device.key")
