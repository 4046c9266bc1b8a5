"""Ed25519 attestations built + signed per second vs raw Ed25519 sign (see tools/bench/_attest.py).

python -m tools.bench.attest_sign [--quick]
"""

from tools.bench._attest import main

if __name__ == "__main__":
    main("attestation_build_sign_ed25519")
