"""The trust substrate: deterministic CBOR, COSE_Sign1, keys, did:key, CWT credentials,
attestations (and, with the ledger issue, Merkle trees, consensus and the light client).

Pure code: no asyncio, no sockets, no files; time is passed in as ``now``."""
