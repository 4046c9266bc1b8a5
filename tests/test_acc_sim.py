"""``acc-sim``: OBUs only, the report's verdict, the cells' geography, and a bounded run of two
cells (2 x 4 RSU agents + 2 OBUs in this process, real Mosquitto, real ledgers, FL, PC5, plots);
a minute-long run with handovers is marked slow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent import exitcodes
from drivers.simvehicle import Route, _TangentPlane
from tests.mqtt_broker import MOSQUITTO
from tools import acc_sim, sim_world


def test_obus_only_still_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = acc_sim.main(["--obus", "1", "--duration", "3", "--json", "--data-dir", str(tmp_path)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert rc == exitcodes.OK
    assert len(rows) == 1 and rows[0]["node"] == "obu-000" and rows[0]["frames"] > 0


def _watch(made: int, retired: int, oldest: float | None, height: int = 5) -> sim_world.Watch:
    w = sim_world.Watch(None)
    now = time.time()
    w.made = {"obu-000": [(now - 10, made), (now, made)]}
    w.outbox = {
        "obu-000": {"pending": made - retired, "sent_unconfirmed": 0, "retired": retired, "oldest_undelivered": oldest}
    }
    w.height = {"sim-cell": height}
    return w


SPEC = sim_world.SimSpec(rsus=4, obus=1)


def test_verdict_needs_blocks_settled_receipts_and_no_failures() -> None:
    end = time.time()
    assert sim_world.report_dict(_watch(5, 5, None), SPEC, 10, end)["ok"]
    # the newest attestation (1 s old) may still be unreceipted
    assert sim_world.report_dict(_watch(5, 4, end - 1), SPEC, 10, end)["ok"]
    # one made 8 s before the end and never receipted fails the run
    rep = sim_world.report_dict(_watch(5, 4, end - 8), SPEC, 10, end)
    assert not rep["ok"] and rep["obus_detail"][0]["oldest_unreceipted_age_s"] == 8.0
    assert not sim_world.report_dict(_watch(5, 5, None, height=0), SPEC, 10, end)["ok"]
    w = _watch(5, 5, None)
    w.height["sim-east"] = 0  # a second cell that never committed
    assert not sim_world.report_dict(w, SPEC, 10, end)["ok"]
    w = _watch(5, 5, None)
    w.failures.append({"t": 1.0, "node": "rsu-0", "subsystem": "mqtt", "reason": "x"})
    rep = sim_world.report_dict(w, SPEC, 10, end)
    assert not rep["ok"]
    assert "verdict: FAIL" in acc_sim.summary_text(rep)


def test_cell_areas_split_the_loop_and_every_start_is_inside_one() -> None:
    route = Route.default()
    one = sim_world.cell_areas(route, 1)
    two = sim_world.cell_areas(route, 2)
    assert list(one) == ["sim-cell"] and list(two) == ["sim-west", "sim-east"]
    homes = set()
    for i in range(len(route.segments)):
        lat, lon, _ = route.starting_at(i).origin
        assert sim_world.cell_at(one, lat, lon) == "sim-cell"
        homes.add(sim_world.cell_at(two, lat, lon))
    assert homes == {"sim-west", "sim-east"}  # the loop crosses from one into the other


def test_a_loop_entered_at_another_segment_is_the_same_loop() -> None:
    route = Route.default()
    moved = route.starting_at(7)
    assert moved.length == pytest.approx(route.length)
    assert moved.closure_error() < 1e-6
    # its start is where the original reaches segment 7
    plane = _TangentPlane(*route.origin)
    x, y, heading = route.pose_at(route.starts[7] + 1e-9)
    lat, lon, _ = plane.to_geodetic(x, y)
    assert moved.origin[:2] == pytest.approx((lat, lon), abs=1e-7)
    assert moved.heading == pytest.approx(heading, abs=1e-6)
    with pytest.raises(ValueError, match="loop"):
        Route(route.segments, loop=False).starting_at(3)


@pytest.mark.timeout(120)
def test_two_cells_of_4_rsus_and_2_obus_receipt_everything_and_plot(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto not installed at {MOSQUITTO}")
    report = tmp_path / "report"
    t0 = time.monotonic()
    rc = acc_sim.main(
        ["--rsus", "4", "--obus", "2", "--cells", "2", "--duration", "25", "--fl-round", "6", "--workers", "2"]
        + ["--report", str(report), "--data-dir", str(tmp_path / "d")]
    )
    took = time.monotonic() - t0
    rep = json.loads((report / "acc-sim-report.json").read_text())
    summary = (report / "acc-sim-summary.txt").read_text()
    assert rc == exitcodes.OK, summary
    assert took < 60
    assert rep["cells"] == ["sim-west", "sim-east"]
    assert all(h > 0 for h in rep["heights"].values()) and len(rep["rsu_heights"]) == 8
    assert not rep["health_failures"]
    assert len(rep["obus_detail"]) == 2
    for row in rep["obus_detail"]:
        # attestations every 2 s for ~25 s: several made, all but the last few seconds' receipted
        assert row["made_before_last_5s"] >= 3, row
        assert row["receipted"] >= row["made_before_last_5s"], row
        assert row["settled_all_receipted"], row
        assert row["cell_at_end"] in rep["cells"] and row["fusion_hz"] > 8, row
    assert rep["attestations_receipted"] <= rep["attestations_made"]
    # FL: rounds committed in both cells and scored on the held-apart drives
    assert {r["cell"] for r in rep["fl_rounds"]} == {"sim-west", "sim-east"}
    assert rep["fl_baseline_accuracy"] is not None and all(r["accuracy"] is not None for r in rep["fl_rounds"])
    # PC5: the two vehicles (a leader and its follower) hear each other's CAMs
    assert rep["pc5"]["cam_sent"] > 0 and rep["pc5"]["delivered"] > 0
    assert all(len(t) >= 15 for t in rep["tracks"].values())
    assert len(rep["cell_areas"]) == 2 and rep["ledger_series"]
    for name in ("map", "ledger", "fl"):
        png = Path(rep["plots"][name])
        assert png.parent == report and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rep["plots"]
    assert "verdict: OK" in summary and "obu-001" in summary and "map.png" in summary
    # three kinds of process: the OBU workers (one OBU each here), the RSUs, the watcher
    assert rep["obu_workers"]["processes"] == 2 and rep["rsu_process"]["rss_mib"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_minute_of_two_cells_has_handovers_events_and_fl_updates(tmp_path: Path) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"mosquitto not installed at {MOSQUITTO}")
    report = tmp_path / "report"
    rc = acc_sim.main(
        ["--rsus", "4", "--obus", "6", "--cells", "2", "--duration", "70", "--fl-round", "12"]
        + ["--report", str(report), "--data-dir", str(tmp_path / "d")]
    )
    rep = json.loads((report / "acc-sim-report.json").read_text())
    assert rc == exitcodes.OK, (report / "acc-sim-summary.txt").read_text()
    assert rep["handovers"] >= 1
    assert any(r["cell_at_end"] != r["home_cell"] for r in rep["obus_detail"])
    assert rep["driving_events"].get("harsh_brake", 0) >= 1  # the pedestrian on Sonnenstrasse
    assert any(r["participants"] >= 1 for r in rep["fl_rounds"])
