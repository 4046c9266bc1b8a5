"""Labelled feature windows for the driving-behaviour model, split by drive.

Two sources (docs/models.md says how each is labelled):

- real 1 Hz drives of the DrivePlotR naturalistic driving data (``nds_data.csv.gz`` in the
  shared reference data), labelled from its upstream 0.35 g harsh-event flags;
- simulated drives of the test vehicle (``drivers.simvehicle.SimVehicle``) on random routes
  made from its own segments: straights, stops, emergency brakes, gentle and fast curves, and
  weaving made of short alternating curves; sampled at 10 Hz with sensor noise added and
  labelled from the noise-free truth by the same 0.35 g rule.

Every window is ``features.WINDOW_S`` long and starts every ``features.HOP_S``. The train/test
split is by drive (never by window), deterministic for a seed. Nothing is written to disk.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .features import BIN_S, CLASSES, N_FEATURES, WINDOW_S, features_from_arrays, sliding_windows

__all__ = [
    "G",
    "HARSH_G",
    "NDS_RELATIVE",
    "SIM_SEEDS",
    "Dataset",
    "Drive",
    "build_dataset",
    "default_nds_path",
    "drive_windows",
    "load_dataset",
    "load_nds",
    "simulate_drive",
    "split_drives",
]

G = 9.80665
#: the upstream event threshold: |accel_x| or |accel_y| above 0.35 g
HARSH_G = 0.35
#: the reference drives, relative to the shared refdata root
NDS_RELATIVE = "driving/driveplotr-nds/nds_data.csv.gz"
NORMAL, HARSH_BRAKE, HARSH_ACCEL, HARSH_CORNER, WEAVING = range(5)
assert CLASSES[WEAVING] == "weaving"

FloatArray = npt.NDArray[np.float64]


@dataclass
class Drive:
    """One drive as parallel per-sample arrays (SI units, ISO 8855 signs, NaN = missing).

    ``event`` is the harsh-event class of each sample (0 none, else a ``CLASSES`` index) and
    ``event_mag`` its magnitude (m/s²); ``weave`` marks samples on a weaving stretch.
    """

    drive_id: str
    source: str
    t: FloatArray
    speed: FloatArray
    ax: FloatArray
    ay: FloatArray
    yaw: FloatArray
    heading: FloatArray
    event: npt.NDArray[np.int64]
    event_mag: FloatArray
    weave: npt.NDArray[np.bool_]

    @property
    def duration(self) -> float:
        return float(self.t[-1] - self.t[0]) if self.t.size else 0.0


def _event_class(ax: float, ay: float) -> int:
    """Harsh-event class of a sample beyond the threshold: the larger axis decides."""
    if abs(ax) >= abs(ay):
        return HARSH_BRAKE if ax < 0 else HARSH_ACCEL
    return HARSH_CORNER


def _num(value: str) -> float:
    return float(value) if value not in ("", "NA") else math.nan


def load_nds(path: str | Path) -> list[Drive]:
    """The DrivePlotR drives. Units converted: g -> m/s², mph -> m/s; ``accel_y`` (right
    positive in this data) is negated to ISO 8855 left positive; ``gyro_z`` is already
    counter-clockwise positive. A row flagged in ``accel_event`` is a harsh brake
    (``accel_x`` < 0) or harsh acceleration when ``|accel_x| >= |accel_y|``, else a harsh corner.
    """
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            rows[row["drive"]].append(row)
    drives = []
    for drive, rs in sorted(rows.items(), key=lambda kv: int(kv[0])):
        t = np.array([datetime.fromisoformat(r["time_utc"].replace("Z", "+00:00")).timestamp() for r in rs])
        order = np.argsort(t, kind="stable")
        rs = [rs[i] for i in order]
        t = t[order]
        ax_g = np.array([_num(r["accel_x"]) for r in rs])
        ay_g = np.array([_num(r["accel_y"]) for r in rs])
        event = np.zeros(len(rs), dtype=np.int64)
        mag = np.zeros(len(rs))
        for k, r in enumerate(rs):
            if r["accel_event"] and np.isfinite(ax_g[k]) and np.isfinite(ay_g[k]):
                event[k] = _event_class(ax_g[k], ay_g[k])
                mag[k] = max(abs(ax_g[k]), abs(ay_g[k])) * G
        drives.append(
            Drive(
                drive_id=f"nds-{drive}",
                source="driveplotr-nds",
                t=t - t[0],
                speed=np.array([_num(r["speed_mph"]) for r in rs]) * 0.44704,
                ax=ax_g * G,
                ay=-ay_g * G,
                yaw=np.array([_num(r["gyro_z"]) for r in rs]),
                heading=np.array([_num(r["gps_heading"]) for r in rs]),
                event=event,
                event_mag=mag,
                weave=np.zeros(len(rs), dtype=np.bool_),
            )
        )
    return drives


# --------------------------------------------------------------------------------------------
# simulated drives


@dataclass(frozen=True)
class SimNoise:
    """Standard deviations of the sensor noise added to simulated samples."""

    accel: float = 0.25  # m/s²
    yaw: float = 0.8  # deg/s
    speed: float = 0.1  # m/s


def _random_route(rng: random.Random) -> list[object]:
    from drivers.simvehicle import Segment, curve, straight

    kmh = 1 / 3.6
    segs: list[Segment] = [straight(80, 30 * kmh, name="start")]
    kinds = ["straight", "stop", "brake", "curve", "fast_curve", "weave"]
    weights = [3, 2, 1.2, 2, 1.2, 1.5]
    for n in range(rng.randint(14, 22)):
        kind = rng.choices(kinds, weights)[0]
        v = rng.uniform(30, 75) * kmh
        if kind == "straight":
            segs.append(straight(rng.uniform(80, 350), v, name=f"straight {n}"))
        elif kind == "stop":
            segs.append(straight(rng.uniform(80, 250), v, stop=rng.uniform(1, 5), name=f"stop {n}"))
        elif kind == "brake":
            length = rng.uniform(150, 300)
            segs.append(
                straight(
                    length,
                    v,
                    harsh_brake_at=rng.uniform(0.5, 0.8) * length,
                    harsh_brake_decel=rng.uniform(4.5, 8.5),
                    harsh_brake_hold=rng.uniform(1, 4),
                    name=f"brake {n}",
                )
            )
        elif kind in ("curve", "fast_curve"):
            radius = rng.uniform(25, 150)
            a_lat = rng.uniform(0.8, 2.6) if kind == "curve" else rng.uniform(4.2, 6.5)
            speed = min(math.sqrt(a_lat * radius), 90 * kmh)
            turn = rng.choice((-1, 1)) * rng.uniform(30, 120)
            segs.append(curve(turn, radius, speed, transition=rng.uniform(5, 15), name=f"{kind} {n}"))
            segs.append(straight(rng.uniform(40, 120), v, name=f"after {n}"))
        else:  # weaving: alternating short curves, heading swinging about the road's
            vw = rng.uniform(30, 70) * kmh
            half = rng.uniform(1.5, 2.5)  # seconds per swing
            a_lat = rng.uniform(1.2, 2.8)
            length = vw * half
            k = a_lat / (vw * vw)
            turn = math.degrees(k * length * 0.6)
            sign = rng.choice((-1, 1))
            swings = rng.randint(6, 12)
            segs.append(Segment(length / 2, vw, turn=sign * turn / 2, transition=0.2 * length, name=f"weave {n}"))
            for i in range(swings):
                segs.append(
                    Segment(length, vw, turn=-sign * turn * (-1) ** i, transition=0.2 * length, name=f"weave {n}")
                )
            last = -sign * (-1) ** swings
            segs.append(Segment(length / 2, vw, turn=-last * turn / 2, transition=0.2 * length, name=f"weave {n}"))
            segs.append(straight(60, vw, name=f"after {n}"))
    segs.append(straight(100, 30 * kmh, stop=3.0, name="end"))
    return list(segs)


def simulate_drive(seed: int, *, rate_hz: float = 10.0, noise: SimNoise | None = None) -> Drive:
    """A simulated drive on a random route (seeded), sampled at ``rate_hz`` with sensor noise.

    Per seed the driver is also random: acceleration limit 1.8-4.8 m/s² (above 3.43 m/s² some
    launches are harsh), jerk limit 2-8 m/s³, comfort deceleration 1.2-2.6 m/s².
    """
    from drivers.simvehicle import Route, SimConfig, SimVehicle

    noise = noise or SimNoise()
    rng = random.Random(f"dataset-sim-{seed}")
    route = Route(_random_route(rng), loop=False, name=f"random-{seed}")  # type: ignore[arg-type]
    config = SimConfig(
        max_accel=rng.uniform(1.8, 4.8),
        accel_falloff=0.02,
        max_jerk=rng.uniform(2.0, 8.0),
        comfort_decel=rng.uniform(1.2, 2.6),
    )
    sim = SimVehicle(route, seed=seed, config=config, nmea_rate_hz=None, emit_can=False)
    dt = 1.0 / rate_hz
    cols: dict[str, list[float]] = defaultdict(list)
    weave: list[bool] = []
    still = 0
    while True:
        # samples from t = 0, so that every window's 1 s bins are the label bins below
        tr = sim.truth()
        cols["t"].append(tr.t)
        cols["speed"].append(tr.speed)
        cols["ax"].append(tr.accel_longitudinal)
        cols["ay"].append(tr.accel_lateral)
        cols["yaw"].append(tr.yaw_rate)
        cols["heading"].append(tr.heading)
        weave.append(tr.segment_name.startswith("weave"))
        # the route does not loop: the drive ends standing at its end
        still = still + 1 if tr.segment == len(route.segments) - 1 and tr.speed == 0.0 else 0
        if still * dt > 2.0 or tr.t > 3600:
            break
        sim.step(dt)
    t = np.array(cols["t"])
    n = t.size
    nrng = np.random.default_rng(seed)
    ax_true, ay_true = np.array(cols["ax"]), np.array(cols["ay"])
    # labels from the noise-free truth, by the 0.35 g rule on 1 s bin means
    bins = np.floor(t / BIN_S + 1e-9).astype(np.int64)
    count = np.bincount(bins)
    bax = np.bincount(bins, weights=ax_true) / np.maximum(count, 1)
    bay = np.bincount(bins, weights=ay_true) / np.maximum(count, 1)
    event = np.zeros(n, dtype=np.int64)
    mag = np.zeros(n)
    for b in np.flatnonzero(np.maximum(np.abs(bax), np.abs(bay)) >= HARSH_G * G):
        sel = bins == b
        event[sel] = _event_class(bax[b], bay[b])
        mag[sel] = max(abs(bax[b]), abs(bay[b]))
    return Drive(
        drive_id=f"sim-{seed}",
        source="simvehicle",
        t=t,
        speed=np.maximum(np.array(cols["speed"]) + nrng.normal(0, noise.speed, n), 0.0),
        ax=ax_true + nrng.normal(0, noise.accel, n),
        ay=ay_true + nrng.normal(0, noise.accel, n),
        yaw=np.array(cols["yaw"]) + nrng.normal(0, noise.yaw, n),
        heading=np.array(cols["heading"]),
        event=event,
        event_mag=mag,
        weave=np.array(weave, dtype=np.bool_),
    )


# --------------------------------------------------------------------------------------------
# windows and split


def drive_windows(drive: Drive) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Features ``[n, N_FEATURES]`` and labels ``[n]`` of every window of ``drive``.

    Label: the class of the strongest harsh-event sample in the window; otherwise weaving
    when at least 3 s of the window are on a weaving stretch; otherwise normal.
    """
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    for i, j, start in sliding_windows(drive.t):
        xs.append(
            features_from_arrays(
                drive.t[i:j],
                drive.speed[i:j],
                drive.ax[i:j],
                drive.ay[i:j],
                drive.yaw[i:j],
                drive.heading[i:j],
                start=start,
                duration=WINDOW_S,
            )
        )
        ev = drive.event[i:j]
        if ev.any():
            ys.append(int(ev[int(np.argmax(np.where(ev > 0, drive.event_mag[i:j], -1.0)))]))
        elif drive.weave[i:j].mean() * WINDOW_S >= 3.0 - 1e-9:
            ys.append(WEAVING)
        else:
            ys.append(NORMAL)
    if not xs:
        return np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int32)
    return np.stack(xs), np.asarray(ys, dtype=np.int32)


