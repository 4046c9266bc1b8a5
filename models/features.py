"""Window features for the driving-behaviour model (pure numpy, SI units).

A window is a few seconds of vehicle states (``WINDOW_S`` = 4 s, taken every ``HOP_S`` = 1 s).
Its samples are first averaged into 1 s bins (``BIN_S``) so that the agent's 10 Hz
``VehicleState`` stream and the 1 Hz reference drives give the same features for the same
motion; every feature is then computed on the bins. Missing values (``None`` or NaN) are
ignored; a feature without any value is 0.

Features (``FEATURE_NAMES``, ``N_FEATURES`` = 16):

== =================== ===================================================================
0  ax_min              min longitudinal acceleration, m/s² (forward positive)
1  ax_max              max longitudinal acceleration, m/s²
2  ax_mean             mean longitudinal acceleration, m/s²
3  ax_std              standard deviation of the longitudinal acceleration, m/s²
4  ay_absmax           max |lateral acceleration|, m/s²
5  ay_std              standard deviation of the lateral acceleration, m/s²
6  yaw_absmax          max |yaw rate|, deg/s
7  yaw_std             standard deviation of the yaw rate, deg/s
8  speed_mean          mean speed, m/s
9  speed_min           min speed, m/s
10 speed_max           max speed, m/s
11 jerk_min            min longitudinal jerk between consecutive bins, m/s³
12 jerk_max            max longitudinal jerk, m/s³
13 ay_sign_rate        sign changes of the lateral acceleration per second (hysteresis
                       ``SIGN_HYST_AY`` m/s²: only swings beyond ±0.5 m/s² count)
14 yaw_sign_rate       sign changes of the yaw rate per second (hysteresis ±``SIGN_HYST_YAW`` deg/s)
15 heading_change      |net heading change| over the window, degrees (integral of the yaw
                       rate; from the heading when there is no yaw rate)
== =================== ===================================================================

Lateral acceleration is left positive (ISO 8855), yaw rate counter-clockwise positive, as in
``hal.types.VehicleState``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hal.types import VehicleState

__all__ = [
    "BIN_S",
    "CLASSES",
    "FEATURE_NAMES",
    "HOP_S",
    "N_CLASSES",
    "N_FEATURES",
    "SIGN_HYST_AY",
    "SIGN_HYST_YAW",
    "WINDOW_S",
    "features_from_arrays",
    "sliding_windows",
    "window_features",
]

CLASSES: tuple[str, ...] = ("normal", "harsh_brake", "harsh_accel", "harsh_corner", "weaving")
N_CLASSES = len(CLASSES)

FEATURE_NAMES: tuple[str, ...] = (
    "ax_min",
    "ax_max",
    "ax_mean",
    "ax_std",
    "ay_absmax",
    "ay_std",
    "yaw_absmax",
    "yaw_std",
    "speed_mean",
    "speed_min",
    "speed_max",
    "jerk_min",
    "jerk_max",
    "ay_sign_rate",
    "yaw_sign_rate",
    "heading_change",
)
N_FEATURES = len(FEATURE_NAMES)

#: window length, hop between windows and averaging bin, seconds
WINDOW_S = 4.0
HOP_S = 1.0
BIN_S = 1.0
#: hysteresis of the sign-change counters (m/s², deg/s)
SIGN_HYST_AY = 0.5
SIGN_HYST_YAW = 2.0

FloatArray = npt.NDArray[np.float64]
#: a per-sample column: an array (NaN = missing) or a sequence with ``None`` for missing
Column = npt.ArrayLike | Sequence[float | None]


def _as_array(values: Column) -> FloatArray:
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)  # type: ignore[union-attr]


def _bin(t: FloatArray, x: FloatArray, start: float, n_bins: int) -> FloatArray:
    """Mean of ``x`` in each of ``n_bins`` bins of ``BIN_S`` from ``start`` (NaN where empty)."""
    idx = np.floor((t - start) / BIN_S + 1e-9).astype(np.int64)
    ok = (idx >= 0) & (idx < n_bins) & np.isfinite(x)
    sums = np.bincount(idx[ok], weights=x[ok], minlength=n_bins)
    counts = np.bincount(idx[ok], minlength=n_bins)
    out = np.full(n_bins, np.nan)
    nz = counts > 0
    out[nz] = sums[nz] / counts[nz]
    return out


def _stat(x: FloatArray, fn: str) -> float:
    v = x[np.isfinite(x)]
    if v.size == 0:
        return 0.0
    if fn == "min":
        return float(v.min())
    if fn == "max":
        return float(v.max())
    if fn == "mean":
        return float(v.mean())
    if fn == "std":
        return float(v.std())
    if fn == "absmax":
        return float(np.abs(v).max())
    raise ValueError(fn)


def _sign_changes(x: FloatArray, hyst: float) -> int:
    """Sign changes of ``x`` that swing beyond ±``hyst`` (NaNs skipped)."""
    last = 0
    changes = 0
    for value in x[np.isfinite(x)]:
        s = 1 if value > hyst else (-1 if value < -hyst else 0)
        if s == 0:
            continue
        if last and s != last:
            changes += 1
        last = s
    return changes


def features_from_arrays(
    t: Column,
    speed: Column,
    accel_longitudinal: Column,
    accel_lateral: Column,
    yaw_rate: Column,
    heading: Column | None = None,
    *,
    start: float | None = None,
    duration: float = WINDOW_S,
) -> npt.NDArray[np.float32]:
    """The ``N_FEATURES`` features of one window given as parallel arrays (NaN = missing).

    ``t`` is seconds (any origin, e.g. monotonic); the window is ``[start, start + duration)``,
    by default starting at the first sample.
    """
    tt = _as_array(t)
    if tt.size == 0:
        return np.zeros(N_FEATURES, dtype=np.float32)
    t0 = float(tt[0]) if start is None else start
    n_bins = max(1, round(duration / BIN_S))
    v = _bin(tt, _as_array(speed), t0, n_bins)
    ax = _bin(tt, _as_array(accel_longitudinal), t0, n_bins)
    ay = _bin(tt, _as_array(accel_lateral), t0, n_bins)
    yaw = _bin(tt, _as_array(yaw_rate), t0, n_bins)
    jerk = np.diff(ax) / BIN_S if n_bins > 1 else np.zeros(0)
    if np.isfinite(yaw).any():
        heading_change = abs(float(np.nansum(yaw)) * BIN_S)
    elif heading is not None:
        hd = _as_array(heading)
        ok = np.isfinite(hd) & (tt >= t0) & (tt < t0 + duration)
        h = np.degrees(np.unwrap(np.radians(hd[ok]))) if ok.sum() > 1 else np.zeros(0)
        heading_change = abs(float(h[-1] - h[0])) if h.size else 0.0
    else:
        heading_change = 0.0
    out = [
        _stat(ax, "min"),
        _stat(ax, "max"),
        _stat(ax, "mean"),
        _stat(ax, "std"),
        _stat(ay, "absmax"),
        _stat(ay, "std"),
        _stat(yaw, "absmax"),
        _stat(yaw, "std"),
        _stat(v, "mean"),
        _stat(v, "min"),
        _stat(v, "max"),
        _stat(jerk, "min"),
        _stat(jerk, "max"),
        _sign_changes(ay, SIGN_HYST_AY) / (n_bins * BIN_S),
        _sign_changes(yaw, SIGN_HYST_YAW) / (n_bins * BIN_S),
        heading_change,
    ]
    return np.asarray(out, dtype=np.float32)


def window_features(states: Sequence[VehicleState], *, duration: float = WINDOW_S) -> npt.NDArray[np.float32]:
    """Features of the last ``duration`` seconds of ``states`` (ordered by ``monotonic``).

    Works at any sampling rate; states older than ``duration`` before the newest are ignored.
    """
    if not states:
        return np.zeros(N_FEATURES, dtype=np.float32)
    # the window ends just after the newest sample, so that sample falls into the last bin
    start = states[-1].monotonic - duration + 1e-6
    recent = [s for s in states if s.monotonic >= start]
    return features_from_arrays(
        [s.monotonic for s in recent],
        [s.speed for s in recent],
        [s.accel_longitudinal for s in recent],
        [s.accel_lateral for s in recent],
        [s.yaw_rate for s in recent],
        [s.heading for s in recent],
        start=start,
        duration=duration,
    )


def sliding_windows(
    t: Column, *, window: float = WINDOW_S, hop: float = HOP_S, max_gap: float = 1.5
) -> list[tuple[int, int, float]]:
    """(first index, end index exclusive, start time) of every full window over sorted ``t``.

    Windows never span a gap longer than ``max_gap`` seconds between samples.
    """
    tt = _as_array(t)
    out: list[tuple[int, int, float]] = []
    if tt.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(tt) > max_gap) + 1
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, tt.size], strict=True):
        seg = tt[a:b]
        start = float(seg[0])
        while start + window <= float(seg[-1]) + BIN_S + 1e-9:
            i = a + int(np.searchsorted(seg, start - 1e-9))
            j = a + int(np.searchsorted(seg, start + window - 1e-9))
            out.append((i, j, start))
            start += hop
    return out
