"""A Video4Linux2 camera (``/dev/videoN``) as a ``Camera``.

Two layers, chosen deliberately:

* ``open()`` checks the device itself, with ``os.stat`` and one ``VIDIOC_QUERYCAP`` ioctl
  (``query_capabilities``): it must exist, be a character device, answer QUERYCAP (so it is a
  V4L2 node at all) and offer single-planar video capture with streaming I/O — a UVC camera
  also creates a metadata node (``/dev/video1``) that is V4L2 but not a camera. Each failure is
  a ``DeviceError`` that says which. This part needs nothing but the standard library.
* Capture goes through OpenCV's V4L2 backend (``cv2.CAP_V4L2``): mmap streaming, format
  negotiation and MJPEG/YUYV decoding are mature there, and a hand-written ctypes streaming
  loop would be a few hundred lines nobody could test without a camera. The costs: OpenCV
  opens V4L2 devices by *index* only (a path such as ``/dev/v4l/by-id/...`` is resolved to its
  ``videoN`` node first), it does not expose the buffer's sequence number (sequence here counts
  frames read, so frames the driver dropped leave no gap), and it hands out compressed MJPEG
  only with ``CAP_PROP_CONVERT_RGB`` off.

Timestamps: OpenCV reports the V4L2 buffer timestamp as ``CAP_PROP_POS_MSEC``; for drivers
that stamp with ``CLOCK_MONOTONIC`` (UVC and most others) that is ``time.monotonic()``'s
domain, and it is mapped onto the injected clock by the read's age. A driver timestamp that is
not within a few seconds of ``time.monotonic()`` is ignored and the read time used instead.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.clock import SystemClock
from hal.errors import DeviceError
from hal.interfaces import Camera, Clock
from hal.types import Frame

__all__ = [
    "V4L2_CAP_DEVICE_CAPS",
    "V4L2_CAP_META_CAPTURE",
    "V4L2_CAP_STREAMING",
    "V4L2_CAP_VIDEO_CAPTURE",
    "V4L2_CAP_VIDEO_CAPTURE_MPLANE",
    "VIDIOC_QUERYCAP",
    "V4l2Camera",
    "V4l2Capability",
    "check_capture_device",
    "parse_querycap",
    "query_capabilities",
]

log = logging.getLogger(__name__)
TRACE = 5

# linux/videodev2.h
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_VIDEO_OUTPUT = 0x00000002
V4L2_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
V4L2_CAP_VIDEO_M2M = 0x00008000
V4L2_CAP_META_CAPTURE = 0x00800000
V4L2_CAP_READWRITE = 0x01000000
V4L2_CAP_STREAMING = 0x04000000
V4L2_CAP_DEVICE_CAPS = 0x80000000
_CAP_NAMES = {
    0x00000001: "VIDEO_CAPTURE",
    0x00000002: "VIDEO_OUTPUT",
    0x00000004: "VIDEO_OVERLAY",
    0x00000010: "VBI_CAPTURE",
    0x00000020: "VBI_OUTPUT",
    0x00001000: "VIDEO_CAPTURE_MPLANE",
    0x00002000: "VIDEO_OUTPUT_MPLANE",
    0x00004000: "VIDEO_M2M_MPLANE",
    0x00008000: "VIDEO_M2M",
    0x00010000: "TUNER",
    0x00020000: "AUDIO",
    0x00040000: "RADIO",
    0x00080000: "MODULATOR",
    0x00100000: "SDR_CAPTURE",
    0x00200000: "EXT_PIX_FORMAT",
    0x00400000: "SDR_OUTPUT",
    0x00800000: "META_CAPTURE",
    0x01000000: "READWRITE",
    0x04000000: "STREAMING",
    0x08000000: "META_OUTPUT",
    0x10000000: "TOUCH",
    0x20000000: "IO_MC",
    0x80000000: "DEVICE_CAPS",
}
#: struct v4l2_capability: driver[16] card[32] bus_info[32] version capabilities device_caps reserved[3]
_QUERYCAP = struct.Struct("<16s32s32sIII3I")
#: _IOR('V', 0, struct v4l2_capability)
VIDIOC_QUERYCAP = (2 << 30) | (_QUERYCAP.size << 16) | (ord("V") << 8) | 0
_V4L2_MAJOR = 81
_INSTALL_HINT = "install the camera extra: pip install 'autochain-agent[camera]'"
_OUTPUT_FORMATS = ("RGB3", "GREY", "MJPG")


@dataclass(frozen=True, slots=True)
class V4l2Capability:
    """What ``VIDIOC_QUERYCAP`` says about a device node."""

    driver: str
    card: str
    bus_info: str
    #: kernel version as (major, minor, patch)
    version: tuple[int, int, int]
    #: capabilities of the whole physical device
    capabilities: int
    #: capabilities of this node (0 if the driver does not report them)
    device_caps: int

    @property
    def node_caps(self) -> int:
        """The capabilities that apply to this node."""
        return self.device_caps if self.capabilities & V4L2_CAP_DEVICE_CAPS else self.capabilities

    def cap_names(self) -> list[str]:
        caps = self.node_caps
        return [name for bit, name in _CAP_NAMES.items() if caps & bit and bit != V4L2_CAP_DEVICE_CAPS]


def parse_querycap(buf: bytes) -> V4l2Capability:
    """Decode a ``struct v4l2_capability``."""
    driver, card, bus, version, caps, device_caps, *_ = _QUERYCAP.unpack(buf[: _QUERYCAP.size])

    def text(raw: bytes) -> str:
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    return V4l2Capability(
        driver=text(driver),
        card=text(card),
        bus_info=text(bus),
        version=((version >> 16) & 0xFF, (version >> 8) & 0xFF, version & 0xFF),
        capabilities=caps,
        device_caps=device_caps,
    )


def check_capture_device(cap: V4l2Capability, path: str) -> None:
    """Raise ``DeviceError`` unless ``cap`` is a node this backend can capture video from."""
    caps = cap.node_caps
    names = ", ".join(cap.cap_names()) or "no caps"
    what = f"{path} ({cap.card or 'unnamed'}, driver {cap.driver or '?'}; {names})"
    if not caps & (V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_CAPTURE_MPLANE):
        hint = ""
        if caps & V4L2_CAP_META_CAPTURE:
            hint = "; it is a metadata node — the camera's image node is usually the one numbered just before it"
        elif caps & (V4L2_CAP_VIDEO_M2M | V4L2_CAP_VIDEO_OUTPUT):
            hint = "; it is a codec or output device"
        raise DeviceError(f"{what} is a V4L2 device but not a video capture device{hint}")
    if not caps & V4L2_CAP_VIDEO_CAPTURE:
        raise DeviceError(f"{what} offers only multi-planar capture, which OpenCV's V4L2 backend does not read")
    if not caps & V4L2_CAP_STREAMING:
        raise DeviceError(f"{what} does not support streaming I/O, which OpenCV's V4L2 backend needs")


def query_capabilities(path: str | os.PathLike[str]) -> V4l2Capability:
    """Check that ``path`` is a V4L2 node and return what ``VIDIOC_QUERYCAP`` says; raise
    ``DeviceError`` saying what it is instead."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as err:
        raise DeviceError(f"{path}: no such device (is the camera connected? see `ls /dev/video*`)") from err
    except OSError as err:
        raise DeviceError(f"{path}: cannot stat: {err.strerror}") from err
    if not stat.S_ISCHR(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a regular file"
            if stat.S_ISREG(st.st_mode)
            else "not a device"
        )
        raise DeviceError(f"{path} is {kind}, not a Video4Linux2 character device")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except PermissionError as err:
        raise DeviceError(f"{path}: permission denied (add the agent's user to the 'video' group)") from err
    except OSError as err:
        raise DeviceError(f"{path}: cannot open: {err.strerror}") from err
    try:
        buf = bytearray(_QUERYCAP.size)
        fcntl.ioctl(fd, VIDIOC_QUERYCAP, buf, True)
    except OSError as err:
        if err.errno in (errno.ENOTTY, errno.EINVAL):
            raise DeviceError(
                f"{path} (character device {major}:{minor}) is not a Video4Linux2 device: "
                f"VIDIOC_QUERYCAP failed ({err.strerror})"
                + ("" if major == _V4L2_MAJOR else f"; V4L2 devices have major number {_V4L2_MAJOR}")
            ) from err
        raise DeviceError(f"{path}: VIDIOC_QUERYCAP failed: {err.strerror}") from err
    finally:
        os.close(fd)
    return parse_querycap(bytes(buf))


