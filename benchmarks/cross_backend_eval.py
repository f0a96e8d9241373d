"""Evaluate one run's checkpoint on both backends and compare, episode by episode.

    python benchmarks/cross_backend_eval.py runs/protonet-torch --episodes 600
    python benchmarks/cross_backend_eval.py runs/protonet-torch --floatx float64

Prints the accuracy on each backend over the same test episodes, the largest
difference of the query predictions (absolute, and relative to the largest
prediction), and how many query labels differ (a near-tie between two classes can
flip in float32).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    from metabridge import config, ops
    from metabridge.train.checkpoint import latest_params
    from metabridge.train.experiment import Experiment
    from metabridge.train.run_dir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--floatx", choices=config.FLOATX_CHOICES)
    args = parser.parse_args()
    run = RunDir.open(args.run_dir)
    c = run.config.resolved()
    if args.floatx:
        c = dataclasses.replace(c, floatx=args.floatx)
    params, meta = latest_params(run.checkpoints)
    preds, labels = {}, None
    for backend in ("torch", "tensorflow"):
        with config.use_floatx(c.floatx), config.use_backend(backend):
            experiment = Experiment(c)
            p = {k: ops.asarray(v) for k, v in params.items()}
            episodes = [experiment.sources.test.episode(i) for i in range(args.episodes)]
            preds[backend] = [experiment.predict(p, ep) for ep in episodes]
            labels = [np.asarray(ep.query_y) for ep in episodes]
    a, b = preds["torch"], preds["tensorflow"]
    abs_diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    scale = max(float(np.max(np.abs(x))) for x in a)
    acc = {k: float(np.mean([np.mean(np.argmax(p, -1) == y) for p, y in zip(v, labels)])) for k, v in preds.items()}
    flips = int(sum(np.sum(np.argmax(x, -1) != np.argmax(y, -1)) for x, y in zip(a, b)))
    out = {"run": args.run_dir, "trained_on": meta.get("backend"), "step": meta["step"], "floatx": c.floatx,
           "episodes": args.episodes, "queries": int(sum(len(y) for y in labels)),
           "accuracy": acc, "max_abs_prediction_diff": abs_diff, "max_rel_prediction_diff": abs_diff / scale,
           "differing_labels": flips}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
