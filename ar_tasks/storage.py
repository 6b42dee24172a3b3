"""Where raw frames are read and products written: a local folder or `s3://bucket/prefix`.

The reduction and the external tools work on local files, so an S3 night is mirrored into a
scratch folder: the raw files a step needs are downloaded (never written back: raw data is
read-only), existing products are downloaded so their provenance keys can be checked, and the
products a step made or changed are uploaded. An S3 object appears only when complete (one PUT,
or a completed multipart upload), and every upload records the SHA-256 of its bytes as object
metadata, so a product is reused only when its bytes are the ones its key was made for.

boto3 takes the endpoint, credentials and region from the standard AWS environment variables and
profiles (AWS_ENDPOINT_URL for MinIO, Ceph or a local server), or from `S3Settings` (the DAG builds
them from an Airflow connection). Transient errors are retried by botocore (standard mode).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fitsio import sha256_file

SHA_METADATA = "sha256"  # x-amz-meta-sha256
KEY_METADATA = "arkey"  # a FITS product's provenance key (its ARKEY card)
MULTIPART_THRESHOLD = 16 * 1024 * 1024
RETRY_ATTEMPTS = 8


class StorageError(RuntimeError):
    """A storage location cannot be used; the message names the URL and the reason."""


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class S3Settings:
    """Explicit S3 settings; empty fields fall back to boto3's own (environment, profiles)."""

    endpoint_url: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    region: str = ""

    def client(self) -> Any:
        """This process's boto3 client for these settings (and the AWS_* environment they fall
        back to): making one costs ~0.1 s of CPU (its service model), and a stage or a rerun's
        check of many nights would make several per night. Clients are thread-safe (their
        sessions are not: each client has its own)."""
        key = (self, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
        with _CLIENTS_LOCK:
            if key not in _CLIENTS:
                _CLIENTS[key] = self._new_client()
            return _CLIENTS[key]

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": RETRY_ATTEMPTS, "mode": "standard"})
        kwargs: dict[str, Any] = {"config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.access_key:
            kwargs["aws_access_key_id"] = self.access_key
            kwargs["aws_secret_access_key"] = self.secret_key
        if self.region:
            kwargs["region_name"] = self.region
        return boto3.session.Session().client("s3", **kwargs)


def is_s3(url: str | os.PathLike[str]) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    """('bucket', 'prefix/without/trailing/slash') of an s3:// URL."""
    if not is_s3(url):
        raise ValueError(f"{url} is not an s3:// URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{url}: no bucket")
    return bucket, prefix.strip("/")


def join(url: str, *parts: str) -> str:
    """A child location of a local path or an s3:// URL."""
    if is_s3(url):
        return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return str(Path(url, *parts))


@dataclass(frozen=True)
class RemoteFile:
    """One object under an S3 prefix: its path relative to the prefix, size and time."""

    relpath: str
    size: int
    mtime_ns: int


class S3Store:
    """The S3 operations the pipeline needs, with errors that name the URL."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.client = (settings or S3Settings()).client()

    def _fail(self, url: str, exc: Exception) -> StorageError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            return StorageError(f"{url}: {code or 'error'} ({exc})")
        return StorageError(f"{url}: {type(exc).__name__}: {exc}")

    def list_prefixes(self, url: str) -> list[str]:
        """Names of the 'folders' directly under a URL (paginated: any number of them)."""
        bucket, prefix = split_s3(url)
        start = f"{prefix}/" if prefix else ""
        names = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=start, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(start) :].rstrip("/"))
        except Exception as exc:
            raise self._fail(url, exc) from exc
        return sorted(names)

    def list_files(self, url: str) -> Iterator[RemoteFile]:
        """Every object under a URL, recursively (paginated: any number of them)."""
        bucket, prefix = split_s3(url)
        start = f"{prefix}/" if prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=start
            )
            for page in pages:
                for item in page.get("Contents", []):
                    stamp = int(item["LastModified"].timestamp() * 1e9)
                    yield RemoteFile(item["Key"][len(start) :], int(item["Size"]), stamp)
        except Exception as exc:
            raise self._fail(url, exc) from exc

    def metadata(self, url: str) -> dict[str, str]:
        """The object's user metadata (sha256, arkey)."""
        bucket, key = split_s3(url)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise self._fail(url, exc) from exc
        return dict(head.get("Metadata", {}))

    def download(self, url: str, path: Path) -> Path:
        """Download an object to `path` atomically (temporary name, then rename)."""
        bucket, key = split_s3(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.download.part")
        try:
            self.client.download_file(bucket, key, str(partial))
            os.replace(partial, path)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise self._fail(url, exc) from exc
        return path

    def download_verified(self, url: str, path: Path) -> tuple[Path, str]:
        """Download an object and check its bytes against the SHA-256 recorded at upload.

        Returns (path, sha256). An object whose bytes differ from its record (a damaged or
        foreign object) is not kept: StorageError, and nothing is written under `path`.
        """
        bucket, key = split_s3(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.download.part")
        digest = hashlib.sha256()
        try:
            answer = self.client.get_object(Bucket=bucket, Key=key)
            with open(partial, "wb") as stream:
                for block in answer["Body"].iter_chunks(1 << 20):
                    digest.update(block)
                    stream.write(block)
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise self._fail(url, exc) from exc
        recorded = answer.get("Metadata", {}).get(SHA_METADATA)
        if recorded and recorded != digest.hexdigest():
            partial.unlink(missing_ok=True)
            raise StorageError(f"{url}: its bytes do not match the SHA-256 recorded at upload")
        os.replace(partial, path)
        return path, digest.hexdigest()

    def upload(
        self,
        path: Path,
        url: str,
        sha256: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Upload a file: one PUT, or a multipart upload that S3 shows only once completed."""
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_s3(url)
        meta = {SHA_METADATA: sha256 or sha256_file(path), **(metadata or {})}
        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD)
        try:
            self.client.upload_file(
                str(path), bucket, key, ExtraArgs={"Metadata": meta}, Config=config
            )
        except Exception as exc:
            raise self._fail(url, exc) from exc

    def read_bytes(self, url: str) -> bytes:
        """A small object's bytes (a JSON entry, a text list)."""
        bucket, key = split_s3(url)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._fail(url, exc) from exc

    def write_bytes(self, url: str, payload: bytes) -> None:
        """A small object in one PUT (it appears whole or not at all), with its SHA-256."""
        bucket, key = split_s3(url)
        meta = {SHA_METADATA: hashlib.sha256(payload).hexdigest()}
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=payload, Metadata=meta)
        except Exception as exc:
            raise self._fail(url, exc) from exc

    def delete(self, url: str) -> None:
        """Delete one product object (never called on the raw root)."""
        bucket, key = split_s3(url)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise self._fail(url, exc) from exc

    def check_bucket(self, url: str) -> None:
        """Fail early and clearly when the bucket does not exist or cannot be read."""
        bucket, _ = split_s3(url)
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as exc:
            raise self._fail(url, exc) from exc


def local_files(folder: Path, skip: Iterable[str] = ()) -> dict[str, Path]:
    """Every file under a folder by relative path (hidden temporaries and `skip` left out)."""
    skipped = set(skip)
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not path.name.startswith(".") and rel.split("/")[0] not in skipped:
            found[rel] = path
    return found
