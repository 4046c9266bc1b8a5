"""The reference vehicle's DBCs through DbcDecoder: VSS names, our units, multiplexed pages,
bad frames, mapping-file errors, and the unit converter."""

from __future__ import annotations

import math
from pathlib import Path

import cantools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import vss
from drivers.dbc import DbcDecoder, load_mapping
from hal.errors import DecodeError
from hal.types import CanFrame

DATA = Path(__file__).resolve().parent.parent / "drivers" / "data"
POWERTRAIN = DATA / "acc_testcar_powertrain.dbc"
BODY = DATA / "acc_testcar_body.dbc"


@pytest.fixture(scope="module")
def pt() -> DbcDecoder:
    return DbcDecoder(POWERTRAIN, bus="can0")


@pytest.fixture(scope="module")
def body() -> DbcDecoder:
    return DbcDecoder(BODY, bus="can1")


def frame(message: str, signals: dict[str, object], *, dbc: Path = POWERTRAIN, **kw: object) -> CanFrame:
    """Encoded with cantools directly (not through our decoder)."""
    msg = cantools.database.load_file(dbc).get_message_by_name(message)
    return CanFrame(msg.frame_id, msg.encode(signals), channel="can0", **kw)  # type: ignore[arg-type]


def by_name(samples: list) -> dict[str, object]:
    names = [s.name for s in samples]
    assert len(names) == len(set(names))
    return {s.name: s.value for s in samples}


def test_esp_1_in_si(pt: DbcDecoder) -> None:
    f = frame(
        "ESP_1",
        {"VehicleSpeed": 90.0, "LongitudinalAccel": -3.5, "LateralAccel": 1.25, "YawRate": -12.3, "ESP_1_Counter": 7},
        timestamp=1700000000.25,
        monotonic=42.5,
    )
    samples = pt.decode(f)
    got = by_name(samples)
    assert got == pytest.approx(
        {
            "Vehicle.Speed": 25.0,  # 90 km/h
            "Vehicle.Acceleration.Longitudinal": -3.5,
            "Vehicle.Acceleration.Lateral": 1.25,
            "Vehicle.AngularVelocity.Yaw": -12.3,
        }
    )
    units = {s.name: s.unit for s in samples}
    assert units["Vehicle.Speed"] == "m/s" and units["Vehicle.AngularVelocity.Yaw"] == "degrees/s"
    assert all(s.timestamp == 1700000000.25 and s.monotonic == 42.5 and s.source == "can0.ESP_1" for s in samples)


def test_every_powertrain_message(pt: DbcDecoder) -> None:
    got = {}
    got |= by_name(
        pt.decode(
            frame("STEERING_1", {"SteeringWheelAngle": -270.5, "SteeringWheelSpeed": 40.0, "STEERING_1_Counter": 1})
        )
    )
    got |= by_name(
        pt.decode(
            frame(
                "ENGINE_1",
                {
                    "EngineSpeed": 2450.25,
                    "AccelPedalPos": 36.4,
                    "EngineCoolantTemp": 88,
                    "EngineTorque": -20.5,
                    "ENGINE_1_Counter": 3,
                },
            )
        )
    )
    got |= by_name(
        pt.decode(
            frame(
                "BRAKE_1", {"BrakePedalPos": 12.0, "BrakePressure": 35.5, "BrakeLightSwitch": 1, "BRAKE_1_Counter": 0}
            )
        )
    )
    got |= by_name(
        pt.decode(
            frame(
                "WHEEL_SPEEDS",
                {"WheelSpeedFL": 36.0, "WheelSpeedFR": 36.36, "WheelSpeedRL": 35.64, "WheelSpeedRR": 0.0},
            )
        )
    )
    got |= by_name(pt.decode(frame("GEARBOX_1", {"GearLever": "R", "CurrentGear": -1, "TransmissionOilTemp": 71})))
    assert got == pytest.approx(
        {
            "Vehicle.Chassis.SteeringWheel.Angle": -270.5,
            "can0.STEERING_1.SteeringWheelSpeed": 40.0,
            "Vehicle.Powertrain.CombustionEngine.Speed": 2450.25,
            "Vehicle.Chassis.Accelerator.PedalPosition": 36.4,
            "Vehicle.Powertrain.CombustionEngine.ECT": 88.0,
            "Vehicle.Powertrain.CombustionEngine.Torque": -20.5,
            "Vehicle.Chassis.Brake.PedalPosition": 12.0,
            "can0.BRAKE_1.BrakePressure": 3550.0,  # 35.5 bar in kPa
            "can0.BRAKE_1.BrakeLightSwitch": 1,
            "Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed": 10.0,
            "Vehicle.Chassis.Axle.Row1.Wheel.Right.Speed": 10.1,
            "Vehicle.Chassis.Axle.Row2.Wheel.Left.Speed": 9.9,
            "Vehicle.Chassis.Axle.Row2.Wheel.Right.Speed": 0.0,
            "Vehicle.Powertrain.Transmission.SelectedGear": -1,
            "Vehicle.Powertrain.Transmission.CurrentGear": -1,
            "Vehicle.Powertrain.Transmission.Temperature": 71.0,
        }
    )
    assert isinstance(got["Vehicle.Powertrain.Transmission.CurrentGear"], int)


