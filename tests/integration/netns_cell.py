"""Run inside a private network namespace (``unshare -n``): brings up lo with a multicast
route, starts a real agent process and a real acc-bench process that talk over python-can's
udp_multicast, asks the agent with ``acc status``, prints the last status as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GROUP = "239.74.163.2"


def main(tmp: str) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], check=True)
    data = Path(tmp) / "data"
    cfg = Path(tmp) / "agent.toml"
    cfg.write_text(
        f"""
[agent]
data_dir = "{data}"
node_id = "netns-obu"
[[can]]
name = "can0"
interface = "udp_multicast"
channel = "{GROUP}"
dbc = "{REPO / "drivers/data/acc_testcar_powertrain.dbc"}"
[gnss]
device = "(set below)"
"""
    )
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.acc_bench",
            "vehicle",
            "--can0",
            f"udp_multicast:{GROUP}",
            "--nmea",
            "pty",
            "--duration",
            "30",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bench.stdout is not None
    first = bench.stdout.readline()
    assert first.startswith("NMEA on "), first + (bench.stderr.read() if bench.stderr else "")
    pty = first.split()[-1]
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.main", "-c", str(cfg), "--set", f'gnss.device="{pty}"', "--duration", "30"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status = {}
    try:
        end = time.monotonic() + 25
        while time.monotonic() < end:
            time.sleep(0.5)
            out = subprocess.run(
                [sys.executable, "-m", "tools.acc", "status", "--json", "--socket", str(data / "diag.sock")],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=20,
            )
            if out.stdout.strip():
                status = json.loads(out.stdout)
                state = status.get("state") or {}
                if state.get("speed") and state.get("lat") and status["can"]["can0"]["frames"] > 500:
                    break
    finally:
        for p in (agent, bench):
            p.terminate()
        for p in (agent, bench):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    print(
        json.dumps(
            {
                "status": status,
                "agent_rc": agent.returncode,
                "agent_stderr": agent.stderr.read() if agent.stderr else "",
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
