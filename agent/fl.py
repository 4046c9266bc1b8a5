"""Federated learning over the cell: the RSU coordinates rounds on the ledger, OBUs train locally
and load only models whose id is committed.

Model id (what the ledger commits): ``model_id(tflite_sha256, weights)`` = SHA-256 over a
label, the .tflite file's SHA-256 (the architecture and its train signature) and the weights as
little-endian float32. The genesis names the starting model(s) (``Genesis.models``); every
round's ``FL_RESULT`` transaction commits the next.

Messages (deterministic CBOR in a COSE_Sign1 by the sender's device key):

* ``acc/v1/cell/{cell}/fl/model`` (retained), RSU -> OBUs, the cell's FL state::

      {"task", "model": {"id", "tflite", "weights": bstr f32, "proof": P / null},
       "round": {"tx": bstr, "proof": P} / null}
      P = {"tx": bstr, "height": uint, "index": uint, "size": uint, "path": [* bstr]}

  ``model.proof`` is the inclusion proof of the FL_RESULT tx that committed ``model.id`` (null
  for a genesis model); ``round`` is the open round's FL_ROUND tx with its proof. An OBU checks
  each proof with its light client (a header it verified by a commit certificate) before it
  loads a model or trains for a round -- a model not committed on the ledger is refused.
* ``acc/v1/cell/{cell}/fl/{node}``, OBU -> RSU, an update::

      {"task", "round", "base": model id, "n": samples, "update": bstr f32 (weights delta)}

The RSU verifies each update's signature, round, base and size, clips it to the round's L2
bound (``clip``) -- or rejects it (NaN, wrong size, late) with a reason that goes into the
result transaction -- aggregates (``aggregator``: fedavg, median, trimmed_mean, multi_krum via
``models.fl.aggregate`` when present), and commits the new model id, participants and rejects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np

from hal.interfaces import Clock
from ledger_lite import cbor, cose
from ledger_lite.attestation import kid_for
from ledger_lite.block import tx_receipt
from ledger_lite.didkey import resolve
from ledger_lite.errors import LedgerError, MalformedError
from ledger_lite.keys import SigningKey
from ledger_lite.light import LightClient
from ledger_lite.merkle import InclusionProof
from ledger_lite.txs import build_fl_result, build_fl_round, decode_fl_result, decode_fl_round, tx_id

from . import topics
from .mqtt import Dispatcher, Message, MqttClient

__all__ = ["FlClient", "FlCoordinator", "Trainer", "model_id"]

log = logging.getLogger(__name__)

MAX_WEIGHTS: Final = 1 << 20  # float32 values in a model / update


class Trainer(Protocol):
    """The on-device model (``models.tflite_model.TfliteModel`` or a stand-in)."""

    def get_weights(self) -> np.ndarray: ...

    def set_weights(self, w: np.ndarray) -> None: ...

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float: ...


def model_id(tflite_sha256: bytes, weights: np.ndarray) -> bytes:
    w = np.ascontiguousarray(weights, dtype="<f4")
    return hashlib.sha256(b"acc-model-v1|" + tflite_sha256 + w.tobytes()).digest()


def _f32(data: Any, what: str) -> np.ndarray:
    if not isinstance(data, bytes) or len(data) % 4 or len(data) // 4 > MAX_WEIGHTS:
        raise MalformedError(f"{what}: expected float32 bytes (at most {MAX_WEIGHTS} values)")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _signed(key: SigningKey, did: str, payload: dict[str, Any]) -> bytes:
    return cose.sign1(cbor.dumps(payload), key, kid=kid_for(did).encode())


def _open_signed(data: bytes) -> tuple[str, dict[str, Any]]:
    """(signer DID, payload) of a COSE_Sign1 by a did:key; raises LedgerError."""
    msg = cose.decode_sign1(data)
    kid = (msg.kid or b"").decode(errors="replace")
    did = kid.partition("#")[0]
    cose.verify_sign1(msg, resolve(kid))
    body = cbor.loads(msg.payload or b"")
    if not isinstance(body, dict):
        raise MalformedError("FL message: the payload must be a map")
    return did, body


def _proof_item(tx: bytes, height: int, proof: InclusionProof) -> dict[str, Any]:
    return {"tx": tx, "height": height, "index": proof.leaf_index, "size": proof.tree_size, "path": list(proof.path)}


def _proof_from(item: Any) -> tuple[bytes, int, InclusionProof]:
    if not isinstance(item, dict) or set(item) != {"tx", "height", "index", "size", "path"}:
        raise MalformedError("FL proof: expected {tx, height, index, size, path}")
    try:
        return (
            item["tx"],
            int(item["height"]),
            InclusionProof(int(item["index"]), int(item["size"]), tuple(item["path"])),
        )
    except (TypeError, ValueError) as err:
        raise MalformedError(f"FL proof: {err}") from err


# --------------------------------------------------------------------------------------------
# RSU: the round coordinator


@dataclass
class _Round:
    number: int
    base: bytes
    base_weights: np.ndarray
    tx: bytes
    deadline: float
    updates: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # did -> (n, delta)
    rejected: dict[str, str] = field(default_factory=dict)
    #: secure aggregation: did -> (client id, X25519 public key), masked inputs, unmask answers
    joined: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    phase: str = "updates"
    server: Any = None
    unmasked: dict[int, Any] = field(default_factory=dict)


class FlCoordinator:
    """Runs rounds on an RSU with a ledger node: opens a round on the ledger, publishes the
    cell's FL state, collects updates until the deadline (or ``max_clients``), aggregates,
    commits the result and publishes the new model."""

    def __init__(
        self,
        *,
        node: Any,  # agent.ledger_node.LedgerNode (submit_tx, app, stored, did)
        client: MqttClient,
        dispatcher: Dispatcher,
        key: SigningKey,
        clock: Clock,
        task: str,
        tflite_sha256: bytes,
        weights: np.ndarray,
        round_seconds: float = 20.0,
        pause_seconds: float = 2.0,
        min_clients: int = 2,
        max_clients: int = 100,
        clip: float = 1.0,
        aggregator: str = "fedavg",
        rounds: int | None = None,
        dp_noise: float = 0.0,
        dp_delta: float = 1e-5,
        secagg: bool = False,
    ) -> None:
        self.node, self.client, self.key, self.clock = node, client, key, clock
        #: secure aggregation (FedAvg only): the RSU learns only the sum of the masked updates
        self.secagg = secagg
        if secagg and aggregator != "fedavg":
            raise ValueError("secure aggregation hides individual updates: only fedavg can aggregate them")
        #: central DP (FedAvg only): Gaussian noise of std dp_noise * clip on the sum of the clipped updates
        self.dp_noise, self.dp_delta = dp_noise, dp_delta
        self.epsilon: float | None = None
        self.did = node.did
        self.task, self.tflite = task, tflite_sha256
        self.weights = np.asarray(weights, dtype=np.float32)
        self.model = model_id(tflite_sha256, self.weights)
        self.model_proof: dict[str, Any] | None = None
        self.round_seconds, self.pause_seconds = round_seconds, pause_seconds
        self.min_clients, self.max_clients = min_clients, max_clients
        self.clip, self.aggregator, self.rounds = clip, aggregator, rounds
        self.current: _Round | None = None
        self.history: list[dict[str, Any]] = []
        self.counters = {"updates": 0, "rejected": 0, "rounds": 0}
        self._arrived = asyncio.Event()
        dispatcher.on(topics.MessageKind.FL_UPDATE, self._on_update)

    async def run(self) -> None:
        await self.client.subscribe(topics.kind_filter(topics.MessageKind.FL_UPDATE, self.client.cell))
        if not self.node.app.model_committed(self.model):
            raise LedgerError(f"FL: the starting model {self.model.hex()[:16]} is not committed (genesis models)")
        last = self.node.app.fl_status(self.task)
        number = last["round"]
        while self.rounds is None or self.counters["rounds"] < self.rounds:
            number += 1
            await self._round(number)
            await self.clock.sleep(self.pause_seconds)

    async def _commit_tx(self, tx: bytes) -> tuple[int, InclusionProof]:
        """Submit ``tx`` to our node's mempool, wait until it is committed; its (height, proof)."""
        res = self.node.submit_tx(tx)
        if res.status.value not in ("added", "duplicate", "committed"):
            raise LedgerError(f"FL: the ledger refused our transaction: {res.reason}")
        await self.client.publish(topics.tx(self.client.cell), tx)  # to the other RSUs' mempools
        tid = tx_id(tx)
        while (where := self.node.app.receipt_location(tid)) is None:
            await self.clock.sleep(0.1)
        block, _ = await self.node.stored(where[0])
        _, proof = tx_receipt(block, where[1])
        return where[0], proof

    async def _round(self, number: int) -> None:
        deadline = self.clock.time() + self.round_seconds
        tx = build_fl_round(
            self.key,
            self.did,
            chain_id=self.node.genesis.chain_id,
            round=number,
            task=self.task,
            base=self.model,
            deadline_ms=int(deadline * 1000),
            config={
                "clip": self.clip,
                "aggregator": self.aggregator,
                "min_clients": self.min_clients,
                "secagg": int(self.secagg),
            },
        )
        height, proof = await self._commit_tx(tx)
        rnd = _Round(number, self.model, self.weights.copy(), tx, deadline)
        self.current = rnd
        round_proof = _proof_item(tx, height, proof)
        await self._publish_state(round_proof=round_proof)
        log.info("fl: round %d of %s open until %.0f (base %s)", number, self.task, deadline, self.model.hex()[:12])
        if self.secagg:
            mean = await self._collect_secagg(rnd, round_proof)
        else:
            await self._collect(rnd, rnd.deadline, lambda: len(rnd.updates) >= self.max_clients)
            mean = None
        self.current = None
        accepted = rnd.updates
        if mean is not None:
            new = self.weights + mean
        elif len(accepted) < self.min_clients:
            log.warning(
                "fl: round %d: %d updates, fewer than %d: the model stays", number, len(accepted), self.min_clients
            )
            new = self.weights
        else:
            new = self.weights + self._aggregate(accepted, rnd.rejected)
        new_id = model_id(self.tflite, new)
        result = build_fl_result(
            self.key,
            self.did,
            chain_id=self.node.genesis.chain_id,
            round=number,
            task=self.task,
            base=rnd.base,
            model=new_id,
            participants=sorted(accepted),
            rejected=sorted(rnd.rejected.items()),
            aggregator=self.aggregator + ("+secagg" if self.secagg else "") + ("+dp" if self.dp_noise > 0 else ""),
            epsilon=self.epsilon if self.dp_noise > 0 and len(accepted) >= self.min_clients else None,
        )
        height, proof = await self._commit_tx(result)
        self.weights, self.model = new.astype(np.float32), new_id
        self.model_proof = _proof_item(result, height, proof)
        self.counters["rounds"] += 1
        self.history.append(
            {"round": number, "model": new_id.hex(), "participants": len(accepted), "rejected": dict(rnd.rejected)}
        )
        await self._publish_state(round_proof=None)
        log.info(
            "fl: round %d committed model %s (%d updates, %d rejected)",
            number,
            new_id.hex()[:12],
            len(accepted),
            len(rnd.rejected),
        )

    async def _collect(self, rnd: _Round, until: float, enough: Callable[[], bool]) -> None:
        while self.clock.time() < until and not enough():
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.05, until - self.clock.time()))
            except TimeoutError:
                pass

    def _secagg_params(self, number: int, dim: int) -> Any:
        from models.fl.secagg import SecAggParams

        session = hashlib.sha256(f"{self.node.genesis.chain_id}|{self.task}|{number}".encode()).digest()
        return SecAggParams(dim=dim, clip=self.clip, min_survivors=self.min_clients, session=session)

    async def _collect_secagg(self, rnd: _Round, round_proof: dict[str, Any]) -> np.ndarray | None:
        """Secure aggregation (``models.fl.secagg``): joins with X25519 keys during the first
        third of the round, masked inputs until the deadline, then the survivors' unmask answers;
        the sum of the survivors' clipped updates is all the RSU learns. ``rnd.updates`` gets the
        survivors with zero vectors (their count only) for the participants list."""
        from ledger_lite.keys import KeyAgreementKey
        from models.fl.secagg import SecAggError, SecAggServer

        start = self.clock.time()
        join_until = start + (rnd.deadline - start) / 3
        rnd.phase = "join"
        await self._collect(rnd, join_until, lambda: len(rnd.joined) >= self.max_clients)
        if len(rnd.joined) < self.min_clients:
            log.warning(
                "fl: round %d: %d joined secure aggregation, below %d", rnd.number, len(rnd.joined), self.min_clients
            )
            return None
        server = SecAggServer(self._secagg_params(rnd.number, rnd.base_weights.size))
        for _did, (cid, pub) in sorted(rnd.joined.items()):
            server.register(cid, KeyAgreementKey.from_raw("X25519", pub))
        rnd.server, rnd.phase = server, "masked"
        peers = [[cid, did, pub] for did, (cid, pub) in sorted(rnd.joined.items())]
        await self._publish_state(round_proof=round_proof, secagg={"phase": "masked", "peers": peers})
        await self._collect(rnd, rnd.deadline, lambda: len(server._inputs) >= len(rnd.joined))
        try:
            survivors = server.close_inputs()
        except SecAggError as err:
            log.warning("fl: round %d: %s", rnd.number, err)
            return None
        by_id = {cid: did for did, (cid, _) in rnd.joined.items()}
        for did, (cid, _) in rnd.joined.items():
            if cid not in survivors:
                rnd.rejected[did] = "joined but sent no masked input (dropped; its masks were recovered)"
        rnd.phase = "unmask"
        await self._publish_state(round_proof=round_proof, secagg={"phase": "unmask", "survivors": list(survivors)})
        await self._collect(
            rnd, self.clock.time() + max(2.0, self.round_seconds / 3), lambda: set(survivors) <= set(rnd.unmasked)
        )
        try:
            result = server.aggregate(rnd.unmasked)
        except SecAggError as err:
            log.warning("fl: round %d: secure aggregation failed: %s", rnd.number, err)
            return None
        for cid in result.survivors:
            rnd.updates[by_id[cid]] = (1, np.zeros(0, np.float32))
        total = np.asarray(result.sum, dtype=np.float64)
        n = len(result.survivors)
        if self.dp_noise > 0:  # central DP on the securely aggregated sum
            from models.fl import dp

            total = total + np.random.default_rng().normal(0.0, self.dp_noise * self.clip, size=total.shape)
            self.epsilon = dp.rdp_epsilon(self.dp_noise, self.counters["rounds"] + 1, self.dp_delta)[0]
            n = max(n, self.min_clients)
        return np.asarray(total / n, dtype=np.float32)

    def _aggregate(self, accepted: dict[str, tuple[int, np.ndarray]], rejected: dict[str, str]) -> np.ndarray:
        """Combine the round's updates with the configured aggregator (``models.fl.aggregate``);
        clients an aggregator leaves out (Krum's outliers, invalid vectors) go to ``rejected``
        with its reason, and from there into the result transaction."""
        from models.fl import aggregate as agg

        dids = sorted(accepted)
        updates = [accepted[d][1] for d in dids]
        counts = [float(accepted[d][0]) for d in dids]
        f = max(0, (len(dids) - 3) // 2)  # Byzantine clients tolerated by Krum: n >= 2f + 3
        if self.dp_noise > 0:  # central DP: clipped sum + Gaussian noise, mean over the public count
            from models.fl import dp

            noisy = dp.dp_aggregate(updates, self.clip, self.dp_noise, n_expected=max(len(dids), self.min_clients))
            done = self.counters["rounds"] + 1
            self.epsilon = dp.rdp_epsilon(self.dp_noise, done, self.dp_delta)[0]
            return np.asarray(noisy.aggregate, dtype=np.float32)
        if self.aggregator == "coordinate_median":
            res = agg.coordinate_median(updates)
        elif self.aggregator == "trimmed_mean":
            res = agg.trimmed_mean(updates, beta=0.2)
        elif self.aggregator == "multi_krum" and f > 0:
            res = agg.multi_krum(updates, f)
        else:
            res = agg.fedavg(updates, counts)
        for index, reason in res.rejected.items():
            rejected[dids[index]] = f"{res.method}: {reason}"
        return np.asarray(res.aggregate, dtype=np.float32)

    async def _publish_state(self, *, round_proof: dict[str, Any] | None, secagg: dict[str, Any] | None = None) -> None:
        state: dict[str, Any] = {
            "task": self.task,
            "model": {
                "id": self.model,
                "tflite": self.tflite,
                "weights": self.weights.astype("<f4").tobytes(),
                "proof": self.model_proof,
            },
            "round": round_proof,
        }
        if secagg is not None:
            state["secagg"] = secagg
        await self.client.publish(topics.fl_model(self.client.cell), _signed(self.key, self.did, state))

    def _on_update(self, topic: topics.Topic, msg: Message) -> None:
        rnd = self.current
        if topic.cell != self.client.cell or rnd is None:
            return
        try:
            did, body = _open_signed(msg.payload)
            if body.get("task") != self.task or body.get("round") != rnd.number or body.get("base") != rnd.base:
                raise MalformedError(f"update for {body.get('task')}/{body.get('round')}, not this round")
            if self.secagg:
                self._on_secagg(rnd, did, body)
                self._arrived.set()
                return
            delta = _f32(body.get("update"), "update")
            n = body.get("n")
            if not isinstance(n, int) or n < 1:
                raise MalformedError("update: n must be a positive integer")
        except LedgerError as err:
            self.counters["rejected"] += 1
            log.info("fl: update on %s refused: %s", topic.path, err)
            return
        if self.clock.time() > rnd.deadline:
            rnd.rejected[did] = "late"
        elif delta.shape != rnd.base_weights.shape:
            rnd.rejected[did] = f"size {delta.size}, the model has {rnd.base_weights.size}"
        elif not np.all(np.isfinite(delta)):
            rnd.rejected[did] = "not finite"
        else:
            norm = float(np.linalg.norm(delta))
            if norm > self.clip:  # norm bounding: scale down to the round's clip
                delta = delta * (self.clip / norm)
            rnd.updates[did] = (n, delta)
            rnd.rejected.pop(did, None)
            self.counters["updates"] += 1
        self._arrived.set()

    def _on_secagg(self, rnd: _Round, did: str, body: dict[str, Any]) -> None:
        from models.fl.secagg import SecAggError, UnmaskResponse

        kind = body.get("type")
        if kind == "join" and rnd.phase == "join":
            pub = body.get("x25519")
            if not isinstance(pub, bytes) or len(pub) != 32:
                raise MalformedError("join: x25519 must be a 32-byte public key")
            if did not in rnd.joined:
                rnd.joined[did] = (len(rnd.joined) + 1, pub)
        elif kind == "masked" and rnd.phase == "masked" and did in rnd.joined:
            y = body.get("masked")
            if not isinstance(y, bytes) or len(y) != 4 * rnd.base_weights.size:
                raise MalformedError("masked: expected uint32 bytes of the model's size")
            try:
                rnd.server.submit(rnd.joined[did][0], np.frombuffer(y, dtype="<u4").astype(np.uint32))
            except SecAggError as err:
                raise MalformedError(f"masked: {err}") from err
        elif kind == "unmask" and rnd.phase == "unmask" and did in rnd.joined:
            seeds = body.get("pairs")
            own = body.get("self")
            if not isinstance(seeds, dict) or not all(
                isinstance(k, int) and isinstance(v, bytes) for k, v in seeds.items()
            ):
                raise MalformedError("unmask: pairs must map client ids to seeds")
            cid = rnd.joined[did][0]
            rnd.unmasked[cid] = UnmaskResponse(cid, dict(seeds), own if isinstance(own, bytes) else None)
        else:
            raise MalformedError(f"{kind!r} message in phase {rnd.phase}")

    def status(self) -> dict[str, Any]:
        return {
            "role": "coordinator",
            "task": self.task,
            "model": self.model.hex(),
            "round": None if self.current is None else self.current.number,
            "updates_this_round": 0 if self.current is None else len(self.current.updates),
            "history": self.history[-5:],
            "dp": None
            if self.dp_noise <= 0
            else {"noise_multiplier": self.dp_noise, "delta": self.dp_delta, "campaign_epsilon": self.epsilon},
            **self.counters,
        }


# --------------------------------------------------------------------------------------------
# OBU: the client


class FlClient:
    """An OBU's side: follows the cell's FL state, loads only committed models (checked with the
    light client of the cell), trains for open rounds on local windows and sends clipped updates."""

    def __init__(
        self,
        *,
        client: MqttClient,
        dispatcher: Dispatcher,
        key: SigningKey,
        did: str,
        clock: Clock,
        task: str,
        trainer: Trainer,
        tflite_sha256: bytes,
        light: Callable[[], LightClient | None],
        genesis_models: tuple[bytes, ...],
        data: Callable[[], tuple[np.ndarray, np.ndarray]],
        min_samples: int = 32,
        epochs: int = 2,
        batch: int = 32,
        clip: float = 1.0,
    ) -> None:
        self.client, self.key, self.did, self.clock = client, key, did, clock
        self.task, self.trainer, self.tflite = task, trainer, tflite_sha256
        self.light, self.genesis_models = light, genesis_models
        self.data = data
        self.min_samples, self.epochs, self.batch, self.clip = min_samples, epochs, batch, clip
        self.model: bytes | None = None
        self.rounds_done: set[int] = set()
        self.last_update: dict[str, Any] | None = None
        self.refused: dict[str, int] = {}
        self._states: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        #: called (in a worker thread) with the weights of each committed model loaded
        self.model_listeners: list[Callable[[np.ndarray], None]] = []
        self._secagg: dict[str, Any] | None = None
        #: tests: join secure-aggregation rounds and then go silent (a vehicle leaving the cell)
        self.fail_after_join = False
        dispatcher.on(topics.MessageKind.FL_MODEL, self._on_state)

    def _on_state(self, topic: topics.Topic, msg: Message) -> None:
        if topic.cell == self.client.cell and msg.payload:
            if self._states.full():
                self._states.get_nowait()  # only the newest state matters
            self._states.put_nowait(msg.payload)

    def _refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1
        log.warning("fl: %s", why)

    async def run(self) -> None:
        await self.client.subscribe(topics.fl_model(self.client.cell).path)
        while True:
            payload = await self._states.get()
            try:
                await self.handle_state(payload)
            except LedgerError as err:
                self._refuse(f"state refused: {err}")

    def _included(self, item: Any) -> bytes:
        """The tx of a proof item, once the light client shows it is in a verified block."""
        tx, height, proof = _proof_from(item)
        light = self.light()
        if light is None:
            raise LedgerError("no light client for this cell yet")
        light.verify_receipt(tx, height, proof)  # raises for an unverified height or a bad path
        return tx

    async def handle_state(self, payload: bytes) -> None:
        _signer, state = _open_signed(payload)
        if state.get("task") != self.task:
            return
        m = state.get("model")
        if not isinstance(m, dict):
            raise MalformedError("FL state: model missing")
        weights = _f32(m.get("weights"), "model.weights")
        mid = model_id(self.tflite, weights)
        if m.get("tflite") != self.tflite or m.get("id") != mid:
            self._refuse("a model that is not this architecture's or whose id does not match its weights")
            return
        if m.get("proof") is None:
            committed = mid in self.genesis_models
        else:
            tx = await self._wait_included(m["proof"])
            committed = tx is not None and decode_fl_result(tx).model == mid
        if not committed:
            self._refuse(f"model {mid.hex()[:16]} is not committed on the ledger: not loaded")
            return
        if mid != self.model:
            await asyncio.to_thread(self.trainer.set_weights, weights)
            self.model = mid
            for listener in self.model_listeners:  # e.g. the behaviour detector's own copy
                await asyncio.to_thread(listener, weights)
            log.info("fl: loaded committed model %s", mid.hex()[:16])
        r = state.get("round")
        if r is None:
            return
        tx = await self._wait_included(r)
        if tx is None:
            self._refuse("an FL round that is not on the ledger: not trained")
            return
        rnd = decode_fl_round(tx)
        if rnd.task != self.task or rnd.base != self.model:
            return
        if rnd.config.get("secagg"):
            await self._secagg_step(rnd, weights, state.get("secagg"))
            return
        if rnd.round in self.rounds_done or self.clock.time() * 1000 > rnd.deadline_ms:
            return
        await self._train_and_send(rnd.round, weights, float(rnd.config.get("clip", self.clip)))

    async def _secagg_step(self, rnd: Any, base: np.ndarray, phase: Any) -> None:
        """One step of a secure-aggregation round, driven by the RSU's state: join with a fresh
        X25519 key (after training locally), then the masked input, then the unmask answer."""
        from ledger_lite.keys import KeyAgreementKey, KeyAgreementPrivateKey
        from models.fl.secagg import SecAggClient, SecAggError, SecAggParams

        sa = self._secagg if self._secagg is not None and self._secagg["round"] == rnd.round else None
        clip = float(rnd.config.get("clip", self.clip))
        if phase is None:  # the join phase
            if sa is not None or rnd.round in self.rounds_done or self.clock.time() * 1000 > rnd.deadline_ms:
                return
            trained = await self._train(rnd.round, base, clip)
            if trained is None:
                return
            delta, n = trained
            key = KeyAgreementPrivateKey.generate()
            self._secagg = {"round": rnd.round, "key": key, "delta": delta, "n": n, "client": None, "done": set()}
            await self._send({"type": "join", "round": rnd.round, "x25519": key.public.raw(), "n": n})
            return
        if sa is None or not isinstance(phase, dict):
            return
        session = hashlib.sha256(f"{rnd.chain_id}|{rnd.task}|{rnd.round}".encode()).digest()
        try:
            if phase.get("phase") == "masked" and "masked" not in sa["done"]:
                peers = {int(cid): KeyAgreementKey.from_raw("X25519", pub) for cid, _did, pub in phase["peers"]}
                mine = [int(cid) for cid, did, _pub in phase["peers"] if did == self.did]
                if not mine:
                    return
                params = SecAggParams(dim=sa["delta"].size, clip=clip, min_survivors=2, session=session)
                client = SecAggClient(mine[0], params, sa["key"])
                masked = client.masked_input(sa["delta"], peers)
                sa["client"] = client
                sa["done"].add("masked")
                if self.fail_after_join:
                    return  # (tests) a vehicle that leaves the cell after joining
                await self._send({"type": "masked", "round": rnd.round, "masked": masked.astype("<u4").tobytes()})
            elif phase.get("phase") == "unmask" and "unmask" not in sa["done"] and sa["client"] is not None:
                if self.fail_after_join:
                    return
                answer = sa["client"].unmask_response([int(c) for c in phase["survivors"]])
                sa["done"].add("unmask")
                pairs = {int(j): seed for j, seed in answer.pair_seeds.items()}
                await self._send({"type": "unmask", "round": rnd.round, "pairs": pairs, "self": answer.self_seed})
                self.rounds_done.add(rnd.round)
        except (SecAggError, KeyError, TypeError, ValueError) as err:
            self._refuse(f"secure aggregation round {rnd.round}: {err}")

    async def _send(self, body: dict[str, Any]) -> None:
        body = {"task": self.task, "base": self.model, **body}
        topic = topics.fl_update(self.client.cell, self.client.node_id)
        await self.client.publish(topic, _signed(self.key, self.did, body))

    async def _train(self, number: int, base: np.ndarray, clip: float) -> tuple[np.ndarray, int] | None:
        """Local training from ``base``: the clipped weights delta and the sample count, or None
        without enough local windows. The committed model stays loaded afterwards."""
        x, y = self.data()
        if len(x) < self.min_samples:
            log.info("fl: round %d: %d local windows, %d needed: not taking part", number, len(x), self.min_samples)
            return None
        loss = await asyncio.to_thread(self._train_epochs, x, y)
        new = await asyncio.to_thread(self.trainer.get_weights)
        await asyncio.to_thread(self.trainer.set_weights, base)
        delta = np.asarray(new, dtype=np.float32) - base
        norm = float(np.linalg.norm(delta))
        if norm > clip:
            delta *= clip / norm
        self.last_update = {
            "round": number,
            "samples": int(len(x)),
            "loss": round(loss, 4),
            "norm": round(min(norm, clip), 4),
            "clipped": norm > clip,
            "at": self.clock.time(),
        }
        return delta, int(len(x))

    async def _wait_included(self, item: Any, limit: float = 10.0) -> bytes | None:
        """The light client may not have the block yet: retry for up to ``limit`` seconds."""
        deadline = self.clock.monotonic() + limit
        while True:
            try:
                return self._included(item)
            except LedgerError as err:
                if self.clock.monotonic() > deadline:
                    log.info("fl: proof not verifiable: %s", err)
                    return None
            await self.clock.sleep(0.2)

    async def _train_and_send(self, number: int, base: np.ndarray, clip: float) -> None:
        x, y = self.data()
        if len(x) < self.min_samples:
            log.info("fl: round %d: %d local windows, %d needed: not taking part", number, len(x), self.min_samples)
            return
        started = time.perf_counter()
        loss = await asyncio.to_thread(self._train_epochs, x, y)
        new = await asyncio.to_thread(self.trainer.get_weights)
        delta = np.asarray(new, dtype=np.float32) - base
        norm = float(np.linalg.norm(delta))
        if norm > clip:
            delta *= clip / norm
        await asyncio.to_thread(self.trainer.set_weights, base)  # keep the committed model loaded
        body = {
            "task": self.task,
            "round": number,
            "base": self.model,
            "n": int(len(x)),
            "update": delta.astype("<f4").tobytes(),
        }
        assert self.model is not None
        await self.client.publish(
            topics.fl_update(self.client.cell, self.client.node_id), _signed(self.key, self.did, body)
        )
        self.rounds_done.add(number)
        self.last_update = {
            "round": number,
            "samples": int(len(x)),
            "loss": round(loss, 4),
            "norm": round(min(norm, clip), 4),
            "clipped": norm > clip,
            "seconds": round(time.perf_counter() - started, 3),
            "at": self.clock.time(),
        }
        log.info("fl: round %d: sent an update from %d windows (loss %.3f)", number, len(x), loss)

    def _train_epochs(self, x: np.ndarray, y: np.ndarray) -> float:
        rng = np.random.default_rng(len(x))
        loss = 0.0
        for _ in range(self.epochs):
            order = rng.permutation(len(x))
            for i in range(0, len(order), self.batch):  # the last batch may be short (the trainer pads)
                idx = order[i : i + self.batch]
                loss = float(self.trainer.train_step(x[idx].astype(np.float32), y[idx].astype(np.int32)))
        return loss

    def status(self) -> dict[str, Any]:
        x, _ = self.data()
        return {
            "role": "client",
            "task": self.task,
            "model": None if self.model is None else self.model.hex(),
            "local_windows": int(len(x)),
            "rounds_done": sorted(self.rounds_done)[-10:],
            "last_update": self.last_update,
            "refused": dict(self.refused),
            "latency": _latency(self.trainer),
        }


def _latency(trainer: Any) -> dict[str, Any] | None:
    """The trainer's inference / training latencies (``TfliteModel.latency()``), in microseconds."""
    get = getattr(trainer, "latency", None)
    if get is None:
        return None
    lat = get()
    return {
        "infer_p50_us": round(lat.infer_p50 * 1e6, 1),
        "infer_p99_us": round(lat.infer_p99 * 1e6, 1),
        "train_p50_us": round(lat.train_p50 * 1e6, 1),
        "train_p99_us": round(lat.train_p99 * 1e6, 1),
        "train_steps": lat.train_count,
    }


# --------------------------------------------------------------------------------------------
# OBU: labelled local windows


class LocalWindows:
    """A ``StateSink`` turning the OBU's 10 Hz ``VehicleState`` into labelled training windows:
    every ``models.features.HOP_S`` a window of the last ``WINDOW_S`` seconds -> the model's 16
    features. Labels come from the rules the model was trained with (``models.dataset``): a
    window whose strongest sample passes 0.35 g is a harsh brake / acceleration / corner by its
    larger axis, otherwise normal. Weaving is never labelled locally (no rule sees it; a
    confirmed-event channel would). At most ``max_windows`` recent windows are kept."""

    def __init__(self, *, max_windows: int = 2000) -> None:
        from models.features import HOP_S, WINDOW_S

        self.window, self.hop = WINDOW_S, HOP_S
        self.max_windows = max_windows
        self._states: list[Any] = []
        self._x: list[np.ndarray] = []
        self._y: list[int] = []
        self._next_at: float | None = None

    def __call__(self, s: Any) -> None:
        from models.dataset import HARSH_G
        from models.features import CLASSES, window_features

        self._states.append(s)
        t = s.monotonic
        while self._states and self._states[0].monotonic < t - self.window - 1.0:
            self._states.pop(0)
        if self._next_at is None:
            self._next_at = t + self.window
        if t < self._next_at:
            return
        self._next_at = t + self.hop
        win = [x for x in self._states if x.monotonic >= t - self.window]
        ax = np.array([x.accel_longitudinal if x.accel_longitudinal is not None else 0.0 for x in win])
        ay = np.array([x.accel_lateral if x.accel_lateral is not None else 0.0 for x in win])
        if not len(win) or all(x.speed is None for x in win):
            return
        mag = np.hypot(ax, ay)
        label = CLASSES.index("normal")
        if mag.size and mag.max() >= HARSH_G * 9.80665:
            i = int(np.argmax(mag))
            if abs(ax[i]) >= abs(ay[i]):
                label = CLASSES.index("harsh_brake" if ax[i] < 0 else "harsh_accel")
            else:
                label = CLASSES.index("harsh_corner")
        self._x.append(window_features(win))
        self._y.append(label)
        if len(self._x) > self.max_windows:
            del self._x[0], self._y[0]

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._x:
            return np.zeros((0, 16), np.float32), np.zeros(0, np.int32)
        return np.stack(self._x).astype(np.float32), np.asarray(self._y, dtype=np.int32)


def initial_model(manifest_path: str = "") -> tuple[Any, bytes, np.ndarray]:
    """(TfliteModel, .tflite SHA-256, its shipped weights) of the configured or shipped model;
    the manifest's hash is checked (a mismatch raises ``models.manifest.ModelHashMismatch``)."""
    from pathlib import Path

    from models.manifest import default_manifest, load_model
    from models.tflite_model import TfliteModel

    manifest, path = load_model(Path(manifest_path) if manifest_path else default_manifest("dbm"))
    model = TfliteModel(path)
    return model, bytes.fromhex(manifest.sha256), model.get_weights()
