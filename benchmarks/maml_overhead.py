#!/usr/bin/env python
"""Time of metabridge's second-order MAML meta-step against honest hand-written baselines.

One meta-step = meta-loss and meta-gradient for a meta-batch of Conv4
classification tasks (4 x [3x3 conv 64, batch norm on batch statistics, ReLU,
2x2 max-pool] + dense head; 28x28x1 inputs; 5-way 1-shot, 15 queries per
class; meta-batch 32; 1 inner SGD step, inner lr 0.4; cross-entropy; second
order), from the same initial weights (``Conv4.init(seed)``) and the same
episodes (``EpisodeSampler`` over a synthetic in-memory dataset).

Implementations (rows), per backend, timed interleaved in one process
(round-robin, rotating which goes first; medians reported):

torch (eager):
  torch hand-written   [reference] what a practitioner writes: NCHW, F.conv2d,
                       F.batch_norm(training=True), F.max_pool2d, F.cross_entropy,
                       autograd.grad(create_graph=True), one backward per task
  torch tasks stacked  (--stacked) the same maths with the meta-batch as one computation:
                       tasks stacked along the channels, one grouped convolution a layer
  torch composite BN/CE   the same loop with batch norm and cross-entropy built
                       from elementwise ops -- the "native" row the old version of
                       this script compared against (kept only as a labelled extra)
  learn2learn          learn2learn's MAML.clone()/adapt() on an nn.Sequential with
                       BatchNorm2d, one backward per task (where importable; see
                       --learn2learn-src)
  metabridge torch     MAML(Conv4(5), inner_lr=0.4).meta_value_and_grad

tensorflow (compiled):
  tf hand-written      [reference] tf.function, tasks in a tf.while_loop,
                       tf.compat.v1.nn.fused_batch_norm(is_training=True),
                       tf.nn.sparse_softmax_cross_entropy_with_logits
  tf composite BN      the same with batch norm from elementwise ops (old "native" row)
  metabridge tf        MAML(..., compiled=True) (tf.function, as shipped)
  metabridge tf XLA    the same traced with jit_compile=True (--xla)

Every row's meta-loss and meta-gradient are checked against the backend's
reference before timing (exit status 1 on a mismatch); timings never fail the
script. Ratios are against the backend's reference row.

Usage:
  python benchmarks/maml_overhead.py                          # both backends, full size
  python benchmarks/maml_overhead.py --backends torch --repeats 7
  python benchmarks/maml_overhead.py --meta-batch 2 --repeats 2       # smoke run
  python benchmarks/maml_overhead.py --threads 1 --json > out.json
  python benchmarks/maml_overhead.py --learn2learn-src /path/to/learn2learn/checkout

State the machine load (``uptime``) beside any number taken from it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import metabridge as mb  # noqa: E402
from metabridge.algorithms.maml import MAML  # noqa: E402
from metabridge.data import ArrayDataset, EpisodeSampler  # noqa: E402
from metabridge.nn import Conv4  # noqa: E402

WAYS, SHOTS, QUERIES = 5, 1, 15
INNER_LR = 0.4
IMAGE = (28, 28, 1)
BN_EPS = 1e-5  # metabridge.nn.base.batch_norm's default
SEED = 0
# Agreement tolerances (float32, different op orders on each side).
LOSS_RTOL = 1e-4
GRAD_RTOL = 2e-2  # per parameter, scale floored at GRAD_FLOOR * the largest gradient entry
GRAD_L2_RTOL = 5e-3  # all parameters together: ||g - g_ref|| / ||g_ref||
GRAD_FLOOR = 1e-2
LAYERS = [f"conv{i}" for i in range(1, 5)]
_JSON_MODE = False


def log(*args):
    print(*args, file=sys.stderr if _JSON_MODE else sys.stdout, flush=True)


def make_problem(meta_batch: int, seed: int = SEED):
    """Initial Conv4 params (numpy, canonical HWIO / [in, out] layouts) and one meta-batch."""
    model = Conv4(out_features=WAYS, input_shape=IMAGE)
    params = model.init(seed)
    rng = np.random.default_rng(seed)
    classes, per_class = 20, 20
    x = rng.random((classes * per_class,) + IMAGE, dtype=np.float32)
    y = np.repeat(np.arange(classes), per_class)
    sampler = EpisodeSampler(ArrayDataset(x, y, name="synthetic"), WAYS, SHOTS, QUERIES, seed=seed)
    return model, params, sampler.batch(step=0, meta_batch=meta_batch)


# ---- hand-written PyTorch ---------------------------------------------------------------------
class TorchNative:
    """Second-order MAML written directly in torch, NCHW, OIHW kernels.

    ``bn="fused"``: F.batch_norm + F.cross_entropy (the reference);
    ``bn="composite"``: batch norm and cross-entropy from elementwise ops.
    ``mode="per-task"``: one backward per task (memory of one task's graph);
    ``"summed"``: one backward of the mean task loss; ``"stacked"``: all tasks
    in one computation, the tasks stacked along the channels and each layer one
    grouped convolution (``groups`` = tasks) over the task's own copy of the
    kernels; batch norm per channel is then per task, as in the loop.
    """

    def __init__(self, params_np: dict, bn: str = "fused", mode: str = "per-task", inner_steps: int = 1):
        import torch

        self.torch, self.bn, self.mode, self.inner_steps = torch, bn, mode, inner_steps
        self.names = list(params_np)
        self.params = {k: torch.from_numpy(np.ascontiguousarray(v.transpose(3, 2, 0, 1) if v.ndim == 4 else v))
                       .requires_grad_(True) for k, v in params_np.items()}

    def forward(self, w: dict, x):
        import torch.nn.functional as F

        torch = self.torch
        for i, name in enumerate(LAYERS, start=1):
            x = F.conv2d(x, w[f"{name}.kernel"], w[f"{name}.bias"], padding=1)
            if self.bn == "fused":
                x = F.batch_norm(x, None, None, w[f"bn{i}.scale"], w[f"bn{i}.offset"], training=True, eps=BN_EPS)
            else:
                m = x.mean(dim=(0, 2, 3), keepdim=True)
                c = x - m
                v = (c * c).mean(dim=(0, 2, 3), keepdim=True)
                x = c / torch.sqrt(v + BN_EPS) * w[f"bn{i}.scale"].view(1, -1, 1, 1) \
                    + w[f"bn{i}.offset"].view(1, -1, 1, 1)
            x = F.max_pool2d(F.relu(x), 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten order, like Conv4
        return x @ w["head.kernel"] + w["head.bias"]

    def loss(self, logits, y):
        import torch.nn.functional as F

        if self.bn == "fused":
            return F.cross_entropy(logits, y)
        return (self.torch.logsumexp(logits, -1) - logits.gather(-1, y[:, None])[:, 0]).mean()

    def task_loss(self, sx, sy, qx, qy):
        w = self.params
        for _ in range(self.inner_steps):
            grads = self.torch.autograd.grad(self.loss(self.forward(w, sx), sy), [w[k] for k in self.names],
                                             create_graph=True)
            w = {k: w[k] - INNER_LR * g for k, g in zip(self.names, grads)}
        return self.loss(self.forward(w, qx), qy)

    def forward_stacked(self, w: dict, x):
        """``[tasks, n, ways]`` logits of ``x`` ``[tasks, n, 1, H, W]``; ``w`` has a leading task axis."""
        import torch.nn.functional as F

        t, n = x.shape[:2]
        x = x.transpose(0, 1).reshape(n, t * x.shape[2], *x.shape[3:]).contiguous(
            memory_format=self.torch.channels_last)
        for i, name in enumerate(LAYERS, start=1):
            k = w[f"{name}.kernel"]
            x = F.conv2d(x, k.reshape(-1, *k.shape[2:]), w[f"{name}.bias"].reshape(-1), padding=1, groups=t)
            x = F.batch_norm(x, None, None, w[f"bn{i}.scale"].reshape(-1), w[f"bn{i}.offset"].reshape(-1),
                             training=True, eps=BN_EPS)
            x = F.max_pool2d(F.relu(x), 2)
        x = x.reshape(n, t, -1, *x.shape[2:]).permute(1, 0, 3, 4, 2).reshape(t, n, -1)  # NHWC flatten order
        return self.torch.baddbmm(w["head.bias"][:, None, :], x, w["head.kernel"])

    def stacked_step(self, sx, sy, qx, qy):
        import torch.nn.functional as F

        t = sx.shape[0]

        def summed_task_means(logits, y):
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum") / y.shape[1]

        w = {k: v.expand(t, *v.shape) for k, v in self.params.items()}
        for _ in range(self.inner_steps):  # d(sum of task losses)/d(task t's copy) = task t's gradient
            grads = self.torch.autograd.grad(summed_task_means(self.forward_stacked(w, sx), sy),
                                             [w[k] for k in self.names], create_graph=True)
            w = {k: w[k] - INNER_LR * g for k, g in zip(self.names, grads)}
        loss = summed_task_means(self.forward_stacked(w, qx), qy) / t
        return loss.detach(), self.torch.autograd.grad(loss, [self.params[k] for k in self.names])

    def step(self, batch):
        torch = self.torch
        sx = torch.from_numpy(batch.support_x).permute(0, 1, 4, 2, 3).contiguous()
        qx = torch.from_numpy(batch.query_x).permute(0, 1, 4, 2, 3).contiguous()
        sy, qy = torch.from_numpy(batch.support_y).long(), torch.from_numpy(batch.query_y).long()
        n = sx.shape[0]
        plist = [self.params[k] for k in self.names]
        if self.mode == "stacked":
            return self.stacked_step(sx, sy, qx, qy)
        if self.mode == "summed":
            total = sum(self.task_loss(sx[i], sy[i], qx[i], qy[i]) for i in range(n)) / n
            return total.detach(), torch.autograd.grad(total, plist)
        loss_sum, grad_sum = 0.0, None
        for i in range(n):
            loss = self.task_loss(sx[i], sy[i], qx[i], qy[i])
            g = torch.autograd.grad(loss, plist)
            loss_sum = loss_sum + loss.detach()
            grad_sum = list(g) if grad_sum is None else [a + b for a, b in zip(grad_sum, g)]
        return loss_sum / n, [g / n for g in grad_sum]

    def canonical(self, out):
        loss, grads = out
        res = {k: (g.numpy().transpose(2, 3, 1, 0) if g.ndim == 4 else g.numpy()) for k, g in zip(self.names, grads)}
        return float(loss), res


# ---- learn2learn --------------------------------------------------------------------------------
def load_learn2learn(src: str | None):
    """learn2learn's ``MAML`` class, or ``(None, reason)``.

    An installed learn2learn is used as is. Otherwise, with ``src`` (a source
    checkout), ``learn2learn.algorithms.maml`` and ``learn2learn.utils`` are
    loaded without the package's ``__init__`` (which imports torchvision and
    gym; MAML itself needs only torch).
    """
    try:
        import learn2learn as l2l

        return l2l.algorithms.MAML, f"learn2learn {l2l.__version__} (installed)"
    except ImportError as exc:
        if not src:
            return None, f"learn2learn not importable ({exc}); pass --learn2learn-src"
    root = os.path.join(os.path.abspath(src), "learn2learn")
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", os.path.join(root, "algorithms"))):
        pkg = types.ModuleType(name)
        pkg.__path__ = [path]
        sys.modules[name] = pkg
    version = {}
    exec(open(os.path.join(root, "_version.py")).read(), version)  # noqa: S102 - a version string
    maml = importlib.import_module("learn2learn.algorithms.maml")
    return maml.MAML, f"learn2learn {version.get('__version__')} (source at {src}, MAML module only)"


class L2LNative:
    """learn2learn ``MAML(model, lr, first_order=False)``: ``clone()``, ``adapt()``,
    one ``backward()`` per task, gradients averaged, as learn2learn's examples do."""

    def __init__(self, params_np: dict, maml_cls, inner_steps: int = 1):
        import torch
        from torch import nn

        self.torch, self.inner_steps = torch, inner_steps
        layers, cin = [], IMAGE[2]
        for i in range(1, 5):
            conv, bn = nn.Conv2d(cin, 64, 3, padding=1), nn.BatchNorm2d(64, eps=BN_EPS, track_running_stats=False)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(params_np[f"conv{i}.kernel"].transpose(3, 2, 0, 1)))
                conv.bias.copy_(torch.from_numpy(params_np[f"conv{i}.bias"]))
                bn.weight.copy_(torch.from_numpy(params_np[f"bn{i}.scale"]))
                bn.bias.copy_(torch.from_numpy(params_np[f"bn{i}.offset"]))
            layers += [conv, bn, nn.ReLU(), nn.MaxPool2d(2)]
            cin = 64
        head = nn.Linear(params_np["head.kernel"].shape[0], WAYS)
        assert params_np["head.kernel"].shape[0] == 64  # 1x1x64 features: NCHW and NHWC flatten agree
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(params_np["head.kernel"].T))
            head.bias.copy_(torch.from_numpy(params_np["head.bias"]))
        self.model = nn.Sequential(*layers, nn.Flatten(), head)
        self.maml = maml_cls(self.model, lr=INNER_LR, first_order=False)
        self.order = [f"{kind}{i}.{p}" for i in range(1, 5) for kind, p in
                      (("conv", "kernel"), ("conv", "bias"), ("bn", "scale"), ("bn", "offset"))] + \
                     ["head.kernel", "head.bias"]

    def step(self, batch):
        import torch.nn.functional as F

        torch = self.torch
        sx = torch.from_numpy(batch.support_x).permute(0, 1, 4, 2, 3).contiguous()
        qx = torch.from_numpy(batch.query_x).permute(0, 1, 4, 2, 3).contiguous()
        sy, qy = torch.from_numpy(batch.support_y).long(), torch.from_numpy(batch.query_y).long()
        n = sx.shape[0]
        self.maml.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i in range(n):
            learner = self.maml.clone()
            for _ in range(self.inner_steps):
                learner.adapt(F.cross_entropy(learner(sx[i]), sy[i]))
            loss = F.cross_entropy(learner(qx[i]), qy[i])
            loss.backward()
            loss_sum += float(loss.detach())
        return torch.tensor(loss_sum / n), [p.grad / n for p in self.model.parameters()]

    def canonical(self, out):
        loss, grads = out
        res = {}
        for k, g in zip(self.order, grads):
            a = g.numpy()
            res[k] = a.transpose(2, 3, 1, 0) if a.ndim == 4 else (a.T if k == "head.kernel" else a)
        return float(loss), res


