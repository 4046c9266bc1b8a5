"""``acc attest verify`` / ``show`` on real files: attestations (self-contained), credentials
(to trust roots, with chains and revocation lists), the text forms, and the exit codes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent import exitcodes
from ledger_lite import cbor, cose
from ledger_lite.attestation import AttestationBuilder, Position, kid_for
from ledger_lite.credentials import (
    AccessGrant,
    OwnerCredential,
    VehicleCredential,
    decode_credential,
    issue_credential,
)
from ledger_lite.didkey import did_key
from ledger_lite.keys import SigningKey
from tools.acc import main

REPO = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000
AT = "2027-01-15T08:00:30Z"  # T0 + 30 s
VIN = "1M8GDM9AXKP042788"
EVENT = {"event": "harsh_brake", "severity": 0.72, "duration": 1.4, "speed": 13.9, "accel_long": -6.1}


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {name: SigningKey.generate() for name in ("device", "oem", "owner", "app")}


def did(keys: dict[str, SigningKey], name: str) -> str:
    return did_key(keys[name].public)


@pytest.fixture
def attestation(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    b = AttestationBuilder(keys["device"], did(keys, "device"))
    data = b.build("driving_event", EVENT, time=T0, time_source="gnss", position=Position(48.137, 11.575, 519.0, 2.5))
    path = tmp_path / "event.cose"
    path.write_bytes(data)
    return path


@pytest.fixture
def vehicle_credential(tmp_path: Path, keys: dict[str, SigningKey]) -> Path:
    body = VehicleCredential(did(keys, "device"), VIN, {"make": "ACME"})
    path = tmp_path / "vehicle.cwt"
    path.write_bytes(issue_credential(body, keys["oem"], now=T0, cti=b"\xab" * 16))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["attest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- attestations --------------------------------------------------------------------------------


def test_verify_attestation_human(
    attestation: Path, keys: dict[str, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["verify", str(attestation), "--at", AT], capsys)
    assert code == exitcodes.OK, err
    assert out.startswith("VALID attestation driving_event")
    assert did(keys, "device") in out and "harsh_brake" in out and "13.9 m/s" in out
    assert "2027-01-15T08:00:00.000Z (gnss)" in out


@pytest.mark.parametrize("form", ["hex", "base64", "base64url"])
def test_verify_attestation_text_forms_json(
    attestation: Path, tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = attestation.read_bytes()
    text = {
        "hex": data.hex(),
        "base64": base64.b64encode(data).decode(),
        "base64url": base64.urlsafe_b64encode(data).decode().rstrip("="),
    }[form]
    path = tmp_path / f"event.{form}"
    path.write_text(text[:40] + "\n" + text[40:] + "\n")  # wrapped lines are fine
    code, out, _ = run(["verify", str(path), "--json", "--at", str(T0)], capsys)
    assert code == exitcodes.OK
    doc = json.loads(out)
    assert doc["valid"] is True and doc["type"] == "attestation" and doc["seq"] == 1
    assert doc["body"]["speed"] == 13.9 and doc["position"]["lat"] == 48.137


def test_verify_tampered_attestation_fails(attestation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = attestation.read_bytes()
    attestation.write_bytes(data[:-1] + bytes([data[-1] ^ 0x40]))
    code, out, err = run(["verify", str(attestation), "--at", AT], capsys)
    assert code == exitcodes.FAILURE and out == ""
    assert "NOT VALID" in err and "SignatureError" in err


def test_verify_attestation_from_the_future_fails(attestation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["verify", str(attestation), "--at", str(T0 - 3600), "--json"], capsys)
    assert code == exitcodes.FAILURE
    assert json.loads(out)["error"] == "ValidityError" and "ahead of now" in err


def test_schema_violation(tmp_path: Path, keys: dict[str, SigningKey], capsys: pytest.CaptureFixture[str]) -> None:
    """Correctly signed, but its body breaks the schema: verify fails, show shows it generically."""
    payload = cbor.dumps(
        {
            "v": 1,
            "iss": did(keys, "device"),
            "seq": 1,
            "prev": bytes(32),
            "kind": "driving_event",
            "time": T0 * 1000,
            "tsrc": "gnss",
            "body": {"event": "donut", "severity": 1000, "duration": 1000, "speed": 100},
        }
    )
    path = tmp_path / "bad.cose"
    path.write_bytes(
        cose.sign1(payload, keys["device"], kid=kid_for(did(keys, "device")).encode(), content_type="driving_event")
    )
    code, _, err = run(["verify", str(path), "--at", AT], capsys)
    assert code == exitcodes.FAILURE and "SchemaError" in err and "driving_event.event" in err
    code, out, err = run(["show", str(path)], capsys)
    assert code == exitcodes.FAILURE and out.startswith("UNVERIFIED") and "donut" in out


def test_show_says_unverified(attestation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = attestation.read_bytes()
    attestation.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a bad signature is not looked at
    code, out, _ = run(["show", str(attestation)], capsys)
    assert code == exitcodes.OK and out.startswith("UNVERIFIED")
    code, out, _ = run(["show", str(attestation), "--json"], capsys)
    assert code == exitcodes.OK and json.loads(out)["verified"] is False


# --- credentials ---------------------------------------------------------------------------------


def test_verify_credential_needs_roots(vehicle_credential: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["verify", str(vehicle_credential), "--at", AT], capsys)
    assert code == exitcodes.USAGE and "trust roots" in err


def test_verify_credential_to_a_root(
    vehicle_credential: Path, keys: dict[str, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    root = did(keys, "oem")
    code, out, err = run(["verify", str(vehicle_credential), "--trust-root", f"{root}=oem", "--at", AT], capsys)
    assert code == exitcodes.OK, err
    assert out.startswith("VALID credential vehicle") and VIN in out and "make=ACME" in out and root in out
    code, out, _ = run(["verify", str(vehicle_credential), "--trust-root", root, "--json", "--at", AT], capsys)
    doc = json.loads(out)
    assert code == exitcodes.OK and doc["valid"] and doc["root"] == root and doc["claims"]["vin"] == VIN


def test_verify_credential_wrong_role(
    vehicle_credential: Path, keys: dict[str, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    root = did(keys, "oem")
    code, _, err = run(
        ["verify", str(vehicle_credential), "--trust-root", f"{root}=road_authority", "--at", AT], capsys
    )
    assert code == exitcodes.FAILURE and "CredentialError" in err and "road_authority only" in err


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_roots_file_and_revocation(
    vehicle_credential: Path, keys: dict[str, SigningKey], tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = did(keys, "oem")
    roots = tmp_path / "roots"
    roots.write_text(json.dumps({root: ["oem"]}) if fmt == "json" else f"# trusted\n{root} oem,registration\n")
    assert run(["verify", str(vehicle_credential), "--roots", str(roots), "--at", AT], capsys)[0] == exitcodes.OK
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("# by cti\n" + "ab" * 16 + "\n")
    code, _, err = run(
        ["verify", str(vehicle_credential), "--roots", str(roots), "--revoked", str(revoked), "--at", AT], capsys
    )
    assert code == exitcodes.FAILURE and "RevokedError" in err


def test_verify_expired_credential(
    tmp_path: Path, keys: dict[str, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    owner = tmp_path / "owner.cwt"
    owner.write_bytes(
        issue_credential(OwnerCredential(did(keys, "owner"), did(keys, "device"), VIN), keys["oem"], now=T0)
    )
    body = AccessGrant(did(keys, "app"), did(keys, "device"), ("Vehicle.Speed",), ("subscribe",))
    grant = tmp_path / "grant.cwt"
    grant.write_bytes(issue_credential(body, keys["owner"], now=T0, expires=T0 + 3600))
    root = f"{did(keys, 'oem')}=oem"
    code, _, err = run(["verify", str(grant), "--trust-root", root, "--at", AT], capsys)
    assert code == exitcodes.FAILURE and "owner credential" in err
    code, out, err = run(["verify", str(grant), "--trust-root", root, "--chain", str(owner), "--at", AT], capsys)
    assert code == exitcodes.OK, err
    assert "Vehicle.Speed" in out and "via" in out and decode_credential(owner.read_bytes()).cti.hex() in out
    code, _, err = run(
        ["verify", str(grant), "--trust-root", root, "--chain", str(owner), "--at", str(T0 + 3600 + 61)], capsys
    )
    assert code == exitcodes.FAILURE and "ValidityError" in err and "expired" in err


# --- exit codes for input ------------------------------------------------------------------------


def test_not_cose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not an attestation\n")
    for cmd in ("verify", "show"):
        code, _, err = run([cmd, str(path)], capsys)
        assert code == exitcodes.DATA_ERROR and "not a COSE_Sign1" in err


def test_cannot_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("verify", "show"):
        code, _, err = run([cmd, str(tmp_path / "missing.cose")], capsys)
        assert code == exitcodes.NO_INPUT and "cannot open" in err


def test_bad_at_is_a_usage_error(attestation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["verify", str(attestation), "--at", "next tuesday"], capsys)
    assert code == exitcodes.USAGE and "--at" in err


def test_real_process(attestation: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "tools.acc", "attest", "verify", str(attestation), "--at", AT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("VALID"), ok.stderr
    attestation.write_bytes(attestation.read_bytes()[:-2])
    bad = subprocess.run(
        [sys.executable, "-m", "tools.acc", "attest", "verify", str(attestation)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == exitcodes.DATA_ERROR and bad.stdout == ""
