"""FITS headers as 80-character cards, read and written without astropy.

Importing astropy.io.fits costs 0.2 s per process and its header machinery about 1 ms per
frame: more than the whole reduction of a small night spends on some steps. The reduction only
reads a few keywords from raw headers and copies the rest, so cards are kept as the exact
80-character images they were read as (a copied raw header is byte for byte the original) and
values are parsed when asked for. New cards are formatted as the FITS standard (4.0, sect. 4)
requires: fixed-format values, strings quoted with '' escapes, long strings on CONTINUE cards.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

CARD = 80
BLOCK = 2880
END_CARD = "END".ljust(CARD)
_END_BYTES = END_CARD.encode("ascii")
COMMENTARY = ("COMMENT", "HISTORY", "")
# Cards describing the stored array, never copied from one HDU to another.
_LAYOUT = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS")
_ENCODING = ("BZERO", "BSCALE", "BLANK", "CHECKSUM", "DATASUM")
STRUCTURAL = frozenset((*_LAYOUT, *_ENCODING))
_NAXISN = re.compile(r"NAXIS\d+$")
_INTEGER = re.compile(r"[+-]?\d+$")
_LONG_STRING_CHUNK = 67  # characters of a long string per card, before its '&'
_HISTORY_TEXT = CARD - 8


class HeaderError(ValueError):
    """A header that cannot be parsed, or a value that cannot be written as a FITS card."""


class Header:
    """An ordered FITS header with the small part of astropy's Header API the reduction uses.

    Keys are case-insensitive; `header[key] = value` or `(value, comment)` replaces the first
    card of that key in place, or appends a new one.
    """

    def __init__(self, cards: list[str] | None = None):
        self._cards: list[str] = list(cards or [])
        # Each key's first card, built on the first lookup and kept up to date by appends
        # (a 61-frame night's headers took 37,000 card scans without it).
        self._first: dict[str, int] | None = None

    # -- reading -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: bytes | bytearray | str) -> Header:
        """Cards from header bytes, up to END (which is not kept); ASCII only."""
        if isinstance(text, bytes | bytearray):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError as exc:
                raise HeaderError(f"non-ASCII byte in the header at {exc.start}") from None
        cards = []
        for start in range(0, len(text) - len(text) % CARD, CARD):
            card = text[start : start + CARD]
            if card == END_CARD:
                break
            cards.append(card)
        return cls(cards)

    @classmethod
    def from_astropy(cls, header: Any) -> Header:
        """Our copy of an astropy Header (by its card images)."""
        return cls.parse(header.tostring())

    def to_astropy(self) -> Any:
        from astropy.io import fits  # only the astrometry needs astropy's header

        return fits.Header.fromstring(self.tostring())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._index(key) is not None

    def __getitem__(self, key: str) -> Any:
        index = self._index(key)
        if index is None:
            raise KeyError(f"Keyword {key!r} not found.")
        return self._value_at(index)

    def get(self, key: str, default: Any = None) -> Any:
        index = self._index(key)
        return default if index is None else self._value_at(index)

    def comment(self, key: str) -> str:
        index = self._index(key)
        if index is None:
            raise KeyError(f"Keyword {key!r} not found.")
        return _split_value(self._cards[index])[1]

    def cards(self) -> list[str]:
        """The 80-character card images, in order."""
        return list(self._cards)

    def tostring(self) -> str:
        """The cards, END and blank padding to a whole number of 2880-byte blocks."""
        text = "".join(self._cards) + END_CARD
        return text + " " * (-len(text) % BLOCK)

    def tobytes(self) -> bytes:
        return self.tostring().encode("ascii")

    # -- writing -------------------------------------------------------------------------------
    def __setitem__(self, key: str, value: Any) -> None:
        comment = ""
        if isinstance(value, tuple):
            value, comment = value
        self.set(key, value, comment)

    def set(self, key: str, value: Any, comment: str = "", whole_comment: bool = False) -> None:
        """Set a keyword; with `whole_comment`, a comment that does not fit is dropped rather
        than truncated."""
        new = format_card(key, value, comment, whole_comment)
        index = self._index(key)
        if index is None:
            self._append(new)
            return
        end = index + 1 + _continuations(self._cards, index)
        if end - index != len(new):
            self._first = None  # the cards after it move
        self._cards[index:end] = new

    def add_history(self, text: str) -> None:
        """HISTORY cards holding `text`, split over as many cards as it needs."""
        text = _ascii(text)
        for start in range(0, max(len(text), 1), _HISTORY_TEXT):
            self._append([("HISTORY " + text[start : start + _HISTORY_TEXT]).ljust(CARD)])

    def remove(self, key: str) -> None:
        """Remove every card of `key` (and their CONTINUE cards); absent keys are fine."""
        key = key.upper()
        kept: list[str] = []
        skipping = False
        for card in self._cards:
            if skipping and _key(card) == "CONTINUE":
                continue
            skipping = _key(card) == key
            if not skipping:
                kept.append(card)
        self._cards = kept
        self._first = None

    def without_structure(self) -> Header:
        """A copy without the cards that describe the stored array (BITPIX, NAXISn, BZERO...):
        what a raw header contributes to a product stored another way."""
        return Header(
            [
                card
                for card in self._cards
                if _key(card) not in STRUCTURAL and not _NAXISN.match(_key(card))
            ]
        )

    # -- internals -----------------------------------------------------------------------------
    def _index(self, key: str) -> int | None:
        key = key.upper()
        if key.startswith("HIERARCH "):
            key = key[9:].strip()
        if self._first is None:
            self._first = {}
            for index, card in enumerate(self._cards):
                self._first.setdefault(_key(card), index)
        return self._first.get(key)

    def _append(self, cards: list[str]) -> None:
        if self._first is not None:
            for index, card in enumerate(cards, start=len(self._cards)):
                self._first.setdefault(_key(card), index)
        self._cards.extend(cards)

    def _value_at(self, index: int) -> Any:
        card = self._cards[index]
        if _key(card) in COMMENTARY or not _has_value(card):
            return card[8:].rstrip()
        value = _split_value(card)[0]
        continuations = self._cards[index + 1 : index + 1 + _continuations(self._cards, index)]
        for following in continuations:
            if not (isinstance(value, str) and value.endswith("&")):
                break
            more = _parse_value(following[8:])[0]
            value = value[:-1] + (more if isinstance(more, str) else "")
        return value


def _key(card: str) -> str:
    if card.startswith("HIERARCH "):
        return card[9:].partition("=")[0].strip().upper()
    return card[:8].rstrip().upper()


def _has_value(card: str) -> bool:
    return card[8:10] == "= " or (card.startswith("HIERARCH ") and "=" in card)


def _split_value(card: str) -> tuple[Any, str]:
    text = card.partition("=")[2] if card.startswith("HIERARCH ") else card[10:]
    return _parse_value(text)


def _parse_value(text: str) -> tuple[Any, str]:
    """(value, comment) of a card's value field: str, bool, int, float or None (undefined)."""
    stripped = text.lstrip()
    if stripped.startswith("'"):
        pieces, position = [], 1
        while True:
            quote = stripped.find("'", position)
            if quote < 0:  # unterminated: keep what there is, as astropy does
                pieces.append(stripped[position:])
                rest = ""
                break
            if stripped[quote + 1 : quote + 2] == "'":
                pieces.append(stripped[position : quote + 1])
                position = quote + 2
                continue
            pieces.append(stripped[position:quote])
            rest = stripped[quote + 1 :]
            break
        comment = rest.partition("/")[2].strip()
        return "".join(pieces).rstrip(), comment
    raw, _, comment = stripped.partition("/")
    raw, comment = raw.strip(), comment.strip()
    if raw in ("T", "F"):
        return raw == "T", comment
    if not raw:
        return None, comment
    if _INTEGER.match(raw):
        return int(raw), comment
    try:
        return float(raw.replace("D", "E").replace("d", "e")), comment
    except ValueError:
        return raw, comment  # complex or malformed: the text, unparsed


