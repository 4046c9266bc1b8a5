"""DBC decoding: CAN frames of one bus -> ``SignalSample``s named by VSS, in our units.

One ``DbcDecoder`` per bus, one DBC per bus (anything cantools loads: .dbc, .kcd, .sym, .arxml).
Beside the DBC, an optional **VSS mapping** file ``<dbc stem>.vss.toml`` says which DBC signals
are which VSS signals::

    [options]
    emit_unmapped = true          # signals not listed come out as "<bus>.<MESSAGE>.<Signal>"

    [signals]
    "ESP_1.VehicleSpeed" = "Vehicle.Speed"            # km/h in the DBC -> m/s (drivers/vss.py)
    "ESP_1.ESP_1_Counter" = false                      # never emitted
    "GEARBOX_1.GearLever" = { vss = "Vehicle.Powertrain.Transmission.SelectedGear",
                              map = { P = 126, R = -1, N = 0, D = 127, S = 127 } }
    "gnss_imu.AccelerationX" = { vss = "Vehicle.Acceleration.Vertical", offset = -9.80665 }

An entry is a VSS name, ``false``, or a table with ``vss`` and optionally:

* ``scale`` and ``offset``, applied to the DBC's physical value first, in the DBC's unit;
* ``unit``, the unit the DBC value really is in (when the DBC says nothing or something wrong);
* ``map``, DBC value or VAL_ choice name -> VSS value (no scale/offset/unit with it); a value
  the map does not list is dropped and counted as ``unmapped_value``;
* ``valid``, a signal of the same message (``"PositionValid"``) that must be non-zero for the
  sample to be emitted; counted as ``invalid`` otherwise.

Every VSS name must be in ``drivers.vss.CATALOGUE``; the value is converted from the DBC unit
to the catalogue's unit, and a conversion that cannot be made is an error when the mapping is
loaded, not when frames arrive. Unmapped signals keep their DBC value, converted
to our unit when the DBC unit is one ``drivers.vss`` knows (km -> m, bar -> kPa), with VAL_
choices as strings.

``decode()`` is the hot path: everything that can be is worked out at load into one plan per
frame id, so a frame costs a dict lookup, one cantools decode and one list comprehension.
Frames of ids the DBC does not have give ``[]``; a frame whose length does not fit or that
cantools cannot decode raises ``DecodeError(where="can0 0x1A0 ESP_1")``. Both are counted.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cantools
import cantools.database
from cantools.database.can import Database, Message
from cantools.database.errors import Error as CantoolsError
from cantools.database.namedsignalvalue import NamedSignalValue

from hal.errors import DecodeError, HalError
from hal.types import CAN_FD_DLC, CanFilter, CanFrame, SignalSample, len_to_dlc

from . import vss

__all__ = [
    "MAPPING_SUFFIX",
    "DbcDecoder",
    "DecodedMessage",
    "DecodedSignal",
    "EncodeError",
    "SignalMapping",
    "load_mapping",
    "mapping_path_for",
]

log = logging.getLogger(__name__)

MAPPING_SUFFIX = ".vss.toml"
#: plan-key bit marking an extended (29-bit) id; above every valid 29-bit id
_EXT = 0x20000000


class EncodeError(HalError, ValueError):
    """Signal values could not be encoded into a frame of the DBC."""


# --------------------------------------------------------------------------------------------
# The mapping file


@dataclass(frozen=True, slots=True)
class SignalMapping:
    """One ``"MESSAGE.Signal"`` entry of a VSS mapping file."""

    key: str
    #: VSS name; ``None`` drops the signal
    vss: str | None
    scale: float = 1.0
    offset: float = 0.0
    #: the unit the DBC value is in, overriding the DBC's own unit string
    unit: str | None = None
    #: DBC value (number as text, or VAL_ choice name) -> VSS value
    map: Mapping[str, Any] | None = None
    #: a signal of the same message that must be non-zero for this one to be emitted
    valid: str | None = None


def mapping_path_for(dbc: str | Path) -> Path:
    """``dir/<stem>.vss.toml`` beside ``dir/<stem>.dbc``."""
    dbc = Path(dbc)
    return dbc.with_name(dbc.stem + MAPPING_SUFFIX)


def load_mapping(path: str | Path) -> tuple[dict[str, SignalMapping], dict[str, Any]]:
    """Read a mapping file: ``({"MESSAGE.Signal": SignalMapping}, options)``.

    Raises ``DecodeError(where=path)`` listing every problem found.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DecodeError(f"cannot read VSS mapping: {err.strerror or err}", where=str(path)) from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise DecodeError(f"not valid TOML: {err}", where=str(path)) from err
    problems: list[str] = []
    unknown_tables = set(doc) - {"signals", "options"}
    if unknown_tables:
        problems.append(f"unknown tables {sorted(unknown_tables)} (expected [signals] and [options])")
    options = doc.get("options", {})
    if not isinstance(options, dict):
        problems.append("[options] must be a table")
        options = {}
    unknown_opts = set(options) - {"emit_unmapped"}
    if unknown_opts:
        problems.append(f"unknown options {sorted(unknown_opts)}")
    if "emit_unmapped" in options and not isinstance(options["emit_unmapped"], bool):
        problems.append("options.emit_unmapped must be true or false")
    entries: dict[str, SignalMapping] = {}
    signals = doc.get("signals", {})
    if not isinstance(signals, dict):
        problems.append("[signals] must be a table")
        signals = {}
    for key, spec in signals.items():
        if key.count(".") != 1:
            problems.append(f"{key!r}: keys are 'MESSAGE.Signal'")
            continue
        if spec is False:
            entries[key] = SignalMapping(key, None)
        elif isinstance(spec, str):
            entries[key] = SignalMapping(key, spec)
        elif isinstance(spec, dict):
            extra = set(spec) - {"vss", "scale", "offset", "unit", "map", "valid"}
            if extra:
                problems.append(f"{key!r}: unknown fields {sorted(extra)}")
            name = spec.get("vss")
            if not isinstance(name, str):
                problems.append(f"{key!r}: 'vss' (a VSS name) is required")
                continue
            scale, offset = spec.get("scale", 1.0), spec.get("offset", 0.0)
            if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (scale, offset)):
                problems.append(f"{key!r}: scale and offset must be numbers")
                continue
            unit = spec.get("unit")
            if unit is not None and not isinstance(unit, str):
                problems.append(f"{key!r}: unit must be a string")
                continue
            table = spec.get("map")
            if table is not None and not isinstance(table, dict):
                problems.append(f"{key!r}: map must be a table")
                continue
            valid = spec.get("valid")
            if valid is not None and not isinstance(valid, str):
                problems.append(f"{key!r}: valid must be a signal name")
                continue
            entries[key] = SignalMapping(key, name, float(scale), float(offset), unit, table, valid)
        else:
            problems.append(f"{key!r}: expected a VSS name, false, or a table")
    if problems:
        raise DecodeError("; ".join(problems), where=str(path))
    return entries, dict(options)


