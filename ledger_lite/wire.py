"""Wire codec for consensus messages and inputs: deterministic CBOR arrays (ledger_lite.cbor).

    encode_message(msg) -> bytes        decode_message(data) -> Proposal | Vote
    encode_input(inp) -> bytes          decode_input(data) -> Start | Received | Timeout | ProposeValue

Layouts (one CBOR array each):

    ["proposal", height, round, value, valid_round, proposer, signature]
    ["vote", type, height, round, value_id | null, voter, signature]
    ["start"]
    ["received", <message array>]
    ["timeout", kind, height, round]
    ["propose_value", height, round, value]

The codec is strict in both directions: ``encode_*`` refuses out-of-bounds values, ``decode_*``
accepts only the exact deterministic encoding of a valid item, so ``decode(encode(m)) == m`` and
``encode(decode(b)) == b`` (anything else raises). Bounds: value <= 4 MiB, DID 1 .. 512 characters,
signature <= 512 bytes, value_id exactly 32 bytes, 1 <= height <= 2**63-1, 0 <= round <= 2**31-1,
-1 <= valid_round <= 2**31-1. Every failure is a ``WireFormatError`` (a ``MalformedError``) whose
``field`` names the culprit (e.g. ``vote.value_id``).

``message_to_item``/``message_from_item`` and ``input_to_item``/``input_from_item`` convert to and
from the plain CBOR item (nested lists), for formats that embed messages (the WAL, ledger_lite.wal).
"""

from __future__ import annotations

from typing import Any, Final

from . import cbor
from .consensus import (
    PRECOMMIT,
    PREVOTE,
    PROPOSE,
    Input,
    Message,
    Proposal,
    ProposeValue,
    Received,
    Start,
    Timeout,
    Vote,
)
from .errors import CborError, MalformedError

__all__ = [
    "MAX_DID",
    "MAX_HEIGHT",
    "MAX_ROUND",
    "MAX_SIGNATURE",
    "MAX_VALUE",
    "MAX_WIRE_SIZE",
    "WireFormatError",
    "decode_input",
    "decode_message",
    "encode_input",
    "encode_message",
    "input_from_item",
    "input_to_item",
    "loads_item",
    "message_from_item",
    "message_to_item",
]

MAX_VALUE: Final = 4 << 20
MAX_DID: Final = 512
MAX_SIGNATURE: Final = 512
VALUE_ID_SIZE: Final = 32
MAX_HEIGHT: Final = (1 << 63) - 1
MAX_ROUND: Final = (1 << 31) - 1
#: the largest encoded message/input (a maximal proposal plus headers)
MAX_WIRE_SIZE: Final = MAX_VALUE + 2 * MAX_DID * 4 + MAX_SIGNATURE + 256
_MAX_DEPTH: Final = 3

_VOTE_TYPES: Final = (PREVOTE, PRECOMMIT)
_TIMEOUT_KINDS: Final = (PROPOSE, PREVOTE, PRECOMMIT)