# ---- hand-written TensorFlow ----------------------------------------------------------------------
class TFNative:
    """Second-order MAML written directly in TensorFlow (NHWC, HWIO), tasks in a
    ``tf.while_loop`` inside ``tf.function``. ``bn="fused"``:
    ``tf.compat.v1.nn.fused_batch_norm(is_training=True)`` +
    ``sparse_softmax_cross_entropy_with_logits``; ``"composite"``: elementwise batch norm."""

    def __init__(self, params_np: dict, bn: str = "fused", inner_steps: int = 1, parallel_iterations: int = 10):
        import tensorflow as tf

        self.tf, self.bn, self.inner_steps, self.parallel_iterations = tf, bn, inner_steps, parallel_iterations
        self.names = list(params_np)
        with tf.device("/CPU:0"):
            self.plist = [tf.convert_to_tensor(params_np[k]) for k in self.names]
        self._fn = tf.function(self._while_step)

    def forward(self, w: dict, x):
        tf = self.tf
        for i, name in enumerate(LAYERS, start=1):
            x = tf.nn.bias_add(tf.nn.conv2d(x, w[f"{name}.kernel"], 1, "SAME"), w[f"{name}.bias"])
            if self.bn == "fused":  # note: the wrapper raises epsilon to 1.001e-5 (cuDNN's minimum)
                x = tf.compat.v1.nn.fused_batch_norm(x, w[f"bn{i}.scale"], w[f"bn{i}.offset"], epsilon=BN_EPS,
                                                     is_training=True)[0]
            else:
                m = tf.reduce_mean(x, axis=[0, 1, 2], keepdims=True)
                c = x - m
                v = tf.reduce_mean(tf.square(c), axis=[0, 1, 2], keepdims=True)
                x = c / tf.sqrt(v + BN_EPS) * w[f"bn{i}.scale"] + w[f"bn{i}.offset"]
            x = tf.nn.max_pool2d(tf.nn.relu(x), 2, 2, "VALID")
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        return tf.matmul(x, w["head.kernel"]) + w["head.bias"]

    def _ce(self, logits, y):
        return self.tf.reduce_mean(self.tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))

    def task(self, plist, sx, sy, qx, qy):
        tf = self.tf
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(plist)
            cur = list(plist)
            for _ in range(self.inner_steps):
                with tf.GradientTape(watch_accessed_variables=False) as inner:
                    inner.watch(cur)
                    loss_s = self._ce(self.forward(dict(zip(self.names, cur)), sx), sy)
                grads = inner.gradient(loss_s, cur)
                cur = [p - INNER_LR * g for p, g in zip(cur, grads)]
            loss_q = self._ce(self.forward(dict(zip(self.names, cur)), qx), qy)
        return loss_q, outer.gradient(loss_q, plist)

    def _while_step(self, plist, sx, sy, qx, qy):
        tf = self.tf
        n = sx.shape[0]

        def body(i, loss_acc, grad_acc):
            loss, grads = self.task(plist, sx[i], sy[i], qx[i], qy[i])
            return i + 1, loss_acc + loss, [a + g for a, g in zip(grad_acc, grads)]

        init = (tf.constant(0), tf.constant(0.0, plist[0].dtype), [tf.zeros_like(p) for p in plist])
        _, loss_sum, grad_sum = tf.while_loop(lambda i, *_: i < n, body, init,
                                              parallel_iterations=self.parallel_iterations)
        return loss_sum / n, [g / n for g in grad_sum]

    def step(self, batch):
        tf = self.tf
        with tf.device("/CPU:0"):
            args = [tf.convert_to_tensor(a) for a in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)]
        return self._fn(self.plist, *args)

    def canonical(self, out):
        loss, grads = out
        return float(loss.numpy()), {k: g.numpy() for k, g in zip(self.names, grads)}


