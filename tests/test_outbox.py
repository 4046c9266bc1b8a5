"""The store-and-forward outbox: idempotent durable enqueue, resend with backoff until a receipt
retires an entry, the disk budget policy, restarts and kill -9 with a real process, corrupt
files, handover, and the sender service against a fake publisher that fails for a while."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.health import HealthRegistry, Status
from agent.outbox import (
    ROW_OVERHEAD,
    AsyncOutbox,
    Entry,
    Outbox,
    OutboxCorrupt,
    OutboxFull,
    OutboxSender,
    Receipt,
    SendError,
    State,
)
from drivers.clock import SimulatedClock
from ledger_lite import merkle
from ledger_lite.attestation import AttestationBuilder, TimeSource, attestation_id
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey

REPO = Path(__file__).resolve().parent.parent
T0 = 1_790_000_000.0
EVENT = {"event": "harsh_brake", "severity": 0.5, "duration": 1.2, "speed": 12.0, "accel_long": -6.1}


def attestations(n: int) -> list[bytes]:
    key = SigningKey.generate()
    builder = AttestationBuilder(key, did_key(key.public))
    return [builder.build("driving_event", EVENT, time=T0 + i, time_source=TimeSource.GNSS) for i in range(n)]


def blob(i: int, size: int = 100) -> bytes:
    return i.to_bytes(4, "big") * (size // 4)


def receipt_for(aid: bytes, cell: str = "c1") -> bytes:
    leaves = [aid, b"other"]
    proof = merkle.InclusionProof(0, 2, tuple(merkle.inclusion_proof(leaves, 0)))
    return Receipt(aid, cell, 7, proof).to_cbor()


def make(path: Path, clock: SimulatedClock, **kw: object) -> Outbox:
    kw.setdefault("budget_bytes", 1 << 20)
    kw.setdefault("resend_after", 10.0)
    kw.setdefault("resend_max", 80.0)
    kw.setdefault("jitter", 0.0)
    return Outbox(path / "outbox.db", clock=clock, **kw)  # type: ignore[arg-type]


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def test_enqueue_is_idempotent_and_takes_kind_from_the_attestation(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    ob = make(tmp_path, clock)
    a, b = attestations(2)
    assert ob.enqueue(a, cell="c1") is True
    assert ob.enqueue(a, cell="c1") is False  # same id: nothing new
    assert ob.enqueue(b, cell="c1") is True
    entry = ob.get(attestation_id(a))
    assert entry is not None and entry.kind == "driving_event" and entry.payload == a and entry.state is State.PENDING
    assert [e.id for e in ob.due(T0, 10)] == [attestation_id(a), attestation_id(b)]
    with pytest.raises(ValueError, match="not an attestation"):
        ob.enqueue(b"junk", cell="c1")
    ob.close()


def test_resent_with_capped_backoff_until_retired_then_never_again(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    ob = make(tmp_path, clock)
    ob.enqueue(blob(1), cell="c1", kind="sensor_summary")
    aid = attestation_id(blob(1))
    now = T0
    gaps = []
    for _ in range(6):
        (entry,) = ob.due(now, 10)
        ob.mark_sent([entry.id], now)
        nd = ob.next_due()
        assert nd is not None
        assert ob.due(nd - 0.001, 10) == []  # not before its backoff passed
        gaps.append(nd - now)
        now = nd
    assert gaps == [10.0, 20.0, 40.0, 80.0, 80.0, 80.0]  # doubling, capped at resend_max
    assert ob.get(aid).attempts == 6  # type: ignore[union-attr]
    assert ob.retire(aid, receipt_for(aid)) is True
    assert ob.retire(aid, receipt_for(aid)) is False  # idempotent
    assert ob.due(now + 10_000, 10) == [] and ob.next_due() is None
    retired = ob.get(aid)
    assert retired is not None and retired.state is State.RETIRED and retired.payload == b""
    assert Receipt.from_cbor(retired.receipt or b"").attestation_id == aid
    assert ob.mark_sent([aid], now) == 0  # a late mark_sent does not resurrect it
    assert ob.retire(b"\x00" * 32, b"r") is False
    assert ob.stats().unknown_retires == 1
    ob.close()


def test_a_wall_clock_step_back_does_not_stall_resends(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    ob = make(tmp_path, clock)
    ob.enqueue(blob(1), cell="c1", kind="sensor_summary")
    ob.mark_sent([attestation_id(blob(1))], T0)
    assert ob.due(T0 + 5, 10) == []
    assert len(ob.due(T0 - 3600, 10)) == 1  # last sent "in the future": resend rather than wait an hour
    ob.close()


def test_budget_policy_evicts_retired_then_bulk_then_normal_never_critical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SimulatedClock(start_utc=T0)
    row = 100 + ROW_OVERHEAD
    ob = make(tmp_path, clock, budget_bytes=10 * row)
    n = iter(range(1000))

    def put(kind: str) -> bytes:
        data = blob(next(n))
        assert ob.enqueue(data, cell="c1", kind=kind)
        return attestation_id(data)

    summaries = [put("sensor_summary") for _ in range(4)]
    dtcs = [put("dtc_report") for _ in range(3)]
    events = [put("driving_event") for _ in range(3)]
    assert ob.stats().bytes == 10 * row
    ob.mark_sent(summaries[:2], T0)  # sent but not retired is still undelivered
    ob.retire(events[0], receipt_for(events[0]))

    with caplog.at_level(logging.DEBUG, logger="agent.outbox"):
        put("driving_event")  # room from the retired row
        s = ob.stats()
        assert (s.receipts_pruned, s.evicted) == (1, 0)
        assert ob.get(events[0]) is None
        put("driving_event")  # evicts the oldest summary (sent, not retired)
        assert ob.get(summaries[0]) is None and ob.get(summaries[1]) is not None
        for _ in range(4):  # new summaries replace the oldest summaries
            put("sensor_summary")
        assert all(ob.get(i) is None for i in summaries)
        assert Counter(e.kind for e in ob.due(T0 + 1e6, 100)) == {
            "sensor_summary": 3,
            "dtc_report": 3,
            "driving_event": 4,
        }
        for _ in range(3):  # events evict the remaining summaries
            put("driving_event")
        with pytest.raises(OutboxFull):  # a summary never evicts a DTC report: refused, nothing evicted
            put("sensor_summary")
        s = ob.stats()
        assert s.refused == 1 and s.evicted == 8 and s.bytes <= s.budget
        put("dtc_report")  # a DTC report may evict an older one
        assert ob.get(dtcs[0]) is None
        for _ in range(3):  # events evict the DTC reports
            put("driving_event")
        assert Counter(e.kind for e in ob.due(T0 + 1e6, 100)) == {"driving_event": 10}
        with pytest.raises(OutboxFull):
            put("driving_event")  # only critical entries left: refused, none lost
    s = ob.stats()
    assert s.evicted == 12 and dict(s.evicted_by_kind) == {"sensor_summary": 8, "dtc_report": 4}
    assert s.refused == 2 and s.pending + s.sent == 10 and s.bytes <= s.budget
    assert all(ob.get(e) is not None for e in events[1:])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "evicted" in r.message]
    assert sum(int(r.message.split("evicted ")[1].split()[0]) for r in warnings) == 12
    assert any(r.levelno == logging.ERROR and "refused" in r.message for r in caplog.records)
    with pytest.raises(OutboxFull):  # larger than the whole budget
        ob.enqueue(blob(999, 20 * row), cell="c1", kind="sensor_summary")
    ob.close()
    assert make(tmp_path, clock, budget_bytes=10 * row).stats().evicted == 12  # counters persist


def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    ob = make(tmp_path, clock)
    ids = []
    for i in range(5):
        ob.enqueue(blob(i), cell="c1", kind="sensor_summary")
        ids.append(attestation_id(blob(i)))
    ob.mark_sent(ids[:3], T0)
    ob.retire(ids[0], receipt_for(ids[0]))
    before = ob.stats()
    ob.close()
    ob = make(tmp_path, clock)
    after = ob.stats()
    assert (after.pending, after.sent, after.retired, after.bytes) == (2, 2, 1, before.bytes)
    assert [e.id for e in ob.due(T0, 10)] == ids[3:]
    assert [e.id for e in ob.due(T0 + 10, 10)] == ids[1:]
    assert ob.enqueue(blob(0), cell="c1", kind="sensor_summary") is False  # retired: still known
    ob.close()


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_every_acknowledged_enqueue_survives_kill_9(tmp_path: Path, sync: str) -> None:
    db = tmp_path / "outbox.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_writer", str(db), sync],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        printed = [proc.stdout.readline().strip() for _ in range(300)]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    rest = proc.stdout.read()  # what it printed before the kill (read through our buffer)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    printed += [line for line in rest.splitlines() if len(line) == 64]  # acknowledged before the kill
    assert integrity(db) == "ok"
    ob = Outbox(db, budget_bytes=1 << 30, clock=SimulatedClock(start_utc=T0), on_corrupt="raise")
    stored = {e.id.hex() for e in ob.due(time.time() + 1, 1_000_000)}
    assert set(printed) <= stored and len(stored) - len(printed) <= 1  # at most one in flight
    ob.close()


def test_a_corrupt_file_is_moved_aside_and_reported(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    db = tmp_path / "outbox.db"
    db.write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(OutboxCorrupt, match="not a database"):
        make(tmp_path, clock, on_corrupt="raise")
    assert db.read_bytes().startswith(b"this is not")  # "raise" leaves it alone
    ob = make(tmp_path, clock)
    assert ob.quarantined is not None and ob.quarantined.read_bytes().startswith(b"this is not")
    assert ob.quarantined.name.startswith("outbox.db.corrupt-")
    assert ob.stats().quarantined == str(ob.quarantined) and ob.stats().pending == 0
    assert ob.enqueue(blob(1), cell="c1", kind="sensor_summary")  # a fresh, working outbox
    ob.close()


def test_a_truncated_database_is_detected(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    ob = make(tmp_path, clock)
    for i in range(400):
        ob.enqueue(blob(i, 400), cell="c1", kind="sensor_summary")
    ob.close()
    db = tmp_path / "outbox.db"
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    with pytest.raises(OutboxCorrupt):
        make(tmp_path, clock, on_corrupt="raise")
    ob = make(tmp_path, clock)
    assert ob.quarantined is not None and ob.quarantined.exists() and ob.stats().pending == 0
    ob.close()


def test_handover_rebinds_only_unsent_entries_and_due_filters_by_cell(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    ob = make(tmp_path, clock)
    ids = []
    for i in range(4):
        ob.enqueue(blob(i), cell="A", kind="sensor_summary")
        ids.append(attestation_id(blob(i)))
    ob.mark_sent(ids[:2], T0)  # these may already be on A's ledger
    assert ob.rebind("A", "B") == 2
    assert {e.id: e.cell for e in ob.due(T0 + 100, 10)} == {ids[0]: "A", ids[1]: "A", ids[2]: "B", ids[3]: "B"}
    assert [e.id for e in ob.due(T0 + 100, 10, cells={"B"})] == ids[2:]
    assert ob.due(T0 + 100, 10, cells=set()) == []
    assert dict(ob.stats().undelivered_by_cell) == {"A": 2, "B": 2}
    ob.close()


class FakePublisher:
    """Fails with SendError while ``down``; records each delivered id."""

    def __init__(self) -> None:
        self.down = True
        self.delivered: Counter[bytes] = Counter()
        self.failures = 0

    async def __call__(self, entry: Entry) -> None:
        await asyncio.sleep(0)
        if self.down:
            self.failures += 1
            raise SendError("broker unreachable")
        self.delivered[entry.id] += 1


async def until(clock: SimulatedClock, cond: Callable[[], bool], *, step: float = 0.5, limit: float = 5.0) -> None:
    """Advance simulated time in steps (letting the worker thread run) until ``cond()``."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)
        await clock.advance(step)


