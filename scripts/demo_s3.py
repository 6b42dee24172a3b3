"""`make demo-s3`: the demo with the raw archive and the products in S3.

A local S3 server (moto's, on 127.0.0.1) stands in for AWS, MinIO or Ceph: two synthetic nights
are uploaded to s3://t120-demo/raw/, the DAG runs with `airflow dags test` and both roots in
the bucket (endpoint and keys from the `aws_default` connection, as on a real deployment), and
the products are listed from the bucket. The server stops with the script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUCKET = "t120-demo"
NIGHTS = ("2023-05-10", "2023-05-11")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=REPO / "demo_data" / "s3")
    args = parser.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    from ar_tasks.storage import local_files
    from ar_tasks.synthetic import main as synth

    work = args.dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    nights = [arg for night in NIGHTS for arg in ("--night", night)]
    synth(["--root", str(work / "raw"), *nights, "--refcat", str(work / "refcat.fits")])

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        keys = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        client.create_bucket(Bucket=BUCKET)
        for rel, path in local_files(work / "raw", skip=["_truth"]).items():
            client.upload_file(str(path), BUCKET, f"raw/{rel}")
        print(f"S3 server {endpoint}: raw frames uploaded to s3://{BUCKET}/raw/")
        connection = {
            "conn_type": "aws",
            "login": "demo",
            "password": "demo",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        conf = {
            "first_night": NIGHTS[0],
            "last_night": NIGHTS[-1],
            "raw_root": f"s3://{BUCKET}/raw",
            "products_root": f"s3://{BUCKET}/products",
            "astrometry": "astromatic",
            "refcat": str(work / "refcat.fits"),
        }
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(work / "airflow"),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AR_ASTROMETRY_JOBS": "2",
        }
        subprocess.run([str(REPO / "scripts" / "airflow-init.sh")], env=env, check=True)
        log = work / "dags_test.log"
        command = (
            f"source {REPO}/scripts/airflow-env.sh && "
            f"airflow dags test t120_reduce {NIGHTS[-1]} -c '{json.dumps(conf)}'"
        )
        print(f"airflow dags test t120_reduce on s3://{BUCKET} (log: {log}) ...")
        started = time.monotonic()
        with open(log, "w") as stream:
            run = subprocess.run(["bash", "-c", command], env=env, stdout=stream, stderr=stream)
        print(f"airflow dags test took {time.monotonic() - started:.0f} s, exit {run.returncode}")
        if run.returncode:
            print(log.read_text()[-4000:])
            return 1
        return _summary(client)
    finally:
        server.stop()


def _summary(client) -> int:
    """Per night: the products in the bucket and the manifest's verdict."""
    status = 0
    for night in NIGHTS:
        prefix = f"products/{night}/"
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        folders: dict[str, int] = {}
        for key in keys:
            rest = key.removeprefix(prefix)
            if "/" in rest:
                folders[rest.split("/")[0]] = folders.get(rest.split("/")[0], 0) + 1
        body = client.get_object(Bucket=BUCKET, Key=f"{prefix}manifest.json")["Body"].read()
        manifest = json.loads(body)
        counts = f"{len(manifest['inputs'])} inputs, {len(manifest['products'])} FITS products"
        print(f"s3://{BUCKET}/{prefix}: manifest status {manifest['status']}, {counts}")
        print("   " + ", ".join(f"{name}/ {count}" for name, count in sorted(folders.items())))
        status |= manifest["status"] != "success"
    return status


if __name__ == "__main__":
    sys.exit(main())
