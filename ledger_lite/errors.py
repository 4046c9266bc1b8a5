"""The trust substrate's error tree. Every check raises one of these; none returns a boolean.

``MalformedError`` is "a peer sent garbage" (count it, maybe ban the peer); ``VerificationError``
is "well-formed but not to be believed" (bad signature, expired, revoked, replayed)."""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AudienceError",
    "CborError",
    "CoseError",
    "CredentialError",
    "DidError",
    "DoubleSignError",
    "GenesisError",
    "KeyFormatError",
    "LedgerError",
    "MalformedError",
    "PoolExhaustedError",
    "ProofError",
    "ReplayError",
    "RevokedError",
    "SchemaError",
    "SignatureError",
    "UnsupportedAlgorithm",
    "ValidityError",
    "VerificationError",
]


class LedgerError(Exception):
    """Base of every error raised by ledger_lite."""


class MalformedError(LedgerError, ValueError):
    """Input that does not parse or does not follow the format (says what and where)."""


class CborError(MalformedError):
    """Not (deterministic) CBOR, or CBOR of the wrong shape."""


class CoseError(MalformedError):
    """A COSE structure that is malformed (wrong tag, wrong header types, ...)."""


class KeyFormatError(MalformedError):
    """A key that cannot be read (wrong length, not on the curve, unknown key type)."""


class DidError(MalformedError):
    """A DID that is malformed or names an unsupported method/key type."""


class SchemaError(MalformedError):
    """A payload that violates its message kind's schema; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str = "", kind: str = "") -> None:
        self.field = field
        self.kind = kind
        where = ".".join(p for p in (kind, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class UnsupportedAlgorithm(LedgerError, ValueError):
    """An algorithm or curve we do not accept."""


class VerificationError(LedgerError):
    """Well-formed, but not to be believed."""


class SignatureError(VerificationError):
    """The signature does not verify with the key."""


class ValidityError(VerificationError):
    """Outside its validity period (with the stated clock-skew allowance)."""


class AudienceError(VerificationError):
    """A token addressed to someone else (its ``aud`` does not name the verifier)."""


class RevokedError(VerificationError):
    """A credential or key in the chain is revoked."""


class CredentialError(VerificationError):
    """A credential chain that does not lead to a trust root, or grants less than asked."""


class AccessDenied(CredentialError):
    """No presented grant allows the request; ``reasons`` says, per grant, why not."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        self.reasons = list(reasons or [])
        super().__init__(message)


class ReplayError(VerificationError):
    """An attestation seen before, or older than the newest seen from its sender."""


class PoolExhaustedError(LedgerError):
    """A pool of one-time material (V2V pseudonym certificates) has nothing usable left now."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof that does not verify (says why: index or size out of
    range, wrong path length or hash size, root mismatch)."""


class GenesisError(MalformedError):
    """A genesis file / validator set that is unusable (no validators, power <= 0, duplicates, bad DID)."""


class DoubleSignError(LedgerError):
    """We were about to sign a consensus message conflicting with one we signed before (a bug, never a peer)."""


# --------------------------------------------------------------------------- blocks and commit certificates


class BlockFormatError(MalformedError):
    """A block, header or commit certificate whose encoding is not exactly the format; ``field`` names it."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class BlockInvalidError(VerificationError):
    """A well-formed block that breaks a rule of ``validate_basic``; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class LinkError(BlockInvalidError):
    """A block that does not follow its predecessor (height gap, previous block id, last commit)."""


class TxRootError(BlockInvalidError):
    """The header's tx_root is not the Merkle root of the block's transactions."""


class ChainMismatchError(VerificationError):
    """A block, header or certificate checked against another chain's id or validator set."""


class CommitError(VerificationError):
    """A commit certificate that does not prove > 2/3 of the voting power precommitted this block."""


class CommitSignatureError(CommitError, SignatureError):
    """A precommit signature in a certificate does not verify."""


class QuorumError(CommitError):
    """The certificate's valid signers hold no more than 2/3 of the voting power."""


class DuplicateSignerError(CommitError):
    """A validator appears twice in one certificate (it is never counted twice)."""


class UnknownSignerError(CommitError):
    """A certificate signer that is not in the validator set."""


class CommitMismatchError(CommitError):
    """A certificate for another height, round or block than the one it is checked against."""
