"""``closedloop train --fairness KEY=VALUE``: overrides are checked against the contract's fairness fields first."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import _fairness_overrides, app
from closedloop.contract import FairnessPolicy

runner = CliRunner()


def test_fairness_overrides_are_read_as_the_contract_reads_them() -> None:
    given = _fairness_overrides(["min_group_rows=30", "mitigation = none", "max_equalized_odds_difference=0.1"])
    policy = FairnessPolicy.model_validate(given)
    assert (policy.min_group_rows, policy.mitigation, policy.max_equalized_odds_difference) == (30, "none", 0.1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("min_group_rows", "expected KEY=VALUE, for example --fairness min_group_rows=30"),
        ("min_group_size=30", "min_group_size: Extra inputs are not permitted"),
        ("min_disparate_impact=1.5", "min_disparate_impact: Input should be less than or equal to 1"),
        ("mitigation=sometimes", "mitigation: Input should be 'threshold_optimizer' or 'none'"),
    ],
)
def test_a_bad_fairness_override_is_refused_before_training(option: str, message: str) -> None:
    result = runner.invoke(app, ["train", "--fairness", option])
    assert result.exit_code == 2
    assert message in result.stderr
    if "=" in option:
        assert "fields: max_demographic_parity_difference" in result.stderr
