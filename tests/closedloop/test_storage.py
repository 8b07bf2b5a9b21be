from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from closedloop import storage


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests against the local disk and against a real S3 endpoint."""
    if request.param == "file":
        return (tmp_path / "lake").as_uri()
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"lake-{tmp_path.name.replace('_', '-').lower()[-40:]}"
    storage.ensure_bucket(bucket, endpoint)
    return f"s3://{bucket}/lake"


def _endpoint(root: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("s3_endpoint") if root.startswith("s3://") else None


def test_round_trip_list_and_exists(root: str, request: pytest.FixtureRequest) -> None:
    ep = _endpoint(root, request)
    a = storage.join(root, "landing", "applications", "applications-2025-01-01.parquet")
    b = storage.join(root, "landing", "outcomes", "outcomes-2025-04-01.csv")
    storage.write_bytes(a, b"parquet bytes", ep)
    storage.write_bytes(b, b"csv bytes", ep)
    assert storage.read_bytes(a, ep) == b"parquet bytes"
    assert storage.exists(b, ep) and not storage.exists(storage.join(root, "nothing"), ep)
    assert storage.list_objects(storage.join(root, "landing"), ep) == sorted([a, b])
    assert storage.list_objects(storage.join(root, "landing", "outcomes"), ep) == [b]
    assert storage.list_objects(storage.join(root, "empty"), ep) == []


def test_overwrite_is_whole(root: str, request: pytest.FixtureRequest) -> None:
    ep = _endpoint(root, request)
    uri = storage.join(root, "bundle.json")
    storage.write_bytes(uri, b"x" * 1000, ep)
    storage.write_bytes(uri, b"short", ep)
    assert storage.read_bytes(uri, ep) == b"short"


def test_missing_object_names_the_uri(root: str, request: pytest.FixtureRequest) -> None:
    uri = storage.join(root, "absent.parquet")
    with pytest.raises(storage.StorageError, match=f"{uri}: cannot read"):
        storage.read_bytes(uri, _endpoint(root, request))


def test_upload_file(root: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    ep = _endpoint(root, request)
    local = tmp_path / "model.ubj"
    local.write_bytes(b"\x00\x01model")
    uri = storage.upload_file(local, storage.join(root, "bundles", "model.ubj"), ep)
    assert storage.read_bytes(uri, ep) == b"\x00\x01model"


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    uri = (tmp_path / "a" / "b.bin").as_uri()
    storage.write_bytes(uri, b"1")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.bin"]


def test_hidden_staging_files_are_not_listed(tmp_path: Path) -> None:
    (tmp_path / ".staging-x").mkdir()
    (tmp_path / ".staging-x" / "part.parquet").write_bytes(b"")
    (tmp_path / "real.parquet").write_bytes(b"")
    assert storage.list_objects(tmp_path.as_uri()) == [(tmp_path / "real.parquet").as_uri()]


def test_bad_uris_are_explained() -> None:
    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'gs'"):
        storage.parse("gs://bucket/key")
    with pytest.raises(storage.StorageError, match="an s3 URI needs a bucket"):
        storage.parse("s3:///key")
    with pytest.raises(storage.StorageError, match="file URIs must be absolute"):
        storage.parse("file://relative/path")
    assert storage.parse("/tmp/x").scheme == "file"


def test_missing_bucket_is_reported(s3_endpoint: str) -> None:
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket/k: cannot write \(NoSuchBucket"):
        storage.write_bytes("s3://no-such-bucket/k", b"1", s3_endpoint)


def test_ensure_bucket_is_idempotent(s3_endpoint: str) -> None:
    storage.ensure_bucket("twice", s3_endpoint)
    storage.ensure_bucket("twice", s3_endpoint)
    names = [b["Name"] for b in boto3.client("s3", endpoint_url=s3_endpoint).list_buckets()["Buckets"]]
    assert names.count("twice") == 1


def test_delete_removes_one_object_and_a_missing_one_is_fine(root: str, request: pytest.FixtureRequest) -> None:
    ep = _endpoint(root, request)
    keep, gone = storage.join(root, "scores", "a.parquet"), storage.join(root, "scores", "b.parquet")
    storage.write_bytes(keep, b"a", ep)
    storage.write_bytes(gone, b"b", ep)
    storage.delete(gone, ep)
    storage.delete(gone, ep)
    assert storage.exists(keep, ep) and not storage.exists(gone, ep)


def test_a_move_leaves_the_object_whole_at_its_new_place_only(root: str, request: pytest.FixtureRequest) -> None:
    ep = _endpoint(root, request)
    source, target = storage.join(root, "staging", "b1", "x.parquet"), storage.join(root, "offline", "x.parquet")
    storage.write_bytes(source, b"rows", ep)
    assert storage.move(source, target, ep) == target
    assert storage.read_bytes(target, ep) == b"rows" and not storage.exists(source, ep)
    with pytest.raises(storage.StorageError, match="cannot move"):
        storage.move(source, target, ep)  # nothing left to move: named, not silent


def test_deleting_a_prefix_removes_everything_below_it_and_nothing_else(
    root: str, request: pytest.FixtureRequest
) -> None:
    ep = _endpoint(root, request)
    for name in ("staging/b1/a", "staging/b1/deep/b", "staging/b10/c"):
        storage.write_bytes(storage.join(root, name), b"x", ep)
    assert storage.delete_prefix(storage.join(root, "staging", "b1"), ep) == 2
    assert storage.list_objects(storage.join(root, "staging"), ep) == [storage.join(root, "staging/b10/c")]
    assert storage.delete_prefix(storage.join(root, "nothing"), ep) == 0


def test_an_offline_table_reads_across_files_whose_int_column_became_float(tmp_path: Path) -> None:
    """A batch with a missing value stores an integer column as float64, a clean one as int64: one table."""
    import pandas as pd

    from closedloop.lake import Lake, parquet_bytes

    lake = Lake.of(tmp_path.as_uri(), "credit_synthetic")
    clean = pd.DataFrame({"customer_id": [1, 2], "loan_term_months": pd.Series([12, 24], dtype="int64")})
    gappy = pd.DataFrame({"customer_id": [3, 4], "loan_term_months": [36.0, None]})
    for day, frame in (("2025-01-01", clean), ("2025-01-02", gappy)):
        uri = storage.join(lake.offline("applications"), f"event_date={day}", "b.parquet")
        storage.write_bytes(uri, parquet_bytes(frame))
    table = lake.read_offline("applications")
    assert table["loan_term_months"].dtype == "float64" and table["loan_term_months"].tolist()[:3] == [12, 24, 36]
