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
    from PIL import Image

    with Image.open(png) as image:
        width, height = image.size
        pixels = np.asarray(image)
    assert 300 < height < 700 and 300 < width < 800
    # The image area is ZScale-stretched noise: it spans the grey range around mid-grey.
    area = pixels[30:530, 20:500].astype(float)
    assert area.std() > 25 and 90 < np.median(area) < 170


def test_zscale_matches_astropy():
    """Our ZScale is IRAF's algorithm, as astropy implements it (not imported at run time)."""
    from astropy.visualization import ZScaleInterval

    rng = np.random.default_rng(1)
    for data in (
        rng.normal(300, 10, (512, 512)),
        rng.normal(1.0, 0.02, (300, 400)),
        np.concatenate([rng.normal(50, 3, 250000), rng.pareto(1.5, 12000) * 500 + 50]),
    ):
        expected = ZScaleInterval().get_limits(data)
        np.testing.assert_allclose(previews.zscale_limits(data), expected, rtol=1e-9)


def test_binning_and_limits():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(previews.binned(image, limit=2), [[2.5, 4.5], [10.5, 12.5]])
    low, high = previews.zscale_limits(np.full((10, 10), np.nan))
    assert (low, high) == (0.0, 1.0)
