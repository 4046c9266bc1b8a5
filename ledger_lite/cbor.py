"""Deterministic CBOR (RFC 8949 §4.2.1) for everything that is hashed or signed.

    dumps(obj, *, max_depth=32) -> bytes
    loads(data, *, deterministic=True, max_size=1 MiB, max_depth=32) -> Any
    Tag(tag, value)                       # a tagged item; cbor2.CBORTag is accepted by dumps too
    encode_head(major, argument) -> bytes # the shortest head, for code that concatenates encodings

The profile (decisions are marked *):

* Preferred serialisation: shortest heads, definite lengths only.
* Map keys are sorted by the bytewise lexicographic order of their encodings (RFC 8949 §4.2.1;
  NOT the length-first order of RFC 7049 §3.9 that ``cbor2.dumps(canonical=True)`` uses: they
  differ e.g. for keys 24 (``18 18``) and -1 (``20``), or 256 and "a").
* *Map keys are int, str or bytes only (what COSE labels, CWT claims and our payloads use). Float,
  bool, null, array, map and tagged keys are refused, so Python's ``1 == 1.0 == True`` can never
  merge keys that CBOR keeps apart.
* *Floats use the shortest of float16/32/64 that represents the value exactly (§4.2.2's rule); a
  float stays a float (1.0 -> ``f9 3c00``, never ``01``), -0.0 keeps its sign (``f9 8000``).
  NaN and +-Infinity are refused in both directions: they break equality and would make a
  timestamp unbounded, and no message of ours needs them.
* Integers from -2**64 to 2**64-1; no bignums (tags 2/3 are not interpreted).
* Simple values: false, true, null only (undefined and unassigned simple values are refused).
* *Tags are opaque: ``loads`` returns ``Tag(n, value)`` for every tag number, 0/1/2/3/55799
  included (nothing is turned into datetimes, big ints or sets, and no shared references).
* Text must be valid UTF-8.

``loads`` is strict: one item and no trailing bytes, no indefinite lengths, no duplicate map keys,
nesting at most ``max_depth`` (an item inside k arrays/maps/tags needs k <= max_depth: the same
rule as cbor2), and with ``deterministic=True`` (the default) the input must be exactly the
deterministic encoding of what it decodes to. It returns plain ``dict``/``list`` values.
Every failure is a ``CborError`` that says what and at which byte offset (``loads``) or path
(``dumps``).

Speed: ``loads`` decodes with cbor2's C decoder and checks determinism by re-encoding
(``dumps(result) == data``); only when that fails does a pure-Python scanner run to say exactly
what is wrong and where. The scanner is the reference: the fuzz tests check the two agree.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from .errors import CborError

__all__ = ["MAX_DEPTH", "MAX_SIZE", "Tag", "dumps", "encode_head", "loads"]

#: default limits for ``loads`` (and the nesting limit for ``dumps``)
MAX_SIZE: Final = 1 << 20
MAX_DEPTH: Final = 32

_UINT64_LIMIT: Final = 1 << 64
_FROZENDICT: Final[type] = getattr(cbor2, "frozendict", dict)
_F16 = struct.Struct(">e")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_H1 = struct.Struct(">BB")
_H2 = struct.Struct(">BH")
_H4 = struct.Struct(">BI")
_H8 = struct.Struct(">BQ")
_U64 = struct.Struct(">Q")
_SMALL_HEADS: Final = tuple(tuple(bytes([(major << 5) | n]) for n in range(24)) for major in range(8))
_INT_HEADS, _BYTES_HEADS, _STR_HEADS, _ARRAY_HEADS, _MAP_HEADS = (_SMALL_HEADS[m] for m in (0, 2, 3, 4, 5))


@dataclass(frozen=True, slots=True)
class Tag:
    """A CBOR tagged item (major type 6). ``tag`` is 0 .. 2**64-1."""

    tag: int
    value: Any


def encode_head(major: int, argument: int) -> bytes:
    """The shortest head for ``major`` (0-7) with ``argument`` (0 .. 2**64-1)."""
    if argument < 24:
        if argument < 0:
            raise CborError(f"negative CBOR head argument {argument}")
        return _SMALL_HEADS[major][argument]
    ib = major << 5
    if argument < 0x100:
        return _H1.pack(ib | 24, argument)
    if argument < 0x10000:
        return _H2.pack(ib | 25, argument)
    if argument < 0x100000000:
        return _H4.pack(ib | 26, argument)
    if argument < _UINT64_LIMIT:
        return _H8.pack(ib | 27, argument)
    raise CborError(f"CBOR head argument {argument} does not fit in 64 bits")


def _encode_int(value: int) -> bytes:
    if value >= 0:
        if value < 24:
            return _SMALL_HEADS[0][value]
        if value >= _UINT64_LIMIT:
            raise CborError(f"integer {value} is out of range (no bignums)")
        return encode_head(0, value)
    if value < -_UINT64_LIMIT:
        raise CborError(f"integer {value} is out of range (no bignums)")
    return encode_head(1, -1 - value)


def _encode_float(value: float) -> bytes:
    """The shortest of float16/32/64 that holds ``value`` exactly (RFC 8949 §4.2.2)."""
    if value != value or value in (_INF, _NINF):
        raise CborError(f"{value} is not encodable (NaN and Infinity are refused)")
    double = _F64.pack(value)
    if _U64.unpack(double)[0] & 0x1FFFFFFF:  # mantissa bits no float32 has: the common case
        return b"\xfb" + double
    try:
        half = _F16.pack(value)
        if _F16.unpack(half)[0] == value:
            return b"\xf9" + half
    except OverflowError:
        pass
    try:
        single = _F32.pack(value)
        if _F32.unpack(single)[0] == value:
            return b"\xfa" + single
    except OverflowError:
        pass
    return b"\xfb" + double


_INF: Final = float("inf")
_NINF: Final = float("-inf")

#: encodings of recently seen short int/str map keys (bounded; cleared when full)
_KEY_CACHE: dict[int | str, bytes] = {}
_KEY_CACHE_MAX: Final = 2048
#: str-keyed maps by their keys in insertion order -> (encoded key, key) in deterministic order.
#: Only all-str key sets are cached: a str is equal only to a str, whereas 1 == 1.0 == True.
_SHAPES: dict[tuple[str, ...], tuple[tuple[bytes, str], ...]] = {}
_SHAPES_MAX: Final = 256


def _encode_key(key: Any) -> bytes:
    kt = type(key)
    if kt is int or kt is str:
        kb = _KEY_CACHE.get(key)
        if kb is not None:
            return kb
        if kt is int:
            kb = _encode_int(key)
        else:
            raw = _utf8(key)
            kb = encode_head(3, len(raw)) + raw
            if len(raw) > 48:
                return kb
        if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
            _KEY_CACHE.clear()
        _KEY_CACHE[key] = kb
        return kb
    if kt is bytes:
        return encode_head(2, len(key)) + bytes(key)
    if isinstance(key, bool):
        raise CborError("map keys must be int, str or bytes (not bool)")
    if isinstance(key, int):
        return _encode_int(int(key))
    if isinstance(key, str):
        raw = _utf8(key)
        return encode_head(3, len(raw)) + raw
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
        return encode_head(2, len(raw)) + raw
    raise CborError(f"map keys must be int, str or bytes (not {type(key).__name__})")


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as err:
        raise CborError(f"text is not encodable as UTF-8: {err}") from err


def _first(item: tuple[bytes, object]) -> bytes:
    return item[0]


def _encode(obj: Any, out: bytearray, depth: int, max_depth: int) -> None:
    """Append the deterministic encoding of ``obj`` to ``out``. Hot path: exact types first."""
    t = type(obj)
    if t is str:
        raw = _utf8(obj)
        n = len(raw)
        out += _STR_HEADS[n] if n < 24 else encode_head(3, n)
        out += raw
    elif t is int:
        out += _INT_HEADS[obj] if 0 <= obj < 24 else _encode_int(obj)
    elif t is bytes:
        n = len(obj)
        out += _BYTES_HEADS[n] if n < 24 else encode_head(2, n)
        out += obj
    elif t is float:
        out += _encode_float(obj)
    elif t is dict or t is _FROZENDICT:
        _encode_map(obj, out, depth, max_depth, checked=True)
    elif t is list or t is tuple:
        seq: list[object] | tuple[object, ...] = obj
        n = len(seq)
        out += _ARRAY_HEADS[n] if n < 24 else encode_head(4, n)
        if n:
            if depth >= max_depth:
                raise CborError(f"nesting deeper than {max_depth}")
            index = 0
            try:
                for index, item in enumerate(seq):  # noqa: B007 - index is used by the error path
                    _encode(item, out, depth + 1, max_depth)
            except CborError as err:
                raise _at(err, f"[{index}]") from err.__cause__
    elif obj is None:
        out += b"\xf6"
    elif t is bool:
        out += b"\xf5" if obj else b"\xf4"
    elif t is Tag or t is cbor2.CBORTag:
        number = obj.tag
        if type(number) is not int or not 0 <= number < _UINT64_LIMIT:
            raise CborError(f"tag number {number!r} is not an integer 0 .. 2**64-1")
        out += encode_head(6, number)
        if depth >= max_depth:
            raise CborError(f"nesting deeper than {max_depth}")
        try:
            _encode(obj.value, out, depth + 1, max_depth)
        except CborError as err:
            raise _at(err, f"<tag {number}>") from err.__cause__
    else:
        _encode_other(obj, out, depth, max_depth)


def _encode_other(obj: object, out: bytearray, depth: int, max_depth: int) -> None:
    """Subclasses of the supported types (IntEnum, StrEnum, OrderedDict, ...) and bytes-likes."""
    if isinstance(obj, bool):
        out += b"\xf5" if obj else b"\xf4"
    elif isinstance(obj, int):
        out += _encode_int(int(obj))
    elif isinstance(obj, str):
        raw = _utf8(obj)
        out += encode_head(3, len(raw))
        out += raw
    elif isinstance(obj, bytes | bytearray | memoryview):
        raw = bytes(obj)
        out += encode_head(2, len(raw))
        out += raw
    elif isinstance(obj, float):
        out += _encode_float(float(obj))
    elif isinstance(obj, Mapping):
        _encode_map(obj, out, depth, max_depth, checked=False)
    elif isinstance(obj, list | tuple):
        _encode(list(obj), out, depth, max_depth)
    else:
        raise CborError(f"cannot encode {type(obj).__name__} as deterministic CBOR")


def _sorted_keys(obj: Mapping[Any, Any], *, checked: bool) -> tuple[tuple[bytes, Any], ...]:
    """The map's (encoded key, key) pairs in deterministic order."""
    shape: tuple[Any, ...] | None = None
    if checked:
        shape = tuple(obj)
        cached = _SHAPES.get(shape)
        if cached is not None:
            return cached
    pairs: list[tuple[bytes, Any]] = []
    key: object = None
    try:
        for key in obj:
            pairs.append((_encode_key(key), key))
    except CborError as err:
        raise _at(err, _label(key)) from err.__cause__
    pairs.sort(key=_first)
    ordered = tuple(pairs)
    if not checked:
        for (a, _), (b, key) in zip(ordered, ordered[1:], strict=False):
            if a == b:
                raise CborError(f"duplicate map key {key!r}")
    elif shape is not None and len(shape) <= 64 and all(type(k) is str and len(k) <= 48 for k in shape):
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[shape] = ordered
    return ordered


