"""Run one experiment on PyTorch and on TensorFlow and show they agree.

    python examples/compare_backends.py
    python examples/compare_backends.py --algo fomaml --floatx float64

This is ``metabridge compare`` from Python: the same seed gives the same
initial parameters (made by numpy) and the same tasks on both backends.
"""
from __future__ import annotations

import argparse

from metabridge.train import ExperimentConfig, parity, run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="maml", choices=("maml", "fomaml", "siamese"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--floatx", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()

    cfg = ExperimentConfig(algo=args.algo, steps=args.steps, floatx=args.floatx, test_tasks=200)
    torch_run = run_experiment(cfg, "torch")
    tf_run = run_experiment(cfg, "tensorflow")
    for run in (torch_run, tf_run):
        print(f"{run.backend:>10}: final loss {run.final_loss:.6f}, "
              f"test {run.metric_name} {run.metric:.4f} ± {run.metric_ci95:.4f}, "
              f"{1000 * run.seconds_per_step:.1f} ms/step")
    p = parity(torch_run, tf_run)
    print(f"max |Δ param| {p['max_abs_param_diff']:.2e}, "
          f"max relative Δ loss over {args.steps} steps {p['max_rel_loss_diff']:.2e}")


if __name__ == "__main__":
    main()
