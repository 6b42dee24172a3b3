"""Reading raw frames and writing products, with the failure modes named.

Raw files are read once into memory (so the bytes we hash are the bytes we reduce), gzip is
undone by its magic bytes, fpack's compressed image extension is found, truncation is an error
rather than a warning, and products appear only when complete (temporary name, then rename).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

_GZIP_MAGIC = b"\x1f\x8b"
# Keywords that describe the stored representation, never copied from a raw header to a product.
_STRUCTURAL = ("BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM")


class FrameError(ValueError):
    """A file that cannot be used as a frame; the message says why."""


@dataclass(frozen=True)
class RawFrame:
    """One image read from disk: float32 pixels, its header and the SHA-256 of the file bytes."""

    data: np.ndarray
    header: fits.Header
    sha256: str


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_frame(path: Path) -> RawFrame:
    """Read the first HDU holding a 2-D image; raise FrameError naming the problem."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise FrameError(f"cannot be read ({exc.strerror or exc})") from None
    sha = hashlib.sha256(raw).hexdigest()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise FrameError(f"is a damaged gzip file ({exc})") from None
    truncated = FrameError(f"is truncated ({len(raw)} bytes, fewer than its FITS header promises)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False) as hdus:
                hdu = _image_hdu(hdus)
                header = hdu.header.copy()
                pixels = np.asarray(hdu.data, dtype=np.float32)
        except FrameError:
            raise
        except (OSError, TypeError, ValueError, IndexError, KeyError) as exc:
            if _truncated(caught):
                raise truncated from None
            raise FrameError(f"is not a readable FITS image ({_first_sentence(exc)})") from None
    if _truncated(caught):
        raise truncated
    return RawFrame(pixels, header, sha)


def _image_hdu(hdus: fits.HDUList) -> fits.hdu.base.ExtensionHDU:
    for hdu in hdus:
        if (
            isinstance(hdu, fits.CompImageHDU | fits.PrimaryHDU | fits.ImageHDU)
            and hdu.header.get("NAXIS", 0) == 2
        ):
            return hdu
    raise FrameError("holds no 2-D image")


def _first_sentence(exc: Exception) -> str:
    return str(exc).split(". ")[0].rstrip(".")


def _truncated(caught: list[warnings.WarningMessage]) -> bool:
    return any("truncated" in str(w.message) for w in caught)


def product_header(source: fits.Header | None) -> fits.Header:
    """A copy of a raw header fit for a float32 product: structural keywords dropped."""
    header = fits.Header() if source is None else source.copy(strip=True)
    for key in _STRUCTURAL:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def set_card(header: fits.Header, key: str, value: object, comment: str = "") -> None:
    """Set a keyword, keeping the comment only when the card still fits in 80 characters."""
    header[key] = value
    if comment and len(str(header.cards[key])) + len(comment) + 3 <= 80:
        header.comments[key] = comment


def write_image(path: Path, data: np.ndarray, header: fits.Header | None = None) -> Path:
    """Write a float32 image atomically: a temporary file in the same folder, then a rename.

    A crash leaves either the old product or the new one, never a partial file under the name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=product_header(header))
    hdu.add_checksum(when="")  # no timestamp: reruns give identical bytes
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            hdu.writeto(tmp_name, overwrite=True, output_verify="fix")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, payload: bytes) -> Path:
    """Write any small product (JSON, PNG) atomically, like write_image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_product(path: Path) -> tuple[np.ndarray, fits.Header]:
    """Read one of our own float32 products."""
    with fits.open(path, memmap=False) as hdus:
        return np.asarray(hdus[0].data, dtype=np.float32), hdus[0].header.copy()
