"""Scoring a one-table contract: every input comes with the application, nothing is looked up in a stored view."""

from __future__ import annotations

import numpy as np
import pytest
from one_table import flat_contract, flat_rows

from closedloop.settings import Settings
from tasks.shared.features import EVENT_TIMESTAMP


@pytest.fixture
def flat_store(settings: Settings) -> tuple[object, object]:
    """The flat contract's Feast repository applied; the online store holds nothing."""
    from feature_repo.definitions import build_repo
    from feature_repo.store import offline_root, open_store

    _, contract = flat_contract(settings.state_dir)
    store = open_store(settings, contract)
    store.apply(build_repo(contract, offline_root(settings, contract)).objects)
    return store, contract


def test_the_service_scores_a_flat_contract_from_the_request_alone(flat_store: tuple[object, object]) -> None:
    from tasks.score.feature_source import FeatureSource

    store, contract = flat_store
    source = FeatureSource(store, contract)  # type: ignore[arg-type]
    applications = [
        {"application_id": 10**9, "income": 40_000.0, "loan_amount": 10_000.0, "term_months": 24, "purpose": "home"},
        {"application_id": 7, "income": 0.0, "loan_amount": 1_000.0, "term_months": 12, "purpose": "car"},
    ]
    columns = ["loan_to_income", "term_months", "purpose", "income"]
    matrix = source.matrix(applications, columns)  # no UnknownEntities: no key is looked up
    assert not source.reads_store
    assert matrix[0].tolist() == [0.25, 24.0, 1.0, 40_000.0]
    assert np.isnan(matrix[1, 0])  # a zero income: no ratio, as in training


def test_batch_scoring_retrieves_a_flat_segment_without_feast(flat_store: tuple[object, object]) -> None:
    """The segment's own rows with the ratios, where Feast would refuse a retrieval without stored features."""
    from feature_repo.definitions import model_service_name
    from feature_repo.store import LocalRetrieval, historical_job, service_refs
    from tasks.score import segments

    store, contract = flat_store
    rows = flat_rows(50, unlabelled=10)
    entities = segments.window_entities(
        rows, contract, rows["applied_at"].min().to_pydatetime(), rows["applied_at"].max().to_pydatetime()
    )
    refs = service_refs(store.get_feature_service(model_service_name(contract)))  # type: ignore[attr-defined]
    assert refs == ["ratios:loan_to_income"]
    job = historical_job(store, contract, entities, refs)  # type: ignore[arg-type]
    assert isinstance(job, LocalRetrieval)
    frame = job.to_df()
    assert len(frame) == len(entities) == 49  # the window's end is exclusive; unlabelled rows are scored too
    assert np.allclose(frame["loan_to_income"], frame["loan_amount"] / frame["income"])
    assert EVENT_TIMESTAMP in frame and "defaulted" not in frame
