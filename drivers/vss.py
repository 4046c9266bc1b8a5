"""The VSS signal names the agent uses, the unit each value is carried in, and unit conversion.

Names follow COVESA VSS 4.x/5.0 (``Vehicle.Speed``, ``Vehicle.Powertrain.CombustionEngine.ECT``,
...). A few signals VSS has no name for are *overlay* names of ours (``VssSignal.overlay``):
``Vehicle.CurrentLocation.SpeedOverGround`` (VSS has no GNSS speed) and
``Vehicle.OBD.ActualEngineTorquePercent`` (J1979 PID 0x62, not in VSS's OBD branch).

Unit rule (what ``SignalSample.value`` means for each name): values are SI or VSS's unit,
whichever is coherent SI, and ``SignalSample.unit`` always says which:

* speeds in **m/s** (``Vehicle.Speed``, wheel speeds: VSS says km/h, we carry m/s);
* distances in **m** (odometer: DBCs often say km, we carry m);
* accelerations in **m/s^2**; angles in **degrees** and angular rates in **degrees/s**, as VSS;
* temperatures in **celsius**, as VSS; pedal positions and levels in **percent** (0..100);
* pressures in **kPa** (VSS's unit for tyre pressure, MAP, barometric pressure; J1979's too;
  a DBC in bar or Pa is converted); power in **kW** (VSS's unit);
* engine speed in **rpm**, voltages in V, currents in A, durations in s, torque in Nm,
  mass air flow in g/s;
* booleans and enumerations (gear, wiper mode) carry the VSS value with unit ``""``.

``convert()`` / ``unit_conversion()`` translate a DBC unit string (``"km/h"``, ``"kph"``, ``"mph"``,
``"m/s^2"``, ``"m/s²"``, ``"g"`` (standard gravity), ``"degC"``, ``"°C"``, ``"km"``, ``"bar"``,
``"kPa"``, ``"rpm"``, ``"deg"``, ``"rad"``, ``"%"``, ...) to another unit of the same quantity
and raise ``UnitError`` (a ``DecodeError``) for an unknown unit or a change of quantity.
``canonical_unit()`` gives the unit we carry for any known unit; a signal whose DBC unit is not
known keeps its value and its DBC unit string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from hal.errors import DecodeError

__all__ = [
    "CATALOGUE",
    "UnitError",
    "VssSignal",
    "canonical_unit",
    "convert",
    "quantity_of",
    "unit_conversion",
    "vss_signal",
]


class UnitError(DecodeError):
    """A unit string is unknown, or two units measure different quantities."""


# --------------------------------------------------------------------------------------------
# Units

#: quantity -> the unit we carry it in (VSS unit identifiers)
_CANONICAL: Final[dict[str, str]] = {
    "dimensionless": "",
    "speed": "m/s",
    "acceleration": "m/s^2",
    "length": "m",
    "temperature": "celsius",
    "angle": "degrees",
    "angular_rate": "degrees/s",
    "ratio": "percent",
    "pressure": "kPa",
    "rotational_speed": "rpm",
    "voltage": "V",
    "current": "A",
    "time": "s",
    "torque": "Nm",
    "mass_flow": "g/s",
    "volume_flow": "l/h",
    "power": "kW",
    "frequency": "Hz",
    "volume": "l",
    "mass": "kg",
}

_G0 = 9.80665
_DEG_PER_RAD = 180.0 / math.pi

# alias (lower case, spaces removed) -> (quantity, factor, offset): canonical = v * factor + offset
_UNITS: Final[dict[str, tuple[str, float, float]]] = {}


def _add(quantity: str, factor: float, offset: float, *aliases: str) -> None:
    for alias in aliases:
        _UNITS[_key(alias)] = (quantity, factor, offset)


def _key(unit: str) -> str:
    return unit.strip().replace("²", "^2").replace("μ", "µ").replace("·", ".").replace(" ", "").replace("_", "").lower()


_add("dimensionless", 1.0, 0.0, "", "-", "1")
_add("speed", 1.0, 0.0, "m/s", "mps", "meter/s", "metre/s")
_add("speed", 1 / 3.6, 0.0, "km/h", "kph", "kmh", "km/hr", "kmph", "kilometer/h")
_add("speed", 0.44704, 0.0, "mph", "mi/h")
_add("speed", 1852 / 3600, 0.0, "kn", "kt", "knot", "knots")
_add("speed", 0.01, 0.0, "cm/s")
_add("acceleration", 1.0, 0.0, "m/s^2", "m/s2", "m/s/s", "mps2", "m.s^-2", "m/s**2")
_add("acceleration", _G0, 0.0, "g", "gn", "g0")
_add("length", 1.0, 0.0, "m", "meter", "meters", "metre", "metres")
_add("length", 1000.0, 0.0, "km", "kilometer", "kilometers", "kilometre", "kilometres")
_add("length", 0.01, 0.0, "cm")
_add("length", 0.001, 0.0, "mm")
_add("length", 1609.344, 0.0, "mi", "mile", "miles")
_add("length", 0.3048, 0.0, "ft", "feet")
_add("temperature", 1.0, 0.0, "celsius", "degc", "°c", "c", "degcelsius", "°celsius", "deg.c")
_add("temperature", 5 / 9, -32 * 5 / 9, "fahrenheit", "degf", "°f", "f")
_add("temperature", 1.0, -273.15, "k", "kelvin")
_add("angle", 1.0, 0.0, "degrees", "degree", "deg", "°")
_add("angle", _DEG_PER_RAD, 0.0, "rad", "radian", "radians")
_add("angular_rate", 1.0, 0.0, "degrees/s", "deg/s", "°/s", "deg/sec", "dps", "degree/s")
_add("angular_rate", _DEG_PER_RAD, 0.0, "rad/s", "radian/s", "radians/s")
_add("ratio", 1.0, 0.0, "percent", "%", "pct")
_add("pressure", 1.0, 0.0, "kpa")
_add("pressure", 0.001, 0.0, "pa")
_add("pressure", 0.1, 0.0, "hpa", "mbar")
_add("pressure", 100.0, 0.0, "bar")
_add("pressure", 1000.0, 0.0, "mpa")
_add("pressure", 6.894757293168361, 0.0, "psi")
_add("rotational_speed", 1.0, 0.0, "rpm", "1/min", "u/min", "r/min", "min^-1", "min-1", "rev/min")
_add("voltage", 1.0, 0.0, "v", "volt", "volts")
_add("voltage", 0.001, 0.0, "mv")
_add("current", 1.0, 0.0, "a", "amp", "ampere", "amperes")
_add("current", 0.001, 0.0, "ma")
_add("time", 1.0, 0.0, "s", "sec", "secs", "second", "seconds")
_add("time", 0.001, 0.0, "ms")
_add("time", 1e-6, 0.0, "µs", "us")
_add("time", 60.0, 0.0, "min", "minute", "minutes")
_add("time", 3600.0, 0.0, "h", "hr", "hour", "hours")
_add("torque", 1.0, 0.0, "nm", "n.m", "n*m")
_add("mass_flow", 1.0, 0.0, "g/s")
_add("mass_flow", 1000 / 3600, 0.0, "kg/h")
_add("mass_flow", 1000.0, 0.0, "kg/s")
_add("volume_flow", 1.0, 0.0, "l/h", "l/hr")
_add("power", 1.0, 0.0, "kw")
_add("power", 0.001, 0.0, "w")
_add("frequency", 1.0, 0.0, "hz")
_add("frequency", 1000.0, 0.0, "khz")
_add("volume", 1.0, 0.0, "l", "liter", "litre", "liters", "litres")
_add("volume", 0.001, 0.0, "ml")
_add("mass", 1.0, 0.0, "kg")


def quantity_of(unit: str | None) -> str | None:
    """The quantity a unit string measures (``"speed"``), or ``None`` when it is unknown."""
    entry = _UNITS.get(_key(unit or ""))
    return entry[0] if entry else None


def canonical_unit(unit: str | None) -> str | None:
    """The unit we carry values of this unit's quantity in, or ``None`` for an unknown unit."""
    quantity = quantity_of(unit)
    return _CANONICAL[quantity] if quantity is not None else None