class WireFormatError(MalformedError):
    """A consensus message or input that is not in the wire format; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


# --------------------------------------------------------------------------- field checks


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise WireFormatError(f"must be an integer, not {type(value).__name__}", field=field)
    if not lo <= value <= hi:
        raise WireFormatError(f"{value} is outside {lo} .. {hi}", field=field)
    return value


def _bytes(value: Any, field: str, lo: int, hi: int) -> bytes:
    if type(value) is not bytes:
        raise WireFormatError(f"must be a byte string, not {type(value).__name__}", field=field)
    if not lo <= len(value) <= hi:
        raise WireFormatError(f"length {len(value)} is outside {lo} .. {hi}", field=field)
    return value


def _did(value: Any, field: str) -> str:
    if type(value) is not str:
        raise WireFormatError(f"must be a text string, not {type(value).__name__}", field=field)
    if not 1 <= len(value) <= MAX_DID:
        raise WireFormatError(f"length {len(value)} is outside 1 .. {MAX_DID}", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates cannot be encoded
        raise WireFormatError("is not valid Unicode text", field=field) from err
    return value


def _choice(value: Any, field: str, options: tuple[str, ...]) -> str:
    if type(value) is not str or value not in options:
        raise WireFormatError(f"{value!r} is not one of {', '.join(options)}", field=field)
    return value


def _array(item: Any, kind: str, size: int) -> list[Any]:
    if type(item) is not list:
        raise WireFormatError(f"must be an array, not {type(item).__name__}", field=kind)
    if len(item) != size:
        raise WireFormatError(f"array of {len(item)} items, expected {size}", field=kind)
    return item


# --------------------------------------------------------------------------- messages


def message_to_item(msg: Message) -> list[Any]:
    """The CBOR item of ``msg`` (checked against the bounds)."""
    if isinstance(msg, Proposal):
        return [
            "proposal",
            _int(msg.height, "proposal.height", 1, MAX_HEIGHT),
            _int(msg.round, "proposal.round", 0, MAX_ROUND),
            _bytes(msg.value, "proposal.value", 0, MAX_VALUE),
            _int(msg.valid_round, "proposal.valid_round", -1, MAX_ROUND),
            _did(msg.proposer, "proposal.proposer"),
            _bytes(msg.signature, "proposal.signature", 0, MAX_SIGNATURE),
        ]
    if isinstance(msg, Vote):
        vid = msg.value_id
        return [
            "vote",
            _choice(msg.type, "vote.type", _VOTE_TYPES),
            _int(msg.height, "vote.height", 1, MAX_HEIGHT),
            _int(msg.round, "vote.round", 0, MAX_ROUND),
            None if vid is None else _bytes(vid, "vote.value_id", VALUE_ID_SIZE, VALUE_ID_SIZE),
            _did(msg.voter, "vote.voter"),
            _bytes(msg.signature, "vote.signature", 0, MAX_SIGNATURE),
        ]
    raise WireFormatError(f"not a consensus message: {type(msg).__name__}", field="message")


def message_from_item(item: Any) -> Message:
    """The message of a CBOR item made by ``message_to_item``."""
    if type(item) is not list or not item:
        raise WireFormatError("must be a non-empty array", field="message")
    kind = _choice(item[0], "message.kind", ("proposal", "vote"))
    if kind == "proposal":
        _, height, rnd, value, valid_round, proposer, sig = _array(item, "proposal", 7)
        return Proposal(
            height=_int(height, "proposal.height", 1, MAX_HEIGHT),
            round=_int(rnd, "proposal.round", 0, MAX_ROUND),
            value=_bytes(value, "proposal.value", 0, MAX_VALUE),
            valid_round=_int(valid_round, "proposal.valid_round", -1, MAX_ROUND),
            proposer=_did(proposer, "proposal.proposer"),
            signature=_bytes(sig, "proposal.signature", 0, MAX_SIGNATURE),
        )
    _, vtype, height, rnd, vid, voter, sig = _array(item, "vote", 7)
    return Vote(
        type=PREVOTE if _choice(vtype, "vote.type", _VOTE_TYPES) == PREVOTE else PRECOMMIT,
        height=_int(height, "vote.height", 1, MAX_HEIGHT),
        round=_int(rnd, "vote.round", 0, MAX_ROUND),
        value_id=None if vid is None else _bytes(vid, "vote.value_id", VALUE_ID_SIZE, VALUE_ID_SIZE),
        voter=_did(voter, "vote.voter"),
        signature=_bytes(sig, "vote.signature", 0, MAX_SIGNATURE),
    )


# --------------------------------------------------------------------------- inputs


def input_to_item(inp: Input) -> list[Any]:
    """The CBOR item of a consensus input (checked against the bounds)."""
    if isinstance(inp, Start):
        return ["start"]
    if isinstance(inp, Received):
        return ["received", message_to_item(inp.msg)]
    if isinstance(inp, Timeout):
        return [
            "timeout",
            _choice(inp.kind, "timeout.kind", _TIMEOUT_KINDS),
            _int(inp.height, "timeout.height", 1, MAX_HEIGHT),
            _int(inp.round, "timeout.round", 0, MAX_ROUND),
        ]
    if isinstance(inp, ProposeValue):
        return [
            "propose_value",
            _int(inp.height, "propose_value.height", 1, MAX_HEIGHT),
            _int(inp.round, "propose_value.round", 0, MAX_ROUND),
            _bytes(inp.value, "propose_value.value", 0, MAX_VALUE),
        ]
    raise WireFormatError(f"not a consensus input: {type(inp).__name__}", field="input")


def input_from_item(item: Any) -> Input:
    """The input of a CBOR item made by ``input_to_item``."""
    if type(item) is not list or not item:
        raise WireFormatError("must be a non-empty array", field="input")
    kind = _choice(item[0], "input.kind", ("start", "received", "timeout", "propose_value"))
    if kind == "start":
        _array(item, "start", 1)
        return Start()
    if kind == "received":
        _, msg = _array(item, "received", 2)
        return Received(message_from_item(msg))
    if kind == "timeout":
        _, tkind, height, rnd = _array(item, "timeout", 4)
        checked = _choice(tkind, "timeout.kind", _TIMEOUT_KINDS)
        return Timeout(
            kind=PROPOSE if checked == PROPOSE else PREVOTE if checked == PREVOTE else PRECOMMIT,
            height=_int(height, "timeout.height", 1, MAX_HEIGHT),
            round=_int(rnd, "timeout.round", 0, MAX_ROUND),
        )
    _, height, rnd, value = _array(item, "propose_value", 4)
    return ProposeValue(
        height=_int(height, "propose_value.height", 1, MAX_HEIGHT),
        round=_int(rnd, "propose_value.round", 0, MAX_ROUND),
        value=_bytes(value, "propose_value.value", 0, MAX_VALUE),
    )


# --------------------------------------------------------------------------- bytes


def _dumps(item: list[Any], field: str) -> bytes:
    try:
        return cbor.dumps(item, max_depth=_MAX_DEPTH)
    except CborError as err:  # pragma: no cover - the checked items always encode
        raise WireFormatError(str(err), field=field) from err


def loads_item(data: bytes | bytearray | memoryview, field: str) -> Any:
    """Strict deterministic-CBOR decoding with the wire size limits; errors are ``WireFormatError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"must be bytes, not {type(data).__name__}", field=field)
    try:
        return cbor.loads(data, max_size=MAX_WIRE_SIZE, max_depth=_MAX_DEPTH)
    except CborError as err:
        raise WireFormatError(f"not deterministic CBOR: {err}", field=field) from err


def encode_message(msg: Message) -> bytes:
    return _dumps(message_to_item(msg), "message")


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    return message_from_item(loads_item(data, "message"))


def encode_input(inp: Input) -> bytes:
    return _dumps(input_to_item(inp), "input")


def decode_input(data: bytes | bytearray | memoryview) -> Input:
    return input_from_item(loads_item(data, "input"))
