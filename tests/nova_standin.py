"""A local stand-in for the nova.astrometry.net web API that really solves with `solve-field`.

astroquery's `AstrometryNetClass` talks to nova over plain HTTP (login, upload, poll, fetch the
WCS). Serving those endpoints on 127.0.0.1 and answering them with a genuine local solve against
a private index lets the "astrometry.net online" route be tested offline without canned answers:
a wrong setting mapping or a broken source list gives a wrong (or no) WCS, as it would online.

Response shapes follow nova's `net/api.py`: JSON bodies served as text/plain, API errors as
HTTP 200 with `{"status": "error", "errormessage": ...}`, and the WCS file at `/wcs_file/J`
(outside `/api`). Provided: the endpoints astroquery uses, plus job status, calibration and the
corr/rdls/axy result files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from astropy.io import fits

PARITY_FLAGS = {0: "pos", 1: "neg"}  # 2 = both: solve-field's default, it rejects "--parity both"
RESULT_FILES = {"wcs_file": "wcs", "corr_file": "corr", "rdls_file": "rdls", "axy_file": "axy"}


class _ApiError(Exception):
    """A request nova would refuse with `{"status": "error"}` (HTTP 200)."""


@dataclass
class _Job:
    """One solve; `status` moves from "solving" to "success"/"failure" exactly once."""

    id: int
    dir: Path
    original_filename: str
    status: str = "solving"
    calibration: dict[str, float] | None = None
    error_message: str | None = None


@dataclass
class _Submission:
    """One upload; `jobs` stays empty until the worker has created the job, as on nova."""

    id: int
    session: str
    jobs: list[int] = field(default_factory=list)
    started: str = "None"
    finished: str = "None"


class _Server(ThreadingHTTPServer):
    """Joins handler threads on close so that nothing outlives the stand-in."""

    daemon_threads = False
    block_on_close = True


class NovaStandin:
    """nova.astrometry.net's web API on 127.0.0.1, solving each submission with `solve-field`.

    `config` is an astrometry.net backend config (`add_path <index dir>`), so only a private index
    is searched. Use as a context manager; `.url` is the server root (astroquery's `URL`), and
    `.url + "/api"` its `API_URL`.
    """

    def __init__(
        self,
        config: Path,
        cpulimit: int = 20,
        workdir: Path | None = None,
        *,
        api_keys: Iterable[str] | None = None,
        wall_timeout: float | None = None,
    ) -> None:
        self.config = Path(config).resolve()
        self.cpulimit = cpulimit
        # cpulimit counts CPU seconds; the wall-clock bound catches a stuck or starved process.
        self.wall_timeout = wall_timeout if wall_timeout is not None else 2 * cpulimit + 30
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="nova_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str]] = []
        self.commands: list[list[str]] = []  # every solve-field argv, for assertions on settings
        self.hang_jobs = False  # True: new jobs are created but never solved (stay "solving")
        self._lock = threading.Lock()
        self._fail: list[tuple[int, str | None, str]] = []  # (status, body, path prefix)
        self._sessions: dict[str, str] = {}
        self._subs: dict[int, _Submission] = {}
        self._jobs: dict[int, _Job] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._workers: list[threading.Thread] = []
        self._closing = False
        # Ids start at a random offset, as nova's are large, so a stale astroquery disk cache
        # keyed on a reused URL can never serve another run's WCS.
        self._ids = itertools.count(random.randint(1_000_000, 9_000_000))
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> NovaStandin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, kill running solves, join every thread, remove a private workdir."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            procs = list(self._procs.values())
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        for proc in procs:
            _kill_group(proc)
        for worker in self._workers:
            worker.join()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- misbehaviour ----------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, *, body: str | None = None, path: str = "/"
    ) -> None:
        """Answer the next `n` requests whose path starts with `path` with `status`.

        For a client's retries: the default body is an HTML error page, as a proxy in front of
        nova would send; pass `body` (e.g. a JSON string) to shape it. `path` (e.g.
        "/api/jobs") aims the failure at one step of the sequence. Failed requests are still
        recorded in `.requests`.
        """
        with self._lock:
            self._fail.extend([(status, body, path)] * n)

    # -- HTTP ------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # a client that stalls mid-request cannot block close() for long

            def log_message(self, *args: Any) -> None:
                pass  # quiet: tests assert on `.requests` instead

            def do_GET(self) -> None:
                standin._dispatch(self, "GET", b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                standin._dispatch(self, "POST", self.rfile.read(length))

        return Handler

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        path = urlsplit(handler.path).path.rstrip("/") or "/"
        with self._lock:
            self.requests.append((method, path))
            hits = [i for i, (_, _, prefix) in enumerate(self._fail) if path.startswith(prefix)]
            failure = self._fail.pop(hits[0]) if hits else None
        if failure is not None:
            status, text, _ = failure
            text = text if text is not None else f"<html><h1>{status} Service error</h1></html>"
            _send(handler, status, text.encode(), "text/html")
            return
        parts = path.strip("/").split("/")
        try:
            if method == "POST" and path == "/api/login":
                reply = self._login(_form_json(body))
            elif method == "POST" and path == "/api/url_upload":
                reply = self._url_upload(_form_json(body))
            elif method == "POST" and path == "/api/upload":
                reply = self._upload(handler, body)
            elif method == "GET" and parts[:2] == ["api", "submissions"] and len(parts) == 3:
                reply = self._submission(int(parts[2]))
            elif method == "GET" and parts[:2] == ["api", "jobs"] and len(parts) in (3, 4):
                reply = self._job(int(parts[2]), parts[3] if len(parts) == 4 else "")
            elif method == "GET" and parts[0] in RESULT_FILES and len(parts) == 2:
                self._result_file(handler, parts[0], int(parts[1]))
                return
            else:
                raise LookupError(f"no such endpoint: {method} {path}")
        except _ApiError as err:
            reply = _error(str(err))  # nova answers API misuse with HTTP 200 and status "error"
        except (LookupError, ValueError) as err:
            _send_json(handler, _error(str(err)), 404)
            return
        _send_json(handler, reply)

    def _login(self, args: dict[str, Any]) -> dict[str, Any]:
        key = args.get("apikey")
        if not key:
            return _error('need "apikey"')
        if self.api_keys is not None and key not in self.api_keys:
            return _error("bad apikey")
        session = secrets.token_hex(16)
        with self._lock:
            self._sessions[session] = key
        return {"status": "success", "message": "authenticated user: standin", "session": session}

    def _check_session(self, args: dict[str, Any]) -> dict[str, Any] | None:
        if "session" not in args:
            return _error('no "session" in JSON.')
        if args["session"] not in self._sessions:
            return _error(f'no session with key "{args["session"]}"')
        return None

    def _url_upload(self, args: dict[str, Any]) -> dict[str, Any]:
        """astroquery sends a source list here: x, y (FITS 1-based), image_width, image_height."""
        if (bad := self._check_session(args)) is not None:
            return bad
        if not all(k in args for k in ("x", "y", "image_width", "image_height")):
            return _error("offline stand-in: url_upload needs x, y, image_width, image_height")
        x, y = np.asarray(args["x"], float), np.asarray(args["y"], float)
        if x.shape != y.shape or x.ndim != 1:
            return _error("x and y must be lists of equal length")
        return self._submit(args, "source_list", (x, y))

    def _upload(self, handler: BaseHTTPRequestHandler, body: bytes) -> dict[str, Any]:
        """Multipart image upload: a `request-json` field and a `file` part with the image."""
        ctype = handler.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return _error("no json")
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, bytes] = {}
        filename = "image.fits"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                fields[name] = part.get_payload(decode=True) or b""
                if name == "file":
                    filename = part.get_filename() or filename
        if "request-json" not in fields:
            return _error("no json")
        args = _parse_json(fields["request-json"].decode("utf-8", "replace"))
        if (bad := self._check_session(args)) is not None:
            return bad
        if not fields.get("file"):
            return _error("no file")
        return self._submit(args, "image", (fields["file"], filename))

    def _submit(self, args: dict[str, Any], kind: str, payload: Any) -> dict[str, Any]:
        with self._lock:
            if self._closing:
                return _error("server shutting down")
            sub = _Submission(next(self._ids), args["session"])
            self._subs[sub.id] = sub
            worker = threading.Thread(target=self._work, args=(sub, args, kind, payload))
            self._workers.append(worker)
        worker.start()
        return {"status": "success", "subid": sub.id, "hash": secrets.token_hex(20)}

    def _submission(self, sub_id: int) -> dict[str, Any]:
        with self._lock:
            sub = self._subs.get(sub_id)
            if sub is None:
                raise LookupError(f"no submission {sub_id}")
            cals = [[j, j] for j in sub.jobs if self._jobs[j].calibration is not None]
            reply: dict[str, Any] = {
                "user": 1,
                "processing_started": sub.started,
                "processing_finished": sub.finished,
                "user_images": list(sub.jobs),
                "jobs": list(sub.jobs),
                "job_calibrations": cals,
            }
            errors = [e for j in sub.jobs if (e := self._jobs[j].error_message)]
            if errors:
                reply["error_message"] = "; ".join(errors)
            return reply

    def _job(self, job_id: int, what: str) -> dict[str, Any]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise LookupError(f"no job {job_id}")
            if what == "":
                return {"status": job.status}
            if what == "calibration":
                if job.calibration is None:
                    return {"error": f"no calibration data available for job {job_id}"}
                return dict(job.calibration)
            if what == "info":
                info: dict[str, Any] = {
                    "objects_in_field": [],
                    "machine_tags": [],
                    "tags": [],
                    "status": job.status,
                    "original_filename": job.original_filename,
                }
                if job.calibration is not None:
                    info["calibration"] = dict(job.calibration)
                return info
        raise LookupError(f"no such endpoint: /api/jobs/{job_id}/{what}")

    def _result_file(self, handler: BaseHTTPRequestHandler, kind: str, job_id: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.status != "success":
            raise LookupError(f"no solved job {job_id}")
        path = job.dir / f"job.{RESULT_FILES[kind]}"
        _send(handler, 200, path.read_bytes(), "application/fits")

    # -- solving ---------------------------------------------------------------------------------

    def _work(self, sub: _Submission, args: dict[str, Any], kind: str, payload: Any) -> None:
        """Create the job, then solve it; any error ends the job as "failure", never raises."""
        job_dir = Path(tempfile.mkdtemp(prefix=f"sub{sub.id}_", dir=self.workdir))
        with self._lock:
            job = _Job(next(self._ids), job_dir, payload[1] if kind == "image" else "sources")
            self._jobs[job.id] = job
            sub.jobs.append(job.id)
            sub.started = _now()
            if self.hang_jobs:
                return
        solved, calibration, error = False, None, None
        try:
            infile = _write_input(job_dir, kind, payload)
            error = self._run(job, self._command(infile, job_dir, args, kind))
            # solve-field exits 0 whether or not it solved: the .solved file is the verdict.
            solved = error is None and (job_dir / "job.solved").exists()
            if solved:
                calibration = _calibration(job_dir / "job.wcs")
        except Exception as err:  # a broken upload must end as "failure", not as a stuck job
            error = f"{type(err).__name__}: {err}"
        with self._lock:
            job.calibration = calibration
            job.error_message = error
            job.status = "success" if solved else "failure"
            sub.finished = _now()

    def _run(self, job: _Job, cmd: list[str]) -> str | None:
        """Run solve-field within the wall-clock bound; its log goes to `solve.log`."""
        with self._lock:
            if self._closing:
                return "server shutting down"
            self.commands.append(cmd)
            with open(job.dir / "solve.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killable with its children
                )
            self._procs[job.id] = proc
        try:
            proc.wait(timeout=self.wall_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            return f"solve-field exceeded {self.wall_timeout} s"
        finally:
            with self._lock:
                self._procs.pop(job.id, None)
        return None if proc.returncode == 0 else f"solve-field exited with {proc.returncode}"

    def _command(self, infile: Path, job_dir: Path, args: dict[str, Any], kind: str) -> list[str]:
        """The solve-field argv for one submission, mapping nova's settings to flags."""
        cmd = [
            "solve-field", str(infile),
            "--config", str(self.config),
            "--dir", str(job_dir), "--out", "job", "--temp-dir", str(job_dir),
            "--no-plots", "--overwrite", "--new-fits", "none",
            "--cpulimit", str(self.cpulimit),
        ]  # fmt: skip
        if kind == "source_list":
            cmd += ["--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX"]
            cmd += ["--width", str(int(args["image_width"]))]
            cmd += ["--height", str(int(args["image_height"]))]
        else:
            cmd.append("--no-verify")  # nova solves blind: an existing WCS header is ignored
            if args.get("downsample_factor"):
                cmd += ["--downsample", str(int(args["downsample_factor"]))]
            if args.get("use_sextractor"):
                cmd.append("--use-source-extractor")
        lower, upper = _scale_range(args)
        if lower is not None and upper is not None:
            cmd += ["--scale-units", str(args.get("scale_units", "degwidth"))]
            cmd += ["--scale-low", repr(lower), "--scale-high", repr(upper)]
        if all(args.get(k) is not None for k in ("center_ra", "center_dec")):
            cmd += ["--ra", repr(float(args["center_ra"]))]
            cmd += ["--dec", repr(float(args["center_dec"]))]
            cmd += ["--radius", repr(float(args.get("radius", 180.0)))]
        if args.get("tweak_order") is not None:
            order = int(args["tweak_order"])
            cmd += ["--no-tweak"] if order == 0 else ["--tweak-order", str(order)]
        if args.get("crpix_center"):
            cmd.append("--crpix-center")
        if args.get("parity") is not None and int(args["parity"]) in PARITY_FLAGS:
            cmd += ["--parity", PARITY_FLAGS[int(args["parity"])]]
        if args.get("positional_error") is not None:
            cmd += ["--pixel-error", repr(float(args["positional_error"]))]
        return cmd


def _write_input(job_dir: Path, kind: str, payload: Any) -> Path:
    """A source list becomes a FITS table (X, Y as sent, 1-based); an image is saved as sent."""
    if kind == "image":
        infile = job_dir / "image.fits"
        infile.write_bytes(payload[0])
        return infile
    x, y = payload
    # solve-field sorts by FLUX, descending: a falling FLUX keeps the list's brightest-first order.
    cols = [
        fits.Column(name="X", format="D", array=x),
        fits.Column(name="Y", format="D", array=y),
        fits.Column(name="FLUX", format="D", array=np.arange(len(x), 0, -1, dtype=float)),
    ]
    infile = job_dir / "sources.xyls"
    fits.BinTableHDU.from_columns(cols).writeto(infile)
    return infile


def _scale_range(args: dict[str, Any]) -> tuple[float | None, float | None]:
    """nova's scale bounds: 'ul' gives them directly, 'ev' as estimate ± err percent."""
    kind = args.get("scale_type") or ("ev" if "scale_est" in args else "ul")
    if kind == "ev" and args.get("scale_est") is not None:
        est, err = float(args["scale_est"]), float(args.get("scale_err", 20.0))
        return est * (1 - err / 100), est * (1 + err / 100)
    if args.get("scale_lower") is not None and args.get("scale_upper") is not None:
        return float(args["scale_lower"]), float(args["scale_upper"])
    return None, None


def _calibration(wcs_path: Path) -> dict[str, float] | None:
    """nova's calibration summary, from astrometry.net's own `wcsinfo` conventions."""
    result = subprocess.run(["wcsinfo", str(wcs_path)], capture_output=True, text=True, timeout=30)
    values: dict[str, float] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = float(value)
        except ValueError:
            continue
    needed = ("ra_center", "dec_center", "pixscale", "orientation", "parity", "imagew", "imageh")
    if result.returncode != 0 or not all(k in values for k in needed):
        return None
    return {
        "ra": values["ra_center"],
        "dec": values["dec_center"],
        "radius": values["pixscale"] * math.hypot(values["imagew"], values["imageh"]) / 2 / 3600,
        "pixscale": values["pixscale"],
        "orientation": values["orientation"],
        "parity": values["parity"],
    }


def _form_json(body: bytes) -> dict[str, Any]:
    """The `request-json` field of a form-urlencoded POST, as nova's `requires_json_args`."""
    fields = parse_qs(body.decode("utf-8", "replace"))
    if "request-json" not in fields:
        raise _ApiError("no json")
    return _parse_json(fields["request-json"][0])


def _parse_json(text: str) -> dict[str, Any]:
    try:
        args = json.loads(text)
    except json.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise _ApiError(f'failed to parse JSON: "{text}"')
    return args


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "errormessage": message}


def _now() -> str:
    return str(datetime.now())


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _send_json(handler: BaseHTTPRequestHandler, obj: dict[str, Any], status: int = 200) -> None:
    _send(handler, status, json.dumps(obj).encode(), "text/plain")  # nova serves JSON as text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill solve-field and the engine it spawned (its own session, so its own group)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