def unit_conversion(from_unit: str | None, to_unit: str | None) -> tuple[float, float]:
    """``(scale, offset)`` with ``value_in_to = value_in_from * scale + offset``.

    Raises ``UnitError`` for an unknown unit or units of different quantities.
    """
    src = _UNITS.get(_key(from_unit or ""))
    dst = _UNITS.get(_key(to_unit or ""))
    for given, entry in ((from_unit, src), (to_unit, dst)):
        if entry is None:
            raise UnitError(f"unknown unit {given!r}; known quantities: {', '.join(sorted(_CANONICAL))}")
    assert src is not None and dst is not None
    if src[0] != dst[0]:
        raise UnitError(
            f"cannot convert {from_unit!r} ({src[0].replace('_', ' ')}) to {to_unit!r} ({dst[0].replace('_', ' ')})"
        )
    # canonical = v*f1 + o1 ; to = (canonical - o2) / f2
    scale = src[1] / dst[1]
    offset = (src[2] - dst[2]) / dst[1]
    return scale, offset


def convert(value: float, from_unit: str | None, to_unit: str | None) -> float:
    """Convert one value between two units of the same quantity (``UnitError`` otherwise)."""
    scale, offset = unit_conversion(from_unit, to_unit)
    return value * scale + offset


# --------------------------------------------------------------------------------------------
# The signals


