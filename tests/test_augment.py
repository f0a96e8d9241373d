"""Koch et al.'s affine distortions (metabridge/data/augment.py) against independent references."""
from __future__ import annotations

import numpy as np
import pytest

from metabridge.data.augment import (KOCH_RANGES, affine_matrix, koch_affine, koch_affine_params,
                                     warp_affine)


def _images(n=6, size=28, channels=None, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, size, size)) < 0.15).astype(np.float32) * rng.random((n, size, size)).astype(np.float32)
    return x if channels is None else np.repeat(x[..., None], channels, axis=-1)


def _shift_zero_fill(img, tx, ty):
    """np.roll with the wrapped-around rows/columns set to zero (content moves right/down)."""
    out = np.roll(img, (ty, tx), axis=(0, 1))
    if ty > 0:
        out[:ty] = 0
    elif ty < 0:
        out[ty:] = 0
    if tx > 0:
        out[:, :tx] = 0
    elif tx < 0:
        out[:, tx:] = 0
    return out


def test_identity_matrix_and_no_component_chosen_leave_images_unchanged():
    x = _images()
    np.testing.assert_array_equal(warp_affine(x, np.eye(3)), x)
    np.testing.assert_array_equal(koch_affine(x, seed=3, index=5, probability=0.0), x)


@pytest.mark.parametrize("tx,ty", [(2, 0), (0, -2), (-1, 2), (2, 2), (-2, -1)])
def test_integer_translation_is_a_zero_filled_roll(tx, ty):
    x = _images()
    got = warp_affine(x, affine_matrix(translation=(tx, ty)))
    want = np.stack([_shift_zero_fill(img, tx, ty) for img in x])
    np.testing.assert_array_equal(got, want)


def test_quarter_turn_is_rot90_and_shapes_channels_dtype():
    x = _images(channels=3)
    got = warp_affine(x, affine_matrix(rotation=90.0))
    np.testing.assert_allclose(got, np.rot90(x, k=1, axes=(1, 2)), atol=1e-6)
    assert got.shape == x.shape and got.dtype == np.float32
    one = warp_affine(x[0, ..., 0], affine_matrix(rotation=-90.0))
    np.testing.assert_allclose(one, np.rot90(x[0, ..., 0], k=-1), atol=1e-6)


def test_matches_scipy_affine_transform_bilinear():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images(n=8).astype(np.float64)
    rng = np.random.default_rng(1)
    c = np.array([13.5, 13.5])
    for i in range(len(x)):
        m = affine_matrix(rng.uniform(-30, 30), rng.uniform(-0.3, 0.3, 2), rng.uniform(0.8, 1.2, 2),
                          rng.uniform(-2, 2, 2))
        got = warp_affine(x[i], m)
        # scipy maps output (row, col) to input (row, col): swap our (x, y) inverse map
        inv = np.linalg.inv(m)
        a = inv[:2, :2][::-1, ::-1]
        t = inv[:2, 2][::-1]
        offset = c - a @ c + t
        want = ndimage.affine_transform(x[i], a, offset=offset, order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_inverse_map_round_trip():
    m = affine_matrix(8.0, (0.2, -0.1), (1.1, 0.9), (1.5, -1.0))
    inv = np.linalg.inv(m)
    # bilinear interpolation is exact on a linear ramp: exact round trip wherever no sample fell outside
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    ramp = 0.3 * xx - 0.7 * yy + 2.0
    inside = np.abs(warp_affine(warp_affine(np.ones((28, 28)), m), inv) - 1.0) < 1e-12
    assert inside.sum() > 300
    np.testing.assert_allclose(warp_affine(warp_affine(ramp, m), inv)[inside], ramp[inside], atol=1e-9)
    # and the forward warp of the ramp is the ramp at the inverse-mapped points
    c = 13.5
    src = np.einsum("ij,jhw->ihw", inv, np.stack([xx - c, yy - c, np.ones_like(xx)]))
    once = warp_affine(ramp, m)
    ok = np.abs(warp_affine(np.ones((28, 28)), m) - 1.0) < 1e-12
    np.testing.assert_allclose(once[ok], (0.3 * (src[0] + c) - 0.7 * (src[1] + c) + 2.0)[ok], atol=1e-9)
    # a smooth blob comes back up to the blur of two bilinear resamplings
    img = np.exp(-((xx - 13.5) ** 2 + (yy - 13.5) ** 2) / 30.0)
    assert np.max(np.abs(warp_affine(warp_affine(img, m), inv) - img)) < 0.03
    assert np.max(np.abs(warp_affine(img, m) - img)) > 0.2  # it did move


def test_pure_scale_about_centre_maps_points_as_the_matrix_says():
    img = np.zeros((29, 29))
    img[14, 18] = 1.0  # 4 px right of the centre (14, 14)
    out = warp_affine(img, affine_matrix(scale=(1.5, 1.0)))
    assert np.unravel_index(np.argmax(out), out.shape) == (14, 20)  # 6 px right


def test_deterministic_per_seed_and_index():
    x = _images(n=16)
    a = koch_affine(x, seed=0, index=4)
    np.testing.assert_array_equal(a, koch_affine(x, seed=0, index=4))
    assert not np.array_equal(a, koch_affine(x, seed=0, index=5))
    assert not np.array_equal(a, koch_affine(x, seed=1, index=4))
    # the same per-image draws whatever else is in the batch
    np.testing.assert_array_equal(koch_affine(x[:8], seed=0, index=4)[:3],
                                  koch_affine(x[:8], seed=0, index=4)[:3])


def test_parameter_ranges_and_probability():
    p = koch_affine_params(np.random.default_rng(0), 20000)
    theta, rho, s, t = p[:, 0], p[:, 1:3], p[:, 3:5], p[:, 5:7]
    for values, identity, (lo, hi) in ((theta, 0.0, KOCH_RANGES["rotation"]), (rho, 0.0, KOCH_RANGES["shear"]),
                                       (s, 1.0, KOCH_RANGES["scale"]), (t, 0.0, KOCH_RANGES["translation"])):
        assert values.min() >= lo and values.max() <= hi
        chosen = values != identity if values.ndim == 1 else np.any(values != identity, axis=1)
        assert abs(chosen.mean() - 0.5) < 0.02
    none = np.all(p == [0, 0, 0, 1, 1, 0, 0], axis=1)
    assert abs(none.mean() - 1 / 16) < 0.01


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="Expected images"):
        warp_affine(np.zeros((2, 2, 2, 2, 2)), np.eye(3))
    with pytest.raises(ValueError, match="matrices"):
        warp_affine(np.zeros((2, 5, 5)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="seed"):
        koch_affine(np.zeros((2, 5, 5)), seed=-1, index=0)
