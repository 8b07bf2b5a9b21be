"""Sealed decisions: which version is champion or in a rollout, and what its evidence said, signed by the flows.

MLflow's aliases, tags and artifacts can be changed by anyone who reaches its REST API; one call used to make an
ineligible version the served model. So the flows that decide sign what they decide with an Ed25519 key that
only they hold: the train flow seals each version's evidence record (its SHA-256), the deploy flow seals each
promotion and rollout start, the monitor's rollback seals the champion it restores. The scoring service and batch
scoring hold only the public key: they serve the version the last sealed promotion names, never one an alias
names without a seal, and report the disagreement. A hand-moved alias, a hand-set tag or a rewritten evidence
file therefore changes nothing that is served or deployed.

A seal is ``v1.<payload>.<signature>`` (base64url; the payload is canonical JSON) in a registry tag:
``closedloop.champion`` and ``closedloop.candidate`` on the registered model, ``closedloop.evidence`` on a
version. Promotions count up (``seq``), so a service that saw promotion 7 refuses an older one put back by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CHAMPION_TAG = "closedloop.champion"
CANDIDATE_TAG = "closedloop.candidate"
EVIDENCE_TAG = "closedloop.evidence"
_PREFIX = "v1"


class SealError(RuntimeError):
    """A seal is missing, not signed by this installation's key, or does not match what the registry holds."""


@dataclass(frozen=True)
class KeyFiles:
    """Where the signing key (flows only) and its public half (every reader) are kept."""

    private: Path
    public: Path


def key_files(settings: Any) -> KeyFiles:
    """The key files a :class:`~closedloop.settings.Settings` names (default: ``<state>/keys/``)."""
    keys = settings.state_dir / "keys"
    return KeyFiles(
        private=settings.promotion_key_file or keys / "promotion.key",
        public=settings.promotion_public_key_file or keys / "promotion.pub",
    )


