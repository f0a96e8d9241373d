#!/usr/bin/env python
"""Second-order check of the fused kernels where the op tests cannot reach them.

The op tests prove values, gradients and Hessian-vector products in float64.
TensorFlow's fused batch norm has no float64 kernel (ops.batch_norm falls back
to the composite formula there), so its double backward is only exercised in
float32. This script computes value, gradient and HVP of small conv -> batch
norm -> cross-entropy / softplus functions through ``metabridge.ops`` in
float32 (fused kernels) and compares them with the same function in float64
(finite differences of float64 gradients for the HVP), on each backend.
A float32 composite formula is shown beside it as the scale of float32 rounding.

Usage: python benchmarks/fused_kernels_check.py [--backends torch,tf]
Exit status 1 when a relative difference exceeds 1e-4.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import metabridge as mb  # noqa: E402
from metabridge import ops  # noqa: E402

TOL = 1e-4


def conv_bn_ce(p, c, composite=False):
    h = ops.tanh(ops.conv2d(p["x"], p["k"], padding="same"))
    if composite:
        m = ops.mean(h, (0, 1, 2), keepdims=True)
        v = ops.mean(ops.square(h - m), (0, 1, 2), keepdims=True)
        h = (h - m) / ops.sqrt(v + 1e-5) * p["scale"] + p["offset"]
    else:
        h = ops.batch_norm(h, p["scale"], p["offset"])[0]
    h = ops.max_pool2d(ops.relu(h) + 0.1 * h, 2)
    logits = ops.mean(h, (1, 2))
    if composite:
        return ops.mean(ops.logsumexp(logits, -1) - ops.take_along_last(logits, c["y"]))
    return ops.cross_entropy(logits, c["y"])


def bn_softplus(p, c, composite=False):
    h = ops.batch_norm(ops.matmul(p["a"], p["w"]), p["scale"], p["offset"], axes=(0,))[0]
    if composite:
        return ops.mean(ops.logsumexp(ops.stack([ops.zeros_like(h), h * 3.0], 0), 0))
    return ops.mean(ops.softplus(h * 3.0))


def bn_stats(p, c, composite=False):
    """Uses batch norm's returned mean and variance (their gradients and second order)."""
    x = ops.tanh(p["x"])
    if composite:
        m = ops.mean(x, (0, 1, 2), keepdims=True)
        v = ops.mean(ops.square(x - m), (0, 1, 2), keepdims=True)
        y = (x - m) / ops.sqrt(v + 1e-5) * p["scale"] + p["offset"]
    else:
        y, m, v = ops.batch_norm(x, p["scale"], p["offset"])
    return ops.sum(ops.tanh(y)) + ops.sum(ops.square(m) * v) + ops.sum(ops.sqrt(v))


def make(name, rng):
    if name == "bn_stats":
        return ({"x": rng.standard_normal((3, 4, 4, 2)), "scale": rng.random(2) + 0.5,
                 "offset": rng.standard_normal(2)}, {})
    if name == "conv_bn_ce":
        return ({"x": rng.standard_normal((6, 6, 6, 2)), "k": rng.standard_normal((3, 3, 2, 4)) * 0.5,
                 "scale": rng.random(4) + 0.5, "offset": rng.standard_normal(4)},
                {"y": rng.integers(0, 4, 6)})
    return ({"a": rng.standard_normal((8, 5)), "w": rng.standard_normal((5, 3)),
             "scale": rng.random(3) + 0.5, "offset": rng.standard_normal(3)}, {})


def evaluate(fn, params, consts, v, composite=False):
    c = {k: ops.asarray(a) for k, a in consts.items()}
    inner = ops.value_and_grad(lambda p, c: fn(p, c, composite), create_graph=True)

    def gdotv(p, c, vv):
        _, g = inner(p, c)
        terms = [ops.sum(g[k] * vv[k]) for k in p]
        return sum(terms[1:], terms[0])

    value, g = ops.value_and_grad(lambda p, c: fn(p, c, composite))(params, c)
    _, hv = ops.value_and_grad(gdotv)(params, c, {k: ops.asarray(a) for k, a in v.items()})
    keys = sorted(params)
    flat = lambda d: np.concatenate([np.ravel(ops.to_numpy(d[k])).astype(np.float64) for k in keys])  # noqa: E731
    return float(ops.to_numpy(value)), flat(g), flat(hv)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="torch,tf")
    args = p.parse_args(argv)
    ok = True
    for backend in args.backends.split(","):
        mb.set_backend(backend.strip())
        for name, fn in (("conv_bn_ce", conv_bn_ce), ("bn_softplus", bn_softplus), ("bn_stats", bn_stats)):
            rng = np.random.default_rng(0)
            params, consts = make(name, rng)
            v = {k: rng.standard_normal(a.shape) for k, a in params.items()}
            with mb.use_floatx("float64"):
                ref = evaluate(fn, params, consts, v)
                eps = 1e-5
                gp = evaluate(fn, {k: params[k] + eps * v[k] for k in params}, consts, v)[1]
                gm = evaluate(fn, {k: params[k] - eps * v[k] for k in params}, consts, v)[1]
                fd = (gp - gm) / (2 * eps)
            with mb.use_floatx("float32"):
                p32 = {k: a.astype(np.float32) for k, a in params.items()}
                v32 = {k: a.astype(np.float32) for k, a in v.items()}
                fused = evaluate(fn, p32, consts, v32)
                comp = evaluate(fn, p32, consts, v32, composite=True)
            diffs = {"value": rel(np.array(fused[0]), np.array(ref[0])), "grad": rel(fused[1], ref[1]),
                     "hvp": rel(fused[2], ref[2]), "hvp_vs_fd64": rel(fused[2], fd)}
            good = all(d < TOL for d in diffs.values())
            ok &= good
            print(f"{mb.get_backend():<11} {name:<12} float32 fused vs float64: "
                  + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items())
                  + f"   (float32 composite hvp vs float64: {rel(comp[2], ref[2]):.1e})  {'OK' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
