"""Merkle hash trees as RFC 6962 §2.1 / RFC 9162 §2.1 (SHA-256), with inclusion and consistency proofs.

    leaf_hash(data) -> bytes                  # SHA-256(0x00 || data)
    node_hash(left, right) -> bytes           # SHA-256(0x01 || left || right)
    root(leaves) -> bytes                     # MTH; the empty tree is SHA-256(b"")
    inclusion_proof(leaves, index) -> list[bytes]
    verify_inclusion(leaf, index, size, proof, root) -> None          # raises ProofError
    root_from_inclusion(leaf_hash, index, size, proof) -> bytes       # for callers holding only the hash
    consistency_proof(leaves, old_size) -> list[bytes]
    verify_consistency(old_size, new_size, old_root, new_root, proof) -> None  # raises ProofError
    MerkleTree                                # incremental: append, root/proofs for any earlier size
    InclusionProof                            # (leaf index, tree size, path) with strict CBOR, an OBU receipt

The tree over ``n`` leaves splits at the largest power of two smaller than ``n`` (RFC 6962 §2.1), so
proofs are byte-for-byte those of Certificate Transparency, trillian and transparency-dev/merkle.
Proof generation follows RFC 6962 §2.1.1 (PATH) and §2.1.2 (SUBPROOF); verification follows
RFC 9162 §2.1.3.2 and §2.1.4.2, preceded by an exact proof-length check so that a proof with a
missing, extra or wrong-length element is refused with a reason, not only by a root mismatch.

Decisions (marked * where they go beyond the RFCs):

* Verification raises ``ProofError`` (a ``VerificationError``) saying why; it never returns a bool.
  Malformed inputs to the verifiers (a hash that is not 32 bytes, a negative size) are also
  ``ProofError``: the verifier's caller is asking "is this to be believed?", and the answer is no.
* *A consistency proof from the empty tree (``old_size == 0``) must be empty and ``old_root``
  must be the empty-tree hash (RFC 9162 leaves the old root unchecked; we check it, so a caller
  cannot mistake a garbage old root for a verified one). Equal sizes need an empty proof and equal
  roots.
* *``InclusionProof.to_cbor()`` is the deterministic CBOR array ``[leaf_index, tree_size, [path...]]``
  and ``from_cbor`` accepts only exactly that: any other shape, a bool for an int, an index outside
  the tree, a hash that is not 32 bytes or a path whose length does not fit (index, size) is a
  ``CborError`` (a ``MalformedError``). The proof does not say which tree head it belongs to: the
  receipt's holder keeps it beside the (signed) header whose root and size it was made against.
* Generation functions raise ``IndexError``/``ValueError`` for impossible requests (a caller bug,
  not a peer's garbage).

Costs: ``MerkleTree`` keeps every complete perfect subtree (about 2n hashes of memory); ``append`` is
amortised O(1) hashes, ``root()`` and each proof O(log n) hashes, for the current or any earlier size.
The module-level ``root``/``inclusion_proof``/``consistency_proof`` build a tree: O(n) hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from . import cbor
from .errors import CborError, ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InclusionProof",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
#: MTH({}) = SHA-256 of the empty string (RFC 6962 §2.1)
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
#: tree sizes are uint64 as in RFC 9162's TransItems, so a path has at most 64 hashes
_MAX_SIZE: Final = 1 << 64
_MAX_PATH: Final = 64

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _split(width: int) -> int:
    """The largest power of two smaller than ``width`` (``width`` >= 2)."""
    return 1 << ((width - 1).bit_length() - 1)


def _inclusion_length(index: int, size: int) -> int:
    """Number of hashes in the audit path of leaf ``index`` in a tree of ``size`` (0 <= index < size).

    ``inner`` levels lie below the point where the leaf's path and the tree's right border part; above
    it the path takes one hash per perfect subtree to the left of the leaf's ancestor on the border."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def _consistency_length(old_size: int, new_size: int) -> int:
    """Number of hashes in the consistency proof from ``old_size`` to ``new_size`` (0 < old < new)."""
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    length = _inclusion_length(old_size - 1, new_size) - shift
    return length if old_size == 1 << shift else length + 1


