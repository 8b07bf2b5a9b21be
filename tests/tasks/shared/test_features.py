"""The model's inputs from the contract: one order everywhere, one typing whatever the stored dtypes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from closedloop.contract import ColumnType, load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared.features import feature_names, monotone_constraints, typed_features

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")


def _frame(rows: int = 3) -> pd.DataFrame:
    data: dict[str, object] = {}
    for name in feature_names(CONTRACT):
        column = next((c for c in CONTRACT.columns if c.name == name), None)
        if column is not None and column.type is ColumnType.CATEGORY:
            data[name] = [column.categories[0]] * rows
        elif column is not None and column.type is ColumnType.BOOL:
            data[name] = pd.array([True, None, False][:rows], dtype="boolean")
        elif column is not None and column.type is ColumnType.INT:
            data[name] = pd.array([1, None, 3][:rows], dtype="Int64")  # a stored integer column with a gap
        else:
            data[name] = [1.5, np.inf, None][:rows]
    return pd.DataFrame(data)


def test_the_inputs_come_in_contract_order_then_aggregates_then_ratios() -> None:
    names = feature_names(CONTRACT)
    inputs = [c.name for c in CONTRACT.model_inputs]
    assert names[: len(inputs)] == inputs
    assert names[len(inputs) :] == [a.name for a in CONTRACT.aggregates] + [r.name for r in CONTRACT.ratios]
    assert len(set(names)) == len(names)


def test_every_input_is_float_or_a_category_with_the_contracts_categories() -> None:
    typed = typed_features(_frame(), CONTRACT)
    assert list(typed.columns) == feature_names(CONTRACT)
    for name in typed.columns:
        column = next((c for c in CONTRACT.columns if c.name == name), None)
        if column is not None and column.type is ColumnType.CATEGORY:
            assert list(typed[name].cat.categories) == list(column.categories)
        else:
            assert typed[name].dtype == "float64", name


def test_missing_and_infinite_values_become_nan_and_nullable_integers_stay_exact() -> None:
    typed = typed_features(_frame(), CONTRACT)
    ints = [c.name for c in CONTRACT.model_inputs if c.type is ColumnType.INT]
    floats = [c.name for c in CONTRACT.model_inputs if c.type is ColumnType.FLOAT]
    assert ints and floats
    for name in ints:
        assert typed[name].tolist()[0] == 1.0 and np.isnan(typed[name].iloc[1]) and typed[name].iloc[2] == 3.0
    for name in floats:
        assert typed[name].iloc[0] == 1.5 and typed[name].iloc[1:].isna().all()  # inf is no value a model can use


def test_an_unknown_category_is_missing_not_a_new_level() -> None:
    name = next(c.name for c in CONTRACT.model_inputs if c.type is ColumnType.CATEGORY)
    frame = _frame(1)
    frame[name] = ["a level the contract does not know"]
    typed = typed_features(frame, CONTRACT)
    assert typed[name].isna().all()


def test_risk_directions_become_monotone_constraints() -> None:
    constraints = monotone_constraints(CONTRACT)
    assert constraints  # the credit contract states some directions
    for column in CONTRACT.model_inputs:
        expected = {"increasing": 1, "decreasing": -1}.get(column.risk_direction or "")
        assert constraints.get(column.name) == expected