def _encode_map(obj: Mapping[Any, Any], out: bytearray, depth: int, max_depth: int, *, checked: bool) -> None:
    n = len(obj)
    out += _MAP_HEADS[n] if n < 24 else encode_head(5, n)
    if not n:
        return
    if depth >= max_depth:
        raise CborError(f"nesting deeper than {max_depth}")
    depth += 1
    key: object = None
    try:
        for kb, key in _sorted_keys(obj, checked=checked):
            out += kb
            value = obj[key]
            vt = type(value)
            if vt is str:
                raw = _utf8(value)
                n = len(raw)
                out += _STR_HEADS[n] if n < 24 else encode_head(3, n)
                out += raw
            elif vt is int and 0 <= value < 24:
                out += _INT_HEADS[value]
            elif vt is float:
                out += _encode_float(value)
            else:
                _encode(value, out, depth, max_depth)
    except CborError as err:
        raise _at(err, _label(key)) from err.__cause__


def _label(key: object) -> str:
    return f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"


def _at(err: CborError, segment: str) -> CborError:
    """Prefix a path segment to an encoding error's path (``at $.a[2]: ...``)."""
    msg = str(err)
    if msg.startswith("at $"):
        return CborError(f"at ${segment}{msg[4:]}")
    return CborError(f"at ${segment}: {msg}")


