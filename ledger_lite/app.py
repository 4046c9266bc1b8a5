"""The ledger's application: an ABCI-like, deterministic state machine over blocks of transactions.

Pure: no I/O, no clocks (``now`` is an argument; blocks use their header time), no randomness.

Interface (what the node calls)::

    check_tx(tx, now=) -> TxInfo           mempool admission against the committed state
    prepare_txs(txs, time_ms=) -> txs      proposer: keep the reaped txs that form a valid body
    validate_block(block)                  prevote-time check: every tx valid, in order
    apply_block(block) -> BlockResult      execute (staged); the result carries the new app_hash
    commit() -> app_hash                   make the staged block the committed state
    replay_block(block) -> BlockResult     startup replay of stored (committed) blocks: apply + commit
                                           without signature or credential-chain checks

Modules (small classes, each with committed state plus a per-block ``_Delta`` overlay, so a block
is checked against "committed state + the earlier txs of the block" without copying state):

* ``_TxIndex`` -- every committed tx id -> (height, index): duplicates are rejected with
  "already committed at height H index I" (``AlreadyCommitted``), receipts are located.
* ``_AttestationRegistry`` -- per issuer the set of used seq numbers: the same (issuer, seq)
  under another id is a replay/fork and rejected; gaps and out-of-order seqs are accepted (MQTT
  may reorder). Only did:key issuers (pseudonymous ones are refused for now); a revoked issuer
  DID is refused; a time more than ``skew`` s ahead of now is refused.
* ``_CredentialRegistry`` -- credentials keyed by cti, verified with ``verify_credential`` against
  ``genesis.trust_store()`` with the ledger's revocations applied and every registered credential
  as chain material; revoked ctis and DIDs. A cti is revoked by a genesis authority or by the
  issuer of that (registered) credential; a DID only by a genesis authority.
* ``_ValidatorRegistry`` -- validator-set updates signed by a genesis road authority, nonce
  unique per chain, resulting set non-empty; an update committed at height H takes effect at
  H + 2 (Tendermint's rule), and ``validators_at`` answers for any height <= height + 2.

Signatures are verified once per process: verified transactions are kept in an LRU cache by tx
id (``sig_cache_size``), so ``check_tx`` then ``validate_block`` then ``apply_block`` verify a
tx once. Credentials are the exception: ``verify_credential`` (signature, chain, expiry and
revocation at the block time in one call) runs at each check; they are rare.

**app_hash.** After block H: ``SHA-256(CBOR [prev_app_hash, H, SHA-256(CBOR results), hash of
the validator set of H + 2])`` where ``results`` lists, per tx, ``[tx_id, kind, state change]``
(attestation ``[issuer, seq]``, credential ``[cti, kind, issuer, subject]``, revocation
``["cti", cti]`` / ``["did", did]``, update ``[nonce, [[did, power], ...]]``). It is a hash
chain over the history of state changes: every node that applied the same blocks agrees, and
any difference changes every later hash. Limit: it is not a Merkle root of the current state,
so it cannot prove absence (or presence) of an entry to a light client; receipts are proved
with the block's tx Merkle root instead. Following Tendermint, the hash after block H is
carried by header H + 1 (``validate_block`` checks it).

State is in memory and grows with history (every tx id, every seq per issuer); the node rebuilds
it at startup with ``replay_block`` over the block store.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from . import cbor, cose
from .attestation import PSEUDONYM_PREFIX, decode_attestation, did_key_resolver
from .block import Block
from .credentials import CredentialStore, DecodedCredential, Role, decode_credential, verify_credential
from .errors import LedgerError, MalformedError, RevokedError, ValidityError, VerificationError
from .genesis import Genesis
from .txs import (
    FlResultTx,
    FlRoundTx,
    RevocationTx,
    TxKind,
    ValidatorUpdateTx,
    decode_fl_result,
    decode_fl_round,
    decode_revocation,
    decode_validator_update,
    kind_of,
    tx_id,
    verify_signer,
)
from .validators import Validator, ValidatorSet

__all__ = [
    "AlreadyCommitted",
    "BlockResult",
    "TxNotYetValid",
    "LedgerApp",
    "TxInfo",
    "TxRejected",
    "TxResult",
]

_DID_KEY: Final = "did:key:"


class TxRejected(VerificationError):
    """A well-formed transaction the ledger does not accept; the message says what and where
    (tx id prefix, block index when in a block, the field)."""

    def __init__(self, message: str, *, tx_id: bytes = b"", index: int | None = None, field: str = "") -> None:
        self.tx_id = tx_id
        self.index = index
        self.field = field
        self.reason = message
        where = []
        if index is not None:
            where.append(f"tx {index}")
        if tx_id:
            where.append(tx_id.hex()[:16])
        if field:
            where.append(field)
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class AlreadyCommitted(TxRejected):
    """The very same transaction is already on the ledger (the sender's retry; not an attack)."""


class TxNotYetValid(TxRejected, ValidityError):
    """Rejected for now, maybe not later: a time ahead of ``now`` (beyond the skew), a credential
    not yet (or no longer) valid. The mempool does not remember these rejections."""


@dataclass(frozen=True)
class TxInfo:
    kind: TxKind
    tx_id: bytes
    signer: str
    seq: int | None  # attestation seq


@dataclass(frozen=True)
class TxResult:
    tx_id: bytes
    kind: TxKind
    index: int


@dataclass(frozen=True)
class BlockResult:
    height: int
    results: tuple[TxResult, ...]
    validator_updates: tuple[Validator, ...]
    app_hash: bytes


@dataclass(frozen=True, slots=True)
class _Checked:
    """A decoded transaction whose signature was verified (unless ``verified`` is False)."""

    kind: TxKind
    tx_id: bytes
    signer: str
    seq: int | None
    time_ms: int
    obj: RevocationTx | ValidatorUpdateTx | FlRoundTx | FlResultTx | DecodedCredential | None
    verified: bool


@dataclass
class _Delta:
    """What the txs of one block change, on top of the committed state."""

    ids: dict[bytes, int] = field(default_factory=dict)
    seqs: dict[str, set[int]] = field(default_factory=dict)
    creds: dict[bytes, tuple[int, DecodedCredential]] = field(default_factory=dict)
    revoked_ctis: dict[bytes, int] = field(default_factory=dict)
    revoked_dids: dict[str, int] = field(default_factory=dict)
    nonces: set[int] = field(default_factory=set)
    next_set: ValidatorSet | None = None
    updates: list[Validator] = field(default_factory=list)
    fl_rounds: dict[tuple[str, int], FlRoundTx] = field(default_factory=dict)
    fl_results: dict[tuple[str, int], FlResultTx] = field(default_factory=dict)
    results: list[TxResult] = field(default_factory=list)
    changes: list[list[Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# modules


class _TxIndex:
    """Committed tx id -> (height, index)."""

    def __init__(self) -> None:
        self._where: dict[bytes, tuple[int, int]] = {}

    def get(self, tid: bytes) -> tuple[int, int] | None:
        return self._where.get(tid)

    def check(self, tid: bytes, delta: _Delta) -> None:
        where = self._where.get(tid)
        if where is not None:
            raise AlreadyCommitted(f"already committed at height {where[0]} index {where[1]}", tx_id=tid)
        if tid in delta.ids:
            raise TxRejected(f"duplicate of tx {delta.ids[tid]} of this block", tx_id=tid)

    def commit(self, delta: _Delta, height: int) -> None:
        for tid, i in delta.ids.items():
            self._where[tid] = (height, i)


class _AttestationRegistry:
    """Per issuer, the seq numbers used on the ledger."""

    def __init__(self) -> None:
        self._seqs: dict[str, set[int]] = {}

    def check(self, c: _Checked, delta: _Delta) -> list[Any]:
        assert c.seq is not None
        used = self._seqs.get(c.signer)
        if (used is not None and c.seq in used) or c.seq in delta.seqs.get(c.signer, ()):
            raise TxRejected(
                f"{c.signer} seq {c.seq} is already on the ledger as another attestation (a replay or a forked chain)",
                tx_id=c.tx_id,
                field="seq",
            )
        delta.seqs.setdefault(c.signer, set()).add(c.seq)
        return [c.signer, c.seq]

    def seqs_of(self, issuer: str) -> frozenset[int]:
        return frozenset(self._seqs.get(issuer, ()))

    def commit(self, delta: _Delta) -> None:
        for issuer, seqs in delta.seqs.items():
            self._seqs.setdefault(issuer, set()).update(seqs)


class _RevocationView:
    """``credentials.Revocation`` over the committed revocations plus a block's (for TrustStore)."""

    def __init__(self, registry: _CredentialRegistry, delta: _Delta) -> None:
        self._registry = registry
        self._delta = delta

    def check(self, *, cti: bytes | None = None, dids: Iterable[str] = ()) -> None:
        if cti is not None and self._registry.cti_revoked(cti, self._delta):
            raise RevokedError(f"credential {cti.hex()} is revoked on the ledger")
        for did in dids:
            if self._registry.did_revoked(did, self._delta):
                raise RevokedError(f"{did} is revoked on the ledger")


class _CredentialRegistry:
    """Registered credentials (by cti), revoked ctis and DIDs."""

    def __init__(self, genesis: Genesis) -> None:
        self._genesis = genesis
        self._creds: dict[bytes, DecodedCredential] = {}
        self._store = CredentialStore()
        self._revoked_ctis: set[bytes] = set()
        self._revoked_dids: set[str] = set()

    def cti_revoked(self, cti: bytes, delta: _Delta | None = None) -> bool:
        return cti in self._revoked_ctis or (delta is not None and cti in delta.revoked_ctis)

    def did_revoked(self, did: str, delta: _Delta | None = None) -> bool:
        return did in self._revoked_dids or (delta is not None and did in delta.revoked_dids)

    def get(self, cti: bytes, delta: _Delta | None = None) -> DecodedCredential | None:
        found = self._creds.get(cti)
        if found is None and delta is not None and cti in delta.creds:
            return delta.creds[cti][1]
        return found

    def check_credential(self, c: _Checked, delta: _Delta, *, now: float, verify: bool) -> list[Any]:
        cred = c.obj
        assert isinstance(cred, DecodedCredential)
        if cred.cti in self._creds or cred.cti in delta.creds:
            raise TxRejected(f"credential id {cred.cti.hex()} is already registered", tx_id=c.tx_id, field="cti")
        if self.cti_revoked(cred.cti, delta):
            raise TxRejected(f"credential id {cred.cti.hex()} is revoked", tx_id=c.tx_id, field="cti")
        if verify:
            store = self._genesis.trust_store(_RevocationView(self, delta))
            try:
                verify_credential(
                    cred.raw,
                    store,
                    now=now,
                    chain=[d.raw for _, d in delta.creds.values()],
                    credentials=self._store,
                )
            except LedgerError as err:
                cls = TxNotYetValid if isinstance(err, ValidityError) else TxRejected
                raise cls(f"{cred.kind} credential {cred.cti.hex()}: {err}", tx_id=c.tx_id) from err
        delta.creds[cred.cti] = (len(delta.results), cred)
        return [cred.cti, str(cred.kind), cred.issuer, cred.subject]

    def check_revocation(self, c: _Checked, delta: _Delta) -> list[Any]:
        rev = c.obj
        assert isinstance(rev, RevocationTx)
        authority = bool(self._genesis.roles_of(c.signer))
        if rev.cti is not None:
            if self.cti_revoked(rev.cti, delta):
                raise TxRejected(f"credential {rev.cti.hex()} is already revoked", tx_id=c.tx_id, field="cti")
            cred = self.get(rev.cti, delta)
            if not authority and (cred is None or cred.issuer != c.signer):
                why = "is not registered" if cred is None else f"was issued by {cred.issuer}"
                raise TxRejected(
                    f"{c.signer} may not revoke credential {rev.cti.hex()}: it {why}, and the signer is "
                    "not a genesis authority",
                    tx_id=c.tx_id,
                    field="cti",
                )
            delta.revoked_ctis[rev.cti] = len(delta.results)
            return ["cti", rev.cti]
        assert rev.did is not None
        if not authority:
            raise TxRejected(
                f"{c.signer} may not revoke DIDs: only a genesis authority may", tx_id=c.tx_id, field="did"
            )
        if self.did_revoked(rev.did, delta):
            raise TxRejected(f"{rev.did} is already revoked", tx_id=c.tx_id, field="did")
        delta.revoked_dids[rev.did] = len(delta.results)
        return ["did", rev.did]

    def commit(self, delta: _Delta) -> None:
        for cti, (_, cred) in delta.creds.items():
            self._creds[cti] = cred
            self._store.add(cred.raw)
        self._revoked_ctis.update(delta.revoked_ctis)
        self._revoked_dids.update(delta.revoked_dids)


class _ValidatorRegistry:
    """The validator-set schedule: (first height, set), and the nonces used."""

    def __init__(self, genesis: Genesis) -> None:
        self._genesis = genesis
        self._schedule: list[tuple[int, ValidatorSet]] = [(0, genesis.validators)]
        self._nonces: set[int] = set()

    @property
    def latest(self) -> ValidatorSet:
        """The last scheduled set (the set of height + 2)."""
        return self._schedule[-1][1]

    def at(self, height: int) -> ValidatorSet:
        for start, vset in reversed(self._schedule):
            if start <= height:
                return vset
        return self._schedule[0][1]  # pragma: no cover - the genesis entry starts at 0

    def check(self, c: _Checked, delta: _Delta, credentials: _CredentialRegistry) -> list[Any]:
        upd = c.obj
        assert isinstance(upd, ValidatorUpdateTx)
        if Role.ROAD_AUTHORITY not in self._genesis.roles_of(c.signer):
            raise TxRejected(
                f"{c.signer} may not change the validator set: only a genesis road authority may", tx_id=c.tx_id
            )
        if upd.nonce in self._nonces or upd.nonce in delta.nonces:
            raise TxRejected(f"nonce {upd.nonce} was already used on this chain", tx_id=c.tx_id, field="nonce")
        current = delta.next_set or self.latest
        powers = {v.did: v.power for v in current.validators}
        for i, v in enumerate(upd.changes):
            if v.power == 0:
                if v.did not in powers:
                    raise TxRejected(f"{v.did} is not a validator", tx_id=c.tx_id, field=f"changes[{i}].did")
                del powers[v.did]
            else:
                if credentials.did_revoked(v.did, delta):
                    raise TxRejected(f"{v.did} is revoked", tx_id=c.tx_id, field=f"changes[{i}].did")
                powers[v.did] = v.power
        if not powers:
            raise TxRejected("the update would leave the validator set empty", tx_id=c.tx_id, field="changes")
        delta.next_set = ValidatorSet(current.chain_id, tuple(Validator(d, p) for d, p in powers.items()))
        delta.nonces.add(upd.nonce)
        delta.updates.extend(upd.changes)
        return [upd.nonce, [[v.did, v.power] for v in upd.changes]]

    def commit(self, delta: _Delta, height: int) -> None:
        self._nonces.update(delta.nonces)
        if delta.next_set is not None:
            self._schedule.append((height + 2, delta.next_set))


class _FlRegistry:
    """Federated-learning rounds per task and the model ids committed (genesis models and every
    round's result). A round is opened by a validator of the cell from a committed model, with
    the next round number of its task, once the previous round has its result; the result is
    committed by the RSU that opened the round, for that round's base model."""

    def __init__(self, genesis: Genesis) -> None:
        self.rounds: dict[tuple[str, int], FlRoundTx] = {}
        self.results: dict[tuple[str, int], tuple[int, FlResultTx]] = {}  # -> (height, result)
        self.models: dict[bytes, tuple[int, str, int]] = {m: (0, "", 0) for m in genesis.models}
        self.latest: dict[str, int] = {}

    def model_committed(self, model: bytes, delta: _Delta | None = None) -> bool:
        if model in self.models:
            return True
        return delta is not None and any(r.model == model for r in delta.fl_results.values())

    def _last_round(self, task: str, delta: _Delta) -> int:
        pending = [r for t, r in delta.fl_rounds if t == task]
        return max([self.latest.get(task, 0), *pending])

    def check_round(self, c: _Checked, delta: _Delta, validators: ValidatorSet) -> list[Any]:
        rnd = c.obj
        assert isinstance(rnd, FlRoundTx)
        if c.signer not in validators:
            raise TxRejected(f"{c.signer} may not open an FL round: not a validator of the cell", tx_id=c.tx_id)
        last = self._last_round(rnd.task, delta)
        if rnd.round != last + 1:
            raise TxRejected(
                f"task {rnd.task!r}: round {rnd.round} opened, the next is {last + 1}", tx_id=c.tx_id, field="round"
            )
        if last and (rnd.task, last) not in self.results and (rnd.task, last) not in delta.fl_results:
            raise TxRejected(f"task {rnd.task!r}: round {last} has no result yet", tx_id=c.tx_id, field="round")
        if not self.model_committed(rnd.base, delta):
            raise TxRejected(f"base model {rnd.base.hex()[:16]} is not committed", tx_id=c.tx_id, field="base")
        delta.fl_rounds[(rnd.task, rnd.round)] = rnd
        return ["round", rnd.task, rnd.round, rnd.base]

    def check_result(self, c: _Checked, delta: _Delta) -> list[Any]:
        res = c.obj
        assert isinstance(res, FlResultTx)
        key = (res.task, res.round)
        opened = self.rounds.get(key) or delta.fl_rounds.get(key)
        if opened is None:
            raise TxRejected(f"task {res.task!r}: round {res.round} was never opened", tx_id=c.tx_id, field="round")
        if key in self.results or key in delta.fl_results:
            raise TxRejected(f"task {res.task!r}: round {res.round} already has a result", tx_id=c.tx_id)
        if c.signer != opened.signer:
            raise TxRejected(f"only {opened.signer}, who opened the round, may commit its result", tx_id=c.tx_id)
        if res.base != opened.base:
            raise TxRejected("the result names another base model than the round", tx_id=c.tx_id, field="base")
        delta.fl_results[key] = res
        return ["result", res.task, res.round, res.model, list(res.participants), [list(r) for r in res.rejected]]

    def commit(self, delta: _Delta, height: int) -> None:
        self.rounds.update(delta.fl_rounds)
        for (task, rnd), res in delta.fl_results.items():
            self.results[(task, rnd)] = (height, res)
            self.models.setdefault(res.model, (height, task, rnd))
        for task, rnd in delta.fl_rounds:
            self.latest[task] = max(self.latest.get(task, 0), rnd)


# --------------------------------------------------------------------------------------------
# the application


class LedgerApp:
    """The cell ledger's state machine (see the module docstring). Not thread-safe."""

    def __init__(self, genesis: Genesis, *, sig_cache_size: int = 200_000, skew: float = 60.0) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.height = 0
        self.app_hash = genesis.app_hash
        self.skew = skew
        #: signature verifications done (each tx once while it stays in the cache)
        self.verifications = 0
        self._cache: OrderedDict[bytes, _Checked] = OrderedDict()
        self._cache_size = sig_cache_size
        self._resolver = did_key_resolver()
        self._index = _TxIndex()
        self._attestations = _AttestationRegistry()
        self._credentials = _CredentialRegistry(genesis)
        self._validators = _ValidatorRegistry(genesis)
        self._fl = _FlRegistry(genesis)
        self._staged: tuple[int, _Delta, bytes] | None = None

    # -- queries -----------------------------------------------------------------------------------

    def validators_at(self, height: int) -> ValidatorSet:
        """The validator set of ``height`` (0 <= height <= self.height + 2)."""
        if not 0 <= height <= self.height + 2:
            raise ValueError(f"validators of height {height} are not known yet (committed height {self.height})")
        return self._validators.at(height)

    def receipt_location(self, tx_id: bytes) -> tuple[int, int] | None:
        """(height, index in the block) of a committed transaction, None if not on the ledger."""
        return self._index.get(tx_id)

    def attestation_issuer(self, tx: bytes) -> str | None:
        """The issuer of an attestation tx (from the decode cache when it is there; no signature
        check), None for other kinds or garbage -- for routing receipts, not for trust."""
        hit = self._cache.get(tx_id(tx))
        if hit is not None:
            return hit.signer if hit.kind is TxKind.ATTESTATION else None
        try:
            c = self._decode_new(tx, tx_id(tx), verify=False)
        except LedgerError:
            return None
        return c.signer if c.kind is TxKind.ATTESTATION else None

    def model_committed(self, model: bytes) -> bool:
        """Is ``model`` (a model id) committed: a genesis model or a federated-learning result?"""
        return self._fl.model_committed(model)

    def fl_status(self, task: str) -> dict[str, Any]:
        """The task's latest round, whether it has a result, and the models committed for it."""
        last = self._fl.latest.get(task, 0)
        result = self._fl.results.get((task, last))
        return {
            "task": task,
            "round": last,
            "open": last > 0 and result is None,
            "base": None if last == 0 else self._fl.rounds[(task, last)].base.hex(),
            "model": None if result is None else result[1].model.hex(),
            "result_height": None if result is None else result[0],
            "models": [m.hex() for m, (_, t, _r) in self._fl.models.items() if t in ("", task)],
        }

    def fl_round(self, task: str, rnd: int) -> FlRoundTx | None:
        return self._fl.rounds.get((task, rnd))

    def is_revoked(self, *, cti: bytes | None = None, did: str | None = None) -> bool:
        return (cti is not None and self._credentials.cti_revoked(cti)) or (
            did is not None and self._credentials.did_revoked(did)
        )

    def credential(self, cti: bytes) -> DecodedCredential | None:
        """A registered credential (it may have been revoked since: see ``is_revoked``)."""
        return self._credentials.get(cti)

    def seqs_of(self, issuer: str) -> frozenset[int]:
        """The attestation seq numbers of ``issuer`` on the ledger."""
        return self._attestations.seqs_of(issuer)

    # -- mempool -----------------------------------------------------------------------------------

    def check_tx(self, tx: bytes, *, now: float) -> TxInfo:
        """Admission against the committed state. Raises MalformedError (garbage) or TxRejected
        (the cause chained: a SignatureError, ...); ``AlreadyCommitted`` for a tx on the ledger,
        ``TxNotYetValid`` (also a ValidityError) for a rejection that may pass later."""
        try:
            c = self._decode(tx, verify=True)
            self._execute(c, _Delta(), now=now, verify=True)
        except (TxRejected, MalformedError):
            raise
        except ValidityError as err:
            raise TxNotYetValid(str(err), tx_id=tx_id(tx)) from err
        except VerificationError as err:
            raise TxRejected(str(err), tx_id=tx_id(tx)) from err
        return TxInfo(c.kind, c.tx_id, c.signer, c.seq)

    # -- blocks ------------------------------------------------------------------------------------

    def prepare_txs(self, txs: Iterable[bytes], *, time_ms: int) -> list[bytes]:
        """The proposer's filter (ABCI PrepareProposal): the txs of ``txs``, in order, that form a
        valid block body at ``time_ms`` on the committed state -- dropping duplicates and txs
        that conflict with earlier ones (two forks of one seq, a second revocation of one cti,
        ...), which the mempool can hold side by side since it checks each against committed
        state only. Call it on ``mempool.reap(...)`` before ``Block.build``."""
        now = time_ms / 1000.0
        delta = _Delta()
        out: list[bytes] = []
        for tx in txs:
            try:
                c = self._decode(tx, verify=True)
                self._execute(c, delta, now=now, verify=True)
            except (MalformedError, VerificationError):
                continue
            delta.ids[c.tx_id] = len(out)
            delta.results.append(TxResult(c.tx_id, c.kind, len(out)))
            out.append(tx)
        return out

    def validate_block(self, block: Block) -> None:
        """Every rule, deterministic (time = the header's); raises TxRejected naming the tx index,
        or a VerificationError for the header: chain id, height = height + 1, app_hash = the app
        hash after the last commit, validators_hash / next_validators_hash = the sets of this
        height and the next. (tx_root, last commit, proposer: ``Block.validate_basic``'s job.)"""
        self._run(block, verify=True)

    def apply_block(self, block: Block, *, verify: bool = True) -> BlockResult:
        """Execute ``block`` (staged until ``commit``). Runs the same checks as ``validate_block``
        (cheap: signatures come from the cache); ``verify=False`` skips signature and credential
        chain checks, for blocks already committed (``replay_block``)."""
        delta = self._run(block, verify=verify)
        h = block.header.height
        next_set = delta.next_set or self._validators.latest
        results_hash = hashlib.sha256(cbor.dumps(delta.changes)).digest()
        app_hash = hashlib.sha256(cbor.dumps([self.app_hash, h, results_hash, next_set.hash()])).digest()
        self._staged = (h, delta, app_hash)
        return BlockResult(h, tuple(delta.results), tuple(delta.updates), app_hash)

    def commit(self) -> bytes:
        """Make the applied block the committed state; the new app_hash (for the NEXT header)."""
        if self._staged is None:
            raise RuntimeError("commit() without apply_block()")
        h, delta, app_hash = self._staged
        self._index.commit(delta, h)
        self._attestations.commit(delta)
        self._credentials.commit(delta)
        self._validators.commit(delta, h)
        self._fl.commit(delta, h)
        self.height, self.app_hash, self._staged = h, app_hash, None
        return app_hash

    def replay_block(self, block: Block) -> BlockResult:
        """Startup rebuild from the block store: apply + commit a committed block without
        signature checks (the block was validated by > 2/3 of the validators when it was decided).
        Header checks (height, app_hash) still run, so a corrupt store is noticed."""
        result = self.apply_block(block, verify=False)
        self.commit()
        return result

    # -- internals ---------------------------------------------------------------------------------

    def _check_header(self, block: Block) -> None:
        h = block.header
        if h.chain_id != self.chain_id:
            raise VerificationError(f"block is for chain {h.chain_id!r}, this is {self.chain_id!r}")
        if h.height != self.height + 1:
            raise VerificationError(f"block height {h.height}, expected {self.height + 1}")
        if h.app_hash != self.app_hash:
            raise VerificationError(
                f"block {h.height}: header.app_hash {h.app_hash.hex()[:16]} is not the app hash after height "
                f"{self.height} ({self.app_hash.hex()[:16]})"
            )
        if h.validators_hash != self._validators.at(h.height).hash():
            raise VerificationError(f"block {h.height}: header.validators_hash is not the hash of its validator set")
        if h.next_validators_hash != self._validators.at(h.height + 1).hash():
            raise VerificationError(
                f"block {h.height}: header.next_validators_hash is not the hash of the set of height {h.height + 1}"
            )

    def _run(self, block: Block, *, verify: bool) -> _Delta:
        self._check_header(block)
        now = block.header.time_ms / 1000.0
        delta = _Delta()
        for i, tx in enumerate(block.txs):
            try:
                c = self._decode(tx, verify=verify)
                self._execute(c, delta, now=now, verify=verify)
            except TxRejected as err:
                raise type(err)(err.reason, tx_id=err.tx_id, index=i, field=err.field) from err
            except (MalformedError, VerificationError) as err:
                raise TxRejected(str(err), tx_id=tx_id(tx), index=i) from err
            delta.ids[c.tx_id] = i
            delta.results.append(TxResult(c.tx_id, c.kind, i))
        return delta

    def _decode(self, tx: bytes, *, verify: bool) -> _Checked:
        tid = tx_id(tx)
        cache = self._cache
        hit = cache.get(tid)
        if hit is not None:
            cache.move_to_end(tid)
            return hit
        c = self._decode_new(tx, tid, verify=verify)
        if c.verified:
            cache[tid] = c
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        return c

    def _decode_new(self, tx: bytes, tid: bytes, *, verify: bool) -> _Checked:
        msg = cose.decode_sign1(tx)
        kind = kind_of(msg.content_type)
        if kind is TxKind.ATTESTATION:
            att = decode_attestation(tx)  # decodes once; the signature is checked on its parts below
            if not att.issuer.startswith(_DID_KEY):
                why = "pseudonymous issuers are not accepted on the ledger (yet)"
                if not att.issuer.startswith(PSEUDONYM_PREFIX):
                    why = "only did:key issuers are accepted on the ledger"
                raise TxRejected(f"{att.issuer[:80]}: {why}", tx_id=tid, field="iss")
            if verify:
                cose.verify_sign1(msg, self._resolver(att.kid))
                self.verifications += 1
            return _Checked(kind, tid, att.issuer, att.seq, att.time_ms, None, verify)
        if kind is TxKind.CREDENTIAL:
            # the signature is checked by verify_credential at every (stateful) check
            cred = decode_credential(tx)
            return _Checked(kind, tid, cred.issuer, None, 0, cred, verify)
        obj: RevocationTx | ValidatorUpdateTx | FlRoundTx | FlResultTx
        if kind is TxKind.REVOCATION:
            obj = decode_revocation(tx, chain_id=self.chain_id)
            time_ms = obj.time_ms
        elif kind is TxKind.FL_ROUND:
            obj = decode_fl_round(tx, chain_id=self.chain_id)
            time_ms = 0
        elif kind is TxKind.FL_RESULT:
            obj = decode_fl_result(tx, chain_id=self.chain_id)
            time_ms = 0
        else:
            obj = decode_validator_update(tx, chain_id=self.chain_id)
            time_ms = 0
        if verify:
            verify_signer(obj.msg)
            self.verifications += 1
        return _Checked(kind, tid, obj.signer, None, time_ms, obj, verify)

    def _execute(self, c: _Checked, delta: _Delta, *, now: float, verify: bool) -> None:
        """Check ``c`` against committed state + ``delta`` and record its change in ``delta``."""
        self._index.check(c.tx_id, delta)
        if self._credentials.did_revoked(c.signer, delta):
            raise TxRejected(f"the signer {c.signer} is revoked", tx_id=c.tx_id)
        if c.time_ms and c.time_ms > (now + self.skew) * 1000.0:
            raise TxNotYetValid(
                f"time {c.time_ms} ms is more than {self.skew:g} s ahead of now ({now:.3f} s)", tx_id=c.tx_id
            )
        change: list[Any]
        if c.kind is TxKind.ATTESTATION:
            change = self._attestations.check(c, delta)
        elif c.kind is TxKind.CREDENTIAL:
            change = self._credentials.check_credential(c, delta, now=now, verify=verify)
        elif c.kind is TxKind.REVOCATION:
            change = self._credentials.check_revocation(c, delta)
        elif c.kind is TxKind.FL_ROUND:
            change = self._fl.check_round(c, delta, self._validators.at(self.height + 1))
        elif c.kind is TxKind.FL_RESULT:
            change = self._fl.check_result(c, delta)
        else:
            change = self._validators.check(c, delta, self._credentials)
        delta.changes.append([c.tx_id, str(c.kind), change])
