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


def test_source_cut_by_line_span_is_inspects_source():
    """code_identity reads a function's source from its code's line span: the same text as
    inspect.getsource (nested functions, decorators, multi-line calls included)."""
    import inspect

    from ar_tasks import masters, registration
    from ar_tasks.provenance import _source
    from ar_tasks.steps import calibrate, stack
    from ar_tasks.steps import masters as master_step

    functions = [
        masters.finish_flat, masters.fit_dark_model, registration.shift_image,
        stack.combine_group, stack.register_group, calibrate.calibrate_group,
        master_step.make_master_flat, master_step.make_interpolated_darks, provenance.code_identity,
    ]  # fmt: skip
    for function in functions:
        assert _source(function).rstrip() == inspect.getsource(function).rstrip(), function
    assert _source(masters) == inspect.getsource(masters)
