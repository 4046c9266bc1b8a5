"""``acc can decode`` end to end through ``tools.acc.main`` on real logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REFDATA
from tools.acc import main

CAN = REFDATA / "can"
CSS = CAN / "css-electronics-canmod-gps"
LOG = CSS / "3BA199E2_00000164_00000005-60FEB5A8.candump.log"
MAPPING = Path(__file__).resolve().parent.parent / "drivers" / "data" / "canmod-gps.vss.toml"
SOCIALLEDGE = CAN / "cantools-vectors" / "dbc" / "socialledge.dbc"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["can", "decode", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_real_log_json_with_dbc_per_bus_and_obd(capsys: pytest.CaptureFixture[str], refdata: Path) -> None:
    code, out, err = run(
        capsys, "--dbc-bus", f"can2={CSS / 'canmod-gps.dbc'}", "--vss", str(MAPPING), "--obd", "--json", str(LOG)
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    gnss = [r for r in rows if r.get("message")]
    obd = [r for r in rows if "obd" in r]
    assert len(gnss) == 4846 and len(obd) == 541
    imu = next(r for r in gnss if r["message"] == "gnss_imu")
    assert imu["channel"] == "can2" and imu["id"] == 9
    assert imu["signals"]["AccelerationX"] == {"value": 9.625, "unit": "m/s^2"}  # --vss applies to --dbc only
    speeds = [v for r in obd for v in r["obd"]["values"] if v["pid"] == 0x0D]
    assert len(speeds) == 89 and max(v["value"] for v in speeds) == 53
    assert speeds[0] == {"pid": 13, "name": "Speed", "value": 53, "unit": "km/h", "vss": "Vehicle.Speed"}
    assert "5477 frames read, 5387 decoded" in err
    assert "90 on channels without a DBC: can1" in err


def test_vss_names_shown_with_default_dbc(capsys: pytest.CaptureFixture[str], refdata: Path) -> None:
    code, out, err = run(capsys, "--dbc", str(CSS / "canmod-gps.dbc"), "--vss", str(MAPPING), str(LOG))
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("1627276799.721150 can2 009 gnss_imu: ImuValid=Valid, AccelerationX=9.625 m/s^2")
    assert "[Vehicle.Acceleration.Vertical]" in first
    # without --obd, the OBD responses are ids canmod-gps.dbc does not have
    assert "of ids no DBC has: can1 7E8 (541), can1 17F00010 (90)" in err


def test_candump_text_with_bad_lines(capsys: pytest.CaptureFixture[str], refdata: Path) -> None:
    path = CAN / "cantools-vectors" / "cli_decode" / "test_decode_log_format.input.txt"
    code, out, err = run(capsys, "--dbc", str(SOCIALLEDGE), "--json", "-v", str(path))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["message"] for r in rows] == ["SENSOR_SONARS"] * 3 + ["IO_DEBUG"]
    assert rows[3]["signals"]["IO_DEBUG_test_enum"] == {
        "value": "IO_DEBUG_test2_enum_two",
        "unit": "",
        "raw": 2,
    }
    assert rows[0]["timestamp"] == 1594172461.968006
    assert "skipped: line 4:" in err and "skipped: line 5: error frame" in err
    assert "lines skipped: error_frame 1, malformed 1" in err
    assert "vcan0 1F3 (1)" in err


def test_wrong_length_is_counted(capsys: pytest.CaptureFixture[str], refdata: Path) -> None:
    path = CAN / "cantools-vectors" / "cli_decode" / "test_decode_timestamp_zero.input.txt"
    code, _, err = run(capsys, "--dbc", str(SOCIALLEDGE), "-v", str(path))
    assert code == 0
    assert "not decoded: vcan0 0x064 DRIVER_HEARTBEAT: frame has 8 data bytes" in err
    assert "not decodable: length 1" in err


def test_python_can_formats(capsys: pytest.CaptureFixture[str], refdata: Path) -> None:
    dbc = Path(__file__).resolve().parent.parent / "drivers" / "data" / "acc_testcar_powertrain.dbc"
    asc = CAN / "python-can-logformats" / "data" / "test_CanMessage.asc"
    code, out, _ = run(capsys, "--dbc", str(dbc), str(asc))
    assert code == 0
    assert " 0C8 ENGINE_1: EngineSpeed=" in out and "[Vehicle.Powertrain.CombustionEngine.Speed]" in out


def test_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path, refdata: Path) -> None:
    assert run(capsys, "--obd", str(tmp_path / "missing.log"))[0] == 66
    assert run(capsys, "--dbc", str(tmp_path / "missing.dbc"), str(LOG))[0] == 66
    broken = tmp_path / "broken.dbc"
    broken.write_text("BO_ nonsense\n")
    code, _, err = run(capsys, "--dbc", str(broken), str(LOG))
    assert code == 65 and "broken.dbc" in err
    code, _, err = run(capsys, "--dbc", str(SOCIALLEDGE), str(LOG))  # nothing in it is socialledge's
    assert code == 65 and "nothing decoded" in err
    garbage = tmp_path / "garbage.log"
    garbage.write_text("not a log\nat all\n")
    assert run(capsys, "--obd", str(garbage))[0] == 65
    assert run(capsys, str(LOG))[0] == 2
    assert run(capsys, "--dbc-bus", "can2", str(LOG))[0] == 2
