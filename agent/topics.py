"""The MQTT topic schema and the per-kind QoS / retain / offline policy, in one place.

Every topic the agent publishes or subscribes to is built and parsed here::

    acc/v1/cell/{cell}/tx                    TX            a transaction for the cell's ledger
    acc/v1/cell/{cell}/cons/{node}           CONSENSUS     consensus messages sent by {node}
    acc/v1/cell/{cell}/block                 BLOCK         the newest committed block (retained)
    acc/v1/cell/{cell}/sync/req/{node}       SYNC_REQUEST  {node} asks for blocks it is missing
    acc/v1/cell/{cell}/sync/resp/{node}      SYNC_RESPONSE answers addressed to {node}
    acc/v1/cell/{cell}/receipt/{tag}         RECEIPT       ledger receipts for the issuer with this tag
    acc/v1/cell/{cell}/fl/model              FL_MODEL      the cell's current global model (retained)
    acc/v1/cell/{cell}/fl/{node}             FL_UPDATE     {node}'s federated-learning update
    acc/v1/cell/{cell}/presence/{node}       PRESENCE      online / offline (retained; last will)
    acc/v1/cell/{cell}/admission/{node}      ADMISSION     {node} asks to join the cell; the RSU answers there
    acc/v1/cell/{cell}/announce              CELL          the cell's signed announcement (retained)
    acc/v1/pc5/{cell}                        PC5           emulated sidelink broadcast

Cell and node ids are 1-64 characters of ``[A-Za-z0-9._-]``, starting with a letter or digit,
so a published topic can never hold a wildcard (``+``, ``#``), a ``/`` or ``$``. ``parse()``
turns a topic back into a ``Topic`` and raises ``TopicError`` saying what is wrong; the payload
signature, not the topic, says who sent a message (``agent.mqtt.SignedInbox``).
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "POLICY",
    "PREFIX",
    "MessageKind",
    "Policy",
    "Topic",
    "TopicError",
    "admission",
    "announce",
    "block",
    "cell_filter",
    "check_id",
    "consensus",
    "fl_model",
    "fl_update",
    "kind_filter",
    "parse",
    "pc5",
    "presence",
    "receipt",
    "issuer_tag",
    "sync_request",
    "sync_response",
    "tx",
]

PREFIX: Final = "acc/v1"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TopicError(ValueError):
    """A topic or id that does not fit the schema; the message says what and where."""


class MessageKind(enum.StrEnum):
    TX = "tx"
    CONSENSUS = "cons"
    BLOCK = "block"
    SYNC_REQUEST = "sync/req"
    SYNC_RESPONSE = "sync/resp"
    RECEIPT = "receipt"
    FL_MODEL = "fl/model"
    FL_UPDATE = "fl"
    PRESENCE = "presence"
    ADMISSION = "admission"
    CELL = "announce"
    PC5 = "pc5"


@dataclass(frozen=True, slots=True)
class Policy:
    """How one kind of message travels.

    ``offline``: what ``MqttClient.publish`` does while disconnected -- ``queue`` keeps it in the
    bounded outgoing queue until the broker is back, ``drop`` counts it as dropped at once (for
    traffic that is worthless late). ``expiry``: MQTT 5 message-expiry interval in seconds (the
    broker discards it after that), ``None`` for none."""

    qos: Literal[0, 1, 2]
    retain: bool
    offline: Literal["queue", "drop"]
    expiry: int | None


#: The one table of QoS / retain / offline / expiry per kind.
POLICY: Final[dict[MessageKind, Policy]] = {
    MessageKind.TX: Policy(qos=1, retain=False, offline="queue", expiry=600),
    MessageKind.CONSENSUS: Policy(qos=1, retain=False, offline="queue", expiry=60),
    MessageKind.BLOCK: Policy(qos=1, retain=True, offline="queue", expiry=None),
    MessageKind.SYNC_REQUEST: Policy(qos=1, retain=False, offline="queue", expiry=60),
    MessageKind.SYNC_RESPONSE: Policy(qos=1, retain=False, offline="queue", expiry=60),
    MessageKind.RECEIPT: Policy(qos=1, retain=False, offline="queue", expiry=600),
    MessageKind.FL_MODEL: Policy(qos=1, retain=True, offline="queue", expiry=None),
    MessageKind.FL_UPDATE: Policy(qos=1, retain=False, offline="queue", expiry=3600),
    # presence is published on every (re)connect and by the broker as the last will
    MessageKind.PRESENCE: Policy(qos=1, retain=True, offline="drop", expiry=None),
    MessageKind.ADMISSION: Policy(qos=1, retain=False, offline="queue", expiry=600),
    # the RSU re-publishes it every few seconds; a late OBU hears the retained one at once
    MessageKind.CELL: Policy(qos=1, retain=True, offline="queue", expiry=None),
    # sidelink emulation: best effort, stale after a second, never queued
    MessageKind.PC5: Policy(qos=0, retain=False, offline="drop", expiry=1),
}

_PER_NODE: Final = frozenset(
    {
        MessageKind.CONSENSUS,
        MessageKind.SYNC_REQUEST,
        MessageKind.SYNC_RESPONSE,
        MessageKind.RECEIPT,
        MessageKind.FL_UPDATE,
        MessageKind.PRESENCE,
        MessageKind.ADMISSION,
    }
)


def check_id(value: str, what: str = "id") -> str:
    """``value`` if it is a safe cell / node id, else ``TopicError``."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise TopicError(
            f"{what} {value!r} is not a valid id: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic of the schema; ``node`` is empty for kinds that are not per node."""

    kind: MessageKind
    cell: str
    node: str = ""

    def __post_init__(self) -> None:
        check_id(self.cell, "cell")
        if self.kind in _PER_NODE:
            check_id(self.node, "node")
            if self.kind is MessageKind.FL_UPDATE and self.node == "model":
                raise TopicError("node id 'model' is reserved: fl/model is the cell's global model")
        elif self.node:
            raise TopicError(f"{self.kind.name} topics carry no node id (got {self.node!r})")

    @property
    def policy(self) -> Policy:
        return POLICY[self.kind]

    @property
    def path(self) -> str:
        if self.kind is MessageKind.PC5:
            return f"{PREFIX}/pc5/{self.cell}"
        base = f"{PREFIX}/cell/{self.cell}/{self.kind.value}"
        return f"{base}/{self.node}" if self.node else base

    def __str__(self) -> str:
        return self.path


