"""Small frames of served features for the monitor's unit tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Contract, load_contract
from closedloop.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def contract() -> Contract:
    return load_contract(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")


def applicant_features(n: int, seed: int, income_factor: float = 1.0, new_purpose_share: float = 0.0) -> pd.DataFrame:
    """Applicants' features as served; incomes scaled and an unseen loan purpose mixed in to make drift."""
    rng = np.random.default_rng(seed)
    purposes = np.array(["debt_consolidation", "car", "home_improvement", "education", "medical", "business"])
    purpose = purposes[rng.choice(6, n, p=[0.35, 0.2, 0.15, 0.08, 0.07, 0.15])].astype(object)
    purpose[rng.random(n) < new_purpose_share] = "crypto"
    channel = np.array(["branch", "online", "broker"])[rng.choice(3, n, p=[0.3, 0.55, 0.15])].astype(object)
    channel[rng.random(n) < 0.03] = None
    return pd.DataFrame(
        {
            "income": np.exp(rng.normal(10.5, 0.4, n)) * income_factor,
            "utilisation": np.clip(rng.beta(2, 3, n) * 1.2, 0, 1.5),
            "months_delinquent": rng.poisson(0.6, n),
            "loan_purpose": purpose,
            "channel": channel,
            "loan_amount": np.exp(rng.normal(9.0, 0.6, n)),
        }
    )


@pytest.fixture(scope="session")
def features() -> Callable[..., pd.DataFrame]:
    return applicant_features
