"""Window features (models.features) and the labelled, drive-split dataset (models.dataset)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hal.types import VehicleState
from models.dataset import NDS_RELATIVE, drive_windows, load_dataset, load_nds, simulate_drive, split_drives
from models.features import CLASSES, FEATURE_NAMES, N_FEATURES, features_from_arrays, sliding_windows, window_features

F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _states(
    n: int, rate: float, *, ax: object = 0.0, ay: object = 0.0, yaw: object = 0.0, speed: object = 15.0
) -> list[VehicleState]:
    def val(v: object, t: float) -> float | None:
        return v(t) if callable(v) else v  # type: ignore[return-value]

    out = []
    for i in range(n):
        t = i / rate
        out.append(
            VehicleState(
                monotonic=100.0 + t,
                timestamp=1.7e9 + t,
                sequence=i,
                speed=val(speed, t),
                accel_longitudinal=val(ax, t),
                accel_lateral=val(ay, t),
                yaw_rate=val(yaw, t),
            )
        )
    return out


def test_names_and_classes() -> None:
    assert N_FEATURES == len(FEATURE_NAMES) == 16 == len(set(FEATURE_NAMES))
    assert CLASSES == ("normal", "harsh_brake", "harsh_accel", "harsh_corner", "weaving")


@pytest.mark.parametrize("rate", [1.0, 10.0])
def test_a_hard_brake_gives_a_very_negative_min_accel(rate: float) -> None:
    cruise = window_features(_states(int(6 * rate), rate))
    brake = window_features(_states(int(6 * rate), rate, ax=lambda t: -7.0 if t >= 3 else 0.0))
    assert brake.shape == (N_FEATURES,) and brake.dtype == np.float32
    assert brake[F["ax_min"]] < -6.5
    assert abs(cruise[F["ax_min"]]) < 1e-6
    assert brake[F["jerk_min"]] < -5
    assert cruise[F["speed_mean"]] == pytest.approx(15.0)


@pytest.mark.parametrize("rate", [1.0, 10.0])
def test_weaving_gives_many_sign_changes(rate: float) -> None:
    def square(t: float) -> float:  # a 2 s swing period, in phase with the 1 s bins
        return 2.5 if math.floor(t + 1e-9) % 2 == 0 else -2.5

    def sine(t: float) -> float:  # a 4 s swing period
        return 2.5 * math.sin(2 * math.pi * (t + 0.5) / 4.0)

    straight = window_features(_states(int(8 * rate), rate, ay=0.1, yaw=1.0))
    assert straight[F["ay_sign_rate"]] == 0 and straight[F["yaw_sign_rate"]] == 0
    assert straight[F["heading_change"]] == pytest.approx(4.0, abs=0.5)  # 1 deg/s for 4 s
    fast = window_features(_states(int(8 * rate), rate, ay=square, yaw=lambda t: 4 * square(t)))
    assert fast[F["ay_sign_rate"]] == pytest.approx(0.75)  # 3 sign changes in 4 s
    assert fast[F["yaw_sign_rate"]] == pytest.approx(0.75)
    assert fast[F["heading_change"]] < 12  # swings, no net turn
    slow = window_features(_states(int(8 * rate), rate, ay=sine, yaw=lambda t: 4 * sine(t)))
    assert slow[F["ay_sign_rate"]] >= 0.25 and slow[F["yaw_sign_rate"]] >= 0.25


def test_none_values_are_ignored() -> None:
    # only the brake samples carry an acceleration; speed and yaw rate are never known
    states = _states(40, 10.0, ax=lambda t: -6.0 if t > 2 else None, speed=None, yaw=None, ay=None)
    f = window_features(states)
    assert np.isfinite(f).all()
    assert f[F["ax_min"]] == pytest.approx(-6.0)
    assert f[F["speed_mean"]] == 0 and f[F["yaw_absmax"]] == 0
    assert np.array_equal(window_features([]), np.zeros(N_FEATURES, np.float32))
    assert np.isfinite(window_features(_states(3, 10.0, ax=None, ay=None, yaw=None, speed=None))).all()


def test_only_the_last_window_counts() -> None:
    early_brake = _states(100, 10.0, ax=lambda t: -8.0 if t < 2 else 0.0)
    assert window_features(early_brake)[F["ax_min"]] == pytest.approx(0.0)


def test_1hz_and_10hz_agree() -> None:
    def ax(t: float) -> float:
        return -5.0 if 1 <= t < 3 else 0.5

    f1 = window_features(_states(4, 1.0, ax=ax))
    f10 = window_features(_states(40, 10.0, ax=ax))
    assert f1[F["ax_min"]] == pytest.approx(f10[F["ax_min"]], abs=0.01)
    assert f1[F["ax_mean"]] == pytest.approx(f10[F["ax_mean"]], abs=0.01)


def test_heading_is_used_without_yaw_rate() -> None:
    t = np.arange(4.0)
    f = features_from_arrays(t, [10] * 4, [0] * 4, [0] * 4, [None] * 4, [350, 355, 0, 5])
    assert f[F["heading_change"]] == pytest.approx(15.0)


def test_sliding_windows_do_not_span_gaps() -> None:
    t = np.r_[np.arange(6.0), np.arange(50.0, 55.0)]
    wins = sliding_windows(t, window=4.0, hop=1.0)
    assert [(int(i), int(j)) for i, j, _ in wins] == [(0, 4), (1, 5), (2, 6), (6, 10), (7, 11)]


def test_split_is_by_drive_and_deterministic() -> None:
    ids = [f"nds-{i}" for i in range(1, 29)] + [f"sim-{i}" for i in range(40)]
    train, test = split_drives(ids, test_fraction=0.25, seed=7)
    assert (train, test) == split_drives(list(reversed(ids)), test_fraction=0.25, seed=7)
    assert not set(train) & set(test) and set(train) | set(test) == set(ids)
    assert sum(d.startswith("nds-") for d in test) == 7 and sum(d.startswith("sim-") for d in test) == 10
    assert split_drives(ids, seed=8)[1] != test


def test_a_simulated_drive_has_events_and_is_deterministic() -> None:
    a = simulate_drive(3)
    b = simulate_drive(3)
    np.testing.assert_array_equal(a.ax, b.ax)
    x, y = drive_windows(a)
    assert x.shape == (len(y), N_FEATURES) and np.isfinite(x).all()
    assert {0, 1}.issubset(set(y.tolist()))
    brake = x[y == CLASSES.index("harsh_brake")]
    assert (brake[:, F["ax_min"]] < -3).all()


def test_reference_drives(refdata: Path) -> None:
    path = refdata / NDS_RELATIVE
    if not path.is_file():
        pytest.skip(f"{path} is not in this refdata checkout")
    drives = load_nds(path)
    assert len(drives) == 28 and sum(d.t.size for d in drives) == 23187
    # 128 flagged rows upstream; every one is classified
    assert sum(int((d.event > 0).sum()) for d in drives) == 128
    d6 = next(d for d in drives if d.drive_id == "nds-6")
    # the single "high" event: drive 6, accel_x 0.630 g forward -> harsh acceleration
    assert d6.ax.max() == pytest.approx(0.63 * 9.80665, abs=1e-3)
    assert d6.event[int(np.argmax(d6.ax))] == CLASSES.index("harsh_accel")
    counts = np.zeros(len(CLASSES), int)
    for d in drives:
        _, y = drive_windows(d)
        counts += np.bincount(y, minlength=len(CLASSES))
    assert counts[1] > 0 and counts[2] > 0 and counts[3] > 0 and counts[4] == 0
    train, test = split_drives([d.drive_id for d in drives], seed=7)
    assert len(test) == 7 and not set(train) & set(test)


def test_load_dataset_gives_every_window_with_its_drive(refdata: Path) -> None:
    path = refdata / NDS_RELATIVE
    x, y, ids = load_dataset(path, sim_seeds=[0])
    assert x.shape == (len(y), N_FEATURES) and len(ids) == len(y)
    assert {i.split("-")[0] for i in ids} == ({"nds", "sim"} if path.is_file() else {"sim"})
