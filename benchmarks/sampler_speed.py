#!/usr/bin/env python
"""Time one meta-batch of Omniglot episodes: 32 tasks, 5-way 1-shot, 15 queries per class.

The target (DESIGN.md §5, the Omniglot issue) is under 5 ms per meta-batch on
one core, episodes built from the cached arrays.

Timed, on the real data (default ``../shared/data/omniglot`` from the
repository root; ``--data-dir`` to change it), loaded once as
``Omniglot(..., subset="all", image_size=28)`` (the first run decodes and
caches; later runs read the cache):

  EpisodeSampler        the generic sampler (one ``rng.choice`` per class, per-episode gathers)
  FastEpisodeSampler    vectorised draws and one gather per meta-batch

each on the Vinyals train part (1100 characters) with ``rotations="none"``,
``"classes"`` (4400 classes, rotated on indexing) and ``"per-task"`` (a random
quarter turn per class per task), and on the Lake background part.

Every meta-batch timed is a different step (``batch(step, 32)``), built on
this thread only (BLAS/OpenMP pools are pinned to one thread; numpy indexing
is single-threaded anyway). Reported per configuration: the median wall time
and the median CPU time of this thread (``time.thread_time``; on a busy
machine the wall time also counts time the thread waited for a core), and the
fastest wall time, in milliseconds per meta-batch.

Usage:
  python benchmarks/sampler_speed.py
  python benchmarks/sampler_speed.py --data-dir /path/to/omniglot --repeats 400
  python benchmarks/sampler_speed.py --json        # one JSON object on stdout
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from metabridge.data import EpisodeSampler  # noqa: E402
from metabridge.data.omniglot import Omniglot  # noqa: E402
from metabridge.data import FastEpisodeSampler, omniglot_split  # noqa: E402

TARGET_MS = 5.0


def time_batches(sampler, meta_batch: int, repeats: int, warmup: int) -> dict:
    for step in range(warmup):
        sampler.batch(step, meta_batch)
    wall, cpu = [], []
    for step in range(warmup, warmup + repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        batch = sampler.batch(step, meta_batch)
        c1, t1 = time.thread_time(), time.perf_counter()
        wall.append((t1 - t0) * 1e3)
        cpu.append((c1 - c0) * 1e3)
        del batch
    return {"wall_median_ms": statistics.median(wall), "cpu_median_ms": statistics.median(cpu),
            "wall_min_ms": min(wall), "repeats": repeats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data", "omniglot"))
    parser.add_argument("--cache-dir", default=None, help="where the decoded arrays are cached "
                        "(default: next to the data, or the user cache dir when that is read-only)")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    ds = Omniglot(args.data_dir, subset="all", image_size=28, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0

    configs = [("vinyals/train", "none"), ("vinyals/train", "classes"), ("vinyals/train", "per-task"),
               ("lake/train", "none")]
    rows = []
    for name, rotations in configs:
        split, part = name.split("/")
        data = omniglot_split(ds, split=split, part=part, rotations=rotations)
        shape = (args.ways, args.shots, args.queries)
        samplers = [("FastEpisodeSampler", FastEpisodeSampler(data, *shape, seed=0))]
        if rotations != "per-task":  # EpisodeSampler does not rotate per task
            samplers.insert(0, ("EpisodeSampler", EpisodeSampler(data, *shape, seed=0)))
        for sampler_name, sampler in samplers:
            result = time_batches(sampler, args.meta_batch, args.repeats, args.warmup)
            rows.append({"split": name, "rotations": rotations, "classes": data.num_classes,
                         "sampler": sampler_name, **result})

    report = {
        "task": (f"{args.meta_batch} x {args.ways}-way {args.shots}-shot {args.queries}-query, "
                 "28x28x1 float32"),
        "data_dir": os.path.abspath(args.data_dir), "load_s": load_s, "cache_files": list(ds.cache_files),
        "target_ms": TARGET_MS, "python": platform.python_version(), "numpy": np.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "results": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Omniglot loaded in {load_s:.2f} s ({len(ds)} images, {ds.num_classes} characters); "
          f"meta-batch: {report['task']}")
    print(f"{'split':<15}{'rotations':<10}{'classes':>8}  {'sampler':<20}{'wall med':>9}{'cpu med':>9}"
          f"{'wall min':>9}   (ms per meta-batch)")
    for r in rows:
        flag = "ok" if r["cpu_median_ms"] < TARGET_MS else f"over {TARGET_MS:g} ms"
        print(f"{r['split']:<15}{r['rotations']:<10}{r['classes']:>8}  {r['sampler']:<20}"
              f"{r['wall_median_ms']:>9.2f}{r['cpu_median_ms']:>9.2f}{r['wall_min_ms']:>9.2f}   {flag}")
    if report["load_average"]:
        print(f"load average {report['load_average'][0]:.2f} on {report['cpus']} CPUs "
              "(wall times include waiting for a core on a busy machine; cpu = this thread's CPU time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
