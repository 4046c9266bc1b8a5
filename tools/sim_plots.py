"""PNG plots of an ``acc-sim`` report: ``map.png`` (OBU routes, events, cell areas), ``ledger.png``
(committed transactions and blocks per second per cell) and ``fl.png`` (federated-learning
accuracy per round).

matplotlib is an optional extra (``pip install autochain-agent[sim]``); it is imported lazily,
only here, and drawn through the Agg canvas on a bare ``Figure`` (no pyplot, no global state).
Every report section may be absent or empty: that plot is then skipped with a reason.

    from tools.sim_plots import write_plots
    write_plots(report, Path("out/"))  # {"map": "out/map.png", "ledger": ..., "fl": "skipped: ..."}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

WIDTH_IN, HEIGHT_IN, DPI = 8.0, 6.0, 100  # 800 x 600 pixels
SMOOTH_S = 5.0  # rates are averaged over this window (centred)
MAX_TRACK_LEGEND = 10  # more OBUs than this: tracks get no legend entries

# marker and colour per known event kind; unknown kinds take the fallbacks in turn
EVENT_STYLES: dict[str, tuple[str, str]] = {
    "harsh_brake": ("v", "tab:red"),
    "speeding": ("^", "tab:orange"),
    "lane_change": ("D", "tab:blue"),
    "harsh_corner": ("s", "tab:purple"),
    "pc5_warning": ("*", "magenta"),
    "handover": ("P", "black"),
}
FALLBACK_MARKERS = ("o", "X", "h", "p", "<", ">", "d")
FALLBACK_COLOURS = ("tab:green", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:gray")
AREA_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


class PlotsUnavailable(RuntimeError):
    """matplotlib cannot be imported (it is the optional ``sim`` extra)."""


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Write the PNG plots of an acc-sim report into out_dir; returns {plot name: file path or 'skipped: <reason>'}.
    Never raises for missing/empty report sections (that plot is skipped with a reason); raises
    PlotsUnavailable (a RuntimeError subclass defined in this module) when matplotlib cannot be imported."""
    mpl = _import_matplotlib()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "map": _plot_map(mpl, report, out_dir / "map.png"),
        "ledger": _plot_ledger(mpl, report, out_dir / "ledger.png"),
        "fl": _plot_fl(mpl, report, out_dir / "fl.png"),
    }


# --- matplotlib -----------------------------------------------------------------------------


