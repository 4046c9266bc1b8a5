"""The agent's data paths end to end in one process, on real python-can virtual buses:
an OBD-II-only car (no DBC) polled through the agent, and a recorded NMEA file as GNSS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.config import load_config
from agent.runtime import Agent
from drivers.can_bus import PythonCanPort
from drivers.clock import SystemClock
from drivers.obd_ecu import ObdEcu, ObdEcuService

POWERTRAIN_DBC = Path(__file__).resolve().parents[2] / "drivers/data/acc_testcar_powertrain.dbc"


async def test_obd_only_car_feeds_vehicle_state(tmp_path: Path) -> None:
    cfg = load_config(
        env={},
        base={
            "agent": {"data_dir": str(tmp_path), "node_id": "obd-car"},
            "can": [{"name": "can0", "interface": "virtual", "channel": "t-obd-agent", "obd": True}],
            "gnss": {"backend": "none"},
        },
    )
    ecu_port = PythonCanPort("ecu", interface="virtual", channel="t-obd-agent")
    ecu = ObdEcu({0x0D: 72.0, 0x0C: 2400.0, 0x11: 30.0, 0x04: 50.0, 0x05: 90.0})

    async def engine_ecu() -> None:
        async with ecu_port:
            await ObdEcuService(ecu_port, SystemClock(), ecu).run()

    agent = Agent(cfg, extra_services=[("ecu", engine_ecu)], handle_signals=False)
    run = asyncio.create_task(agent.run(10.0))
    for _ in range(200):
        await asyncio.sleep(0.02)
        state = agent.state_service.last if agent.state_service else None
        if state is not None and state.speed is not None:
            break
    status = agent.status()
    agent.request_stop()
    await run
    assert state is not None and state.speed == pytest.approx(20.0)  # 72 km/h over OBD PID 0x0D
    assert state.throttle is None or 0 <= state.throttle <= 100
    counters = status["obd"]["can0"]
    assert counters["requests"] > 0 and counters["responses"] > 0 and counters["decode_errors"] == 0


async def test_recorded_nmea_file_as_gnss(tmp_path: Path, refdata: Path) -> None:
    log = refdata / "nmea/gpsd/haicom-305N.log"
    cfg = load_config(
        env={},
        base={
            "agent": {"data_dir": str(tmp_path)},
            "gnss": {"backend": "nmea", "device": str(log), "pace": 0.05},
        },
    )
    agent = Agent(cfg, handle_signals=False)
    run = asyncio.create_task(agent.run(20.0))
    state = None
    for _ in range(400):
        await asyncio.sleep(0.02)
        state = agent.state_service.last if agent.state_service else None
        if state is not None and state.lat is not None:
            break
    agent.request_stop()
    await run
    assert state is not None and state.lat is not None
    # gpsd's own fixes for this log (the .chk): the agent's position is one of them (to ~10 m: it
    # is advanced between fixes by dead reckoning)
    tpvs = [
        json.loads(line)
        for line in (refdata / "nmea/gpsd/haicom-305N.log.chk").read_text().splitlines()
        if line.startswith('{"class":"TPV"') and '"lat"' in line
    ]
    assert min(abs(t["lat"] - state.lat) + abs(t["lon"] - state.lon) for t in tpvs) < 1e-4
    assert agent.health.get("gnss") is not None


async def test_camera_from_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "cabin"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(folder / f"frame{i:03d}.png")
    cfg = load_config(
        env={},
        base={
            "agent": {"data_dir": str(tmp_path)},
            "gnss": {"backend": "none"},
            "camera": {"backend": "folder", "path": str(folder), "fps": 50.0},
        },
    )
    agent = Agent(cfg, handle_signals=False)
    run = asyncio.create_task(agent.run(10.0))
    for _ in range(200):
        await asyncio.sleep(0.02)
        if agent.camera_service is not None and agent.camera_service.frames >= 5:
            break
    status = agent.status()
    agent.request_stop()
    await run
    assert status["camera"]["frames"] >= 5  # the folder loops
    assert status["camera"]["last"]["width"] == 32 and status["camera"]["last"]["height"] == 24
    assert status["health"]["camera.camera"]["status"] == "ok"


async def test_garbage_on_the_bus_is_counted_and_shown_in_health(tmp_path: Path) -> None:
    from hal.types import CanFrame

    cfg = load_config(
        env={},
        base={
            "agent": {"data_dir": str(tmp_path)},
            "can": [{"name": "can0", "interface": "virtual", "channel": "t-garbage", "dbc": str(POWERTRAIN_DBC)}],
            "gnss": {"backend": "none"},
        },
    )
    sender = PythonCanPort("ecu", interface="virtual", channel="t-garbage")
    good = bytes.fromhex("881300000000f000")  # ESP_1: 50.00 km/h
    states: list = []
    agent = Agent(cfg, handle_signals=False, state_sinks=[states.append])
    run = asyncio.create_task(agent.run(20.0))
    await asyncio.wait_for(agent.built.wait(), 10)
    await asyncio.wait_for(agent.can_services[0].opened.wait(), 10)
    async with sender:
        for i in range(60):
            data = good if i % 6 == 0 else b"\x01\x02\x03"  # ESP_1 needs 8 bytes: 50 truncated frames
            await sender.send(CanFrame(0x1A0, data))
        await sender.send(CanFrame(0x7FF, b"\x00"))  # not in the DBC: ignored, not an error
    for _ in range(200):
        await asyncio.sleep(0.02)
        if agent.can_services[0].frames >= 61 and agent.health.get("can.can0").reason.endswith("did not decode"):
            break
    status = agent.status()
    agent.request_stop()
    await run
    can0 = status["can"]["can0"]
    assert can0["frames"] == 61 and can0["decode_errors"] == 50
    assert "ESP_1" in can0["last_error"] and "0x1A0" in can0["last_error"]
    assert status["health"]["can.can0"] == {
        "status": "degraded",
        "reason": "50 of 61 frames did not decode",
        "since": status["health"]["can.can0"]["since"],
    }
    # the good frames among the garbage got through to the fused state
    assert any(s.speed is not None and abs(s.speed - 50 / 3.6) < 0.01 for s in states)
