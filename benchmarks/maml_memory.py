#!/usr/bin/env python
"""Peak resident memory that one second-order MAML meta-step adds, per implementation.

Same step as ``benchmarks/maml_overhead.py`` (Conv4 with batch-stat batch norm,
28x28x1, 5-way 1-shot, 15 queries, meta-batch 32, inner lr 0.4, second order),
with 1 and 5 inner steps. Each (implementation, inner steps) runs in its own
process, so allocators and caches of one do not colour another. In the child:

  base      resident memory (VmRSS) after building the model, the batch and the
            implementation, before any meta-step;
  first     peak (VmHWM, reset through /proc/self/clear_refs) during the first
            meta-step minus ``base`` -- includes tracing on compiled TensorFlow;
  steady    peak during the second meta-step minus resident memory just before it.

Implementations: metabridge torch, metabridge tf (compiled=True), the
hand-written torch loop (F.batch_norm, one backward per task), the hand-written
tf.function loop (fused batch norm), and learn2learn's MAML (installed, or from
--learn2learn-src; skipped otherwise). Linux only (reads /proc).

Usage:
  python benchmarks/maml_memory.py                           # all, 1 and 5 inner steps
  python benchmarks/maml_memory.py --impls mb-torch,torch --inner-steps 1
  python benchmarks/maml_memory.py --learn2learn-src /path/to/learn2learn --json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = {
    "mb-torch": "metabridge torch",
    "mb-tf": "metabridge tf (compiled)",
    "torch": "torch hand-written (F.batch_norm, per-task backward)",
    "tf": "tf hand-written (tf.function, fused BN)",
    "l2l": "learn2learn MAML",
}


def _status(field: str) -> float:
    """A /proc/self/status field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(impl: str, inner_steps: int, meta_batch: int, l2l_src: str | None) -> dict:
    sys.path.insert(0, HERE)
    import maml_overhead as mo

    _, params, batch = mo.make_problem(meta_batch)
    if impl in ("mb-torch", "torch", "l2l"):
        import torch

        torch.set_num_threads(1)
        mo.mb.set_backend("torch")
        if impl == "mb-torch":
            runner = mo.MetabridgeImpl(params, compiled=False, inner_steps=inner_steps)
        elif impl == "torch":
            runner = mo.TorchNative(params, "fused", "per-task", inner_steps=inner_steps)
        else:
            cls, note = mo.load_learn2learn(l2l_src)
            if cls is None:
                return {"skipped": note}
            runner = mo.L2LNative(params, cls, inner_steps=inner_steps)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        mo.mb.set_backend("tensorflow")
        if impl == "mb-tf":
            runner = mo.MetabridgeImpl(params, compiled=True, inner_steps=inner_steps)
        else:
            runner = mo.TFNative(params, "fused", inner_steps=inner_steps)

    def step():
        out = runner.step(batch)
        runner.canonical(out)  # wait for the result (TF) and read it, as a training loop would

    gc.collect()
    base = _status("VmRSS")
    if not _reset_peak():
        return {"skipped": "cannot reset the peak (/proc/self/clear_refs)"}
    step()
    first = _status("VmHWM") - base
    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    step()
    steady = _status("VmHWM") - before
    return {"base_mib": base, "first_step_mib": first, "steady_step_mib": steady}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, of {', '.join(IMPLS)}")
    p.add_argument("--inner-steps", default="1,5")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--learn2learn-src", default=os.environ.get("LEARN2LEARN_SRC"))
    p.add_argument("--jobs", type=int, default=1,
                   help="children run at once (memory is per process; only time is shared)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    steps = [int(s) for s in args.inner_steps.split(",")]
    if args.child:
        print("RESULT " + json.dumps(child(args.child, steps[0], args.meta_batch, args.learn2learn_src)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    rows = []
    print(f"peak resident memory added by one meta-step (MiB), meta-batch {args.meta_batch}; "
          f"load average {os.getloadavg()}", file=sys.stderr)
    jobs = []
    for impl in [i.strip() for i in args.impls.split(",") if i.strip()]:
        if impl not in IMPLS:
            p.error(f"unknown implementation {impl!r}")
        for k in steps:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--inner-steps", str(k),
                   "--meta-batch", str(args.meta_batch)]
            if args.learn2learn_src:
                cmd += ["--learn2learn-src", args.learn2learn_src]
            jobs.append((impl, k, cmd))
    running, done = [], {}
    while jobs or running:
        while jobs and len(running) < max(args.jobs, 1):
            impl, k, cmd = jobs.pop(0)
            running.append((impl, k, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                      text=True, env=env)))
        impl, k, proc = running.pop(0)
        out, err = proc.communicate()
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        res = json.loads(line[-1][7:]) if line else {"error": err.strip().splitlines()[-1:]}
        res.update(impl=IMPLS[impl], inner_steps=k)
        rows.append(res)
        if "base_mib" in res:
            print(f"   {res['impl']:<52} inner {k}: base {res['base_mib']:7.0f}  first step +"
                  f"{res['first_step_mib']:6.0f}  steady step +{res['steady_step_mib']:6.0f}", file=sys.stderr,
                  flush=True)
        else:
            print(f"   {res['impl']:<52} inner {k}: {res.get('skipped') or res.get('error')}", file=sys.stderr,
                  flush=True)
    if args.json:
        print(json.dumps({"meta_batch": args.meta_batch, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