# --------------------------------------------------------------------------------------------
# Results of decode_message


@dataclass(frozen=True, slots=True)
class DecodedSignal:
    """One signal as the DBC defines it (for the CLI and for tests)."""

    name: str
    #: value in the DBC's unit (raw when decoded without scaling); VAL_ choice name as str
    value: int | float | str
    #: the DBC's unit string ("" when it has none)
    unit: str
    vss: str | None = None
    #: the number behind a choice name (``None`` when ``value`` is a number)
    raw: int | float | None = None


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    bus: str
    frame_id: int
    is_extended_id: bool
    name: str
    signals: tuple[DecodedSignal, ...]
    timestamp: float
    monotonic: float

    def values(self) -> dict[str, int | float | str]:
        return {s.name: s.value for s in self.signals}


# --------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True, slots=True)
class _SignalPlan:
    name: str
    unit: str
    convert: Callable[[Any], Any] | None
    #: the converter returns None for values it has no mapping for
    may_drop: bool = False
    vss: str | None = None
    #: DBC signal that must be non-zero in the same frame
    valid: str | None = None


@dataclass(frozen=True, slots=True)
class _MessagePlan:
    message: Message
    name: str
    length: int
    #: data lengths accepted besides ``length`` (a CAN FD frame padded to the next DLC)
    padded_length: int
    decode: Callable[..., dict[str, Any]]
    signals: dict[str, _SignalPlan]
    may_drop: bool
    where: str
    source: str
    vss_names: dict[str, str]


