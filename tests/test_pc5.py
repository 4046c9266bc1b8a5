"""PC5 emulation: the radio model's delivery ratio follows the configured curve (seeded draws,
binomial bounds), range, latency and congestion; CAM generation rules; DENM relevance and
staleness; payload codecs and pseudonym-signed round trips."""

from __future__ import annotations

import math
import random

import pytest

from agent.pc5.messages import (
    CAUSE_DANGEROUS_SITUATION,
    CAUSE_STATIONARY_VEHICLE,
    SUB_EMERGENCY_BRAKE,
    Cam,
    CamGenerator,
    Denm,
    Verdict,
    WarningFilter,
    decode,
    open_signed,
    sign,
    timestamp_its,
)
from agent.pc5.radio import ChannelLoad, RadioModel, RadioParams, Reason, bearing_deg, distance_m
from hal.types import VehicleState
from ledger_lite import cbor, cose
from ledger_lite.errors import SchemaError, SignatureError, VerificationError
from ledger_lite.keys import KeyAgreementPrivateKey, SigningKey
from ledger_lite.pseudonym import (
    PseudonymAuthority,
    PseudonymCert,
    PseudonymIdentity,
    PseudonymManager,
    PseudonymPool,
    make_request,
)

ORIGIN = (48.137154, 11.576124)  # Munich
NOW = 1_750_000_000.0
M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180  # on the haversine sphere


def north_of(pos: tuple[float, float], metres: float) -> tuple[float, float]:
    return (pos[0] + metres / M_PER_DEG_LAT, pos[1])


def offset(pos: tuple[float, float], bearing: float, metres: float) -> tuple[float, float]:
    north = metres * math.cos(math.radians(bearing))
    east = metres * math.sin(math.radians(bearing))
    return (pos[0] + north / M_PER_DEG_LAT, pos[1] + east / (M_PER_DEG_LAT * math.cos(math.radians(pos[0]))))


# --- geometry -------------------------------------------------------------------------------


def test_distance_and_bearing() -> None:
    assert distance_m(ORIGIN, north_of(ORIGIN, 300.0)) == pytest.approx(300.0, rel=1e-6)
    east = offset(ORIGIN, 90.0, 250.0)
    assert distance_m(ORIGIN, east) == pytest.approx(250.0, rel=1e-3)
    assert bearing_deg(ORIGIN, east) == pytest.approx(90.0, abs=0.01)
    assert bearing_deg(ORIGIN, north_of(ORIGIN, -50)) == pytest.approx(180.0, abs=0.01)


# --- radio model ------------------------------------------------------------------------------

N = 10_000


def _ratio(model: RadioModel, metres: float, cbr: float = 0.0) -> float:
    rx = north_of(ORIGIN, metres)
    return sum(model.decide(ORIGIN, rx, NOW, cbr).delivered for _ in range(N)) / N


def _bound(p: float) -> float:
    """4 binomial sigmas (with a floor of 3/N, for p near 0 or 1)."""
    return max(4 * math.sqrt(p * (1 - p) / N), 3 / N)


@pytest.mark.parametrize("seed", [1, 2])
def test_delivery_ratio_vs_distance_follows_the_configured_curve(seed: int) -> None:
    params = RadioParams()
    model = RadioModel(params, random.Random(seed))
    for metres in (10, 150, 250, 350, 450, 550, 650, 750, 790):
        expected = params.pdr(metres)
        got = _ratio(model, metres)
        assert abs(got - expected) <= _bound(expected), (metres, got, expected)
    # the curve itself: interpolated between the configured points, monotone
    assert params.pdr(450.0) == pytest.approx((0.74 + 0.52) / 2)
    assert [params.pdr(d) for d in range(0, 801, 50)] == sorted(
        (params.pdr(d) for d in range(0, 801, 50)), reverse=True
    )


