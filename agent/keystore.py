"""The device key store: the device's signing key, ``<data_dir>/keys/device.key``.

The file is an unencrypted PKCS#8 PEM private key (Ed25519 by default; Ed448, P-256/384/521
accepted): the standard container every tool reads (``openssl pkey -in device.key -pubout``),
which pyca/cryptography parses strictly and which carries the curve with the key. The box boots
unattended, so the file is protected by where it lives and who may read it:

* ``keys/`` is mode 0700 and ``device.key`` 0600, both owned by the agent's user;
* it is written atomically: a temporary file (0600 from its creation) in the same directory,
  fsync, then a hard link (refuses to replace an existing key) or, with ``force``, a rename;
  then the directory is fsynced;
* ``load_identity`` opens it without following symlinks and checks the open file's mode and
  owner before reading: a key others can read, or owned by another user, is refused with a
  ``KeyStoreError`` that says exactly what to run. The agent exits 77 on it.

The private key leaves this module only inside a ``SigningKey`` (whose repr shows the public
fingerprint) and ``DeviceIdentity`` (whose repr shows the DID); nothing here logs key material.
"""

from __future__ import annotations

import errno
import os
import pwd
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from ledger_lite.didkey import did_key
from ledger_lite.keys import CURVES, SigningKey

__all__ = [
    "KEYS_DIR",
    "KEY_FILE",
    "DeviceIdentity",
    "DeviceKeyExists",
    "DeviceKeyInvalid",
    "DeviceKeyMissing",
    "KeyFileReport",
    "KeyStoreError",
    "ensure_device_key",
    "init_device_key",
    "inspect_device_key",
    "key_path",
    "load_device_key",
    "load_identity",
]

KEYS_DIR = "keys"
KEY_FILE = "device.key"
_MAX_KEY_FILE = 64 * 1024
_EC_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


class KeyStoreError(Exception):
    """The key store cannot give or take the device key; the message says what to do."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class DeviceKeyMissing(KeyStoreError):
    """No device key is provisioned (the agent runs without an identity)."""


class DeviceKeyInvalid(KeyStoreError):
    """The key file is there but holds no usable device key (not PEM, encrypted, wrong type)."""


class DeviceKeyExists(KeyStoreError):
    """``init`` without ``force`` found a key already there."""


@dataclass(frozen=True)
class DeviceIdentity:
    """The device's DID and signing key (the key is not in the repr)."""

    did: str
    key: SigningKey = field(repr=False)
    path: Path

    @property
    def curve(self) -> str:
        return self.key.crv


@dataclass(frozen=True)
class KeyFileReport:
    """What ``acc keys show`` reports: the identity and every problem with the file."""

    identity: DeviceIdentity
    mode: int
    uid: int
    problems: tuple[str, ...]


def key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEYS_DIR / KEY_FILE


# --- writing ------------------------------------------------------------------------------------


def init_device_key(
    data_dir: str | os.PathLike[str],
    curve: str = "Ed25519",
    force: bool = False,
    *,
    owner: str | int | None = None,
) -> tuple[SigningKey, str]:
    """Make the device key pair and write it; returns (key, did:key). ``DeviceKeyExists``
    unless ``force``; ``owner`` (user name or uid, root only) gets the directory and file."""
    if curve not in CURVES:
        raise KeyStoreError(f"unsupported curve {curve!r} for the device key (supported: {', '.join(CURVES)})")
    uid_gid = _lookup_owner(owner) if owner is not None else None
    path = key_path(data_dir)
    _make_keys_dir(path.parent, uid_gid)
    if not force and os.path.lexists(path):
        raise DeviceKeyExists(f"key file {path} already exists: use --force to replace it", path=path)
    key = SigningKey.generate(curve)
    _write_atomic(path, _to_pem(key), replace=force, uid_gid=uid_gid)
    return key, did_key(key.public)


