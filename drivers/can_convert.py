"""The one place where python-can's ``can.Message`` becomes a ``hal.CanFrame`` and back,
and where recorded bus logs are read through python-can's readers.

Log formats by suffix (python-can's readers): ``.log`` candump -l, ``.asc`` Vector ASC,
``.blf`` Vector BLF, ``.trc`` PEAK TRC, ``.csv`` python-can CSV, ``.mf4`` ASAM MDF4 (needs the
``mdf`` extra), ``.db`` python-can SQLite; a ``.gz`` suffix after any text format is read
compressed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import can

from hal.errors import DecodeError, DeviceError
from hal.types import CanFrame

__all__ = ["LOG_SUFFIXES", "frame_from_message", "message_from_frame", "read_log"]

log = logging.getLogger(__name__)

LOG_SUFFIXES = (".log", ".asc", ".blf", ".trc", ".csv", ".mf4", ".db")


def frame_from_message(msg: can.Message, channel: str = "", monotonic: float = 0.0) -> CanFrame:
    """Convert a python-can message; raises ``DecodeError`` for an impossible frame: id out of
    range, too much data, or a DLC that no frame can have or that disagrees with the data
    (python-can's ``dlc`` is the code 0..15 for classic CAN and the length in bytes for FD)."""
    try:
        frame = CanFrame(
            arbitration_id=msg.arbitration_id,
            data=bytes(msg.data) if not msg.is_remote_frame else b"",
            is_extended_id=msg.is_extended_id,
            is_fd=msg.is_fd,
            is_remote_frame=msg.is_remote_frame,
            is_error_frame=msg.is_error_frame,
            bitrate_switch=msg.bitrate_switch,
            error_state_indicator=msg.error_state_indicator,
            is_rx=msg.is_rx,
            channel=channel or (str(msg.channel) if msg.channel is not None else ""),
            timestamp=msg.timestamp,
            monotonic=monotonic,
            remote_dlc=msg.dlc if msg.is_remote_frame else 0,
        )
    except ValueError as err:
        raise DecodeError(str(err), where=f"{channel or msg.channel} frame 0x{msg.arbitration_id:X}") from err
    dlc = msg.dlc
    if dlc is not None and not msg.is_remote_frame:
        problem = ""
        if msg.is_fd and not msg.is_error_frame:
            if dlc != len(msg.data):
                problem = f"CAN FD length {dlc} disagrees with the {len(msg.data)} data bytes"
        elif not 0 <= dlc <= 15:
            problem = f"DLC {dlc} is not a CAN DLC (0..15)"
        elif not msg.is_error_frame and min(dlc, 8) != len(msg.data):
            problem = f"DLC {dlc} means {min(dlc, 8)} data bytes but the frame has {len(msg.data)}"
        if problem:
            raise DecodeError(problem, where=f"{channel or msg.channel} frame 0x{msg.arbitration_id:X}")
    return frame


def message_from_frame(frame: CanFrame, channel: str | int | None = None) -> can.Message:
    return can.Message(
        timestamp=frame.timestamp,
        arbitration_id=frame.arbitration_id,
        is_extended_id=frame.is_extended_id,
        is_remote_frame=frame.is_remote_frame,
        is_error_frame=frame.is_error_frame,
        is_fd=frame.is_fd,
        bitrate_switch=frame.bitrate_switch,
        error_state_indicator=frame.error_state_indicator,
        is_rx=frame.is_rx,
        channel=channel,
        dlc=frame.dlc if frame.is_remote_frame else None,
        data=None if frame.is_remote_frame else frame.data,
        check=False,
    )


def read_log(
    path: str | Path,
    *,
    channel_map: Mapping[str, str] | Callable[[str], str] | None = None,
    on_error: Callable[[DecodeError], None] | None = None,
) -> Iterator[CanFrame]:
    """Yield the frames of a recorded log in file order.

    ``channel_map`` renames the log's channels (``{"can2": "gnss"}`` or a function); frames of
    a channel missing from a dict map keep their own name. A frame python-can reads but that
    is not a valid CAN frame is passed to ``on_error`` (default: logged) and skipped; a file
    that cannot be opened or parsed raises ``DeviceError``/``DecodeError`` naming the file.
    """
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in LOG_SUFFIXES:
        raise DecodeError(
            f"unknown log format {''.join(path.suffixes) or '(no suffix)'}; "
            f"known: {', '.join(LOG_SUFFIXES)} (optionally .gz)",
            where=str(path),
        )
    if not path.is_file():
        raise DeviceError(f"{path}: no such log file")
    try:
        reader = can.LogReader(path)
    except (ImportError, NotImplementedError) as err:  # python-can's MF4Reader without asammdf
        raise DeviceError(f"{path}: reading this format needs an extra package (mdf): {err}") from err
    except (OSError, ValueError) as err:
        raise DecodeError(f"cannot open log: {err}", where=str(path)) from err

    def rename(ch: str) -> str:
        if channel_map is None:
            return ch
        if callable(channel_map):
            return channel_map(ch)
        return channel_map.get(ch, ch)

    index = 0
    try:
        with reader:
            it = iter(reader)
            while True:
                try:
                    msg = next(it)
                except StopIteration:
                    return
                except (ValueError, IndexError, KeyError, TypeError) as err:
                    # python-can's text readers raise these on a malformed line
                    raise DecodeError(f"malformed record after frame {index}: {err}", where=str(path)) from err
                index += 1
                channel = rename(str(msg.channel) if msg.channel is not None else "")
                try:
                    yield frame_from_message(msg, channel=channel)
                except DecodeError as err:
                    if on_error is not None:
                        on_error(err)
                    else:
                        log.warning("%s: frame %d skipped: %s", path, index, err)
    except OSError as err:
        raise DeviceError(f"{path}: {err}") from err