def test_gear_lever_positions(pt: DbcDecoder) -> None:
    expect = {"P": 126, "R": -1, "N": 0, "D": 127, "S": 127}
    for lever, gear in expect.items():
        got = by_name(pt.decode(frame("GEARBOX_1", {"GearLever": lever, "CurrentGear": 0, "TransmissionOilTemp": 20})))
        assert got["Vehicle.Powertrain.Transmission.SelectedGear"] == gear
    before = pt.counters["unmapped_value"]
    got = by_name(pt.decode(frame("GEARBOX_1", {"GearLever": "Invalid", "CurrentGear": 0, "TransmissionOilTemp": 20})))
    assert "Vehicle.Powertrain.Transmission.SelectedGear" not in got
    assert pt.counters["unmapped_value"] == before + 1


def test_vehicle_status_pages(pt: DbcDecoder) -> None:
    page0 = by_name(pt.decode(frame("VEHICLE_STATUS", {"StatusMux": 0, "Odometer": 123456.7})))
    assert page0 == pytest.approx({"Vehicle.TraveledDistance": 123456700.0})
    page1 = by_name(
        pt.decode(
            frame("VEHICLE_STATUS", {"StatusMux": 1, "FuelLevel": 62.4, "AmbientAirTemp": -7.5, "BatteryVoltage": 12.6})
        )
    )
    assert page1 == pytest.approx(
        {
            "Vehicle.Powertrain.FuelSystem.RelativeLevel": 62.4,
            "Vehicle.Exterior.AirTemperature": -7.5,
            "Vehicle.LowVoltageBattery.CurrentVoltage": 12.6,
        }
    )
    page2 = by_name(
        pt.decode(
            frame(
                "VEHICLE_STATUS",
                {
                    "StatusMux": 2,
                    "TirePressureFL": 240,
                    "TirePressureFR": 244,
                    "TirePressureRL": 228,
                    "TirePressureRR": 1020,
                },
            )
        )
    )
    assert page2 == pytest.approx(
        {
            "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure": 240,
            "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure": 244,
            "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure": 228,
            "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure": 1020,
        }
    )
    # a page the DBC does not define: a decode error of kind "mux"
    with pytest.raises(DecodeError, match=r"^can0 0x5E0 VEHICLE_STATUS: .*multiplexer"):
        pt.decode(CanFrame(0x5E0, bytes([7, 0, 0, 0, 0, 0, 0, 0])))
    assert pt.counters["error.mux"] >= 1


def test_wrong_length_raises_names_and_counts() -> None:
    dec = DbcDecoder(POWERTRAIN, bus="can0")
    with pytest.raises(DecodeError) as info:
        dec.decode(CanFrame(0x1A0, bytes(6), channel="can0"))
    assert info.value.where == "can0 0x1A0 ESP_1"
    assert "6 data bytes" in str(info.value)
    with pytest.raises(DecodeError):
        dec.decode(CanFrame(0x1A0, bytes(16), is_fd=True))  # longer than the DBC's 8 bytes
    assert dec.counters["error.length"] == 2 and dec.counters["errors"] == 2
    assert dec.counters["decoded"] == 0
    assert dec.decode(CanFrame(0x7FF, bytes(8))) == []
    assert dec.decode(CanFrame(0x1A0, bytes(8), is_extended_id=True)) == []  # same number, 29-bit
    assert dec.counters["unknown_id"] == 2
    assert dec.decode(CanFrame(0x1A0, is_remote_frame=True, remote_dlc=8)) == []
    assert dec.counters["skipped"] == 1
    lenient = DbcDecoder(POWERTRAIN, bus="can0", strict_length=False)
    assert len(lenient.decode(CanFrame(0x3C0, bytes(8)))) == 3  # GEARBOX_1 is 4 bytes


