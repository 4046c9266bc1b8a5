"""Hardware abstraction layer: interfaces and value types only. Imports nothing of ours."""

from .errors import BackendNotFound, DecodeError, DeviceError, HalError
from .interfaces import Camera, CanPort, Clock, GnssSource, HalDevice
from .registry import available, load_backend, register
from .types import (
    CanBusState,
    CanBusStats,
    CanFilter,
    CanFrame,
    FixMode,
    Frame,
    GnssFix,
    SignalSample,
    VehicleState,
)

__all__ = [
    "BackendNotFound",
    "Camera",
    "CanBusState",
    "CanBusStats",
    "CanFilter",
    "CanFrame",
    "CanPort",
    "Clock",
    "DecodeError",
    "DeviceError",
    "FixMode",
    "Frame",
    "GnssFix",
    "GnssSource",
    "HalDevice",
    "HalError",
    "SignalSample",
    "VehicleState",
    "available",
    "load_backend",
    "register",
]
