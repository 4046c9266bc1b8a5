"""ledger_lite.wire: the consensus message/input codec is strict, bounded and round-trips both ways."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_lite import cbor
from ledger_lite.consensus import PRECOMMIT, PREVOTE, Proposal, ProposeValue, Received, Start, Timeout, Vote
from ledger_lite.errors import MalformedError
from ledger_lite.wire import (
    MAX_DID,
    MAX_HEIGHT,
    MAX_ROUND,
    MAX_SIGNATURE,
    MAX_VALUE,
    WireFormatError,
    decode_input,
    decode_message,
    encode_input,
    encode_message,
)

DID = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"

heights = st.integers(1, MAX_HEIGHT)
rounds = st.integers(0, MAX_ROUND)
dids = st.text(min_size=1, max_size=40) | st.just(DID) | st.just("x" * MAX_DID)
sigs = st.binary(max_size=80) | st.just(bytes(MAX_SIGNATURE))
proposals = st.builds(Proposal, heights, rounds, st.binary(max_size=300), st.integers(-1, MAX_ROUND), dids, sigs)
votes = st.builds(
    Vote,
    st.sampled_from([PREVOTE, PRECOMMIT]),
    heights,
    rounds,
    st.none() | st.binary(min_size=32, max_size=32),
    dids,
    sigs,
)
messages = proposals | votes
inputs = (
    st.just(Start())
    | st.builds(Received, messages)
    | st.builds(Timeout, st.sampled_from(["propose", "prevote", "precommit"]), heights, rounds)
    | st.builds(ProposeValue, heights, rounds, st.binary(max_size=300))
)


def test_layout() -> None:
    vote = Vote(PREVOTE, 3, 1, None, DID, b"s")
    assert cbor.loads(encode_message(vote)) == ["vote", "prevote", 3, 1, None, DID, b"s"]
    prop = Proposal(2, 1, b"block", 0, DID, b"sig")
    assert cbor.loads(encode_message(prop)) == ["proposal", 2, 1, b"block", 0, DID, b"sig"]
    assert cbor.loads(encode_input(Start())) == ["start"]
    assert cbor.loads(encode_input(Timeout("prevote", 4, 2))) == ["timeout", "prevote", 4, 2]
    assert cbor.loads(encode_input(ProposeValue(4, 2, b"v"))) == ["propose_value", 4, 2, b"v"]
    assert cbor.loads(encode_input(Received(vote))) == ["received", ["vote", "prevote", 3, 1, None, DID, b"s"]]


def test_max_sized_proposal_round_trips() -> None:
    prop = Proposal(MAX_HEIGHT, MAX_ROUND, bytes(MAX_VALUE), MAX_ROUND, "d" * MAX_DID, bytes(MAX_SIGNATURE))
    data = encode_message(prop)
    assert decode_message(data) == prop
    assert decode_input(encode_input(Received(prop))) == Received(prop)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_message_round_trip(msg: Proposal | Vote) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert encode_message(decode_message(data)) == data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(inputs)
def test_input_round_trip(inp: Any) -> None:
    data = encode_input(inp)
    assert decode_input(data) == inp
    assert encode_input(decode_input(data)) == data


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_format_error(data: bytes) -> None:
    for decode in (decode_message, decode_input):
        try:
            out = decode(data)
        except WireFormatError:
            continue
        enc = encode_message(out) if isinstance(out, Proposal | Vote) else encode_input(out)  # type: ignore[arg-type]
        assert enc == data  # whatever decodes is canonical


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_encodings_decode_canonically_or_raise(msg: Proposal | Vote, data: st.DataObject) -> None:
    raw = bytearray(encode_message(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    mutated = bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw)
    try:
        out = decode_message(mutated)
    except WireFormatError:
        return
    assert encode_message(out) == mutated


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.binary() | st.text(), st.lists, max_leaves=10
    )
)
def test_well_formed_cbor_of_the_wrong_shape(item: Any) -> None:
    data = cbor.dumps(item)
    for decode in (decode_message, decode_input):
        try:
            decode(data)
        except WireFormatError:
            pass


BAD_ITEMS: list[tuple[list[Any], str]] = [
    (["proposal", 0, 0, b"v", -1, DID, b""], "proposal.height"),
    (["proposal", 1, -1, b"v", -1, DID, b""], "proposal.round"),
    (["proposal", 1, 0, b"v", -2, DID, b""], "proposal.valid_round"),
    (["proposal", 1, 0, "v", -1, DID, b""], "proposal.value"),
    (["proposal", 1, 0, b"v", -1, "", b""], "proposal.proposer"),
    (["proposal", 1, 0, b"v", -1, "x" * (MAX_DID + 1), b""], "proposal.proposer"),
    (["proposal", 1, 0, b"v", -1, DID, bytes(MAX_SIGNATURE + 1)], "proposal.signature"),
    (["proposal", True, 0, b"v", -1, DID, b""], "proposal.height"),
    (["proposal", 1, 0, b"v", -1, DID], "proposal"),
    (["proposal", 1, 0, b"v", -1, DID, b"", 0], "proposal"),
    (["vote", "commit", 1, 0, None, DID, b""], "vote.type"),
    (["vote", "prevote", 1, 0, bytes(31), DID, b""], "vote.value_id"),
    (["vote", "prevote", 1, 0, bytes(33), DID, b""], "vote.value_id"),
    (["vote", "prevote", 1, 0, False, DID, b""], "vote.value_id"),
    (["vote", "prevote", 1, 2**63, None, DID, b""], "vote.round"),
    (["vote", "prevote", 2**64 - 1, 0, None, DID, b""], "vote.height"),
    (["vote", "prevote", 1, 0, None, 7, b""], "vote.voter"),
    (["ballot", 1], "message.kind"),
]


@pytest.mark.parametrize(("item", "field"), BAD_ITEMS)
def test_bounds_and_types_name_the_field(item: list[Any], field: str) -> None:
    with pytest.raises(WireFormatError) as err:
        decode_message(cbor.dumps(item))
    assert err.value.field == field
    assert isinstance(err.value, MalformedError)
    with pytest.raises(WireFormatError) as err2:
        decode_input(cbor.dumps(["received", item]))
    assert err2.value.field == field


BAD_INPUTS: list[tuple[list[Any], str]] = [
    (["start", 1], "start"),
    (["timeout", "vote", 1, 0], "timeout.kind"),
    (["timeout", "propose", 0, 0], "timeout.height"),
    (["propose_value", 1, 0, bytes(0), 1], "propose_value"),
    (["received"], "received"),
    (["nap"], "input.kind"),
]


@pytest.mark.parametrize(("item", "field"), BAD_INPUTS)
def test_bad_inputs_name_the_field(item: list[Any], field: str) -> None:
    with pytest.raises(WireFormatError) as err:
        decode_input(cbor.dumps(item))
    assert err.value.field == field


def test_encoder_refuses_out_of_bounds() -> None:
    with pytest.raises(WireFormatError, match="proposal.value"):
        encode_message(Proposal(1, 0, bytes(MAX_VALUE + 1), -1, DID))
    with pytest.raises(WireFormatError, match="vote.value_id"):
        encode_message(Vote(PREVOTE, 1, 0, b"short", DID))
    with pytest.raises(WireFormatError, match="vote.height"):
        encode_message(Vote(PREVOTE, 0, 0, None, DID))
    with pytest.raises(WireFormatError, match="timeout.kind"):
        encode_input(Timeout("nap", 1, 0))  # type: ignore[arg-type]
    with pytest.raises(WireFormatError, match="input"):
        encode_input("start")  # type: ignore[arg-type]


def test_non_canonical_and_oversized_bytes_are_refused() -> None:
    canonical = encode_message(Vote(PREVOTE, 1, 0, None, DID))
    longer_head = bytes([0x98, 7]) + canonical[1:]  # array length in a one-byte argument
    with pytest.raises(WireFormatError, match="message"):
        decode_message(longer_head)
    with pytest.raises(WireFormatError):
        decode_message(canonical + b"\x00")
    with pytest.raises(WireFormatError):
        decode_message(b"")
    with pytest.raises(WireFormatError):
        decode_message(bytes(MAX_VALUE + 10_000))
    with pytest.raises(WireFormatError):
        decode_message("text")  # type: ignore[arg-type]