def test_a_custom_curve_is_followed_and_seeded_runs_repeat() -> None:
    params = RadioParams(max_range_m=300.0, pdr_curve=((0.0, 0.9), (100.0, 0.6), (300.0, 0.2)))
    model = RadioModel(params, random.Random(7))
    for metres, expected in ((50, 0.75), (100, 0.6), (200, 0.4), (299, 0.202)):
        assert abs(_ratio(model, metres) - expected) <= _bound(expected)
    runs = [
        [m.decide(ORIGIN, north_of(ORIGIN, d), NOW) for d in range(0, 400, 7)]
        for m in (RadioModel(params, random.Random(3)), RadioModel(params, random.Random(3)))
    ]
    assert runs[0] == runs[1]
    assert len({d.delivered for d in runs[0]}) == 2  # a mix, not a constant


def test_nothing_beyond_range() -> None:
    model = RadioModel(RadioParams(max_range_m=500.0, pdr_curve=((0.0, 1.0),)), random.Random(1))
    inside = [model.decide(ORIGIN, north_of(ORIGIN, 499.0), NOW) for _ in range(200)]
    outside = [model.decide(ORIGIN, north_of(ORIGIN, 501.0), NOW) for _ in range(200)]
    assert all(d.delivered and d.reason is Reason.DELIVERED for d in inside)
    assert not any(d.delivered for d in outside) and {d.reason for d in outside} == {Reason.OUT_OF_RANGE}


def test_latency_stays_within_base_plus_jitter_and_spreads_uniformly() -> None:
    params = RadioParams(base_latency_s=0.005, jitter_s=0.015)
    model = RadioModel(params, random.Random(11))
    ds = [model.decide(ORIGIN, north_of(ORIGIN, 20.0), NOW) for _ in range(N)]
    lat = [d.latency for d in ds]
    assert 0.005 <= min(lat) and max(lat) <= 0.020
    assert min(lat) < 0.0055 and max(lat) > 0.0195
    assert sum(lat) / N == pytest.approx(0.0125, abs=4 * 0.015 / math.sqrt(12 * N))
    assert all(d.deliver_at == NOW + d.latency for d in ds)


def test_cbr_rises_with_load_and_lowers_pdr_and_widens_the_dcc_gap() -> None:
    params = RadioParams()
    load = ChannelLoad.from_params(params)
    # 20 vehicles at 10 Hz for 1 s: 200 messages/s, 20 per 100 ms window -> CBR 0.2
    light = [t / 200 for t in range(200)]
    load.observe_many(light)
    low = load.cbr(1.0)
    assert low == pytest.approx(0.2, abs=0.011)
    heavy = ChannelLoad.from_params(params)
    heavy.observe_many([t / 800 for t in range(800)])  # 80 vehicles at 10 Hz
    high = heavy.cbr(1.0)
    assert high == pytest.approx(0.8, abs=0.011)
    assert heavy.cbr(5.0) == 0.0  # the window forgets

    model = RadioModel(params, random.Random(5))
    idle, busy = _ratio(model, 200.0, low), _ratio(model, 200.0, high)
    expected_busy = params.pdr(200.0) * params.congestion_factor(high)
    assert idle == pytest.approx(params.pdr(200.0), abs=_bound(params.pdr(200.0)))
    assert abs(busy - expected_busy) <= _bound(expected_busy) and busy < idle - 0.1
    assert model.min_gap(low) == 0.1 and model.min_gap(0.45) == 0.4 and model.min_gap(high) == 1.0


def test_bad_params_list_every_problem() -> None:
    with pytest.raises(ValueError) as info:
        RadioParams(max_range_m=-1, pdr_curve=((10.0, 1.2), (5.0, 0.5)), jitter_s=-0.1, cbr_knee=1.5)
    text = str(info.value)
    for word in ("max_range_m", "start at distance 0", "within 0..1", "strictly increasing", "jitter_s", "cbr_knee"):
        assert word in text


# --- CAM generation ---------------------------------------------------------------------------


def state(t: float, *, north_m: float = 0.0, heading: float | None = 0.0, speed: float | None = 10.0) -> VehicleState:
    lat, lon = north_of(ORIGIN, north_m)
    return VehicleState(monotonic=t, timestamp=NOW + t, sequence=0, lat=lat, lon=lon, heading=heading, speed=speed)