class MetabridgeImpl:
    """``MAML(Conv4(5), inner_lr, inner_steps, compiled).meta_value_and_grad`` on the active backend."""

    def __init__(self, params_np: dict, compiled: bool, inner_steps: int = 1, xla: bool = False):
        self.maml = MAML(Conv4(out_features=WAYS, input_shape=IMAGE), inner_lr=INNER_LR,
                         inner_steps=inner_steps, compiled=compiled)
        if xla:  # the compiled path traced with jit_compile=True
            import tensorflow as tf

            fn = tf.function(self.maml._meta_value_and_grad, autograph=False, jit_compile=True)
            self.maml._compiled.get(lambda: fn)  # seeds MAML's cache: later calls run the XLA function
        self.params = {k: mb.ops.asarray(v) for k, v in params_np.items()}

    def step(self, batch):
        return self.maml.meta_value_and_grad(self.params, batch)

    def canonical(self, out):
        return float(mb.ops.to_numpy(out[0])), {k: mb.ops.to_numpy(v) for k, v in out[1].items()}


# ---- harness ------------------------------------------------------------------------------------
def _timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    loss = out[0]
    if hasattr(loss, "numpy") and not hasattr(loss, "requires_grad"):
        loss.numpy()  # TF: wait for the result
    return time.perf_counter() - t0, time.process_time() - c0, out


