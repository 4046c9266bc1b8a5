"""Federated-learning experiments: FL vs centralised, Byzantine robustness, central-DP utility.

    python -m tools.fl_experiments            # the full run (a few minutes on 2 cores)
    python -m tools.fl_experiments --quick    # fewer rounds, samples and seeds: under a minute
    python -m tools.fl_experiments --only b --seeds 5
    python -m tools.fl_experiments --tflite models/data/model.tflite   # train the real TFLite model if present

Each experiment prints a table and appends one JSON line to ``--out`` (default build/fl_experiments.jsonl).
"Accuracy" is the test accuracy of the global model averaged over the last 3 rounds, then over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from models.fl.dp import gaussian_epsilon_exact
from models.fl.sim import (
    AGGREGATORS,
    Dataset,
    FlConfig,
    Trainer,
    load_tflite_trainer,
    real_data,
    run_centralised,
    run_fl,
    synthetic_data,
)

ATTACKS = ("sign_flip", "scaling", "gaussian", "label_flip")


@dataclass(frozen=True)
class Setup:
    rounds: int
    seeds: int
    n_train: int
    quick: bool
    data: str
    factory: Callable[[int], Trainer] | None
    out: Path


def _final(acc: Sequence[float]) -> float:
    return float(np.mean(acc[-3:]))


_REAL: dict[tuple[int, bool], Dataset] = {}


def _data(setup: Setup, seed: int, n_train: int | None = None) -> Dataset:
    if setup.data == "real":  # ~45 s to build: once per seed; raw features for the TFLite model (it normalises)
        key = (seed, setup.factory is None)
        if key not in _REAL:
            _REAL[key] = real_data(seed, standardize=setup.factory is None)
        return _REAL[key]
    return synthetic_data(n_train=n_train or setup.n_train, separation=0.6, seed=seed)


def _emit(setup: Setup, record: dict[str, object]) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": setup.quick, **record}
    setup.out.parent.mkdir(parents=True, exist_ok=True)
    with setup.out.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def exp_a(setup: Setup) -> None:
    """FL (FedAvg, 20 clients, Dirichlet 0.5) vs centralised training on the same data."""
    fl_curves, central_curves = [], []
    for seed in range(setup.seeds):
        data = _data(setup, seed)
        central_curves.append(run_centralised(data, setup.rounds, seed=seed, trainer_factory=setup.factory))
        fl_curves.append(run_fl(data, FlConfig(rounds=setup.rounds, seed=seed), setup.factory).accuracy)
    fl = np.mean(fl_curves, axis=0)
    central = np.mean(central_curves, axis=0)
    central_best = float(central.max())
    reached = [r + 1 for r, a in enumerate(fl) if a >= 0.95 * central_best]
    marks = sorted({1, 5, 10, 15, 20, 25, 30, setup.rounds} & set(range(1, setup.rounds + 1)))
    print(f"\n(a) FL vs centralised: 20 clients, Dirichlet alpha=0.5, {setup.seeds} seed(s)")
    print("round/epoch  " + "".join(f"{m:>7}" for m in marks))
    print("FedAvg       " + "".join(f"{fl[m - 1]:7.3f}" for m in marks))
    print("centralised  " + "".join(f"{central[m - 1]:7.3f}" for m in marks))
    first = reached[0] if reached else None
    print(
        f"centralised best {central_best:.3f}; FedAvg final {_final(fl):.3f} = {_final(fl) / central_best:.1%}"
        f" of it; >= 95% first at round {first}"
    )
    _emit(
        setup,
        {
            "experiment": "a",
            "rounds": setup.rounds,
            "seeds": setup.seeds,
            "fedavg": [round(float(a), 4) for a in fl],
            "centralised": [round(float(a), 4) for a in central],
            "centralised_best": central_best,
            "fedavg_final": _final(fl),
            "first_round_95pct": first,
        },
    )


def exp_b(setup: Setup) -> None:
    """Byzantine clients (20%, 30%) x attacks x aggregators: accuracy loss vs clean FedAvg."""
    acc: dict[tuple[str, float, str], list[float]] = {}
    for seed in range(setup.seeds):
        data = _data(setup, seed)
        base = FlConfig(rounds=setup.rounds, seed=seed)
        for aggname in AGGREGATORS:
            # clean runs: the robust server still assumes f = 20% of the clients
            cfg = replace(base, aggregator=aggname, assumed_f=4)
            acc.setdefault(("none", 0.0, aggname), []).append(_final(run_fl(data, cfg, setup.factory).accuracy))
            for frac in (0.2, 0.3):
                for attack in ATTACKS:
                    cfg = replace(base, aggregator=aggname, attack=attack, byzantine_frac=frac)
                    key = (attack, frac, aggname)
                    acc.setdefault(key, []).append(_final(run_fl(data, cfg, setup.factory).accuracy))
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    clean = mean[("none", 0.0, "fedavg")]
    print(f"\n(b) Byzantine robustness: accuracy (loss vs clean FedAvg {clean:.3f}, pp), {setup.seeds} seed(s)")
    width = 22
    print(f"{'attack':<18}" + "".join(f"{a:>{width}}" for a in AGGREGATORS))
    rows = [("none", 0.0)] + [(a, f) for f in (0.2, 0.3) for a in ATTACKS]
    for attack, frac in rows:
        label = "clean" if attack == "none" else f"{attack} {int(frac * 100)}%"
        cells = []
        for aggname in AGGREGATORS:
            a = mean[(attack, frac, aggname)]
            cells.append(f"{a:.3f} ({100 * (clean - a):+5.1f})")
        print(f"{label:<18}" + "".join(f"{c:>{width}}" for c in cells))
    worst: dict[str, dict[str, float]] = {}
    for frac, target in ((0.2, 5.0), (0.3, 10.0)):
        line = []
        for aggname in AGGREGATORS:
            loss = max(100 * (clean - mean[(a, frac, aggname)]) for a in ATTACKS)
            worst.setdefault(aggname, {})[str(frac)] = round(loss, 2)
            line.append(f"{loss:5.1f}{'' if loss <= target else '!'}")
        print(
            f"worst loss {int(frac * 100)}% (target <= {target:g} pp)".ljust(18)
            + "".join(f"{c:>{width}}" for c in line)
        )
    _emit(
        setup,
        {
            "experiment": "b",
            "rounds": setup.rounds,
            "seeds": setup.seeds,
            "clean_fedavg": clean,
            "accuracy": {f"{a}|{f}|{g}": round(v, 4) for (a, f, g), v in mean.items()},
            "worst_loss_pp": worst,
        },
    )


def exp_c(setup: Setup) -> None:
    """Central DP (user level, add/remove one client) at epsilon 1, 3, 8 over the campaign's rounds."""
    delta = 1e-5
    epsilons = (1.0, 3.0, 8.0, math.inf)
    populations = ((20, setup.n_train), (200, 6000 if setup.quick else 20000))
    results: list[dict[str, object]] = []
    print(f"\n(c) central DP, delta={delta:g}, clip C=1.0, {setup.rounds} rounds, {setup.seeds} seed(s)")
    print(f"{'clients':>8}{'target eps':>11}{'sigma':>8}{'RDP eps':>9}{'exact eps':>10}{'accuracy':>10}")
    for n_clients, n_train in populations:
        ref = []
        for seed in range(setup.seeds):
            data = _data(setup, seed, n_train)
            ref.append(
                _final(
                    run_fl(data, FlConfig(n_clients=n_clients, rounds=setup.rounds, seed=seed), setup.factory).accuracy
                )
            )
        print(f"{n_clients:>8}{'no DP':>11}{'-':>8}{'-':>9}{'-':>10}{np.mean(ref):>10.3f}")
        results.append({"clients": n_clients, "epsilon": None, "accuracy": float(np.mean(ref))})
        for eps in epsilons:
            accs, sigma, got = [], 0.0, math.inf
            for seed in range(setup.seeds):
                data = _data(setup, seed, n_train)
                cfg = FlConfig(n_clients=n_clients, rounds=setup.rounds, seed=seed, dp_epsilon=eps, clip_norm=1.0)
                run = run_fl(data, cfg, setup.factory)
                accs.append(_final(run.accuracy))
                sigma, got = run.noise_multiplier, run.epsilon
            exact = gaussian_epsilon_exact(sigma, setup.rounds, delta) if sigma > 0 else math.inf
            label = "clip only" if math.isinf(eps) else f"{eps:g}"
            print(f"{n_clients:>8}{label:>11}{sigma:>8.2f}{got:>9.2f}{exact:>10.2f}{np.mean(accs):>10.3f}")
            results.append(
                {
                    "clients": n_clients,
                    "epsilon": None if math.isinf(eps) else eps,
                    "sigma": sigma,
                    "rdp_epsilon": None if math.isinf(got) else got,
                    "exact_epsilon": None if math.isinf(exact) else exact,
                    "accuracy": float(np.mean(accs)),
                }
            )
    _emit(setup, {"experiment": "c", "rounds": setup.rounds, "seeds": setup.seeds, "delta": delta, "rows": results})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fl_experiments", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds/samples, one seed: under a minute")
    p.add_argument("--only", default="abc", help="which experiments, e.g. 'b' or 'ac' (default abc)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--data", choices=("synthetic", "real"), default="synthetic")
    p.add_argument("--tflite", type=Path, default=None, help="train models.tflite_model.TfliteModel(PATH) if present")
    p.add_argument("--out", type=Path, default=Path("build/fl_experiments.jsonl"))
    args = p.parse_args(argv)
    factory = None
    if args.tflite is not None:
        factory = load_tflite_trainer(args.tflite)
        if factory is None:
            print(f"{args.tflite}: no such file or no models.tflite_model.TfliteModel; using the numpy MLP")
    setup = Setup(
        rounds=args.rounds or (20 if args.quick else 30),
        seeds=args.seeds or (1 if args.quick else 3),
        n_train=4000 if args.quick else 6000,
        quick=args.quick,
        data=args.data,
        factory=factory,
        out=args.out,
    )
    print(json.dumps({k: str(v) for k, v in asdict(setup).items() if k != "factory"}))
    t0 = time.perf_counter()
    for name, fn in (("a", exp_a), ("b", exp_b), ("c", exp_c)):
        if name in args.only:
            fn(setup)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s; results appended to {setup.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
