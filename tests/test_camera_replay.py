"""Image-folder and video-file replay cameras on real files made with Pillow and OpenCV, paced
by a simulated clock."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drivers.camera_replay import ImageFolderCamera, VideoFileCamera
from drivers.clock import SimulatedClock
from hal.errors import DecodeError, DeviceError

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def write_images(folder: Path, names: list[str], size=(32, 24)) -> list[tuple[int, int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    colours = []
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        img = Image.new("RGB", size, colour)
        img.putpixel((0, 0), (i, 2 * i, 3 * i))  # a marker that PNG keeps exactly
        img.save(folder / name, quality=95)
        colours.append(colour)
    return colours


def write_video(path: Path, n: int, fps: float, size=(64, 48)) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        bgr = np.zeros((size[1], size[0], 3), np.uint8)
        bgr[:, :, 2] = 200  # red in OpenCV's BGR order
        bgr[:, :, 1] = min(255, 20 * i)
        writer.write(bgr)
    writer.release()


async def take(camera, n: int, clock: SimulatedClock | None = None):
    """The first ``n`` frames. With a simulated ``clock``, time moves only while the camera
    waits on it (to its next deadline): decoding in a worker thread takes real time, not
    clock time."""
    out = []

    async def consume():
        async for frame in camera.frames():
            out.append(frame)
            if len(out) == n:
                return

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        while not task.done():
            deadline = clock.next_deadline if clock is not None else None
            if deadline is not None:
                await clock.advance(deadline - clock.monotonic())
            else:
                await asyncio.sleep(0.001)
    await task
    return out


# --------------------------------------------------------------------------- image folders


async def test_folder_paced_by_fps_on_the_clock(tmp_path):
    write_images(tmp_path, [f"f{i}.png" for i in range(5)])
    clock = SimulatedClock(start_utc=1_700_000_000.0, start_monotonic=100.0)
    got = []

    async with ImageFolderCamera(tmp_path, fps=10, clock=clock) as cam:
        first = asyncio.Event()

        async def consume():
            async for frame in cam.frames():
                got.append(frame)
                first.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(10):
            await first.wait()  # frame 0 comes at once (decoded in a thread: real time)
            await clock.advance(0.05)
            await asyncio.sleep(0.05)
            assert len(got) == 1  # frame 1 is not due before 0.1 s of clock time
            while not task.done():  # a finite folder ends the iteration
                if clock.next_deadline is not None:
                    await clock.advance(0.05)
                await asyncio.sleep(0.001)
    assert [f.sequence for f in got] == [0, 1, 2, 3, 4]
    assert [f.monotonic for f in got] == pytest.approx([100.0, 100.1, 100.2, 100.3, 100.4])
    assert [f.timestamp for f in got] == pytest.approx([1_700_000_000.0 + i / 10 for i in range(5)])
    assert cam.counters()["frames"] == 5


async def test_folder_natural_order_and_rgb_pixels(tmp_path):
    names = ["frame10.png", "frame2.png", "frame1.png", "notes.txt"]
    write_images(tmp_path, names[:3])
    (tmp_path / "notes.txt").write_text("not an image")
    cam = ImageFolderCamera(tmp_path, paced=False)
    await cam.open()
    assert [p.name for p in cam.files] == ["frame1.png", "frame2.png", "frame10.png"]
    frames = await take(cam, 3)
    await cam.close()
    # frame1.png was written third: colour 2 (blue), marker (2, 4, 6)
    first = frames[0]
    assert (first.width, first.height, first.pixel_format) == (32, 24, "RGB3")
    assert len(first.data) == 32 * 24 * 3
    assert tuple(first.data[:3]) == (2, 4, 6)
    assert tuple(first.data[3:6]) == (0, 0, 255)
    assert tuple(frames[2].data[3:6]) == (255, 0, 0)  # frame10.png, written first: red


async def test_folder_grey_and_mjpg_passthrough(tmp_path):
    write_images(tmp_path, ["a.jpg", "b.png"])
    cam = ImageFolderCamera(tmp_path, pixel_format="MJPG", paced=False)
    async with cam:
        jpeg, png = await take(cam, 2)
    assert jpeg.data == (tmp_path / "a.jpg").read_bytes()  # passed through untouched
    assert png.data[:2] == b"\xff\xd8"  # the PNG was encoded to JPEG
    assert Image.open(io.BytesIO(png.data)).size == (32, 24)
    assert (jpeg.width, jpeg.height, jpeg.pixel_format) == (32, 24, "MJPG")

    grey = ImageFolderCamera(tmp_path, pixel_format="GREY", paced=False)
    async with grey:
        frames = await take(grey, 2)
    assert [len(f.data) for f in frames] == [32 * 24, 32 * 24]
    assert frames[1].data[5] == round(0.299 * 0 + 0.587 * 255 + 0.114 * 0)  # b.png is green


@pytest.mark.parametrize("pixel_format", ["RGB3", "MJPG"])
async def test_folder_corrupt_files_are_counted_and_skipped(tmp_path, pixel_format):
    write_images(tmp_path, ["0.jpg", "2.png", "4.jpg"])
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "3.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    cam = ImageFolderCamera(tmp_path, fps=5, pixel_format=pixel_format, paced=False)
    async with cam:
        frames = [f async for f in cam.frames()]
    assert [f.sequence for f in frames] == [0, 2, 4]  # gaps where frames were lost
    assert [f.monotonic - frames[0].monotonic for f in frames] == pytest.approx([0, 0.4, 0.8])
    assert cam.counters() == {"frames": 3, "corrupt": 2, "loops": 0}


async def test_folder_sidecar_timestamps(tmp_path):
    write_images(tmp_path, ["x.png", "y.png", "z.png"])
    (tmp_path / "ts.csv").write_text(
        "filename,timestamp\n# recorded on the bench\nz.png,1700000100.000\nx.png,1700000100.050\n"
        "missing.png,1700000100.100\ny.png,1700000100.250\n"
    )
    clock = SimulatedClock(start_monotonic=5.0)
    cam = ImageFolderCamera(tmp_path, timestamps=tmp_path / "ts.csv", recorded_utc=True, clock=clock)
    async with cam:
        frames = await take(cam, 3, clock)
    assert [f.sequence for f in frames] == [0, 1, 3]  # the missing file is a lost frame
    assert [f.monotonic for f in frames] == pytest.approx([5.0, 5.05, 5.25])
    assert [f.timestamp for f in frames] == pytest.approx([1700000100.0, 1700000100.05, 1700000100.25])
    assert tuple(frames[0].data[3:6]) == (0, 0, 255)  # z.png first, as the sidecar says
    assert cam.counters()["corrupt"] == 1


@pytest.mark.parametrize(
    "content, problem",
    [
        ("file,time\na.png,1\n", "header"),
        ("filename,timestamp\na.png,2\na.png,1\n", "earlier"),
        ("filename,timestamp\na.png,soon\n", "not a number"),
        ("filename,timestamp\n", "no frames"),
    ],
)
async def test_folder_bad_sidecar_is_a_decode_error(tmp_path, content, problem):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "ts.csv").write_text(content)
    with pytest.raises(DecodeError, match=problem):
        await ImageFolderCamera(tmp_path, timestamps=tmp_path / "ts.csv").open()


async def test_folder_loop_keeps_time_and_sequence_growing(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    cam = ImageFolderCamera(tmp_path, fps=4, loop=True, paced=False)
    async with cam:
        frames = await take(cam, 8)
        assert cam.counters()["loops"] == 2
    assert [f.sequence for f in frames] == list(range(8))
    offsets = [f.monotonic - frames[0].monotonic for f in frames]
    assert offsets == pytest.approx([i / 4 for i in range(8)])
    assert frames[3].data == frames[0].data and frames[4].data == frames[1].data


async def test_folder_missing_or_empty_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="not a directory"):
        await ImageFolderCamera(tmp_path / "nope").open()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DeviceError, match="no .png"):
        await ImageFolderCamera(tmp_path).open()


async def test_close_ends_a_waiting_iteration(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    clock = SimulatedClock()
    cam = ImageFolderCamera(tmp_path, fps=1, clock=clock)
    await cam.open()
    got = []

    async def consume():
        async for frame in cam.frames():
            got.append(frame)

    task = asyncio.create_task(consume())
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert len(got) == 1  # waiting for clock time 1.0 that never comes
    await cam.close()
    await asyncio.wait_for(task, 2)
    assert len(got) == 1 and clock.next_deadline is None  # no sleeper left behind


async def test_missing_pillow_or_opencv_names_the_extra(tmp_path, monkeypatch):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "v.avi").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(DeviceError, match=r"autochain-agent\[camera\]"):
        await ImageFolderCamera(tmp_path).open()
    with pytest.raises(DeviceError, match=r"autochain-agent\[camera\]"):
        await VideoFileCamera(tmp_path / "v.avi").open()


# --------------------------------------------------------------------------- video files


async def test_video_offsets_come_from_the_container(tmp_path):
    write_video(tmp_path / "clip.avi", 6, fps=25)
    clock = SimulatedClock(start_utc=1_600_000_000.0, start_monotonic=10.0)
    cam = VideoFileCamera(tmp_path / "clip.avi", clock=clock)
    async with cam:
        assert (cam.width, cam.height, cam.frame_count) == (64, 48, 6)
        frames = await take(cam, 6, clock)
    assert [f.sequence for f in frames] == list(range(6))
    assert [f.monotonic for f in frames] == pytest.approx([10.0 + i * 0.04 for i in range(6)], abs=1e-6)
    assert [f.timestamp for f in frames] == pytest.approx([1_600_000_000.0 + i * 0.04 for i in range(6)], abs=1e-6)
    first = frames[0]
    assert (first.width, first.height, first.pixel_format, len(first.data)) == (64, 48, "RGB3", 64 * 48 * 3)
    r, g, b = first.data[:3]
    assert r > 180 and g < 30 and b < 30  # red stays red: BGR was converted to RGB


async def test_video_ends_or_loops(tmp_path):
    write_video(tmp_path / "clip.avi", 3, fps=10)
    cam = VideoFileCamera(tmp_path / "clip.avi", paced=False)
    async with cam:
        assert len([f async for f in cam.frames()]) == 3
    looping = VideoFileCamera(tmp_path / "clip.avi", paced=False, loop=True, pixel_format="GREY")
    async with looping:
        frames = await take(looping, 7)
        assert looping.counters()["loops"] == 2
    offsets = [f.monotonic - frames[0].monotonic for f in frames]
    assert offsets == pytest.approx([i / 10 for i in range(7)], abs=1e-6)
    assert len(frames[0].data) == 64 * 48


async def test_video_mjpg_output_is_jpeg(tmp_path):
    write_video(tmp_path / "clip.avi", 2, fps=10)
    async with VideoFileCamera(tmp_path / "clip.avi", pixel_format="MJPG", paced=False) as cam:
        frames = [f async for f in cam.frames()]
    assert len(frames) == 2
    assert Image.open(io.BytesIO(frames[1].data)).size == (64, 48)


async def test_video_missing_or_not_a_video_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="no video file"):
        await VideoFileCamera(tmp_path / "nope.avi").open()
    (tmp_path / "text.avi").write_text("this is not a video\n" * 100)
    with pytest.raises(DeviceError, match="cannot read"):
        await VideoFileCamera(tmp_path / "text.avi").open()