def compare(got, ref):
    """Agreement of two canonical ``(loss, {name: grad})`` results."""
    (loss_g, grads_g), (loss_r, grads_r) = got, ref
    loss_rel = abs(loss_g - loss_r) / max(abs(loss_r), 1e-12)
    overall = max(float(np.max(np.abs(g))) for g in grads_r.values())
    worst_key, worst = None, 0.0
    for k, g in grads_r.items():
        if grads_g[k].shape != g.shape:
            raise AssertionError(f"gradient shape mismatch for {k}: {grads_g[k].shape} vs {g.shape}")
        rel = float(np.max(np.abs(grads_g[k] - g)) / max(float(np.max(np.abs(g))), GRAD_FLOOR * overall, 1e-30))
        if rel >= worst:
            worst_key, worst = k, rel
    diff2 = sum(float(np.sum((grads_g[k].astype(np.float64) - g) ** 2)) for k, g in grads_r.items())
    norm2 = sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads_r.values())
    l2 = (diff2 / max(norm2, 1e-300)) ** 0.5
    ok = loss_rel <= LOSS_RTOL and worst <= GRAD_RTOL and l2 <= GRAD_L2_RTOL and np.isfinite(loss_g)
    return {"ok": bool(ok), "loss": loss_g, "loss_ref": loss_r, "loss_rel_diff": loss_rel,
            "grad_max_rel_diff": worst, "grad_worst_param": worst_key, "grad_l2_rel_diff": l2}


