"""Object storage addressed by URI: ``file://`` on the local disk, ``s3://`` through boto3.

One small surface (read, write, list, exists, move, delete) so the lake, the quarantine, the inference log and
model bundles work the same on a laptop and on any S3-compatible store. Writes are atomic on both:
a local write goes to a temporary file renamed into place, and an S3 PUT is atomic by nature. A move is a
rename on disk and a server-side copy then a delete on S3: the object is whole at either place, and a move
interrupted on S3 leaves it at both (moving it again finishes the move).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


BLOCK = 1 << 22  # bytes per read when a file is streamed


class StorageError(OSError):
    """An object could not be read or written; the message names the URI."""


@dataclass(frozen=True)
class Location:
    """A parsed storage URI."""

    scheme: str
    bucket: str
    key: str

    @property
    def path(self) -> Path:
        return Path(unquote(self.key))

    def __str__(self) -> str:
        if self.scheme == "file":
            return self.path.as_uri()
        return f"s3://{self.bucket}/{self.key}"


def parse(uri: str | os.PathLike[str]) -> Location:
    """Parse ``file:///abs/path``, ``s3://bucket/key`` or a plain local path."""
    text = os.fspath(uri)
    if "://" not in text:
        return Location("file", "", str(Path(text).expanduser().resolve()))
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{text}: file URIs must be absolute (file:///path), got host {parsed.netloc!r}")
        return Location("file", "", unquote(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{text}: an s3 URI needs a bucket (s3://bucket/key)")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    raise StorageError(f"{text}: unsupported storage scheme {parsed.scheme!r} (use file:// or s3://)")


def join(base: str, *parts: str) -> str:
    """Join URI segments with single slashes."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


@lru_cache(maxsize=8)
def _client(endpoint_url: str | None, region: str) -> S3Client:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def s3_client(endpoint_url: str | None = None) -> S3Client:
    """The boto3 client for an endpoint (``AWS_ENDPOINT_URL_S3`` or AWS itself when None)."""
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or None
    return _client(endpoint, os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def _s3_error(exc: Exception, uri: str, action: str) -> StorageError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
    return StorageError(f"{uri}: cannot {action} ({code}: {exc})")


def local_path(uri: str) -> Path | None:
    """The file of a ``file://`` URI (for readers that read only the parts they need), None for other stores."""
    loc = parse(uri)
    return loc.path if loc.scheme == "file" else None


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    """Whole object as bytes."""
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            return loc.path.read_bytes()
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read ({exc.strerror})") from exc
    try:
        body = s3_client(endpoint_url).get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        return bytes(body.read())
    except Exception as exc:
        raise _s3_error(exc, uri, "read") from exc


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None) -> str:
    """Write an object atomically; returns the canonical URI."""
    loc = parse(uri)
    if loc.scheme == "file":
        return _write_local(uri, lambda handle: handle.write(data))
    try:
        s3_client(endpoint_url).put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    except Exception as exc:
        raise _s3_error(exc, uri, "write") from exc
    return str(loc)


def _write_local(uri: str, write: Callable[[BinaryIO], object]) -> str:
    """A local file written whole or not at all: into a temporary file beside it, synced, renamed into place."""
    loc = parse(uri)
    target = loc.path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(target)
    except OSError as exc:
        raise StorageError(f"{uri}: cannot write ({exc.strerror})") from exc
    return str(loc)


def upload_file(path: Path, uri: str, endpoint_url: str | None = None) -> str:
    """Copy a local file to a URI, streamed (multipart on S3 for large files); atomic as ``write_bytes``."""
    loc = parse(uri)
    if loc.scheme == "file":

        def copy(handle: BinaryIO) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, handle, BLOCK)

        return _write_local(uri, copy)
    try:
        s3_client(endpoint_url).upload_file(str(path), loc.bucket, loc.key)
    except Exception as exc:
        raise _s3_error(exc, uri, "upload") from exc
    return str(loc)


def download_file(uri: str, path: Path, endpoint_url: str | None = None) -> Path:
    """Copy an object to a local file, streamed: memory stays a block whatever the object's size."""
    loc = parse(uri)
    try:
        if loc.scheme == "file":
            with loc.path.open("rb") as source, path.open("wb") as target:
                shutil.copyfileobj(source, target, BLOCK)
            return path
    except OSError as exc:
        raise StorageError(f"{uri}: cannot read ({exc.strerror})") from exc
    try:
        s3_client(endpoint_url).download_file(loc.bucket, loc.key, str(path))
    except Exception as exc:
        raise _s3_error(exc, uri, "read") from exc
    return path


def exists(uri: str, endpoint_url: str | None = None) -> bool:
    loc = parse(uri)
    if loc.scheme == "file":
        return loc.path.exists()
    try:
        s3_client(endpoint_url).head_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error(exc, uri, "look up") from exc
    return True


def delete(uri: str, endpoint_url: str | None = None) -> None:
    """Remove one object or file; a missing one is not an error."""
    loc = parse(uri)
    if loc.scheme == "file":
        loc.path.unlink(missing_ok=True)
        return
    try:
        s3_client(endpoint_url).delete_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as exc:
        raise _s3_error(exc, uri, "delete") from exc


def move(source: str, target: str, endpoint_url: str | None = None) -> str:
    """Move one object to another key of the same store (see the module docstring); returns the target URI."""
    src, dst = parse(source), parse(target)
    if src.scheme != dst.scheme:
        raise StorageError(f"{source}: cannot move to another kind of store ({target})")
    if src.scheme == "file":
        try:
            dst.path.parent.mkdir(parents=True, exist_ok=True)
            src.path.replace(dst.path)
        except OSError as exc:
            raise StorageError(f"{source}: cannot move to {target} ({exc.strerror})") from exc
        return str(dst)
    client = s3_client(endpoint_url)
    try:
        client.copy_object(Bucket=dst.bucket, Key=dst.key, CopySource={"Bucket": src.bucket, "Key": src.key})
        client.delete_object(Bucket=src.bucket, Key=src.key)
    except Exception as exc:
        raise _s3_error(exc, source, f"move to {target}") from exc
    return str(dst)


def delete_prefix(prefix_uri: str, endpoint_url: str | None = None) -> int:
    """Remove every object below a prefix (on disk the folder itself, temporary files included); returns how many."""
    loc = parse(prefix_uri)
    if loc.scheme == "file":
        if not loc.path.exists():
            return 0
        count = sum(1 for p in loc.path.rglob("*") if p.is_file())
        shutil.rmtree(loc.path)
        return count
    uris = list_objects(prefix_uri, endpoint_url)
    for uri in uris:
        delete(uri, endpoint_url)
    return len(uris)


def list_objects(prefix_uri: str, endpoint_url: str | None = None) -> list[str]:
    """Every object below a prefix, sorted, as URIs (hidden and temporary files skipped)."""
    loc = parse(prefix_uri)
    if loc.scheme == "file":
        root = loc.path
        if root.is_file():
            return [str(loc)]
        if not root.exists():
            return []
        return sorted(
            p.as_uri()
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    prefix = loc.key.rstrip("/") + "/" if loc.key else ""
    out: list[str] = []
    try:
        paginator = s3_client(endpoint_url).get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=prefix):
            out.extend(f"s3://{loc.bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except Exception as exc:
        raise _s3_error(exc, prefix_uri, "list") from exc
    return sorted(u for u in out if not any(part.startswith(".") for part in u.split("/")[3:]))


def ensure_bucket(bucket: str, endpoint_url: str | None = None) -> None:
    """Create a bucket if it does not exist yet (private by default)."""
    client = s3_client(endpoint_url)
    try:
        client.head_bucket(Bucket=bucket)
        return
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise _s3_error(exc, f"s3://{bucket}", "reach bucket") from exc
    kwargs: dict[str, Any] = {"Bucket": bucket}
    region = client.meta.region_name
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except Exception as exc:
        raise _s3_error(exc, f"s3://{bucket}", "create bucket") from exc
