"""Koch et al.'s affine distortions for Siamese training on Omniglot (numpy only).

Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
Recognition", section 4.3: each training image is distorted by an affine map
``T = (theta, rho_x, rho_y, s_x, s_y, t_x, t_y)`` with rotation
``theta in [-10, 10]`` degrees, shear ``rho in [-0.3, 0.3]``, scale
``s in [0.8, 1.2]`` and translation ``t in [-2, 2]`` pixels, each of the four
components included with probability 0.5 (uniform draws).

>>> import numpy as np
>>> x = np.zeros((4, 28, 28, 1), dtype=np.float32); x[:, 10:18, 12:14] = 1.0
>>> y = koch_affine(x, seed=0, index=7)        # batch 7 of a run with seed 0
>>> y.shape == x.shape and np.array_equal(y, koch_affine(x, seed=0, index=7))
True

Conventions
    Coordinates are ``(x, y) = (column, row)`` with ``y`` pointing down, about
    the image centre ``((W - 1) / 2, (H - 1) / 2)``. A matrix from
    :func:`affine_matrix` is the *forward* map (input pixel -> output pixel):
    a positive angle turns the picture counter-clockwise as displayed (90
    degrees = ``np.rot90``), translation ``(t_x, t_y)`` moves it right and down.
    The map is ``translate . rotate . shear . scale``, with shear
    ``[[1, rho_x], [rho_y, 1]]``. :func:`warp_affine` samples the input at the
    inverse map with bilinear interpolation; outside the input is 0 (the
    background of strokes-1.0 images), and neighbours outside count as 0.

Randomness
    :func:`koch_affine` draws batch ``index`` of a run with ``seed`` from
    ``numpy.random.default_rng([seed, index])``: the same images on every call,
    machine and worker (the project's ``(seed, i)`` rule). Use a seed of its
    own (e.g. the pair sampler's seed + 1000), so distortions do not repeat the
    pair draws' random numbers.
"""
from __future__ import annotations

import numpy as np

__all__ = ["KOCH_RANGES", "affine_matrix", "warp_affine", "koch_affine_params", "koch_affine"]

#: Koch et al.'s ranges: rotation (degrees), shear, scale, translation (pixels); p = 0.5 each.
KOCH_RANGES = {"rotation": (-10.0, 10.0), "shear": (-0.3, 0.3), "scale": (0.8, 1.2), "translation": (-2.0, 2.0)}
KOCH_PROBABILITY = 0.5


def affine_matrix(rotation: float = 0.0, shear=(0.0, 0.0), scale=(1.0, 1.0), translation=(0.0, 0.0)) -> np.ndarray:
    """The forward ``3 x 3`` map (homogeneous ``(x, y, 1)``, about the image centre).

    ``rotation`` in degrees (counter-clockwise as displayed); ``shear = (rho_x, rho_y)``;
    ``scale = (s_x, s_y)``; ``translation = (t_x, t_y)`` in pixels (right, down).

    >>> affine_matrix(translation=(2, 1))[:2, 2].tolist()
    [2.0, 1.0]
    """
    th = np.deg2rad(float(rotation))
    c, s = np.cos(th), np.sin(th)
    rot = np.array([[c, s], [-s, c]])  # y down: counter-clockwise on screen
    sh = np.array([[1.0, float(shear[0])], [float(shear[1]), 1.0]])
    sc = np.diag([float(scale[0]), float(scale[1])])
    m = np.eye(3)
    m[:2, :2] = rot @ sh @ sc
    m[:2, 2] = [float(translation[0]), float(translation[1])]
    return m