@pytest.mark.parametrize(
    ("case", "later", "due"),
    [
        ("nothing changed, 0.5 s", state(0.5), False),
        ("nothing changed, 1 s", state(1.0), True),
        ("heading +4.5 deg", state(0.2, heading=4.5), True),
        ("heading +3.5 deg", state(0.2, heading=3.5), False),
        ("heading across north", state(0.2, heading=355.0), True),
        ("moved 4.5 m", state(0.2, north_m=4.5), True),
        ("moved 3.5 m", state(0.2, north_m=3.5), False),
        ("speed +0.6 m/s", state(0.2, speed=10.6), True),
        ("speed -0.4 m/s", state(0.2, speed=9.6), False),
        ("everything changed but only 50 ms later (10 Hz cap)", state(0.05, north_m=30, heading=90, speed=20), False),
        ("changed exactly at 100 ms", state(0.1, heading=10.0), True),
        ("heading unknown now", state(0.2, heading=None), False),
    ],
)
def test_cam_generation_rules(case: str, later: VehicleState, due: bool) -> None:
    gen = CamGenerator()
    first = state(0.0)
    assert gen.due(first, 0.0)  # the first CAM goes at once
    gen.sent(first, 0.0)
    assert gen.due(later, later.monotonic) is due, case


def test_dcc_gap_holds_back_even_dynamic_triggers() -> None:
    gen = CamGenerator()
    gen.sent(state(0.0), 0.0)
    moved = state(0.3, north_m=20.0)
    assert gen.due(moved, 0.3)
    assert not gen.due(moved, 0.3, dcc_gap=0.4)
    assert gen.due(state(0.4, north_m=20.0), 0.4, dcc_gap=0.4)
    assert not gen.due(state(0.9), 0.9, dcc_gap=5.0)  # clamped to T_GenCamMax
    assert gen.due(state(1.0), 1.0, dcc_gap=5.0)


def test_a_steady_drive_gives_one_cam_per_4_m_and_at_most_10_hz() -> None:
    def run(speed: float) -> list[float]:
        gen, sent = CamGenerator(), []
        for i in range(301):  # 3 s at 100 Hz
            t = i / 100
            s = state(t, north_m=speed * t, speed=speed)
            if gen.due(s, t):
                gen.sent(s, t)
                sent.append(t)
        return sent

    fast = run(50.0)  # 180 km/h: 4 m every 80 ms, capped at 100 ms
    assert min(b - a for a, b in zip(fast, fast[1:], strict=False)) >= 0.1 - 1e-9
    assert len(fast) == 31
    slow = run(15.0)  # more than 4 m needs 0.267 s: sampled at 100 Hz, every 0.27 s
    gaps = {round(b - a, 2) for a, b in zip(slow, slow[1:], strict=False)}
    assert gaps == {0.27}
    parked = run(0.0)
    assert parked == [0.0, 1.0, 2.0, 3.0]


def test_t_gen_cam_follows_the_last_dynamic_interval_for_three_cams() -> None:
    gen = CamGenerator()
    gen.sent(state(0.0), 0.0)
    gen.sent(state(0.3, north_m=10.0), 0.3)  # dynamics after 0.3 s: T_GenCam = 0.3
    t, sent = 0.3, []
    while t < 3.0:
        t = round(t + 0.01, 2)
        s = state(t, north_m=10.0)  # stopped
        if gen.due(s, t):
            gen.sent(s, t)
            sent.append(t)
    assert sent[:4] == [0.6, 0.9, 1.2, 2.2]


def test_no_position_no_cam() -> None:
    gen = CamGenerator()
    blind = VehicleState(monotonic=0.0, timestamp=NOW, sequence=0)
    assert not gen.due(blind, 0.0)
    with pytest.raises(ValueError):
        gen.sent(blind, 0.0)


# --- payloads -------------------------------------------------------------------------------


