from __future__ import annotations

from pathlib import Path

from closedloop.contract import load_contract
from feature_repo.definitions import build_repo, model_service_name, policy_service_name, sensitive_refs

REPO = Path(__file__).resolve().parents[2]


def test_repo_is_derived_from_the_contract(tmp_path: Path) -> None:
    contract = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")
    repo = build_repo(contract, str(tmp_path))
    views = {v.name: v for v in repo.views}
    assert set(views) == {
        "profiles",
        "profiles_sensitive",
        "profiles_policy",
        "credit_history",
        "credit_history_history",
    }
    assert {f.name for f in views["profiles"].schema} == {
        "education",
        "region",
        "home_ownership",
        "income",
        "employment_years",
    }
    assert views["profiles_sensitive"].online is False  # never served
    # age decides an applicant's threshold group (group_thresholds: true), so it alone is readable online,
    # through its own FeatureService, never through the model's
    assert [f.name for f in views["profiles_policy"].schema] == ["age"]
    assert views["profiles_policy"].online is True
    assert repo.policy_service is not None and repo.policy_service.name == policy_service_name(contract)
    assert {p.name for p in repo.policy_service.feature_view_projections} == {"profiles_policy"}
    assert "postcode" not in {f.name for v in repo.views for f in v.schema}  # excluded
    assert repo.model_service.name == model_service_name(contract) == "credit_synthetic_model_v1"
    served = {p.name for p in repo.model_service.feature_view_projections}
    assert served == {"profiles", "credit_history", "credit_history_history", "ratios"}
    assert sensitive_refs(contract) == [
        "profiles_sensitive:age",
        "profiles_sensitive:sex",
        "profiles_sensitive:marital_status",
    ]


def test_a_new_dataset_is_a_new_contract_not_new_code(tmp_path: Path) -> None:
    contract = load_contract(REPO / "datasets/taiwan_credit_default/contract.yaml")
    repo = build_repo(contract, str(tmp_path))
    assert {v.name for v in repo.views} == {
        "profiles",
        "profiles_sensitive",
        "profiles_policy",
        "credit_history",
        "credit_history_history",
    }
    assert repo.model_service.name == "taiwan_credit_default_model_v1"
    ratios = next(o for o in repo.on_demand if o.name == "ratios")
    assert {f.name for f in ratios.schema} == {"bill_to_limit", "paid_to_bill"}
