"""The real agent as a real process: the demo OBU on the simulated vehicle, its diagnostics
socket read by `acc status`, sd_notify to a socket of ours, and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _wait_for(path: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear within {timeout}s"
        time.sleep(0.05)


def test_demo_agent_serves_status_notifies_systemd_and_stops_on_sigterm(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(notify))
    srv.settimeout(15)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="1000000", WATCHDOG_PID="")
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.main", "--demo", "--data-dir", str(data), "--duration", "60"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sock = data / "diag.sock"
        _wait_for(sock, 20)
        first = srv.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=")
        # let the vehicle drive and the receiver get a fix, then ask like a technician would
        deadline = time.monotonic() + 20
        while True:
            out = subprocess.run(
                [sys.executable, "-m", "tools.acc", "status", "--json", "--socket", str(sock)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
            )
            status = json.loads(out.stdout)
            if status["overall"] == "ok" and status["gnss"]["mode"] == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert out.returncode == 0, out.stderr
        assert status["role"] == "obu" and status["node_id"] == "demo-obu"
        assert set(status["health"]) >= {"can.can0", "can.can1", "gnss"}
        assert all(h["status"] == "ok" for h in status["health"].values()), status["health"]
        assert status["can"]["can0"]["rx_frames"] > 100 and status["can"]["can0"]["decode_errors"] == 0
        assert status["state"]["speed"] is not None and status["state"]["lat"] is not None
        human = subprocess.run(
            [sys.executable, "-m", "tools.acc", "status", "--socket", str(sock)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "overall   OK" in human.stdout and "can.can0" in human.stdout
        msgs = []
        srv.settimeout(3)
        for _ in range(3):
            msgs.append(srv.recv(4096).decode())
        assert "WATCHDOG=1" in msgs
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 5.0, "clean shutdown took more than 5 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        srv.close()
    assert proc.returncode == 0, stderr
    assert "summary" in stdout and "0 undecodable" in stdout
    assert not sock.exists()  # the socket is removed on the way out


def test_status_without_agent_exits_69(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.acc", "status", "--socket", str(tmp_path / "none.sock")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 69
    assert "is acc-agent running" in out.stderr