class _Mpl:
    """The few matplotlib names used here, imported once per write_plots call."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import LineCollection
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Polygon
        from matplotlib.ticker import MaxNLocator

        self.FigureCanvasAgg = FigureCanvasAgg
        self.LineCollection = LineCollection
        self.Figure = Figure
        self.Line2D = Line2D
        self.Polygon = Polygon
        self.MaxNLocator = MaxNLocator

    def figure(self, nrows: int = 1, sharex: bool = False) -> tuple[Any, list[Any]]:
        fig = self.Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
        self.FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)
        return fig, [row[0] for row in axes]

    @staticmethod
    def save(fig: Any, path: Path) -> str:
        try:
            fig.savefig(path, dpi=DPI, format="png")
        finally:
            fig.clear()
        return str(path)


def _import_matplotlib() -> _Mpl:
    try:
        import matplotlib  # noqa: F401  (a None entry in sys.modules fails here too)

        return _Mpl()
    except ImportError as exc:
        raise PlotsUnavailable(f"matplotlib is not installed (the 'sim' extra): {exc}") from exc


# --- report parsing: tolerant, malformed entries are dropped ----------------------------------


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _latlon(lat: Any, lon: Any) -> tuple[float, float] | None:
    la, lo = _num(lat), _num(lon)
    if la is None or lo is None or not -90.0 <= la <= 90.0 or not -180.0 <= lo <= 180.0:
        return None
    return la, lo


def _section(report: dict[str, Any], key: str, kind: type) -> Any:
    v = report.get(key) if isinstance(report, dict) else None
    return v if isinstance(v, kind) else kind()


def _dicts(items: Iterable[Any]) -> list[dict[str, Any]]:
    return [x for x in items if isinstance(x, dict)]


def _tracks(report: dict[str, Any]) -> dict[str, list[list[tuple[float, float]]]]:
    """{node: [run of consecutive (lon, lat) points, ...]}; a point without position ends a run."""
    out: dict[str, list[list[tuple[float, float]]]] = {}
    for node, samples in _section(report, "tracks", dict).items():
        if not isinstance(samples, list | tuple):
            continue
        rows = []
        for s in samples:
            if isinstance(s, list | tuple) and len(s) >= 3:
                rows.append((_num(s[0]), s[1], s[2]))
        rows.sort(key=lambda r: -math.inf if r[0] is None else r[0])
        runs: list[list[tuple[float, float]]] = []
        run: list[tuple[float, float]] = []
        for _t, lat, lon in rows:
            p = _latlon(lat, lon)
            if p is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((p[1], p[0]))
        if run:
            runs.append(run)
        if runs:
            out[str(node)] = runs
    return out


def _areas(report: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """{cell: [(lon, lat), ...]} with at least 3 vertices."""
    out: dict[str, list[tuple[float, float]]] = {}
    for cell, poly in _section(report, "cell_areas", dict).items():
        if not isinstance(poly, list | tuple):
            continue
        pts = []
        for v in poly:
            if isinstance(v, list | tuple) and len(v) >= 2:
                p = _latlon(v[0], v[1])
                if p is not None:
                    pts.append((p[1], p[0]))
        if len(pts) >= 3:
            out[str(cell)] = pts
    return out


def _events(report: dict[str, Any]) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """({kind: [(lon, lat), ...]}, number of events in the report including those without position)."""
    events = _dicts(_section(report, "event_points", list))
    out: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        p = _latlon(e.get("lat"), e.get("lon"))
        if p is not None:
            out.setdefault(str(e.get("kind") or "event"), []).append((p[1], p[0]))
    return out, len(events)


def _cells_text(report: dict[str, Any], extra: Iterable[str] = ()) -> str:
    cell = report.get("cell") if isinstance(report, dict) else None
    cells = [str(c) for c in cell] if isinstance(cell, list | tuple) else ([str(cell)] if cell else [])
    cells += [c for c in extra if c not in cells]
    if not cells:
        return ""
    shown = ", ".join(cells[:4]) + (f" +{len(cells) - 4} more" if len(cells) > 4 else "")
    return ("cell " if len(cells) == 1 else "cells ") + shown


def _counts_text(report: dict[str, Any]) -> list[str]:
    parts = []
    for key, word in (("rsus", "RSUs"), ("obus", "OBUs")):
        n = _num(report.get(key)) if isinstance(report, dict) else None
        if n is not None:
            parts.append(f"{int(n)} {word}")
    elapsed = _num(report.get("elapsed_s")) if isinstance(report, dict) else None
    if elapsed is not None:
        parts.append(f"{elapsed:.0f} s")
    return parts


def _title(head: str, report: dict[str, Any], cells: Iterable[str] = (), more: Iterable[str] = ()) -> str:
    parts = [p for p in (_cells_text(report, cells), *_counts_text(report), *more) if p]
    return head + (" - " + ", ".join(parts) if parts else "")


# --- map.png --------------------------------------------------------------------------------


def _plot_map(mpl: _Mpl, report: dict[str, Any], path: Path) -> str:
    tracks = _tracks(report)
    areas = _areas(report)
    events, n_events = _events(report)
    if not tracks and not areas and not events:
        return "skipped: no positions (no track points, located events or cell areas)"
    lats = [p[1] for runs in tracks.values() for run in runs for p in run]
    lats += [p[1] for pts in events.values() for p in pts] + [p[1] for pts in areas.values() for p in pts]
    mean_lat = sum(lats) / len(lats)

    fig, (ax,) = mpl.figure()
    for i, (cell, pts) in enumerate(sorted(areas.items())):
        colour = AREA_COLOURS[i % len(AREA_COLOURS)]
        ax.add_patch(mpl.Polygon(pts, closed=True, facecolor=colour, alpha=0.12, edgecolor="none", zorder=0))
        ax.add_patch(mpl.Polygon(pts, closed=True, fill=False, edgecolor=colour, linewidth=1.2, zorder=1))
        cx, cy = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
        ax.annotate(cell, (cx, cy), ha="center", va="center", fontsize=9, color=colour, weight="bold", zorder=4)

    handles: list[Any] = []
    nodes = sorted(tracks)
    if len(nodes) <= MAX_TRACK_LEGEND:
        for i, node in enumerate(nodes):
            colour = f"C{i % 10}"
            lc = mpl.LineCollection(tracks[node], colors=colour, linewidths=1.0, alpha=0.85, zorder=2)
            ax.add_collection(lc)
            handles.append(mpl.Line2D([], [], color=colour, linewidth=1.0, label=node))
    elif nodes:
        import matplotlib as mpl_root

        cmap = mpl_root.colormaps["viridis"]
        segs: list[list[tuple[float, float]]] = []
        colours: list[Any] = []
        for i, node in enumerate(nodes):
            c = cmap(i / max(1, len(nodes) - 1))
            segs.extend(tracks[node])
            colours.extend([c] * len(tracks[node]))
        ax.add_collection(mpl.LineCollection(segs, colors=colours, linewidths=0.6, alpha=0.7, zorder=2))
        handles.append(mpl.Line2D([], [], color=cmap(0.5), linewidth=0.8, label=f"{len(nodes)} OBU tracks"))

    unknown = 0
    for kind in sorted(events):
        if kind in EVENT_STYLES:
            marker, colour = EVENT_STYLES[kind]
        else:
            marker = FALLBACK_MARKERS[unknown % len(FALLBACK_MARKERS)]
            colour = FALLBACK_COLOURS[unknown % len(FALLBACK_COLOURS)]
            unknown += 1
        pts = events[kind]
        handles.append(
            ax.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker=marker,
                s=45,
                c=colour,
                edgecolors="white",
                linewidths=0.5,
                zorder=3,
                label=f"{kind} ({len(pts)})",
            )
        )

    ax.autoscale_view()
    ax.set_aspect(1.0 / max(0.01, math.cos(math.radians(mean_lat))), adjustable="datalim")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.set_xlabel("longitude (deg E)")
    ax.set_ylabel("latitude (deg N)")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    more = [f"{n_events} events"] if n_events else []
    ax.set_title(_title("routes and events", report, sorted(areas), more), fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.8)
    return mpl.save(fig, path)


# --- ledger.png -----------------------------------------------------------------------------


def _smoothed_rate(ts: list[float], xs: list[float]) -> tuple[list[float], list[float]]:
    """Rate of the cumulative series xs(ts): (x(t+w/2) - x(t-w/2)) / w at each sample, the window
    clipped to the series' span; the mean of the finite differences over ~SMOOTH_S."""
    import numpy as np

    t = np.asarray(ts, dtype=float)
    x = np.asarray(xs, dtype=float)
    lo = np.maximum(t - SMOOTH_S / 2, t[0])
    hi = np.minimum(t + SMOOTH_S / 2, t[-1])
    width = hi - lo
    ok = width > 0
    rate = (np.interp(hi[ok], t, x) - np.interp(lo[ok], t, x)) / width[ok]
    return t[ok].tolist(), rate.tolist()


