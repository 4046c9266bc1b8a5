"""Helper for tests/test_outbox.py's kill -9 test (not a test itself): enqueues attestation-like
entries into the outbox at argv[1] forever, printing each id (hex) after ``enqueue`` returned.

    python -m tests.outbox_writer DB [FULL|NORMAL]
"""

from __future__ import annotations

import os
import sys

from agent.outbox import Outbox
from drivers.clock import SystemClock
from ledger_lite.attestation import attestation_id


def main() -> None:
    sync = sys.argv[2] if len(sys.argv) > 2 else "FULL"
    assert sync in ("FULL", "NORMAL")
    outbox = Outbox(sys.argv[1], budget_bytes=1 << 30, clock=SystemClock(), synchronous=sync)
    print("ready", flush=True)
    while True:
        data = os.urandom(300)
        outbox.enqueue(data, cell="cell-1", kind="driving_event")
        print(attestation_id(data).hex(), flush=True)


if __name__ == "__main__":
    main()