def format_card(key: str, value: Any, comment: str = "", whole_comment: bool = False) -> list[str]:
    """The card images for one keyword (several when a long string needs CONTINUE cards).

    A comment that does not fit is truncated, as astropy does (or dropped, with
    `whole_comment`); the value never is.
    """
    key = key.upper()
    if len(key) > 8 or not re.fullmatch(r"[A-Z0-9_-]*", key):
        raise HeaderError(f"{key!r} is not a standard FITS keyword")
    comment = _ascii(comment)
    if isinstance(value, str):
        return _string_cards(key, _ascii(value), comment, whole_comment)
    card = f"{key:<8}= {_format_value(key, value):>20}"
    return [_commented(card, comment, whole_comment)]


def _commented(card: str, comment: str, whole_comment: bool) -> str:
    """The card with ` / comment` appended, cut at 80 characters (or left off when cut)."""
    if comment:
        with_comment = f"{card} / {comment}"
        if len(with_comment) <= CARD or not whole_comment:
            card = with_comment[:CARD]
    return card.ljust(CARD)


def _format_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "T" if value else "F"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise HeaderError(f"{key} = {number}: FITS cards cannot hold NaN or infinity")
        return _format_float(number)
    raise HeaderError(f"{key}: cannot write a {type(value).__name__} value in a FITS card")


def _format_float(number: float) -> str:
    """Shortest round-tripping form, with a decimal point and an upper-case exponent."""
    text = repr(number).upper()
    mantissa, _, exponent = text.partition("E")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent:
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}E{sign}{int(exponent.lstrip('+-')):02d}"
    else:
        text = mantissa
    if len(text) > 20:
        text = f"{number:.15G}"
    return text


def _string_cards(key: str, value: str, comment: str, whole_comment: bool) -> list[str]:
    quoted = "'" + value.replace("'", "''").ljust(8) + "'"
    card = f"{key:<8}= {quoted:<20}"
    if len(card) <= CARD:
        return [_commented(card, comment, whole_comment)]
    # The long-string convention: chunks ending in '&', continued on CONTINUE cards.
    chunks, current = [], ""
    for char in value:
        if len((current + char).replace("'", "''")) > _LONG_STRING_CHUNK:
            chunks.append(current)
            current = ""
        current += char
    chunks.append(current)
    cards = []
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        text = "'" + chunk.replace("'", "''") + ("" if last else "&") + "'"
        prefix = f"{key:<8}= " if number == 0 else "CONTINUE  "
        cards.append(_commented(prefix + text, comment if last else "", whole_comment))
    return cards


def _continuations(cards: list[str], index: int) -> int:
    """How many CONTINUE cards follow the card at `index`."""
    count = 0
    for card in cards[index + 1 :]:
        if _key(card) != "CONTINUE":
            break
        count += 1
    return count


def _ascii(text: str) -> str:
    """Printable ASCII, as FITS requires: anything else is escaped, never lost."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if c.isascii() and c.isprintable() else ascii(c)[1:-1] for c in text)


def header_end(raw: bytes) -> int | None:
    """Offset of the first byte after the primary header (a whole number of blocks), or
    None when no END card is found."""
    position = raw.find(_END_BYTES)
    while position >= 0:
        if position % CARD == 0:
            return position + CARD + (-(position + CARD) % BLOCK)
        position = raw.find(_END_BYTES, position + 1)
    return None
