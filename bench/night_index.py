"""`python -m bench.night_index`: listing a 1500-night archive from its night index.

Ten years of T120 nights are about 1500 observed nights. Their entries (made by
night_index.summarise from one manifest, each with its own night, status and figures) are
written into a fresh local products root; then `read_index` lists them all, `--repeats`
times, as is the night browser's page of every night, and the archive trends are drawn
from them once. The figures go to
bench/results/night_index.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ar_tasks import night_index, trends
from bench.harness import machine_facts, save_results

TEMPLATE = {
    "night": "",
    "status": "success",
    "night_key": "0" * 64,
    "inputs": [{"kind": "object"}] * 25 + [{"kind": "flat"}] * 21 + [{"kind": "dark"}] * 15,
    "quarantined": [],
    "problems": [],
    "calibrations": {"borrowed": {}},
    "masters": {
        "darks": {"60000": {"file": "ar_masters/mdark_60000.fits", "level_adu": 304.0}},
        "flats": {"V": {"file": "ar_masters/mtrans_V.fits", "noise": 0.0028}},
    },
    "groups": {},
    "astrometry": {},
}


def archive(root: Path, nights: int) -> int:
    """Write `nights` entries, one observed night in every 2.4 dates; returns their bytes."""
    rng = random.Random(1)
    day = dt.date(2016, 1, 1)
    for _ in range(nights):
        day += dt.timedelta(days=rng.choice((1, 2, 3, 4)))
        qc = [
            {"sky": rng.uniform(150, 400), "fwhm_arcsec": rng.uniform(2, 4), "stacked": True}
            for _ in range(5)
        ]
        groups = {"M-67_V_60000": {"status": "done", "stack": {"combined": 5, "qc": qc}}}
        status = "failed" if rng.random() < 0.05 else "success"
        manifest = {**TEMPLATE, "night": day.isoformat(), "status": status, "groups": groups}
        night_index.write_entry(str(root), manifest)
    return sum(p.stat().st_size for p in (root / night_index.INDEX_FOLDER).iterdir())


def listing_page_times(root: Path, repeats: int) -> list[float]:
    """Seconds of the night browser's listing of every night (its app, without the login)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    from fastapi.testclient import TestClient
    from t120_browser import app as browser
    from t120_browser.products import Products

    browser.app.dependency_overrides[browser.require_reader] = lambda: "bench"
    browser.app.dependency_overrides[browser.products] = lambda: Products(str(root))
    client, times = TestClient(browser.app), []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get("/")
        times.append(time.perf_counter() - started)
        assert response.status_code == 200
    browser.app.dependency_overrides.clear()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ar_night_index_") as folder:
        root = Path(folder)
        size = archive(root, args.nights)
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            entries = night_index.read_index(str(root))
            times.append(time.perf_counter() - started)
            assert len(entries) == args.nights
        pages = listing_page_times(root, args.repeats)
        started = time.perf_counter()
        png = trends.draw(trends.series(entries), f"{args.nights} nights")
        drawn = time.perf_counter() - started  # matplotlib's import included
    result = {
        "machine": machine_facts(),
        "nights": args.nights,
        "bytes": size,
        "read_index_s": statistics.median(times),
        "read_index_max_s": max(times),
        "nights_page_s": statistics.median(pages),
        "nights_page_max_s": max(pages),
        "trends_s": drawn,
        "trends_png_bytes": len(png),
    }
    save_results("night_index", result)
    print(
        f"{args.nights} nights, {size / 1024:.0f} kB of entries: read_index "
        f"{result['read_index_s'] * 1000:.0f} ms (median of {args.repeats}, max "
        f"{result['read_index_max_s'] * 1000:.0f} ms); the night browser's page of every night "
        f"{result['nights_page_s'] * 1000:.0f} ms "
        f"(max {result['nights_page_max_s'] * 1000:.0f} ms); trends drawn in {drawn:.2f} s "
        f"(matplotlib's import included), {len(png) / 1024:.0f} kB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