def _video_index(path: str) -> int:
    """The N of the ``/dev/videoN`` node behind ``path`` (symlinks resolved, or by device number)."""
    real = os.path.realpath(path)
    m = re.fullmatch(r"video(\d+)", os.path.basename(real))
    if m:
        return int(m.group(1))
    rdev = os.stat(real).st_rdev
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    for node in Path("/sys/class/video4linux").glob("video*"):
        try:
            if (node / "dev").read_text().strip() == want:
                return int(node.name[len("video") :])
        except (OSError, ValueError):
            continue
    raise DeviceError(f"{path}: cannot find which /dev/videoN it is (OpenCV opens V4L2 devices by index)")


def _sysfs_name(index: int) -> str:
    try:
        return Path(f"/sys/class/video4linux/video{index}/name").read_text().strip()
    except OSError:
        return ""


class V4l2Camera(Camera):
    """Captures from a V4L2 device through OpenCV.

    ``fourcc`` is the format asked of the device (``MJPG`` lets USB cameras reach full frame
    rate, ``YUYV`` is uncompressed); ``pixel_format`` is the format of the frames handed out:
    ``RGB3``, ``GREY``, or ``MJPG`` (the device's JPEG frames untouched; needs ``fourcc="MJPG"``).
    The device may not grant the size or rate asked for: what it granted is logged and the
    frames carry the real size. ``strict=True`` makes a different size an error.
    """

    def __init__(
        self,
        device: str | os.PathLike[str] = "/dev/video0",
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        fourcc: str = "MJPG",
        pixel_format: str = "RGB3",
        strict: bool = False,
        clock: Clock | None = None,
        name: str = "camera",
        read_timeout: float = 5.0,
        max_read_failures: int = 5,
    ) -> None:
        if pixel_format not in _OUTPUT_FORMATS:
            raise ValueError(f"pixel_format must be one of {', '.join(_OUTPUT_FORMATS)} (got {pixel_format!r})")
        if len(fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters (got {fourcc!r})")
        if pixel_format == "MJPG" and fourcc != "MJPG":
            raise ValueError("pixel_format MJPG passes the device's JPEG frames through: it needs fourcc='MJPG'")
        self.device = os.fspath(device)
        self.width = width
        self.height = height
        self.fps = fps
        self.fourcc = fourcc
        self.pixel_format = pixel_format
        self.strict = strict
        self.name = name
        self.read_timeout = read_timeout
        self.max_read_failures = max_read_failures
        self.capability: V4l2Capability | None = None
        self._clock = clock if clock is not None else SystemClock()
        self._cv2: Any = None
        self._cap: Any = None
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._open = False
        self._sequence = 0
        self._read_failures = 0

    async def open(self) -> None:
        if self._open:
            return
        self.capability = cap = await asyncio.to_thread(query_capabilities, self.device)
        check_capture_device(cap, self.device)
        index = await asyncio.to_thread(_video_index, self.device)
        try:
            import cv2
        except ImportError as err:
            raise DeviceError(f"camera {self.name!r}: OpenCV is missing; {_INSTALL_HINT}") from err
        self._cv2 = cv2
        self._cap = await asyncio.to_thread(self._open_capture, index)
        self._closed = asyncio.Event()
        self._sequence = 0
        self._read_failures = 0
        self._open = True

    def _open_capture(self, index: int) -> Any:
        cv2 = self._cv2
        params = [
            cv2.CAP_PROP_FOURCC,
            cv2.VideoWriter_fourcc(*self.fourcc),
            cv2.CAP_PROP_FRAME_WIDTH,
            self.width,
            cv2.CAP_PROP_FRAME_HEIGHT,
            self.height,
        ]
        for prop in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
            if hasattr(cv2, prop):
                params += [getattr(cv2, prop), int(self.read_timeout * 1000)]
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2, params)
        if not cap.isOpened():
            cap.release()
            card = self.capability.card if self.capability else _sysfs_name(index)
            raise DeviceError(f"{self.device} ({card}): OpenCV's V4L2 backend cannot open video{index}")
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        if self.pixel_format == "MJPG":
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        got_w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        got_h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        got_fps = cap.get(cv2.CAP_PROP_FPS)
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        got_fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
        if (got_w, got_h) != (self.width, self.height) or got_fourcc != self.fourcc:
            msg = (
                f"{self.device}: asked for {self.fourcc} {self.width}x{self.height}, "
                f"the device gave {got_fourcc} {got_w}x{got_h}"
            )
            if self.strict or (self.pixel_format == "MJPG" and got_fourcc != "MJPG"):
                cap.release()
                raise DeviceError(msg)
            log.warning("%s", msg)
        log.info("%s: capturing %s %dx%d at %.1f fps", self.device, got_fourcc, got_w, got_h, got_fps)
        return cap

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._closed.set()
        async with self._lock:
            cap, self._cap = self._cap, None
            if cap is not None:
                await asyncio.to_thread(cap.release)

    def _grab(self) -> tuple[bool, Any, float, float]:
        """Read one frame: (ok, image, driver timestamp seconds or nan, time.monotonic() after)."""
        ok, img = self._cap.read()
        after = time.monotonic()
        stamp = float("nan")
        if ok:
            ms = self._cap.get(self._cv2.CAP_PROP_POS_MSEC)
            if ms and ms > 0:
                stamp = ms / 1000.0
        return bool(ok), img, stamp, after

    def _convert(self, img: Any) -> tuple[bytes, int, int]:
        cv2 = self._cv2
        if self.pixel_format == "MJPG":
            data = img.tobytes()
            return data, *self._jpeg_size(data)
        if self.pixel_format == "GREY":
            out = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:
            out = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return out.tobytes(), out.shape[1], out.shape[0]

    def _jpeg_size(self, data: bytes) -> tuple[int, int]:
        """Width and height from a JPEG's SOF marker (the device's size if there is none)."""
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker = data[i + 1]
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + length
        return self.width, self.height

    async def frames(self) -> AsyncIterator[Frame]:
        if not self._open:
            raise DeviceError(f"camera {self.name!r} is not open")
        closed = self._closed
        while not closed.is_set():
            async with self._lock:
                if self._cap is None:
                    return
                ok, img, driver_ts, after = await asyncio.to_thread(self._grab)
                if ok:
                    try:
                        data, width, height = await asyncio.to_thread(self._convert, img)
                    except self._cv2.error as err:
                        log.warning("%s: cannot convert a frame: %s", self.device, err)
                        ok = False
            if closed.is_set():
                return
            if not ok:
                self._read_failures += 1
                self._sequence += 1
                if self._read_failures >= self.max_read_failures:
                    raise DeviceError(
                        f"{self.device}: {self._read_failures} reads in a row failed (camera unplugged or stalled?)"
                    )
                continue
            self._read_failures = 0
            age = after - driver_ts if 0.0 <= after - driver_ts < 5.0 else 0.0
            frame = Frame(
                data=data,
                width=width,
                height=height,
                pixel_format=self.pixel_format,
                sequence=self._sequence,
                timestamp=self._clock.time() - age,
                monotonic=self._clock.monotonic() - age,
                source=self.name,
            )
            self._sequence += 1
            log.log(TRACE, "%s: frame %d", self.device, frame.sequence)
            yield frame
