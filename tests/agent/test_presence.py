"""PresenceTracker: peers by signed presence, pinned node -> DID, rejects counted per peer."""

from __future__ import annotations

from agent import topics
from agent.mqtt import Dispatcher, Message, PresenceTracker, presence_signer
from drivers.clock import SimulatedClock
from ledger_lite.attestation import kid_for
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey


def _msg(node: str, payload: bytes) -> Message:
    return Message(topics.presence("c1", node).path, payload, 1, True)


async def test_signed_presence_is_tracked_and_forgeries_are_counted_per_peer() -> None:
    clock = SimulatedClock()
    tracker = PresenceTracker("c1", clock)
    d = Dispatcher(client=None)  # type: ignore[arg-type]
    tracker.register(d)
    a, b = (SigningKey.from_private_bytes("Ed25519", bytes([i]) * 32) for i in (1, 2))
    sign_a = presence_signer(a, kid_for(did_key(a.public)), "rsu-a", clock.time)
    sign_b_as_a = presence_signer(b, kid_for(did_key(b.public)), "rsu-a", clock.time)
    d.dispatch(_msg("rsu-a", sign_a("online")))
    assert tracker.peers["rsu-a"].state == "online" and tracker.peers["rsu-a"].did == did_key(a.public)
    await clock.advance(5.0)
    d.dispatch(_msg("rsu-a", sign_b_as_a("offline")))  # another key claims rsu-a: pinned, refused
    d.dispatch(_msg("rsu-b", b"not signed"))
    d.dispatch(_msg("rsu-c", sign_a("online")))  # signed, but names rsu-a, not the topic's node
    d.dispatch(_msg("rsu-d", b""))  # a cleared retained topic: ignored, not an error
    st = tracker.status()
    assert set(st["peers"]) == {"rsu-a"} and st["peers"]["rsu-a"]["state"] == "online"
    assert st["peers"]["rsu-a"]["seen_s_ago"] == 5.0
    assert st["rejects"]["node:rsu-a"]["reasons"] == {"did-changed": 1}
    assert st["rejects"]["node:rsu-b"]["reasons"] == {"malformed": 1}
    assert st["rejects"]["node:rsu-c"]["reasons"] == {"malformed": 1}
    d.dispatch(_msg("rsu-a", sign_a("offline")))
    assert tracker.peers["rsu-a"].state == "offline"
