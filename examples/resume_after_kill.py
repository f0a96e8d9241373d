"""Kill a training run with SIGKILL, resume it, and check it ends bit for bit
where the uninterrupted run ends.

    python examples/resume_after_kill.py                 # MAML on sinusoids, torch
    python examples/resume_after_kill.py --backend tf --steps 400

What it shows: ``metabridge train --run-dir`` checkpoints every N steps
(safetensors + JSON, written atomically); ``metabridge resume RUN_DIR`` picks
up the newest checkpoint that verifies; because episode ``i`` depends only on
``(seed, i)`` and the optimizer state is saved, the resumed run's final
parameters equal the uninterrupted run's exactly.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from metabridge.train.checkpoint import list_checkpoints, load_checkpoint


def metabridge(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}   # same threads in every process: same float sums
    return subprocess.Popen([sys.executable, "-m", "metabridge", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_params(run_dir: str) -> dict:
    tensors, meta = load_checkpoint(list_checkpoints(os.path.join(run_dir, "checkpoints"))[-1])
    return {k: v for k, v in tensors.items() if k.startswith("params/")}, meta["step"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds after the first checkpoint")
    args = parser.parse_args()
    train = ["train", "--algo", "maml", "--dataset", "sinusoid", "--steps", str(args.steps), "--meta-batch", "8",
             "--test-tasks", "50", "--backend", args.backend, "--checkpoint-every", "25", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        full, killed = os.path.join(tmp, "uninterrupted"), os.path.join(tmp, "killed")
        print(f"1. uninterrupted run of {args.steps} steps -> {full}")
        assert metabridge(*train, "--run-dir", full).wait() == 0

        print(f"2. same run -> {killed}, SIGKILL {args.kill_after} s after its first checkpoint")
        proc = metabridge(*train, "--run-dir", killed)
        while not list_checkpoints(os.path.join(killed, "checkpoints")) and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(args.kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, step = final_params(killed)
        print(f"   killed (exit {proc.returncode}); newest checkpoint: step {step} of {args.steps}")

        print(f"3. metabridge resume {killed}")
        resumed = metabridge("resume", killed, "--quiet")
        assert resumed.wait() == 0, resumed.stderr.read()
        a, _ = final_params(full)
        b, step = final_params(killed)
        same = all(np.array_equal(a[k], b[k]) for k in a)
        worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
        print(f"   resumed to step {step}; final parameters bit-identical: {same} (max |diff| = {worst})")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
