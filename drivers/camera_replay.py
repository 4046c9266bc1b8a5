"""Recorded camera streams: a folder of images, or a video file, replayed as a ``Camera``.

Both replay on an injected ``Clock`` (``SystemClock`` by default). The replay's time starts
when ``frames()`` asks for the first frame: ``t0 = clock.monotonic()``, ``utc0 =
clock.time()``. Each frame has an *offset* from the start of the recording, and carries
``monotonic = t0 + offset`` and ``timestamp = utc0 + offset`` — the times a live camera
would have stamped, not the (slightly later) moment the consumer got it. With ``paced=True``
(default) ``frames()`` sleeps on the clock until ``t0 + offset`` before yielding a frame;
with ``paced=False`` it yields as fast as it decodes, with the same timestamps.

Offsets: ``ImageFolderCamera`` takes them from a sidecar CSV when given one, otherwise
``index / fps``; ``VideoFileCamera`` takes them from the container's presentation times
(``CAP_PROP_POS_MSEC``). With ``loop=True`` the recording restarts and offsets keep growing.

Sequence numbers count the recording's frames from 0 at ``open()``; a frame that cannot be
decoded is counted (``counters()["corrupt"]``), logged and skipped, and leaves a gap in the
sequence — as V4L2 reports a dropped frame. Decoding runs in a worker thread
(``asyncio.to_thread``), never on the event loop. ``close()`` ends a running ``frames()``.

Pillow (image folders) and OpenCV (video files) are imported in ``open()`` only; a missing one
raises ``DeviceError`` naming the ``camera`` extra.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.clock import SystemClock, sleep_until_or
from hal.errors import DecodeError, DeviceError
from hal.interfaces import Camera, Clock
from hal.types import Frame

__all__ = ["IMAGE_SUFFIXES", "ImageFolderCamera", "VideoFileCamera"]

log = logging.getLogger(__name__)
#: per-frame logs go below DEBUG
TRACE = 5

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_FORMATS = ("RGB3", "GREY", "MJPG")
_INSTALL_HINT = "install the camera extra: pip install 'autochain-agent[camera]'"


@dataclass(frozen=True, slots=True)
class _Decoded:
    data: bytes
    width: int
    height: int


def _natural_key(name: str) -> list[Any]:
    """Name order that puts frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class _ReplayCamera(Camera):
    """Shared life cycle, pacing and stamping of the replay cameras."""

    def __init__(self, *, clock: Clock | None, paced: bool, pixel_format: str, name: str) -> None:
        if pixel_format not in _FORMATS:
            raise ValueError(f"pixel_format must be one of {', '.join(_FORMATS)} (got {pixel_format!r})")
        self.name = name
        self.pixel_format = pixel_format
        self.paced = paced
        self._clock = clock if clock is not None else SystemClock()
        self._open = False
        self._closed = asyncio.Event()
        self._t0: float | None = None
        self._utc0 = 0.0
        self._frames = 0
        self._corrupt = 0
        self._loops = 0

    def counters(self) -> dict[str, int]:
        """Frames delivered, frames skipped as undecodable, completed passes of a loop."""
        return {"frames": self._frames, "corrupt": self._corrupt, "loops": self._loops}

    @property
    def is_open(self) -> bool:
        return self._open

    async def open(self) -> None:
        if self._open:
            return
        await self._open_source()
        self._closed = asyncio.Event()
        self._t0 = None
        self._frames = self._corrupt = self._loops = 0
        self._open = True

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._closed.set()
        await self._close_source()

    async def _open_source(self) -> None:
        raise NotImplementedError

    async def _close_source(self) -> None:
        raise NotImplementedError

    async def _next(self) -> tuple[int, float, _Decoded | None, float | None] | None:
        """(sequence, offset seconds, decoded image or None if corrupt, recorded UTC) of the
        next frame, or ``None`` at the end of the recording."""
        raise NotImplementedError

    async def frames(self) -> AsyncIterator[Frame]:
        if not self._open:
            raise DeviceError(f"camera {self.name!r} is not open")
        closed = self._closed
        while not closed.is_set():
            item = await self._next()
            if item is None or closed.is_set():
                return
            sequence, offset, image, recorded = item
            if image is None:
                self._corrupt += 1
                continue
            if self._t0 is None:
                self._t0, self._utc0 = self._clock.monotonic(), self._clock.time()
            due = self._t0 + offset
            if self.paced and not await self._wait_until(due, closed):
                return
            self._frames += 1
            frame = Frame(
                data=image.data,
                width=image.width,
                height=image.height,
                pixel_format=self.pixel_format,
                sequence=sequence,
                timestamp=recorded if recorded is not None else self._utc0 + offset,
                monotonic=due,
                source=self.name,
            )
            log.log(TRACE, "%s: frame %d %dx%d at %.3f", self.name, sequence, image.width, image.height, due)
            yield frame

    async def _wait_until(self, deadline: float, closed: asyncio.Event) -> bool:
        """Sleep on the clock until ``deadline``; ``False`` if the camera was closed first."""
        return await sleep_until_or(self._clock, deadline, closed)