def _linear(scale: float, offset: float, cast: type | None) -> Callable[[Any], Any] | None:
    if cast is bool:
        return lambda v: bool(v * scale + offset)
    if cast is int:
        return lambda v: int(round(v * scale + offset))
    if scale == 1.0 and offset == 0.0:
        return None if cast is None else float
    return lambda v: v * scale + offset


_CASTS: dict[str, type | None] = {"float": float, "int": int, "bool": bool, "str": str}


def _map_key(key: str) -> list[Any]:
    """A map key as the decoded values it can stand for ("1" -> 1 and 1.0)."""
    try:
        return [int(key, 0)]
    except ValueError:
        pass
    try:
        return [float(key)]
    except ValueError:
        return []


class DbcDecoder:
    """Decodes the frames of one bus with one DBC and its VSS mapping.

    ``mapping``: a mapping file path, ``None`` to use ``<dbc stem>.vss.toml`` beside the DBC when
    there is one, ``False`` for none. ``emit_unmapped`` (default: the mapping file's option, else
    true) emits signals that have no VSS name under ``"<bus>.<MESSAGE>.<Signal>"``.
    ``strict_length`` (default) refuses frames longer than the DBC message (a CAN FD frame padded
    to the next valid length is accepted); shorter ones are always refused by ``decode()``.
    ``prune_choices`` strips a common message-name prefix from VAL_ choice names (cantools'
    ``--prune``). ``decode()`` does not look at ``frame.channel``: routing frames of a bus to its
    decoder is the caller's job.
    """

    def __init__(
        self,
        dbc: str | Path,
        *,
        bus: str = "can0",
        mapping: str | Path | None | bool = None,
        emit_unmapped: bool | None = None,
        strict_length: bool = True,
        prune_choices: bool = False,
    ) -> None:
        self.bus = bus
        self.path = Path(dbc)
        self.strict_length = strict_length
        self.database: Database = _load_database(self.path, prune_choices)
        entries: dict[str, SignalMapping] = {}
        options: dict[str, Any] = {}
        self.mapping_path: Path | None = None
        if mapping is None:
            beside = mapping_path_for(self.path)
            if beside.is_file():
                self.mapping_path = beside
        elif mapping is not False and mapping is not True:
            self.mapping_path = Path(mapping)
        elif mapping is True:
            self.mapping_path = mapping_path_for(self.path)
        if self.mapping_path is not None:
            entries, options = load_mapping(self.mapping_path)
        self.emit_unmapped = emit_unmapped if emit_unmapped is not None else options.get("emit_unmapped", True)
        self._plans: dict[int, _MessagePlan] = {}
        self._by_name: dict[str, _MessagePlan] = {}
        self._build_plans(entries)
        self._n_decoded = 0
        self._n_unknown = 0
        self._n_skipped = 0
        self._n_unmapped_value = 0
        self._n_invalid = 0
        self._errors = {"length": 0, "mux": 0, "decode": 0}

    # ---------------------------------------------------------------------------- plans

    def _build_plans(self, entries: dict[str, SignalMapping]) -> None:
        problems: list[str] = []
        used: set[str] = set()
        for msg in self.database.messages:
            if msg.is_container:
                log.warning("%s: container message %s is not decoded", self.path, msg.name)
                continue
            ident = f"0x{msg.frame_id:08X}" if msg.is_extended_frame else f"0x{msg.frame_id:03X}"
            signals: dict[str, _SignalPlan] = {}
            vss_names: dict[str, str] = {}
            for sig in msg.signals:
                key = f"{msg.name}.{sig.name}"
                entry = entries.get(key)
                if entry is not None:
                    used.add(key)
                try:
                    plan = self._signal_plan(msg, sig, entry)
                except DecodeError as err:
                    problems.append(f"{key}: {err}")
                    continue
                if plan is not None:
                    signals[sig.name] = plan
                    if plan.vss:
                        vss_names[sig.name] = plan.vss
            length = msg.length
            plan_m = _MessagePlan(
                message=msg,
                name=msg.name,
                length=length,
                padded_length=CAN_FD_DLC[len_to_dlc(length)] if length <= 64 else length,
                decode=msg.decode_simple,
                signals=signals,
                may_drop=any(p.may_drop or p.valid for p in signals.values()),
                where=f"{self.bus} {ident} {msg.name}",
                source=f"{self.bus}.{msg.name}",
                vss_names=vss_names,
            )
            self._plans[msg.frame_id | (_EXT if msg.is_extended_frame else 0)] = plan_m
            self._by_name[msg.name] = plan_m
        unknown = sorted(set(entries) - used)
        if unknown:
            problems.append(f"no such signal in {self.path.name}: {', '.join(unknown)}")
        if problems:
            raise DecodeError("; ".join(problems), where=str(self.mapping_path or self.path))

    def _signal_plan(self, msg: Message, sig: Any, entry: SignalMapping | None) -> _SignalPlan | None:
        dbc_unit = sig.unit or ""
        choices = sig.conversion.choices or {}
        # decoded (scaled, no choices) value -> choice name
        by_value: dict[Any, str] = {
            sig.conversion.raw_to_scaled(raw, False): str(name) for raw, name in choices.items()
        }
        if entry is None:
            if not self.emit_unmapped:
                return None
            name = f"{self.bus}.{msg.name}.{sig.name}"
            if by_value:
                return _SignalPlan(name, "", _choice_or_value(by_value))
            target = vss.canonical_unit(dbc_unit)
            if target is None:
                return _SignalPlan(name, dbc_unit, None)
            scale, offset = vss.unit_conversion(dbc_unit, target)
            return _SignalPlan(name, target, _linear(scale, offset, None))
        if entry.vss is None:
            return None
        plan = self._mapped_plan(sig, entry, dbc_unit, by_value)
        if entry.valid is None:
            return plan
        if entry.valid not in {s.name for s in msg.signals}:
            raise DecodeError(f"valid: {msg.name} has no signal {entry.valid!r}")
        return dataclasses.replace(plan, valid=entry.valid)

    def _mapped_plan(self, sig: Any, entry: SignalMapping, dbc_unit: str, by_value: dict[Any, str]) -> _SignalPlan:
        assert entry.vss is not None
        spec = vss.vss_signal(entry.vss)
        cast = _CASTS[spec.datatype]
        if entry.map is not None:
            if entry.scale != 1.0 or entry.offset != 0.0 or entry.unit is not None:
                raise DecodeError("'map' takes the DBC value as it is: no scale, offset or unit with it")
            table: dict[Any, Any] = {}
            for key, value in entry.map.items():
                problem = _check_value(spec, value)
                if problem:
                    raise DecodeError(f"map value for {key!r}: {problem}")
                hits = [v for v, n in by_value.items() if n == key] or _map_key(key)
                if not hits:
                    raise DecodeError(f"map key {key!r} is neither a number nor a VAL_ choice of the signal")
                for hit in hits:
                    table[hit] = value
            return _SignalPlan(spec.name, spec.unit, table.get, may_drop=True, vss=spec.name)
        if spec.datatype == "str":
            if not by_value:
                raise DecodeError(f"{spec.name} takes text values: give a 'map'")
            if spec.allowed:
                bad = sorted(set(by_value.values()) - set(spec.allowed))
                if bad:
                    raise DecodeError(f"choices {bad} are not values of {spec.name}: give a 'map'")
            return _SignalPlan(spec.name, spec.unit, by_value.get, may_drop=True, vss=spec.name)
        source_unit = entry.unit if entry.unit is not None else dbc_unit
        uscale, uoffset = vss.unit_conversion(source_unit, spec.unit)
        scale = entry.scale * uscale
        offset = entry.offset * uscale + uoffset
        return _SignalPlan(spec.name, spec.unit, _linear(scale, offset, cast), vss=spec.name)

    # ---------------------------------------------------------------------------- decoding

    def decode(self, frame: CanFrame) -> list[SignalSample]:
        """The frame's signals as samples (``[]`` for an id the DBC does not have).

        Raises ``DecodeError`` for a frame the DBC has but that does not decode.
        """
        plan = self._plans.get(frame.arbitration_id | _EXT if frame.is_extended_id else frame.arbitration_id)
        if plan is None:
            self._n_unknown += 1
            return []
        if frame.is_remote_frame or frame.is_error_frame:
            self._n_skipped += 1
            return []
        data = frame.data
        if len(data) != plan.length:
            self._check_length(plan, frame, truncated_ok=False, excess_ok=not self.strict_length)
        try:
            values = plan.decode(data, False, True, False, True)
        except (CantoolsError, ValueError) as err:
            raise self._decode_failed(plan, frame, err) from err
        self._n_decoded += 1
        ts = frame.timestamp
        mono = frame.monotonic
        src = plan.source
        sigs = plan.signals
        if plan.may_drop:
            return self._samples_dropping(values, sigs, ts, mono, src)
        return [
            SignalSample(sp.name, v if sp.convert is None else sp.convert(v), sp.unit, ts, mono, src)
            for k, v in values.items()
            if (sp := sigs.get(k)) is not None
        ]

    def _samples_dropping(
        self, values: dict[str, Any], sigs: dict[str, _SignalPlan], ts: float, mono: float, src: str
    ) -> list[SignalSample]:
        out = []
        for k, v in values.items():
            sp = sigs.get(k)
            if sp is None:
                continue
            if sp.valid is not None and not values.get(sp.valid):
                self._n_invalid += 1
                continue
            if sp.convert is not None:
                v = sp.convert(v)
                if v is None:
                    self._n_unmapped_value += 1
                    continue
            out.append(SignalSample(sp.name, v, sp.unit, ts, mono, src))
        return out

    def decode_message(
        self,
        frame: CanFrame,
        *,
        decode_choices: bool = True,
        scaling: bool = True,
        allow_truncated: bool = False,
        allow_excess: bool | None = None,
    ) -> DecodedMessage | None:
        """The frame as the DBC sees it, values in the DBC's units; ``None`` for an unknown id.

        Options as cantools' ``Message.decode``; ``allow_excess`` defaults to ``not
        strict_length`` (cantools' API default is true, its command line's false). Raises
        ``DecodeError`` like ``decode()``.
        """
        plan = self._plans.get(frame.arbitration_id | _EXT if frame.is_extended_id else frame.arbitration_id)
        if plan is None:
            self._n_unknown += 1
            return None
        if frame.is_remote_frame or frame.is_error_frame:
            self._n_skipped += 1
            return None
        if len(frame.data) != plan.length:
            excess_ok = not self.strict_length if allow_excess is None else allow_excess
            self._check_length(plan, frame, truncated_ok=allow_truncated, excess_ok=excess_ok)
        try:
            values = plan.decode(frame.data, decode_choices, scaling, allow_truncated, True)
        except (CantoolsError, ValueError) as err:
            raise self._decode_failed(plan, frame, err) from err
        self._n_decoded += 1
        units = {s.name: s.unit or "" for s in plan.message.signals}
        out = []
        for name, value in values.items():
            raw = None
            if isinstance(value, NamedSignalValue):
                raw, value = value.value, str(value.name)
            out.append(DecodedSignal(name, value, units.get(name, ""), plan.vss_names.get(name), raw))
        return DecodedMessage(
            self.bus,
            frame.arbitration_id,
            frame.is_extended_id,
            plan.name,
            tuple(out),
            frame.timestamp,
            frame.monotonic,
        )

    def _check_length(self, plan: _MessagePlan, frame: CanFrame, *, truncated_ok: bool, excess_ok: bool) -> None:
        n = len(frame.data)
        if n < plan.length and truncated_ok:
            return
        if n > plan.length and (excess_ok or (frame.is_fd and n == plan.padded_length)):
            return
        self._errors["length"] += 1
        raise DecodeError(
            f"frame has {n} data bytes, the DBC's {plan.name} has {plan.length}",
            where=plan.where,
            raw=frame.data,
        )

    def _decode_failed(self, plan: _MessagePlan, frame: CanFrame, err: Exception) -> DecodeError:
        kind = "mux" if "multiplexer" in str(err) else "decode"
        self._errors[kind] += 1
        return DecodeError(f"cantools cannot decode it: {err}", where=plan.where, raw=frame.data)

    # ---------------------------------------------------------------------------- encoding

    def encode(
        self,
        message: str | int,
        signals: Mapping[str, Any],
        *,
        scaling: bool = True,
        padding: bool = False,
        strict: bool = True,
    ) -> bytes:
        """cantools' ``encode_message`` on the loaded DBC; ``EncodeError`` on bad values."""
        try:
            msg = (
                self.database.get_message_by_name(message)
                if isinstance(message, str)
                else self.database.get_message_by_frame_id(message)
            )
            return bytes(msg.encode(dict(signals), scaling=scaling, padding=padding, strict=strict))
        except KeyError as err:
            raise EncodeError(f"{self.path.name} has no message {message!r}") from err
        except (CantoolsError, ValueError, TypeError) as err:
            raise EncodeError(f"cannot encode {message!r}: {err}") from err

    def encode_frame(
        self, message: str | int, signals: Mapping[str, Any], *, timestamp: float = 0.0, **options: Any
    ) -> CanFrame:
        """A frame of this bus carrying ``signals`` (for simulators and tests)."""
        data = self.encode(message, signals, **options)
        msg = (
            self.database.get_message_by_name(message)
            if isinstance(message, str)
            else self.database.get_message_by_frame_id(message)
        )
        return CanFrame(
            arbitration_id=msg.frame_id,
            data=data,
            is_extended_id=msg.is_extended_frame,
            is_fd=bool(msg.is_fd) or len(data) > 8,
            channel=self.bus,
            timestamp=timestamp,
        )

    # ---------------------------------------------------------------------------- introspection

    @property
    def counters(self) -> dict[str, int]:
        """Frames decoded, of unknown ids, skipped (remote/error frames), failed by kind; samples
        dropped because the map has no entry for the value or the validity signal was 0."""
        errors = self._errors
        return {
            "decoded": self._n_decoded,
            "unknown_id": self._n_unknown,
            "skipped": self._n_skipped,
            "errors": sum(errors.values()),
            **{f"error.{k}": v for k, v in errors.items()},
            "unmapped_value": self._n_unmapped_value,
            "invalid": self._n_invalid,
        }

    def vss_names(self) -> dict[str, str]:
        """``{"MESSAGE.Signal": VSS name}`` for every mapped signal."""
        return {f"{p.name}.{s}": n for p in self._by_name.values() for s, n in p.vss_names.items()}

    def can_filters(self) -> list[CanFilter]:
        """One exact-match acceptance filter per message of the DBC."""
        return [
            CanFilter(
                p.message.frame_id,
                0x1FFFFFFF if p.message.is_extended_frame else 0x7FF,
                extended=bool(p.message.is_extended_frame),
            )
            for p in self._plans.values()
        ]

    def __repr__(self) -> str:
        return f"DbcDecoder({str(self.path)!r}, bus={self.bus!r}, messages={len(self._plans)})"


