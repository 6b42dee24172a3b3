"""Storage against moto's S3 server on 127.0.0.1: listing past 1000 keys, atomic uploads with
their SHA-256, clear errors naming the URL, and the night workspace mirroring a step."""

from __future__ import annotations

import hashlib
import os

import pytest

from ar_tasks.storage import S3Store, StorageError, join, split_s3
from ar_tasks.workspace import night_workspace


def test_urls():
    assert split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert split_s3("s3://bucket") == ("bucket", "")
    assert join("s3://bucket/raw", "2023-05-10", "DARK/d.fits") == (
        "s3://bucket/raw/2023-05-10/DARK/d.fits"
    )
    with pytest.raises(ValueError, match="no bucket"):
        split_s3("s3:///x")


def test_listing_nights_pages_past_1000_keys(s3):
    bucket = s3.new_bucket()
    client = s3.client()
    nights = [f"2015-{1 + d // 28:02d}-{1 + d % 28:02d}" for d in range(336)]
    for index, night in enumerate(nights * 4):  # 1344 objects, one prefix per night
        client.put_object(Bucket=bucket, Key=f"raw/{night}/ORIGINAL/f{index}.fits", Body=b"x")
    store = S3Store()
    assert store.list_prefixes(f"s3://{bucket}/raw") == sorted(nights)
    assert len(list(store.list_files(f"s3://{bucket}/raw"))) == 1344


def test_upload_records_sha256_and_download_is_exact(s3, tmp_path):
    bucket = s3.new_bucket()
    payload = os.urandom(20 * 1024 * 1024 + 17)  # above the multipart threshold
    local = tmp_path / "big.fits"
    local.write_bytes(payload)
    store = S3Store()
    url = f"s3://{bucket}/products/big.fits"
    store.upload(local, url)
    assert store.metadata(url)["sha256"] == hashlib.sha256(payload).hexdigest()
    back = store.download(url, tmp_path / "back" / "big.fits")
    assert back.read_bytes() == payload
    assert not list((tmp_path / "back").glob(".*"))


def test_permanent_errors_name_the_url(s3, tmp_path):
    store = S3Store()
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/raw: NoSuchBucket"):
        list(store.list_files("s3://no-such-bucket/raw"))
    with pytest.raises(StorageError, match="s3://no-such-bucket"):
        store.check_bucket("s3://no-such-bucket")
    bucket = s3.new_bucket()
    with pytest.raises(StorageError, match=rf"s3://{bucket}/absent.fits: 404"):
        store.download(f"s3://{bucket}/absent.fits", tmp_path / "x.fits")


