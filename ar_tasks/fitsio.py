"""Reading raw frames and writing products, with the failure modes named.

Raw files are read once into memory (so the bytes we hash are the bytes we reduce), gzip is
undone by its magic bytes, truncation is an error rather than a warning, and products appear
only when complete (temporary name, then rename). Plain FITS images (a 2-D primary HDU: every
T120 frame and every product of ours) are parsed with numpy alone; anything else (image
extensions, fpack compression) goes through astropy, imported only then.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .fitschecksum import PLACEHOLDER, encode, ones_complement_sum
from .fitsheader import BLOCK, CARD, Header, HeaderError, header_end

if TYPE_CHECKING:
    import numpy as np
else:  # `astro_reduce --setup` never needs an array (lazy_import)
    from .lazy_import import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_PIXEL_TYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class FrameError(ValueError):
    """A file that cannot be used as a frame; the message says why."""


@dataclass(frozen=True)
class RawFrame:
    """One image read from disk: float32 pixels, its header and the SHA-256 of the file bytes."""

    data: np.ndarray
    header: Header
    sha256: str


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks; for a file this process wrote, the digest of
    the bytes it wrote, as long as the file is still the one written (same inode, size and
    times): a night's manifest then reads none of its 0.15 GB of products again."""
    written = _written_digest(path)
    if written is not None:
        return written
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_written: dict[str, tuple[tuple[int, ...], str]] = {}  # absolute path -> (identity, SHA-256)
_written_lock = threading.Lock()


def _identity(stat: os.stat_result) -> tuple[int, ...]:
    """The file's stamp, which any later write changes, and its inode, which a replacement
    (rename) changes."""
    return stat.st_dev, stat.st_ino, *file_stamp(stat)


def _remember_written(path: Path, sha256: str) -> None:
    identity = _identity(os.stat(path))
    with _written_lock:
        _written[os.path.abspath(path)] = (identity, sha256)


def take_written() -> dict[str, tuple[tuple[int, ...], str]]:
    """The digests of the files this process wrote, forgotten here (a worker process hands
    them to its parent with adopt_written)."""
    with _written_lock:
        taken = dict(_written)
        _written.clear()
    return taken