class ImageFolderCamera(_ReplayCamera):
    """Replays the PNG/JPEG files of ``folder`` in natural name order (``frame2`` before
    ``frame10``), one every ``1/fps`` seconds.

    ``timestamps``: a sidecar CSV with a ``filename,timestamp`` header and one row per frame,
    ``timestamp`` in seconds (any origin); the rows give the order and the spacing of the
    frames (non-decreasing timestamps, files relative to ``folder``), and ``fps`` is then only
    the gap between the last frame and the first of the next pass of a loop. With
    ``recorded_utc=True`` the sidecar's values are UTC epoch seconds and become
    ``Frame.timestamp`` (``monotonic`` still follows the replay clock).

    ``pixel_format``: ``RGB3`` (decoded RGB24), ``GREY`` (8-bit luma) or ``MJPG``: JPEG files
    are passed through undecoded (only their header is read, and a file without the JPEG
    end marker counts as corrupt), other images are encoded to JPEG.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        fps: float = 10.0,
        timestamps: str | Path | None = None,
        recorded_utc: bool = False,
        pixel_format: str = "RGB3",
        loop: bool = False,
        paced: bool = True,
        clock: Clock | None = None,
        name: str = "camera",
        jpeg_quality: int = 90,
    ) -> None:
        super().__init__(clock=clock, paced=paced, pixel_format=pixel_format, name=name)
        if not fps > 0:
            raise ValueError(f"fps must be > 0 (got {fps})")
        if recorded_utc and timestamps is None:
            raise ValueError("recorded_utc needs a timestamps sidecar")
        self.folder = Path(folder)
        self.fps = fps
        self.timestamps = Path(timestamps) if timestamps is not None else None
        self.recorded_utc = recorded_utc
        self.loop = loop
        self.jpeg_quality = jpeg_quality
        self._files: list[Path] = []
        self._offsets: list[float] = []
        self._recorded: list[float] = []
        self._index = 0
        self._image: Any = None  # the PIL.Image module, once opened

    @property
    def files(self) -> list[Path]:
        """The frames of one pass, in replay order (after ``open()``)."""
        return list(self._files)

    async def _open_source(self) -> None:
        try:
            from PIL import Image
        except ImportError as err:
            raise DeviceError(f"camera {self.name!r}: Pillow is missing; {_INSTALL_HINT}") from err
        self._image = Image
        files, offsets, recorded = await asyncio.to_thread(self._scan)
        self._files, self._offsets, self._recorded = files, offsets, recorded
        self._index = 0
        log.debug("%s: %d images in %s", self.name, len(files), self.folder)

    async def _close_source(self) -> None:
        return None

    def _scan(self) -> tuple[list[Path], list[float], list[float]]:
        if not self.folder.is_dir():
            raise DeviceError(f"camera {self.name!r}: {self.folder} is not a directory")
        if self.timestamps is None:
            files = sorted(
                (p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                key=lambda p: _natural_key(p.name),
            )
            if not files:
                raise DeviceError(f"camera {self.name!r}: no {'/'.join(IMAGE_SUFFIXES)} files in {self.folder}")
            return files, [i / self.fps for i in range(len(files))], []
        return self._read_sidecar(self.timestamps)

    def _read_sidecar(self, path: Path) -> tuple[list[Path], list[float], list[float]]:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise DeviceError(f"camera {self.name!r}: cannot read timestamps {path}: {err}") from err
        rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].lstrip().startswith("#")]
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["filename", "timestamp"]:
            raise DecodeError("the first row must be the header 'filename,timestamp'", where=str(path))
        files: list[Path] = []
        stamps: list[float] = []
        for line, row in enumerate(rows[1:], start=2):
            if len(row) < 2:
                raise DecodeError(f"row {line}: expected 'filename,timestamp', got {row!r}", where=str(path))
            try:
                stamp = float(row[1])
            except ValueError as err:
                raise DecodeError(f"row {line}: timestamp {row[1]!r} is not a number", where=str(path)) from err
            if stamps and stamp < stamps[-1]:
                raise DecodeError(
                    f"row {line}: timestamp {stamp} is earlier than the previous {stamps[-1]}",
                    where=str(path),
                )
            files.append(self.folder / row[0].strip())
            stamps.append(stamp)
        if not files:
            raise DecodeError("no frames listed", where=str(path))
        return files, [s - stamps[0] for s in stamps], stamps

    def _pass_length(self) -> float:
        """Offset of the first frame of the next pass of a loop."""
        return self._offsets[-1] + 1.0 / self.fps

    async def _next(self) -> tuple[int, float, _Decoded | None, float | None] | None:
        n = len(self._files)
        if self._index >= n and not self.loop:
            return None
        lap, i = divmod(self._index, n)
        if i == 0 and lap > self._loops:
            self._loops = lap
        sequence = self._index
        self._index += 1
        offset = lap * self._pass_length() + self._offsets[i]
        recorded = None
        if self.recorded_utc:
            recorded = self._recorded[i] + lap * self._pass_length()
        path = self._files[i]
        try:
            image = await asyncio.to_thread(self._decode, path)
        except DecodeError as err:
            log.warning("%s: skipping frame %d: %s", self.name, sequence, err)
            image = None
        return sequence, offset, image, recorded

    def _decode(self, path: Path) -> _Decoded:
        image_mod = self._image
        try:
            raw = path.read_bytes()
            if self.pixel_format == "MJPG" and raw[:3] == b"\xff\xd8\xff":
                if raw.rstrip(b"\x00")[-2:] != b"\xff\xd9":
                    raise DecodeError("JPEG without end-of-image marker (truncated?)", where=str(path))
                with image_mod.open(io.BytesIO(raw)) as img:  # reads the header only
                    if img.format != "JPEG":
                        raise DecodeError(f"not a JPEG ({img.format})", where=str(path))
                    return _Decoded(raw, img.width, img.height)
            with image_mod.open(io.BytesIO(raw)) as img:
                img.load()
                if self.pixel_format == "GREY":
                    out = img.convert("L")
                    return _Decoded(out.tobytes(), out.width, out.height)
                rgb = img.convert("RGB")
                if self.pixel_format == "MJPG":
                    buf = io.BytesIO()
                    rgb.save(buf, format="JPEG", quality=self.jpeg_quality)
                    return _Decoded(buf.getvalue(), rgb.width, rgb.height)
                return _Decoded(rgb.tobytes(), rgb.width, rgb.height)
        except DecodeError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, image_mod.DecompressionBombError) as err:
            raise DecodeError(f"cannot decode image: {err}", where=str(path)) from err


class VideoFileCamera(_ReplayCamera):
    """Replays a video file through OpenCV (any container/codec its FFmpeg reads).

    Frame offsets are the container's presentation times (``CAP_PROP_POS_MSEC`` after each
    read); where the container gives none (the time does not advance), ``1/fps`` after the
    previous frame. ``pixel_format`` ``RGB3``, ``GREY``, or ``MJPG`` (frames re-encoded to
    JPEG: OpenCV does not hand out the compressed packets).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        pixel_format: str = "RGB3",
        loop: bool = False,
        paced: bool = True,
        clock: Clock | None = None,
        name: str = "camera",
        jpeg_quality: int = 90,
    ) -> None:
        super().__init__(clock=clock, paced=paced, pixel_format=pixel_format, name=name)
        self.path = Path(path)
        self.loop = loop
        self.jpeg_quality = jpeg_quality
        self._cv2: Any = None
        self._cap: Any = None
        self._lock = asyncio.Lock()
        self._index = 0
        self._lap_base = 0.0  # offset of the first frame of this pass
        self._last_offset: float | None = None
        self._pass_frames = 0
        self._pass_start_ms = 0.0
        self.fps = 0.0
        self.frame_count = 0
        self.width = 0
        self.height = 0

    async def _open_source(self) -> None:
        if not self.path.is_file():
            raise DeviceError(f"camera {self.name!r}: no video file {self.path}")
        try:
            import cv2
        except ImportError as err:
            raise DeviceError(f"camera {self.name!r}: OpenCV is missing; {_INSTALL_HINT}") from err
        self._cv2 = cv2
        cap = await asyncio.to_thread(cv2.VideoCapture, str(self.path))
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"camera {self.name!r}: OpenCV cannot read {self.path} as a video")
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else 25.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self._index = 0
        self._lap_base = 0.0
        self._last_offset = None
        self._pass_frames = 0
        log.debug(
            "%s: %s %dx%d %.3f fps, %d frames",
            self.name,
            self.path,
            self.width,
            self.height,
            self.fps,
            self.frame_count,
        )

    async def _close_source(self) -> None:
        async with self._lock:
            cap, self._cap = self._cap, None
            if cap is not None:
                await asyncio.to_thread(cap.release)

    def _read(self) -> tuple[bool, float, _Decoded | None]:
        """One frame: (got one, container time in ms, decoded or None if it would not convert)."""
        cv2 = self._cv2
        ok, img = self._cap.read()
        if not ok or img is None:
            return False, 0.0, None
        pos = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
        try:
            if self.pixel_format == "GREY":
                out = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            elif self.pixel_format == "MJPG":
                good, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                if not good:
                    return True, pos, None
                return True, pos, _Decoded(jpg.tobytes(), img.shape[1], img.shape[0])
            else:
                out = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        except cv2.error as err:
            log.warning("%s: cannot convert a frame of %s: %s", self.name, self.path, err)
            return True, pos, None
        return True, pos, _Decoded(out.tobytes(), out.shape[1], out.shape[0])

    def _rewind(self) -> bool:
        return bool(self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0))

    async def _next(self) -> tuple[int, float, _Decoded | None, float | None] | None:
        async with self._lock:
            if self._cap is None:
                return None
            ok, pos_ms, image = await asyncio.to_thread(self._read)
            if not ok:
                if self.frame_count and self._pass_frames < self.frame_count:
                    missing = self.frame_count - self._pass_frames
                    self._corrupt += missing
                    log.warning(
                        "%s: %s ended after %d of %d frames",
                        self.name,
                        self.path,
                        self._pass_frames,
                        self.frame_count,
                    )
                    self._index += missing
                if not self.loop or self._pass_frames == 0:
                    return None
                if not await asyncio.to_thread(self._rewind):
                    raise DeviceError(f"camera {self.name!r}: cannot rewind {self.path} to loop it")
                self._loops += 1
                self._lap_base = (self._last_offset or 0.0) + 1.0 / self.fps
                self._pass_frames = 0
                ok, pos_ms, image = await asyncio.to_thread(self._read)
                if not ok:
                    return None
                first_of_pass = True
            else:
                first_of_pass = self._pass_frames == 0
            self._pass_frames += 1
            if first_of_pass:
                self._pass_start_ms = pos_ms
            offset = self._lap_base + (pos_ms - self._pass_start_ms) / 1000.0
            if self._last_offset is not None and offset <= self._last_offset:
                offset = self._last_offset + 1.0 / self.fps  # no usable container time
            self._last_offset = offset
            sequence = self._index
            self._index += 1
            return sequence, offset, image, None
