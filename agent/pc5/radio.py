"""The PC5 radio model a *receiver* applies to every sidelink broadcast it hears.

The emulated sidelink is a broadcast channel (MQTT ``acc/v1/pc5/{cell}``) that every OBU in a
cell hears perfectly; each receiver then decides, from the sender's position in the message and
its own, whether the radio would have delivered it and how late::

    model = RadioModel(RadioParams(), rng=random.Random(seed))
    load.observe(now)                                   # every message heard, delivered or not
    d = model.decide(tx_pos, rx_pos, now, load.cbr(now))
    if d.delivered: deliver at d.deliver_at

**Packet delivery ratio.** ``PDR(d)`` is piecewise linear through ``RadioParams.pdr_curve``
(distance m -> PDR), 0 beyond ``max_range_m``. The default curve is *illustrative*: it has the
shape of published PC5 mode 4 (LTE-V2X, autonomous resource selection, SB-SPS) simulation
results -- PDR near 1 at short range, a gradual decline over a few hundred metres, and a
tail reaching 0 near the maximum range (e.g. Molina-Masegosa & Gozalvez, "LTE-V for Sidelink
5G V2X Vehicular Communications", IEEE VT Magazine 12(4), 2017; 3GPP TR 37.885 evaluation
methodology, highway scenario). It is not fitted to any one figure; set the points from a
measurement or a system-level simulation of the deployment you care about.

**Channel busy ratio.** ``ChannelLoad`` estimates CBR as (messages heard in the window) x
(airtime per message) / window, clipped to 1 -- a stand-in for the 3GPP CBR (the share of busy
sub-channels over the last 100 ms). Above ``cbr_knee`` the PDR is scaled down linearly, to
``1 - cbr_loss_at_full`` at CBR 1 (collisions of semi-persistent reservations). Per ETSI DCC
(TS 102 687 reactive approach; TS 103 574 for C-V2X) a higher CBR also forces a longer minimum
gap between a station's packets: ``RadioParams.min_gap(cbr)`` reads the step table
``dcc_gaps`` (illustrative defaults in the style of the reactive-DCC state table: relaxed
100 ms up to active 200/400/500 ms and restrictive 1 s).

**Latency** is ``base_latency_s + U(0, jitter_s)``.

Pure: no clocks, no sockets; randomness only from the ``rng`` passed in, and ``decide`` always
draws exactly two numbers, so a seeded run is reproducible whatever the geometry.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ChannelLoad",
    "Delivery",
    "Position",
    "RadioModel",
    "RadioParams",
    "Reason",
    "bearing_deg",
    "distance_m",
]

#: (latitude, longitude) in WGS84 degrees
Position = tuple[float, float]

_EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius


def distance_m(a: Position, b: Position) -> float:
    """Great-circle (haversine) distance in metres between two WGS84 positions."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(a: Position, b: Position) -> float:
    """Initial great-circle bearing from ``a`` to ``b``, degrees clockwise from true north, 0..360."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    dlon = lon2 - lon1
    y = math.sin(dlon) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return math.degrees(math.atan2(y, x)) % 360.0


DEFAULT_PDR: tuple[tuple[float, float], ...] = (
    (0.0, 0.99),
    (100.0, 0.98),
    (200.0, 0.95),
    (300.0, 0.88),
    (400.0, 0.74),
    (500.0, 0.52),
    (600.0, 0.30),
    (700.0, 0.12),
    (800.0, 0.0),
)
DEFAULT_DCC: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.30, 0.2), (0.40, 0.4), (0.50, 0.5), (0.60, 1.0))


@dataclass(frozen=True)
class RadioParams:
    """Radio model parameters (the ``[pc5.radio]`` config slice). Validated on construction;
    a ``ValueError`` lists every bad field."""

    #: beyond this distance (m) nothing is delivered
    max_range_m: float = 800.0
    #: (distance m, PDR 0..1) points, distances strictly increasing from 0, PDR non-increasing;
    #: linear in between, the last PDR held up to ``max_range_m``
    pdr_curve: tuple[tuple[float, float], ...] = DEFAULT_PDR
    #: one-way latency floor, seconds (sensing + resource selection + transmission)
    base_latency_s: float = 0.010
    #: latency adds a uniform 0..jitter_s, seconds
    jitter_s: float = 0.020
    #: channel occupancy of one message, seconds, for the CBR estimate
    airtime_s: float = 0.001
    #: CBR measurement window, seconds (3GPP: 100 ms)
    cbr_window_s: float = 0.1
    #: CBR below which congestion costs no PDR
    cbr_knee: float = 0.3
    #: PDR is multiplied by (1 - this) at CBR 1, linearly from the knee
    cbr_loss_at_full: float = 0.5
    #: DCC step table: (CBR lower bound, minimum gap between a station's packets s), ascending,
    #: first bound 0
    dcc_gaps: tuple[tuple[float, float], ...] = DEFAULT_DCC
    _distances: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad: list[str] = []
        if not (math.isfinite(self.max_range_m) and self.max_range_m > 0):
            bad.append(f"max_range_m must be > 0 (got {self.max_range_m})")
        pts = self.pdr_curve
        if not pts or pts[0][0] != 0.0:
            bad.append("pdr_curve must start at distance 0")
        if any(not 0.0 <= p <= 1.0 for _, p in pts):
            bad.append("pdr_curve PDR values must be within 0..1")
        if any(b[0] <= a[0] for a, b in zip(pts, pts[1:], strict=False)):
            bad.append("pdr_curve distances must be strictly increasing")
        if any(b[1] > a[1] for a, b in zip(pts, pts[1:], strict=False)):
            bad.append("pdr_curve PDR must not increase with distance")
        for name in ("base_latency_s", "jitter_s", "airtime_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad.append(f"{name} must be >= 0 (got {value})")
        if not self.cbr_window_s > 0:
            bad.append(f"cbr_window_s must be > 0 (got {self.cbr_window_s})")
        if not 0.0 <= self.cbr_knee < 1.0:
            bad.append(f"cbr_knee must be within 0..1 (got {self.cbr_knee})")
        if not 0.0 <= self.cbr_loss_at_full <= 1.0:
            bad.append(f"cbr_loss_at_full must be within 0..1 (got {self.cbr_loss_at_full})")
        gaps = self.dcc_gaps
        if not gaps or gaps[0][0] != 0.0:
            bad.append("dcc_gaps must start at CBR 0")
        if any(b[0] <= a[0] or b[1] < a[1] for a, b in zip(gaps, gaps[1:], strict=False)):
            bad.append("dcc_gaps CBR bounds must increase and gaps must not shrink")
        if any(g <= 0 for _, g in gaps):
            bad.append("dcc_gaps gaps must be > 0")
        if bad:
            raise ValueError("bad PC5 radio parameters: " + "; ".join(bad))
        object.__setattr__(self, "_distances", tuple(d for d, _ in pts))

    def pdr(self, distance: float) -> float:
        """PDR at ``distance`` metres on an idle channel."""
        if distance > self.max_range_m:
            return 0.0
        pts = self.pdr_curve
        i = bisect.bisect_right(self._distances, distance)
        if i >= len(pts):
            return pts[-1][1]
        (d0, p0), (d1, p1) = pts[i - 1], pts[i]
        return p0 + (p1 - p0) * (distance - d0) / (d1 - d0)

    def congestion_factor(self, cbr: float) -> float:
        """What the PDR is multiplied by at channel busy ratio ``cbr`` (0..1)."""
        cbr = min(max(cbr, 0.0), 1.0)
        if cbr <= self.cbr_knee:
            return 1.0
        return 1.0 - self.cbr_loss_at_full * (cbr - self.cbr_knee) / (1.0 - self.cbr_knee)

    def min_gap(self, cbr: float) -> float:
        """DCC: the minimum time between two packets of one station at ``cbr``, seconds."""
        gap = self.dcc_gaps[0][1]
        for bound, value in self.dcc_gaps:
            if cbr >= bound:
                gap = value
        return gap


class Reason(enum.StrEnum):
    DELIVERED = "delivered"
    OUT_OF_RANGE = "out_of_range"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Delivery:
    """The radio model's verdict on one packet at one receiver."""

    delivered: bool
    #: seconds from transmission to reception (drawn even for a lost packet)
    latency: float
    reason: Reason
    distance: float
    #: the probability the packet had (PDR after congestion)
    pdr: float
    #: ``now + latency``: when to hand the packet up
    deliver_at: float


