"""Seals: what the flows sign is what readers serve; a hand-moved alias, a forged or replayed seal is refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from closedloop import seal


@pytest.fixture
def keys(tmp_path: Path) -> seal.KeyFiles:
    files = seal.KeyFiles(private=tmp_path / "keys" / "promotion.key", public=tmp_path / "keys" / "promotion.pub")
    seal.signing_key(files)
    return files


def _champion(keys: seal.KeyFiles, version: str, seq: int, dataset: str = "credit") -> dict[str, str]:
    payload = {"kind": "champion", "dataset": dataset, "version": version, "run_id": f"run{version}", "seq": seq}
    return {seal.CHAMPION_TAG: seal.sign(seal.signing_key(keys), payload)}


def test_the_signing_key_is_its_owners_alone_and_the_public_half_is_written_beside_it(keys: seal.KeyFiles) -> None:
    assert stat.S_IMODE(keys.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.private.parent.stat().st_mode) == 0o700
    assert keys.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    before = keys.private.read_bytes()
    seal.signing_key(keys)  # a second flow loads the same key, never a new one
    assert keys.private.read_bytes() == before


def test_a_seal_opens_with_its_public_key_only(keys: seal.KeyFiles, tmp_path: Path) -> None:
    sealed = seal.sign(seal.signing_key(keys), {"version": "3", "seq": 1})
    assert seal.opened(seal.verify_key(keys), sealed, "v3") == {"version": "3", "seq": 1}
    other = seal.KeyFiles(private=tmp_path / "other.key", public=tmp_path / "other.pub")
    seal.signing_key(other)
    with pytest.raises(seal.SealError, match="not signed by this installation's promotion key"):
        seal.opened(seal.verify_key(other), sealed, "v3")
    prefix, _, signature = sealed.split(".")
    tampered = ".".join((prefix, seal._b64(b'{"seq":1,"version":"4"}'), signature))
    with pytest.raises(seal.SealError, match="not signed"):
        seal.opened(seal.verify_key(keys), tampered, "v4")
    for broken in ("", "v1.abc", "v2.a.b", "not a seal"):
        with pytest.raises(seal.SealError):
            seal.opened(seal.verify_key(keys), broken, "v3")


def test_the_service_serves_the_sealed_champion_whatever_the_alias_says(keys: seal.KeyFiles) -> None:
    tags = _champion(keys, "3", seq=2)
    agreed = seal.served(keys, "credit", {"champion": "3"}, tags)
    assert (agreed.version, agreed.run_id, agreed.seq, agreed.problem) == ("3", "run3", 2, None)
    moved = seal.served(keys, "credit", {"champion": "5"}, tags)  # one REST call moved the alias
    assert moved.version == "3"
    assert moved.problem is not None and "points at v5, but the last sealed promotion is v3" in moved.problem


def test_no_seal_no_service(keys: seal.KeyFiles) -> None:
    with pytest.raises(seal.SealError, match="no version of 'credit' was promoted yet"):
        seal.served(keys, "credit", {}, {})
    with pytest.raises(seal.SealError, match="points at v5, but no promotion of it was sealed"):
        seal.served(keys, "credit", {"champion": "5"}, {})
    forged = {seal.CHAMPION_TAG: _champion(keys, "5", 9)[seal.CHAMPION_TAG].replace(".", ".x", 1)}
    with pytest.raises(seal.SealError):
        seal.served(keys, "credit", {"champion": "5"}, forged)


def test_an_older_seal_put_back_by_hand_is_refused(keys: seal.KeyFiles) -> None:
    old = _champion(keys, "2", seq=1)
    assert seal.served(keys, "credit", {"champion": "2"}, old, seen_seq=1).version == "2"
    with pytest.raises(seal.SealError, match="promotion 1, older than promotion 2 already served"):
        seal.served(keys, "credit", {"champion": "2"}, old, seen_seq=2)


def test_a_seal_of_another_dataset_or_kind_is_refused(keys: seal.KeyFiles) -> None:
    with pytest.raises(seal.SealError, match="a seal of something else"):
        seal.served(keys, "credit", {"champion": "3"}, _champion(keys, "3", 1, dataset="german_credit"))


def test_without_the_public_key_nothing_can_be_verified(tmp_path: Path) -> None:
    missing = seal.KeyFiles(private=tmp_path / "k", public=tmp_path / "k.pub")
    with pytest.raises(seal.SealError, match="no promotion public key at"):
        seal.verify_key(missing)
