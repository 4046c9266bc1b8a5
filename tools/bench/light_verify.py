"""Light-client header verification (OBU) vs raw Ed25519 verify of a quorum of signatures.

Ours: ``Header.decode`` + ``CommitCertificate.decode`` of the received bytes and
``LightClient.verify`` of the next header in sequence (chain id, validator-set hash, link, time,
certificate: > 2/3 power of precommit signatures over the block id). Certificates carry exactly a
quorum of signatures (3 of 4, 5 of 7), as a proposer that stops collecting at quorum makes them.
Baseline: pyca/cryptography ``Ed25519PublicKey.verify`` of that many signatures over the very same
precommit sign-bytes, in a loop. Sides alternate per sample (one header, one quorum) so drift hits
both alike; p50/p99 over all samples. Also reported: certificate sizes (quorum and all n signers).

    python -m tools.bench.light_verify [--quick]

Goal: certificate <= 600 bytes at n = 4; header + certificate verify in a few ms on the OBU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from ledger_lite.block import GENESIS_PREV_ID, CommitCertificate, Header
from ledger_lite.consensus import PRECOMMIT, Vote
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from ledger_lite.light import LightBlock, LightClient
from ledger_lite.validators import Validator, ValidatorSet

CHAIN = "cell-bench"
T0_MS = 1_800_000_000_000


@dataclass
class Sample:
    header: bytes
    certificate: bytes
    raw: list[tuple[ed25519.Ed25519PublicKey, bytes, bytes]]  # (key, signature, data) of the quorum


def build(n: int, heights: int) -> tuple[ValidatorSet, list[Sample], int, int]:
    """A chain of ``heights`` headers signed by a quorum of ``n`` validators (ids sorted by DID)."""
    keys = {did_key(k.public): k for k in (SigningKey.generate("Ed25519") for _ in range(n))}
    vset = ValidatorSet(CHAIN, tuple(Validator(d, 1) for d in keys))
    quorum = vset.quorum
    vhash = vset.hash()
    pubs = {d: ed25519.Ed25519PublicKey.from_public_bytes(k.public.raw()) for d, k in keys.items()}
    samples: list[Sample] = []
    prev = GENESIS_PREV_ID
    full_size = 0
    for h in range(1, heights + 1):
        header = Header(
            CHAIN,
            h,
            0,
            T0_MS + 1000 * h,
            prev,
            hashlib.sha256(b"lc%d" % h).digest(),
            hashlib.sha256(b"tx%d" % h).digest(),
            hashlib.sha256(b"app%d" % h).digest(),
            vhash,
            vhash,
            vset.dids[h % n],
        )
        bid = header.block_id()
        sigs, raw = [], []
        for i, did in enumerate(vset.dids):
            data = Vote(PRECOMMIT, h, 0, bid, did).sign_bytes(CHAIN)
            sig = keys[did].sign(data)
            sigs.append((i, sig))
            raw.append((pubs[did], sig, data))
        full_size = len(CommitCertificate(h, 0, bid, tuple(sigs)).encode())
        cert = CommitCertificate(h, 0, bid, tuple(sigs[:quorum]))
        samples.append(Sample(header.encode(), cert.encode(), raw[:quorum]))
        prev = bid
    return vset, samples, len(samples[0].certificate), full_size


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(n: int, heights: int) -> dict[str, Any]:
    vset, samples, cert_size, full_size = build(n, heights)
    now = T0_MS / 1000 + heights + 60
    client = LightClient(vset)
    ours: list[float] = []
    base: list[float] = []
    warm = min(20, heights // 10)
    for k, s in enumerate(samples):
        t = time.perf_counter()
        client.verify(
            LightBlock(Header.decode(s.header), CommitCertificate.decode(s.certificate), vset),
            now=now,
        )
        t1 = time.perf_counter()
        for pub, sig, data in s.raw:
            pub.verify(sig, data)
        t2 = time.perf_counter()
        if k >= warm:
            ours.append(t1 - t)
            base.append(t2 - t1)
    assert client.height == heights
    return {
        "n": n,
        "quorum": vset.quorum,
        "p50": percentile(ours, 0.5) * 1e3,
        "p99": percentile(ours, 0.99) * 1e3,
        "raw_p50": percentile(base, 0.5) * 1e3,
        "raw_p99": percentile(base, 0.99) * 1e3,
        "cert_bytes": cert_size,
        "cert_bytes_all": full_size,
        "header_bytes": len(samples[0].header),
        "samples": len(ours),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 headers per set size (a few seconds)")
    ap.add_argument("--heights", type=int, help="headers per set size (default 3000, quick 300)")
    args = ap.parse_args(argv)
    heights = args.heights or (300 if args.quick else 3000)
    results = {n: measure(n, heights) for n in (4, 7)}
    for r in results.values():
        print(
            f"n={r['n']} (quorum {r['quorum']}): header+certificate verify p50 {r['p50']:.3f} ms, "
            f"p99 {r['p99']:.3f} ms; raw Ed25519 x{r['quorum']} p50 {r['raw_p50']:.3f} ms, "
            f"p99 {r['raw_p99']:.3f} ms; certificate {r['cert_bytes']} bytes ({r['cert_bytes_all']} with all "
            f"{r['n']}), header {r['header_bytes']} bytes"
        )
    r4, r7 = results[4], results[7]
    print(
        json.dumps(
            {
                "figure": "light_header_verify_ed25519",
                "unit": "ms",
                "value": round(r4["p50"], 3),
                "baseline": round(r4["raw_p50"], 3),
                "ratio": round(r4["p50"] / r4["raw_p50"], 3),
                "p99_n4": round(r4["p99"], 3),
                "baseline_p99_n4": round(r4["raw_p99"], 3),
                "p50_n7": round(r7["p50"], 3),
                "p99_n7": round(r7["p99"], 3),
                "baseline_n7": round(r7["raw_p50"], 3),
                "baseline_p99_n7": round(r7["raw_p99"], 3),
                "ratio_n7": round(r7["p50"] / r7["raw_p50"], 3),
                "cert_bytes_n4": r4["cert_bytes"],
                "cert_bytes_n4_all": r4["cert_bytes_all"],
                "cert_bytes_n7": r7["cert_bytes"],
                "cert_bytes_n7_all": r7["cert_bytes_all"],
                "header_bytes": r4["header_bytes"],
                "heights": heights,
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
