"""Every vector of cantools' own encode/decode tests, through our DBC decoder.

Decode vectors go through ``DbcDecoder.decode_message`` with the vector's options (the frame is
built the way it would come off the bus: extended id and CAN FD from the DBC); encode vectors
through ``DbcDecoder.encode``. 85 vectors, 8 DBCs (refdata/can/cantools-vectors/README.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from drivers.dbc import DbcDecoder, DecodedMessage
from hal.errors import DecodeError
from hal.types import CAN_FD_DLC, CanFrame
from tests.conftest import REFDATA

VECTORS_DIR = REFDATA / "can" / "cantools-vectors"


def _vectors() -> list[dict[str, Any]]:
    path = VECTORS_DIR / "encode_decode_vectors.json"
    if not path.is_file():  # the refdata fixture reports the missing directory
        return []
    return json.loads(path.read_text())["vectors"]


VECTORS = _vectors()
_DECODERS: dict[str, DbcDecoder] = {}


def decoder(dbc: str) -> DbcDecoder:
    if dbc not in _DECODERS:
        _DECODERS[dbc] = DbcDecoder(VECTORS_DIR / "dbc" / dbc, bus="vcan0", mapping=False)
    return _DECODERS[dbc]


def _id(v: dict[str, Any]) -> str:
    return f"{v['op']}-{v['dbc']}-{v['message']}-{v['data_hex'][:16]}-{'-'.join(sorted(v['options']))}"


def test_all_85_vectors_are_here(refdata: Path) -> None:
    assert len(VECTORS) == 85
    assert {v["op"] for v in VECTORS} == {"encode", "decode"}


def _frame(dec: DbcDecoder, vector: dict[str, Any]) -> CanFrame:
    msg = dec.database.get_message_by_name(vector["message"])
    data = bytes.fromhex(vector["data_hex"])
    is_fd = bool(msg.is_fd) or len(data) > 8
    assert not is_fd or len(data) in CAN_FD_DLC
    return CanFrame(
        arbitration_id=vector["frame_id"],
        data=data,
        is_extended_id=bool(msg.is_extended_frame),
        is_fd=is_fd,
        channel="vcan0",
    )


def _encodable(signals: dict[str, Any]) -> dict[str, Any]:
    """A recorded choice argument ``{"choice": name, "raw": n}`` is passed as its name."""
    return {k: v["choice"] if isinstance(v, dict) else v for k, v in signals.items()}


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return got == want


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["op"] == "decode"], ids=_id)
def test_decode_vector(vector: dict[str, Any], refdata: Path) -> None:
    dec = decoder(vector["dbc"])
    opts = vector["options"]
    result = dec.decode_message(
        _frame(dec, vector),
        decode_choices=opts.get("decode_choices", True),
        scaling=opts.get("scaling", True),
        allow_truncated=opts.get("allow_truncated", False),
        allow_excess=True,  # cantools' Database.decode_message / Message.decode default
    )
    assert isinstance(result, DecodedMessage)
    assert result.name == vector["message"]
    assert result.frame_id == vector["frame_id"]
    got = {s.name: s for s in result.signals}
    assert set(got) == set(vector["signals"])
    for name, want in vector["signals"].items():
        signal = got[name]
        if isinstance(want, dict):  # a VAL_ choice
            assert signal.value == want["choice"], name
            assert signal.raw == want["raw"], name
        else:
            assert signal.raw is None, name
            assert _same(signal.value, want), f"{name}: {signal.value!r} != {want!r}"


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["op"] == "encode"], ids=_id)
def test_encode_vector(vector: dict[str, Any], refdata: Path) -> None:
    dec = decoder(vector["dbc"])
    opts = vector["options"]
    message = vector.get("frame_id_or_name", vector["message"])
    data = dec.encode(
        message,
        _encodable(vector["signals"]),
        scaling=opts.get("scaling", True),
        padding=opts.get("padding", False),
        strict=opts.get("strict", True),
    )
    assert data.hex() == vector["data_hex"]


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["op"] == "encode" and v["options"].get("scaling", True)], ids=_id
)
def test_encoded_vector_decodes_back(vector: dict[str, Any], refdata: Path) -> None:
    """What an encode vector encodes, our decode() reads back (values as encoded)."""
    dec = decoder(vector["dbc"])
    frame = _frame(dec, vector)
    samples = {s.name.rsplit(".", 1)[-1]: s.value for s in dec.decode(frame)}
    msg = dec.database.get_message_by_name(vector["message"])
    by_name = {s.name: s for s in msg.signals}
    for name, value in _encodable(vector["signals"]).items():
        if name not in by_name:
            continue  # strict=False vector's extra signal
        assert name in samples, name
        choices = by_name[name].choices or {}
        if not isinstance(value, str) and value in choices:
            value = str(choices[value])  # unmapped signals with VAL_ come out as choice names
        if isinstance(value, str):
            assert samples[name] == value, name
        else:
            assert _same(samples[name], value), f"{name}: {samples[name]!r} != {value!r}"


def test_length_errors_are_counted_and_named(refdata: Path) -> None:
    dec = DbcDecoder(VECTORS_DIR / "dbc" / "motohawk.dbc", bus="vcan0", mapping=False)
    frame = CanFrame(0x1F0, bytes(7), channel="vcan0")
    with pytest.raises(DecodeError) as info:
        dec.decode(frame)
    assert "vcan0 0x1F0 ExampleMessage" in str(info.value)
    assert dec.counters["error.length"] == 1
    # truncated frames decode with allow_truncated through decode_message only
    partial = dec.decode_message(CanFrame(0x1F0, bytes.fromhex("0011"), channel="vcan0"), allow_truncated=True)
    assert partial is not None and {s.name for s in partial.signals} == {"Enable", "AverageRadius"}
