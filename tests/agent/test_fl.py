"""Federated learning over a real Mosquitto: an RSU (a one-validator ledger node, real block store
and WAL) coordinates rounds on the ledger; OBUs (their own MQTT clients, light clients of the
cell fed by block announcements) train a stand-in numpy model on local non-IID data, send
clipped updates, and load only models committed on the ledger. The real TFLite model plugs into
the same ``Trainer`` interface (tests/test_models_*.py; the process test in
tests/integration/test_fl_processes.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import topics
from agent.config import MqttConfig
from agent.fl import FlClient, FlCoordinator, _signed, model_id
from agent.ledger_node import LedgerNode, LedgerNodeConfig, MqttTransport
from agent.mqtt import Dispatcher, MqttClient
from agent.outbox import AsyncOutbox
from agent.receipts import ReceiptService
from drivers.clock import SystemClock
from ledger_lite import consensus as C
from ledger_lite.didkey import did_key
from ledger_lite.genesis import make_test_genesis
from ledger_lite.keys import SigningKey
from ledger_lite.txs import decode_fl_result
from tests.mqtt_broker import Broker

TFLITE = hashlib.sha256(b"numpy stand-in of the 16-5 softmax model").digest()
F, K = 16, 5


class SoftmaxModel:
    """A stand-in ``Trainer``: multinomial logistic regression, SGD on softmax cross-entropy."""

    def __init__(self, lr: float = 0.1) -> None:
        self.w = np.zeros(F * K + K, dtype=np.float32)
        self.lr = lr

    def get_weights(self) -> np.ndarray:
        return self.w.copy()

    def set_weights(self, w: np.ndarray) -> None:
        self.w = np.asarray(w, dtype=np.float32).copy()

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        return self.w[: F * K].reshape(F, K), self.w[F * K :]

    def logits(self, x: np.ndarray) -> np.ndarray:
        a, b = self._split()
        return np.asarray(x @ a + b)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        z = self.logits(x)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-9).mean())
        p[np.arange(len(y)), y] -= 1.0
        grad_a = x.T @ p / len(y)
        grad_b = p.mean(axis=0)
        self.w -= self.lr * np.concatenate([grad_a.ravel(), grad_b]).astype(np.float32)
        return loss

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.logits(x).argmax(axis=1) == y).mean())


def make_data(seed: int, n: int, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional Gaussians (the same centres for everyone); each client sees only some
    classes (non-IID label skew)."""
    centres = np.random.default_rng(0).normal(0, 2.0, size=(K, F))
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n)
    x = centres[y] + rng.normal(0, 1.0, size=(n, F))
    return x.astype(np.float32), y.astype(np.int32)