def signing_key(files: KeyFiles) -> Ed25519PrivateKey:
    """The flows' key, created on first use (readable by its owner only, written before anything can read it)."""
    if not files.private.exists():
        files.private.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(files.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another flow created it at the same instant: use theirs
            return signing_key(files)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    loaded = serialization.load_pem_private_key(files.private.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SealError(f"{files.private} is not an Ed25519 private key")
    if not files.public.exists():
        public = loaded.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        files.public.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = files.public.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(public)
        tmp.replace(files.public)
    return loaded


def verify_key(files: KeyFiles) -> Ed25519PublicKey:
    """The public key every reader verifies with; without it nothing can be verified (and nothing is served)."""
    try:
        loaded = serialization.load_pem_public_key(files.public.read_bytes())
    except FileNotFoundError:
        raise SealError(
            f"no promotion public key at {files.public}: no version was ever sealed by this installation's flows "
            "(deploy one), or set CLOSEDLOOP_PROMOTION_PUBLIC_KEY_FILE"
        ) from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise SealError(f"{files.public} is not an Ed25519 public key")
    return loaded


def sign(key: Ed25519PrivateKey, payload: dict[str, Any]) -> str:
    """``payload`` as a seal (canonical JSON, signed)."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return ".".join((_PREFIX, _b64(body), _b64(key.sign(body))))


def opened(key: Ed25519PublicKey, seal: str | None, what: str) -> dict[str, Any]:
    """The payload of a seal signed by ``key``; :class:`SealError` naming ``what`` when it is absent or forged."""
    if not seal:
        raise SealError(f"{what} has no seal: it was not decided by closedloop's flows")
    try:
        prefix, body, signature = seal.split(".")
        if prefix != _PREFIX:
            raise ValueError(f"unknown seal format {prefix!r}")
        raw = _unb64(body)
        key.verify(_unb64(signature), raw)
        payload: dict[str, Any] = json.loads(raw)
    except (ValueError, InvalidSignature) as exc:
        raise SealError(f"{what}: its seal is not signed by this installation's promotion key") from exc
    return payload


def digest(text: str | bytes) -> str:
    """The SHA-256 of an evidence record, as sealed."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- the registry's side: what the flows seal, what the readers accept ---------------------------------------


@dataclass(frozen=True)
class Served:
    """The version to serve (the last sealed promotion) and, when the registry disagrees, what is wrong."""

    version: str
    run_id: str
    seq: int
    payload: dict[str, Any]
    problem: str | None = None


def registered(tracking_uri: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The registered model's aliases and tags, in one registry call; both empty when it does not exist."""
    from mlflow.exceptions import MlflowException

    from closedloop.registry import client

    try:
        found = client(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return {}, {}
        raise
    aliases = {str(k): str(v) for k, v in (found.aliases or {}).items()}
    return aliases, {str(k): str(v) for k, v in (found.tags or {}).items()}


def sealed_champion(files: KeyFiles, name: str, tags: dict[str, str]) -> dict[str, Any] | None:
    """The last sealed promotion of ``name`` (None: never promoted); :class:`SealError` when it is forged."""
    text = tags.get(CHAMPION_TAG)
    if text is None:
        return None
    payload = opened(verify_key(files), text, f"the champion of {name}")
    if payload.get("kind") != "champion" or payload.get("dataset") != name:
        raise SealError(f"the champion seal of {name} is a seal of something else ({payload.get('kind')})")
    return payload


def served(files: KeyFiles, name: str, aliases: dict[str, str], tags: dict[str, str], seen_seq: int = 0) -> Served:
    """The version a reader may serve: the last sealed promotion, whatever the champion alias says.

    :class:`SealError` when there is none to serve: no sealed promotion while an alias names a version, a seal
    not signed by this installation, or a promotion older than one this reader has already seen (put back by
    hand). ``problem`` names a champion alias that disagrees with the seal (moved outside the deploy flow).
    """
    alias = aliases.get("champion")
    payload = sealed_champion(files, name, tags)
    if payload is None:
        if alias is None:
            raise SealError(f"no version of {name!r} was promoted yet: deploy one")
        raise SealError(
            f"the champion alias of {name} points at v{alias}, but no promotion of it was sealed by the deploy "
            "flow (moved by hand?): it is not served; deploy a version with `closedloop deploy`"
        )
    seq = int(payload["seq"])
    if seq < seen_seq:
        raise SealError(
            f"the champion seal of {name} is promotion {seq}, older than promotion {seen_seq} already served: "
            "an earlier seal was put back by hand"
        )
    version = str(payload["version"])
    problem = None
    if alias != version:
        problem = (
            f"the champion alias of {name} points at {'v' + alias if alias else 'nothing'}, but the last sealed "
            f"promotion is v{version}: the alias was moved outside the deploy flow; v{version} is served"
        )
    return Served(version=version, run_id=str(payload["run_id"]), seq=seq, payload=payload, problem=problem)


def champion_of(settings: Any, name: str) -> str | None:
    """The sealed champion's version (None: none was ever promoted), the champion of every flow.

    :class:`SealError` when the registry holds a forged seal.
    """
    _, tags = registered(settings.mlflow_tracking_uri, name)
    payload = sealed_champion(key_files(settings), name, tags)
    return None if payload is None else str(payload["version"])


def check_run(tracking_uri: str, name: str, version: str, run_id: str) -> None:
    """The version still holds the run that was sealed (a model deleted and registered again reuses numbers)."""
    from closedloop.registry import client

    actual = str(client(tracking_uri).get_model_version(name, version).run_id)
    if actual != run_id:
        raise SealError(f"{name} v{version} now holds run {actual}, not the sealed run {run_id}: not served")


def seal_evidence(tracking_uri: str, name: str, version: str, evidence_json: str, files: KeyFiles) -> None:
    """Seal a freshly registered version's evidence record (the train flow, right after registration)."""
    from closedloop.registry import client

    c = client(tracking_uri)
    run_id = c.get_model_version(name, version).run_id
    payload = {"kind": "evidence", "dataset": name, "version": version, "run_id": run_id}
    sealed = sign(signing_key(files), {**payload, "sha256": digest(evidence_json), "at": now()})
    c.set_model_version_tag(name, version, EVIDENCE_TAG, sealed)
