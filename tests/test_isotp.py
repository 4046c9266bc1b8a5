"""ISO 15765-2 transport: round trips, frame layouts, flow control, timeouts, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.isotp import (
    FlowStatus,
    IsoTpConfig,
    IsoTpDecodeError,
    IsoTpError,
    IsoTpOverflow,
    IsoTpReceiver,
    IsoTpSender,
    IsoTpTimeout,
    decode_st_min,
    encode_st_min,
    flow_control,
)
from hal.errors import DecodeError


def transfer(payload: bytes, tx_cfg: IsoTpConfig, rx_cfg: IsoTpConfig) -> tuple[bytes, list[tuple[float, bytes]], int]:
    """Run a transfer to completion with nothing lost; returns (payload, frames sent with times, FCs)."""
    tx, rx = IsoTpSender(tx_cfg), IsoTpReceiver(rx_cfg)
    now = 0.0
    sent: list[tuple[float, bytes]] = [(now, f) for f in tx.send(payload, now=now)]
    queue = [f for _, f in sent]
    fcs = 0
    while True:
        while queue:
            result = rx.on_frame(queue.pop(0), now=now)
            if result.payload is not None:
                assert tx.idle and not rx.busy and not queue
                return result.payload, sent, fcs
            if result.flow_control is not None:
                fcs += 1
                out = tx.on_frame(result.flow_control, now=now)
                sent += [(now, f) for f in out]
                queue += out
        deadline = tx.deadline
        assert deadline is not None, "sender stalled"
        now = max(now, deadline)
        out = tx.poll(now=now)
        sent += [(now, f) for f in out]
        queue += out


CONFIGS = [
    IsoTpConfig(),
    IsoTpConfig(padding=None),
    IsoTpConfig(block_size=3, st_min=0.005),
    IsoTpConfig(st_min=0.0003),
    IsoTpConfig(frame_len=64, padding=None),
    IsoTpConfig(frame_len=64, padding=0xAA, block_size=1),
    IsoTpConfig(frame_len=12, padding=0x00),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
@pytest.mark.parametrize("size", [1, 6, 7, 8, 13, 62, 63, 64, 100, 4095, 4096, 6000])
def test_round_trip(cfg: IsoTpConfig, size: int) -> None:
    payload = bytes((i * 7 + size) & 0xFF for i in range(size))
    rx_cfg = IsoTpConfig(frame_len=cfg.frame_len, block_size=cfg.block_size, st_min=cfg.st_min, max_length=10_000)
    got, sent, fcs = transfer(payload, cfg, rx_cfg)
    assert got == payload
    frames = [f for _, f in sent]
    for f in frames:
        assert len(f) <= cfg.frame_len
        if cfg.padding is not None and cfg.frame_len == 8:
            assert len(f) == 8
    if len(frames) > 1:
        # consecutive frames are numbered 1..15, 0, 1, ...
        sns = [f[0] & 0x0F for f in frames[1:]]
        assert sns == [(i + 1) & 0x0F for i in range(len(sns))]
        # block size: a flow control after the first frame and after every block
        if cfg.block_size:
            assert fcs == 1 + (len(frames) - 2) // cfg.block_size
        else:
            assert fcs == 1
        # separation time between consecutive frames
        if cfg.st_min:
            times = [t for t, _ in sent[1:]]
            assert all(b - a >= cfg.st_min - 1e-12 for a, b in zip(times, times[1:], strict=False))


def test_classic_frame_layouts() -> None:
    tx = IsoTpSender(IsoTpConfig(padding=0x55))
    assert tx.send(b"\x01\x0d", now=0) == [bytes.fromhex("02010D5555555555")]
    payload = bytes(range(20))
    assert tx.send(payload, now=0) == [bytes.fromhex("1014") + payload[:6]]
    out = tx.on_frame(bytes.fromhex("300000"), now=0)
    assert out == [bytes([0x21]) + payload[6:13], bytes([0x22]) + payload[13:20]]
    assert tx.idle
    # the last CF is padded
    tx.send(bytes(10), now=0)
    (last,) = tx.on_frame(bytes.fromhex("3000005555555555"), now=0)
    assert last == bytes([0x21, 0, 0, 0, 0, 0x55, 0x55, 0x55])


def test_fd_frame_layouts() -> None:
    tx = IsoTpSender(IsoTpConfig(frame_len=64, padding=0xCC))
    (sf,) = tx.send(bytes(range(10)), now=0)
    assert sf[:2] == b"\x00\x0a" and sf[2:12] == bytes(range(10)) and len(sf) == 12
    (ff,) = tx.send(bytes(5000), now=0)
    assert ff[:6] == bytes([0x10, 0x00]) + (5000).to_bytes(4, "big") and len(ff) == 64


def test_st_min_encoding() -> None:
    assert encode_st_min(0.0) == 0 and encode_st_min(0.127) == 0x7F and encode_st_min(0.0003) == 0xF3
    assert decode_st_min(0x0A) == 0.010 and decode_st_min(0xF5) == pytest.approx(0.0005)
    assert decode_st_min(0x80) == 0.127 and decode_st_min(0xFA) == 0.127
    with pytest.raises(ValueError):
        encode_st_min(0.2)


def test_sender_n_bs_timeout() -> None:
    tx = IsoTpSender(IsoTpConfig(n_bs=0.5))
    tx.send(bytes(20), now=10.0)
    assert tx.deadline == 10.5
    assert tx.poll(now=10.4) == []
    with pytest.raises(IsoTpTimeout, match="N_Bs"):
        tx.poll(now=10.5)
    assert tx.idle
    assert isinstance(IsoTpTimeout("x"), TimeoutError)


def test_flow_control_wait_and_overflow() -> None:
    cfg = IsoTpConfig(n_bs=1.0, max_wait_frames=2)
    tx = IsoTpSender(cfg)
    tx.send(bytes(20), now=0)
    wait = flow_control(FlowStatus.WAIT, config=cfg)
    assert tx.on_frame(wait, now=0.9) == [] and tx.deadline == pytest.approx(1.9)
    assert tx.on_frame(wait, now=1.5) == []
    with pytest.raises(IsoTpTimeout, match="WAIT"):
        tx.on_frame(wait, now=2.0)
    tx.send(bytes(20), now=0)
    with pytest.raises(IsoTpOverflow):
        tx.on_frame(flow_control(FlowStatus.OVERFLOW, config=cfg), now=0)
    assert tx.idle
    with pytest.raises(IsoTpDecodeError, match="not sending"):
        tx.on_frame(flow_control(FlowStatus.CONTINUE, config=cfg), now=0)


def test_receiver_refuses_too_long_with_overflow_frame() -> None:
    rx = IsoTpReceiver(IsoTpConfig(max_length=100))
    with pytest.raises(IsoTpOverflow) as info:
        rx.on_frame(bytes([0x10, 200]) + bytes(6), now=0)
    assert info.value.flow_control is not None and info.value.flow_control[0] == 0x32
    assert not rx.busy


def test_receiver_n_cr_timeout_and_late_frame() -> None:
    rx = IsoTpReceiver(IsoTpConfig(n_cr=0.2))
    result = rx.on_frame(bytes([0x10, 20]) + bytes(6), now=1.0)
    assert result.flow_control is not None and result.flow_control[:3] == b"\x30\x00\x00"
    assert rx.deadline == pytest.approx(1.2)
    rx.on_frame(bytes([0x21]) + bytes(7), now=1.1)
    assert rx.deadline == pytest.approx(1.3)
    rx.poll(now=1.2)
    with pytest.raises(IsoTpTimeout, match="N_Cr"):
        rx.poll(now=1.3)
    assert not rx.busy
    rx.on_frame(bytes([0x10, 20]) + bytes(6), now=2.0)
    with pytest.raises(IsoTpTimeout):
        rx.on_frame(bytes([0x21]) + bytes(7), now=2.5)


def test_receiver_protocol_errors() -> None:
    rx = IsoTpReceiver()
    with pytest.raises(IsoTpDecodeError, match="without a first frame"):
        rx.on_frame(bytes([0x21]) + bytes(7), now=0)
    rx.on_frame(bytes([0x10, 20]) + bytes(6), now=0)
    with pytest.raises(IsoTpDecodeError, match="number 2, expected 1"):
        rx.on_frame(bytes([0x22]) + bytes(7), now=0)
    assert not rx.busy
    # a new single frame in the middle of a transfer wins (and is counted)
    rx.on_frame(bytes([0x10, 20]) + bytes(6), now=0)
    assert rx.on_frame(b"\x02\x41\x0d", now=0).payload == b"\x41\x0d"
    assert rx.interrupted == 1
    for bad in (b"", b"\x00\x00", b"\x08" + bytes(7), b"\x10\x05" + bytes(6), b"\x40", b"\x30\x00\x00", b"\x10\x20"):
        with pytest.raises(IsoTpDecodeError):
            rx.on_frame(bad, now=0)
    assert isinstance(IsoTpDecodeError("x"), DecodeError)


frames_st = st.lists(st.tuples(st.binary(min_size=0, max_size=70), st.floats(0, 5)), max_size=40)


@given(frames_st, st.sampled_from([IsoTpConfig(), IsoTpConfig(frame_len=64, block_size=2, max_length=300)]))
@settings(max_examples=300, deadline=None)
def test_fuzz_receiver_raises_only_isotp_errors(frames: list[tuple[bytes, float]], cfg: IsoTpConfig) -> None:
    rx = IsoTpReceiver(cfg)
    now = 0.0
    for data, dt in frames:
        now += dt
        try:
            result = rx.on_frame(data, now=now)
        except IsoTpError:
            continue
        if result.payload is not None:
            assert 1 <= len(result.payload) <= cfg.max_length
        try:
            rx.poll(now=now)
        except IsoTpTimeout:
            pass


@given(st.binary(min_size=8, max_size=200), frames_st)
@settings(max_examples=300, deadline=None)
def test_fuzz_sender_raises_only_isotp_errors(payload: bytes, frames: list[tuple[bytes, float]]) -> None:
    tx = IsoTpSender(IsoTpConfig(st_min=0.001))
    tx.send(payload, now=0.0)
    now = 0.0
    for data, dt in frames:
        now += dt
        try:
            out = tx.on_frame(data, now=now) + tx.poll(now=now)
        except IsoTpError:
            if tx.idle:
                tx.send(payload, now=now)
            continue
        assert all(1 <= len(f) <= 8 for f in out)


@given(st.binary(min_size=1, max_size=3000), st.sampled_from(CONFIGS))
@settings(max_examples=100, deadline=None)
def test_round_trip_property(payload: bytes, cfg: IsoTpConfig) -> None:
    rx_cfg = IsoTpConfig(frame_len=cfg.frame_len, block_size=cfg.block_size, st_min=cfg.st_min)
    assert transfer(payload, cfg, rx_cfg)[0] == payload
