"""Modules imported on first use, for the ones only some runs need.

astropy.io.fits costs 0.2 s to import and only the astrometry needs it (the cosmetic steps
read and write FITS with `fitsio`); a night reduced without astrometry, and every
`astro_reduce --setup`, should not pay for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class OnFirstUse:
    """Stands for a module and imports it when one of its attributes is first read."""

    def __init__(self, name: str):
        self._name = name

    def module(self) -> ModuleType:
        return importlib.import_module(self._name)  # cached in sys.modules after the first

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.module(), attribute)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


fits: Any = OnFirstUse("astropy.io.fits")
