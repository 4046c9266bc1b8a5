"""Secure aggregation by pairwise masks with dropout recovery (a simplified Bonawitz et al. 2017).

The server learns the sum of the surviving clients' updates and nothing about any single one, against an
*honest-but-curious* server (see "Weak spots" in docs/fl.md).

Protocol (one FL round; ``params.session`` binds every seed to the round):

0. Each client ``i`` has an X25519 key pair (``ledger_lite.keys.KeyAgreementPrivateKey``); the server relays
   the public keys of all registered clients (:meth:`SecAggServer.public_keys`).
1. Client ``i`` derives a pairwise seed ``s_ij = HKDF-SHA256(X25519(i, j), salt=session,
   info=pair(min, max))`` with every peer ``j``, quantises its update to fixed point modulo 2**32 and sends
   ``y_i = q(x_i) + PRG(b_i) + sum_{j>i} PRG(s_ij) - sum_{j<i} PRG(s_ij)  (mod 2**32)`` where ``b_i`` is a
   fresh random self-mask seed (optional, ``params.self_mask``). The PRG is ChaCha20 keyed by the seed.
2. The server closes the input phase; the clients that sent ``y_i`` are the survivors ``U``, the rest
   dropped ``D``. The pairwise masks between survivors cancel in the sum; those between a survivor and a
   dropped client dangle.
3. Every survivor, told ``U``, reveals ``s_ij`` for each dropped ``j`` and its own ``b_i``; the server
   removes the dangling masks and the self-masks and decodes the sum.

Dropout recovery here is by **survivors revealing the pairwise seeds they shared with dropped clients**,
not by t-of-n Shamir shares of the dropped clients' keys: simpler, but every survivor must answer step 3
(a client that drops between steps 1 and 3 makes the round fail; Bonawitz et al. tolerate that with
Shamir shares). The self-mask keeps a dropped client's late ``y_j`` private even though its pairwise seeds
were revealed: ``b_j`` is only revealed by ``j`` itself, and only when it is told it survived.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ledger_lite.keys import KeyAgreementKey, KeyAgreementPrivateKey

U32 = npt.NDArray[np.uint32]
FloatArray = npt.NDArray[np.float64]

MODULUS_BITS = 32
_PAIR_INFO = b"autochain/fl/secagg/pair/v1"
_NONCE = b"\x00" * 16  # every seed keys one PRG stream only, so a fixed nonce is safe

__all__ = [
    "SecAggClient",
    "SecAggError",
    "SecAggParams",
    "SecAggResult",
    "SecAggServer",
    "UnmaskResponse",
    "dequantize",
    "prg",
    "quantize",
]


class SecAggError(RuntimeError):
    """A protocol violation or an unrecoverable round (too few survivors, a survivor did not answer)."""


@dataclass(frozen=True)
class SecAggParams:
    """Round parameters, the same for every party.

    Each coordinate is clipped to ``[-clip, clip]`` and encoded as ``round(x * 2**scale_bits)`` modulo
    2**32; the decoded sum is exact (up to the rounding of each term, ``<= n / 2**(scale_bits+1)``) while
    ``n * clip * 2**scale_bits < 2**31`` (checked by :meth:`check_capacity`).
    """

    dim: int
    scale_bits: int = 16
    clip: float = 1.0
    min_survivors: int = 2
    self_mask: bool = True
    session: bytes = b""

    def check_capacity(self, n_clients: int) -> None:
        if n_clients * self.clip * 2.0**self.scale_bits >= 2.0 ** (MODULUS_BITS - 1):
            raise SecAggError(
                f"{n_clients} clients x clip {self.clip} x 2^{self.scale_bits} overflows the 2^32 ring; "
                "lower scale_bits or clip"
            )


def quantize(x: npt.ArrayLike, params: SecAggParams) -> U32:
    """Clip to ``[-clip, clip]``, scale by ``2**scale_bits``, round, and reduce modulo 2**32."""
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (params.dim,):
        raise SecAggError(f"update of shape {a.shape}, expected ({params.dim},)")
    if not np.all(np.isfinite(a)):
        raise SecAggError("update has NaN/inf values")
    q = np.rint(np.clip(a, -params.clip, params.clip) * 2.0**params.scale_bits).astype(np.int64)
    return q.astype(np.uint32)  # two's complement wrap: -1 -> 2**32 - 1


def dequantize(total: U32, params: SecAggParams) -> FloatArray:
    """Read a ring element as a signed 32-bit integer and undo the scaling."""
    out: FloatArray = total.astype(np.uint32).view(np.int32).astype(np.float64) / 2.0**params.scale_bits
    return out


def prg(seed: bytes, dim: int) -> U32:
    """``dim`` uniform 32-bit words from ChaCha20 keyed by the 32-byte ``seed``."""
    if len(seed) != 32:
        raise SecAggError("PRG seeds are 32 bytes")
    enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\x00" * (4 * dim)), dtype="<u4").astype(np.uint32)


def _pair_seed(shared_secret: bytes, i: int, j: int, session: bytes) -> bytes:
    lo, hi = min(i, j), max(i, j)
    info = _PAIR_INFO + lo.to_bytes(8, "big", signed=True) + hi.to_bytes(8, "big", signed=True)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=session or None, info=info).derive(shared_secret)


@dataclass(frozen=True)
class UnmaskResponse:
    """Step 3 message of client ``client_id``: its seeds with the dropped peers, and its self-mask seed."""

    client_id: int
    pair_seeds: dict[int, bytes] = field(default_factory=dict)
    self_seed: bytes | None = None


@dataclass(frozen=True)
class SecAggResult:
    sum: FloatArray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class SecAggClient:
    """One OBU's side of a round. Create a fresh client (or call :meth:`masked_input` again) per round."""

    def __init__(self, client_id: int, params: SecAggParams, key: KeyAgreementPrivateKey | None = None) -> None:
        self.client_id = client_id
        self.params = params
        self._key = key if key is not None else KeyAgreementPrivateKey.generate()
        self._seeds: dict[int, bytes] = {}
        self._self_seed: bytes | None = None
        self._answered: frozenset[int] | None = None

    @property
    def public_key(self) -> KeyAgreementKey:
        return self._key.public

    def masked_input(self, update: npt.ArrayLike, peers: Mapping[int, KeyAgreementKey]) -> U32:
        """Step 1: the masked, quantised update. ``peers`` are all registered clients (self is skipped)."""
        q = quantize(update, self.params)
        self._seeds = {
            j: _pair_seed(self._key.exchange(pk), self.client_id, j, self.params.session)
            for j, pk in peers.items()
            if j != self.client_id
        }
        self._answered = None
        y = q.copy()
        if self.params.self_mask:
            self._self_seed = os.urandom(32)
            y += prg(self._self_seed, self.params.dim)
        for j, seed in self._seeds.items():
            mask = prg(seed, self.params.dim)
            if j > self.client_id:
                y += mask
            else:
                y -= mask
        return y

    def unmask_response(self, survivors: Collection[int]) -> UnmaskResponse:
        """Step 3: reveal the seeds shared with the peers not in ``survivors``, and the self-mask seed.

        Refuses when this client is not among the survivors (it must never reveal both ``b_i`` and its
        pairwise seeds), when too few survived, or when asked twice with a different survivor set.
        """
        surv = frozenset(survivors)
        if self.client_id not in surv:
            raise SecAggError(f"client {self.client_id} was told it dropped; it reveals nothing")
        if len(surv) < self.params.min_survivors:
            raise SecAggError(f"only {len(surv)} survivors (< {self.params.min_survivors}); refusing to unmask")
        if self._answered is not None and self._answered != surv:
            raise SecAggError("asked to unmask twice with different survivor sets")
        unknown = surv - set(self._seeds) - {self.client_id}
        if unknown:
            raise SecAggError(f"survivors {sorted(unknown)} were not peers in this round")
        self._answered = surv
        dropped = {j: s for j, s in self._seeds.items() if j not in surv}
        return UnmaskResponse(self.client_id, dropped, self._self_seed)


