"""The `astro_reduce` command with the raw night and the products in S3 (moto's server on
127.0.0.1, reached through the standard AWS environment variables), against a local run."""

from __future__ import annotations

import time

from conftest import NIGHT, run_cli

from ar_tasks.storage import local_files


def _objects(client, bucket: str, prefix: str) -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def test_cli_on_s3_gives_the_local_products(s3, small_archive, tmp_path):
    client, bucket = s3.client(), s3.new_bucket()
    raw_night = small_archive / NIGHT
    for rel, path in local_files(raw_night).items():
        client.put_object(Bucket=bucket, Key=f"raw/{NIGHT}/{rel}", Body=path.read_bytes())
    raw_before = {k: o["ETag"] for k, o in _objects(client, bucket, "raw/").items()}

    local = tmp_path / "products" / NIGHT
    started = time.monotonic()
    for args in (["--setup"], ["-i", "-t", "-r"]):
        result = run_cli(tmp_path, "--raw", str(raw_night), "--products", str(local), *args)
        assert result.returncode == 0, result.stdout + result.stderr
    local_seconds = time.monotonic() - started
    assert not (local / "ar_objects").exists()  # the archive apart: no working copies

    roots = ["--raw", f"s3://{bucket}/raw/{NIGHT}", "--products", f"s3://{bucket}/products/{NIGHT}"]
    started = time.monotonic()
    for args in (["--setup"], ["-i", "-t", "-r"]):
        result = run_cli(tmp_path, *roots, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    s3_seconds = time.monotonic() - started
    print(f"small night: local {local_seconds:.1f} s, S3 {s3_seconds:.1f} s")

    objects = _objects(client, bucket, "")
    assert f"products/{NIGHT}/{NIGHT}.json" in objects  # astro_reduce's <dir>.json
    assert {k: o["ETag"] for k, o in objects.items() if k.startswith("raw/")} == raw_before
    products = {
        k.removeprefix(f"products/{NIGHT}/"): k
        for k in objects
        if k.startswith(f"products/{NIGHT}/") and k.endswith((".fits", ".png"))
    }
    expected = {rel: p for rel, p in local_files(local).items() if rel.endswith((".fits", ".png"))}
    assert set(products) == set(expected)
    for rel, path in expected.items():
        if rel.endswith(".fits"):
            body = client.get_object(Bucket=bucket, Key=products[rel])["Body"].read()
            assert body == path.read_bytes(), rel

    again = run_cli(tmp_path, *roots, "-i", "-t", "-r")
    assert again.returncode == 0, again.stdout + again.stderr
    after = _objects(client, bucket, f"products/{NIGHT}/")
    unchanged = [k for k in products.values() if after[k]["ETag"] == objects[k]["ETag"]]
    assert len(unchanged) == len(products)  # a rerun reuses every product


def test_raw_in_s3_needs_a_products_location(s3, tmp_path):
    result = run_cli(tmp_path, "--raw", f"s3://bucket/raw/{NIGHT}", "--setup")
    assert result.returncode == 2
    assert "raw data is never written to" in result.stderr


def test_a_missing_bucket_is_named(s3, tmp_path):
    result = run_cli(
        tmp_path, "--raw", "s3://no-such-bucket/raw/x", "--products", "s3://no-such-bucket/p/x",
        "--setup",
    )  # fmt: skip
    assert result.returncode == 1
    assert "s3://no-such-bucket/" in result.stderr and "NoSuchBucket" in result.stderr