def ensure_device_key(data_dir: str | os.PathLike[str], curve: str = "Ed25519") -> DeviceIdentity:
    """The device identity, provisioning one first if there is none (the demo's OBUs)."""
    try:
        return load_identity(data_dir)
    except DeviceKeyMissing:
        init_device_key(data_dir, curve)
    return load_identity(data_dir)


def _lookup_owner(owner: str | int) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(owner) if isinstance(owner, int) else pwd.getpwnam(owner)
    except KeyError:
        raise KeyStoreError(f"no such user: {owner}") from None
    return entry.pw_uid, entry.pw_gid


def _make_keys_dir(keys_dir: Path, uid_gid: tuple[int, int] | None) -> None:
    try:
        keys_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        keys_dir.mkdir(mode=0o700, exist_ok=True)
        if keys_dir.is_symlink() or not keys_dir.is_dir():
            raise KeyStoreError(f"{keys_dir} is not a directory", path=keys_dir)
        os.chmod(keys_dir, 0o700)
        if uid_gid is not None:
            os.chown(keys_dir, *uid_gid)
    except PermissionError as err:
        raise KeyStoreError(
            f"cannot prepare the key directory {keys_dir}: {err.strerror} (run as root or as its owner)",
            path=keys_dir,
        ) from None
    except OSError as err:
        raise KeyStoreError(
            f"cannot prepare the key directory {keys_dir}: {err.strerror or err}", path=keys_dir
        ) from None