def _choice_or_value(table: dict[Any, str]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        return table.get(value, value)

    return convert


def _check_value(spec: vss.VssSignal, value: Any) -> str | None:
    if spec.datatype == "bool" and not isinstance(value, bool):
        return f"{spec.name} takes true/false, not {value!r}"
    if spec.datatype == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{spec.name} takes integers, not {value!r}"
    if spec.datatype == "float" and (not isinstance(value, int | float) or isinstance(value, bool)):
        return f"{spec.name} takes numbers, not {value!r}"
    if spec.datatype == "str":
        if not isinstance(value, str):
            return f"{spec.name} takes text, not {value!r}"
        if spec.allowed and value not in spec.allowed:
            return f"{value!r} is not one of {', '.join(spec.allowed)}"
    return None


def _load_database(path: Path, prune_choices: bool) -> Database:
    try:
        db = cantools.database.load_file(path, prune_choices=prune_choices, strict=True)
    except FileNotFoundError as err:
        raise DecodeError("no such DBC file", where=str(path)) from err
    except OSError as err:
        raise DecodeError(f"cannot read DBC: {err.strerror or err}", where=str(path)) from err
    except (  # cantools' UnsupportedDatabaseFormatError is a CantoolsError
        CantoolsError,
        ValueError,
        KeyError,
        IndexError,
        UnicodeDecodeError,
    ) as err:
        raise DecodeError(f"cantools cannot load it: {err}", where=str(path)) from err
    if not isinstance(db, Database):
        raise DecodeError("not a CAN database (DBC/KCD/SYM/ARXML)", where=str(path))
    return db