def bench_backend(backend, rows, batch, repeats):
    """``rows``: list of (label, impl); the first is the reference. Check, then time interleaved."""
    log(f"\n== {backend} ==")
    ref_label, ref = rows[0]
    results, first = [], {}
    t, _, out = _timed(lambda: ref.step(batch))
    ref_canon = ref.canonical(out)
    first[ref_label] = t
    for label, impl in rows:
        if label != ref_label:
            t, _, out = _timed(lambda impl=impl: impl.step(batch))
            first[label] = t
            check = compare(impl.canonical(out), ref_canon)
        else:
            check = compare(ref_canon, ref_canon)
        del out
        log(f"   {label:<44} first call {first[label]:7.2f} s   check vs reference: "
            f"{'OK' if check['ok'] else 'MISMATCH'} (loss {check['loss_rel_diff']:.1e}, "
            f"grad max {check['grad_max_rel_diff']:.1e} [{check['grad_worst_param']}], L2 {check['grad_l2_rel_diff']:.1e})")
        results.append({"label": label, "check": check, "first_call_s": first[label]})
    times = {label: [] for label, _ in rows}
    cpu = {label: [] for label, _ in rows}
    for r in range(repeats):
        k = r % len(rows)
        for label, impl in rows[k:] + rows[:k]:
            w, c, _ = _timed(lambda impl=impl: impl.step(batch))
            times[label].append(w)
            cpu[label].append(c)
    ref_med = statistics.median(times[ref_label])
    for res in results:
        med = statistics.median(times[res["label"]])
        res.update({"median_s": med, "ratio": med / ref_med, "median_cpu_s": statistics.median(cpu[res["label"]]),
                    "times_s": times[res["label"]], "backend": backend})
    return results


