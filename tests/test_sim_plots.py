"""tools/sim_plots.py: the PNG plots of an acc-sim report (map, ledger throughput, FL accuracy)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from tools.sim_plots import PlotsUnavailable, write_plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = (800, 600)  # 8 x 6 in at 100 dpi
LAT0, LON0 = 48.135, 11.57


def circle_track(i: int, n: int = 60, radius_m: float = 150.0) -> list[list[Any]]:
    """OBU i driving a small circle, one sample a second."""
    clat = LAT0 + 0.002 * i
    clon = LON0 + 0.003 * (i % 2)
    dlat = radius_m / 111_320.0
    dlon = radius_m / (111_320.0 * math.cos(math.radians(clat)))
    return [
        [float(t), clat + dlat * math.sin(2 * math.pi * t / n), clon + dlon * math.cos(2 * math.pi * t / n)]
        for t in range(n)
    ]


def square(lat: float, lon: float, d: float) -> list[list[float]]:
    return [[lat - d, lon - d], [lat - d, lon + d], [lat + d, lon + d], [lat + d, lon - d]]


def ledger_series(cell: str, rate: float, n: int = 60, with_txs: bool = True) -> list[dict[str, Any]]:
    out = []
    for t in range(n):
        row: dict[str, Any] = {"t": float(t), "cell": cell, "height": t // 2}
        if with_txs:
            row["txs"] = int(rate * t)
        out.append(row)
    return out


def make_report(obus: int = 3) -> dict[str, Any]:
    tracks = {f"obu-{i}": circle_track(i) for i in range(obus)}
    kinds = ["harsh_brake", "speeding", "lane_change", "harsh_corner", "pc5_warning", "handover", "mystery"]
    events = []
    for k, kind in enumerate(kinds):
        _t, lat, lon = tracks["obu-0"][5 + 7 * k]
        events.append({"t": 5.0 + 7 * k, "node": "obu-0", "kind": kind, "lat": lat, "lon": lon})
    events.append({"t": 3.0, "node": "obu-1", "kind": "handover", "lat": None, "lon": None})
    return {
        "cell": "sim-cell",
        "rsus": 2,
        "obus": obus,
        "elapsed_s": 60.2,
        "tracks": tracks,
        "event_points": events,
        "cell_areas": {
            "cell-a": square(LAT0 + 0.001, LON0, 0.004),
            "cell-b": square(LAT0 + 0.001, LON0 + 0.008, 0.004),
        },
        "ledger_series": ledger_series("cell-a", 12.0) + ledger_series("cell-b", 5.0),
        "fl_rounds": [
            {
                "round": r,
                "t": 10.0 * r,
                "model": "behaviour-v1",
                "participants": 2 + r,
                "accuracy": acc,
                "cell": "cell-a",
            }
            for r, acc in ((1, 0.71), (2, 0.76), (3, None), (4, 0.82))
        ],
        "fl_baseline_accuracy": 0.65,
    }


def assert_png(path_str: str, min_colours: int = 20) -> Any:
    assert not path_str.startswith("skipped"), path_str
    path = Path(path_str)
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == SIZE
        rgb = img.convert("RGB")
    colours = rgb.getcolors(maxcolors=SIZE[0] * SIZE[1])
    assert colours is not None and len(colours) > min_colours, "blank-looking image"
    return rgb


def test_full_report_writes_three_pngs(tmp_path: Path) -> None:
    out = write_plots(make_report(), tmp_path)
    assert set(out) == {"map", "ledger", "fl"}
    for name in ("map", "ledger", "fl"):
        assert out[name] == str(tmp_path / f"{name}.png")
        assert_png(out[name])


def test_map_differs_when_tracks_differ(tmp_path: Path) -> None:
    a = make_report()
    b = make_report()
    b["tracks"]["obu-2"] = [[t, lat + 0.0015, lon - 0.002] for t, lat, lon in b["tracks"]["obu-2"]]
    img_a = assert_png(write_plots(a, tmp_path / "a")["map"])
    img_b = assert_png(write_plots(b, tmp_path / "b")["map"])
    assert img_a.tobytes() != img_b.tobytes()


@pytest.mark.parametrize("report", [{}, {"tracks": {}, "event_points": [], "cell_areas": {}, "ledger_series": []}])
def test_empty_report_skips_every_plot(tmp_path: Path, report: dict[str, Any]) -> None:
    out = write_plots(report, tmp_path / "out")
    assert set(out) == {"map", "ledger", "fl"}
    for name, value in out.items():
        assert value.startswith("skipped: "), (name, value)
        assert not (tmp_path / "out" / f"{name}.png").exists()
    assert out["fl"] == "skipped: no FL round committed"


def test_no_fl_rounds_skips_only_fl(tmp_path: Path) -> None:
    report = make_report()
    report["fl_rounds"] = []
    out = write_plots(report, tmp_path)
    assert out["fl"] == "skipped: no FL round committed"
    assert_png(out["map"])
    assert_png(out["ledger"])


def test_points_without_position_are_skipped(tmp_path: Path) -> None:
    report = make_report()
    report["tracks"]["obu-0"][:3] = [[0.0, None, None], [1.0, None, 11.57], [2.0, 48.1, None]]
    report["tracks"]["obu-0"][30] = [30.0, None, None]  # an outage mid-run splits the line
    report["tracks"]["obu-9"] = [[0.0, None, None], [1.0, None, None]]  # never had a fix
    out = write_plots(report, tmp_path)
    assert_png(out["map"])


def test_only_unlocated_events_skip_map(tmp_path: Path) -> None:
    report = {"event_points": [{"t": 1.0, "node": "obu-0", "kind": "speeding", "lat": None, "lon": None}]}
    out = write_plots(report, tmp_path)
    assert out["map"].startswith("skipped: ")


def test_ledger_without_txs_plots_blocks_only(tmp_path: Path) -> None:
    report = {"cell": "sim-cell", "ledger_series": ledger_series("sim-cell", 0.0, with_txs=False)}
    out = write_plots(report, tmp_path)
    assert_png(out["ledger"])
    assert out["map"].startswith("skipped: ")


def test_single_ledger_sample_is_skipped(tmp_path: Path) -> None:
    out = write_plots({"ledger_series": [{"t": 0.0, "cell": "c", "height": 0, "txs": 0}]}, tmp_path)
    assert out["ledger"].startswith("skipped: ")


def test_fl_rounds_without_accuracy_still_plot(tmp_path: Path) -> None:
    report = {
        "fl_rounds": [
            {"round": r, "t": float(r), "model": "m", "participants": 3, "accuracy": None, "cell": c}
            for r in (1, 2)
            for c in ("cell-a", "cell-b")
        ],
        "fl_baseline_accuracy": None,
    }
    out = write_plots(report, tmp_path)
    assert_png(out["fl"])


def test_many_obus_render_fast(tmp_path: Path) -> None:
    report = make_report()
    report["tracks"] = {f"obu-{i}": circle_track(i % 40, n=600, radius_m=100.0 + i) for i in range(200)}
    start = time.monotonic()
    out = write_plots(report, tmp_path)
    elapsed = time.monotonic() - start
    assert_png(out["map"])
    assert elapsed < 8.0, f"200 x 600 track points took {elapsed:.1f} s"


def test_missing_matplotlib_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotsUnavailable) as exc:
        write_plots(make_report(), tmp_path)
    assert isinstance(exc.value, RuntimeError)
    assert not list(tmp_path.iterdir())
