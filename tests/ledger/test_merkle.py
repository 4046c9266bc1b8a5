"""RFC 6962 Merkle trees: known vectors, an independent reference of the RFC's recursive definitions, and
properties over random trees (every proof verifies; every tampering is refused with ProofError)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_lite import cbor
from ledger_lite.errors import CborError, LedgerError, MalformedError, ProofError, VerificationError
from ledger_lite.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

# --- Known vectors -------------------------------------------------------------------------------
# Source: transparency-dev/merkle, proof/verify_test.go (the same vectors as Google's
# certificate-transparency and trillian tests). Its inclusion vectors number leaves from 1; they are
# converted to 0-based indices here.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
CT_ROOTS = [  # MTH of the first 1..8 leaves
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
CT_EMPTY = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
CT_SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _hx(*hashes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hashes]


CT_INCLUSION = [  # (0-based leaf index, tree size, audit path)
    (0, 1, []),
    (
        0,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _hx(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _hx(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _hx(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]


# --- An independent reference: RFC 6962 §2.1's recursive definitions, transcribed literally ----------
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


def ref_directions(m: int, n: int) -> list[bool]:
    """Left/right turns from the root to leaf m of a tree of n leaves (what an audit path encodes)."""
    turns: list[bool] = []
    while n > 1:
        k = _k(n)
        turns.append(m >= k)
        m, n = (m - k, n - k) if m >= k else (m, k)
    return turns


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    h = bytearray(out[i])
    h[bit // 8] ^= 1 << (bit % 8)
    out[i] = bytes(h)
    return out


def _leaves(n: int, tag: bytes = b"") -> list[bytes]:
    return [tag + i.to_bytes(4, "big") for i in range(n)]


# --- Vectors ----------------------------------------------------------------------------------------
def test_errors_sit_in_the_tree() -> None:
    assert issubclass(ProofError, VerificationError) and issubclass(ProofError, LedgerError)
    assert issubclass(CborError, MalformedError)


def test_ct_roots_for_every_size() -> None:
    assert root([]) == EMPTY_ROOT == CT_EMPTY
    for n in range(1, 9):
        assert root(CT_LEAVES[:n]) == CT_ROOTS[n - 1], n
        assert ref_mth(CT_LEAVES[:n]) == CT_ROOTS[n - 1], n
    assert leaf_hash(b"") == CT_ROOTS[0]
    assert node_hash(CT_ROOTS[0], leaf_hash(b"\x00")) == CT_ROOTS[1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_ct_inclusion_vectors(index: int, size: int, path: list[bytes]) -> None:
    leaves = CT_LEAVES[:size]
    assert inclusion_proof(leaves, index) == path
    verify_inclusion(leaves[index], index, size, path, CT_ROOTS[size - 1])
    # the same corruptions as transparency-dev's corruptInclusionProof (wrong index/size/leaf/root, garbage)
    r, leaf = CT_ROOTS[size - 1], leaves[index]
    probes: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (leaf, index - 1, size, path, r),
        (leaf, index + 1, size, path, r),
        (leaf, index ^ 2, size, path, r),
        (leaf, index, size * 2, path, r),
        (leaf, index, size // 2, path, r),
        (b"WrongLeaf", index, size, path, r),
        (leaf, index, size, path, CT_EMPTY),
        (leaf, index, size, path, CT_SOME_HASH),
        (leaf, index, size, [*path, b""], r),
        (leaf, index, size, [*path, r], r),
        (leaf, index, size, [b"", *path], r),
        (leaf, index, size, [r, *path], r),
    ]
    probes += [(leaf, index, size, _flip(path, i, 3), r) for i in range(len(path))]
    if path:
        probes.append((leaf, index, size, path[:-1], r))
    if len(path) > 1:
        probes.append((leaf, index, size, [path[0], CT_SOME_HASH, *path[1:]], r))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_inclusion(*probe)


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_ct_consistency_vectors(old: int, new: int, proof: list[bytes]) -> None:
    assert consistency_proof(CT_LEAVES[:new], old) == proof
    r1, r2 = CT_ROOTS[old - 1], CT_ROOTS[new - 1]
    verify_consistency(old, new, r1, r2, proof)
    if not proof:
        return
    # transparency-dev's corruptConsistencyProof
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    probes += [(old, new, r1, r2, _flip(proof, i, 4)) for i in range(len(proof))]
    for probe in probes:
        with pytest.raises(ProofError):
            verify_consistency(*probe)


def test_inclusion_edge_cases() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(b"data", 0, 1, [], h)  # a one-leaf tree: the root is the leaf hash
    for index, size in ((0, 0), (1, 0), (1, 1), (2, 1), (-1, 4)):
        with pytest.raises(ProofError, match="out of range"):
            verify_inclusion(b"data", index, size, [], h)
    with pytest.raises(ProofError, match="root is 0 bytes"):
        verify_inclusion(b"data", 0, 1, [], b"")
    with pytest.raises(ProofError, match="needs 3"):
        verify_inclusion(CT_LEAVES[0], 0, 8, CT_INCLUSION[1][2][:2], CT_ROOTS[7])
    with pytest.raises(ProofError, match=r"proof\[1\] is 31 bytes"):
        verify_inclusion(CT_LEAVES[0], 0, 8, [CT_INCLUSION[1][2][0], b"x" * 31, CT_ROOTS[0]], CT_ROOTS[7])
    with pytest.raises(ProofError, match="leads to root"):
        verify_inclusion(b"other", 0, 1, [], h)
    with pytest.raises(IndexError):
        inclusion_proof(CT_LEAVES, 8)
    with pytest.raises(IndexError):
        inclusion_proof([], 0)


def test_consistency_edge_cases() -> None:
    r1, r8 = CT_ROOTS[0], CT_ROOTS[7]
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 8, EMPTY_ROOT, r8, [])
    verify_consistency(8, 8, r8, r8, [])
    with pytest.raises(ProofError, match="empty-tree hash"):  # stricter than RFC 9162: old root checked
        verify_consistency(0, 8, r1, r8, [])
    with pytest.raises(ProofError, match="different roots"):
        verify_consistency(8, 8, r1, r8, [])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(8, 8, r8, r8, [r8])
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(0, 1, EMPTY_ROOT, r1, [CT_EMPTY])
    with pytest.raises(ProofError, match="not 0 <= old <= new"):
        verify_consistency(2, 1, CT_ROOTS[1], r1, [])
    with pytest.raises(ProofError, match="needs 1"):
        verify_consistency(1, 2, r1, CT_ROOTS[1], [])
    with pytest.raises(ProofError, match="new root is 9 bytes"):
        verify_consistency(1, 8, r1, b"WrongRoot", CT_CONSISTENCY[1][2])
    with pytest.raises(ValueError):
        consistency_proof(CT_LEAVES, 9)
    assert consistency_proof(CT_LEAVES, 0) == consistency_proof(CT_LEAVES, 8) == []


# --- Against the reference ------------------------------------------------------------------------
def test_every_proof_of_small_trees_matches_the_rfc_definitions() -> None:
    leaves = _leaves(40)
    tree = MerkleTree(leaves)
    for n in range(41):
        d = leaves[:n]
        assert tree.root(n) == ref_mth(d)
        for m in range(n):
            assert tree.inclusion_proof(m, n) == ref_path(m, d), (m, n)
        for m in range(n + 1):
            assert tree.consistency_proof(m, n) == ref_proof(m, d), (m, n)


# --- Properties over random trees -----------------------------------------------------------------
_FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(n=st.integers(0, 300), tag=st.binary(max_size=8), bit=st.integers(0, 255))
def test_every_inclusion_proof_verifies_and_tampering_fails(n: int, tag: bytes, bit: int) -> None:
    leaves = _leaves(n, tag)
    tree = MerkleTree(leaves)
    r = tree.root()
    assert r == root(leaves)
    if n:
        other_root = tree.root(n - 1)
        assert other_root != r
    for i, leaf in enumerate(leaves):
        path = tree.inclusion_proof(i)
        verify_inclusion(leaf, i, n, path, r)
        tree.prove(i).verify(leaf, r)
        for probe in (
            (leaf + b"!", i, n, path, r),  # another leaf
            (leaves[(i + 1) % n], i, n, path, r) if n > 1 else (b"x", i, n, path, r),
            (leaf, i, n, path, other_root),  # another root
            (leaf, i, n, path, leaf_hash(leaf)) if n > 1 else (leaf, i, n, path, EMPTY_ROOT),
        ):
            with pytest.raises(ProofError):
                verify_inclusion(*probe)
        for j in {i - 1, i + 1, i ^ 1, i ^ 2, n - 1 - i} - {i}:  # another index: always refused
            with pytest.raises(ProofError):
                verify_inclusion(leaf, j, n, path, r)
        for s in {n - 1, n + 1, 2 * n, n // 2, i + 1} - {n}:
            # Another size is refused unless leaf i sits at the same place in both trees: then the audit
            # path is the same and verification (rightly) cannot tell. The signed header binds the size.
            if ref_directions(i, s) == ref_directions(i, n) and i < s:
                verify_inclusion(leaf, i, s, path, r)
            else:
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, i, s, path, r)
        for k in range(len(path)):  # a single-bit change anywhere in the path
            with pytest.raises(ProofError, match="leads to root"):
                verify_inclusion(leaf, i, n, _flip(path, k, (bit + 37 * i + 11 * k) % 256), r)
        if path:
            with pytest.raises(ProofError, match="hashes"):
                verify_inclusion(leaf, i, n, path[:-1], r)
            with pytest.raises(ProofError, match="hashes"):
                verify_inclusion(leaf, i, n, [*path, path[0]], r)


@_FAST
@given(n=st.integers(0, 70), tag=st.binary(max_size=8), bit=st.integers(0, 255))
def test_consistency_between_every_pair_of_sizes(n: int, tag: bytes, bit: int) -> None:
    tree = MerkleTree(_leaves(n, tag))
    roots = [tree.root(s) for s in range(n + 1)]
    for new in range(n + 1):
        for old in range(new + 1):
            proof = tree.consistency_proof(old, new)
            verify_consistency(old, new, roots[old], roots[new], proof)
            if old in (0, new):
                continue
            with pytest.raises(ProofError):
                verify_consistency(old, new, roots[old - 1], roots[new], proof)
            with pytest.raises(ProofError):
                verify_consistency(old, new, roots[old], roots[new - 1], proof)
            with pytest.raises(ProofError):
                verify_consistency(old, new, roots[new], roots[old], proof)
            for k in range(len(proof)):
                with pytest.raises(ProofError):
                    verify_consistency(old, new, roots[old], roots[new], _flip(proof, k, (bit + 7 * k + old) % 256))
            with pytest.raises(ProofError):
                verify_consistency(old, new, roots[old], roots[new], proof[:-1])
            with pytest.raises(ProofError):
                verify_consistency(old, new, roots[old], roots[new], [*proof, roots[new]])
            with pytest.raises(ProofError):
                verify_consistency(old, new, roots[old], roots[new], [roots[old], *proof])


@_FAST
@given(st.data())
def test_consistency_in_large_random_trees(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 300))
    tree = MerkleTree(_leaves(n))
    for _ in range(20):
        new = data.draw(st.integers(1, n))
        old = data.draw(st.integers(1, new))
        proof = tree.consistency_proof(old, new)
        verify_consistency(old, new, tree.root(old), tree.root(new), proof)
        if 0 < old < new:
            with pytest.raises(ProofError):  # a log that rewrote leaf 0 is not consistent with its past
                forked = MerkleTree([b"forked", *_leaves(n)[1:]])
                verify_consistency(old, new, tree.root(old), forked.root(new), forked.consistency_proof(old, new))


@_FAST
@given(st.lists(st.binary(max_size=40), max_size=80))
def test_incremental_tree_agrees_with_root(leaves: list[bytes]) -> None:
    tree = MerkleTree()
    assert tree.root() == EMPTY_ROOT and len(tree) == 0
    for i, leaf in enumerate(leaves):
        assert tree.append(leaf) == i
        assert tree.root() == ref_mth(leaves[: i + 1])
        assert tree.leaf_hash(i) == leaf_hash(leaf)
    assert tree.size == len(leaves)
    assert [tree.root(s) for s in range(len(leaves) + 1)] == [root(leaves[:s]) for s in range(len(leaves) + 1)]
    by_hash = MerkleTree()
    for leaf in leaves:
        by_hash.append_hash(leaf_hash(leaf))
    assert by_hash.root() == tree.root()


def test_tree_rejects_bad_requests() -> None:
    tree = MerkleTree(_leaves(5))
    with pytest.raises(ValueError):
        tree.root(6)
    with pytest.raises(ValueError):
        tree.append_hash(b"short")
    with pytest.raises(IndexError):
        tree.inclusion_proof(4, 4)
    with pytest.raises(ValueError):
        tree.consistency_proof(3, 2)
    assert root_from_inclusion(tree.leaf_hash(2), 2, 5, tree.inclusion_proof(2)) == tree.root()


# --- CBOR receipts --------------------------------------------------------------------------------
@_FAST
@given(n=st.integers(1, 300), data=st.data())
def test_inclusion_proof_cbor_round_trip(n: int, data: st.DataObject) -> None:
    tree = MerkleTree(_leaves(n))
    i = data.draw(st.integers(0, n - 1))
    p = tree.prove(i)
    encoded = p.to_cbor()
    assert encoded == cbor.dumps([i, n, list(p.path)])
    back = InclusionProof.from_cbor(encoded)
    assert back == p and back.to_cbor() == encoded
    back.verify(_leaves(n)[i], tree.root())


def test_inclusion_proof_cbor_known_encoding() -> None:
    p = InclusionProof(2, 3, [CT_ROOTS[1]])  # type: ignore[arg-type]  # a list is kept as a tuple
    assert p.path == (CT_ROOTS[1],)
    assert p.to_cbor() == bytes.fromhex("830203815820") + CT_ROOTS[1]
    p.verify(CT_LEAVES[2], CT_ROOTS[2])


_GOOD = InclusionProof(5, 8, tuple(CT_INCLUSION[2][2]))
_PATH = list(_GOOD.path)


@pytest.mark.parametrize(
    "encoded",
    [
        b"",
        b"\xff",
        cbor.dumps({"i": 5, "n": 8, "p": _PATH}),
        cbor.dumps([5, 8]),
        cbor.dumps([5, 8, _PATH, 0]),
        cbor.dumps([True, 8, _PATH]),
        cbor.dumps([5, False, _PATH]),
        cbor.dumps([-1, 8, _PATH]),
        cbor.dumps([8, 8, _PATH]),
        cbor.dumps([5, 2**64 - 1 + 0, _PATH]),  # a path of 3 cannot reach leaf 5 of a 2**64-1 tree
        cbor.dumps([5.0, 8, _PATH]),
        cbor.dumps([5, 8, b"".join(_PATH)]),
        cbor.dumps([5, 8, [*_PATH[:2], _PATH[2][:31]]]),
        cbor.dumps([5, 8, [*_PATH[:2], _PATH[2].hex()]]),
        cbor.dumps([5, 8, _PATH[:2]]),
        cbor.dumps([5, 8, [*_PATH, _PATH[0]]]),
        cbor.dumps(cbor.Tag(55799, [5, 8, _PATH])),
        _GOOD.to_cbor() + b"\x00",  # trailing bytes
        b"\x83\x18\x05" + _GOOD.to_cbor()[2:],  # 5 with a non-shortest head
        b"\x9f" + _GOOD.to_cbor()[1:] + b"\xff",  # indefinite-length array
    ],
)
def test_inclusion_proof_cbor_rejects_malformed(encoded: bytes) -> None:
    with pytest.raises(CborError):
        InclusionProof.from_cbor(encoded)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_inclusion_proof_cbor_garbage_is_malformed_or_canonical(data: bytes) -> None:
    try:
        p = InclusionProof.from_cbor(data)
    except MalformedError:
        return
    assert p.to_cbor() == data