def tx(cell: str) -> Topic:
    return Topic(MessageKind.TX, cell)


def consensus(cell: str, node: str) -> Topic:
    return Topic(MessageKind.CONSENSUS, cell, node)


def block(cell: str) -> Topic:
    return Topic(MessageKind.BLOCK, cell)


def sync_request(cell: str, node: str) -> Topic:
    return Topic(MessageKind.SYNC_REQUEST, cell, node)


def sync_response(cell: str, node: str) -> Topic:
    return Topic(MessageKind.SYNC_RESPONSE, cell, node)


def receipt(cell: str, tag: str) -> Topic:
    return Topic(MessageKind.RECEIPT, cell, tag)


def issuer_tag(did: str) -> str:
    """The receipt topic's id for an issuer DID (a DID is no topic id): 32 hex digits of SHA-256."""
    return hashlib.sha256(did.encode()).hexdigest()[:32]


def fl_model(cell: str) -> Topic:
    return Topic(MessageKind.FL_MODEL, cell)


def fl_update(cell: str, node: str) -> Topic:
    return Topic(MessageKind.FL_UPDATE, cell, node)


def presence(cell: str, node: str) -> Topic:
    return Topic(MessageKind.PRESENCE, cell, node)


def admission(cell: str, node: str) -> Topic:
    return Topic(MessageKind.ADMISSION, cell, node)


def announce(cell: str) -> Topic:
    return Topic(MessageKind.CELL, cell)


def pc5(cell: str) -> Topic:
    return Topic(MessageKind.PC5, cell)


def cell_filter(cell: str) -> str:
    """Subscription filter for everything of one cell (not PC5)."""
    return f"{PREFIX}/cell/{check_id(cell, 'cell')}/#"


def kind_filter(kind: MessageKind, cell: str | None = None) -> str:
    """Subscription filter for one kind, in one cell or (``cell=None``) in every cell; per-node
    kinds match every node."""
    c = "+" if cell is None else check_id(cell, "cell")
    if kind is MessageKind.PC5:
        return f"{PREFIX}/pc5/{c}"
    base = f"{PREFIX}/cell/{c}/{kind.value}"
    return f"{base}/+" if kind in _PER_NODE else base


def parse(topic: str) -> Topic:
    """The ``Topic`` a topic string names; ``TopicError`` saying what does not fit otherwise."""
    if not isinstance(topic, str):
        raise TopicError(f"topic must be a str, got {type(topic).__name__}")
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"topic {topic[:120]!r} is not under {PREFIX}/")
    if parts[2] == "pc5":
        if len(parts) != 4:
            raise TopicError(f"topic {topic[:120]!r}: expected {PREFIX}/pc5/{{cell}}")
        return Topic(MessageKind.PC5, _id(parts[3], "cell", topic))
    if parts[2] != "cell" or len(parts) < 5:
        raise TopicError(f"topic {topic[:120]!r}: expected {PREFIX}/cell/{{cell}}/... or {PREFIX}/pc5/{{cell}}")
    cell = _id(parts[3], "cell", topic)
    rest = parts[4:]
    if rest in (["tx"], ["block"], ["fl", "model"], ["announce"]):
        return Topic(MessageKind("/".join(rest)), cell)
    for kind in _PER_NODE:
        head = kind.value.split("/")
        if len(rest) == len(head) + 1 and rest[: len(head)] == head:
            return Topic(kind, cell, _id(rest[-1], "node", topic))
    raise TopicError(f"topic {topic[:120]!r}: unknown message kind {'/'.join(rest)[:60]!r}")


def _id(value: str, what: str, topic: str) -> str:
    try:
        return check_id(value, what)
    except TopicError as err:
        raise TopicError(f"topic {topic[:120]!r}: {err}") from None
