"""A VizieR on 127.0.0.1 that answers astroquery's real query with a VOTable of given stars.

It reads the ASU script astroquery POSTs (-source, -c, -c.rd, -out, the Gmag filter) and answers
the stars of its table within the cone, so queries, parsing, caching and retries run for real.
"""

from __future__ import annotations

import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from astropy import units as u
from astropy.coordinates import angular_separation
from astropy.io.votable import from_table, writeto
from astropy.table import Table

from ar_tasks.refcat_fetch import GAIA_DR3

UNITS = {"RA_ICRS": "deg", "DE_ICRS": "deg", "e_RA_ICRS": "mas", "e_DE_ICRS": "mas"}
UNITS |= {"Gmag": "mag", "e_Gmag": "mag"}


def gaia_table(ra, dec, gmag, ra_err=None, dec_err=None, gmag_err=None) -> Table:
    """Stars with Gaia DR3's VizieR column names and units (errors default to small ones)."""
    stars = Table()
    stars["RA_ICRS"], stars["DE_ICRS"] = ra, dec
    stars["e_RA_ICRS"] = 0.1 + 0 * ra if ra_err is None else ra_err
    stars["e_DE_ICRS"] = 0.1 + 0 * dec if dec_err is None else dec_err
    stars["Gmag"] = gmag.astype("float32")
    stars["e_Gmag"] = (0.01 + 0 * gmag if gmag_err is None else gmag_err).astype("float32")
    for name, unit in UNITS.items():
        stars[name].unit = unit
    return stars


def _parse_script(body: str) -> dict[str, str]:
    """astroquery's VizieR query: one `key=value` (or bare `key`) per line."""
    fields = {}
    for line in body.splitlines():
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


def _answer(stars: Table, fields: dict[str, str]) -> bytes:
    """The VOTable VizieR would give: the catalogue's stars in the cone, filtered, projected."""
    centre = re.fullmatch(r"([0-9.]+)([+-][0-9.]+)", fields["-c"])
    assert centre, fields["-c"]
    ra, dec = float(centre[1]), float(centre[2])
    unit = next(u_ for key, u_ in (("-c.rd", u.deg), ("-c.rm", u.arcmin)) if key in fields)
    radius = float(fields["-c.rd" if unit is u.deg else "-c.rm"]) * unit
    sep = angular_separation(
        stars["RA_ICRS"].quantity, stars["DE_ICRS"].quantity, ra * u.deg, dec * u.deg
    )
    keep = sep <= radius
    limit = re.fullmatch(r"<([0-9.]+)", fields.get("Gmag", "<99"))
    assert limit, fields["Gmag"]
    keep &= stars["Gmag"] < float(limit[1])
    if fields.get("-source") != GAIA_DR3:
        keep[:] = False
    table = stars[keep][fields["-out"].split(",")]
    votable = from_table(table)
    votable.get_first_table().name = fields.get("-source", "")
    buffer = io.BytesIO()
    writeto(votable, buffer)
    return buffer.getvalue()


class FakeVizier:
    """A VizieR on 127.0.0.1 over plain http; answers `statuses` first, then VOTables."""

    def __init__(self, stars: Table) -> None:
        self.stars = stars
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.statuses: list[int] = []
        self.always: int | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                fields = _parse_script(body)
                fake.requests.append((self.path, fields))
                status = fake.always or (fake.statuses.pop(0) if fake.statuses else 200)
                payload = _answer(fake.stars, fields) if status == 200 else b"Service Unavailable"
                self.send_response(status)
                self.send_header("Content-Type", "text/xml" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