def split_drives(
    drive_ids: Sequence[str], *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train ids, test ids): per source (the id's prefix before ``-``), a seeded shuffle of
    the sorted ids; the first ``ceil(test_fraction * n)`` are held apart for test."""
    by_source: dict[str, list[str]] = defaultdict(list)
    for d in sorted(set(drive_ids)):
        by_source[d.split("-", 1)[0]].append(d)
    train: list[str] = []
    test: list[str] = []
    for source in sorted(by_source):
        ids = by_source[source]
        random.Random(f"split-{seed}-{source}").shuffle(ids)
        n_test = math.ceil(test_fraction * len(ids)) if len(ids) > 1 else 0
        test += ids[:n_test]
        train += ids[n_test:]
    return sorted(train), sorted(test)


@dataclass
class Dataset:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int32]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int32]
    #: drive id of every window
    d_train: list[str]
    d_test: list[str]
    train_drives: list[str]
    test_drives: list[str]
    provenance: dict[str, object] = field(default_factory=dict)


def build_dataset(
    nds_path: str | Path | None,
    sim_seeds: Sequence[int] = tuple(range(40)),
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Windows of the reference drives (``nds_path``; ``None`` = none) and of simulated drives,
    split by drive."""
    drives: list[Drive] = []
    if nds_path is not None:
        drives += load_nds(nds_path)
    drives += [simulate_drive(s) for s in sim_seeds]
    train_ids, test_ids = split_drives([d.drive_id for d in drives], test_fraction=test_fraction, seed=seed)
    test_set = set(test_ids)
    parts: dict[bool, tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.int32]], list[str]]] = {
        False: ([], [], []),
        True: ([], [], []),
    }
    for d in drives:
        x, y = drive_windows(d)
        xs, ys, ids = parts[d.drive_id in test_set]
        xs.append(x)
        ys.append(y)
        ids += [d.drive_id] * len(y)

    def cat(
        p: tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.int32]], list[str]],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
        if not p[0]:
            return np.zeros((0, N_FEATURES), np.float32), np.zeros(0, np.int32)
        return np.concatenate(p[0]), np.concatenate(p[1])

    x_train, y_train = cat(parts[False])
    x_test, y_test = cat(parts[True])
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        parts[False][2],
        parts[True][2],
        train_ids,
        test_ids,
        {"nds": str(nds_path) if nds_path else None, "sim_seeds": list(sim_seeds), "split_seed": seed},
    )


#: simulated drives used by ``tools/build_models.py`` and ``load_dataset``
SIM_SEEDS: tuple[int, ...] = tuple(range(48))


def default_nds_path() -> Path:
    """The reference drives in ``$ACC_REFDATA`` or ``../shared/refdata`` beside the checkout."""
    root = Path(os.environ.get("ACC_REFDATA", Path(__file__).resolve().parent.parent.parent / "shared" / "refdata"))
    return root / NDS_RELATIVE


def load_dataset(
    nds_path: str | Path | None = None, sim_seeds: Sequence[int] = SIM_SEEDS
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], list[str]]:
    """Every window, unsplit: ``(X [n, 16], y [n], drive id of each window)``, for callers that
    split by drive themselves (the FL simulation). The reference drives are left out when the
    file is missing. About 45 s for the default 48 simulated drives on one core."""
    path = Path(nds_path) if nds_path is not None else default_nds_path()
    drives = load_nds(path) if path.is_file() else []
    drives += [simulate_drive(s) for s in sim_seeds]
    xs, ys, ids = [], [], []
    for d in drives:
        x, y = drive_windows(d)
        xs.append(x)
        ys.append(y)
        ids += [d.drive_id] * len(y)
    return np.concatenate(xs), np.concatenate(ys), ids
