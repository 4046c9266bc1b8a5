from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import exitcodes
from agent.config import Config, ConfigError, describe, load_config

REPO = Path(__file__).resolve().parents[2]
DBC = REPO / "drivers/data/acc_testcar_powertrain.dbc"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_defaults_need_no_file() -> None:
    cfg = load_config(env={})
    assert isinstance(cfg, Config)
    assert cfg.agent.role == "obu"
    assert cfg.can == ()
    assert cfg.fusion.rate_hz == 10.0


def test_file_env_and_flags_in_that_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[agent]
role = "rsu"
node_id = "rsu-7"
[[can]]
name = "can0"
interface = "virtual"
channel = "x"
dbc = "{DBC}"
filters = [{{id = 0x1A0, mask = 0x7FF}}]
[gnss]
backend = "gpsd"
port = 2948
""",
    )
    cfg = load_config(
        path,
        env={"ACC_GNSS__PORT": "2950", "ACC_AGENT__NODE_ID": "from-env"},
        overrides=["agent.node_id=flag", "can.0.bitrate=250000"],
    )
    assert cfg.agent.role == "rsu"
    assert cfg.agent.node_id == "flag"  # flag beats env beats file
    assert cfg.gnss.port == 2950  # env beats file
    assert cfg.can[0].bitrate == 250000
    assert cfg.can[0].filters[0].id == 0x1A0
    with pytest.raises(AttributeError):
        cfg.agent.role = "obu"  # type: ignore[misc]  # frozen


def test_every_bad_key_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[agent]
role = "car"
shutdown_timout = 3
[[can]]
name = "can0"
interface = "virtual"
bitrate = "fast"
dbc = "/nonexistent.dbc"
[gnss]
backend = "nmea"
baudrate = 4800.5
[camera]
backend = "v4l2"
[bogus]
x = 1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    text = str(info.value)
    problems = info.value.problems
    assert any(p.startswith("agent.role:") and "'car'" in p for p in problems)
    assert any(p.startswith("agent.shutdown_timout: unknown key") for p in problems)
    assert any(p.startswith("can[0].channel: required") for p in problems)
    assert any(p.startswith("can[0].bitrate: expected int") and "'fast'" in p for p in problems)
    assert any(p.startswith("gnss.baudrate: expected int") for p in problems)
    assert any(p.startswith("bogus: unknown key") for p in problems)
    assert "agent.toml" in text


def test_cross_field_checks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[can]]
name = "can0"
interface = "virtual"
channel = "a"
dbc = "/nonexistent.dbc"
[[can]]
name = "can0"
interface = "virtual"
channel = "b"
bitrate = 5
[camera]
backend = "folder"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    problems = info.value.problems
    assert "can[0].dbc: file /nonexistent.dbc does not exist" in problems
    assert any(p.startswith("can[1].name:") and "used by another bus" in p for p in problems)
    assert any(p.startswith("can[1].bitrate:") for p in problems)
    assert any(p.startswith("camera.path: required") for p in problems)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[agent\nrole="), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_override_syntax_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"ACC_AGENT__ROLE": "plane"}, overrides=["no-equals-sign", "can.3.bitrate=1"])
    problems = info.value.problems
    assert any("expected section.key=value" in p for p in problems)
    assert any(p.startswith("agent.role:") for p in problems)


def test_describe_lists_every_setting_with_a_doc() -> None:
    keys = {k: (t, d) for k, t, d in describe()}
    assert "can[].bitrate" in keys and "gnss.device" in keys
    assert all(doc for _, doc in keys.values())


def test_agent_exits_78_on_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nrole = 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.main", "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == exitcodes.CONFIG
    assert "agent.role" in proc.stderr
    ok = write(tmp_path, '[agent]\nrole = "rsu"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "agent.main", "--config", str(ok), "--check-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_the_documented_example_config_is_valid() -> None:
    cfg = load_config(REPO / "docs/agent.example.toml", env={})
    assert [b.name for b in cfg.can] == ["can0", "can1"]
    assert cfg.gnss.device == "/dev/ttyACM0"
