"""P-256 (ES256) attestations verified per second vs raw ECDSA verify (see tools/bench/_attest.py).

python -m tools.bench.attest_verify_p256 [--quick]
"""

from tools.bench._attest import main

if __name__ == "__main__":
    main("attestation_verify_p256")
