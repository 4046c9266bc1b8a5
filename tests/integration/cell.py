"""Helpers for cell tests with real processes: RSU agents (``acc-agent`` role rsu, ledger on) on a
real Mosquitto, their genesis, waiting on their diagnostics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.diagnostics import DiagError, query
from agent.keystore import ensure_device_key
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey


class AgentProcess:
    """An ``acc-agent`` child process: ``kill()`` is SIGKILL, ``stop()`` SIGTERM then SIGKILL."""

    proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


class Rsu(AgentProcess):
    def __init__(self, root: Path, i: int, port: int, genesis: Path, cell: str = "cell-rsu") -> None:
        self.cell = cell
        self.name = f"rsu{i}"
        self.dir = root / self.name
        self.sock = self.dir / "diag.sock"
        self.did = ensure_device_key(self.dir).did
        self.conf = self.dir / "agent.toml"
        self.port = port
        self.genesis = genesis
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "agent.log"

    def write_config(self, extra: str = "") -> None:
        self.conf.write_text(
            extra
            + f"""
[agent]
role = "rsu"
node_id = "{self.name}"
data_dir = "{self.dir}"
diag_socket = "{self.sock}"
log_level = "info"
watchdog = false
[attest]
enabled = false
[mqtt]
enabled = true
port = {self.port}
cell = "{self.cell}"
client_id = "{self.cell}-{self.name}"
backoff_max = 1.0
max_payload = 2097152
[ledger]
enabled = true
genesis_file = "{self.genesis}"
block_interval = 0.2
timeout_propose = 1.0
timeout_vote = 0.5
rebroadcast = 1.0
"""
        )

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "--config", str(self.conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def status(self) -> dict[str, Any] | None:
        try:
            return query(self.sock, "ledger", timeout=2.0)  # type: ignore[no-any-return]
        except (DiagError, OSError):
            return None


def wait_for(pred, timeout: float, what: str, rsus: list[Rsu]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in rsus if r.log.exists())
    pytest.fail(f"timed out waiting for {what}; statuses: {[r.status() for r in rsus]}\n{logs}")


def heights(rsus: list[Rsu]) -> dict[str, int]:
    out = {}
    for r in rsus:
        st = r.status() if r.proc is not None else None
        if st is not None:
            out[r.name] = st["height"]
    return out


def write_genesis(
    path: Path, rsus: list[Rsu], chain_id: str, authority: str | None = None, models: tuple[str, ...] = ()
) -> None:
    if authority is None:
        authority = did_key(SigningKey.from_private_bytes("Ed25519", b"\x42" * 32).public)
    genesis = {
        "chain_id": chain_id,
        "genesis_time_ms": int(time.time() * 1000) - 1000,
        "validators": [{"did": r.did, "power": 1} for r in rsus],
        "authorities": {authority: ["road_authority"]},
        **({"models": list(models)} if models else {}),
    }
    path.write_text(json.dumps(genesis))


def start_cell(
    root: Path,
    port: int,
    n: int = 4,
    cell: str = "cell-rsu",
    extra: Any = None,
    authority: str | None = None,
    models: tuple[str, ...] = (),
) -> list[Rsu]:
    """n RSU processes of ``cell`` (chain id = cell id), started and at height 2; ``extra(rsu)``
    gives TOML put before each one's config (top-level tables), ``authority`` the genesis authority."""
    root.mkdir(parents=True, exist_ok=True)
    genesis = root / "genesis.json"
    rsus = [Rsu(root, i, port, genesis, cell) for i in range(n)]
    write_genesis(genesis, rsus, cell, authority, models)
    for r in rsus:
        r.write_config(extra(r) if extra else "")
        r.start()
    wait_for(lambda: len(h := heights(rsus)) == n and min(h.values()) >= 2, 30, f"{cell}: all at height 2", rsus)
    return rsus
