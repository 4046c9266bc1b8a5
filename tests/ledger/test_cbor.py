"""Deterministic CBOR (RFC 8949 §4.2.1): the Appendix A examples that are deterministic, key
order, and everything a strict decoder must refuse."""

from __future__ import annotations

import enum
import math
import re
from collections import OrderedDict
from typing import Any

import cbor2
import pytest

from ledger_lite import cbor
from ledger_lite.cbor import Tag
from ledger_lite.errors import CborError, MalformedError

# RFC 8949 Appendix A, Table 6: every example whose encoding is deterministic (preferred
# serialisation, definite lengths, sorted keys). Left out: bignum 2**64 and -2**64-1 as
# integers (we have no bignums; the bignum tag is checked as an opaque Tag below), NaN and the
# infinities (refused, see below), undefined and simple values (refused), and every
# indefinite-length example (refused, see NOT_DETERMINISTIC).
APPENDIX_A: list[tuple[Any, str]] = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (Tag(0, "2013-03-21T20:04:00Z"), "c074323031332d30332d32315432303a30343a30305a"),
    (Tag(1, 1363896240), "c11a514b67b0"),
    (Tag(1, 1363896240.5), "c1fb41d452d9ec200000"),
    (Tag(23, b"\x01\x02\x03\x04"), "d74401020304"),
    (Tag(24, b"dIETF"), "d818456449455446"),
    (Tag(32, "http://www.example.com"), "d82076687474703a2f2f7777772e6578616d706c652e636f6d"),
    (Tag(2, bytes.fromhex("010000000000000000")), "c249010000000000000000"),  # opaque: not an int
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ("\U00010151", "64f0908591"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
]

# Appendix A items that are valid CBOR but not deterministic, and other non-deterministic forms.
NOT_DETERMINISTIC = {
    "5f42010243030405ff": "indefinite-length",  # (_ h'0102', h'030405')
    "7f657374726561646d696e67ff": "indefinite-length",  # (_ "strea", "ming")
    "9fff": "indefinite-length",
    "9f018202039f0405ffff": "indefinite-length",
    "83018202039f0405ff": "indefinite-length",
    "bf61610161629f0203ffff": "indefinite-length",
    "bf6346756ef563416d7421ff": "indefinite-length",
    "1817": "shortest form",  # 23 with a one-byte argument
    "190017": "shortest form",
    "1a00000017": "shortest form",
    "1b0000000000000017": "shortest form",
    "3800": "shortest form",  # -1 with a one-byte argument
    "5800": "shortest form",  # empty byte string with a one-byte length
    "7800": "shortest form",
    "9800": "shortest form",
    "b800": "shortest form",
    "d81201": "shortest form",  # tag 18 with a one-byte tag number
    "fa3fc00000": "shortest exact form",  # 1.5 as float32
    "fb3ff8000000000000": "shortest exact form",  # 1.5 as float64
    "fb3e70000000000000": "shortest exact form",  # 2**-24 as float64 (a float16 subnormal)
    "a2030401020102": "out of order",  # {3: 4, 1: 2}
    "a2616201616101": "out of order",  # {"b": 1, "a": 1}
    "a2200118180a": "out of order",  # {-1: 1, 24: 10}: length-first (RFC 7049) order
}

NOT_ALLOWED = {
    "f97c00": "Infinity",
    "f9fc00": "Infinity",
    "f97e00": "NaN",
    "fa7fc00000": "NaN",
    "fb7ff8000000000000": "NaN",
    "f7": "undefined",
    "f0": "simple values",
    "f8ff": "simple values",
    "f820": "simple values",
    "a201000100": "duplicate map key",
    "a2616101616102": "duplicate map key",
    "a1f400": "map key of type bool",
    "a1f6f6": "map key of type NoneType",
    "a1f93c0000": "map key of type float",
    "a1800000": "map key of type list",
    "a1a00000": "map key of type dict",
    "a1c10000": "map key of type Tag",
    "0000": "trailing",
    "": "empty input",
    "18": "truncated",
    "1b00": "truncated",
    "4401": "truncated",
    "62c3": "truncated",
    "8201": "cannot fit",  # an array of 2 with one item
    "828180": "unexpected end of input",  # [[[]], ?]
    "62c328": "not valid UTF-8",
    "63eda080": "not valid UTF-8",  # a UTF-16 surrogate encoded as UTF-8
    "1c": "reserved",
    "3e": "reserved",
    "ff": "break outside",
    "5b0000000100000000": "truncated",  # 4 GiB byte string: refused without allocating it
    "9b0000000100000000": "cannot fit",
    "bb0000000100000000": "cannot fit",
}


