"""Shared fixtures. Reference data comes from ../shared/refdata (beside the checkout, in CI
too); ACC_REFDATA overrides the location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFDATA = Path(os.environ.get("ACC_REFDATA", REPO.parent / "shared" / "refdata"))
DATA = Path(__file__).resolve().parent / "data"

pytest_plugins = ["tests.mqtt_broker"]


@pytest.fixture(scope="session")
def refdata() -> Path:
    """Root of the shared reference data; a missing one is an error, never a skip."""
    if not (REFDATA / "INDEX.md").is_file():
        raise RuntimeError(
            f"reference data not found at {REFDATA}: tests need ../shared/refdata beside the "
            "checkout (or ACC_REFDATA pointing at it)"
        )
    return REFDATA