def adopt_written(entries: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Trust digests another process took of the files it wrote (while they hold)."""
    with _written_lock:
        _written.update(entries)


def _written_digest(path: Path) -> str | None:
    with _written_lock:
        known = _written.get(os.path.abspath(path))
    if known is None:
        return None
    try:
        identity = _identity(os.stat(path))
    except OSError:
        return None
    return known[1] if identity == known[0] else None


FileStamp = tuple[int, int, int]  # (size, mtime_ns, ctime_ns)
# A stamp this close to its ctime could miss a second write within the same clock tick (the
# "racy git" problem): such a file is hashed again when read.
RACY_WINDOW_NS = 50_000_000


def file_stamp(stat: os.stat_result) -> FileStamp:
    """What changes whenever a file's bytes do: any write sets ctime, which no tool can reset."""
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def racy_ns(stamp: FileStamp) -> int:
    """How long (ns) until a hash taken now could be vouched for by `stamp`; 0: it already can."""
    return max(0, stamp[2] + RACY_WINDOW_NS + 1 - time.time_ns())


@dataclass(frozen=True)
class KnownFile:
    """A file's stamp taken before its bytes were hashed, and their SHA-256."""

    stamp: FileStamp
    sha256: str


def read_frame(path: Path, known: KnownFile | None = None) -> RawFrame:
    """Read the first HDU holding a 2-D image; raise FrameError naming the problem.

    A file that still has the `known` stamp once read holds the bytes hashed then, so their
    SHA-256 is not computed again (as git's index does; 0.08 s of CPU on a 61-frame night).
    """
    raw, sha, _ = _file_bytes(path, known)
    header, pixels = _image(raw)
    return RawFrame(pixels, header, sha)


@dataclass(frozen=True)
class FrameScan:
    """What an inventory needs of a raw file, without its pixels in float."""

    header: Header
    shape: tuple[int, int]
    nonfinite: int  # NaN, infinite or BLANK pixels
    sha256: str
    stamp: FileStamp  # after reading
    known: KnownFile | None  # None: the file changed while read, or too recently to tell


def scan_frame(path: Path) -> FrameScan:
    """Like read_frame, but integer pixels are never converted to float: they cannot be NaN
    or infinite, so only BLANK pixels are counted as undefined (half the work of a read)."""
    raw, sha, stamps = _file_bytes(path)
    layout = _plain_layout(raw)
    if layout is None:
        header, pixels = _image_by_astropy(raw)
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        nonfinite = int(np.count_nonzero(~np.isfinite(pixels)))
    else:
        header, shape, end = layout
        if header["BITPIX"] < 0 or "BLANK" in header:  # the pixels are looked at
            pixels = _stored_pixels(raw, header, shape, end)
            undefined = ~np.isfinite(pixels) if header["BITPIX"] < 0 else pixels == header["BLANK"]
            nonfinite = int(np.count_nonzero(undefined))
        else:  # integers without BLANK are all defined: no array (and no numpy) needed
            nonfinite = 0
    before, after = stamps
    steady = before == after and not racy_ns(after)
    known = KnownFile(before, sha) if steady else None
    return FrameScan(header, shape, nonfinite, sha, after, known)


def _file_bytes(
    path: Path, known: KnownFile | None = None
) -> tuple[bytes | bytearray, str, tuple[FileStamp, FileStamp]]:
    """A file's bytes (gzip undone), the SHA-256 of the bytes on disk (`known`'s when the file
    has not changed since it was taken) and the file's stamps before and after reading.

    The bytes may be this thread's scratch buffer: use them before the thread's next read.
    """
    try:
        with open(path, "rb", buffering=0) as stream:
            before = file_stamp(os.fstat(stream.fileno()))
            raw = _read_all(stream, before[0])
            after = file_stamp(os.fstat(stream.fileno()))
    except OSError as exc:
        raise FrameError(f"cannot be read ({exc.strerror or exc})") from None
    if known is not None and after == known.stamp:
        sha = known.sha256
    else:
        sha = hashlib.sha256(raw).hexdigest()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise FrameError(f"is a damaged gzip file ({exc})") from None
    return raw, sha, (before, after)


_scratch = threading.local()


def _read_all(stream: IO[bytes], size: int) -> bytearray:
    """The whole file, in this thread's buffer when it is `size` bytes long (as every frame of
    a night is). A frame read is transient (converted to float32, hashed, parsed), and
    refilling the same pages costs 0.2 ms per 2 MB frame where fresh ones cost 1 ms."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = _scratch.buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        count = stream.readinto(view[done:])
        if not count:  # shorter than it was a moment ago
            return buffer[:done]
        done += count
    rest = stream.read()  # longer than it was a moment ago
    return buffer + rest if rest else buffer


def _truncated(size: int) -> FrameError:
    return FrameError(f"is truncated ({size} bytes, fewer than its FITS header promises)")


def _image(raw: bytes) -> tuple[Header, np.ndarray]:
    """Header and float32 pixels of a FITS file's bytes: numpy for plain images, else astropy."""
    plain = _plain_stored(raw)
    return _image_by_astropy(raw) if plain is None else (plain[0], _physical(*plain))


def _plain_stored(raw: bytes) -> tuple[Header, np.ndarray] | None:
    """Header and stored pixels (as on disk) of a plain 2-D primary image; None for anything
    else."""
    layout = _plain_layout(raw)
    return None if layout is None else (layout[0], _stored_pixels(raw, *layout))


def _plain_layout(raw: bytes) -> tuple[Header, tuple[int, int], int] | None:
    """Header, shape and data offset of a plain 2-D primary image; None for anything else.

    Only a file whose data would be cut short raises here (FrameError); every other oddity is
    left to astropy, whose messages then name it.
    """
    if not raw.startswith(b"SIMPLE  ="):
        return None
    end = header_end(raw)
    if end is None:
        return None
    try:
        header = Header.parse(raw[:end])
    except HeaderError:
        return None
    shape = _image_shape(header)
    if shape is None:
        return None
    if len(raw) < end + shape[0] * shape[1] * abs(header["BITPIX"]) // 8:
        raise _truncated(len(raw))
    return header, shape, end


def _stored_pixels(raw: bytes, header: Header, shape: tuple[int, int], end: int) -> np.ndarray:
    """The pixels as stored (no scaling), a view of `raw`."""
    dtype = np.dtype(_PIXEL_TYPES[header["BITPIX"]])
    return np.frombuffer(raw, dtype, shape[0] * shape[1], end).reshape(shape)


def _image_shape(header: Header) -> tuple[int, int] | None:
    """(NAXIS2, NAXIS1) of a simple 2-D image with known BITPIX and numeric scaling."""
    if header.get("SIMPLE") is not True or header.get("NAXIS") != 2 or "GROUPS" in header:
        return None
    if header.get("BITPIX") not in _PIXEL_TYPES:
        return None
    width, height = header.get("NAXIS1"), header.get("NAXIS2")
    scaling = (header.get("BSCALE", 1), header.get("BZERO", 0), header.get("BLANK", 0))
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scaling):
        return None
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        return None
    return height, width