@pytest.mark.parametrize(("value", "hexstr"), APPENDIX_A, ids=[h for _, h in APPENDIX_A])
def test_appendix_a_examples_encode_and_decode(value: Any, hexstr: str) -> None:
    encoded = bytes.fromhex(hexstr)
    assert cbor.dumps(value) == encoded
    decoded = cbor.loads(encoded)
    assert decoded == value
    assert type(decoded) is type(value)
    if isinstance(value, float):
        assert math.copysign(1.0, decoded) == math.copysign(1.0, value)  # -0.0 keeps its sign


@pytest.mark.parametrize("hexstr", sorted(NOT_DETERMINISTIC))
def test_non_deterministic_forms_are_refused(hexstr: str) -> None:
    with pytest.raises(CborError, match=NOT_DETERMINISTIC[hexstr]):
        cbor.loads(bytes.fromhex(hexstr))


@pytest.mark.parametrize("hexstr", sorted(NOT_ALLOWED))
def test_malformed_and_excluded_items_are_refused(hexstr: str) -> None:
    with pytest.raises(CborError, match=NOT_ALLOWED[hexstr]):
        cbor.loads(bytes.fromhex(hexstr))
    with pytest.raises(CborError):
        cbor.loads(bytes.fromhex(hexstr), deterministic=False)


def test_errors_say_where() -> None:
    with pytest.raises(CborError, match=r"at offset 5: .*out of order"):
        cbor.loads(bytes.fromhex("a301010202") + bytes.fromhex("0000"))  # {1:1, 2:2, 0:0}
    with pytest.raises(CborError, match=r"at offset 4: 1 trailing bytes"):
        cbor.loads(bytes.fromhex("83010203") + b"\x00")
    with pytest.raises(CborError, match=r"at offset 3: argument 5 not in its shortest form"):
        cbor.loads(bytes.fromhex("a161611805"))
    with pytest.raises(CborError, match=r"^at \$\.a\[1\]\.b: nan"):
        cbor.dumps({"a": [1, {"b": float("nan")}]})
    with pytest.raises(CborError, match=r"^at \$\[2\]\[b'k'\]: cannot encode object"):
        cbor.dumps([0, 1, {b"k": object()}])


def test_map_keys_sort_bytewise_not_length_first() -> None:
    # RFC 8949 §4.2.1's own example order for the key types we allow: 10, 100, -1, "z", "aa"
    value = {"aa": 5, -1: 3, "z": 4, 100: 2, 10: 1}
    assert cbor.dumps(value) == bytes.fromhex("a5 0a01 186402 2003 617a04 62616105")
    # mixed int / negative / bytes / text keys, with the pairs where the two orders differ
    mixed = {"a": 0, 256: 1, -1: 2, 24: 3, b"x": 4, "aa": 5, -100: 6, 0: 7, -25: 8}
    expected = bytes.fromhex("a9 0007 181803 19010001 2002 381808 386306 417804 616100 62616105")
    assert cbor.dumps(mixed) == expected
    assert cbor.dumps(mixed) != cbor2.dumps(mixed, canonical=True)  # cbor2 sorts length-first
    assert cbor.loads(expected) == mixed


def test_key_order_does_not_depend_on_insertion_order() -> None:
    forward = {"speed": 1, "lat": 2.5, 7: "x", -3: b"y", b"k": None}
    backward = dict(reversed(list(forward.items())))
    assert cbor.dumps(forward) == cbor.dumps(backward) == cbor.dumps(OrderedDict(backward))
    assert cbor.dumps(cbor2.frozendict(forward)) == cbor.dumps(forward)
    # repeated shapes hit the key-order cache: still right after mutation of the values
    for n in range(3):
        forward["speed"] = n
        assert cbor.loads(cbor.dumps(forward)) == forward


def test_depth_limit_matches_cbor2_rule() -> None:
    # an item inside k containers needs k <= max_depth (cbor2's rule, so both paths agree)
    assert cbor.loads(bytes.fromhex("8180"), max_depth=1) == [[]]
    with pytest.raises(CborError, match="nesting deeper than 1"):
        cbor.loads(bytes.fromhex("818101"), max_depth=1)
    deep: Any = 1
    for _ in range(cbor.MAX_DEPTH):
        deep = [deep]
    assert cbor.loads(cbor.dumps(deep)) == deep
    with pytest.raises(CborError, match="nesting deeper than 32"):
        cbor.dumps([deep])
    with pytest.raises(CborError, match="nesting deeper than 32"):
        cbor.loads(b"\x81" + cbor.dumps(deep))
    with pytest.raises(CborError, match="nesting deeper than 32"):
        cbor.loads(b"\x81" * 5000 + b"\x01")
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(CborError, match="nesting deeper"):
        cbor.dumps(cyclic)