def _ledger(report: dict[str, Any]) -> dict[str, tuple[list[float], list[float], list[float], list[float]]]:
    """{cell: (t of heights, heights, t of txs, txs)}, sorted by t, one sample per t (the last)."""
    by_cell: dict[str, tuple[dict[float, float], dict[float, float]]] = {}
    for s in _dicts(_section(report, "ledger_series", list)):
        t = _num(s.get("t"))
        if t is None:
            continue
        h, x = by_cell.setdefault(str(s.get("cell") or "cell"), ({}, {}))
        height, txs = _num(s.get("height")), _num(s.get("txs"))
        if height is not None:
            h[t] = height
        if txs is not None:
            x[t] = txs
    out = {}
    for cell, (h, x) in by_cell.items():
        th, tx = sorted(h), sorted(x)
        out[cell] = (th, [h[t] for t in th], tx, [x[t] for t in tx])
    return out


def _rate_limits(ax: Any) -> None:
    """y from 0 to 15 % above the highest rate plotted (1 when nothing was)."""
    top = max((max(line.get_ydata(), default=0.0) for line in ax.get_lines()), default=0.0)
    ax.set_ylim(0.0, top * 1.15 if top > 0 else 1.0)


def _plot_ledger(mpl: _Mpl, report: dict[str, Any], path: Path) -> str:
    series = _ledger(report)
    if not series:
        return "skipped: no ledger samples"
    cells = sorted(c for c, (th, _h, tx, _x) in series.items() if len(th) >= 2 or len(tx) >= 2)
    if not cells:
        return "skipped: fewer than 2 ledger samples per cell"
    with_txs = any(len(series[c][2]) >= 2 for c in cells)
    fig, axes = mpl.figure(nrows=2 if with_txs else 1, sharex=True)
    ax_tx, ax_blk = (axes[0], axes[1]) if with_txs else (None, axes[0])
    for i, cell in enumerate(cells):
        th, heights, tx, txs = series[cell]
        colour = f"C{i % 10}"
        if ax_tx is not None and len(tx) >= 2:
            t, r = _smoothed_rate(tx, txs)
            ax_tx.plot(t, r, color=colour, linewidth=1.2, label=f"{cell} ({txs[-1] - txs[0]:.0f} txs)")
        if len(th) >= 2:
            t, r = _smoothed_rate(th, heights)
            ax_blk.plot(t, r, color=colour, linewidth=1.2, label=f"{cell} (height {heights[-1]:.0f})")
    if ax_tx is not None:
        ax_tx.set_ylabel("committed txs / s")
        _rate_limits(ax_tx)
        ax_tx.grid(True, linewidth=0.3, alpha=0.5)
        if ax_tx.get_lines():
            ax_tx.legend(loc="best", fontsize="small")
    ax_blk.set_ylabel("blocks / s")
    ax_blk.set_xlabel(f"time since start (s); rates averaged over {SMOOTH_S:.0f} s")
    _rate_limits(ax_blk)
    ax_blk.grid(True, linewidth=0.3, alpha=0.5)
    if ax_blk.get_lines():
        ax_blk.legend(loc="best", fontsize="small")
    else:
        ax_blk.text(0.5, 0.5, "no block heights sampled", transform=ax_blk.transAxes, ha="center", va="center")
    head = "ledger throughput" if with_txs else "ledger throughput (blocks only: no txs sampled)"
    axes[0].set_title(_title(head, report, cells), fontsize=10)
    return mpl.save(fig, path)


