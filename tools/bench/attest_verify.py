"""Ed25519 attestations verified per second vs raw Ed25519 verify (see tools/bench/_attest.py).

python -m tools.bench.attest_verify [--quick]
"""

from tools.bench._attest import main

if __name__ == "__main__":
    main("attestation_verify_ed25519")
