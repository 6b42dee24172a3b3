"""The astrometry.net web route against a local stand-in of nova's API that really solves:
retries are bounded, a hung service ends within the time budget, a refused key stops at once."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nova_standin import NovaStandin

from ar_tasks.anet_online import OnlineError, OnlineSettings, solve


@pytest.fixture(scope="module")
def sources(astro_archive):
    """M 67's stars as a source list (FITS 1-based, brightest first), as SExtractor gives it."""
    stars = astro_archive.truth.fields["M 67"]["stars"]
    x = np.array([s["x"] for s in stars]) + 1
    y = np.array([s["y"] for s in stars]) + 1
    flux = np.array([s["flux"]["V"] for s in stars])
    inside = (x > 1) & (x < 1024) & (y > 1) & (y < 1024)
    order = np.argsort(-flux[inside])
    return x[inside][order], y[inside][order]


@pytest.fixture
def standin(astro_archive, tmp_path):
    config = tmp_path / "standin.cfg"
    config.write_text(f"inparallel\ncpulimit 30\nadd_path {astro_archive.index}\nautoindex\n")
    with NovaStandin(config, api_keys={"good-key"}) as server:
        yield server


def _settings(standin, **kw) -> OnlineSettings:
    return OnlineSettings(**{"api_key": "good-key", "server": standin.url, "backoff": 0.1, **kw})


def test_transient_errors_are_retried(standin, sources):
    standin.fail_next(2, status=503)
    header, reason = solve(_settings(standin), (1024, 1024), 0.77, None, sources)
    assert header is not None and reason == "", reason
    assert header["CTYPE1"].startswith("RA---TAN")
    assert standin.requests[:2] == [("POST", "/api/login")] * 2  # two 503s, then the answer


def test_an_error_page_instead_of_the_wcs_is_not_taken_for_a_solution(standin, sources):
    """astroquery turns any body of the WCS download into a Header: it must be checked."""
    standin.fail_next(1, status=502, path="/wcs_file")
    header, _ = solve(_settings(standin), (1024, 1024), 0.77, None, sources)
    assert header is not None and header["CTYPE2"].startswith("DEC--TAN")
    assert len([p for _, p in standin.requests if p.startswith("/wcs_file")]) == 2
    assert [p for _, p in standin.requests if p == "/api/url_upload"] == ["/api/url_upload"]


def test_a_hung_service_ends_within_the_budget(standin, sources):
    standin.hang_jobs = True
    started = time.monotonic()
    with pytest.raises(OnlineError, match=r"no answer after \d attempt\(s\) within 6 s"):
        solve(_settings(standin, timeout=6), (1024, 1024), 0.77, None, sources)
    assert time.monotonic() - started < 20
    uploads = [p for _, p in standin.requests if p == "/api/url_upload"]
    assert len(uploads) == 1  # the timed-out submission is monitored, never sent twice


def test_a_refused_key_stops_at_once(standin, sources):
    with pytest.raises(OnlineError, match="Unable to log in"):
        solve(_settings(standin, api_key="wrong"), (1024, 1024), 0.77, None, sources)
    assert standin.requests == [("POST", "/api/login")]


def test_no_key_names_where_to_put_one(monkeypatch, sources):
    monkeypatch.delenv("AR_ASTROMETRY_NET_API_KEY", raising=False)
    with pytest.raises(OnlineError, match="AR_ASTROMETRY_NET_API_KEY"):
        solve(OnlineSettings(server="http://127.0.0.1:9"), (1024, 1024), 0.77, None, sources)
