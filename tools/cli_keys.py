"""``acc keys``: the device identity (its key pair and did:key).

``acc keys init [--data-dir DIR] [--curve Ed25519|P-256] [--force] [--owner USER] [--json]``
provisions the device: a new key pair in ``DIR/keys/device.key`` (mode 0600, directory 0700,
written atomically); prints the DID and the key file. An existing key is kept unless ``--force``
(the old identity is then gone for good). ``--owner`` hands the directory and file to the user
the agent runs as (run init as root).

``acc keys show [--data-dir DIR] [--credentials-dir DIR] [--json]`` prints the DID, curve, public key
and the key file's mode and owner, and whether the agent would accept them. It never prints the
private key. It also lists the credentials the node keeps (``DIR/credentials/*.cose`` and the
config's ``trust.credentials_dir``, or ``--credentials-dir``): kind, subject, issuer and expiry with
the days left, flagged when under 30 days or expired (decoded, not verified; flags do not change
the exit code).

The data dir defaults to the agent's ``agent.data_dir`` (``/etc/autochain/agent.toml`` and
``ACC_AGENT__DATA_DIR`` as the agent reads them), else /var/lib/autochain.
Exit codes: 0 done / key file fine, 1 a key exists (init without --force), 65 the file is not a
usable key, 66 no key (show), 77 unsafe mode or owner, or the key cannot be written, 78 config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import exitcodes
from agent.keystore import (
    DeviceKeyExists,
    DeviceKeyInvalid,
    DeviceKeyMissing,
    KeyStoreError,
    init_device_key,
    inspect_device_key,
    key_path,
)

__all__ = ["EXPIRY_WARN_DAYS", "credential_dirs", "credential_report", "register"]

DEFAULT_DATA_DIR = "/var/lib/autochain"
DEFAULT_CONFIG = "/etc/autochain/agent.toml"
#: a credential expiring in fewer days than this is flagged
EXPIRY_WARN_DAYS = 30


def register(subparsers: Any) -> None:
    """Add the ``keys`` command group to ``acc``."""
    keys = subparsers.add_parser("keys", help="the device key pair and DID", description=__doc__.split("\n\n")[0])
    sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    sub.required = True
    init = sub.add_parser(
        "init",
        help="provision the device key pair and did:key",
        description="Make the device key pair: DIR/keys/device.key, mode 0600, written atomically.",
    )
    _data_dir_arg(init)
    init.add_argument("--curve", choices=["Ed25519", "P-256"], default="Ed25519", help="key type (default Ed25519)")
    init.add_argument("--force", action="store_true", help="replace an existing key (its identity is lost)")
    init.add_argument("--owner", metavar="USER", help="user the agent runs as: gets the key directory and file")
    init.add_argument("--json", action="store_true", help="machine-readable output")
    init.set_defaults(func=cmd_init)
    show = sub.add_parser(
        "show",
        help="the device DID, public key and key file check (never the private key)",
        description="Show the device identity and check the key file's mode and owner.",
    )
    _data_dir_arg(show)
    show.add_argument(
        "--credentials-dir",
        metavar="DIR",
        action="append",
        help="where credentials (*.cose) are (repeatable; default: DATA_DIR/credentials and trust.credentials_dir)",
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"the agent's data dir (default: agent.data_dir of the agent's config, else {DEFAULT_DATA_DIR})",
    )


def _data_dir(args: argparse.Namespace) -> str:
    if args.data_dir:
        return str(args.data_dir)
    from agent.config import load_config

    path = DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None
    return load_config(path).agent.data_dir  # ConfigError: reported by the caller


def credential_dirs(data_dir: str | Path, config_dir: str = "") -> list[str]:
    """Where a node's credentials live: ``<data_dir>/credentials`` and ``trust.credentials_dir``."""
    dirs = [str(Path(data_dir) / "credentials")]
    if config_dir and config_dir not in dirs:
        dirs.append(config_dir)
    return dirs


def credential_report(dirs: Iterable[str | Path], now: float | None = None) -> list[dict[str, Any]]:
    """Every ``*.cose`` credential in ``dirs``, decoded (NOT verified): kind, subject, issuer, expiry,
    days left and ``state`` (ok, no expiry, expiring, expired, unreadable). Public data only."""
    from ledger_lite.credentials import decode_credential
    from ledger_lite.errors import LedgerError

    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for d in dirs:
        try:
            files = sorted(Path(d).glob("*.cose"))
        except OSError:
            continue
        for path in files:
            entry: dict[str, Any] = {"file": str(path)}
            try:
                cred = decode_credential(path.read_bytes())
            except (OSError, LedgerError, ValueError) as err:
                entry.update(state="unreadable", flagged=True, error=f"{type(err).__name__}: {err}")
                out.append(entry)
                continue
            exp = cred.expires
            days = None if exp is None else (exp - now) / 86400
            if days is None:
                state = "no expiry"
            elif days <= 0:
                state = "expired"
            elif days < EXPIRY_WARN_DAYS:
                state = "expiring"
            else:
                state = "ok"
            entry.update(
                kind=str(cred.kind),
                subject=cred.subject,
                issuer=cred.issuer,
                cti=cred.cti.hex(),
                expires=None if exp is None else datetime.fromtimestamp(exp, UTC).isoformat(timespec="seconds"),
                days_left=None if days is None else round(days, 1),
                state=state,
                flagged=state in ("expiring", "expired"),
            )
            out.append(entry)
    return out


