"""The V4L2 camera's device checks. There is no camera and no v4l2loopback on the CI machines:
what needs a real /dev/videoN (capture, negotiation, driver timestamps) runs only in the camera
contract suite when ACC_V4L2_DEVICE names one."""

from __future__ import annotations

import struct

import pytest

from drivers.camera_v4l2 import (
    VIDIOC_QUERYCAP,
    V4l2Camera,
    check_capture_device,
    parse_querycap,
    query_capabilities,
)
from hal.errors import DeviceError


def querycap(driver: str, card: str, caps: int, device_caps: int, version=(6, 1, 0)) -> bytes:
    """A ``struct v4l2_capability`` as the kernel fills it (linux/videodev2.h layout)."""
    v = (version[0] << 16) | (version[1] << 8) | version[2]
    return struct.pack(
        "<16s32s32sIII3I",
        driver.encode(),
        card.encode(),
        b"usb-0000:00:14.0-1",
        v,
        caps,
        device_caps,
        0,
        0,
        0,
    )


def test_ioctl_number_is_the_kernels():
    # _IOR('V', 0, struct v4l2_capability), 104 bytes, as in videodev2.h on every Linux ABI
    assert VIDIOC_QUERYCAP == 0x80685600


async def test_missing_device():
    with pytest.raises(DeviceError, match="no such device"):
        await V4l2Camera("/dev/video-that-does-not-exist").open()


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero"])
async def test_character_device_that_is_not_v4l2(path):
    with pytest.raises(DeviceError, match=f"{path} .*is not a Video4Linux2 device"):
        await V4l2Camera(path).open()


async def test_symlink_to_a_non_v4l2_device(tmp_path):
    link = tmp_path / "video0"
    link.symlink_to("/dev/null")
    with pytest.raises(DeviceError, match="not a Video4Linux2 device"):
        await V4l2Camera(link).open()


async def test_files_and_directories_are_not_devices(tmp_path):
    (tmp_path / "video0").write_bytes(b"")
    with pytest.raises(DeviceError, match="regular file"):
        await V4l2Camera(tmp_path / "video0").open()
    with pytest.raises(DeviceError, match="directory"):
        await V4l2Camera(tmp_path).open()


def test_uvc_camera_node_passes_the_capture_check():
    # uvcvideo: the whole device can capture video and metadata; this node captures video
    cap = parse_querycap(querycap("uvcvideo", "HD Webcam: HD Webcam", 0x84A00001, 0x04200001, (6, 1, 55)))
    assert (cap.driver, cap.card, cap.version) == ("uvcvideo", "HD Webcam: HD Webcam", (6, 1, 55))
    assert cap.bus_info == "usb-0000:00:14.0-1"
    assert cap.cap_names() == ["VIDEO_CAPTURE", "EXT_PIX_FORMAT", "STREAMING"]
    check_capture_device(cap, "/dev/video0")


def test_uvc_metadata_node_is_refused_with_a_hint():
    cap = parse_querycap(querycap("uvcvideo", "HD Webcam: HD Webcam", 0x84A00001, 0x04A00000))
    with pytest.raises(DeviceError, match="not a video capture device.*metadata node"):
        check_capture_device(cap, "/dev/video1")


@pytest.mark.parametrize(
    "caps, device_caps, problem",
    [
        (0x84208000, 0x04208000, "codec or output device"),  # a mem-to-mem codec
        (0x84201000, 0x04201000, "multi-planar"),
        (0x01000001, 0, "streaming"),  # old driver: no DEVICE_CAPS, read() only
    ],
)
def test_other_v4l2_nodes_are_refused(caps, device_caps, problem):
    with pytest.raises(DeviceError, match=problem):
        check_capture_device(parse_querycap(querycap("drv", "card", caps, device_caps)), "/dev/video9")


def test_query_capabilities_on_a_real_non_v4l2_node():
    with pytest.raises(DeviceError, match="character device 1:3"):
        query_capabilities("/dev/null")


def test_constructor_rejects_impossible_formats():
    with pytest.raises(ValueError, match="fourcc='MJPG'"):
        V4l2Camera(pixel_format="MJPG", fourcc="YUYV")
    with pytest.raises(ValueError, match="pixel_format"):
        V4l2Camera(pixel_format="NV12")


async def test_life_cycle_without_a_device():
    cam = V4l2Camera("/dev/null")
    await cam.close()  # closing what never opened is fine
    with pytest.raises(DeviceError, match="not open"):
        async for _ in cam.frames():
            pass
    with pytest.raises(DeviceError):
        await cam.open()
    assert cam.capability is None
