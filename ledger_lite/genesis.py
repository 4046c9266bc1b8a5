"""The genesis of a cell ledger: chain id, start time, first validator set, trust roots.

JSON form (``Genesis.from_json`` / ``to_json``)::

    {
      "chain_id": "cell-0042",
      "genesis_time_ms": 1800000000000,
      "validators": [{"did": "did:key:z6Mk...", "power": 1}, ...],
      "authorities": {"did:key:z6Mk...": ["road_authority", "registration"], ...},
      "app_hash": "<hex, optional, default empty>"
    }

``authorities`` are the trust roots of the cell (OEMs, the registration authority, the road
authority): ``trust_store()`` turns them into a ``credentials.TrustStore``; the ledger app lets
them revoke credentials and DIDs, and road authorities change the validator set.

Every problem raises ``GenesisError`` naming the field, e.g.
``genesis.validators[2].power: must be a positive integer (got 0)``.

``make_test_genesis(n)`` builds a deterministic genesis (keys derived from a seed) for tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import didkey
from .credentials import Revocation, Role, TrustStore
from .errors import DidError, GenesisError
from .keys import SigningKey
from .validators import Validator, ValidatorSet

__all__ = ["Genesis", "make_test_genesis"]

_KEYS = frozenset({"chain_id", "genesis_time_ms", "validators", "authorities", "app_hash", "models"})
_MAX_TIME_MS = 253_402_300_799_999
_MAX_POWER = 1 << 32
_MAX_APP_HASH = 64


def _fail(where: str, message: str) -> GenesisError:
    return GenesisError(f"genesis.{where}: {message}")


def _check_did(value: object, where: str) -> str:
    if type(value) is not str:
        raise _fail(where, f"must be a did:key string, not {type(value).__name__}")
    try:
        didkey.resolve(value)  # a usable signing key, not only a well-formed DID
    except DidError as err:
        raise _fail(where, f"not a usable did:key: {err}") from None
    if "#" in value:
        raise _fail(where, "a DID, not a verification method (no '#fragment')")
    return value


def _check_power(value: object, where: str) -> int:
    if type(value) is not int or not 1 <= value <= _MAX_POWER:
        raise _fail(where, f"must be a positive integer <= 2^32 (got {value!r})")
    return value


def _check_roles(value: object, where: str) -> frozenset[Role]:
    items: list[object]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        raise _fail(where, f"must be a list of roles, not {type(value).__name__}")
    if not items:
        raise _fail(where, f"an authority needs at least one role ({', '.join(Role)})")
    roles: set[Role] = set()
    for i, r in enumerate(items):
        if type(r) is not str and not isinstance(r, Role):
            raise _fail(f"{where}[{i}]", f"must be a role name, not {type(r).__name__}")
        try:
            roles.add(Role(r))
        except ValueError:
            raise _fail(f"{where}[{i}]", f"{r!r} is not one of {', '.join(Role)}") from None
    return frozenset(roles)


@dataclass(frozen=True)
class Genesis:
    """A validated genesis. ``authorities`` maps each trust-root DID to its roles."""

    chain_id: str
    genesis_time_ms: int
    validators: ValidatorSet
    authorities: Mapping[str, frozenset[Role]]
    app_hash: bytes = b""
    #: model ids (SHA-256) committed at genesis: the models a cell starts federated learning from
    models: tuple[bytes, ...] = ()
    _roots: tuple[tuple[str, frozenset[Role]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.chain_id) is not str or not 1 <= len(self.chain_id) <= 64:
            raise _fail("chain_id", f"must be text of 1 to 64 characters (got {self.chain_id!r})")
        if type(self.genesis_time_ms) is not int or not 0 <= self.genesis_time_ms <= _MAX_TIME_MS:
            raise _fail("genesis_time_ms", f"must be integer milliseconds since 1970 (got {self.genesis_time_ms!r})")
        if not isinstance(self.validators, ValidatorSet):
            raise _fail("validators", f"must be a ValidatorSet, not {type(self.validators).__name__}")
        if self.validators.chain_id != self.chain_id:
            raise _fail("validators", f"the set is for chain {self.validators.chain_id!r}, not {self.chain_id!r}")
        for i, v in enumerate(self.validators.validators):
            _check_did(v.did, f"validators[{i}].did")
            _check_power(v.power, f"validators[{i}].power")
        if not isinstance(self.authorities, Mapping):
            raise _fail("authorities", f"must be a map of DID -> roles, not {type(self.authorities).__name__}")
        roots: dict[str, frozenset[Role]] = {}
        for did in sorted(self.authorities):
            _check_did(did, f"authorities[{did!r}]")
            roots[did] = _check_roles(self.authorities[did], f"authorities[{did!r}]")
        if not isinstance(self.app_hash, bytes) or len(self.app_hash) > _MAX_APP_HASH:
            raise _fail("app_hash", f"must be 0 to {_MAX_APP_HASH} bytes")
        object.__setattr__(self, "authorities", MappingProxyType(roots))
        object.__setattr__(self, "_roots", tuple(roots.items()))

    def __eq__(self, other: object) -> bool:  # ValidatorSet compares by identity: compare the content
        if not isinstance(other, Genesis):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    # -- the roots ---------------------------------------------------------------------------------

    def roles_of(self, did: str) -> frozenset[Role]:
        """The genesis roles of ``did`` (empty for anyone who is not a trust root)."""
        return self.authorities.get(did, frozenset())

    def trust_store(self, revocation: Revocation | None = None, *, skew: float = 60.0) -> TrustStore:
        """A ``TrustStore`` with the authorities as roots (``revocation``: e.g. the ledger's registry)."""
        return TrustStore(dict(self._roots), revocation, skew=skew)

    # -- serialisation -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Genesis:
        """Validate and build from the JSON shape (see the module docstring)."""
        if not isinstance(d, Mapping):
            raise GenesisError(f"genesis: must be a JSON object, not {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _KEYS)
        if unknown:
            raise _fail(unknown[0], "unknown field")
        for name in ("chain_id", "genesis_time_ms", "validators", "authorities"):
            if name not in d:
                raise _fail(name, "required field is missing")
        chain_id = d["chain_id"]
        if type(chain_id) is not str or not 1 <= len(chain_id) <= 64:
            raise _fail("chain_id", f"must be text of 1 to 64 characters (got {chain_id!r})")
        entries = d["validators"]
        if not isinstance(entries, list | tuple) or not entries:
            raise _fail("validators", "must be a non-empty list of {did, power}")
        validators: list[Validator] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"validators[{i}]"
            if not isinstance(entry, Mapping):
                raise _fail(where, f"must be an object {{did, power}}, not {type(entry).__name__}")
            extra = sorted(str(k) for k in entry if k not in ("did", "power"))
            if extra:
                raise _fail(f"{where}.{extra[0]}", "unknown field")
            for name in ("did", "power"):
                if name not in entry:
                    raise _fail(f"{where}.{name}", "required field is missing")
            did = _check_did(entry["did"], f"{where}.did")
            if did in seen:
                raise _fail(f"{where}.did", f"{did} is listed twice")
            seen.add(did)
            validators.append(Validator(did, _check_power(entry["power"], f"{where}.power")))
        auth = d["authorities"]
        if not isinstance(auth, Mapping):
            raise _fail("authorities", f"must be an object DID -> [roles], not {type(auth).__name__}")
        authorities: dict[str, frozenset[Role]] = {}
        for did, roles in auth.items():
            where = f"authorities[{did!r}]"
            authorities[_check_did(did, where)] = _check_roles(roles, where)
        time_ms = d["genesis_time_ms"]
        if type(time_ms) is not int or not 0 <= time_ms <= _MAX_TIME_MS:
            raise _fail("genesis_time_ms", f"must be integer milliseconds since 1970 (got {time_ms!r})")
        app_hash_hex = d.get("app_hash", "")
        try:
            if type(app_hash_hex) is not str:
                raise ValueError(type(app_hash_hex).__name__)
            app_hash = bytes.fromhex(app_hash_hex)
        except ValueError:
            raise _fail("app_hash", f"must be hex text (got {app_hash_hex!r})") from None
        models_hex = d.get("models", [])
        if not isinstance(models_hex, list):
            raise _fail("models", "must be a list of hex SHA-256 model ids")
        models: list[bytes] = []
        for i, m in enumerate(models_hex):
            try:
                if type(m) is not str or len(m) != 64:
                    raise ValueError(m)
                models.append(bytes.fromhex(m))
            except ValueError:
                raise _fail(f"models[{i}]", f"must be 64 hex digits (a SHA-256), got {m!r}") from None
        return cls(chain_id, time_ms, ValidatorSet(chain_id, tuple(validators)), authorities, app_hash, tuple(models))

    @classmethod
    def from_json(cls, text: str | bytes) -> Genesis:
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise GenesisError(f"genesis: not JSON: {err}") from None
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "validators": [{"did": v.did, "power": v.power} for v in self.validators.validators],
            "authorities": {did: sorted(str(r) for r in roles) for did, roles in self._roots},
        }
        if self.app_hash:
            out["app_hash"] = self.app_hash.hex()
        if self.models:
            out["models"] = [m.hex() for m in self.models]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _key(seed: bytes, label: str) -> SigningKey:
    return SigningKey.from_private_bytes("Ed25519", hashlib.sha256(seed + b"/" + label.encode()).digest())


def make_test_genesis(
    n: int,
    *,
    chain_id: str = "test-cell",
    seed: bytes = b"autochain-test-genesis",
    genesis_time_ms: int = 1_800_000_000_000,
    powers: Iterable[int] | None = None,
    roles: Iterable[Role | str] = (Role.ROAD_AUTHORITY, Role.REGISTRATION, Role.OEM),
) -> tuple[Genesis, list[SigningKey], SigningKey]:
    """FOR TESTS: a genesis with ``n`` validators and one authority, every key an Ed25519 key
    derived from ``seed`` (the same seed gives the same keys, DIDs and genesis in every run).

    Returns ``(genesis, validator_keys, authority_key)``: ``validator_keys[i]`` is the key of
    ``validator i`` as derived (``SHA-256(seed + b"/validator/<i>")``), NOT the sorted order of
    ``genesis.validators.validators``; map by DID (``didkey.did_key(k.public)``) when it matters.
    The authority (``SHA-256(seed + b"/authority")``) holds ``roles`` (default: road authority,
    registration and OEM, so one key can issue credentials, revoke and change validators).
    ``powers`` defaults to 1 each."""
    if n < 1:
        raise ValueError(f"a genesis needs at least one validator (n={n})")
    keys = [_key(seed, f"validator/{i}") for i in range(n)]
    power_list = [1] * n if powers is None else list(powers)
    if len(power_list) != n:
        raise ValueError(f"{len(power_list)} powers for {n} validators")
    authority = _key(seed, "authority")
    validators = ValidatorSet(
        chain_id, tuple(Validator(didkey.did_key(k.public), p) for k, p in zip(keys, power_list, strict=True))
    )
    authorities = {didkey.did_key(authority.public): frozenset(Role(r) for r in roles)}
    return Genesis(chain_id, genesis_time_ms, validators, authorities), keys, authority
