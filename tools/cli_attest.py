"""``acc attest``: check attestations and credentials (signed COSE_Sign1 files).

``acc attest verify FILE [--json] [--trust-root DID[=ROLE] ...] [--roots FILE] [--revoked FILE]
[--chain FILE ...] [--at TIME] [--skew SECONDS]`` verifies FILE and prints what it says:

* an **attestation** verifies on its own: the issuer's did:key is in it (the kid). Its schema
  is checked strictly, and a time more than ``--skew`` ahead of ``--at`` (default: now) fails;
* a **credential** is verified up its issuer chain to the trust roots given by ``--trust-root``
  (a DID, optionally ``=ROLE`` with ROLE one of oem, registration, road_authority,
  pseudonym_ca; a bare DID is trusted for every role) and ``--roots FILE`` (JSON
  ``{"did:key:...": "oem"}`` or lines ``DID ROLE[,ROLE]``). Chain credentials (the owner
  credential behind an access grant, an issuer delegation) come with ``--chain FILE``. Validity
  times are checked at ``--at`` with ``--skew`` seconds of allowance; ``--revoked FILE`` lists
  revoked credential ids (hex) and DIDs, one per line.

FILE holds the COSE bytes, or the same as hex or base64 text. ``--at`` takes ISO 8601
(``2027-01-15T08:00:00Z``) or Unix seconds. Exit codes: 0 valid; 1 not valid (the reason on
stderr); 2 wrong usage (e.g. a credential and no trust root); 65 FILE is not COSE_Sign1 at all;
66 FILE cannot be read.

``acc attest show FILE [--json]`` decodes without verifying anything, and says so (UNVERIFIED).
Exit codes: 0 decoded by its schema, 1 COSE but not of a known kind or schema (the generic
decode is shown), 65, 66 as above.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from agent import exitcodes
from ledger_lite import cbor, cose
from ledger_lite.attestation import KINDS, Attestation, decode_attestation, verify_attestation
from ledger_lite.credentials import (
    CONTENT_TYPES,
    DecodedCredential,
    RevocationList,
    Role,
    TrustStore,
    VerifiedCredential,
    decode_credential,
    verify_credential,
)
from ledger_lite.errors import CoseError, LedgerError, MalformedError

__all__ = ["load_cose", "register"]

_CREDENTIAL_TYPES = frozenset(CONTENT_TYPES.values())
_ALL_ROLES = tuple(Role)


class _InputError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: Any) -> None:
    """Add the ``attest`` command group to ``acc``."""
    attest = subparsers.add_parser(
        "attest", help="verify or show attestations and credentials", description=__doc__.split("\n\n")[0]
    )
    sub = attest.add_subparsers(dest="attest_command", metavar="SUBCOMMAND")
    sub.required = True
    verify = sub.add_parser(
        "verify",
        help="verify an attestation or a credential and print its claims",
        description="Verify a COSE_Sign1 attestation (self-contained) or credential (to the given trust roots).",
        epilog="Exit codes: 0 valid, 1 not valid (reason on stderr), 2 usage, 65 not COSE, 66 cannot read.",
    )
    verify.add_argument("file", metavar="FILE", help="COSE_Sign1 file (binary, hex or base64)")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument(
        "--trust-root",
        action="append",
        default=[],
        metavar="DID[=ROLE]",
        help="a trust root for credentials (repeatable); without =ROLE trusted for every role",
    )
    verify.add_argument("--roots", metavar="FILE", help='trust roots: JSON {"did": "role"} or lines "DID ROLE[,ROLE]"')
    verify.add_argument("--revoked", metavar="FILE", help="revoked credential ids (hex) and DIDs, one per line")
    verify.add_argument("--chain", action="append", default=[], metavar="FILE", help="a chain credential (repeatable)")
    verify.add_argument("--at", metavar="TIME", help="check validity at TIME (ISO 8601 or Unix seconds; default now)")
    verify.add_argument("--skew", type=float, default=60.0, metavar="SECONDS", help="clock-skew allowance (60)")
    verify.set_defaults(func=cmd_verify)
    show = sub.add_parser(
        "show",
        help="decode an attestation or credential WITHOUT verifying it",
        description="Decode a COSE_Sign1 attestation or credential. Nothing is verified.",
    )
    show.add_argument("file", metavar="FILE", help="COSE_Sign1 file (binary, hex or base64)")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=cmd_show)


# --------------------------------------------------------------------------------------------
# input


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _InputError(f"cannot open {path}: {exc.strerror or exc}", exitcodes.NO_INPUT) from None


def _text_forms(raw: bytes) -> list[bytes]:
    """Hex and base64 (standard or URL-safe, padding optional) readings of a text file."""
    try:
        text = "".join(raw.decode("ascii").split())
    except UnicodeDecodeError:
        return []
    out: list[bytes] = []
    try:
        out.append(bytes.fromhex(text))
    except ValueError:
        pass
    padded = text + "=" * (-len(text) % 4)
    for alt in (None, b"-_"):
        try:
            out.append(base64.b64decode(padded, altchars=alt, validate=True))
        except (binascii.Error, ValueError):
            pass
    return out


def load_cose(path: str) -> tuple[bytes, cose.Sign1]:
    """The COSE_Sign1 bytes in ``path`` (binary, hex or base64) and their decoding."""
    raw = _read(path)
    first_error: LedgerError | None = None
    for candidate in (raw, *_text_forms(raw)):
        try:
            return candidate, cose.decode_sign1(candidate)
        except LedgerError as err:
            first_error = first_error or err
    raise _InputError(f"{path} is not a COSE_Sign1 (binary, hex or base64): {first_error}", exitcodes.DATA_ERROR)


def _parse_time(text: str | None) -> float:
    if text is None:
        return time.time()
    try:
        value = float(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _InputError(f"--at {text!r}: not ISO 8601 nor Unix seconds", exitcodes.USAGE) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    if not math.isfinite(value):
        raise _InputError(f"--at {text!r}: not a finite time", exitcodes.USAGE)
    return value


def _roles(text: str, where: str) -> list[Role]:
    try:
        return [Role(r.strip()) for r in text.split(",") if r.strip()]
    except ValueError:
        raise _InputError(f"{where}: unknown role in {text!r} (known: {', '.join(Role)})", exitcodes.USAGE) from None


def _trust_roots(args: argparse.Namespace) -> dict[str, list[Role]]:
    roots: dict[str, list[Role]] = {}
    for item in args.trust_root:
        did, sep, role = item.partition("=")
        roots.setdefault(did, []).extend(_roles(role, "--trust-root") if sep else _ALL_ROLES)
    if args.roots:
        text = _read(args.roots).decode("utf-8", "replace")
        if text.lstrip().startswith("{"):
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise _InputError(f"--roots {args.roots}: bad JSON: {exc}", exitcodes.USAGE) from None
            for did, role in doc.items():
                names = role if isinstance(role, list) else [role]
                roots.setdefault(did, []).extend(_roles(",".join(map(str, names)), f"--roots {args.roots}"))
        else:
            for n, line in enumerate(text.splitlines(), 1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise _InputError(f"--roots {args.roots} line {n}: expected 'DID ROLE[,ROLE]'", exitcodes.USAGE)
                roots.setdefault(parts[0], []).extend(_roles(parts[1], f"--roots {args.roots} line {n}"))
    return roots


# --------------------------------------------------------------------------------------------
# output


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_attestation(att: Attestation, out: TextIO, header: str) -> None:
    out.write(f"{header} attestation {att.kind}\n")
    rows: list[tuple[str, Any]] = [
        ("id", att.id.hex()),
        ("issuer", att.issuer),
        ("seq", att.seq),
        ("prev", att.prev.hex()),
        ("time", f"{att.to_json()['time']} ({att.time_source})"),
    ]
    if att.position is not None:
        p = att.position
        pos = f"{p.lat:.7f}, {p.lon:.7f}"
        if p.alt is not None:
            pos += f", alt {p.alt:g} m"
        if p.accuracy is not None:
            pos += f", accuracy {p.accuracy:g} m"
        rows.append(("position", pos))
    if att.model is not None:
        rows.append(("model", att.model))
    for name, value in rows:
        out.write(f"  {name:<9} {value}\n")
    out.write("  body\n")
    spec = KINDS[att.kind]
    units = {f.name: f.unit for f in spec.fields}
    for name, value in att.body.items():
        shown = value.hex() if isinstance(value, bytes) else value
        unit = f" {units[name]}" if units.get(name) and isinstance(value, float) else ""
        out.write(f"    {name:<18} {shown}{unit}\n")


def _print_credential(cred: DecodedCredential, out: TextIO, header: str) -> None:
    out.write(f"{header} credential {cred.kind}\n")
    doc = cred.to_json()
    rows = [
        ("issuer", cred.issuer),
        ("subject", cred.subject),
        ("id (cti)", cred.cti.hex()),
        ("issued", _iso(cred.claims.iat)),
        ("not before", _iso(cred.claims.nbf)),
        ("expires", _iso(cred.claims.exp) or "never (revocable)"),
    ]
    for name, value in rows:
        if value is not None:
            out.write(f"  {name:<10} {value}\n")
    for name, value in doc["claims"].items():
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        out.write(f"  {name:<10} {value}\n")
    if isinstance(cred, VerifiedCredential):
        for link in cred.chain:
            out.write(f"  {'via':<10} {link.kind} credential {link.cti.hex()} from {link.issuer}\n")
        out.write(f"  {'root':<10} {cred.root}\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, cbor.Tag):
        return {"tag": value.tag, "value": _jsonable(value.value)}
    return value


def _generic(msg: cose.Sign1) -> dict[str, Any]:
    payload: Any = None
    if msg.payload is not None:
        try:
            payload = _jsonable(cbor.loads(msg.payload, deterministic=False))
        except LedgerError:
            payload = msg.payload.hex()
    return {
        "protected": _jsonable(msg.protected),
        "unprotected": _jsonable(msg.unprotected),
        "payload": payload,
        "signature": msg.signature.hex(),
    }


# --------------------------------------------------------------------------------------------
# commands


def _fail(args: argparse.Namespace, out: TextIO, err: TextIO, what: str, exc: Exception) -> int:
    reason = f"{type(exc).__name__}: {exc}"
    if args.json:
        out.write(json.dumps({"valid": False, "type": what, "error": type(exc).__name__, "reason": str(exc)}) + "\n")
    print(f"acc attest verify: NOT VALID ({what}): {reason}", file=err)
    return exitcodes.FAILURE


def cmd_verify(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    try:
        data, msg = load_cose(args.file)
        now = _parse_time(args.at)
        ct = msg.content_type
        if ct in _CREDENTIAL_TYPES:
            roots = _trust_roots(args)
            if not roots:
                raise _InputError(
                    "a credential needs trust roots: --trust-root DID[=ROLE] or --roots FILE", exitcodes.USAGE
                )
            revocation = RevocationList.parse(_read(args.revoked).decode("utf-8", "replace")) if args.revoked else None
            chain = [load_cose(path)[0] for path in args.chain]
    except _InputError as exc:
        print(f"acc attest verify: {exc}", file=err)
        return exc.code
    except MalformedError as exc:  # an unreadable revocation list
        print(f"acc attest verify: {exc}", file=err)
        return exitcodes.USAGE
    if ct in _CREDENTIAL_TYPES:
        try:
            store = TrustStore(roots, revocation, skew=args.skew)
        except (LedgerError, ValueError) as exc:
            print(f"acc attest verify: trust roots: {exc}", file=err)
            return exitcodes.USAGE
        try:
            cred = verify_credential(data, store, now=now, chain=chain)
        except LedgerError as exc:
            return _fail(args, out, err, "credential", exc)
        if args.json:
            out.write(json.dumps({"valid": True, "type": "credential", **cred.to_json()}) + "\n")
        else:
            _print_credential(cred, out, "VALID")
        return exitcodes.OK
    if isinstance(ct, str) and ct in KINDS:
        try:
            att = verify_attestation(data, now=now, skew=args.skew)
        except LedgerError as exc:
            return _fail(args, out, err, "attestation", exc)
        if args.json:
            out.write(json.dumps({"valid": True, "type": "attestation", **att.to_json()}) + "\n")
        else:
            _print_attestation(att, out, "VALID")
        return exitcodes.OK
    return _fail(
        args, out, err, "unknown", CoseError(f"content type {ct!r} is neither an attestation kind nor a credential")
    )


def cmd_show(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    try:
        data, msg = load_cose(args.file)
    except _InputError as exc:
        print(f"acc attest show: {exc}", file=err)
        return exc.code
    ct = msg.content_type
    decoded: Attestation | DecodedCredential | None = None
    problem: Exception | None = None
    try:
        if ct in _CREDENTIAL_TYPES:
            decoded = decode_credential(data)
        elif isinstance(ct, str) and ct in KINDS:
            decoded = decode_attestation(data)
        else:
            problem = CoseError(f"content type {ct!r} is neither an attestation kind nor a credential")
    except LedgerError as exc:
        problem = exc
    if args.json:
        doc: dict[str, Any] = {"verified": False}
        if isinstance(decoded, Attestation):
            doc.update(type="attestation", **decoded.to_json())
        elif decoded is not None:
            doc.update(type="credential", **decoded.to_json())
        else:
            doc.update(type="unknown", error=str(problem), cose=_generic(msg))
        out.write(json.dumps(doc) + "\n")
    elif isinstance(decoded, Attestation):
        _print_attestation(decoded, out, "UNVERIFIED (signature, chain and time not checked)")
    elif decoded is not None:
        _print_credential(decoded, out, "UNVERIFIED (signature, chain, time and revocation not checked)")
    else:
        out.write("UNVERIFIED COSE_Sign1 of no known kind or schema\n")
        out.write(json.dumps(_generic(msg), indent=2) + "\n")
    if problem is not None:
        print(f"acc attest show: {type(problem).__name__}: {problem}", file=err)
        return exitcodes.FAILURE
    return exitcodes.OK
