"""``acc status`` verdicts per subsystem against a real demo agent (OBU: CAN, GNSS, keys ok; camera,
models, ledger, network, FL off), its JSON shape and colour rules, the verdict rules for the
answers a demo OBU does not give, and ``acc keys show`` with an expiring and an expired credential."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger_lite.credentials import VehicleCredential, issue_credential
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tools.acc import main
from tools.cli_status import SUBSYSTEMS, judge, overall, render

REPO = Path(__file__).resolve().parents[1]
DAY = 86400.0
VIN = "WVWZZZ1JZXW000001"
ESC = re.compile(r"\x1b\[[0-9;]*m")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ACC_") and k not in ("RUNTIME_DIRECTORY", "NO_COLOR")
    }
    return {**env, **extra}


def acc(*argv: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.acc", *map(str, argv)],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def acc_on_tty(*argv: str | Path, **env: str) -> tuple[int, str]:
    """Run acc with stdout on a pseudo terminal (as a technician's shell has it)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.acc", *map(str, argv)],
        cwd=REPO,
        env=_env(**env),
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode()


def credential(oem: SigningKey, device: str, *, issued: float, expires: float | None) -> bytes:
    return issue_credential(VehicleCredential(device, VIN), oem, now=issued, expires=expires)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A demo OBU as a real process, with a vehicle credential valid for a year in its data dir."""
    tmp = tmp_path_factory.mktemp("verdicts")
    data = tmp / "data"
    (data / "credentials").mkdir(parents=True)
    oem = SigningKey.generate()
    now = time.time()
    (data / "credentials" / "vehicle.cose").write_bytes(
        credential(oem, did_key(SigningKey.generate().public), issued=now - DAY, expires=now + 365 * DAY)
    )
    sock = tmp / "diag.sock"
    log = tmp / "agent.log"
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--demo", "--data-dir", str(data)]
            + ["--set", f"agent.diag_socket={sock}", "--duration", "90"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log_fh,
        )
    try:
        end = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, "the demo agent did not come up"
            time.sleep(0.05)
        # until the receiver has a fix and the buses carry frames
        end = time.monotonic() + 20
        while True:
            out = acc("status", "--json", "--socket", sock)
            verdicts = json.loads(out.stdout)["verdicts"]
            if verdicts["GNSS"]["verdict"] == "ok" and verdicts["CAN"]["verdict"] == "ok":
                break
            assert time.monotonic() < end, out.stdout
            time.sleep(0.5)
        yield {"proc": proc, "sock": sock, "data": data}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_verdicts_of_a_running_obu(agent: dict[str, Any]) -> None:
    out = acc("status", "--json", "--socket", agent["sock"])
    assert out.returncode == 0, out.stdout + out.stderr
    st = json.loads(out.stdout)
    assert st["node_id"] == "demo-obu" and st["verdict"] == "ok"  # the agent's answer is still all there
    verdicts = st["verdicts"]
    assert set(verdicts) == set(SUBSYSTEMS)
    assert all(set(v) == {"verdict", "reason"} and v["reason"] for v in verdicts.values())
    got = {name: v["verdict"] for name, v in verdicts.items()}
    assert got == {
        "CAN": "ok",
        "GNSS": "ok",
        "camera": "off",
        "models": "off",
        "ledger": "off",
        "network": "off",
        "FL": "off",
        "keys": "ok",
    }
    assert "can.can0" in verdicts["CAN"]["reason"] and "load" in verdicts["CAN"]["reason"]
    assert "fix" in verdicts["GNSS"]["reason"]
    assert (
        verdicts["keys"]["reason"].startswith("device key did:key:")
        and "1 credential valid" in verdicts["keys"]["reason"]
    )

    human = acc("status", "--socket", agent["sock"])
    assert human.returncode == 0
    assert "overall   OK" in human.stdout and "\x1b[" not in human.stdout  # not a terminal: no colour
    assert max(map(len, human.stdout.splitlines())) <= 80
    for name in SUBSYSTEMS:
        assert re.search(rf"^{name}\s+{got[name]}\s+\S", human.stdout, re.M), name


def test_colour_only_on_a_terminal_without_no_color(agent: dict[str, Any]) -> None:
    code, text = acc_on_tty("status", "--socket", agent["sock"])
    assert code == 0 and "\x1b[32mok" in text and "\x1b[2moff" in text
    assert max(len(ESC.sub("", line)) for line in text.splitlines()) <= 80
    code, text = acc_on_tty("status", "--socket", agent["sock"], NO_COLOR="1")
    assert code == 0 and "\x1b[" not in text and "overall   OK" in text


def test_expiring_and_expired_credentials_degrade_and_fail_keys(tmp_path: Path) -> None:
    oem, now = SigningKey.generate(), time.time()
    device = did_key(SigningKey.generate().public)
    st = {"did": device, "health": {"identity": {"status": "ok", "reason": device}}}
    extra = {"credentials_dirs": [str(tmp_path)]}
    (tmp_path / "a.cose").write_bytes(credential(oem, device, issued=now - DAY, expires=now + 10 * DAY))
    keys = judge(st, verdicts=extra)["keys"]
    assert keys["verdict"] == "degraded" and "expires in 10 days" in keys["reason"]
    (tmp_path / "b.cose").write_bytes(credential(oem, device, issued=now - 100 * DAY, expires=now - DAY))
    keys = judge(st, verdicts=extra)["keys"]
    assert keys["verdict"] == "failed" and "b.cose expired" in keys["reason"]
    assert judge({"health": {}}, verdicts=extra)["keys"] == {"verdict": "failed", "reason": "no device key"}


def test_network_ledger_fl_models_rules() -> None:
    st: dict[str, Any] = {"did": "did:key:z6Mkx", "health": {}}
    outbox = {"pending": 3, "sent_unconfirmed": 2, "oldest_age_s": 42.0, "evicted": 0, "refused": 0}
    up = {"broker": "10.0.0.1:8883", "mqtt": {"connected": True, "rtt_ms": 12.3}, "outbox": outbox}
    v = judge(st, net=up)["network"]
    assert (
        v["verdict"] == "ok" and "connected, RTT 12 ms" in v["reason"] and "outbox 5 queued, oldest 42s" in v["reason"]
    )
    down = {**up, "mqtt": {"connected": False, "last_error": "refused"}}
    assert judge(st, net=down)["network"]["verdict"] == "degraded"
    stuck = {**up, "outbox": {**outbox, "oldest_age_s": 7200.0}}
    assert judge(st, net=stuck)["network"]["verdict"] == "degraded"
    rsu = {"sync": "in consensus", "is_validator": True, "height": 7, "peers": {"r2": {}}}
    assert judge(st, ledger=rsu)["ledger"] == {"verdict": "ok", "reason": "in consensus, validator (height 7, 1 peers)"}
    assert judge(st, ledger={**rsu, "sync": "catching up"})["ledger"]["verdict"] == "degraded"
    assert "not a validator" in judge(st, ledger={**rsu, "is_validator": False})["ledger"]["reason"]
    obu = {"role": "obu", "cells": {"c1": {"problem": "no genesis match", "trusted_height": 0}}}
    assert judge(st, ledger=obu)["ledger"]["verdict"] == "degraded"
    fl = {"role": "client", "task": "dbm", "model": "ab" * 32, "rounds_done": [1], "refused": {"hash mismatch": 2}}
    v = judge(st, fl=fl)["FL"]
    assert v["verdict"] == "degraded" and "refused models: hash mismatch x2" in v["reason"]
    health = {"behaviour.model": {"status": "degraded", "reason": "no behaviour model: gone"}}
    assert judge({**st, "health": health}, behaviour={})["models"]["verdict"] == "degraded"
    model = {"configured": {}, "model": {"version": "dbm-3", "verified": True}}
    v = judge(st, behaviour={"failures": 0}, verdicts=model)["models"]
    assert v == {"verdict": "ok", "reason": "dbm-3 (manifest verified)"}
    assert judge(st, verdicts={"configured": {"fl": True}})["FL"]["verdict"] == "failed"
    # health entries no subsystem claims still count
    crashed = {**st, "health": {"state": {"status": "failed", "reason": "boom"}}}
    verdicts = judge(crashed)
    assert verdicts["services"]["verdict"] == "failed" and overall(verdicts) == "failed"
    assert "services   failed    state failed: boom" in render(crashed, verdicts)


def test_keys_show_flags_expiring_and_expired_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    device_pem = (tmp_path / "keys" / "device.key").read_text()
    oem, now = SigningKey.generate(), time.time()
    device = did_key(SigningKey.generate().public)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "soon.cose").write_bytes(credential(oem, device, issued=now - DAY, expires=now + 12 * DAY + 3600))
    (creds / "old.cose").write_bytes(credential(oem, device, issued=now - 400 * DAY, expires=now - 5 * DAY + 3600))
    (creds / "long.cose").write_bytes(credential(oem, device, issued=now - DAY, expires=now + 200 * DAY + 3600))

    assert main(["keys", "show", "--data-dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    shown = {Path(c["file"]).name: c for c in json.loads(out)["credentials"]}
    assert {n: (c["state"], c["flagged"]) for n, c in shown.items()} == {
        "soon.cose": ("expiring", True),
        "old.cose": ("expired", True),
        "long.cose": ("ok", False),
    }
    soon = shown["soon.cose"]
    assert soon["kind"] == "vehicle" and soon["subject"] == device and soon["issuer"] == did_key(oem.public)
    assert 12 <= soon["days_left"] < 13 and shown["old.cose"]["days_left"] < 0 and soon["expires"]

    assert main(["keys", "show", "--data-dir", str(tmp_path)]) == 0
    human = capsys.readouterr().out
    assert "credentials  3" in human and "EXPIRES SOON" in human and "(12 days left)" in human
    assert "EXPIRED" in human and "(5 days ago)" in human and "(200 days left)" in human
    assert max(len(line) for line in human.splitlines() if str(tmp_path) not in line) <= 80
    # public data only: neither the device key nor the OEM key
    secrets = [oem.private_bytes().hex(), "PRIVATE KEY"]
    secrets += [line for line in device_pem.splitlines() if line and not line.startswith("-----")]
    for text in (out, human):
        for secret in secrets:
            assert secret not in text
