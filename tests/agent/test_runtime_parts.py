"""Supervisor, health, sd_notify and the diagnostics socket, each with real sockets and a
simulated clock (no sleeping)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path

import pytest

from agent.diagnostics import DiagError, DiagnosticsServer, query
from agent.health import HealthRegistry, Status
from agent.sdnotify import Notifier
from agent.supervisor import Supervisor
from drivers.clock import SimulatedClock


async def test_supervisor_restarts_with_growing_capped_jittered_backoff() -> None:
    clock = SimulatedClock()
    health = HealthRegistry(clock.monotonic)
    sup = Supervisor(health, clock, backoff_initial=1.0, backoff_max=8.0, rng=random.Random(1))
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(clock.monotonic())
        raise RuntimeError("port vanished")

    async def steady() -> None:
        await clock.sleep(1e9)

    sup.add("flaky", flaky)
    sup.add("steady", steady)
    task = asyncio.create_task(sup.run())
    for _ in range(200):
        await clock.advance(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(starts) > 10  # kept restarting, the other service kept running
    assert 0.5 <= gaps[0] <= 1.0  # first delay: initial backoff with jitter in [d/2, d]
    assert max(gaps) <= 8.0  # capped
    assert max(gaps[5:]) > 3.0  # grew
    h = health.get("flaky")
    assert h is not None and h.status is Status.FAILED and "port vanished" in h.reason
    assert sup.services["flaky"].restarts == len(starts)


async def test_supervisor_finished_service_is_not_restarted() -> None:
    clock = SimulatedClock()
    sup = Supervisor(HealthRegistry(clock.monotonic), clock)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    sup.add("once", once)
    await sup.run()  # returns when every service is done
    assert runs == 1 and sup.services["once"].finished


def test_health_rollup_and_summary() -> None:
    t = [0.0]
    h = HealthRegistry(lambda: t[0])
    h.ok("can.can0")
    assert h.overall() is Status.OK
    h.degraded("gnss", "no fix (mode 1)")
    t[0] = 5.0
    h.degraded("gnss", "no fix (mode 1)")
    assert h.get("gnss").since == 0.0  # unchanged state keeps its since
    assert h.overall() is Status.DEGRADED
    h.failed("can.can1", "bus-off")
    assert h.overall() is Status.FAILED
    assert h.summary() == "failed; can.can1 failed: bus-off; gnss degraded: no fix (mode 1)"


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        n = Notifier(str(path))
        assert n.ready("ok (3 subsystems)")
        assert n.watchdog()
        assert n.status("degraded; gnss\nno fix")
        got = [srv.recv(4096).decode() for _ in range(3)]
        n.close()
    assert got == ["READY=1\nSTATUS=ok (3 subsystems)", "WATCHDOG=1", "STATUS=degraded; gnss no fix"]
    assert not Notifier("").ready()  # no NOTIFY_SOCKET: a no-op


async def test_diagnostics_socket_answers_and_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / "diag.sock"
    server = DiagnosticsServer(path)
    server.command("status", lambda req: {"overall": "ok", "n": 3})

    def boom(req: dict) -> None:
        raise ValueError("bad")

    server.command("boom", boom)
    task = asyncio.create_task(server.serve())
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    assert oct(path.stat().st_mode & 0o777) == "0o660"
    result = await asyncio.to_thread(query, path, "status")
    assert result == {"overall": "ok", "n": 3}
    with pytest.raises(DiagError, match="unknown command 'nope'"):
        await asyncio.to_thread(query, path, "nope")
    with pytest.raises(DiagError, match="ValueError: bad"):
        await asyncio.to_thread(query, path, "boom")
    # garbage on the wire gets an error answer, and the server keeps serving
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"{not json\n")
    await writer.drain()
    answer = json.loads(await reader.readline())
    assert answer["ok"] is False and "not JSON" in answer["error"]
    writer.close()
    assert (await asyncio.to_thread(query, path, "status"))["n"] == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not path.exists()


def test_query_without_agent_says_so(tmp_path: Path) -> None:
    with pytest.raises(DiagError, match="is acc-agent running"):
        query(tmp_path / "absent.sock", "status")


def test_rsu_ledger_health_degrades_when_no_block_commits(tmp_path: Path) -> None:
    """A cell whose consensus is stuck (here: a node whose height stays put) shows as degraded
    after ``ledger.stall_after`` seconds, and ok again at the next commit."""
    from types import SimpleNamespace

    from agent.config import load_config
    from agent.runtime import Agent

    clock = SimulatedClock()
    (tmp_path / "g.json").write_text("{}")  # only checked for existence here
    cfg = load_config(
        base={
            "agent": {"role": "rsu", "data_dir": str(tmp_path)},
            "mqtt": {"enabled": True, "cell": "cell-x"},
            "ledger": {"enabled": True, "genesis_file": str(tmp_path / "g.json"), "stall_after": 10.0},
        },
        env={},
    )
    agent = Agent(cfg, clock=clock, handle_signals=False)
    check = agent._ledger_check()  # noqa: SLF001 - the health checker on its own
    node = SimpleNamespace(
        height=5, genesis=SimpleNamespace(chain_id="cell-x"), state=SimpleNamespace(height=6, round=3), peers={}
    )
    agent.ledger = node  # type: ignore[assignment]
    check(100.0)
    assert agent.health.snapshot()["ledger"].status is Status.OK
    check(109.0)
    assert agent.health.snapshot()["ledger"].status is Status.OK
    check(111.0)
    h = agent.health.snapshot()["ledger"]
    assert h.status is Status.DEGRADED and "no block committed for 11 s (height 5" in h.reason and "round 3" in h.reason
    node.height = 6
    check(112.0)
    assert agent.health.snapshot()["ledger"].status is Status.OK