def dumps(obj: object, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Deterministic encoding (see the module docstring). Raises ``CborError`` naming the path."""
    out = bytearray()
    try:
        _encode(obj, out, 0, max_depth)
    except RecursionError as err:
        raise CborError("nesting too deep for the Python stack (lower max_depth)") from err
    return bytes(out)


# --------------------------------------------------------------------------- decoding


def _raw_tag(number: int) -> Any:
    def decode(value: Any, immutable: bool = False) -> Tag:
        return Tag(number, _thaw(value))

    return decode


#: every tag cbor2 would interpret (datetimes, bignums, shared/string references, sets, ...)
_SEMANTIC_TAGS: Final = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 43000)
_SELF_DESCRIBED: Final = 55799
_SEMANTIC_DECODERS: Final = {n: _raw_tag(n) for n in (*_SEMANTIC_TAGS, _SELF_DESCRIBED)}


def _tag_hook(tag: cbor2.CBORTag, immutable: bool = False) -> Tag:
    return Tag(tag.tag, _thaw(tag.value))


def _thaw(value: Any) -> Any:
    """cbor2 6 decodes containers inside tags as tuple/frozendict: make them list/dict."""
    t = type(value)
    if t is tuple or t is list:
        return [_thaw(v) for v in value]
    if t is _FROZENDICT or t is dict:
        return {k: _thaw(v) for k, v in value.items()}
    return value


def loads(
    data: bytes | bytearray | memoryview,
    *,
    deterministic: bool = True,
    max_size: int = MAX_SIZE,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Decode exactly one CBOR item (see the module docstring). Raises ``CborError``."""
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise CborError(f"CBOR input must be bytes, not {type(data).__name__}")
        data = bytes(data)
    if len(data) > max_size:
        raise CborError(f"CBOR input of {len(data)} bytes exceeds the limit of {max_size}")
    if not data:
        raise CborError("empty input (at offset 0)")
    if not deterministic:
        return _Scanner(data, max_depth, deterministic=False).run()
    try:
        value = cbor2.loads(
            data,
            semantic_decoders=_SEMANTIC_DECODERS,
            tag_hook=_tag_hook,
            max_depth=max_depth,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            str_errors="strict",
        )
        if dumps(value, max_depth=max_depth) == data:
            return value
    except Exception:  # noqa: BLE001 - any failure goes to the reference scanner, which decides
        pass
    # slow path: say exactly what is wrong, and where
    return _Scanner(data, max_depth, deterministic=True).run()


class _Scanner:
    """A strict pure-Python decoder with byte offsets in its errors: the reference for ``loads``."""

    __slots__ = ("data", "deterministic", "max_depth", "pos")

    def __init__(self, data: bytes, max_depth: int, *, deterministic: bool) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.deterministic = deterministic

    def fail(self, offset: int, what: str) -> CborError:
        return CborError(f"at offset {offset}: {what}")

    def run(self) -> Any:
        try:
            value = self.item(0)
        except RecursionError as err:
            raise CborError("nesting too deep for the Python stack (lower max_depth)") from err
        if self.pos != len(self.data):
            raise self.fail(self.pos, f"{len(self.data) - self.pos} trailing bytes after the CBOR item")
        return value

    def take(self, n: int, start: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self.fail(start, f"truncated: needs {end - len(self.data)} more bytes")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def item(self, depth: int) -> Any:
        data = self.data
        start = self.pos
        if start >= len(data):
            raise self.fail(start, "unexpected end of input")
        ib = data[start]
        major, ai = ib >> 5, ib & 31
        self.pos += 1
        if major == 7:
            return self.simple(ai, start)
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            arg = int.from_bytes(self.take(size, start), "big")
            if self.deterministic and arg < (24 if size == 1 else 1 << (4 * size)):
                raise self.fail(start, f"argument {arg} not in its shortest form (non-deterministic head)")
        elif ai == 31:
            what = "indefinite-length item" if major in (2, 3, 4, 5) else "reserved additional information 31"
            raise self.fail(start, f"{what} (not allowed)")
        else:
            raise self.fail(start, f"reserved additional information {ai}")
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg, start)
        if major == 3:
            raw = self.take(arg, start)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise self.fail(start, f"text string is not valid UTF-8 ({err.reason})") from err
        if depth >= self.max_depth and (major == 6 or arg):
            raise self.fail(start, f"nesting deeper than {self.max_depth}")
        if major == 4:
            if arg > len(data) - self.pos:
                raise self.fail(start, f"array of {arg} items cannot fit in the remaining input")
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            return self.map(arg, depth, start)
        return Tag(arg, self.item(depth + 1))

    def map(self, count: int, depth: int, start: int) -> dict[Any, Any]:
        if 2 * count > len(self.data) - self.pos:
            raise self.fail(start, f"map of {count} pairs cannot fit in the remaining input")
        result: dict[Any, Any] = {}
        previous = b""
        for _ in range(count):
            kstart = self.pos
            key = self.item(depth + 1)
            if type(key) not in (int, str, bytes):
                raise self.fail(kstart, f"map key of type {type(key).__name__} (keys must be int, str or bytes)")
            if key in result:
                raise self.fail(kstart, f"duplicate map key {key!r}")
            if self.deterministic:
                encoded = self.data[kstart : self.pos]
                if encoded <= previous:
                    raise self.fail(kstart, f"map key {key!r} out of order (keys must be sorted bytewise)")
                previous = encoded
            result[key] = self.item(depth + 1)
        return result

    def simple(self, ai: int, start: int) -> Any:
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 23:
            raise self.fail(start, "undefined is not allowed")
        if ai < 24 or ai == 24:
            raise self.fail(start, "simple values other than false/true/null are not allowed")
        if ai > 27:
            raise self.fail(start, "break outside an indefinite-length item" if ai == 31 else f"reserved value {ai}")
        fmt = {25: _F16, 26: _F32, 27: _F64}[ai]
        raw = self.take(fmt.size, start)
        value: float = fmt.unpack(raw)[0]
        if value != value or value in (_INF, _NINF):
            raise self.fail(start, "NaN and Infinity are not allowed")
        if self.deterministic and _encode_float(value) != self.data[start : self.pos]:
            raise self.fail(start, f"float {value!r} not in its shortest exact form")
        return value
