"""The 9 ``cantools decode`` command-line cases: our candump parser and DBC decoder give the
message names and signal values cantools printed (compared as values, not text)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.candump import CandumpError, CandumpParser, iter_candump, parse_line
from drivers.dbc import DbcDecoder
from hal.errors import DecodeError
from hal.types import CanFrame
from tests.conftest import REFDATA

CASES_DIR = REFDATA / "can" / "cantools-vectors"


def _cases() -> list[dict[str, Any]]:
    path = CASES_DIR / "cli_decode" / "cases.json"
    return json.loads(path.read_text()) if path.is_file() else []


CASES = _cases()


@dataclass
class Expected:
    line: str
    #: "decoded", "error" (cantools printed a reason), "none" (no "::": blank or ERROR line)
    kind: str
    message: str = ""
    signals: dict[str, Any] = field(default_factory=dict)
    text: str = ""


def _value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _signals(body: str) -> dict[str, Any]:
    out = {}
    for part in body.split(","):
        part = part.strip()
        if part:
            name, _, value = part.partition(": ")
            out[name] = _value(value.strip())
    return out


def parse_expected(text: str) -> list[Expected]:
    """cantools' output: ``<input line> :: NAME(sig: v, ...)``, multi-line blocks, or reasons."""
    out: list[Expected] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if " ::" not in line:
            out.append(Expected(line, "none"))
            continue
        head, _, rest = line.partition(" ::")
        rest = rest.strip()
        if not rest:  # multi-line: NAME( / sig: v, / )
            name = lines[i].rstrip("(")
            body = []
            i += 1
            while lines[i] != ")":
                body.append(lines[i])
                i += 1
            i += 1
            out.append(Expected(head, "decoded", name, _signals(" ".join(body))))
        elif (mo := re.fullmatch(r"(\w+)\((.*)\)", rest)) is not None:
            out.append(Expected(head, "decoded", mo[1], _signals(mo[2])))
        else:
            out.append(Expected(head, "error", text=rest))
    return out


def test_nine_cases(refdata: Path) -> None:
    assert len(CASES) == 9


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cli_decode_case(case: dict[str, Any], refdata: Path) -> None:
    (dbc,) = case["database_files"]
    decoder = DbcDecoder(
        CASES_DIR / "dbc" / dbc, bus="vcan0", mapping=False, prune_choices="--prune" in case["options"]
    )
    input_lines = (CASES_DIR / case["input"]).read_text().split("\n")
    if input_lines[-1] == "":
        input_lines.pop()
    expected = parse_expected((CASES_DIR / case["expected_output"]).read_text())
    assert [e.line.rstrip() for e in expected] == [line.rstrip() for line in input_lines]

    parser = CandumpParser()
    decoded = 0
    for line, want in zip(input_lines, expected, strict=True):
        errors_before = parser.error_count
        frame = parser.line(line)
        if want.kind == "none":
            assert frame is None, line
            continue
        if want.kind == "decoded":
            assert frame is not None, f"{line!r}: {parser.errors[-1:]}"
            msg = decoder.decode_message(frame)
            assert msg is not None
            assert msg.name == want.message
            got = msg.values()
            assert list(got) == list(want.signals), line
            for name, value in want.signals.items():
                if isinstance(value, float):
                    assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-9), name
                else:
                    assert got[name] == value, name
            decoded += 1
            continue
        # cantools could not decode it: neither can we, for the same reason
        if want.text.startswith("Unknown frame id"):
            assert frame is not None
            assert decoder.decode_message(frame) is None
        else:
            assert want.text.startswith("Wrong data size"), want.text
            if frame is None:  # more than 8 bytes in a classic frame: the line itself is bad
                assert parser.error_count == errors_before + 1
                assert parser.errors[-1].kind == "malformed"
            else:
                with pytest.raises(DecodeError, match=r"vcan0 0x064 DRIVER_HEARTBEAT: frame has 8 data bytes"):
                    decoder.decode_message(frame)
    assert decoded == sum(e.kind == "decoded" for e in expected) > 0


def test_error_lines_are_reported_with_line_numbers() -> None:
    text = (
        "(1594172461.968006) vcan0 0C8#F000000000000000\n"
        "  vcan0  ERROR\n"
        "garbage here\n"
        "\n"
        "(0.5) can0 20000080#0000000000000000\n"
        "  vcan0  1F4   [4]  01 02 03\n"
        "(1.000000) can1 123#R\n"
        "(1.000000) can1 1FFFFFFF##3AABBCCDDEEFF001122334455\n"
        "(1.000000) can1 123##0AABBCCDDEEFF00112233\n"
    )
    errors: list[CandumpError] = []
    frames = list(iter_candump(text.splitlines(keepends=True), on_error=errors.append))
    assert [(e.line_no, e.kind) for e in errors] == [
        (2, "error_frame"),
        (3, "malformed"),
        (5, "error_frame"),
        (6, "malformed"),
        (9, "malformed"),  # 10 bytes is not a CAN FD length
    ]
    assert [f.arbitration_id for f in frames] == [0xC8, 0x123, 0x1FFFFFFF]
    remote, fd = frames[1], frames[2]
    assert remote.is_remote_frame and remote.data == b""
    assert fd.is_fd and fd.is_extended_id and fd.bitrate_switch and fd.error_state_indicator
    assert fd.data == bytes.fromhex("AABBCCDDEEFF001122334455")


def test_forms_and_timestamps() -> None:
    a = parse_line(" (2020-12-19 12:04:45.485261)  vcan0  0C8   [8]  F0 00 00 00 00 00 00 00")
    assert a is not None
    assert a.timestamp == datetime(2020, 12, 19, 12, 4, 45, 485261, tzinfo=UTC).timestamp()
    b = parse_line("(1594172462.968006) vcan0 0C8#F000000000000000 T")
    assert b is not None and not b.is_rx and b.timestamp == 1594172462.968006
    c = parse_line("  can0  1F0   [8]  00 00 00 00 00 00 1B C1   '........'")
    assert c == CanFrame(0x1F0, bytes.fromhex("0000000000001BC1"), channel="can0")
    d = parse_line("  can0  12345678   [2]  01 02")
    assert d is not None and d.is_extended_id and d.arbitration_id == 0x12345678
    assert parse_line("   ") is None
    with pytest.raises(DecodeError, match="line 7"):
        parse_line("(1.0) can0 123#ABC", line_no=7)


def test_incremental_feed_matches_whole_text(refdata: Path) -> None:
    text = (
        REFDATA / "can" / "css-electronics-canmod-gps" / "3BA199E2_00000164_00000005-60FEB5A8.candump.log"
    ).read_text()
    whole = CandumpParser()
    frames = whole.feed(text) + whole.close()
    chunked = CandumpParser()
    got: list[CanFrame] = []
    for i in range(0, len(text), 997):
        got += chunked.feed(text[i : i + 997])
    got += chunked.close()
    assert got == frames and len(frames) == 5477 and whole.error_count == 0