def _to_pem(key: SigningKey) -> bytes:
    raw = key.private_bytes()
    if key.crv == "Ed25519":
        private: ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey | ec.EllipticCurvePrivateKey = (
            ed25519.Ed25519PrivateKey.from_private_bytes(raw)
        )
    elif key.crv == "Ed448":
        private = ed448.Ed448PrivateKey.from_private_bytes(raw)
    else:
        private = ec.derive_private_key(int.from_bytes(raw, "big"), _EC_CURVES[key.crv]())
    return private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write_atomic(path: Path, data: bytes, *, replace: bool, uid_gid: tuple[int, int] | None) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise KeyStoreError(f"cannot write in {path.parent}: {err.strerror}", path=path) from None
    try:
        try:
            os.fchmod(fd, 0o600)
            if uid_gid is not None:
                os.fchown(fd, *uid_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and never replaces a key that appeared meanwhile
            except FileExistsError:
                raise DeviceKeyExists(f"key file {path} already exists: use --force to replace it", path=path) from None
            os.unlink(tmp)
    except KeyStoreError:
        raise
    except OSError as err:
        raise KeyStoreError(f"cannot write the key file {path}: {err.strerror or err}", path=path) from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ------------------------------------------------------------------------------------


def load_device_key(data_dir: str | os.PathLike[str]) -> SigningKey:
    """The device's signing key; ``DeviceKeyMissing`` / ``KeyStoreError`` say what is wrong."""
    return load_identity(data_dir).key


def load_identity(data_dir: str | os.PathLike[str]) -> DeviceIdentity:
    """The device identity, after checking the directory and file are private to this user."""
    identity, _mode, _uid, _problems = _read(key_path(data_dir), strict=True)
    return identity


def inspect_device_key(data_dir: str | os.PathLike[str]) -> KeyFileReport:
    """Like ``load_identity``, but the mode/owner problems are reported, not raised."""
    identity, mode, uid, problems = _read(key_path(data_dir), strict=False)
    return KeyFileReport(identity, mode, uid, tuple(problems))


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _who(mode: int) -> str:
    parts = []
    for bit, word in ((4, "readable"), (2, "writable"), (1, "executable")):
        classes = [name for name, shift in (("group", 3), ("others", 0)) if (mode >> shift) & bit]
        if classes:
            parts.append(f"{word} by {' and '.join(classes)}")
    return ", ".join(parts)


def _dir_problems(keys_dir: Path) -> list[str]:
    try:
        st = os.lstat(keys_dir)
    except FileNotFoundError:
        return []
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return [f"key directory {keys_dir} is a symbolic link or not a directory: make it a directory (mode 0700)"]
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        problems.append(f"key directory {keys_dir} is {_who(mode & 0o022)} (mode {mode:04o}): run chmod 700 {keys_dir}")
    if st.st_uid not in (os.geteuid(), 0):
        problems.append(
            f"key directory {keys_dir} is owned by {_user(st.st_uid)} (uid {st.st_uid}), not by the agent's user "
            f"{_user(os.geteuid())}: run chown {_user(os.geteuid())} {keys_dir}"
        )
    return problems


def _file_problems(path: Path, st: os.stat_result) -> list[str]:
    problems = []
    mode = stat.S_IMODE(st.st_mode)
    me = os.geteuid()
    if st.st_uid != me:
        problems.append(
            f"key file {path} is owned by {_user(st.st_uid)} (uid {st.st_uid}), not by the agent's user "
            f"{_user(me)} (uid {me}): run chown {_user(me)} {path}"
        )
    if mode & 0o077:
        problems.append(f"key file {path} is {_who(mode & 0o077)} (mode {mode:04o}): run chmod 600 {path}")
    elif mode & 0o400 == 0:
        problems.append(f"key file {path} is not readable by its owner (mode {mode:04o}): run chmod 600 {path}")
    return problems


def _read(path: Path, *, strict: bool) -> tuple[DeviceIdentity, int, int, list[str]]:
    """Open without following links, check the open file, read, parse. ``strict``: raise the
    first mode/owner problem before reading the key; otherwise return them."""
    problems = _dir_problems(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DeviceKeyMissing(f"no device key at {path}: run acc keys init", path=path) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise KeyStoreError(
                f"key file {path} is a symbolic link: replace it with the key file itself", path=path
            ) from None
        if err.errno == errno.EACCES:
            detail = _stat_detail(path)
            raise KeyStoreError(
                f"key file {path} cannot be read by {_user(os.geteuid())} (uid {os.geteuid()}){detail}: "
                f"run chown {_user(os.geteuid())} {path}",
                path=path,
            ) from None
        raise KeyStoreError(f"cannot open the key file {path}: {err.strerror or err}", path=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"key file {path} is not a regular file", path=path)
        problems += _file_problems(path, st)
        if strict and problems:
            raise KeyStoreError(problems[0], path=path)
        if st.st_size > _MAX_KEY_FILE:
            raise DeviceKeyInvalid(f"key file {path} is {st.st_size} bytes: not a key", path=path)
        data = _read_all(fd)
    finally:
        os.close(fd)
    key = _parse_pem(data, path)
    return DeviceIdentity(did_key(key.public), key, path), stat.S_IMODE(st.st_mode), st.st_uid, problems


def _stat_detail(path: Path) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return ""
    return f"; it is owned by {_user(st.st_uid)} (uid {st.st_uid}), mode {stat.S_IMODE(st.st_mode):04o}"


def _read_all(fd: int) -> bytes:
    chunks = []
    total = 0
    while chunk := os.read(fd, 8192):
        chunks.append(chunk)
        total += len(chunk)
        if total > _MAX_KEY_FILE:
            break
    return b"".join(chunks)


def _parse_pem(data: bytes, path: Path) -> SigningKey:
    try:
        private = load_pem_private_key(data, password=None)
    except TypeError:
        raise DeviceKeyInvalid(
            f"key file {path} is encrypted: the device key must be an unencrypted PKCS#8 PEM", path=path
        ) from None
    except ValueError:  # says nothing about the contents: they may be key material
        raise DeviceKeyInvalid(
            f"key file {path} is not a PEM private key: run acc keys init --force to make a new one", path=path
        ) from None
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return SigningKey("Ed25519", private)
    if isinstance(private, ed448.Ed448PrivateKey):
        return SigningKey("Ed448", private)
    if isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name in _EC_NAMES:
        return SigningKey(_EC_NAMES[private.curve.name], private)
    kind = type(private).__name__.removeprefix("_").replace("PrivateKey", "")
    raise DeviceKeyInvalid(
        f"key file {path} holds a {kind} key; the device key must be one of {', '.join(CURVES)}", path=path
    )
