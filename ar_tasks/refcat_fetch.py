"""Per-field astrometric reference catalogues, fetched once from VizieR and cached on disk.

SCAMP with ``ASTREF_CATALOG FILE`` needs a reference catalogue per field. Data managers reprocess
years of nights of the same fields, so a field's catalogue is fetched once and every later run is
offline: the cache key is the catalogue and the pointing rounded to a 0.05 deg grid, and the cone
fetched for a grid cell is widened so it covers any pointing that rounds to that cell. Any cached
file whose cone and magnitude limit cover a request is reused without network access.

The query goes through astroquery (imported only when a fetch is needed), with a bounded number
of retries, and the file appears only when complete (temporary name, then rename).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import angular_separation
from astropy.io import fits

from .fitsio import set_card, write_bytes_atomic
from .refcat import CatalogueError

GAIA_DR3 = "I/355/gaiadr3"
SERVER_ENV = "AR_VIZIER_SERVER"
GRID_DEG = 0.05  # pointing grid of the cache, and step of the cached radius
# Farthest a pointing can be from the centre of its grid cell (half the cell diagonal).
_MAX_OFFSET_DEG = math.hypot(GRID_DEG / 2, GRID_DEG / 2)
_EPS = 1e-9
_EXTNAME = "REFCAT"

log = logging.getLogger(__name__)


class RefcatError(CatalogueError):
    """A reference catalogue that could not be obtained; the message names the server and field."""


@dataclass(frozen=True)
class _Columns:
    """Where a VizieR catalogue keeps what SCAMP needs, and the epoch of its positions."""

    slug: str
    ra: str
    dec: str
    mag: str
    magerr: str
    ra_err: str
    dec_err: str
    band: str
    epoch: float


_CATALOGUES = {
    GAIA_DR3: _Columns(
        slug="gaiadr3",
        ra="RA_ICRS",
        dec="DE_ICRS",
        mag="Gmag",
        magerr="e_Gmag",
        ra_err="e_RA_ICRS",
        dec_err="e_DE_ICRS",
        band="G",
        epoch=2016.0,
    ),
}


@dataclass(frozen=True)
class _Cone:
    ra: float
    dec: float
    radius: float


def cached_catalogue_path(
    cache_dir: Path, ra_deg: float, dec_deg: float, radius_deg: float, catalog: str = GAIA_DR3
) -> Path:
    """The cache file for a field: pointings within one 0.05 deg grid cell share it."""
    cone = _cell_cone(ra_deg, dec_deg, radius_deg)
    name = f"{_slug(catalog)}_{cone.ra:.2f}{cone.dec:+.2f}_r{cone.radius:.2f}.fits"
    return Path(cache_dir) / name


def fetch_field_catalogue(
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    cache_dir: Path,
    catalog: str = GAIA_DR3,
    mag_limit: float = 20.0,
    server: str | None = None,
    timeout: float = 60.0,
    retries: int = 3,
    *,
    backoff: float = 2.0,
) -> Path:
    """Path of a FITS table holding every star of ``catalog`` brighter than ``mag_limit`` in the
    cone, from the cache when a cached cone covers it, else fetched once from VizieR.

    The file may hold stars outside the cone (its grid cell's wider cone) and, when reused from a
    deeper fetch, fainter than ``mag_limit``. ``server`` (else $AR_VIZIER_SERVER, else
    astroquery's default mirror) is ``host[:port][/prefix]`` for https or a full
    ``http://``/``https://`` URL. At most ``1 + retries`` queries are made, ``backoff * 2**k``
    seconds apart, on connection errors, timeouts and HTTP 429/5xx; RefcatError otherwise.
    """
    _check_field(ra_deg, dec_deg, radius_deg)
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError("retries and backoff must be >= 0 and timeout > 0")
    columns = _columns(catalog)
    cache_dir = Path(cache_dir)
    wanted = _Cone(ra_deg % 360.0, dec_deg, radius_deg)
    cached = _find_cached(cache_dir, catalog, wanted, mag_limit)
    if cached is not None:
        return cached

    cell = _cell_cone(ra_deg, dec_deg, radius_deg)
    field = f"field RA {ra_deg:.4f} Dec {dec_deg:+.4f} (radius {radius_deg:.3f} deg)"
    server = _resolve_server(server)
    table = _query_with_retries(
        server, catalog, columns, cell, mag_limit, timeout, retries, backoff, field
    )
    hdu = _table_hdu(table, columns, field, server)
    if hdu.header["NAXIS2"] == 0:
        raise RefcatError(f"{catalog} has no usable star in {field} (server {server})")
    _describe(hdu.header, catalog, columns, cell, mag_limit, server)
    path = cached_catalogue_path(cache_dir, ra_deg, dec_deg, radius_deg, catalog)
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    write_bytes_atomic(path, buffer.getvalue())
    log.info("cached %d %s stars for %s in %s", len(hdu.data), catalog, field, path)
    return path


# -- cache key and reuse ------------------------------------------------------------------------


def _check_field(ra_deg: float, dec_deg: float, radius_deg: float) -> None:
    if not (math.isfinite(ra_deg) and math.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0):
        raise ValueError(f"invalid field centre RA {ra_deg} Dec {dec_deg}")
    if not (math.isfinite(radius_deg) and 0.0 < radius_deg <= 45.0):
        raise ValueError(f"invalid cone radius {radius_deg} deg (0 < radius <= 45)")


def _cell_cone(ra_deg: float, dec_deg: float, radius_deg: float) -> _Cone:
    """The grid cell's cone: its centre, and a radius rounded up so it covers the given cone."""
    _check_field(ra_deg, dec_deg, radius_deg)
    ra = (round(ra_deg / GRID_DEG) * GRID_DEG) % 360.0
    ra = 0.0 if round(ra, 6) >= 360.0 else ra
    dec = min(90.0, max(-90.0, round(dec_deg / GRID_DEG) * GRID_DEG))
    steps = math.ceil((radius_deg + _MAX_OFFSET_DEG) / GRID_DEG - _EPS)
    # + 0.0 turns -0.0 into 0.0, so the file name never says "-0.00".
    return _Cone(round(ra, 6) + 0.0, round(dec, 6) + 0.0, round(steps * GRID_DEG, 6))


def _slug(catalog: str) -> str:
    if catalog in _CATALOGUES:
        return _CATALOGUES[catalog].slug
    return re.sub(r"[^a-z0-9]+", "_", catalog.lower()).strip("_") or "catalogue"


def _columns(catalog: str) -> _Columns:
    try:
        return _CATALOGUES[catalog]
    except KeyError:
        known = ", ".join(sorted(_CATALOGUES))
        raise ValueError(f"no column mapping for catalogue {catalog!r} (known: {known})") from None


def _find_cached(cache_dir: Path, catalog: str, wanted: _Cone, mag_limit: float) -> Path | None:
    """A cached file of this catalogue whose cone and depth cover the request, smallest first."""
    exact = cached_catalogue_path(cache_dir, wanted.ra, wanted.dec, wanted.radius, catalog)
    others = sorted(cache_dir.glob(f"{_slug(catalog)}_*_r*.fits"), key=_name_radius)
    for path in [exact, *(p for p in others if p != exact)]:
        if _covers(path, catalog, wanted, mag_limit):
            return path
    return None


def _name_radius(path: Path) -> float:
    found = re.search(r"_r(\d+(?:\.\d*)?)\.fits$", path.name)
    return float(found.group(1)) if found else math.inf


def _covers(path: Path, catalog: str, wanted: _Cone, mag_limit: float) -> bool:
    try:
        header = fits.getheader(path, _EXTNAME)
        if header.get("CATALOG") != catalog or header.get("NAXIS2", 0) == 0:
            return False
        centre_ra, centre_dec = float(header["RA_CEN"]), float(header["DEC_CEN"])
        radius, depth = float(header["RADIUS"]), float(header["MAGLIM"])
    except (OSError, KeyError, ValueError, TypeError):
        return False  # missing, unreadable or foreign: never reused, overwritten when exact
    separation = angular_separation(
        centre_ra * u.deg, centre_dec * u.deg, wanted.ra * u.deg, wanted.dec * u.deg
    ).to_value(u.deg)
    return separation + wanted.radius <= radius + _EPS and depth >= mag_limit - _EPS


# -- network ------------------------------------------------------------------------------------


def _resolve_server(server: str | None) -> str:
    if server:
        return server
    if os.environ.get(SERVER_ENV):
        return os.environ[SERVER_ENV]
    from astroquery.vizier import conf

    return str(conf.server)


def _split_server(server: str) -> tuple[str, str]:
    """('http' or 'https', 'host[:port][/prefix]'): astroquery 0.4.11 only knows the latter."""
    scheme, sep, rest = server.partition("://")
    if not sep:
        return "https", server.rstrip("/")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError(f"VizieR server {server!r}: expected host[:port] or an http(s) URL")
    return scheme.lower(), rest.rstrip("/")


def _vizier(server: str, columns: _Columns, mag_limit: float, timeout: float) -> Any:
    """A Vizier instance for ``server``, over plain http when the server says so.

    ``VizierClass._server_to_url`` builds ``"https://" + self.VIZIER_SERVER + "/viz-bin/..."``,
    so a host alone can be set with ``vizier_server``/``VIZIER_SERVER`` but the scheme cannot:
    the subclass swaps it.
    """
    from astroquery.vizier import VizierClass

    scheme, host = _split_server(server)

    class _Vizier(VizierClass):
        def _server_to_url(self, return_type: str = "votable") -> str:
            url: str = super()._server_to_url(return_type=return_type)
            return f"{scheme}://{url.removeprefix('https://')}"

    names = [columns.ra, columns.dec, columns.mag, columns.magerr, columns.ra_err, columns.dec_err]
    return _Vizier(
        columns=names,
        column_filters={columns.mag: f"<{mag_limit}"},
        row_limit=-1,
        timeout=timeout,
        vizier_server=host,
    )


def _query_with_retries(
    server: str,
    catalog: str,
    columns: _Columns,
    cone: _Cone,
    mag_limit: float,
    timeout: float,
    retries: int,
    backoff: float,
    field: str,
) -> Any:
    """The catalogue's astropy Table for the cone; transient failures retried, a bounded number
    of times, with exponential back-off."""
    import requests
    from astropy.coordinates import SkyCoord

    vizier = _vizier(server, columns, mag_limit, timeout)
    centre = SkyCoord(cone.ra * u.deg, cone.dec * u.deg, frame="icrs")
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            result = vizier.query_region(
                centre, radius=cone.radius * u.deg, catalog=catalog, frame="icrs", cache=False
            )
            break
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status != 429 and status < 500:
                raise RefcatError(
                    f"VizieR server {server} refused the query for {field}: HTTP {status}"
                ) from exc
            failure: Exception = exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            failure = exc
        except Exception as exc:  # unparsable answer, bad URL...: retrying cannot help
            raise RefcatError(
                f"query to VizieR server {server} failed for {field}: {type(exc).__name__}: {exc}"
            ) from exc
        if attempt == attempts:
            raise RefcatError(
                f"VizieR server {server} failed {attempts} times for {field}; last error: "
                f"{type(failure).__name__}: {failure}"
            ) from failure
        delay = backoff * 2 ** (attempt - 1)
        log.warning("VizieR %s, attempt %d/%d: %s", server, attempt, attempts, failure)
        time.sleep(delay)

    if result is None or len(result) == 0:
        raise RefcatError(f"{catalog} returned no star for {field} (server {server})")
    names = list(result.keys())  # a TableList is a list of tables: `in` would test tables
    return result[catalog] if catalog in names else result[0]


# -- output -------------------------------------------------------------------------------------


def _table_hdu(table: Any, columns: _Columns, field: str, server: str) -> fits.BinTableHDU:
    """RA, DEC (float64 deg), MAG (float32) and, when served, MAGERR, RAERR, DECERR (float32)."""
    missing = [
        name for name in (columns.ra, columns.dec, columns.mag) if name not in table.colnames
    ]
    if missing:
        raise RefcatError(f"server {server} answered for {field} without column(s) {missing}")
    ra = _values(table, columns.ra, np.float64)
    dec = _values(table, columns.dec, np.float64)
    mag = _values(table, columns.mag, np.float32)
    keep = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)
    order = np.argsort(mag[keep], kind="stable")
    cols = [
        fits.Column("RA", "D", unit="deg", array=ra[keep][order]),
        fits.Column("DEC", "D", unit="deg", array=dec[keep][order]),
        fits.Column("MAG", "E", unit="mag", array=mag[keep][order]),
    ]
    for name, source, unit in (
        ("MAGERR", columns.magerr, "mag"),
        ("RAERR", columns.ra_err, "deg"),
        ("DECERR", columns.dec_err, "deg"),
    ):
        if source in table.colnames:
            values = _values(table, source, np.float64) * _to_unit(table[source], unit)
            cols.append(fits.Column(name, "E", unit=unit, array=values[keep][order]))
    return fits.BinTableHDU.from_columns(cols, name=_EXTNAME)


def _values(table: Any, name: str, dtype: type) -> np.ndarray:
    column = table[name]
    data = np.ma.masked_invalid(np.ma.asarray(column, dtype=np.float64))
    return np.ma.filled(data, np.nan).astype(dtype)


def _to_unit(column: Any, unit: str) -> float:
    """Factor to ``unit``; VizieR gives Gaia position errors in mas, magnitudes in mag."""
    source = column.unit if column.unit is not None else (u.mas if unit == "deg" else u.mag)
    return float(u.Unit(source).to(unit))


def _describe(
    header: fits.Header,
    catalog: str,
    columns: _Columns,
    cone: _Cone,
    mag_limit: float,
    server: str,
) -> None:
    set_card(header, "CATALOG", catalog, "VizieR catalogue")
    set_card(header, "RA_CEN", cone.ra, "[deg] ICRS RA of the fetched cone centre")
    set_card(header, "DEC_CEN", cone.dec, "[deg] ICRS Dec of the fetched cone centre")
    set_card(header, "RADIUS", cone.radius, "[deg] radius of the fetched cone")
    set_card(header, "MAGLIM", float(mag_limit), f"{columns.band} magnitude limit (exclusive)")
    set_card(header, "MAGBAND", columns.band, "band of MAG")
    set_card(header, "EPOCH", columns.epoch, "[yr] Julian epoch of the positions")
    set_card(header, "EQUINOX", 2000.0, "ICRS")
    set_card(header, "RADESYS", "ICRS")
    set_card(header, "SERVER", server, "VizieR server queried")
    fetched = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "")
    set_card(header, "DATE", fetched, "UTC date of the VizieR fetch")