def warp_affine(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Apply forward maps to images: ``out(p) = in(M^-1 p)``, bilinear, zero outside.

    ``images``: ``[H, W]``, ``[n, H, W]`` or ``[n, H, W, C]``; ``matrices``:
    ``[3, 3]`` (one for all) or ``[n, 3, 3]``. Same shape and dtype out.

    >>> img = np.arange(9.0).reshape(3, 3)
    >>> warp_affine(img, affine_matrix(translation=(1, 0))).tolist()
    [[0.0, 0.0, 1.0], [0.0, 3.0, 4.0], [0.0, 6.0, 7.0]]
    """
    x = np.asarray(images)
    single = x.ndim == 2
    if single:
        x = x[None]
    squeeze_c = x.ndim == 3
    if squeeze_c:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"Expected images [H, W], [n, H, W] or [n, H, W, C]. Received: shape {np.shape(images)}")
    n, h, w, ch = x.shape
    m = np.asarray(matrices, dtype=np.float64)
    if m.shape == (3, 3):
        m = np.broadcast_to(m, (n, 3, 3))
    if m.shape != (n, 3, 3):
        raise ValueError(f"Expected matrices [3, 3] or [{n}, 3, 3]. Received: shape {np.shape(matrices)}")
    inv = np.linalg.inv(m)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64) - cy, np.arange(w, dtype=np.float64) - cx, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])            # [3, HW], centred
    src = inv[:, :2] @ pts                                             # [n, 2, HW]
    sx, sy = src[:, 0] + cx, src[:, 1] + cy
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - x0, sy - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = x.reshape(n, h * w, ch)
    rows = np.arange(n)[:, None]
    out = np.zeros((n, h * w, ch), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = np.where(ok, yi * w + xi, 0)
            weight = np.where(ok, wx * wy, 0.0)
            out += weight[..., None] * flat[rows, idx]
    out = out.reshape(n, h, w, ch)
    if squeeze_c:
        out = out[..., 0]
    if single:
        out = out[0]
    return out.astype(x.dtype if x.dtype.kind == "f" else np.float64, copy=False)


def koch_affine_params(rng: np.random.Generator, n: int, probability: float = KOCH_PROBABILITY,
                       ranges: dict | None = None) -> np.ndarray:
    """``[n, 7]`` draws of ``(theta, rho_x, rho_y, s_x, s_y, t_x, t_y)``; a component not
    chosen (probability ``1 - probability``) is the identity (0, 0, 0, 1, 1, 0, 0).

    The draws are made in a fixed order (a ``[n, 4]`` block of choices, then each
    component's uniform values), so they are a function of the generator's state.
    """
    r = dict(KOCH_RANGES, **(ranges or {}))
    use = rng.random((n, 4)) < probability
    theta = rng.uniform(*r["rotation"], size=n)
    rho = rng.uniform(*r["shear"], size=(n, 2))
    s = rng.uniform(*r["scale"], size=(n, 2))
    t = rng.uniform(*r["translation"], size=(n, 2))
    theta = np.where(use[:, 0], theta, 0.0)
    rho = np.where(use[:, 1:2], rho, 0.0)
    s = np.where(use[:, 2:3], s, 1.0)
    t = np.where(use[:, 3:4], t, 0.0)
    return np.concatenate([theta[:, None], rho, s, t], axis=1)


def _matrices(params: np.ndarray) -> np.ndarray:
    return np.stack([affine_matrix(p[0], p[1:3], p[3:5], p[5:7]) for p in params])


def koch_affine(images: np.ndarray, seed: int, index: int, probability: float = KOCH_PROBABILITY,
                ranges: dict | None = None) -> np.ndarray:
    """Koch et al.'s random affine distortion of a batch ``[n, H, W(, C)]``, drawn from
    ``numpy.random.default_rng([seed, index])`` (one draw per image).

    Images whose four components all came out "not chosen" are returned unchanged (a copy).
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"Expected a batch [n, H, W] or [n, H, W, C]. Received: shape {x.shape}")
    for name, v in (("seed", seed), ("index", index)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"Expected {name} >= 0. Received: {name}={v!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    params = koch_affine_params(rng, len(x), probability, ranges)
    identity = np.all(params == np.array([0, 0, 0, 1, 1, 0, 0], dtype=np.float64), axis=1)
    out = np.array(x, dtype=x.dtype if x.dtype.kind == "f" else np.float32, copy=True)
    moved = np.flatnonzero(~identity)
    if len(moved):
        out[moved] = warp_affine(x[moved], _matrices(params[moved]))
    return out
