"""Credentials: full chains to configured roots (OEM -> vehicle, OEM -> owner -> grant,
road authority -> RSU, delegated issuers), validity with the stated skew, revocation of
credentials and DIDs, issuer authority per kind, tampering, and the OBU's access decisions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ledger_lite import cbor, cose, cwt
from ledger_lite.credentials import (
    AccessDenied,
    AccessGrant,
    AccessPolicy,
    CredentialKind,
    CredentialStore,
    IssuerCredential,
    OwnerCredential,
    RevocationList,
    Role,
    TrustStore,
    ValidatorCredential,
    VehicleCredential,
    decode_credential,
    issue_credential,
    resource_matches,
    validate_vin,
    verify_credential,
)
from ledger_lite.didkey import did_key, verification_method_id
from ledger_lite.errors import (
    CoseError,
    CredentialError,
    RevokedError,
    SchemaError,
    SignatureError,
    ValidityError,
)
from ledger_lite.keys import SigningKey

T0 = 1_800_000_000  # issue time
DAY = 86400
VIN = "1M8GDM9AXKP042788"  # the textbook valid North American VIN (check digit X)
VIN_EU = "WVWZZZ1JZXW000001"  # an EU VIN: position 9 is a filler, no check digit


@dataclass
class Party:
    key: SigningKey

    @property
    def did(self) -> str:
        return did_key(self.key.public)


def party(crv: str = "Ed25519") -> Party:
    return Party(SigningKey.generate(crv))


@pytest.fixture(scope="module")
def world() -> dict[str, Party]:
    return {
        name: party("P-256" if name == "rsu" else "Ed25519")
        for name in ("oem", "plant", "dmv", "road", "vehicle", "owner", "buyer", "app", "rsu", "stranger")
    }


@pytest.fixture
def store(world: dict[str, Party]) -> TrustStore:
    return TrustStore(
        {world["oem"].did: Role.OEM, world["dmv"].did: "registration", world["road"].did: [Role.ROAD_AUTHORITY]},
        RevocationList(),
        skew=60.0,
    )


def owner_credential(world: dict[str, Party], owner: str = "owner", issuer: str = "oem") -> bytes:
    body = OwnerCredential(world[owner].did, world["vehicle"].did, VIN)
    return issue_credential(body, world[issuer].key, now=T0)


def grant(world: dict[str, Party], *, resources: tuple[str, ...] = ("Vehicle.Speed", "events"), **kw: object) -> bytes:
    body = AccessGrant(world["app"].did, world["vehicle"].did, resources, ("read", "subscribe"))
    issuer = str(kw.pop("issuer", "owner"))
    return issue_credential(body, world[issuer].key, now=T0, expires=T0 + DAY, **kw)  # type: ignore[arg-type]


# --- full chains ---------------------------------------------------------------------------------


def test_oem_to_vehicle(world: dict[str, Party], store: TrustStore) -> None:
    body = VehicleCredential(world["vehicle"].did, VIN, {"make": "ACME", "year": 2026, "bev": True})
    data = issue_credential(body, world["oem"].key, now=T0, cti=b"vehicle-0001")
    cred = verify_credential(data, store, now=T0 + 5, expected_kind="vehicle")
    assert cred.kind is CredentialKind.VEHICLE and cred.body == body
    assert (cred.issuer, cred.subject, cred.cti, cred.root, cred.chain) == (
        world["oem"].did,
        world["vehicle"].did,
        b"vehicle-0001",
        world["oem"].did,
        (),
    )
    msg = cose.decode_sign1(data)
    assert msg.content_type == "application/acc-vehicle-credential+cwt"
    assert msg.kid == verification_method_id(world["oem"].did).encode()


def test_oem_delegates_to_a_plant_which_issues_vehicle_credentials(world: dict[str, Party], store: TrustStore) -> None:
    delegation = issue_credential(
        IssuerCredential(world["plant"].did, Role.OEM), world["oem"].key, now=T0, expires=T0 + 365 * DAY
    )
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["plant"].key, now=T0)
    with pytest.raises(CredentialError, match="not a trust root"):
        verify_credential(data, store, now=T0)
    cred = verify_credential(data, store, now=T0, chain=[delegation])
    assert cred.root == world["oem"].did and [c.kind for c in cred.chain] == [CredentialKind.ISSUER]
    # the same chain found in a credential store instead of presented
    assert verify_credential(data, store, now=T0, credentials=CredentialStore([delegation])).root == world["oem"].did


def test_a_delegated_issuer_cannot_delegate_again(world: dict[str, Party], store: TrustStore) -> None:
    first = issue_credential(IssuerCredential(world["plant"].did, Role.OEM), world["oem"].key, now=T0, expires=T0 + DAY)
    second = issue_credential(
        IssuerCredential(world["stranger"].did, Role.OEM), world["plant"].key, now=T0, expires=T0 + DAY
    )
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["stranger"].key, now=T0)
    with pytest.raises(CredentialError, match="only roots delegate"):
        verify_credential(data, store, now=T0, chain=[first, second])


def test_owner_grant_chain(world: dict[str, Party], store: TrustStore) -> None:
    owner = owner_credential(world)
    cred = verify_credential(grant(world), store, now=T0 + 100, chain=[owner])
    assert isinstance(cred.body, AccessGrant)
    assert cred.body.resources == ("Vehicle.Speed", "events") and cred.body.actions == ("read", "subscribe")
    assert [c.kind for c in cred.chain] == [CredentialKind.OWNER] and cred.root == world["oem"].did
    # a registration authority may issue owner credentials as well (a transfer)
    buyer = owner_credential(world, owner="buyer", issuer="dmv")
    data = grant(world, issuer="buyer")
    assert verify_credential(data, store, now=T0, chain=[buyer]).root == world["dmv"].did


def test_authority_to_rsu_validator_p256(world: dict[str, Party], store: TrustStore) -> None:
    body = ValidatorCredential(world["rsu"].did, "cell-4711", power=10)
    data = issue_credential(body, world["road"].key, now=T0, expires=T0 + 30 * DAY)
    cred = verify_credential(data, store, now=T0 + DAY, expected_kind=CredentialKind.VALIDATOR)
    assert cred.body == body and cred.subject.startswith("did:key:zDn")  # a P-256 did:key


def test_grant_without_the_owner_credential_has_no_chain(world: dict[str, Party], store: TrustStore) -> None:
    with pytest.raises(CredentialError, match="owner credential making .* the owner of"):
        verify_credential(grant(world), store, now=T0)


def test_owner_credential_for_another_vehicle_does_not_make_an_owner(
    world: dict[str, Party], store: TrustStore
) -> None:
    other = issue_credential(OwnerCredential(world["owner"].did, world["stranger"].did, VIN), world["oem"].key, now=T0)
    with pytest.raises(CredentialError, match="no chain"):
        verify_credential(grant(world), store, now=T0, chain=[other])


# --- validity and skew ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "ok"),
    [
        (T0 + DAY - 1, True),
        (T0 + DAY + 59, True),  # expired 59 s ago: within the 60 s skew
        (T0 + DAY + 60, False),  # now >= exp + skew
        (T0 + DAY + 3600, False),
    ],
)
def test_expiry_with_skew(world: dict[str, Party], store: TrustStore, at: int, ok: bool) -> None:
    data = grant(world)
    if ok:
        verify_credential(data, store, now=at, chain=[owner_credential(world)])
    else:
        with pytest.raises(ValidityError, match="expired.*skew 60"):
            verify_credential(data, store, now=at, chain=[owner_credential(world)])


@pytest.mark.parametrize(("at", "ok"), [(T0 + 1000 - 60, True), (T0 + 1000 - 61, False), (T0, False)])
def test_not_yet_valid_with_skew(world: dict[str, Party], store: TrustStore, at: int, ok: bool) -> None:
    data = issue_credential(
        ValidatorCredential(world["rsu"].did, "cell-1"), world["road"].key, now=T0, not_before=T0 + 1000
    )
    if ok:
        verify_credential(data, store, now=at)
    else:
        with pytest.raises(ValidityError, match="not yet valid"):
            verify_credential(data, store, now=at)


def test_an_expired_link_fails_the_chain_with_its_own_error(world: dict[str, Party], store: TrustStore) -> None:
    delegation = issue_credential(
        IssuerCredential(world["plant"].did, Role.OEM), world["oem"].key, now=T0, expires=T0 + 10
    )
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["plant"].key, now=T0)
    with pytest.raises(ValidityError, match="issuer credential giving .* expired"):
        verify_credential(data, store, now=T0 + 3600, chain=[delegation])


# --- revocation ----------------------------------------------------------------------------------


def test_revoked_credential(world: dict[str, Party], store: TrustStore) -> None:
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["oem"].key, now=T0, cti=b"\x01" * 16)
    verify_credential(data, store, now=T0)
    revocation = RevocationList.parse("# revoked\n" + "01" * 16 + "\n")
    with pytest.raises(RevokedError, match="01010101"):
        verify_credential(data, TrustStore(store.roots, revocation), now=T0)


def test_revoked_owner_credential_revokes_the_grants_it_carries(world: dict[str, Party], store: TrustStore) -> None:
    owner = owner_credential(world)
    store.revocation.revoke_credential(decode_credential(owner).cti)  # type: ignore[attr-defined]
    with pytest.raises(RevokedError, match="owner credential"):
        verify_credential(grant(world), store, now=T0, chain=[owner])


@pytest.mark.parametrize("who", ["vehicle", "oem"])
def test_revoked_did(world: dict[str, Party], store: TrustStore, who: str) -> None:
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["oem"].key, now=T0)
    revocation = RevocationList.parse(f'{{"dids": ["{world[who].did}"]}}')
    with pytest.raises(RevokedError, match=world[who].did):
        verify_credential(data, TrustStore(store.roots, revocation), now=T0)


# --- issuer authority ----------------------------------------------------------------------------


def test_an_owner_cannot_issue_validator_credentials(world: dict[str, Party], store: TrustStore) -> None:
    data = issue_credential(ValidatorCredential(world["rsu"].did, "cell-1"), world["owner"].key, now=T0)
    with pytest.raises(CredentialError, match="not a trust root.*road_authority"):
        verify_credential(data, store, now=T0, chain=[owner_credential(world)])


def test_a_root_of_another_role_is_not_enough(world: dict[str, Party], store: TrustStore) -> None:
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["road"].key, now=T0)
    with pytest.raises(CredentialError, match="trust root for road_authority only.*oem"):
        verify_credential(data, store, now=T0)
    data = issue_credential(ValidatorCredential(world["rsu"].did, "cell-1"), world["oem"].key, now=T0)
    with pytest.raises(CredentialError, match="trust root for oem only"):
        verify_credential(data, store, now=T0)


def test_an_untrusted_key_cannot_issue_anything(world: dict[str, Party], store: TrustStore) -> None:
    data = issue_credential(
        OwnerCredential(world["stranger"].did, world["vehicle"].did, VIN), world["stranger"].key, now=T0
    )
    with pytest.raises(CredentialError, match="not a trust root"):
        verify_credential(data, store, now=T0)


def test_expected_kind(world: dict[str, Party], store: TrustStore) -> None:
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["oem"].key, now=T0)
    with pytest.raises(CredentialError, match="expected a grant credential, got a vehicle"):
        verify_credential(data, store, now=T0, expected_kind=CredentialKind.GRANT)


# --- tampering and malformed input ---------------------------------------------------------------


def test_tampered_claims_fail_the_signature(world: dict[str, Party], store: TrustStore) -> None:
    data = issue_credential(VehicleCredential(world["vehicle"].did, VIN), world["oem"].key, now=T0)
    msg = cose.decode_sign1(data)
    assert msg.payload is not None
    claims = cbor.loads(msg.payload)
    claims["vin"] = VIN_EU
    forged = data.replace(msg.payload, cbor.dumps(claims))
    assert forged != data
    with pytest.raises(SignatureError):
        verify_credential(forged, store, now=T0)


def test_signed_by_someone_else_than_the_kid(world: dict[str, Party], store: TrustStore) -> None:
    claims = cwt.Claims(iss=world["oem"].did, sub=world["vehicle"].did, cti=b"x" * 16, extra={"vin": VIN})
    data = cose.sign1(
        cbor.dumps(claims.to_map()),
        world["stranger"].key,
        kid=verification_method_id(world["oem"].did).encode(),
        content_type=CredentialKind.VEHICLE.content_type,
    )
    with pytest.raises(SignatureError):
        verify_credential(data, store, now=T0)


def test_iss_must_be_the_signer(world: dict[str, Party], store: TrustStore) -> None:
    claims = cwt.Claims(iss=world["oem"].did, sub=world["vehicle"].did, cti=b"x" * 16, extra={"vin": VIN})
    data = cose.sign1(
        cbor.dumps(claims.to_map()),
        world["stranger"].key,
        kid=verification_method_id(world["stranger"].did).encode(),
        content_type=CredentialKind.VEHICLE.content_type,
    )
    with pytest.raises(CredentialError, match="is not the signer"):
        verify_credential(data, store, now=T0)


def test_unknown_content_type_and_unknown_claims(world: dict[str, Party], store: TrustStore) -> None:
    claims = cwt.Claims(iss=world["oem"].did, sub=world["vehicle"].did, cti=b"x" * 16, extra={"vin": VIN})
    kid = verification_method_id(world["oem"].did).encode()
    data = cose.sign1(cbor.dumps(claims.to_map()), world["oem"].key, kid=kid, content_type="application/cwt")
    with pytest.raises(CoseError, match="not a credential kind"):
        verify_credential(data, store, now=T0)
    claims = cwt.Claims(
        iss=world["oem"].did, sub=world["vehicle"].did, cti=b"x" * 16, extra={"vin": VIN, "admin": True}
    )
    data = cose.sign1(
        cbor.dumps(claims.to_map()), world["oem"].key, kid=kid, content_type=CredentialKind.VEHICLE.content_type
    )
    with pytest.raises(SchemaError, match="admin") as info:
        verify_credential(data, store, now=T0)
    assert info.value.field == "admin"


def test_grant_schema_checked_when_issuing(world: dict[str, Party]) -> None:
    with pytest.raises(SchemaError, match="res") as info:
        grant(world, resources=("Vehicle.speed",))  # VSS names are capitalised
    assert info.value.field == "res[0]"
    body = AccessGrant(world["app"].did, world["vehicle"].did, ("events",), ("actuate",))
    with pytest.raises(SchemaError, match="actuate"):
        issue_credential(body, world["owner"].key, now=T0, expires=T0 + DAY)
    with pytest.raises(SchemaError, match="must expire"):
        issue_credential(AccessGrant(world["app"].did, world["vehicle"].did, ("events",)), world["owner"].key, now=T0)


@pytest.mark.parametrize(
    ("vin", "ok"),
    [
        (VIN, True),
        (VIN_EU, True),  # EU: no check digit required
        ("1M8GDM9A1KP042788", False),  # North America: wrong check digit
        ("LSGPC52U6BF000001", False),  # China (L): check digit required and wrong
        ("1M8GDM9AXKP04278", False),  # 16 characters
        ("1M8GDM9AXKP04278O", False),  # O is not allowed
        ("wvwzzz1jzxw000001", False),  # lower case
    ],
)
def test_vin(vin: str, ok: bool) -> None:
    if ok:
        assert validate_vin(vin) == vin
    else:
        with pytest.raises(SchemaError) as info:
            validate_vin(vin)
        assert info.value.field == "vin"


# --- access policy (the OBU) ---------------------------------------------------------------------


@pytest.fixture
def policy(world: dict[str, Party], store: TrustStore) -> AccessPolicy:
    return AccessPolicy(world["vehicle"].did, store, vin=VIN, credentials=CredentialStore([owner_credential(world)]))


def test_policy_allows_what_is_granted(world: dict[str, Party], policy: AccessPolicy) -> None:
    g = grant(world, resources=("Vehicle.Speed", "Vehicle.CurrentLocation.*", "events"))
    app = world["app"].did
    assert policy.check([g], app, "Vehicle.Speed", "subscribe", T0 + 10).cti == decode_credential(g).cti
    policy.check([g], app, "Vehicle.CurrentLocation.Latitude", "read", T0 + 10)
    policy.check([g], app, "events", "read", T0 + 10)


@pytest.mark.parametrize(
    ("subject", "resource", "action", "at", "reason"),
    [
        ("app", "Vehicle.Powertrain.CombustionEngine.Speed", "read", T0 + 10, "not among its resources"),
        ("app", "clips", "read", T0 + 10, "not among its resources"),
        ("stranger", "Vehicle.Speed", "read", T0 + 10, "granted to .*, not to"),
        ("app", "Vehicle.Speed", "read", T0 + DAY + 61, "expired"),
    ],
)
def test_policy_denies_with_the_reason(
    world: dict[str, Party], policy: AccessPolicy, subject: str, resource: str, action: str, at: int, reason: str
) -> None:
    with pytest.raises(AccessDenied, match=reason) as info:
        policy.check([grant(world)], world[subject].did, resource, action, at)
    assert isinstance(info.value, CredentialError) and len(info.value.reasons) == 1


def test_policy_denies_an_action_not_granted(world: dict[str, Party], policy: AccessPolicy) -> None:
    body = AccessGrant(world["app"].did, world["vehicle"].did, ("Vehicle.Speed",), ("read",))
    g = issue_credential(body, world["owner"].key, now=T0, expires=T0 + DAY)
    with pytest.raises(AccessDenied, match="allows read, not subscribe"):
        policy.check([g], world["app"].did, "Vehicle.Speed", "subscribe", T0)
    with pytest.raises(AccessDenied, match="unknown action"):
        policy.check([g], world["app"].did, "Vehicle.Speed", "write", T0)


def test_policy_denies_grants_for_another_vehicle(world: dict[str, Party], store: TrustStore) -> None:
    other = AccessPolicy(world["stranger"].did, store, credentials=CredentialStore([owner_credential(world)]))
    with pytest.raises(AccessDenied, match="for vehicle .*, not this one"):
        other.check([grant(world)], world["app"].did, "Vehicle.Speed", "read", T0)


def test_policy_denies_a_revoked_grant_and_picks_a_good_one(world: dict[str, Party], policy: AccessPolicy) -> None:
    bad, good = grant(world), grant(world)
    policy.store.revocation.revoke_credential(decode_credential(bad).cti)  # type: ignore[attr-defined]
    assert policy.check([bad, good], world["app"].did, "events", "read", T0).cti == decode_credential(good).cti
    with pytest.raises(AccessDenied, match="revoked") as info:
        policy.check([bad], world["app"].did, "events", "read", T0)
    assert isinstance(info.value.__cause__, RevokedError)


def test_policy_denies_when_nothing_is_presented(world: dict[str, Party], policy: AccessPolicy) -> None:
    with pytest.raises(AccessDenied, match="presented no grant"):
        policy.check([], world["app"].did, "events", "read", T0)


def test_policy_denies_a_grant_by_an_owner_of_another_vin(world: dict[str, Party], store: TrustStore) -> None:
    owner = issue_credential(
        OwnerCredential(world["owner"].did, world["vehicle"].did, VIN_EU), world["oem"].key, now=T0
    )
    p = AccessPolicy(world["vehicle"].did, store, vin=VIN, credentials=CredentialStore([owner]))
    with pytest.raises(AccessDenied, match="VIN"):
        p.check([grant(world)], world["app"].did, "events", "read", T0)


def test_resource_matching() -> None:
    assert resource_matches("Vehicle.Speed", "Vehicle.Speed")
    assert resource_matches("Vehicle.CurrentLocation.*", "Vehicle.CurrentLocation.Latitude")
    assert not resource_matches("Vehicle.CurrentLocation.*", "Vehicle.CurrentLocationX")
    assert not resource_matches("Vehicle.Speed", "Vehicle.SpeedLimit")


def test_trust_store_gives_pseudonym_authority_keys(world: dict[str, Party]) -> None:
    store = TrustStore({world["road"].did: [Role.ROAD_AUTHORITY, Role.PSEUDONYM_CA], world["oem"].did: Role.OEM})
    assert store.authority_keys("pseudonym_ca") == {world["road"].did: world["road"].key.public}
    with pytest.raises(ValueError, match="roles"):
        TrustStore({world["oem"].did: "king"})
