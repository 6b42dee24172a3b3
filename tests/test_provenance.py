"""Provenance keys: equal inputs give equal keys; any change of input gives another key."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from ar_tasks import provenance
from ar_tasks.fitsio import write_image


def test_keys_follow_inputs():
    key = provenance.product_key("aux", raw="a", dark="b")
    assert key == provenance.product_key("aux", dark="b", raw="a")
    assert key != provenance.product_key("aux", raw="a", dark="c")
    assert key != provenance.product_key("stack", raw="a", dark="b")


def test_stamped_product_is_current_until_its_inputs_change(tmp_path):
    path = tmp_path / "p.fits"
    key = provenance.product_key("mdark", inputs=["x"])
    write_image(path, np.zeros((4, 4)), provenance.stamp(fits.Header(), key))
    assert provenance.is_current(path, key)
    assert not provenance.is_current(path, provenance.product_key("mdark", inputs=["y"]))
    assert provenance.input_key(path) == key
    assert not provenance.is_current(tmp_path / "absent.fits", key)


def test_foreign_master_is_keyed_by_its_checksum(tmp_path):
    path = tmp_path / "mdark_1000.fits"
    fits.writeto(path, np.ones((4, 4), np.float32))
    first = provenance.input_key(path)
    assert len(first) == 64
    fits.writeto(path, np.zeros((4, 4), np.float32), overwrite=True)
    assert provenance.input_key(path) != first


def test_a_damaged_product_is_not_current(tmp_path):
    import numpy as np

    from ar_tasks.fitsio import write_image
    from ar_tasks.provenance import is_current, stamp

    path = write_image(
        tmp_path / "p.fits", np.ones((32, 32), np.float32), stamp(fits.Header(), "k")
    )
    assert is_current(path, "k")
    damaged = bytearray(path.read_bytes())
    damaged[-200] ^= 0xFF  # one flipped byte in the data: the key still matches
    path.write_bytes(bytes(damaged))
    assert not is_current(path, "k")
