"""Recorded CAN logs read through drivers.can_convert.read_log (and LogReplayPort), checked
against python-can's own expectations and against the CSS Electronics recordings.

refdata/can/python-can-logformats: each file's frames must equal ``expected_messages`` under
the README's rules (``can.Message.equals``: every listed field but the channel, timestamps
within ``timestamp_delta``; TRC absolute times read with TZ=UTC). Upstream BLF samples also
hold frames no bus can carry (an 11-bit id of 0x4444444; a DLC of 51 or 102): CanFrame
rejects the impossible ids, and read_log must report each through ``on_error``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from drivers.can_convert import read_log
from drivers.can_replay import LogReplayPort
from hal.errors import DecodeError, DeviceError
from hal.types import CanFrame

LOGFORMATS = "can/python-can-logformats"
CSS = "can/css-electronics-canmod-gps"
CSS_LOGS = {
    "3BA199E2_00000164_00000005-60FEB5A8": (5477, 44.6),
    "3BA199E2_00000165_00000006-60FFE42F": (7601, 61.8),
}


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """TRC headers hold local time; the expectations were made with TZ=UTC."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def _cases() -> list[Any]:
    root = Path(os.environ.get("ACC_REFDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "refdata"))
    path = root / LOGFORMATS / "expected_messages.json"
    if not path.is_file():  # the refdata fixture reports the missing data as an error
        return [pytest.param(None, id="refdata-missing")]
    return [pytest.param(case, id=Path(case["file"]).name) for case in json.loads(path.read_text())]


def impossible_id(m: dict[str, Any]) -> bool:
    """An id no bus can carry: more than 11 bits in a standard frame, 29 in an extended one."""
    return m["arbitration_id"] > (0x1FFFFFFF if m["is_extended_id"] else 0x7FF)


def impossible_dlc(m: dict[str, Any]) -> bool:
    """python-can's ``dlc`` is the payload length in bytes (the requested one for a remote
    frame): a data frame whose ``dlc`` disagrees with its data (102 for 8 bytes) cannot be
    on a bus."""
    return not m["is_remote_frame"] and m["dlc"] != len(bytes.fromhex(m["data_hex"]))


def mismatches(frame: CanFrame, m: dict[str, Any], delta: float) -> list[str]:
    got = {
        "arbitration_id": frame.arbitration_id,
        "is_extended_id": frame.is_extended_id,
        "is_remote_frame": frame.is_remote_frame,
        "is_error_frame": frame.is_error_frame,
        # python-can's dlc: payload bytes, or the requested length of a remote frame
        "dlc": frame.remote_dlc if frame.is_remote_frame else len(frame.data),
        "data_hex": frame.data.hex(),
        "is_fd": frame.is_fd,
        "is_rx": frame.is_rx,
        "bitrate_switch": frame.bitrate_switch,
        "error_state_indicator": frame.error_state_indicator,
    }
    out = [f"{k}: got {v!r}, expected {m[k]!r}" for k, v in got.items() if v != m[k]]
    if abs(frame.timestamp - m["timestamp"]) > delta:
        out.append(f"timestamp: got {frame.timestamp!r}, expected {m['timestamp']!r} (±{delta})")
    return out


@pytest.mark.parametrize("case", _cases())
def test_python_can_logformat_samples_match_expected_messages(refdata: Path, case: dict[str, Any]) -> None:
    path = refdata / LOGFORMATS / case["file"]
    assert case["compare"]["check_channel"] is False
    delta = case["compare"]["timestamp_delta"]
    errors: list[DecodeError] = []
    frames = list(read_log(path, on_error=errors.append))

    expected = case["expected_messages"]
    rejected = [m for m in expected if impossible_id(m) or impossible_dlc(m)]
    accepted = [m for m in expected if not (impossible_id(m) or impossible_dlc(m))]
    # nothing lost: every message python-can reads is a frame or a reported error
    with can.LogReader(path) as reader:
        assert len(frames) + len(errors) == sum(1 for _ in reader) == len(expected)

    assert len(frames) == len(accepted)
    problems = {}
    for i, (frame, m) in enumerate(zip(frames, accepted, strict=True)):
        if bad := mismatches(frame, m, delta):
            problems[i] = bad
    assert problems == {}

    assert len(errors) == len(rejected)
    for err, m in zip(errors, rejected, strict=True):
        message = str(err)
        assert f"0x{m['arbitration_id']:X}" in message
        if impossible_id(m):
            assert "out of range" in message and "standard (11-bit)" in message
        else:
            assert f"DLC {m['dlc']}" in message


def test_impossible_dlc_is_reported(refdata: Path) -> None:
    errors: list[DecodeError] = []
    frames = list(read_log(refdata / LOGFORMATS / "data/test_CanErrorFrameExt.blf", on_error=errors.append))
    assert frames == [] and len(errors) == 2 and all("102" in str(e) for e in errors)


def test_the_frames_with_impossible_dlcs_are_the_known_ones() -> None:
    """The upstream samples with impossible DLCs are exactly these (nothing new slips by)."""
    odd = {
        (Path(c["file"]).name, m["dlc"])
        for case in _cases()
        if (c := case.values[0]) is not None
        for m in c["expected_messages"]
        if impossible_dlc(m)
    }
    assert odd == {
        ("test_CanErrorFrameExt.blf", 102),
        ("test_CanMessage.blf", 51),
        ("test_CanMessage2.blf", 51),
    }


def test_logfile_asc_without_expectations_reads_completely(refdata: Path) -> None:
    path = refdata / LOGFORMATS / "data/logfile.asc"
    errors: list[DecodeError] = []
    frames = list(read_log(path, on_error=errors.append))
    with can.ASCReader(path) as reader:
        messages = list(reader)
    assert errors == [] and len(frames) == len(messages) > 0
    assert [(f.arbitration_id, f.data, f.timestamp) for f in frames] == [
        (m.arbitration_id, bytes(m.data) if not m.is_remote_frame else b"", m.timestamp) for m in messages
    ]


async def test_replay_port_reports_the_impossible_blf_frames(refdata: Path) -> None:
    port = LogReplayPort(refdata / LOGFORMATS / "data/test_CanMessage.blf", speed=None)
    async with port:
        frames = [f async for f in port.frames()]
    assert frames == [] and port.invalid_frames == 2
    assert all("0x4444444 out of range for a standard (11-bit) frame" in e for e in port.errors)


# ---------------------------------------------------------------- CSS Electronics recordings


@pytest.mark.parametrize("stem", sorted(CSS_LOGS))
def test_css_candump_logs_frame_counts_and_channels(refdata: Path, stem: str) -> None:
    count, duration = CSS_LOGS[stem]
    path = refdata / CSS / f"{stem}.candump.log"
    errors: list[DecodeError] = []
    frames = list(read_log(path, on_error=errors.append))
    assert errors == [] and len(frames) == count
    channels = Counter(f.channel for f in frames)
    assert set(channels) == {"can1", "can2"}
    # can2: CANmod.gps, standard ids 1..9; can1: OBD-II responses on 0x7E8 and the logger's 0x17F00010
    assert {f.arbitration_id for f in frames if f.channel == "can2"} == set(range(1, 10))
    assert {(f.arbitration_id, f.is_extended_id) for f in frames if f.channel == "can1"} == {
        (0x7E8, False),
        (0x17F00010, True),
    }
    assert frames[-1].timestamp - frames[0].timestamp == pytest.approx(duration, abs=0.1)
    # the first line, read by hand
    first = path.read_text().splitlines()[0]
    stamp, chan, body = first.split()
    ident, data = body.split("#")
    assert frames[0].candump() == f"{stamp} {chan} {ident}#{data}"


@pytest.mark.parametrize("stem", sorted(CSS_LOGS))
async def test_css_mf4_matches_its_candump_conversion(refdata: Path, stem: str) -> None:
    mf4 = refdata / CSS / f"{stem}.MF4"
    try:
        import asammdf  # noqa: F401
    except ImportError:
        # without the "mdf" extra a replay must say so, not crash
        with pytest.raises((DeviceError, NotImplementedError)) as info:
            await LogReplayPort(mf4, speed=None).open()
        assert "asammdf" in str(info.value)
        if isinstance(info.value, NotImplementedError):
            pytest.fail(f"NotImplementedError leaked instead of DeviceError: {info.value}")
        pytest.skip("asammdf is not installed (extra 'mdf'): MF4 frames not compared")
    # MF4 numbers its bus channels; the candump conversion names them can1/can2 (README)
    frames = list(read_log(mf4, channel_map={"1": "can1", "2": "can2"}))
    text = list(read_log(refdata / CSS / f"{stem}.candump.log"))
    assert len(frames) == len(text) == CSS_LOGS[stem][0]
    for a, b in zip(frames, text, strict=True):
        assert (a.arbitration_id, a.is_extended_id, a.data, a.channel) == (
            b.arbitration_id,
            b.is_extended_id,
            b.data,
            b.channel,
        )
        assert a.timestamp == pytest.approx(b.timestamp, abs=1e-6)