def test_workspace_mirrors_a_step_and_never_writes_raw(s3, tmp_path):
    bucket = s3.new_bucket()
    client = s3.client()
    raw_root, products_root = f"s3://{bucket}/raw", f"s3://{bucket}/products"
    client.put_object(Bucket=bucket, Key="raw/2023-05-10/DARK/d1.fits", Body=b"dark")
    client.put_object(Bucket=bucket, Key="raw/2023-05-10/ORIGINAL/o1.fits", Body=b"object")
    client.put_object(Bucket=bucket, Key="products/2023-05-10/stacked/old.fits", Body=b"stale")
    client.put_object(Bucket=bucket, Key="products/2023-05-10/stacked/kept.fits", Body=b"same")
    raw_before = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}

    with night_workspace(
        raw_root, products_root, "2023-05-10", raw_folders=["DARK"], products=["stacked/*"]
    ) as layout:
        assert (layout.raw_dir / "DARK" / "d1.fits").read_bytes() == b"dark"
        assert not (layout.raw_dir / "ORIGINAL").exists()  # only what the step needs
        (layout.raw_dir / "DARK" / "d1.fits").write_bytes(b"tampered")  # never goes back
        (layout.out_dir / "stacked" / "old.fits").unlink()  # a stale product the step removed
        (layout.out_dir / "ar_masters").mkdir()
        (layout.out_dir / "ar_masters" / "mdark_1000.fits").write_bytes(b"new master")
        (layout.out_dir / "manifest.json").write_text("{}")
        assert layout.out_dir.name == layout.raw_dir.name == "2023-05-10"
        scratch = layout.out_dir.parent.parent
    assert not scratch.exists()

    objects = {o["Key"]: o for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    for key, etag in raw_before.items():
        if key.startswith("raw/"):
            assert objects[key]["ETag"] == etag  # raw untouched
    assert "products/2023-05-10/stacked/old.fits" not in objects
    assert (
        objects["products/2023-05-10/stacked/kept.fits"]["ETag"]
        == (raw_before["products/2023-05-10/stacked/kept.fits"])
    )
    master = client.get_object(Bucket=bucket, Key="products/2023-05-10/ar_masters/mdark_1000.fits")
    assert master["Body"].read() == b"new master"
    assert master["Metadata"]["sha256"] == hashlib.sha256(b"new master").hexdigest()
    # the manifest is uploaded last
    manifest = objects["products/2023-05-10/manifest.json"]["LastModified"]
    assert all(o["LastModified"] <= manifest for o in objects.values())


UPLOADER = """
import sys
from pathlib import Path
from ar_tasks.storage import S3Store
S3Store().upload(Path(sys.argv[1]), sys.argv[2])
"""


def test_an_upload_killed_midway_leaves_no_visible_object(s3, tmp_path):
    """A worker killed during a multipart upload: the object never appears (S3 shows it only
    once the upload is completed), and an earlier version stays whole."""
    import signal
    import subprocess
    import sys
    import time

    bucket = s3.new_bucket()
    client = s3.client()
    url = f"s3://{bucket}/products/2023-05-10/stacked/big.fits"
    key = url.removeprefix(f"s3://{bucket}/")
    client.put_object(Bucket=bucket, Key=key, Body=b"the earlier, complete product")
    big = tmp_path / "big.fits"
    big.write_bytes(os.urandom(160 * 1024 * 1024))
    process = subprocess.Popen([sys.executable, "-c", UPLOADER, str(big), url])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        parts = (
            client.list_parts(Bucket=bucket, Key=key, UploadId=uploads[0]["UploadId"]).get(
                "Parts", []
            )
            if uploads
            else []
        )
        if parts:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the upload finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"the earlier, complete product"


class FlakyProxy:
    """Forwards to the S3 server but answers the first `failures` requests 503 SlowDown, as
    S3 does under load: a transient error the client must retry."""

    def __init__(self, target: str, failures: int) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.failures, self.seen = failures, 0
        host = urlsplit(target).netloc
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    error = b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(host, timeout=30)
                upstream.request(self.command, self.path, body, dict(self.headers))
                answer = upstream.getresponse()
                payload = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_transient_errors_are_retried(s3, tmp_path, monkeypatch):
    bucket = s3.new_bucket()
    proxy = FlakyProxy(s3.endpoint, failures=2)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        (tmp_path / "f.fits").write_bytes(b"product")
        store = S3Store()
        store.upload(tmp_path / "f.fits", f"s3://{bucket}/p/f.fits")
        assert proxy.seen == 3  # two 503s, then the PUT that landed
        assert store.download(f"s3://{bucket}/p/f.fits", tmp_path / "g.fits").read_bytes() == (
            b"product"
        )
    finally:
        proxy.close()


def test_a_product_whose_bytes_do_not_match_its_record_is_not_reused(s3):
    bucket = s3.new_bucket()
    client = s3.client()
    good = hashlib.sha256(b"the product").hexdigest()
    key = "products/2023-05-10/stacked/M-67_V_60000.fits"
    client.put_object(Bucket=bucket, Key=key, Body=b"bit rot", Metadata={"sha256": good})
    roots = (f"s3://{bucket}/raw", f"s3://{bucket}/products")
    with night_workspace(*roots, "2023-05-10", raw_files=[]) as layout:
        assert not (layout.out_dir / "stacked" / "M-67_V_60000.fits").exists()
        assert not list(layout.out_dir.rglob("*.part"))
    # the step did not remake it: the object is left as it was, for a person to look at
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"bit rot"
