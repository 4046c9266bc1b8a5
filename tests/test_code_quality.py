"""The project's own rules, enforced: ruff (lint + format) and mypy --strict, and no print()
in library code (only entry points write to stdout)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = ("agent", "hal", "drivers", "ledger_lite", "models")


def _tool(name: str) -> str:
    found = Path(sys.executable).with_name(name)
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (it is in the dev extra)")
    return path


def test_ruff_lint_and_format() -> None:
    lint = subprocess.run([_tool("ruff"), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([_tool("ruff"), "format", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict() -> None:
    out = subprocess.run([_tool("mypy")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout


def test_no_print_in_library_code() -> None:
    pattern = re.compile(r"^\s*print\(", re.M)
    offenders = [
        str(p.relative_to(REPO)) for pkg in LIBRARY for p in (REPO / pkg).rglob("*.py") if pattern.search(p.read_text())
    ]
    assert offenders == []