def test_body_bus(body: DbcDecoder) -> None:
    got = by_name(
        body.decode(
            frame(
                "BODY_LIGHTS",
                {
                    "TurnIndicatorLeft": 0,
                    "TurnIndicatorRight": 1,
                    "HazardSwitch": 1,
                    "LowBeam": 1,
                    "HighBeam": 0,
                    "BrakeLight": 1,
                    "WiperMode": "HIGH",
                },
                dbc=BODY,
            )
        )
    )
    assert got == {
        "Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling": False,
        "Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling": True,
        "Vehicle.Body.Lights.Hazard.IsSignaling": True,
        "Vehicle.Body.Lights.Beam.Low.IsOn": True,
        "Vehicle.Body.Lights.Beam.High.IsOn": False,
        "Vehicle.Body.Lights.Brake.IsActive": "ACTIVE",
        "Vehicle.Body.Windshield.Front.Wiping.Mode": "FAST",
    }
    doors = by_name(
        body.decode(
            frame(
                "DOORS",
                {
                    "DoorOpenFL": 1,
                    "DoorOpenFR": 0,
                    "DoorOpenRL": 0,
                    "DoorOpenRR": 1,
                    "TrunkOpen": 1,
                    "DriverSeatBelt": 0,
                },
                dbc=BODY,
            )
        )
    )
    assert doors["Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"] is True
    assert doors["Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen"] is True
    assert doors["Vehicle.Body.Trunk.Rear.IsOpen"] is True
    assert doors["Vehicle.Cabin.Seat.Row1.DriverSide.IsBelted"] is False


@pytest.mark.parametrize("dbc", [POWERTRAIN, BODY])
def test_mapping_covers_every_signal(dbc: Path) -> None:
    entries, _ = load_mapping(dbc.with_name(dbc.stem + ".vss.toml"))
    db = cantools.database.load_file(dbc)
    all_signals = {f"{m.name}.{s.name}" for m in db.messages for s in m.signals}
    raw = all_signals - set(entries)
    # the signals VSS has no name for, and only those, stay raw
    assert raw <= {"STEERING_1.SteeringWheelSpeed", "BRAKE_1.BrakePressure", "BRAKE_1.BrakeLightSwitch"}
    for entry in entries.values():
        if entry.vss is not None:
            assert entry.vss in vss.CATALOGUE


_FUZZ = DbcDecoder(POWERTRAIN, bus="can0")


@given(
    st.sampled_from(sorted(m.frame_id for m in cantools.database.load_file(POWERTRAIN).messages)),
    st.binary(min_size=0, max_size=8),
)
@settings(max_examples=400, deadline=None)
def test_any_payload_decodes_or_raises_decode_error(frame_id: int, data: bytes) -> None:
    try:
        samples = _FUZZ.decode(CanFrame(frame_id, data))
    except DecodeError as err:
        assert err.where.startswith("can0 0x")
        return
    for s in samples:
        assert isinstance(s.value, int | float | str | bool)
        if isinstance(s.value, float):
            assert math.isfinite(s.value)


# ---------------------------------------------------------------------------------- mapping errors


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.vss.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[signals]\n"ESP_1.VehicleSpeed" = "Vehicle.Sped"', "did you mean Vehicle.Speed"),
        (
            '[signals]\n"ESP_1.VehicleSpeeed" = "Vehicle.Speed"',
            "no such signal in acc_testcar_powertrain.dbc: ESP_1.VehicleSpeeed",
        ),
        (
            '[signals]\n"ESP_1.VehicleSpeed" = "Vehicle.Chassis.SteeringWheel.Angle"',
            r"cannot convert 'km/h' \(speed\) to 'degrees' \(angle\)",
        ),
        (
            '[signals]\n"ESP_1.VehicleSpeed" = { vss = "Vehicle.Speed", unit = "furlongs/fortnight" }',
            "unknown unit 'furlongs/fortnight'",
        ),
        (
            '[signals]\n"GEARBOX_1.GearLever" = { vss = "Vehicle.Powertrain.Transmission.SelectedGear", map = { X = 1 } }',  # noqa: E501
            "map key 'X'",
        ),
        (
            '[signals]\n"GEARBOX_1.GearLever" = { vss = "Vehicle.Powertrain.Transmission.SelectedGear", map = { P = "park" } }',  # noqa: E501
            "takes integers",
        ),
        ('[signals]\n"ESP_1.VehicleSpeed" = 3', "expected a VSS name, false, or a table"),
        ("[signals\n", "not valid TOML"),
        ('[options]\nemit_unmapped = "yes"', "emit_unmapped must be true or false"),
    ],
)
def test_bad_mapping_is_refused_at_load(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DecodeError, match=match) as info:
        DbcDecoder(POWERTRAIN, bus="can0", mapping=path)
    assert info.value.where == str(path)


