"""The topic schema: every kind builds and parses back, ids are restricted, the policy table is
complete and says what the design says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import topics
from agent.topics import POLICY, MessageKind, Topic, TopicError

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
BUILDERS_NODE = [
    topics.consensus,
    topics.sync_request,
    topics.sync_response,
    topics.receipt,
    topics.fl_update,
    topics.presence,
]
BUILDERS_NODE.append(topics.admission)
BUILDERS_CELL = [topics.tx, topics.block, topics.fl_model, topics.pc5, topics.announce]


def test_paths_follow_the_design() -> None:
    assert topics.tx("c1").path == "acc/v1/cell/c1/tx"
    assert topics.consensus("c1", "rsu-7").path == "acc/v1/cell/c1/cons/rsu-7"
    assert topics.block("c1").path == "acc/v1/cell/c1/block"
    assert topics.sync_request("c1", "n").path == "acc/v1/cell/c1/sync/req/n"
    assert topics.sync_response("c1", "n").path == "acc/v1/cell/c1/sync/resp/n"
    tag = topics.issuer_tag("did:key:z6MkExample")
    assert topics.receipt("c1", tag).path == f"acc/v1/cell/c1/receipt/{tag}" and len(tag) == 32
    assert topics.fl_model("c1").path == "acc/v1/cell/c1/fl/model"
    assert topics.fl_update("c1", "n").path == "acc/v1/cell/c1/fl/n"
    assert topics.presence("c1", "n").path == "acc/v1/cell/c1/presence/n"
    assert topics.admission("c1", "n").path == "acc/v1/cell/c1/admission/n"
    assert topics.pc5("c1").path == "acc/v1/pc5/c1"
    assert topics.announce("c1").path == "acc/v1/cell/c1/announce"


@given(cell=ids, node=ids)
def test_every_topic_parses_back(cell: str, node: str) -> None:
    for build in BUILDERS_CELL:
        t = build(cell)
        assert topics.parse(t.path) == t
        assert "+" not in t.path and "#" not in t.path
    for build_n in BUILDERS_NODE:
        if build_n is topics.fl_update and node == "model":
            continue
        t = build_n(cell, node)
        assert topics.parse(t.path) == t
        assert t.path.count("/") == str(t).count("/")


@pytest.mark.parametrize("bad", ["", "+", "#", "a/b", "a+", "-lead", "$SYS", "x" * 65, "é", "a b", "a\x00"])
def test_unsafe_ids_are_refused(bad: str) -> None:
    with pytest.raises(TopicError, match="not a valid id"):
        topics.consensus("c1", bad)
    with pytest.raises(TopicError, match="not a valid id"):
        topics.tx(bad)


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("foo/bar", "not under acc/v1/"),
        ("acc/v1/cell/c1/nope", "unknown message kind 'nope'"),
        ("acc/v1/cell/c1/cons", "unknown message kind 'cons'"),
        ("acc/v1/cell/c1/cons/+", "node '\\+' is not a valid id"),
        ("acc/v1/cell/#/tx", "cell '#' is not a valid id"),
        ("acc/v1/pc5/c1/extra", "expected acc/v1/pc5/{cell}"),
        ("acc/v1/cell/c1/tx/extra", "unknown message kind 'tx/extra'"),
        ("acc/v2/cell/c1/tx", "not under acc/v1/"),
    ],
)
def test_parse_says_what_is_wrong(topic: str, says: str) -> None:
    with pytest.raises(TopicError, match=says):
        topics.parse(topic)


def test_kinds_without_node_refuse_one_and_fl_model_is_reserved() -> None:
    with pytest.raises(TopicError, match="carry no node"):
        Topic(MessageKind.TX, "c1", "n1")
    with pytest.raises(TopicError, match="reserved"):
        topics.fl_update("c1", "model")


def test_policy_covers_every_kind_and_matches_the_design() -> None:
    assert set(POLICY) == set(MessageKind)
    assert POLICY[MessageKind.PRESENCE].retain and POLICY[MessageKind.PRESENCE].qos == 1
    assert POLICY[MessageKind.BLOCK].retain
    assert POLICY[MessageKind.CELL].retain and POLICY[MessageKind.CELL].qos == 1
    assert POLICY[MessageKind.PC5].qos == 0 and POLICY[MessageKind.PC5].offline == "drop"
    for kind in (MessageKind.TX, MessageKind.CONSENSUS, MessageKind.SYNC_REQUEST, MessageKind.FL_UPDATE):
        assert POLICY[kind].qos == 1 and POLICY[kind].offline == "queue" and not POLICY[kind].retain
    assert topics.tx("c").policy is POLICY[MessageKind.TX]


def test_filters() -> None:
    assert topics.cell_filter("c1") == "acc/v1/cell/c1/#"
    assert topics.kind_filter(MessageKind.PRESENCE, "c1") == "acc/v1/cell/c1/presence/+"
    assert topics.kind_filter(MessageKind.BLOCK) == "acc/v1/cell/+/block"
    assert topics.kind_filter(MessageKind.PC5, "c1") == "acc/v1/pc5/c1"
    assert topics.kind_filter(MessageKind.CELL) == "acc/v1/cell/+/announce"
    with pytest.raises(TopicError):
        topics.cell_filter("#")
