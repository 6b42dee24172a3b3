"""astrometry.net through its web API (nova.astrometry.net or another server), via astroquery.

5.1.3 hard-coded an API key, swapped width and height, and retried immediately for ever
without network. Here the key comes from the caller (an Airflow connection or the environment,
never the code), the server URL is configurable, attempts are bounded with exponential
back-off inside a total time budget, and a submission that timed out is monitored again rather
than submitted twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .anet_local import HINT_RADIUS_DEG, SCALE_TOLERANCE
from .lazy_import import fits
from .logs import VERBOSE
from .wcs_headers import celestial

log = logging.getLogger(__name__)

API_KEY_ENV = "AR_ASTROMETRY_NET_API_KEY"
SERVER_ENV = "AR_ASTROMETRY_NET_URL"
DEFAULT_SERVER = "https://nova.astrometry.net"
MIN_SOURCES = 30  # 5.1.3's threshold: fewer sources than this rarely solve
MAX_SOURCES = 300


class OnlineError(RuntimeError):
    """The astrometry.net service could not be used (no key, unreachable, out of time)."""


@dataclass(frozen=True)
class OnlineSettings:
    """Where and how to reach the service; the key is never printed."""

    api_key: str = ""
    server: str = ""
    timeout: float = 600.0  # s, total for one image, all attempts included
    attempts: int = 4
    backoff: float = 5.0  # s before the second attempt, doubled each time

    def __repr__(self) -> str:
        return f"OnlineSettings(server={self.resolved_server()!r}, timeout={self.timeout})"

    def resolved_key(self) -> str:
        key = self.api_key or os.environ.get(API_KEY_ENV, "")
        if not key:
            raise OnlineError(
                f"no astrometry.net API key: set {API_KEY_ENV} (or the Airflow connection "
                "`astrometry_net`'s password)"
            )
        return key

    def resolved_server(self) -> str:
        return (self.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")


def _client(settings: OnlineSettings) -> Any:
    import astroquery
    from astroquery.astrometry_net import AstrometryNetClass

    # The wcs_file download is the one request astroquery caches: a reused job id would
    # then serve another image's WCS.
    astroquery.cache_conf.cache_active = False
    client = AstrometryNetClass()
    client.URL = settings.resolved_server()  # class attributes are frozen at import
    client.API_URL = client.URL + "/api"
    client.api_key = settings.resolved_key()
    return client


def source_list(catalogue: Path) -> tuple[np.ndarray, np.ndarray]:
    """FITS 1-based (x, y) of a SExtractor LDAC catalogue, brightest first, unflagged first."""
    with fits.open(catalogue) as hdus:
        table = hdus[2].data
        x, y = np.asarray(table["XWIN_IMAGE"]), np.asarray(table["YWIN_IMAGE"])
        flux, flags = np.asarray(table["FLUX_AUTO"]), np.asarray(table["FLAGS"])
    order = np.lexsort((-flux, flags > 3))[:MAX_SOURCES]
    return x[order], y[order]


def solve(
    settings: OnlineSettings,
    shape: tuple[int, int],
    scale_arcsec: float,
    pointing: tuple[float, float] | None,
    sources: tuple[np.ndarray, np.ndarray] | None = None,
    image: Path | None = None,
) -> tuple[fits.Header | None, str]:
    """Solve a source list (or, when `sources` is None, upload `image`); (header, reason).

    `shape` is (width, height). A header is returned only for a success; a failure returns
    (None, reason). Raises OnlineError when the service itself cannot be used.
    """
    hints: dict[str, Any] = {
        "scale_units": "arcsecperpix",
        "scale_type": "ev",
        "scale_est": scale_arcsec,
        "scale_err": 100 * SCALE_TOLERANCE,
        "parity": 2,
        "crpix_center": True,
        "tweak_order": 1,
    }
    if pointing is not None:
        hints.update(center_ra=pointing[0], center_dec=pointing[1], radius=HINT_RADIUS_DEG)
    deadline = time.monotonic() + settings.timeout
    client = _client(settings)
    submission: int | None = None
    delay = settings.backoff
    last_error = ""
    attempt = 0
    for attempt in range(1, settings.attempts + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = _attempt(client, submission, sources, image, shape, hints, remaining)
        except Exception as exc:  # astroquery raises anything from JSON to HTTP errors
            submission = _submission_of(exc) or submission
            last_error = f"{type(exc).__name__}: {exc}"
            if _permanent(exc):
                raise OnlineError(f"{settings.resolved_server()}: {last_error}") from exc
            log.log(VERBOSE, "    astrometry.net attempt %s failed (%s)", attempt, last_error)
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay *= 2
            continue
        answer, submission = result
        if not answer:
            return None, "astrometry.net found no solution"
        header = fits.Header(answer)
        if celestial(header) is not None:
            return header, ""
        # astroquery accepts any body for the WCS download (an error page, say): fetch again.
        last_error = "the WCS file downloaded is not a WCS"
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay *= 2
    raise OnlineError(
        f"{settings.resolved_server()}: no answer after {attempt} attempt(s) within "
        f"{settings.timeout:.0f} s ({last_error or 'timed out'})"
    )


def _attempt(
    client: Any,
    submission: int | None,
    sources: tuple[np.ndarray, np.ndarray] | None,
    image: Path | None,
    shape: tuple[int, int],
    hints: dict[str, Any],
    remaining: float,
) -> tuple[Any, int]:
    """One submission (or one more wait on an earlier one): (WCS header or {}, submission)."""
    common = {"solve_timeout": remaining, "verbose": False, "return_submission_id": True}
    if submission is not None:
        return client.monitor_submission(submission, **common)
    if sources is not None:
        x, y = sources
        return client.solve_from_source_list(x, y, shape[0], shape[1], **common, **hints)
    if image is None:
        raise ValueError("either sources or an image is needed")
    return client.solve_from_image(str(image), force_image_upload=True, **common, **hints)


def _submission_of(exc: Exception) -> int | None:
    """astroquery's TimeoutError carries the submission id as its second argument."""
    args = getattr(exc, "args", ())
    if type(exc).__name__ == "TimeoutError" and len(args) > 1 and isinstance(args[1], int):
        return args[1]
    return None


def _permanent(exc: Exception) -> bool:
    """Errors another attempt cannot fix: a refused or missing key, settings the client rejects
    (a ValueError that is not a garbled JSON answer)."""
    if "Unable to log in" in str(exc) or "API key" in str(exc):
        return True
    return isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError)
