"""Modules imported on first use, for the ones only some runs need.

astropy.io.fits costs 0.2 s to import and only the astrometry needs it (the cosmetic steps
read and write FITS with `fitsio`); a night reduced without astrometry, and every
`astro_reduce --setup`, should not pay for it. numpy (0.05 s) is the same for `--setup`: an
inventory of integer raw frames reads headers and hashes bytes, and needs no array.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class OnFirstUse:
    """Stands for a module and imports it when one of its attributes is first read."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def module(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attribute: str) -> Any:
        # Kept on the stand-in: the next read of it is a plain attribute, not this call.
        value = self.__dict__[attribute] = getattr(self.module(), attribute)
        return value

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


fits: Any = OnFirstUse("astropy.io.fits")
numpy: Any = OnFirstUse("numpy")
