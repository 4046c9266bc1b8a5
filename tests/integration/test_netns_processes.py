"""Two real processes on a real CAN transport: acc-bench drives the simulated vehicle onto
python-can's udp_multicast and into a pty; a separate acc-agent process decodes and fuses it.
Runs only in a private network namespace with loopback alone (the multicast never leaves)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _netns_ok() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.netns
@pytest.mark.skipif(not _netns_ok(), reason="needs root, unshare and ip to make a private network namespace")
def test_bench_and_agent_processes_over_udp_multicast(tmp_path: Path) -> None:
    out = subprocess.run(
        ["unshare", "-n", sys.executable, str(HERE / "netns_cell.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    status = result["status"]
    assert status, result["agent_stderr"]
    assert status["node_id"] == "netns-obu"
    can0 = status["can"]["can0"]
    assert can0["frames"] > 500 and can0["decode_errors"] == 0, can0
    assert status["state"]["speed"] is not None and status["state"]["speed"] > 0
    assert status["gnss"]["mode"] == 3 and status["state"]["lat"] is not None
    assert result["agent_rc"] == 0, result["agent_stderr"]