def _short_did(did: str, width: int = 24) -> str:
    return did if len(did) <= width else did[: width - 3] + "..."


def render_credentials(creds: list[dict[str, Any]]) -> str:
    """One or two lines per credential, within 80 columns."""
    if not creds:
        return "credentials  none\n"
    lines = [f"credentials  {len(creds)}"]
    for c in creds:
        name = Path(c["file"]).name
        if c["state"] == "unreadable":
            lines.append(f"  ! {name}: unreadable: {c['error']}"[:80])
            continue
        days = c["days_left"]
        if days is None:
            when = "no expiry"
        elif days <= 0:
            when = f"EXPIRED {c['expires'][:10]} ({-days:.0f} days ago)"
        else:
            when = f"expires {c['expires'][:10]} ({days:.0f} days left)"
        mark = "!" if c["flagged"] else "-"
        lines.append(f"  {mark} {c['kind']:<9} {when}{'  EXPIRES SOON' if c['state'] == 'expiring' else ''}")
        lines.append(f"      subject {_short_did(c['subject'])}  issuer {_short_did(c['issuer'])}")
    return "\n".join(lines) + "\n"


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    sys.stderr.write(f"acc keys {args.keys_command}: {message}\n")
    return code


def cmd_init(args: argparse.Namespace) -> int:
    from agent.config import ConfigError

    try:
        data_dir = _data_dir(args)
    except ConfigError as err:
        return _fail(args, str(err), exitcodes.CONFIG)
    replaced = None
    if args.force:
        try:
            replaced = inspect_device_key(data_dir).identity.did
        except KeyStoreError:
            replaced = None
    owner: str | int | None = args.owner
    if isinstance(owner, str) and owner.isdigit():
        owner = int(owner)
    try:
        key, did = init_device_key(data_dir, args.curve, force=args.force, owner=owner)
    except DeviceKeyExists as err:
        try:
            existing = f" (it is {inspect_device_key(data_dir).identity.did})"
        except KeyStoreError:
            existing = ""
        return _fail(args, f"{err}{existing}", exitcodes.FAILURE)
    except KeyStoreError as err:
        return _fail(args, str(err), exitcodes.NOPERM)
    path = key_path(data_dir)
    if args.json:
        out = {"did": did, "curve": key.crv, "key_file": str(path), "replaced": replaced}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(f"did       {did}\ncurve     {key.crv}\nkey file  {path} (mode 0600)\n")
        if replaced:
            sys.stdout.write(f"replaced  {replaced} (that identity is gone)\n")
    return exitcodes.OK


def _configured_credentials_dir(args: argparse.Namespace) -> str:
    """``trust.credentials_dir`` of the agent's config when it is read (no --data-dir)."""
    if args.data_dir or not Path(DEFAULT_CONFIG).is_file():
        return ""
    from agent.config import load_config

    return load_config(DEFAULT_CONFIG).trust.credentials_dir


def cmd_show(args: argparse.Namespace) -> int:
    from agent.config import ConfigError

    try:
        data_dir = _data_dir(args)
        cred_dirs = args.credentials_dir or credential_dirs(data_dir, _configured_credentials_dir(args))
    except ConfigError as err:
        return _fail(args, str(err), exitcodes.CONFIG)
    try:
        report = inspect_device_key(data_dir)
    except DeviceKeyMissing as err:
        return _fail(args, str(err), exitcodes.NO_INPUT)
    except DeviceKeyInvalid as err:
        return _fail(args, str(err), exitcodes.DATA_ERROR)
    except KeyStoreError as err:
        return _fail(args, str(err), exitcodes.NOPERM)
    identity = report.identity
    public = identity.key.public
    out: dict[str, Any] = {
        "did": identity.did,
        "curve": public.crv,
        "public_key_multibase": identity.did.removeprefix("did:key:"),
        "public_key_hex": public.raw().hex(),
        "fingerprint": public.fingerprint(),
        "key_file": str(identity.path),
        "mode": f"{report.mode:04o}",
        "owner_uid": report.uid,
        "agent_uid": os.geteuid(),
        "ok": not report.problems,
        "problems": list(report.problems),
        "credentials": credential_report(cred_dirs),
    }
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"did          {out['did']}\ncurve        {out['curve']}\npublic key   {out['public_key_hex']}\n"
            f"key file     {out['key_file']} (mode {out['mode']}, owner uid {out['owner_uid']})\n"
            f"check        {'ok' if out['ok'] else 'UNSAFE'}\n"
        )
        for problem in report.problems:
            sys.stdout.write(f"  - {problem}\n")
        sys.stdout.write(render_credentials(out["credentials"]))
    return exitcodes.OK if out["ok"] else exitcodes.NOPERM
