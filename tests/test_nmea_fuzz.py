"""Property tests: no input makes the framer/reader raise, valid sentences survive garbage,
and every rejected run is counted exactly once."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.nmea import MAX_SENTENCE_LENGTH, REJECT_REASONS, NmeaFramer, NmeaReader, checksum

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TALKERS = ["GP", "GL", "GA", "GB", "BD", "GN", "GQ"]
KINDS = ["RMC", "GGA", "GSA", "GSV", "VTG", "ZDA", "GST", "GLL", "GNS", "TXT"]
# printable field characters without the NMEA delimiters
FIELD_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="$*,!\\")


@st.composite
def valid_sentences(draw: st.DrawFn) -> str:
    """Checksum-valid sentences of known and unknown types with arbitrary field text."""
    address = draw(st.sampled_from(TALKERS)) + draw(st.sampled_from(KINDS))
    fields = draw(st.lists(st.text(FIELD_CHARS, max_size=10), max_size=8))
    body = ",".join([address, *fields])[: MAX_SENTENCE_LENGTH - 4]
    text = f"${body}*{checksum(body):02X}"
    if draw(st.booleans()):
        text = text[:-2] + text[-2:].lower()
    return text


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


@FAST
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    reader = NmeaReader(keep_rejects=True)
    accepted = 0
    for piece in chunked(data, cuts):
        accepted += len(reader.feed(piece))
    accepted += len(reader.flush())
    reader.finish()
    c = reader.counters
    assert c["bytes"] == len(data)
    assert c["sentences"] == accepted == c["decoded"] + c["unknown_type"] + c["bad_field"]
    assert len(reader.framer._buf) <= MAX_SENTENCE_LENGTH


@FAST
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=30))
def test_chunking_does_not_change_the_result(data: bytes, cuts: list[int]) -> None:
    whole = NmeaFramer()
    expected = whole.feed_events(data) + whole.flush()
    pieces = NmeaFramer()
    got = [ev for piece in chunked(data, cuts) for ev in pieces.feed_events(piece)] + pieces.flush()
    assert [(type(e).__name__, getattr(e, "text", None), getattr(e, "reason", None), e.line) for e in got] == [
        (type(e).__name__, getattr(e, "text", None), getattr(e, "reason", None), e.line) for e in expected
    ]
    assert pieces.counters == whole.counters


# garbage lines: never a '$' (which would start a sentence) nor a line end, never blank
GARBAGE_LINE = st.binary(min_size=1, max_size=300).filter(
    lambda b: b"$" not in b and b"\r" not in b and b"\n" not in b and bool(b.strip(b" \t"))
)


@st.composite
def noisy_streams(draw: st.DrawFn) -> tuple[bytes, list[str], int, int]:
    """Valid sentences interleaved with garbage lines and truncated sentences."""
    out = bytearray()
    valid: list[str] = []
    garbage = truncated = 0
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        choice = draw(st.sampled_from(["valid", "garbage", "truncated", "nul"]))
        if choice == "valid":
            text = draw(valid_sentences())
            valid.append(text)
            out += text.encode() + draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
        elif choice == "garbage":
            out += draw(GARBAGE_LINE) + b"\n"
            garbage += 1
        elif choice == "nul":
            out += b"\0" * draw(st.integers(min_value=1, max_value=500)) + b"\n"
            garbage += 1
        else:  # a sentence cut before its checksum, then the line ends
            text = draw(valid_sentences())
            cut = draw(st.integers(min_value=1, max_value=text.index("*")))
            out += text[:cut].encode() + b"\r\n"
            truncated += 1
    return bytes(out), valid, garbage, truncated


@FAST
@given(noisy_streams(), st.lists(st.integers(min_value=0), max_size=30))
def test_valid_sentences_recovered_and_rejections_counted(
    stream: tuple[bytes, list[str], int, int], cuts: list[int]
) -> None:
    data, valid, garbage, truncated = stream
    reader = NmeaReader()
    events = [ev for piece in chunked(data, cuts) for ev in reader.feed(piece)] + reader.flush()
    assert [ev.raw.text for ev in events] == valid
    c = reader.counters
    assert c["garbage"] == garbage
    assert c["no_checksum"] == truncated
    assert c["checksum"] == c["too_long"] == 0
    assert sum(c[r] for r in REJECT_REASONS[:4]) == garbage + truncated


@FAST
@given(st.lists(valid_sentences(), max_size=30))
def test_reader_never_raises_on_checksum_valid_nonsense(sentences: list[str]) -> None:
    reader = NmeaReader()
    data = "".join(s + "\r\n" for s in sentences).encode()
    events = reader.feed(data) + reader.flush()
    assert len(events) == len(sentences)
    for ev in events:
        assert (ev.sentence is None) == (ev.error is not None)
        assert ev.fix.mode in (0, 1, 2, 3)