def test_size_limit_and_input_types() -> None:
    with pytest.raises(CborError, match="exceeds the limit of 10"):
        cbor.loads(cbor.dumps(b"x" * 20), max_size=10)
    assert cbor.loads(bytearray(b"\x01")) == 1
    assert cbor.loads(memoryview(b"\x02")) == 2
    with pytest.raises(CborError, match="must be bytes"):
        cbor.loads("01")  # type: ignore[arg-type]


def test_dumps_refuses_what_has_no_deterministic_encoding() -> None:
    for bad, why in [
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (-float("inf"), "Infinity"),
        (2**64, "out of range"),
        (-(2**64) - 1, "out of range"),
        ({True: 1}, "not bool"),
        ({1.0: 1}, "not float"),
        ({(1, 2): 1}, "not tuple"),
        ({None: 1}, "not NoneType"),
        ({1, 2}, "cannot encode set"),
        (object(), "cannot encode object"),
        ("\ud800", "UTF-8"),
        (Tag(-1, 0), "tag number"),
        (Tag(2**64, 0), "tag number"),
    ]:
        with pytest.raises(CborError, match=why):
            cbor.dumps(bad)


def test_dumps_accepts_subclasses_and_cbor2_types() -> None:
    class Color(enum.IntEnum):
        RED = 25

    class Name(enum.StrEnum):
        A = "a"

    assert cbor.dumps(Color.RED) == cbor.dumps(25)
    assert cbor.dumps({Color.RED: Name.A}) == cbor.dumps({25: "a"})
    assert cbor.dumps(bytearray(b"ab")) == cbor.dumps(b"ab")
    assert cbor.dumps((1, (2,))) == cbor.dumps([1, [2]])
    assert cbor.dumps(cbor2.CBORTag(18, [b""])) == cbor.dumps(Tag(18, [b""]))


def test_loads_returns_plain_containers_and_opaque_tags() -> None:
    # cbor2 6 would give a tuple/frozendict inside a tag, a datetime for tag 1, a cycle for 28/29
    value = cbor.loads(bytes.fromhex("d2 82 a101820203 80"))
    assert value == Tag(18, [{1: [2, 3]}, []])
    assert type(value.value) is list and type(value.value[0]) is dict and type(value.value[0][1]) is list
    assert cbor.loads(bytes.fromhex("d81c81d81d00")) == Tag(28, [Tag(29, 0)])
    assert cbor.loads(bytes.fromhex("d9d9f700")) == Tag(55799, 0)  # self-described CBOR: not stripped


def test_non_deterministic_mode_is_still_strict() -> None:
    relaxed = cbor.loads(bytes.fromhex("a3 0304 0102 18171817"), deterministic=False)  # unsorted, long heads
    assert relaxed == {3: 4, 1: 2, 23: 23}
    assert cbor.loads(bytes.fromhex("fb3ff8000000000000"), deterministic=False) == 1.5
    for hexstr in ("a201000100", "9f01ff", "0000", "f97e00", "a1f400"):
        with pytest.raises(CborError):
            cbor.loads(bytes.fromhex(hexstr), deterministic=False)


def test_cbor_error_is_a_malformed_error() -> None:
    with pytest.raises(MalformedError):
        cbor.loads(b"\xff")
    err = pytest.raises(CborError, cbor.loads, bytes.fromhex("a2616201616101")).value
    assert re.search(r"offset \d+", str(err))


def test_encode_head_is_shortest() -> None:
    assert cbor.encode_head(2, 23) == b"\x57"
    assert cbor.encode_head(2, 24) == b"\x58\x18"
    assert cbor.encode_head(3, 255) == b"\x78\xff"
    assert cbor.encode_head(4, 256) == b"\x99\x01\x00"
    assert cbor.encode_head(5, 65536) == b"\xba\x00\x01\x00\x00"
    assert cbor.encode_head(0, 2**32) == b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00"
    with pytest.raises(CborError):
        cbor.encode_head(0, 2**64)