def test_cam_from_state_uses_etsi_units_and_round_trips() -> None:
    s = VehicleState(
        monotonic=1.0,
        timestamp=NOW,
        sequence=1,
        lat=48.1371549,
        lon=-11.5761244,
        heading=359.97,
        speed=13.894,
        accel_longitudinal=-7.25,
        accel_lateral=30.0,
        yaw_rate=-2.5,
    )
    cam = Cam.from_state(s, station_id=0xDEADBEEF, now=NOW + 0.123)
    assert (cam.latitude, cam.longitude) == (481371549, -115761244)
    assert cam.heading == 0  # 359.97 deg rounds to north
    assert (cam.speed, cam.longitudinal_acceleration, cam.lateral_acceleration, cam.yaw_rate) == (1389, -72, 160, -250)
    assert cam.generation_delta_time == timestamp_its(NOW + 0.123) % 65536
    assert timestamp_its(1_072_915_200.0) == 0
    data = cam.encode()
    assert cbor.loads(data)["messageId"] == 2 and cbor.loads(data)["speed"] == 1389
    assert decode(data) == cam and Cam.decode(data) == cam
    unknown = Cam.from_state(VehicleState(monotonic=0, timestamp=NOW, sequence=0), station_id=1, now=NOW)
    assert unknown.position is None and (unknown.heading, unknown.speed) == (3601, 16383)


def _denm(**kw: object) -> Denm:
    args: dict[str, object] = dict(
        station_id=42,
        sequence_number=7,
        position=north_of(ORIGIN, 150.0),
        heading=0.0,
        detected_at=NOW - 1,
        now=NOW,
        cause_code=CAUSE_DANGEROUS_SITUATION,
        sub_cause_code=SUB_EMERGENCY_BRAKE,
        relevance_distance=3,  # lessThan500m
        validity_duration=5,
    )
    args.update(kw)
    return Denm.event(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("speed", 16384, "outside"),
        ("heading", -1, "outside"),
        ("latitude", True, "integer"),
        ("stationId", 2**32, "outside"),
        ("messageId", 1, "outside"),
        ("yawRate", 1.5, "integer"),
    ],
)
def test_strict_cam_decode_names_the_field(field: str, value: object, message: str) -> None:
    body = cbor.loads(Cam(1, 5, 0, 0, 0).encode())
    body[field] = value
    with pytest.raises(SchemaError, match=message) as info:
        Cam.decode(cbor.dumps(body))
    assert info.value.field == field and info.value.kind == "cam"


def test_strict_decode_refuses_missing_unknown_and_garbage() -> None:
    body = cbor.loads(_denm().encode())
    assert body["causeCode"] == 99 and body["subCauseCode"] == 1 and body["messageId"] == 1
    extra = dict(body, secret=1)
    with pytest.raises(SchemaError) as info:
        decode(cbor.dumps(extra))
    assert info.value.field == "secret"
    del body["validityDuration"]
    with pytest.raises(SchemaError) as info:
        Denm.decode(cbor.dumps(body))
    assert info.value.field == "validityDuration"
    with pytest.raises(SchemaError) as info:
        decode(cbor.dumps({"messageId": 9}))
    assert info.value.field == "messageId"
    with pytest.raises(SchemaError):
        decode(b"\xa1\x61a")  # truncated CBOR
    with pytest.raises(SchemaError, match="referenceTime"):
        _denm(detected_at=NOW + 5)


# --- DENM relevance -------------------------------------------------------------------------

FILTER = WarningFilter(max_age=10.0)


