"""Calibration of science frames with the masters (the 'auxiliary' frames of astro_reduce)."""

from __future__ import annotations

import numpy as np


def calibrate(
    raw: np.ndarray, dark: np.ndarray, flat: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """aux = (raw - master dark) / master flat, in float32.

    The master flat is NaN where the response is unusable, so those pixels come out NaN
    (undefined) rather than infinite as in 5.1.3; the stack's median ignores them. `out`
    (float32, which may be `raw` itself) receives the result instead of a new frame.
    """
    if not raw.shape == dark.shape == flat.shape:
        raise ValueError(f"shapes differ: raw {raw.shape}, dark {dark.shape}, flat {flat.shape}")
    aux = np.subtract(raw, dark, out=out, dtype=np.float32)
    aux /= flat
    return aux
