"""PNG quick-looks: a real PNG, small, ZScale-stretched, tolerant of NaN."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from ar_tasks import previews


def test_preview_of_a_product(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, (1024, 1024)).astype(np.float32)
    data[:, :10] = np.nan
    path = tmp_path / "M-67_V_60000.fits"
    fits.writeto(path, data)
    png = previews.write_preview(path)
    assert png == tmp_path / "M-67_V_60000.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert 300 < image.shape[0] < 700 and 300 < image.shape[1] < 800


def test_binning_and_limits():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(previews.binned(image, limit=2), [[2.5, 4.5], [10.5, 12.5]])
    low, high = previews.zscale_limits(np.full((10, 10), np.nan))
    assert (low, high) == (0.0, 1.0)