@dataclass(frozen=True, slots=True)
class VssSignal:
    """A VSS signal as we carry it."""

    name: str
    #: the unit of ``SignalSample.value`` for this name ("" for booleans and enumerations)
    unit: str
    #: "float", "int", "bool" or "str"; decoded values are cast to it
    datatype: str = "float"
    #: VSS's own unit where it differs from ``unit`` (for export to a VSS data broker)
    vss_unit: str | None = None
    #: not a VSS 4.x/5.0 name but one of ours
    overlay: bool = False
    #: allowed values of a "str" signal
    allowed: tuple[str, ...] = ()


def _signals() -> dict[str, VssSignal]:
    sig: list[VssSignal] = [
        VssSignal("Vehicle.Speed", "m/s", vss_unit="km/h"),
        VssSignal("Vehicle.TraveledDistance", "m"),
        VssSignal("Vehicle.Acceleration.Longitudinal", "m/s^2"),
        VssSignal("Vehicle.Acceleration.Lateral", "m/s^2"),
        VssSignal("Vehicle.Acceleration.Vertical", "m/s^2"),
        VssSignal("Vehicle.AngularVelocity.Yaw", "degrees/s"),
        VssSignal("Vehicle.AngularVelocity.Roll", "degrees/s"),
        VssSignal("Vehicle.AngularVelocity.Pitch", "degrees/s"),
        VssSignal("Vehicle.Chassis.SteeringWheel.Angle", "degrees"),
        VssSignal("Vehicle.Chassis.Brake.PedalPosition", "percent"),
        VssSignal("Vehicle.Chassis.Accelerator.PedalPosition", "percent"),
        VssSignal("Vehicle.Powertrain.Transmission.CurrentGear", "", "int"),
        VssSignal("Vehicle.Powertrain.Transmission.SelectedGear", "", "int"),
        VssSignal("Vehicle.Powertrain.Transmission.Temperature", "celsius"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.Speed", "rpm"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.ECT", "celsius"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.EOT", "celsius"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.MAP", "kPa"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.MAF", "g/s"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.TPS", "percent"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.Torque", "Nm"),
        VssSignal("Vehicle.Powertrain.CombustionEngine.IsRunning", "", "bool"),
        VssSignal("Vehicle.Powertrain.FuelSystem.RelativeLevel", "percent"),
        VssSignal("Vehicle.Exterior.AirTemperature", "celsius"),
        VssSignal("Vehicle.LowVoltageBattery.CurrentVoltage", "V"),
        VssSignal("Vehicle.CurrentLocation.Latitude", "degrees"),
        VssSignal("Vehicle.CurrentLocation.Longitude", "degrees"),
        VssSignal("Vehicle.CurrentLocation.Altitude", "m"),
        VssSignal("Vehicle.CurrentLocation.Heading", "degrees"),
        VssSignal("Vehicle.CurrentLocation.HorizontalAccuracy", "m"),
        VssSignal("Vehicle.CurrentLocation.VerticalAccuracy", "m"),
        VssSignal("Vehicle.CurrentLocation.SpeedOverGround", "m/s", overlay=True),
        VssSignal(
            "Vehicle.CurrentLocation.GNSSReceiver.FixType",
            "",
            "str",
            allowed=("NONE", "TWO_D", "THREE_D"),
        ),
        VssSignal("Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling", "", "bool"),
        VssSignal("Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling", "", "bool"),
        VssSignal("Vehicle.Body.Lights.Hazard.IsSignaling", "", "bool"),
        VssSignal("Vehicle.Body.Lights.Beam.Low.IsOn", "", "bool"),
        VssSignal("Vehicle.Body.Lights.Beam.High.IsOn", "", "bool"),
        VssSignal("Vehicle.Body.Lights.Brake.IsActive", "", "str", allowed=("INACTIVE", "ACTIVE", "ADAPTIVE")),
        VssSignal(
            "Vehicle.Body.Windshield.Front.Wiping.Mode",
            "",
            "str",
            allowed=("OFF", "SLOW", "MEDIUM", "FAST", "INTERVAL", "RAIN_SENSOR"),
        ),
        VssSignal("Vehicle.Body.Trunk.Rear.IsOpen", "", "bool"),
        # OBD branch (VSS 4.x), for PIDs with no better place in the tree
        VssSignal("Vehicle.OBD.EngineLoad", "percent"),
        VssSignal("Vehicle.OBD.AbsoluteLoad", "percent"),
        VssSignal("Vehicle.OBD.IntakeTemp", "celsius"),
        VssSignal("Vehicle.OBD.RunTime", "s"),
        VssSignal("Vehicle.OBD.BarometricPressure", "kPa"),
        VssSignal("Vehicle.OBD.ControlModuleVoltage", "V"),
        VssSignal("Vehicle.OBD.FuelPressure", "kPa"),
        VssSignal("Vehicle.OBD.TimingAdvance", "degrees"),
        VssSignal("Vehicle.OBD.RelativeThrottlePosition", "percent"),
        VssSignal("Vehicle.OBD.AcceleratorPositionD", "percent"),
        VssSignal("Vehicle.OBD.RelativeAcceleratorPosition", "percent"),
        VssSignal("Vehicle.OBD.FuelRate", "l/h"),
        VssSignal("Vehicle.OBD.DistanceWithMIL", "m", vss_unit="km"),
        VssSignal("Vehicle.OBD.DistanceSinceDTCClear", "m", vss_unit="km"),
        VssSignal("Vehicle.OBD.ShortTermFuelTrim1", "percent"),
        VssSignal("Vehicle.OBD.LongTermFuelTrim1", "percent"),
        VssSignal("Vehicle.OBD.CommandedEGR", "percent"),
        VssSignal("Vehicle.OBD.ActualEngineTorquePercent", "percent", overlay=True),
        VssSignal("Vehicle.OBD.DriverDemandEngineTorquePercent", "percent", overlay=True),
    ]
    for row, side in ((1, "Left"), (1, "Right"), (2, "Left"), (2, "Right")):
        wheel = f"Vehicle.Chassis.Axle.Row{row}.Wheel.{side}"
        sig.append(VssSignal(f"{wheel}.Speed", "m/s", vss_unit="km/h"))
        sig.append(VssSignal(f"{wheel}.Tire.Pressure", "kPa"))
    for row in (1, 2):
        for side in ("DriverSide", "PassengerSide"):
            sig.append(VssSignal(f"Vehicle.Cabin.Door.Row{row}.{side}.IsOpen", "", "bool"))
            sig.append(VssSignal(f"Vehicle.Cabin.Seat.Row{row}.{side}.IsBelted", "", "bool"))
    return {s.name: s for s in sig}


#: every VSS name the agent produces, by name
CATALOGUE: Final[dict[str, VssSignal]] = _signals()


def vss_signal(name: str) -> VssSignal:
    """The catalogue entry of a name; a ``DecodeError`` suggests the closest names otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, CATALOGUE, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise DecodeError(f"{name!r} is not a VSS name the agent knows (drivers/vss.py){hint}") from None