class SecAggServer:
    """The RSU's side: relays keys, collects masked inputs, and unmasks only their sum."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self._keys: dict[int, KeyAgreementKey] = {}
        self._inputs: dict[int, U32] = {}
        self._closed: tuple[int, ...] | None = None

    def register(self, client_id: int, public_key: KeyAgreementKey) -> None:
        if self._inputs:
            raise SecAggError("registration is closed once inputs arrive")
        self._keys[client_id] = public_key

    def public_keys(self) -> dict[int, KeyAgreementKey]:
        self.params.check_capacity(len(self._keys))
        return dict(self._keys)

    def submit(self, client_id: int, masked: U32) -> None:
        if self._closed is not None:
            raise SecAggError(f"input from {client_id} after the input phase closed")
        if client_id not in self._keys:
            raise SecAggError(f"input from unregistered client {client_id}")
        a = np.asarray(masked)
        if a.shape != (self.params.dim,) or a.dtype != np.uint32:
            raise SecAggError(f"masked input of {a.shape} {a.dtype}, expected ({self.params.dim},) uint32")
        self._inputs[client_id] = a

    def close_inputs(self) -> tuple[int, ...]:
        """End step 2: the survivors (the clients whose input arrived), to send to every survivor."""
        if self._closed is None:
            if len(self._inputs) < self.params.min_survivors:
                raise SecAggError(f"only {len(self._inputs)} inputs (< {self.params.min_survivors})")
            self._closed = tuple(sorted(self._inputs))
        return self._closed

    def aggregate(self, responses: Mapping[int, UnmaskResponse]) -> SecAggResult:
        """Step 3: remove the dangling pairwise masks and the self-masks; decode the sum of the survivors."""
        survivors = self.close_inputs()
        dropped = tuple(sorted(set(self._keys) - set(survivors)))
        missing = [i for i in survivors if i not in responses]
        if missing:
            raise SecAggError(f"survivors {missing} did not answer the unmask step; the round cannot be recovered")
        total = np.zeros(self.params.dim, dtype=np.uint32)
        for i in survivors:
            total += self._inputs[i]
        for i in survivors:
            r = responses[i]
            if self.params.self_mask:
                if r.self_seed is None:
                    raise SecAggError(f"survivor {i} did not reveal its self-mask seed")
                total -= prg(r.self_seed, self.params.dim)
            if set(r.pair_seeds) != set(dropped):
                raise SecAggError(f"survivor {i} revealed seeds for {sorted(r.pair_seeds)}, expected {list(dropped)}")
            for j, seed in r.pair_seeds.items():
                mask = prg(seed, self.params.dim)
                # survivor i added +mask for j > i and -mask for j < i: undo that
                if j > i:
                    total -= mask
                else:
                    total += mask
        return SecAggResult(dequantize(total, self.params), survivors, dropped)
