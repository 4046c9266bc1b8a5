"""Attestation benchmark: attestations built + signed per second and verified per second, next
to pyca/cryptography's raw signature operations on the same bytes in the same run.

* build + sign (Ed25519): ``AttestationBuilder.build`` of a driving event with position and
  model version (schema check, deterministic CBOR, COSE_Sign1, hash chain) vs raw
  ``Ed25519PrivateKey.sign`` of the very Sig_structure bytes such an attestation signs;
* verify (Ed25519): ``AttestationReceiver.accept`` (strict COSE + CBOR decoding, schema,
  replay and chain checks, did:key resolution from its cache, signature) vs raw
  ``Ed25519PublicKey.verify`` of the same signatures over the same bytes;
* verify (P-256, ES256): the same with a P-256 device key vs raw ECDSA-SHA256 verify.

Sides are measured in alternating rounds (median over rounds) so drift hits both alike.
The goal: ours >= 70 % of the raw rate for Ed25519 build+sign and verify.

    python -m tools.bench.attest_sign [--quick]          # Ed25519 build + sign
    python -m tools.bench.attest_verify [--quick]        # Ed25519 verify
    python -m tools.bench.attest_verify_p256 [--quick]   # P-256 verify
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ledger_lite import cose
from ledger_lite.attestation import AttestationBuilder, AttestationReceiver, Position, TimeSource
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey

T0 = 1_800_000_000.0
MODEL = "dbm-1.2.0"


def bodies(n: int = 16) -> list[tuple[dict[str, Any], Position]]:
    """Varied, realistic driving events and positions (so no encoding is cached by accident)."""
    out = []
    for i in range(n):
        body = {
            "event": ("harsh_brake", "harsh_accel", "harsh_corner", "lane_change")[i % 4],
            "severity": round(0.3 + 0.04 * i, 3),
            "duration": round(0.8 + 0.1 * i, 3),
            "speed": round(8.0 + 1.37 * i, 2),
            "accel_long": round(-6.5 + 0.41 * i, 2),
            "accel_lat": round(0.2 + 0.13 * i, 2),
            "confidence": round(0.9 - 0.01 * i, 3),
        }
        out.append((body, Position(52.2190651 + i * 1e-5, 21.0108517 - i * 1e-5, 112.5 + i, 3.2)))
    return out


def make_chain(key: SigningKey, n: int) -> list[bytes]:
    b = AttestationBuilder(key, did_key(key.public))
    cases = bodies()
    return [
        b.build(
            "driving_event",
            cases[i % len(cases)][0],
            time=T0 + 0.1 * i,
            time_source=TimeSource.GNSS,
            position=cases[i % len(cases)][1],
            model=MODEL,
        )
        for i in range(n)
    ]


def rate(fn: Callable[[int], None], n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def compare(ours: Callable[[int], None], raw: Callable[[int], None], n: int, rounds: int) -> tuple[float, float]:
    """Median ops/s of each side over alternating rounds (after one warm-up round each)."""
    ours(min(n, 200))
    raw(min(n, 200))
    a, b = [], []
    for _ in range(rounds):
        a.append(rate(ours, n))
        b.append(rate(raw, n))
    return statistics.median(a), statistics.median(b)


def bench_build(n: int, rounds: int) -> tuple[float, float, int]:
    key = SigningKey.generate("Ed25519")
    raw_key = ed25519.Ed25519PrivateKey.from_private_bytes(key.private_bytes())
    cases = bodies()
    samples = make_chain(key, len(cases))
    tbs = [cose.decode_sign1(d).to_be_signed() for d in samples]
    state = {"b": AttestationBuilder(key, did_key(key.public)), "t": T0}

    def ours(count: int) -> None:
        b = state["b"]
        assert isinstance(b, AttestationBuilder)
        t = float(state["t"])  # type: ignore[arg-type]
        build = b.build
        for i in range(count):
            body, pos = cases[i & 15]
            build("driving_event", body, time=t, time_source=TimeSource.GNSS, position=pos, model=MODEL)
            t += 0.1
        state["t"] = t

    def raw(count: int) -> None:
        sign = raw_key.sign
        for i in range(count):
            sign(tbs[i & 15])

    value, baseline = compare(ours, raw, n, rounds)
    return value, baseline, len(samples[0])


def bench_verify(crv: str, n: int, rounds: int) -> tuple[float, float, int]:
    key = SigningKey.generate(crv)
    chain = make_chain(key, n)
    msgs = [cose.decode_sign1(d) for d in chain]
    pairs = [(m.signature, m.to_be_signed()) for m in msgs[:64]]
    if crv == "Ed25519":
        pub = ed25519.Ed25519PublicKey.from_public_bytes(key.public.raw())

        def raw(count: int) -> None:
            verify = pub.verify
            for i in range(count):
                sig, data = pairs[i & 63]
                verify(sig, data)
    else:
        ec_pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public.raw(compressed=False))
        # the raw baseline gets DER signatures ready-made; we convert COSE's r||s ourselves
        der = [
            (encode_dss_signature(int.from_bytes(s[:32], "big"), int.from_bytes(s[32:], "big")), d) for s, d in pairs
        ]
        algorithm = ec.ECDSA(hashes.SHA256())

        def raw(count: int) -> None:
            verify = ec_pub.verify
            for i in range(count):
                sig, data = der[i & 63]
                verify(sig, data, algorithm)

    def ours(count: int) -> None:
        receiver = AttestationReceiver(skew=60.0)
        accept = receiver.accept
        now = T0 + 0.1 * n
        for data in chain[:count]:
            accept(data, now=now)

    value, baseline = compare(ours, raw, n, rounds)
    return value, baseline, len(chain[0])


FIGURES: dict[str, tuple[str, str]] = {
    "attestation_build_sign_ed25519": ("build+sign", "raw Ed25519 sign"),
    "attestation_verify_ed25519": ("verify", "raw Ed25519 verify"),
    "attestation_verify_p256": ("verify", "raw P-256 ECDSA verify"),
}


def main(figure: str, argv: list[str] | None = None) -> None:
    """Measure one figure and end with its JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 short rounds (a few seconds)")
    ap.add_argument("--rounds", type=int, help="rounds per side (default 9, quick 5)")
    ap.add_argument("-n", type=int, help="operations per round (default 4000, quick 1500)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 9)
    n = args.n or (1500 if args.quick else 4000)
    if figure == "attestation_build_sign_ed25519":
        value, baseline, size = bench_build(n, rounds)
    elif figure == "attestation_verify_ed25519":
        value, baseline, size = bench_verify("Ed25519", n, rounds)
    else:
        value, baseline, size = bench_verify("P-256", max(n // 2, 200), rounds)
    what, raw_name = FIGURES[figure]
    print(
        f"{figure}: ours {value:,.0f}/s ({1e6 / value:.1f} us), {raw_name} {baseline:,.0f}/s "
        f"({1e6 / baseline:.1f} us): {100 * value / baseline:.0f} % of raw ({what}, {size}-byte attestation)"
    )
    print(
        json.dumps(
            {
                "figure": figure,
                "unit": "attestations/s",
                "value": round(value),
                "baseline": round(baseline),
                "ratio": round(value / baseline, 3),
                "bytes": size,
                "rounds": rounds,
                "quick": args.quick,
            }
        )
    )
