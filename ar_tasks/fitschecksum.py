"""FITS CHECKSUM and DATASUM (the FITS standard 4.0, appendix J), computed with numpy.

DATASUM is the 32-bit ones' complement sum of the data unit; CHECKSUM is encoded so that the
whole HDU sums to -0 (all ones). A product whose sums no longer hold was damaged after it was
written, and is made again rather than reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .fitsheader import BLOCK, Header, HeaderError, header_end

if TYPE_CHECKING:
    import numpy as np
else:  # `astro_reduce --setup` never needs an array (lazy_import)
    from .lazy_import import numpy as np

ALL_ONES = 0xFFFFFFFF
PLACEHOLDER = "0" * 16  # CHECKSUM's value while the header is summed
_EXCLUDED = frozenset(range(0x3A, 0x41)) | frozenset(range(0x5B, 0x61))  # punctuation


def ones_complement_sum(buffer: bytes | memoryview | np.ndarray, initial: int = 0) -> int:
    """32-bit ones' complement sum of big-endian words (the length must be a multiple of 4)."""
    words = np.frombuffer(buffer, dtype=">u4")
    if words.size >= 1 << 32:
        raise ValueError("more than 2**32 words: the 64-bit accumulator could overflow")
    return fold(int(words.sum(dtype=np.uint64)) + initial)


def fold(total: int) -> int:
    """End-around carry: fold the bits above 32 back into the low word."""
    while total > ALL_ONES:
        total = (total & ALL_ONES) + (total >> 32)
    return total


def encode(checksum: int) -> str:
    """The 16 ASCII characters whose header sum complements `checksum` (the CHECKSUM value)."""
    value = ~checksum & ALL_ONES
    characters = [0] * 16
    for index in range(4):
        byte = (value >> (24 - 8 * index)) & 0xFF
        quotient, remainder = byte // 4 + ord("0"), byte % 4
        four = [quotient + remainder, quotient, quotient, quotient]
        changed = True
        while changed:  # nudge pairs out of the punctuation, keeping their sum
            changed = False
            for first in (0, 2):
                if four[first] in _EXCLUDED or four[first + 1] in _EXCLUDED:
                    four[first] += 1
                    four[first + 1] -= 1
                    changed = True
        for position in range(4):
            characters[4 * position + index] = four[position]
    rotated = characters[15:] + characters[:15]  # one place right, so the words line up
    return "".join(chr(c) for c in rotated)


def checksums_hold(path: Path) -> bool:
    """True when the primary HDU's DATASUM and CHECKSUM (where present) match its bytes."""
    try:
        raw = Path(path).read_bytes()
        end = header_end(raw)
        if end is None:
            return False
        header = Header.parse(raw[:end])
    except (OSError, HeaderError):
        return False
    if "CHECKSUM" not in header and "DATASUM" not in header:
        return True
    size = abs(int(header.get("BITPIX", 8))) // 8 if header.get("NAXIS", 0) else 0
    for axis in range(1, int(header.get("NAXIS", 0)) + 1):
        size *= int(header.get(f"NAXIS{axis}", 0))
    size += -size % BLOCK
    if len(raw) < end + size:
        return False
    datasum = ones_complement_sum(raw[end : end + size])
    if "DATASUM" in header and str(header["DATASUM"]).strip() != str(datasum):
        return False
    return "CHECKSUM" not in header or fold(ones_complement_sum(raw[:end]) + datasum) == ALL_ONES
