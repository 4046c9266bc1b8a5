"""models.fl.secagg: the unmasked sum equals the plain sum, masked inputs look uniform, dropouts recover."""

from __future__ import annotations

import numpy as np
import pytest

from models.fl.secagg import (
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggServer,
    dequantize,
    prg,
    quantize,
)


def _setup(n: int, params: SecAggParams) -> tuple[SecAggServer, list[SecAggClient]]:
    server = SecAggServer(params)
    clients = [SecAggClient(i, params) for i in range(n)]
    for c in clients:
        server.register(c.client_id, c.public_key)
    return server, clients


def _round(
    n: int, params: SecAggParams, updates: np.ndarray, drop: set[int]
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...], list[np.ndarray]]:
    server, clients = _setup(n, params)
    keys = server.public_keys()
    sent = []
    for c in clients:
        y = c.masked_input(updates[c.client_id], keys)
        sent.append(y)
        if c.client_id not in drop:  # a dropped client computed its input but it never arrived
            server.submit(c.client_id, y)
    survivors = server.close_inputs()
    responses = {i: clients[i].unmask_response(survivors) for i in survivors}
    res = server.aggregate(responses)
    return res.sum, res.survivors, res.dropped, sent


@pytest.mark.parametrize("self_mask", [True, False])
def test_sum_equals_plain_sum(self_mask: bool) -> None:
    rng = np.random.default_rng(0)
    n, d = 6, 50
    params = SecAggParams(dim=d, self_mask=self_mask, session=b"round-1")
    x = rng.uniform(-1, 1, (n, d))
    total, surv, dropped, _ = _round(n, params, x, set())
    assert surv == tuple(range(n)) and dropped == ()
    assert np.max(np.abs(total - x.sum(axis=0))) <= n * 0.5 / 2**params.scale_bits + 1e-12


@pytest.mark.parametrize("drop", [{0}, {2, 5}, {1, 3, 4}])
def test_dropouts_recovered(drop: set[int]) -> None:
    rng = np.random.default_rng(len(drop))
    n, d = 7, 33
    params = SecAggParams(dim=d, min_survivors=3)
    x = rng.uniform(-1, 1, (n, d))
    total, surv, dropped, _ = _round(n, params, x, drop)
    assert set(dropped) == drop
    keep = [i for i in range(n) if i not in drop]
    assert np.allclose(total, x[keep].sum(axis=0), atol=n / 2**params.scale_bits)


def test_masked_input_looks_uniform_and_hides_the_update() -> None:
    n, d = 5, 4000
    params = SecAggParams(dim=d)
    x = np.zeros((n, d))
    x[0] = 0.5  # a constant, very non-random update
    _, _, _, sent = _round(n, params, x, set())
    y = sent[0].astype(np.float64) / 2**32
    assert abs(y.mean() - 0.5) < 0.02  # uniform on [0, 1): mean 1/2, var 1/12
    assert abs(y.var() - 1 / 12) < 0.01
    counts, _ = np.histogram(y, bins=16, range=(0, 1))
    chi2 = float((((counts - d / 16) ** 2) / (d / 16)).sum())
    assert chi2 < 50  # 15 dof: p ~ 1e-5
    assert abs(np.corrcoef(y, np.arange(d))[0, 1]) < 0.1
    assert not np.any(sent[0] == quantize(x[0], params))  # nothing of the plain encoding shows through


def test_quantisation_round_trip_and_wraparound() -> None:
    params = SecAggParams(dim=4, scale_bits=8, clip=2.0)
    q = quantize([-1.5, 0.0, 1.25, 5.0], params)
    assert q.dtype == np.uint32 and q[0] == 2**32 - 384
    assert dequantize(q, params).tolist() == [-1.5, 0.0, 1.25, 2.0]  # 5.0 clipped to 2.0
    with pytest.raises(SecAggError):
        SecAggParams(dim=1, scale_bits=16, clip=1.0).check_capacity(2**15)


def test_prg_is_deterministic_and_seed_dependent() -> None:
    a = prg(b"\x01" * 32, 10)
    assert np.array_equal(a, prg(b"\x01" * 32, 10)) and not np.array_equal(a, prg(b"\x02" * 32, 10))


def test_protocol_refusals() -> None:
    params = SecAggParams(dim=3, min_survivors=3)
    server, clients = _setup(4, params)
    keys = server.public_keys()
    ys = [c.masked_input(np.zeros(3), keys) for c in clients]
    for i in (0, 1):
        server.submit(i, ys[i])
    with pytest.raises(SecAggError, match="only 2 inputs"):
        server.close_inputs()
    server.submit(2, ys[2])
    survivors = server.close_inputs()
    with pytest.raises(SecAggError, match="after the input phase"):
        server.submit(3, ys[3])  # late input of a dropped client is refused
    with pytest.raises(SecAggError, match="told it dropped"):
        clients[3].unmask_response(survivors)  # a dropped client reveals nothing
    clients[0].unmask_response(survivors)
    with pytest.raises(SecAggError, match="different survivor sets"):
        clients[0].unmask_response([0, 1, 2, 3])
    with pytest.raises(SecAggError, match="did not answer"):
        server.aggregate({1: clients[1].unmask_response(survivors)})


def test_late_dropped_input_stays_private_with_self_mask() -> None:
    """Even with the pairwise seeds of a dropped client revealed, its input minus them is still masked."""
    n, d = 4, 2000
    params = SecAggParams(dim=d)
    server, clients = _setup(n, params)
    keys = server.public_keys()
    ys = [c.masked_input(np.full(d, 0.25), keys) for c in clients]
    for i in range(3):
        server.submit(i, ys[i])
    survivors = server.close_inputs()
    responses = {i: clients[i].unmask_response(survivors) for i in survivors}
    stripped = ys[3].copy()
    for i in survivors:  # the server strips client 3's pairwise masks (3 > i: client 3 subtracted them)
        stripped += prg(responses[i].pair_seeds[3], d)
    assert not np.any(stripped == quantize(np.full(d, 0.25), params))
    assert abs(stripped.astype(np.float64).mean() / 2**32 - 0.5) < 0.03


def test_secagg_fedavg_equals_plain_fedavg_on_model_sized_updates() -> None:
    from models.fl.aggregate import fedavg

    rng = np.random.default_rng(7)
    n, d = 20, 1765  # the 16-32-32-5 MLP
    params = SecAggParams(dim=d, clip=1.0, session=b"campaign-1/round-3")
    x = rng.normal(0.0, 0.05, (n, d))
    total, surv, _, _ = _round(n, params, x, {4, 11})
    keep = [i for i in range(n) if i not in (4, 11)]
    assert np.allclose(total / len(surv), fedavg(list(x[keep])).aggregate, atol=1e-5)
