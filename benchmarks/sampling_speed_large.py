#!/usr/bin/env python
"""Time one meta-batch of 4 episodes, 5-way 5-shot 15-query, 84×84×3 float32, from an
on-disk ImageFolder of 10,000 generated images (issue 13; target: under 20 ms once warm).

The images (JPEG, 84×84 RGB, 100 classes × 100) are generated into a temporary
folder (``--dir`` to keep them). Configurations, each a fresh ``ImageFolder``
read through the generic ``EpisodeSampler`` (``batch(step, 4)``, a different
step every time, built on this thread; BLAS/OpenMP pools pinned to one thread):

  Fast = ``FastEpisodeSampler`` (one gather per meta-batch), generic = ``EpisodeSampler``
  (two gathers per episode, then ``TaskBatch.stack`` copies everything once more).

  cold             nothing decoded yet: the first meta-batches decode their images
  memory (warm)    ``x.preload()`` first: every image decoded once into the bounded
                   in-memory uint8 cache (``cache_bytes``, default 256 MiB ≥ 212 MB)
  small cache      ``cache_bytes=32 MiB``: about 15 % of the images fit; steady state
                   with most images decoded again on every use
  memmap (warm)    ``cache_dir=``: every image decoded once into an ``.npy`` file,
                   memory-mapped (pages held by the OS page cache, not the process)
  memmap+prefetch  the memmap configuration consumed through a background thread
                   (``Prefetcher``, 2 batches ahead): time per batch as the consumer sees it

Reported per configuration: median and fastest wall time and median CPU time of
this thread (``time.thread_time``), in ms per meta-batch; memory: the peak of
memory traced by ``tracemalloc`` while timing (numpy reports its buffers to it;
the batches in flight), the size of the in-memory cache, and the process's peak
RSS at the end.

Usage:
  python benchmarks/sampling_speed_large.py
  python benchmarks/sampling_speed_large.py --repeats 200 --dir /tmp/fake_images --json
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from metabridge.data import EpisodeSampler, FastEpisodeSampler, Prefetcher  # noqa: E402
from metabridge.data.image_folder import ImageFolder  # noqa: E402

TARGET_MS = 20.0
WAYS, SHOTS, QUERIES, META_BATCH, SIZE = 5, 5, 15, 4, 84


def generate(root: str, images: int, classes: int, seed: int = 0) -> None:
    """``root/class_CCC/IIIII.jpg``: smooth random colour fields plus noise (JPEG-like content)."""
    rng = np.random.default_rng(seed)
    per = images // classes
    for c in range(classes):
        folder = os.path.join(root, f"class_{c:03d}")
        os.makedirs(folder, exist_ok=True)
        for k in range(per):
            low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((SIZE, SIZE), Image.BILINEAR)
            arr = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (SIZE, SIZE, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(os.path.join(folder, f"{k:05d}.jpg"), quality=90)


def timed(make, steps) -> dict:
    wall, cpu = [], []
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    for step in steps:
        w0, c0 = time.perf_counter(), time.thread_time()
        batch = make(step)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
        assert batch.support_x.shape == (META_BATCH, WAYS * SHOTS, SIZE, SIZE, 3)
        assert batch.query_x.dtype == np.float32
        del batch
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"median_ms": statistics.median(wall), "min_ms": min(wall), "cpu_median_ms": statistics.median(cpu),
            "peak_transient_MB": peak / 1e6, "n": len(wall)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--dir", default=None, help="where to generate (kept); default: a temporary folder")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="mb-imagefolder-")
    root = os.path.join(args.dir or tmp.name, "images")
    results, info = {}, {}
    try:
        t0 = time.perf_counter()
        if not os.path.isdir(root):
            generate(root, args.images, args.classes)
        info["generate_s"] = time.perf_counter() - t0
        steps = range(1000, 1000 + args.repeats)

        def sampler(ds, fast=True):
            return (FastEpisodeSampler if fast else EpisodeSampler)(ds, WAYS, SHOTS, QUERIES, seed=0)

        t0 = time.perf_counter()
        ds = ImageFolder(root, image_size=SIZE, split="all")
        info["scan_and_check_headers_s"] = time.perf_counter() - t0
        s = sampler(ds)
        results["cold (first 10 batches)"] = timed(lambda k: s.batch(k, META_BATCH), range(10))
        t0 = time.perf_counter()
        ds.x.preload()
        info["preload_s"] = time.perf_counter() - t0
        info["memory_cache_MB"] = ds.x.cache_slots * int(np.prod(ds.x.item_shape)) / 1e6
        results["memory (warm), Fast"] = timed(lambda k: s.batch(k, META_BATCH), steps)
        generic = sampler(ds, fast=False)
        results["memory (warm), generic"] = timed(lambda k: generic.batch(k, META_BATCH), steps)
        del ds, s, generic

        small = ImageFolder(root, image_size=SIZE, split="all", cache_bytes=32 << 20, check_files=False)
        s_small = sampler(small)
        for k in range(50):  # fill the cache to its steady state
            s_small.batch(k, META_BATCH)
        results["small cache 32 MiB, Fast"] = timed(lambda k: s_small.batch(k, META_BATCH), steps)
        del small, s_small

        cache_dir = os.path.join(args.dir or tmp.name, "cache")
        t0 = time.perf_counter()
        mm = ImageFolder(root, image_size=SIZE, split="all", cache_dir=cache_dir, check_files=False)
        info["memmap_build_or_reuse_s"] = time.perf_counter() - t0
        s_mm = sampler(mm)
        for k in range(20):
            s_mm.batch(k, META_BATCH)
        results["memmap (warm), Fast"] = timed(lambda k: s_mm.batch(k, META_BATCH), steps)
        with Prefetcher(lambda k: s_mm.batch(k, META_BATCH), iter(steps), 2) as it:
            next(it)
            results["memmap + prefetch, Fast"] = timed(lambda k: next(it), range(args.repeats - 1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    info["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info["load_average"] = os.getloadavg()
    info["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"results": results, "info": info, "target_ms": TARGET_MS}, indent=1))
        return
    print(f"{args.images} JPEG images 84x84x3, {args.classes} classes; meta-batch of {META_BATCH} episodes, "
          f"{WAYS}-way {SHOTS}-shot {QUERIES}-query, float32 (target < {TARGET_MS:g} ms once warm)")
    print(f"{'configuration':30s} {'median ms':>10s} {'min ms':>8s} {'cpu ms':>8s} {'peak MB':>8s}")
    for name, r in results.items():
        print(f"{name:30s} {r['median_ms']:10.2f} {r['min_ms']:8.2f} {r['cpu_median_ms']:8.2f} "
              f"{r['peak_transient_MB']:8.1f}")
    for k, v in info.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
