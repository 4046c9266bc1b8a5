"""``acc keys``: the device identity (its key pair and did:key).

``acc keys init [--data-dir DIR] [--curve Ed25519|P-256] [--force] [--owner USER] [--json]``
provisions the device: a new key pair in ``DIR/keys/device.key`` (mode 0600, directory 0700,
written atomically); prints the DID and the key file. An existing key is kept unless ``--force``
(the old identity is then gone for good). ``--owner`` hands the directory and file to the user
the agent runs as (run init as root).

``acc keys show [--data-dir DIR] [--json]`` prints the DID, curve, public key and the key
file's mode and owner, and whether the agent would accept them. It never prints the private key.

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

__all__ = ["register"]

DEFAULT_DATA_DIR = "/var/lib/autochain"
DEFAULT_CONFIG = "/etc/autochain/agent.toml"


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


def cmd_show(args: argparse.Namespace) -> int:
    from agent.config import ConfigError

    try:
        data_dir = _data_dir(args)
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
    return exitcodes.OK if out["ok"] else exitcodes.NOPERM
