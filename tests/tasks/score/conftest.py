"""The synthetic credit contract for the scoring unit tests."""

from __future__ import annotations

import pytest

from closedloop.contract import Contract, load_contract
from closedloop.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def contract() -> Contract:
    return load_contract(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
