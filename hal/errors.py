"""The hardware layer's error tree. Backends translate library errors into these once,
at their boundary (``raise DeviceError(...) from err``)."""

from __future__ import annotations

__all__ = ["BackendNotFound", "DecodeError", "DeviceError", "HalError"]


class HalError(Exception):
    """Base of every error raised by hal/ and drivers/."""


class DeviceError(HalError, OSError):
    """The device is missing, is the wrong device, or failed (bus-off, port gone)."""


class BackendNotFound(HalError, LookupError):
    """No backend of that kind and name is registered or installed."""


class DecodeError(HalError, ValueError):
    """Input from a device or a file could not be decoded; says what and where."""

    def __init__(self, message: str, *, where: str = "", raw: bytes | str | None = None) -> None:
        self.where = where
        self.raw = raw
        super().__init__(f"{where}: {message}" if where else message)