class MerkleTree:
    """An append-only RFC 6962 tree: a block's transactions or a log of entries.

    ``root()``, ``inclusion_proof()`` and ``consistency_proof()`` take an optional ``size`` and answer
    for the tree of the first ``size`` leaves, so a log can serve proofs against any published head."""

    __slots__ = ("_levels",)

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        #: ``_levels[k][i]`` is the hash of the perfect subtree over leaves [i * 2**k, (i + 1) * 2**k)
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaves)

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    def append(self, data: bytes) -> int:
        """Add a leaf (its data, hashed here); return its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, hashed: bytes) -> int:
        """Add a leaf given its leaf hash (``leaf_hash(data)``); return its index."""
        if len(hashed) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(hashed)}")
        levels = self._levels
        index = len(levels[0])
        row = levels[0]
        row.append(bytes(hashed))
        level = 0
        while len(row) % 2 == 0:  # this row's last node just completed a pair: make their parent
            parent = node_hash(row[-2], row[-1])
            level += 1
            if level == len(levels):
                levels.append([])
            row = levels[level]
            row.append(parent)
        return index

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append each leaf in order."""
        for data in leaves:
            self.append(data)

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._levels[0][index]

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all)."""
        size = self._size(size)
        return self._subtree(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path (RFC 6962 §2.1.1) of leaf ``index`` in the tree of the first ``size`` leaves."""
        size = self._size(size)
        if not 0 <= index < size:
            raise IndexError(f"leaf index {index} is not in a tree of {size} leaves")
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:  # descend from the root; the hashes come out top-down
            mid = lo + _split(hi - lo)
            if index < mid:
                path.append(self._subtree(mid, hi))
                hi = mid
            else:
                path.append(self._subtree(lo, mid))
                lo = mid
        path.reverse()
        return path

    def prove(self, index: int, size: int | None = None) -> InclusionProof:
        """``inclusion_proof`` wrapped as a storable ``InclusionProof``."""
        size = self._size(size)
        return InclusionProof(index, size, tuple(self.inclusion_proof(index, size)))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof (RFC 6962 §2.1.2) that the tree of ``old_size`` leaves is a prefix of ``new_size``'s."""
        new_size = self._size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is not in 0 .. {new_size}")
        if old_size in (0, new_size):
            return []
        path: list[bytes] = []
        lo, hi, whole = 0, new_size, True  # SUBPROOF(m, D[lo:hi], whole), top-down
        while old_size != hi:
            mid = lo + _split(hi - lo)
            if old_size <= mid:
                path.append(self._subtree(mid, hi))
                hi = mid
            else:
                path.append(self._subtree(lo, mid))
                lo, whole = mid, False
        if not whole:
            path.append(self._subtree(lo, hi))
        path.reverse()
        return path

    def _size(self, size: int | None) -> int:
        if size is None:
            return len(self._levels[0])
        if not 0 <= size <= len(self._levels[0]):
            raise ValueError(f"size {size} is not in 0 .. {len(self._levels[0])}")
        return size

    def _subtree(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for 0 <= lo < hi <= size: cached if perfect and aligned, else O(log) hashes."""
        width = hi - lo
        if width & (width - 1) == 0 and lo % width == 0:
            level = width.bit_length() - 1
            return self._levels[level][lo >> level]
        mid = lo + _split(width)
        return node_hash(self._subtree(lo, mid), self._subtree(mid, hi))


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the leaves' data (RFC 6962 §2.1); SHA-256(b"") for no leaves."""
    return MerkleTree(leaves).root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]): the audit path of leaf ``index`` (IndexError if there is none)."""
    return MerkleTree(leaves).inclusion_proof(index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]): shows the first ``old_size`` leaves' tree is a prefix of this one."""
    return MerkleTree(leaves).consistency_proof(old_size)


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def root_from_inclusion(hashed_leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from the leaf hash at ``index`` in a tree of ``size`` leaves.

    RFC 9162 §2.1.3.2. Raises ProofError when no root can be computed (index out of range, wrong path
    length, a hash of the wrong size)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is out of range for a tree of {size} leaves")
    if size >= _MAX_SIZE:
        raise ProofError(f"tree size {size} is out of range (< 2**64)")
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, leaf {index} of a tree of {size} needs {expected}")
    _check_hash(hashed_leaf, "leaf hash")
    fn, sn, r = index, size - 1, hashed_leaf
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:  # the right border: skip the levels with no right sibling
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # cannot happen after the length check; kept as the RFC's own guard
        raise ProofError("inclusion proof is too short for the tree size")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` (its data) is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Returns nothing; raises ProofError saying why not."""
    _check_hash(root, "root")
    computed = root_from_inclusion(leaf_hash(leaf), index, size, proof)
    if computed != root:
        raise ProofError(
            f"inclusion proof for leaf {index} of {size} leads to root {computed.hex()}, expected {root.hex()}"
        )


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree of ``old_size`` leaves with ``old_root`` is a prefix of the tree of ``new_size``
    leaves with ``new_root`` (RFC 9162 §2.1.4.2). Returns nothing; raises ProofError saying why not."""
    if not 0 <= old_size <= new_size < _MAX_SIZE:
        raise ProofError(f"sizes {old_size} -> {new_size} are not 0 <= old <= new < 2**64")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError(f"consistency proof {old_size} -> {new_size} must be empty, has {len(proof)} hashes")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("old root is not the empty-tree hash for old size 0")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"trees of the same size {new_size} have different roots")
        return
    expected = _consistency_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(f"consistency proof {old_size} -> {new_size} has {len(proof)} hashes, needs {expected}")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a perfect subtree of the new one: its root is a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # cannot happen after the length check
            raise ProofError("consistency proof is too long for the tree sizes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:  # cannot happen after the length check
        raise ProofError("consistency proof is too short for the tree sizes")
    if fr != old_root:
        raise ProofError(f"consistency proof leads to old root {fr.hex()}, expected {old_root.hex()}")
    if sr != new_root:
        raise ProofError(f"consistency proof leads to new root {sr.hex()}, expected {new_root.hex()}")


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Leaf ``leaf_index`` of the tree of ``tree_size`` leaves, and its audit path: a storable receipt."""

    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.path, tuple):
            object.__setattr__(self, "path", tuple(self.path))

    def verify(self, leaf: bytes, root: bytes) -> None:
        """``verify_inclusion`` of ``leaf`` (its data) against ``root``; raises ProofError."""
        verify_inclusion(leaf, self.leaf_index, self.tree_size, self.path, root)

    def to_cbor(self) -> bytes:
        """Deterministic CBOR ``[leaf_index, tree_size, [path...]]``."""
        return cbor.dumps([self.leaf_index, self.tree_size, list(self.path)])

    @classmethod
    def from_cbor(cls, data: bytes) -> InclusionProof:
        """Parse ``to_cbor``'s encoding, strictly; CborError (a MalformedError) on anything else."""
        item: Any = cbor.loads(data, max_size=16 + _MAX_PATH * (HASH_SIZE + 2))
        if not isinstance(item, list) or len(item) != 3:
            raise CborError("inclusion proof: expected an array [leaf_index, tree_size, path]")
        index, size, path = item
        for name, value in (("leaf_index", index), ("tree_size", size)):
            if type(value) is not int or not 0 <= value < _MAX_SIZE:
                raise CborError(f"inclusion proof: {name} must be an unsigned integer, got {value!r}")
        if index >= size:
            raise CborError(f"inclusion proof: leaf_index {index} is not below tree_size {size}")
        if not isinstance(path, list):
            raise CborError("inclusion proof: path must be an array")
        for i, h in enumerate(path):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise CborError(f"inclusion proof: path[{i}] must be a {HASH_SIZE}-byte string")
        expected = _inclusion_length(index, size)
        if len(path) != expected:
            raise CborError(
                f"inclusion proof: path has {len(path)} hashes, leaf {index} of a tree of {size} needs {expected}"
            )
        return cls(index, size, tuple(path))
