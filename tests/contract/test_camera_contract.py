"""One contract for every ``hal.Camera`` backend: the same assertions run against the image
folder replay (PNG decoded, JPEG passed through), the video replay (an MJPG AVI written with
OpenCV), and a V4L2 camera when ``ACC_V4L2_DEVICE`` names one (no camera on the CI machines)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivers.clock import SimulatedClock, SystemClock
from hal.errors import DeviceError
from hal.interfaces import Camera, Clock
from hal.registry import load_backend


@dataclass
class Case:
    camera: Camera
    clock: Clock
    width: int
    height: int
    pixel_format: str


def _images(folder: Path, suffix: str, n: int = 6) -> None:
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (40, 30), (40 * i, 255 - 40 * i, 7)).save(folder / f"img{i:03d}{suffix}")


def _video(path: Path, n: int = 6) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (48, 32))
    for i in range(n):
        writer.write(np.full((32, 48, 3), 30 * i, np.uint8))
    writer.release()


def folder_png(tmp: Path) -> Case:
    _images(tmp / "png", ".png")
    clock = SimulatedClock()
    cls = load_backend("camera", "folder")
    return Case(cls(tmp / "png", fps=15, clock=clock, name="front"), clock, 40, 30, "RGB3")


def folder_jpeg_mjpg(tmp: Path) -> Case:
    _images(tmp / "jpg", ".jpg")
    clock = SimulatedClock()
    cls = load_backend("camera", "folder")
    return Case(cls(tmp / "jpg", fps=15, clock=clock, pixel_format="MJPG", name="front"), clock, 40, 30, "MJPG")


def video_rgb(tmp: Path) -> Case:
    _video(tmp / "clip.avi")
    clock = SimulatedClock()
    cls = load_backend("camera", "video")
    return Case(cls(tmp / "clip.avi", clock=clock, name="front"), clock, 48, 32, "RGB3")


def video_grey(tmp: Path) -> Case:
    _video(tmp / "clip.avi")
    clock = SimulatedClock()
    cls = load_backend("camera", "video")
    return Case(cls(tmp / "clip.avi", clock=clock, pixel_format="GREY", name="front"), clock, 48, 32, "GREY")


def v4l2(tmp: Path) -> Case:
    device = os.environ.get("ACC_V4L2_DEVICE")
    if not device:
        pytest.skip("no V4L2 capture device here: set ACC_V4L2_DEVICE=/dev/videoN on a rig with a camera")
    cls = load_backend("camera", "v4l2")
    return Case(cls(device, width=640, height=480, name="front"), SystemClock(), 640, 480, "RGB3")


CASES: dict[str, Callable[[Path], Case]] = {
    "folder-png": folder_png,
    "folder-jpeg-mjpg": folder_jpeg_mjpg,
    "video-avi": video_rgb,
    "video-avi-grey": video_grey,
    "v4l2": v4l2,
}


@pytest.fixture(params=list(CASES))
def case(request, tmp_path) -> Case:
    return CASES[request.param](tmp_path)


async def consume(case: Case, n: int, *, close_after: bool = False) -> list:
    """Up to ``n`` frames; a simulated clock moves only while the camera waits on it.
    ``close_after``: close the camera once ``n`` frames arrived, then keep iterating."""
    out = []

    async def run():
        async for frame in case.camera.frames():
            out.append(frame)
            if len(out) == n and not close_after:
                return

    task = asyncio.create_task(run())
    clock = case.clock
    async with asyncio.timeout(20):
        while not task.done() and len(out) < n:
            if isinstance(clock, SimulatedClock) and clock.next_deadline is not None:
                await clock.advance(clock.next_deadline - clock.monotonic())
            else:
                await asyncio.sleep(0.001)
        if close_after:
            await asyncio.sleep(0.01)
            await case.camera.close()
        await task
    return out


def expected_size(case: Case) -> int | None:
    return {"RGB3": case.width * case.height * 3, "GREY": case.width * case.height}.get(case.pixel_format)


async def test_open_and_close_are_idempotent(case):
    cam = case.camera
    await cam.close()  # never opened
    async with cam:
        await cam.open()
        assert len(await consume(case, 1)) == 1
    await cam.close()
    # and it opens again, starting over
    async with cam:
        frames = await consume(case, 2)
    assert frames[0].sequence == 0


async def test_frames_before_open_is_an_error(case):
    with pytest.raises(DeviceError, match="not open"):
        async for _ in case.camera.frames():
            pass


async def test_frames_carry_increasing_sequence_time_and_the_right_shape(case):
    async with case.camera:
        frames = await consume(case, 4)
    assert len(frames) == 4
    for a, b in zip(frames, frames[1:], strict=False):
        assert b.sequence > a.sequence
        assert b.monotonic > a.monotonic
        assert b.timestamp > a.timestamp
        # UTC and monotonic time move together
        assert (b.timestamp - a.timestamp) == pytest.approx(b.monotonic - a.monotonic, abs=0.05)
    for f in frames:
        assert (f.width, f.height, f.pixel_format, f.source) == (
            case.width,
            case.height,
            case.pixel_format,
            "front",
        )
        if expected_size(case) is not None:
            assert len(f.data) == expected_size(case)
        else:  # MJPG: a JPEG of that size
            assert f.data[:2] == b"\xff\xd8"
            assert Image.open(io.BytesIO(f.data)).size == (case.width, case.height)


async def test_close_ends_iteration(case):
    await case.camera.open()
    frames = await consume(case, 2, close_after=True)  # returns only if the iteration ended
    assert len(frames) >= 2
    # closed means closed: asking again is an error, not a hang
    with pytest.raises(DeviceError, match="not open"):
        async for _ in case.camera.frames():
            pass