async def _until(pred: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["plain", "dp", "secagg"])
async def test_three_rounds_over_the_broker_commit_models_and_obus_load_only_committed_ones(
    tmp_path: Path, mosquitto: Broker, mode: str
) -> None:
    """Plain FedAvg; FedAvg + central DP; FedAvg under secure aggregation with one vehicle that
    joins every round and then drops out (its pairwise masks are recovered)."""
    dp_noise = 0.05 if mode == "dp" else 0.0
    w0 = np.zeros(F * K + K, dtype=np.float32)
    genesis, keys, _authority = make_test_genesis(
        1, chain_id="fl-cell", genesis_time_ms=int(time.time() * 1000) - 60_000
    )
    genesis = dataclasses.replace(genesis, models=(model_id(TFLITE, w0),))
    clock = SystemClock()
    tasks: list[asyncio.Task[Any]] = []

    def mqtt(node: str) -> tuple[MqttClient, Dispatcher]:
        c = MqttClient(MqttConfig(enabled=True, port=mosquitto.port, cell="fl-cell"), node_id=node, clock=clock)
        d = Dispatcher(c)
        tasks.extend([asyncio.create_task(c.run()), asyncio.create_task(d.run())])
        return c, d

    rsu_key = keys[0]
    rsu_client, rsu_disp = mqtt("rsu0")
    transport = MqttTransport(rsu_client, rsu_disp)
    node = LedgerNode(
        LedgerNodeConfig(
            data_dir=tmp_path / "rsu0",
            block_interval=0.1,
            timeouts=C.TimeoutConfig(propose=(1.0, 0.5), prevote=(0.5, 0.2), precommit=(0.5, 0.2)),
        ),
        genesis,
        rsu_key,
        did_key(rsu_key.public),
        transport,
        clock=clock,
    )
    coordinator = FlCoordinator(
        node=node,
        client=rsu_client,
        dispatcher=rsu_disp,
        key=rsu_key,
        clock=clock,
        task="dbm",
        tflite_sha256=TFLITE,
        weights=w0,
        round_seconds=3.0,
        pause_seconds=0.5,
        min_clients=3,
        max_clients=5,
        clip=5.0,
        rounds=3,
        dp_noise=dp_noise,
        secagg=mode == "secagg",
    )
    obus: list[FlClient] = []
    models: list[SoftmaxModel] = []
    try:
        await rsu_client.wait_connected(5)
        await transport.subscribe()
        await node.start()
        tasks.append(asyncio.create_task(node.run()))
        for i in range(5):
            key = SigningKey.from_private_bytes("Ed25519", bytes([40 + i]) * 32)
            c, d = mqtt(f"obu{i}")
            await c.wait_connected(5)
            outbox = await AsyncOutbox.open(tmp_path / f"obu{i}.db", budget_bytes=1 << 20, clock=clock)
            light_t = MqttTransport(c, d, receipt_tag=topics.issuer_tag(did_key(key.public)))
            await light_t.subscribe()
            follower = ReceiptService(
                cell="fl-cell",
                genesis=genesis,
                outbox=outbox,
                transport=light_t,
                clock=clock,
                key=key,
                did=did_key(key.public),
            )
            tasks.append(asyncio.create_task(follower.run()))
            data = make_data(100 + i, 200, [i % K, (i + 1) % K, (i + 2) % K])
            model = SoftmaxModel()
            models.append(model)
            client = FlClient(
                client=c,
                dispatcher=d,
                key=key,
                did=did_key(key.public),
                clock=clock,
                task="dbm",
                trainer=model,
                tflite_sha256=TFLITE,
                light=lambda f=follower: f.client,  # type: ignore[misc]
                genesis_models=genesis.models,
                data=lambda data=data: data,  # type: ignore[misc]
                epochs=3,
                clip=5.0,
            )
            client.fail_after_join = mode == "secagg" and i == 4
            obus.append(client)
            tasks.append(asyncio.create_task(client.run()))
        run = asyncio.create_task(coordinator.run())
        await asyncio.wait_for(run, 60)
        # the ledger has three rounds, each with its result; the final model is committed
        st = node.app.fl_status("dbm")
        assert st["round"] == 3 and not st["open"] and st["model"] == coordinator.model.hex()
        assert all(h["participants"] >= 3 for h in coordinator.history)
        await _until(lambda: all(c.model == coordinator.model for c in obus), 15, "every OBU loads the last model")
        x_test, y_test = make_data(999, 2000, list(range(K)))
        trained = SoftmaxModel()
        trained.set_weights(models[0].get_weights())
        assert trained.accuracy(x_test, y_test) > 0.6  # learnt all classes though each OBU saw three
        assert all(c.last_update is not None and c.last_update["round"] == 3 for c in obus[:4])
        result = decode_fl_result(coordinator.model_proof["tx"])  # type: ignore[index]
        if mode == "dp":  # central DP: the campaign's epsilon is on the ledger with the result
            assert result.aggregator == "fedavg+dp" and result.epsilon == coordinator.epsilon
            assert coordinator.epsilon is not None and 10 < coordinator.epsilon < float("inf")
        elif mode == "secagg":  # only the sum was seen; the dropped vehicle is named with why
            assert result.aggregator == "fedavg+secagg" and len(result.participants) == 4
            dropped = did_key(SigningKey.from_private_bytes("Ed25519", bytes([44]) * 32).public)
            assert [d for d, _ in result.rejected] == [dropped] and "dropped" in result.rejected[0][1]
        else:
            assert result.aggregator == "fedavg" and result.epsilon is None
        # a model that is not on the ledger is refused, whoever signs it
        forged_w = (coordinator.weights + 1.0).astype(np.float32)
        forged = {
            "task": "dbm",
            "model": {
                "id": model_id(TFLITE, forged_w),
                "tflite": TFLITE,
                "weights": forged_w.astype("<f4").tobytes(),
                "proof": None,
            },
            "round": None,
        }
        before = obus[0].model
        await rsu_client.publish(topics.fl_model("fl-cell"), _signed(rsu_key, did_key(rsu_key.public), forged))
        await _until(lambda: sum(obus[0].refused.values()) >= 1, 10, "the forged model refused")
        assert obus[0].model == before and np.allclose(models[0].get_weights(), coordinator.weights)
        assert "not committed" in next(iter(obus[0].refused))
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        node.close()