# --- fl.png ---------------------------------------------------------------------------------


def _plot_fl(mpl: _Mpl, report: dict[str, Any], path: Path) -> str:
    by_cell: dict[str, dict[int, tuple[float | None, float | None]]] = {}
    models: set[str] = set()
    for r in _dicts(_section(report, "fl_rounds", list)):
        rnd = _num(r.get("round"))
        if rnd is None:
            continue
        by_cell.setdefault(str(r.get("cell") or "cell"), {})[int(rnd)] = (
            _num(r.get("accuracy")),
            _num(r.get("participants")),
        )
        if r.get("model"):
            models.add(str(r["model"]))
    if not by_cell:
        return "skipped: no FL round committed"
    baseline = _num(report.get("fl_baseline_accuracy"))

    fig, (ax,) = mpl.figure()
    ax2 = ax.twinx()
    ax.set_zorder(ax2.get_zorder() + 1)  # accuracy lines above the participant bars
    ax.patch.set_visible(False)
    cells = sorted(by_cell)
    width = 0.8 / len(cells)
    evaluated = False
    for i, cell in enumerate(cells):
        colour = f"C{i % 10}"
        rounds = sorted(by_cell[cell])
        acc = [(n, by_cell[cell][n][0]) for n in rounds if by_cell[cell][n][0] is not None]
        if acc:
            evaluated = True
            ax.plot([a[0] for a in acc], [a[1] for a in acc], marker="o", color=colour, linewidth=1.4, label=cell)
        parts = [(n, by_cell[cell][n][1]) for n in rounds if by_cell[cell][n][1] is not None]
        if parts:
            offset = (i - (len(cells) - 1) / 2) * width
            ax2.bar(
                [p[0] + offset for p in parts],
                [p[1] for p in parts],
                width=width,
                color=colour,
                alpha=0.2,
                label=f"{cell} participants",
            )
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1.0, label=f"baseline ({baseline:.3f})")
    if not evaluated:
        ax.text(0.5, 0.5, "no round evaluated (accuracy None)", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("FL round")
    ax.set_ylabel("accuracy (held-out set)")
    ax2.set_ylabel("participants", color="gray")
    ax2.tick_params(axis="y", colors="gray")
    ax2.set_ylim(bottom=0)
    ax2.yaxis.set_major_locator(mpl.MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(mpl.MaxNLocator(integer=True))
    ax.grid(True, linewidth=0.3, alpha=0.5)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    if h1 or h2:
        ax.legend(h1 + h2, l1 + l2, loc="lower right", fontsize="small", framealpha=0.8)
    n_rounds = sum(len(v) for v in by_cell.values())
    more = [f"{n_rounds} rounds"] + ([f"{len(models)} distinct models"] if models else [])
    ax.set_title(_title("FL accuracy per round", report, cells, more), fontsize=10)
    return mpl.save(fig, path)
