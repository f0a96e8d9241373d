"""One worker of a test group: trains every run of a JSON plan through
``metabridge.train.train`` (launched N times by ``tests/test_distributed.py``
through ``metabridge.train.launch``), counting the calls that reach the
framework's own all-reduce, and writes what it saw to ``OUT/rank-R.json`` and
its final parameters to ``OUT/<run>-rank-R.npz``.

    python tests/distributed_worker.py PLAN.json OUT_DIR
"""
import json
import os
import sys

import numpy as np


def spy_on_all_reduce(backend: str, counts: dict) -> None:
    """Count calls of torch.distributed.all_reduce / tf.distribute's ReplicaContext.all_reduce."""
    if backend == "torch":
        import torch.distributed as dist
        original = dist.all_reduce

        def spy(*args, **kwargs):
            counts["all_reduce"] += 1
            return original(*args, **kwargs)
        dist.all_reduce = spy
    else:  # strategy.reduce runs inside a tf.function: count the calls, and read its graph (engine())
        from metabridge.backends.tensorflow.distributed import Collective
        original = Collective.all_reduce_sum

        def spy(self, *args, **kwargs):
            counts["all_reduce"] += 1
            return original(self, *args, **kwargs)
        Collective.all_reduce_sum = spy


def engine(backend: str) -> dict:
    if backend == "torch":
        import torch.distributed as dist
        return {"initialized": dist.is_initialized(), "name": dist.get_backend(), "world": dist.get_world_size()}
    import tensorflow as tf

    from metabridge.backends.tensorflow import distributed
    s = distributed._STRATEGY
    group = distributed.Collective(s.cluster_resolver.task_id, s.num_replicas_in_sync, 60.0)
    value = tf.constant([1.0, 2.0], tf.float64)
    summed = group.all_reduce_sum([value])[0].numpy().tolist()  # every worker makes this call
    graph = group._reduce.get_concrete_function(value).graph
    return {"initialized": s is not None, "name": type(s).__name__, "world": s.num_replicas_in_sync,
            "ops": sorted({op.type for op in graph.get_operations()}), "summed": summed}


def main() -> None:
    plan_path, out = sys.argv[1], sys.argv[2]
    with open(plan_path) as f:
        plan = json.load(f)
    backend = plan["backend"]
    counts = {"all_reduce": 0}
    spy_on_all_reduce(backend, counts)
    from metabridge.train import ExperimentConfig, RunOptions, train
    from metabridge.train.distributed import from_env
    rank = from_env().rank
    seen = {"runs": {}}
    for run in plan["runs"]:
        before = counts["all_reduce"]
        result = train(ExperimentConfig(**run["config"]), backend, run_dir=os.path.join(out, run["name"]),
                       options=RunOptions(**run["options"]), quiet=True)
        np.savez(os.path.join(out, f"{run['name']}-rank-{rank}.npz"), **result.params)
        seen["runs"][run["name"]] = {"losses": result.losses, "metric": result.metric,
                                     "all_reduce_calls": counts["all_reduce"] - before}
    seen["engine"] = engine(backend)
    with open(os.path.join(out, f"rank-{rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