async def test_sender_retries_through_an_outage_and_never_resends_retired(tmp_path: Path) -> None:
    clock = SimulatedClock(start_utc=T0)
    registry = HealthRegistry(clock.monotonic)
    ob = await AsyncOutbox.open(
        tmp_path / "outbox.db", budget_bytes=1 << 20, clock=clock, resend_after=30.0, resend_max=120.0, jitter=0.0
    )
    pub = FakePublisher()
    sender = OutboxSender(ob, pub, clock, health=registry, retry_min=1.0, retry_max=8.0, stale_after=60.0)
    datas = attestations(5)
    ids = [attestation_id(d) for d in datas]
    for d in datas:
        await ob.enqueue(d, cell="c1")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sender.run(), name="outbox-sender")
        await until(clock, lambda: pub.failures >= 4)
        health = registry.get("outbox")
        assert health is not None and health.status is Status.DEGRADED and "send failing" in health.reason
        await until(clock, lambda: "oldest" in (h.reason if (h := registry.get("outbox")) else ""), step=5.0)
        pub.down = False
        await until(clock, lambda: sender.state.sent == 5)  # delivered and marked sent
        assert len(pub.delivered) == 5
        assert [(await ob.get(i)).attempts for i in ids] == [1] * 5  # type: ignore[union-attr]
        for i in ids[:3]:
            assert await ob.retire(i, receipt_for(i))
        await until(clock, lambda: pub.delivered[ids[4]] == 2)  # unretired ones are resent ...
        assert [pub.delivered[i] for i in ids] == [1, 1, 1, 2, 2]  # ... retired ones never
        for i in ids[3:]:
            await ob.retire_receipt(Receipt.from_cbor(receipt_for(i)))
        await until(clock, lambda: sender.state.stats is not None and sender.state.stats.undelivered == 0, step=5.0)
        (extra,) = attestations(1)
        await ob.enqueue(extra, cell="c1")  # wakes the idle sender without moving the clock
        deadline = time.monotonic() + 5
        while sender.state.sent < sum(pub.delivered.values()) or pub.delivered[attestation_id(extra)] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        for i in [*ids, attestation_id(extra)]:  # attempts recorded == deliveries seen
            entry = await ob.get(i)
            assert entry is not None and entry.attempts == pub.delivered[i]
        await until(clock, lambda: (h := registry.get("outbox")) is not None and h.status is Status.OK, step=5.0)
        task.cancel()
    await ob.close()


async def test_sender_health_reports_a_quarantined_database(tmp_path: Path) -> None:
    (tmp_path / "outbox.db").write_bytes(os.urandom(8192))
    clock = SimulatedClock(start_utc=T0)
    registry = HealthRegistry(clock.monotonic)
    ob = await AsyncOutbox.open(tmp_path / "outbox.db", budget_bytes=1 << 20, clock=clock)
    pub = FakePublisher()
    pub.down = False
    sender = OutboxSender(ob, pub, clock, health=registry)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sender.run(), name="outbox-sender")
        await until(clock, lambda: registry.get("outbox") is not None)
        health = registry.get("outbox")
        assert health is not None and health.status is Status.DEGRADED and "corrupt" in health.reason
        task.cancel()
    await ob.close()