def main(argv=None):
    global _JSON_MODE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="torch,tf", help="comma-separated: torch, tf (default: both)")
    p.add_argument("--repeats", type=int, default=5, help="timed meta-steps per row (default 5)")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--torch-native", choices=("per-task", "summed"), default="per-task",
                   help="hand-written torch: one backward per task (default) or of the summed loss")
    p.add_argument("--no-composite", action="store_true", help="leave out the composite-op rows")
    p.add_argument("--stacked", action="store_true",
                   help="add a hand-written torch row with the tasks stacked (one grouped convolution per layer)")
    p.add_argument("--xla", action="store_true", help="add a metabridge TF row traced with jit_compile=True")
    p.add_argument("--learn2learn-src", default=os.environ.get("LEARN2LEARN_SRC"),
                   help="a learn2learn source checkout, used when learn2learn is not installed")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for torch and TF (0: defaults)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (text to stderr)")
    args = p.parse_args(argv)
    _JSON_MODE = args.json
    backends = [{"pytorch": "torch", "tf": "tensorflow"}.get(b.strip().lower(), b.strip().lower())
                for b in args.backends.split(",") if b.strip()]
    _, params_np, batch = make_problem(args.meta_batch, args.seed)
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "numpy": np.__version__,
            "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    log(f"MAML meta-step: Conv4 (64 ch, batch-stat BN) 28x28x1, {WAYS}-way {SHOTS}-shot, {QUERIES} queries/class, "
        f"meta-batch {args.meta_batch}, 1 inner step, lr {INNER_LR}, second order; {args.repeats} timed repeats; "
        f"load average {info['load_avg_at_start']}")
    results = []
    for backend in backends:
        if backend == "torch":
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            mb.set_backend("torch")
            rows = [("torch hand-written (F.batch_norm, F.cross_entropy)",
                     TorchNative(params_np, "fused", args.torch_native))]
            if not args.no_composite:
                rows.append(("torch hand-written, composite BN/CE (old row)",
                             TorchNative(params_np, "composite", args.torch_native)))
            if args.stacked:
                rows.append(("torch hand-written, tasks stacked (grouped conv)",
                             TorchNative(params_np, "fused", "stacked")))
            maml_cls, l2l_note = load_learn2learn(args.learn2learn_src)
            info["learn2learn"] = l2l_note
            if maml_cls is not None:
                rows.append(("learn2learn MAML", L2LNative(params_np, maml_cls)))
            else:
                log(f"   learn2learn row skipped: {l2l_note}")
            rows.append(("metabridge torch", MetabridgeImpl(params_np, compiled=False)))
            info.update(torch_version=torch.__version__, torch_threads=torch.get_num_threads())
        elif backend == "tensorflow":
            import tensorflow as tf

            if args.threads:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
                    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
                except RuntimeError as exc:
                    log(f"   note: could not set TF threads: {exc}")
            mb.set_backend("tensorflow")
            rows = [("tf hand-written (fused_batch_norm, sparse CE)", TFNative(params_np, "fused"))]
            if not args.no_composite:
                rows.append(("tf hand-written, composite BN (old row)", TFNative(params_np, "composite")))
            rows.append(("metabridge tf compiled", MetabridgeImpl(params_np, compiled=True)))
            if args.xla:
                rows.append(("metabridge tf compiled, XLA", MetabridgeImpl(params_np, compiled=True, xla=True)))
            info.update(tensorflow_version=tf.__version__)
        else:
            p.error(f"unknown backend {backend!r}")
        results += bench_backend(backend, rows, batch, args.repeats)
    info["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    log(f"\n== summary: median s per meta-step, ratio to the backend's reference row ==   "
        f"(load average at start {info['load_avg_at_start']}, at end {info['load_avg_at_end']})")
    for r in results:
        log(f"   {r['label']:<48}{r['median_s']:8.3f} s {r['ratio']:7.2f}x   "
            f"{'OK' if r['check']['ok'] else 'MISMATCH'}")
    ok = all(r["check"]["ok"] for r in results)
    if args.json:
        print(json.dumps({"config": vars(args), "info": info, "results": results, "checks_ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