class RadioModel:
    """Decides delivery of sidelink packets; see the module docstring."""

    def __init__(self, params: RadioParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng

    def decide(self, tx_pos: Position, rx_pos: Position, now: float, channel_load: float = 0.0) -> Delivery:
        """Whether a packet sent from ``tx_pos`` at ``now`` reaches ``rx_pos``; ``channel_load``
        is the channel busy ratio (0..1) the receiver measures (``ChannelLoad.cbr``)."""
        p = self.params
        u_loss = self._rng.random()
        latency = p.base_latency_s + p.jitter_s * self._rng.random()
        distance = distance_m(tx_pos, rx_pos)
        if distance > p.max_range_m:
            return Delivery(False, latency, Reason.OUT_OF_RANGE, distance, 0.0, now + latency)
        pdr = p.pdr(distance) * p.congestion_factor(channel_load)
        delivered = u_loss < pdr
        reason = Reason.DELIVERED if delivered else Reason.LOST
        return Delivery(delivered, latency, reason, distance, pdr, now + latency)

    def min_gap(self, channel_load: float) -> float:
        """DCC minimum gap between a station's own transmissions at this CBR, seconds."""
        return self.params.min_gap(channel_load)


class ChannelLoad:
    """Channel busy ratio from the traffic one station hears (every sidelink message on the
    topic, delivered or not, its own included) over the last ``window`` seconds."""

    def __init__(self, window: float = 0.1, airtime: float = 0.001) -> None:
        if window <= 0 or airtime < 0:
            raise ValueError(f"window must be > 0 and airtime >= 0 (got {window}, {airtime})")
        self.window = window
        self.airtime = airtime
        self._heard: deque[tuple[float, float]] = deque()

    @classmethod
    def from_params(cls, params: RadioParams) -> ChannelLoad:
        return cls(params.cbr_window_s, params.airtime_s)

    def observe(self, now: float, airtime: float | None = None) -> None:
        """One message heard at ``now`` (occupying ``airtime`` s, default the configured one)."""
        self._heard.append((now, self.airtime if airtime is None else airtime))
        self._expire(now)

    def observe_many(self, times: Sequence[float]) -> None:
        for t in times:
            self.observe(t)

    def _expire(self, now: float) -> None:
        while self._heard and self._heard[0][0] <= now - self.window:
            self._heard.popleft()

    def cbr(self, now: float) -> float:
        """Busy share of the window ending at ``now``, 0..1."""
        self._expire(now)
        return min(1.0, sum(a for _, a in self._heard) / self.window)
