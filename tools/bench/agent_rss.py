"""Agent memory: resident set size of the demo OBU agent (simulated vehicle on virtual CAN +
NMEA pty, full receive/decode/fuse pipeline, diagnostics socket) after ``--seconds`` of
running, next to a bare Python process that imports the same third-party libraries
(python-can, cantools, pyserial) and does nothing.

    python -m tools.bench.agent_rss            # 60 s, the figure in BENCHMARKS.md
    python -m tools.bench.agent_rss --quick    # 15 s
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
BARE = "import asyncio, can, cantools, serial, time; time.sleep(30)"


def rss_after(cmd: list[str], seconds: float) -> tuple[float, float]:
    """(RSS MiB at ``seconds``, peak RSS MiB sampled every 0.5 s) of a child process."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p = psutil.Process(proc.pid)
    peak = 0.0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
            peak = max(peak, p.memory_info().rss / 2**20)
            time.sleep(0.5)
        rss = p.memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rss, max(peak, rss)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float)
    ap.add_argument(
        "--models", action="store_true", help="with [behaviour] on: rules + the TFLite behaviour model running"
    )
    args = ap.parse_args(argv)
    extra = ["--set", "behaviour.enabled=true"] if args.models else []
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory() as tmp:
        agent_rss, agent_peak = rss_after(
            [sys.executable, "-m", "agent.main", "--demo", "--data-dir", tmp, "--duration", str(seconds + 30), *extra],
            seconds,
        )
    bare_rss, _ = rss_after([sys.executable, "-c", BARE], min(seconds, 5.0))
    print(
        f"agent (demo OBU) RSS after {seconds:.0f}s: {agent_rss:.1f} MiB (peak {agent_peak:.1f});"
        f" bare interpreter with the same imports: {bare_rss:.1f} MiB; goal <= 120 MB"
    )
    print(
        json.dumps(
            {
                "figure": "agent_rss_obu_demo" + ("_with_models" if args.models else ""),
                "unit": "MiB",
                "value": round(agent_rss, 1),
                "baseline": round(bare_rss, 1),
                "ratio": round(agent_rss / bare_rss, 3),
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
