"""Steps per second of data-parallel training against one process (issue 11).

    python benchmarks/scale_out.py --backend torch --steps 8
    python benchmarks/scale_out.py --backend tensorflow --steps 8 --algo maml --dataset omniglot --meta-batch 32

For each backend, trains the same config three ways, each in fresh processes
with its own run directory, and reads the seconds of every step from
metrics.jsonl (so start-up, the first step's compilation and the final test
evaluation are not counted): one process with one thread, ``--workers 2``
with one thread each, and one process with two threads. Prints a table and
the ratios; run it on an otherwise idle machine and say the load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SETTINGS = (("1 process, 1 thread", 1, 1), ("2 workers, 1 thread each", 2, 1), ("1 process, 2 threads", 1, 2))


def seconds_per_step(run_dir: str, warmup: int) -> float:
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    seconds = {r["step"]: r["seconds"] for r in rows if "loss" in r}
    last = max(seconds)
    return (seconds[last] - seconds[warmup - 1]) / (last - warmup + 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch")
    p.add_argument("--algo", default="maml")
    p.add_argument("--dataset", default="omniglot")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="steps not timed (compilation, caches)")
    args = p.parse_args()
    rows, load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers, threads in SETTINGS:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads),
                       TF_NUM_INTEROP_THREADS="1")
            run_dir = os.path.join(tmp, f"w{workers}t{threads}")
            cmd = [sys.executable, "-m", "metabridge", "train", "--algo", args.algo, "--dataset", args.dataset,
                   "--meta-batch", str(args.meta_batch), "--steps", str(args.steps), "--test-tasks", "1",
                   "--backend", args.backend, "--run-dir", run_dir, "--quiet", "--workers", str(workers)]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            rows.append((label, seconds_per_step(run_dir, args.warmup), wall))
            print(f"{label}: {rows[-1][1]:.3f} s/step ({wall:.0f} s wall)", flush=True)
    base = rows[0][1]
    print(f"\n{args.algo} on {args.dataset}, meta-batch {args.meta_batch}, {args.backend}, steps {args.warmup}.."
          f"{args.steps - 1} timed; load average at the start: {load:.2f}")
    print("| setting | s / step | steps / s | speed-up vs 1 process, 1 thread |\n|---|---|---|---|")
    for label, sps, _ in rows:
        print(f"| {label} | {sps:.3f} | {1 / sps:.3f} | {base / sps:.2f}x |")


if __name__ == "__main__":
    main()
