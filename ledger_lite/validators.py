"""The validator set of a cell ledger: DIDs (did:key) with voting power, read from a genesis dict.

Pure: no I/O, no clock. ``quorum`` is the smallest power strictly greater than 2/3 of the total
(Tendermint's "2f+1"), ``one_third`` the smallest power strictly greater than 1/3 ("f+1").

``proposer(height, round)`` follows Tendermint/CometBFT's proposer-priority algorithm: every
increment adds each validator's power to its priority, picks the highest priority (ties: the
smallest DID) and subtracts the total power from the winner; priorities are re-centred around
zero and rescaled when their spread exceeds twice the total. Over time each validator proposes in
proportion to its power. Heights start at 1; (height, round) uses increment ``height - 1 + round``
of the sequence from genesis (as CometBFT does for a fixed set: one increment per height, one more
per round).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import cbor
from .didkey import decode as decode_did
from .errors import DidError, GenesisError

__all__ = ["Validator", "ValidatorSet"]

_WINDOW_FACTOR = 2


@dataclass(frozen=True, order=True)
class Validator:
    did: str
    power: int


@dataclass(frozen=True, eq=False)
class ValidatorSet:
    """An immutable validator set. Build it with ``from_genesis`` or ``ValidatorSet(chain_id, validators)``."""

    chain_id: str
    validators: tuple[Validator, ...]
    _index: dict[str, int] = field(init=False, repr=False)
    _sequence: list[str] = field(init=False, repr=False)
    _priorities: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chain_id, str) or not self.chain_id:
            raise GenesisError("chain_id must be a non-empty string")
        if not self.validators:
            raise GenesisError("the validator set is empty")
        seen: set[str] = set()
        for v in self.validators:
            if not isinstance(v.power, int) or isinstance(v.power, bool) or v.power <= 0:
                raise GenesisError(f"validator {v.did}: power must be a positive integer (got {v.power!r})")
            if v.did in seen:
                raise GenesisError(f"validator {v.did} is listed twice")
            seen.add(v.did)
        ordered = tuple(sorted(self.validators, key=lambda v: v.did))
        object.__setattr__(self, "validators", ordered)
        object.__setattr__(self, "_index", {v.did: i for i, v in enumerate(ordered)})
        object.__setattr__(self, "_sequence", [])
        object.__setattr__(self, "_priorities", [0] * len(ordered))

    @classmethod
    def from_genesis(cls, genesis: Mapping[str, Any], *, check_dids: bool = True) -> ValidatorSet:
        """``{"chain_id": str, "validators": [{"did": "did:key:...", "power": int}, ...]}``."""
        try:
            chain_id = genesis["chain_id"]
            entries = genesis["validators"]
        except (KeyError, TypeError) as err:
            raise GenesisError(f"genesis must have chain_id and validators (missing {err})") from None
        if not isinstance(entries, list | tuple):
            raise GenesisError("genesis validators must be a list")
        validators = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("did"), str):
                raise GenesisError(f"validators[{i}] must be a map with a string 'did'")
            did = entry["did"]
            if check_dids:
                try:
                    decode_did(did)
                except DidError as err:
                    raise GenesisError(f"validators[{i}]: {err}") from err
            validators.append(Validator(did, entry.get("power")))  # type: ignore[arg-type]
        return cls(chain_id, tuple(validators))

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.validators)

    def __contains__(self, did: object) -> bool:
        return did in self._index

    @property
    def dids(self) -> tuple[str, ...]:
        return tuple(v.did for v in self.validators)

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    @property
    def quorum(self) -> int:
        """Smallest power strictly greater than 2/3 of the total."""
        return self.total_power * 2 // 3 + 1

    @property
    def one_third(self) -> int:
        """Smallest power strictly greater than 1/3 of the total (at least one honest validator)."""
        return self.total_power // 3 + 1

    def power_of(self, did: str) -> int:
        """Voting power of ``did``; 0 for a non-validator."""
        i = self._index.get(did)
        return 0 if i is None else self.validators[i].power

    def hash(self) -> bytes:
        """SHA-256 of the deterministic CBOR of the chain id and the sorted (did, power) list."""
        doc = {"chain_id": self.chain_id, "validators": [[v.did, v.power] for v in self.validators]}
        return hashlib.sha256(cbor.dumps(doc)).digest()

    def proposer(self, height: int, round: int) -> str:
        """The DID that proposes at (height >= 1, round >= 0)."""
        if height < 1 or round < 0:
            raise ValueError(f"no proposer for height {height}, round {round}")
        k = height - 1 + round
        seq = self._sequence
        while len(seq) <= k:
            seq.append(self._increment())
        return seq[k]

    def _increment(self) -> str:
        # Memoised, deterministic: the sequence depends only on the (immutable) set.
        prio = self._priorities
        total = self.total_power
        spread = max(prio) - min(prio)
        limit = _WINDOW_FACTOR * total
        if spread > limit:
            ratio = (spread + limit - 1) // limit
            prio[:] = [p // ratio for p in prio]
        avg = sum(prio) // len(prio)
        prio[:] = [p - avg for p in prio]
        best = 0
        for i, v in enumerate(self.validators):
            prio[i] += v.power
            if prio[i] > prio[best]:
                best = i
        prio[best] -= total
        return self.validators[best].did