def _physical(header: Header, stored: np.ndarray) -> np.ndarray:
    """Stored values to float32 physical values (BSCALE, BZERO); BLANK pixels become NaN."""
    bscale, bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
    integer = stored.dtype.kind in "iu"
    # 8/16-bit integers and their usual offsets are exact in float32, wider ones need float64.
    work = np.float32 if stored.dtype.itemsize <= 2 or not integer else np.float64
    data = stored.astype(work)
    if bscale != 1:
        data *= work(bscale)
    if bzero != 0:
        data += work(bzero)
    if integer and "BLANK" in header:
        data[stored == header["BLANK"]] = np.nan
    return data if data.dtype == np.float32 else data.astype(np.float32)


def _image_by_astropy(raw: bytes) -> tuple[Header, np.ndarray]:
    """Extensions, compressed images and odd headers: astropy reads them, or says why not."""
    from astropy.io import fits

    truncated = _truncated(len(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=False) as hdus:
                hdu = _image_hdu(hdus)
                header = Header.from_astropy(hdu.header)
                pixels = np.asarray(hdu.data, dtype=np.float32)
        except FrameError:
            raise
        except Exception as exc:  # astropy's parser on untrusted bytes raises anything:
            # VerifyError, its CFITSIO errors on damaged tile-compressed data...
            if _warned_truncated(caught):
                raise truncated from None
            kind = "" if isinstance(exc, OSError | ValueError) else f"{type(exc).__name__}: "
            reason = f"{kind}{_first_sentence(exc)}"
            raise FrameError(f"is not a readable FITS image ({reason})") from None
    if _warned_truncated(caught):
        raise truncated
    return header, pixels


def _image_hdu(hdus: Any) -> Any:
    from astropy.io import fits

    for hdu in hdus:
        if (
            isinstance(hdu, fits.CompImageHDU | fits.PrimaryHDU | fits.ImageHDU)
            and hdu.header.get("NAXIS", 0) == 2
        ):
            return hdu
    raise FrameError("holds no 2-D image")


def _first_sentence(exc: Exception) -> str:
    return str(exc).split(". ")[0].rstrip(".")


def _warned_truncated(caught: list[warnings.WarningMessage]) -> bool:
    return any("truncated" in str(w.message) for w in caught)


def product_header(source: Any = None) -> Header:
    """A copy of a raw header (ours or astropy's) fit for a float32 product: the cards that
    describe the stored array dropped."""
    if source is None:
        return Header()
    if not isinstance(source, Header):
        source = Header.from_astropy(source)
    return source.without_structure()


def set_card(header: Any, key: str, value: object, comment: str = "") -> None:
    """Set a keyword, keeping the comment only when the card still fits in 80 characters."""
    if isinstance(header, Header):
        header.set(key, value, comment, whole_comment=True)
        return
    header[key] = value  # an astropy header (reference catalogues)
    if comment and len(str(header.cards[key])) + len(comment) + 3 <= CARD:
        header.comments[key] = comment


def write_image(path: Path, data: np.ndarray, header: Any = None) -> Path:
    """Write a float32 image atomically: a temporary file in the same folder, then a rename.

    A crash leaves either the old product or the new one, never a partial file under the name.
    The pixels are byte-swapped into this thread's scratch array (big-endian), summed
    (DATASUM), the header, whose size does not depend on the sums, is completed, and the whole
    is hashed on its way out (sha256_file then knows it). No timestamp: equal inputs give
    identical bytes.
    """
    pixels = np.ascontiguousarray(data, dtype=np.float32)
    full = _image_header(pixels.shape, header)

    def write(stream: IO[bytes]) -> str:
        stored = _big_endian(pixels.reshape(-1))
        datasum = ones_complement_sum(stored)
        full["DATASUM"] = (str(datasum), "data unit checksum")
        full["CHECKSUM"] = (encode(ones_complement_sum(full.tobytes(), datasum)), "HDU checksum")
        digest = hashlib.sha256()
        for part in (full.tobytes(), stored.view(np.uint8).data, bytes(-stored.nbytes % BLOCK)):
            digest.update(part)
            stream.write(part)
        return digest.hexdigest()

    return write_atomic(path, write)


_write_scratch = threading.local()


def _big_endian(values: np.ndarray) -> np.ndarray:
    """`values` as big-endian float32 in this thread's scratch array (grown to the largest
    frame written, then reused: refilled pages are cheaper than fresh ones, see _read_all)."""
    buffer = getattr(_write_scratch, "buffer", None)
    if buffer is None or buffer.size < values.size:
        buffer = _write_scratch.buffer = np.empty(values.size, dtype=">f4")
    stored = buffer[: values.size]
    np.copyto(stored, values)
    return stored


def _image_header(shape: tuple[int, ...], header: Any) -> Header:
    """A float32 product's header: the array's cards, `header`'s others, room for the sums."""
    full = Header()
    full["SIMPLE"] = (True, "conforms to FITS standard")
    full["BITPIX"] = (-32, "array data type")
    full["NAXIS"] = (len(shape), "number of array dimensions")
    for axis, length in enumerate(reversed(shape), start=1):
        full[f"NAXIS{axis}"] = length
    full["EXTEND"] = True
    body = product_header(header)
    if any(card.startswith("CONTINUE") for card in body.cards()) and "LONGSTRN" not in body:
        full["LONGSTRN"] = ("OGIP 1.0", "long strings continue on CONTINUE cards")
    full = Header(full.cards() + body.cards())
    full["CHECKSUM"] = (PLACEHOLDER, "HDU checksum")
    full["DATASUM"] = ("0", "data unit checksum")
    return full


def write_bytes_atomic(path: Path, payload: bytes) -> Path:
    """Write any small product (JSON, PNG) atomically, like write_image."""

    def write(stream: IO[bytes]) -> str:
        stream.write(payload)
        return hashlib.sha256(payload).hexdigest()

    return write_atomic(path, write)


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write` on a temporary file beside `path`, then rename it to `path`. When `write`
    returns the SHA-256 of what it wrote, sha256_file(path) answers with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            digest = write(stream)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if isinstance(digest, str):
        _remember_written(path, digest)
    return path


def read_product(path: Path) -> tuple[np.ndarray, Header]:
    """Read one of our own float32 products (or any 2-D FITS image) as float32 pixels."""
    try:
        with open(path, "rb") as stream:
            product = _read_unscaled_float32(stream, path)
        if product is not None:
            return product
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise FrameError(f"{path} cannot be read ({exc.strerror or exc})") from None
    header, pixels = _image(raw)
    return pixels, header


def _read_unscaled_float32(stream: IO[bytes], path: Path) -> tuple[np.ndarray, Header] | None:
    """Our products' layout (BITPIX -32, no scaling), read straight into the returned array
    and byte-swapped in place: one frame-sized allocation instead of two. None for any other
    file, which the general path then reads."""
    layout = _float32_layout(stream, path)
    if layout is None:
        return None
    header, shape = layout
    pixels = np.empty(shape, dtype=">f4")
    if stream.readinto(memoryview(pixels).cast("B")) != pixels.nbytes:
        raise FrameError(f"{path} is truncated")
    return pixels.byteswap(inplace=True).view(np.float32), header


def _float32_layout(stream: IO[bytes], path: Path) -> tuple[Header, tuple[int, int]] | None:
    """The header and shape of a plain unscaled BITPIX -32 image, the stream left at its
    pixels; None for any other file."""
    if stream.read(9) != b"SIMPLE  =":
        return None
    stream.seek(0)
    try:
        header = _read_header_from(stream, path)
    except (FrameError, HeaderError):
        return None
    shape = _image_shape(header)
    unscaled = header.get("BSCALE", 1) == 1 and header.get("BZERO", 0) == 0
    if shape is None or header["BITPIX"] != -32 or not unscaled:
        return None
    return header, shape


class ProductRows:
    """Row ranges of one product image, read when asked into the caller's buffer.

    A stack takes its median block by block straight from its aux frames, so it never holds
    a whole shifted frame per input (200 MB for a group of 50 1024^2 frames, which spilled to
    scratch files). No file stays open between reads. Files in another layout than ours are
    read whole once.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._whole: np.ndarray | None = None
        try:
            with open(self.path, "rb") as stream:
                layout = _float32_layout(stream, self.path)
                self._offset = stream.tell()
        except OSError as exc:
            raise FrameError(f"{path} cannot be read ({exc.strerror or exc})") from None
        if layout is None:
            self._whole, self.header = read_product(self.path)
            self.shape: tuple[int, int] = self._whole.shape  # type: ignore[assignment]
        else:
            self.header, self.shape = layout

    def read(self, start: int, stop: int, buffer: np.ndarray) -> np.ndarray:
        """Rows [start, stop) as float32, in `buffer` (float32, at least that many pixels)."""
        width = self.shape[1]
        rows = buffer.reshape(-1)[: (stop - start) * width].reshape(stop - start, width)
        if self._whole is not None:
            rows[...] = self._whole[start:stop]
            return rows
        if stop <= start:
            return rows
        try:
            descriptor = os.open(self.path, os.O_RDONLY)
            try:
                read = os.preadv(
                    descriptor, [memoryview(rows).cast("B")], self._offset + start * width * 4
                )
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise FrameError(f"{self.path} cannot be read ({exc.strerror or exc})") from None
        if read != rows.nbytes:
            raise FrameError(f"{self.path} is truncated")
        return rows.byteswap(inplace=True)


def read_header(path: Path) -> Header:
    """The primary header alone, read block by block up to its END card."""
    with open(path, "rb") as stream:
        return _read_header_from(stream, path)


def frame_header(path: Path) -> Header:
    """The header read_frame gives, read alone when the file is a plain 2-D image."""
    try:
        header = read_header(path)
    except (OSError, FrameError, HeaderError):
        header = None
    if header is not None and _image_shape(header) is not None:
        return header
    return scan_frame(path).header  # compressed, extensions: the whole file


def _read_header_from(stream: IO[bytes], path: Path) -> Header:
    blocks = bytearray()
    while True:
        block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise FrameError(f"{path} has no END card: not a FITS file, or truncated")
        blocks += block
        end = header_end(bytes(blocks[-BLOCK:]))  # the END card is in the newest block or none
        if end is not None:
            return Header.parse(bytes(blocks))
