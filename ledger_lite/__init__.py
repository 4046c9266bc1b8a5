"""The trust substrate (deterministic CBOR, COSE, DIDs, Merkle trees, consensus, light client).

Empty until the trust-layer and ledger issues land; ``agent/`` is its only user."""