@pytest.mark.parametrize(
    ("case", "own", "heading", "denm", "now", "verdict"),
    [
        ("hard braking 150 m ahead, same direction", ORIGIN, 0.0, _denm(), NOW, Verdict.RELEVANT),
        ("slightly off-axis ahead", ORIGIN, 20.0, _denm(), NOW, Verdict.RELEVANT),
        ("behind us", north_of(ORIGIN, 300.0), 0.0, _denm(), NOW, Verdict.BEHIND),
        ("opposite direction", north_of(ORIGIN, 300.0), 180.0, _denm(), NOW, Verdict.OTHER_DIRECTION),
        ("too far for lessThan200m", north_of(ORIGIN, -100.0), 0.0, _denm(relevance_distance=2), NOW, Verdict.TOO_FAR),
        (
            "all traffic directions",
            north_of(ORIGIN, 300.0),
            180.0,
            _denm(relevance_traffic_direction=0),
            NOW,
            Verdict.RELEVANT,
        ),
        (
            "stationary vehicle for oncoming traffic",
            north_of(ORIGIN, 300.0),
            180.0,
            _denm(cause_code=CAUSE_STATIONARY_VEHICLE, sub_cause_code=2, relevance_traffic_direction=3),
            NOW,
            Verdict.RELEVANT,
        ),
        ("no own heading: distance only", north_of(ORIGIN, 300.0), None, _denm(), NOW, Verdict.RELEVANT),
        ("past validity", ORIGIN, 0.0, _denm(validity_duration=5), NOW + 4.5, Verdict.EXPIRED),
        ("older than max age", ORIGIN, 0.0, _denm(validity_duration=600), NOW + 10.5, Verdict.TOO_OLD),
        ("from the future", ORIGIN, 0.0, _denm(), NOW - 2, Verdict.FUTURE),
    ],
)
def test_denm_relevance(
    case: str, own: tuple[float, float], heading: float | None, denm: Denm, now: float, verdict: Verdict
) -> None:
    assert FILTER.assess(own, heading, denm, now=now) is verdict, case
    assert FILTER.relevant(own, heading, denm, now=now) is (verdict is Verdict.RELEVANT)


# --- signed round trip ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority() -> PseudonymAuthority:
    return PseudonymAuthority(SigningKey.generate("Ed25519"), KeyAgreementPrivateKey.generate(), validity=3600)


@pytest.fixture(scope="module")
def identity(authority: PseudonymAuthority) -> PseudonymIdentity:
    request, keys = make_request(SigningKey.generate("Ed25519"), 2, now=NOW)
    pool = PseudonymPool()
    pool.add_batch(keys, authority.issue(request, now=NOW), authority_keys=[authority.public_key], now=NOW)
    return PseudonymManager(pool, rng=random.Random(2), now=NOW).current(NOW)


def test_signed_cam_and_denm_round_trip_and_tampering_is_rejected(
    authority: PseudonymAuthority, identity: PseudonymIdentity
) -> None:
    trusted = [authority.public_key]
    cam = Cam.from_state(state(0.0), station_id=identity.station_id, now=NOW)
    denm = _denm(station_id=identity.station_id)
    certs: dict[bytes, PseudonymCert] = {}
    wire_cam = sign(identity, cam, include_cert=True)
    msg, got = open_signed(wire_cam, authority_keys=trusted, now=NOW, certs=certs)
    assert got == cam and msg.content_type == "cam" and msg.station_id == identity.station_id
    msg, got = open_signed(sign(identity, denm), authority_keys=trusted, now=NOW, certs=certs)
    assert got == denm and msg.content_type == "denm"

    # a changed speed breaks the signature
    body = cose.decode_sign1(wire_cam)
    assert body.payload is not None
    tampered_payload = cbor.dumps(dict(cbor.loads(body.payload), speed=1001))  # same encoded length as 1000
    with pytest.raises(SignatureError):
        open_signed(wire_cam.replace(body.payload, tampered_payload), authority_keys=trusted, now=NOW)
    # a message claiming another station id than its pseudonym's is refused at both ends
    other = Cam.from_state(state(0.0), station_id=(identity.station_id + 1) % 2**32, now=NOW)
    with pytest.raises(ValueError):
        sign(identity, other)
    forged = identity.sign(other.encode(), include_cert=True, content_type="cam")
    with pytest.raises(VerificationError, match="station"):
        open_signed(forged, authority_keys=trusted, now=NOW)
    mislabelled = identity.sign(cam.encode(), include_cert=True, content_type="denm")
    with pytest.raises(VerificationError, match="content type"):
        open_signed(mislabelled, authority_keys=trusted, now=NOW)