def test_emit_unmapped_false_and_explicit_mapping(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[options]\nemit_unmapped = false\n[signals]\n"ESP_1.VehicleSpeed" = { vss = "Vehicle.Speed", scale = 2.0 }\n',
    )
    dec = DbcDecoder(POWERTRAIN, bus="can0", mapping=path)
    got = by_name(
        dec.decode(
            frame(
                "ESP_1",
                {"VehicleSpeed": 36.0, "LongitudinalAccel": 0, "LateralAccel": 0, "YawRate": 0, "ESP_1_Counter": 0},
            )
        )
    )
    assert got == pytest.approx({"Vehicle.Speed": 20.0})
    none = DbcDecoder(POWERTRAIN, bus="can0", mapping=False)
    raw = by_name(
        none.decode(
            frame(
                "ESP_1",
                {"VehicleSpeed": 36.0, "LongitudinalAccel": 0, "LateralAccel": 0, "YawRate": 0, "ESP_1_Counter": 5},
            )
        )
    )
    assert raw["can0.ESP_1.VehicleSpeed"] == pytest.approx(10.0)
    assert raw["can0.ESP_1.ESP_1_Counter"] == 5


def test_bad_dbc_names_the_file_and_the_cause(tmp_path: Path) -> None:
    bad = tmp_path / "broken.dbc"
    bad.write_text('VERSION ""\nBO_ 100 MSG: 8 X\n SG_ Sig : 0|8@1+ (1,0) [0|255] "" Y\nBO_ this is not a DBC\n')
    with pytest.raises(DecodeError, match=r"broken\.dbc: cantools cannot load it") as info:
        DbcDecoder(bad)
    assert info.value.__cause__ is not None
    with pytest.raises(DecodeError, match="no such DBC file"):
        DbcDecoder(tmp_path / "missing.dbc")


# ---------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "src", "dst", "want"),
    [
        (36.0, "km/h", "m/s", 10.0),
        (36.0, "kph", "m/s", 10.0),
        (10.0, "mph", "m/s", 4.4704),
        (1.0, "g", "m/s^2", 9.80665),
        (2.0, "m/s²", "m/s^2", 2.0),
        (212.0, "degF", "celsius", 100.0),
        (21.5, "°C", "degC", 21.5),
        (273.15, "K", "celsius", 0.0),
        (1.5, "km", "m", 1500.0),
        (2.2, "bar", "kPa", 220.0),
        (101325.0, "Pa", "kPa", 101.325),
        (math.pi, "rad", "deg", 180.0),
        (1.0, "rad/s", "deg/s", 180.0 / math.pi),
        (3000.0, "1/min", "rpm", 3000.0),
        (50.0, "%", "percent", 50.0),
        (3.6, "kg/h", "g/s", 1.0),
    ],
)
def test_unit_conversion(value: float, src: str, dst: str, want: float) -> None:
    assert vss.convert(value, src, dst) == pytest.approx(want)


def test_unit_errors() -> None:
    with pytest.raises(vss.UnitError, match="unknown unit 'parsec'"):
        vss.convert(1.0, "parsec", "m")
    with pytest.raises(vss.UnitError, match=r"'rpm' \(rotational speed\) to 'm/s' \(speed\)"):
        vss.convert(1.0, "rpm", "m/s")
    assert isinstance(vss.UnitError("x"), DecodeError)
    assert vss.canonical_unit("km/h") == "m/s" and vss.canonical_unit("bar") == "kPa"
    assert vss.canonical_unit("Nm") == "Nm" and vss.canonical_unit("furlong") is None


def test_catalogue_units_are_ours() -> None:
    """Every catalogue unit is a known unit in its canonical form (the unit rule)."""
    for sig in vss.CATALOGUE.values():
        assert vss.canonical_unit(sig.unit) == sig.unit, sig.name
    assert vss.CATALOGUE["Vehicle.Speed"].unit == "m/s"
    assert vss.CATALOGUE["Vehicle.TraveledDistance"].unit == "m"
