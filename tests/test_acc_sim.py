"""``acc-sim``: OBUs only (as before), the report's verdict, and a bounded whole-cell run
(4 RSU agents + 2 demo OBUs in this process, real Mosquitto, real ledger)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent import exitcodes
from tests.mqtt_broker import MOSQUITTO
from tools import acc_sim


def test_obus_only_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = acc_sim.main(["--obus", "1", "--duration", "3", "--json", "--data-dir", str(tmp_path)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rc == exitcodes.OK
    assert len(rows) == 1 and rows[0]["node"] == "obu-000" and rows[0]["frames"] > 0


def _watch(made: int, retired: int, oldest: float | None, height: int = 5) -> acc_sim.CellWatch:
    w = acc_sim.CellWatch([], [])
    now = time.time()
    w.made = {"obu-000": [(now - 10, made), (now, made)]}
    w.outbox = {
        "obu-000": {"pending": made - retired, "sent_unconfirmed": 0, "retired": retired, "oldest_undelivered": oldest}
    }
    w.height = height
    return w


def test_verdict_needs_blocks_settled_receipts_and_no_failures() -> None:
    end = time.time()
    assert acc_sim.build_report(_watch(5, 5, None), 4, 1, 10, 10, end)["ok"]
    # the newest attestation (1 s old) may still be unreceipted
    assert acc_sim.build_report(_watch(5, 4, end - 1), 4, 1, 10, 10, end)["ok"]
    # one made 8 s before the end and never receipted fails the run
    rep = acc_sim.build_report(_watch(5, 4, end - 8), 4, 1, 10, 10, end)
    assert not rep["ok"] and rep["obus_detail"][0]["oldest_unreceipted_age_s"] == 8.0
    assert not acc_sim.build_report(_watch(5, 5, None, height=0), 4, 1, 10, 10, end)["ok"]
    w = _watch(5, 5, None)
    w.failures.append({"t": 1.0, "node": "rsu-0", "subsystem": "mqtt", "reason": "x"})
    assert not acc_sim.build_report(w, 4, 1, 10, 10, end)["ok"]
    assert "verdict: FAIL" in acc_sim.summary_text(acc_sim.build_report(w, 4, 1, 10, 10, end))


@pytest.mark.timeout(90)
def test_cell_of_4_rsus_and_2_obus_receipts_everything(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto not installed at {MOSQUITTO}")
    report = tmp_path / "report"
    t0 = time.monotonic()
    rc = acc_sim.main(
        ["--rsus", "4", "--obus", "2", "--duration", "20", "--report", str(report), "--data-dir", str(tmp_path / "d")]
    )
    took = time.monotonic() - t0
    rep = json.loads((report / "acc-sim-report.json").read_text())
    summary = (report / "acc-sim-summary.txt").read_text()
    assert rc == exitcodes.OK, summary
    assert took < 40
    assert rep["blocks_committed"] > 0 and len(rep["rsu_heights"]) == 4
    assert not rep["health_failures"]
    assert len(rep["obus_detail"]) == 2
    for row in rep["obus_detail"]:
        # attestations every 2 s for ~20 s: several made, all but the last few seconds' receipted
        assert row["made_before_last_5s"] >= 3, row
        assert row["receipted"] >= row["made_before_last_5s"], row
        assert row["settled_all_receipted"], row
    assert rep["attestations_receipted"] <= rep["attestations_made"]
    assert "verdict: OK" in summary and "obu-001" in summary
